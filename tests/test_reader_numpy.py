"""The torch-free reader (issue 23): the numpy backend answers as the torch one.

Every golden file and freshly encoded files of every architecture, codec option and a
blended bricked file decode, resample, region-read and query within 1e-5 of the data range
of the torch reader, with the numpy path forced in-process and, for a golden and a bricked
file, in a subprocess where ``import torch`` fails. With ``NEURVOL_READER_FIXTURES`` set,
the encoded files and the torch reader's answers are also written there, for the
torch-free virtualenv of ``.ci/run`` (``tests/test_reader_torchfree.py``).
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import neurvol
from neurvol.backend import BACKEND_ENV
from neurvol.models import architectures, get_architecture
from neurvol.models.numpy_eval import get_numpy_architecture, numpy_architectures

from reader_cases import FIXTURES_ENV, TOLERANCE, compare, record

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
# Time series (series_*) read through NeuralSeries: tests/test_series.py compares backends.
GOLDEN_FILES = sorted(p for p in glob.glob(os.path.join(GOLDEN, "*.nvol"))
                      if not os.path.basename(p).startswith("series_"))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(steps=30, seed=1, quiet=True, device="cpu")
#: name -> (volume: "small" | "sample", encode options). Every architecture, every grid
#: codec, pruning, and bricked files with blending.
CASES = {
    "fvsrn": ("small", dict(ratio=5, arch="fvsrn")),
    "fvsrn_kmeans": ("small", dict(ratio=5, arch="fvsrn", codec={"grids": "kmeans"})),
    "fvsrn_lorenzo": ("small", dict(ratio=5, arch="fvsrn", codec={"grids": "lorenzo"})),
    "fvsrn_interp": ("small", dict(ratio=5, arch="fvsrn", codec={"grids": "interp"})),
    "fvsrn_vq": ("small", dict(ratio=5, arch="fvsrn", codec={"grids": "vq"})),
    "fvsrn_pruned": ("small", dict(ratio=5, arch="fvsrn", codec={"prune": 0.3})),
    "neurcomp": ("small", dict(ratio=4, arch="neurcomp", layers=4)),
    "neurcomp_pruned": ("small", dict(ratio=4, arch="neurcomp", layers=4, codec={"prune": 0.3})),
    "hashgrid": ("small", dict(ratio=4, arch="hashgrid")),
    "amgsrn": ("small", dict(ratio=4, arch="amgsrn")),
    "amgsrn_vq_pruned": ("small", dict(ratio=4, arch="amgsrn", codec={"grids": "vq", "prune": 0.2})),
    "bricked_fvsrn": ("sample", dict(ratio=8, arch="fvsrn", bricks=(2, 2, 2), ghost=2)),
    "bricked_amgsrn": ("sample", dict(ratio=6, arch="amgsrn", bricks=(2, 1, 2), ghost=2)),
}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return os.environ.get(FIXTURES_ENV) or str(tmp_path_factory.mktemp("reader"))


@pytest.fixture(scope="module")
def encoded(small_volume, fixture_dir):
    """name -> path of each case's file; the torch reader's record is saved beside it."""
    os.makedirs(fixture_dir, exist_ok=True)
    volumes = {"small": small_volume, "sample": neurvol.sample_volume()}
    paths = {}
    for name, (vol, opts) in CASES.items():
        path = os.path.join(fixture_dir, name + ".nvol")
        neurvol.encode(volumes[vol], **opts, **TINY).save(path)
        with neurvol.open(path, backend="torch") as nv:
            np.savez(os.path.join(fixture_dir, name + ".ref.npz"), **record(nv))
        paths[name] = path
    return paths


def _ref(path):
    with np.load(path.replace(".nvol", ".ref.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fresh_files_numpy_reader_matches_torch(encoded, name):
    path = encoded[name]
    with neurvol.open(path, backend="numpy") as nv:
        assert nv.backend == "numpy"
        compare(nv, _ref(path))
        if CASES[name][1].get("bricks"):
            assert nv.brick_count > 1 and nv.header["bricks"]["blend"] == "linear"


def test_cases_cover_every_architecture_and_codec(encoded):
    archs, stages = set(), set()
    for path in encoded.values():
        with neurvol.open(path, backend="numpy") as nv:
            bricks = nv.header.get("bricks") or {}
            for spec in bricks.get("models") or [nv.header["model"]]:
                archs.add(spec["arch"])
            stages.update(nv.info()["codec"]["stages"])
    assert archs == set(numpy_architectures())
    assert {"kmeans", "lorenzo", "interp", "vq", "prune"} <= stages


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=os.path.basename)
def test_golden_numpy_reader_matches_torch(path):
    with neurvol.open(path, backend="torch") as ref, neurvol.open(path, backend="numpy") as nv:
        assert (ref.backend, nv.backend) == ("torch", "numpy")
        compare(nv, record(ref))


def test_every_architecture_has_a_numpy_evaluation_and_the_same_tensor_list():
    assert set(architectures()) == set(numpy_architectures())
    for name in architectures():
        arch = get_architecture(name)
        assert get_numpy_architecture(name).config_cls is arch.config_cls
        cfg = arch.config_cls()
        model = arch.build(cfg)
        assert [(n, tuple(t.shape)) for n, t in model.state_dict().items()] == cfg.tensor_specs()


def test_numpy_models_match_torch_modules_off_the_data():
    """Random weights far from any fit (grids and tables rough; neurcomp keeps its SIREN
    init, whose sines random weights would turn to noise), points all over [-1, 1]^3.
    The reference is the torch module in float64: the spec's maths without float32
    rounding; both float32 evaluations, numpy and torch, must stay within 1e-5 of the
    range of it (amgsrn's former float32 atlas lookup erred by ~2e-5 here)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (5000, 3)).astype(np.float32)
    pts[:8] = np.stack(np.meshgrid(*[[-1.0, 1.0]] * 3, indexing="ij"), -1).reshape(-1, 3)
    for name in architectures():
        arch = get_architecture(name)
        model = arch.build(arch.config_cls()).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "transforms" not in n and (name != "neurcomp" or n.endswith("bias")):
                    p.normal_(0, 0.3)
            arrays = {n: t.numpy().copy() for n, t in model.state_dict().items()}
            got_torch = model(torch.from_numpy(pts)).numpy()
            exact = model.double()(torch.from_numpy(pts).double()).numpy()
        got = get_numpy_architecture(name).build(model.config, arrays)(pts)
        assert got.dtype == np.float32
        span = float(exact.max() - exact.min())
        np.testing.assert_allclose(got, exact, rtol=0, atol=TOLERANCE * span, err_msg=name)
        np.testing.assert_allclose(got_torch, exact, rtol=0, atol=TOLERANCE * span, err_msg=name)


def _low_coverage_amgsrn():
    """Two grids, each covering 1/64 of the domain (scale 4): grid 0 at the centre, grid 1
    at the (+, +, +) corner; every vertex and the MLP are random, so any leak shows. The
    grids are large enough that the float32 atlas row coordinate of the torch lookup is
    ~1e-5 of a row off."""
    from neurvol.models.amgsrn import AMGSRN, AMGSRNConfig

    torch.manual_seed(5)
    cfg = AMGSRNConfig(grids=2, grid=(33, 31, 29), channels=2, width=8, hidden_layers=2)
    model = AMGSRN(cfg).eval()
    with torch.no_grad():
        model.grids.uniform_(0.2, 1.0)
        for p in model.mlp.parameters():
            p.normal_(0, 0.5)
        model.transforms[0].copy_(torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]]))
        model.transforms[1].copy_(torch.tensor([[4.0, 0, 0, -3.0], [0, 4.0, 0, -3.0], [0, 0, 4.0, -3.0]]))
    return cfg, model


def test_amgsrn_is_exactly_zero_one_cell_outside_a_grid():
    """spec/arch/amgsrn.md §3: beyond one cell outside a grid its features are exactly 0,
    so where no grid covers a point the value is exactly the MLP at f = 0 (the torch
    atlas lookup used to leak a neighbouring slice's value there, which the coverage
    floor then multiplied by 1000)."""
    cfg, model = _low_coverage_amgsrn()
    rng = np.random.default_rng(1)
    # Grid 0's box is [-0.25, 0.25]^3 with cells of 0.5 / (n - 1): put points 1 to 3
    # cells outside it along one axis (either side), inside its extent along the others.
    n = 6000
    cell = 0.5 / (np.asarray(cfg.grid, dtype=np.float64) - 1)
    pts = rng.uniform(-0.24, 0.24, (n, 3))
    axis = rng.integers(0, 3, n)
    depth = rng.uniform(1.001, 3.0, n)     # (exactly 1: float32 rounding may leave a sliver)
    pts[np.arange(n), axis] = rng.choice([-1.0, 1.0], n) * (0.25 + depth * cell[axis])
    pts = pts.astype(np.float32)
    local = model.local_coords(torch.from_numpy(pts))
    with torch.no_grad():
        assert float(model.coverage(local).sum()) == 0.0
        expected = float(model.mlp(torch.zeros(1, cfg.grids * cfg.channels))[0, 0])
        got_torch = model(torch.from_numpy(pts)).numpy()
    arrays = {n: t.numpy() for n, t in model.state_dict().items()}
    got_numpy = get_numpy_architecture("amgsrn").build(cfg, arrays)(pts)
    with torch.enable_grad():                       # the training path (autograd)
        got_train = model(torch.from_numpy(pts)).detach().numpy()
    for got in (got_torch, got_numpy, got_train):
        # Every point gives the same value, bit for bit: nothing of the grids reaches it
        # (each path's MLP may round MLP(0) differently in the last bit).
        assert np.unique(got).size == 1
        np.testing.assert_allclose(got[0], expected, rtol=1e-6)


def test_amgsrn_low_coverage_numpy_matches_torch():
    """Around and inside the small grids the two evaluations agree (except where the
    coverage is a sliver of the floor: see below)."""
    cfg, model = _low_coverage_amgsrn()
    rng = np.random.default_rng(2)
    pts = rng.uniform(-0.3, 0.3, (20000, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model.double()(torch.from_numpy(pts).double()).numpy()
        cover = model.coverage(model.local_coords(torch.from_numpy(pts).double())).sum(0).numpy()
    assert (cover == 0).mean() > 0.2 and (cover == 1).mean() > 0.2
    arrays = {n: t.float().numpy() for n, t in model.state_dict().items()}
    got = get_numpy_architecture("amgsrn").build(cfg, arrays)(pts)
    # Where the coverage is under 1e-2, float32 rounding of the cell fraction (~1e-7 of
    # a cell) is divided by at most 1e-3: compare the rest at 1e-5 of the range.
    ok = (cover == 0) | (cover > 1e-2)
    assert ok.mean() > 0.99
    span = float(ref.max() - ref.min())
    np.testing.assert_allclose(got[ok], ref[ok], rtol=0, atol=TOLERANCE * span)


_NO_TORCH = r"""
import json, sys
sys.modules["torch"] = None          # `import torch` now raises ImportError
import numpy as np
import neurvol
path, ref_path = sys.argv[1], sys.argv[2]
with neurvol.open(path) as nv:
    out = {"backend": nv.backend, "shape": nv.info()["shape"]}
    ref = dict(np.load(ref_path))
    sys.path.insert(0, sys.argv[3])
    from reader_cases import compare
    compare(nv, ref)
try:
    neurvol.encode(np.zeros((8, 8, 8), np.float32), ratio=2)
except neurvol.NeurvolDependencyError as exc:
    out["encode_error"] = str(exc)
out["torch_modules"] = sorted(m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None)
print(json.dumps(out))
"""


@pytest.mark.parametrize("which", ["golden", "bricked"])
def test_reader_without_torch_in_a_subprocess(encoded, tmp_path, which):
    if which == "golden":
        path = os.path.join(GOLDEN, "codec2_amgsrn.nvol")
        ref_path = str(tmp_path / "golden.ref.npz")
        with neurvol.open(path, backend="torch") as nv:
            np.savez(ref_path, **record(nv))
    else:
        path = encoded["bricked_amgsrn"]
        ref_path = path.replace(".nvol", ".ref.npz")
    env = {k: v for k, v in os.environ.items() if k != BACKEND_ENV}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, path, ref_path,
                           os.path.dirname(__file__)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "numpy" and out["shape"] == list(np.load(ref_path)["decode"].shape)
    assert out["torch_modules"] == []
    assert "neurvol[encode]" in out["encode_error"]


def test_backend_choice(monkeypatch):
    path = GOLDEN_FILES[0]
    assert neurvol.open(path).backend == "torch"            # torch installed: the default
    monkeypatch.setenv(BACKEND_ENV, "numpy")
    assert neurvol.open(path).backend == "numpy"
    assert neurvol.open(path, backend="torch").backend == "torch"   # the argument wins
    monkeypatch.setenv(BACKEND_ENV, "jax")
    with pytest.raises(neurvol.NeurvolInputError, match="NEURVOL_BACKEND"):
        neurvol.open(path)
    monkeypatch.delenv(BACKEND_ENV)
    with pytest.raises(neurvol.NeurvolInputError, match="backend must be one of"):
        neurvol.open(path, backend="tensorflow")
    with pytest.raises(neurvol.NeurvolInputError, match="numpy backend runs on the CPU"):
        neurvol.open(path, backend="numpy", device="cuda")
