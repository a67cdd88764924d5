"""Coder 1, zstd: one zstandard frame of the plain form, its content size declared
(``spec/payload.md`` §2.2.3; the size check is ``spec/resources.md`` §3)."""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
import zstandard

from ...errors import NeurvolFormatError
from ..registry import StreamCoder, register_coder

#: Compression level of every zstd frame the encoder writes (readers do not need it).
ZSTD_LEVEL = 19
# Decompress in pieces of this size: ``stream_reader.read(n)`` allocates ``n`` bytes up
# front, and the pieces are joined once (``bytes +=`` would copy the output each time).
_READ_CHUNK = 1 << 20


def zstd_compress(data: bytes) -> bytes:
    """One frame of ``data`` at :data:`ZSTD_LEVEL`, with its content size, no checksum."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False).compress(data)


def zstd_exact(frame: bytes, expected: int, what: str) -> bytes:
    """Decompress a frame that must hold exactly ``expected`` bytes.

    The frame header must declare its content size, and it must equal ``expected``
    (checked before anything is decompressed); decompression then stops one byte past
    it, so a frame that lies about its size (a "zstd bomb") costs at most
    ``expected + 1`` bytes.
    """
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise NeurvolFormatError(f"{what}: not a valid zstd frame: {exc}") from exc
    if declared != expected:
        shown = "no content size" if declared == zstandard.CONTENTSIZE_UNKNOWN else \
            f"a content size of {declared} bytes"
        raise NeurvolFormatError(
            f"{what}: zstd frame declares {shown}, expected {expected} (spec/payload.md §2.2.3)")
    out = decompress_at_most(frame, expected, f"{what}: not a valid zstd frame")
    if len(out) != expected:
        raise NeurvolFormatError(
            f"{what}: zstd stream holds {len(out)} bytes, expected {expected}")
    return out


def decompress_at_most(frame: bytes, cap: int, invalid: str) -> bytes:
    """The content of ``frame`` (and of frames after it), stopping one byte past ``cap``:
    a frame that lies about its size (a "zstd bomb") costs at most ``cap + 1`` bytes.
    A damaged frame raises :class:`NeurvolFormatError` with the message ``invalid``."""
    parts = []
    total = 0
    try:
        # read_across_frames: bytes after the frame must decode too (junk is an error,
        # another frame's content ends up as bytes beyond the cap, which callers refuse).
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame),
                                                        read_across_frames=True) as r:
            while total <= cap:
                chunk = r.read(min(_READ_CHUNK, cap + 1 - total))
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
    except zstandard.ZstdError as exc:
        raise NeurvolFormatError(f"{invalid}: {exc}") from exc
    return b"".join(parts)


@register_coder
class ZstdCoder(StreamCoder):
    """One zstandard frame whose content is exactly the plain form."""

    id = 1
    name = "zstd"
    summary = "one zstandard frame of the plain form (content size declared)"
    section = "§2.2.3"
    params = ("level",)

    def __init__(self, level: int = ZSTD_LEVEL):
        if isinstance(level, bool) or not isinstance(level, int):
            raise ValueError(f"zstd level must be an int, got {level!r}")
        self.level = level

    def encode(self, symbols: np.ndarray, plain: bytes) -> Optional[bytes]:
        return zstandard.ZstdCompressor(level=self.level, write_checksum=False).compress(plain)

    @classmethod
    def decode(cls, data: bytes, n: int, dtype: np.dtype, what: str) -> np.ndarray:
        return np.frombuffer(zstd_exact(data, n * dtype.itemsize, what), dtype=dtype)
