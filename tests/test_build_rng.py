"""Model builds and torch's global RNG (neurvol.models.base.Architecture.build /
seeded_build): a seeded initialisation is the same whatever other threads build meanwhile,
no build moves the global RNG, and fits draw nothing from it. Before, a reader's or a
sizing trial's build on another thread, or a fit restoring the RNG state it had forked,
could land between a build's seeding and its draws: the same encode on a dask thread then
wrote other bytes, now and then."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import neurvol
from neurvol.models import get_architecture


def _fvsrn():
    arch = get_architecture("fvsrn")
    return arch, arch.solve((24, 24, 24), 3000, {})


def _tensors(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_seeded_build_is_its_seeds_whatever_other_threads_build():
    arch, config = _fvsrn()
    reference = arch.seeded_build(config, 7)
    want = _tensors(reference)
    stop = threading.Event()

    def build_meanwhile():
        while not stop.is_set():
            arch.build(config)

    others = [threading.Thread(target=build_meanwhile) for _ in range(2)]
    for t in others:
        t.start()
    try:
        for _ in range(40):
            got = _tensors(arch.seeded_build(config, 7))
            assert all(torch.equal(got[k], want[k]) for k in want)
    finally:
        stop.set()
        for t in others:
            t.join()


def test_builds_leave_the_global_rng_where_it_was():
    arch, config = _fvsrn()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    arch.build(config)
    arch.seeded_build(config, 5)
    assert torch.equal(torch.get_rng_state(), before)


def test_other_seeds_give_other_models():
    arch, config = _fvsrn()
    a = arch.seeded_build(config, 1)
    b = arch.seeded_build(config, 2)
    assert not torch.equal(a.mlp[0].weight, b.mlp[0].weight)


@pytest.mark.parametrize("arch", ["fvsrn", "amgsrn", "neurcomp", "hashgrid"])
def test_encodes_draw_nothing_from_the_global_rng(arch):
    # So that nothing needs to set it: fits, fine-tunes and the pilot's draws come from
    # generators of their own (a fit that set the global state would race other threads).
    vol = neurvol.sample_volume()[::2, ::2, ::2]
    torch.manual_seed(99)
    before = torch.get_rng_state()
    neurvol.encode(vol, ratio=12, arch=arch, steps=12, quiet=True)
    assert torch.equal(torch.get_rng_state(), before)


def test_concurrent_encodes_write_the_same_bytes():
    vol = np.ascontiguousarray(neurvol.sample_volume()[:40, :40, :40])
    kw = dict(ratio=8, arch="fvsrn", steps=12, seed=3, quiet=True, device="cpu")
    want = neurvol.encode(vol, bricks=(2, 2, 2), ghost=2, **kw).to_bytes()
    got = {}

    def encode(k):
        got[k] = neurvol.encode(vol, bricks=(2, 2, 2), ghost=2, **kw).to_bytes()

    threads = [threading.Thread(target=encode, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[k] == want for k in range(3)] == [True] * 3
