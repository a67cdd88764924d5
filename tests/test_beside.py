"""Work beside a single model's fit (neurvol.encoding.beside): the side thread, the default
candidate's fit during the rate pilot, and files equal to a sequential encode's."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import neurvol
from neurvol.encoding import beside, pilot
from neurvol.encoding.beside import SideFit, SideWork
from neurvol.encoding.plan import codec_settings, fit_settings_for, normalized_tensor
from neurvol.encoding.single import advance, start_fit
from neurvol.ensemble.job import torch_threads
from neurvol.models import get_architecture


@pytest.fixture
def two_threads():
    """Torch on two threads in this test's thread (the side thread needs a second one)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_side_work_runs_on_its_own_thread_or_in_the_caller(two_threads):
    with SideWork(enabled=True) as side:
        assert side.enabled and side.fit_threads() == beside.SIDE_FIT_THREADS
        where = side.submit(lambda: threading.current_thread().name).result()
        assert where.startswith("neurvol-side")
        with pytest.raises(ZeroDivisionError):
            side.submit(lambda: 1 / 0).result()
    off = SideWork(enabled=False)
    assert not off.enabled and off.fit_threads() == 2
    assert off.submit(lambda: threading.current_thread().name).result() == \
        threading.current_thread().name
    with pytest.raises(ZeroDivisionError):
        off.submit(lambda: 1 / 0).result()
    torch.set_num_threads(1)
    assert not SideWork(enabled=True).enabled     # one thread: nothing to put beside


def _start(volume: np.ndarray, steps: int):
    arch = get_architecture("amgsrn")
    config = arch.config_cls(grids=2, grid=(6, 6, 6), channels=1, width=8, hidden_layers=1)
    data = normalized_tensor(volume, float(volume.min()), float(volume.max()))
    settings = fit_settings_for(arch, {"batch": 512}, steps)
    return lambda: start_fit(arch, config, settings, codec_settings(None), data, 3,
                             torch.device("cpu"))


def _state(run):
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def test_a_side_fit_taken_over_ends_as_one_uninterrupted_fit(small_volume, monkeypatch,
                                                             two_threads):
    monkeypatch.setattr(beside, "SIDE_FIT_CHUNK", 7)
    start = _start(small_volume, 90)
    with torch_threads(beside.SIDE_FIT_THREADS):     # the encode's fits' thread count
        whole = start()
        advance(whole)
    started, proceed = threading.Event(), threading.Event()

    def start_then_wait():
        run = start()
        advance(run, 20)
        started.set()
        proceed.wait(10)        # the pilot decides while the side fit is part way
        return run

    with SideWork(enabled=True) as side:
        fit = SideFit(side, start_then_wait)
        assert started.wait(10)
        fit.drop()
        proceed.set()
        run = fit.take()
        assert run.fitting.step == 20
        with torch_threads(side.fit_threads()):
            advance(run)
    assert run.fitting.step == 90
    for name, value in _state(whole).items():
        assert torch.equal(value, _state(run)[name]), name


def test_a_side_fit_dropped_stops_and_one_never_started_is_built_when_taken(
        small_volume, two_threads):
    start = _start(small_volume, 10_000)
    with SideWork(enabled=True) as side:
        fit = SideFit(side, start)
        fit.drop()
    # Dropped: the side thread stopped long before the fit's 10,000 steps.
    assert fit._future.result() is None or fit._future.result().fitting.step < 10_000
    # Taken with no side thread: built in the caller, no step run.
    assert SideFit(SideWork(enabled=False), start).take().fitting.step == 0


@pytest.mark.parametrize("rule", ["keep", "reject"])
def test_an_encode_with_work_beside_its_fit_writes_the_sequential_file(
        small_volume, monkeypatch, two_threads, rule):
    """The default candidate fitted beside the pilot and the predictor made beside the fit
    leave the bytes as a sequential encode (no side thread, the same thread counts)
    writes them."""
    if rule == "keep":
        monkeypatch.setattr(pilot, "RATE_CODING_LOSS_DB", 1000.0)
    else:
        monkeypatch.setattr(pilot, "RATE_CODING_LOSS_DB", -1000.0)
    monkeypatch.setattr(beside, "SIDE_FIT_CHUNK", 5)
    kw = dict(ratio=8, steps=60, quiet=True, seed=0, device="cpu")
    with_side = neurvol.encode(small_volume, **kw).to_bytes()
    enabled_init = SideWork.__init__
    monkeypatch.setattr(SideWork, "__init__", lambda self, enabled: enabled_init(self, False))
    monkeypatch.setattr(SideWork, "fit_threads", lambda self: beside.SIDE_FIT_THREADS)
    assert neurvol.encode(small_volume, **kw).to_bytes() == with_side

