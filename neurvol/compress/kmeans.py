"""Scalar k-means quantization of one tensor (neurcomp-style: one codebook per tensor)."""
from __future__ import annotations

import numpy as np

# k-means on a subsample is as good as on all values for 1-D data and much faster.
_FIT_SAMPLE = 65536


def kmeans_quantize(values: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``values`` to ``k`` centroids.

    Returns ``(codebook (k',) float32 sorted ascending, indices (n,) into codebook)`` with
    ``k' <= k`` (fewer when there are fewer distinct values). Lossy.
    """
    from sklearn.cluster import KMeans

    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    distinct = np.unique(flat)
    if distinct.size <= k:
        idx = np.searchsorted(distinct, flat)
        return distinct.astype(np.float32), idx.astype(np.int64)
    rng = np.random.default_rng(seed)
    sample = flat if flat.size <= _FIT_SAMPLE else rng.choice(flat, _FIT_SAMPLE, replace=False)
    # Start from quantiles: deterministic and close to the 1-D optimum, so few iterations do.
    init = np.quantile(sample, (np.arange(k) + 0.5) / k).reshape(-1, 1)
    init = np.unique(init).reshape(-1, 1)
    km = KMeans(n_clusters=init.shape[0], init=init, n_init=1, max_iter=60, tol=1e-7, random_state=seed)
    km.fit(sample.reshape(-1, 1).astype(np.float64))
    codebook = np.sort(km.cluster_centers_.reshape(-1)).astype(np.float32)
    return codebook, nearest_centroid(flat, codebook)


def nearest_centroid(flat: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of a sorted ``codebook`` for every value."""
    if codebook.size == 1:
        return np.zeros(flat.size, dtype=np.int64)
    mids = (codebook[1:] + codebook[:-1]) * 0.5
    return np.searchsorted(mids, flat).astype(np.int64)
