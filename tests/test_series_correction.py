"""Correction groups of a time series (spec/series.md §2.1): where the pure predictor wins
a group's key, every step is a correction stream against the step before, so each step
has a pointwise bound and no model is fitted after the key's."""
from __future__ import annotations

import json

import numpy as np
import pytest

import neurvol
from neurvol.compress.bound import resample_linear
from neurvol.container import NvolReader, serialize_nvol
from neurvol.encoding import series as series_encoder
from neurvol.errors import NeurvolFormatError
from neurvol.metrics import psnr
from neurvol.series import NeuralSeries
from neurvol.series import layout

RATIO = 8.0
FIT_STEPS = 30
STEPS = 6


def _blend(steps: int = STEPS) -> np.ndarray:
    """Steps blending two crops of the sample: consecutive steps are close (as a
    simulation's are), and the field is smooth enough for the predictor to win."""
    vol = neurvol.sample_volume().astype(np.float32)
    a, b = vol[20:40, 22:42, 22:42], vol[24:44, 22:42, 22:42]
    return np.stack([a + (b - a) * np.float32(t / 20) for t in range(steps)])


@pytest.fixture(scope="module")
def data():
    return _blend()


@pytest.fixture(scope="module")
def encoded(data):
    return neurvol.encode(data, ratio=RATIO, steps=FIT_STEPS, group=STEPS, seed=0, quiet=True)


@pytest.fixture(scope="module")
def path(encoded, tmp_path_factory):
    p = tmp_path_factory.mktemp("corr") / "series.nvol"
    encoded.save(p)
    return p


def _groups(nv):
    return nv.header["series"]["variables"][0]["groups"]


def test_writer_and_reader_agree_on_the_versions():
    assert series_encoder.SERIES_VERSION == layout.SERIES_VERSION
    assert series_encoder.CORRECTION_SERIES_VERSION == layout.CORRECTION_SERIES_VERSION


def test_every_step_is_within_its_bound(encoded, data, path):
    """The predictor wins the key, so the group is a correction group (version 2): every
    voxel of every step is within the step's bound, the header's PSNRs are the decode's,
    and the whole file fits the ratio's budget."""
    assert encoded.header["series"]["version"] == 2
    (group,) = _groups(encoded)
    assert group["model"] is None and len(group["max_error"]) == STEPS
    assert encoded.nbytes_file <= data.nbytes / RATIO
    with neurvol.open(path) as nv:
        dec = nv.decode()
        for k in range(STEPS):
            bound = nv.step(k).max_error
            assert bound == group["max_error"][k] > 0
            err = np.abs(dec[k].astype(np.float64) - data[k].astype(np.float64)).max()
            assert err <= bound
            assert nv["data"].fit_psnr[k] == pytest.approx(psnr(data[k], dec[k]), abs=1e-3)


def test_a_step_reads_only_its_chain(encoded, path):
    """Step k reads and decodes the members of its group up to k and nothing else."""
    lengths = [NvolReader(encoded.to_bytes()).brick_length(m) for m in range(STEPS)]
    with neurvol.open(path) as nv:
        region = nv[3, 2:9, 4, 1:15]
        assert region.shape == (7, 14)
        assert nv.stats["members_decoded"] == 4
        assert nv.stats["bytes_read"] == sum(lengths[:4])
    with neurvol.open(path) as nv:
        assert np.array_equal(region, nv.decode()[3, 2:9, 4, 1:15])


def test_queries_are_exact_at_voxels_and_trilinear_corrections_between(path):
    """At voxel centres a query is the decoded voxel; between them it is the previous
    step's query plus the trilinear interpolation of this step's corrections (its decoded
    values minus the previous step's): an error-bounded file's rule, with the previous step
    as the model (spec/series.md §2.1)."""
    with neurvol.open(path) as nv:
        dec = nv.decode().astype(np.float64)
        rng = np.random.default_rng(0)
        vox = rng.integers(0, 20, (300, 3)).astype(np.float64)
        assert np.array_equal(nv.query(vox, t=4), dec[4][tuple(vox.T.astype(int))].astype(np.float32))
        pts = rng.uniform(0, 19, (300, 3))
        got = nv.query(pts, t=4).astype(np.float64)
        prev = nv.query(pts, t=3).astype(np.float64)
        corr = dec[4] - dec[3]
        i0 = np.minimum(np.floor(pts).astype(int), 18)
        f = pts - i0
        want = prev.copy()
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    w = ((f[:, 0] if dz else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                         * (f[:, 2] if dx else 1 - f[:, 2]))
                    want += w * corr[i0[:, 0] + dz, i0[:, 1] + dy, i0[:, 2] + dx]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.ptp(dec)))
        # A point outside the grid is refused, as for any volume.
        with pytest.raises(neurvol.NeurvolInputError, match="outside"):
            nv.query(np.array([[0.0, 0.0, 25.0]]), t=4)


def test_decode_on_another_grid(path):
    """A resampled decode: the previous step's plus the corrections resampled linearly
    (the key's: its values resampled, its base being zero)."""
    with neurvol.open(path) as nv:
        dec = nv.decode().astype(np.float64)
        target = (11, 13, 7)
        key = nv.step(0).decode(shape=target, dtype=np.float32)
        np.testing.assert_allclose(key, resample_linear(dec[0], target), rtol=0, atol=1e-3)
        two = nv.step(2).decode(shape=target, dtype=np.float32)
        one = nv.step(1).decode(shape=target, dtype=np.float32)
        np.testing.assert_allclose(two, one + resample_linear(dec[2] - dec[1], target),
                                   rtol=0, atol=1e-3)


def test_backends_and_cache_agree(path):
    """The torch-free reader decodes the same bits; a step decoded from a cold file equals
    the same step decoded after the whole series (the chain's cache)."""
    with neurvol.open(path) as nv:
        everything = nv.decode()
    with neurvol.open(path, backend="numpy") as nv:
        assert np.array_equal(nv.step(5).decode(), everything[5])
    with neurvol.open(path) as nv:
        assert np.array_equal(nv[2], everything[2])


def test_hybrid_off_and_explicit_arch_keep_model_groups(data):
    """codec={"hybrid": False} or a named architecture: model groups, version 1 (a
    file every 1.3 reader reads)."""
    for kwargs in ({"codec": {"hybrid": False}}, {"arch": "fvsrn"}):
        nv = neurvol.encode(data[:3], ratio=RATIO, steps=FIT_STEPS, group=3, seed=0,
                            quiet=True, **kwargs)
        assert nv.header["series"]["version"] == 1
        assert all(g["model"] is not None for g in _groups(nv))


def test_integer_steps_take_integer_bounds(data):
    """uint8 steps: every bound is an integer and holds voxel by voxel."""
    ints = np.rint(data).astype(np.uint8)
    nv = neurvol.encode(ints, ratio=RATIO, steps=FIT_STEPS, group=STEPS, seed=0, quiet=True)
    (group,) = _groups(nv)
    assert all(float(e).is_integer() for e in group["max_error"])
    dec = nv.decode()
    for k in range(STEPS):
        assert np.abs(dec[k].astype(int) - ints[k].astype(int)).max() <= group["max_error"][k]


def _rewrite(nv, edit) -> bytes:
    reader = NvolReader(nv.to_bytes())
    header = json.loads(json.dumps({k: v for k, v in reader.header.items() if k != "sections"}))
    edit(header)
    payloads = [reader.read_brick(b) for b in range(reader.brick_count)]
    return serialize_nvol(header, payloads, minor=reader.version[1])


def _group(h):
    return h["series"]["variables"][0]["groups"][0]


HOSTILE = {
    "version 1": lambda h: h["series"].update(version=1),
    "bounds short": lambda h: _group(h)["max_error"].pop(),
    "bound negative": lambda h: _group(h)["max_error"].__setitem__(0, -1.0),
    "bound not a number": lambda h: _group(h)["max_error"].__setitem__(1, "0.5"),
    "with a model": lambda h: _group(h).update(
        model={"arch": "fvsrn", "config": {}}, codec={"name": "neurvol", "version": 2}),
    "masked step": lambda h: h["series"]["variables"][0].update(
        mask={"fill": None, "steps": [None, {"masked": 3, "section": "mask.0.0"}] + [None] * 4}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_correction_headers_are_refused(encoded, case):
    data = _rewrite(encoded, HOSTILE[case])
    with pytest.raises(NeurvolFormatError):
        with NeuralSeries(NvolReader(data)) as nv:
            nv.decode()


def test_a_stream_whose_bound_differs_from_the_header_is_refused(encoded):
    """The header's bound is what a user is told: a member whose stream holds another is
    refused when read (as an error-bounded file's section is)."""
    data = _rewrite(encoded, lambda h: _group(h)["max_error"].__setitem__(
        2, _group(h)["max_error"][2] * 2))
    with NeuralSeries(NvolReader(data)) as nv:
        nv.step(1).decode()
        with pytest.raises(NeurvolFormatError, match="bound"):
            nv.step(2).decode()


def test_long_correction_groups_are_cut(data, monkeypatch):
    """A group whose key is the predictor is cut where the reader's correction chains end
    (MAX_CORRECTION_STEPS), the rest a group of its own with a key of its own."""
    monkeypatch.setattr(neurvol.api, "MAX_CORRECTION_STEPS", 4)
    nv = neurvol.encode(data, ratio=RATIO, steps=FIT_STEPS, group=STEPS, seed=0, quiet=True)
    assert [(g["start"], g["stop"], len(g["max_error"])) for g in _groups(nv)] == [
        (0, 4, 4), (4, 6, 2)]
    dec = nv.decode()
    for k in range(STEPS):
        assert np.abs(dec[k] - data[k]).max() <= nv.step(k).max_error


def test_the_reader_refuses_longer_chains():
    ok = [{"start": 0, "stop": layout.MAX_CORRECTION_STEPS, "model": None, "codec": None,
           "max_error": [1.0] * layout.MAX_CORRECTION_STEPS}]
    assert layout._groups(ok, "g", layout.MAX_CORRECTION_STEPS, 2)[0].corrected
    n = layout.MAX_CORRECTION_STEPS + 1
    long = [{"start": 0, "stop": n, "model": None, "codec": None, "max_error": [1.0] * n}]
    with pytest.raises(NeurvolFormatError, match="at most"):
        layout._groups(long, "g", n, 2)


def test_steps_read_from_several_threads(path):
    """Region reads, queries and decodes of several steps side by side (as dask and xarray
    read) finish and agree with a single-threaded decode."""
    from concurrent.futures import ThreadPoolExecutor

    with neurvol.open(path) as nv:
        want = nv.decode()
    with neurvol.open(path) as nv:
        def read(k):
            if k % 3 == 0:
                return nv.step(k).decode()
            if k % 3 == 1:
                return nv[k, :, :, :]
            vox = np.argwhere(np.ones((20, 20, 20), dtype=bool)).astype(np.float64)
            return nv.query(vox, t=k).reshape(20, 20, 20)

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(read, list(range(STEPS)) * 2))
    for i, g in enumerate(got):
        assert np.array_equal(g, want[i % STEPS].astype(g.dtype))
