"""Benchmark of bricked ensembles (issue 5): every number the acceptance asks for, in one
run, printed (and with --out written) as markdown for BENCHMARKS.md.

Part 1: each volume at one ratio as one model vs 2x2x2 and 4x4x4 bricks: achieved ratio
and bytes, PSNR, seam error (mean |jump| across brick faces / mean |jump| elsewhere, on
the decoded volume; the original's value at the same faces in parentheses), fit steps
run (all bricks together), encode wall time with 1 and 2 workers (speed-up; the two
files are checked to be byte-identical), query throughput (random points, after a
warm-up that decodes every brick).
Part 2: a float32 volume built by 2x trilinear upsampling of bio_embryo (512^3 by
default), saved as .npy and encoded from a memmap (brick=128, so 4x4x4 bricks) in a child
process whose peak RSS is measured (the encoding process itself, its largest brick
worker, and the sampled sum over the process tree), then a cold open of the file and a
query of 1,000 random points (bricks decoded, payload bytes read, seconds).

Wall time, estimated from single encodes on the 2-core development machine while other
jobs used it (load 3): one 256^3 model ~150 s; 2x2x2 bricks ~200 s with 1 worker; 4x4x4
~250-320 s (64 small fits, each with a fixed cost: amgsrn's grid placement, the
quantization search, the error pass); 2 workers should take ~0.6x on two free cores (not
measured at full size: the cores were busy). Part 1 is then ~16 min
per volume; part 2 ~9 min (about 50 fitted 132^3 bricks at ~15 s each with 500 steps, on
2 workers). The default run takes ~40-45 min on such a machine, ~30 min on an idle one.
``--steps`` caps part 1 (``--steps 1000`` saves ~20 %, with some PSNR loss in every row),
``--big-steps`` part 2 (it measures memory and random access; its PSNR is only reported).

Acceptance (issue 21): bricked vs one model at the same bytes, each volume bricked with
``--brick`` (default 128, so 2x2x2 bricks of the 256^3 volumes) and one model sized to the
bricked file's bytes; passes when the bricks are within 0.5 dB:
    python benchmarks/run_bricks.py --acceptance --out accept.md --json accept.json
    (quick sanity: --acceptance --crop 128 --brick 64 --steps 300)

Full run (the issue 5 table; do not run it next to other CPU-heavy jobs):
    python benchmarks/run_bricks.py --out bricks.md --json bricks.json
Quick check (a few minutes; tiny crops and fits, numbers meaningless):
    python benchmarks/run_bricks.py --quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import neurvol  # noqa: E402
from neurvol._atomic import atomic_write  # noqa: E402
from neurvol.container import NvolReader  # noqa: E402
from neurvol.metrics import psnr  # noqa: E402

DATA = os.environ.get("NEURVOL_DATA", "/work/shared/data")
GRIDS = [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
QUICK = dict(crop=64, steps=20, big_steps=20, ratio=10.0, big_size=96, brick=48,
             query_points=20_000)


def seam_error(vol: np.ndarray, grid) -> float:
    """Mean |difference| between the voxels on both sides of every brick face, divided by
    the mean |difference| of neighbours elsewhere (about 1.0: no visible seam)."""
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


# ----------------------------------------------------------------------------- part 1
def part1(args, report) -> list:
    rows = []
    for name in args.volumes:
        vol = load(name, args.crop)
        for grid in GRIDS:
            row = {"volume": name, "shape": list(vol.shape), "bricks": "x".join(map(str, grid))}
            try:
                row.update(measure(vol, grid, args))
            except neurvol.NeurvolError as exc:   # e.g. 4x4x4 of a small crop: budget too small
                row["error"] = str(exc)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            report(rows, None)
    return rows


def measure(vol: np.ndarray, grid, args) -> dict:
    times, blobs = {}, {}
    for workers in ((1,) if grid == (1, 1, 1) else (1, 2)):
        t = time.perf_counter()
        nv = neurvol.encode(vol, ratio=args.ratio, bricks=grid, ghost=args.ghost,
                            steps=args.steps, seed=0, workers=workers, quiet=True,
                            arch=args.arch)
        times[workers] = time.perf_counter() - t
        blobs[workers] = nv.to_bytes()
    rec = nv.decode(dtype=np.float32)
    row = dict(ratio=round(nv.ratio, 1), bytes=nv.nbytes_file, psnr=round(psnr(vol, rec), 2),
               seam=round(seam_error(rec, grid), 3) if grid != (1, 1, 1) else None,
               seam_original=round(seam_error(vol, (2, 2, 2) if grid == (1, 1, 1) else grid), 3),
               steps=nv.header["fit"]["steps"],
               encode_s_1w=round(times[1], 1), encode_s_2w=round(times[2], 1) if 2 in times else None,
               speedup=round(times[1] / times[2], 2) if 2 in times else None,
               same_bytes=(blobs[1] == blobs[2]) if 2 in blobs else None)
    del rec
    rng = np.random.default_rng(0)
    hi = np.array(vol.shape) - 1
    with neurvol.NeuralVolume(NvolReader(blobs[1])) as cold:
        cold.query(rng.uniform(0, hi, (20_000, 3)))          # warm-up: decodes the bricks
        pts = rng.uniform(0, hi, (args.query_points, 3))
        t = time.perf_counter()
        cold.query(pts)
        row["query_Mpts_s"] = round(len(pts) / (time.perf_counter() - t) / 1e6, 3)
    return row


# ----------------------------------------------------------------------------- acceptance
#: Most PSNR the bricked file may lose against one model at the same bytes (dB).
ACCEPT_DB = 0.5


def max_error(vol: np.ndarray, rec: np.ndarray) -> float:
    """Largest absolute error, in the volume's units."""
    return round(float(np.abs(rec.astype(np.float64) - vol).max()), 2)


def acceptance(args, report) -> list:
    """Each volume bricked (``--brick``, ``--workers``), then as one model at the bricked
    file's bytes; PSNR of both over every voxel."""
    rows = []
    for name in args.volumes:
        vol = load(name, args.crop)
        row = {"volume": name, "shape": list(vol.shape), "brick": args.brick}
        kw = dict(steps=args.steps, seed=0, quiet=True, arch=args.arch)
        t = time.perf_counter()
        bricked = neurvol.encode(vol, ratio=args.ratio, brick=args.brick, ghost=args.ghost,
                                 workers=args.workers, **kw)
        rec = bricked.decode(dtype=np.float32)
        row.update(bricked_s=round(time.perf_counter() - t, 1), bricked_bytes=bricked.nbytes_file,
                   bricks="x".join(map(str, bricked.header["bricks"]["grid"])),
                   bricked_psnr=round(psnr(vol, rec), 2), bricked_max_err=max_error(vol, rec),
                   bricked_pipeline=bricked.info()["codec"]["pipeline"])
        t = time.perf_counter()
        single = neurvol.encode(vol, ratio=vol.nbytes / bricked.nbytes_file, bricks=(1, 1, 1),
                                **kw)
        rec = single.decode(dtype=np.float32)
        row.update(single_s=round(time.perf_counter() - t, 1), single_bytes=single.nbytes_file,
                   single_psnr=round(psnr(vol, rec), 2), single_max_err=max_error(vol, rec))
        del rec
        row["delta_db"] = round(row["bricked_psnr"] - row["single_psnr"], 2)
        row["pass"] = row["delta_db"] >= -ACCEPT_DB
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        report(rows, None)
    return rows


def acceptance_markdown(args, rows: list, when_and_where: bool = True) -> str:
    """The acceptance table; ``when_and_where`` adds this checkout's commit, today's date
    and the machine (right when printing a fresh run, wrong when re-rendering a stored one,
    whose heading already says them)."""
    import torch

    settings = (f"Bricked vs one model at the same bytes: ratio {args.ratio:g}, bricks of "
                f"{args.brick}, ghost {args.ghost}, arch {args.arch}, steps "
                f"{args.steps or 'default'}, seed 0, {args.workers} worker(s)")
    if when_and_where:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=HERE).stdout.strip()
        settings += (f"; commit {commit}, {time.strftime('%Y-%m-%d')}, "
                     f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                     f"torch {torch.__version__}")
    out = [settings + ".", "",
           "| volume | bricks | bricked bytes | bricked PSNR dB | bricked max error | one model "
           "bytes | one model PSNR dB | one model max error | difference dB | within 0.5 dB | "
           "bricked s | one model s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['volume']} {'x'.join(map(str, r['shape']))} | {r['bricks']} | "
                   f"{r['bricked_bytes']} | {r['bricked_psnr']} | {r.get('bricked_max_err', '–')} | "
                   f"{r['single_bytes']} | {r['single_psnr']} | {r.get('single_max_err', '–')} | "
                   f"{r['delta_db']:+.2f} | {'yes' if r['pass'] else 'NO'} | "
                   f"{r['bricked_s']} | {r['single_s']} |")
    return "\n".join(out + [""])


# ----------------------------------------------------------------------------- part 2
class TreeRSS:
    """Samples the summed RSS of this process and its descendants (psutil) every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        try:
            import psutil
        except ImportError:
            self._proc = None
            return
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in [self._proc] + self._proc.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except Exception:  # noqa: BLE001 - a worker that just exited
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def stop(self) -> int | None:
        if self._proc is None:
            return None
        self._stop.set()
        self._thread.join()
        return self.peak


def child_encode(src: str, out: str, ratio: float, steps, brick: int, workers: int,
                 arch: str) -> None:
    """Runs in a fresh process: encode the memmapped .npy, report time and peak RSS."""
    import resource

    tree = TreeRSS()
    vol = np.load(src, mmap_mode="r")
    t = time.perf_counter()
    nv = neurvol.encode(vol, ratio=ratio, brick=brick, steps=steps, workers=workers,
                        quiet=True, arch=arch)
    nv.save(out)
    seconds = time.perf_counter() - t
    tree_peak = tree.stop()
    kib = 1024 if sys.platform != "darwin" else 1
    print(json.dumps({
        "encode_s": round(seconds, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "peak_rss_worker_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
        "peak_rss_tree_bytes": tree_peak, "psnr_estimate": nv.header["fit"]["psnr"],
        "steps": nv.header["fit"]["steps"], "file_bytes": nv.nbytes_file,
        "ratio": round(nv.ratio, 1), "bricks": nv.header["bricks"]["grid"]}))


def upsample_to(path: str, n: int) -> None:
    """bio_embryo upsampled trilinearly to n^3 float32, written slab by slab to a .npy."""
    import torch

    src = torch.from_numpy(load("bio_embryo", 0).astype(np.float32))[None, None]
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, n, n))
    axis = torch.linspace(-1, 1, n)
    step = max(1, n // 32)
    for z0 in range(0, n, step):
        gz, gy, gx = torch.meshgrid(axis[z0:z0 + step], axis, axis, indexing="ij")
        grid = torch.stack([gx, gy, gz], -1)[None]
        out[z0:z0 + step] = torch.nn.functional.grid_sample(
            src, grid, mode="bilinear", align_corners=True)[0, 0].numpy()
    out.flush()
    del out


def part2(args) -> dict:
    n = args.big_size
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = os.path.join(tmp, "embryo_up.npy")
        t = time.perf_counter()
        upsample_to(path, n)
        build_s = time.perf_counter() - t
        nvol = os.path.join(tmp, "big.nvol")
        code = ("import sys; sys.path.insert(0, %r); from run_bricks import child_encode; "
                "child_encode(%r, %r, %r, %r, %r, %r, %r)"
                % (HERE, path, nvol, args.ratio, args.big_steps, args.brick, args.workers,
                   args.arch))
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env)
        if res.returncode != 0:
            raise RuntimeError(f"the encoding child failed:\n{res.stderr[-4000:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row.update(shape=[n, n, n], volume_bytes=n ** 3 * 4, build_s=round(build_s, 1))
        pts = np.random.default_rng(1).uniform(0, n - 1, (1000, 3))
        t = time.perf_counter()
        with neurvol.open(nvol) as nv:
            nv.query(pts)
            row.update(query_1000_cold_s=round(time.perf_counter() - t, 3),
                       bricks_decoded=nv.stats["bricks_read"], bricks_total=nv._reader.brick_count,
                       bytes_read=nv.stats["bytes_read"])
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


# ----------------------------------------------------------------------------- report
def _gib(v) -> str:
    return "n/a" if v is None else f"{v / 2**30:.2f} GiB"


def markdown(args, rows: list, big: dict | None, elapsed: float | None) -> str:
    import torch

    out = [f"Bricked ensembles (issue 5): ratio {args.ratio:g}, arch {args.arch}, ghost "
           f"{args.ghost}, steps {args.steps or 'default (1500)'}, seed 0; "
           f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
           f"{torch.__version__} ({args.threads} thread(s) for one model; bricks use one "
           "thread per worker)." + (f" Whole run {elapsed / 60:.1f} min." if elapsed else ""),
           ""]
    if rows:
        out += ["| volume | bricks | ratio | bytes | PSNR dB | seam (original) | steps | "
                "encode 1 worker s | 2 workers s | speed-up | same bytes | query Mpts/s |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            vol = f"{r['volume']} {'x'.join(map(str, r['shape']))}"
            if "error" in r:
                out.append(f"| {vol} | {r['bricks']} | {r['error']} |" + " |" * 9)
                continue
            seam = "–" if r["seam"] is None else f"{r['seam']} ({r['seam_original']})"
            dash = lambda v: "–" if v is None else v  # noqa: E731
            out.append(f"| {vol} | {r['bricks']} | {r['ratio']} | {r['bytes']} | {r['psnr']} | "
                       f"{seam} | {r['steps']} | {r['encode_s_1w']} | {dash(r['encode_s_2w'])} | "
                       f"{dash(r['speedup'])} | {dash(r['same_bytes'])} | {r['query_Mpts_s']} |")
        out.append("")
    if big:
        ok = big["peak_rss_tree_bytes"] or big["peak_rss_bytes"] + big["peak_rss_worker_bytes"] * args.workers
        out += [f"{'x'.join(map(str, big['shape']))} float32 ({big['volume_bytes'] / 2**30:.2f} GiB, "
                f"bio_embryo upsampled 2x trilinearly), encoded from a memmapped .npy with "
                f"brick={args.brick} ({'x'.join(map(str, big['bricks']))} bricks), "
                f"{args.workers} worker(s), {args.big_steps or 1500} steps per brick:",
                "",
                "| encode s | peak RSS: encoding process | largest worker | process tree (sampled) "
                "| < 2 GiB | file bytes | ratio | PSNR dB (bricks' estimate) | cold open + 1,000 "
                "random points s | bricks decoded | payload bytes read |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
                f"| {big['encode_s']} | {_gib(big['peak_rss_bytes'])} | "
                f"{_gib(big['peak_rss_worker_bytes'])} | {_gib(big['peak_rss_tree_bytes'])} | "
                f"{'yes' if ok < 2 * 2**30 else 'NO'} | {big['file_bytes']} | {big['ratio']} | "
                f"{big['psnr_estimate']} | {big['query_1000_cold_s']} | "
                f"{big['bricks_decoded']}/{big['bricks_total']} | {big['bytes_read']} |", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", nargs="+", default=["sim_richtmyer_meshkov_t20", "bio_embryo"])
    ap.add_argument("--ratio", type=float, default=100.0)
    ap.add_argument("--steps", type=int, default=None,
                    help="fit steps in part 1 (default: encode's, 1500)")
    ap.add_argument("--big-steps", type=int, default=500,
                    help="fit steps per brick in part 2 (default: %(default)s; caps its time)")
    ap.add_argument("--arch", default="auto")
    ap.add_argument("--ghost", type=int, default=2)
    ap.add_argument("--crop", type=int, default=0, help="centre crop of part 1's volumes")
    ap.add_argument("--query-points", type=int, default=200_000)
    ap.add_argument("--big-size", type=int, default=512)
    ap.add_argument("--brick", type=int, default=128,
                    help="brick size of part 2 and of --acceptance")
    ap.add_argument("--workers", type=int, default=2, help="workers of part 2 and of --acceptance")
    ap.add_argument("--acceptance", action="store_true",
                    help="only the issue 21 acceptance: bricked vs one model at the same bytes")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of this process (the one-model encodes); default 1, so "
                         "times compare with one brick worker")
    ap.add_argument("--tmp", default=None, help="directory for the upsampled volume")
    ap.add_argument("--skip-part1", action="store_true")
    ap.add_argument("--skip-part2", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test of the whole script on tiny crops and fits: " + ", ".join(
                        f"{k}={v}" for k, v in QUICK.items()))
    ap.add_argument("--out", default=None, help="write the markdown here (after every row)")
    ap.add_argument("--json", default=None, help="write the rows here (after every row)")
    args = ap.parse_args()
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    def report(rows, big, elapsed=None) -> None:
        if args.json:
            atomic_write(args.json, json.dumps({"rows": rows, "big": big, "args": vars(args)},
                                               indent=1).encode())
        if args.out:
            atomic_write(args.out, (markdown(args, rows, big, elapsed) + "\n").encode())

    if args.acceptance:
        def report_acceptance(rows, _big) -> None:
            if args.json:
                atomic_write(args.json, json.dumps({"rows": rows, "args": vars(args)},
                                                   indent=1).encode())
            if args.out:
                atomic_write(args.out, acceptance_markdown(args, rows).encode())
        rows = acceptance(args, report_acceptance)
        print(acceptance_markdown(args, rows))
        sys.exit(0 if all(r["pass"] for r in rows) else 1)
    rows = [] if args.skip_part1 else part1(args, report)
    big = None if args.skip_part2 else part2(args)
    elapsed = time.perf_counter() - t0
    report(rows, big, elapsed)
    print(markdown(args, rows, big, elapsed))


if __name__ == "__main__":
    main()
