"""HDF5/NetCDF-4, VTK .vti and NIfTI readers/writers: round trips, axis order, geometry,
the encodings ParaView writes, and malformed files (always NeurvolIOError, never a crash)."""
import base64
import sys
import zlib

import numpy as np
import pytest

from neurvol import io as nvio
from neurvol.errors import NeurvolError, NeurvolIOError

SPACING = (0.5, 2.0, 3.0)      # z, y, x
ORIGIN = (1.0, -2.0, 7.5)


@pytest.fixture
def vol():
    # Distinct sizes per axis catch any transposition.
    rng = np.random.default_rng(0)
    return rng.integers(0, 60000, size=(5, 6, 7)).astype(np.uint16)


def _data(v):
    return np.asarray(v.data[()] if hasattr(v.data, "id") else v.data)


# ------------------------------------------------------------------ .vti


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64"])
@pytest.mark.parametrize("encoding", ["raw", "base64"])
def test_vti_round_trip_identical(tmp_path, vol, dtype, encoding):
    from neurvol.io.vti import write_vti

    v = vol.astype(dtype)
    p = tmp_path / "a.vti"
    write_vti(p, v, spacing=SPACING, origin=ORIGIN, encoding=encoding)
    got = nvio.load_volume(p)
    a = np.asarray(got.data)
    assert a.shape == v.shape and a.dtype == v.dtype
    np.testing.assert_array_equal(a, v)
    assert got.spacing == SPACING and got.origin == ORIGIN


def test_vti_raw_is_memmapped_and_header_is_x_first(tmp_path, vol):
    p = tmp_path / "a.vti"
    nvio.write_volume(p, vol, spacing=SPACING, origin=ORIGIN)
    assert isinstance(nvio.read_volume(p), np.memmap)
    text = p.read_bytes().split(b"<AppendedData")[0].decode()
    assert 'WholeExtent="0 6 0 5 0 4"' in text             # x (7), y (6), z (5)
    assert 'Spacing="3.0 2.0 0.5"' in text and 'Origin="7.5 -2.0 1.0"' in text
    assert 'header_type="UInt64"' in text and 'type="UInt16"' in text


def _vti(body_attrs, data_text, *, header_type="UInt32", byte_order="LittleEndian",
         compressor=None, appended=None, extent="0 6 0 5 0 4", vtype="UInt16"):
    comp = f' compressor="{compressor}"' if compressor else ""
    ht = f' header_type="{header_type}"' if header_type != "UInt32" else ""
    head = (f'<?xml version="1.0"?>\n<VTKFile type="ImageData" version="{"1.0" if ht else "0.1"}" '
            f'byte_order="{byte_order}"{ht}{comp}>\n'
            f'<ImageData WholeExtent="{extent}" Origin="7.5 -2 1" Spacing="3 2 0.5">\n'
            f'<Piece Extent="{extent}"><PointData Scalars="s">\n'
            f'<DataArray type="{vtype}" Name="s" {body_attrs}>').encode()
    tail = b"</DataArray></PointData><CellData/></Piece></ImageData>\n"
    out = head + data_text + tail
    if appended is not None:
        out += b'<AppendedData encoding="' + appended[0] + b'">\n   _' + appended[1] + b"\n</AppendedData>\n"
    return out + b"</VTKFile>\n"


def _zlib_blocks(raw, hdt, block=100):
    blocks = [raw[i:i + block] for i in range(0, len(raw), block)]
    comp = [zlib.compress(b) for b in blocks]
    last = len(blocks[-1]) if len(blocks[-1]) != block else 0
    header = np.array([len(blocks), block, last] + [len(c) for c in comp], dtype=hdt).tobytes()
    return header, b"".join(comp)


@pytest.mark.parametrize("case", [
    "ascii", "b64-separate", "b64-joint", "b64-zlib", "b64-zlib-u64", "appended-raw-u32",
    "appended-raw-zlib", "appended-b64", "appended-b64-zlib", "bigendian-appended",
])
def test_vti_reads_paraview_encodings(tmp_path, vol, case):
    raw = vol.astype("<u2").tobytes()
    u4, u8 = np.dtype("<u4"), np.dtype("<u8")
    if case == "ascii":
        f = _vti('format="ascii"', " ".join(map(str, vol.ravel())).encode())
    elif case == "b64-separate":
        f = _vti('format="binary"', base64.b64encode(np.array([len(raw)], u4).tobytes())
                 + base64.b64encode(raw))
    elif case == "b64-joint":
        f = _vti('format="binary"', base64.b64encode(np.array([len(raw)], u4).tobytes() + raw))
    elif case in ("b64-zlib", "b64-zlib-u64"):
        hdt = u8 if case.endswith("u64") else u4
        h, c = _zlib_blocks(raw, hdt)
        f = _vti('format="binary"', base64.b64encode(h) + base64.b64encode(c),
                 compressor="vtkZLibDataCompressor", header_type="UInt64" if hdt == u8 else "UInt32")
    elif case == "appended-raw-u32":
        f = _vti('format="appended" offset="0"', b"",
                 appended=(b"raw", np.array([len(raw)], u4).tobytes() + raw))
    elif case == "appended-raw-zlib":
        h, c = _zlib_blocks(raw, u4)
        f = _vti('format="appended" offset="0"', b"", compressor="vtkZLibDataCompressor",
                 appended=(b"raw", h + c))
    elif case == "appended-b64":
        f = _vti('format="appended" offset="0"', b"", appended=(
            b"base64", base64.b64encode(np.array([len(raw)], u4).tobytes()) + base64.b64encode(raw)))
    elif case == "appended-b64-zlib":
        h, c = _zlib_blocks(raw, u4)
        f = _vti('format="appended" offset="0"', b"", compressor="vtkZLibDataCompressor",
                 appended=(b"base64", base64.b64encode(h) + base64.b64encode(c)))
    else:
        be = vol.astype(">u2").tobytes()
        f = _vti('format="appended" offset="0"', b"", byte_order="BigEndian",
                 appended=(b"raw", np.array([len(be)], ">u4").tobytes() + be))
    p = tmp_path / "pv.vti"
    p.write_bytes(f)
    got = nvio.load_volume(p)
    np.testing.assert_array_equal(np.asarray(got.data), vol)
    assert got.spacing == SPACING and got.origin == ORIGIN


@pytest.mark.parametrize("mutate, match", [
    (lambda b: b[:len(b) // 2], "past the end|malformed|holds"),
    (lambda b: b.replace(b'WholeExtent="0 6 0 5 0 4"', b'WholeExtent="0 99999999 0 99999 0 9"'),
     "impossible grid|differs"),
    (lambda b: b.replace(b'type="UInt16"', b'type="Bogus"'), "not supported"),
    (lambda b: b.replace(b'header_type="UInt64"', b'header_type="UInt16"'), "header_type"),
    (lambda b: b.replace(b'offset="0"', b'offset="999999999"'), "outside the file"),
    (lambda b: b.replace(b'offset="0"', b'offset="-5"'), "outside the file"),
    (lambda b: b.replace(b'NumberOfComponents="1"', b'NumberOfComponents="3"'), "components"),
    (lambda b: b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>' + b[22:], "DOCTYPE"),
    (lambda b: b"not xml at all", "malformed XML"),
    (lambda b: b"", "empty"),
])
def test_vti_malformed_files_give_io_error(tmp_path, vol, mutate, match):
    p = tmp_path / "a.vti"
    nvio.write_volume(p, vol)
    p.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(NeurvolIOError, match=match):
        np.asarray(nvio.read_volume(p))


def test_vti_lying_byte_count_and_zlib_header(tmp_path, vol):
    raw = vol.astype("<u2").tobytes()
    u4 = np.dtype("<u4")
    p = tmp_path / "a.vti"
    p.write_bytes(_vti('format="appended" offset="0"', b"",
                       appended=(b"raw", np.array([2 ** 31], u4).tobytes() + raw)))
    with pytest.raises(NeurvolIOError, match="need"):
        nvio.read_volume(p)
    h = np.array([1, 2 ** 31, 0, 10], u4).tobytes()       # claims a 2 GiB block: no allocation
    p.write_bytes(_vti('format="appended" offset="0"', b"", compressor="vtkZLibDataCompressor",
                       appended=(b"raw", h + zlib.compress(raw))))
    with pytest.raises(NeurvolIOError, match="inconsistent|holds"):
        nvio.read_volume(p)
    bomb = zlib.compress(b"\0" * (len(raw) * 50))
    h = np.array([1, len(raw), 0, len(bomb)], u4).tobytes()
    p.write_bytes(_vti('format="appended" offset="0"', b"", compressor="vtkZLibDataCompressor",
                       appended=(b"raw", h + bomb)))
    with pytest.raises(NeurvolIOError, match="wrong size"):
        nvio.read_volume(p)


def test_vti_random_corruption_never_crashes(tmp_path, vol):
    from neurvol.io.vti import write_vti

    rng = np.random.default_rng(1)
    for encoding in ("raw", "base64"):
        p = tmp_path / f"{encoding}.vti"
        write_vti(p, vol, encoding=encoding)
        good = p.read_bytes()
        for _ in range(60):
            b = bytearray(good)
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
            if rng.random() < 0.3:
                b = b[:int(rng.integers(0, len(b)))]
            p.write_bytes(bytes(b))
            try:
                np.asarray(nvio.read_volume(p))
            except NeurvolError:
                pass


def test_vti_opens_with_vtk_if_installed(tmp_path, vol):
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    p = tmp_path / "a.vti"
    nvio.write_volume(p, vol, spacing=SPACING, origin=ORIGIN)
    r = vtk.vtkXMLImageDataReader()
    r.SetFileName(str(p))
    r.Update()
    img = r.GetOutput()
    assert img.GetDimensions() == (7, 6, 5)
    assert tuple(img.GetSpacing()) == SPACING[::-1]
    a = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(vol.shape)
    np.testing.assert_array_equal(a, vol)


# ------------------------------------------------------------------ HDF5 / NetCDF-4


def test_h5_round_trip_lazy_with_geometry(tmp_path, vol):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "a.h5"
    nvio.write_volume(p, vol, spacing=SPACING, origin=ORIGIN)
    got = nvio.load_volume(p)
    assert isinstance(got.data, h5py.Dataset)          # lazy: nothing read yet
    np.testing.assert_array_equal(got.data[()], vol)
    np.testing.assert_array_equal(got.data[1:3, :, 4], vol[1:3, :, 4])
    assert got.spacing == SPACING and got.origin == ORIGIN


def test_h5_variable_path_and_ambiguity(tmp_path, vol):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "multi.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("/sim/density", data=vol)
        f.create_dataset("/sim/pressure", data=vol.astype(np.float32) * 2)
        f.create_dataset("/notes", data=np.arange(4))
    with pytest.raises(NeurvolIOError, match=r"2 3-D datasets: /sim/density, /sim/pressure.*multi.h5:/"):
        nvio.read_volume(p)
    np.testing.assert_array_equal(nvio.read_volume(f"{p}:/sim/pressure")[()], vol * np.float32(2))
    np.testing.assert_array_equal(nvio.load_volume(p, variable="sim/density").data[()], vol)
    with pytest.raises(NeurvolIOError, match="no variable '/sim/nope'.*density"):
        nvio.read_volume(f"{p}:/sim/nope")
    with pytest.raises(NeurvolIOError, match="is a group"):
        nvio.read_volume(f"{p}:/sim")
    with pytest.raises(NeurvolIOError, match="shape"):
        nvio.read_volume(f"{p}:/notes")


def test_h5_refuses_object_and_string_data(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "obj.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("s", data=np.array([[[b"ab"]]], dtype="S2"))
        f.create_dataset("v", shape=(2, 2, 2), dtype=h5py.vlen_dtype(np.float32))
    for var in ("s", "v"):
        with pytest.raises(NeurvolIOError, match="dtype"):
            nvio.read_volume(f"{p}:{var}")
    with pytest.raises(NeurvolIOError, match="no 3-D numeric dataset"):
        nvio.read_volume(p)


def test_netcdf4_made_with_h5py_conventions(tmp_path, vol):
    """A NetCDF-4 file as netCDF-C lays it out: dimension scales with coordinates, a
    (time=1, z, y, x) variable; coordinates give spacing and origin."""
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "run.nc"
    with h5py.File(p, "w") as f:
        scales = []
        for i, (name, n) in enumerate((("time", 1), ("z", 5), ("y", 6), ("x", 7))):
            c = f.create_dataset(name, data=(ORIGIN[i - 1] + SPACING[i - 1] * np.arange(n))
                                 if i else np.zeros(1))
            c.make_scale(name)
            c.attrs["_Netcdf4Dimid"] = np.int32(i)
            scales.append(c)
        t = f.create_dataset("temperature", data=vol[None].astype(np.float32))
        for i, c in enumerate(scales):
            t.dims[i].attach_scale(c)
        f.attrs["_NCProperties"] = b"version=2,netcdf=4.9.2,hdf5=1.14.0"
    got = nvio.load_volume(p)                      # the only volume; coordinates are skipped
    assert got.data.shape == vol.shape
    np.testing.assert_array_equal(np.asarray(got.data), vol.astype(np.float32))
    np.testing.assert_allclose(got.spacing, SPACING)
    np.testing.assert_allclose(got.origin, ORIGIN)
    np.testing.assert_array_equal(nvio.read_volume(f"{p}:/temperature")[2], vol[2])


def test_netcdf_written_is_readable_by_netcdf4_if_installed(tmp_path, vol):
    pytest.importorskip("h5py")
    netCDF4 = pytest.importorskip("netCDF4")
    p = tmp_path / "out.nc"
    nvio.write_volume(p, vol, spacing=SPACING, origin=ORIGIN)
    with netCDF4.Dataset(p) as ds:
        assert ds["volume"].dimensions == ("z", "y", "x")
        np.testing.assert_array_equal(ds["volume"][:], vol)
        np.testing.assert_allclose(ds["x"][:2], [ORIGIN[2], ORIGIN[2] + SPACING[2]])
    got = nvio.load_volume(p)
    assert got.spacing == SPACING and got.origin == ORIGIN


def test_missing_h5py_says_how_to_install(tmp_path, vol, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(NeurvolIOError, match=r"neurvol\[hdf5\]"):
        nvio.write_volume(tmp_path / "a.h5", vol)
    assert not (tmp_path / "a.h5").exists()
    (tmp_path / "b.nc").write_bytes(b"CDF\x01")
    with pytest.raises(NeurvolIOError, match=r"neurvol\[hdf5\]"):
        nvio.read_volume(tmp_path / "b.nc")


def test_not_hdf5_is_io_error(tmp_path):
    pytest.importorskip("h5py")
    p = tmp_path / "classic.nc"
    p.write_bytes(b"CDF\x01" + b"\0" * 100)
    with pytest.raises(NeurvolIOError, match="nccopy"):
        nvio.read_volume(p)


def test_split_variable(tmp_path):
    assert nvio.split_variable("a.h5:/g/v") == (nvio.as_path("a.h5"), "/g/v")
    assert nvio.split_variable("a.nc:temp") == (nvio.as_path("a.nc"), "temp")
    assert nvio.split_variable("a.npy") == (nvio.as_path("a.npy"), None)
    assert nvio.split_variable("x:y.npy") == (nvio.as_path("x:y.npy"), None)
    (tmp_path / "v.h5").write_bytes(b"")
    with pytest.raises(NeurvolIOError, match="no named variables"):
        nvio.read_volume(f"{tmp_path / 'v.h5'}:/x", format="npy")


# ------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_nifti_round_trip_identical(tmp_path, vol, name):
    pytest.importorskip("nibabel")
    p = tmp_path / name
    nvio.write_volume(p, vol, spacing=SPACING, origin=ORIGIN)
    got = nvio.load_volume(p)
    a = np.asarray(got.data)
    assert a.dtype == vol.dtype
    np.testing.assert_array_equal(a, vol)
    np.testing.assert_allclose(got.spacing, SPACING)
    np.testing.assert_allclose(got.origin, ORIGIN)
    assert nvio.resolve_format(p).name == "nifti"


def test_nifti_axis_order_matches_nibabel(tmp_path, vol):
    nib = pytest.importorskip("nibabel")
    p = tmp_path / "a.nii"
    nvio.write_volume(p, vol)
    xyz = np.asarray(nib.load(str(p)).dataobj)
    assert xyz.shape == (7, 6, 5)                  # NIfTI i, j, k = x, y, z
    assert xyz[6, 1, 2] == vol[2, 1, 6]


def test_missing_nibabel_says_how_to_install(tmp_path, vol, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(NeurvolIOError, match=r"neurvol\[nifti\]"):
        nvio.write_volume(tmp_path / "a.nii.gz", vol)


def test_format_override_and_listing(tmp_path, vol):
    p = tmp_path / "volume.dat"
    nvio.write_volume(p, vol, format="vti")
    np.testing.assert_array_equal(np.asarray(nvio.read_volume(p, format="vti")), vol)
    names = {f.name for f in nvio.volume_formats()}
    assert {"npy", "raw", "hdf5", "netcdf", "vti", "nifti"} <= names
