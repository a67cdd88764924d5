"""Hostile files and edge values (issue 24): every class of attack found by hand, as a
file built here from a real encoded file with every checksum recomputed (so the checks
behind them are reached), read in a sandboxed worker process.

Each read must end in a clean NeurvolError (or a correct read) within the time limit and
with a peak memory increase of at most 256 MiB over the warmed worker. The issue asks for
2 s; the limit is enforced as a subprocess deadline of 10 s (the worker's SIGALRM, and a
kill by the parent) to leave a margin for a loaded 2-core CI machine, so a pass does not
depend on the machine's load. Memory is the child's peak RSS (``VmHWM``) over its
warmed start, under a 1 GiB address-space cap (spec/resources.md, RELIABILITY.md).
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
import struct
import sys

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import neurvol
from neurvol import (NeuralVolume, NeurvolError, NeurvolFormatError, NeurvolInputError,
                     NeurvolIOError, cli)
from neurvol import _atomic
from neurvol import io as nvio
from neurvol.compress.records import encode_record
from neurvol.container import NvolReader, serialize_nvol
from neurvol.neural_volume import _config_of, tensor_specs

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))
import nvol_fuzzlib as F  # noqa: E402
from sandbox import Worker  # noqa: E402

#: The issue's 2 s, times 5: a margin for a loaded 2-core machine (see the docstring).
TIME_LIMIT_S = 10.0
MEMORY_LIMIT = 256 << 20


@pytest.fixture(scope="module")
def sandbox():
    with Worker(fork=True) as w:
        yield w


def _check(sandbox, data: bytes, check: str = "read", expect_error: bool = True):
    res = sandbox.run(data, check, seconds=TIME_LIMIT_S)
    assert res["outcome"] in (("error",) if expect_error else ("error", "ok")), res
    assert res["peak_bytes"] is None or res["peak_bytes"] <= MEMORY_LIMIT, res
    return res


# ---------------------------------------------------------------------------------------
# building hostile files from a real one


def _base_header() -> dict:
    hdr, _ = F.split_head(F.tiny_model_file())
    return {k: v for k, v in hdr.items() if k != "sections"}


def _stream(coder: int, width: int, data: bytes) -> bytes:
    return struct.pack("<BBI", coder, width, len(data)) + data


def _zstd_zeros(nbytes: int, content_size: bool = True) -> bytes:
    """A zstd frame of *nbytes* zero bytes, compressed a piece at a time."""
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    with cctx.stream_writer(out, size=nbytes if content_size else -1, closefd=False) as w:
        chunk = bytes(1 << 22)
        left = nbytes
        while left:
            w.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    return out.getvalue()


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(data)


def _specs(config: dict):
    arch, cfg = _config_of({"arch": "fvsrn", "config": config})
    return tensor_specs(arch, cfg)


def _payload(config: dict, records: dict) -> bytes:
    """A kind-2 payload for an fvsrn *config*: the given records, zeros elsewhere."""
    out = [b"\x02"]
    for name, shape in _specs(config):
        out.append(records.get(name) or encode_record(np.zeros(shape, np.float32), "raw16"))
    return b"".join(out)


def _model_file(config: dict, records: dict, **header) -> bytes:
    hdr = _base_header()
    hdr["model"] = {"arch": "fvsrn", "config": config}
    hdr.update(header)
    return serialize_nvol(hdr, [_payload(config, records)])


def _big(config_grid, channels=4) -> dict:
    return {"grid": list(config_grid), "channels": channels, "width": 8, "hidden_layers": 2}


def _n(config: dict) -> int:
    return math.prod(_specs(config)[0][1])


# ---------------------------------------------------------------------------------------
# 1. memory amplification: small files declaring huge models


def test_lorenzo_grid_of_zeros_256_cubed(sandbox):
    """fvsrn grid 256^3 x 15 coded by Lorenzo, all zeros (7.9 GB, 22 s before)."""
    cfg = _big((256, 256, 256), channels=15)
    grid = bytes([3, 0]) + struct.pack("<f", 1.0) + _stream(1, 1, _zstd_zeros(_n(cfg)))
    data = _model_file(cfg, {"grid": grid})
    assert len(data) < 64 << 10
    res = _check(sandbox, data)
    assert "cannot hold a model" in res["message"]
    _check(sandbox, data, "info", expect_error=False)   # `neurvol info`: no traceback


def test_masked_kmeans_with_an_all_zero_mask(sandbox):
    """A masked k-means tensor whose mask keeps nothing (6.5 GB before)."""
    cfg = _big((256, 256, 256))
    n = _n(cfg)
    mask = _stream(1, 1, _zstd_zeros((n + 7) // 8))
    body = struct.pack("<BI", 0, 1) + np.zeros(1, "<f2").tobytes() + _stream(0, 1, b"")
    data = _model_file(cfg, {"grid": bytes([2, 1]) + mask + body})
    assert len(data) < 16 << 10
    _check(sandbox, data)


def test_kmeans_index_stream_zstd_bomb(sandbox):
    """k-means indices as a zstd bomb (4.5 GB before); and a frame without a content
    size, or declaring less than it holds, within the element budget."""
    cfg = _big((256, 256, 128))
    book = struct.pack("<BI", 0, 2) + np.zeros(2, "<f2").tobytes()
    bomb = _model_file(cfg, {"grid": bytes([2, 0]) + book + _stream(1, 1, _zstd_zeros(_n(cfg)))})
    _check(sandbox, bomb)
    small = {"grid": [8, 10, 12], "channels": 4, "width": 16, "hidden_layers": 2}
    n = _n(small)
    for frame in (_zstd_zeros(n, content_size=False), _zstd_zeros(n)[:-3] + b"\x00" * 3,
                  _zstd_zeros(4 * n)):
        data = _model_file(small, {"grid": bytes([2, 0]) + book + _stream(1, 1, frame)})
        res = _check(sandbox, data)
        assert "zstd" in res["message"], res


def test_rans_counts_without_words(sandbox):
    """rANS counts [n, 0] and no coder words (4.5 GB and a misleading message before)."""
    cfg = _big((256, 256, 256), channels=15)
    n = _n(cfg)
    table = _zstd(np.array([n, 0], "<u4").tobytes())
    rans = struct.pack("<II", 2, len(table)) + table
    grid = bytes([3, 0]) + struct.pack("<f", 1.0) + _stream(2, 1, rans)
    data = _model_file(cfg, {"grid": grid})
    assert len(data) < 4 << 10
    _check(sandbox, data)
    # Within the element budget: decodes (to zeros) or is refused, in bounded resources.
    small = {"grid": [8, 10, 12], "channels": 4, "width": 16, "hidden_layers": 2}
    table = _zstd(np.array([_n(small), 0], "<u4").tobytes())
    rans = struct.pack("<II", 2, len(table)) + table
    grid = bytes([3, 0]) + struct.pack("<f", 1.0) + _stream(2, 1, rans)
    _check(sandbox, _model_file(small, {"grid": grid}), expect_error=False)


def test_one_gib_raw_float_payload(sandbox):
    """A raw32 tensor of 2^28 - 4 Mi floats, all zero, in a 31 KB frame (3.1 GB before)."""
    cfg = _big((1024, 1024, 63))
    n = _n(cfg)
    grid = bytes([0, 0]) + _stream(1, 4, _zstd_zeros(4 * n))
    data = _model_file(cfg, {"grid": grid})
    assert len(data) < 64 << 10
    _check(sandbox, data)


def _huge_masked_file(mask_section: bytes, masked: int) -> bytes:
    """The tiny masked seed (spec/mask.md) declaring a 2048^3 volume (2^33 voxels, a
    1 GiB bit mask) with ``mask_section`` as its mask."""
    hdr, _ = F.split_head(F.masked_file())
    hdr = {k: v for k, v in hdr.items() if k != "sections"}
    hdr["volume"] = dict(hdr["volume"], shape=[2048, 2048, 2048])
    hdr["mask"] = dict(hdr["mask"], masked=masked)
    return serialize_nvol(hdr, F.bricks_of(F.masked_file()), {"mask": mask_section}, minor=3)


def test_mask_section_lying_about_its_size(sandbox):
    """A few-byte mask section for 2^33 voxels: a zstd frame declaring the 1 GiB of bits,
    and a run stream declaring 2^33 runs: refused from the section's length, unallocated."""
    n = 2048 ** 3
    bits = b"\x01" + zstandard.ZstdCompressor().compress(b"")   # declares 0 bytes
    bomb = b"\x01" + _zstd_zeros((n + 7) // 8)   # declares the real 1 GiB
    runs = b"\x02" + struct.pack("<Q", n) + _stream(1, 4, _zstd_zeros(4 * n // 64))
    # rows: 2^22 rows of change counts (4 MiB of plain symbols) from a tiny zstd frame
    rows = b"\x03" + _stream(1, 1, _zstd_zeros(2048 * 2048))
    for section in (bits, bomb, runs, rows):
        assert len(section) < 64 << 10
        res = _check(sandbox, _huge_masked_file(section, 5))
        assert "mask" in res["message"]


def test_huge_volume_with_a_small_runs_mask_reads_in_small_memory(sandbox):
    """Runs stay runs: a 2^33-voxel mask of two runs reads in O(runs) memory."""
    n = 2048 ** 3
    runs = np.array([n - 5, 5], dtype="<u8")
    section = b"\x02" + struct.pack("<Q", 2) + _stream(0, 8, runs.tobytes())
    # width 8 is not a stream width: refused cleanly
    _check(sandbox, _huge_masked_file(section, 5))
    section = b"\x02" + struct.pack("<Q", 3) + _stream(0, 4, np.array(
        [2 ** 32 - 1, 5, n - 5 - (2 ** 32 - 1)], "<u4").tobytes())
    res = _check(sandbox, _huge_masked_file(section, 5), expect_error=False)
    assert res["outcome"] == "ok", res


def test_element_and_compute_budgets_accept_real_files():
    """The amplification and compute caps are far above what the encoder writes: every
    golden file and seed model (each architecture, vq, pruned) holds at most a few
    elements per payload byte and needs at most a few multiply-adds per point per byte."""
    from neurvol.compress.payload import ELEMENTS_PER_BYTE
    from neurvol.model_limits import MACS_PER_PAYLOAD_BYTE, macs_per_point

    checked = 0
    for name, data in F.seed_files():
        if "series" in NvolReader(data).header:
            continue      # time series: members of their own (tests/test_series.py)
        with NeuralVolume(NvolReader(data)) as nv:
            spec = nv.header.get("model")
            if spec is None:
                continue
            specs = tensor_specs(*_config_of(spec))
            n = sum(math.prod(s) for _, s in specs)
            for b in range(nv.brick_count):
                length = nv._reader.brick_length(b)
                if length > 9:
                    assert n <= 8 * length < ELEMENTS_PER_BYTE * length, name
                    assert macs_per_point(specs) <= 4 * length < MACS_PER_PAYLOAD_BYTE * length, name
                    checked += 1
    assert checked >= 10


# ---------------------------------------------------------------------------------------
# 2. time: configs that are slow to build or to evaluate


def _bricked(models, ids_of=lambda b: b, payload=b"\x02") -> bytes:
    hdr = _base_header()
    hdr["volume"] = dict(hdr["volume"], shape=[17, 17, 17])
    hdr["bricks"] = {"grid": [16, 16, 16], "ghost": 0, "blend": "none", "models": models,
                     "model_ids": [ids_of(b) for b in range(4096)]}
    hdr["model"] = models[0]
    return serialize_nvol(hdr, [payload] * 4096, minor=1)


@pytest.mark.parametrize("distinct", [False, True], ids=["same", "distinct"])
def test_bricked_header_of_4096_deep_models(sandbox, distinct):
    """4,096 listed models of 4,096 hidden layers each (35 minutes of open() before)."""
    models = [{"arch": "fvsrn", "config": {
        "grid": [2 + (i % 64 if distinct else 0), 2 + (i // 64 if distinct else 0), 2],
        "channels": 1, "width": 1, "hidden_layers": 4096}} for i in range(4096)]
    data = _bricked(models)
    res = _check(sandbox, data)
    assert "builds more than" in res["message"], res


def test_deep_or_wide_single_model(sandbox):
    """1,000 layers of width 256 (18 ms per point before), and a model within the tensor
    cap whose multiply-adds per point are over the compute cap."""
    deep = {"grid": [8, 10, 12], "channels": 4, "width": 256, "hidden_layers": 1000}
    data = serialize_nvol(dict(_base_header(), model={"arch": "fvsrn", "config": deep}),
                          F.bricks_of(F.tiny_model_file()))
    assert "builds more than" in _check(sandbox, data)["message"]
    wide = {"grid": [2, 2, 2], "channels": 4, "width": 1024, "hidden_layers": 3}
    data = serialize_nvol(dict(_base_header(), model={"arch": "fvsrn", "config": wide}),
                          F.bricks_of(F.tiny_model_file()))
    assert "multiply-adds per point" in _check(sandbox, data)["message"]


@pytest.mark.parametrize("omega0", [5e-324, 1e-300, 1e5])
def test_neurcomp_sine_factor_out_of_range(sandbox, omega0):
    """A subnormal sine factor made the torch build's initialisation bound overflow
    float32 (a RuntimeError from torch, found by the campaign): the config is refused."""
    real = F.tiny_model_file("neurcomp")
    hdr, _ = F.split_head(real)
    hdr = {k: v for k, v in hdr.items() if k != "sections"}
    hdr["model"]["config"]["omega0"] = omega0
    data = serialize_nvol(hdr, F.bricks_of(real))
    assert "omega0 must be" in _check(sandbox, data)["message"]


def test_tensor_budget_counts_builds_not_time():
    """The structure cap stops a deep build after MAX_MODEL_TENSORS registrations (an
    operation count): building the 8,195-tensor model is refused having registered at
    most the cap, and legitimate configs are unaffected."""
    from neurvol import model_limits

    seen = []
    real = model_limits._count

    def spy(kind, limit):
        seen.append(kind)
        real(kind, limit)

    model_limits._count = spy
    try:
        with pytest.raises(NeurvolFormatError, match="builds more than"):
            _specs({"grid": [4, 4, 4], "channels": 4, "width": 1, "hidden_layers": 4096})
    finally:
        model_limits._count = real
    assert seen.count("tensors") <= model_limits.MAX_MODEL_TENSORS + 1
    assert len(_specs({"grid": [8, 10, 12], "channels": 4, "width": 16, "hidden_layers": 2})) == 7


# ---------------------------------------------------------------------------------------
# 3. the brick cache is capped in bytes


def _cache_file() -> bytes:
    cfg = {"grid": [64, 64, 63], "channels": 1, "width": 4, "hidden_layers": 1}
    grid = bytes([3, 0]) + struct.pack("<f", 1.0) + _stream(1, 1, _zstd_zeros(_n(cfg)))
    hdr = _base_header()
    hdr["volume"] = dict(hdr["volume"], shape=[33, 33, 33])
    model = {"arch": "fvsrn", "config": cfg}
    hdr["model"] = model
    hdr["bricks"] = {"grid": [2, 4, 4], "ghost": 0, "blend": "none", "models": [model],
                     "model_ids": [0] * 32}
    return serialize_nvol(hdr, [_payload(cfg, {"grid": grid})] * 32, minor=1)


def test_many_bricks_at_the_element_budget(sandbox):
    """32 bricks, each a model as large as its payload allows (4.3 GB held before): the
    decode reads every brick within the memory limit."""
    data = _cache_file()
    assert len(data) < 64 << 10
    _check(sandbox, data, expect_error=False)


def test_brick_cache_holds_at_most_its_byte_cap(monkeypatch):
    from neurvol import neural_volume

    monkeypatch.setattr(neural_volume, "MAX_CACHE_BYTES", 3 << 20)
    with NeuralVolume(NvolReader(_cache_file())) as nv:
        nv.decode(shape=(16, 16, 16))
        assert nv.stats["bricks_read"] == 32
        assert 0 < nv._cache_bytes <= 3 << 20
        assert len(nv._models) == 3     # 1 MiB per model


# ---------------------------------------------------------------------------------------
# 4. raw exceptions: every failure a NeurvolError saying what is wrong


def test_rans_alphabet_of_one(sandbox):
    cfg = {"grid": [8, 10, 12], "channels": 4, "width": 16, "hidden_layers": 2}
    table = _zstd(np.array([_n(cfg)], "<u4").tobytes())
    grid = bytes([3, 0]) + struct.pack("<f", 1.0) + _stream(2, 1, struct.pack("<II", 1, len(table)) + table)
    res = _check(sandbox, _model_file(cfg, {"grid": grid}))
    assert "alphabet" in res["message"]


def _forged(edit) -> bytes:
    data = F.tiny_model_file()
    hdr, tail = F.split_head(data)
    edit(hdr)
    return F.forge(hdr, tail)


@pytest.mark.parametrize("edit", [
    lambda h: h["sections"][0].update(length=10 ** 4000),
    lambda h: h["sections"][1].update(offset=10 ** 4000),
    lambda h: h["bricks"].update(grid=[10 ** 4000, 10 ** 4000, 1]),
    lambda h: h["bricks"].update(grid=[2 ** 40, 2 ** 40, 2 ** 40]),
    lambda h: h["volume"].update(shape=[10 ** 4000, 2, 2]),
    lambda h: h["model"]["config"].update(width=10 ** 4000),
], ids=["section-length", "section-offset", "grid", "grid-2^40", "shape", "width"])
def test_huge_integers_give_a_message(sandbox, edit):
    """Integers of thousands of digits (a ValueError while formatting the message before)."""
    res = _check(sandbox, _forged(edit))
    assert res["type"] == "NeurvolFormatError" and "0" * 200 not in res["message"], res


@pytest.mark.parametrize("value", ["abc", [1, 2], [1.0, "x", 2.0], [0.0, 1.0, 1.0],
                                   [-1.0, 1.0, 1.0], [10 ** 400, 1, 1], [True, 1, 1],
                                   {"a": 1}])
def test_bad_spacing_is_refused_at_open(value):
    data = serialize_nvol(dict(_base_header(), volume=dict(_base_header()["volume"],
                                                           spacing=value)),
                          F.bricks_of(F.tiny_model_file()))
    with pytest.raises(NeurvolFormatError, match="spacing"):
        NeuralVolume(NvolReader(data))


def test_header_of_many_empty_objects(sandbox):
    """A 16 MiB header of {} (7 s and 1 GB before)."""
    body = b'{"a":[' + b"{}," * ((16 << 20) // 3 - 10) + b'{}]}'
    head = struct.pack("<8sHHI", b"\x89NVL\r\n\x1a\n", 1, 0, len(body)) + body
    import zlib
    data = head + struct.pack("<I", zlib.crc32(head))
    assert "arrays/objects" in _check(sandbox, data)["message"]


def test_brick_longer_than_any_payload_is_not_read(monkeypatch):
    """A brick longer than any valid payload is refused from the index, unread: in a
    file without a model (a brick may only be a 9-byte constant) and in a model file."""
    from neurvol import neural_volume

    hdr = {k: v for k, v in _base_header().items() if k != "model"}
    junk = os.urandom(100_000)
    with NeuralVolume(NvolReader(serialize_nvol(hdr, [b"\x01" + junk]))) as nv:
        with pytest.raises(NeurvolFormatError, match="header has no 'model'"):
            nv.decode(shape=(2, 2, 2))
        assert nv.stats["bricks_read"] == 0
    # The model bound is tens of MB for any model (rANS tables may be large), so it is
    # lowered here rather than writing such a file.
    monkeypatch.setattr(neural_volume, "max_payload_bytes", lambda specs: 1000)
    with NeuralVolume(NvolReader(F.tiny_model_file())) as nv:
        with pytest.raises(NeurvolFormatError, match="longer than any valid payload"):
            nv.decode(shape=(2, 2, 2))
        assert nv.stats["bricks_read"] == 0


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_nifti_of_float16_and_float128(tmp_path, dtype):
    pytest.importorskip("nibabel")
    vol = np.linspace(0, 3, 16 ** 3).reshape(16, 16, 16).astype(dtype)
    nv = neurvol.encode(vol, ratio=2, steps=5, quiet=True)
    dec = nv.decode()
    assert dec.dtype == dtype
    out = tmp_path / "v.nii"
    if np.dtype(dtype).itemsize <= 8:
        nvio.write_volume(out, dec)
        back = np.asarray(nvio.load_volume(out).data)
        np.testing.assert_array_equal(back, dec.astype(np.float32))
    else:
        with pytest.raises(NeurvolInputError, match="NIfTI"):
            nvio.write_volume(out, dec)
        assert not out.exists()


class _FullDisk(io.RawIOBase):
    def writable(self):
        return True

    def write(self, b):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("size", ["small", "large"])
def test_full_disk_during_save(tmp_path, monkeypatch, size):
    """ENOSPC at write (large) or at flush (small, buffered): a NeurvolIOError saying the
    disk is full, the closing flush does not replace it, nothing is left behind."""
    real = _atomic._fdopen

    def full(fd):
        os.close(fd)
        return io.BufferedWriter(_FullDisk(), buffer_size=1 << 20 if size == "small" else 16)

    nv = NeuralVolume(NvolReader(F.tiny_model_file()))
    monkeypatch.setattr(_atomic, "_fdopen", full)
    target = tmp_path / "out.nvol"
    with pytest.raises(NeurvolIOError, match="disk is full"):
        nv.save(target)
    monkeypatch.setattr(_atomic, "_fdopen", real)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------
# 5. type-exact integer casts


INT_TYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@pytest.mark.parametrize("dtype", INT_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("end", ["min", "max"])
def test_constant_at_the_limits_round_trips(tmp_path, dtype, end):
    value = getattr(np.iinfo(dtype), end)
    vol = np.full((16, 16, 16), value, dtype=dtype)
    path = tmp_path / "c.nvol"
    neurvol.encode(vol, ratio=2, quiet=True).save(path)
    with neurvol.open(path) as nv:
        assert nv.fit_psnr == math.inf
        out = nv.decode()
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, vol)
        np.testing.assert_array_equal(nv[1, :, 2], vol[1, :, 2])


@settings(max_examples=6, deadline=None, derandomize=True)
@given(dtype=st.sampled_from([np.int32, np.uint32, np.int64, np.uint64]),
       top=st.booleans(), spread=st.sampled_from([1, 100, 10 ** 6]), seed=st.integers(0, 99))
def test_modelled_volumes_near_the_limits_never_wrap(dtype, top, spread, seed):
    """A fitted (lossy) volume near a limit decodes inside the volume's range: before,
    values at INT32_MAX came back as INT32_MIN."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    spread = min(spread, int(info.max) // 4)
    offs = rng.integers(0, spread + 1, size=(10, 12, 14)).astype(np.float64)
    if top:
        vol = (int(info.max) - offs.astype(np.uint64)).astype(dtype) if info.min == 0 else \
            (int(info.max) - offs.astype(np.int64)).astype(dtype)
    else:
        vol = (int(info.min) + offs.astype(np.int64)).astype(dtype) if info.min < 0 else \
            offs.astype(dtype)
    vol.flat[0] = info.max if top else info.min
    nv = neurvol.encode(vol, ratio=2, steps=3, seed=0, quiet=True, codec={"hybrid": False})
    out = nv.decode()
    assert out.dtype == dtype
    assert int(out.min()) >= int(vol.min()) and int(out.max()) <= int(vol.max())


# ---------------------------------------------------------------------------------------
# 6. the writer's edges


@pytest.mark.parametrize("length", [242, 250, 255])
def test_long_file_names_can_be_saved(tmp_path, length):
    name = "n" * (length - len(".nvol")) + ".nvol"
    nv = NeuralVolume(NvolReader(F.tiny_model_file()))
    nv.save(tmp_path / name)
    assert os.listdir(tmp_path) == [name]
    assert (tmp_path / name).read_bytes() == F.tiny_model_file()


def test_save_writes_through_a_symlink(tmp_path):
    """Decision (RELIABILITY.md): a link is kept and the file it points to replaced."""
    real_dir = tmp_path / "data"
    real_dir.mkdir()
    target = real_dir / "v.nvol"
    target.write_bytes(b"old")
    link = tmp_path / "link.nvol"
    link.symlink_to(target)
    nv = NeuralVolume(NvolReader(F.tiny_model_file()))
    nv.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == F.tiny_model_file()
    dangling = tmp_path / "dangling.nvol"
    dangling.symlink_to(real_dir / "new.nvol")
    nv.save(dangling)
    assert dangling.is_symlink() and (real_dir / "new.nvol").read_bytes() == F.tiny_model_file()
    assert sorted(os.listdir(real_dir)) == ["new.nvol", "v.nvol"]


def test_sigterm_after_the_rename_says_the_file_is_complete(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("v.npy", np.full((16, 16, 16), 7.0, np.float32))

    def terminated(directory):
        raise cli.Terminated(15)

    monkeypatch.setattr(_atomic, "_fsync_dir", terminated)
    assert cli.main(["-q", "pack", "v.npy", "-o", "o.nvol", "--ratio", "2"]) == 143
    err = capsys.readouterr().err
    assert "terminated" in err and "o.nvol is complete" in err
    with neurvol.open(tmp_path / "o.nvol") as nv:
        assert nv.decode()[0, 0, 0] == 7.0


@pytest.mark.parametrize("ratio", ["0.5", "1", "1.0", "0", "-3", "inf"])
def test_ratio_at_most_one_is_a_usage_error(tmp_path, monkeypatch, capsys, ratio):
    from neurvol.volume_checks import RATIO_RULE

    monkeypatch.chdir(tmp_path)
    np.save("v.npy", np.zeros((4, 4, 4), np.float32))
    assert cli.main(["-q", "pack", "v.npy", "-o", "o.nvol", "--ratio", ratio]) == 2
    assert RATIO_RULE in capsys.readouterr().err
    if ratio != "inf":
        with pytest.raises(NeurvolInputError, match=RATIO_RULE.split("(")[0].strip()):
            neurvol.encode(np.zeros((4, 4, 4), np.float32), ratio=float(ratio), quiet=True)
    assert not (tmp_path / "o.nvol").exists()


@pytest.mark.parametrize("ratio", ["10", b"10", True, None, [10], 10j])
def test_encode_refuses_a_ratio_that_is_not_a_real_number(ratio):
    with pytest.raises(NeurvolInputError, match="ratio"):
        neurvol.encode(np.zeros((4, 4, 4), np.float32), ratio=ratio, quiet=True)


def test_fit_psnr_of_a_huge_integer_is_nan():
    data = serialize_nvol(dict(_base_header(), fit={"psnr": 10 ** 4000}),
                          F.bricks_of(F.tiny_model_file()))
    with NeuralVolume(NvolReader(data)) as nv:
        assert math.isnan(nv.fit_psnr)
        json.dumps(nv.info())


def test_error_messages_never_fail_on_huge_values():
    from neurvol.errors import brief

    assert brief(10 ** 5000) == "<int of 16610 bits>"
    assert "bits>" in brief({"a": [10 ** 4000]})
    assert len(brief("x" * 10 ** 6)) < 200


# ---------------------------------------------------------------------------------------
# compact headers (format 1.4, spec/nvol.md §3.3): sizes checked before decompressing


def _compact_frame(text: bytes, content_size: bool = True) -> bytes:
    from neurvol.container import compact
    return zstandard.ZstdCompressor(dict_data=compact._dictionary(1), write_dict_id=False,
                                    write_checksum=False,
                                    write_content_size=content_size).compress(text)


def _compact_parts():
    hdr, crc, brick = F.split_compact(F.tiny_model_file(compact=True))
    return hdr, crc, brick


def test_compact_header_lying_about_its_size(sandbox):
    """A frame declaring 60 KiB (under the cap) that holds 64 MiB: decompression stops
    one byte past the declared size."""
    _, crc, brick = _compact_parts()
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, size=64 << 20,
                                                          closefd=False) as w:
        for _ in range(16):
            w.write(b" " * (4 << 20))
    bomb = out.getvalue()
    fhd = bomb[4]
    assert fhd >> 6 == 2 and fhd & 0x03 == 0          # a 4-byte size field, no dict id
    start = 5 + (0 if fhd & 0x20 else 1)              # after the window descriptor, if any
    assert struct.unpack_from("<I", bomb, start)[0] == 64 << 20
    lying = bomb[:start] + struct.pack("<I", 60 << 10) + bomb[start + 4:]
    res = _check(sandbox, F.forge_compact(None, crc, brick, frame=lying))
    assert res["type"] == "NeurvolFormatError", res


def test_compact_header_past_the_cap(sandbox):
    hdr, crc, brick = _compact_parts()
    big = _compact_frame(b'{"a":"' + b" " * (1 << 24) + b'"}')
    res = _check(sandbox, F.forge_compact(None, crc, brick, frame=big))
    assert "at most 65536" in res["message"], res
    hidden = _compact_frame(b'{"a":"' + b" " * (1 << 24) + b'"}', content_size=False)
    res = _check(sandbox, F.forge_compact(None, crc, brick, frame=hidden))
    assert "declares no size" in res["message"], res


@pytest.mark.parametrize("dict_id", [0, 2, 255])
def test_compact_header_of_an_unknown_dictionary(sandbox, dict_id):
    hdr, crc, brick = _compact_parts()
    res = _check(sandbox, F.forge_compact(hdr, crc, brick, dict_id=dict_id))
    assert res["type"] == "NeurvolVersionError" and "upgrade" in res["message"], res
