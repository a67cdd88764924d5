"""Entropy coding of the correction stream (``spec/correction.md`` §2.2, §2.3): varints,
the tables' weight codes and the static rANS models built from them, and the order-0 cost
estimate that picks a block's mode."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
import zstandard

from ...errors import NeurvolFormatError
from ..coders.zstd import ZSTD_LEVEL
from ..interp import MAX_CODE

#: Tables store each symbol's count as one byte ``w``: 0 for an absent symbol, else
#: ``1 + round(2 log2(count))`` (half-bit steps, capped), read back as the integer weight
#: ``round(sqrt(2) ** (w - 1))``; the coding loss of the rounding is far below the bytes a
#: table of exact counts would take.
MAX_WEIGHT_CODE = 74     # weights below 2^37: a table's sum stays exact in binary64


def entropy_bits(codes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Order-0 entropy (bits) of each row of ``codes`` within each class (rows: blocks):
    the cost estimate that picks a block's mode."""
    out = np.zeros(codes.shape[0])
    for r in range(codes.shape[0]):
        key = classes[r] * (2 * MAX_CODE + 3) + codes[r] + MAX_CODE + 1
        _, cnt = np.unique(key, return_counts=True)
        _, tot = np.unique(classes[r], return_counts=True)
        out[r] = float(-(cnt * np.log2(cnt)).sum() + (tot * np.log2(tot)).sum())
    return out


def varints(values: Sequence[int]) -> bytes:
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def read_varints(data: bytes, pos: int, n: int, what: str) -> Tuple[List[int], int]:
    out = []
    for _ in range(n):
        v, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 63:
                raise NeurvolFormatError(f"{what}: truncated or overlong varint; the file is damaged")
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append(v)
    return out, pos


def constriction():
    try:
        import constriction
    except ImportError as exc:   # pragma: no cover - a declared dependency
        raise NeurvolFormatError(
            "the correction stream is rANS coded, which needs the 'constriction' package: "
            "pip install constriction") from exc
    return constriction


def weight_codes(counts: np.ndarray) -> np.ndarray:
    """The stored byte per symbol of a table from its exact counts."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.zeros(counts.size, dtype=np.uint8)
    nz = counts > 0
    w[nz] = np.minimum(MAX_WEIGHT_CODE, 1 + np.rint(2.0 * np.log2(counts[nz]))).astype(np.uint8)
    return w


def _weight(code: int) -> int:
    """``round(sqrt(2) ** (code - 1))`` in exact integers (0 for code 0)."""
    if code == 0:
        return 0
    p2 = 1 << (code - 1)                 # weight ~ sqrt(p2)
    r = math.isqrt(p2)
    return r + 1 if (2 * r + 1) ** 2 <= 4 * p2 else r


_WEIGHTS = np.array([_weight(c) for c in range(MAX_WEIGHT_CODE + 1)], dtype=np.int64)


def rans_model(codes: np.ndarray):
    """The rANS model of a table of weight codes (integer weights, so every reader builds
    the same probabilities)."""
    c = constriction()
    w = _WEIGHTS[np.asarray(codes, dtype=np.int64)]
    return c.stream.model.Categorical(w / float(w.sum()), perfect=False)


def zstd_compress(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False).compress(data)
