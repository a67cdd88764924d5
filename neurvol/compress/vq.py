"""Vector quantization of feature grids (VQRF-style): each grid vertex's feature vector
(the ``C`` values along the channel axis of ``(..., C, D, H, W)``) is replaced by the
nearest of ``K`` codebook vectors, so a vertex costs one index instead of ``C`` values.

The codebook comes from k-means on the vectors (k-means++ start, Lloyd iterations), in
numpy: deterministic for a seed, whatever the thread count, and no torch here. (This is
what scikit-learn's ``KMeans`` does, but its parallel reductions make the codebook, and so
the file's bytes, depend on the number of OpenMP threads.)
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

_ITERS = 25
_CHUNK = 8192          # rows per distance block (rows x K floats in memory)


def grid_vectors(arr: np.ndarray) -> np.ndarray:
    """``(n / C, C)`` vectors of a ``(..., C, D, H, W)`` tensor, in C order of the tensor's
    positions without the channel axis."""
    a = np.asarray(arr)
    if a.ndim < 4:
        raise ValueError("vector quantization needs a tensor with >= 4 axes (..., C, D, H, W)")
    return np.moveaxis(a, -4, -1).reshape(-1, a.shape[-4])


def from_vectors(vectors: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`grid_vectors`."""
    c = shape[-4]
    moved = tuple(shape[:-4]) + tuple(shape[-3:]) + (c,)
    return np.moveaxis(np.asarray(vectors).reshape(moved), -1, -4)


def nearest_vector(x: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Index (int64) of the nearest row of ``book`` for every row of ``x`` (ties: lowest)."""
    # float32 distances: ties between nearly equal vectors may go either way, but the
    # encoder stores the indices it computed, so decoding never depends on this.
    x = np.asarray(x, dtype=np.float32)
    b = np.asarray(book, dtype=np.float32)
    bb = (b * b).sum(1)
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], _CHUNK):
        blk = x[s:s + _CHUNK]
        out[s:s + _CHUNK] = np.argmin(bb[None, :] - 2.0 * blk @ b.T, axis=1)
    return out


def vector_kmeans(x: np.ndarray, k: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``(codebook (k', C) float32, indices)`` minimising the squared error of ``x``
    (``(N, C)``) with at most ``k`` vectors; ``k' < k`` when ``x`` has fewer distinct rows."""
    x = np.asarray(x, dtype=np.float64)
    distinct = np.unique(x, axis=0)
    if distinct.shape[0] <= k:
        book = distinct.astype(np.float32)
        return book, nearest_vector(x, book)
    rng = np.random.default_rng(seed)
    # k-means++ start: each next centre drawn with probability ~ squared distance.
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(x.shape[0])]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for i in range(1, k):
        total = d2.sum()
        j = int(rng.choice(x.shape[0], p=d2 / total)) if total > 0 else int(rng.integers(x.shape[0]))
        centers[i] = x[j]
        d2 = np.minimum(d2, ((x - centers[i]) ** 2).sum(1))
    idx = nearest_vector(x, centers)
    for _ in range(_ITERS):
        counts = np.bincount(idx, minlength=k).astype(np.float64)
        sums = np.stack([np.bincount(idx, weights=x[:, c], minlength=k)
                         for c in range(x.shape[1])], axis=1)
        used = counts > 0            # an empty cluster keeps its centre
        centers[used] = sums[used] / counts[used, None]
        new = nearest_vector(x, centers)
        if np.array_equal(new, idx):
            break
        idx = new
    book = centers.astype(np.float32)
    return book, nearest_vector(x, book)
