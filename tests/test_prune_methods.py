"""Pruning methods (codec ``prune_method``): magnitude, Smallify neuron switches, sparse VD."""
import json

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

import neurvol
from neurvol import NeurvolInputError, cli
from neurvol.fit import finetune
from neurvol.fit.sparsify import (VD_K1, VD_K2, VD_K3, Smallify, VariationalDropout,
                                  linear_tensors, smallify_prune, vd_kl)
from neurvol.models import get_architecture
from neurvol.pipeline import CodecSettings, compress_model

PRUNE = 0.3
STAGE = {"magnitude": "prune", "smallify": "smallify", "vd": "vd"}


@pytest.fixture(scope="module")
def encoded(small_volume):
    """encode(arch, method) -> NeuralVolume, each fitted once for the module."""
    cache = {}

    def get(arch, method):
        if (arch, method) not in cache:
            cache[arch, method] = neurvol.encode(
                small_volume, ratio=4, steps=40, arch=arch, quiet=True,
                codec={"prune": PRUNE, "prune_method": method})
        return cache[arch, method]
    return get


def _kmeans_zeros(nv):
    """The stored model and, per k-means tensor, (zeros, elements) of its decoded values."""
    model = nv._brick_model(0)
    sd = model.state_dict()
    names = [n for n, t in nv.byte_breakdown()["tensors"].items() if t["method"] == "kmeans"]
    return model, {n: (int((sd[n] == 0).sum()), sd[n].numel()) for n in names}


CASES = [(a, m) for a in ("neurcomp", "fvsrn", "amgsrn", "hashgrid") for m in ("smallify", "vd")]
CASES += [("fvsrn", "magnitude")]


@pytest.mark.parametrize("arch,method", CASES)
def test_method_reaches_target_sparsity_round_trips_and_fits_budget(
        encoded, small_volume, tmp_path, arch, method):
    nv = encoded(arch, method)
    assert nv.nbytes_file <= small_volume.nbytes // 4
    assert STAGE[method] in nv.info()["codec"]["stages"]
    assert nv.byte_breakdown()["masks"] > 0
    model, zeros = _kmeans_zeros(nv)
    layers = set(linear_tensors(model, zeros)) if method == "smallify" else set()
    for name, (z, n) in zeros.items():
        if name not in layers:      # per tensor, exactly as magnitude pruning counts
            assert int(PRUNE * n) <= z <= int(PRUNE * n) + max(1, n // 100), name
    if layers:                      # the layers together, to within one neuron
        z = sum(zeros[n][0] for n in layers)
        total = sum(zeros[n][1] for n in layers)
        sd = model.state_dict()
        neuron = max(sd[f"{p}.weight"].shape[1] + sd[f"{c}.weight"].shape[0] + 1
                     for p, c in model.hidden_neurons())
        assert abs(z - PRUNE * total) <= neuron
    path = tmp_path / "p.nvol"
    nv.save(path)
    pts = np.random.default_rng(0).uniform(0, np.array(small_volume.shape) - 1, size=(400, 3))
    with neurvol.open(path) as back:
        np.testing.assert_array_equal(back.query(pts), nv.query(pts))


@pytest.mark.parametrize("arch", ["neurcomp", "fvsrn"])
def test_smallify_removes_whole_neurons(encoded, arch):
    model, _ = _kmeans_zeros(encoded(arch, "smallify"))
    sd = model.state_dict()
    removed = 0
    for p, c in model.hidden_neurons():
        rows = (sd[f"{p}.weight"] == 0).all(1)
        cols = (sd[f"{c}.weight"] == 0).all(0)
        assert torch.equal(rows, cols), (p, c)
        assert bool((sd[f"{p}.bias"][rows] == 0).all())
        removed += int(rows.sum())
    assert removed > 0


def _small(arch, **over):
    a = get_architecture(arch)
    cfgs = {"fvsrn": dict(grid=(6, 6, 6), channels=4, width=16, hidden_layers=2),
            "amgsrn": dict(grids=2, grid=(5, 5, 5), channels=2, width=16, hidden_layers=2),
            "hashgrid": dict(resolutions=(4, 8), features=2, log2_table=6, width=16,
                             hidden_layers=2),
            "neurcomp": dict(width=12, residual_blocks=2)}
    torch.manual_seed(0)
    return a.build(a.config_cls(**{**cfgs[arch], **over}))


def test_smallify_ranks_by_sign_variance_and_folds_exactly():
    """Neurons whose switch flips sign go first; the kept switches fold into the next
    layer's columns, so the pruned model computes what the switched one did with the
    removed neurons' switches at 0."""
    model = _small("fvsrn")
    x = torch.rand(256, 3) * 2 - 1
    with Smallify(model, model.hidden_neurons()) as reg:
        with torch.no_grad():
            for b in reg.betas:
                b.copy_(torch.linspace(-1.5, 2.0, b.numel()))
            reg.sign_stats(1)[1][[3, 5]] = 1.0      # second hidden layer, neurons 3 and 5
            beta = reg.betas[1].clone()
            reg.betas[1][[3, 5]] = 0.0
            switched = model(x)
            reg.betas[1].copy_(beta)
    counted = {"mlp.0.weight", "mlp.2.weight"}      # 64 + 256 values; 32 = two mlp.2 rows
    masks = smallify_prune(model, reg, counted, 32 / 320)
    sd = model.state_dict()
    assert torch.nonzero((sd["mlp.2.weight"] == 0).all(1)).flatten().tolist() == [3, 5]
    assert bool((sd["mlp.4.weight"][:, [3, 5]] == 0).all())
    assert bool((sd["mlp.2.bias"][[3, 5]] == 0).all())
    assert masks["mlp.2.weight"].sum() == 14 * 16 and not (sd["mlp.0.weight"] == 0).any()
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), switched.numpy(), rtol=0, atol=1e-5)
    # A SIREN too (switches after the sine), folding alone: nothing removed.
    model = _small("neurcomp")
    with Smallify(model, model.hidden_neurons()) as reg:
        with torch.no_grad():
            for b in reg.betas:
                b.uniform_(-2, 2)
            switched = model(x)
    smallify_prune(model, reg, set(), 0.0)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), switched.numpy(), rtol=0, atol=1e-5)


def test_vd_kl_matches_direct_evaluation():
    la = np.linspace(-12.0, 12.0, 97)
    direct = -VD_K1 / (1 + np.exp(-(VD_K2 + VD_K3 * la))) + 0.5 * np.log1p(np.exp(-la)) + VD_K1
    np.testing.assert_allclose(vd_kl(torch.from_numpy(la)).numpy(), direct, rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(direct) < 0) and abs(direct[-1]) < 1e-3   # -> 0 as alpha grows


def test_vd_local_reparameterization_has_the_right_moments():
    """Training mode: output mean x W^T + b, variance x^2 sigma^2^T (+ sigma_b^2 for a
    k-means bias); eval mode: the plain layer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3))
    x = torch.rand(1, 5).expand(40000, 5)
    with VariationalDropout(model, ["0.weight", "0.bias"]) as vd:
        with torch.no_grad():
            vd.log_sigma2["0/weight"].fill_(np.log(0.04))
            vd.log_sigma2["0/bias"].fill_(np.log(0.01))
        model.train()
        with torch.no_grad():
            out = model(x)
            mean = model[0].weight @ x[0] + model[0].bias
        var = 0.04 * float((x[0] ** 2).sum()) + 0.01
        np.testing.assert_allclose(out.mean(0).numpy(), mean.numpy(), atol=4 * (var / 40000) ** 0.5)
        np.testing.assert_allclose(out.var(0).numpy(), var, rtol=0.05)
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x[:1])[0], mean)
    assert not model[0]._forward_hooks


@pytest.mark.parametrize("arch", ["neurcomp", "fvsrn", "amgsrn", "hashgrid"])
@pytest.mark.parametrize("method", ["smallify", "vd"])
def test_phase_keeps_state_dict_keys_order_and_leaves_no_hooks(arch, method):
    """Hash tables and (with grids='kmeans') feature grids are not Linear layers: VD
    parametrizes them; afterwards the model has its tensors in their order, no
    parametrization and no hook, and the zeros are in the stored payload."""
    model = _small(arch)
    keys = list(model.state_dict())
    params = [n for n, _ in model.named_parameters()]
    vol = torch.rand(8, 8, 8)
    seen = []

    def tune(trainable, regularizer=None):
        seen.append(regularizer)
        finetune(model, vol, steps=3, lr=1e-3, trainable=trainable, batch=256,
                 regularizer=regularizer)

    codec = CodecSettings(prune=PRUNE, prune_method=method, grids="kmeans")
    packed = compress_model(model, len, 10 ** 6, 16, codec, finetune=tune)
    assert seen[0] is not None and seen[-1] is None         # the phase, then masked fine-tune
    assert list(model.state_dict()) == keys
    assert [n for n, _ in model.named_parameters()] == params
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks)
        assert not parametrize.is_parametrized(m)
    from neurvol.compress import decode_payload
    out = decode_payload(packed.payload, [(n, tuple(t.shape)) for n, t in model.state_dict().items()])
    assert sum(int((v == 0).sum()) for v in out.values()) > 0


def test_prune_method_validation_and_stage_names(small_volume):
    a = get_architecture("fvsrn")
    model = a.build(a.config_cls())
    assert CodecSettings(prune=0.2).pipeline(model)[0] == "prune"
    assert CodecSettings(prune=0.2, prune_method="smallify").pipeline(model)[:2] == ["smallify", "kmeans"]
    assert CodecSettings(prune=0.2, prune_method="vd").pipeline(model)[0] == "vd"
    for bad in ({"prune": 0.3, "prune_method": "random"}, {"prune_method": "vd"},
                {"prune": 0.3, "prune_method": "smallify", "finetune": 0}):
        with pytest.raises(ValueError):
            CodecSettings(**bad)
        with pytest.raises(NeurvolInputError, match="prune"):
            neurvol.encode(small_volume, ratio=4, steps=2, quiet=True, codec=bad)


def test_cli_prune_method(tmp_path, small_volume, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("v.npy", small_volume)
    assert cli.main(["-q", "pack", "v.npy", "-o", "p.nvol", "--ratio", "4", "--steps", "20",
                     "--arch", "neurcomp", "--prune", "0.3", "--prune-method", "vd"]) == 0
    assert cli.main(["info", "p.nvol", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["codec"]["stages"][0] == "vd" and info["bytes"]["masks"] > 0
    # a learned method without --prune: a neurvol input error (exit 1), no file
    assert cli.main(["-q", "pack", "v.npy", "-o", "q.nvol", "--prune-method", "smallify"]) == 1
    assert not (tmp_path / "q.nvol").exists()
    assert cli.main(["-q", "pack", "v.npy", "-o", "q.nvol", "--prune", "0.3",
                     "--prune-method", "l1"]) == 2


def test_bricked_encode_with_a_learned_prune_method(small_volume):
    nv = neurvol.encode(small_volume, ratio=4, steps=20, arch="fvsrn", bricks=(2, 1, 1),
                        quiet=True, codec={"prune": PRUNE, "prune_method": "smallify"})
    assert nv.nbytes_file <= small_volume.nbytes // 4
    assert "smallify" in nv.info()["codec"]["stages"]
