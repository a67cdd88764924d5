"""Random access on error-bounded files: a query decodes only the correction blocks its
points touch (side by side, into a capped cache), answers voxel centres exactly as
``decode()`` does, and the batched decoder computes the same bits as a block decoded alone."""
from __future__ import annotations

import numpy as np
import pytest
from trilinear_reference import trilinear

import neurvol
from neurvol.compress import bound as bound_mod
from neurvol.compress import interp
from neurvol.compress.correction import predict as P
from neurvol.compress.correction import stream as S
from neurvol.encoding import bounded as B


def _volume(shape=(40, 36, 44), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    f = np.sin(7 * x) * np.cos(5 * y) + z ** 2 + rng.normal(0, 0.02, shape)
    return (f * 100).astype(np.float32)


def _spy_decoded(monkeypatch) -> list:
    """Record the block ids every batch decode is asked for."""
    seen: list = []
    real = S.CorrectionStream.decode_blocks

    def spy(self, ids, threads=1):
        ids = list(ids)
        seen.append(ids)
        return real(self, ids, threads)

    monkeypatch.setattr(S.CorrectionStream, "decode_blocks", spy)
    return seen


def test_point_query_decodes_only_the_blocks_it_touches(monkeypatch, tmp_path):
    vol = _volume()
    e = 1e-2 * float(np.ptp(vol))
    path = tmp_path / "b.nvol"
    B.encode_bounded(vol, e, 1e-2, model_ratios=(), block=8).save(path)
    seen = _spy_decoded(monkeypatch)
    nv = neurvol.open(path)
    # One point inside block (1, 2, 3) (z 8..15, y 16..23, x 24..31), away from its faces:
    # its eight neighbours lie in that block only.
    got = nv.query(np.array([[10.5, 18.25, 27.75]]))
    stream = nv._correction_stream().stream
    assert seen == [[int(stream.block_of(np.array([[10, 18, 27]]))[0])]]
    # A centre on a block corner needs only its own block; a point across a corner all 8.
    seen.clear()
    nv.query(np.array([[16.0, 8.0, 24.0]]))
    assert seen == [[int(stream.block_of(np.array([[16, 8, 24]]))[0])]]
    seen.clear()
    nv.query(np.array([[23.5, 31.5, 15.5]]))
    want = sorted({int(b) for b in stream.block_of(
        np.array([[z, y, x] for z in (23, 24) for y in (31, 32) for x in (15, 16)]))})
    assert sorted(seen[0]) == want and len(want) == 8
    # Cached: asking again decodes nothing.
    seen.clear()
    assert nv.query(np.array([[10.5, 18.25, 27.75]])) == got
    assert seen == []


@pytest.mark.parametrize("cache_bytes", [None, 3 * 8 ** 3 * 12])
def test_centre_queries_equal_decode_and_hold_the_bound(monkeypatch, tmp_path, cache_bytes):
    """Every voxel centre, queried in one call, in random order: the decoded values (so
    within the bound), also when the cache holds only 3 blocks and evicts throughout."""
    if cache_bytes is not None:
        monkeypatch.setattr(bound_mod, "BLOCK_CACHE_BYTES", cache_bytes)
    vol = _volume((20, 17, 26), seed=1)
    e = 1e-3 * float(np.ptp(vol))
    path = tmp_path / "b.nvol"
    B.encode_bounded(vol, e, 1e-3, model_ratios=(), block=8).save(path)
    nv = neurvol.open(path)
    dec = nv.decode()
    assert np.abs(dec.astype(np.float64) - vol).max() <= e
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"),
                   -1).reshape(-1, 3)
    idx = idx[np.random.default_rng(2).permutation(len(idx))]
    got = nv.query(idx.astype(np.float64))
    np.testing.assert_array_equal(got, dec[tuple(idx.T)])
    corr = nv._correction_stream()
    if cache_bytes is not None:
        assert corr._nslots == 3 and len(corr._lru) <= 3
    # Region reads (more blocks than the capped cache holds, then fewer).
    np.testing.assert_array_equal(nv[2:19, ::3, 5:25], dec[2:19, ::3, 5:25])
    np.testing.assert_array_equal(nv[9:11, 3, 4:6], dec[9:11, 3, 4:6])
    # Between centres (dense enough that corrections are kept per block, then sparse
    # ones from the cache): the trilinear interpolation of the decoded values.
    p = np.random.default_rng(3).uniform(0, 1, (500, 3)) * (np.array(vol.shape) - 1)
    np.testing.assert_allclose(nv.query(p), trilinear(dec, p), rtol=1e-6, atol=1e-4)


def test_model_file_centre_queries_hold_the_bound_cold_and_warm():
    vol = _volume((18, 20, 17), seed=4)
    e = 1e-3 * float(np.ptp(vol))
    nv = B.encode_bounded(vol, e, 1e-3, model_ratios=(4.0,), require_model=True, block=8,
                          steps=20, arch="fvsrn", seed=0, quiet=True, device="cpu")
    dec = nv.decode()
    rng = np.random.default_rng(5)
    for _ in range(2):      # cold (blocks decoded by the query), then from the cache
        c = rng.integers(0, 17, (300, 3))
        got = nv.query(c.astype(np.float64)).astype(np.float64)
        np.testing.assert_array_equal(got, dec[tuple(c.T)])
        assert np.abs(got - vol[tuple(c.T)]).max() <= e
    # Between centres, sparse (the model at the corners) and dense (corrections kept per
    # block) lookups agree to float rounding.
    p = rng.uniform(0, 1, (50, 3)) * (np.array(vol.shape) - 1)
    sparse = nv.query(p)
    nv.query(rng.uniform(0, 1, (20000, 3)) * (np.array(vol.shape) - 1))
    corr = nv._correction_stream()
    assert corr._has_corr.all()
    np.testing.assert_allclose(nv.query(p), sparse, rtol=1e-6, atol=1e-6 * float(np.ptp(vol)))


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 16, 16, 16), (2, 13, 4, 6), (1, 1, 2, 3)])
def test_sliced_predictor_and_context_match_the_gather_rule(shape):
    """The decoder's slice-based kernels compute the same bits as interp.py's gathers (the
    rule spec/correction.md §2.4 states)."""
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) * 3
    q = rng.integers(-3, 4, size=shape)
    for axis, h, sel in interp.prediction_passes(shape):
        view, qview = x[sel], q[sel]
        got, psel = P._predict(view, axis, h, True)
        want, wsel = interp._predict(view, axis, h)
        assert psel == wsel and np.array_equal(got, want)
        ax = view.ndim - 3 + axis
        n = view.shape[ax]
        p = np.arange(h, n, 2 * h)
        shp = [1] * view.ndim
        shp[ax] = p.size
        inside = (p + h < n).reshape(shp)
        left = np.take(view, p - h, axis=ax)
        right = np.take(view, np.clip(p + h, 0, n - 1), axis=ax)
        lin, _ = P._predict(view, axis, h, False)
        assert np.array_equal(lin, np.where(inside, (left + right) / 2.0, left))
        qa = np.abs(np.take(qview, p - h, axis=ax))
        qb = np.where(inside, np.abs(np.take(qview, np.clip(p + h, 0, n - 1), axis=ax)), qa)
        dist = np.where(inside, np.abs(left - right), 0.0) / 0.7
        level = 0 if h == 1 else 1 if h == 2 else 2
        cls = ((level * 3 + np.minimum(2, qa + qb)) * 4
               + (dist >= 0.5) + (dist >= 2.0) + (dist >= 8.0))
        assert np.array_equal(P.context(view, qview, axis, h, 0.7), cls)


def test_blocks_decoded_side_by_side_equal_blocks_decoded_alone():
    from neurvol.compress import correction as C
    vol = _volume((24, 21, 19), seed=6)
    rng = np.random.default_rng(6)
    # A base close to the data in the first half, useless in the second: base-coded and
    # data-coded blocks in the same batches.
    noise = np.where(np.arange(24)[:, None, None] < 12, 0.3, 300.0)
    base = (vol + noise * rng.normal(0, 1, vol.shape)).astype(np.float32).astype(np.float64)
    e = 1e-2 * float(np.ptp(vol))
    data, stats = C.encode_correction(vol, e, base, block=8,
                                      base_tolerance=float(np.abs(base).max()) * 2.0 ** -17)
    stream = C.CorrectionStream(data, vol.shape, vol.dtype)
    assert len(stream.modes()) >= 2           # several modes side by side in a batch
    whole = stream.decode(base)
    for i in range(stream.nblocks):
        sl = C.block_slices(vol.shape, 8, i)
        assert np.array_equal(C.CorrectionStream(data, vol.shape, vol.dtype)
                              .decode_block(i, base[sl]), whole[sl])
