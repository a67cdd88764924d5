"""Volume rendering from the neural representation, slices, comparison and R-D figures,
and the render / compare / bench / pack-from-HDF5 / unpack-to-vti commands."""
import json

import numpy as np
import pytest

import neurvol
from neurvol import io as nvio
from neurvol.cli import main
from neurvol.errors import NeurvolInputError
from neurvol.viz import render as R

STEPS = 30


@pytest.fixture(scope="module")
def sample():
    return neurvol.sample_volume()


@pytest.fixture(scope="module")
def packed(tmp_path_factory, sample):
    d = tmp_path_factory.mktemp("render")
    np.save(d / "neghip.npy", sample)
    nv = neurvol.encode(sample, ratio=50, steps=STEPS, quiet=True, spacing=(1.0, 1.0, 2.0))
    nv.save(d / "neghip.nvol")
    return d


def test_trilinear_matches_voxels_and_midpoints(sample):
    idx = np.array([[0, 0, 0], [65, 65, 65], [10, 20, 30]], dtype=np.float64)
    norm = idx * 2 / 65 - 1
    np.testing.assert_allclose(R.trilinear(sample, norm), sample[tuple(idx.astype(int).T)], atol=1e-4)
    mid = (np.array([[10.5, 20, 30]]) * 2 / 65) - 1
    assert R.trilinear(sample, mid)[0] == pytest.approx((float(sample[10, 20, 30]) + sample[11, 20, 30]) / 2,
                                                        abs=1e-3)


def test_render_from_neural_volume_shows_structure(packed):
    pytest.importorskip("matplotlib")
    with neurvol.open(packed / "neghip.nvol") as nv:
        a = R.render_volume(nv, size=(48, 40), samples=48, azimuth=30)
        b = R.render_volume(nv, size=(48, 40), samples=48, azimuth=120, elevation=60)
    assert a.shape == (40, 48, 3) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert a.std() > 0.03                         # not a blank image
    assert (a.sum(axis=2) < 0.02).mean() > 0.2   # background shows around the volume
    assert np.abs(a - b).mean() > 0.01            # the camera matters


def test_render_array_matches_neural_rendering_roughly(packed, sample):
    pytest.importorskip("matplotlib")
    with neurvol.open(packed / "neghip.nvol") as nv:
        a = R.render_volume(nv, size=(32, 32), samples=48, value_range=(0, 255))
    # Same box aspect as the packed file (spacing 1, 1, 2), rendered from the original grid.
    b = R.render_volume(R.as_field(sample, spacing=(1.0, 1.0, 2.0)), size=(32, 32), samples=48,
                        value_range=(0, 255))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8


def test_render_background_and_empty_volume():
    pytest.importorskip("matplotlib")
    img = R.render_volume(np.zeros((4, 4, 4), np.float32), size=(8, 8), samples=8,
                          background=(1.0, 0.5, 0.0))
    np.testing.assert_allclose(img.reshape(-1, 3), np.tile([1.0, 0.5, 0.0], (64, 1)), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"size": (0, 10)}, {"samples": 1}, {"distance": 0.5},
                                    {"opacity": (0.5, 0.2)}, {"cmap": "no-such-map"}, {"density": -1}])
def test_render_rejects_bad_parameters(sample, kwargs):
    pytest.importorskip("matplotlib")
    with pytest.raises(NeurvolInputError):
        R.render_volume(sample, **{"size": (8, 8), "samples": 8, **kwargs})


def test_mid_slices_from_nvol_equal_decode(packed):
    with neurvol.open(packed / "neghip.nvol") as nv:
        z, y, x = R.mid_slices(nv)
        full = nv.decode()
    np.testing.assert_array_equal(z, full[33])
    np.testing.assert_array_equal(y, full[:, 33])
    np.testing.assert_array_equal(x, full[:, :, 33])


def _png(path):
    import matplotlib.image

    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3
    return img[..., :3]


def test_cli_render_and_slices(packed, capsys):
    pytest.importorskip("matplotlib")
    out1, out2, out3 = packed / "v1.png", packed / "v2.png", packed / "s.png"
    args = [str(packed / "neghip.nvol"), "--size", "64x48", "--samples", "48", "-q"]
    assert main(["render", *args, "-o", str(out1)]) == 0
    assert main(["render", *args, "-o", str(out2), "--azimuth", "200", "--elevation", "-40"]) == 0
    a, b = _png(out1), _png(out2)
    assert a.shape == (48, 64, 3) and a.std() > 0.03
    assert np.abs(a - b).mean() > 0.01
    assert main(["render", str(packed / "neghip.nvol"), "--slices", "-o", str(out3), "-q"]) == 0
    assert _png(out3).std() > 0.05
    assert main(["render", *args, "-o", str(out1)]) == 1            # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert main(["render", *args, "-o", str(out1), "--size", "64"]) == 2


def test_cli_compare_psnr_in_title(packed, capsys):
    pytest.importorskip("matplotlib")
    out = packed / "cmp.png"
    assert main(["compare", str(packed / "neghip.npy"), str(packed / "neghip.nvol"), "-o", str(out),
                 "--size", "40x40", "--samples", "32"]) == 0
    text = capsys.readouterr().out
    with neurvol.open(packed / "neghip.nvol") as nv:
        want = neurvol.metrics.psnr(neurvol.sample_volume(), nv.decode())
    assert f"PSNR {want:.2f} dB" in text
    img = _png(out)
    assert img.shape[0] > 400 and img.std() > 0.05


def test_cli_compare_shape_mismatch(packed, capsys):
    pytest.importorskip("matplotlib")
    np.save(packed / "small.npy", np.zeros((4, 4, 4), np.uint8))
    assert main(["compare", str(packed / "small.npy"), str(packed / "neghip.nvol"), "-o",
                 str(packed / "x.png")]) == 1
    assert "shape" in capsys.readouterr().err


def test_cli_bench_table_plot_and_skips(packed, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from neurvol.bench import baselines as B

    # Pretend zfp's package is missing: it must be skipped with a note, not fail the run.
    monkeypatch.setitem(B.BASELINES, "zfp", B._Entry(B.BASELINES["zfp"].fn, "no_such_module_zfp",
                                                    True, ""))
    plot, js = packed / "rd.png", packed / "rows.json"
    rc = main(["bench", str(packed / "neghip.npy"), "--ratios", "50,200", "--steps", str(STEPS),
               "--methods", "neurvol,downsample,zfp,zstd", "--query-points", "2000",
               "--plot", str(plot), "--json", str(js), "-q", "-f"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "skipping baseline zfp" in err
    lines = out.splitlines()
    assert any(l.startswith("method") and "PSNR dB" in l and "max error" in l and "decode s" in l
               for l in lines)
    assert sum(l.startswith("neurvol-") for l in lines) == 2
    assert sum(l.startswith("downsample") for l in lines) == 2
    assert sum(l.startswith("zstd") for l in lines) == 1
    assert not any(l.startswith("zfp") for l in lines)
    rows = json.loads(js.read_text())["rows"]
    assert all(isinstance(r["psnr_db"], (float, str)) for r in rows)
    assert _png(plot).std() > 0.02


def test_cli_bench_unknown_method(packed, capsys):
    assert main(["bench", str(packed / "neghip.npy"), "--methods", "nope"]) == 1
    assert "unknown method" in capsys.readouterr().err


def test_pack_from_netcdf_variable_carries_geometry_to_vti(tmp_path, sample, capsys):
    h5py = pytest.importorskip("h5py")
    src = tmp_path / "run.nc"
    spacing, origin = (2.0, 1.0, 0.5), (10.0, 20.0, 30.0)
    nvio.write_volume(src, sample, spacing=spacing, origin=origin)
    with h5py.File(src, "a") as f:
        f.create_dataset("other", data=sample[:4])
    nvol, vti = tmp_path / "run.nvol", tmp_path / "recon.vti"
    assert main(["pack", f"{src}:/volume", "-o", str(nvol), "--ratio", "50", "--steps", "5", "-q"]) == 0
    with neurvol.open(nvol) as nv:
        assert nv.info()["spacing"] == list(spacing) and nv.info()["origin"] == list(origin)
        dec = nv.decode()
    assert main(["unpack", str(nvol), "-o", str(vti), "-q"]) == 0
    back = nvio.load_volume(vti)
    np.testing.assert_array_equal(np.asarray(back.data), dec)
    assert back.spacing == spacing and back.origin == origin
    # Decoding on a finer grid keeps the extent: spacing shrinks accordingly.
    fine = tmp_path / "fine.h5"
    assert main(["unpack", str(nvol), "-o", str(fine), "--shape", "131,131,131", "-q"]) == 0
    assert nvio.load_volume(fine).spacing == (1.0, 0.5, 0.25)
    # Ambiguous file without a variable name: error lists the candidates.
    assert main(["pack", str(src), "-o", str(tmp_path / "x.nvol"), "-q"]) == 1
    assert "/other, /volume" in capsys.readouterr().err
