"""Encoding masked volumes (``spec/mask.md``): the mask's section and header entry, and
the values a dense grid holds at masked voxels while the model is fitted.

The fit samples valid voxels only, so masked voxels never enter the loss; they still
need values wherever the encoder uses the volume as a dense grid (model initialisation
from the volume, e.g. grid placement, and the gradient loss's finite differences at the
mask's edge). Those values are an extension of the valid data, chosen so the model is
not asked to bend towards anything: see :data:`FILL_METHODS`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional

import numpy as np

from ..compress.mask import MASK_SECTION, encode_mask
from ..masking import MASK_KEY, MASK_MINOR, MaskSpec


def fill_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values`` with masked voxels set to the mean of the valid ones (in place)."""
    values[mask] = float(values[~mask].mean(dtype=np.float64))
    return values


def fill_push_pull(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values`` with masked voxels set by push-pull (in place): valid values averaged
    down a pyramid of 2x2x2 means until every cell holds some, then each masked voxel
    takes the mean of its smallest enclosing cell that has valid data. The result is a
    smooth-ish extension of the data near the mask's edge and the local mean far from
    it, so a model does not spend parameters on an edge that is not there."""
    levels = []
    v = np.where(mask, 0.0, values).astype(np.float64)
    w = (~mask).astype(np.float64)
    while True:
        levels.append((v, w))
        if (w > 0).all() or max(v.shape) == 1:
            break
        pad = [(0, n % 2) for n in v.shape]
        vp, wp = np.pad(v, pad), np.pad(w, pad)
        sh = [n // 2 for n in vp.shape]
        v = vp.reshape(sh[0], 2, sh[1], 2, sh[2], 2).sum((1, 3, 5))
        w = wp.reshape(sh[0], 2, sh[1], 2, sh[2], 2).sum((1, 3, 5))
    v, w = levels[-1]
    filled = np.where(w > 0, v / np.maximum(w, 1e-300), v.sum() / max(w.sum(), 1e-300))
    for v, w in reversed(levels[:-1]):
        up = filled.repeat(2, 0).repeat(2, 1).repeat(2, 2)[:v.shape[0], :v.shape[1], :v.shape[2]]
        filled = np.where(w > 0, v / np.maximum(w, 1e-300), up)
    values[mask] = filled[mask].astype(values.dtype)
    return values


#: How masked voxels are filled for the fit (name -> function(values, mask) in place).
FILL_METHODS: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": fill_mean, "push-pull": fill_push_pull}
#: The method encodes use: both fill methods gave the same PSNR within noise on the masked
#: chest (benchmarks/run_masked.py), and the mean is cheaper.
DEFAULT_FILL = "mean"


@dataclasses.dataclass(frozen=True)
class MaskedInput:
    """A masked volume's mask (True: masked) and what its file stores for it."""

    mask: np.ndarray
    spec: MaskSpec
    section: bytes

    @property
    def sections(self) -> Dict[str, bytes]:
        """The container sections the file adds."""
        return {MASK_SECTION: self.section}

    @property
    def minor(self) -> int:
        """The format minor version of masked files."""
        return MASK_MINOR

    def add_to(self, header: Dict[str, object]) -> None:
        """Add the header's ``"mask"`` entry."""
        header[MASK_KEY] = self.spec.to_header()


def masked_input(mask: Optional[np.ndarray], fill_value: Optional[float]) -> Optional[MaskedInput]:
    """The :class:`MaskedInput` of ``mask`` (None: no masked voxel, a plain file)."""
    if mask is None or not mask.any():
        return None
    spec = MaskSpec(fill=None if fill_value is None else float(fill_value),
                    masked=int(np.count_nonzero(mask)))
    return MaskedInput(mask, spec, encode_mask(mask))


def fill_normalized(values: np.ndarray, masked: MaskedInput,
                    method: Optional[str] = None) -> np.ndarray:
    """Normalized ``values`` (float32, masked voxels NaN or anything) with the masked
    voxels filled by ``method`` (default :data:`DEFAULT_FILL`), in place."""
    values[masked.mask] = 0.0
    return FILL_METHODS[method or DEFAULT_FILL](values, masked.mask)
