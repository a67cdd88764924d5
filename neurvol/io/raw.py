"""Headerless binary volumes (``.raw``/``.bin``): the caller supplies shape and dtype."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from .._atomic import atomic_write
from ..errors import NeurvolInputError
from ._registry import VolumeFormat, byte_order_char, parse_dtype, parse_shape, register_format

log = logging.getLogger(__name__)

# Write in slabs of about this many bytes, so a large (memmapped) volume is never copied whole.
_CHUNK_BYTES = 64 << 20

# Tried, in this order, to suggest a dtype when the file size does not match.
_COMMON_DTYPES = ("uint8", "uint16", "int16", "float32", "float64")


def _size_hint(nbytes: int, shape: Tuple[int, ...]) -> str:
    voxels = int(np.prod(shape))
    fits = [d for d in _COMMON_DTYPES if voxels * np.dtype(d).itemsize == nbytes]
    return f"; the size fits --dtype {fits[0]}" if fits else ""


def read_raw(path: Path, *, shape: Optional[Tuple[int, ...]] = None, dtype: Optional[object] = None,
             byte_order: str = "little") -> np.ndarray:
    """Map a headerless C-order volume read-only.

    Args:
        path: existing file of exactly ``prod(shape) * itemsize`` bytes.
        shape: ``(z, y, x)``; required.
        dtype: element type, e.g. ``"uint8"``; required.
        byte_order: ``"little"`` or ``"big"``. The returned memmap keeps the file's byte
            order (values are right; convert with ``astype`` if native order is needed).

    Raises:
        NeurvolInputError: shape/dtype missing or invalid, or the file size does not match.
    """
    if shape is None or dtype is None:
        missing = " and ".join(n for n, v in (("shape", shape), ("dtype", dtype)) if v is None)
        raise NeurvolInputError(
            f"{str(path)!r} is a headerless raw volume: give its {missing} "
            "(--shape Z,Y,X --dtype uint8 on the command line)"
        )
    dims = parse_shape(shape)
    assert dims is not None
    dt = parse_dtype(dtype).newbyteorder(byte_order_char(byte_order))
    expected = int(np.prod(dims)) * dt.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise NeurvolInputError(
            f"{str(path)!r} is {actual} bytes, but shape {','.join(map(str, dims))} of {dt.name} "
            f"needs {expected} bytes{_size_hint(actual, dims)}"
        )
    log.debug("mapping raw %s as %s %s", path, dims, dt.str)
    return np.memmap(path, dtype=dt, mode="r", shape=dims, order="C")


def _raw_chunks(arr: np.ndarray) -> Iterator[bytes]:
    """C-order little-endian bytes of ``arr``, a slab along axis 0 at a time."""
    out_dt = arr.dtype.newbyteorder("<")
    if arr.ndim == 0:
        yield np.asarray(arr, dtype=out_dt).tobytes()
        return
    slab = max(arr[0].nbytes if arr.shape[0] else 1, 1)
    step = max(1, _CHUNK_BYTES // slab)
    for i in range(0, arr.shape[0], step):
        yield np.ascontiguousarray(arr[i:i + step], dtype=out_dt).tobytes()


def write_raw(path: Path, array: np.ndarray) -> None:
    """Write ``array`` headerless: C order, little-endian, its own dtype; atomically."""
    arr = np.asanyarray(array)
    if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
        raise NeurvolInputError(f"cannot write dtype {arr.dtype} as raw; use a numeric dtype")
    atomic_write(path, _raw_chunks(arr))


FORMAT = VolumeFormat(name="raw", extensions=(".raw", ".bin"),
                      description="headerless binary, C order (needs --shape, --dtype)",
                      read=read_raw, write=write_raw)
register_format(FORMAT)
