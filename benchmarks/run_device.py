"""CUDA check and figures: encode, decode and query on a GPU next to the same file read on
the CPU.

For each volume: a default ``ratio=100`` encode on ``--device`` (wall time, synchronised),
the file's PSNR decoded there and on the CPU, the largest difference between the two
decodes (the file is the same bytes; only the arithmetic differs), and query throughput
for batches of 10^6 and 10^7 random points on both. Then one bricked encode (bricks of
64^3) of the largest volume of 100^3 to 128^3 voxels on the GPU. Results as JSON (``--out``) and a markdown table on stdout.

    python benchmarks/run_device.py --data DIR --out device.json

``DIR`` holds ``NAME.npy`` files (any of the real volumes; the shipped sample is always
included). Needs torch with CUDA; on a CPU-only machine it says so and exits 2.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import neurvol  # noqa: E402
from neurvol.metrics import psnr  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def query_mpts(nv: Any, shape, n: int, device: str, repeats: int = 3) -> float:
    pts = np.random.default_rng(0).random((n, 3)) * (np.asarray(shape) - 1)
    nv.query(pts[:1000])
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        nv.query(pts)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return n / best / 1e6


def run_volume(name: str, vol: np.ndarray, device: str, tmp: str, **encode_kw) -> Dict[str, Any]:
    row: Dict[str, Any] = {"volume": name, "shape": list(vol.shape), "dtype": str(vol.dtype)}
    _sync(device)
    t = time.perf_counter()
    nv = neurvol.encode(vol, ratio=100, device=device, quiet=True, **encode_kw)
    _sync(device)
    row["encode_s"] = time.perf_counter() - t
    path = os.path.join(tmp, f"{name}.nvol")
    nv.save(path)
    row["ratio"] = vol.nbytes / os.path.getsize(path)
    decoded = {}
    for dev in (device, "cpu"):
        tag = dev.split(":")[0]
        with neurvol.open(path, device=dev) as opened:
            row.setdefault("arch", opened.info()["model"]["arch"])
            row["bricks"] = opened.brick_count
            _sync(dev)
            t = time.perf_counter()
            decoded[dev] = opened.decode(dtype=np.float32)
            _sync(dev)
            row[f"decode_s_{tag}"] = time.perf_counter() - t
            row[f"psnr_{tag}"] = psnr(vol, opened.decode())
            for n in (10**6, 10**7):
                row[f"query_mpts_{tag}_{n:.0e}"] = query_mpts(opened, vol.shape, n, dev)
    span = float(vol.max()) - float(vol.min())
    row["max_decode_diff_over_range"] = float(np.abs(decoded[device] - decoded["cpu"]).max()) / span
    return row


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("run_device: torch sees no CUDA device; run this where one is", file=sys.stderr)
        return 2
    volumes = [("sim_neghip (sample)", neurvol.sample_volume())]
    for f in sorted(glob.glob(os.path.join(args.data, "*.npy"))):
        volumes.append((os.path.basename(f)[:-4], np.load(f)))
    result: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(), "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, vol in volumes:
            result["rows"].append(run_volume(name, vol, args.device, tmp))
            print(json.dumps(result["rows"][-1]), flush=True)
        # The bricked path (a job per brick on ``devices``): the largest volume of
        # 100^3 to 128^3 voxels in bricks of 64^3 (smaller ones leave a brick too few
        # bytes at ratio 100).
        mid = [nv for nv in volumes if 100 ** 3 <= nv[1].size <= 128 ** 3]
        if mid:
            name, vol = max(mid, key=lambda nv: nv[1].size)
            row = run_volume(f"{name} bricks", vol, args.device, tmp, brick=64,
                             devices=[args.device])
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
        else:
            print("no volume of 100^3-128^3 voxels: bricked run skipped", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    dev = args.device.split(":")[0]
    keys = ["volume", "shape", "arch", "bricks", "ratio", "encode_s", f"psnr_{dev}", "psnr_cpu",
            "max_decode_diff_over_range", f"decode_s_{dev}", "decode_s_cpu",
            f"query_mpts_{dev}_1e+06", f"query_mpts_{dev}_1e+07", "query_mpts_cpu_1e+06"]
    print(f"\n{result['device']}, torch {result['torch']}, {result['date']}\n")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in result["rows"]:
        print("| " + " | ".join(f"{row.get(k):.3g}" if isinstance(row.get(k), float) else str(row.get(k))
                                for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
