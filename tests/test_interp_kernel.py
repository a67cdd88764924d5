"""The compiled interp-grid reconstruction (neurvol/compress/interp_kernel.py) against
the numpy one: the same float32 values bit for bit, on grids of every small shape
(odd and even axes, a single plane or row, leading axes), symbol widths and steps, and on
the golden files' grids."""
from __future__ import annotations

import os

import numpy as np
import pytest

import neurvol
from neurvol.compress import interp_kernel
from neurvol.compress.interp import interp_encode, interp_reconstruct
from neurvol.compress.lorenzo import unzigzag_scaled, zigzag
from neurvol.compress.methods.interp import _float32

pytestmark = pytest.mark.skipif(not interp_kernel.available(),
                                reason="numba is not installed (pip install 'neurvol[fast]')")

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _numpy(z, shape, step):
    return _float32(interp_reconstruct(unzigzag_scaled(z, step), shape))


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 7), (2, 3, 1, 5), (5, 6, 7), (8, 8, 8),
                                   (3, 9, 4, 11), (17, 2, 16), (4, 33, 3, 2)])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_compiled_reconstruction_matches_numpy(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = np.cumsum(rng.normal(0, 1, shape), axis=-1) + rng.normal(0, 0.1, shape)
    step = {"uint8": 0.5, "uint16": 0.01, "uint32": 1e-5}[dtype]
    codes, rec = interp_encode(x, step)
    z = zigzag(codes)
    if z.max() >= np.iinfo(dtype).max:      # this width cannot hold these codes
        pytest.skip("codes too wide for the symbol width")
    z = z.astype(dtype)
    got = interp_kernel.reconstruct_symbols(z, shape, step)
    want = _numpy(z, shape, step)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
    np.testing.assert_array_equal(got, rec.astype(np.float32).reshape(-1))


def test_wrong_count_is_refused():
    with pytest.raises(ValueError):
        interp_kernel.reconstruct_symbols(np.zeros(7, np.uint8), (2, 2, 2), 1.0)


@pytest.mark.parametrize("name", sorted(f[:-5] for f in os.listdir(GOLDEN) if f.endswith(".nvol")))
def test_golden_files_decode_the_same_both_ways(name, monkeypatch):
    path = os.path.join(GOLDEN, name + ".nvol")
    try:
        with neurvol.open(path, backend="numpy") as nv:
            fast = nv.decode()
    except neurvol.NeurvolError:
        pytest.skip("not a file this reader decodes whole")
    monkeypatch.setattr(interp_kernel, "available", lambda: False)
    with neurvol.open(path, backend="numpy") as nv:
        plain = nv.decode()
    assert fast.tobytes() == plain.tobytes()


def test_an_encode_does_not_import_numba(tmp_path):
    """Encodes decode with numpy (compress/jit.py suspended): numba's LLVM would add
    ~130 MiB to every encoding process. A read afterwards compiles as usual."""
    import subprocess
    import sys
    code = (
        "import sys, numpy as np, neurvol\n"
        "v = np.random.default_rng(0).random((24, 24, 24)).astype(np.float32)\n"
        f"neurvol.encode(v, ratio=20, steps=20, quiet=True).save({str(tmp_path / 'e.nvol')!r})\n"
        "assert 'numba' not in sys.modules, 'an encode imported numba'\n"
        f"nv = neurvol.open({str(tmp_path / 'e.nvol')!r}, backend='numpy')\n"
        "nv.decode()\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
