"""Tests of neurvol.io: volume readers/writers, the format registry, query points."""
from __future__ import annotations

import os

import numpy as np
import pytest

from neurvol import io as nvio
from neurvol.errors import NeurvolInputError, NeurvolIOError


@pytest.fixture
def vol() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 60000, size=(4, 5, 6), dtype=np.uint16)


def _no_temp_files(directory) -> bool:
    return not [n for n in os.listdir(directory) if ".tmp-" in n]


# ------------------------------------------------------------------ .npy


def test_npy_read_is_lazy_readonly_memmap(tmp_path, vol):
    p = tmp_path / "v.npy"
    np.save(p, vol)
    got = nvio.read_volume(p)
    assert isinstance(got, np.memmap)
    assert not got.flags.writeable
    np.testing.assert_array_equal(got, vol)
    assert got.dtype == vol.dtype


def test_npy_write_round_trip_atomic(tmp_path, vol):
    p = tmp_path / "out.npy"
    nvio.write_volume(p, vol)
    np.testing.assert_array_equal(np.load(p, allow_pickle=False), vol)
    nvio.write_volume(p, vol[::-1])  # overwrite replaces the file
    np.testing.assert_array_equal(np.load(p), vol[::-1])
    assert _no_temp_files(tmp_path)


def test_npy_shape_hint_mismatch_only_warns(tmp_path, vol, caplog):
    p = tmp_path / "v.npy"
    np.save(p, vol)
    with caplog.at_level("WARNING", logger="neurvol"):
        got = nvio.read_volume(p, shape=(1, 2, 3), dtype="float32")
    assert got.shape == vol.shape
    assert "ignoring shape" in caplog.text and "ignoring dtype" in caplog.text


def test_npy_pickled_object_array_refused(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(NeurvolIOError, match="cannot read"):
        nvio.read_volume(p)


def test_npz_disguised_as_npy_refused(tmp_path, vol):
    p = tmp_path / "a.npz"
    np.savez(p, a=vol)
    os.rename(p, tmp_path / "a.npy")
    with pytest.raises(NeurvolIOError, match="npz"):
        nvio.read_volume(tmp_path / "a.npy")


def test_truncated_npy_refused(tmp_path, vol):
    p = tmp_path / "t.npy"
    np.save(p, vol)
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(NeurvolIOError, match="cannot read"):
        nvio.read_volume(p)


def test_write_object_array_refused(tmp_path):
    with pytest.raises(NeurvolInputError):
        nvio.write_volume(tmp_path / "o.npy", np.array([None, 1], dtype=object))
    assert not (tmp_path / "o.npy").exists()


# ------------------------------------------------------------------ .raw


@pytest.mark.parametrize("ext", [".raw", ".bin"])
def test_raw_round_trip(tmp_path, vol, ext):
    p = tmp_path / f"v{ext}"
    nvio.write_volume(p, vol)
    assert p.stat().st_size == vol.nbytes
    assert p.read_bytes() == vol.astype("<u2").tobytes(order="C")
    got = nvio.read_volume(p, shape=vol.shape, dtype="uint16")
    assert isinstance(got, np.memmap) and not got.flags.writeable
    np.testing.assert_array_equal(got, vol)


def test_raw_writes_little_endian_c_order_whatever_the_input(tmp_path, vol):
    p = tmp_path / "v.raw"
    nvio.write_volume(p, np.asfortranarray(vol.astype(">u2")))
    assert p.read_bytes() == vol.astype("<u2").tobytes(order="C")


def test_raw_big_endian_read(tmp_path):
    data = np.linspace(-3, 7, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    p = tmp_path / "be.raw"
    p.write_bytes(data.astype(">f4").tobytes())
    got = nvio.read_volume(p, shape="2,3,4", dtype="float32", byte_order="big")
    np.testing.assert_array_equal(got, data)
    wrong = nvio.read_volume(p, shape="2,3,4", dtype="float32")  # little: bytes swapped
    assert not np.array_equal(wrong, data)


def test_raw_shape_string_forms(tmp_path, vol):
    p = tmp_path / "v.raw"
    nvio.write_volume(p, vol)
    for shape in ("4,5,6", "4x5x6", " 4, 5 ,6", [4, 5, 6]):
        assert nvio.read_volume(p, shape=shape, dtype="uint16").shape == (4, 5, 6)


@pytest.mark.parametrize("kwargs, missing", [({}, "shape and dtype"), ({"shape": (4, 5, 6)}, "dtype"),
                                             ({"dtype": "uint16"}, "shape")])
def test_raw_needs_shape_and_dtype(tmp_path, vol, kwargs, missing):
    p = tmp_path / "v.raw"
    nvio.write_volume(p, vol)
    with pytest.raises(NeurvolInputError, match=missing):
        nvio.read_volume(p, **kwargs)


def test_raw_wrong_size_says_both_numbers(tmp_path, vol):
    p = tmp_path / "v.raw"
    nvio.write_volume(p, vol)
    with pytest.raises(NeurvolInputError, match=r"240 bytes.*needs 120 bytes.*uint16"):
        nvio.read_volume(p, shape=(4, 5, 6), dtype="uint8")
    with pytest.raises(NeurvolInputError, match=r"240 bytes.*needs 960"):
        nvio.read_volume(p, shape=(4, 5, 6), dtype="float64")


@pytest.mark.parametrize("shape", ["4,5", "4,5,0", "a,b,c", "4,-5,6", (1, 2, 3, 4)])
def test_bad_shapes(tmp_path, vol, shape):
    p = tmp_path / "v.raw"
    nvio.write_volume(p, vol)
    with pytest.raises(NeurvolInputError, match="shape"):
        nvio.read_volume(p, shape=shape, dtype="uint16")


@pytest.mark.parametrize("dtype", ["nonsense", "object", "U4", "datetime64[s]"])
def test_bad_dtypes(tmp_path, vol, dtype):
    p = tmp_path / "v.raw"
    nvio.write_volume(p, vol)
    with pytest.raises(NeurvolInputError, match="dtype"):
        nvio.read_volume(p, shape=(4, 5, 6), dtype=dtype)


def test_bad_byte_order(tmp_path, vol):
    p = tmp_path / "v.raw"
    nvio.write_volume(p, vol)
    with pytest.raises(NeurvolInputError, match="byte order"):
        nvio.read_volume(p, shape=(4, 5, 6), dtype="uint16", byte_order="middle")


def test_raw_write_streams_in_slabs(tmp_path, monkeypatch, vol):
    from neurvol.io import raw

    monkeypatch.setattr(raw, "_CHUNK_BYTES", vol[0].nbytes)  # one z-slice per chunk
    assert len(list(raw._raw_chunks(vol))) == vol.shape[0]
    nvio.write_volume(tmp_path / "v.raw", vol)
    assert (tmp_path / "v.raw").read_bytes() == vol.tobytes()


# ------------------------------------------------------------------ registry / errors


def test_missing_file(tmp_path):
    with pytest.raises(NeurvolIOError, match="not found"):
        nvio.read_volume(tmp_path / "nope.npy")


def test_directory_is_not_a_volume(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(NeurvolIOError, match="not a regular file"):
        nvio.read_volume(tmp_path / "d.npy")


def test_unknown_extension_lists_supported_and_suggests_format(tmp_path, vol):
    p = tmp_path / "v.dat"
    p.write_bytes(vol.tobytes())
    with pytest.raises(NeurvolIOError, match=r"\.npy.*\.raw.*--format"):
        nvio.read_volume(p)
    got = nvio.read_volume(p, format="raw", shape=vol.shape, dtype="uint16")
    np.testing.assert_array_equal(got, vol)


def test_format_name_overrides_extension(tmp_path, vol):
    p = tmp_path / "v.dat"
    nvio.write_volume(p, vol, format="npy")
    np.testing.assert_array_equal(nvio.read_volume(p, format="npy"), vol)
    np.testing.assert_array_equal(nvio.read_volume(p, format=".NPY"), vol)
    with pytest.raises(NeurvolIOError, match="unknown format"):
        nvio.read_volume(p, format="hdf9")


def test_write_unknown_extension(tmp_path, vol):
    with pytest.raises(NeurvolIOError, match="--format"):
        nvio.write_volume(tmp_path / "v.xyz", vol)


def test_write_into_missing_directory(tmp_path, vol):
    with pytest.raises(NeurvolIOError, match="does not exist"):
        nvio.write_volume(tmp_path / "no" / "v.npy", vol)


def test_register_new_format_without_touching_others(tmp_path, vol):
    from neurvol.io import _registry

    def read_txt(path, *, shape=None, dtype=None, byte_order="little"):
        return np.loadtxt(path).reshape(shape)

    fmt = nvio.VolumeFormat("txtvol", (".tv",), "test only", read=read_txt)
    nvio.register_format(fmt)
    try:
        p = tmp_path / "a.tv"
        np.savetxt(p, vol.reshape(-1))
        np.testing.assert_array_equal(nvio.read_volume(p, shape=vol.shape), vol)
        with pytest.raises(NeurvolIOError, match="cannot be written"):
            nvio.write_volume(p, vol)
        assert nvio.resolve_format("x.npy").name == "npy"
    finally:
        _registry._BY_NAME.pop("txtvol")
        _registry._BY_EXT.pop(".tv")


# ------------------------------------------------------------------ points


def test_points_npy(tmp_path):
    pts = np.arange(12, dtype=np.int32).reshape(4, 3)
    np.save(tmp_path / "p.npy", pts)
    got = nvio.read_points(tmp_path / "p.npy")
    assert got.dtype == np.float64 and got.shape == (4, 3)
    np.testing.assert_array_equal(got, pts)


@pytest.mark.parametrize("text", [
    "1,2,3\n4,5,6.5\n",
    "z,y,x\n1,2,3\n4,5,6.5\n",
    "# comment\n\nz y x\n1 2 3\n4\t5  6.5\n",
    "1, 2, 3\n4, 5, 6.5  # trailing comment\n",
])
def test_points_text_forms(tmp_path, text):
    p = tmp_path / "p.csv"
    p.write_text(text)
    np.testing.assert_array_equal(nvio.read_points(p), [[1, 2, 3], [4, 5, 6.5]])


def test_points_single_row_txt(tmp_path):
    (tmp_path / "p.txt").write_text("1 2 3\n")
    assert nvio.read_points(tmp_path / "p.txt").shape == (1, 3)


def test_points_empty_csv(tmp_path):
    (tmp_path / "p.csv").write_text("z,y,x\n")
    assert nvio.read_points(tmp_path / "p.csv").shape == (0, 3)


@pytest.mark.parametrize("arr", [np.zeros((5, 2)), np.zeros(3), np.zeros((2, 3, 1))])
def test_points_wrong_shape_npy(tmp_path, arr):
    np.save(tmp_path / "p.npy", arr)
    with pytest.raises(NeurvolInputError, match=r"\(N, 3\) z,y,x"):
        nvio.read_points(tmp_path / "p.npy")


def test_points_wrong_shape_csv(tmp_path):
    (tmp_path / "p.csv").write_text("1,2\n3,4\n")
    with pytest.raises(NeurvolInputError, match=r"\(N, 3\) z,y,x"):
        nvio.read_points(tmp_path / "p.csv")


def test_points_ragged_or_garbage_csv(tmp_path):
    (tmp_path / "p.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(NeurvolInputError, match="cannot parse"):
        nvio.read_points(tmp_path / "p.csv")
    (tmp_path / "q.csv").write_text("1,2,3\nfoo,5,6\n")
    with pytest.raises(NeurvolInputError, match="cannot parse"):
        nvio.read_points(tmp_path / "q.csv")


def test_points_not_finite(tmp_path):
    np.save(tmp_path / "p.npy", np.array([[0, 0, 0], [1, np.nan, 2]]))
    with pytest.raises(NeurvolInputError, match="row 1"):
        nvio.read_points(tmp_path / "p.npy")


def test_points_errors(tmp_path):
    with pytest.raises(NeurvolIOError, match="not found"):
        nvio.read_points(tmp_path / "nope.csv")
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(NeurvolIOError, match=r"\.npy, \.csv, \.txt"):
        nvio.read_points(tmp_path / "p.json")


def test_write_values(tmp_path):
    vals = np.array([0.1, 1.5, -2e-7], dtype=np.float32)
    nvio.write_values(tmp_path / "v.npy", vals)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), vals)
    nvio.write_values(tmp_path / "v.csv", vals)
    assert (tmp_path / "v.csv").read_text().split() == ["0.1", "1.5", "-2e-07"]
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "v.csv", dtype=np.float32), vals)
    with pytest.raises(NeurvolIOError):
        nvio.write_values(tmp_path / "v.h5", vals)
    assert _no_temp_files(tmp_path)
