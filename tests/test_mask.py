"""Masked volumes (spec/mask.md): the mask coder, encode/decode/query with NaN and fill
values, metrics over valid voxels, the fit's sampling, refusals and hostile mask
sections."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
import zstandard

import neurvol
from neurvol import NeuralVolume, NeurvolFormatError, NeurvolInputError
from neurvol.compress.mask import (MASK_EXPANSION, MASK_FREE_BYTES, decode_mask, encode_mask,
                                   mask_method_name, mask_methods, mask_runs)
from neurvol.container import NvolReader, serialize_nvol
from neurvol.fit.sampling import ErrorSampler, VoxelSampler
from neurvol.masking import nearest_indices
from neurvol.metrics import max_abs_error, psnr

SHAPE = (10, 12, 14)


def _ball_mask(shape=SHAPE, r2=30):
    z, y, x = np.indices(shape)
    c = [(n - 1) / 2 for n in shape]
    return (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 > r2


def _volume():
    z, y, x = np.indices(SHAPE).astype(np.float32)
    return (np.sin(z / 3) + np.cos(y / 4) + x / 14).astype(np.float32)


# ---------------------------------------------------------------------------------------
# the coder


def _masks():
    rng = np.random.default_rng(1)
    yield _ball_mask()
    yield ~_ball_mask()                                  # first voxel valid / masked
    yield rng.random(SHAPE) < 0.5                        # noise: bits win
    m = np.zeros(SHAPE, bool); m[0, 0, 0] = True; yield m
    m = np.zeros(SHAPE, bool); m[-1, -1, -1] = True; yield m
    yield rng.random((3, 5, 7)) < 0.3                    # pad bits in the last byte


@pytest.mark.parametrize("i", range(6))
def test_mask_coder_round_trips_every_method(i):
    mask = list(_masks())[i]
    section = encode_mask(mask)
    got = decode_mask(section, mask.shape)
    flat = np.arange(mask.size)
    assert np.array_equal(got.masked(flat), mask.reshape(-1))
    assert got.count() == int(mask.sum())
    for method in mask_methods():          # each method decodes what it encodes
        body = method.encode(mask)
        if body is not None:
            dec = decode_mask(bytes([method.id]) + body, mask.shape)
            assert np.array_equal(dec.masked(flat), mask.reshape(-1)), method.name
    # never larger than the packed bits plus the method byte
    assert len(section) <= -(-mask.size // 8) + 1


def test_mask_coder_picks_runs_for_a_smooth_mask_and_bits_for_noise():
    smooth = _ball_mask((40, 40, 40), r2=200)
    assert mask_method_name(encode_mask(smooth)) in ("runs", "bits-zstd")
    assert len(encode_mask(smooth)) < smooth.size // 8 // 4
    noise = np.random.default_rng(0).random((20, 20, 20)) < 0.5
    assert mask_method_name(encode_mask(noise)) == "bits"


def test_mask_runs_start_with_a_valid_run():
    m = np.array([True, True, False, True], bool).reshape(1, 1, 4)
    assert mask_runs(m).tolist() == [0, 2, 1, 1]
    assert mask_runs(~m).tolist() == [2, 1, 1]


# ---------------------------------------------------------------------------------------
# encode / decode / query


@pytest.fixture(scope="module")
def nan_file():
    vol = _volume()
    mask = _ball_mask()
    vol[mask] = np.nan
    nv = neurvol.encode(vol, ratio=4, steps=30, seed=0, arch="fvsrn", quiet=True)
    return vol, mask, nv


def test_nan_volume_round_trips_with_the_mask_exact(nan_file):
    vol, mask, nv = nan_file
    assert nv.masked and math.isnan(nv.fill_value)
    assert nv.info()["format_version"] == "1.3"
    assert nv.info()["mask"]["masked"] == int(mask.sum())
    json.dumps(nv.info(), allow_nan=False)
    dec = nv.decode()
    assert np.array_equal(np.isnan(dec), mask)
    assert np.array_equal(nv.valid_mask(), ~mask)
    # the range and the fit's PSNR are over the valid voxels
    assert nv.info()["value_range"] == [float(np.nanmin(vol)), float(np.nanmax(vol))]
    assert nv.fit_psnr == pytest.approx(psnr(vol, dec), abs=1e-3)
    # saved and opened again: the same
    again = NeuralVolume(NvolReader(nv.to_bytes()))
    assert np.array_equal(again.decode(), dec, equal_nan=True)
    assert nv.byte_breakdown()["mask"] == len(encode_mask(mask))
    assert nv.nbytes_file <= vol.nbytes / 4          # the mask counts in the budget


def test_region_reads_and_resampled_decodes_apply_the_mask(nan_file):
    vol, mask, nv = nan_file
    assert np.array_equal(np.isnan(nv[2:7, :, 3]), mask[2:7, :, 3])
    assert np.array_equal(np.isnan(nv[[0, 5, 9], 6, [1, 7]]), mask[[0, 5, 9]][:, 6][:, [1, 7]])
    big = nv.decode(shape=(19, 23, 27))
    idx = [nearest_indices(t, n) for t, n in zip((19, 23, 27), SHAPE)]
    assert np.array_equal(np.isnan(big), mask[np.ix_(*idx)])
    with pytest.raises(NeurvolInputError, match="float dtype"):
        nv.decode(dtype=np.uint8)


def test_query_takes_the_nearest_voxels_mask(nan_file):
    vol, mask, nv = nan_file
    centres = np.argwhere(np.ones(SHAPE, bool)).astype(np.float64)
    q = nv.query(centres)
    assert np.array_equal(np.isnan(q), mask.reshape(-1))
    dec = nv.decode()
    assert np.allclose(q[~mask.reshape(-1)], dec[~mask], atol=1e-5)
    # between centres: the voxel of floor(c + 0.5); a half-way point goes up
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, np.array(SHAPE) - 1, size=(2000, 3))
    near = np.floor(pts + 0.5).astype(int)
    expect = mask[near[:, 0], near[:, 1], near[:, 2]]
    assert np.array_equal(np.isnan(nv.query(pts)), expect)
    half = np.array([[4.5, 5.0, 6.0]])
    assert bool(np.isnan(nv.query(half))[0]) == bool(mask[5, 5, 6])
    norm = pts / (np.array(SHAPE) - 1) * 2 - 1
    assert np.array_equal(np.isnan(nv.query(norm, space="normalized")), expect)


def test_fill_value_round_trips_in_an_integer_volume():
    vol = (np.indices(SHAPE).sum(0) * 7 % 200).astype(np.uint8) + 10
    mask = _ball_mask()
    vol[mask] = 0
    nv = neurvol.encode(vol, ratio=1.1, steps=20, seed=0, arch="fvsrn", quiet=True,
                        fill_value=0)
    dec = nv.decode()
    assert dec.dtype == np.uint8
    assert (dec[mask] == 0).all()
    assert nv.fill_value == 0.0 and nv.info()["value_range"][0] >= 10
    assert np.isnan(nv.query(np.argwhere(mask)[:5].astype(float))).all()
    f = nv.decode(dtype=np.float32)
    assert (f[mask] == 0).all()


def test_a_volume_without_masked_voxels_stays_a_plain_file():
    nv = neurvol.encode(_volume(), ratio=4, steps=5, arch="fvsrn", quiet=True,
                        fill_value=-1000.0)
    assert not nv.masked and nv.info()["format_version"] != "1.3"


def test_constant_valid_voxels_are_stored_exactly():
    vol = np.full(SHAPE, 2.5, np.float32)
    mask = _ball_mask()
    vol[mask] = np.nan
    nv = neurvol.encode(vol, ratio=2, quiet=True)
    dec = nv.decode()
    assert np.array_equal(np.isnan(dec), mask) and (dec[~mask] == 2.5).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"fill_value": 0.1}, "not exactly representable"),
    ({"fill_value": 300}, "uint8"),
    ({"fill_value": float("nan")}, "finite"),
    ({"fill_value": "0"}, "number"),
])
def test_bad_fill_values_are_refused(kwargs, match):
    vol = np.zeros(SHAPE, np.uint8 if kwargs["fill_value"] == 300 else np.float32)
    with pytest.raises(NeurvolInputError, match=match):
        neurvol.encode(vol, ratio=2, quiet=True, **kwargs)


def test_masks_refused_where_they_do_not_combine():
    vol = _volume()
    vol[_ball_mask()] = np.nan
    with pytest.raises(NeurvolInputError, match=r"bricks=\(1, 1, 1\)"):   # refused per brick
        neurvol.encode(vol, ratio=2, bricks=(2, 1, 1), quiet=True)
    with pytest.raises(NeurvolInputError, match="bricks"):
        neurvol.encode(_volume(), ratio=2, bricks=(2, 1, 1), quiet=True, fill_value=0.0)
    with pytest.raises(NeurvolInputError, match="max_error"):
        neurvol.encode(_volume(), max_error=0.1, quiet=True, fill_value=0.0)
    with pytest.raises(NeurvolInputError):
        neurvol.encode(vol, max_error=0.1, quiet=True)
    inf = _volume(); inf[0, 0, 0] = np.inf; inf[1, 1, 1] = np.nan
    with pytest.raises(NeurvolInputError, match="infinities"):
        neurvol.encode(inf, ratio=2, quiet=True)
    with pytest.raises(NeurvolInputError, match="every voxel"):
        neurvol.encode(np.full(SHAPE, np.nan, np.float32), ratio=2, quiet=True)
    both = _volume(); both[0, 0, 0] = np.nan
    with pytest.raises(NeurvolInputError, match="fill value"):
        neurvol.encode(both, ratio=2, quiet=True, fill_value=0.0)


# ---------------------------------------------------------------------------------------
# metrics and sampling


def test_metrics_are_over_valid_voxels():
    a = np.array([1.0, 2.0, np.nan, 5.0])
    b = np.array([1.0, 2.5, 100.0, 5.0])
    assert max_abs_error(a, b) == 0.5
    assert psnr(a, b) == pytest.approx(10 * math.log10(16 / (0.25 / 3)))
    valid = np.array([True, False, True, True])
    c = np.array([1.0, 2.0, -7.0, 5.0])
    assert max_abs_error(c, b, valid) == 107.0
    assert math.isnan(max_abs_error(a, np.array([1.0, np.nan, 0.0, 5.0])))


def test_samplers_draw_valid_voxels_only():
    vol = torch.rand(8, 9, 10)
    valid = torch.from_numpy(~_ball_mask((8, 9, 10), r2=12))
    s = VoxelSampler(vol, torch.Generator().manual_seed(0), valid)
    coords, values = s.sample(5000)
    idx = torch.round((coords + 1) / s._scale).long()
    assert valid[idx[:, 0], idx[:, 1], idx[:, 2]].all()
    e = ErrorSampler(vol, torch.Generator().manual_seed(0), valid=valid)
    coords, values, weights, blocks = e.sample_weighted(20000)
    idx = torch.round((coords + 1) / e._scale).long()
    ok = valid[idx[:, 0], idx[:, 1], idx[:, 2]]
    assert (weights[~ok] == 0).all() and (weights[ok] > 0).all()
    # the weighted mean of a per-voxel quantity estimates its mean over valid voxels
    target = vol[valid].mean()
    est = (weights * values).sum() / weights.shape[0]
    assert float(est) == pytest.approx(float(target), rel=0.05)


# ---------------------------------------------------------------------------------------
# hostile mask sections


def _masked_file(blob: bytes, **entry) -> bytes:
    _, _, nv = _nan_tiny()
    hdr = {k: v for k, v in nv.header.items() if k != "sections"}
    hdr["mask"] = dict(hdr["mask"], **entry)
    brick = nv._reader.read_brick(0)
    return serialize_nvol(hdr, [brick], {"mask": blob}, minor=3)


_TINY = {}


def _nan_tiny():
    if not _TINY:
        vol = _volume()
        mask = _ball_mask()
        vol[mask] = np.nan
        _TINY["v"] = (vol, mask, neurvol.encode(vol, ratio=4, steps=5, arch="fvsrn", quiet=True))
    return _TINY["v"]


def _read(data: bytes):
    nv = NeuralVolume(NvolReader(data))
    return nv.decode()


def test_hostile_mask_sections_are_refused_cleanly():
    vol, mask, _ = _nan_tiny()
    n = mask.size
    cases = {
        # runs: a count far beyond the section's bound
        "runs count": b"\x02" + struct.pack("<Q", 1 << 40) + struct.pack("<BBI", 0, 1, 0),
        # runs that do not cover the volume
        "runs sum": b"\x02" + struct.pack("<Q", 2) + struct.pack("<BBI", 0, 1, 2) + bytes([3, 4]),
        # a zstd frame declaring far more than the bits
        "zstd size": b"\x01" + zstandard.ZstdCompressor().compress(bytes(n)),
        # packed bits of the wrong length
        "bits length": b"\x00" + bytes(3),
        "method": b"\x09" + bytes(10),
        "empty": b"",
    }
    for name, section in cases.items():
        with pytest.raises(NeurvolFormatError):
            _read(_masked_file(section))
    # a right-sized, valid section whose count disagrees with the header
    with pytest.raises(NeurvolFormatError, match="header says"):
        _read(_masked_file(encode_mask(mask), masked=int(mask.sum()) - 1))
    with pytest.raises(NeurvolFormatError):
        NeuralVolume(NvolReader(_masked_file(encode_mask(mask), masked=0)))
    with pytest.raises(NeurvolFormatError):
        NeuralVolume(NvolReader(_masked_file(encode_mask(mask), section="nope")))


def test_the_bound_refuses_a_small_section_declaring_a_huge_mask():
    # a header shape of 2^36 voxels with a 10-byte runs section: refused before allocation
    bound = MASK_EXPANSION * 20 + MASK_FREE_BYTES
    section = b"\x02" + struct.pack("<Q", bound + 1) + struct.pack("<BBI", 1, 1, 0)
    with pytest.raises(NeurvolFormatError, match="bound"):
        decode_mask(section, (4096, 4096, 4096))
    section = b"\x01" + zstandard.ZstdCompressor().compress(b"")
    with pytest.raises(NeurvolFormatError, match="may decode to"):
        decode_mask(section, (4096, 4096, 4096))


def test_spec_worked_example():
    """spec/mask.md §5: the bits and runs sections of [NaN, NaN, 2.0, NaN]."""
    from neurvol.compress.mask import BitsMethod, RunsMethod

    m = np.array([1, 1, 0, 1], bool).reshape(1, 1, 4)
    assert (b"\x00" + BitsMethod.encode(m)).hex(" ") == "00 d0"
    runs = bytes.fromhex("02 0400000000000000 000104000000 00020101")
    assert b"\x02" + RunsMethod.encode(m) == runs
    assert decode_mask(runs, (1, 1, 4)).masked(np.arange(4)).tolist() == [True, True, False, True]


def test_cli_pack_fill_value_and_unpack(tmp_path, monkeypatch):
    from neurvol import cli

    monkeypatch.chdir(tmp_path)
    vol = (np.indices(SHAPE).sum(0) * 5 + 7).astype(np.int16)
    vol[:3] = -999
    np.save("v.npy", vol)
    assert cli.main(["-q", "pack", "v.npy", "-o", "v.nvol", "--ratio", "1.5", "--steps", "5",
                     "--arch", "fvsrn", "--fill-value", "-999"]) == 0
    assert cli.main(["-q", "unpack", "v.nvol", "-o", "r.npy"]) == 0
    r = np.load("r.npy")
    assert r.dtype == np.int16 and (r[:3] == -999).all()
    with neurvol.open("v.nvol") as nv:
        assert nv.info()["mask"]["masked"] == 3 * 12 * 14


def test_spec_worked_example_rows():
    from neurvol.compress.mask import RowsMethod

    m = np.array([1, 1, 0, 1], bool).reshape(1, 1, 4)
    rows = bytes.fromhex("03 00010100000006 0300000000000000 000103000000000201 "
                         "0000000000000000 000100000000")
    assert b"\x03" + RowsMethod.encode(m) == rows
    assert decode_mask(rows, (1, 1, 4)).masked(np.arange(4)).tolist() == [True, True, False, True]


def test_rows_method_wins_on_a_smooth_outline_and_checks_its_streams():
    from neurvol.compress.mask import RowsMethod

    mask = _ball_mask((30, 40, 50), r2=300)
    assert mask_method_name(encode_mask(mask)) == "rows"
    body = RowsMethod.encode(mask)
    assert len(body) < len(list(m for m in mask_methods() if m.name == "runs")[0].encode(mask))
    # a row claiming more changes than it has voxels
    bad_counts = struct.pack("<BBI", 0, 1, 30 * 40) + bytes([2 * 51]) + bytes(30 * 40 - 1)
    with pytest.raises(NeurvolFormatError, match="change count"):
        decode_mask(b"\x03" + bad_counts + bytes(20), mask.shape)
    # positions out of order: one fresh row with changes at 5 then 5
    one = np.zeros((1, 1, 8), bool)
    counts = struct.pack("<BBI", 0, 1, 1) + bytes([4])
    gaps = struct.pack("<Q", 2) + struct.pack("<BBI", 0, 1, 2) + bytes([5, 0])
    moved = struct.pack("<Q", 0) + struct.pack("<BBI", 0, 1, 0)
    with pytest.raises(NeurvolFormatError, match="out of order"):
        decode_mask(b"\x03" + counts + gaps + moved, one.shape)
    with pytest.raises(NeurvolFormatError, match="after the streams"):
        decode_mask(b"\x03" + counts + struct.pack("<Q", 2) + struct.pack("<BBI", 0, 1, 2)
                    + bytes([1, 2]) + moved + b"x", one.shape)


def test_masked_voxels_do_not_influence_the_model():
    """Two volumes equal on the valid voxels, with different fill values: the same model
    (the fit never sees masked voxels; their dense fill comes from valid ones)."""
    base = _volume()
    mask = _ball_mask()
    payloads = []
    for fill in (-2.0, -7.0):     # same header length, so the same budget for the model
        vol = base.copy()
        vol[mask] = fill
        nv = neurvol.encode(vol, ratio=4, steps=10, seed=0, arch="fvsrn", quiet=True,
                            fill_value=fill)
        payloads.append(nv._reader.read_brick(0))
    assert payloads[0] == payloads[1]
