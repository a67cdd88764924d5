"""Query points in (``.npy``, ``.csv``, ``.txt``) and query values out."""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .._atomic import atomic_open, atomic_write
from ..errors import NeurvolInputError, NeurvolIOError
from ._registry import as_path
from .npy import load_npy

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_TEXT_EXTS = (".csv", ".txt")
POINT_EXTENSIONS = (".npy",) + _TEXT_EXTS


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_text_points(path: Path) -> np.ndarray:
    """Comma- or whitespace-separated rows; ``#`` comments; one optional header line."""
    delimiter: Optional[str] = None
    skip = 0
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f):
            content = line.split("#", 1)[0].strip()
            if not content:
                continue
            delimiter = "," if "," in content else None
            tokens = content.split(delimiter)
            if not all(_is_number(t.strip()) for t in tokens):
                skip = lineno + 1  # first non-blank line is a header such as "z,y,x"
            break
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns on an empty file; we handle it below
            pts = np.loadtxt(path, delimiter=delimiter, skiprows=skip, comments="#",
                             ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise NeurvolInputError(f"cannot parse points in {str(path)!r}: {e}") from e
    if pts.size == 0:
        return np.empty((0, 3), dtype=np.float64)
    return pts


def read_points(path: PathLike) -> np.ndarray:
    """Read query points as a float64 ``(N, 3)`` array of z, y, x coordinates.

    ``.npy`` holds an ``(N, 3)`` numeric array; ``.csv``/``.txt`` hold one point per line,
    comma- or whitespace-separated, with an optional header line and ``#`` comments.

    Raises:
        NeurvolIOError: missing file or unknown extension.
        NeurvolInputError: not ``(N, 3)``, not numeric, or not finite.
    """
    p = as_path(path)
    ext = p.suffix.lower()
    if not p.is_file():
        raise NeurvolIOError(f"points file {str(p)!r} not found" if not p.exists()
                             else f"points file {str(p)!r} is not a regular file")
    if ext not in POINT_EXTENSIONS:
        raise NeurvolIOError(f"cannot read points from {str(p)!r}: supported extensions are "
                             f"{', '.join(POINT_EXTENSIONS)}")
    if ext == ".npy":
        raw = load_npy(p, mmap=False)
        if raw.dtype.kind not in "biuf":
            raise NeurvolInputError(f"points in {str(p)!r} have dtype {raw.dtype}; need numbers, "
                                    "shape (N, 3) z,y,x")
    else:
        raw = _read_text_points(p)
    if raw.ndim != 2 or raw.shape[1] != 3:
        raise NeurvolInputError(f"points in {str(p)!r} have shape {raw.shape}; need shape (N, 3) z,y,x "
                                "(one point per row)")
    pts = np.asarray(raw, dtype=np.float64)
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise NeurvolInputError(f"points in {str(p)!r}: row {int(np.argmax(bad))} is not finite "
                                f"({int(bad.sum())} such rows)")
    log.debug("read %d points from %s", len(pts), p)
    return pts


def format_value(value: np.generic) -> str:
    """Shortest text that reads back to the same value of its own dtype (``0.1``, not
    ``0.100000001`` for float32)."""
    return str(value)


def write_values(path: PathLike, values: np.ndarray) -> None:
    """Write query results atomically: ``.npy`` (1-D array, dtype kept) or ``.csv``/``.txt``
    (one value per line, see :func:`format_value`).

    Raises:
        NeurvolIOError: unknown extension.
    """
    p = as_path(path)
    ext = p.suffix.lower()
    vals = np.asarray(values).reshape(-1)
    if ext == ".npy":
        with atomic_open(p) as f:
            np.lib.format.write_array(f, vals, allow_pickle=False)
    elif ext in _TEXT_EXTS:
        atomic_write(p, "".join(format_value(v) + "\n" for v in vals).encode("ascii"))
    else:
        raise NeurvolIOError(f"cannot write values to {str(p)!r}: supported extensions are "
                             f"{', '.join(POINT_EXTENSIONS)}")
