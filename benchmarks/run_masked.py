"""Masked volumes (issue 25, spec/mask.md): a real volume with a no-data region round-trips
with its mask exact, and the mask's bytes against the model's.

No packaged ocean or atmosphere field with land/no-data regions is among the project's
data (``/work/shared/data/README.md``: Isabel's wind speed has values everywhere), so the
volume is the chest CT ``ct_chest_lidc2`` subsampled by 2 per axis, as float32, with the
air outside the body set to NaN. "Outside the body", per z slice: outside the convex hull
of the voxels above ``BODY_LEVEL`` after a light Gaussian blur (the body's outline; fat
and lungs are 0 in this 8-bit window, so a threshold alone would cut holes in it).

Rows, at each ratio (the budget is the float32 volume's bytes / ratio, mask included):

* ``masked``: the NaN volume (model fitted on the body only; masked voxels filled with
  the valid mean for the fit's dense uses, model initialisation: the default);
* ``masked, push-pull fill``: the same with push-pull filling (a smooth extension of the
  data into the mask);
* ``unmasked``: the original volume (air as scanned) at the same byte budget.

PSNR and max error are over the body's voxels (the range too) for every row.

Usage: ``python benchmarks/run_masked.py [--ratios 100,400] [--steps N] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import neurvol  # noqa: E402
from neurvol.compress.mask import encode_mask, mask_method_name, mask_methods  # noqa: E402
from neurvol.encoding import masked as masked_encoding  # noqa: E402
from neurvol.metrics import max_abs_error, psnr  # noqa: E402

DATA = os.environ.get("NEURVOL_DATA", "/work/shared/data")
VOLUME = "ct_chest_lidc2.npy"
#: Blur and level that outline the body (8-bit CT values).
BODY_SIGMA = 1.0
BODY_LEVEL = 20.0


def body_outline_mask(v: np.ndarray) -> np.ndarray:
    """True outside the body: per z slice, outside the convex hull of the blurred voxels
    above BODY_LEVEL."""
    from scipy import ndimage
    from scipy.spatial import Delaunay

    above = ndimage.gaussian_filter(v.astype(np.float32), BODY_SIGMA) > BODY_LEVEL
    _, h, w = v.shape
    grid = np.stack(np.mgrid[0:h, 0:w], -1).reshape(-1, 2)
    out = np.ones(v.shape, bool)
    for k in range(v.shape[0]):
        pts = np.argwhere(above[k])
        if len(pts) >= 3:
            out[k] = (Delaunay(pts).find_simplex(grid) < 0).reshape(h, w)
    return out


def encode_row(name: str, vol: np.ndarray, body: np.ndarray, ratio: float, steps: Any,
               fill: str = masked_encoding.DEFAULT_FILL) -> Dict[str, Any]:
    old = masked_encoding.DEFAULT_FILL
    masked_encoding.DEFAULT_FILL = fill
    try:
        t0 = time.perf_counter()
        nv = neurvol.encode(vol, ratio=ratio, steps=steps, seed=0, quiet=True)
        seconds = time.perf_counter() - t0
    finally:
        masked_encoding.DEFAULT_FILL = old
    dec = nv.decode()
    row = {"row": name, "ratio": ratio, "file_bytes": nv.nbytes_file,
           "achieved_ratio": round(nv.ratio, 2),
           "mask_bytes": nv.byte_breakdown().get("mask", 0),
           "psnr_valid": round(psnr(vol, dec, body), 3),
           "max_error_valid": round(max_abs_error(vol, dec, body), 3),
           "encode_s": round(seconds, 1), "arch": nv.header.get("model", {}).get("arch", nv.info().get("content"))}
    if nv.masked:
        row["mask_exact"] = bool(np.array_equal(np.isnan(dec), ~body))
    return row


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratios", default="100,400")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    chest = np.load(os.path.join(DATA, VOLUME))[::2, ::2, ::2]
    outside = body_outline_mask(chest)
    body = ~outside
    vol = chest.astype(np.float32)
    nan_vol = vol.copy()
    nan_vol[outside] = np.nan
    coder = {}
    for m in mask_methods():
        b = m.encode(outside)
        coder[m.name] = None if b is None else len(b) + 1
    chosen = encode_mask(outside)
    rows = []
    for ratio in (float(r) for r in args.ratios.split(",")):
        rows.append(encode_row("masked", nan_vol, body, ratio, args.steps))
        rows.append(encode_row("masked, push-pull fill", nan_vol, body, ratio, args.steps,
                               "push-pull"))
        rows.append(encode_row("unmasked (air as scanned)", vol, body, ratio, args.steps))
    out = {"volume": f"{VOLUME}[::2, ::2, ::2] as float32", "shape": list(vol.shape),
           "masked_fraction": round(float(outside.mean()), 4),
           "mask_coders": coder, "mask_chosen": mask_method_name(chosen),
           "packed_bits": math.ceil(outside.size / 8), "rows": rows}
    print(f"Volume: `{out['volume']}` {tuple(vol.shape)}, {100 * out['masked_fraction']:.1f} % "
          "masked (air outside the body's outline, NaN).\n")
    print("Mask coders (bytes of the section): packed bits "
          f"{out['packed_bits'] + 1}; " + ", ".join(f"{k} {v}" for k, v in coder.items())
          + f"; chosen: {out['mask_chosen']}.\n")
    print("| row | ratio | file bytes | mask bytes | mask exact | PSNR valid (dB) | "
          "max err valid | arch | encode s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        exact = {True: "yes", False: "NO"}.get(r.get("mask_exact"), "–")
        print(f"| {r['row']} | {r['ratio']:g} ({r['achieved_ratio']}) | {r['file_bytes']} | "
              f"{r['mask_bytes']} | {exact} | {r['psnr_valid']:.2f} | "
              f"{r['max_error_valid']:.2f} | {r['arch']} | {r['encode_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    ok = all(r.get("mask_exact", True) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
