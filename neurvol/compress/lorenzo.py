"""3-D Lorenzo prediction of quantized feature grids (the predictor of SZ, Tao et al. 2017).

A smooth grid quantized to integers ``q = round(g / step)`` is stored as the residual of
the Lorenzo predictor, which is the third mixed finite difference
``r = Δz Δy Δx q`` (with zeros before the first sample of each axis). Because prediction
runs on the quantized values, the transform is exact in integers, and inverting it is
three cumulative sums, so a decoder is three lines of numpy and cannot drift.

This is what SZ's Lorenzo mode stores for an absolute error bound of ``step / 2``: SZ
predicts from reconstructed neighbours, which lie on the same ``step`` lattice, so its
quantization codes equal these residuals.
"""
from __future__ import annotations

import functools

import numpy as np

#: Trailing axes the predictor runs along: (z, y, x) of a ``(..., D, H, W)`` grid.
AXES = (-3, -2, -1)


def lorenzo_residuals(q: np.ndarray) -> np.ndarray:
    """Residuals (int64, same shape) of integer grid ``q`` of shape ``(..., D, H, W)``."""
    r = np.asarray(q, dtype=np.int64)
    for ax in AXES:
        r = np.diff(r, axis=ax, prepend=0)
    return r


def lorenzo_reconstruct(r: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """Inverse of :func:`lorenzo_residuals` (int64). ``overwrite``: *r* (an int64 array)
    may be used as the output, so decoding holds one int64 grid, not one per axis."""
    q = np.asarray(r, dtype=np.int64) if overwrite else np.array(r, dtype=np.int64)
    for ax in AXES:
        np.cumsum(q, axis=ax, out=q)
    return q


#: Values zigzagged per batch (two int64 temporaries of this size, not of the input's).
ZIGZAG_BATCH = 1 << 18


def zigzag(r: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """Signed -> unsigned: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ... (uint64, ``r``'s
    shape). ``overwrite``: *r* (a contiguous int64 array) may be used as the output (a
    coder's codes, zigzagged where they are: one array of them, not two)."""
    r = np.asarray(r, dtype=np.int64)
    if overwrite and r.flags.c_contiguous and r.flags.writeable:
        out = r.view(np.uint64)
    else:
        out = np.empty(r.shape, dtype=np.uint64)
    flat_in, flat_out = r.reshape(-1), out.reshape(-1)
    for a in range(0, flat_in.size, ZIGZAG_BATCH):
        v = flat_in[a:a + ZIGZAG_BATCH]
        # The int64 bits reinterpreted as uint64, as ``astype`` converts them.
        np.bitwise_xor(v << 1, v >> 63, out=flat_out[a:a + ZIGZAG_BATCH].view(np.int64))
    return out


def unzigzag(z: np.ndarray) -> np.ndarray:
    """Inverse of :func:`zigzag` (int64)."""
    z = np.asarray(z)
    if z.dtype.kind == "u" and z.dtype.itemsize <= _TABLE_BYTES:
        # Narrow symbols: one gather from the decoded values of every symbol.
        return np.take(_unzigzag_table(z.dtype.itemsize), z)
    if z.dtype.kind != "u":
        z = z.astype(np.uint64)
    # r = (z >> 1) XOR -(z AND 1): for odd z that is ~(z >> 1). Computed in one int64
    # array (no uint64 copy, no full-size temporaries beyond a bool per element).
    out = (z >> z.dtype.type(1)).astype(np.int64)
    np.invert(out, out=out, where=(z & z.dtype.type(1)).astype(bool))
    return out


def unzigzag_scaled(z: np.ndarray, step: float) -> np.ndarray:
    """``float64(unzigzag(z)) * step`` (the same bits), without the int64 codes: narrow
    symbols are unzigzagged in the next wider signed type (exact) and converted once."""
    z = np.asarray(z)
    wide = _SIGNED_WIDER.get(z.dtype.itemsize) if z.dtype.kind == "u" else None
    if wide is None:
        return unzigzag(z) * step
    r = z.astype(wide)
    sign = r & 1
    r >>= 1
    np.negative(sign, out=sign)
    r ^= sign
    out = r.astype(np.float64)
    out *= step
    return out


#: The signed type that holds every unzigzagged value of a narrow unsigned symbol.
_SIGNED_WIDER = {1: np.int16, 2: np.int32}
#: Symbols of at most this many bytes unzigzag by table lookup (a 2^16-entry table).
_TABLE_BYTES = 2


@functools.lru_cache(maxsize=_TABLE_BYTES)
def _unzigzag_table(width: int) -> np.ndarray:
    """The int64 value of every ``width``-byte symbol (read-only)."""
    z = np.arange(1 << (8 * width), dtype=np.int64)
    table = (z >> 1) ^ -(z & 1)
    table.flags.writeable = False
    return table
