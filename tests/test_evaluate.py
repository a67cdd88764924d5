"""neurvol.fit.evaluate.model_sse: a model's error as the reader evaluates it."""
import numpy as np
import pytest
import torch

from neurvol.fit.evaluate import model_sse


class _Linear(torch.nn.Module):
    """value = 0.5 + 0.2 z - 0.1 y + 0.3 x (normalized coordinates)."""

    def forward(self, p):
        return 0.5 + p @ torch.tensor([0.2, -0.1, 0.3], dtype=p.dtype)


def _expected(target, stride, valid=None):
    d, h, w = target.shape
    z, y, x = np.meshgrid(*(np.arange(n)[::stride] * 2.0 / (n - 1) - 1.0 for n in (d, h, w)),
                          indexing="ij")
    pred = np.clip(0.5 + 0.2 * z - 0.1 * y + 0.3 * x, 0, 1)
    err = pred - target[::stride, ::stride, ::stride]
    if valid is not None:
        err = err[valid[::stride, ::stride, ::stride]]
    return float((err.astype(np.float64) ** 2).sum()), err.size


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_model_sse_on_every_stride_th_voxel(stride):
    rng = np.random.default_rng(0)
    target = rng.random((9, 10, 11), dtype=np.float32)
    valid = rng.random(target.shape) > 0.3
    for v in (None, valid):
        sse, n = model_sse(_Linear(), target, valid=v, stride=stride)
        want, count = _expected(target, stride, v)
        assert n == count
        assert sse == pytest.approx(want, rel=1e-5)


def test_model_sse_refuses_a_stride_below_one():
    with pytest.raises(ValueError):
        model_sse(_Linear(), np.zeros((3, 3, 3), np.float32), stride=0)
