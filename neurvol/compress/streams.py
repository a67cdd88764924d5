"""Entropy coding of one stream of unsigned integer symbols, coder chosen per stream.

A stream is ``n`` symbols, each stored in ``width`` bytes (1, 2 or 4) little-endian; the
reader knows ``n`` from the tensor's shape. Layout: ``u8 coder, u8 width, u32 length``,
then ``length`` coded bytes:

* ``0`` raw: the ``n * width`` bytes as they are;
* ``1`` zstd: one zstandard frame of those bytes;
* ``2`` rans: a static-model rANS stream, normative in ``spec/payload.md`` §2.3 (written
  with ``constriction``'s ``AnsCoder`` and ``Categorical(perfect=False)``, which implement
  it): ``u32 A`` (alphabet size), ``u32 table_length``, a zstandard frame of ``A`` ``u32``
  symbol counts (the stream's histogram: they sum to ``n``), then the coder's ``u32`` words.

The encoder tries every coder it has and keeps the smallest (``spec/payload.md`` §2.2).
"""
from __future__ import annotations

import io
import math
import struct
from typing import Callable, Optional, Tuple

import numpy as np
import zstandard

from ..errors import NeurvolFormatError, brief

CODER_RAW = 0
CODER_ZSTD = 1
CODER_RANS = 2
CODER_NAMES = {CODER_RAW: "raw", CODER_ZSTD: "zstd", CODER_RANS: "rans"}

ZSTD_LEVEL = 19
MAX_ALPHABET = 1 << 20   # a rans table larger than this is refused (and never written)
MIN_ALPHABET = 2         # spec/payload.md §2.3.1: a one-symbol model cannot be quantized
_HEAD = struct.Struct("<BBI")
_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}


def width_for(max_symbol: int) -> int:
    """Bytes per symbol needed for symbols up to ``max_symbol``."""
    return 1 if max_symbol < 1 << 8 else 2 if max_symbol < 1 << 16 else 4


def _constriction():
    try:
        import constriction
    except ImportError:
        return None
    return constriction


def encode_stream(symbols: np.ndarray, coders: Optional[Tuple[int, ...]] = None) -> bytes:
    """Code ``symbols`` (non-negative ints < 2^32) with the smallest of ``coders``
    (default: raw, zstd, and rans when ``constriction`` is installed)."""
    sym = np.asarray(symbols).reshape(-1)
    if sym.size and (int(sym.min()) < 0 or int(sym.max()) >= 1 << 32):
        raise ValueError("stream symbols must be in [0, 2^32)")
    width = width_for(int(sym.max()) if sym.size else 0)
    raw = sym.astype(_DTYPES[width]).tobytes()
    if coders is None:
        coders = (CODER_RAW, CODER_ZSTD, CODER_RANS)
    best: Optional[Tuple[int, bytes]] = None
    for coder in coders:
        coded = _code(coder, sym, raw)
        if coded is not None and (best is None or len(coded) < len(best[1])):
            best = (coder, coded)
    assert best is not None, "no coder available"
    return _HEAD.pack(best[0], width, len(best[1])) + best[1]


def _code(coder: int, sym: np.ndarray, raw: bytes) -> Optional[bytes]:
    if coder == CODER_RAW:
        return raw
    if coder == CODER_ZSTD:
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False).compress(raw)
    if coder == CODER_RANS:
        c = _constriction()
        # Skip empty streams, huge alphabets (float bit patterns) and streams too short
        # for a table to pay.
        if c is None or sym.size < 256 or int(sym.max()) >= MAX_ALPHABET:
            return None
        # constriction needs two or more entries; a zero count gets the least probability.
        counts = np.bincount(sym.astype(np.int64), minlength=2)
        model = c.stream.model.Categorical(counts / counts.sum(), perfect=False)
        enc = c.stream.stack.AnsCoder()
        enc.encode_reverse(sym.astype(np.int32), model)
        table = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False).compress(
            counts.astype("<u4").tobytes())
        words = enc.get_compressed().astype("<u4").tobytes()
        return struct.pack("<II", counts.size, len(table)) + table + words
    raise ValueError(f"unknown coder {coder}")


def stream_length(take: Callable[[int, str], bytes], what: str) -> Tuple[int, int, int]:
    """Read a stream head: ``(coder, width, length)`` (validated)."""
    coder, width, length = _HEAD.unpack(take(_HEAD.size, what))
    if coder not in CODER_NAMES or width not in _DTYPES:
        raise NeurvolFormatError(f"{what}: unknown stream coder {coder} or width {width}")
    return coder, width, length


def decode_stream(take: Callable[[int, str], bytes], n: int, what: str,
                  max_symbol: Optional[int] = None) -> Tuple[np.ndarray, str]:
    """Read one stream of ``n`` symbols via ``take(nbytes, what)``; returns ``(symbols,
    coder name)``, the symbols as unsigned integers of the stream's width (1, 2 or 4
    bytes: no wider temporary than the plain form). Symbols above ``max_symbol`` are
    refused. ``n`` must already be within the resource model (spec/resources.md); every
    coder's output is checked against it before it is allocated."""
    coder, width, length = stream_length(take, what)
    data = take(length, what)
    dtype = _DTYPES[width]
    expected = n * width
    if coder == CODER_RAW:
        if length != expected:
            raise NeurvolFormatError(f"{what}: raw stream has {length} bytes, expected {expected}")
        out = np.frombuffer(data, dtype=dtype)
    elif coder == CODER_ZSTD:
        out = np.frombuffer(zstd_exact(data, expected, what), dtype=dtype)
    else:
        out = _rans_decode(data, n, width, what)
    if max_symbol is not None and out.size and int(out.max()) > max_symbol:
        raise NeurvolFormatError(f"{what}: symbol {int(out.max())} out of range (max {max_symbol})")
    return out, CODER_NAMES[coder]


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
            f"{what}: zstd frame declares {shown}, expected {expected} (spec/payload.md §2.2)")
    parts = []
    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame),
                                                        read_across_frames=True) as r:
            while total <= expected:
                chunk = r.read(min(_READ_CHUNK, expected + 1 - total))
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
    except zstandard.ZstdError as exc:
        raise NeurvolFormatError(f"{what}: not a valid zstd frame: {exc}") from exc
    if total != expected:
        raise NeurvolFormatError(f"{what}: zstd stream holds {total} bytes, expected {expected}")
    return b"".join(parts)


# Decompress in pieces of this size: ``stream_reader.read(n)`` allocates ``n`` bytes up
# front, and the pieces are joined once (``bytes +=`` would copy the output each time).
_READ_CHUNK = 1 << 20

#: Slack on a quantized probability above count / total. constriction's leaky
#: quantization moves each probability by at most a few units of 2^-24; this is 16 times
#: more, so the bound below can only err towards accepting.
_RANS_PROB_SLACK = 2.0 ** -20
#: Bits the coder's state may hold beyond its words (64-bit state; one word of margin).
_RANS_STATE_BITS = 96


def _rans_min_words(counts: np.ndarray) -> int:
    """Fewest 32-bit words that can encode a stream with histogram ``counts``.

    Each symbol ``i`` costs at least ``-log2(q_i)`` bits, where ``q_i`` is its quantized
    probability: at most ``min(1, c_i / total + slack)``. A table whose
    symbols need more information than the words carry is refused before decoding, so a
    stream cannot decode to more symbols than its length can produce.
    """
    c = counts.astype(np.float64)
    total = float(c.sum())
    if total == 0:
        return 0
    q = np.minimum(1.0, c / total + _RANS_PROB_SLACK)
    used = c > 0
    bits = float(np.dot(c[used], -np.log2(q[used])))
    return max(0, math.ceil((bits - _RANS_STATE_BITS) / 32))


def _rans_decode(data: bytes, n: int, width: int, what: str) -> np.ndarray:
    c = _constriction()
    if c is None:
        raise NeurvolFormatError(
            f"{what} is coded with rANS, which needs the 'constriction' package: "
            "pip install constriction")
    if len(data) < 8:
        raise NeurvolFormatError(f"{what}: truncated rans stream")
    alphabet, table_len = struct.unpack_from("<II", data)
    if not MIN_ALPHABET <= alphabet <= MAX_ALPHABET or n < 1 or 8 + table_len > len(data):
        raise NeurvolFormatError(
            f"{what}: invalid rans table (alphabet {alphabet}, {n} symbols); the file is damaged")
    if alphabet > 1 << (8 * width):
        raise NeurvolFormatError(
            f"{what}: rans alphabet of {alphabet} symbols does not fit the stream's "
            f"{width}-byte symbols")
    counts = np.frombuffer(zstd_exact(data[8:8 + table_len], 4 * alphabet, what), dtype="<u4")
    # The counts are the stream's histogram: they must add up to the symbols expected
    # (checked before decoding, so a damaged length cannot make the coder run on).
    n_words, odd = divmod(len(data) - 8 - table_len, 4)
    if int(counts.astype(np.int64).sum()) != n or odd:
        raise NeurvolFormatError(f"{what}: rans table does not describe {n} symbols")
    if n_words < _rans_min_words(counts):
        raise NeurvolFormatError(
            f"{what}: rans stream of {n_words} words is too short for the {n} symbols its "
            "table declares; the file is corrupted")
    words = np.frombuffer(data[8 + table_len:], dtype="<u4").astype(np.uint32)
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
    return out.astype(_DTYPES[width])
