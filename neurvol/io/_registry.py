"""Registry of volume file formats, keyed by name and by file extension.

Each format lives in its own module and registers a :class:`VolumeFormat` at import time,
so adding one (``.h5``, ``.vti`` ...) touches no other format and no caller.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np

from ..errors import NeurvolInputError, NeurvolIOError
from ..volume_checks import MAX_AXIS, MAX_VOXELS


def numeric_volume(array: Any, where: str = "") -> np.ndarray:
    """``array`` as a 3-D numeric (bool, int or float) array to write, or an input error
    (``where``: e.g. " to NIfTI", named in the message)."""
    arr = np.asanyarray(array)
    if arr.ndim != 3:
        raise NeurvolInputError(f"can only write a 3-D volume (z, y, x){where}, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf" or arr.dtype.fields is not None:
        raise NeurvolInputError(f"cannot write dtype {arr.dtype}{where}; use a numeric dtype")
    return arr


def optional_module(name: str, files: str, extra: str) -> Any:
    """Import the optional package ``name`` on first use; if it is missing, say how to
    install it (``files``: what needs it, e.g. "NIfTI files"; ``extra``: neurvol's extra)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise NeurvolIOError(f"{files} need the {name} package: pip install 'neurvol[{extra}]' "
                             f"(or pip install {name})") from e

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: ``reader(path, *, shape, dtype, byte_order) -> array``; readers ignore the options
#: their format carries in its own header.
Reader = Callable[..., np.ndarray]
#: ``writer(path, array) -> None``; must write atomically. Formats with
#: ``writes_meta=True`` also get ``spacing=`` and ``origin=`` keywords (z, y, x order).
Writer = Callable[..., None]


@dataclass
class VolumeData:
    """What a reader may return instead of a bare array: the data plus grid geometry.

    Attributes:
        data: the volume indexed ``[z, y, x]`` (an ndarray, memmap, or a lazy array-like
            such as an ``h5py.Dataset`` with ``shape``, ``dtype`` and slicing).
        spacing: voxel size along z, y, x, or ``None`` if the file does not say.
        origin: world position of voxel ``(0, 0, 0)`` as z, y, x, or ``None``.
    """

    data: Any
    spacing: Optional[Tuple[float, float, float]] = None
    origin: Optional[Tuple[float, float, float]] = None


@dataclass(frozen=True)
class VolumeFormat:
    """One volume file format.

    Attributes:
        name: short name used by ``format=`` / ``--format`` (e.g. ``"npy"``).
        extensions: lower-case suffixes with the dot (e.g. ``(".raw", ".bin")``).
        description: one line for help texts.
        read: reader, or ``None`` if the format is write-only. It may return an array or a
            :class:`VolumeData` (array plus spacing/origin).
        write: writer, or ``None`` if the format is read-only.
        variables: the file holds named variables, addressed as ``file.h5:/group/var``;
            the reader then also gets ``variable=`` (``None`` when not named).
        writes_meta: the writer takes ``spacing=`` and ``origin=`` keywords.
    """

    name: str
    extensions: Tuple[str, ...]
    description: str
    read: Optional[Reader] = None
    write: Optional[Writer] = None
    variables: bool = False
    writes_meta: bool = False


_BY_NAME: Dict[str, VolumeFormat] = {}
_BY_EXT: Dict[str, VolumeFormat] = {}


def register_format(fmt: VolumeFormat) -> None:
    """Register ``fmt`` under its name and extensions (later registrations win)."""
    _BY_NAME[fmt.name.lower()] = fmt
    for ext in fmt.extensions:
        _BY_EXT[ext.lower()] = fmt
    log.debug("registered volume format %s %s", fmt.name, fmt.extensions)


def volume_formats() -> Tuple[VolumeFormat, ...]:
    """All registered formats, in registration order."""
    return tuple(_BY_NAME.values())


def _suffix(p: Path) -> str:
    """The registered extension of ``p``: a double one (``.nii.gz``) wins over the last."""
    double = "".join(p.suffixes[-2:]).lower()
    if len(p.suffixes) >= 2 and double in _BY_EXT:
        return double
    return p.suffix.lower()


def split_variable(path: PathLike) -> Tuple[Path, Optional[str]]:
    """Split ``"file.h5:/group/var"`` into ``(Path("file.h5"), "/group/var")``.

    Only splits when the part before the last ``:`` has the extension of a format with
    named variables (HDF5, NetCDF) and the whole string is not itself an existing file;
    otherwise returns ``(path, None)``.
    """
    text = os.fspath(path)  # type: ignore[arg-type]
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if ":" not in text or os.path.exists(text):
        return Path(text), None
    start = 0
    while True:
        i = text.find(":", start)
        if i < 0:
            return Path(text), None
        base, var = text[:i], text[i + 1:]
        fmt = _BY_EXT.get(_suffix(Path(base))) if base else None
        if fmt is not None and fmt.variables:
            return Path(base), (var or None)
        start = i + 1


def _supported(mode: str) -> str:
    exts = sorted(e for e, f in _BY_EXT.items() if getattr(f, mode) is not None)
    names = sorted(n for n, f in _BY_NAME.items() if getattr(f, mode) is not None)
    return f"supported extensions: {', '.join(exts)} (format names: {', '.join(names)})"


def as_path(path: object, what: str = "path") -> Path:
    """``Path(os.fspath(path))``, with a NeurvolInputError instead of a bare TypeError."""
    try:
        return Path(os.fspath(path))  # type: ignore[arg-type]
    except TypeError:
        raise NeurvolInputError(
            f"{what} must be a str or os.PathLike, got {type(path).__name__}") from None


def resolve_format(path: PathLike, format: Optional[str] = None, *, mode: str = "read") -> VolumeFormat:
    """Pick the format for ``path``: the explicit ``format`` name if given, else the suffix.

    Args:
        path: file path; only its suffix is used.
        format: a format name (``"npy"``) or extension with or without dot (``"bin"``).
        mode: ``"read"`` or ``"write"``; the format must support it.

    Raises:
        NeurvolIOError: no format matches, or it cannot ``mode``.
    """
    if mode not in ("read", "write"):
        raise ValueError(f"mode must be 'read' or 'write', not {mode!r}")
    if format is not None:
        key = str(format).lower().lstrip(".")
        fmt = _BY_NAME.get(key) or _BY_EXT.get("." + key)
        if fmt is None:
            raise NeurvolIOError(f"unknown format {format!r}; {_supported(mode)}")
    else:
        suffix = _suffix(as_path(path))
        fmt = _BY_EXT.get(suffix)
        if fmt is None:
            what = f"extension {suffix!r}" if suffix else "no extension"
            raise NeurvolIOError(
                f"cannot tell the format of {os.fspath(path)!r} ({what}); {_supported(mode)}; "
                "pass format= (--format on the command line) to choose one"
            )
    if getattr(fmt, mode) is None:
        raise NeurvolIOError(f"format {fmt.name!r} cannot be {'read' if mode == 'read' else 'written'}; "
                             f"{_supported(mode)}")
    return fmt


def parse_shape(shape: Union[str, Tuple[int, ...], list, None]) -> Optional[Tuple[int, ...]]:
    """Turn ``"Z,Y,X"`` (or ``"ZxYxX"``, or a sequence of ints) into a tuple of positive ints.

    Raises:
        NeurvolInputError: not three positive integers.
    """
    if shape is None:
        return None
    if isinstance(shape, str):
        parts = [p.strip() for p in shape.lower().replace("x", ",").split(",")]
        try:
            dims = tuple(int(p) for p in parts)
        except ValueError:
            raise NeurvolInputError(f"shape {shape!r} is not Z,Y,X (three integers, e.g. 64,64,64)") from None
    else:
        try:
            if any(isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer))
                   for d in shape):
                raise TypeError
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise NeurvolInputError(f"shape {shape!r} is not a sequence of three integers (z, y, x)") from None
    if len(dims) != 3 or any(d <= 0 for d in dims):
        raise NeurvolInputError(f"shape {shape!r} must be three positive integers Z,Y,X")
    if max(dims) > MAX_AXIS or math.prod(dims) > MAX_VOXELS:
        raise NeurvolInputError(f"shape {shape!r} is too large: at most {MAX_AXIS} per axis and "
                                f"{MAX_VOXELS} voxels in all")
    return dims


def parse_dtype(dtype: object) -> np.dtype:
    """``np.dtype(dtype)`` restricted to plain numbers (bool, int, uint, float, complex).

    Raises:
        NeurvolInputError: not a dtype numpy knows, or not numeric.
    """
    if dtype is None:
        raise NeurvolInputError("dtype is missing; use e.g. uint8, uint16, int16, float32")
    try:
        dt = np.dtype(dtype)  # type: ignore[call-overload]
    except Exception:  # noqa: BLE001 - TypeError, ValueError ("(1e99,)f4"), SyntaxError ...
        raise NeurvolInputError(f"unknown dtype {dtype!r}; use e.g. uint8, uint16, int16, float32") from None
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise NeurvolInputError(f"dtype {dtype!r} is not a plain numeric type; use e.g. uint8, float32")
    return dt


_BYTE_ORDERS = {"little": "<", "<": "<", "big": ">", ">": ">", "native": "=", "=": "="}


def byte_order_char(byte_order: str) -> str:
    """``"little"|"big"|"native"`` (or ``<``, ``>``, ``=``) to the numpy byte-order char."""
    try:
        return _BYTE_ORDERS[str(byte_order).lower()]
    except KeyError:
        raise NeurvolInputError(f"byte order {byte_order!r} must be 'little' or 'big'") from None
