"""Masked volumes on the reading side (``spec/mask.md``): the header's ``"mask"`` entry,
and where the mask applies to decoded values and queries.

Decoded grids hold the fill (NaN, or the file's fill value) at masked voxels; a decode on
another grid and a query between voxel centres take the mask of the *nearest* voxel
(``floor(i + 0.5)`` per axis in index space), so a point is masked exactly when the voxel
whose cell it lies in is. Queries answer NaN there whatever the fill value.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from .compress.mask import MASK_SECTION, VoxelMask, decode_mask
from .errors import NeurvolFormatError, NeurvolInputError

#: Header key of a masked file, and the format minor that introduced it.
MASK_KEY = "mask"
MASK_MINOR = 3
#: Voxels whose mask is looked up at a time (bounded memory in decodes).
_LOOKUP_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """The header's ``"mask"`` entry: the fill value (None: NaN) and masked voxel count."""

    fill: Optional[float]
    masked: int

    def to_header(self) -> Dict[str, Any]:
        return {"fill": self.fill, "masked": self.masked, "section": MASK_SECTION}


def parse_mask(header: Dict[str, Any], section_names: Sequence[str], shape: Sequence[int],
               dtype: np.dtype) -> Optional[MaskSpec]:
    """The file's :class:`MaskSpec`, or None for a file without a mask; a malformed entry
    or a missing section is a :class:`NeurvolFormatError`."""
    entry = header.get(MASK_KEY)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise NeurvolFormatError(f"header 'mask' must be an object, got {type(entry).__name__}")
    fill, masked, section = entry.get("fill"), entry.get("masked"), entry.get("section")
    if section != MASK_SECTION or MASK_SECTION not in section_names:
        raise NeurvolFormatError(
            f"header 'mask' names section {section!r} but the file has no "
            f"{MASK_SECTION!r} section (spec/mask.md)")
    voxels = math.prod(shape)
    if type(masked) is not int or not 1 <= masked <= voxels - 1:
        raise NeurvolFormatError(
            f"header 'mask.masked' must be an integer in [1, {voxels - 1}], got {masked!r}")
    if fill is None:
        if dtype.kind != "f":
            raise NeurvolFormatError(
                "header 'mask.fill' is null (NaN) but the volume's dtype is "
                f"{dtype}, which has no NaN (spec/mask.md)")
    elif isinstance(fill, bool) or not isinstance(fill, (int, float)) or not math.isfinite(fill):
        raise NeurvolFormatError(f"header 'mask.fill' must be null or a finite number, got {fill!r}")
    return MaskSpec(None if fill is None else float(fill), masked)


class LoadedMask:
    """A file's mask, decoded once from its section (``load()`` returns the bytes)."""

    def __init__(self, spec: MaskSpec, shape: Tuple[int, int, int],
                 load: Callable[[], bytes]):
        self.spec, self.shape = spec, shape
        self._load = load
        self._mask: Optional[VoxelMask] = None
        self._lock = threading.Lock()

    def voxels(self) -> VoxelMask:
        """The decoded mask (read and checked on first use)."""
        with self._lock:
            if self._mask is None:
                mask = decode_mask(self._load(), self.shape)
                if mask.count() != self.spec.masked:
                    raise NeurvolFormatError(
                        f"the mask section masks {mask.count()} voxels, the header says "
                        f"{self.spec.masked}; the file is damaged")
                self._mask = mask
            return self._mask

    def fill_for(self, dtype: np.dtype) -> Any:
        """The value decoded grids of ``dtype`` hold at masked voxels."""
        if self.spec.fill is None:
            if dtype.kind != "f":
                raise NeurvolInputError(
                    f"this volume has NaN regions, which {dtype} cannot hold; decode to a "
                    "float dtype (e.g. dtype=np.float32)")
            return np.nan
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            return int(min(max(self.spec.fill, info.min), info.max))
        return self.spec.fill

    def region(self, idx: Sequence[np.ndarray]) -> np.ndarray:
        """Bool mask of the outer product of three integer index arrays (z, y, x)."""
        iz, iy, ix = (np.asarray(i, dtype=np.int64) for i in idx)
        out = np.empty((iz.size, iy.size, ix.size), dtype=bool)
        for s, part in self._slabs(iz, iy, ix):
            out[s:s + part.shape[0]] = part
        return out

    def apply(self, out: np.ndarray, idx: Sequence[np.ndarray]) -> None:
        """Set the masked voxels of ``out`` (the outer product of ``idx``, same shape) to
        the fill, a slab at a time (memory beyond ``out`` stays bounded)."""
        if out.size == 0:
            return
        fill = self.fill_for(out.dtype)
        iz, iy, ix = (np.asarray(i, dtype=np.int64) for i in idx)
        view = out.reshape(iz.size, iy.size, ix.size)
        for s, part in self._slabs(iz, iy, ix):
            if part.any():
                view[s:s + part.shape[0]][part] = fill

    def _slabs(self, iz: np.ndarray, iy: np.ndarray, ix: np.ndarray):
        """``(first z position, bool mask of a slab of z positions)`` in order."""
        _, h, w = self.shape
        plane = (iy[:, None] * w + ix[None, :]).reshape(-1)
        per = max(1, _LOOKUP_CHUNK // max(1, plane.size))
        vm = self.voxels()
        for s in range(0, iz.size, per):
            zs = iz[s:s + per]
            flat = (zs[:, None] * (h * w) + plane[None, :]).reshape(-1)
            yield s, vm.masked(flat).reshape(zs.size, iy.size, ix.size)

    def at_points(self, index_coords: np.ndarray) -> np.ndarray:
        """Whether each point ``(N, 3)`` (index space, inside the volume) is masked: the
        nearest voxel's mask, ``floor(c + 0.5)`` per axis, clamped to the volume."""
        top = np.asarray(self.shape, dtype=np.int64) - 1
        out = np.empty(index_coords.shape[0], dtype=bool)
        vm = self.voxels()
        _, h, w = self.shape
        for s in range(0, index_coords.shape[0], _LOOKUP_CHUNK):
            c = np.floor(np.asarray(index_coords[s:s + _LOOKUP_CHUNK], dtype=np.float64) + 0.5)
            v = np.clip(c, 0, top).astype(np.int64)
            out[s:s + _LOOKUP_CHUNK] = vm.masked((v[:, 0] * h + v[:, 1]) * w + v[:, 2])
        return out


def nearest_indices(target: int, n: int) -> np.ndarray:
    """For a decode of ``target`` samples along an axis of ``n`` voxels (corner centres
    coincide), the nearest source voxel of each sample."""
    if target == n:
        return np.arange(n, dtype=np.int64)
    if target == 1:
        return np.zeros(1, dtype=np.int64)
    pos = np.arange(target, dtype=np.float64) * ((n - 1) / (target - 1))
    return np.clip(np.floor(pos + 0.5), 0, n - 1).astype(np.int64)
