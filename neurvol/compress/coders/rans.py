"""Coder 2, rans: a static-model rANS stream, normative in ``spec/payload.md`` §2.3.

Written with ``constriction``'s ``AnsCoder`` and ``Categorical(perfect=False)``, which
implement it: ``u32 A`` (alphabet size), ``u32 table_length``, a zstandard frame of ``A``
``u32`` symbol counts (the stream's histogram: they sum to ``n``), then the coder's ``u32``
words. The reader's bounds (alphabet, table, words) are ``spec/resources.md``'s.
"""
from __future__ import annotations

import struct
from typing import Optional

import numpy as np

from ...errors import NeurvolFormatError, brief
from ..registry import StreamCoder, register_coder
from .zstd import zstd_compress, zstd_exact

MAX_ALPHABET = 1 << 20   # a rans table larger than this is refused (and never written)
MIN_ALPHABET = 2         # spec/payload.md §2.3.1: a one-symbol model cannot be quantized
#: Streams shorter than this are not rANS-coded: the table would not pay.
MIN_SYMBOLS = 256
_TABLE_HEAD = struct.Struct("<II")

def _constriction():
    try:
        import constriction
    except ImportError:
        return None
    return constriction


def rans_encode(sym: np.ndarray) -> Optional[bytes]:
    """The rANS stream of ``sym``, or None without ``constriction``, for an empty or short
    stream, or for a huge alphabet (float bit patterns)."""
    c = _constriction()
    if c is None or sym.size < MIN_SYMBOLS or int(sym.max()) >= MAX_ALPHABET:
        return None
    # constriction needs two or more entries; a zero count gets the least probability.
    counts = _histogram(sym, max(MIN_ALPHABET, int(sym.max()) + 1))
    model = c.stream.model.Categorical(counts / counts.sum(), perfect=False)
    enc = c.stream.stack.AnsCoder()
    enc.encode_reverse(sym.astype(np.int32), model)
    table = zstd_compress(counts.astype("<u4").tobytes())
    words = enc.get_compressed().astype("<u4").tobytes()
    return _TABLE_HEAD.pack(counts.size, len(table)) + table + words


#: Symbols counted per batch (bincount counts through an int64 copy of its input).
_COUNT_BATCH = 1 << 18


def _histogram(sym: np.ndarray, size: int) -> np.ndarray:
    """``np.bincount(sym, minlength=size)`` (``size`` > every symbol), a batch at a time."""
    counts = np.zeros(size, dtype=np.int64)
    flat = sym.reshape(-1)
    for a in range(0, flat.size, _COUNT_BATCH):
        counts += np.bincount(flat[a:a + _COUNT_BATCH].astype(np.int64), minlength=size)
    return counts


def rans_decode(data: bytes, n: int, width: int, what: str) -> np.ndarray:
    """``n`` symbols of ``width`` bytes from a rANS stream's data (every bound checked
    before the coder runs)."""
    c = _constriction()
    if c is None:
        raise NeurvolFormatError(
            f"{what} is coded with rANS, which needs the 'constriction' package: "
            "pip install constriction")
    if len(data) < _TABLE_HEAD.size:
        raise NeurvolFormatError(f"{what}: truncated rans stream")
    alphabet, table_len = _TABLE_HEAD.unpack_from(data)
    start = _TABLE_HEAD.size
    if not MIN_ALPHABET <= alphabet <= MAX_ALPHABET or n < 1 or start + table_len > len(data):
        raise NeurvolFormatError(
            f"{what}: invalid rans table (alphabet {alphabet}, {n} symbols); the file is damaged")
    if alphabet > 1 << (8 * width):
        raise NeurvolFormatError(
            f"{what}: rans alphabet of {alphabet} symbols does not fit the stream's "
            f"{width}-byte symbols")
    counts = np.frombuffer(zstd_exact(data[start:start + table_len], 4 * alphabet, what),
                           dtype="<u4")
    # The counts are the stream's histogram: they must add up to the symbols expected
    # (checked before decoding, so a damaged length cannot make the coder run on).
    n_words, odd = divmod(len(data) - start - table_len, 4)
    if int(counts.astype(np.int64).sum()) != n or odd:
        raise NeurvolFormatError(f"{what}: rans table does not describe {n} symbols")
    # No lower bound on the words: symbol 0 costs nothing while the state is 0 (a trailing
    # run of it adds no word), so a valid stream may be far shorter than its histogram's
    # information; the element budget bounds ``n`` instead (spec/resources.md §3).
    words = np.frombuffer(data[start + table_len:], dtype="<u4").astype(np.uint32)
    try:
        # constriction raises plain exceptions on damaged streams and on tables it cannot
        # model; both are a damaged file here.
        model = c.stream.model.Categorical(counts / counts.astype(np.float64).sum(),
                                           perfect=False)
        coder = c.stream.stack.AnsCoder(words)
        out = np.asarray(coder.decode(model, n)) if n else np.zeros(0, np.int32)
        empty = coder.is_empty()
    except Exception as exc:  # noqa: BLE001
        raise NeurvolFormatError(f"{what}: damaged rans stream: {brief(str(exc))}") from exc
    if not empty or not np.array_equal(np.bincount(out, minlength=alphabet)[:alphabet], counts):
        raise NeurvolFormatError(f"{what}: damaged rans stream (symbols do not match the table)")
    return out.astype(np.dtype(f"<u{width}"))


@register_coder
class RansCoder(StreamCoder):
    """A static-model rANS stream: the histogram, then the coder's words."""

    id = 2
    name = "rans"
    summary = "static-model rANS: the symbols' histogram, then 32-bit words"
    section = "§2.3"
    slow_decode = True

    def encode(self, symbols: np.ndarray, plain: bytes) -> Optional[bytes]:
        return rans_encode(symbols)

    @classmethod
    def decode(cls, data: bytes, n: int, dtype: np.dtype, what: str) -> np.ndarray:
        # Looked up at call time, so a test can watch the streams decoded.
        return rans_decode(data, n, dtype.itemsize, what)
