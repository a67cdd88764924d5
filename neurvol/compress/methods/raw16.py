"""Method 1, raw16: one stream of the IEEE binary16 bit patterns (``spec/payload.md``
§2.2). Values binary16 cannot hold are written as raw32 instead."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..codebook import fits_f16
from ..registry import (DecodeStream, EncodeStream, RecordMethod, Take, get_method,
                        register_method)

#: Largest symbol of a stream of 16-bit patterns.
_MAX_U16 = (1 << 16) - 1


@register_method
class Raw16(RecordMethod):
    """Every value rounded to binary16 (float32 when one would overflow)."""

    id = 1
    name = "raw16"
    summary = "IEEE binary16 bit patterns"
    section = "§2.2"
    maskable = True

    def encode(self, values: np.ndarray, encode_stream: EncodeStream) -> Tuple[int, bytes]:
        flat = values.reshape(-1)
        if not fits_f16(flat):
            return get_method("raw32")().encode(flat, encode_stream)
        return self.id, encode_stream(flat.astype("<f2").view("<u2"))

    @classmethod
    def decode(cls, take: Take, shape: Tuple[int, ...], m: int, name: str,
               decode_stream: DecodeStream) -> Tuple[np.ndarray, str, int]:
        bits, coder = decode_stream(take, m, name, max_symbol=_MAX_U16)
        return bits.astype("<u2").view("<f2").astype(np.float32), coder, 0
