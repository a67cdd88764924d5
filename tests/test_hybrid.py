"""Hybrid rate allocation of ``encode(ratio=)`` (issue 22): a pure predictor file against
a model at the same budget, the better PSNR kept."""
import dataclasses
import math

import numpy as np
import pytest

import neurvol
from neurvol.encoding import entry, hybrid
from neurvol.errors import NeurvolBudgetError, NeurvolInputError
from neurvol.metrics import max_abs_error, psnr


def _smooth(shape=(20, 22, 24), dtype=np.float32):
    """A smooth field: a pure predictor codes it far better than a 2-step model fits it."""
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    v = 40 * np.sin(3 * x + 2 * y) * np.cos(2 * z) + 10 * x * y
    # Integers get a range of thousands, so that the file at ratio 6 is lossy.
    return (v * (100 if np.dtype(dtype).kind in "iu" else 1)).astype(dtype)


def test_search_bound_fills_the_budget_from_below():
    calls = []

    def file_at(e):
        calls.append(e)
        return b"x" * int(200 + 1e5 / e)        # shrinks as the bound grows

    data, e = hybrid.search_bound(file_at, 100.0, 5000)
    assert data is not None and len(data) <= 5000
    assert len(data) >= 5000 * (1 - hybrid.FILL_TOLERANCE)
    assert len(data) == int(200 + 1e5 / e)
    assert len(calls) <= hybrid.MAX_BOUND_TRIALS
    # Even the largest bound's file is over the budget: nothing.
    data, e = hybrid.search_bound(file_at, 100.0, 150)
    assert data is None and math.isnan(e)


@pytest.mark.parametrize("start", [1e-3, 0.5, 20.0, 99.0, 1e4])
def test_search_bound_from_a_start_fills_the_budget_in_few_trials(start):
    calls = []

    def file_at(e):
        calls.append(e)
        return b"x" * int(200 + 1e5 / e ** 1.5)     # steeper than the assumed slope

    data, e = hybrid.search_bound(file_at, 100.0, 5000, start=start)
    assert data is not None and len(data) <= 5000
    assert len(data) >= 5000 * (1 - hybrid.FILL_TOLERANCE)
    assert len(calls) <= hybrid.MAX_BOUND_TRIALS
    # Nothing fits: a start below the largest bound still says so.
    calls.clear()
    data, e = hybrid.search_bound(file_at, 100.0, 150, start=start)
    assert data is None and math.isnan(e)


def test_start_bound_lands_near_the_budget():
    """The sample-block estimate starts the search within a factor of the bound the
    search ends at (the volume here is one block, so the sample is the volume)."""
    vol = _smooth((48, 48, 48))
    lo, hi = float(vol.min()), float(vol.max())
    budget = vol.nbytes // 40
    order = hybrid.order_for(vol, hybrid.ORDER_TRIAL_BOUND * (hi - lo))
    start = hybrid.start_bound(vol, hi - lo, budget, order, hi - lo)
    from neurvol.compress.correction import encode_correction
    size = len(encode_correction(vol, start, None, levels=(1.0, 1.0), order=order)[0])
    assert budget / 3 < size < budget * 3


def test_search_bound_treats_a_refused_bound_as_too_large_a_file():
    data, e = hybrid.search_bound(lambda e: None if e < 1.0 else b"x" * 10, 100.0, 1000)
    assert data == b"x" * 10 and e >= 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_smooth_volume_gets_the_pure_predictor(dtype, tmp_path):
    vol = _smooth(dtype=dtype)
    ratio = 6
    nv = neurvol.encode(vol, ratio=ratio, steps=2, quiet=True, device="cpu")
    assert nv.nbytes_file <= vol.nbytes // ratio
    info = nv.info()
    assert info["content"] == "predictor" and info["model"] is None
    assert info["budget"]["bytes"] == vol.nbytes // ratio
    bb = nv.byte_breakdown()
    assert bb["weights"] == 0 and bb["correction"] > 0
    assert bb["header"] + bb["constants"] + bb["correction"] == nv.nbytes_file
    dec = nv.decode()
    assert max_abs_error(vol, dec) <= nv.max_error
    assert math.isfinite(nv.fit_psnr)
    assert nv.fit_psnr == pytest.approx(psnr(vol, dec), abs=1e-3)
    cands = nv.hybrid_candidates
    assert cands["predictor"] > cands["model"]
    assert cands["predictor"] == pytest.approx(nv.fit_psnr, abs=1e-3)
    # The choice is in the file: it reads back the same.
    nv.save(tmp_path / "p.nvol")
    with neurvol.open(tmp_path / "p.nvol") as back:
        assert back.info()["content"] == "predictor"
        assert back.fit_psnr == nv.fit_psnr
        np.testing.assert_array_equal(back.decode(), dec)


def test_the_model_is_kept_when_it_is_better(monkeypatch):
    real = entry.predictor_candidate

    def worse(*a, **k):
        return dataclasses.replace(real(*a, **k), psnr=-math.inf)

    monkeypatch.setattr(entry, "predictor_candidate", worse)
    vol = _smooth()
    nv = neurvol.encode(vol, ratio=6, steps=2, quiet=True, device="cpu")
    assert nv.info()["content"] == "model" and nv.max_error is None
    assert nv.byte_breakdown()["weights"] > 0
    assert nv.hybrid_candidates["predictor"] == -math.inf
    assert nv.hybrid_candidates["model"] == nv.fit_psnr


def test_no_model_fits_the_budget_the_predictor_does(monkeypatch):
    def no_model(*a, **k):
        raise NeurvolBudgetError("no model fits")

    monkeypatch.setattr(entry, "_encode_single", no_model)
    vol = _smooth()
    nv = neurvol.encode(vol, ratio=6, quiet=True)
    assert nv.info()["content"] == "predictor"
    assert nv.hybrid_candidates["model"] is None
    # Neither fits: the model's refusal is the error.
    with pytest.raises(NeurvolBudgetError, match="no model fits"):
        neurvol.encode(vol, ratio=vol.nbytes / 100, quiet=True)


def test_hybrid_off_explicit_arch_and_bricks_fit_models():
    vol = _smooth()
    off = neurvol.encode(vol, ratio=6, steps=2, quiet=True, device="cpu",
                         codec={"hybrid": False})
    assert off.info()["content"] == "model" and off.hybrid_candidates is None
    named = neurvol.encode(vol, ratio=6, steps=2, quiet=True, device="cpu", arch="fvsrn")
    assert named.info()["content"] == "model"
    bricked = neurvol.encode(vol, ratio=3, steps=2, quiet=True, device="cpu",
                             bricks=(2, 1, 1))
    assert bricked.brick_count == 2 and bricked.max_error is None
    with pytest.raises(NeurvolInputError, match="hybrid"):
        neurvol.encode(vol, ratio=6, steps=2, quiet=True, codec={"hybrid": "no"})


def test_an_exact_integer_predictor_file_reports_infinite_psnr():
    vol = (_smooth() / 4).astype(np.int8)       # a narrow range: coded exactly at ratio 2
    nv = neurvol.encode(vol, ratio=2, steps=2, quiet=True, device="cpu")
    assert nv.info()["content"] == "predictor"
    np.testing.assert_array_equal(nv.decode(), vol)
    assert nv.fit_psnr == math.inf


def test_psnr_search_can_return_the_predictor():
    vol = _smooth()
    nv = neurvol.encode(vol, psnr=45.0, ratio=6, steps=2, quiet=True, device="cpu")
    assert nv.info()["content"] == "predictor"
    assert psnr(vol, nv.decode()) >= 45.0


def test_masked_volumes_stay_model_only():
    vol = _smooth()
    vol[:3, :4, :5] = np.nan            # a NaN region: stored as a mask, with one model
    nv = neurvol.encode(vol, ratio=6, steps=2, quiet=True, device="cpu")
    assert nv.info()["content"] == "model" and nv.masked
    assert nv.hybrid_candidates is None
