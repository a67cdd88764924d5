"""NumPy ``.npy`` volumes: read lazily as a read-only memmap, write atomically."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from .._atomic import atomic_open
from ..errors import NeurvolInputError, NeurvolIOError
from ._registry import VolumeFormat, register_format

log = logging.getLogger(__name__)


def load_npy(path: Path, *, mmap: bool = True) -> np.ndarray:
    """``np.load`` without pickle, mapping numpy's errors to neurvol's.

    Args:
        path: an existing ``.npy`` file.
        mmap: map the file read-only instead of reading it (lazy, out-of-core).

    Raises:
        NeurvolIOError: not a readable ``.npy`` (pickled, ``.npz``, truncated ...).
    """
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as e:
        # Pickled/object data, a bad header, or a zero-length array that cannot be mapped.
        if mmap and "pickle" not in str(e).lower() and "object" not in str(e).lower():
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e2:
                raise NeurvolIOError(f"cannot read {str(path)!r} as .npy: {e2}") from e2
        else:
            raise NeurvolIOError(f"cannot read {str(path)!r} as .npy: {e}") from e
    except (OSError, EOFError) as e:
        raise NeurvolIOError(f"cannot read {str(path)!r} as .npy: {e}") from e
    if not isinstance(arr, np.ndarray):
        # np.load returns an NpzFile for zip archives, whatever the extension says.
        close = getattr(arr, "close", None)
        if close is not None:
            close()
        raise NeurvolIOError(f"{str(path)!r} is an .npz archive, not an .npy array; "
                             "save one array with np.save")
    return arr


def read_npy(path: Path, *, shape: Optional[Tuple[int, ...]] = None, dtype: Optional[np.dtype] = None,
             byte_order: str = "little") -> np.ndarray:
    """Read an ``.npy`` volume lazily (read-only memmap); its header gives shape and dtype.

    ``shape``/``dtype``/``byte_order`` are ignored except for a warning if they disagree with
    the header, because a stale ``--shape`` is a hint the user opened the wrong file.
    """
    arr = load_npy(path)
    if shape is not None and tuple(shape) != arr.shape:
        log.warning("ignoring shape %s: %s holds an array of shape %s", tuple(shape), path, arr.shape)
    if dtype is not None and np.dtype(dtype) != arr.dtype.newbyteorder("="):
        log.warning("ignoring dtype %s: %s holds %s", np.dtype(dtype), path, arr.dtype)
    log.debug("read %s: shape %s dtype %s (memmap=%s)", path, arr.shape, arr.dtype, isinstance(arr, np.memmap))
    return arr


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` (no pickle) via a temp file + rename."""
    arr = np.asanyarray(array)
    if arr.dtype.hasobject:
        raise NeurvolInputError(f"cannot write an array of dtype {arr.dtype} (Python objects) to .npy")
    with atomic_open(path) as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)


FORMAT = VolumeFormat(name="npy", extensions=(".npy",), description="NumPy array (lazy memmap)",
                      read=read_npy, write=write_npy)
register_format(FORMAT)
