"""Read and write volumes and query points in the formats scientists use.

Formats register themselves by name and extension (see :mod:`neurvol.io._registry`);
``read_volume``/``write_volume`` pick one from the file suffix or an explicit ``format``.
Readers are lazy where the format allows (``.npy``, ``.raw`` and uncompressed raw-appended
``.vti`` come back as read-only memmaps, HDF5/NetCDF variables as ``h5py.Dataset`` objects),
so a volume larger than memory can be streamed into the fitter.

Formats (optional packages in brackets; a missing one gives a NeurvolIOError naming the
pip extra):

========  =====================  ==========================================================
name      extensions             notes
========  =====================  ==========================================================
npy       .npy                   memmapped
raw       .raw .bin              needs shape, dtype (and byte order when big-endian)
hdf5      .h5 .hdf5 .he5         ``file.h5:/group/var`` picks a variable [h5py]
netcdf    .nc .nc4               NetCDF-4 (HDF5 based) ``file.nc:/var``; coordinates give
                                 spacing/origin [h5py]
vti       .vti                   VTK XML ImageData (ParaView); numpy + xml.etree only
nifti     .nii .nii.gz           NIfTI-1/2 [nibabel]
========  =====================  ==========================================================

**Axis order.** Arrays are indexed ``[z, y, x]`` (C order): x varies fastest in memory.
``spacing`` and ``origin`` are given in the same order, ``(z, y, x)``. Formats that list
axes x first (VTK ``Spacing``/``Origin``/``WholeExtent``, NIfTI ``pixdim`` and the
voxel-to-world affine's ``i, j, k``) are converted on read and write, so a volume written to
``.vti``, ``.h5`` or ``.nii`` and read back is the identical array with the same spacing and
origin.

Example::

    >>> from neurvol import io
    >>> vol = io.read_volume("ct.raw", shape=(512, 512, 512), dtype="uint16")
    >>> io.write_volume("ct.npy", vol)
    >>> v = io.load_volume("run.nc:/density")         # VolumeData(data, spacing, origin)
    >>> io.write_volume("density.vti", v.data[:], spacing=v.spacing, origin=v.origin)
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import NeurvolIOError
from ..volume_checks import check_triple
from ._registry import (
    VolumeData,
    VolumeFormat,
    as_path,
    parse_dtype,
    parse_shape,
    register_format,
    resolve_format,
    split_variable,
    volume_formats,
)

# Built-in formats register on import; keep this list in sync with the modules present.
from . import npy as _npy  # noqa: F401,E402
from . import raw as _raw  # noqa: F401,E402
from . import hdf5 as _hdf5  # noqa: F401,E402
from . import vti as _vti  # noqa: F401,E402
from . import nifti as _nifti  # noqa: F401,E402
from .points import POINT_EXTENSIONS, format_value, read_points, write_values  # noqa: E402
from .dataset import (DatasetVariable, VolumeDataset, json_attrs, read_dataset,  # noqa: E402
                      write_dataset)

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "read_volume", "load_volume", "write_volume", "VolumeData", "split_variable", "read_points", "write_values", "format_value",
    "VolumeFormat", "register_format", "resolve_format", "volume_formats",
    "parse_shape", "parse_dtype", "POINT_EXTENSIONS",
    "read_dataset", "write_dataset", "VolumeDataset", "DatasetVariable", "json_attrs",
]


def load_volume(path: PathLike, *, shape: Optional[Union[Tuple[int, int, int], str]] = None,
                dtype: Optional[object] = None, byte_order: str = "little",
                format: Optional[str] = None, variable: Optional[str] = None) -> VolumeData:
    """Read a 3D volume and its grid geometry, lazily where the format allows.

    Args:
        path: a volume file; for HDF5/NetCDF ``"file.h5:/group/var"`` names the variable.
        shape: ``(z, y, x)`` or ``"Z,Y,X"``; required for raw files.
        dtype: element dtype, e.g. ``"uint16"``; required for raw files.
        byte_order: ``"little"`` (default) or ``"big"``; raw files only.
        format: format name (``"npy"``, ``"raw"``, ``"hdf5"``, ``"netcdf"``, ``"vti"``,
            ``"nifti"``) overriding the extension.
        variable: HDF5/NetCDF variable path (alternative to the ``file:var`` syntax).

    Returns:
        :class:`VolumeData`: ``data`` indexed ``[z, y, x]`` plus ``spacing``/``origin``
        (z, y, x order, ``None`` where the file does not record them).

    Raises:
        NeurvolIOError: missing file, unknown extension/format, unreadable or malformed file,
            missing optional package, ambiguous HDF5/NetCDF variable.
        NeurvolInputError: raw shape/dtype missing or inconsistent with the file size.
    """
    p, var = split_variable(as_path(path))
    if variable is not None:
        if var is not None and var != variable:
            raise NeurvolIOError(f"two variables given for {str(p)!r}: {var!r} and {variable!r}")
        var = variable
    if not p.exists():
        raise NeurvolIOError(f"input file {str(p)!r} not found")
    if not p.is_file():
        raise NeurvolIOError(f"input {str(p)!r} is not a regular file")
    fmt = resolve_format(p, format, mode="read")
    assert fmt.read is not None
    kwargs: dict = {"shape": parse_shape(shape), "dtype": dtype, "byte_order": byte_order}
    if fmt.variables:
        kwargs["variable"] = var
    elif var is not None:
        raise NeurvolIOError(f"format {fmt.name!r} has no named variables; drop ':{var}' "
                             f"from {str(path)!r}")
    try:
        got = fmt.read(p, **kwargs)
    except PermissionError as e:
        raise NeurvolIOError(f"cannot read {str(p)!r}: permission denied") from e
    out = got if isinstance(got, VolumeData) else VolumeData(got)
    log.debug("read %s (%s): shape %s, spacing %s, origin %s", p, fmt.name,
              getattr(out.data, "shape", None), out.spacing, out.origin)
    return out


def read_volume(path: PathLike, *, shape: Optional[Union[Tuple[int, int, int], str]] = None,
                dtype: Optional[object] = None, byte_order: str = "little",
                format: Optional[str] = None) -> Any:
    """Read a 3D volume, lazily where the format allows (see :func:`load_volume`).

    Args:
        path: ``.npy`` (memmap), ``.raw``/``.bin``, ``.h5``/``.nc`` (``file.h5:/var``),
            ``.vti`` or ``.nii``/``.nii.gz``.
        shape: ``(z, y, x)`` or ``"Z,Y,X"``; required for raw files.
        dtype: element dtype, e.g. ``"uint16"``; required for raw files.
        byte_order: ``"little"`` (default) or ``"big"``; raw files only.
        format: format name overriding the extension.

    Returns:
        An array indexed ``[z, y, x]``: for ``.npy``/``.raw`` a read-only ``np.memmap``, for
        HDF5/NetCDF an ``h5py.Dataset`` (lazy; slice it or ``np.asarray`` it).

    Raises:
        NeurvolIOError: missing file, unknown extension/format, unreadable file.
        NeurvolInputError: raw shape/dtype missing or inconsistent with the file size.
    """
    return load_volume(path, shape=shape, dtype=dtype, byte_order=byte_order, format=format).data


def write_volume(path: PathLike, array: Any, *, format: Optional[str] = None,
                 spacing: Optional[Sequence[float]] = None,
                 origin: Optional[Sequence[float]] = None) -> None:
    """Write ``array`` to ``path`` atomically (temp file in the same directory, then rename).

    Args:
        path: ``.npy``, ``.raw``/``.bin`` (C order, little-endian, the array's dtype),
            ``.h5``/``.nc`` (variable ``volume``), ``.vti`` or ``.nii``/``.nii.gz``.
        array: the volume indexed ``[z, y, x]`` (any numpy array or array-like).
        format: format name overriding the extension.
        spacing: voxel size (z, y, x) for formats that record it (h5, nc, vti, nii);
            default 1.
        origin: world position of voxel (0, 0, 0) as (z, y, x); default 0.

    Raises:
        NeurvolIOError: unknown extension/format, missing optional package, or the file
            cannot be written.
    """
    p = as_path(path)
    fmt = resolve_format(p, format, mode="write")
    assert fmt.write is not None
    kwargs = {}
    if fmt.writes_meta:
        kwargs = {"spacing": check_triple(spacing, 1.0, "spacing"),
                  "origin": check_triple(origin, 0.0, "origin")}
    try:
        fmt.write(p, np.asanyarray(array), **kwargs)
    except NeurvolIOError:
        raise
    except OSError as e:
        raise NeurvolIOError(f"cannot write {str(p)!r}: {e.strerror or e}") from e
    log.debug("wrote %s (%s)", p, fmt.name)
