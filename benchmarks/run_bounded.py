"""Fixed-bound table (issue 22): the compression ratio each codec reaches under the same
absolute error bound ``E = rel * (max - min)``, on the dev volumes.

Columns: neurvol hybrid (``encode(max_error=E)``: the smaller of the pure predictor and a
model at each of ``--model-ratios`` plus its correction), neurvol pure predictor
(``model_ratios=()``), SZ3 (``pysz`` ABS mode), ZFP (``zfpy`` accuracy mode, tolerance E)
and SPERR (``hdf5plugin.Sperr(absolute=E)`` through h5py; whole-volume chunks on cubes,
64^3 chunks otherwise). Every cell gives the ratio (native bytes / stored bytes; neurvol:
the whole ``.nvol`` file, header included), PSNR over the data range, the max abs error,
and whether the bound held. neurvol's values are what ``decode()`` returns (integers
rounded to the dtype); the classical codecs' are their float output (their guarantee),
so an integer volume rounded afterwards could land up to 0.5 further off. The hybrid's
models are fitted once per volume (``neurvol.encode(ratio=r)``, as ``encode(max_error=)``
fits them) and reused for every bound; a cell's seconds exclude those fits.

    python benchmarks/run_bounded.py                                # everything (slow: fits)
    python benchmarks/run_bounded.py --methods pure,sz3,zfp,sperr   # no model fits (~2 min)
    python benchmarks/run_bounded.py --volumes sim_neghip --json out.json
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

sys.path.insert(0, HERE)
from dev_volumes import DEFAULT_DATA, DEV_VOLUMES  # noqa: E402  (benchmarks/ is not a package)
REL_BOUNDS = (1e-2, 1e-3, 1e-4)
METHODS = ("hybrid", "pure", "sz3", "zfp", "sperr")
SPERR_CHUNK = 64


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """The float type the classical codecs run on (integers up to 16 bits are exact in f4)."""
    if dtype.kind == "f":
        return np.dtype(np.float64) if dtype.itemsize > 4 else np.dtype(np.float32)
    return np.dtype(np.float32) if dtype.itemsize <= 2 else np.dtype(np.float64)


def fit_models(volume: np.ndarray, model_ratios: Tuple[float, ...],
               steps: Optional[int]) -> Dict[float, Any]:
    """The hybrid's candidate models, fitted once per volume (they do not depend on the
    bound); a ratio no model fits is left out."""
    import neurvol
    from neurvol.errors import NeurvolBudgetError

    out = {}
    for r in model_ratios:
        try:
            # Model-only (no pure-predictor candidate): the hybrid corrects the model's decode.
            out[r] = neurvol.encode(volume, ratio=r, steps=steps, quiet=True, bricks=(1, 1, 1),
                                    codec={"hybrid": False})
        except NeurvolBudgetError:
            pass
    return out


def run_neurvol(volume: np.ndarray, e: float,
                models: Optional[Dict[float, Any]]) -> Tuple[int, np.ndarray, Dict[str, Any]]:
    """``encode(max_error=e)`` with the given candidate models (``None``: pure predictor)."""
    from neurvol.encoding.bounded import encode_bounded

    nv = encode_bounded(volume, e, None, model_ratios=tuple(models or ()), models=models,
                        quiet=True)
    bb = nv.byte_breakdown()
    extra = {"model_ratio": nv.bounded_choice["model_ratio"],
             "correction_bytes": bb.get("correction"),
             "model_bytes": bb["weights"] + bb["codebooks"] + bb["masks"]}
    return nv.nbytes_file, nv.decode(), extra


def run_sz3(volume: np.ndarray, e: float) -> Tuple[int, np.ndarray, Dict[str, Any]]:
    from pysz import sz, szConfig, szErrorBoundMode

    arr = np.ascontiguousarray(volume, dtype=_float_dtype(volume.dtype))
    conf = szConfig(arr.shape)
    conf.errorBoundMode = szErrorBoundMode.ABS
    conf.absErrorBound = float(e)
    comp, _ = sz.compress(arr, conf)
    rec, _ = sz.decompress(comp, arr.dtype, arr.shape)
    return len(comp), np.asarray(rec).reshape(arr.shape), {}


def run_zfp(volume: np.ndarray, e: float) -> Tuple[int, np.ndarray, Dict[str, Any]]:
    import zfpy

    arr = np.ascontiguousarray(volume, dtype=_float_dtype(volume.dtype))
    comp = zfpy.compress_numpy(arr, tolerance=float(e))
    return len(comp), zfpy.decompress_numpy(comp), {}


def run_sperr(volume: np.ndarray, e: float) -> Tuple[int, np.ndarray, Dict[str, Any]]:
    import h5py
    import hdf5plugin

    arr = np.ascontiguousarray(volume, dtype=_float_dtype(volume.dtype))
    chunks = arr.shape if len(set(arr.shape)) == 1 else tuple(min(SPERR_CHUNK, n) for n in arr.shape)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        d = f.create_dataset("v", data=arr, chunks=chunks, **hdf5plugin.Sperr(absolute=float(e)))
        stored = int(d.id.get_storage_size())
    with h5py.File(buf, "r") as f:
        rec = f["v"][()]
    return stored, rec, {"chunks": list(chunks)}


def cell(fn: Callable[[], Tuple[int, np.ndarray, Dict[str, Any]]], volume: np.ndarray,
         e: float) -> Dict[str, Any]:
    t0 = time.perf_counter()
    try:
        stored, rec, extra = fn()
    except Exception as exc:  # noqa: BLE001 - a codec that cannot run is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}
    seconds = time.perf_counter() - t0
    ref = volume.astype(np.float64)
    diff = np.asarray(rec, dtype=np.float64).reshape(ref.shape) - ref
    rng = float(ref.max() - ref.min()) or 1.0
    mse = float(np.mean(diff * diff))
    max_err = float(np.abs(diff).max())
    return dict(extra, ratio=volume.nbytes / stored, bytes=stored, max_error=max_err,
                psnr=math.inf if mse == 0 else 10 * math.log10(rng * rng / mse),
                bound_ok=max_err <= e, seconds=round(seconds, 2))


def load(data_dir: str, name: str, step: int) -> np.ndarray:
    v = np.load(os.path.join(data_dir, name + ".npy"), mmap_mode="r")
    return np.ascontiguousarray(v[::step, ::step, ::step])


def run(args: argparse.Namespace) -> Dict[str, Any]:
    volumes = [(n, s) for n, s in DEV_VOLUMES if not args.volumes or n in args.volumes]
    rows = []
    for name, step in volumes:
        vol = load(args.data_dir, name, step)
        rng = float(vol.max()) - float(vol.min())
        fitted: Dict[str, Any] = {}

        def models() -> Dict[float, Any]:
            if "m" not in fitted:
                t0 = time.perf_counter()
                fitted["m"] = fit_models(vol, tuple(args.model_ratios), args.steps)
                print(f"{name}: models fitted at {sorted(fitted['m'])} in "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            return fitted["m"]

        for rel in args.bounds:
            e = rel * rng
            row: Dict[str, Any] = {"volume": name + (f"[::{step}]" if step > 1 else ""),
                                   "rel": rel, "E": e}
            fns = {"hybrid": lambda: run_neurvol(vol, e, models()),
                   "pure": lambda: run_neurvol(vol, e, None),
                   "sz3": lambda: run_sz3(vol, e), "zfp": lambda: run_zfp(vol, e),
                   "sperr": lambda: run_sperr(vol, e)}
            for m in args.methods:
                row[m] = cell(fns[m], vol, e)
            rows.append(row)
            print(_line(row, args.methods), file=sys.stderr, flush=True)
    return {"rows": rows, "methods": list(args.methods), "model_ratios": list(args.model_ratios)}


def _fmt(c: Optional[Dict[str, Any]]) -> str:
    if not c:
        return "—"
    if "error" in c:
        return "n/a"
    flag = "" if c["bound_ok"] else " **bound broken**"
    model = f" [model {c['model_ratio']:g}]" if c.get("model_ratio") else ""
    return f"{c['ratio']:.2f} ({c['psnr']:.1f} dB, {c['max_error']:.3g}){model}{flag}"


def _line(row: Dict[str, Any], methods) -> str:
    return f"{row['volume']} rel {row['rel']:g}: " + "; ".join(
        f"{m} {_fmt(row.get(m))}" for m in methods)


def markdown(result: Dict[str, Any]) -> str:
    methods = result["methods"]
    out = ["| volume | rel bound | " + " | ".join(methods) + " |",
           "|---|---|" + "---|" * len(methods)]
    for row in result["rows"]:
        out.append(f"| {row['volume']} | {row['rel']:g} | "
                   + " | ".join(_fmt(row.get(m)) for m in methods) + " |")
    out.append("")
    out.append("Cells: ratio (PSNR, max abs error) [the model's ratio where the hybrid kept "
               "one]. Hybrid model ratios tried: "
               + ", ".join(f"{r:g}" for r in result["model_ratios"]) + ".")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", type=lambda s: [v for v in s.split(",") if v], default=[])
    ap.add_argument("--bounds", type=lambda s: [float(v) for v in s.split(",")],
                    default=list(REL_BOUNDS))
    ap.add_argument("--methods", type=lambda s: [v for v in s.split(",") if v],
                    default=list(METHODS))
    ap.add_argument("--model-ratios", type=lambda s: [float(v) for v in s.split(",")],
                    default=None, help="hybrid: model ratios tried (default: the encoder's)")
    ap.add_argument("--steps", type=int, default=None, help="hybrid: fit steps (default: the encoder's)")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    if args.model_ratios is None:
        from neurvol.encoding.bounded import DEFAULT_MODEL_RATIOS
        args.model_ratios = list(DEFAULT_MODEL_RATIOS)
    result = run(args)
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
