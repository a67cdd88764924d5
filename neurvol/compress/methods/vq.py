"""Method 5, vq: each vertex's channel vector -> one of ``k`` codebook vectors
(:mod:`..vq`, VQRF-style); ``spec/payload.md`` §2.2.9. The tensor is ``(..., C, D, H, W)``:
``u8 book_kind``, ``u32 k``, the ``k x C`` codebook (row-major), one stream of ``n / C``
indices ``< k``, one per vertex. Never masked."""
from __future__ import annotations

import hashlib
import math
from typing import Dict, Sequence, Tuple

import numpy as np

from ...errors import NeurvolFormatError
from ..codebook import F16_BYTES, MAX_CENTROIDS, book_bytes, check_k, read_book, stored_book
from ..registry import DecodeStream, EncodeStream, GridMethod, Take, register_method
from ..vq import from_vectors, grid_vectors, nearest_vector, vector_kmeans

#: Axes a vq tensor needs: channels, then three grid axes.
VQ_AXES = 4
BITS_PER_BYTE = 8
#: Fewest codebook vectors the step search tries (``k = round(1 / step)``).
_MIN_K = 2
_COARSEST_STEP = 1.0 / _MIN_K
#: Codebooks memoised (the encoder's search asks for the same record repeatedly).
_MEMO_ENTRIES = 16
_MEMO: Dict[tuple, Tuple[int, np.ndarray, np.ndarray]] = {}


@register_method
class Vq(GridMethod):
    """Vector quantization of each vertex's channel vector to ``k`` codebook vectors. The
    step search's ``step`` stands for ``1 / k`` (a smaller step, a larger codebook: finer
    and more bytes either way)."""

    id = 5
    name = "vq"
    summary = "codebook of `k` channel vectors + one stream of per-vertex indices"
    section = "§2.2.9"
    params = ("k",)
    min_axes = VQ_AXES
    # Codebook sizes 10 % apart are as good as equal, and each probe runs k-means.
    step_tolerance = 1.1
    # log2(K) / channels: a codebook of 256 for fvsrn's 4 channels.
    default_grid_bits = 2.0

    def __init__(self, k: int = 2):
        check_k(k)
        self.k = int(k)

    @classmethod
    def at_step(cls, step: float) -> "Vq":
        return cls(k=int(min(MAX_CENTROIDS, max(_MIN_K, round(1.0 / step)))))

    @classmethod
    def coarsest_step(cls, arrays: Sequence[np.ndarray]) -> float:
        """Two vectors (the fewest the search tries)."""
        return _COARSEST_STEP

    def stored_values(self, arr: np.ndarray) -> np.ndarray:
        _, book, idx = _vq_parts(arr, self.k)
        return from_vectors(book[idx].astype(np.float32), tuple(np.shape(arr)))

    def estimate_bytes(self, arr: np.ndarray) -> float:
        """Indices of ``log2(k)`` bits + a binary16 codebook."""
        shape = np.shape(arr)
        return (math.prod(shape) / shape[-4] * math.log2(self.k) / BITS_PER_BYTE
                + F16_BYTES * self.k * shape[-4])

    def encode(self, values: np.ndarray, encode_stream: EncodeStream) -> Tuple[int, bytes]:
        self.check_shape(values.shape)
        kind, book, idx = _vq_parts(values, self.k)
        return self.id, book_bytes(kind, book, book.shape[0]) + encode_stream(idx)

    @classmethod
    def decode(cls, take: Take, shape: Tuple[int, ...], m: int, name: str,
               decode_stream: DecodeStream) -> Tuple[np.ndarray, str, int]:
        if len(shape) < VQ_AXES or shape[-4] < 1:
            raise NeurvolFormatError(f"tensor {name!r}: vq needs >= 4 axes, shape {tuple(shape)}")
        c = int(shape[-4])
        book, k, nbytes = read_book(take, name, "vq", vector=c)
        idx, coder = decode_stream(take, m // c, name, max_symbol=k - 1)
        return from_vectors(book[idx].astype(np.float32), tuple(shape)).reshape(-1), coder, nbytes


def _vq_parts(arr: np.ndarray, k: int) -> Tuple[int, np.ndarray, np.ndarray]:
    """(book kind, stored codebook, indices) of a vq record of ``arr`` with ``k`` vectors,
    memoised (a few entries)."""
    a = np.ascontiguousarray(arr, dtype=np.float32)
    key = (hashlib.sha1(a.tobytes()).hexdigest(), a.shape, int(k))
    if key not in _MEMO:
        if len(_MEMO) >= _MEMO_ENTRIES:
            _MEMO.pop(next(iter(_MEMO)))
        vectors = grid_vectors(a)
        kind, book = stored_book(vector_kmeans(vectors, k)[0])
        _MEMO[key] = kind, book, nearest_vector(vectors, book.astype(np.float32))  # stored book
    return _MEMO[key]
