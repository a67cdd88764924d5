"""Method 2, kmeans: scalar k-means to ``k`` levels (``spec/payload.md`` §2.2.6): ``u8
book_kind``, ``u32 k``, the codebook, one stream of indices ``< k``."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..codebook import book_bytes, check_k, read_book, stored_book
from ..kmeans import kmeans_quantize, nearest_centroid
from ..registry import DecodeStream, EncodeStream, RecordMethod, Take, register_method


@register_method
class Kmeans(RecordMethod):
    """Each value -> the nearest of ``k`` codebook values. As a grid coding: the grids are
    coded as the other tensors are (no grid method)."""

    id = 2
    name = "kmeans"
    summary = "scalar codebook of `k` values + one stream of indices"
    section = "§2.2.6"
    params = ("k",)
    maskable = True
    grid_coding = True

    def __init__(self, k: int = 2):
        check_k(k)
        self.k = int(k)

    def encode(self, values: np.ndarray, encode_stream: EncodeStream) -> Tuple[int, bytes]:
        flat = values.reshape(-1)
        codebook = kmeans_quantize(flat, self.k)[0] if flat.size else np.zeros(1, np.float32)
        kind, book = stored_book(codebook)
        idx = nearest_centroid(flat, book.astype(np.float32))   # against the stored codebook
        return self.id, book_bytes(kind, book, book.size) + encode_stream(idx)

    @classmethod
    def decode(cls, take: Take, shape: Tuple[int, ...], m: int, name: str,
               decode_stream: DecodeStream) -> Tuple[np.ndarray, str, int]:
        book, k, nbytes = read_book(take, name, "k-means")
        idx, coder = decode_stream(take, m, name, max_symbol=k - 1)
        return book.reshape(-1)[idx].astype(np.float32), coder, nbytes  # idx < k: checked
