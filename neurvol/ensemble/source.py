"""Where a brick job reads its voxels from.

A *source spec* is a small picklable dict that lets another process (a pool worker or a
Dask worker on another machine sharing the file system) read any brick of the input
without the client shipping the data:

* ``{"kind": "memmap", "path", "offset", "dtype", "shape", "order"}``: an unsliced
  ``np.memmap`` (``.npy`` via ``np.load(mmap_mode="r")``, ``.raw``);
* ``{"kind": "hdf5", "path", "name"}``: an ``h5py.Dataset`` (HDF5 / NetCDF-4 variable);
* ``None``: anything else (in-memory arrays, array-likes); the client reads the brick and
  sends it with the job.
"""
from __future__ import annotations

import mmap
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..errors import NeurvolIOError

SourceSpec = Optional[Dict[str, Any]]


def source_spec(volume: Any) -> SourceSpec:
    """A spec workers can re-open, or None when the volume has no file behind it."""
    if isinstance(volume, np.memmap) and isinstance(getattr(volume, "base", None), mmap.mmap):
        path = getattr(volume, "filename", None)
        if path and os.path.isfile(path) and (volume.flags.c_contiguous or volume.flags.f_contiguous):
            return {"kind": "memmap", "path": os.path.abspath(path), "offset": int(volume.offset),
                    "dtype": volume.dtype.str, "shape": [int(s) for s in volume.shape],
                    "order": "C" if volume.flags.c_contiguous else "F"}
    mod = type(volume).__module__ or ""
    if mod.startswith("h5py") and hasattr(volume, "file") and hasattr(volume, "name"):
        try:
            path = volume.file.filename
        except Exception:  # noqa: BLE001 - a closed file or an in-memory (core) file
            return None
        if path and os.path.isfile(path) and volume.name:
            return {"kind": "hdf5", "path": os.path.abspath(path), "name": volume.name}
    return None


def read_block(volume: Any, sl: Tuple[slice, slice, slice]) -> np.ndarray:
    """``volume[sl]`` as a numpy array (one slicing call on the array-like)."""
    return np.asarray(volume[sl])


def read_spec(spec: Dict[str, Any], sl: Tuple[slice, slice, slice]) -> np.ndarray:
    """Read ``sl`` of the volume a source spec names (in the worker)."""
    try:
        if spec["kind"] == "memmap":
            arr = np.memmap(spec["path"], dtype=np.dtype(spec["dtype"]), mode="r",
                            offset=spec["offset"], shape=tuple(spec["shape"]), order=spec["order"])
            try:
                return np.array(arr[sl])
            finally:
                del arr
        if spec["kind"] == "hdf5":
            import h5py

            with h5py.File(spec["path"], "r") as f:
                return np.asarray(f[spec["name"]][sl])
    except OSError as exc:
        raise NeurvolIOError(
            f"a brick worker cannot read the input {spec.get('path')}: {exc}; workers need the "
            "input file at the same path (a shared file system)") from exc
    raise ValueError(f"unknown source kind {spec.get('kind')!r}")


class SpecReader:
    """Read-only array-like over a source spec: each read opens the input and closes it
    after, so the client's resident memory does not grow with the share of the file it
    has read (an open memmap keeps every page it touched resident; on a 512^3 float32
    volume that is the whole 0.5 GiB by the end of the scan)."""

    def __init__(self, spec: Dict[str, Any], shape: Tuple[int, ...], dtype: np.dtype):
        self.spec, self.shape, self.dtype = spec, tuple(shape), np.dtype(dtype)

    def __getitem__(self, key: Tuple[slice, slice, slice]) -> np.ndarray:
        return read_spec(self.spec, key)
