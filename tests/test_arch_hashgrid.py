"""The hashgrid architecture: config and tensor list, the solver and the tables' learning rate, and an independent
numpy evaluation of spec/arch/hashgrid.md (``_spec_eval``, also used by
tests/test_arch_conformance.py, which holds the checks every architecture shares:
config and tensor-list round trips, file round trips, byte budget, damaged configs)."""

import numpy as np
import pytest
import torch

import neurvol
from neurvol import NeurvolInputError
from neurvol.models import get_architecture
from neurvol.models.hashgrid import HashGrid, HashGridConfig, level_resolutions


@pytest.fixture(scope="module")
def hg_nv(arch_nv):
    return arch_nv("hashgrid")


def test_header_config_and_tables(hg_nv):
    spec = hg_nv.header["model"]
    cfg = HashGridConfig.from_dict(spec["config"])
    assert set(spec["config"]) == {"resolutions", "features", "log2_table", "width", "hidden_layers"}
    model = HashGrid(cfg)
    levels = len(cfg.resolutions)
    names = list(model.state_dict())
    assert names[:levels] == [f"tables.{l}" for l in range(levels)]
    assert all(n.startswith("mlp.") for n in names[levels:])
    for l, n in enumerate(cfg.resolutions):
        assert model.tables[l].shape == (min((n + 1) ** 3, 2 ** cfg.log2_table), cfg.features)
    assert any((n + 1) ** 3 > 2 ** cfg.log2_table for n in cfg.resolutions)  # some level hashed


def test_solver_sizes_for_budget():
    arch = get_architecture("hashgrid")
    for n in (3000, 27000, 200000):
        cfg = arch.solve((128, 128, 100), n, {})
        assert cfg.param_count() <= n
        bigger = HashGridConfig(**{**cfg.to_dict(), "resolutions": cfg.resolutions,
                                   "log2_table": cfg.log2_table + 1})
        assert bigger.param_count() > n or all((r + 1) ** 3 <= 2 ** cfg.log2_table for r in cfg.resolutions)
        assert cfg.resolutions[0] == 4 and cfg.resolutions[-1] == 127 and len(cfg.resolutions) == 8
    cfg = arch.solve((64, 64, 64), 27000, {"levels": 4, "features": 4, "log2_table": 10})
    assert (len(cfg.resolutions), cfg.features, cfg.log2_table) == (4, 4, 10)
    assert level_resolutions(3, 4, 16) == (4, 8, 16)
    with pytest.raises(neurvol.NeurvolBudgetError):
        arch.solve((64, 64, 64), 300, {})
    with pytest.raises(NeurvolInputError):
        arch.solve((64, 64, 64), 9000, {"levels": 0})


# ---------------------------------------------------------------- spec, independently
def _spec_eval(cfg, t, pts):
    """spec/arch/hashgrid.md §3 in numpy (float64 values, uint32 hash). t: name -> array."""
    tsize = 2 ** cfg["log2_table"]
    pts = np.clip(pts, -1, 1)
    feats = []
    for l, n in enumerate(cfg["resolutions"]):
        table = t[f"tables.{l}"].astype(np.float64)
        p = (pts + 1) / 2 * n
        i = np.minimum(np.floor(p).astype(np.int64), n - 1)
        r = p - i
        g = np.zeros((pts.shape[0], cfg["features"]))
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    vz, vy, vx = i[:, 0] + dz, i[:, 1] + dy, i[:, 2] + dx
                    w = ((r[:, 0] if dz else 1 - r[:, 0]) * (r[:, 1] if dy else 1 - r[:, 1])
                         * (r[:, 2] if dx else 1 - r[:, 2]))
                    if (n + 1) ** 3 <= tsize:
                        row = vx + (n + 1) * (vy + (n + 1) * vz)
                    else:  # NGP: uint32 wrap-around, then modulo T
                        u32 = [v.astype(np.uint32) for v in (vx, vy, vz)]
                        h = (u32[0] * np.uint32(1)) ^ (u32[1] * np.uint32(2654435761)) ^ (u32[2] * np.uint32(805459861))
                        row = (h % np.uint32(tsize)).astype(np.int64)
                    g += table[row] * w[:, None]
        feats.append(g)
    h = np.concatenate(feats, 1)
    for layer in range(cfg["hidden_layers"]):
        h = np.maximum(h @ t[f"mlp.{2 * layer}.weight"].T + t[f"mlp.{2 * layer}.bias"], 0)
    last = 2 * cfg["hidden_layers"]
    return (h @ t[f"mlp.{last}.weight"].T + t[f"mlp.{last}.bias"])[:, 0]


@pytest.mark.parametrize("hidden", [0, 2])
def test_spec_evaluation_matches_model(hidden):
    torch.manual_seed(hidden)
    # level 0 dense (3^3 = 27 <= 64), the others hashed; vy * 2654435761 exceeds 32 bits
    # from vy = 2 on, so the spec's uint32 wrap-around is exercised
    cfg = HashGridConfig(resolutions=(2, 5, 9, 40), features=3, log2_table=6, width=8, hidden_layers=hidden)
    model = HashGrid(cfg).eval()
    with torch.no_grad():
        for p in model.tables:
            p.normal_()
        for p in model.mlp.parameters():
            p.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (3000, 3)).astype(np.float32)
    pts[:6] = [[-1, -1, -1], [1, 1, 1], [0, 0, 0], [1, -1, 0.5], [0.5, 0.25, -0.75], [1.2, -3, 0]]
    tensors = {n: v.detach().numpy() for n, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(torch.from_numpy(pts)).numpy()
    assert ref.std() > 0.1
    np.testing.assert_allclose(_spec_eval(cfg.to_dict(), tensors, pts.astype(np.float64)), ref,
                               rtol=1e-4, atol=1e-4)


def test_tables_train_faster_than_the_mlp():
    model = HashGrid(HashGridConfig())
    groups = model.param_groups(1e-3)
    assert groups[0]["lr"] > groups[1]["lr"]
    assert sum(p.numel() for g in groups for p in g["params"]) == model.config.param_count()
