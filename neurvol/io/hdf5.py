"""HDF5 (``.h5``/``.hdf5``) and NetCDF-4 (``.nc``/``.nc4``) volumes through ``h5py``.

NetCDF-4 files are HDF5 files with conventions (dimensions are HDF5 dimension scales), so
one reader serves both. Name the variable with ``file.h5:/group/var`` (or ``variable=``);
without a name the file must hold exactly one 3-D numeric dataset (a 4-D one whose leading
axes have length 1, such as a single time step, counts as 3-D).

Reads are lazy: the returned ``data`` is the ``h5py.Dataset`` itself (or a thin wrapper
that drops leading length-1 axes), so a volume larger than memory is read slab by slab by
whoever slices it. Only plain numeric dtypes are accepted: object, string, variable-length,
compound and reference datasets are refused before any data is read (no pickle, no Python
objects).

Spacing and origin (z, y, x) come from ``spacing``/``origin`` attributes on the dataset
(what neurvol writes) or else from uniform 1-D coordinate variables attached as dimension
scales (the NetCDF convention). The writer stores the volume as dataset ``volume``; for
NetCDF it also writes the ``z``, ``y``, ``x`` coordinate variables as dimension scales so
netCDF tools (ncdump, xarray, ParaView's NetCDF reader) see a gridded variable.

Needs the ``hdf5`` extra: ``pip install 'neurvol[hdf5]'``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .._atomic import atomic_path
from ..errors import NeurvolInputError, NeurvolIOError
from ..volume_checks import MAX_AXIS, MAX_VOXELS
from ._registry import VolumeData, VolumeFormat, numeric_volume, optional_module, register_format

log = logging.getLogger(__name__)

#: Name of the dataset neurvol writes.
DATASET = "volume"
#: Stop listing candidates after this many (a file can hold thousands of datasets).
_MAX_CANDIDATES = 50


def _h5py() -> Any:
    return optional_module("h5py", "HDF5/NetCDF-4 files", "hdf5")


def open_hdf5(path: Any) -> Any:
    """``h5py.File(path, "r")``, with the error a user can act on (NetCDF-3 is not HDF5)."""
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise NeurvolIOError(
            f"cannot read {str(path)!r} as HDF5/NetCDF-4 ({e}); NetCDF-3 classic files are not "
            "HDF5: convert them with 'nccopy -k nc4 in.nc out.nc'") from e


class SqueezedDataset:
    """A lazy view of an ``h5py.Dataset`` without its leading length-1 axes.

    Has ``shape``, ``dtype``, ``ndim``, ``nbytes``, ``__getitem__`` and ``__array__``, which
    is all :func:`neurvol.encode` needs.
    """

    def __init__(self, dataset: Any, drop: int) -> None:
        self.dataset = dataset
        self._drop = int(drop)
        self.shape: Tuple[int, ...] = tuple(int(n) for n in dataset.shape[drop:])
        self.dtype = np.dtype(dataset.dtype)
        self.ndim = len(self.shape)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        return self.dataset[(0,) * self._drop + key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.dataset[(0,) * self._drop]
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"SqueezedDataset({self.dataset.name!r}, shape={self.shape}, dtype={self.dtype})"


def _plain_numeric(h5py: Any, ds: Any) -> bool:
    dt = ds.dtype
    if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
        return False
    return h5py.check_vlen_dtype(dt) is None and h5py.check_ref_dtype(dt) is None


def _effective_ndim(shape: Sequence[int]) -> int:
    """3 for ``(z, y, x)`` or ``(1, ..., 1, z, y, x)``, else the plain ndim."""
    lead = 0
    while len(shape) - lead > 3 and shape[lead] == 1:
        lead += 1
    return len(shape) - lead


def _candidates(h5py: Any, f: Any) -> Tuple[List[str], List[str]]:
    """(3-D numeric datasets, all other datasets) as ``/path [shape dtype]`` strings."""
    good: List[str] = []
    other: List[str] = []

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if len(good) + len(other) > 10 * _MAX_CANDIDATES:
            return
        if obj.attrs.get("CLASS", b"") in (b"DIMENSION_SCALE", "DIMENSION_SCALE") and obj.ndim == 1:
            return  # a coordinate variable, never the volume
        shape = tuple(obj.shape or ())
        if _effective_ndim(shape) == 3 and _plain_numeric(h5py, obj):
            good.append("/" + name)
        else:
            other.append(f"/{name} {list(shape)} {obj.dtype}")

    f.visititems(visit)
    return good, other


def _describe(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_CANDIDATES])
    return shown + (f" (and {len(names) - _MAX_CANDIDATES} more)" if len(names) > _MAX_CANDIDATES else "")


def _triple_attr(value: Any) -> Optional[Tuple[float, float, float]]:
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf" or arr.size != 3:
            return None
        t = tuple(float(v) for v in arr.reshape(-1))
    except (TypeError, ValueError):
        return None
    return t if all(math.isfinite(v) for v in t) else None  # type: ignore[return-value]


def _geometry(h5py: Any, ds: Any, drop: int) -> Tuple[Optional[Tuple[float, ...]], Optional[Tuple[float, ...]]]:
    spacing = _triple_attr(ds.attrs["spacing"]) if "spacing" in ds.attrs else None
    origin = _triple_attr(ds.attrs["origin"]) if "origin" in ds.attrs else None
    if spacing is not None and origin is not None:
        return spacing, origin
    # NetCDF convention: 1-D coordinate variables attached as dimension scales.
    sp: List[float] = []
    org: List[float] = []
    try:
        for axis in range(drop, drop + 3):
            n = int(ds.shape[axis])
            dim = ds.dims[axis]
            if len(dim) < 1:
                break
            scale = dim[0]
            if not isinstance(scale, h5py.Dataset) or scale.ndim != 1 or int(scale.shape[0]) != n \
                    or not _plain_numeric(h5py, scale) or n > MAX_AXIS:
                break
            c = np.asarray(scale[()], dtype=np.float64)
            if not np.isfinite(c).all():
                break
            step = (c[-1] - c[0]) / (n - 1) if n > 1 else 1.0
            if n > 2 and not np.allclose(np.diff(c), step, rtol=1e-4, atol=1e-12 * max(1.0, abs(step))):
                log.warning("coordinate %s of %s is not uniform; spacing not carried", scale.name, ds.name)
                break
            sp.append(float(step) if step != 0 else 1.0)
            org.append(float(c[0]))
    except (KeyError, ValueError, TypeError, RuntimeError, OSError):
        log.debug("cannot read dimension scales of %s", ds.name, exc_info=True)
    if len(sp) == 3:
        return spacing or tuple(sp), origin or tuple(org)
    return spacing, origin


def read_hdf5(path: Path, *, shape: Optional[Tuple[int, ...]] = None, dtype: Optional[object] = None,
              byte_order: str = "little", variable: Optional[str] = None) -> VolumeData:
    """Open an HDF5/NetCDF-4 variable lazily.

    Args:
        path: an existing ``.h5``/``.hdf5``/``.nc`` file.
        variable: dataset path such as ``/group/var``; ``None`` picks the only 3-D dataset.
        shape, dtype, byte_order: ignored (the file says), except for a warning on mismatch.

    Returns:
        :class:`VolumeData` whose ``data`` is the ``h5py.Dataset`` (or a
        :class:`SqueezedDataset` view of it); the file stays open while it is referenced.

    Raises:
        NeurvolIOError: h5py missing, not an HDF5 file, variable missing/ambiguous/not a 3-D
            numeric dataset.
    """
    h5py = _h5py()
    f = open_hdf5(path)
    try:
        if variable is None:
            good, other = _candidates(h5py, f)
            if len(good) != 1:
                what = (f"{len(good)} 3-D datasets: {_describe(good)}" if good else
                        "no 3-D numeric dataset" + (f" (it has: {_describe(other)})" if other else ""))
                raise NeurvolIOError(
                    f"{str(path)!r} holds {what}; name one as {path.name}:/VARIABLE"
                    + (f", e.g. {path.name}:{good[0]}" if good else ""))
            variable = good[0]
        key = variable if variable.startswith("/") else "/" + variable
        try:
            ds = f[key]
        except (KeyError, ValueError):
            good, other = _candidates(h5py, f)
            raise NeurvolIOError(
                f"{str(path)!r} has no variable {variable!r}; 3-D datasets in it: "
                f"{_describe(good) or 'none'}") from None
        if not isinstance(ds, h5py.Dataset):
            raise NeurvolIOError(f"{str(path)}:{key} is a group, not a dataset; name a dataset in it")
        if not _plain_numeric(h5py, ds):
            raise NeurvolIOError(f"{str(path)}:{key} has dtype {ds.dtype}; only plain integer or "
                                 "float data can be compressed")
        dshape = tuple(int(n) for n in (ds.shape or ()))
        if _effective_ndim(dshape) != 3:
            raise NeurvolIOError(f"{str(path)}:{key} has shape {list(dshape)}; need a 3-D volume "
                                 "(z, y, x)")
        drop = len(dshape) - 3
        vshape = dshape[drop:]
        if max(vshape) > MAX_AXIS or math.prod(vshape) > MAX_VOXELS:
            raise NeurvolInputError(f"{str(path)}:{key} of shape {list(vshape)} is too large: at most "
                                    f"{MAX_AXIS} per axis and {MAX_VOXELS} voxels")
        if "scale_factor" in ds.attrs or "add_offset" in ds.attrs:
            log.warning("%s:%s has scale_factor/add_offset; the stored (unscaled) values are used",
                        path, key)
        if shape is not None and tuple(shape) != vshape:
            log.warning("ignoring shape %s: %s:%s has shape %s", tuple(shape), path, key, vshape)
        spacing, origin = _geometry(h5py, ds, drop)
        data: Any = ds if drop == 0 else SqueezedDataset(ds, drop)
        log.debug("opened %s:%s %s %s lazily", path, key, vshape, ds.dtype)
        return VolumeData(data, spacing, origin)  # type: ignore[arg-type]
    except BaseException:
        f.close()
        raise


def _write(path: Path, array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
           netcdf: bool) -> None:
    h5py = _h5py()
    arr = numeric_volume(array)
    suffix = "".join(path.suffixes[-1:])
    with atomic_path(path, suffix=suffix) as tmp:
        with h5py.File(tmp, "w", libver="earliest" if netcdf else "latest") as f:
            ds = f.create_dataset(DATASET, data=arr, chunks=True if arr.nbytes > (1 << 20) else None)
            ds.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
            ds.attrs["origin"] = np.asarray(origin, dtype=np.float64)
            ds.attrs["axis_order"] = "z,y,x"
            if netcdf:
                # NetCDF-4 data model: one dimension scale (coordinate variable) per axis.
                for axis, name in enumerate(("z", "y", "x")):
                    n = arr.shape[axis]
                    coord = f.create_dataset(name, data=origin[axis] + spacing[axis] * np.arange(n))
                    coord.make_scale(name)
                    ds.dims[axis].attach_scale(coord)
                f.attrs["Conventions"] = "CF-1.8"


def write_hdf5(path: Path, array: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
               origin: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
    """Write ``array`` as dataset ``/volume`` with ``spacing``/``origin`` attributes (z, y, x)."""
    _write(path, array, spacing, origin, netcdf=False)


def write_netcdf(path: Path, array: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 origin: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
    """Write a NetCDF-4 file: variable ``volume(z, y, x)`` plus coordinate variables."""
    _write(path, array, spacing, origin, netcdf=True)


register_format(VolumeFormat(
    name="hdf5", extensions=(".h5", ".hdf5", ".he5"),
    description="HDF5 via h5py (file.h5:/group/var; needs neurvol[hdf5])",
    read=read_hdf5, write=write_hdf5, variables=True, writes_meta=True))
register_format(VolumeFormat(
    name="netcdf", extensions=(".nc", ".nc4"),
    description="NetCDF-4 via h5py (file.nc:/var; needs neurvol[hdf5])",
    read=read_hdf5, write=write_netcdf, variables=True, writes_meta=True))
