"""Rate–distortion of hybrid rate allocation (issue 22): at each ratio, neurvol's default
``encode(ratio=r)`` (which keeps the better of a model and a pure predictor file, both at
the full budget) against SZ3 and SPERR at the same bytes, with the pure predictor's own
PSNR next to it so the model's contribution is visible.

Columns per cell: PSNR over the data range / max abs error. neurvol: the whole ``.nvol``
file, header included; which candidate it kept (``model`` or ``predictor``) and the
model's PSNR (``–`` where no model fits the budget). ``vs sz3``: neurvol minus SZ3 in dB.

    python benchmarks/run_rd_hybrid.py                                    # all (slow: fits)
    python benchmarks/run_rd_hybrid.py --no-fit                           # predictor, sz3, sperr
    python benchmarks/run_rd_hybrid.py --volumes sim_neghip --ratios 10,20 --json out.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

sys.path.insert(0, HERE)
from dev_volumes import DEFAULT_DATA, DEV_VOLUMES  # noqa: E402  (benchmarks/ is not a package)
RATIOS = (10.0, 20.0, 50.0, 100.0, 200.0, 400.0, 800.0)
#: The acceptance margin against SZ3 (issue 22), dB.
SZ3_MARGIN_DB = 0.2


def quality(volume: np.ndarray, rec: np.ndarray) -> Tuple[float, float]:
    """(PSNR over the data range, max abs error)."""
    ref = volume.astype(np.float64)
    diff = np.asarray(rec, dtype=np.float64).reshape(ref.shape) - ref
    rng = float(ref.max() - ref.min()) or 1.0
    mse = float(np.mean(diff * diff))
    return (math.inf if mse == 0 else 10 * math.log10(rng * rng / mse)), float(np.abs(diff).max())


def run_predictor(volume: np.ndarray, ratio: float) -> Dict[str, Any]:
    """The pure predictor candidate alone (what ``encode(ratio=)`` weighs; no fit)."""
    from neurvol.encoding.entry import _predictor

    t0 = time.perf_counter()
    cand = _predictor(volume, float(volume.min()), float(volume.max()), ratio,
                      (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    if cand is None:
        return {"error": "the predictor file does not fit the budget"}
    p, m = quality(volume, cand.volume.decode())
    return {"psnr": p, "max_error": m, "bytes": cand.volume.nbytes_file,
            "bound": cand.volume.max_error, "seconds": round(time.perf_counter() - t0, 2)}


def run_neurvol(volume: np.ndarray, ratio: float, steps: Optional[int]) -> Dict[str, Any]:
    """neurvol's default encode at ``ratio``."""
    import neurvol

    t0 = time.perf_counter()
    try:
        nv = neurvol.encode(volume, ratio=ratio, steps=steps, quiet=True, bricks=(1, 1, 1))
    except Exception as exc:  # noqa: BLE001 - an unreachable cell is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}
    seconds = time.perf_counter() - t0
    p, m = quality(volume, nv.decode())
    bb = nv.byte_breakdown()
    cands = nv.hybrid_candidates or {}
    return {"psnr": p, "max_error": m, "bytes": nv.nbytes_file, "content": nv.info()["content"],
            "model_psnr": cands.get("model"), "predictor_psnr": cands.get("predictor"),
            "model_bytes": bb["weights"] + bb["codebooks"] + bb["masks"],
            "correction_bytes": bb.get("correction", 0), "seconds": round(seconds, 1)}


def run_baseline(name: str, volume: np.ndarray, ratio: float) -> Dict[str, Any]:
    from neurvol.bench.baselines import budget_for, get_baseline

    try:
        res = get_baseline(name)(volume, budget_for(volume, ratio))
    except Exception as exc:  # noqa: BLE001 - a codec that cannot run is reported
        return {"error": f"{type(exc).__name__}: {exc}"}
    p, m = quality(volume, res.reconstruction)
    return {"psnr": p, "max_error": m, "bytes": int(res.stored_bytes), "note": res.note}


def _cell(r: Dict[str, Any]) -> str:
    if "psnr" not in r:
        return "–"
    return f"{r['psnr']:.2f} / {r['max_error']:.3g}"


def markdown(rows: List[Dict[str, Any]]) -> str:
    out = ["| volume | ratio | neurvol dB / max err | kept | model dB | predictor dB / max err "
           "| sz3 dB / max err | sperr dB / max err | neurvol − sz3 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        nv, pr, sz, sp = (row.get(k, {}) for k in ("neurvol", "predictor", "sz3", "sperr"))
        best = nv if "psnr" in nv else pr     # --no-fit: the predictor stands in
        gap = (f"{best['psnr'] - sz['psnr']:+.2f}" if "psnr" in best and "psnr" in sz else "–")
        if "psnr" in best and "psnr" in sz and best["psnr"] < sz["psnr"] - SZ3_MARGIN_DB:
            gap = f"**{gap}**"
        model = nv.get("model_psnr")
        out.append(f"| {row['volume']} | {row['ratio']:g} | {_cell(nv)} | {nv.get('content', '–')} "
                   f"| {'–' if model is None else f'{model:.2f}'} | {_cell(pr)} | {_cell(sz)} "
                   f"| {_cell(sp)} | {gap} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", default="", help="comma-separated stems (default: all 7)")
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    ap.add_argument("--no-fit", action="store_true",
                    help="skip neurvol's encode (the model fits): predictor, sz3, sperr only")
    ap.add_argument("--steps", type=int, default=None, help="fit steps (default: the arch's)")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    wanted = {v for v in args.volumes.split(",") if v}
    ratios = [float(r) for r in args.ratios.split(",") if r]
    rows: List[Dict[str, Any]] = []
    for name, step in DEV_VOLUMES:
        if wanted and name not in wanted:
            continue
        vol = np.ascontiguousarray(np.load(os.path.join(args.data_dir, name + ".npy"),
                                           mmap_mode="r")[::step, ::step, ::step])
        label = f"{name}[::{step}]" if step > 1 else name
        for ratio in ratios:
            print(f"rd_hybrid: {label} @ {ratio:g}", file=sys.stderr, flush=True)
            row: Dict[str, Any] = {"volume": label, "ratio": ratio,
                                   "predictor": run_predictor(vol, ratio),
                                   "sz3": run_baseline("sz3", vol, ratio),
                                   "sperr": run_baseline("sperr", vol, ratio)}
            if not args.no_fit:
                row["neurvol"] = run_neurvol(vol, ratio, args.steps)
            rows.append(row)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ratios": ratios, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
