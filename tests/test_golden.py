"""Golden files of every released format version: read in every CI run, forever."""
import importlib.util
import glob
import math
import os

import numpy as np
import pytest

import neurvol

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
MODEL_FILES = sorted(glob.glob(os.path.join(GOLDEN, "fvsrn_v*.nvol"))
                     + glob.glob(os.path.join(GOLDEN, "codec2_*.nvol"))
                     + glob.glob(os.path.join(GOLDEN, "masked_*_v*.nvol")))
CONSTANT_FILES = sorted(glob.glob(os.path.join(GOLDEN, "constant_v*.nvol")))


def test_golden_files_exist():
    assert MODEL_FILES and CONSTANT_FILES, "golden files are missing"
    names = {os.path.basename(p) for p in MODEL_FILES}
    assert {"codec2_amgsrn.nvol", "codec2_pruned.nvol", "codec2_rans.nvol",
            "codec2_interp.nvol", "codec2_configs.nvol"} <= names


def test_codec2_golden_files_use_what_they_pin():
    def methods(name):
        with neurvol.open(os.path.join(GOLDEN, name)) as nv:
            assert nv.info()["codec"]["name"] == "neurvol"
            return nv.byte_breakdown()
    assert methods("codec2_amgsrn.nvol")["tensors"]["grids"]["method"] == "lorenzo"
    assert methods("codec2_interp.nvol")["tensors"]["grids"]["method"] == "interp"
    assert methods("codec2_pruned.nvol")["masks"] > 0
    assert "rans" in {t["coder"] for t in methods("codec2_rans.nvol")["tensors"].values()}
    assert methods("codec2_configs.nvol")["tensors"]["grid"]["method"] == "vq"


def test_codec_pipeline_reads_as_labels_and_as_configs():
    """Older files list codec.pipeline stages as strings, newer ones as configs
    (spec/payload.md §1.3): info()["codec"]["stages"] names them alike."""
    with neurvol.open(os.path.join(GOLDEN, "codec2_amgsrn.nvol")) as nv:
        labels = nv.header["codec"]["pipeline"]
        assert all(isinstance(s, str) for s in labels)
        assert nv.info()["codec"]["stages"] == labels
        assert "lorenzo" in labels
    with neurvol.open(os.path.join(GOLDEN, "codec2_configs.nvol")) as nv:
        configs = nv.header["codec"]["pipeline"]
        assert all(isinstance(s, dict) and isinstance(s["id"], str) for s in configs)
        assert nv.info()["codec"]["stages"] == [s["id"] for s in configs]
        assert {"id": "vq", "grid_bits": 2.0} in configs
        assert {"id": "prune", "fraction": 0.2} in configs


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_model_golden_decodes_as_recorded(path):
    expected = np.load(path.replace(".nvol", ".expected.npy"))
    with neurvol.open(path) as nv:
        assert nv.shape == expected.shape
        got = nv.decode(dtype=np.float32)
        # The spec allows any float32-or-wider evaluation, so decoders may differ in
        # rounding (e.g. amgsrn's atlas lookup, ~1e-5 of the range): 2e-5 of the data
        # range is an error PSNR of ~94 dB; a real format change moves values by far more.
        span = float(np.nanmax(expected) - np.nanmin(expected)) or 1.0
        # masked files (spec/mask.md): NaN exactly where it was recorded
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5 * span)
        # re-writing an old file keeps its bytes
        with open(path, "rb") as f:
            _assert_rewritten(nv.to_bytes(), f.read())


def _assert_rewritten(new: bytes, old: bytes) -> None:
    """A JSON-header file rewrites to its bytes; a compact one (format 1.4) to the same
    version, header and brick (its compressed bytes may vary with the zstd release,
    spec/nvol.md §3.3)."""
    from neurvol.container import NvolReader
    if old[16:17] != b"\xff":
        assert new == old
        return
    a, b = NvolReader(new), NvolReader(old)
    assert a.version == b.version and a.header == b.header
    assert a.read_brick(0) == b.read_brick(0)


@pytest.mark.parametrize("path", CONSTANT_FILES, ids=os.path.basename)
def test_constant_golden(path):
    with neurvol.open(path) as nv:
        np.testing.assert_array_equal(nv.decode(), np.full((10, 12, 14), 77, dtype=np.uint16))


@pytest.mark.parametrize("name", ["fvsrn_v1.4.nvol", "constant_v1.4.nvol"])
def test_compact_golden_files_are_compact(name):
    """Format 1.4 (spec/nvol.md §3.3): the encoder's single-model files carry a compact
    header, and their fixed overhead is at most 128 bytes (issue 22)."""
    from neurvol.container import NvolReader
    path = os.path.join(GOLDEN, name)
    with open(path, "rb") as f:
        data = f.read()
    r = NvolReader(data)
    assert r.version == (1, 4) and data[16] == 0xFF
    assert len(data) - r.brick_length(0) <= 128
    with neurvol.open(path) as nv:
        assert nv.info()["format_version"] == "1.4"
        _assert_rewritten(nv.to_bytes(), data)


BRICKED_FILES = sorted(glob.glob(os.path.join(GOLDEN, "bricked_v*.nvol")))


def test_bricked_golden_files_exist():
    assert BRICKED_FILES, "bricked golden files (format 1.1) are missing"


@pytest.mark.parametrize("path", BRICKED_FILES, ids=os.path.basename)
def test_bricked_golden_decodes_as_recorded(path):
    expected = np.load(path.replace(".nvol", ".expected.npy"))
    with neurvol.open(path) as nv:
        assert nv.info()["bricks"]["grid"] == [2, 2, 2]
        got = nv.decode(dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
        with open(path, "rb") as f:
            assert nv.to_bytes() == f.read()


def test_golden_generator_never_overwrites():
    """tests/golden/make_golden.py refuses every mode whose files exist, before any work,
    and knows every golden file there (so none can be regenerated in place)."""
    import hashlib
    import importlib.util

    here = os.path.join(os.path.dirname(__file__), "golden")
    spec = importlib.util.spec_from_file_location("make_golden", os.path.join(here, "make_golden.py"))
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)
    modes = ["1.0", "1.1", "codec2", "codec2-interp", "codec2-configs", "1.2", "1.3-mask",
             "1.3-mask-rows", "1.4", "1.3-series", "1.3-series-masked", "1.5",
             "1.3-series-correction"]
    goldens = sorted(f for f in os.listdir(here) if f.endswith((".nvol", ".npy")))
    assert sorted(f for m in modes for f in make_golden.outputs(m)) == goldens

    def digest():
        return {f: hashlib.sha256(open(os.path.join(here, f), "rb").read()).hexdigest()
                for f in goldens}

    before = digest()
    for mode in modes:
        assert make_golden.main([mode]) == 1
    assert digest() == before


BOUNDED_FILES = sorted(glob.glob(os.path.join(GOLDEN, "bounded_*_v*.nvol")))


def test_bounded_golden_files_exist():
    names = {os.path.basename(p) for p in BOUNDED_FILES}
    assert {"bounded_pure_v1.2.nvol", "bounded_model_v1.2.nvol", "bounded_pure_v1.5.nvol",
            "bounded_model_v1.5.nvol"} <= names


@pytest.mark.parametrize("path", BOUNDED_FILES, ids=os.path.basename)
def test_bounded_golden_keeps_its_bound(path):
    expected = np.load(path.replace(".nvol", ".expected.npy"))
    original = np.load(path.replace(".nvol", ".original.npy"))
    with neurvol.open(path) as nv:
        version = os.path.basename(path)[:-len(".nvol")].rsplit("_v", 1)[1]
        assert nv.info()["format_version"] == version
        e = nv.max_error
        got = nv.decode()
        assert got.dtype == original.dtype
        assert np.abs(got.astype(np.float64) - original.astype(np.float64)).max() <= e
        if nv.header.get("model") is None:
            np.testing.assert_array_equal(got, expected)      # numpy only: exact
        else:
            # A model evaluated elsewhere may round differently, within the stream's
            # base tolerance (spec/correction.md §3.3); values move by at most that.
            tol = nv._correction_stream().stream.base_tolerance
            assert tol > 0
            np.testing.assert_allclose(got, expected, rtol=0, atol=2 * tol + 1e-6 * e)
        with open(path, "rb") as f:
            assert nv.to_bytes() == f.read()


SERIES_FILES = sorted(glob.glob(os.path.join(GOLDEN, "series_v*.nvol")))


def test_series_golden_files_exist():
    assert SERIES_FILES, "time-series golden files (format 1.3) are missing"


@pytest.mark.parametrize("path", SERIES_FILES, ids=os.path.basename)
def test_series_golden_decodes_as_recorded(path):
    """A time series of two variables (spec/series.md): every step of both decodes as
    recorded, the metadata reads back, and re-writing keeps the bytes."""
    expected = np.load(path.replace(".nvol", ".expected.npy"))
    with neurvol.open(path) as nv:
        assert isinstance(nv, neurvol.NeuralSeries)
        assert nv.variables == ["density", "scaled"] and nv.time == (0.0, 0.5, 1.0, 1.5, 2.0)
        assert nv["scaled"].units == "kg m-3" and nv["scaled"].attrs == {"source": "neghip"}
        assert nv["density"].dtype == np.uint8
        for i, name in enumerate(nv.variables):
            got = nv[name].decode(dtype=np.float32)
            span = float(expected[i].max() - expected[i].min()) or 1.0
            np.testing.assert_allclose(got, expected[i], rtol=0, atol=2e-5 * span)
        with open(path, "rb") as f:
            assert nv.to_bytes() == f.read()


@pytest.mark.parametrize("backend", [
    pytest.param("torch", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                                   reason="the torch-free run reads with numpy")),
    "numpy"])
def test_series_correction_golden_decodes_within_its_bounds(backend):
    """Series version 2 (spec/series.md §2.1): every group of both variables is a
    correction group; every step decodes as recorded with either backend, a step's
    region read and voxel queries agree with its decode, and re-writing keeps the bytes."""
    path = os.path.join(GOLDEN, "series_correction_v1.3.nvol")
    expected = np.load(path.replace(".nvol", ".expected.npy"))
    with neurvol.open(path, backend=backend) as nv:
        assert isinstance(nv, neurvol.NeuralSeries)
        assert nv.header["series"]["version"] == 2 and nv.variables == ["density", "scaled"]
        assert nv["density"].dtype == np.uint8
        for i, name in enumerate(nv.variables):
            var = nv[name]
            groups = nv.header["series"]["variables"][i]["groups"]
            assert [g["model"] for g in groups] == [None, None]
            for k in range(nv.steps):
                # Exactly: a correction member's decode is numpy arithmetic, no model.
                assert np.array_equal(var.step(k).decode(dtype=np.float32), expected[i, k])
                assert var.step(k).max_error == groups[k // 3]["max_error"][k % 3]
            assert np.array_equal(var[4, 3:9, 2, 5:11], expected[i, 4, 3:9, 2, 5:11])
            vox = np.array([[0, 0, 0], [19, 19, 19], [7, 11, 3]], dtype=np.float64)
            assert np.array_equal(var.query(vox, t=5), expected[i, 5][tuple(vox.T.astype(int))])
        with open(path, "rb") as f:
            assert nv.to_bytes() == f.read()


MASKED_FILES = sorted(glob.glob(os.path.join(GOLDEN, "masked_*_v*.nvol")))


def test_masked_golden_files_restore_their_masks():
    names = {os.path.basename(p) for p in MASKED_FILES}
    assert {"masked_nan_v1.3.nvol", "masked_fill_v1.3.nvol", "masked_rows_v1.3.nvol"} <= names
    with neurvol.open(os.path.join(GOLDEN, "masked_nan_v1.3.nvol")) as nv:
        assert nv.info()["format_version"] == "1.3"
        dec = nv.decode()
        assert np.isnan(dec[:4]).all() and not np.isnan(dec[4:]).any()
    with neurvol.open(os.path.join(GOLDEN, "masked_fill_v1.3.nvol")) as nv:
        dec = nv.decode()
        assert dec.dtype == np.uint16 and nv.fill_value == 0.0
        z, y, x = np.indices(nv.shape)
        masked = (z < 3) | ((z * 7 + y * 3 + x) % 11 == 0)
        assert (dec[masked] == 0).all() and np.array_equal(~nv.valid_mask(), masked)


def test_series_masked_golden_restores_masks_and_attributes():
    """A series with masked members (spec/series.md §3.1): NaN and fill regions come back
    exactly at every step, with either backend; values decode as recorded; the global and
    time attributes read back; re-writing keeps the bytes."""
    path = os.path.join(GOLDEN, "series_masked_v1.3.nvol")
    expected = np.load(path.replace(".nvol", ".expected.npy"))
    # torch where installed (CI also runs this file in a virtualenv without it)
    backends = ("torch", "numpy") if importlib.util.find_spec("torch") else ("numpy",)
    for backend in backends:
        with neurvol.open(path, backend=backend) as nv:
            assert nv.variables == ["density", "count"] and nv.time == (0.0, 0.5, 1.0, 1.5)
            assert nv.attrs == {"title": "masked golden", "version": 3}
            assert nv.time_attrs == {"units": "s"}
            assert math.isnan(nv["density"].fill_value) and nv["count"].fill_value == 0.0
            density = nv["density"].decode(dtype=np.float32)
            nan = np.isnan(expected[0])
            assert nan[:, :3].all() and nan[2, 10:, 12:, 15:].all() and not nan[1, 3:].any()
            assert np.array_equal(np.isnan(density), nan)
            span = float(np.nanmax(expected[0]) - np.nanmin(expected[0]))
            np.testing.assert_allclose(density[~nan], expected[0][~nan], rtol=0,
                                       atol=2e-5 * span)
            count = nv["count"].decode()
            assert count.dtype == np.uint16
            filled = expected[1] == 0
            assert not filled[0].any() and filled[1:].any()
            assert np.array_equal(count == 0, filled)
            # a query in a masked cell is NaN whatever the fill; between steps too
            assert np.isnan(nv["count"].query(np.array([[5.0, 6.0, 3.0]]), t=1)).all()
            assert np.isnan(nv["density"].query(np.array([[1.0, 9.0, 9.0]]), t=0.5)).all()
            with open(path, "rb") as f:
                assert nv.to_bytes() == f.read()
