"""Bricked against single-model read speed: warm query, cold open + 1,000 points, decode.

    python benchmarks/run_bricked_query.py                  # the full run (issue 26's acceptance)
    python benchmarks/run_bricked_query.py --small          # a quick check that it works

Files (built once, in a child process, and cached in ``--cache``; speed depends on the
models' sizes, not on the fit's quality, so the fits run few steps):

- *64 bricks*: ``sim_richtmyer_meshkov_t20`` (256^3) upsampled x2 by voxel repetition
  (``np.repeat`` along each axis) to 512^3 float32, encoded at ratio 100 with
  ``brick=128`` (a 4 x 4 x 4 grid, ghost 2, linear blending).
- *one model*: the 256^3 volume itself at ratio 100 (one model: it is under the automatic
  bricking threshold).

Measures, per file and backend (torch, numpy), all in this process:

- warm query: ``--points`` random index-space points after one untimed query (which
  decodes every brick); the best of ``--repeats``, in M points/s;
- cold open + 1,000 random points: ``neurvol.open`` then ``query`` of 1,000 random points
  on a freshly opened file (the OS page cache is warm: the file was just read), the
  median of ``--cold`` runs after one untimed run;
- decode: ``decode(dtype=float32)`` of the whole grid, once (``--no-decode`` skips it).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List

import numpy as np

import neurvol

DATA = os.environ.get("NEURVOL_DATA", "/work/shared/data")
VOLUME = "sim_richtmyer_meshkov_t20"
BACKENDS = ("torch", "numpy")
COLD_POINTS = 1000
#: Issue 26's acceptance: bricked warm query (M points/s), cold open + 1k points on the
#: 64-brick file (ms), the single model's warm query (M points/s).
TARGET_BRICKED_MPTS = 8.0
TARGET_COLD_MS = 60.0
TARGET_SINGLE_MPTS = 10.0


def _encode(volume_spec: Dict[str, Any], path: str) -> None:
    """Encode in a child process: training leaves torch thread pools and caches behind
    that would slow the reader measured in this one."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pool.submit(_encode_here, volume_spec, path).result()


def _load(spec: Dict[str, Any]) -> np.ndarray:
    """The volume of ``spec``: RM subsampled by ``sub``, then each voxel repeated ``up``
    times along each axis (float32)."""
    sub = slice(None, None, spec["sub"])
    vol = np.load(os.path.join(spec["data_dir"], VOLUME + ".npy"))[sub, sub, sub]
    vol = np.ascontiguousarray(vol, dtype=np.float32)
    for axis in range(3):
        vol = np.repeat(vol, spec["up"], axis=axis)
    return vol


def _encode_here(spec: Dict[str, Any], path: str) -> None:
    vol = _load(spec)
    nv = neurvol.encode(vol, ratio=spec["ratio"], steps=spec["steps"], seed=0, quiet=True,
                        brick=spec["brick"], workers=spec["workers"])
    nv.save(path + ".tmp")
    os.replace(path + ".tmp", path)


def build(spec: Dict[str, Any], cache: str) -> str:
    """The cached file for ``spec`` (built when missing)."""
    name = "bquery_{label}_r{ratio:g}_s{steps}_b{brick}.nvol".format(**spec)
    path = os.path.join(cache, name)
    if not os.path.exists(path):
        os.makedirs(cache, exist_ok=True)
        t0 = time.perf_counter()
        _encode(spec, path)
        print(f"built {path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return path


def measure(path: str, backend: str, points: int, repeats: int, cold: int,
            decode: bool) -> Dict[str, Any]:
    """Warm query Mpts/s (best of ``repeats``), cold open + 1k points ms (median of
    ``cold``), decode seconds (one run) on ``path`` with ``backend``."""
    rng = np.random.default_rng(0)
    with neurvol.open(path, backend=backend) as nv:
        shape, bricks = nv.shape, nv.brick_count
    top = np.asarray(shape, dtype=np.float64) - 1
    pts = rng.uniform(0, 1, (points, 3)) * top
    out: Dict[str, Any] = {"shape": list(shape), "bricks": bricks, "backend": backend}
    with neurvol.open(path, backend=backend) as nv:
        nv.query(pts)                                     # decodes every brick
        best = min(_timed(nv.query, pts) for _ in range(repeats))
        out["query_mpts"] = points / best / 1e6
        if decode:
            out["decode_s"] = _timed(nv.decode, dtype=np.float32)
    times = []
    for r in range(cold + 1):
        few = rng.uniform(0, 1, (COLD_POINTS, 3)) * top
        t0 = time.perf_counter()
        with neurvol.open(path, backend=backend) as nv:
            nv.query(few)
            t = time.perf_counter() - t0
        if r:                                             # the first run is a warm-up
            times.append(t)
    out["cold_ms"] = 1e3 * statistics.median(times)
    return out


def _timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def markdown(rows: List[Dict[str, Any]], points: int) -> str:
    lines = ["| file | backend | warm query, M pts/s | cold open + 1k pts, ms | decode, s |",
             "|---|---|---|---|---|"]
    for r in rows:
        dec = f"{r['decode_s']:.2f}" if "decode_s" in r else "–"
        lines.append(f"| {r['label']} ({'x'.join(map(str, r['shape']))}, {r['bricks']} "
                     f"brick{'s' if r['bricks'] > 1 else ''}) | {r['backend']} | "
                     f"{r['query_mpts']:.2f} | {r['cold_ms']:.1f} | {dec} |")
    lines.append(f"\nWarm query: {points:,} random points, best of the repeats; cold: "
                 f"open + {COLD_POINTS:,} random points, median. Targets (issue 26): bricked "
                 f">= {TARGET_BRICKED_MPTS:g} M pts/s, cold <= {TARGET_COLD_MS:g} ms on the "
                 f"64-brick file, one 256^3 model >= {TARGET_SINGLE_MPTS:g} M pts/s.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=DATA)
    p.add_argument("--cache", default=os.environ.get("NEURVOL_BENCH_CACHE", "/work/notes/cache"),
                   help="folder of the built files (reused when present)")
    p.add_argument("--steps", type=int, default=30, help="fit steps of each encode")
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cold", type=int, default=7, help="cold open + 1k runs (median)")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--files", default="bricked,single")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--workers", type=int, default=2, help="encode workers when building")
    p.add_argument("--small", action="store_true",
                   help="quick check: RM[::4] 64^3 upsampled x2 in 32^3 bricks, 10^5 points")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()
    common = {"data_dir": args.data_dir, "ratio": 100.0, "steps": args.steps,
              "workers": args.workers}
    if args.small:
        specs = {"bricked": dict(common, label="rm64x2", sub=4, up=2, brick=32, ratio=20.0),
                 "single": dict(common, label="rm64", sub=4, up=1, brick=0, ratio=20.0)}
        args.points, args.repeats, args.cold = min(args.points, 100_000), 2, 3
    else:
        specs = {"bricked": dict(common, label="rm256x2", sub=1, up=2, brick=128),
                 "single": dict(common, label="rm256", sub=1, up=1, brick=0)}
    for s in specs.values():
        s["brick"] = s["brick"] or None
    import torch

    print(f"# bricked query ({platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores, torch {torch.__version__}, numpy {np.__version__})\n")
    rows = []
    for key in [k for k in args.files.split(",") if k]:
        spec = specs[key]
        path = build(spec, args.cache)
        for backend in [b for b in args.backends.split(",") if b]:
            r = measure(path, backend, args.points, args.repeats, args.cold,
                        not args.no_decode)
            r["label"] = key
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(markdown(rows, args.points))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
