"""Method 3, lorenzo: uniform quantization ``q = round(value / step)`` and 3-D Lorenzo
prediction over the last three axes (:mod:`..lorenzo`); ``spec/payload.md`` §2.2.7. The
value is ``float32(float64(q) * step)``. Never masked."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..interp import MAX_CODE
from ..lorenzo import lorenzo_reconstruct, lorenzo_residuals
from ..registry import register_method
from .grid import StepGridMethod

#: Elements converted at a time from integer codes to float32 values.
_CONVERT_CHUNK = 1 << 20
#: Quantized values stay below MAX_CODE / this, so the residuals (sums of up to eight
#: of them) stay within MAX_CODE.
_RESIDUAL_TERMS = 8


@register_method
class Lorenzo(StepGridMethod):
    """Uniform quantization with ``step`` + 3-D Lorenzo prediction."""

    id = 3
    name = "lorenzo"
    summary = "`f32 step` + one stream of zigzagged 3-D Lorenzo residuals"
    section = "§2.2.7"

    def codes(self, arr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        x = np.asarray(arr, dtype=np.float64)
        q = np.round(x / self.step)
        if q.size and float(np.abs(q).max()) > MAX_CODE // _RESIDUAL_TERMS:
            raise ValueError(f"step {self.step:g} is too small for values of this range")
        q = q.astype(np.int64)
        return (lorenzo_residuals(q).reshape(-1),
                (q.astype(np.float64) * self.step).astype(np.float32))

    @classmethod
    def reconstruct(cls, codes: np.ndarray, shape: Tuple[int, ...], step: float) -> np.ndarray:
        # |residual| < 2^31 and n <= 2^28, so the cumulative sums stay far inside int64.
        q = lorenzo_reconstruct(codes.reshape(shape), overwrite=True).reshape(-1)
        return _scaled_f32(q, step)


def _scaled_f32(q: np.ndarray, step: float) -> np.ndarray:
    """``float32(float64(q) * step)``, a piece at a time (no full-size float64 copy)."""
    out = np.empty(q.size, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # rejected by the caller: non-finite
        for s in range(0, q.size, _CONVERT_CHUNK):
            out[s:s + _CONVERT_CHUNK] = q[s:s + _CONVERT_CHUNK].astype(np.float64) * step
    return out
