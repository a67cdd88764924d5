"""numpy vs torch reader speed on the same files: query Mpts/s and full-decode seconds.

    python benchmarks/run_numpy_reader.py                       # the full run (lead)
    python benchmarks/run_numpy_reader.py --small               # a quick check that it works

Files: for each architecture, ``sim_richtmyer_meshkov_t20[::2]`` (128^3) and the full
256^3 volume, encoded at ratio 100 with few fit steps (speed does not depend on the fit's
quality, only on the model's size). Query: ``--points`` random index-space points, the
fastest of ``--repeats`` runs after one warm-up (which also decodes the bricks). Decode:
the whole grid of the 256^3 file (``decode(dtype=float32)``), fastest of ``--repeats``.
Both backends run in this process on the same open files; the table gives the numpy
figure as a fraction of torch's (the issue's targets: query >= 0.4, decode time <= 2x).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

import neurvol

DATA = os.environ.get("NEURVOL_DATA", "/work/shared/data")
VOLUME = "sim_richtmyer_meshkov_t20"
ARCHS = ("fvsrn", "amgsrn", "hashgrid", "neurcomp")
BACKENDS = ("torch", "numpy")


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _encode(volume: np.ndarray, arch: str, ratio: float, steps: int, path: str) -> None:
    neurvol.encode(volume, ratio=ratio, arch=arch, steps=steps, seed=0, quiet=True).save(path)


def measure(path: str, points: int, repeats: int, what: str) -> Dict[str, float]:
    """{backend: Mpts/s} (what="query") or {backend: seconds} (what="decode")."""
    out: Dict[str, float] = {}
    for backend in BACKENDS:
        with neurvol.open(path, backend=backend) as nv:
            if what == "query":
                rng = np.random.default_rng(0)
                pts = rng.uniform(0, 1, (points, 3)) * (np.asarray(nv.shape) - 1)
                nv.query(pts[:1000])                                  # warm-up: load bricks
                out[backend] = points / _best(lambda: nv.query(pts), repeats) / 1e6
            else:
                nv.decode(shape=(8, 8, 8), dtype=np.float32)          # warm-up
                out[backend] = _best(lambda: nv.decode(dtype=np.float32), repeats)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=DATA)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--steps", type=int, default=50, help="fit steps of each encode")
    p.add_argument("--ratio", type=float, default=100.0)
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small", action="store_true",
                   help="quick check: a 64^3 subsample at ratio 20, 10^5 points, one repeat")
    args = p.parse_args()
    full = np.load(os.path.join(args.data_dir, VOLUME + ".npy"), mmap_mode="r")
    if args.small:
        small = ("RM[::4] 64^3", np.ascontiguousarray(full[::4, ::4, ::4]))
        volumes = {"query": small, "decode": small}
        args.points, args.repeats, args.ratio = min(args.points, 100_000), 1, min(args.ratio, 20.0)
    else:
        volumes = {"query": ("RM[::2] 128^3", np.ascontiguousarray(full[::2, ::2, ::2])),
                   "decode": ("RM 256^3", np.ascontiguousarray(full))}
    import torch

    print(f"# numpy vs torch reader ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} "
          f"threads, numpy {np.__version__})\n")
    rows: List[Tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in [a for a in args.archs.split(",") if a]:
            for what, (label, vol) in volumes.items():
                path = os.path.join(tmp, f"{arch}_{what}.nvol")
                _encode(vol, arch, args.ratio, args.steps, path)
                r = measure(path, args.points, args.repeats, what)
                if what == "query":
                    rows.append((arch, f"query {args.points:,} pts, {label}", f"{r['torch']:.2f} Mpts/s",
                                 f"{r['numpy']:.2f} Mpts/s", f"{r['numpy'] / r['torch']:.2f}"))
                else:
                    rows.append((arch, f"decode {label}", f"{r['torch']:.2f} s", f"{r['numpy']:.2f} s",
                                 f"{r['numpy'] / r['torch']:.2f}"))
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print("| arch | measure | torch | numpy | numpy / torch |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
