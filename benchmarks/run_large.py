"""Out-of-core encode of a large float32 volume: peak memory of the encoding process tree,
time, quality, the per-brick PSNR spread and the 1 -> 2 worker speed-up (issue 26).

The volume: ``bio_embryo`` (256^3 uint8) upsampled by ``--size / 256`` per axis,
trilinearly with aligned corners (output voxel ``i`` samples the source at
``i * 255 / (size - 1)``), as float32 into a ``.npy`` under ``--cache`` (default
``$TMPDIR/neurvol_large``; 4 GiB at 1024^3, 0.5 GiB at 512^3), built a source plane at a
time so building it never holds more than two upsampled planes. The encode reads it
memmapped (``np.load(mmap_mode="r")``): brick workers open the file themselves.

Each encode runs in a child process; this script samples the child's whole process tree
(the client and its brick workers, Dask's nanny and worker processes included; with N
local workers the client fits too, beside a pool of N - 1 processes) every
``--sample`` seconds: the sum of RSS (shared library pages counted once per process) and
the sum of PSS (shared pages split between the processes that map them: the memory the
tree actually takes), and the largest single process.

``--max-bricks N`` fits only the first N model bricks (the others stored as their mean,
:func:`neurvol.encoding.bricked.partial_bricks`), or with ``--largest`` the N with the
largest budget shares (the largest models, where a full encode's memory peaks): every
fitted brick keeps the budget share and model of the full encode, so memory and seconds
per brick are what a full run costs; the PSNR and max abs error are then those of the
fitted bricks' cores, and the row is marked partial. A full 1024^3 encode (512 bricks)
takes hours on 2 cores.

    python benchmarks/run_large.py --size 512 --max-bricks 4          # minutes
    python benchmarks/run_large.py --size 512 --max-bricks 4 --largest  # the peak bricks
    python benchmarks/run_large.py --size 1024 --max-bricks 4 --dask  # + a Dask LocalCluster
    python benchmarks/run_large.py --size 512                         # full 512^3 (~15 min)
    python benchmarks/run_large.py --size 1024 --workers 2 --progress # full 1024^3 (hours)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dev_volumes import DEFAULT_DATA  # noqa: E402  (benchmarks/ is not a package)

SOURCE = "bio_embryo"
RATIO = 100.0
#: Brick edge of the encodes (the size automatic bricking picks for these volumes).
BRICK = 128
#: Free disk space kept beyond the volume itself when building it.
DISK_MARGIN = 1 << 30
#: Output planes decoded per slab of the full-volume PSNR / max error pass.
SLAB_PLANES = 16
GIB, MIB = float(1 << 30), float(1 << 20)
#: Processes of the tree below this peak (MiB) are helpers, not brick workers (the table
#: lists the workers' peaks).
WORKER_MIB = 150


# ---------------------------------------------------------------------- the volume
def _axis_weights(n_in: int, n_out: int):
    """Source indices and weights of aligned-corner linear resampling along one axis."""
    pos = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / max(n_out - 1, 1))
    i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 2)
    return i0, pos - i0


def _upsample_plane(plane: np.ndarray, ya, xa) -> np.ndarray:
    """One source plane resampled in y then x (float64)."""
    (yi, yw), (xi, xw) = ya, xa
    p = plane.astype(np.float64)
    p = p[yi] * (1.0 - yw)[:, None] + p[yi + 1] * yw[:, None]
    return p[:, xi] * (1.0 - xw) + p[:, xi + 1] * xw


def build_volume(size: int, cache: str, data_dir: str) -> str:
    """The ``size^3`` float32 ``.npy`` (built once; reused when it exists)."""
    path = os.path.join(cache, f"{SOURCE}_up{size}.npy")
    shape = (size,) * 3
    if os.path.exists(path):
        arr = np.load(path, mmap_mode="r")
        if arr.shape == shape and arr.dtype == np.float32:
            return path
    os.makedirs(cache, exist_ok=True)
    need = math.prod(shape) * 4
    free = shutil.disk_usage(cache).free
    if free < need + DISK_MARGIN:
        sys.exit(f"{cache}: {free / GIB:.1f} GiB free, the {size}^3 float32 volume needs "
                 f"{need / GIB:.1f} GiB (+{DISK_MARGIN / GIB:.0f}); pass --cache elsewhere")
    src = np.load(os.path.join(data_dir, f"{SOURCE}.npy"), mmap_mode="r")
    za, ya, xa = (_axis_weights(n, size) for n in src.shape)
    tmp = path + ".part"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    planes: Dict[int, np.ndarray] = {}
    for z in range(size):
        k, w = int(za[0][z]), float(za[1][z])
        for j in list(planes):
            if j < k:
                del planes[j]
        for j in (k, k + 1):
            if j not in planes:
                planes[j] = _upsample_plane(np.asarray(src[j]), ya, xa)
        out[z] = (planes[k] * (1.0 - w) + planes[k + 1] * w).astype(np.float32)
        if z % 64 == 63:
            out.flush()
    out.flush()
    del out
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------- memory sampling
class TreeSampler:
    """Peak memory of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float):
        import psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = self.peak_pss = self.peak_one = 0
        self.peak_procs = 0
        self.peak_by_pid: Dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil
        while not self._stop.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.Error:
                break
            rss = pss = one = 0
            for p in procs:
                try:
                    m = p.memory_full_info()
                except psutil.Error:
                    continue
                rss += m.rss
                pss += getattr(m, "pss", m.rss)
                one = max(one, m.rss)
                self.peak_by_pid[p.pid] = max(self.peak_by_pid.get(p.pid, 0), m.rss)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.peak_one, self.peak_procs = max(self.peak_one, one), max(self.peak_procs, len(procs))
            self._stop.wait(self.interval)


# ---------------------------------------------------------------------- the encode (child)
def child(args: argparse.Namespace) -> None:
    """Encode the volume at ``args.path``; write the file to ``args.child + ".nvol"`` and
    the encode's figures as JSON to ``args.child``."""
    import neurvol
    from neurvol.encoding.bricked import partial_bricks

    vol = np.load(args.path, mmap_mode="r")
    client = cluster = None
    if args.executor == "dask":
        import dask
        from distributed import Client, LocalCluster
        # distributed's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536 (return
        # memory to the OS early), which also fixes glibc's otherwise adaptive mmap
        # threshold: a fit's large per-step buffers are then mapped and unmapped every
        # step. None unsets it; brick jobs trim the heap themselves after each brick.
        dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    codec = {"rate": 0} if args.no_rate else None
    t = time.perf_counter()
    try:
        if args.max_bricks:
            with partial_bricks(args.max_bricks, largest=args.largest):
                nv = neurvol.encode(vol, ratio=RATIO, brick=args.brick, workers=args.workers,
                                    executor=client, steps=args.steps, codec=codec,
                                    quiet=not args.progress)
        else:
            nv = neurvol.encode(vol, ratio=RATIO, brick=args.brick, workers=args.workers,
                                executor=client, steps=args.steps, codec=codec,
                                quiet=not args.progress)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    seconds = time.perf_counter() - t
    nv.save(args.child + ".nvol")
    out = {"encode_s": seconds, "jobs_s": nv.jobs_seconds,
           "brick_psnr": [nv.brick_psnr[b] for b in sorted(nv.brick_psnr)],
           "fitted_bricks": getattr(nv, "partial_bricks", None)}
    with open(args.child, "w") as f:
        json.dump(out, f)


def evaluate(path: str, nvol: str, enc: Dict[str, Any]) -> Dict[str, Any]:
    """Quality of the encoded file against the volume (after the encode, outside the
    measured process tree): PSNR and max abs error over the fitted bricks' cores (a
    partial encode) or the whole volume, slab by slab."""
    import neurvol
    from neurvol.ensemble import BrickLayout

    vol = np.load(path, mmap_mode="r")
    with neurvol.open(nvol) as nv:
        hdr = nv.header["bricks"]
        layout = BrickLayout.checked(vol.shape, hdr["grid"], hdr["ghost"],
                                     hdr["blend"] != "none")
        fitted = enc["fitted_bricks"]
        lo, hi = (float(v) for v in nv.info()["value_range"])
        regions = ([layout.core_slices(b) for b in fitted] if fitted is not None else
                   [(slice(z, min(z + SLAB_PLANES, vol.shape[0])), slice(None), slice(None))
                    for z in range(0, vol.shape[0], SLAB_PLANES)])
        sq, n, worst = 0.0, 0, 0.0
        for sl in regions:
            err = nv[sl].astype(np.float64) - np.asarray(vol[sl], dtype=np.float64)
            sq += float(np.sum(err * err))
            n += err.size
            worst = max(worst, float(np.abs(err).max()))
        per = enc["brick_psnr"]
        return {"shape": list(vol.shape), "bricks": layout.count, "fitted": len(per),
                "partial": fitted is not None, "file_bytes": nv.nbytes_file,
                "ratio": nv.ratio, "header_psnr_db": nv.fit_psnr,
                "psnr_db": 10.0 * math.log10((hi - lo) ** 2 / (sq / n)) if sq > 0 else math.inf,
                "max_abs_error": worst,
                "brick_psnr": {"min": min(per), "median": statistics.median(per),
                               "max": max(per), "std": statistics.pstdev(per)} if per else None}


def measure(path: str, executor: str, workers: int, args: argparse.Namespace) -> Dict[str, Any]:
    """One encode in a child process, its tree's memory sampled."""
    with tempfile.TemporaryDirectory() as tmp:
        res = os.path.join(tmp, "res.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", res, "--path", path,
               "--executor", executor, "--workers", str(workers), "--brick", str(args.brick)]
        if args.max_bricks:
            cmd += ["--max-bricks", str(args.max_bricks)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        if args.largest:
            cmd += ["--largest"]
        if args.no_rate:
            cmd += ["--no-rate"]
        if args.progress:
            cmd += ["--progress"]
        proc = subprocess.Popen(cmd)
        with TreeSampler(proc.pid, args.sample) as s:
            rc = proc.wait()
        if rc != 0:
            raise SystemExit(f"the encode failed (exit {rc}): {' '.join(cmd)}")
        with open(res) as f:
            enc = json.load(f)
        row = dict(enc, executor=executor, workers=workers, max_bricks=args.max_bricks,
                   largest=bool(args.max_bricks and args.largest),
                   **evaluate(path, res + ".nvol", enc))
    row.update(peak_rss_sum_gib=s.peak_rss / GIB, peak_pss_sum_gib=s.peak_pss / GIB,
               peak_one_mib=s.peak_one / MIB, processes=s.peak_procs,
               peak_client_mib=s.peak_by_pid.get(proc.pid, 0) / MIB,
               peak_others_mib=sorted((v / MIB for k, v in s.peak_by_pid.items()
                                       if k != proc.pid), reverse=True))
    return row


def markdown(rows: List[Dict[str, Any]], speedup: Optional[float]) -> str:
    lines = ["| volume | executor | workers | bricks fitted | encode s | fits s | peak RSS, tree (sum) GiB "
             "| peak PSS, tree GiB | peak RSS MiB: client / workers | ratio | PSNR dB | max abs error "
             "| brick PSNR min / median / max (std) dB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bp = r["brick_psnr"]
        spread = (f"{bp['min']:.2f} / {bp['median']:.2f} / {bp['max']:.2f} ({bp['std']:.2f})"
                  if bp else "–")
        fitted = f"{r['fitted']} / {r['bricks']}" + (
            (" (partial, largest)" if r.get("largest") else " (partial)") if r["partial"] else "")
        # The tree's other processes over the threshold (brick workers; not the resource
        # tracker or a Dask nanny's light parent).
        workers = ", ".join(f"{m:.0f}" for m in r["peak_others_mib"] if m >= WORKER_MIB) or "–"
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} float32 | {r['executor']} | {r['workers']} "
            f"| {fitted} | {r['encode_s']:.1f} | {r['jobs_s']:.1f} | {r['peak_rss_sum_gib']:.2f} "
            f"| {r['peak_pss_sum_gib']:.2f} | {r['peak_client_mib']:.0f} / {workers} "
            f"| {r['ratio']:.1f} "
            f"| {r['psnr_db']:.2f} | {r['max_abs_error']:.4g} | {spread} |")
    out = "\n".join(lines) + "\n"
    if speedup is not None:
        out += f"\n1 -> 2 local workers: the bricks' fits {speedup:.2f}x faster.\n"
    if any(r["partial"] for r in rows):
        out += ("\nPartial rows fit only some bricks (the first ones, or those with the "
                "largest budget shares; the others stored as their mean): PSNR and max abs "
                "error are those of the fitted bricks' cores.\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024, help="edge of the volume (default 1024)")
    p.add_argument("--max-bricks", type=int, default=None,
                   help="fit only this many bricks (a partial encode, see the docstring)")
    p.add_argument("--largest", action="store_true",
                   help="with --max-bricks: fit the bricks with the largest budget shares")
    p.add_argument("--workers", default="1,2",
                   help="local worker counts to run (default 1,2: the speed-up)")
    p.add_argument("--dask", action="store_true",
                   help="also encode on a Dask LocalCluster with the largest worker count")
    p.add_argument("--brick", type=int, default=BRICK)
    p.add_argument("--steps", type=int, default=None, help="fit steps per brick (default: encode's)")
    p.add_argument("--no-rate", action="store_true",
                   help="encode with codec={'rate': 0} (no rate-aware pilot per brick)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "neurvol_large"))
    p.add_argument("--data-dir", default=DEFAULT_DATA)
    p.add_argument("--sample", type=float, default=0.5, help="memory sampling interval, s")
    p.add_argument("--json", default=None)
    p.add_argument("--progress", action="store_true",
                   help="the encodes' progress bar of bricks on stderr (a full 1024^3 run takes hours)")
    # The child's arguments (internal).
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--executor", default="local", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.workers = int(args.workers)
        child(args)
        return
    path = build_volume(args.size, args.cache, args.data_dir)
    counts = [int(w) for w in args.workers.split(",") if w]
    rows = [measure(path, "local", w, args) for w in counts]
    if args.dask:
        rows.append(measure(path, "dask", max(counts), args))
    by = {r["workers"]: r for r in rows if r["executor"] == "local"}
    speedup = by[1]["jobs_s"] / by[2]["jobs_s"] if 1 in by and 2 in by else None
    table = markdown(rows, speedup)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "speedup": speedup,
                       "markdown": table}, f, indent=1)


if __name__ == "__main__":
    main()
