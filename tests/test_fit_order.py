"""The order brick jobs go to the executor (neurvol.encoding.bricked.fit_order): largest
and smallest budget shares alternating, every job once; the file does not depend on it."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

import neurvol
from neurvol.encoding import bricked
from neurvol.encoding.bricked import fit_order


def _jobs(budgets):
    return [SimpleNamespace(brick=b, budget=n) for b, n in enumerate(budgets)]


def test_largest_and_smallest_alternate():
    order = fit_order(_jobs([370, 524, 900, 524, 100, 741]))
    assert [j.brick for j in order] == [2, 4, 5, 0, 1, 3]   # ties: brick order
    assert fit_order([]) == []
    assert [j.brick for j in fit_order(_jobs([5]))] == [0]


def test_the_file_does_not_depend_on_the_fit_order(monkeypatch):
    z, y, x = np.meshgrid(*[np.linspace(0, 1, 24)] * 3, indexing="ij")
    vol = (np.sin(7 * x) * np.cos(4 * y) + z * x).astype(np.float32)
    kw = dict(ratio=8, brick=12, steps=12, arch="fvsrn", quiet=True, seed=2)
    first = neurvol.encode(vol, **kw)
    monkeypatch.setattr(bricked, "fit_order", lambda jobs: list(reversed(jobs)))
    second = neurvol.encode(vol, **kw)
    assert first.to_bytes() == second.to_bytes()
