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


# Tiny fits of each architecture, shared by tests/test_arch_*.py (fits are the slow part).
ARCH_FIT_STEPS = {"fvsrn": 8, "neurcomp": 8, "hashgrid": 8, "amgsrn": 40}


@pytest.fixture(scope="session")
def arch_nv(small_volume):
    """``arch_nv(name)``: the small volume encoded at ratio 5 with that architecture (one
    fit per architecture and session, read-only)."""
    fitted = {}

    def get(arch: str):
        if arch not in fitted:
            fitted[arch] = neurvol.encode(small_volume, ratio=5, arch=arch,
                                          steps=ARCH_FIT_STEPS[arch], quiet=True)
        return fitted[arch]

    return get
