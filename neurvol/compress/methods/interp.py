"""Method 4, interp: multilevel interpolation prediction over the last three axes (the
predictor of SZ3, :mod:`..interp`); ``spec/payload.md`` §2.2.8. Every value is within
``step / 2``. Never masked."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..interp import interp_decode, interp_encode
from ..lorenzo import unzigzag
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
        # Beyond float32's range: inf, rejected by the caller (non-finite).
        return interp_decode(codes, shape, step, dtype=np.float32).reshape(-1)

    @classmethod
    def reconstruct_symbols(cls, symbols: np.ndarray, shape: Tuple[int, ...],
                            step: float) -> np.ndarray:
        # Each pass's codes unzigzagged as it reads them: no int64 copy of the stream.
        return interp_decode(symbols, shape, step, dtype=np.float32,
                             codes_of=unzigzag).reshape(-1)
