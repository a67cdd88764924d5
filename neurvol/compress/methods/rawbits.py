"""What the raw methods (raw32, raw16) share: one stream of the IEEE bit patterns of the
values at one float width (``spec/payload.md`` §2.2.4, §2.2.5). Not a method itself (it
registers nothing)."""
from __future__ import annotations

import functools
from typing import ClassVar, Tuple

import numpy as np

from ..registry import DecodeStream, EncodeStream, RecordMethod, Take


class RawBitsMethod(RecordMethod):
    """Every value as its bit pattern at the float width of ``float_dtype``."""

    maskable = True
    #: The little-endian IEEE float type stored (``"<f4"``, ``"<f2"``).
    float_dtype: ClassVar[str]

    @classmethod
    def bits_dtype(cls) -> np.dtype:
        """The unsigned integer type of the same width: the stream's symbols."""
        return _bits_dtype(cls.float_dtype)

    def encode(self, values: np.ndarray, encode_stream: EncodeStream) -> Tuple[int, bytes]:
        flat = values.reshape(-1).astype(self.float_dtype)
        return self.id, encode_stream(flat.view(self.bits_dtype()))

    @classmethod
    def decode(cls, take: Take, shape: Tuple[int, ...], m: int, name: str,
               decode_stream: DecodeStream) -> Tuple[np.ndarray, str, int]:
        bits_dtype = cls.bits_dtype()
        bits, coder = decode_stream(take, m, name, max_symbol=(1 << 8 * bits_dtype.itemsize) - 1)
        return (bits.astype(bits_dtype, copy=False).view(cls.float_dtype).astype(np.float32),
                coder, 0)


@functools.lru_cache(maxsize=None)
def _bits_dtype(float_dtype: str) -> np.dtype:
    """The unsigned integer type as wide as ``float_dtype`` (looked up once per width:
    every small tensor's record asks)."""
    return np.dtype(f"<u{np.dtype(float_dtype).itemsize}")
