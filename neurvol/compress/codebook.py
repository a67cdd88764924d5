"""Codebooks shared by the kmeans and vq record methods: a book kind byte, ``k`` and the
values as binary16 or float32 (``spec/payload.md`` §2.2.6, §2.2.9)."""
from __future__ import annotations

import struct
from typing import Tuple

import numpy as np

from ..errors import NeurvolFormatError

#: Largest codebook a record may hold (``k`` is 1..MAX_CENTROIDS).
MAX_CENTROIDS = 65536
BOOK_F16, BOOK_F32 = 0, 1
#: Values below this magnitude survive a binary16 round trip (largest finite: 65504) with
#: room for the rounding; larger ones are stored as float32.
F16_LIMIT = 65000.0
_BOOK_HEAD = struct.Struct("<BI")
#: Bytes per binary16 value.
F16_BYTES = 2


def fits_f16(a: np.ndarray) -> bool:
    """Whether every value of ``a`` can be stored as IEEE binary16 without overflow."""
    return bool(np.all(np.abs(a) < F16_LIMIT))


def check_k(k: int) -> None:
    """Refuse (ValueError) a codebook size outside 1..MAX_CENTROIDS."""
    if not 1 <= k <= MAX_CENTROIDS:
        raise ValueError(f"k must be in [1, {MAX_CENTROIDS}]")


def stored_book(codebook: np.ndarray) -> Tuple[int, np.ndarray]:
    """(book kind, the codebook as stored): binary16 where every value fits, else float32."""
    kind = BOOK_F16 if fits_f16(codebook) else BOOK_F32
    return kind, codebook.astype("<f2" if kind == BOOK_F16 else "<f4")


def book_bytes(kind: int, book: np.ndarray, k: int) -> bytes:
    """Book kind, ``k`` and the stored values."""
    return _BOOK_HEAD.pack(kind, k) + book.tobytes()


def read_book(take, name: str, what: str, vector: int = 1) -> Tuple[np.ndarray, int, int]:
    """Read a codebook of ``vector`` values per entry: ``(book (k, vector), k, bytes)``;
    an invalid kind or ``k`` is a format error naming ``what`` (the method)."""
    kind, k = _BOOK_HEAD.unpack(take(_BOOK_HEAD.size, name))
    if kind not in (BOOK_F16, BOOK_F32) or not 1 <= k <= MAX_CENTROIDS:
        raise NeurvolFormatError(f"tensor {name!r}: invalid {what} header (kind {kind}, k {k})")
    width = 2 if kind == BOOK_F16 else 4
    book = np.frombuffer(take(width * k * vector, name), dtype="<f2" if width == 2 else "<f4")
    return book.reshape(k, vector), k, _BOOK_HEAD.size + width * k * vector
