"""Training samplers: error-driven importance sampling keeps the loss an unbiased MSE."""
import numpy as np
import pytest
import torch

from neurvol.fit import FitSettings, fit
from neurvol.fit.sampling import ErrorSampler, VoxelSampler
from neurvol.models import get_architecture


def _volume(shape=(13, 10, 19), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g)


def test_blocks_and_voxels_agree_on_uneven_shapes():
    vol = _volume()
    s = ErrorSampler(vol, torch.Generator().manual_seed(1), block=4)
    assert s.nblocks == (4, 3, 5)
    assert float(s.count.sum()) == vol.numel()
    blocks = torch.arange(s.count.numel()).repeat(50)
    zyx = s._voxel_in_block(blocks)
    assert bool((zyx >= 0).all()) and bool((zyx < torch.tensor(vol.shape)).all())
    assert torch.equal(s._block_of(zyx), blocks)
    # the edge blocks are drawn only inside the volume, and fully
    seen = torch.zeros(vol.shape, dtype=torch.bool)
    zyx = s._voxel_in_block(torch.arange(s.count.numel()).repeat(4000))
    seen[zyx[:, 0], zyx[:, 1], zyx[:, 2]] = True
    assert bool(seen.all())


def test_weighted_mean_is_unbiased_under_a_skewed_error_map():
    vol = _volume((16, 16, 16))
    s = ErrorSampler(vol, torch.Generator().manual_seed(2), block=4, uniform=0.25)
    # Pretend one corner block errs a lot: sampling concentrates there.
    s.err_sum.fill_(1e-4)
    s.err_sum[0] = 10.0
    f = vol.reshape(-1) ** 2
    est = []
    for _ in range(200):
        coords, values, weights, blocks = s.sample_weighted(4096)
        assert torch.equal(values, vol.reshape(-1)[_lin(coords, vol.shape)])
        est.append(float((weights * values ** 2).mean()))
    frac0 = float((blocks == 0).float().mean())
    assert frac0 > 0.3                      # the hot block gets far more than 1/64
    assert np.mean(est) == pytest.approx(float(f.mean()), rel=0.01)


def test_head_of_the_batch_is_uniform():
    vol = _volume((16, 16, 16))
    s = ErrorSampler(vol, torch.Generator().manual_seed(3), block=4, uniform=0.5)
    s.err_sum.fill_(1e-6)
    s.err_sum[0] = 1.0
    _, _, _, blocks = s.sample_weighted(8192)
    head, tail = blocks[:4096], blocks[4096:]
    assert float((head == 0).float().mean()) < 0.05
    assert float((tail == 0).float().mean()) > 0.5


def test_record_error_moves_the_running_mean():
    vol = _volume((8, 8, 8))
    s = ErrorSampler(vol, torch.Generator().manual_seed(4), block=4, decay=0.5)
    before = s._block_probabilities().clone()
    for _ in range(20):
        s.record_error(torch.tensor([3, 3, 3]), torch.tensor([5.0, 5.0, 5.0]))
    after = s._block_probabilities()
    assert float(after[3]) > float(before[3])
    assert float(after.sum()) == pytest.approx(1.0)


def test_fit_with_error_sampling_learns():
    torch.manual_seed(0)
    z, y, x = torch.meshgrid(*[torch.linspace(0, 1, 16)] * 3, indexing="ij")
    vol = (torch.sin(6 * x) * torch.cos(4 * y) * z + 1) / 2
    arch = get_architecture("fvsrn")
    losses = {}
    for sampling in ("uniform", "error"):
        model = arch.build(arch.solve((16, 16, 16), 3000, {}))
        res = fit(model, vol, FitSettings(steps=150, batch=2048, sampling=sampling), seed=0)
        with torch.no_grad():
            coords = VoxelSampler(vol, torch.Generator()).coords_of(torch.arange(vol.numel()))
            losses[sampling] = float(((model(coords) - vol.reshape(-1)) ** 2).mean())
        assert res.steps == 150
    assert losses["error"] < 0.01
    assert losses["error"] < 2 * losses["uniform"]


def test_sampling_setting_is_validated():
    with pytest.raises(ValueError, match="sampling"):
        FitSettings(sampling="importance")
    with pytest.raises(ValueError, match="grad_lambda"):
        FitSettings(sampling="error", grad_lambda=0.1)


def _lin(coords, shape):
    d, h, w = shape
    scale = (torch.tensor(shape, dtype=torch.float32) - 1) / 2
    zyx = torch.round((coords + 1) * scale).long()
    return (zyx[:, 0] * h + zyx[:, 1]) * w + zyx[:, 2]


def test_a_fit_run_in_stages_equals_one_run():
    """encode(codec={"rate": "auto"}) pauses fits part way; the model must not notice."""
    from neurvol.fit import Fitting
    from neurvol.fit.rate import GridRate

    vol = _volume((12, 12, 12))
    settings = FitSettings(steps=30, batch=256, sampling="error")
    arch = get_architecture("amgsrn")

    def model_and_rate():
        torch.manual_seed(0)
        m = arch.build(arch.solve(tuple(vol.shape), 3000, {}))
        grids = [p for n, p in m.named_parameters() if n in m.grid_tensors]
        return m, GridRate(grids, 12.0, settings.steps)

    one, reg = model_and_rate()
    whole = fit(one, vol, settings, seed=3, regularizer=reg)
    two, reg = model_and_rate()
    staged = Fitting(two, vol, settings, seed=3, regularizer=reg)
    for until in (7, 7, 20, None):
        staged.run(until)
    result = staged.finish()
    assert result.steps == whole.steps == 30 and staged.done
    assert result.final_loss == whole.final_loss
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        assert torch.equal(a, b), name
    # a stop callback ends it for good
    three, _ = model_and_rate()
    stopped = Fitting(three, vol, settings, seed=3)
    stopped.run(stop=lambda step, loss: step >= 11)
    stopped.run()
    assert stopped.finish().steps == 11
