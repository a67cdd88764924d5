"""The compiled correction decoder (neurvol/compress/correction/kernels.py) against the
numpy decoder: the same values bit for bit on encoder streams of every mode, kernel,
level setting, axis order and block shape, on the golden files, and the same refusal of
damaged streams (a NeurvolFormatError, never a crash)."""
from __future__ import annotations

import os

import numpy as np
import pytest

import neurvol
from neurvol.compress import correction as C
from neurvol.compress.correction import kernels
from neurvol.compress.correction.stream import CorrectionStream
from neurvol.errors import NeurvolFormatError

pytestmark = pytest.mark.skipif(not kernels.available(),
                                reason="numba is not installed (pip install 'neurvol[fast]')")

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _numpy_only(monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: False)


def _both(stream: bytes, shape, dtype, monkeypatch, ids=None):
    """The decoded blocks (``r`` and modes per group) by the compiled and the numpy path."""
    def run():
        s = CorrectionStream(stream, shape, dtype)
        want = range(s.nblocks) if ids is None else ids
        return [(d.ids, d.modes, d.r, d.exceptions) for d in s.decode_blocks(want, 2)]
    compiled = run()
    with monkeypatch.context() as m:
        _numpy_only(m)
        plain = run()
    return compiled, plain


def _assert_same(compiled, plain):
    assert len(compiled) == len(plain)
    for (ia, ma, ra, ea), (ib, mb, rb, eb) in zip(compiled, plain):
        assert ia == ib
        np.testing.assert_array_equal(ma, mb)
        # Bit for bit, signed zeros included.
        assert ra.tobytes() == rb.tobytes()
        for (pa, va), (pb, vb) in zip(ea, eb):
            np.testing.assert_array_equal(pa, pb)
            np.testing.assert_array_equal(va, vb)


def _field(shape, seed, noise=0.05):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return np.sin(5 * x) * np.cos(4 * y) + z + rng.normal(0, noise, x.shape), rng


@pytest.mark.parametrize("dtype,with_base,block,levels,order,modes", [
    ("uint8", False, 8, "size", None, None),
    ("float32", True, 8, (1.5, 4.0), 3, None),
    ("int16", True, 16, (1.0, 1.0), 5, None),
    ("float64", False, 16, (2.0, 8.0), 1, (1,)),           # the linear kernel only
    ("float32", True, 4, "size", 0, (4,)),                # base mode only
    ("float32", True, 7, (3.0, 8.0), 2, (2, 3)),          # residual modes, odd block edge
])
def test_compiled_decoder_matches_numpy(dtype, with_base, block, levels, order, modes,
                                        monkeypatch):
    f, rng = _field((21, 17, 13), seed=block)
    if np.dtype(dtype).kind in "iu":
        f = np.rint((f - f.min()) / np.ptp(f) * 200)
    vol = f.astype(dtype)
    e = 0.01 * float(np.ptp(vol.astype(np.float64)))
    base = vol.astype(np.float64) + rng.normal(0, 2 * e, vol.shape) if with_base else None
    # Spikes: large codes, and for floats codes beyond the tables' alphabet (escapes).
    vol[3, 4, 5] = vol.max() + (1e5 if vol.dtype.kind == "f" else 50) * e
    vol[-1, -2, -3] = vol.min()
    kw = {} if modes is None else {"modes": modes}
    stream, _ = C.encode_correction(vol, e, base, block=block, levels=levels, order=order, **kw)
    compiled, plain = _both(stream, vol.shape, vol.dtype, monkeypatch)
    _assert_same(compiled, plain)
    got = C.decode_correction(stream, vol.shape, vol.dtype, base)
    assert np.abs(got.astype(np.float64) - vol.astype(np.float64)).max() <= e


def test_compiled_decoder_matches_numpy_on_a_subset_of_blocks(monkeypatch):
    """A query decodes scattered blocks of several shapes side by side."""
    f, _ = _field((40, 33, 29), seed=3, noise=0.2)
    vol = f.astype(np.float32)
    stream, _ = C.encode_correction(vol, 0.02, None, block=8)
    ids = [0, 5, 17, 18, 30, 59, 60, 61, 79]
    compiled, plain = _both(stream, vol.shape, vol.dtype, monkeypatch, ids=ids)
    _assert_same(compiled, plain)


@pytest.mark.parametrize("name", ["bounded_pure_v1.2", "bounded_model_v1.2", "bounded_pure_v1.5",
                                  "bounded_model_v1.5"])
def test_golden_files_decode_the_same_both_ways(name, monkeypatch):
    path = os.path.join(GOLDEN, name + ".nvol")
    with neurvol.open(path) as nv:
        fast = nv.decode()
        stream = nv._reader.read_section("correction")
        shape, dtype = nv.shape, nv.dtype
    compiled, plain = _both(stream, shape, dtype, monkeypatch)
    _assert_same(compiled, plain)
    with monkeypatch.context() as m:
        _numpy_only(m)
        with neurvol.open(path) as nv:
            np.testing.assert_array_equal(fast, nv.decode())


def test_damaged_streams_are_refused_not_crashed(monkeypatch):
    """Flipped bytes in the blocks: both decoders either refuse the stream with a
    NeurvolFormatError or (a flip that keeps the stack valid) agree on the values."""
    f, _ = _field((24, 20, 16), seed=9, noise=0.1)
    vol = f.astype(np.float32)
    stream, _ = C.encode_correction(vol, 0.01, None, block=8)
    rng = np.random.default_rng(0)
    head = len(stream) - sum(CorrectionStream(stream, vol.shape, vol.dtype).block_bytes(i)
                             for i in range(12))
    refused = 0
    for _ in range(150):
        bad = bytearray(stream)
        pos = int(rng.integers(head, len(bad)))
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        outcome = []
        for numpy_only in (False, True):
            with monkeypatch.context() as m:
                if numpy_only:
                    _numpy_only(m)
                try:
                    outcome.append(C.decode_correction(bytes(bad), vol.shape, vol.dtype))
                except NeurvolFormatError:
                    outcome.append(None)
        if outcome[0] is None:
            refused += 1
            continue
        if outcome[1] is not None:
            np.testing.assert_array_equal(outcome[0], outcome[1])
    assert refused > 50          # most flips break a block's stack or its head


def test_cumulative_table_is_the_spec_vector():
    """spec/payload.md §2.3.5's test vector."""
    table = kernels.cumulative(np.array([9, 3, 1, 3, 0]))
    assert table.tolist() == [0, 9437182, 12582910, 13631486, 16777215, 16777216]


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_queries_read_the_same_values_both_ways(dtype, monkeypatch, tmp_path):
    """The reader's cache casts compiled-decoded blocks itself (edge blocks included):
    a query at every voxel centre gives decode()'s values, on either path."""
    from neurvol.encoding import bounded as B
    f, _ = _field((19, 13, 10), seed=5, noise=0.1)
    if dtype == "uint8":
        # Values at both ends of the range: the cast clips what the predictor overshoots.
        f = np.clip(np.rint((f - f.min()) / np.ptp(f) * 300 - 20), 0, 255)
    vol = f.astype(dtype)
    e = 1e-2 * float(np.ptp(vol.astype(np.float64)))
    path = tmp_path / "q.nvol"
    B.encode_bounded(vol, e, 1e-2, model_ratios=(), block=8).save(path)
    centres = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"),
                       axis=-1).reshape(-1, 3).astype(np.float64)
    answers = []
    for numpy_only in (False, True):
        with monkeypatch.context() as m:
            if numpy_only:
                _numpy_only(m)
            with neurvol.open(path) as nv:
                answers.append((nv.query(centres), nv.decode()))
    (qa, da), (qb, db) = answers
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(qa, qb)
    np.testing.assert_array_equal(qa.reshape(vol.shape), da.astype(qa.dtype))
    assert np.abs(da.astype(np.float64) - vol.astype(np.float64)).max() <= e
