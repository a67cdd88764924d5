"""Benchmark of bricked ensembles (issue 5). Prints a markdown table for BENCHMARKS.md.

Part 1: each volume at one ratio as one model vs 2x2x2 and 4x4x4 bricks: PSNR, seam
error (mean |jump| across brick faces / mean |jump| elsewhere, on the decoded volume),
encode wall time with 1 and 2 workers (speed-up; same bytes checked), query throughput.
Part 2: a float32 volume built by 2x trilinear upsampling of bio_embryo, saved as .npy
and encoded from a memmap in a child process (peak RSS reported), then a cold open and
a 1,000-random-point query (bricks decoded, bytes read, seconds).

Full run (takes long; do not run on a shared machine):
    python benchmarks/run_bricks.py
Quick check:
    python benchmarks/run_bricks.py --crop 64 --steps 20 --big-size 96 --volumes bio_embryo
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import neurvol  # noqa: E402
from neurvol.metrics import psnr  # noqa: E402

DATA = "/work/shared/data"


def seam_error(vol: np.ndarray, grid) -> float:
    """Mean |difference| between the voxels on both sides of every brick face, divided by
    the mean |difference| of neighbours elsewhere (1.0: no visible seam)."""
    v = vol.astype(np.float64)
    at, inside = [], []
    for axis, nb in enumerate(grid):
        if nb == 1:
            continue
        n = v.shape[axis]
        d = np.moveaxis(np.abs(np.diff(v, axis=axis)), axis, 0)
        faces = sorted({int(math.floor(b * (n - 1) / nb)) for b in range(1, nb)})
        at.append(d[faces].mean())
        inside.append(np.delete(d, faces, axis=0).mean())
    return float(np.mean(at) / np.mean(inside)) if at else float("nan")


def load(name: str, crop: int) -> np.ndarray:
    v = np.load(os.path.join(DATA, name + ".npy"), mmap_mode="r")
    if crop:
        c = [max(0, (s - crop) // 2) for s in v.shape]
        v = v[c[0]:c[0] + crop, c[1]:c[1] + crop, c[2]:c[2] + crop]
    return np.ascontiguousarray(v)


def part1(args) -> list:
    rows = []
    for name in args.volumes:
        vol = load(name, args.crop)
        for grid in [(1, 1, 1), (2, 2, 2), (4, 4, 4)]:
            row = {"volume": name, "shape": list(vol.shape), "bricks": "x".join(map(str, grid))}
            try:
                row.update(_measure(vol, grid, args))
            except neurvol.NeurvolError as exc:   # e.g. 4x4x4 of a tiny crop: budget too small
                row["error"] = str(exc)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _measure(vol: np.ndarray, grid, args) -> dict:
    row: dict = {}
    if True:
        if True:
            times, blobs = {}, {}
            for workers in (1, 2):
                if grid == (1, 1, 1) and workers == 2:
                    continue
                t = time.perf_counter()
                nv = neurvol.encode(vol, ratio=args.ratio, bricks=grid, ghost=args.ghost,
                                    steps=args.steps, seed=0, workers=workers, quiet=True,
                                    arch=args.arch)
                times[workers] = time.perf_counter() - t
                blobs[workers] = nv.to_bytes()
            rec = nv.decode(dtype=np.float32)
            row.update(ratio=round(nv.ratio, 1), psnr=round(psnr(vol, rec), 2),
                       seam=round(seam_error(rec, grid), 3) if grid != (1, 1, 1) else None,
                       seam_original=round(seam_error(vol, (2, 2, 2) if grid == (1, 1, 1) else grid), 3),
                       encode_s_1w=round(times[1], 1), encode_s_2w=round(times.get(2, float("nan")), 1),
                       speedup=round(times[1] / times[2], 2) if 2 in times else None,
                       same_bytes=(blobs[1] == blobs[2]) if 2 in blobs else None)
            pts = np.random.default_rng(0).uniform(0, np.array(vol.shape) - 1, (200_000, 3))
            with neurvol.NeuralVolume(neurvol.container.NvolReader(blobs[1])) as cold:
                t = time.perf_counter()
                cold.query(pts)
                row["query_Mpts_s"] = round(len(pts) / (time.perf_counter() - t) / 1e6, 3)
    return row


def _child_encode(src: str, out: str, ratio: float, steps, brick: int, workers: int, arch: str) -> None:
    import resource

    vol = np.load(src, mmap_mode="r")
    t = time.perf_counter()
    nv = neurvol.encode(vol, ratio=ratio, brick=brick, steps=steps, workers=workers,
                        quiet=True, arch=arch)
    nv.save(out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"encode_s": round(time.perf_counter() - t, 1), "peak_rss_bytes": peak,
                      "peak_rss_worker_bytes": kids, "psnr": nv.header["fit"]["psnr"],
                      "file_bytes": nv.nbytes_file, "bricks": nv.header["bricks"]["grid"]}))


def part2(args) -> dict:
    import torch

    src = load("bio_embryo", 0)
    n = args.big_size
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = os.path.join(tmp, "embryo_up.npy")
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n, n))
        t = torch.from_numpy(src.astype(np.float32))[None, None]
        step = max(1, n // 16)
        for z0 in range(0, n, step):  # trilinear upsampling, slab by slab
            zs = torch.linspace(-1, 1, n)[z0:z0 + step]
            ys = torch.linspace(-1, 1, n)
            xs = torch.linspace(-1, 1, n)
            gz, gy, gx = torch.meshgrid(zs, ys, xs, indexing="ij")
            grid = torch.stack([gx, gy, gz], -1)[None]
            out[z0:z0 + step] = torch.nn.functional.grid_sample(
                t, grid, mode="bilinear", align_corners=True)[0, 0].numpy()
        out.flush()
        del out
        nvol = os.path.join(tmp, "big.nvol")
        code = ("import sys; sys.path.insert(0, %r); from run_bricks import _child_encode; "
                "_child_encode(%r, %r, %r, %r, %r, %r, %r)"
                % (HERE, path, nvol, args.ratio, args.steps, args.brick, args.workers, args.arch))
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        pts = np.random.default_rng(1).uniform(0, n - 1, (1000, 3))
        t = time.perf_counter()
        with neurvol.open(nvol) as nv:
            nv.query(pts)
            row.update(query_1000_cold_s=round(time.perf_counter() - t, 3),
                       bricks_decoded=nv.stats["bricks_read"], bricks_total=nv._reader.brick_count,
                       bytes_read=nv.stats["bytes_read"], shape=[n, n, n])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", nargs="+", default=["sim_richtmyer_meshkov_t20", "bio_embryo"])
    ap.add_argument("--ratio", type=float, default=100.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--ghost", type=int, default=2)
    ap.add_argument("--crop", type=int, default=0, help="centre crop (quick checks)")
    ap.add_argument("--big-size", type=int, default=512)
    ap.add_argument("--brick", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tmp", default=None, help="directory for the upsampled volume")
    ap.add_argument("--skip-part2", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = part1(args)
    big = None if args.skip_part2 else part2(args)
    print("\n| volume | bricks | ratio | PSNR dB | seam (orig) | encode 1w s | 2w s | speed-up | same bytes | query Mpts/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['volume']} | {r['bricks']} | {r['error']} |")
            continue
        print(f"| {r['volume']} | {r['bricks']} | {r['ratio']} | {r['psnr']} | {r['seam']} ({r['seam_original']}) | "
              f"{r['encode_s_1w']} | {r['encode_s_2w']} | {r['speedup']} | {r['same_bytes']} | {r['query_Mpts_s']} |")
    if big:
        print(f"\n{big['shape']} float32 memmap, bricks {big['bricks']}: encode {big['encode_s']} s, "
              f"peak RSS {big['peak_rss_bytes'] / 2**30:.2f} GiB (workers {big['peak_rss_worker_bytes'] / 2**30:.2f} GiB), "
              f"PSNR {big['psnr']} dB, {big['file_bytes']} bytes; 1,000 random points from a cold open: "
              f"{big['query_1000_cold_s']} s, {big['bricks_decoded']}/{big['bricks_total']} bricks decoded, "
              f"{big['bytes_read']} bytes read")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "big": big}, f, indent=1)


if __name__ == "__main__":
    main()
