"""Run neurvol and the baselines on one volume and tabulate the results.

Each row is a dict with the keys in :data:`COLUMNS` (values ``None`` where a column does not
apply, e.g. query throughput for a baseline)::

    volume, shape, dtype, method, ratio_requested, ratio_achieved, bytes, psnr_db,
    max_abs_error, encode_s, decode_s, query_mpts_s, cold_query_ms, params, note
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..metrics import max_abs_error, psnr
from .baselines import BASELINES, BaselineUnavailable, budget_for, get_baseline

COLUMNS = (
    "volume", "shape", "dtype", "method", "ratio_requested", "ratio_achieved", "bytes",
    "psnr_db", "max_abs_error", "encode_s", "decode_s", "query_mpts_s", "cold_query_ms",
    "params", "note",
)

QUERY_POINTS = 10 ** 6
WARMUP_POINTS = 20_000
COLD_POINTS = 1000


def _row(volume_name: str, volume: Any, method: str, ratio: Optional[float]) -> Dict[str, Any]:
    row: Dict[str, Any] = {k: None for k in COLUMNS}
    row.update(volume=volume_name, shape="x".join(str(int(s)) for s in volume.shape),
               dtype=np.dtype(volume.dtype).name, method=method, ratio_requested=ratio, note="")
    return row


def _quality(row: Dict[str, Any], volume: np.ndarray, recon: np.ndarray, nbytes: int) -> None:
    row["bytes"] = int(nbytes)
    row["ratio_achieved"] = volume.nbytes / nbytes if nbytes else math.inf
    row["psnr_db"] = psnr(volume, recon)
    row["max_abs_error"] = max_abs_error(volume, recon)


def random_points(shape: Sequence[int], n: int, seed: int = 0) -> np.ndarray:
    """``n`` uniform random (z, y, x) index coordinates inside the volume (voxel centres 0..s-1)."""
    rng = np.random.default_rng(seed)
    hi = np.asarray(shape, dtype=np.float64) - 1.0
    return rng.random((n, 3)) * hi


def run_neurvol(volume: np.ndarray, name: str, ratio: float, arch: str = "fvsrn", *,
                steps: Optional[int] = None, seed: int = 0, device: Any = None,
                query_points: int = QUERY_POINTS, cold_points: int = COLD_POINTS,
                label: Optional[str] = None, encode_kwargs: Optional[Dict[str, Any]] = None
                ) -> Dict[str, Any]:
    """One neurvol row: encode, full decode, PSNR, query throughput, cold open + query.
    ``encode_kwargs`` (e.g. ``{"codec": {"prune": 0.3}}``) go to ``neurvol.encode``;
    ``label`` names the row (default: the architecture)."""
    import neurvol

    row = _row(name, volume, f"neurvol-{label or arch}", ratio)
    kwargs: Dict[str, Any] = {"arch": arch, "seed": seed, "steps": steps, "quiet": True}
    kwargs.update(encode_kwargs or {})
    if device is not None:
        kwargs["device"] = device
    t0 = time.perf_counter()
    try:
        nv = neurvol.encode(volume, ratio=ratio, **kwargs)
    except neurvol.NeurvolBudgetError as exc:
        row["note"] = f"cannot meet budget: {exc}"
        return row
    except Exception as exc:  # keep a long benchmark going; the row and stderr say what broke
        return _failed(row, exc)
    row["encode_s"] = nv.encode_seconds if nv.encode_seconds is not None else time.perf_counter() - t0
    info = nv.info()
    row["params"] = {"model": info.get("model"), "fit": info.get("fit"),
                     "codec": info.get("codec"), "bytes": nv.byte_breakdown()}

    t0 = time.perf_counter()
    recon = nv.decode()
    row["decode_s"] = time.perf_counter() - t0
    _quality(row, volume, recon, nv.nbytes_file)
    del recon

    # Throughput on the in-memory object (models already decoded by decode() above), after
    # a warm-up query so one-time costs (brick decode, allocator, thread pools) are excluded.
    pts = random_points(volume.shape, query_points, seed)
    nv.query(pts[:WARMUP_POINTS])
    t0 = time.perf_counter()
    nv.query(pts)
    dt = time.perf_counter() - t0
    row["query_mpts_s"] = query_points / dt / 1e6 if dt > 0 else math.inf

    # Cold: a fresh process-level open of the saved file (header parse + brick decode +
    # model build) and one small query. The OS page cache may hold the file.
    with tempfile.TemporaryDirectory(prefix="neurvol-bench-") as tmp:
        path = os.path.join(tmp, "bench.nvol")
        nv.save(path)
        small = pts[:cold_points]
        t0 = time.perf_counter()
        with neurvol.open(path) as cold:
            cold.query(small)
        row["cold_query_ms"] = (time.perf_counter() - t0) * 1e3
    nv.close()
    return row


def _failed(row: Dict[str, Any], exc: BaseException) -> Dict[str, Any]:
    """``row`` noting the unexpected ``exc`` (its traceback goes to stderr)."""
    traceback.print_exc(file=sys.stderr)
    row["note"] = f"error: {type(exc).__name__}: {exc}"
    return row


def run_baseline(volume: np.ndarray, name: str, method: str, ratio: Optional[float]) -> Dict[str, Any]:
    """One baseline row (``ratio=None`` for budget-free baselines such as zstd)."""
    row = _row(name, volume, method, ratio)
    budget = budget_for(volume, ratio) if ratio else 0
    try:
        fn = get_baseline(method)
        res = fn(volume, budget)
    except (BaselineUnavailable, ValueError) as exc:
        row["note"] = f"skipped: {exc}"
        return row
    except Exception as exc:  # keep a long benchmark going; the row and stderr say what broke
        return _failed(row, exc)
    row["encode_s"], row["decode_s"] = res.encode_seconds, res.decode_seconds
    row["params"], row["note"] = res.params, res.note
    _quality(row, volume, res.reconstruction, res.stored_bytes)
    return row


def run_benchmark(
    volume: Any,
    name: str,
    ratios: Sequence[float],
    archs: Sequence[str] = ("fvsrn",),
    baselines: Sequence[str] = ("downsample",),
    steps: Optional[int] = None,
    seed: int = 0,
    *,
    device: Any = None,
    query_points: int = QUERY_POINTS,
    cold_points: int = COLD_POINTS,
    progress: Optional[Callable[[Dict[str, Any]], None]] = None,
    variants: Sequence[Tuple[str, Dict[str, Any]]] = (),
) -> List[Dict[str, Any]]:
    """Measure every arch and baseline at every ratio on ``volume``; returns one dict per run.

    ``variants``: further neurvol rows as ``(label, encode kwargs)``, e.g. ablations
    ``("plain", {"codec": {"grids": "kmeans", "finetune": 0}})``.

    Baselines that cannot run (library missing, budget below their floor) give a row whose
    ``note`` says why. Budget-free baselines (``zstd``) run once, with ``ratio_requested=None``.
    ``progress(row)`` is called as each row completes.
    """
    vol = np.ascontiguousarray(volume)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise KeyError(f"unknown baseline(s) {unknown}; known: {', '.join(sorted(BASELINES))}")
    rows: List[Dict[str, Any]] = []

    def done(row: Dict[str, Any]) -> None:
        rows.append(row)
        if progress is not None:
            progress(row)

    for ratio in ratios:
        for b in baselines:
            if BASELINES[b].budgeted:
                done(run_baseline(vol, name, b, float(ratio)))
        for arch in archs:
            done(run_neurvol(vol, name, float(ratio), arch, steps=steps, seed=seed, device=device,
                             query_points=query_points, cold_points=cold_points))
        for label, kw in variants:
            kw = dict(kw)
            arch = kw.pop("arch", "auto")
            done(run_neurvol(vol, name, float(ratio), arch, steps=steps, seed=seed, device=device,
                             query_points=query_points, cold_points=cold_points, label=label,
                             encode_kwargs=kw))
    for b in baselines:
        if not BASELINES[b].budgeted:
            done(run_baseline(vol, name, b, None))
    return rows


# ---------------------------------------------------------------------- formatting
_HEADERS = (
    ("volume", "volume"), ("method", "method"), ("ratio_requested", "ratio req"),
    ("ratio_achieved", "ratio"), ("bytes", "bytes"), ("psnr_db", "PSNR dB"),
    ("max_abs_error", "max abs err"), ("encode_s", "encode s"), ("decode_s", "decode s"),
    ("query_mpts_s", "query Mpt/s"), ("cold_query_ms", "open+1k ms"),
)


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "∞"
        if math.isnan(v):
            return "nan"
        if key == "ratio_requested":
            return f"{v:g}"
        if key == "ratio_achieved":
            return f"{v:.1f}"
        if key == "psnr_db":
            return f"{v:.2f}"
        if key in ("encode_s", "decode_s"):
            return f"{v:.4f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"
        if key == "cold_query_ms":
            return f"{v:.1f}"
        if key == "query_mpts_s":
            return f"{v:.2f}"
        if key == "max_abs_error" and abs(v) >= 1000:
            return f"{v:.0f}"
        return f"{v:.4g}"
    return str(v)


def format_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """A GitHub-markdown table of the rows; notes, if any, become numbered footnotes."""
    lines = ["| " + " | ".join(h for _, h in _HEADERS) + " | note |",
             "|" + "---|" * len(_HEADERS) + "---|"]
    notes: List[str] = []
    for r in rows:
        cells = [_fmt(k, r.get(k)).replace("|", "\\|") for k, _ in _HEADERS]
        mark = ""
        if r.get("note"):
            notes.append(str(r["note"]))
            mark = f"[{len(notes)}]"
        lines.append("| " + " | ".join(cells) + f" | {mark} |")
    if notes:
        lines.append("")
        lines.extend(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    return "\n".join(lines)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)          # "inf" / "nan": JSON has no literal for them
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    return v


def rows_to_json(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows with non-finite floats as strings, ready for ``json.dump``."""
    return [_jsonable(r) for r in rows]


def _eprint(row: Dict[str, Any]) -> None:  # default progress printer for scripts
    psnr_s = _fmt("psnr_db", row.get("psnr_db"))
    print(f"  {row['volume']} {row['method']} @{_fmt('ratio_requested', row.get('ratio_requested'))}: "
          f"{psnr_s} dB {row.get('note') or ''}", file=sys.stderr, flush=True)
