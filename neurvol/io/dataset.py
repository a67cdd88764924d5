"""Several variables and a time axis: NetCDF-4 / HDF5 files as a plain structure.

:func:`read_dataset` opens a NetCDF-4 (or plain HDF5) file whose variables have dims
``(time, z, y, x)`` or ``(z, y, x)`` and returns a :class:`VolumeDataset`: per variable
its data (the lazy ``h5py.Dataset``, or a numpy array with ``lazy=False``), dims, dtype,
units, attributes and fill value (``_FillValue``, else ``missing_value``); the global
attributes; and the coordinate variables (``time``, ``z`` ...) with their values and
attributes. :func:`write_dataset` writes such a structure back as NetCDF-4 (HDF5 with the
NetCDF-4 conventions, through h5py: dimension scales, ``_FillValue`` as the HDF5 fill
value and an attribute of the variable's type), so ``netCDF4``, xarray and ncdump read it.

Only the root group is read (NetCDF-4 groups are not), and only plain numeric variables
(string, compound and variable-length ones are left out with a log line). Attribute
values come back as plain Python values (``str``, ``int``, ``float`` or lists of them;
:func:`json_attrs` turns the non-finite floats JSON lacks into strings for a ``.nvol``
header); numeric attributes are written back as float64 / int64 (``_FillValue`` in the
variable's own dtype).

Needs the ``hdf5`` extra (h5py): ``pip install 'neurvol[hdf5]'``. No torch here.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._atomic import atomic_path
from ..errors import NeurvolIOError
from ._registry import as_path, optional_module
from .hdf5 import open_hdf5

log = logging.getLogger(__name__)

#: NetCDF-4's marker on a dimension that has no coordinate variable (netCDF-C, h5netcdf).
_DIM_ONLY = "This is a netCDF dimension but not a netCDF variable."
#: HDF5 / NetCDF-4 bookkeeping attributes: not the user's, never returned or copied.
_INTERNAL_ATTRS = frozenset({
    "CLASS", "NAME", "DIMENSION_LIST", "REFERENCE_LIST", "_Netcdf4Dimid",
    "_Netcdf4Coordinates", "_nc3_strict", "_NCProperties", "_FillValue"})
#: Attributes a reader takes the fill value from, in order (CF conventions).
_FILL_ATTRS = ("_FillValue", "missing_value")
#: Names of the dims of a volume, and of a time series of volumes.
SPATIAL_DIMS = ("z", "y", "x")
TIME_DIM = "time"
#: Time steps written at a time (bounded memory for large series).
_STEPS_PER_WRITE = 1


@dataclasses.dataclass
class DatasetVariable:
    """One variable: ``data`` (``shape``/``dtype``/slicing: an ``h5py.Dataset``, a numpy
    array or any array-like), its ``dims`` (names, one per axis), ``attrs`` (without
    ``_FillValue``), ``units`` (also in ``attrs`` when the file has it) and
    ``fill_value`` (None: none declared)."""

    name: str
    data: Any
    dims: Tuple[str, ...]
    attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    fill_value: Optional[Union[int, float]] = None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def units(self) -> Optional[str]:
        u = self.attrs.get("units")
        return u if isinstance(u, str) else None

    @property
    def has_time(self) -> bool:
        """Whether the first axis is the time axis (dims ``(time, z, y, x)``)."""
        return len(self.dims) == 4 and self.dims[0] == TIME_DIM

    def values(self) -> np.ndarray:
        """The whole variable as a numpy array."""
        return np.asarray(self.data)


@dataclasses.dataclass
class VolumeDataset:
    """A file's data variables and coordinate variables (both by name, in file order),
    its global ``attrs`` and its ``dims`` (name -> length). With ``lazy`` reads the file
    stays open until :meth:`close` (or the end of a ``with`` block)."""

    variables: Dict[str, DatasetVariable]
    coords: Dict[str, DatasetVariable] = dataclasses.field(default_factory=dict)
    attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    dims: Dict[str, int] = dataclasses.field(default_factory=dict)
    _file: Any = dataclasses.field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Close the file behind lazy variables (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "VolumeDataset":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def time(self) -> Optional[DatasetVariable]:
        """The ``time`` coordinate variable, if the file has one."""
        return self.coords.get(TIME_DIM)


def _h5py() -> Any:
    return optional_module("h5py", "NetCDF-4/HDF5 datasets", "hdf5")


def _plain_value(v: Any) -> Any:
    """An attribute value as a JSON-able Python value."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "SO":
            return [_plain_value(x) for x in v.reshape(-1).tolist()]
        items = [_plain_value(x) for x in v.reshape(-1)]
        # NetCDF stores every attribute as a 1-D array: one value reads as a scalar.
        return items[0] if v.size == 1 else items
    if isinstance(v, np.generic):
        v = v.item()
    return v


def json_attrs(attrs: Mapping[str, Any]) -> Dict[str, Any]:
    """``attrs`` with NaN and infinite floats (e.g. ``missing_value = NaN``) as the
    strings ``"nan"``, ``"inf"``, ``"-inf"``, which ``float()`` reads back: JSON (a
    ``.nvol`` header) has no such numbers."""
    def conv(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v
    return {k: conv(v) for k, v in attrs.items()}


def _attrs(obj: Any) -> Dict[str, Any]:
    out = {}
    for k in obj.attrs:
        if k in _INTERNAL_ATTRS:
            continue
        try:
            out[k] = _plain_value(obj.attrs[k])
        except (OSError, TypeError, ValueError):   # an attribute h5py cannot read
            log.warning("attribute %s of %s cannot be read; left out", k, obj.name)
    return out


def _fill(obj: Any, dtype: np.dtype) -> Optional[Union[int, float]]:
    for key in _FILL_ATTRS:
        if key in obj.attrs:
            v = np.asarray(obj.attrs[key]).reshape(-1)
            if v.size and v.dtype.kind in "biuf":
                x = float(v[0])
                if dtype.kind == "f":
                    return x
                if math.isfinite(x) and x == int(x):
                    return int(x)
    return None


def _numeric(h5py: Any, ds: Any) -> bool:
    dt = ds.dtype
    return (dt.kind in "biuf" and dt.fields is None and dt.subdtype is None
            and h5py.check_vlen_dtype(dt) is None)


def _dim_names(ds: Any) -> Tuple[str, ...]:
    names = []
    for axis in range(ds.ndim):
        try:
            scales = ds.dims[axis]
            name = scales[0].name.rsplit("/", 1)[-1] if len(scales) else None
        except (RuntimeError, ValueError, KeyError, OSError):
            name = None
        names.append(name or f"phony_dim_{axis}")
    return tuple(names)


def _is_dim_only(ds: Any) -> bool:
    name = ds.attrs.get("NAME", b"")
    name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return name.startswith(_DIM_ONLY)


def read_dataset(path: Union[str, Path], variables: Optional[Sequence[str]] = None, *,
                 lazy: bool = True) -> VolumeDataset:
    """Read a NetCDF-4 / HDF5 file's variables, coordinates and attributes.

    Args:
        path: the file.
        variables: names of the data variables to return (default: every plain numeric
            non-coordinate variable of the root group).
        lazy: True (default): each variable's ``data`` is its ``h5py.Dataset`` (read as it
            is sliced; close the dataset, or use ``with``, when done); False: numpy arrays
            and the file closed.

    Raises:
        NeurvolIOError: h5py missing, not an HDF5/NetCDF-4 file, or a named variable
            missing or not numeric.
    """
    h5py = _h5py()
    p = as_path(path)
    f = open_hdf5(p)
    try:
        ds_out = VolumeDataset(variables={}, attrs=_attrs(f), _file=f if lazy else None)
        data_vars: List[Any] = []
        for name, obj in f.items():
            if not isinstance(obj, h5py.Dataset):
                log.info("%s: group %s is not read (only the root group)", p, name)
                continue
            scale = obj.attrs.get("CLASS", b"") in (b"DIMENSION_SCALE", "DIMENSION_SCALE")
            if scale and obj.ndim == 1:
                ds_out.dims[name] = int(obj.shape[0])
                if _is_dim_only(obj):
                    continue
                # Coordinates are small (one value per step or voxel row): read now.
                ds_out.coords[name] = DatasetVariable(name, obj[()], (name,), _attrs(obj),
                                                      _fill(obj, obj.dtype))
                continue
            data_vars.append(obj)
        wanted = None if variables is None else list(variables)
        if wanted is not None:
            missing = [v for v in wanted if v not in f or not isinstance(f[v], h5py.Dataset)]
            if missing:
                raise NeurvolIOError(
                    f"{str(p)!r} has no variable {', '.join(map(repr, missing))}; it has "
                    f"{', '.join(o.name.lstrip('/') for o in data_vars) or 'none'}")
        for obj in data_vars:
            name = obj.name.rsplit("/", 1)[-1]
            if wanted is not None and name not in wanted:
                continue
            if not _numeric(h5py, obj):
                if wanted is not None:
                    raise NeurvolIOError(f"{str(p)}:{name} has dtype {obj.dtype}; only plain "
                                         "integer or float variables are read")
                log.warning("%s: variable %s (%s) is not numeric; left out", p, name, obj.dtype)
                continue
            dims = _dim_names(obj)
            for d, n in zip(dims, obj.shape):
                ds_out.dims.setdefault(d, int(n))
            data = obj if lazy else obj[()]
            ds_out.variables[name] = DatasetVariable(name, data, dims, _attrs(obj),
                                                     _fill(obj, obj.dtype))
        if not lazy:
            f.close()
        return ds_out
    except BaseException:
        f.close()
        raise


def _attr_value(v: Any) -> Any:
    """A Python attribute value as h5py stores it (strings as UTF-8 variable-length)."""
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, str) for x in v):
            return v
        return np.asarray(v)
    return v


def _set_attrs(obj: Any, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        if k in _INTERNAL_ATTRS:
            continue
        obj.attrs[k] = _attr_value(v)


def _steps(data: Any, n: int) -> Iterator[Tuple[slice, np.ndarray]]:
    for s in range(0, n, _STEPS_PER_WRITE):
        sl = slice(s, min(n, s + _STEPS_PER_WRITE))
        yield sl, np.asarray(data[sl])


def write_dataset(path: Union[str, Path], dataset: VolumeDataset) -> None:
    """Write ``dataset`` as a NetCDF-4 file (atomically: temp file, then rename).

    Every dim a variable uses becomes a dimension: the coordinate variable of that name
    when ``dataset.coords`` has one (its values and attributes), else a dimension without
    a variable. Variables keep their dims, attributes and fill value (written as the
    HDF5 fill value and as ``_FillValue`` of the variable's dtype). Data is written one
    time step (leading index) at a time.

    Raises:
        NeurvolIOError: h5py missing, a variable whose dims do not match its shape or
            disagree on a dim's length, or a fill value its dtype cannot hold.
    """
    h5py = _h5py()
    p = as_path(path)
    lengths: Dict[str, int] = {}
    for var in list(dataset.coords.values()) + list(dataset.variables.values()):
        if len(var.dims) != len(var.shape):
            raise NeurvolIOError(f"variable {var.name!r} has dims {var.dims} but shape {var.shape}")
        for d, n in zip(var.dims, var.shape):
            if lengths.setdefault(d, n) != n:
                raise NeurvolIOError(f"dim {d!r} has length {lengths[d]} and {n} "
                                     f"(variable {var.name!r})")
    with atomic_path(p, suffix="".join(p.suffixes[-1:])) as tmp:
        # track_order: variables and attributes keep their order, as netCDF-C's files do.
        with h5py.File(tmp, "w", libver="earliest", track_order=True) as f:
            _set_attrs(f, dataset.attrs)
            scales = {}
            for d, n in lengths.items():
                coord = dataset.coords.get(d)
                if coord is not None and coord.dims == (d,):
                    ds = f.create_dataset(d, data=np.asarray(coord.values()),
                                          **_fill_kwargs(coord))
                    _set_attrs(ds, coord.attrs)
                    _set_fill_attr(ds, coord)
                    ds.make_scale(d)
                else:
                    ds = f.create_dataset(d, shape=(n,), dtype="f4")
                    ds.make_scale(f"{_DIM_ONLY}{n:10d}")
                scales[d] = ds
            for var in dataset.variables.values():
                shape = var.shape
                chunks = None
                if len(shape) == 4 and shape[0] > 1:
                    chunks = (1,) + shape[1:]   # one step per chunk: a step reads alone
                ds = f.create_dataset(var.name, shape=shape, dtype=var.dtype, chunks=chunks,
                                      **_fill_kwargs(var))
                if shape and shape[0] > 0 and len(shape) >= 4:
                    for sl, block in _steps(var.data, shape[0]):
                        ds[sl] = block
                else:
                    ds[...] = np.asarray(var.values())
                _set_attrs(ds, var.attrs)
                _set_fill_attr(ds, var)
                for axis, d in enumerate(var.dims):
                    ds.dims[axis].attach_scale(scales[d])


def _fill_kwargs(var: DatasetVariable) -> Dict[str, Any]:
    if var.fill_value is None:
        return {}
    return {"fillvalue": _typed_fill(var)}


def _typed_fill(var: DatasetVariable) -> np.generic:
    """The fill value in the variable's dtype (refused unless it holds it exactly)."""
    dt, want = var.dtype, float(var.fill_value)
    try:
        v = dt.type(var.fill_value)
    except (OverflowError, ValueError, TypeError):
        v = None
    if v is None or not (float(v) == want or (math.isnan(want) and math.isnan(float(v)))):
        raise NeurvolIOError(f"fill value {var.fill_value!r} of {var.name!r} is not a {dt} "
                             "value")
    return v


def _set_fill_attr(ds: Any, var: DatasetVariable) -> None:
    if var.fill_value is not None:
        ds.attrs["_FillValue"] = np.asarray(_typed_fill(var), dtype=var.dtype).reshape(1)
