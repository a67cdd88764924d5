"""Hash the default encode of the 7 dev volumes at ratio 100 (refactoring check).

A restructuring of the encode path must change no bytes: run this before and after and
compare the two JSON files (`diff`). Volumes and subsampling are the `pipeline` preset's.

    python benchmarks/byte_identity.py --out before.json [--data-dir DIR] [--steps N]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import neurvol

DEV_VOLUMES = [("sim_viscous_fingers_t64", 1), ("ct_walnut", 1), ("sim_neghip", 1),
               ("sim_richtmyer_meshkov_t20", 2), ("bio_embryo", 2), ("ct_chest_lidc2", 2),
               ("sim_isabel_windspeed_t30", 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=os.environ.get("NEURVOL_DATA", "/work/shared/data"))
    p.add_argument("--ratio", type=float, default=100.0)
    p.add_argument("--steps", type=int, default=None, help="fit steps (default: encode's)")
    p.add_argument("--bricks", default=None, help="brick edge, e.g. 64, to hash bricked encodes")
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = {"commit": commit, "ratio": args.ratio, "steps": args.steps, "files": {}}
    for name, sub in DEV_VOLUMES:
        vol = np.load(os.path.join(args.data_dir, name + ".npy"))[::sub, ::sub, ::sub]
        vol = np.ascontiguousarray(vol)
        kw = {"ratio": args.ratio, "seed": 0, "quiet": True}
        if args.steps:
            kw["steps"] = args.steps
        if args.bricks:
            kw["brick"] = int(args.bricks)
        t0 = time.perf_counter()
        nv = neurvol.encode(vol, **kw)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "v.nvol")
            nv.save(path)
            data = open(path, "rb").read()
        label = f"{name}[::{sub}]" if sub > 1 else name
        result["files"][label] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                                  "seconds": round(time.perf_counter() - t0, 1)}
        print(label, result["files"][label], file=sys.stderr, flush=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
