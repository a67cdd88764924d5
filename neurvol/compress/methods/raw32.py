"""Method 0, raw32: one stream of the float32 bit patterns (lossless; ``spec/payload.md``
§2.2)."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..registry import DecodeStream, EncodeStream, RecordMethod, Take, register_method

#: Largest symbol of a stream of 32-bit patterns.
_MAX_U32 = (1 << 32) - 1


@register_method
class Raw32(RecordMethod):
    """Every value as its float32 bit pattern."""

    id = 0
    name = "raw32"
    summary = "float32 bit patterns (lossless)"
    section = "§2.2"
    maskable = True

    def encode(self, values: np.ndarray, encode_stream: EncodeStream) -> Tuple[int, bytes]:
        return self.id, encode_stream(values.reshape(-1).astype("<f4").view("<u4"))

    @classmethod
    def decode(cls, take: Take, shape: Tuple[int, ...], m: int, name: str,
               decode_stream: DecodeStream) -> Tuple[np.ndarray, str, int]:
        bits, coder = decode_stream(take, m, name, max_symbol=_MAX_U32)
        return bits.astype("<u4").view("<f4").astype(np.float32), coder, 0
