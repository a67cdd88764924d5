"""Coder 0, raw: the stream's plain form as it is (``spec/payload.md`` §2.2.2)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ...errors import NeurvolFormatError
from ..registry import StreamCoder, register_coder


@register_coder
class RawCoder(StreamCoder):
    """The plain form, ``n * width`` bytes."""

    id = 0
    name = "raw"
    summary = "the plain form as it is"
    section = "§2.2.2"

    def encode(self, symbols: np.ndarray, plain: bytes) -> Optional[bytes]:
        return plain

    @classmethod
    def decode(cls, data: bytes, n: int, dtype: np.dtype, what: str) -> np.ndarray:
        expected = n * dtype.itemsize
        if len(data) != expected:
            raise NeurvolFormatError(
                f"{what}: raw stream has {len(data)} bytes, expected {expected}")
        return np.frombuffer(data, dtype=dtype)
