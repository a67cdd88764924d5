import numpy as np
import pytest

import neurvol


@pytest.fixture(scope="session")
def small_volume() -> np.ndarray:
    """A 24x20x28 crop of the embedded sample (real data, tiny fits)."""
    return np.ascontiguousarray(neurvol.sample_volume()[20:44, 22:42, 18:46])


@pytest.fixture(scope="session")
def small_nv(small_volume):
    """One fitted model shared by read-only tests (fits are the slow part); model-only, as
    a pure predictor file would win on this small crop at ratio 5."""
    return neurvol.encode(small_volume, ratio=5, steps=60, quiet=True,
                          codec={"hybrid": False})


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


# ---------------------------------------------------------------------------------------
# markers (registered in pyproject.toml). CI runs everything; locally
# `pytest -m "not slow and not fuzz"` gives a quick run. The slow tests are listed here,
# not decorated in place, so that one list says which they are; tests/test_markers.py
# checks that every entry still names a test.

#: Tests that take several seconds each on a loaded 2-core machine (fits, subprocesses,
#: exhaustive scans), as "file::function" (every parametrization of it).
SLOW_TESTS = frozenset({
    "test_api.py::test_truncated_file_every_offset",
    "test_bricks.py::test_local_pool_gives_the_same_bytes",
    "test_bricks.py::test_input_is_read_brick_by_brick",
    "test_kill.py::test_sigterm_inside_the_atomic_write_removes_the_temp_file",
    "test_kill.py::test_sigkill_while_fitting",
    "test_kill.py::test_sigkill_inside_the_atomic_write_leaves_only_a_temp_file",
    "test_kill.py::test_sigterm_while_fitting",
    "test_pipeline.py::test_rate_auto_finishes_the_rate_aware_fit_or_fits_the_default",
    "test_pipeline.py::test_rate_penalty_makes_grids_cheaper_and_files_round_trip",
    "test_prune_methods.py::test_method_reaches_target_sparsity_round_trips_and_fits_budget",
    "test_reliability.py::test_cli_pack_twice_gives_identical_bytes",
})
#: Modules of randomized robustness tests.
FUZZ_MODULES = frozenset({"test_fuzz.py"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        if f"{item.path.name}::{name}" in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if item.path.name in FUZZ_MODULES:
            item.add_marker(pytest.mark.fuzz)
