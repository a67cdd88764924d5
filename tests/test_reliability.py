"""Reliability of the library on real files: exhaustive corruption detection, caps,
determinism, bounded memory, thread safety, closed files and argument validation
(RELIABILITY.md)."""
from __future__ import annotations

import os
import stat
import sys
import threading
import tracemalloc

import numpy as np
import pytest

import neurvol
from neurvol import (NeuralVolume, NeurvolError, NeurvolFormatError, NeurvolInputError,
                     NeurvolIOError, cli)
from neurvol import io as nvio
from neurvol.container import NvolReader

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))
import nvol_fuzzlib as F  # noqa: E402


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return F.tiny_model_file()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, model_bytes):
    path = tmp_path_factory.mktemp("rel") / "m.nvol"
    path.write_bytes(model_bytes)
    return path


# ---------------------------------------------------------------------------------------
# 1. every truncation and every single-bit flip of a real model file is detected


def _detected(buf: bytes) -> bool:
    try:
        with NeuralVolume(NvolReader(buf)) as nv:
            nv.decode()
    except NeurvolFormatError:
        return True
    return False


def test_every_truncation_and_bit_flip_of_a_model_file_is_detected(model_bytes):
    data = model_bytes
    assert 1000 <= len(data) <= 3000
    assert not _detected(data)
    missed_cuts = [n for n in range(len(data)) if not _detected(data[:n])]
    buf = bytearray(data)
    missed_flips = []
    for i in range(len(buf)):
        for bit in range(8):
            buf[i] ^= 1 << bit
            if not _detected(bytes(buf)):
                missed_flips.append((i, bit))
            buf[i] ^= 1 << bit
    assert not missed_cuts, f"{len(missed_cuts)} of {len(data)} truncations undetected"
    assert not missed_flips, f"{len(missed_flips)} of {8 * len(data)} bit flips undetected"


# ---------------------------------------------------------------------------------------
# 2. determinism


def test_cli_pack_twice_gives_identical_bytes(tmp_path, small_volume, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crop = np.ascontiguousarray(small_volume[:12, :14, :16]).astype(np.float32)
    np.save("v.npy", crop)
    argv = ["-q", "pack", "v.npy", "--ratio", "4", "--steps", "8", "--seed", "5", "--device", "cpu"]
    assert cli.main(argv + ["-o", "a.nvol"]) == 0
    assert cli.main(argv + ["-o", "b.nvol"]) == 0
    a, b = (tmp_path / "a.nvol").read_bytes(), (tmp_path / "b.nvol").read_bytes()
    assert a == b
    # ... and the same bytes as the library call with the same options
    api = neurvol.encode(crop, ratio=4, steps=8, seed=5, device="cpu", quiet=True).to_bytes()
    assert api == a


# ---------------------------------------------------------------------------------------
# 3. bounded resources on good input


def test_query_of_ten_million_points_in_bounded_memory(model_file):
    n = 10 ** 7
    with neurvol.open(model_file) as nv:
        rng = np.random.default_rng(0)
        pts = (rng.random((n, 3), dtype=np.float32) * (np.array(nv.shape, np.float32) - 1))
        small = nv.query(pts[:1000])
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            out = nv.query(pts)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert out.shape == (n,) and out.dtype == np.float32
    # numpy memory beyond the (40 MB) result: O(chunk), not O(N) (float64 copies of the
    # (N, 3) points were 240 MB each before).
    assert peak <= out.nbytes + 32 * 2 ** 20, f"peak {peak / 2**20:.0f} MiB"
    np.testing.assert_allclose(out[:1000], small, rtol=1e-6, atol=1e-6)


def test_decode_into_a_memmap_of_a_large_shape(tmp_path, model_file, monkeypatch):
    # Memory is O(chunks in flight): 2 x QUERY_THREADS chunks on the CPU (a 16-core machine
    # runs 4 threads and peaked at 67 MiB), larger chunks on CUDA. Pinned here so the
    # bound below holds on any machine.
    from neurvol import neural_volume

    monkeypatch.setattr(neural_volume, "QUERY_THREADS", 2)
    const = neurvol.encode(np.full((6, 7, 8), 42.0), ratio=2, quiet=True, device="cpu")
    shape = (256, 512, 512)  # 64 Mi voxels, a 64 MiB file, >100x the blocks held in memory
    out = np.memmap(tmp_path / "big.u1", dtype=np.uint8, mode="w+", shape=shape)
    tracemalloc.start()
    try:
        got = const.decode(shape=shape, out=out)  # dtype: the out array's
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got is out
    assert peak < 48 * 2 ** 20, f"peak {peak / 2**20:.0f} MiB"
    assert out[0, 0, 0] == 42 and out[-1, -1, -1] == 42
    assert out[::37, ::41, ::43].min() == 42
    out.flush()
    del out, got
    # A model file into a memmap equals the in-memory decode, on a resampled grid too.
    with neurvol.open(model_file) as nv:
        for shp in (nv.shape, (17, 5, 33)):
            mm = np.memmap(tmp_path / "m.f4", dtype=np.float32, mode="w+", shape=shp)
            nv.decode(shape=shp, out=mm)
            np.testing.assert_array_equal(np.asarray(mm), nv.decode(shape=shp, dtype=np.float32))
            del mm


def test_decode_blocks_match_numpy_linspace(model_file):
    """Decoding block by block (lazily computed axes) gives the same grid as before."""
    with neurvol.open(model_file) as nv:
        d, h, w = 5, 7, 9
        axes = [np.linspace(-1, 1, n) for n in (d, h, w)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        ref = nv.query(pts, space="normalized").reshape(d, h, w)
        np.testing.assert_array_equal(nv.decode(shape=(d, h, w), dtype=np.float32), ref)


def test_decode_too_large_for_memory_is_a_clear_error(model_file):
    with neurvol.open(model_file) as nv, F.memory_cap(512 << 20):
        with pytest.raises(NeurvolInputError, match="memmap"):
            nv.decode(shape=(2 ** 14, 2 ** 14, 2 ** 12))  # 2^40 float32 = 4 TiB


def test_concurrent_queries_match_sequential(model_file):
    rng = np.random.default_rng(1)
    with neurvol.open(model_file) as nv:
        sets = [rng.random((40000, 3)) * (np.array(nv.shape) - 1) for _ in range(8)]
    with neurvol.open(model_file) as nv:
        expected = [nv.query(p) for p in sets]
    with neurvol.open(model_file) as nv:  # fresh: the brick is loaded under contention
        results = [None] * len(sets)
        errors = []
        barrier = threading.Barrier(4)

        def work(t):
            try:
                barrier.wait()
                for i in range(t, len(sets), 4):
                    for _ in range(2):
                        results[i] = nv.query(sets[i])
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_file_handles_are_closed(model_file, tmp_path):
    import gc

    gc.collect()    # earlier tests' garbage must not close its files mid-count
    before = _open_fds()
    with neurvol.open(model_file) as nv:
        nv.decode()
        assert _open_fds() == before + 1
    assert _open_fds() == before
    nv.close()  # twice is fine
    assert nv.closed
    for use in (lambda: nv.decode(), lambda: nv.query([[0, 0, 0]]), lambda: nv[0],
                lambda: nv.to_bytes(), lambda: nv.save(tmp_path / "x.nvol"),
                lambda: nv._reader.read_brick(0)):
        with pytest.raises(NeurvolError, match="closed"):
            use()
    assert nv.info()["shape"] == list(nv.shape)  # metadata stays available
    for _ in range(20):
        neurvol.open(model_file).decode(shape=(2, 2, 2))  # not closed: __del__ does it
    gc.collect()
    assert _open_fds() == before
    assert not (tmp_path / "x.nvol").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_opening_a_fifo_or_device_fails_fast(tmp_path):
    fifo = tmp_path / "pipe.nvol"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    # A blocking open would hang: the deadline turns that into a failure (no timing assert).
    with F.deadline(10):
        with pytest.raises(NeurvolIOError, match="not a regular file"):
            neurvol.open(fifo)
        if os.path.exists("/dev/zero"):
            with pytest.raises(NeurvolIOError, match="not a regular file"):
                neurvol.open("/dev/zero")


# ---------------------------------------------------------------------------------------
# 4. argument validation: clear NeurvolInputError, never a numpy/torch traceback


@pytest.fixture(scope="module")
def nv(model_bytes):
    return NeuralVolume(NvolReader(model_bytes))


@pytest.mark.parametrize("dtype", ["U5", object, bool, np.complex64, "foo", "(2,)f4",
                                   "f4,f4", "M8", "(100000000000000,)f4", 3, [1]])
def test_decode_rejects_non_numeric_dtypes(nv, dtype):
    with pytest.raises(NeurvolInputError, match="dtype"):
        nv.decode(shape=(2, 2, 2), dtype=dtype)


@pytest.mark.parametrize("shape", [(2 ** 31 + 1, 2, 2), (2 ** 20, 2 ** 20, 2 ** 20),
                                   (0, 2, 2), (-1, 2, 2), (2.5, 2, 2), "abc", 5, (2, 2),
                                   (2, 2, 2, 2), (True, 2, 2), ("2", 2, 2), (None, 2, 2)])
def test_decode_rejects_bad_shapes(nv, shape):
    with pytest.raises(NeurvolInputError, match="shape"):
        nv.decode(shape=shape)


def test_decode_out_validation(nv):
    with pytest.raises(NeurvolInputError, match="numpy array"):
        nv.decode(out=[[[0]]])
    with pytest.raises(NeurvolInputError, match="shape"):
        nv.decode(out=np.zeros((2, 2, 2), np.float32))
    ro = np.zeros(nv.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(NeurvolInputError, match="read-only"):
        nv.decode(out=ro)
    with pytest.raises(NeurvolInputError, match="dtype"):
        nv.decode(out=np.zeros(nv.shape, object))
    with pytest.raises(NeurvolInputError, match="dtype"):
        nv.decode(out=np.zeros(nv.shape, np.float32), dtype=np.uint8)
    out = np.zeros(nv.shape, np.float64)  # dtype=None: the out array's dtype
    nv.decode(out=out)
    np.testing.assert_allclose(out, nv.decode(dtype=np.float32), rtol=1e-6)


@pytest.mark.parametrize("kwargs", [
    {"space": "world"}, {"space": None}, {"space": 1}, {"space": ["index"]},
    {"clamp": "yes"}, {"clamp": 1}, {"clamp": None},
])
def test_query_rejects_bad_options(nv, kwargs):
    with pytest.raises(NeurvolInputError):
        nv.query([[0.0, 0.0, 0.0]], **kwargs)


@pytest.mark.parametrize("points", [
    "abc", [[1, 2]], [[1, 2, 3], [4, 5]], np.zeros((2, 3, 3)), [[np.nan, 0, 0]],
    [[0, np.inf, 0]], np.array([[1 + 2j, 0, 0]]), np.zeros((2, 3), bool),
    np.array([["1", "2", "3"]]), [[1j, 0, 0]], None,
])
def test_query_rejects_bad_points(nv, points):
    with pytest.raises(NeurvolInputError):
        nv.query(points)


@pytest.mark.parametrize("key", [1.5, "a", None, [[1]], True, (..., ..., 1), (0, 0, 0, 0),
                                 [100], (slice(None), [True, False]), (0, slice(0, 5, 0)),
                                 np.array([1.5])])
def test_region_read_rejects_bad_keys(nv, key):
    with pytest.raises(NeurvolInputError):
        nv[key]


def test_region_read_keys_that_work(nv):
    full = nv.decode()
    d, h, w = nv.shape
    # The keys are what is tested; values may differ by float32 rounding because a
    # region is evaluated in other batch sizes than the full decode (BLAS blocking).
    same = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # noqa: E731
    same(nv[np.int64(1), -1, ::-2], full[1, -1, ::-2])
    same(nv[[0, -1], np.arange(h) < 3], full[[0, -1]][:, :3])
    assert nv[np.array(2), [], 0].shape == full[2, [], 0].shape
    assert nv[0, 0, 5:5].shape == (0,)


@pytest.mark.parametrize("argv,code", [
    (["pack", "v.npy", "-o", "o.nvol", "--seed", "-1"], 2),
    (["pack", "v.npy", "-o", "o.nvol", "--seed", str(2 ** 64)], 2),
    (["pack", "v.npy", "-o", "o.nvol", "--seed", "x"], 2),
    (["pack", "v.npy", "-o", "o.nvol", "--steps", "0"], 2),
    (["pack", "v.npy", "-o", "o.nvol", "--ratio", "nan"], 2),
    (["unpack", "m.nvol", "-o", "o.npy", "--shape", "99999999999,2,2"], 2),
    (["unpack", "m.nvol", "-o", "o.npy", "--shape", "2.5,2,2"], 2),
    (["unpack", "m.nvol", "-o", "o.npy", "--dtype", "U5"], 2),
    (["unpack", "m.nvol", "-o", "o.npy", "--dtype", "(100000000000000,)f4"], 2),
    (["unpack", "m.nvol", "-o", "o.npy", "--dtype", "bool"], 1),
    (["unpack", "m.nvol", "-o", "o.npy", "--dtype", "complex64"], 1),
    (["query", "m.nvol", "--points", "p.csv", "--space", "world"], 2),
])
def test_cli_rejects_bad_arguments_without_traceback(argv, code, tmp_path, monkeypatch,
                                                     capsys, model_bytes):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.nvol").write_bytes(model_bytes)
    np.save(tmp_path / "v.npy", np.zeros((4, 4, 4), np.uint8))
    (tmp_path / "p.csv").write_text("0,0,0\n")
    assert cli.main(["-q"] + argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" in err
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "o.nvol").exists()


@pytest.mark.parametrize("shape", [[2.5, 2, 2], [True, 2, 2], (2 ** 31 + 1, 2, 2),
                                   "2,2", "0,2,2", "1e3,2,2", (2 ** 20,) * 3])
def test_io_parse_shape_rejects(shape):
    with pytest.raises(NeurvolInputError):
        nvio.parse_shape(shape)


@pytest.mark.parametrize("dtype", ["(100000000000000,)f4", "U3", "foo", None, "f4,f4"])
def test_io_parse_dtype_rejects(dtype):
    with pytest.raises(NeurvolInputError):
        nvio.parse_dtype(dtype)


def test_encode_rejects_volumes_beyond_the_caps():
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape=(2 ** 14, 2 ** 14, 2 ** 13),
                                          strides=(0, 0, 0))
    with pytest.raises(NeurvolInputError, match="too large"):
        neurvol.encode(big, quiet=True)
    with pytest.raises(NeurvolInputError, match="float32"):
        neurvol.encode(np.linspace(-1e300, 1e300, 27).reshape(3, 3, 3), quiet=True)
