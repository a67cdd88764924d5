"""xarray backend: ``xr.open_dataset("f.nvol", engine="neurvol")`` (docs/xarray.md).

A time-series file (spec/series.md) gives one data variable per variable, dims
``(time, z, y, x)``, with its units and attributes. Otherwise the dataset has one data
variable, dims ``(z, y, x)``, coordinates ``origin + spacing * i``
from the header, and the file's descriptive attributes (:func:`metadata.attributes`).
Nothing is decoded at open: the variable is a lazily indexed :class:`NeurvolBackendArray`,
and ``.isel``/``.sel`` become region reads of just the selected voxels, which decode only
the bricks they touch. ``chunks={}`` gives a dask array with one chunk per brick (the
variable's ``encoding["preferred_chunks"]``).

Registered under the entry point group ``xarray.backends`` as ``neurvol``
(``pip install 'neurvol[xarray]'``).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Tuple

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from ..arrays import RegionSource, default_chunks
from .metadata import DIMS, EXTENSION, attributes, geometry, looks_like_nvol

#: Name of the data variable unless ``open_dataset(..., name=...)`` says otherwise.
DEFAULT_NAME = "volume"
#: The time dimension of a time-series file's variables.
TIME_DIM = "time"


class NeurvolBackendArray(BackendArray):
    """The volume as xarray's backends see it: ``shape``, ``dtype`` and outer indexing
    (ints, slices and 1-D integer arrays per axis), each index a region read."""

    def __init__(self, nv: Any) -> None:
        self.source = RegionSource(nv)   # pickles as the file's bytes (dask distributed)
        self.shape: Tuple[int, ...] = tuple(nv.shape)
        self.dtype = np.dtype(nv.dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._raw_indexing_method)

    def _raw_indexing_method(self, key: Tuple[Any, ...]) -> np.ndarray:
        return self.source[key]


class SeriesBackendArray(NeurvolBackendArray):
    """One variable of a time-series file, dims ``(time, z, y, x)``: outer indexing, each
    index decoding only the steps (and their groups' members) it selects."""

    def __init__(self, variable: Any) -> None:
        self.variable = variable
        self.shape: Tuple[int, ...] = tuple(variable.shape)
        self.dtype = np.dtype(variable.dtype)

    def _raw_indexing_method(self, key: Tuple[Any, ...]) -> np.ndarray:
        return self.variable[key]


def _series_dataset(series: Any, drop_variables: Optional[Iterable[str]]) -> xr.Dataset:
    """The dataset of a time-series file (spec/series.md): every variable, dims
    ``(time, z, y, x)``, with its units and attributes; ``time`` from the file (else step
    numbers) with its attributes; the file's global attributes on the dataset."""
    lay = series.layout
    spacing = lay.spacing or [1.0, 1.0, 1.0]
    origin = lay.origin or [0.0, 0.0, 0.0]
    coords = {dim: (dim, o + s * np.arange(n), {"spacing": s})
              for dim, n, s, o in zip(DIMS, lay.shape, spacing, origin)}
    coords[TIME_DIM] = (TIME_DIM, np.asarray(series.time if series.time is not None
                                             else np.arange(series.steps)), series.time_attrs)
    dropped = set(drop_variables or ())
    data_vars = {}
    for name in series.variables:
        if name in dropped:
            continue
        var = series[name]
        attrs = dict(var.attrs)
        if var.units is not None:
            attrs["units"] = var.units
        attrs["value_range"] = list(var.value_range)
        data = indexing.LazilyIndexedArray(SeriesBackendArray(var))
        data_vars[name] = xr.Variable((TIME_DIM,) + tuple(DIMS), data, attrs=attrs)
    attrs = dict(series.attrs)      # the file's global attributes, then neurvol's own
    attrs.update({"ratio": round(series.ratio, 3), "file_bytes": series.nbytes_file,
                  "format_version": series.info()["format_version"]})
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def open_nvol_dataset(filename_or_obj: Any, *, drop_variables: Optional[Iterable[str]] = None,
                      name: str = DEFAULT_NAME) -> xr.Dataset:
    """A lazy ``xr.Dataset`` of a ``.nvol`` file: a path, the file's bytes, a binary file
    object, or an open :class:`~neurvol.NeuralVolume` (left open when the dataset closes;
    its ``stats`` then count the bricks the dataset's reads decode)."""
    import neurvol
    from ..container import NvolReader
    from ..neural_volume import NeuralVolume
    from ..series import NeuralSeries

    if isinstance(filename_or_obj, NeuralSeries):
        return _series_dataset(filename_or_obj, drop_variables)
    if isinstance(filename_or_obj, (bytes, bytearray, memoryview)) or hasattr(
            filename_or_obj, "read"):
        raw = bytes(filename_or_obj) if not hasattr(filename_or_obj, "read") else \
            filename_or_obj.read()
        reader = NvolReader(raw)
        if "series" in reader.header:
            series = NeuralSeries(reader)
            ds = _series_dataset(series, drop_variables)
            ds.set_close(series.close)
            return ds
        filename_or_obj = raw
    if isinstance(filename_or_obj, NeuralVolume):
        nv, owned = filename_or_obj, False
    elif isinstance(filename_or_obj, (bytes, bytearray, memoryview)):
        nv, owned = NeuralVolume(NvolReader(bytes(filename_or_obj))), True
    elif hasattr(filename_or_obj, "read"):
        nv, owned = NeuralVolume(NvolReader(filename_or_obj.read())), True
    else:
        nv, owned = neurvol.open(filename_or_obj), True
        if isinstance(nv, NeuralSeries):
            ds = _series_dataset(nv, drop_variables)
            ds.set_close(nv.close)
            return ds
    try:
        spacing, origin = geometry(nv)
        coords = {dim: (dim, o + s * np.arange(n), {"spacing": s})
                  for dim, n, s, o in zip(DIMS, nv.shape, spacing, origin)}
        attrs = attributes(nv)
        data_vars = {}
        if name not in set(drop_variables or ()):
            chunks = default_chunks(nv)
            encoding = {"preferred_chunks": dict(zip(DIMS, chunks))}
            if owned and isinstance(filename_or_obj, (str, os.PathLike)):
                encoding["source"] = os.fspath(filename_or_obj)
            data = indexing.LazilyIndexedArray(NeurvolBackendArray(nv))
            data_vars[name] = xr.Variable(DIMS, data, attrs=dict(attrs), encoding=encoding)
        ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    except BaseException:
        if owned:
            nv.close()
        raise
    if owned:
        ds.set_close(nv.close)
    return ds


class NeurvolBackendEntrypoint(BackendEntrypoint):
    """``engine="neurvol"``: opens ``.nvol`` files (see :func:`open_nvol_dataset`)."""

    description = "Compressed neural volumes (.nvol), read lazily brick by brick"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "name")

    def open_dataset(self, filename_or_obj: Any, *, drop_variables: Optional[Iterable[str]] = None,
                     name: str = DEFAULT_NAME) -> xr.Dataset:  # type: ignore[override]
        return open_nvol_dataset(filename_or_obj, drop_variables=drop_variables, name=name)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        from ..neural_volume import NeuralVolume
        from ..series import NeuralSeries

        if isinstance(filename_or_obj, (NeuralVolume, NeuralSeries)):
            return True
        return looks_like_nvol(filename_or_obj)


__all__ = ["DEFAULT_NAME", "EXTENSION", "NeurvolBackendArray", "NeurvolBackendEntrypoint",
           "SeriesBackendArray", "TIME_DIM", "open_nvol_dataset"]
