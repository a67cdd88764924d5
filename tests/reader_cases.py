"""Shared by the reader tests: how a file's torch-reader results are recorded and compared.

``record(nv)`` evaluates a file with the torch reader at fixed points, regions and shapes;
``compare(nv, ref)`` checks another reader against that record within ``TOLERANCE`` of the
file's data range. The torch-free virtualenv of ``.ci/run`` reads records written by the
torch one (``NEURVOL_READER_FIXTURES``).
"""
from __future__ import annotations

import numpy as np

#: Largest allowed difference between the readers, as a fraction of the data range.
TOLERANCE = 1e-5
#: Environment variable naming a directory of ``<case>.nvol`` + ``<case>.ref.npz`` pairs.
FIXTURES_ENV = "NEURVOL_READER_FIXTURES"
RESAMPLE = (9, 11, 13)


def probe_points(shape, n: int = 4000, seed: int = 0) -> np.ndarray:
    """Random index-space points plus the volume's corners and face centres."""
    rng = np.random.default_rng(seed)
    hi = np.asarray(shape, dtype=np.float64) - 1
    pts = rng.uniform(0, 1, (n, 3)) * hi
    corners = np.stack(np.meshgrid(*[[0.0, 0.5, 1.0]] * 3, indexing="ij"), -1).reshape(-1, 3)
    return np.concatenate([corners * hi, pts])


def region_key(shape):
    d, h, w = shape
    return (slice(1, d - 1, 2), slice(None), np.array([0, w // 2, w - 1]))


def record(nv) -> dict:
    """What the reader ``nv`` answers: queries, a region read, full and resampled decodes."""
    pts = probe_points(nv.shape)
    return {"points": pts, "query": nv.query(pts), "decode": nv.decode(dtype=np.float32),
            "resampled": nv.decode(shape=RESAMPLE, dtype=np.float32),
            "region": nv[region_key(nv.shape)].astype(np.float32),
            "span": np.float64(nv.info()["value_range"][1] - nv.info()["value_range"][0])}


def compare(nv, ref: dict) -> None:
    """Assert that reader ``nv`` answers as the record ``ref`` within TOLERANCE."""
    atol = TOLERANCE * max(float(ref["span"]), 1e-30)
    np.testing.assert_allclose(nv.query(ref["points"]), ref["query"], rtol=0, atol=atol)
    np.testing.assert_allclose(nv.decode(dtype=np.float32), ref["decode"], rtol=0, atol=atol)
    np.testing.assert_allclose(nv.decode(shape=RESAMPLE, dtype=np.float32), ref["resampled"],
                               rtol=0, atol=atol)
    got = nv[region_key(nv.shape)].astype(np.float32)
    assert got.shape == ref["region"].shape
    # Region reads round to the file's dtype, as the torch reader did: compare after rounding.
    np.testing.assert_allclose(got, ref["region"], rtol=0, atol=max(atol, 1.0) if nv.dtype.kind in "iu" else atol)
