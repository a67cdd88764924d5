import numpy as np
import pytest

import neurvol


@pytest.fixture(scope="session")
def small_volume() -> np.ndarray:
    """A 24x20x28 crop of the embedded sample (real data, tiny fits)."""
    return np.ascontiguousarray(neurvol.sample_volume()[20:44, 22:42, 18:46])


@pytest.fixture(scope="session")
def small_nv(small_volume):
    """One fitted model shared by read-only tests (fits are the slow part)."""
    return neurvol.encode(small_volume, ratio=5, steps=60, quiet=True)
