"""The amgsrn architecture: config and tensor list, the anchor grid, the solver and the transforms' training hooks, and an independent
numpy evaluation of spec/arch/amgsrn.md (``_spec_eval``, also used by
tests/test_arch_conformance.py, which holds the checks every architecture shares:
config and tensor-list round trips, file round trips, byte budget, damaged configs)."""

import numpy as np
import pytest
import torch

import neurvol
from neurvol.models import get_architecture
from neurvol.models.amgsrn import (AMGSRN, COVERAGE_FLOOR, AMGSRNConfig, TRANSFORM_START,
                                   TRANSFORM_STOP)


@pytest.fixture(scope="module")
def amg_nv(arch_nv):
    return arch_nv("amgsrn")


def test_tensor_order_grids_then_transforms_then_mlp():
    cfg = AMGSRNConfig(grids=5, grid=(4, 6, 7), channels=2, width=16, hidden_layers=3)
    names = list(AMGSRN(cfg).state_dict())
    assert names[:6] == ["grids"] + [f"transforms.{g}" for g in range(5)]
    assert all(not n.startswith("transforms") for n in names[6:])


# ---------------------------------------------------------------- spec, independently
def _spec_eval(cfg, tensors, pts):
    """spec/arch/amgsrn.md §3 in numpy float64. tensors: name -> array; pts (N, 3) z,y,x."""
    m, c = cfg["grids"], cfg["channels"]
    dims = cfg["grid"]
    grids = tensors["grids"].astype(np.float64)
    feats = np.zeros((pts.shape[0], m * c))
    for g in range(m):
        t = tensors[f"transforms.{g}"].astype(np.float64)
        local = pts @ t[:, :3].T + t[:, 3]
        u = [(local[:, r] + 1) / 2 * (dims[r] - 1) for r in range(3)]
        lo = [np.floor(x).astype(np.int64) for x in u]
        fr = [x - l for x, l in zip(u, lo)]
        for dk in (0, 1):
            for dj in (0, 1):
                for di in (0, 1):
                    k, j, i = lo[0] + dk, lo[1] + dj, lo[2] + di
                    w = ((fr[0] if dk else 1 - fr[0]) * (fr[1] if dj else 1 - fr[1])
                         * (fr[2] if di else 1 - fr[2]))
                    inside = ((k >= 0) & (k < dims[0]) & (j >= 0) & (j < dims[1])
                              & (i >= 0) & (i < dims[2]))
                    kk, jj, ii = (np.clip(k, 0, dims[0] - 1), np.clip(j, 0, dims[1] - 1),
                                  np.clip(i, 0, dims[2] - 1))
                    val = grids[g][:, kk, jj, ii].T * inside[:, None]
                    feats[:, g * c:(g + 1) * c] += val * w[:, None]
    h = feats
    for layer in range(cfg["hidden_layers"]):
        h = np.maximum(h @ tensors[f"mlp.{2 * layer}.weight"].T + tensors[f"mlp.{2 * layer}.bias"], 0)
    last = 2 * cfg["hidden_layers"]
    out = h @ tensors[f"mlp.{last}.weight"].T + tensors[f"mlp.{last}.bias"]
    # coverage: summed trilinear weight of each grid's in-range vertices
    cover = np.zeros(pts.shape[0])
    for g in range(m):
        t = tensors[f"transforms.{g}"].astype(np.float64)
        local = pts @ t[:, :3].T + t[:, 3]
        w = np.ones(pts.shape[0])
        for r in range(3):
            u = (local[:, r] + 1) / 2 * (dims[r] - 1)
            w *= np.clip(1 - np.maximum(0, np.maximum(-u, u - (dims[r] - 1))), 0, 1)
        cover += w
    return out[:, 0] + feats[:, ::c].sum(1) / np.maximum(cover, 1e-3)


def test_spec_evaluation_matches_model():
    torch.manual_seed(3)
    cfg = AMGSRNConfig(grids=4, grid=(5, 6, 7), channels=2, width=8, hidden_layers=2)
    model = AMGSRN(cfg).eval()
    with torch.no_grad():
        model.grids.normal_()
        for p in model.mlp.parameters():
            p.normal_(0, 0.5)
        # shrink, shift and shear some grids so many points fall outside them
        model.transforms[1].copy_(torch.tensor([[2.0, 0.3, 0, 0.5], [0, 1.7, 0, -0.4], [0.2, 0, 2.5, 0.1]]))
        model.transforms[2].copy_(torch.tensor([[3.0, 0, 0, -1.5], [0, 3.0, 0, 0], [0, 0, 3.0, 1.0]]))
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (3000, 3)).astype(np.float32)
    pts[:4] = [[-1, -1, -1], [1, 1, 1], [0, 0, 0], [1, -1, 0.5]]
    tensors = {n: t.detach().numpy() for n, t in model.state_dict().items()}
    local = model.local_coords(torch.from_numpy(pts)).detach().numpy()     # (M, 3, N)
    outside = np.abs(local).max(1) > 1
    assert outside[1].mean() > 0.3 and outside[2].mean() > 0.5 and outside[1:].all(0).any()
    with torch.no_grad():
        ref = model(torch.from_numpy(pts)).numpy()
    np.testing.assert_allclose(_spec_eval(cfg.to_dict(), tensors, pts.astype(np.float64)), ref,
                               rtol=1e-4, atol=1e-4)
    # The training path (autograd: coverage computed, not sampled) is the same function.
    train = model(torch.from_numpy(pts)).detach().numpy()
    np.testing.assert_allclose(train, ref, rtol=1e-5, atol=1e-5)


def test_anchor_grid_stays_the_identity_and_covers_every_voxel(amg_nv):
    """Placement, training and the fine-tune move every transform but the anchor's, so
    every voxel stays inside a grid."""
    from neurvol.compress import decode_payload
    from neurvol.neural_volume import build_model

    model = build_model(amg_nv.header["model"])
    specs = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
    tensors = dict(decode_payload(amg_nv._reader.read_brick(0), specs))
    assert "finetune" in amg_nv.info()["codec"]["stages"]
    assert model.config.grids >= 4
    assert model.fixed_tensors() == {"transforms.0"}
    np.testing.assert_array_equal(np.asarray(tensors["transforms.0"], np.float32), np.eye(3, 4))
    assert not np.array_equal(np.asarray(tensors["transforms.1"], np.float32), np.eye(3, 4))
    model.load_state_dict({n: torch.as_tensor(np.asarray(t, np.float32)) for n, t in tensors.items()})
    corners = torch.tensor(np.stack(np.meshgrid(*[[-1.0, 0.0, 1.0]] * 3, indexing="ij"), -1).reshape(-1, 3),
                           dtype=torch.float32)
    pts = torch.cat([corners, torch.rand(2000, 3) * 2 - 1])
    with torch.no_grad():
        assert model.coverage(model.local_coords(pts)).sum(0).min() >= 1.0 - 1e-5


def test_models_of_few_grids_have_no_anchor():
    for m, anchored in ((1, 0), (3, 0), (4, 1), (8, 1)):
        model = AMGSRN(AMGSRNConfig(grids=m, grid=(4, 4, 4), channels=1, width=8, hidden_layers=1))
        assert len(model.anchors()) == len(model.fixed_tensors()) == anchored
        assert len(model.adaptive_transforms()) == m - anchored
        assert all(torch.equal(t, torch.eye(3, 4)) and not t.requires_grad for t in model.anchors())


# ---------------------------------------------------------------- training hooks
def test_density_loss_is_finite_and_moves_transforms():
    torch.manual_seed(0)
    model = AMGSRN(AMGSRNConfig(grids=3, grid=(4, 4, 4), channels=1, width=8, hidden_layers=1))
    model.init_from_volume(torch.rand(6, 7, 8))
    model.train()
    model.on_step(int(50 * (TRANSFORM_START + TRANSFORM_STOP)), 100)   # inside the window
    coords = torch.rand(500, 3) * 2 - 1
    coords[:20] *= 40  # far outside every grid: the density is 0 there, still no NaN
    target = torch.rand(500)
    pred = model(coords)
    extra = model.extra_loss(coords, pred, target)
    assert extra is not None and torch.isfinite(extra)
    (torch.nn.functional.mse_loss(pred, target) + extra).backward()
    for p in model.adaptive_transforms():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.anchors())
    assert torch.isfinite(model.grids.grad).all()


def test_transforms_frozen_outside_their_window():
    torch.manual_seed(0)
    total = 100
    model = AMGSRN(AMGSRNConfig(grids=2, grid=(4, 4, 4), channels=1, width=8, hidden_layers=1))
    opt = torch.optim.Adam(model.param_groups(1e-2))
    before = [p.detach().clone() for p in model.transforms]
    moved_during = None
    for step in range(total):
        model.train()
        model.on_step(step, total)
        if step == int(TRANSFORM_STOP * total):
            moved_during = [p.detach().clone() for p in model.transforms]
        coords = torch.rand(64, 3) * 2 - 1
        target = torch.rand(64)
        pred = model(coords)
        loss = torch.nn.functional.mse_loss(pred, target)
        extra = model.extra_loss(coords, pred, target)
        if step < int(TRANSFORM_START * total) or step >= int(TRANSFORM_STOP * total):
            assert extra is None and not any(p.requires_grad for p in model.transforms)
            if step < int(TRANSFORM_START * total):
                assert all(torch.equal(p, b) for p, b in zip(model.transforms, before))
        else:
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, moved_during))
    assert all(torch.equal(p, b) for p, b in zip(model.transforms, moved_during))


def test_solver_sizes_for_budget():
    arch = get_architecture("amgsrn")
    cfg = arch.solve((128, 128, 128), 27000, {})
    assert cfg.param_count() <= 27000
    assert cfg.param_count() > 0.8 * 27000
    assert arch.solve((128, 128, 128), 27000, {"grids": 4, "channels": 2}).grids == 4


def test_transforms_frozen_in_the_real_trainer(small_volume):
    from neurvol.fit import FitSettings, fit

    class Recording(AMGSRN):
        def on_step(self, step, total_steps):
            super().on_step(step, total_steps)
            self.snapshots.append(torch.cat([p.detach().reshape(-1) for p in self.transforms]))

    torch.manual_seed(0)
    model = Recording(AMGSRNConfig(grids=3, grid=(5, 5, 5), channels=1, width=8, hidden_layers=1))
    model.snapshots = []
    data = torch.from_numpy(small_volume.astype(np.float32) / small_volume.max())
    total = 30
    fit(model, data, FitSettings(steps=total, batch=512))
    start, stop = int(TRANSFORM_START * total), int(TRANSFORM_STOP * total)
    snaps = model.snapshots + [torch.cat([p.detach().reshape(-1) for p in model.transforms])]
    assert all(torch.equal(snaps[0], s) for s in snaps[:start + 1])
    assert not torch.equal(snaps[start], snaps[stop])
    assert all(torch.equal(snaps[stop], s) for s in snaps[stop:])


@pytest.mark.parametrize("opts", [{"grids": 0}, {"channels": 0}, {"grids": 300}])
def test_bad_options_are_input_errors(small_volume, opts):
    with pytest.raises(neurvol.NeurvolInputError):
        neurvol.encode(small_volume, ratio=2, arch="amgsrn", steps=1, quiet=True, **opts)


def _tolerance_terms(cfg, tensors, pts):
    """spec/arch/amgsrn.md §3.2 per point: the exact coverage sum and B."""
    dims = cfg["grid"]
    grids = tensors["grids"].astype(np.float64)
    cover, b = np.zeros(pts.shape[0]), np.zeros(pts.shape[0])
    for g in range(cfg["grids"]):
        t = tensors[f"transforms.{g}"].astype(np.float64)
        local = pts @ t[:, :3].T + t[:, 3]
        w = np.ones(pts.shape[0])
        for r in range(3):
            u = (local[:, r] + 1) / 2 * (dims[r] - 1)
            w *= np.clip(1 - np.maximum(0, np.maximum(-u, u - (dims[r] - 1))), 0, 1)
        cover += w
        b += (w > 0) * (1 + np.abs(grids[g, 0]).max()) * max(dims)
    return cover, b


def test_reference_meets_the_spec_tolerance_in_the_fade():
    """Points walked out of a grid through its one-cell fade, where the coverage falls
    below the 0.001 floor, then beyond it (no grid reaches them): the reference stays within
    the tolerance of spec/arch/amgsrn.md §3.2 of the exact value."""
    torch.manual_seed(5)
    cfg = AMGSRNConfig(grids=2, grid=(5, 6, 7), channels=2, width=8, hidden_layers=2)
    model = AMGSRN(cfg).eval()
    assert not model.anchors()
    with torch.no_grad():
        model.grids.normal_()
        for p in model.mlp.parameters():
            p.normal_(0, 0.5)
        model.transforms[0].copy_(torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]]))
        # grid 1 sits far along x, so it misses every point below
        model.transforms[1].copy_(torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 5.0]]))
    d = cfg.grid[0]
    # local z = 3 p_z, so grid 0's vertex coordinate u_z = (3 p_z + 1) / 2 * (d - 1)
    deltas = np.array([1.0, 0.5, 0.1, 1e-2, 2e-3, 1e-3, 5e-4, 1e-4, 1e-5, -0.5, -2.0, -10.0])
    rng = np.random.default_rng(7)
    rows = []
    for delta in deltas:
        u = -1.0 + delta
        z = ((u * 2 / (d - 1)) - 1) / 3
        for y, x in rng.uniform(-0.3, 0.3, (20, 2)):
            rows.append((z, y, x))
    pts = np.asarray(rows, dtype=np.float32)
    exact_pts = pts.astype(np.float64)
    tensors = {n: t.detach().numpy() for n, t in model.state_dict().items()}
    exact = _spec_eval(cfg.to_dict(), tensors, exact_pts)
    cover, b = _tolerance_terms(cfg.to_dict(), tensors, exact_pts)
    assert (cover < 1e-3).sum() >= 40 and ((cover > 0) & (cover < 1e-3)).any() and (cover == 0).any()
    tol = 1e-5 * (1 + np.abs(exact)) + 1e-6 * b / np.maximum(cover, 1e-3)
    with torch.no_grad():
        queried = model(torch.from_numpy(pts)).double().numpy()        # the reader's path
    trained = model(torch.from_numpy(pts)).detach().double().numpy()   # autograd path
    for got in (queried, trained):
        err = np.abs(got - exact)
        assert (err <= tol).all(), (err / tol).max()


def test_training_forward_matches_module_mlp_and_honours_hooks():
    """The training forward runs the MLP feature-major; it must give what the modules give
    (same values and gradients), and a forward hook on an MLP layer (the pruning
    regularizers install them) must still act."""
    torch.manual_seed(3)
    cfg = AMGSRNConfig(grids=4, grid=(6, 7, 8), channels=2, width=16, hidden_layers=2)
    model = AMGSRN(cfg)
    with torch.no_grad():
        model.grids.normal_()
        model.mlp[-1].weight.normal_()
    coords = torch.rand(500, 3) * 2.2 - 1.1
    columns = model(coords)
    (g_columns,) = torch.autograd.grad(columns.square().sum(), model.mlp[0].weight)
    # A no-op hook sends the forward through the modules.
    handle = model.mlp[1].register_forward_hook(lambda mod, args, out: out)
    modules = model(coords)
    (g_modules,) = torch.autograd.grad(modules.square().sum(), model.mlp[0].weight)
    handle.remove()
    torch.testing.assert_close(columns, modules, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_columns, g_modules, rtol=1e-4, atol=1e-5)
    # A hook that zeroes the last hidden layer leaves only the last bias and the residual.
    handle = model.mlp[3].register_forward_hook(lambda mod, args, out: out * 0)
    zeroed = model(coords)
    handle.remove()
    with torch.no_grad():
        local = model.local_coords(coords)
        cover = model.coverage(local)
        feats = model.features(local).view(cfg.grids, cfg.channels, -1) * (cover > 0)[:, None]
        base = feats[:, 0].sum(0) / cover.sum(0).clamp(min=COVERAGE_FLOOR)
    assert not torch.allclose(zeroed, columns)
    torch.testing.assert_close(zeroed.detach(), base + model.mlp[-1].bias, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grids,grid", [(3, (5, 6, 7)), (8, (9, 4, 6)), (1, (2, 3, 2))])
def test_few_points_evaluate_without_the_table_bit_for_bit(grids, grid):
    """Up to DIRECT_MAX_POINTS points on a model without its vertex table gather from the
    grids themselves (a cold bricked query evaluates many fresh bricks on a few points
    each): the same values, bit for bit, as the padded table's path, for points inside,
    in the fade band and far outside the grids, and for batch sizes that leave lanes
    over in torch's vector loops."""
    import copy

    from neurvol.models.amgsrn import DIRECT_MAX_POINTS

    torch.manual_seed(grids)
    cfg = AMGSRNConfig(grids=grids, grid=grid, channels=1, width=8, hidden_layers=2)
    model = AMGSRN(cfg).eval()
    with torch.no_grad():
        model.grids.normal_()
        model.grids.view(-1)[::7] = -0.0          # signed zeros travel through unchanged
        for p in model.mlp.parameters():
            p.normal_(0, 0.5)
        for g in range(model.anchor_count(), grids):
            model.transforms[g].copy_(torch.eye(3, 4) * 2.5 + 0.4 * torch.randn(3, 4))
    rng = np.random.default_rng(grids)
    for n in (1, 2, 7, 13, 100, DIRECT_MAX_POINTS):
        pts = torch.from_numpy(rng.uniform(-1.4, 1.4, (n, 3)).astype(np.float32))
        fresh = copy.deepcopy(model)
        with torch.inference_mode():
            direct = fresh(pts)
            assert not fresh._has_table()                   # no table for a few points
            fresh._vertex_table()
            table = fresh(pts)
        assert direct.dtype == table.dtype == torch.float32
        assert direct.numpy().tobytes() == table.numpy().tobytes()
    # Points beyond every grid's fade band: all features exactly 0, the MLP of zeros.
    far = torch.full((5, 3), 40.0)
    with torch.no_grad():
        direct = copy.deepcopy(model)(far)
        torch.testing.assert_close(direct, model.mlp(torch.zeros(5, grids))[:, 0])


def test_a_large_batch_builds_the_vertex_table_and_later_calls_use_it():
    from neurvol.models.amgsrn import DIRECT_MAX_POINTS

    torch.manual_seed(0)
    model = AMGSRN(AMGSRNConfig(grids=4, grid=(6, 6, 6), channels=1, width=8)).eval()
    few = torch.rand(10, 3) * 2 - 1
    many = torch.rand(DIRECT_MAX_POINTS + 1, 3) * 2 - 1
    with torch.no_grad():
        cold = model(few)
        assert not model._has_table()
        model(many)
        assert model._has_table()
        assert torch.equal(model(few), cold)
        with torch.no_grad():
            model.grids.add_(1.0)                          # a change of the grids drops it
        assert not model._has_table()


@pytest.mark.parametrize("grids,grid", [(3, (5, 6, 7)), (8, (9, 4, 6)), (1, (2, 3, 2))])
def test_numpy_few_points_evaluate_without_the_table_bit_for_bit(grids, grid):
    """The torch-free evaluation takes the same two paths: a few points on a model whose
    table is not built gather from the grids, with the table path's values bit for bit;
    a batch over DIRECT_MAX_POINTS builds the table."""
    from neurvol.models.numpy_eval import get_numpy_architecture
    from neurvol.models.numpy_eval.amgsrn import DIRECT_MAX_POINTS

    torch.manual_seed(grids)
    cfg = AMGSRNConfig(grids=grids, grid=grid, channels=1, width=8, hidden_layers=2)
    model = AMGSRN(cfg)
    with torch.no_grad():
        model.grids.normal_()
        model.grids.view(-1)[::7] = -0.0
        for p in model.mlp.parameters():
            p.normal_(0, 0.5)
        for g in range(model.anchor_count(), grids):
            model.transforms[g].copy_(torch.eye(3, 4) * 2.5 + 0.4 * torch.randn(3, 4))
    arrays = {n: t.detach().numpy().copy() for n, t in model.state_dict().items()}
    arch = get_numpy_architecture("amgsrn")
    rng = np.random.default_rng(grids)
    for n in (1, 2, 7, 13, 100, DIRECT_MAX_POINTS):
        pts = rng.uniform(-1.4, 1.4, (n, 3)).astype(np.float32)
        fresh = arch.build(cfg, arrays)
        direct = fresh(pts)
        assert fresh._table is None                          # no table for a few points
        fresh.table
        table = fresh(pts)
        assert direct.dtype == table.dtype == np.float32
        assert direct.tobytes() == table.tobytes()
    fresh = arch.build(cfg, arrays)
    fresh(rng.uniform(-1, 1, (DIRECT_MAX_POINTS + 1, 3)).astype(np.float32))
    assert fresh._table is not None and fresh._grids is None   # the table holds the grids
    few = rng.uniform(-1.4, 1.4, (7, 3)).astype(np.float32)
    assert fresh(few).tobytes() == arch.build(cfg, arrays)(few).tobytes()


@pytest.mark.parametrize("sides", [(5, 6, 7), (2, 3, 2), (1, 4, 1), (40, 40, 39)])
def test_direct_corners_compiled_matches_numpy(sides):
    """The compiled kernel of the table-free lookup and its numpy form give the same bits:
    fractions, coverage and corner values (exact zeros outside a grid), for points inside,
    on vertices and faces (including -0.0), in the fade band and far outside."""
    from neurvol.compress import jit
    from neurvol.models.numpy_eval.amgsrn import _corners_numpy, direct_corners

    if not jit.available():
        pytest.skip("numba is not installed (pip install 'neurvol[fast]')")
    rng = np.random.default_rng(sum(sides))
    m, n = 3, 211
    grids = rng.normal(size=m * int(np.prod(sides))).astype(np.float32)
    grids[::5] = -0.0
    side = np.asarray(sides, dtype=np.float32).reshape(3, 1, 1)
    u = rng.uniform(-3, 1, (3, m, n)).astype(np.float32) * (side + 2)
    u[:, :, :40] = np.round(u[:, :, :40])                  # on vertices and faces
    u[:, :, 40:50] = -0.0
    u[:, :, 50:60] = side - 1
    u[:, :, 60:70] = side
    u[:, :, 70:80] = rng.uniform(-1e6, 1e6, (3, m, 10))
    got = direct_corners(u.copy(), sides, grids)
    want = _corners_numpy(u.copy(), sides, grids)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    assert (want[2] == 0).any() and (want[1] == 0).any() and (want[1] == 1).any()
