"""Scalar k-means quantization of one tensor (neurcomp-style: one codebook per tensor).

1-D k-means is solved with Lloyd's algorithm on the sorted values: the clusters are
contiguous runs, so each iteration is a ``searchsorted`` plus prefix sums, O(n log k).
This is the same fixed point scikit-learn's ``KMeans`` reaches on 1-D data, at a fraction
of the cost of its general n-D algorithm, which matters because the encoder runs it a
dozen times while searching for the k that fits the budget.
"""
from __future__ import annotations

import numpy as np

_MAX_ITER = 100


def kmeans_quantize(values: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``values`` to at most ``k`` centroids minimising the squared error.

    Returns ``(codebook (k',) float32 sorted ascending, indices (n,) int64 into codebook)``
    with ``k' <= k`` (fewer when there are fewer distinct values). Lossy. Deterministic
    (``seed`` is accepted for interface stability; the quantile start needs no randomness).
    """
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    distinct = np.unique(flat)
    if distinct.size <= k:
        return distinct.astype(np.float32), np.searchsorted(distinct, flat).astype(np.int64)
    xs = np.sort(flat.astype(np.float64))
    csum = np.concatenate([[0.0], np.cumsum(xs)])
    # Start from quantiles: close to the 1-D optimum, so Lloyd converges in few iterations.
    centers = np.unique(np.quantile(xs, (np.arange(k) + 0.5) / k))
    for _ in range(_MAX_ITER):
        bounds = np.searchsorted(xs, (centers[1:] + centers[:-1]) * 0.5)
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [xs.size]])
        counts = ends - starts
        keep = counts > 0  # an empty cluster is dropped: it would code nothing
        new = (csum[ends[keep]] - csum[starts[keep]]) / counts[keep]
        if new.size == centers.size and np.allclose(new, centers, rtol=0, atol=1e-9 * (xs[-1] - xs[0])):
            centers = new
            break
        centers = new
    codebook = np.unique(centers.astype(np.float32))
    return codebook, nearest_centroid(flat, codebook)


def nearest_centroid(flat: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of a sorted ``codebook`` for every value."""
    if codebook.size == 1:
        return np.zeros(flat.size, dtype=np.int64)
    mids = (codebook[1:] + codebook[:-1]) * 0.5
    return np.searchsorted(mids, flat).astype(np.int64)
