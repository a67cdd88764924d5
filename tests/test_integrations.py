"""Readers for other tools (issue 23): the array protocol and dask, the xarray backend, the
napari reader plugin, and the examples of docs/xarray.md and docs/napari.md.

Each part skips (with the reason) only where its optional package is missing; the test
extra installs them all. Files are tiny (fvsrn, few steps) so the encodes take seconds."""
from __future__ import annotations

import importlib
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import neurvol
from neurvol import NeurvolFormatError, NeurvolInputError
from neurvol.arrays import dask_array, sources
from neurvol.integrations.metadata import geometry

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(arch="fvsrn", steps=20, seed=3, quiet=True, device="cpu")
SPACING, ORIGIN = (2.0, 0.5, 1.5), (10.0, -3.0, 0.25)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A bricked file (2 x 3 x 2 bricks, blended, anisotropic spacing, an origin) and a
    single-model file; the directory also serves the docs' examples."""
    d = tmp_path_factory.mktemp("integrations")
    sample = neurvol.sample_volume()
    neurvol.encode(sample, ratio=8, bricks=(2, 3, 2), ghost=2, spacing=SPACING, origin=ORIGIN,
                   **FAST).save(d / "bricked.nvol")
    neurvol.encode(sample, ratio=100, **FAST).save(d / "neghip.nvol")
    return d


@pytest.fixture
def bricked(files):
    with neurvol.open(files / "bricked.nvol") as nv:
        yield nv


@pytest.fixture(scope="module")
def bricked_decode(files):
    with neurvol.open(files / "bricked.nvol") as nv:
        return nv.decode()


def _bricks_for(path, key) -> int:
    """Bricks a region read of ``key`` decodes, on a freshly opened file."""
    with neurvol.open(path) as nv:
        nv[key]
        return nv.stats["bricks_read"]


# ---------------------------------------------------------------------- array protocol
def test_array_protocol(bricked, bricked_decode):
    assert bricked.ndim == 3 and bricked.shape == (66, 66, 66) and bricked.dtype == np.uint8
    assert bricked.size == 66 ** 3
    full = np.asarray(bricked)
    assert full.dtype == np.uint8
    np.testing.assert_array_equal(full, bricked_decode)
    as_float = np.asarray(bricked, dtype=np.float32)
    assert as_float.dtype == np.float32
    np.testing.assert_array_equal(as_float, bricked_decode.astype(np.float32))
    np.testing.assert_array_equal(np.array(bricked, copy=True), bricked_decode)
    with pytest.raises(NeurvolInputError, match="copy=False"):
        np.asarray(bricked, copy=False)
    with pytest.raises(ValueError):         # numpy's contract for copy=False
        np.array(bricked, copy=False)
    np.testing.assert_array_equal(bricked[3:9, ::5, [1, 40]], bricked_decode[3:9, ::5][:, :, [1, 40]])


@pytest.mark.parametrize("shape,grid", [((66, 66, 66), (2, 3, 2)), ((9, 40, 17), (8, 3, 1)),
                                        ((130, 2, 7), (5, 1, 6))])
def test_owned_sizes_partition_like_the_layout(shape, grid):
    from neurvol.ensemble.geometry import BrickLayout

    layout = BrickLayout.checked(shape, grid, 0, False)
    for axis, (n, nb) in enumerate(zip(shape, grid)):
        sizes = dask_array.owned_sizes(n, nb)
        assert sum(sizes) == n and min(sizes) >= 1
        starts = np.cumsum((0,) + sizes[:-1])
        for c in range(nb):
            b = int(np.ravel_multi_index(tuple(c if a == axis else 0 for a in range(3)), grid))
            core = layout.core_slices(b)[axis]
            assert (core.start, core.stop) == (starts[c], starts[c] + sizes[c])


def test_to_dask_has_one_chunk_per_brick(files, bricked, bricked_decode):
    da = pytest.importorskip("dask.array", reason="to_dask() needs dask (pip install dask)")
    arr = bricked.to_dask()
    assert isinstance(arr, da.Array) and arr.dtype == np.uint8 and arr.shape == bricked.shape
    assert arr.chunks == ((33, 33), (22, 22, 22), (33, 33))
    assert arr.numblocks == (2, 3, 2) and bricked.stats["bricks_read"] == 0   # lazy
    # One block decodes what a region read of its voxels decodes: its brick and, with
    # blending, the neighbours across the faces it borders (a corner brick: 8 of 12).
    block = arr.blocks[0, 0, 1].compute()
    np.testing.assert_array_equal(block, bricked_decode[:33, :22, 33:])
    key = (slice(0, 33), slice(0, 22), slice(33, 66))
    assert bricked.stats["bricks_read"] == _bricks_for(files / "bricked.nvol", key) < 12
    np.testing.assert_array_equal(arr.compute(), bricked_decode)
    custom = bricked.to_dask(chunks=(10, 66, 30))
    assert custom.chunks[0] == (10,) * 6 + (6,)
    np.testing.assert_array_equal(custom[5:25, 3, ::7].compute(), bricked_decode[5:25, 3, ::7])
    with pytest.raises(NeurvolInputError, match="chunks"):
        bricked.to_dask(chunks=(10, 10))


def test_to_dask_blocks_a_single_model():
    pytest.importorskip("dask.array", reason="to_dask() needs dask (pip install dask)")
    edge = dask_array.SINGLE_MODEL_BLOCK
    nv = neurvol.encode(np.full((edge + 2, 5, 3), 7, dtype=np.int16), ratio=2, quiet=True)
    arr = nv.to_dask()
    assert arr.chunks == ((edge, 2), (5,), (3,))
    out = arr.compute()
    assert out.dtype == np.int16 and (out == 7).all()


def test_to_dask_pickles_as_the_files_bytes(bricked, bricked_decode):
    pytest.importorskip("dask.array", reason="to_dask() needs dask (pip install dask)")
    arr = bricked.to_dask()
    copy = pickle.loads(pickle.dumps(arr))
    np.testing.assert_array_equal(copy.compute(scheduler="threads"), bricked_decode)
    source = pickle.loads(pickle.dumps(sources.RegionSource(bricked)))
    assert source.nv is not bricked and source.nv.to_bytes() == bricked.to_bytes()
    coarse = pickle.loads(pickle.dumps(sources.ResampledSource(bricked, (9, 8, 7))))
    assert coarse.shape == (9, 8, 7) and coarse.nv is not bricked
    np.testing.assert_array_equal(coarse[...], bricked.decode(shape=(9, 8, 7)))


def test_closed_volume_refuses_to_dask(files):
    pytest.importorskip("dask.array", reason="to_dask() needs dask (pip install dask)")
    nv = neurvol.open(files / "neghip.nvol")
    nv.close()
    with pytest.raises(NeurvolInputError, match="closed"):
        nv.to_dask()


@pytest.mark.parametrize("shape", [(33, 33, 33), (7, 70, 3), (66, 1, 20)])
def test_resampled_is_a_lazy_decode_of_that_shape(bricked, shape):
    pytest.importorskip("dask.array", reason="resampled() needs dask (pip install dask)")
    arr = dask_array.resampled(bricked, shape, chunks=(8, 9, 10))
    assert arr.shape == shape and arr.dtype == bricked.dtype
    np.testing.assert_array_equal(arr.compute(), bricked.decode(shape=shape))


@pytest.mark.parametrize("key,outer", [
    (np.s_[...], np.s_[:, :, :]),
    (3, np.s_[3, :, :]),
    (np.s_[2, 5:9, -1], np.s_[2, 5:9, 32]),
    (np.s_[..., 1], np.s_[:, :, 1]),
    (np.s_[::-4, [0, 2], 7:], np.s_[::-4, [0, 2], 7:]),
    (np.s_[:, np.arange(33) % 2 == 0], np.s_[:, ::2, :]),
])
def test_resampled_source_indexes_like_a_decode(bricked, monkeypatch, key, outer):
    src = sources.ResampledSource(bricked, (33, 33, 33))
    # Outer indexing: each axis's key picks its indices independently; ints drop the axis.
    picks = [np.arange(33)[k] for k in outer]
    expected = bricked.decode(shape=(33, 33, 33))[np.ix_(*[np.atleast_1d(p) for p in picks])]
    expected = expected.reshape([len(p) for p in picks if np.ndim(p) == 1])
    np.testing.assert_array_equal(src[key], expected)
    monkeypatch.setattr(sources, "_QUERY_POINTS", 50)      # many small queries
    np.testing.assert_array_equal(src[key], expected)


@pytest.mark.parametrize("key", [(0, 0, 33), (None,), (..., ...), (np.zeros((2, 2), int),),
                                 (1.5,), (np.ones(5, bool),), (0, 0, 0, 0)])
def test_resampled_source_refuses_bad_keys(bricked, key):
    with pytest.raises(NeurvolInputError):
        sources.ResampledSource(bricked, (33, 33, 33))[key]


def test_geometry_rejects_a_bad_spacing(bricked):
    assert geometry(bricked) == (SPACING, ORIGIN)
    bricked.header["volume"] = dict(bricked.header["volume"], spacing=[1.0, "a", 1.0])
    with pytest.raises(NeurvolFormatError, match="spacing"):
        geometry(bricked)


# ---------------------------------------------------------------------- xarray
@pytest.fixture(scope="module")
def xr():
    return pytest.importorskip("xarray", reason="the xarray backend needs xarray "
                                                "(pip install 'neurvol[xarray]')")


def _pyproject_entry_point(group: str) -> str:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["entry-points"][group]["neurvol"]


def test_pyproject_declares_the_entry_points():
    target = _pyproject_entry_point("xarray.backends")
    module, attr = target.split(":")
    assert attr == "NeurvolBackendEntrypoint"
    assert importlib.util.find_spec(module) is not None
    package, resource = _pyproject_entry_point("napari.manifest").split(":")
    assert (ROOT / package.replace(".", "/") / resource).is_file()


@pytest.fixture
def neurvol_engine(xr, tmp_path, monkeypatch):
    """``engine="neurvol"`` as installed; where this checkout is not pip-installed, the
    pyproject's entry point is registered through a throwaway distribution, so xarray's
    own plugin discovery is what the tests use."""
    if "neurvol" not in xr.backends.list_engines():
        dist = tmp_path / "neurvol_entry_points-0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: neurvol-entry-points\n"
                                       "Version: 0\n")
        (dist / "entry_points.txt").write_text(
            f"[xarray.backends]\nneurvol = {_pyproject_entry_point('xarray.backends')}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        xr.backends.refresh_engines()
    yield "neurvol"
    xr.backends.refresh_engines()


def test_xarray_opens_lazily_with_coordinates_and_attributes(xr, files, neurvol_engine,
                                                             bricked_decode):
    nv = neurvol.open(files / "bricked.nvol")
    ds = xr.open_dataset(nv, engine=neurvol_engine)
    assert nv.stats["bricks_read"] == 0                  # nothing decoded at open
    var = ds["volume"]
    assert var.dims == ("z", "y", "x") and var.dtype == np.uint8 and var.shape == (66, 66, 66)
    for dim, s, o in zip("zyx", SPACING, ORIGIN):
        np.testing.assert_allclose(ds[dim].values, o + s * np.arange(66))
    assert ds.attrs["architecture"] == "fvsrn"
    assert ds.attrs["ratio"] == pytest.approx(nv.ratio)
    assert ds.attrs["fit_psnr"] == pytest.approx(nv.fit_psnr)
    assert ds.attrs["brick_grid"] == [2, 3, 2]
    assert "max_error" not in ds.attrs                  # this writer does not record it
    assert var.attrs == ds.attrs
    assert nv.stats["bricks_read"] == 0
    np.testing.assert_array_equal(var.values, bricked_decode)


@pytest.mark.parametrize("select,key", [
    (dict(z=5), (5, slice(None), slice(None))),
    (dict(y=slice(0, 10), x=slice(40, 66)), (slice(None), slice(0, 10), slice(40, 66))),
    (dict(x=[3, 50], z=60), (60, slice(None), np.array([3, 50]))),
])
def test_xarray_isel_decodes_only_the_bricks_it_touches(xr, files, neurvol_engine,
                                                        bricked_decode, select, key):
    nv = neurvol.open(files / "bricked.nvol")
    ds = xr.open_dataset(nv, engine=neurvol_engine)
    values = ds["volume"].isel(**select).values
    outer = bricked_decode[key[0]][:, key[1]] if np.ndim(key[0]) == 0 else bricked_decode[:, key[1]]
    np.testing.assert_array_equal(values, outer[..., key[2]])
    touched = _bricks_for(files / "bricked.nvol", key)
    assert nv.stats["bricks_read"] == touched < nv.brick_count


def test_xarray_sel_by_coordinate(xr, files, neurvol_engine, bricked_decode):
    nv = neurvol.open(files / "bricked.nvol")
    ds = xr.open_dataset(nv, engine=neurvol_engine)
    # z = 10 + 2 k: z = 20 is slice 5; x = 0.25 + 1.5 i: [0.25, 6.25] is i = 0..4.
    out = ds["volume"].sel(z=20.0, x=slice(0.25, 6.25)).values
    np.testing.assert_array_equal(out, bricked_decode[5, :, 0:5])
    assert nv.stats["bricks_read"] == _bricks_for(files / "bricked.nvol", (5, slice(None), slice(0, 5)))


def test_xarray_chunks_are_the_bricks(xr, files, neurvol_engine, bricked_decode):
    pytest.importorskip("dask.array", reason="chunks={} needs dask (pip install dask)")
    ds = xr.open_dataset(files / "bricked.nvol", engine=neurvol_engine, chunks={})
    var = ds["volume"]
    assert var.chunks == ((33, 33), (22, 22, 22), (33, 33))
    assert var.encoding["preferred_chunks"] == {"z": (33, 33), "y": (22, 22, 22), "x": (33, 33)}
    assert var.encoding["source"] == str(files / "bricked.nvol")
    np.testing.assert_array_equal(var.isel(z=slice(30, 40)).compute().values,
                                  bricked_decode[30:40])
    single = xr.open_dataset(files / "neghip.nvol", engine=neurvol_engine, chunks={})
    assert single["volume"].chunks == ((66,), (66,), (66,))
    ds.close()
    single.close()


def test_xarray_closes_the_files_it_opened(xr, files, neurvol_engine):
    ds = xr.open_dataset(files / "neghip.nvol", engine=neurvol_engine)
    ds.close()
    with pytest.raises(NeurvolInputError, match="closed"):
        ds["volume"].values
    nv = neurvol.open(files / "neghip.nvol")
    xr.open_dataset(nv, engine=neurvol_engine).close()
    assert not nv.closed                                  # the caller's stays open


def test_xarray_sources_and_options(xr, files, neurvol_engine):
    from neurvol.integrations.xarray_backend import NeurvolBackendEntrypoint

    path = files / "neghip.nvol"
    data = path.read_bytes()
    with open(path, "rb") as f:
        from_file = xr.open_dataset(f, engine=neurvol_engine, name="density")
        assert list(from_file.data_vars) == ["density"]
    from_bytes = xr.open_dataset(data, engine=neurvol_engine, drop_variables=["volume"])
    assert list(from_bytes.data_vars) == [] and from_bytes.sizes == {"z": 66, "y": 66, "x": 66}
    entry = NeurvolBackendEntrypoint()
    renamed = files / "neghip.data"
    renamed.write_bytes(data)
    assert entry.guess_can_open(str(path)) and entry.guess_can_open(renamed)
    assert not entry.guess_can_open(ROOT / "pyproject.toml")
    assert not entry.guess_can_open(files)                 # a directory
    xr.open_dataset(renamed).close()                       # found by its signature
    with pytest.raises(NeurvolFormatError):
        xr.open_dataset(ROOT / "pyproject.toml", engine=neurvol_engine)


# ---------------------------------------------------------------------- napari
MANIFEST = ROOT / "neurvol" / "integrations" / "napari.yaml"


@pytest.fixture(scope="module")
def npe2():
    return pytest.importorskip("npe2", reason="the napari plugin tests need npe2 "
                                              "(pip install npe2)")


def test_npe2_validate(npe2):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "npe2", "validate", str(MANIFEST), "--imports"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stdout + proc.stderr


def test_napari_reader_returns_a_lazy_multiscale_image(npe2, files, bricked_decode):
    from neurvol.arrays import ResampledSource

    pm = npe2.PluginManager.instance()
    pm.discover()
    try:
        pm.get_manifest("neurvol")
    except KeyError:            # this checkout is not pip-installed: register its manifest
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    path = str(files / "bricked.nvol")
    layers = npe2.read([path], stack=False, plugin_name="neurvol")
    assert len(layers) == 1
    levels, kwargs, layer_type = layers[0]
    assert layer_type == "image" and kwargs["multiscale"] is True
    assert isinstance(levels[0], neurvol.NeuralVolume) and isinstance(levels[1], ResampledSource)
    # napari's layer-data protocol: shape, dtype, ndim, size, __getitem__.
    assert [lv.shape for lv in levels] == [(66, 66, 66), (33, 33, 33)]
    assert [lv.size for lv in levels] == [66 ** 3, 33 ** 3]
    assert all(lv.dtype == np.uint8 and lv.ndim == 3 for lv in levels)
    assert kwargs["scale"] == list(SPACING) and kwargs["translate"] == list(ORIGIN)
    assert kwargs["contrast_limits"] == [0.0, 255.0]
    assert kwargs["name"] == "bricked" and kwargs["metadata"]["architecture"] == "fvsrn"
    nv = levels[0]
    assert nv.stats["bricks_read"] == 0                    # nothing decoded at open
    plane = levels[1][0]                                   # what napari asks for: a plane
    assert plane.shape == (33, 33)
    assert nv.stats["bricks_read"] == 6                    # the bricks of the first z row
    np.testing.assert_array_equal(levels[0][20], bricked_decode[20])
    with neurvol.open(path) as fresh:
        coarse = fresh.decode(shape=(33, 33, 33))
    np.testing.assert_array_equal(plane, coarse[0])
    np.testing.assert_array_equal(levels[1][...], coarse)
    np.testing.assert_array_equal(levels[1][5:9, ::4, [0, 32]], coarse[5:9, ::4][:, :, [0, 32]])


def test_napari_image_layer_takes_the_levels(files, bricked_decode):
    """Where napari is installed (not in the test extra: it is large), its own Image layer
    accepts the reader's data and slices it without a window."""
    layers = pytest.importorskip("napari.layers", reason="napari is not installed")
    from neurvol.integrations.napari import read_nvol

    [(levels, kwargs, _)] = read_nvol(str(files / "bricked.nvol"))
    layer = layers.Image(levels, **kwargs)
    assert [tuple(s) for s in layer.level_shapes] == [(66, 66, 66), (33, 33, 33)]
    np.testing.assert_allclose(layer.scale, SPACING)
    np.testing.assert_allclose(layer.translate, ORIGIN)
    # Without a window napari shows the coarsest level at world point 0: with the file's
    # origin that lies outside the volume, so check the values on a layer at the origin.
    layer = layers.Image(levels, **dict(kwargs, translate=[0.0, 0.0, 0.0]))
    layer.refresh()
    with neurvol.open(files / "bricked.nvol") as nv:
        coarse = nv.decode(shape=(33, 33, 33))
    shown = np.asarray(layer._slice.image.raw)
    assert any(np.array_equal(shown, plane) for plane in coarse)


def test_napari_reader_refuses_other_files_and_keeps_small_volumes_single_scale(files):
    from neurvol.integrations.napari import get_reader, level_shapes

    assert get_reader("volume.tif") is None
    assert get_reader([str(files / "neghip.nvol"), "b.zarr"]) is None
    assert level_shapes((60, 64, 10)) == [(60, 64, 10)]
    assert level_shapes((1000, 300, 65)) == [(1000, 300, 65), (500, 150, 33), (250, 75, 17),
                                             (125, 38, 9), (63, 19, 5)]
    small = neurvol.encode(neurvol.sample_volume()[:40, :30, :20], ratio=5, **FAST)
    small.save(files / "small.nvol")
    [(data, kwargs, _)] = get_reader(str(files / "small.nvol"))(str(files / "small.nvol"))
    assert kwargs["multiscale"] is False and data.shape == (40, 30, 20)
    np.testing.assert_array_equal(np.asarray(data), small.decode())


# ---------------------------------------------------------------------- docs
def _example(doc: str) -> str:
    text = (ROOT / "docs" / doc).read_text()
    return re.search(r"## Example.*?```python\n(.*?)```", text, flags=re.S).group(1)


def _run_example(doc: str, capsys) -> str:
    exec(compile(_example(doc), f"docs/{doc}", "exec"), {})
    out = capsys.readouterr().out
    assert out.strip(), "the example prints what it shows"
    return out


def test_docs_xarray_example_runs(files, neurvol_engine, monkeypatch, capsys):
    pytest.importorskip("dask.array", reason="the example uses chunks={} (pip install dask)")
    monkeypatch.chdir(files)
    out = _run_example("xarray.md", capsys)
    assert "of 12 bricks decoded" in out


def test_docs_napari_example_runs(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    out = _run_example("napari.md", capsys)
    assert "[(66, 66, 66), (33, 33, 33)]" in out
