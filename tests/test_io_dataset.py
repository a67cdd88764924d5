"""NetCDF-4 / HDF5 files with several variables and a time axis (neurvol.io.dataset):
read into a plain structure, write back, and agree with the netCDF4 library."""
from __future__ import annotations

import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from neurvol import NeurvolIOError  # noqa: E402
from neurvol.io import (DatasetVariable, VolumeDataset, json_attrs,  # noqa: E402
                        read_dataset, write_dataset)

T, Z, Y, X = 3, 4, 5, 6


def _arrays():
    rng = np.random.default_rng(0)
    density = rng.random((T, Z, Y, X)).astype(np.float32)
    density[:, 0, :2] = -9999.0          # "land": the fill value
    vx = rng.integers(-300, 300, (T, Z, Y, X)).astype(np.int16)
    vx[1, 2, 3, 4] = -32768
    return density, vx


def _netcdf4_file(path):
    """A file written by the netCDF4 library (the reference NetCDF implementation)."""
    netCDF4 = pytest.importorskip("netCDF4")
    density, vx = _arrays()
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.title = "two variables, three steps"
        nc.history = "made by a test"
        nc.version = 3
        nc.createDimension("time", None)      # unlimited, as simulation output often is
        for name, n in (("z", Z), ("y", Y), ("x", X)):
            nc.createDimension(name, n)
        t = nc.createVariable("time", "f8", ("time",))
        t.units = "hours since 2005-09-01 00:00:00"
        t.calendar = "standard"
        t[:] = [0.0, 1.0, 2.5]
        z = nc.createVariable("z", "f4", ("z",))
        z.units = "m"
        z[:] = [0.0, 10.0, 20.0, 30.0]
        d = nc.createVariable("density", "f4", ("time", "z", "y", "x"), fill_value=-9999.0)
        d.units = "kg m-3"
        d.long_name = "fluid density"
        d.valid_range = np.array([0.0, 1.0], np.float32)
        d[:] = density
        v = nc.createVariable("velocity_x", "i2", ("time", "z", "y", "x"), fill_value=-32768)
        v.units = "cm s-1"
        v.scale_factor_note = "none"
        v.missing_value = np.float32(np.nan)
        v[:] = vx
        s = nc.createVariable("snapshot", "f8", ("z", "y", "x"))
        s.units = "K"
        s[:] = np.arange(Z * Y * X, dtype=np.float64).reshape(Z, Y, X)
    return density, vx


def test_reads_a_netcdf4_file_written_by_the_netcdf4_library(tmp_path):
    path = tmp_path / "run.nc"
    density, vx = _netcdf4_file(path)
    with read_dataset(path) as ds:
        assert set(ds.variables) == {"density", "velocity_x", "snapshot"}
        d = ds.variables["density"]
        assert d.dims == ("time", "z", "y", "x") and d.has_time
        assert d.dtype == np.float32 and d.units == "kg m-3"
        assert d.attrs["long_name"] == "fluid density"
        assert d.attrs["valid_range"] == [0.0, 1.0]
        assert d.fill_value == -9999.0 and "_FillValue" not in d.attrs
        assert isinstance(d.data, h5py.Dataset)                 # lazy
        np.testing.assert_array_equal(d.data[1], density[1])    # one step read alone
        v = ds.variables["velocity_x"]
        assert v.dtype == np.int16 and v.fill_value == -32768 and v.units == "cm s-1"
        assert np.isnan(v.attrs["missing_value"])
        assert json_attrs(v.attrs)["missing_value"] == "nan"
        json.dumps(json_attrs(d.attrs), allow_nan=False)
        np.testing.assert_array_equal(v.values(), vx)
        s = ds.variables["snapshot"]
        assert s.dims == ("z", "y", "x") and not s.has_time
        assert set(ds.coords) == {"time", "z"}               # y, x: dims without variables
        assert ds.time.attrs == {"units": "hours since 2005-09-01 00:00:00",
                                 "calendar": "standard"}
        np.testing.assert_array_equal(ds.time.values(), [0.0, 1.0, 2.5])
        assert ds.dims == {"time": T, "z": Z, "y": Y, "x": X}
        assert ds.attrs["title"] == "two variables, three steps"
        assert ds.attrs["version"] == 3


def _same(a: VolumeDataset, b: VolumeDataset):
    assert list(a.variables) == list(b.variables) and set(a.coords) == set(b.coords)
    assert a.attrs == b.attrs and a.dims == b.dims
    for group_a, group_b in ((a.variables, b.variables), (a.coords, b.coords)):
        for name, va in group_a.items():
            vb = group_b[name]
            assert (va.dims, json_attrs(va.attrs), va.fill_value, va.dtype) == \
                (vb.dims, json_attrs(vb.attrs), vb.fill_value, vb.dtype), name
            np.testing.assert_array_equal(va.values(), vb.values())


def test_round_trip_keeps_names_units_attributes_fill_values_and_coordinates(tmp_path):
    src = tmp_path / "run.nc"
    _netcdf4_file(src)
    with read_dataset(src) as ds:
        write_dataset(tmp_path / "copy.nc", ds)
        with read_dataset(tmp_path / "copy.nc") as back:
            _same(ds, back)
    eager = read_dataset(src, lazy=False)
    assert isinstance(eager.variables["density"].data, np.ndarray)
    write_dataset(tmp_path / "copy2.nc", eager)
    with read_dataset(tmp_path / "copy2.nc") as back:
        _same(eager, back)


def test_files_written_here_read_in_the_netcdf4_library(tmp_path):
    netCDF4 = pytest.importorskip("netCDF4")
    density, vx = _arrays()
    ds = VolumeDataset(
        variables={
            "density": DatasetVariable("density", density, ("time", "z", "y", "x"),
                                       {"units": "kg m-3", "long_name": "density"}, -9999.0),
            "velocity_x": DatasetVariable("velocity_x", vx, ("time", "z", "y", "x"),
                                          {"units": "cm s-1"}, -32768)},
        coords={"time": DatasetVariable("time", np.array([3.0, 4.0, 5.0]), ("time",),
                                        {"units": "days since 2000-01-01"})},
        attrs={"title": "written by neurvol", "levels": [1, 2, 3]})
    path = tmp_path / "out.nc"
    write_dataset(path, ds)
    with netCDF4.Dataset(path) as nc:
        assert nc.title == "written by neurvol"
        assert list(nc.variables["levels"] if "levels" in nc.variables else nc.levels) == [1, 2, 3]
        assert set(nc.dimensions) == {"time", "z", "y", "x"}
        d = nc.variables["density"]
        assert d.dimensions == ("time", "z", "y", "x") and d.units == "kg m-3"
        assert d._FillValue == np.float32(-9999.0)
        got = d[:]      # netCDF4 masks the fill value
        assert np.ma.is_masked(got) and got.mask.sum() == (density == -9999.0).sum()
        np.testing.assert_array_equal(got.filled(-9999.0), density)
        v = nc.variables["velocity_x"]
        assert v._FillValue == -32768 and v.dtype == np.int16
        np.testing.assert_array_equal(v[:].data, vx)
        t = nc.variables["time"]
        assert t.units == "days since 2000-01-01"
        np.testing.assert_array_equal(t[:], [3.0, 4.0, 5.0])


def test_refusals(tmp_path):
    src = tmp_path / "run.nc"
    _netcdf4_file(src)
    with pytest.raises(NeurvolIOError, match="no variable 'pressure'"):
        read_dataset(src, ["pressure"])
    with read_dataset(src, ["density"]) as ds:
        assert list(ds.variables) == ["density"]
    (tmp_path / "text.nc").write_text("not netcdf")
    with pytest.raises(NeurvolIOError, match="NetCDF-3"):
        read_dataset(tmp_path / "text.nc")
    bad = VolumeDataset(variables={"a": DatasetVariable("a", np.zeros((2, 3), np.uint8), ("z", "y"),
                                                        fill_value=300)})
    with pytest.raises(NeurvolIOError, match="not a uint8"):
        write_dataset(tmp_path / "bad.nc", bad)
    clash = VolumeDataset(variables={
        "a": DatasetVariable("a", np.zeros((2, 3)), ("z", "y")),
        "b": DatasetVariable("b", np.zeros((3, 3)), ("z", "y"))})
    with pytest.raises(NeurvolIOError, match="dim 'z'"):
        write_dataset(tmp_path / "clash.nc", clash)
    assert not (tmp_path / "clash.nc").exists()
