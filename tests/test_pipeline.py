"""The weight-compression pipeline through encode(): budgets, stages, psnr= targets."""
import math
import warnings

import numpy as np
import pytest
import torch

import neurvol
from neurvol import NeuralVolume, NeurvolInputError, cli
from neurvol.container import NvolReader
from neurvol.pipeline import CodecSettings


def _tensor_methods(nv):
    return {n: t["method"] for n, t in nv.byte_breakdown()["tensors"].items()}


@pytest.mark.parametrize("arch", ["amgsrn", "fvsrn", "hashgrid", "neurcomp"])
def test_default_pipeline_meets_budget_and_accounts_every_byte(small_volume, arch):
    nv = neurvol.encode(small_volume, ratio=6, steps=20, arch=arch, quiet=True)
    assert nv.nbytes_file <= small_volume.nbytes // 6
    codec = nv.info()["codec"]
    assert (codec["name"], codec["version"]) == ("neurvol", 2)
    bd = nv.byte_breakdown()
    assert bd["header"] + bd["weights"] + bd["codebooks"] + bd["masks"] + bd["constants"] \
        == nv.nbytes_file
    methods = _tensor_methods(nv)
    if arch in ("amgsrn", "fvsrn"):     # dense feature grids: interpolation-coded
        assert "interp" in codec["stages"] and "interp" in methods.values()
    else:
        assert not {"interp", "lorenzo"} & set(methods.values())
    # What is stored is what answers: a reopened file gives the same values.
    back = NeuralVolume(NvolReader(nv.to_bytes()))
    pts = np.random.default_rng(0).uniform(0, np.array(small_volume.shape) - 1, size=(500, 3))
    np.testing.assert_array_equal(back.query(pts), nv.query(pts))


def test_plain_codec_is_kmeans_only(small_volume):
    nv = neurvol.encode(small_volume, ratio=6, steps=20, arch="amgsrn", quiet=True,
                        codec={"grids": "kmeans", "finetune": 0, "coders": ["raw", "zstd"]})
    assert set(_tensor_methods(nv).values()) <= {"kmeans", "raw16", "raw32"}
    coders = {t["coder"] for t in nv.byte_breakdown()["tensors"].values()}
    assert coders <= {"raw", "zstd"}


def test_pruning_stores_masks_and_zeros(small_volume):
    nv = neurvol.encode(small_volume, ratio=4, steps=20, arch="fvsrn", quiet=True,
                        codec={"prune": 0.4})
    assert "prune" in nv.info()["codec"]["stages"]
    assert nv.byte_breakdown()["masks"] > 0
    assert nv.nbytes_file <= small_volume.nbytes // 4


def test_finer_grid_bits_plan_gives_bigger_models(small_volume):
    small = neurvol.encode(small_volume, ratio=4, steps=5, arch="fvsrn", quiet=True,
                           codec={"grid_bits": 6})
    big = neurvol.encode(small_volume, ratio=4, steps=5, arch="fvsrn", quiet=True,
                         codec={"grid_bits": 1.5})
    assert big.info()["model"]["parameters"] > small.info()["model"]["parameters"]
    assert big.nbytes_file <= small_volume.nbytes // 4


@pytest.mark.parametrize("codec", [{"grids": "nope"}, {"prune": 1.0}, {"finetune": -1},
                                   {"coders": []}, {"coders": ["lzma"]}, {"unknown": 1}, "x"])
def test_bad_codec_settings_are_input_errors(small_volume, codec):
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, ratio=4, steps=2, quiet=True, codec=codec)


def test_psnr_target_is_reached_or_warned(small_volume):
    target = 24.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nv = neurvol.encode(small_volume, psnr=target, steps=40, arch="fvsrn", quiet=True)
    if not caught:
        assert nv.fit_psnr >= target
    assert nv.nbytes_file <= small_volume.nbytes / 1.5


def test_unreachable_psnr_warns_and_returns_the_best(small_volume):
    with pytest.warns(UserWarning, match="best PSNR found"):
        nv = neurvol.encode(small_volume, psnr=300.0, steps=5, arch="fvsrn", quiet=True)
    assert math.isfinite(nv.fit_psnr) and nv.fit_psnr < 300


@pytest.mark.parametrize("psnr", [float("nan"), "30", True])
def test_bad_psnr_targets_are_input_errors(small_volume, psnr):
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, psnr=psnr, steps=2, quiet=True)


def test_cli_pack_codec_options_and_info_bytes(tmp_path, small_volume, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("v.npy", small_volume)
    assert cli.main(["-q", "pack", "v.npy", "-o", "p.nvol", "--ratio", "4", "--steps", "10",
                     "--arch", "fvsrn", "--prune", "0.3", "--finetune", "0.2"]) == 0
    assert cli.main(["info", "p.nvol", "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert info["bytes"]["masks"] > 0 and "prune" in info["codec"]["stages"]
    assert cli.main(["-q", "pack", "v.npy", "-o", "q.nvol", "--prune", "1.5"]) == 2
    assert cli.main(["-q", "pack", "v.npy", "-o", "r.nvol", "--ratio", "4", "--steps", "10",
                     "--arch", "fvsrn", "--grid-bits", "2", "--rate", "12"]) == 0
    assert cli.main(["info", "r.nvol", "--json"]) == 0
    assert "rate" in json.loads(capsys.readouterr().out)["codec"]["stages"]
    assert cli.main(["-q", "pack", "v.npy", "-o", "s.nvol", "--rate", "-1"]) == 2
    assert cli.main(["-q", "pack", "v.npy", "-o", "t.nvol", "--rate", "most"]) == 2


def test_codec_settings_pipeline_names_stages():
    from neurvol.models import get_architecture
    a = get_architecture("amgsrn")
    model = a.build(a.config_cls())
    assert CodecSettings().pipeline(model) == ["kmeans", "interp", "finetune", "rans", "zstd"]
    assert CodecSettings(grids="lorenzo").pipeline(model)[1] == "lorenzo"
    assert CodecSettings(grids="kmeans", finetune=0, coders=("raw", "zstd")).pipeline(model) \
        == ["kmeans", "zstd"]
    assert CodecSettings(prune=0.2).pipeline(model)[:2] == ["prune", "kmeans"]


def test_finetune_is_kept_only_when_it_lowers_the_stored_error():
    """A fine-tuning stage that makes the stored model worse is undone (``score``)."""
    import torch

    from neurvol.models import get_architecture
    from neurvol.pipeline import compress_model

    a = get_architecture("fvsrn")
    torch.manual_seed(0)
    model = a.build(a.config_cls(grid=(6, 6, 6), channels=4, width=16, hidden_layers=2))
    ref = {n: t.clone() for n, t in model.state_dict().items()}

    def damage(trainable):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if trainable(n):
                    p.add_(1.0)

    def distance(payload):          # error of what a payload stores: far from ``ref`` is bad
        from neurvol.compress import decode_payload
        out = decode_payload(payload, [(n, tuple(t.shape)) for n, t in ref.items()])
        return float(sum(((torch.from_numpy(out[n]) - ref[n]) ** 2).sum() for n in ref))

    codec = CodecSettings()
    kept = compress_model(model, len, 4000, 64, codec, finetune=damage, score=distance)
    assert distance(kept.payload) < 1.0
    assert list(model.state_dict()) == list(ref)      # tensor order (= file order) kept
    for n, t in model.state_dict().items():
        if n != "grid":             # restored, not damaged
            assert torch.equal(t, ref[n])
    # without a score the damaging stage is kept: the guard is what undid it
    model.load_state_dict(ref)
    blind = compress_model(model, len, 4000, 64, codec, finetune=damage)
    assert distance(blind.payload) > 10 * distance(kept.payload)


@pytest.mark.parametrize("arch", ["amgsrn", "fvsrn"])
def test_vq_grids_meet_budget_and_round_trip(small_volume, arch):
    nv = neurvol.encode(small_volume, ratio=6, steps=20, arch=arch, quiet=True,
                        codec={"grids": "vq"})
    assert nv.nbytes_file <= small_volume.nbytes // 6
    assert "vq" in nv.info()["codec"]["stages"]
    grid = {"amgsrn": "grids", "fvsrn": "grid"}[arch]
    t = nv.byte_breakdown()["tensors"][grid]
    assert t["method"] == "vq" and t["codebook"] > 0
    back = NeuralVolume(NvolReader(nv.to_bytes()))
    pts = np.random.default_rng(1).uniform(0, np.array(small_volume.shape) - 1, size=(300, 3))
    np.testing.assert_array_equal(back.query(pts), nv.query(pts))


def test_finetune_sees_the_k_means_quantized_network():
    """Quantization-aware fine-tuning: inside the stage, k-means tensors take at most k
    values in the forward pass while gradients reach the float weights."""
    import torch

    from neurvol.models import get_architecture
    from neurvol.pipeline import compress_model

    a = get_architecture("fvsrn")
    torch.manual_seed(0)
    model = a.build(a.config_cls(grid=(6, 6, 6), channels=4, width=16, hidden_layers=2))
    with torch.no_grad():
        model.grid.normal_()
    seen = {}

    def look(trainable):
        w = model.mlp[2].weight            # 16 x 16 hidden layer: a k-means tensor
        # w + (q - w) is q up to float rounding
        seen["levels"] = int(torch.unique(torch.round(w.detach(), decimals=5)).numel())
        out = model(torch.rand(64, 3) * 2 - 1).sum()
        out.backward()
        p = dict(model.named_parameters())
        seen["grad"] = [n for n, q in p.items() if "mlp.2" in n and q.grad is not None]

    compress_model(model, len, 6000, 8, CodecSettings(), finetune=look)
    assert 2 <= seen["levels"] <= 8 and seen["grad"]


def test_finetune_stores_the_quantized_weights_it_trained_with():
    """After quantization-aware fine-tuning the file stores each k-means tensor as the
    forward pass saw it in the last fine-tune step (its codebook values), not a new k-means
    of the float weights the straight-through gradient moved: a re-quantization lost up to
    1.4 dB of a 256^3 file's PSNR (BENCHMARKS.md, "fine-tuned weights stored as trained")."""
    from neurvol.compress.payload import decode_payload
    from neurvol.models import get_architecture
    from neurvol.pipeline import compress_model

    a = get_architecture("fvsrn")
    torch.manual_seed(0)
    config = a.config_cls(grid=(6, 6, 6), channels=4, width=16, hidden_layers=2)
    model = a.build(config)
    with torch.no_grad():
        model.grid.normal_()
    seen = {}

    def train(trainable):
        params = [p for n, p in model.named_parameters() if trainable(n)]
        opt = torch.optim.SGD(params, lr=0.05)
        x = torch.rand(256, 3) * 2 - 1
        for _ in range(5):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        seen["w"] = model.mlp[2].weight.detach().clone()     # as the last step saw it

    packed = compress_model(model, len, 6000, 8, CodecSettings(), finetune=train,
                            score=lambda payload: 0.0)
    stored = decode_payload(packed.payload, config.tensor_specs())
    assert torch.equal(torch.from_numpy(stored["mlp.2.weight"]), seen["w"])
    assert torch.equal(model.mlp[2].weight.detach(), seen["w"])


def test_vq_learned_codebook_meets_budget_and_round_trips(small_volume):
    pytest.importorskip("vector_quantize_pytorch")
    nv = neurvol.encode(small_volume, ratio=6, steps=20, arch="fvsrn", quiet=True,
                        codec={"grids": "vq", "vq_ema": 0.8})
    assert nv.nbytes_file <= small_volume.nbytes // 6
    assert nv.info()["codec"]["stages"][:4] == ["kmeans", "vq", "ema", "finetune"]
    back = NeuralVolume(NvolReader(nv.to_bytes()))
    pts = np.random.default_rng(2).uniform(0, np.array(small_volume.shape) - 1, size=(300, 3))
    np.testing.assert_array_equal(back.query(pts), nv.query(pts))


def test_learned_codebook_moves_and_leaves_at_most_k_vectors():
    """Inside the stage the grid trains through an EMA codebook that starts at k-means and
    follows the vectors; on exit the grid is quantized: at most k distinct vectors, which
    the vq record stores (to its binary16 codebook's rounding)."""
    pytest.importorskip("vector_quantize_pytorch")
    import torch

    from neurvol.compress.records import vq_values
    from neurvol.compress.vq import grid_vectors, vector_kmeans
    from neurvol.models import get_architecture
    from neurvol.pipeline import _learned_codebooks

    a = get_architecture("fvsrn")
    torch.manual_seed(0)
    model = a.build(a.config_cls(grid=(6, 6, 6), channels=4, width=16, hidden_layers=2))
    with torch.no_grad():
        model.grid.normal_()
    k = 8
    start_book = vector_kmeans(grid_vectors(model.grid.detach().numpy()), k)[0]
    x = torch.rand(512, 3) * 2 - 1
    with _learned_codebooks(model, ("grid",), k, decay=0.5):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(5):      # pull every value up: the codebook must follow
            loss = -model(x).mean() - model.grid.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert list(dict(model.named_parameters())) == ["grid"] + [
        n for n in dict(model.named_parameters()) if n != "grid"]
    vectors = grid_vectors(model.grid.detach().numpy())
    distinct = np.unique(vectors, axis=0)
    assert distinct.shape[0] <= k
    assert not np.allclose(np.sort(distinct, axis=0), np.sort(start_book, axis=0))
    grid = model.grid.detach().numpy()
    # the record keeps those vectors (its codebook is binary16, hence the rounding)
    np.testing.assert_array_equal(vq_values(grid, k), grid.astype(np.float16).astype(np.float32))


def test_finetune_keeps_the_grid_step_it_trained_at():
    """After fine-tuning, grids already set to their stored values are not re-quantized at
    a finer step when the rest of the model shrinks (that would quantize them twice)."""
    import copy

    import torch

    from neurvol.models import get_architecture
    from neurvol.pipeline import compress_model

    a = get_architecture("fvsrn")
    torch.manual_seed(0)
    model = a.build(a.config_cls(grid=(8, 8, 8), channels=4, width=16, hidden_layers=2))
    with torch.no_grad():
        model.grid.normal_()
    before = compress_model(copy.deepcopy(model), len, 3000, 64, CodecSettings())

    def shrink(trainable):            # the rest becomes almost free: room for a finer step
        with torch.no_grad():
            for n, p in model.named_parameters():
                if trainable(n) and p.dim() > 1:
                    p.zero_()

    after = compress_model(model, len, 3000, 64, CodecSettings(), finetune=shrink)
    assert after.step == pytest.approx(before.step, rel=1e-6)
    assert after.size <= 3000


def test_interp_residuals_match_the_coder():
    """The rate penalty's residuals are the interp coder's codes x step (at a fine step,
    where reconstruction and float values agree), in the same stream order."""
    import torch

    from neurvol.compress.interp import interp_encode
    from neurvol.fit.rate import interp_residuals

    x = np.random.default_rng(0).normal(size=(2, 1, 7, 6, 9))
    step = 1e-7
    codes, _ = interp_encode(x, step)
    r = interp_residuals(torch.from_numpy(x)).numpy()
    assert r.shape == codes.shape
    np.testing.assert_allclose(r, codes * step, atol=1e-5)


def test_rate_penalty_acts_every_few_steps_at_that_many_times_its_weight(monkeypatch):
    from neurvol.fit import rate

    monkeypatch.setattr(rate, "PENALTY_EVERY", 2)
    grid = torch.nn.Parameter(torch.randn(2, 1, 5, 6, 7))
    reg = rate.GridRate([grid], 3.0, steps=10)          # starts at step 3
    mse = torch.tensor(0.5)
    l1 = rate.interp_residuals(grid.detach()).abs().sum() / grid.numel()
    seen = []
    for step in range(8):
        p = reg.penalty(mse)
        seen.append(float(p))
        if step >= reg.start and (step - reg.start) % 2 == 0:
            # Running loss: the same mse every step, so it equals mse.
            assert float(p) == pytest.approx(2 * 3.0 * 0.5 * float(l1), rel=1e-5)
            p.backward()
            assert grid.grad is not None and grid.grad.abs().sum() > 0
            grid.grad = None
        else:
            assert float(p) == 0.0
        reg.after_step()
    assert sum(v > 0 for v in seen) == 3          # steps 3, 5 and 7


def test_rate_penalty_makes_grids_cheaper_and_files_round_trip(small_volume):
    """rate= fits grids with smaller interp residuals; the file meets its budget, names the
    stage and decodes like any other."""
    import torch

    from neurvol.fit.rate import interp_residuals

    def residual_l1(nv):
        grid = nv._brick_model(0).grids.detach()
        return float(interp_residuals(grid).abs().mean())

    kw = dict(ratio=8, steps=150, arch="amgsrn", quiet=True, seed=0)
    plain = neurvol.encode(small_volume, codec={"grid_bits": 2}, **kw)
    rated = neurvol.encode(small_volume, codec={"grid_bits": 2, "rate": 200.0}, **kw)
    assert rated.nbytes_file <= small_volume.nbytes // 8
    assert "rate" in rated.info()["codec"]["stages"]
    assert "rate" not in plain.info()["codec"]["stages"]
    assert residual_l1(rated) < 0.8 * residual_l1(plain)
    back = NeuralVolume(NvolReader(rated.to_bytes()))
    pts = np.random.default_rng(1).uniform(0, np.array(small_volume.shape) - 1, size=(200, 3))
    np.testing.assert_array_equal(back.query(pts), rated.query(pts))
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("codec", [{"rate": -1.0}, {"rate": float("nan")},
                                   {"rate": 1.0, "grids": "lorenzo"}])
def test_bad_rate_settings_are_input_errors(small_volume, codec):
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, ratio=8, steps=5, quiet=True, codec=codec)


def test_rate_needs_a_model_with_grids(small_volume):
    with pytest.raises(NeurvolInputError, match="grids"):
        neurvol.encode(small_volume, ratio=8, steps=5, arch="neurcomp", quiet=True,
                       codec={"rate": 1.0})


def test_rate_auto_finishes_the_rate_aware_fit_or_fits_the_default(small_volume, monkeypatch):
    from neurvol import api
    from neurvol.encoding import pilot

    # device="cpu": byte-for-byte reproducible there (not on CUDA: atomic adds)
    kw = dict(ratio=8, steps=60, arch="amgsrn", quiet=True, seed=0, device="cpu")
    plain = neurvol.encode(small_volume, codec={"rate": 0}, **kw).to_bytes()
    rated = neurvol.encode(small_volume, codec=api.AUTO_RATE, **kw).to_bytes()
    assert plain != rated
    # The pilot pauses the rate-aware fit, then finishes it or fits the default: the file is
    # that encode's, byte for byte.
    auto = neurvol.encode(small_volume, codec={"rate": "auto"}, **kw).to_bytes()
    assert auto in (plain, rated)
    # ... and it is what a single model gets when the codec leaves rate and sizing alone.
    assert neurvol.encode(small_volume, **kw).to_bytes() == auto
    assert neurvol.encode(small_volume, codec={"finetune": 0.1}, **kw).to_bytes() == auto
    assert neurvol.encode(small_volume, codec={"grid_bits": 4}, **kw).to_bytes() == plain
    monkeypatch.setattr(pilot, "RATE_CODING_LOSS_DB", 1000.0)    # rate-aware always kept
    assert neurvol.encode(small_volume, codec={"rate": "auto"}, **kw).to_bytes() == rated
    # a fit that must gain 1000 dB from 20% to 40% of its steps counts as unstable
    monkeypatch.setattr(pilot, "RATE_PILOT_DECLINE_DB", -1000.0)
    assert neurvol.encode(small_volume, codec={"rate": "auto"}, **kw).to_bytes() == plain
    monkeypatch.setattr(pilot, "RATE_PILOT_DECLINE_DB", 1000.0)
    monkeypatch.setattr(pilot, "RATE_CODING_LOSS_DB", -1000.0)   # the default always fitted
    assert neurvol.encode(small_volume, codec={"rate": "auto"}, **kw).to_bytes() == plain
    # no grids to fit rate-aware: the default encode
    nc = neurvol.encode(small_volume, ratio=8, steps=5, arch="neurcomp", quiet=True,
                        codec={"rate": "auto"})
    assert "rate" not in nc.info()["codec"]["stages"]
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, codec={"rate": "most"}, **kw)
    with pytest.raises(NeurvolInputError):
        neurvol.encode(small_volume, codec={"rate": "auto", "grids": "vq"}, **kw)


def test_model_sse_is_the_error_of_the_float_model_on_every_voxel():
    from neurvol.fit.evaluate import model_sse
    from neurvol.metrics import psnr
    from neurvol.models import get_architecture

    rng = np.random.default_rng(3)
    shape = (5, 7, 6)
    data = torch.from_numpy(rng.random(shape, dtype=np.float32))
    data[0, 0, 0], data[-1, -1, -1] = 0.0, 1.0          # normalized: range exactly 1
    arch = get_architecture("amgsrn")
    torch.manual_seed(0)
    model = arch.build(arch.solve(shape, 2000, {})).eval()
    with torch.no_grad():
        model.mlp[-1].weight.mul_(30.0)          # values reach beyond [0, 1]: clamped
        model.mlp[-1].bias.fill_(0.5)
    # Voxel centres in normalized (z, y, x), -1 / +1 at the first / last one.
    zyx = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), -1)
    with torch.no_grad():
        values = model(torch.from_numpy(zyx.reshape(-1, 3).astype(np.float32)))
    expected = psnr(data.numpy(), values.clamp(0, 1).numpy().reshape(shape))
    sse, voxels = model_sse(model, data.numpy())
    assert voxels == data.numel()
    assert -10 * math.log10(sse / voxels) == pytest.approx(expected, abs=1e-4)
    # A core region: the error of those voxels only (the brick jobs' use).
    core = ((1, 4), (2, 7), (0, 3))
    region = tuple(slice(a, b) for a, b in core)
    err = values.clamp(0, 1).numpy().reshape(shape)[region] - data.numpy()[region]
    sse_core, voxels_core = model_sse(model, data.numpy(), core)
    assert voxels_core == err.size
    assert sse_core == pytest.approx(float((err.astype(np.float64) ** 2).sum()), rel=1e-5)
