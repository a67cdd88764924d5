"""End-to-end behaviour of the public API: encode -> .nvol -> open/query/decode."""
import os

import numpy as np
import pytest

import neurvol
from neurvol import (NeurvolBudgetError, NeurvolFormatError, NeurvolInputError, NeurvolIOError)


def test_budget_is_a_hard_limit_and_mostly_used(small_volume, small_nv):
    budget = small_volume.nbytes / 5
    assert small_nv.nbytes_file <= budget
    assert small_nv.nbytes_file >= 0.75 * budget
    assert small_nv.ratio >= 5


def test_quality_beats_a_trivial_reconstruction(small_volume, small_nv):
    recon = small_nv.decode()
    assert recon.dtype == small_volume.dtype and recon.shape == small_volume.shape
    mean_psnr = neurvol.metrics.psnr(small_volume, np.full_like(small_volume, small_volume.mean()))
    assert neurvol.metrics.psnr(small_volume, recon) > mean_psnr + 8


def test_save_open_query_matches_decode(tmp_path, small_volume, small_nv):
    path = tmp_path / "v.nvol"
    small_nv.save(path)
    assert os.path.getsize(path) == small_nv.nbytes_file
    with neurvol.open(path) as nv:
        assert nv.shape == small_volume.shape and nv.dtype == small_volume.dtype
        full = nv.decode(dtype=np.float32)
        rng = np.random.default_rng(0)
        idx = np.stack([rng.integers(0, n, 500) for n in small_volume.shape], 1)
        vals = nv.query(idx.astype(np.float64))
        np.testing.assert_allclose(vals, full[idx[:, 0], idx[:, 1], idx[:, 2]], rtol=1e-5, atol=1e-4)
        # the in-memory volume answers exactly as the file does
        np.testing.assert_allclose(small_nv.query(idx.astype(float)), vals, rtol=1e-6, atol=1e-5)
        # normalized space is the same points
        norm = idx * 2.0 / (np.array(small_volume.shape) - 1) - 1
        np.testing.assert_allclose(nv.query(norm, space="normalized"), vals, rtol=1e-5, atol=1e-4)


def test_rewrite_is_byte_identical(tmp_path, small_nv):
    a, b = tmp_path / "a.nvol", tmp_path / "b.nvol"
    small_nv.save(a)
    with neurvol.open(a) as nv:
        nv.save(b)
    assert a.read_bytes() == b.read_bytes()


def test_same_seed_same_bytes(small_volume):
    crop = small_volume[:12, :12, :12].astype(np.float32)
    one = neurvol.encode(crop, ratio=2, steps=15, seed=3, quiet=True).to_bytes()
    two = neurvol.encode(crop, ratio=2, steps=15, seed=3, quiet=True).to_bytes()
    assert one == two


def test_region_decode_matches_full_decode(small_nv):
    full = small_nv.decode()
    np.testing.assert_array_equal(small_nv[3:9, :, 5], full[3:9, :, 5])
    np.testing.assert_array_equal(small_nv[-1, ::3, 2:20:4], full[-1, ::3, 2:20:4])
    np.testing.assert_array_equal(small_nv[..., 7], full[..., 7])
    np.testing.assert_array_equal(small_nv[[0, 5, 2]][:, 1, 1], full[[0, 5, 2], 1, 1])
    assert small_nv[2, 3, 4] == full[2, 3, 4]
    with pytest.raises(NeurvolInputError):
        small_nv[100]
    with pytest.raises(NeurvolInputError):
        small_nv[0, 0, 0, 0]


def test_decode_other_shape_and_dtype(small_nv):
    up = small_nv.decode(shape=(48, 40, 56), dtype=np.float32)
    assert up.shape == (48, 40, 56) and up.dtype == np.float32
    full = small_nv.decode(dtype=np.float32)
    # corner voxel centres coincide across resolutions
    np.testing.assert_allclose(up[0, 0, 0], full[0, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(up[-1, -1, -1], full[-1, -1, -1], rtol=1e-5)
    out = np.zeros(small_nv.shape, dtype=np.float32)
    small_nv.decode(dtype=np.float32, out=out)
    np.testing.assert_array_equal(out, full)


def test_info_is_complete(small_nv):
    info = small_nv.info()
    for key in ("shape", "dtype", "file_bytes", "ratio", "model", "codec", "fit", "format_version"):
        assert key in info
    assert info["model"]["arch"] == neurvol.api.AUTO_ORDER[0]  # the default, arch="auto"
    assert info["fit"]["psnr"] > 15


def test_float_volume_round_trip():
    z, y, x = np.mgrid[0:16, 0:18, 0:20].astype(np.float32)
    vol = np.sin(z / 4.0) * np.cos(x / 5.0) + y / 18.0
    nv = neurvol.encode(vol, ratio=8, steps=80, quiet=True)
    rec = nv.decode()
    assert rec.dtype == np.float32
    assert neurvol.metrics.psnr(vol, rec) > 25


@pytest.mark.parametrize("value,dtype", [(7, np.uint8), (-1.5e6, np.float64), (0, np.int16)])
def test_constant_volume_is_exact(tmp_path, value, dtype):
    vol = np.full((10, 11, 12), value, dtype=dtype)
    nv = neurvol.encode(vol, ratio=2, quiet=True)
    nv.save(tmp_path / "c.nvol")
    back = neurvol.open(tmp_path / "c.nvol")
    np.testing.assert_array_equal(back.decode(), vol)
    assert back.query([[1.5, 2.5, 3.5]])[0] == np.float32(value)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 4)), "3-D"),
    (np.zeros((2, 2, 3, 4, 5)), "3-D"),     # 4-D is a time series (tests/test_series.py)
    (np.zeros((1, 4, 4)), "at least 2"),
    (np.zeros((0, 4, 4)), "at least 2"),
    (np.array([[[1 + 2j] * 3] * 3] * 3), "complex"),
    (np.zeros((3, 3, 3), dtype=bool), "boolean"),
    (np.full((3, 3, 3), "a"), "not numeric"),
])
def test_bad_volumes(bad, match):
    with pytest.raises(NeurvolInputError, match=match):
        neurvol.encode(bad, quiet=True)


def test_inf_rejected():
    # NaN is a masked voxel since format 1.3 (tests/test_mask.py); infinities stay refused.
    vol = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    for bad_value in (np.inf, -np.inf):
        v = vol.copy()
        v[3, 4, 5] = bad_value
        with pytest.raises(NeurvolInputError, match="NaN or infinite"):
            neurvol.encode(v, quiet=True)


@pytest.mark.parametrize("ratio", [1, 0.5, -3, float("nan"), float("inf"), "abc", None])
def test_bad_ratio(small_volume, ratio):
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, ratio=ratio, quiet=True)


def test_budget_too_small(small_volume):
    with pytest.raises(NeurvolBudgetError, match="smaller ratio"):
        neurvol.encode(small_volume, ratio=5000, quiet=True)


def test_unknown_arch_and_bad_options(small_volume):
    with pytest.raises(NeurvolInputError, match="unknown architecture"):
        neurvol.encode(small_volume, arch="nope", quiet=True)
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, steps=-1, quiet=True)
    with pytest.raises(NeurvolInputError, match="unknown option"):
        neurvol.encode(small_volume, arch="fvsrn", chanels=3, quiet=True)
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, device="cuda" if not _has_cuda() else "nonsense", quiet=True)


def _has_cuda():
    import torch
    return torch.cuda.is_available()


def test_bad_points(small_nv):
    for pts in ([1.0, 2.0], np.zeros((5, 2)), np.zeros((2, 3, 3)), [[np.nan, 0, 0]], "abc"):
        with pytest.raises(NeurvolInputError):
            small_nv.query(pts)
    with pytest.raises(NeurvolInputError, match="outside"):
        small_nv.query([[0, 0, small_nv.shape[2]]])
    with pytest.raises(NeurvolInputError, match="outside"):
        small_nv.query([[0, 0, 1.01]], space="normalized")
    with pytest.raises(NeurvolInputError):
        small_nv.query([[0, 0, 0]], space="world")
    # clamp=True maps outside points to the boundary
    edge = small_nv.query([[0, 0, small_nv.shape[2] - 1]])
    assert small_nv.query([[0, 0, small_nv.shape[2] + 5]], clamp=True) == pytest.approx(edge)
    assert small_nv.query(np.zeros((0, 3))).shape == (0,)


def test_open_errors(tmp_path):
    with pytest.raises(NeurvolIOError):
        neurvol.open(tmp_path / "missing.nvol")
    with pytest.raises(NeurvolIOError):
        neurvol.open(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((3, 3, 3)))
    with pytest.raises(NeurvolFormatError, match="npy"):
        neurvol.open(tmp_path / "x.npy")


def test_truncated_file_every_offset(tmp_path, small_nv):
    data = small_nv.to_bytes()
    path = tmp_path / "t.nvol"
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(NeurvolFormatError):
            with neurvol.open(path) as nv:
                nv.decode()


def test_corrupted_bytes_are_detected(tmp_path, small_nv):
    data = bytearray(small_nv.to_bytes())
    path = tmp_path / "c.nvol"
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(data), 150, replace=False):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(bad))
        with pytest.raises(NeurvolFormatError):
            with neurvol.open(path) as nv:
                nv.decode()


def test_save_failure_leaves_no_partial_file(tmp_path, small_nv):
    target = tmp_path / "keep.nvol"
    target.write_bytes(b"precious")
    with pytest.raises(NeurvolIOError):
        small_nv.save(tmp_path / "no" / "such" / "dir" / "f.nvol")
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nvol"]


def test_memmap_input(tmp_path, small_volume):
    np.save(tmp_path / "v.npy", small_volume[:12, :12, :12].astype(np.float32))
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    nv = neurvol.encode(mm, ratio=2, steps=10, quiet=True)
    assert nv.shape == (12, 12, 12)


def test_auto_takes_the_first_architecture_that_fits(small_volume, monkeypatch):
    # hashgrid's smallest model does not fit 1/10 of this crop; fvsrn's does.
    from neurvol.encoding import plan

    monkeypatch.setattr(plan, "AUTO_ORDER", ("hashgrid", "fvsrn"))
    nv = neurvol.encode(small_volume, ratio=10, steps=5, quiet=True, codec={"hybrid": False})
    assert nv.info()["model"]["arch"] == "fvsrn"
    assert nv.nbytes_file <= small_volume.nbytes / 10
    with pytest.raises(NeurvolBudgetError):
        neurvol.encode(small_volume, ratio=10, steps=5, quiet=True, arch="hashgrid")


def test_auto_rejects_architecture_options(small_volume):
    with pytest.raises(neurvol.NeurvolInputError, match="explicit arch"):
        neurvol.encode(small_volume, ratio=5, steps=5, quiet=True, grids=2)


def test_options_of_another_architecture_are_rejected(small_volume):
    with pytest.raises(neurvol.NeurvolInputError, match="grids"):
        neurvol.encode(small_volume, ratio=5, arch="fvsrn", steps=5, quiet=True, grids=2)


def test_a_query_in_threads_equals_one_in_sequence(small_nv, monkeypatch):
    """Chunks of a query run side by side (QUERY_THREADS); results and errors must not
    depend on it."""
    from neurvol import neural_volume

    monkeypatch.setattr(neural_volume, "QUERY_CHUNK", 1000)
    rng = np.random.default_rng(5)
    pts = rng.random((10_500, 3)) * (np.asarray(small_nv.shape) - 1)
    far = pts.copy()
    far[[3, 4_200, 9_999], 2] += small_nv.shape[2]       # outside, in three chunks
    far[7_000, 0] = np.nan
    results = {}
    for threads in (1, 2, 3):
        monkeypatch.setattr(neural_volume, "QUERY_THREADS", threads)
        results[threads] = small_nv.query(pts)
        with pytest.raises(NeurvolInputError, match="3 points lie outside") as exc:
            small_nv.query(np.delete(far, 7_000, axis=0))
        assert f"first: {far[3].tolist()}" in str(exc.value)
        with pytest.raises(NeurvolInputError, match="finite"):
            small_nv.query(far)
        clamped = small_nv.query(far[:7_000], clamp=True)
        assert np.isfinite(clamped).all()
    assert np.array_equal(results[1], results[2]) and np.array_equal(results[1], results[3])


def _torch_threads_in_a_new_thread() -> int:
    import threading

    import torch

    seen = []

    def probe():
        torch.ones(64, 64).sum()             # a first op: the thread takes torch's default
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    return seen[0]


def test_a_threaded_query_leaves_torch_threads_as_they_were(small_nv, monkeypatch):
    """The query's workers run torch on one thread each; neither the caller nor threads
    it starts later inherit that."""
    import torch

    from neurvol import neural_volume

    monkeypatch.setattr(neural_volume, "QUERY_CHUNK", 1000)
    monkeypatch.setattr(neural_volume, "QUERY_THREADS", 2)
    before, before_new = torch.get_num_threads(), _torch_threads_in_a_new_thread()
    small_nv.query(np.random.default_rng(0).random((5000, 3)) * (np.asarray(small_nv.shape) - 1))
    assert torch.get_num_threads() == before
    assert _torch_threads_in_a_new_thread() == before_new


def test_a_decode_in_threads_equals_one_in_sequence(small_nv, monkeypatch):
    from neurvol import neural_volume

    monkeypatch.setattr(neural_volume, "_DECODE_BLOCK", 50)    # many blocks of every shape
    out = {}
    for threads in (1, 2):
        monkeypatch.setattr(neural_volume, "QUERY_THREADS", threads)
        out[threads] = (small_nv.decode(dtype=np.float32), small_nv[3:17, ::2, 5])
    assert np.array_equal(out[1][0], out[2][0]) and np.array_equal(out[1][1], out[2][1])
