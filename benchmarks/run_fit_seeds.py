"""Encode time and PSNR of the default encode over several seeds (issue 26's fit line).

One fit's PSNR moves by a few tenths of a dB from seed to seed (the model's
initialisation and the sampled batches), more than most changes to the fit that are worth
testing, so a default is compared over seeds: mean, min and max PSNR and max abs error,
and the mean encode seconds, per volume.

    python benchmarks/run_fit_seeds.py                               # seeds 0,1,2, the 3 volumes
    python benchmarks/run_fit_seeds.py --seeds 0,1,2,3 --set neurvol.models.amgsrn.TRANSFORM_STOP=0.7
    python benchmarks/run_fit_seeds.py --small                       # a quick check that it works

``--set MODULE.NAME=VALUE`` (repeatable) overrides a module constant before encoding, to
measure an alternative default the same way (VALUE is a Python literal). Each encode runs
in this process, one after another; run it alone (timings) — with ``--threads 1`` the
PSNRs do not depend on the machine's load, only the seconds do.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_volumes import DEFAULT_DATA  # noqa: E402  (benchmarks/ is not a package)

#: Issue 26's encode line: the three 128^3 volumes, ratio 100, default settings.
VOLUMES = (("sim_richtmyer_meshkov_t20", 2), ("bio_embryo", 2), ("ct_walnut", 1))
RATIO = 100.0
#: Issue 26's targets: seconds per encode and the PSNR each must keep (dB).
TARGET_SECONDS = 12.0
TARGET_PSNR = {"sim_richtmyer_meshkov_t20": 30.05, "bio_embryo": 35.51, "ct_walnut": 33.69}


def _override(spec: str) -> None:
    lhs, value = spec.split("=", 1)
    module, name = lhs.rsplit(".", 1)
    mod = importlib.import_module(module)
    if not hasattr(mod, name):
        raise SystemExit(f"--set: {module} has no {name}")
    setattr(mod, name, ast.literal_eval(value))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--volumes", default=None, help="comma-separated names (default: all 3)")
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--small", action="store_true", help="a 32^3 crop, 50 steps: a quick check")
    p.add_argument("--json", default=None)
    args = p.parse_args()

    import torch
    import neurvol
    from neurvol.metrics import max_abs_error, psnr

    if args.threads:
        torch.set_num_threads(args.threads)
    for spec in args.set:
        _override(spec)
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = set(args.volumes.split(",")) if args.volumes else None
    rows: List[Dict[str, Any]] = []
    for name, stride in VOLUMES:
        if wanted and name not in wanted:
            continue
        vol = np.load(os.path.join(args.data_dir, f"{name}.npy"), mmap_mode="r")
        vol = np.ascontiguousarray(vol[::stride, ::stride, ::stride])
        kwargs: Dict[str, Any] = {}
        if args.small:
            vol, kwargs = np.ascontiguousarray(vol[:32, :32, :32]), {"steps": 50}
        runs = []
        for seed in seeds:
            t0 = time.perf_counter()
            nv = neurvol.encode(vol, ratio=RATIO, seed=seed, quiet=True, **kwargs)
            seconds = time.perf_counter() - t0
            dec = nv.decode()
            runs.append({"seed": seed, "seconds": seconds, "psnr": psnr(vol, dec),
                         "max_abs_error": max_abs_error(vol, dec),
                         "content": nv.info().get("content")})
            print(f"# {name} seed {seed}: {runs[-1]['psnr']:.3f} dB, {seconds:.1f} s",
                  file=sys.stderr, flush=True)
        label = name + ("" if stride == 1 else f"[::{stride}]")
        rows.append({"volume": label, "name": name, "runs": runs})

    print(f"Default encode at ratio {RATIO:g} over seeds {args.seeds}"
          + (f", torch threads {args.threads}" if args.threads else "")
          + ("; overrides: " + ", ".join(f"`{s}`" for s in args.set) if args.set else "")
          + ".\n")
    print("| volume | PSNR dB mean (min – max) | target dB | max abs error mean | encode s mean (min – max) | target s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        q = [x["psnr"] for x in r["runs"]]
        s = [x["seconds"] for x in r["runs"]]
        e = [x["max_abs_error"] for x in r["runs"]]
        print(f"| {r['volume']} | {statistics.mean(q):.2f} ({min(q):.2f} – {max(q):.2f}) | "
              f"{TARGET_PSNR.get(r['name'], float('nan')):.2f} | {statistics.mean(e):.4g} | "
              f"{statistics.mean(s):.1f} ({min(s):.1f} – {max(s):.1f}) | {TARGET_SECONDS:g} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": seeds, "overrides": args.set, "threads": args.threads,
                       "python": platform.python_version(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
