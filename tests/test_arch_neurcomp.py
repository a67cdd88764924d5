"""The neurcomp architecture: config and tensor list, the solver, the gradient loss and the published recipe, and an independent
numpy evaluation of spec/arch/neurcomp.md (``_spec_eval``, also used by
tests/test_arch_conformance.py, which holds the checks every architecture shares:
config and tensor-list round trips, file round trips, byte budget, damaged configs)."""

import numpy as np
import pytest
import torch

import neurvol
from neurvol import NeurvolInputError
from neurvol.fit import FitSettings, VoxelSampler, fit
from neurvol.models import get_architecture
from neurvol.models.neurcomp import NeurcompConfig, NeurcompModel, aspect_scale


@pytest.fixture(scope="module")
def nc_nv(arch_nv):
    return arch_nv("neurcomp")


def test_header_config_and_tensor_order(nc_nv, small_volume):
    spec = nc_nv.header["model"]
    cfg = NeurcompConfig.from_dict(spec["config"])
    assert set(spec["config"]) == {"width", "residual_blocks", "omega0", "scale"}
    assert cfg.residual_blocks == 7 and cfg.omega0 == 30.0
    assert cfg.scale == aspect_scale(small_volume.shape) and max(cfg.scale) == 1.0
    names = list(NeurcompModel(cfg).state_dict())
    assert names[:2] == ["first.weight", "first.bias"] and names[-2:] == ["last.weight", "last.bias"]
    assert names[2:6] == [f"blocks.0.linear_{i}.{k}" for i in (1, 2) for k in ("weight", "bias")]


def test_solver_sizes_for_budget():
    arch = get_architecture("neurcomp")
    for n in (500, 9000, 27000, 200000):
        cfg = arch.solve((128, 64, 100), n, {})
        assert cfg.param_count() <= n < NeurcompConfig(width=cfg.width + 1, residual_blocks=7).param_count()
        assert cfg.scale == (1.0, 63 / 127, 99 / 127)
    assert arch.solve((64, 64, 64), 9000, {"layers": 1}).residual_blocks == 0
    with pytest.raises(neurvol.NeurvolBudgetError):
        arch.solve((64, 64, 64), 40, {})
    with pytest.raises(NeurvolInputError):
        arch.solve((64, 64, 64), 9000, {"layers": 0})


# ---------------------------------------------------------------- spec, independently
def _spec_eval(cfg, t, pts):
    """spec/arch/neurcomp.md §3 in numpy float64. t: name -> array; pts (N, 3) z,y,x."""
    w0, nb = cfg["omega0"], cfg["residual_blocks"]
    t = {k: v.astype(np.float64) for k, v in t.items()}
    p = pts * np.asarray(cfg["scale"])
    h = np.sin(w0 * (p @ t["first.weight"].T + t["first.bias"]))
    for i in range(nb):
        a = 1.0 if i == 0 else 0.5
        c = 0.5 if i == nb - 1 else 1.0
        b = f"blocks.{i}."
        s = np.sin(w0 * ((a * h) @ t[b + "linear_1.weight"].T + t[b + "linear_1.bias"]))
        h = c * (h + np.sin(w0 * (s @ t[b + "linear_2.weight"].T + t[b + "linear_2.bias"])))
    return (h @ t["last.weight"].T + t["last.bias"])[:, 0]


@pytest.mark.parametrize("blocks", [0, 1, 3])
def test_spec_evaluation_matches_model(blocks):
    torch.manual_seed(blocks)
    cfg = NeurcompConfig(width=12, residual_blocks=blocks, omega0=30.0, scale=(0.5, 1.0, 0.75))
    model = NeurcompModel(cfg).eval()
    with torch.no_grad():
        model.last.weight.normal_()
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (3000, 3)).astype(np.float32)
    pts[:4] = [[-1, -1, -1], [1, 1, 1], [0, 0, 0], [1, -1, 0.5]]
    tensors = {n: v.detach().numpy() for n, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(torch.from_numpy(pts)).numpy()
    assert ref.std() > 0.1
    np.testing.assert_allclose(_spec_eval(cfg.to_dict(), tensors, pts.astype(np.float64)), ref,
                               rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- gradient loss
def test_finite_difference_gradient():
    z, y, x = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 6), np.linspace(-1, 1, 7), indexing="ij")
    vol = torch.from_numpy((0.3 * z - 0.2 * y + 0.1 * x + 0.5).astype(np.float32))
    s = VoxelSampler(vol, torch.Generator().manual_seed(0))
    lin = torch.arange(vol.numel())
    np.testing.assert_allclose(s.gradient_of(lin).numpy(), np.tile([0.3, -0.2, 0.1], (vol.numel(), 1)),
                               atol=1e-5)  # linear field: exact, faces (one-sided) included
    coords, values, grads = s.sample_with_gradient(50)
    assert coords.shape == (50, 3) and values.shape == (50,) and grads.shape == (50, 3)


def test_grad_lambda_option_reaches_the_trainer_and_not_the_file(small_volume):
    crop = small_volume[:10, :10, :10]
    nv = neurvol.encode(small_volume, ratio=3, arch="neurcomp", steps=2, quiet=True, grad_lambda=0.5, layers=2)
    assert "grad_lambda" not in nv.header["model"]["config"]
    cfg = get_architecture("neurcomp").solve(crop.shape, 2000, {"grad_lambda": 0.5})
    model = NeurcompModel(cfg)
    assert model.fit_overrides == {"grad_lambda": 0.5}
    seen = []
    orig = VoxelSampler.sample_with_gradient

    def spy(self, batch):
        seen.append(batch)
        return orig(self, batch)

    VoxelSampler.sample_with_gradient = spy
    try:
        vol = torch.from_numpy(crop.astype(np.float32) / 255)
        res = fit(model, vol, FitSettings(steps=3, batch=256, lr=1e-3))
    finally:
        VoxelSampler.sample_with_gradient = orig
    assert seen == [256] * 3 and np.isfinite(res.final_loss)
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, ratio=3, arch="neurcomp", steps=1, quiet=True, grad_lambda=-1)


def test_published_recipe_is_reproducible_through_encode(small_volume):
    from neurvol.models.neurcomp import published_fit_settings

    full = published_fit_settings((128, 128, 128))
    # 75 passes of 16,384 points; lr x0.2 every 20 passes.
    assert full["steps"] == 75 * 128 ** 3 // 16384 and full["decay_every"] == 20 * 128 ** 3 // 16384
    assert (full["lr"], full["batch"], full["schedule"], full["decay"]) == (5e-5, 16384, "step", 0.2)
    recipe = dict(published_fit_settings(small_volume.shape), steps=12, decay_every=4)
    nv = neurvol.encode(small_volume, ratio=5, arch="neurcomp", fit_settings=recipe, quiet=True)
    assert nv.info()["fit"]["steps"] == 12


def test_step_schedule_decays_the_learning_rate():
    import torch
    from neurvol.fit import FitSettings, fit
    from neurvol.models import get_architecture

    arch = get_architecture("neurcomp")
    model = arch.build(arch.solve((8, 8, 8), 400, {}))
    from neurvol.models.adam import Adam
    seen = []
    orig = Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    Adam.step = spy       # the fit's optimizer on the CPU (neurvol/models/adam.py)
    try:
        fit(model, torch.rand(8, 8, 8), FitSettings(steps=6, batch=64, lr=1.0, schedule="step",
                                                    decay=0.5, decay_every=2))
    finally:
        Adam.step = orig
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_bad_fit_settings_are_input_errors(small_volume):
    with pytest.raises(neurvol.NeurvolInputError, match="unknown fit setting"):
        neurvol.encode(small_volume, ratio=5, fit_settings={"lrr": 1.0}, quiet=True)
    with pytest.raises(neurvol.NeurvolInputError, match="schedule"):
        neurvol.encode(small_volume, ratio=5, fit_settings={"schedule": "nope"}, quiet=True)
