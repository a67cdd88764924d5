"""Entropy coding of one stream of unsigned integer symbols, coder chosen per stream.

A stream is ``n`` symbols, each stored in ``width`` bytes (1, 2 or 4) little-endian; the
reader knows ``n`` from the tensor's shape. Layout: ``u8 coder, u8 width, u32 length``,
then ``length`` coded bytes, coded by the registered coder of that id
(:mod:`.registry`; the coders are :mod:`.coders.raw`, :mod:`.coders.zstd`,
:mod:`.coders.rans`). The encoder tries every coder it is given and keeps the smallest
(``spec/payload.md`` §2.2).
"""
from __future__ import annotations

import math
import struct
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import NeurvolFormatError
from .coders.rans import MAX_ALPHABET, MIN_ALPHABET  # noqa: F401  (the reader's bounds)
from .registry import StreamCoder, coders, get_coder, read_coder

CODER_RAW = get_coder("raw").id
CODER_ZSTD = get_coder("zstd").id
CODER_RANS = get_coder("rans").id

_HEAD = struct.Struct("<BBI")
_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4")}

#: A coder to try: its id or name, or a configured instance.
CoderChoice = Union[int, str, StreamCoder]


def width_for(max_symbol: int) -> int:
    """Bytes per symbol needed for symbols up to ``max_symbol``."""
    return 1 if max_symbol < 1 << 8 else 2 if max_symbol < 1 << 16 else 4


def coder_instances(choices: Optional[Sequence[CoderChoice]]) -> Tuple[StreamCoder, ...]:
    """Configured coders for ``choices`` (default: every registered coder)."""
    if choices is None:
        return tuple(cls() for cls in coders())
    return tuple(c if isinstance(c, StreamCoder) else get_coder(c)() for c in choices)


def encode_stream(symbols: np.ndarray, coders: Optional[Sequence[CoderChoice]] = None, *,
                  slack: float = 0.0) -> bytes:
    """Code ``symbols`` (non-negative ints < 2^32) with the smallest of ``coders`` (ids,
    names or instances; default: every registered coder, rANS where ``constriction`` is
    installed). Ties go to the first listed. ``slack``: when the smallest decodes slowly
    (``StreamCoder.slow_decode``: rANS), the smallest of the fast coders is taken instead
    if it is at most this fraction larger (0: always the smallest; spec/payload.md §2.2.1)."""
    if not (isinstance(slack, (int, float)) and math.isfinite(slack) and slack >= 0):
        raise ValueError(f"slack must be a finite fraction >= 0, got {slack!r}")
    sym = np.asarray(symbols).reshape(-1)
    if sym.size and (int(sym.min()) < 0 or int(sym.max()) >= 1 << 32):
        raise ValueError("stream symbols must be in [0, 2^32)")
    width = width_for(int(sym.max()) if sym.size else 0)
    raw = sym.astype(_DTYPES[width]).tobytes()
    best: Optional[Tuple[StreamCoder, bytes]] = None
    fast: Optional[Tuple[StreamCoder, bytes]] = None
    for coder in coder_instances(coders):
        coded = coder.encode(sym, raw)
        if coded is None:
            continue
        if best is None or len(coded) < len(best[1]):
            best = (coder, coded)
        if not coder.slow_decode and (fast is None or len(coded) < len(fast[1])):
            fast = (coder, coded)
    assert best is not None, "no coder available"
    if fast is not None and best[0].slow_decode and len(fast[1]) <= len(best[1]) * (1 + slack):
        best = fast
    return _HEAD.pack(best[0].id, width, len(best[1])) + best[1]


def stream_length(take: Callable[[int, str], bytes], what: str) -> Tuple[int, int, int]:
    """Read a stream head: ``(coder, width, length)`` (validated)."""
    coder, width, length = _HEAD.unpack(take(_HEAD.size, what))
    if coder not in _known_coders() or width not in _DTYPES:
        raise NeurvolFormatError(f"{what}: unknown stream coder {coder} or width {width} "
                                 "(a newer neurvol may read it, else the file is damaged)")
    return coder, width, length


def _known_coders() -> Tuple[int, ...]:
    return tuple(c.id for c in coders())


def decode_stream(take: Callable[[int, str], bytes], n: int, what: str,
                  max_symbol: Optional[int] = None) -> Tuple[np.ndarray, str]:
    """Read one stream of ``n`` symbols via ``take(nbytes, what)``; returns ``(symbols,
    coder name)``, the symbols as unsigned integers of the stream's width (1, 2 or 4
    bytes: no wider temporary than the plain form). Symbols above ``max_symbol`` are
    refused. ``n`` must already be within the resource model (spec/resources.md); every
    coder's output is checked against it before it is allocated."""
    coder_id, width, length = stream_length(take, what)
    data = take(length, what)
    coder = read_coder(coder_id, what)
    out = coder.decode(data, n, _DTYPES[width], what)
    # A width whose largest symbol is within max_symbol needs no scan of the symbols.
    if (max_symbol is not None and out.size and (1 << 8 * out.dtype.itemsize) - 1 > max_symbol
            and int(out.max()) > max_symbol):
        raise NeurvolFormatError(f"{what}: symbol {int(out.max())} out of range (max {max_symbol})")
    return out, coder.name
