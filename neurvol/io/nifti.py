"""NIfTI-1/NIfTI-2 volumes (``.nii``, ``.nii.gz``) through ``nibabel`` (optional extra).

NIfTI stores voxel ``(i, j, k)`` with ``i`` fastest, i.e. an array indexed ``[x, y, z]``;
neurvol's arrays are ``[z, y, x]``, so the reader transposes (a free view) and the writer
transposes back. ``spacing`` comes from the voxel sizes (``pixdim``, reversed to z, y, x) and
``origin`` from the affine's translation (reversed). Rotations/shears in the affine are not
carried (a warning says so); the writer stores a diagonal affine.

Needs the ``nifti`` extra: ``pip install 'neurvol[nifti]'``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .._atomic import atomic_path
from ..errors import NeurvolInputError, NeurvolIOError
from ..volume_checks import MAX_AXIS, MAX_VOXELS
from ._registry import VolumeData, VolumeFormat, numeric_volume, optional_module, register_format

log = logging.getLogger(__name__)


def _nibabel() -> Any:
    return optional_module("nibabel", "NIfTI files", "nifti")


def read_nifti(path: Path, *, shape: Optional[Tuple[int, ...]] = None, dtype: Optional[object] = None,
               byte_order: str = "little") -> VolumeData:
    """Read a NIfTI volume as ``[z, y, x]`` (lazy where nibabel can map the file).

    A 4-D image with one volume (``[x, y, z, 1]``) is accepted. Scaled data
    (``scl_slope``/``scl_inter``) comes back as float, as nibabel applies the scaling.

    Raises:
        NeurvolIOError: nibabel missing, not a NIfTI file, not 3-D, or a non-numeric type.
    """
    nib = _nibabel()
    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - nibabel raises ImageFileError, ValueError, OSError...
        raise NeurvolIOError(f"cannot read {str(path)!r} as NIfTI: {e}") from e
    dshape = tuple(int(n) for n in img.shape)
    while len(dshape) > 3 and dshape[-1] == 1:
        dshape = dshape[:-1]
    if len(dshape) != 3:
        raise NeurvolIOError(f"{str(path)!r} holds an image of shape {list(img.shape)}; need a 3-D "
                             "volume (one time point)")
    if max(dshape) > MAX_AXIS or math.prod(dshape) > MAX_VOXELS:
        raise NeurvolInputError(f"{str(path)!r} of shape {list(dshape)} is too large")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001
        raise NeurvolIOError(f"cannot read the data of {str(path)!r}: {e}") from e
    if data.dtype.kind not in "biuf" or data.dtype.fields is not None:
        raise NeurvolIOError(f"{str(path)!r} has data type {data.dtype}; need plain integers or floats")
    data = data.reshape(dshape).transpose(2, 1, 0)         # [x, y, z] -> [z, y, x]
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    affine = np.asarray(img.affine, dtype=np.float64)
    spacing = zooms[::-1] if all(math.isfinite(z) and z > 0 for z in zooms) else None
    origin = tuple(float(v) for v in affine[:3, 3][::-1])
    if not all(math.isfinite(v) for v in origin):
        origin = None  # type: ignore[assignment]
    lin = affine[:3, :3]
    if spacing is not None and not np.allclose(np.abs(lin), np.diag(zooms), atol=1e-6 * max(zooms)):
        log.warning("%s: the voxel-to-world affine rotates or flips axes; only voxel sizes and "
                    "the translation are carried", path)
    log.debug("read NIfTI %s: %s %s", path, data.shape, data.dtype)
    return VolumeData(data, spacing, origin)  # type: ignore[arg-type]


def write_nifti(path: Path, array: np.ndarray, *, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                origin: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
    """Write ``array`` (``[z, y, x]``) as NIfTI-1 with a diagonal affine; ``.nii.gz`` is gzipped."""
    nib = _nibabel()
    arr = numeric_volume(array, " to NIfTI")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        # NIfTI has no binary16 type; float32 holds every binary16 value exactly.
        arr = arr.astype(np.float32)
    affine = np.diag([float(spacing[2]), float(spacing[1]), float(spacing[0]), 1.0])
    affine[:3, 3] = [float(origin[2]), float(origin[1]), float(origin[0])]
    try:
        img = nib.Nifti1Image(np.asarray(arr).transpose(2, 1, 0), affine)
        img.header.set_xyzt_units("mm")
    except Exception as e:  # noqa: BLE001 - nibabel: HeaderDataError for unsupported dtypes
        raise NeurvolInputError(
            f"cannot write dtype {arr.dtype} to NIfTI ({e}); decode to a type NIfTI stores, "
            "e.g. `--dtype float32` or `--dtype float64`") from e
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        try:
            nib.save(img, tmp)
        except Exception as e:  # noqa: BLE001 - nibabel: HeaderDataError, ValueError ...
            if isinstance(e, OSError):   # e.g. a full disk
                raise NeurvolIOError(f"cannot write {str(path)!r}: {e.strerror or e}") from e
            raise NeurvolIOError(f"cannot write {str(path)!r} as NIfTI: {e}") from e


register_format(VolumeFormat(
    name="nifti", extensions=(".nii", ".nii.gz"),
    description="NIfTI-1/2 via nibabel (needs neurvol[nifti])",
    read=read_nifti, write=write_nifti, writes_meta=True))
