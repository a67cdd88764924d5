"""What every architecture must do, checked the same way for each (one table, one place).

Per architecture: the config round-trips through the header and matches the module's
tensor list; a fitted file saves, reopens and answers queries as the model in memory
and as a full decode; files meet the byte budget; a damaged or incomplete config in a file
is a format error; and, where the architecture's page under ``spec/arch/`` has an
independent numpy evaluator (in ``tests/test_arch_<name>.py``), the stored tensors
evaluated by it match the reference decoder. Architecture-specific behaviour (solvers,
training hooks, spec details) stays in ``tests/test_arch_<name>.py``.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import pytest

import neurvol
from neurvol import NeurvolFormatError
from neurvol.container import serialize_nvol
from neurvol.models import architectures, get_architecture


@dataclasses.dataclass(frozen=True)
class Case:
    """How one architecture is exercised by the shared checks."""

    arch: str
    budget_ratios: Sequence[float]
    budget_options: Dict[str, Any]          # encode(**options) for the budget files
    budget_steps: int
    bad_configs: Sequence[Dict[str, Any]]   # config updates a reader must refuse
    required_field: str                     # a config field whose absence is refused
    check_budget_config: Optional[Callable[[Dict[str, Any]], bool]] = None
    min_gain_db: Optional[float] = None     # PSNR above the mean-value predictor
    spec_module: Optional[str] = None       # test module holding _spec_eval(cfg, t, pts)


CASES = {c.arch: c for c in [
    Case("fvsrn", budget_ratios=(2, 4, 8), budget_options={}, budget_steps=0,
         bad_configs=[{"grid": [1, 4, 4]}, {"grid": [4, 4]}, {"channels": 0}, {"width": "32"},
                      {"hidden_layers": 0}, {"width": True}],
         required_field="grid"),
    Case("neurcomp", budget_ratios=(2, 3.5, 6), budget_options={"layers": 4}, budget_steps=0,
         bad_configs=[{"width": 0}, {"width": "32"}, {"residual_blocks": -1},
                      {"residual_blocks": 1000}, {"omega0": 0}, {"scale": [1, 1]},
                      {"scale": [1, 0, 1]}, {"scale": [1, 1, 2]}, {"width": True}],
         required_field="scale",
         check_budget_config=lambda cfg: cfg["residual_blocks"] == 3,
         spec_module="test_arch_neurcomp"),
    Case("hashgrid", budget_ratios=(2, 3.5, 6), budget_options={"width": 16}, budget_steps=0,
         bad_configs=[{"resolutions": []}, {"resolutions": [0, 4]}, {"resolutions": [4, 2 ** 21]},
                      {"resolutions": 8}, {"features": 0}, {"log2_table": 0}, {"log2_table": 40},
                      {"width": "32"}, {"hidden_layers": -1}, {"features": 64, "log2_table": 26}],
         required_field="log2_table",
         spec_module="test_arch_hashgrid"),
    Case("amgsrn", budget_ratios=(2, 4, 8), budget_options={}, budget_steps=3,
         bad_configs=[{"grids": 0}, {"grids": 1000}, {"grid": [1, 4, 4]}, {"grid": [4, 4]},
                      {"channels": 0}, {"width": "32"}, {"hidden_layers": 0},
                      {"grids": 200, "channels": 100}],
         required_field="grids",
         min_gain_db=5.0,
         spec_module="test_arch_amgsrn"),
]}


def test_every_architecture_has_a_case() -> None:
    assert set(CASES) == set(architectures())


def _cases(with_attr: Optional[str] = None):
    return [a for a, c in CASES.items() if with_attr is None or getattr(c, with_attr) is not None]


@pytest.mark.parametrize("arch", _cases())
def test_config_round_trip_and_tensor_list(arch_nv, arch):
    """The header's config reads back to itself (also through JSON), and the module built
    from it has exactly the config's tensor list (the torch-free ``tensor_specs``, which
    a reader uses) and ``param_count()`` parameters."""
    spec = arch_nv(arch).header["model"]
    architecture = get_architecture(arch)
    cfg = architecture.config_cls.from_dict(spec["config"])
    assert cfg.to_dict() == spec["config"]
    assert architecture.config_cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    model = architecture.build(cfg)
    assert [(n, tuple(t.shape)) for n, t in model.state_dict().items()] == \
        [(n, tuple(shape)) for n, shape in cfg.tensor_specs()]
    assert sum(p.numel() for p in model.parameters()) == cfg.param_count()


@pytest.mark.parametrize("arch", _cases())
def test_save_open_query_matches_memory_and_decode(tmp_path, small_volume, arch_nv, arch):
    nv_mem = arch_nv(arch)
    assert nv_mem.header["model"]["arch"] == arch
    assert nv_mem.info()["model"]["arch"] == arch
    path = tmp_path / f"{arch}.nvol"
    nv_mem.save(path)
    rng = np.random.default_rng(1)
    idx = np.stack([rng.integers(0, n, 400) for n in small_volume.shape], 1)
    pts = np.concatenate([idx + 0.0, rng.uniform(0, 1, (400, 3)) * (np.array(small_volume.shape) - 1)])
    with neurvol.open(path) as nv:
        assert nv.info()["model"] == nv_mem.info()["model"]
        vals = nv.query(pts)
        np.testing.assert_allclose(vals, nv_mem.query(pts), rtol=1e-6, atol=1e-5)
        full = nv.decode(dtype=np.float32)
        np.testing.assert_allclose(vals[:400], full[idx[:, 0], idx[:, 1], idx[:, 2]], rtol=1e-5, atol=1e-4)
    gain = CASES[arch].min_gain_db
    if gain is not None:
        mean_psnr = neurvol.metrics.psnr(small_volume, np.full_like(small_volume, small_volume.mean()))
        assert neurvol.metrics.psnr(small_volume, nv_mem.decode()) > mean_psnr + gain


@pytest.mark.parametrize("arch,ratio", [(a, r) for a in _cases() for r in CASES[a].budget_ratios])
def test_file_within_budget(small_volume, arch, ratio):
    case = CASES[arch]
    nv = neurvol.encode(small_volume, ratio=ratio, arch=arch, steps=case.budget_steps, quiet=True,
                        **case.budget_options)
    assert nv.nbytes_file <= small_volume.nbytes / ratio
    assert nv.header["model"]["arch"] == arch
    if case.check_budget_config is not None:
        assert case.check_budget_config(nv.header["model"]["config"])


@pytest.mark.parametrize("arch,bad", [(a, b) for a in _cases() for b in CASES[a].bad_configs],
                         ids=lambda v: json.dumps(v) if isinstance(v, dict) else v)
def test_bad_config_in_file_is_a_format_error(tmp_path, arch_nv, arch, bad):
    nv_mem = arch_nv(arch)
    header = json.loads(json.dumps({k: v for k, v in nv_mem.header.items() if k != "sections"}))
    header["model"]["config"].update(bad)
    path = tmp_path / "bad.nvol"
    path.write_bytes(serialize_nvol(header, [nv_mem._reader.read_brick(0)]))
    with pytest.raises(NeurvolFormatError):
        with neurvol.open(path) as nv:
            nv.query([[1.0, 1.0, 1.0]])


@pytest.mark.parametrize("arch", _cases())
def test_missing_config_field_is_a_format_error(arch):
    config_cls = get_architecture(arch).config_cls
    d = config_cls().to_dict()
    del d[CASES[arch].required_field]
    with pytest.raises(NeurvolFormatError):
        config_cls.from_dict(d)


@pytest.mark.parametrize("arch", _cases("spec_module"))
def test_spec_evaluation_matches_file(arch_nv, arch):
    """Decode the stored tensors (the reference codec) and evaluate them with the spec."""
    from neurvol.compress import decode_payload
    from neurvol.neural_volume import build_model

    spec_eval = importlib.import_module(CASES[arch].spec_module)._spec_eval
    nv_mem = arch_nv(arch)
    spec = nv_mem.header["model"]
    model = build_model(spec)
    specs = [(n, tuple(v.shape)) for n, v in model.state_dict().items()]
    tensors = decode_payload(nv_mem._reader.read_brick(0), specs)
    rng = np.random.default_rng(2)
    pts = rng.uniform(-1, 1, (1000, 3))
    vol = nv_mem.header["volume"]
    mine = np.clip(vol["min"] + spec_eval(spec["config"], tensors, pts) * (vol["max"] - vol["min"]),
                   vol["min"], vol["max"])
    np.testing.assert_allclose(nv_mem.query(pts, space="normalized"), mine,
                               rtol=1e-4, atol=1e-3 * (vol["max"] - vol["min"]))
