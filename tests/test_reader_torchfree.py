"""The reader with numpy only: runs where torch is not installed (the second virtualenv of
``.ci/run``) as well as where it is.

Golden files decode as recorded; files the torch virtualenv encoded, with the torch
reader's answers beside them (``NEURVOL_READER_FIXTURES``, written by
``tests/test_reader_numpy.py``), are answered the same by the numpy reader; and reading
never needs torch (checked in a subprocess where ``import torch`` fails).
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import neurvol

from reader_cases import FIXTURES_ENV, TOLERANCE, compare

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
GOLDEN_MODEL_FILES = sorted(glob.glob(os.path.join(GOLDEN, "*.nvol")))
GOLDEN_MODEL_FILES = [p for p in GOLDEN_MODEL_FILES if os.path.exists(p.replace(".nvol", ".expected.npy"))
                      and not os.path.basename(p).startswith("series_")]   # test_series.py
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("path", GOLDEN_MODEL_FILES, ids=os.path.basename)
def test_golden_files_decode_and_query_as_recorded_with_numpy(path):
    expected = np.load(path.replace(".nvol", ".expected.npy")).astype(np.float32)
    with neurvol.open(path, backend="numpy") as nv:
        lo, hi = nv.info()["value_range"]
        atol = TOLERANCE * (hi - lo)
        np.testing.assert_allclose(nv.decode(dtype=np.float32), expected, rtol=0, atol=atol)
        rng = np.random.default_rng(0)
        idx = np.stack([rng.integers(0, n, 2000) for n in nv.shape], 1)
        want = expected[tuple(idx.T)]
        if nv.masked:   # queries answer NaN in masked cells, whatever the fill (spec/mask.md)
            want = np.where(nv.valid_mask()[tuple(idx.T)], want, np.nan)
        np.testing.assert_allclose(nv.query(idx.astype(np.float64)), want, rtol=0, atol=atol)
        region = nv[2:7, ::3, -1]
        assert region.shape == expected[2:7, ::3, -1].shape and region.dtype == nv.dtype


def test_files_encoded_with_torch_read_the_same_without_it():
    """Every file the torch virtualenv wrote, against its torch reader's answers."""
    where = os.environ.get(FIXTURES_ENV)
    if not where:
        pytest.skip(f"{FIXTURES_ENV} is not set: .ci/run sets it for the torch-free "
                    "virtualenv (tests/test_reader_numpy.py compares the readers in-process)")
    files = sorted(glob.glob(os.path.join(where, "*.nvol")))
    assert len(files) >= 10, f"expected the encoded files of test_reader_numpy.py in {where}"
    bricked = 0
    for path in files:
        with np.load(path.replace(".nvol", ".ref.npz")) as z:
            ref = {k: z[k] for k in z.files}
        with neurvol.open(path, backend="numpy") as nv:
            compare(nv, ref)
            bricked += nv.brick_count > 1
    assert bricked >= 1


_READ_WITHOUT_TORCH = r"""
import json, sys
sys.modules["torch"] = None          # `import torch` now raises ImportError
import numpy as np
import neurvol
from neurvol.cli import main
out = {}
with neurvol.open(sys.argv[1]) as nv:
    out["backend"] = nv.backend
    out["mean"] = float(nv.decode(dtype=np.float32).mean())
    out["query"] = float(nv.query([[1.0, 2.0, 3.0]])[0])
out["cli_info"] = main(["info", sys.argv[1]])
try:
    neurvol.encode(np.zeros((8, 8, 8), np.float32), ratio=2)
except neurvol.NeurvolError as exc:
    out["encode_error"] = type(exc).__name__ + ": " + str(exc)
out["torch_modules"] = sorted(m for m in sys.modules if m.startswith("torch") and sys.modules[m] is not None)
print(json.dumps(out))
"""


def test_reading_and_the_cli_need_no_torch():
    path = os.path.join(GOLDEN, "bricked_v1.1.nvol")
    env = {k: v for k, v in os.environ.items() if k != "NEURVOL_BACKEND"}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _READ_WITHOUT_TORCH, path],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = np.load(path.replace(".nvol", ".expected.npy")).astype(np.float32)
    assert out["backend"] == "numpy" and out["torch_modules"] == []
    assert out["mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert out["query"] == pytest.approx(float(expected[1, 2, 3]), abs=1e-3)
    assert out["cli_info"] == 0
    assert out["encode_error"].startswith("NeurvolDependencyError")
    assert 'pip install "neurvol[encode]"' in out["encode_error"]


def test_numpy_evaluation_modules_never_import_torch():
    """Static check of the torch-free half of the models layer (configs, numpy maths)."""
    import ast
    import pathlib

    import neurvol.models.numpy_eval as pkg

    here = pathlib.Path(pkg.__file__).parent
    files = list(here.glob("*.py")) + [here.parent / "config.py"]
    assert len(files) >= 7
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "torch" for n in names), f
