"""ParaView reader plugin (issue 23, docs/paraview.md), run in the distribution's pvpython.

pvpython embeds its own Python, so the checks run as scripts in a subprocess: they write
what ParaView produced (arrays, extents, counters, a PNG) to a folder, and the asserts
here compare it with this process's ``decode()``. Skipped only where pvpython is absent
(Debian: ``apt-get install paraview python3-paraview xvfb``)."""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import neurvol

PVPYTHON = shutil.which("pvpython")
pytestmark = pytest.mark.skipif(
    PVPYTHON is None,
    reason="ParaView's pvpython is not installed (Debian: apt-get install paraview "
           "python3-paraview xvfb)")

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "neurvol" / "integrations" / "paraview_plugin.py"
SITE_FIX = ROOT / "neurvol" / "integrations" / "paraview_site"
RUN_TIMEOUT_S = 300
SPACING, ORIGIN = (2.0, 0.5, 1.5), (10.0, -3.0, 0.25)    # z, y, x
# A resampled grid (x, y, z) and a sub-extent (x0, x1, y0, y1, z0, z1) inside brick 0,
# clear of the blend band around its faces (at 11.5 +- 2 voxels).
RESOLUTION = (12, 10, 8)
SUB_EXTENT = (0, 7, 0, 7, 0, 5)

CHECK_SCRIPT = r'''
import json, sys
import numpy as np
from paraview import servermanager
from paraview.simple import ExtractSubset, LoadPlugin, OpenDataFile
from vtkmodules.util import numpy_support

plugin, path, out = sys.argv[1:4]
rx, ry, rz, x0, x1, y0, y1, z0, z1 = (int(v) for v in sys.argv[4:13])
LoadPlugin(plugin, ns=globals())
result = {}

def fetch(proxy):
    img = servermanager.Fetch(proxy)
    nx, ny, nz = img.GetDimensions()
    values = numpy_support.vtk_to_numpy(img.GetPointData().GetArray("volume"))
    return img, values.reshape(nz, ny, nx)

reader = OpenDataFile(path)                  # chosen by the .nvol extension
result["xml_name"] = reader.GetXMLName()
img, full = fetch(reader)
np.save(out + "/full.npy", full)
result["spacing"], result["origin"] = list(img.GetSpacing()), list(img.GetOrigin())

reader.Resolution = [rx, ry, rz]
reader.UpdatePipeline()
img, res = fetch(reader)
np.save(out + "/resampled.npy", res)
result["resampled_spacing"] = list(img.GetSpacing())
result["resampled_origin"] = list(img.GetOrigin())

# ParaView's Extract Subset asks its input for just the VOI.
subset_reader = OpenDataFile(path)
subset = ExtractSubset(Input=subset_reader, VOI=[x0, x1, y0, y1, z0, z1])
img, values = fetch(subset)
np.save(out + "/subset.npy", values)
result["subset_bricks_read"] = subset_reader.GetClientSideObject().volume().stats["bricks_read"]

# The VTK algorithm itself, asked for a sub-extent by its consumer.
alg = sys.modules["paraview_plugin"].NeurvolReader()
alg.SetFileName(path)
alg.UpdateInformation()
alg.UpdateExtent([x0, x1, y0, y1, z0, z1])
sub = alg.GetOutputDataObject(0)
result["sub_extent"] = list(sub.GetExtent())
nx, ny, nz = sub.GetDimensions()
values = numpy_support.vtk_to_numpy(sub.GetPointData().GetArray("volume"))
np.save(out + "/sub.npy", values.reshape(nz, ny, nx))
result["sub_bricks_read"] = alg.volume().stats["bricks_read"]
with open(out + "/result.json", "w") as f:
    json.dump(result, f)
'''


def _pv_env(extra_path: Path) -> dict:
    """pvpython's environment: the getargspec fix (docs/paraview.md), this checkout's
    neurvol, and this interpreter's packages (its Python version must be pvpython's)."""
    paths = [str(SITE_FIX), str(extra_path), str(ROOT),
             sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)),
               OMP_NUM_THREADS="1")
    return env


def _run_pvpython(script: Path, args, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([PVPYTHON, str(script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"pvpython failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def pv_python_matches(tmp_path_factory):
    """pvpython must run this interpreter's Python version to use its compiled packages."""
    d = tmp_path_factory.mktemp("pvver")
    script = d / "version.py"
    script.write_text("import sys; print('%d.%d' % sys.version_info[:2])\n")
    proc = subprocess.run([PVPYTHON, str(script)], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    here = "%d.%d" % sys.version_info[:2]
    found = re.findall(r"^(\d+\.\d+)$", proc.stdout, flags=re.M)
    assert found and found[-1] == here, (
        f"pvpython runs Python {found[-1] if found else '?'} but this test runs {here}: give "
        "pvpython a virtualenv of its own Python version (docs/paraview.md)")


@pytest.fixture(scope="module")
def nvol_file(tmp_path_factory):
    """The bricked golden file (24^3, 2 x 2 x 2 blended bricks) given an anisotropic spacing
    and an origin (header keys decoding does not use), and its decode. Nothing here needs
    torch, so the test also runs where neurvol reads with numpy alone."""
    from neurvol.container import NvolReader, serialize_nvol

    d = tmp_path_factory.mktemp("pv")
    with NvolReader(str(ROOT / "tests" / "golden" / "bricked_v1.1.nvol")) as reader:
        header = {k: v for k, v in reader.header.items() if k != "sections"}
        header["volume"] = dict(header["volume"], spacing=list(SPACING), origin=list(ORIGIN))
        data = serialize_nvol(header, [reader.read_brick(b) for b in range(reader.brick_count)],
                              minor=reader.version[1])
    path = d / "tiny.nvol"
    path.write_bytes(data)
    with neurvol.open(path) as nv:
        np.save(d / "decode.npy", nv.decode())
    return d, path


@pytest.fixture(scope="module")
def display(pv_python_matches):
    """An X display for rendering: $DISPLAY, else an Xvfb of our own (Debian's ParaView
    renders through X only)."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    assert xvfb, ("rendering with Debian's ParaView needs an X display: set DISPLAY or "
                  "install Xvfb (apt-get install xvfb)")
    r, w = os.pipe()
    # -noreset: by default Xvfb resets when its last client leaves, and a pvpython that
    # connects during the reset aborts ("bad X server connection"); -ac: no cookie needed.
    proc = subprocess.Popen([xvfb, "-displayfd", str(w), "-screen", "0", "1024x768x24",
                             "-nolisten", "tcp", "-noreset", "-ac"], pass_fds=(w,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 30)
        number = os.read(r, 64).decode().strip() if ready else ""
        assert number.isdigit(), "Xvfb did not report a display within 30 s"
        yield f":{number}"
    finally:
        os.close(r)
        proc.terminate()
        proc.wait(timeout=30)


def test_plugin_reads_extents_and_resolutions(nvol_file, tmp_path, pv_python_matches):
    d, path = nvol_file
    script = tmp_path / "check.py"
    script.write_text(CHECK_SCRIPT)
    _run_pvpython(script, [PLUGIN, path, tmp_path, *RESOLUTION, *SUB_EXTENT], _pv_env(d))
    result = json.loads((tmp_path / "result.json").read_text())
    nv = neurvol.open(path)
    assert result["xml_name"] == "NeurvolReader"

    # The whole grid equals decode(), in the original's dtype; VTK's axes are x, y, z.
    full = np.load(tmp_path / "full.npy")
    expected = np.load(d / "decode.npy")
    assert full.dtype == expected.dtype == np.uint8 and full.shape == (24, 24, 24)
    np.testing.assert_array_equal(full, expected)
    assert result["spacing"] == [1.5, 0.5, 2.0]
    assert result["origin"] == [0.25, -3.0, 10.0]

    # Resolution resamples as decode(shape=(z, y, x)); the corner voxel centres stay put.
    rx, ry, rz = RESOLUTION
    res = np.load(tmp_path / "resampled.npy")
    np.testing.assert_array_equal(res, nv.decode(shape=(rz, ry, rx)))
    np.testing.assert_allclose(result["resampled_spacing"],
                               [1.5 * 23 / (rx - 1), 0.5 * 23 / (ry - 1), 2.0 * 23 / (rz - 1)])
    assert result["resampled_origin"] == [0.25, -3.0, 10.0]

    # A requested sub-extent is decoded alone: its values, and only the bricks a region
    # read of it touches (fewer than all).
    x0, x1, y0, y1, z0, z1 = SUB_EXTENT
    assert result["sub_extent"] == list(SUB_EXTENT)
    sub = np.load(tmp_path / "sub.npy")
    np.testing.assert_array_equal(sub, expected[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1])
    fresh = neurvol.open(path)
    fresh[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1]
    assert result["sub_bricks_read"] == fresh.stats["bricks_read"] == 1
    # The same through ParaView's pipeline: Extract Subset's VOI reaches the reader.
    np.testing.assert_array_equal(np.load(tmp_path / "subset.npy"), sub)
    assert result["subset_bricks_read"] == 1


APP_SCRIPT = r'''
import json, sys
from paraview.simple import ExtractSubset, LoadPlugin, OpenDataFile
LoadPlugin(sys.argv[1], ns=globals())
reader = OpenDataFile(sys.argv[2])
reader.UpdatePipeline()
with open(sys.argv[3], "w") as f:
    json.dump({"name": reader.GetXMLName(), "extent": list(reader.GetDataInformation().GetExtent()),
               "range": list(reader.PointData["volume"].GetRange())}, f)
'''


@pytest.mark.parametrize("app", ["pvbatch", "paraview"])
def test_plugin_loads_in_pvbatch_and_the_gui(app, nvol_file, tmp_path, display):
    """The same plugin file in pvbatch and in the GUI application (``--script``, run
    after the main window is up, then ``--exit``)."""
    exe = shutil.which(app)
    assert exe, f"{app} is missing although pvpython is installed (Debian: package paraview)"
    d, path = nvol_file
    script = tmp_path / "app.py"
    script.write_text(APP_SCRIPT)
    out = tmp_path / "app.json"
    env = dict(_pv_env(d), DISPLAY=display)
    if app == "pvbatch":
        cmd = [exe, str(script), str(PLUGIN), str(path), str(out)]
    else:   # the GUI passes no arguments to --script: hand them over in the script itself
        script.write_text(f"import sys\nsys.argv = {[str(script), str(PLUGIN), str(path), str(out)]!r}\n"
                          + APP_SCRIPT)
        cmd = [exe, f"--script={script}", "--exit"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert out.exists(), f"{app} wrote no result ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text())
    expected = np.load(d / "decode.npy")
    assert result["name"] == "NeurvolReader"
    z, y, x = expected.shape
    assert result["extent"] == [0, x - 1, 0, y - 1, 0, z - 1]
    assert result["range"] == [float(expected.min()), float(expected.max())]


def _docs_example() -> str:
    text = (ROOT / "docs" / "paraview.md").read_text()
    block = text.split("## Example (pvpython)", 1)[1]
    return re.search(r"```python\n(.*?)```", block, flags=re.S).group(1)


def test_docs_example_renders_the_volume(nvol_file, tmp_path, display):
    d, path = nvol_file
    script = tmp_path / "render_nvol.py"
    script.write_text(_docs_example())
    png = tmp_path / "out.png"
    env = dict(_pv_env(d), DISPLAY=display)
    _run_pvpython(script, [path, png], env)
    image = _read_png(png)
    assert image.shape[:2] == (600, 600)
    # Not a blank frame: the volume covers a good part of the white background, in colours.
    rgb = image[..., :3].astype(np.int32)
    assert (rgb[:5, :5] == 255).all(), "the example's background is white"
    covered = (np.abs(rgb - 255).sum(axis=-1) > 30).mean()
    assert covered > 0.05, covered
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50


def _read_png(path: Path) -> np.ndarray:
    """The PNG as an (H, W, C) uint8 array (Pillow comes with matplotlib, in the test extra)."""
    image = pytest.importorskip("PIL.Image", reason="reading the PNG needs Pillow (pip install pillow)")
    with image.open(path) as im:
        return np.asarray(im.convert("RGB"))
