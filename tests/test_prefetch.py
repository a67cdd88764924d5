"""The next batch drawn beside the step (neurvol.fit.prefetch): the same batches as a
sequential fit, so the same model and the same file."""
from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest
import torch

import neurvol
from neurvol.fit import trainer
from neurvol.fit.prefetch import Prefetch
from neurvol.fit.trainer import FitSettings, Fitting
from neurvol.models import get_architecture


def test_prefetch_hands_out_the_draws_in_order():
    counter = itertools.count()
    threads = []

    def draw():
        threads.append(threading.current_thread().name)
        return next(counter)

    p = Prefetch(draw)
    assert p.take() == 0                  # nothing started: drawn now, in the caller
    p.ahead()
    p.ahead()                             # one draw ahead at most
    assert p.take() == 1 and p.take() == 2
    p.ahead()
    p.close()                             # a pending draw is waited for, then dropped
    assert next(counter) == 4
    assert any(t.startswith("neurvol-sample") for t in threads)

    off = Prefetch(lambda: next(counter), enabled=False)
    off.ahead()                           # disabled: nothing drawn ahead
    assert off.take() == 5
    off.close()


def _volume(n=20):
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    return torch.from_numpy(
        (0.5 + 0.4 * np.sin(5 * x) * np.cos(3 * y) * np.exp(-z * z)).astype(np.float32))


def _fit(arch, options, settings, volume, pauses=(), valid=None):
    architecture = get_architecture(arch)
    config = architecture.solver(tuple(volume.shape), 3000, options)
    model = architecture.seeded_build(config, 3)
    fitting = Fitting(model, volume, settings, seed=5, valid=valid)
    for until in pauses:
        fitting.run(until)
    fitting.run()
    fitting.finish()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


CASES = {
    "amgsrn, error sampling": ("amgsrn", {"grids": 4}, FitSettings(steps=24, batch=512,
                                                                  sampling="error")),
    "fvsrn, uniform": ("fvsrn", {}, FitSettings(steps=24, batch=512)),
    "neurcomp, gradient loss": ("neurcomp", {}, FitSettings(steps=12, batch=256,
                                                           grad_lambda=0.1)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_prefetched_fit_is_the_sequential_fit(case, monkeypatch):
    """Bit for bit, also paused and resumed part way (as the rate pilot and side fits do)
    and on a masked volume's valid voxels."""
    arch, options, settings = CASES[case]
    volume = _volume()
    valid = torch.ones(volume.shape, dtype=torch.bool)
    valid[:4] = False
    monkeypatch.setattr(trainer, "PREFETCH", False)
    plain = _fit(arch, options, settings, volume)
    plain_masked = _fit(arch, options, settings, volume, valid=valid)
    monkeypatch.setattr(trainer, "PREFETCH", True)
    for got in (_fit(arch, options, settings, volume),
                _fit(arch, options, settings, volume, pauses=(1, 7, 8))):
        assert got.keys() == plain.keys()
        for k in plain:
            assert torch.equal(got[k], plain[k]), k
    masked = _fit(arch, options, settings, volume, valid=valid)
    for k in plain_masked:
        assert torch.equal(masked[k], plain_masked[k]), k


def test_the_default_encode_writes_the_same_bytes(monkeypatch):
    """The whole default encode (rate pilot, side fit, fine-tune) with and without it."""
    vol = (_volume(24).numpy() * 200).astype(np.uint8)
    monkeypatch.setattr(trainer, "PREFETCH", False)
    kw = dict(ratio=20, steps=40, quiet=True, codec={"hybrid": False})
    plain = neurvol.encode(vol, **kw).to_bytes()
    monkeypatch.setattr(trainer, "PREFETCH", True)
    assert neurvol.encode(vol, **kw).to_bytes() == plain


def test_brick_fits_draw_ahead_only_with_the_machine_to_themselves(monkeypatch):
    """One local worker: its fits draw ahead (a core is idle beside them); several
    workers or an executor: they do not (the draw would compete with the other fits)."""
    from neurvol.encoding import bricked

    seen = []

    class Stop(Exception):
        pass

    def record(jobs, *args, **kwargs):
        seen.append({j.prefetch for j in jobs})
        raise Stop

    monkeypatch.setattr(bricked, "run_jobs", record)
    vol = _volume(48).numpy()
    for workers in (1, 2):
        with pytest.raises(Stop):
            neurvol.encode(vol, ratio=2, brick=24, steps=10, quiet=True, workers=workers)
    assert seen == [{True}, {False}]
