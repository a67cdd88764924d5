"""Method 4, interp: multilevel interpolation prediction over the last three axes (the
predictor of SZ3, :mod:`..interp`); ``spec/payload.md`` §2.2.8. Every value is within
``step / 2``. Never masked."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .. import interp_kernel
from ..interp import interp_decode, interp_encode, interp_reconstruct
from ..lorenzo import unzigzag_scaled
from ..registry import register_method
from .grid import StepGridMethod


@register_method
class Interp(StepGridMethod):
    """Multilevel interpolation prediction, error at most ``step / 2``."""

    id = 4
    name = "interp"
    summary = "`f32 step` + one stream of zigzagged interpolation-prediction codes"
    section = "§2.2.8"

    def codes(self, arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return interp_encode(arr, self.step, dtype=np.float32)

    @classmethod
    def reconstruct(cls, codes: np.ndarray, shape: Tuple[int, ...], step: float) -> np.ndarray:
        return _float32(interp_decode(codes, shape, step))

    @classmethod
    def reconstruct_symbols(cls, z: np.ndarray, shape: Tuple[int, ...], step: float) -> np.ndarray:
        if interp_kernel.available():         # compiled, the same bits (numba installed)
            return interp_kernel.reconstruct_symbols(z, shape, step)
        # float64(code) * step straight from the symbols: no int64 codes.
        return _float32(interp_reconstruct(unzigzag_scaled(z, step), shape))


def _float32(rec: np.ndarray) -> np.ndarray:
    """The record's values: the reconstruction as float32, flat."""
    with np.errstate(over="ignore", invalid="ignore"):  # rejected by the caller: non-finite
        return rec.astype(np.float32).reshape(-1)
