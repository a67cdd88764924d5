"""Peak memory of a brick job (issue 26): the coders' batched and in-place forms give the
bytes and values of their whole-array forms; copies of an amgsrn model leave its
evaluation caches behind; a fit drops its optimizer state, sampler and rate buffers when
it pauses or finishes, and a brick job frees what it no longer needs."""
from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest
import torch

from neurvol.compress import interp as interp_mod
from neurvol.compress.coders import rans
from neurvol.compress.interp import interp_decode, interp_encode
from neurvol.compress.lorenzo import unzigzag, zigzag
from neurvol.compress.methods.interp import Interp
from neurvol.compress.methods.grid import code_counts
from neurvol.fit import FitSettings, Fitting
from neurvol.fit.rate import GridRate
from neurvol.models import get_architecture


def _grids(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(np.float32)
    x.reshape(-1)[::5] = 0.0
    x.reshape(-1)[1::11] = -0.0
    return x


@pytest.mark.parametrize("shape", [(8, 1, 9, 10, 11), (3, 2, 5, 1, 7), (4, 4, 4), (33, 1, 3, 3, 3)])
@pytest.mark.parametrize("step", [1e-3, 0.3])
def test_interp_batches_give_the_whole_tensor_codes(shape, step, monkeypatch):
    x = _grids(shape, sum(shape))
    whole_codes, whole_rec = interp_encode(x.astype(np.float64), step)   # one batch
    assert whole_codes.size == x.size
    for batch in (1, 50, 1 << 30):
        monkeypatch.setattr(interp_mod, "BATCH_VALUES", batch)
        codes, rec = interp_encode(x, step)          # float32 read as it is
        assert np.array_equal(codes, whole_codes)
        assert rec.tobytes() == whole_rec.tobytes()
        rec32 = interp_encode(x, step, dtype=np.float32)[1]
        assert rec32.tobytes() == whole_rec.astype(np.float32).tobytes()
        # The decoder gives the encoder's reconstruction, from codes or from the stream's
        # zigzagged symbols (any width).
        assert interp_decode(whole_codes, shape, step).tobytes() == whole_rec.tobytes()
        symbols = zigzag(whole_codes)
        for width in (np.uint16, np.uint32, np.uint64):
            if int(symbols.max()) <= np.iinfo(width).max:
                got = Interp.reconstruct_symbols(symbols.astype(width), shape, step)
                assert got.tobytes() == whole_rec.astype(np.float32).tobytes()


def test_interp_reconstruction_has_no_negative_zero_codes():
    # A residual that rounds to -0.0 is the integer code 0: the reconstruction is the
    # decoder's ``prediction + 0 * step``, never ``prediction + (-0.0)``.
    x = np.full((1, 1, 2, 2, 2), -1e-9)
    codes, rec = interp_encode(x, 1.0)
    assert not codes.any()
    assert not np.signbit(rec).any()
    assert rec.tobytes() == interp_decode(codes, x.shape, 1.0).tobytes()


def test_interp_coding_keeps_temporaries_small():
    # Codes (int64, 2x the float32 input) + the float32 reconstruction (1x) + one batch of
    # float64 work: the whole-tensor float64 input, reconstruction and per-pass
    # temporaries it replaced peaked at 9x.
    x = _grids((8, 1, 48, 48, 48), 1)
    tracemalloc.start()
    try:
        interp_encode(x, 0.01, dtype=np.float32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * x.nbytes


def test_zigzag_in_place_and_in_batches():
    rng = np.random.default_rng(0)
    r = rng.integers(-2 ** 40, 2 ** 40, size=(1 << 18) * 2 + 7)
    expected = ((r << 1) ^ (r >> 63)).astype(np.uint64)
    assert np.array_equal(zigzag(r), expected)
    work = r.copy()
    out = zigzag(work, overwrite=True)
    assert np.shares_memory(out, work) and np.array_equal(out, expected)
    assert np.array_equal(unzigzag(out), r)
    small = np.array([[0, -1], [1, -2]])
    assert zigzag(small).shape == (2, 2) and np.array_equal(small, [[0, -1], [1, -2]])


def test_histograms_in_batches_equal_numpys():
    rng = np.random.default_rng(1)
    for n in (1, 300, (1 << 18) + 5):
        codes = np.round(rng.laplace(size=n) * 20).astype(np.int64)
        assert np.array_equal(code_counts(codes), np.unique(codes, return_counts=True)[1])
        sym = zigzag(codes)
        assert np.array_equal(rans._histogram(sym, int(sym.max()) + 2),
                              np.bincount(sym.astype(np.int64), minlength=int(sym.max()) + 2))
    wide = np.array([0, 10 ** 12, 5, 5], dtype=np.int64)        # sparse: numpy's unique
    assert np.array_equal(code_counts(wide), [1, 2, 1])


def _amgsrn(seed=0):
    arch = get_architecture("amgsrn")
    torch.manual_seed(seed)
    return arch.build(arch.solve((12, 12, 12), 3000, {}))


def test_amgsrn_copies_leave_the_evaluation_caches_behind():
    model = _amgsrn().eval()
    x = torch.rand(500, 3) * 2 - 1
    with torch.no_grad():
        y = model(x)
    assert hasattr(model, "_table_cache")
    dup = copy.deepcopy(model)
    assert not hasattr(dup, "_table_cache") and hasattr(model, "_table_cache")
    assert dup.grids.data_ptr() != model.grids.data_ptr()
    with torch.no_grad():
        assert torch.equal(dup(x), y)
    assert [n for n, _ in dup.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert [p.requires_grad for p in dup.parameters()] == [
        p.requires_grad for p in model.parameters()]


def test_a_paused_or_finished_fit_holds_no_work_buffers():
    vol = torch.rand(12, 12, 12)
    settings = FitSettings(steps=20, batch=256, sampling="error")
    model = _amgsrn()
    grids = [p for n, p in model.named_parameters() if n in model.grid_tensors]
    rate = GridRate(grids, 12.0, settings.steps)
    fitting = Fitting(model, vol, settings, seed=1, regularizer=rate)
    fitting.run(15)                  # the penalty is on from 30 % of the steps
    assert all(not hasattr(op, "out") and not hasattr(op, "grad") for op in rate.ops)
    fitting.run()
    fitting.finish()
    assert fitting.opt is None and fitting.sched is None and fitting.sampler is None
    assert all(not hasattr(op, "out") for op in rate.ops)
