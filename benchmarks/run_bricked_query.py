"""Bricked against single-model read speed: warm query, cold open + 1,000 points, decode.

    python benchmarks/run_bricked_query.py                  # the full run (issue 26's acceptance)
    python benchmarks/run_bricked_query.py --small          # a quick check that it works

Files (built once, in a child process, and cached in ``--cache`` under a name that holds
the settings and the default coder slack; speed depends on the models' sizes and the
grids' coders, not on the fit's quality, so the fits run few steps):

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
- decode: ``decode(dtype=float32)`` of the whole grid, once (``--no-decode`` skips it);
- ``--stages``: the cold open + 1,000 points split into stages (rANS, grid prediction,
  model build, evaluation, routing...), CPU time with every step on one thread.
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
from neurvol.pipeline import DEFAULT_CODER_SLACK

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
    # Model only: with so few fit steps a one-model encode would keep the pure predictor
    # candidate instead (a file with no model to query).
    nv = neurvol.encode(vol, ratio=spec["ratio"], steps=spec["steps"], seed=0, quiet=True,
                        brick=spec["brick"], workers=spec["workers"], codec={"hybrid": False})
    nv.save(path + ".tmp")
    os.replace(path + ".tmp", path)


def build(spec: Dict[str, Any], cache: str) -> str:
    """The cached file for ``spec`` (built when missing)."""
    # The coder slack is in the name: files coded under another slack decode at another
    # speed (rANS or zstd grid streams), so they are not reused.
    name = "bquery_{label}_r{ratio:g}_s{steps}_b{brick}_cs{slack:g}.nvol".format(
        slack=DEFAULT_CODER_SLACK, **spec)
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
    times, cpu = [], []
    for r in range(cold + 1):
        few = rng.uniform(0, 1, (COLD_POINTS, 3)) * top
        t0, c0 = time.perf_counter(), time.process_time()
        with neurvol.open(path, backend=backend) as nv:
            nv.query(few)
            t, c = time.perf_counter() - t0, time.process_time() - c0
        if r:                                             # the first run is a warm-up
            times.append(t)
            cpu.append(c)
    out["cold_ms"] = 1e3 * statistics.median(times)
    out["cold_cpu_ms"] = 1e3 * statistics.median(cpu)
    return out


#: ``--stages``: (module, attribute, stage) of the functions whose CPU time the cold path
#: is split into (nested ones are not subtracted: rANS and zstd run inside decoding).
STAGES = (
    ("neurvol.container.reader", "NvolReader._open", "open: container checks"),
    ("neurvol.compress.coders.rans", "rans_decode", "decode: rANS streams"),
    ("neurvol.compress.coders.zstd", "zstd_exact", "decode: zstd streams"),
    ("neurvol.compress.methods.grid", "unzigzag", "decode: unzigzag"),
    ("neurvol.compress.methods.interp", "unzigzag_scaled", "decode: unzigzag"),
    ("neurvol.compress.methods.interp", "interp_reconstruct", "decode: interp grid prediction"),
    ("neurvol.compress.methods.lorenzo", "lorenzo_reconstruct", "decode: lorenzo grid prediction"),
    ("neurvol.compress.interp_kernel", "reconstruct_symbols",
     "decode: interp grid prediction (compiled)"),
    ("neurvol.backend", "TorchBackend.load", "model build (torch)"),
    ("neurvol.backend", "NumpyBackend.load", "model build (numpy)"),
    ("neurvol.backend", "TorchBackend.evaluate", "model evaluation (torch)"),
    ("neurvol.backend", "NumpyBackend.evaluate", "model evaluation (numpy)"),
    ("neurvol.ensemble.routing", "RoutedQuery.add", "routing"),
    ("neurvol.ensemble.routing", "RoutedQuery.combine", "blending"),
    ("neurvol.compress.correction.stream", "CorrectionStream._decode_group", "correction blocks"),
)


def stages(path: str, backend: str, runs: int) -> Dict[str, float]:
    """CPU ms per stage (:data:`STAGES`) of a cold open + 1,000 points with every step on
    the calling thread (no query or decode threads, so each stage's time is its own), the
    mean of ``runs`` after a warm-up; ``total`` is the whole open + query."""
    import importlib

    import neurvol.neural_volume as nvm
    from neurvol.compress import bound
    from neurvol.compress.correction import stream

    spent: Dict[str, float] = {}
    undo = []
    for module, attr, label in STAGES:
        try:
            owner = importlib.import_module(module)
        except ImportError:
            continue
        *outer, name = attr.split(".")
        for part in outer:
            owner = getattr(owner, part)
        fn = getattr(owner, name, None)
        if fn is None:
            continue

        def timed(*a: Any, _fn: Any = fn, _label: str = label, **k: Any) -> Any:
            c0 = time.process_time()
            try:
                return _fn(*a, **k)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.process_time() - c0

        undo.append((owner, name, fn))
        setattr(owner, name, timed)
    # Every thread count of the reader set to 1 (readers without one keep their default).
    counts = [(m, "QUERY_THREADS" if m is nvm else "DECODE_THREADS") for m in (nvm, bound, stream)]
    saved = [(m, name, getattr(m, name)) for m, name in counts if hasattr(m, name)]
    for m, name, _ in saved:
        setattr(m, name, 1)
    import torch

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)           # torch's own pool too: the stages' CPU is their own
    try:
        with neurvol.open(path, backend=backend) as nv:
            top = np.asarray(nv.shape, dtype=np.float64) - 1
        rng = np.random.default_rng(1)
        total = 0.0
        for r in range(runs + 1):
            if r == 1:
                spent.clear()
                total = 0.0
            few = rng.uniform(0, 1, (COLD_POINTS, 3)) * top
            c0 = time.process_time()
            with neurvol.open(path, backend=backend) as nv:
                nv.query(few)
            total += time.process_time() - c0
    finally:
        torch.set_num_threads(torch_threads)
        for m, name, value in saved:
            setattr(m, name, value)
        for owner, name, fn in undo:
            setattr(owner, name, fn)
    out = {k: 1e3 * v / runs for k, v in spent.items()}
    out["total"] = 1e3 * total / runs
    return out


def stages_markdown(rows: List[Dict[str, Any]]) -> str:
    labels = [label for _, _, label in STAGES
              if any(label in r["stages"] for r in rows)] + ["total"]
    head = " | ".join(f"{r['label']} {r['backend']}" for r in rows)
    lines = [f"| cold open + 1k pts, CPU ms on one thread | {head} |",
             "|---|" + "---|" * len(rows)]
    for label in labels:
        cells = " | ".join(f"{r['stages'][label]:.1f}" if label in r["stages"] else "–"
                           for r in rows)
        lines.append(f"| {label} | {cells} |")
    lines.append("\nStages nest (rANS and zstd streams run inside record decoding, model "
                 "evaluation inside the query); total is the whole open + query.")
    return "\n".join(lines)


def _timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def markdown(rows: List[Dict[str, Any]], points: int) -> str:
    lines = ["| file | backend | warm query, M pts/s | cold open + 1k pts, ms | cold, CPU ms "
             "| decode, s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        dec = f"{r['decode_s']:.2f}" if "decode_s" in r else "–"
        lines.append(f"| {r['label']} ({'x'.join(map(str, r['shape']))}, {r['bricks']} "
                     f"brick{'s' if r['bricks'] > 1 else ''}) | {r['backend']} | "
                     f"{r['query_mpts']:.2f} | {r['cold_ms']:.1f} | {r['cold_cpu_ms']:.0f} "
                     f"| {dec} |")
    lines.append(f"\nWarm query: {points:,} random points, best of the repeats; cold: "
                 f"open + {COLD_POINTS:,} random points, median (wall, and CPU time of all "
                 f"threads). Targets (issue 26): bricked "
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
    p.add_argument("--stages", action="store_true",
                   help="also split the cold open + 1k points into stages (CPU, one thread)")
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
            if args.stages:
                r["stages"] = stages(path, backend, args.cold)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print(markdown(rows, args.points))
    if args.stages:
        print("\n" + stages_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
