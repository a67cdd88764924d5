#!/usr/bin/env python
"""Benchmark neurvol against classical baselines on real volumes.

    python benchmarks/run_codec.py VOLUME.npy [VOLUME2.npy ...] --ratios 100,400 \
        [--subsample 2] [--archs fvsrn] [--baselines downsample,sz3] [--steps N] \
        [--out results.md] [--json results.json] [--plot rd.png]
    python benchmarks/run_codec.py --preset foundation [--out ...]

Prints the machine, then one markdown table for all volumes. See benchmarks/README.md.
Runs the same code as ``neurvol bench`` (``neurvol.bench.runner.run_benchmark``; the plot is
``neurvol.viz.figures.save_rd_plot``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from neurvol.bench.baselines import BASELINES, available_baselines
from neurvol.bench.runner import _eprint, format_markdown, rows_to_json, run_benchmark

DEFAULT_DATA = os.environ.get("NEURVOL_DATA", "/work/shared/data")
DEFAULT_BASELINES = "downsample,downsample_ref,sz3"

# name -> (volumes as (file stem, subsample), ratios)
PRESETS: Dict[str, Tuple[List[Tuple[str, int]], List[float]]] = {
    "foundation": (
        [("sim_viscous_fingers_t64", 1), ("ct_walnut", 1), ("sim_richtmyer_meshkov_t20", 2)],
        [100.0],
    ),
    # Issue 3: every architecture on four volumes (run with --archs amgsrn,fvsrn,hashgrid,neurcomp).
    "architectures": (
        [("sim_viscous_fingers_t64", 1), ("ct_walnut", 1), ("sim_richtmyer_meshkov_t20", 2),
         ("bio_embryo", 2)],
        [100.0, 400.0],
    ),
    # Issue 4: the weight-compression stages, one at a time (variants below).
    "ablation": (
        [("ct_walnut", 1), ("sim_richtmyer_meshkov_t20", 2)],
        [100.0, 400.0],
    ),
    # Issue 4: pruning methods (magnitude, Smallify, variational dropout) on the default
    # architecture and on neurcomp, whose weights are all k-means coded (variants below).
    "pruning": (
        [("ct_walnut", 1), ("sim_richtmyer_meshkov_t20", 2)],
        [100.0, 400.0],
    ),
    # Issue 4: the full pipeline vs plain k-means + zstd (same architecture), every volume.
    "pipeline": (
        [("sim_viscous_fingers_t64", 1), ("ct_walnut", 1), ("sim_neghip", 1),
         ("sim_richtmyer_meshkov_t20", 2), ("bio_embryo", 2), ("ct_chest_lidc2", 2),
         ("sim_isabel_windspeed_t30", 2)],
        [100.0],
    ),
    # Issue 4: rate-aware fitting of the grids (codec rate=) against the default, every volume.
    "rate": (
        [("sim_viscous_fingers_t64", 1), ("ct_walnut", 1), ("sim_neghip", 1),
         ("sim_richtmyer_meshkov_t20", 2), ("bio_embryo", 2), ("ct_chest_lidc2", 2),
         ("sim_isabel_windspeed_t30", 2)],
        [100.0],
    ),
    # Issue 4: rate-distortion of the default pipeline on every volume (256^3 ones at 2x).
    "rd": (
        [("sim_viscous_fingers_t64", 1), ("ct_walnut", 1), ("sim_neghip", 1),
         ("sim_richtmyer_meshkov_t20", 2), ("bio_embryo", 2), ("ct_chest_lidc2", 2),
         ("sim_isabel_windspeed_t30", 2)],
        [50.0, 100.0, 200.0, 400.0, 800.0],
    ),
}

# The foundation's codec: k-means for every tensor, zstd only, no fine-tuning.
PLAIN = {"codec": {"grids": "kmeans", "finetune": 0, "coders": ["raw", "zstd"]}}
# Extra neurvol rows per preset, as (label, encode kwargs); run with --archs '' to get only these.
PRESET_VARIANTS: Dict[str, List[Tuple[str, Dict[str, Any]]]] = {
    "ablation": [
        ("plain", PLAIN),
        ("kmeans+rans", {"codec": {"grids": "kmeans", "finetune": 0}}),
        ("lorenzo", {"codec": {"grids": "lorenzo", "finetune": 0}}),
        ("lorenzo+finetune", {"codec": {"grids": "lorenzo"}}),
        ("interp", {"codec": {"finetune": 0, "rate": 0}}),
        ("interp+finetune", {"codec": {"rate": 0}}),
        ("+rate-auto", {}),        # the default: rate-aware fitting where the pilot keeps it
        ("vq", {"codec": {"grids": "vq"}}),
        ("+prune30", {"codec": {"prune": 0.3, "rate": 0}}),
        ("bits4", {"bits": 4, "codec": {"rate": 0}}),
        ("bits9", {"bits": 9, "codec": {"rate": 0}}),
    ],
    # Also on fvsrn, the foundation's architecture, whose bytes are mostly one dense grid.
    "pipeline": [("plain", PLAIN), ("full", {}),
                 ("fvsrn-plain", dict(PLAIN, arch="fvsrn")), ("fvsrn-full", {"arch": "fvsrn"})],
    # rate-auto: the pilot's choice between the two columns before it.
    "rate": [("plain", PLAIN), ("rate0", {"codec": {"rate": 0}}),
             ("rate12-bits2", {"codec": {"grid_bits": 2, "rate": 12}}),
             ("rate-auto", {"codec": {"rate": "auto"}}),
             ("fvsrn-plain", dict(PLAIN, arch="fvsrn")),
             ("fvsrn-rate-auto", {"arch": "fvsrn", "codec": {"rate": "auto"}})],
    "pruning": [
        (f"{arch}{label}", dict({"arch": arch} if arch != "default" else {},
                                **({"codec": {"prune": 0.3, "prune_method": m}} if m else {})))
        for arch in ("default", "neurcomp")
        for label, m in (("", None), ("+magnitude30", "magnitude"),
                         ("+smallify30", "smallify"), ("+vd30", "vd"))
    ],
}


def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: Dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # pragma: no cover - torch is a neurvol dependency
        info["torch"] = f"unavailable ({exc})"
    try:
        import neurvol

        info["neurvol"] = neurvol.__version__
    except Exception:  # pragma: no cover
        pass
    from importlib.metadata import PackageNotFoundError, version

    for mod in ("zfpy", "pysz", "zstandard"):
        try:
            __import__(mod)
            info[mod] = version(mod)
        except PackageNotFoundError:
            info[mod] = "installed"
        except Exception:
            info[mod] = None
    return info


def format_machine(info: Dict[str, Any]) -> str:
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ""
    libs = ", ".join(f"{k} {info[k]}" for k in ("zstandard", "zfpy", "pysz") if info.get(k))
    return (f"- date: {info['date']}\n"
            f"- CPU: {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), "
            f"torch threads {info.get('torch_threads')}{gpu}\n"
            f"- python {info['python']}, numpy {info['numpy']}, torch {info.get('torch')}, "
            f"neurvol {info.get('neurvol')}{', ' + libs if libs else ''}\n"
            f"- platform: {info['platform']}")


def load_volume(path: str, subsample: int = 1) -> Tuple[str, np.ndarray]:
    """(display name, contiguous array); ``subsample=k`` takes ``[::k, ::k, ::k]``."""
    p = Path(path)
    vol = np.load(p, mmap_mode="r", allow_pickle=False)
    if vol.ndim != 3:
        raise SystemExit(f"{path}: expected a 3-D array, got shape {vol.shape}")
    name = p.stem
    if subsample > 1:
        vol = vol[::subsample, ::subsample, ::subsample]
        name = f"{name}[::{subsample}]"
    return name, np.ascontiguousarray(vol)


def _csv(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ratios(text: str) -> List[float]:
    try:
        out = [float(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratios must be comma-separated numbers, got {text!r}") from None
    if not out or any(r < 1 for r in out):
        raise argparse.ArgumentTypeError("ratios must be numbers >= 1")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("volumes", nargs="*", help=".npy volumes indexed [z, y, x]")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="foundation: sim_viscous_fingers_t64, ct_walnut, sim_richtmyer_meshkov_t20[::2] @100")
    p.add_argument("--data-dir", default=DEFAULT_DATA, help=f"where preset volumes live (default {DEFAULT_DATA})")
    p.add_argument("--ratios", type=_ratios, default=None, help="comma-separated, e.g. 100,400 (default 100)")
    p.add_argument("--subsample", type=int, default=1, help="take [::k, ::k, ::k] of every volume given")
    p.add_argument("--archs", type=_csv, default=["fvsrn"], help="comma-separated neurvol architectures ('' for none)")
    p.add_argument("--variant", action="append", default=[], type=_variant, metavar="LABEL=JSON",
                   help='a further neurvol row: LABEL and encode() keyword arguments as JSON, '
                        'e.g. plain=\'{"codec": {"grids": "kmeans", "finetune": 0}}\' (repeatable)')
    p.add_argument("--baselines", type=_csv, default=_csv(DEFAULT_BASELINES),
                   help=f"comma-separated, from {', '.join(BASELINES)} (default {DEFAULT_BASELINES})")
    p.add_argument("--steps", type=int, default=None, help="neurvol fit steps (default: encode's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="neurvol encode device (default: CUDA if available)")
    p.add_argument("--query-points", type=int, default=10 ** 6, help="points for the throughput column")
    p.add_argument("--out", help="write the markdown (machine + table) here")
    p.add_argument("--json", help="write machine info and rows as JSON here")
    p.add_argument("--plot", help="write a rate-distortion plot PNG here (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no per-row progress on stderr")
    return p


def _variant(text: str) -> Tuple[str, Dict[str, Any]]:
    label, sep, spec = text.partition("=")
    try:
        kw = json.loads(spec) if sep else None
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"bad JSON in {text!r}: {exc}") from None
    if not label or not isinstance(kw, dict):
        raise argparse.ArgumentTypeError(f"expected LABEL=JSON-object, got {text!r}")
    return label, kw


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    jobs: List[Tuple[str, int]] = [(v, args.subsample) for v in args.volumes]
    ratios = args.ratios
    if args.preset:
        files, preset_ratios = PRESETS[args.preset]
        jobs += [(os.path.join(args.data_dir, f + ".npy"), k) for f, k in files]
        ratios = ratios or preset_ratios
    ratios = ratios or [100.0]
    if not jobs:
        build_parser().error("give volumes or --preset")
    unknown = [b for b in args.baselines if b not in BASELINES]
    if unknown:
        build_parser().error(f"unknown baselines {unknown}; known: {', '.join(BASELINES)}")
    for b, reason in available_baselines().items():
        if b in args.baselines and reason:
            print(f"note: baseline {b} will be skipped: {reason}", file=sys.stderr)

    variants = list(args.variant)
    if args.preset in PRESET_VARIANTS:
        variants += PRESET_VARIANTS[args.preset]
    info = machine_info()
    print("## Machine\n")
    print(format_machine(info))
    print(flush=True)

    rows: List[Dict[str, Any]] = []
    cmd = "python benchmarks/run_codec.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for path, k in jobs:
        name, vol = load_volume(path, k)
        if not args.quiet:
            print(f"{name}: {vol.shape} {vol.dtype}", file=sys.stderr, flush=True)
        rows += run_benchmark(vol, name, ratios, archs=args.archs, baselines=args.baselines,
                              steps=args.steps, seed=args.seed, device=args.device,
                              query_points=args.query_points, variants=variants,
                              progress=None if args.quiet else _eprint)
        _write(args, info, rows, cmd)   # after every volume, so a long run leaves partial results
    print("## Results\n")
    print(format_markdown(rows))
    if args.plot:
        from neurvol.viz.figures import save_rd_plot

        save_rd_plot(rows, args.plot, title=", ".join(sorted({r["volume"] for r in rows})))
    return 0


def _write(args: argparse.Namespace, info: Dict[str, Any], rows: List[Dict[str, Any]], cmd: str) -> None:
    if args.out:
        text = (f"# neurvol codec benchmark\n\n`{cmd}`\n\n## Machine\n\n{format_machine(info)}\n\n"
                f"## Results\n\n{format_markdown(rows)}\n")
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": cmd, "machine": info, "rows": rows_to_json(rows)}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
