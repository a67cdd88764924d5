"""Validation of user inputs shared by the API and the CLI (clear errors, no surprises)."""
from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from .errors import NeurvolBudgetError, NeurvolInputError

_CHUNK_VOXELS = 1 << 22


def check_volume(volume: Any) -> Tuple[Any, float, float]:
    """Validate a volume (ndarray, memmap, h5py dataset, array-like with shape/dtype/slicing).

    Returns ``(volume, min, max)``; scans in slabs so memmapped inputs stay lazy.
    """
    if not (hasattr(volume, "shape") and hasattr(volume, "dtype")):
        try:
            volume = np.asarray(volume)
        except Exception as exc:  # noqa: BLE001 - anything unconvertible is a user error
            raise NeurvolInputError(f"cannot read the volume as an array: {exc}") from exc
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3:
        raise NeurvolInputError(
            f"expected a 3-D volume indexed [z, y, x], got shape {shape}; "
            "for a stack of 2-D images stack them with np.stack first, for a 4-D array pick one variable/time step"
        )
    if min(shape) < 2:
        raise NeurvolInputError(f"every axis needs at least 2 voxels, got shape {shape}")
    dtype = np.dtype(volume.dtype)
    if dtype.kind == "b":
        raise NeurvolInputError("boolean volumes are not supported; convert with .astype(np.uint8)")
    if dtype.kind == "c":
        raise NeurvolInputError("complex volumes are not supported; compress .real and .imag separately")
    if dtype.kind not in "iuf":
        raise NeurvolInputError(f"dtype {dtype} is not numeric; neurvol compresses integer and float volumes")
    lo, hi = math.inf, -math.inf
    per_slab = max(1, _CHUNK_VOXELS // (shape[1] * shape[2]))
    for z in range(0, shape[0], per_slab):
        slab = np.asarray(volume[z:z + per_slab])
        if dtype.kind == "f" and not np.all(np.isfinite(slab)):
            bad = int(np.count_nonzero(~np.isfinite(slab)))
            raise NeurvolInputError(
                f"the volume contains {bad} NaN or infinite values in slices {z}..{z + slab.shape[0] - 1}; "
                "replace them (e.g. np.nan_to_num) before compressing"
            )
        lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
    if not math.isfinite(hi - lo):
        raise NeurvolInputError("the volume's value range overflows float64; rescale it first")
    return volume, lo, hi


def check_ratio(ratio: Any) -> float:
    """A compression ratio: a finite number > 1."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise NeurvolInputError(f"ratio must be a number > 1, got {ratio!r}") from None
    if not math.isfinite(r) or r <= 1.0:
        raise NeurvolBudgetError(f"ratio must be a finite number > 1 (the file is volume bytes / ratio), got {ratio!r}")
    return r


def check_points(points: Any) -> np.ndarray:
    """``(N, 3)`` finite float coordinates as float64."""
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise NeurvolInputError("points must be numeric, shaped (N, 3) as z, y, x") from None
    if p.ndim == 1 and p.shape[0] == 3:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 3:
        raise NeurvolInputError(f"points must be shaped (N, 3) as z, y, x; got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise NeurvolInputError("points contain NaN or infinite coordinates")
    return p
