"""Read and write volumes and query points in the formats scientists use.

Formats register themselves by name and extension (see :mod:`neurvol.io._registry`);
``read_volume``/``write_volume`` pick one from the file suffix or an explicit ``format``.
Readers are lazy where the format allows (``.npy`` and ``.raw`` come back as read-only
memmaps), so a volume larger than memory can be streamed into the fitter.

Example::

    >>> from neurvol import io
    >>> vol = io.read_volume("ct.raw", shape=(512, 512, 512), dtype="uint16")
    >>> io.write_volume("ct.npy", vol)
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from ..errors import NeurvolIOError
from ._registry import (
    VolumeFormat,
    as_path,
    parse_dtype,
    parse_shape,
    register_format,
    resolve_format,
    volume_formats,
)

# Built-in formats register on import; keep this list in sync with the modules present.
from . import npy as _npy  # noqa: F401,E402
from . import raw as _raw  # noqa: F401,E402
from .points import POINT_EXTENSIONS, format_value, read_points, write_values  # noqa: E402

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "read_volume", "write_volume", "read_points", "write_values", "format_value",
    "VolumeFormat", "register_format", "resolve_format", "volume_formats",
    "parse_shape", "parse_dtype", "POINT_EXTENSIONS",
]


def read_volume(path: PathLike, *, shape: Optional[Union[Tuple[int, int, int], str]] = None,
                dtype: Optional[object] = None, byte_order: str = "little",
                format: Optional[str] = None) -> np.ndarray:
    """Read a 3D volume, lazily where the format allows.

    Args:
        path: ``.npy`` (memmap, shape/dtype from its header) or ``.raw``/``.bin``.
        shape: ``(z, y, x)`` or ``"Z,Y,X"``; required for raw files.
        dtype: element dtype, e.g. ``"uint16"``; required for raw files.
        byte_order: ``"little"`` (default) or ``"big"``; raw files only.
        format: format name (``"npy"``, ``"raw"``) overriding the extension.

    Returns:
        An array indexed ``[z, y, x]``; for ``.npy``/``.raw`` a read-only ``np.memmap``.

    Raises:
        NeurvolIOError: missing file, unknown extension/format, unreadable file.
        NeurvolInputError: raw shape/dtype missing or inconsistent with the file size.
    """
    p = as_path(path)
    if not p.exists():
        raise NeurvolIOError(f"input file {str(p)!r} not found")
    if not p.is_file():
        raise NeurvolIOError(f"input {str(p)!r} is not a regular file")
    fmt = resolve_format(p, format, mode="read")
    assert fmt.read is not None
    try:
        return fmt.read(p, shape=parse_shape(shape), dtype=dtype, byte_order=byte_order)
    except PermissionError as e:
        raise NeurvolIOError(f"cannot read {str(p)!r}: permission denied") from e


def write_volume(path: PathLike, array: np.ndarray, *, format: Optional[str] = None) -> None:
    """Write ``array`` to ``path`` atomically (temp file in the same directory, then rename).

    Args:
        path: ``.npy`` or ``.raw``/``.bin`` (C order, little-endian, the array's dtype).
        array: the volume (any numpy array or array-like, memmaps included).
        format: format name overriding the extension.

    Raises:
        NeurvolIOError: unknown extension/format, or the file cannot be written.
    """
    p = as_path(path)
    fmt = resolve_format(p, format, mode="write")
    assert fmt.write is not None
    try:
        fmt.write(p, np.asanyarray(array))
    except NeurvolIOError:
        raise
    except OSError as e:
        raise NeurvolIOError(f"cannot write {str(p)!r}: {e.strerror or e}") from e
    log.debug("wrote %s (%s)", p, fmt.name)
