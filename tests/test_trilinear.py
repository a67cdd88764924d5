"""The 2-D atlas trilinear lookup equals torch's 3-D grid_sample, values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from neurvol.models.amgsrn import AMGSRN, AMGSRNConfig
from neurvol.models.trilinear import trilinear_zeros


@pytest.mark.parametrize("shape", [(3, 2, 5, 7, 9), (2, 1, 2, 2, 2), (1, 3, 9, 4, 6)])
def test_trilinear_zeros_matches_grid_sample(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    grids = torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_(True)
    # Points inside, in the one-cell fade band, and far outside on every axis.
    local = (torch.rand(shape[0], 3000, 3, dtype=torch.float64, generator=gen) * 4 - 2)
    local.requires_grad_(True)
    ref = F.grid_sample(grids, local.view(shape[0], 1, 1, -1, 3), padding_mode="zeros",
                        align_corners=True).view(shape[0], shape[1], -1)
    got = trilinear_zeros(grids, local)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    w = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    g_ref = torch.autograd.grad((ref * w).sum(), [grids, local])
    g_got = torch.autograd.grad((got * w).sum(), [grids, local])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def _amgsrn(seed: int) -> AMGSRN:
    torch.manual_seed(seed)
    model = AMGSRN(AMGSRNConfig(grids=4, grid=(6, 7, 8), channels=2, width=16))
    with torch.no_grad():  # trained-looking values; transforms stay near identity so the
        model.grids.add_(0.2 * torch.randn_like(model.grids))  # coverage (a divisor) stays
        for p in model.mlp.parameters():                        # away from its floor
            p.add_(0.2 * torch.randn_like(p))
    return model


def test_amgsrn_evaluation_path_matches_training_path():
    model = _amgsrn(0)
    x = torch.rand(5000, 3) * 2 - 1
    trained = model(x).detach()            # autograd path (forward)
    with torch.inference_mode():
        evaluated = model(x)               # no-grad path (_evaluate)
    torch.testing.assert_close(evaluated, trained, rtol=0, atol=1e-5)


def test_amgsrn_evaluation_sees_grid_changes():
    model = _amgsrn(1)
    x = torch.rand(100, 3) * 2 - 1
    with torch.no_grad():
        before = model(x).clone()
        model.grids.add_(0.5)              # in place: the cached atlas must be rebuilt
        after = model(x)
    assert (after - before).abs().min() > 0.1
    with torch.enable_grad():
        torch.testing.assert_close(after, model(x).detach(), rtol=0, atol=1e-5)


def _pad_and_cat_atlas(grids):
    """slice_atlas as first written (a padded copy, concatenated halves): the reference
    the in-place atlas must match bit for bit, values and gradients."""
    m, c, d, h, w = grids.shape
    padded = F.pad(grids, (0, 0, 0, 1, 1, 1))
    return torch.cat([padded[:, :, :-1], padded[:, :, 1:]], 1).reshape(
        m, 2 * c, (d + 1) * (h + 1), w)


@pytest.mark.parametrize("shape", [(8, 1, 9, 7, 5), (2, 3, 1, 4, 6), (1, 2, 5, 1, 3)])
def test_slice_atlas_gives_the_pad_and_cat_bits(shape):
    from neurvol.models.trilinear import slice_atlas

    gen = torch.Generator().manual_seed(len(shape) + sum(shape))
    base = torch.randn(*shape, generator=gen)
    base.view(-1)[::7] = -0.0            # signed zeros pass through unchanged
    outs, grads = [], []
    for build in (slice_atlas, _pad_and_cat_atlas):
        grids = base.clone().requires_grad_(True)
        atlas = build(grids)
        # A gradient through grid_sample (as the fit's) plus an elementwise one.
        pts = (torch.rand(shape[0], 1, 500, 2, generator=torch.Generator().manual_seed(1))
               * 2.2 - 1.1)
        w = torch.randn(atlas.shape, generator=torch.Generator().manual_seed(2))
        loss = F.grid_sample(atlas, pts, align_corners=True).square().sum() + (atlas * w).sum()
        (g,) = torch.autograd.grad(loss, grids)
        outs.append(atlas.detach())
        grads.append(g)
    assert outs[0].shape == outs[1].shape and torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0].signbit(), outs[1].signbit())
    assert torch.equal(grads[0], grads[1])
