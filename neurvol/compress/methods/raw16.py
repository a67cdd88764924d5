"""Method 1, raw16: one stream of the IEEE binary16 bit patterns (``spec/payload.md``
§2.2.5). Values binary16 cannot hold are written as raw32 instead."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..codebook import fits_f16
from ..registry import EncodeStream, get_method, register_method
from .rawbits import RawBitsMethod


@register_method
class Raw16(RawBitsMethod):
    """Every value rounded to binary16 (float32 when one would overflow)."""

    id = 1
    name = "raw16"
    summary = "IEEE binary16 bit patterns"
    section = "§2.2.5"
    float_dtype = "<f2"

    def encode(self, values: np.ndarray, encode_stream: EncodeStream) -> Tuple[int, bytes]:
        if not fits_f16(values.reshape(-1)):
            return get_method("raw32")().encode(values, encode_stream)
        return super().encode(values, encode_stream)
