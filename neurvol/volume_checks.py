"""Validation of user inputs shared by the API and the CLI (clear errors, no surprises)."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from .errors import NeurvolBudgetError, NeurvolInputError

#: Voxels read or converted at a time by passes over a whole volume (bounded memory).
CHUNK_VOXELS = 1 << 22

#: Largest length of one volume axis, in a file header or as a decode/encode shape.
MAX_AXIS = 2 ** 31
#: Largest voxel count of a volume (2^40: 1 TiB of uint8), in a header or as a shape.
MAX_VOXELS = 2 ** 40
#: Decoding computes in float32 (spec/payload.md §1.2): values, and the value range, must
#: be finite there.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def cast_to_int(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Decoded float values rounded to integers of *dtype*, exactly at the type's limits.

    Clipping in the values' float type to ``iinfo.max`` does not work: ``float32(2**31 - 1)``
    is 2^31, which overflows int32 on the cast (it wrapped to -2^31). So values are
    clamped to the largest float of their type that is <= the maximum (and >= the
    minimum) before the cast, and values at or beyond the float nearest to a limit become
    that limit exactly (a constant volume of ``iinfo.max`` round-trips).
    """
    info = np.iinfo(dtype)
    r = np.rint(values)
    ftype = r.dtype.type
    top, bottom = ftype(info.max), ftype(info.min)
    at_top, at_bottom = r >= top, r <= bottom
    hi = top if int(top) <= info.max else np.nextafter(top, ftype(0))
    lo = bottom if int(bottom) >= info.min else np.nextafter(bottom, ftype(0))
    np.clip(r, lo, hi, out=r)
    out = r.astype(dtype)
    out[at_top] = info.max
    out[at_bottom] = info.min
    return out


def check_shape(shape: Any, what: str = "shape") -> Tuple[int, int, int]:
    """A 3-D output shape: three ints in [1, MAX_AXIS] with product <= MAX_VOXELS.

    Accepts any sequence of Python/numpy integers; floats, bools and strings are refused
    (``2.7`` would otherwise silently become 2).
    """
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__"):
        raise NeurvolInputError(f"{what} must be 3 ints (z, y, x), got {shape!r}")
    dims = []
    for d in shape:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise NeurvolInputError(f"{what} must be 3 ints (z, y, x), got {shape!r}")
        dims.append(int(d))
    if len(dims) != 3 or min(dims) < 1:
        raise NeurvolInputError(f"{what} must be 3 positive ints (z, y, x), got {shape!r}")
    if max(dims) > MAX_AXIS or math.prod(dims) > MAX_VOXELS:
        raise NeurvolInputError(
            f"{what} {tuple(dims)} is too large: at most {MAX_AXIS} per axis and "
            f"{MAX_VOXELS} voxels in all")
    return dims[0], dims[1], dims[2]


def check_decode_dtype(dtype: Any) -> np.dtype:
    """A dtype to decode into: plain integer or float (not bool, complex, str, object)."""
    if dtype is None:
        raise NeurvolInputError("dtype must be a numpy dtype such as np.float32, got None")
    try:
        dt = np.dtype(dtype)
    except Exception:  # noqa: BLE001 - TypeError, ValueError, SyntaxError ... all mean "not a dtype"
        raise NeurvolInputError(
            f"unknown dtype {dtype!r}; use e.g. np.float32, np.uint8, np.int16") from None
    if dt.kind not in "iuf" or dt.fields is not None or dt.subdtype is not None:
        raise NeurvolInputError(
            f"cannot decode to dtype {dt}: use an integer or float dtype such as np.float32 "
            "(complex, bool, string, datetime and object dtypes are not supported)")
    return dt


def check_volume(volume: Any) -> Tuple[Any, float, float]:
    """Validate a volume (ndarray, memmap, h5py dataset, array-like with shape/dtype/slicing).

    Returns ``(volume, min, max)``; scans in slabs so memmapped inputs stay lazy. NaN is
    refused here (paths that store masks use :func:`check_masked_volume`).
    """
    volume, lo, hi, _ = _scan_volume(volume, None, masks=False)
    return volume, lo, hi


def check_masked_volume(volume: Any, fill_value: Any = None
                        ) -> Tuple[Any, float, float, Optional[np.ndarray]]:
    """Validate a volume that may hold masked voxels (spec/mask.md): NaN, or voxels equal
    to ``fill_value`` when one is given. Returns ``(volume, min, max, mask)``: the range
    over the valid voxels and a bool mask (True: masked), or None when every voxel is
    valid. Infinities, a fill value the dtype cannot hold, NaN beside a fill value and a
    volume with no valid voxel are refused."""
    return _scan_volume(volume, fill_value, masks=True)


def check_fill_value(fill_value: Any, dtype: np.dtype) -> float:
    """A fill value for a volume of ``dtype``: a finite real number that the dtype holds
    exactly (a NaN volume needs none: NaN is always masked in float volumes)."""
    if isinstance(fill_value, (bool, np.bool_)) or not isinstance(
            fill_value, (int, float, np.integer, np.floating)):
        raise NeurvolInputError(f"fill_value must be a number, got {fill_value!r}")
    f = float(fill_value)
    if not math.isfinite(f):
        raise NeurvolInputError(
            f"fill_value must be finite, got {fill_value!r} (NaN voxels are masked without "
            "a fill value)")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if f != math.floor(f) or not info.min <= int(f) <= info.max:
            raise NeurvolInputError(
                f"fill_value {fill_value!r} is not a {dtype} value; give one in "
                f"[{info.min}, {info.max}]")
    elif float(dtype.type(f)) != f:
        raise NeurvolInputError(
            f"fill_value {fill_value!r} is not exactly representable in {dtype}; give the "
            f"value the volume holds ({float(dtype.type(f))!r})")
    return f


def _scan_volume(volume: Any, fill_value: Any, masks: bool
                 ) -> Tuple[Any, float, float, Optional[np.ndarray]]:
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
    if max(shape) > MAX_AXIS or math.prod(shape) > MAX_VOXELS:
        raise NeurvolInputError(
            f"shape {shape} is too large: .nvol volumes have at most {MAX_AXIS} voxels per "
            f"axis and {MAX_VOXELS} in all")
    dtype = np.dtype(volume.dtype)
    if dtype.kind == "b":
        raise NeurvolInputError("boolean volumes are not supported; convert with .astype(np.uint8)")
    if dtype.kind == "c":
        raise NeurvolInputError("complex volumes are not supported; compress .real and .imag separately")
    if dtype.kind not in "iuf":
        raise NeurvolInputError(f"dtype {dtype} is not numeric; neurvol compresses integer and float volumes")
    fill = None if fill_value is None else check_fill_value(fill_value, dtype)
    lo, hi = math.inf, -math.inf
    mask: Optional[np.ndarray] = None
    per_slab = max(1, CHUNK_VOXELS // (shape[1] * shape[2]))
    for z in range(0, shape[0], per_slab):
        slab = np.asarray(volume[z:z + per_slab])
        last = z + slab.shape[0] - 1
        bad = None
        if dtype.kind == "f" and not np.all(np.isfinite(slab)):
            if not masks or np.isinf(slab).any() or fill is not None:
                n_bad = int(np.count_nonzero(~np.isfinite(slab)))
                raise NeurvolInputError(
                    f"the volume contains {n_bad} NaN or infinite values in slices "
                    f"{z}..{last}; " + _NAN_ADVICE[(masks, fill is not None)])
            bad = np.isnan(slab)
        if fill is not None:
            eq = slab == fill
            bad = eq if bad is None else bad | eq
        if bad is not None and bad.any():
            if mask is None:
                mask = np.zeros(shape, dtype=bool)
            mask[z:z + slab.shape[0]] = bad
            slab = slab[~bad]
            if slab.size == 0:
                continue
        lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
    if mask is not None and lo > hi:
        raise NeurvolInputError(
            "every voxel of the volume is masked (NaN or the fill value); there is nothing "
            "to compress")
    if not math.isfinite(hi - lo):
        raise NeurvolInputError("the volume's value range overflows float64; rescale it first")
    if max(abs(lo), abs(hi), hi - lo) > FLOAT32_MAX:
        raise NeurvolInputError(
            f"the volume's values [{lo:g}, {hi:g}] exceed the float32 range that decoding "
            f"computes in (|value| and max - min <= {FLOAT32_MAX:g}); rescale it first")
    return volume, lo, hi, mask


#: What to do about NaN/infinite values, by (the caller stores masks, a fill value given).
_NAN_ADVICE = {
    (False, False): "replace them (e.g. np.nan_to_num) before compressing; NaN regions are "
                    "stored as a mask by a single-model encode (no bricks, no max_error)",
    (False, True): "replace them (e.g. np.nan_to_num) before compressing",
    (True, False): "NaN is stored as a mask, but infinities are not: replace them first",
    (True, True): "with a fill_value only voxels equal to it are masked: replace NaN and "
                  "infinities by the fill value first",
}


#: The message of every refused ratio, API and CLI alike.
RATIO_RULE = "ratio must be a finite number > 1 (the file is at most volume bytes / ratio)"


def check_ratio(ratio: Any) -> float:
    """A compression ratio: a real number (int or float, numpy's too; not a string or a
    bool), finite and > 1."""
    if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, (int, float, np.integer,
                                                                      np.floating)):
        raise NeurvolInputError(f"{RATIO_RULE}, got {ratio!r} ({type(ratio).__name__})")
    try:
        r = float(ratio)
    except OverflowError:
        r = math.inf
    if not math.isfinite(r) or r <= 1.0:
        raise NeurvolBudgetError(f"{RATIO_RULE}, got {ratio!r}")
    return r


def check_points(points: Any, *, finite: bool = True) -> np.ndarray:
    """``(N, 3)`` real coordinates (a single point ``(3,)`` becomes ``(1, 3)``).

    An integer or float array is returned as it is (no float64 copy, so callers can
    convert it a chunk at a time); anything else is converted to float64. With
    ``finite=True`` NaN/infinite coordinates are refused here (a full pass over the data);
    callers that convert in chunks pass False and check each chunk with
    :func:`check_finite_points`.
    """
    if isinstance(points, np.ndarray) and points.dtype.kind in "iuf":
        p = points
    elif isinstance(points, np.ndarray) and points.dtype.kind in "bcmMSUV":
        raise NeurvolInputError(
            f"points must be real numbers, shaped (N, 3) as z, y, x; got dtype {points.dtype}")
    else:
        try:
            p = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise NeurvolInputError("points must be numeric, shaped (N, 3) as z, y, x") from None
    if p.ndim == 1 and p.shape[0] == 3:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 3:
        raise NeurvolInputError(f"points must be shaped (N, 3) as z, y, x; got {p.shape}")
    if finite:
        check_finite_points(p)
    return p


def check_finite_points(p: np.ndarray) -> None:
    """Raise NeurvolInputError if *p* holds NaN or infinity."""
    if p.dtype.kind == "f" and not np.isfinite(p).all():
        raise NeurvolInputError("points contain NaN or infinite coordinates")


def check_triple(v: Any, default: float, name: str) -> Tuple[float, float, float]:
    """Three finite floats (z, y, x) (spacing, origin), or ``(default,) * 3`` for None."""
    if v is None:
        return (default, default, default)
    try:
        t = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        raise NeurvolInputError(f"{name} must be three numbers (z, y, x), got {v!r}") from None
    if len(t) != 3 or not all(math.isfinite(x) for x in t):
        raise NeurvolInputError(f"{name} must be three finite numbers (z, y, x), got {v!r}")
    return t  # type: ignore[return-value]
