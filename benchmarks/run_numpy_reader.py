"""numpy vs torch reader speed on the same files: query Mpts/s and full-decode seconds.

    python benchmarks/run_numpy_reader.py                       # the full run (lead)
    python benchmarks/run_numpy_reader.py --small               # a quick check that it works

Files: for each architecture, ``sim_richtmyer_meshkov_t20[::2]`` (128^3) and the full
256^3 volume, encoded at ratio 100 with few fit steps (speed does not depend on the fit's
quality, only on the model's size; the encodes run in a child process). Query:
``--points`` random index-space points, the fastest of ``--repeats`` runs after one
untimed run (torch's first calls are several times slower: thread pools, kernel set-up;
it also decodes the bricks). Decode: the whole grid of the 256^3 file
(``decode(dtype=float32)``), fastest of ``--repeats``. Both backends run in this process on
the same file, alternating; the table gives the numpy figure as a fraction of torch's (the
issue's targets: query >= 0.4, decode time <= 2x).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np

import neurvol

DATA = os.environ.get("NEURVOL_DATA", "/work/shared/data")
VOLUME = "sim_richtmyer_meshkov_t20"
ARCHS = ("fvsrn", "amgsrn", "hashgrid", "neurcomp")
BACKENDS = ("torch", "numpy")


def _encode(volume: np.ndarray, arch: str, ratio: float, steps: int, path: str) -> None:
    """Encode in a child process: training leaves torch thread pools and caches behind
    that would slow the torch reader measured in this one."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pool.submit(_encode_here, volume, arch, ratio, steps, path).result()


def _encode_here(volume: np.ndarray, arch: str, ratio: float, steps: int, path: str) -> None:
    neurvol.encode(volume, ratio=ratio, arch=arch, steps=steps, seed=0, quiet=True).save(path)


def measure(path: str, points: int, repeats: int, what: str) -> Dict[str, float]:
    """{backend: Mpts/s} (what="query") or {backend: seconds} (what="decode"): the best of
    ``repeats`` runs, the backends alternating so that both see the same machine load."""
    volumes = {b: neurvol.open(path, backend=b) for b in BACKENDS}
    try:
        shape = next(iter(volumes.values())).shape
        pts = np.random.default_rng(0).uniform(0, 1, (points, 3)) * (np.asarray(shape) - 1)
        if what == "query":
            def run(nv: neurvol.NeuralVolume) -> object:
                return nv.query(pts)
        else:
            def run(nv: neurvol.NeuralVolume) -> object:
                return nv.decode(dtype=np.float32)
        for nv in volumes.values():                  # warm-up (untimed): bricks, thread
            if what == "query":                      # pools, torch's slow first calls
                run(nv)
            else:
                nv.decode(shape=(32, 32, 32), dtype=np.float32)
        best = {b: float("inf") for b in BACKENDS}
        for _ in range(repeats):
            for b, nv in volumes.items():
                t0 = time.perf_counter()
                run(nv)
                best[b] = min(best[b], time.perf_counter() - t0)
    finally:
        for nv in volumes.values():
            nv.close()
    if what == "query":
        return {b: points / t / 1e6 for b, t in best.items()}
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=DATA)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--steps", type=int, default=50, help="fit steps of each encode")
    p.add_argument("--ratio", type=float, default=100.0)
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small", action="store_true",
                   help="quick check: a 64^3 subsample at ratio 20, 10^5 points, two repeats")
    args = p.parse_args()
    full = np.load(os.path.join(args.data_dir, VOLUME + ".npy"), mmap_mode="r")
    if args.small:
        small = ("RM[::4] 64^3", np.ascontiguousarray(full[::4, ::4, ::4]))
        volumes = {"query": small, "decode": small}
        args.points, args.repeats, args.ratio = min(args.points, 100_000), 2, min(args.ratio, 20.0)
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
