"""Time series and several variables in one file (spec/series.md, issue 25)."""
from __future__ import annotations

import json
import math
import os
import sys

import h5py
import numpy as np
import pytest

import neurvol
from neurvol.compress.delta import KIND_DELTA, decode_delta, encode_delta
from neurvol.container import NvolReader, serialize_nvol
from neurvol.errors import NeurvolError, NeurvolFormatError, NeurvolInputError
from neurvol.neural_volume import NeuralVolume
from neurvol.series import NeuralSeries

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))
import nvol_fuzzlib as F  # noqa: E402

RATIO = 8.0
FIT_STEPS = 30


def _series_data(steps: int = 5, n: int = 16) -> np.ndarray:
    """A blob drifting through a small grid: consecutive steps are close."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n)] * 3, indexing="ij")
    out = []
    for t in range(steps):
        c = -0.3 + 0.03 * t
        out.append(np.exp(-((z - c) ** 2 + y ** 2 + (x + c) ** 2) * 4.0) * 50.0 + 10.0 * y)
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    return _series_data()


@pytest.fixture(scope="module")
def series(data):
    return neurvol.encode(data, ratio=RATIO, steps=FIT_STEPS, group=3, seed=0, quiet=True,
                          arch="fvsrn", time=[0.0, 1.0, 2.0, 3.0, 4.0])


@pytest.fixture(scope="module")
def multi(data):
    density = (data - data.min()).astype(np.uint8)
    return neurvol.encode({"density": density, "velocity_x": data[::-1].copy()}, ratio=3,
                          steps=FIT_STEPS, group=4, seed=0, quiet=True, arch="fvsrn",
                          metadata={"velocity_x": {"units": "m/s", "attrs": {"axis": "x",
                                                                              "scale": 2}}})


def _rewrite(nv, edit=None, bricks=None, sections=None) -> bytes:
    """The file of ``nv`` with its header changed by ``edit(header)`` and its extra
    sections by ``sections(dict)`` (CRCs recomputed)."""
    reader = NvolReader(nv.to_bytes())
    header = json.loads(json.dumps({k: v for k, v in reader.header.items() if k != "sections"}))
    if edit is not None:
        edit(header)
    payloads = [reader.read_brick(b) for b in range(reader.brick_count)]
    if bricks is not None:
        payloads = bricks(payloads)
    extra = {n: reader.read_section(n) for n in reader.section_names
             if n not in ("brick_index", "bricks")}
    if sections is not None:
        extra = sections(extra)
    return serialize_nvol(header, payloads, extra, minor=3)


# ---------------------------------------------------------------------- time axis
def test_shape_decode_and_slices(series, data):
    assert isinstance(series, NeuralSeries)
    assert series.shape == data.shape and series.ndim == 4 and series.steps == 5
    assert series.time == (0.0, 1.0, 2.0, 3.0, 4.0)
    full = series.decode()
    assert full.shape == data.shape and full.dtype == np.float32
    np.testing.assert_array_equal(series[3], full[3])
    np.testing.assert_array_equal(series[1:4], full[1:4])
    np.testing.assert_array_equal(series[-1], full[4])
    np.testing.assert_array_equal(series[[0, 2], 3:7, :, 5], full[[0, 2], 3:7, :, 5])
    np.testing.assert_array_equal(series[2, 4:9, 1, 2:6], full[2, 4:9, 1, 2:6])
    assert series[4:2].shape == (0, 16, 16, 16)


def test_budget_is_over_the_whole_series(series, data):
    assert series.nbytes_file <= data.nbytes / RATIO
    assert series.ratio >= RATIO
    # every step is reconstructed, not copied from another: the file is far from exact
    psnrs = [neurvol.metrics.psnr(data[t], series[t]) for t in range(5)]
    assert all(15 < p < 80 for p in psnrs), psnrs


def test_query_at_voxel_centres_equals_decode(series):
    full = series.decode(np.float32)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 16, size=(200, 3))
    for k in range(5):
        got = series.query(idx.astype(np.float64), t=k)
        np.testing.assert_allclose(got, full[k][tuple(idx.T)], rtol=0, atol=1e-4)


def test_query_between_steps_is_linear(series):
    pts = np.array([[3.0, 4.5, 7.25], [8.0, 8.0, 8.0], [15.0, 0.0, 2.0]])
    a, b = series.query(pts, t=2), series.query(pts, t=3)
    np.testing.assert_allclose(series.query(pts, t=2.5), 0.5 * a + 0.5 * b, rtol=0, atol=1e-4)
    np.testing.assert_allclose(series.query(pts, t=2.25), 0.75 * a + 0.25 * b, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(series.query(pts, t=3.0), b)


@pytest.mark.parametrize("t", [-0.5, 4.01, math.nan, True, "1", None])
def test_query_outside_the_steps_is_refused(series, t):
    with pytest.raises(NeurvolInputError):
        series.query([[1.0, 1.0, 1.0]], t=t)


@pytest.mark.parametrize("key", [5, -6, (1.5,), ("a", 1)])
def test_bad_step_index_is_refused(series, key):
    with pytest.raises(NeurvolError):
        series[key]


def test_save_open_roundtrip(series, tmp_path):
    path = tmp_path / "s.nvol"
    series.save(path)
    with neurvol.open(path) as back:
        assert isinstance(back, NeuralSeries)
        assert back.to_bytes() == path.read_bytes() == series.to_bytes()
        np.testing.assert_array_equal(back[4], series[4])
        assert NvolReader(str(path)).version == (1, 3)


def test_one_step_decodes_only_its_group_up_to_it(series):
    reader = NvolReader(series.to_bytes())
    nv = NeuralSeries(reader)
    assert nv.stats == {"members_decoded": 0, "bricks_read": 0, "bytes_read": 0}
    nv[2]            # group [0, 3): key 0, deltas 1 and 2
    assert nv.stats["members_decoded"] == 3
    assert nv.stats["bytes_read"] == sum(reader.brick_length(b) for b in range(3))
    nv[2]
    assert nv.stats["members_decoded"] == 3     # kept
    nv[3]            # the key of the next group: one member more
    assert nv.stats["members_decoded"] == 4
    assert nv.stats["bytes_read"] < nv.nbytes_file


def test_list_memmap_and_h5py_inputs(data, tmp_path):
    np.save(tmp_path / "a.npy", data)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["v"] = data[:3]
    kw = dict(ratio=RATIO, steps=FIT_STEPS, group=2, seed=0, quiet=True, arch="fvsrn")
    from_list = neurvol.encode([data[0], data[1], data[2]], **kw)
    from_memmaps = neurvol.encode([mm[0], mm[1], mm[2]], **kw)
    with h5py.File(tmp_path / "a.h5") as f:
        from_h5 = neurvol.encode(f["v"], **kw)
    assert from_list.to_bytes() == from_memmaps.to_bytes() == from_h5.to_bytes()
    assert from_list.shape == (3, 16, 16, 16)


def test_constant_series_is_exact():
    vol = np.full((3, 14, 15, 16), 42, dtype=np.int16)
    nv = neurvol.encode(vol, ratio=4, quiet=True)
    np.testing.assert_array_equal(nv.decode(), vol)
    assert nv.decode().dtype == np.int16


# ---------------------------------------------------------------------- variables
def test_variables(multi, data):
    assert multi.variables == ["density", "velocity_x"]
    d, v = multi["density"], multi["velocity_x"]
    assert d.shape == v.shape == data.shape
    assert d.dtype == np.uint8 and v.dtype == np.float32
    assert d.decode().dtype == np.uint8
    assert v.units == "m/s" and v.attrs == {"axis": "x", "scale": 2} and d.units is None
    assert v.value_range == (float(data.min()), float(data.max()))
    np.testing.assert_array_equal(v[1], v.decode()[1])
    assert multi.nbytes_file <= (data.nbytes + data.size) / 3
    # each variable is its own volume: velocity_x is the series reversed in time
    assert neurvol.metrics.psnr(data[4], v[0]) > 15
    assert isinstance(v.step(2), NeuralVolume) and v.step(2).shape == (16, 16, 16)


def test_a_variable_must_be_named(multi):
    with pytest.raises(NeurvolInputError, match="pick one"):
        multi.query([[1.0, 1.0, 1.0]], t=0)
    with pytest.raises(NeurvolInputError, match="no variable"):
        multi["pressure"]


def test_bad_series_inputs_are_refused(data):
    kw = dict(ratio=RATIO, steps=5, quiet=True, arch="fvsrn")
    with pytest.raises(NeurvolInputError, match="share the time and grid"):
        neurvol.encode({"a": data, "b": data[:3]}, **kw)
    with pytest.raises(NeurvolInputError, match="one shape"):
        neurvol.encode([data[0], data[1][:8]], **kw)
    with pytest.raises(NeurvolInputError, match="time must be"):
        neurvol.encode(data, time=[0, 1], **kw)
    with pytest.raises(NeurvolInputError, match="time must be"):
        neurvol.encode(data, time=[0, 1, 1, 2, 3], **kw)
    with pytest.raises(NeurvolInputError, match="do not apply"):
        neurvol.encode(data, psnr=30, **kw)
    with pytest.raises(NeurvolInputError, match="time series"):
        neurvol.encode(data[0], group=2, **kw)
    with pytest.raises(NeurvolInputError, match="infinities"):
        bad = data.copy()
        bad[2, 1, 1, 1] = np.inf
        neurvol.encode(bad, **kw)
    with pytest.raises(NeurvolInputError, match="every voxel"):
        bad = data.copy()
        bad[2] = np.nan
        neurvol.encode(bad, **kw)
    with pytest.raises(NeurvolInputError, match="fill_value names unknown"):
        neurvol.encode({"a": data}, fill_value={"b": 1.0}, **kw)
    with pytest.raises(NeurvolInputError, match="attrs must hold JSON"):
        neurvol.encode(data, attrs={"x": object()}, **kw)
    with pytest.raises(NeurvolInputError, match="at most"):
        neurvol.encode(data, attrs={"x": "a" * 70000}, **kw)
    with pytest.raises(NeurvolInputError, match="metadata"):
        neurvol.encode({"a": data}, metadata={"b": {"units": "m"}}, **kw)


# ---------------------------------------------------------------------- masked members
def _masked_data(data):
    """``data`` with NaN in its first 3 slices at every step (one mask for all steps) and
    a corner of its own at step 3 (a delta member with a mask of its own)."""
    m = data.copy()
    m[:, :3] = np.nan
    m[3, 10:, 12:, :6] = np.nan
    return m


@pytest.fixture(scope="module")
def masked(data):
    return neurvol.encode(_masked_data(data), ratio=RATIO, steps=FIT_STEPS, group=3, seed=0,
                          quiet=True, arch="fvsrn")


def test_masked_series_restore_nan_exactly(masked, data):
    m = _masked_data(data)
    assert masked.nbytes_file <= data.nbytes / RATIO
    full = masked.decode()
    assert np.array_equal(np.isnan(full), np.isnan(m))
    assert math.isnan(masked["data"].fill_value)
    for k in range(5):      # keys (0, 3) and deltas alike; step 3's own corner included
        assert np.array_equal(np.isnan(masked[k]), np.isnan(m[k]))
        np.testing.assert_array_equal(masked[k], full[k])
    # the fit saw valid voxels only: they are as close as an unmasked series' steps
    valid = ~np.isnan(m)
    err = np.abs(full[valid] - data[valid]).max()
    assert err < 0.2 * float(np.nanmax(m) - np.nanmin(m))
    assert all(p is not None and p > 20 for p in masked.info()["variables"][0]["psnr"])
    # queries at voxel centres equal the decode, NaN in masked cells; between steps NaN
    # where either step is masked
    pts = np.array([[1.0, 2.0, 3.0], [12.0, 13.0, 2.0], [8.0, 8.0, 8.0], [3.0, 5.0, 5.0]])
    for k in (2, 3):
        q = masked.query(pts, t=k)
        ref = full[k][tuple(pts.astype(int).T)]
        np.testing.assert_allclose(q, ref, rtol=0, atol=1e-4)
        assert np.array_equal(np.isnan(q), np.isnan(ref))
    mid = masked.query(pts, t=2.5)
    assert np.isnan(mid[:2]).all() and np.isfinite(mid[2:]).all()
    # between centres: the nearest voxel's mask (z = 2.4 lies in masked slice 2's cell)
    edge = masked.query(np.array([[2.4, 5.0, 5.0], [2.6, 5.0, 5.0]]), t=1)
    assert np.isnan(edge[0]) and np.isfinite(edge[1])


def test_equal_masks_are_stored_once(masked, data):
    """Steps with equal masks share one section: two distinct masks, not five."""
    reader = NvolReader(masked.to_bytes())
    extra = [n for n in reader.section_names if n not in ("brick_index", "bricks")]
    entry = reader.header["series"]["variables"][0]["mask"]
    assert entry["fill"] is None and len(extra) == 2
    names = [e["section"] for e in entry["steps"]]
    assert names[0] == names[1] == names[2] == names[4] != names[3]
    assert entry["steps"][0]["masked"] == 3 * 16 * 16
    # each mask is far smaller than its packed bits
    assert all(len(reader.read_section(n)) < 16 ** 3 // 8 // 4 for n in extra)
    # one step reads its own mask only
    nv = NeuralSeries(NvolReader(masked.to_bytes()))
    nv[1]
    assert nv.stats["bytes_read"] < nv.nbytes_file // 2


def test_fill_value_series_and_unmasked_variables(data):
    counts = (data - data.min()).astype(np.uint16) + 1
    counts[1:, :, :2] = 0            # steps 1.. share a fill region; step 0 has none
    nv = neurvol.encode({"counts": counts, "clean": data}, ratio=6, steps=FIT_STEPS, group=2,
                        seed=0, quiet=True, arch="fvsrn", fill_value={"counts": 0},
                        attrs={"title": "t", "n": 2}, time_attrs={"units": "s"})
    back = NeuralSeries(NvolReader(nv.to_bytes()))
    got = back["counts"].decode()
    assert got.dtype == np.uint16 and np.array_equal(got == 0, counts == 0)
    assert back["counts"].fill_value == 0.0 and back["clean"].fill_value is None
    assert back["counts"].value_range[0] >= 1          # range of the valid voxels
    assert not np.isnan(back["clean"].decode()).any()
    assert back.attrs == {"title": "t", "n": 2} and back.time_attrs == {"units": "s"}
    assert np.isnan(back["counts"].query(np.array([[4.0, 1.0, 4.0]]), t=2)).all()
    assert not np.isnan(back["counts"].query(np.array([[4.0, 1.0, 4.0]]), t=0)).any()


def _mask_edit(fn):
    def edit(h):
        fn(h["series"]["variables"][0]["mask"])
    return edit


MASK_HOSTILE = {
    "mask not object": lambda h: h["series"]["variables"][0].update(mask=5),
    "steps not list": _mask_edit(lambda m: m.update(steps=7)),
    "fill nan string": _mask_edit(lambda m: m.update(fill="nan")),
    "fill bool": _mask_edit(lambda m: m.update(fill=True)),
    "steps short": _mask_edit(lambda m: m.update(steps=m["steps"][:2])),
    "steps all null": _mask_edit(lambda m: m.update(steps=[None] * 5)),
    "entry not object": _mask_edit(lambda m: m["steps"].__setitem__(0, 3)),
    "masked zero": _mask_edit(lambda m: m["steps"][0].update(masked=0)),
    "masked all": _mask_edit(lambda m: m["steps"][0].update(masked=16 ** 3)),
    "masked float": _mask_edit(lambda m: m["steps"][0].update(masked=768.0)),
    "masked bool": _mask_edit(lambda m: m["steps"][0].update(masked=True)),
    "section missing": _mask_edit(lambda m: m["steps"][0].update(section="mask.9.9")),
    "section bricks": _mask_edit(lambda m: m["steps"][0].update(section="bricks")),
    "section long": _mask_edit(lambda m: m["steps"][0].update(section="m" * 65)),
    "section counts disagree": _mask_edit(lambda m: m["steps"][1].update(masked=767)),
    "attrs not object": lambda h: h["series"].update(attrs=[1]),
    "time_attrs not object": lambda h: h["series"].update(time_attrs="s"),
}


@pytest.mark.parametrize("case", sorted(MASK_HOSTILE))
def test_hostile_mask_headers_are_refused(masked, case):
    data = _rewrite(masked, MASK_HOSTILE[case])
    with pytest.raises(NeurvolFormatError):
        NeuralSeries(NvolReader(data))


def test_mask_count_and_section_damage_are_refused(masked):
    # a count that differs from the section's (same for every step naming it)
    def recount(h):
        for e in h["series"]["variables"][0]["mask"]["steps"]:
            if e is not None and e["section"] == "mask.0.0":
                e["masked"] = 700
    nv = NeuralSeries(NvolReader(_rewrite(masked, recount)))
    with pytest.raises(NeurvolFormatError, match="masks"):
        nv[0]
    # a mask section that does not decode
    nv = NeuralSeries(NvolReader(_rewrite(
        masked, sections=lambda s: dict(s, **{"mask.0.0": b"\x09junk"}))))
    with pytest.raises(NeurvolFormatError):
        nv[0]
    # an integer variable cannot hold NaN
    def nan_fill_int(h):
        h["series"]["variables"][0]["dtype"] = "<u2"
    with pytest.raises(NeurvolFormatError, match="NaN"):
        NeuralSeries(NvolReader(_rewrite(masked, nan_fill_int)))


# ---------------------------------------------------------------------- hostile files
_set = F.set_at


HOSTILE = {
    "version": _set(["series", "version"], 3),
    "steps huge": _set(["series", "steps"], 10 ** 12),
    "steps str": _set(["series", "steps"], "5"),
    "shape": _set(["series", "shape"], [16, 16]),
    "shape huge": _set(["series", "shape"], [2 ** 31, 2 ** 31, 2]),
    "time short": _set(["series", "time"], [0.0, 1.0]),
    "time decreasing": _set(["series", "time"], [0.0, 2.0, 1.0, 3.0, 4.0]),
    "no variables": _set(["series", "variables"], []),
    "variable not object": _set(["series", "variables"], [7]),
    "dtype": lambda h: h["series"]["variables"][0].update(dtype="object"),
    "range": lambda h: h["series"]["variables"][0].update(min=5.0, max=-5.0),
    "range inf": lambda h: h["series"]["variables"][0].update(max=1e300),
    "psnr length": lambda h: h["series"]["variables"][0].update(psnr=[1.0]),
    "groups gap": lambda h: h["series"]["variables"][0]["groups"][1].update(start=4),
    "groups short": lambda h: h["series"]["variables"][0].update(
        groups=h["series"]["variables"][0]["groups"][:1]),
    "group model junk": lambda h: h["series"]["variables"][0]["groups"][0].update(
        model={"arch": "nope", "config": {}}),
    "group model huge": lambda h: h["series"]["variables"][0]["groups"][0]["model"][
        "config"].update(grid=[4096, 4096, 4096]),
    "group codec missing": lambda h: h["series"]["variables"][0]["groups"][0].update(codec=None),
    "name duplicate": lambda h: h["series"]["variables"].append(
        dict(h["series"]["variables"][0])),
    "no series object": _set(["series"], [1, 2]),
    "also a volume": _set(["volume"], {"shape": [16, 16, 16], "dtype": "<f4", "min": 0,
                                       "max": 1}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_series_headers_are_refused(series, case):
    data = _rewrite(series, HOSTILE[case])
    with pytest.raises(NeurvolFormatError):
        nv = NeuralSeries(NvolReader(data))
        nv.decode()


def test_grid_must_hold_one_member_per_step(series):
    data = _rewrite(series, _set(["bricks", "grid"], [1, 1, 4]), bricks=lambda p: p[:4])
    with pytest.raises(NeurvolFormatError, match="brick grid"):
        NeuralSeries(NvolReader(data))


def _corrupt(member, fn):
    def bricks(payloads):
        payloads = list(payloads)
        payloads[member] = fn(payloads[member])
        return payloads
    return bricks


@pytest.mark.parametrize("fn", [
    lambda p: p[:-3],                                   # truncated
    lambda p: bytes([0x07]) + p[1:],                    # unknown kind
    lambda p: p[:1] + bytes([9]) + p[2:],               # unknown tensor flag
    lambda p: p + b"\x00",                              # trailing bytes
    lambda p: p[:2] + np.float32(np.nan).tobytes() + p[6:],    # a NaN step
    lambda p: bytes([0x00]) + np.float64(1.0).tobytes(),       # a constant in a model group
], ids=["truncated", "kind", "flag", "trailing", "nan-step", "constant"])
def test_damaged_delta_payloads_are_refused(series, fn):
    data = _rewrite(series, bricks=_corrupt(1, fn))
    nv = NeuralSeries(NvolReader(data))
    nv[0]
    with pytest.raises(NeurvolFormatError):
        nv[1]


def test_key_holding_a_delta_is_refused(series):
    data = _rewrite(series, bricks=_corrupt(0, lambda p: bytes([KIND_DELTA]) + p[1:]))
    with pytest.raises(NeurvolFormatError):
        NeuralSeries(NvolReader(data))[0]


def test_a_single_volume_reader_refuses_a_series_file(series):
    with pytest.raises(NeurvolFormatError):
        NeuralVolume(NvolReader(series.to_bytes()))


# ---------------------------------------------------------------------- delta codec
def test_delta_codec_roundtrip_and_closed_loop():
    rng = np.random.default_rng(1)
    specs = [("g", (2, 3, 4, 5)), ("w", (7,))]
    prev = {"g": rng.normal(size=(2, 3, 4, 5)).astype(np.float32),
            "w": rng.normal(size=7).astype(np.float32)}
    new = {"g": prev["g"] + rng.normal(scale=0.01, size=(2, 3, 4, 5)).astype(np.float32),
           "w": prev["w"] + 1.0}
    payload, decoded = encode_delta(prev, new, specs, {"g": 0.004, "w": None})
    assert payload[0] == KIND_DELTA
    back = decode_delta(payload, prev, specs)
    for name in ("g", "w"):
        np.testing.assert_array_equal(back[name], decoded[name])
    assert np.abs(back["g"] - new["g"]).max() <= 0.002 + 1e-6
    np.testing.assert_array_equal(back["w"], prev["w"])      # not coded: unchanged
    with pytest.raises(NeurvolFormatError):
        decode_delta(payload, {"g": prev["g"][:1], "w": prev["w"]}, specs)


def test_a_delta_the_reader_would_refuse_is_never_written(data, monkeypatch, tmp_path):
    """Where the reader refuses the default coders' delta, the encoder codes it without
    rANS, and where it refuses every choice, the step keeps its predecessor's weights:
    either way the file reads back."""
    from neurvol.encoding import series as series_encoder
    real = series_encoder.decode_delta
    seen = []

    def refuse(refused):
        def check(payload, prev, specs):
            seen.append(len(seen))
            if len(seen) in refused:
                raise NeurvolFormatError("refused by the test")
            return real(payload, prev, specs)
        return check

    monkeypatch.setattr(series_encoder, "decode_delta", refuse({1}))
    nv = neurvol.encode(data[:2], ratio=RATIO, steps=FIT_STEPS, group=2, seed=0, quiet=True,
                        arch="fvsrn")
    assert len(seen) == 2        # the default coders refused, the zstd fallback accepted
    nv.save(tmp_path / "fallback.nvol")
    with neurvol.open(tmp_path / "fallback.nvol") as read:
        np.testing.assert_array_equal(read.decode(), nv.decode())
    assert np.isfinite(nv.info()["variables"][0]["psnr"][1])

    seen.clear()
    monkeypatch.setattr(series_encoder, "decode_delta", refuse({1, 2}))
    kept = neurvol.encode(data[:2], ratio=RATIO, steps=FIT_STEPS, group=2, seed=0,
                          quiet=True, arch="fvsrn")
    kept.save(tmp_path / "kept.nvol")
    with neurvol.open(tmp_path / "kept.nvol") as read:
        back = read.decode()
    np.testing.assert_array_equal(back[1], back[0])   # the predecessor's weights, unchanged


def test_a_jump_in_time_starts_a_new_group(data):
    """Where a step is far from the one before (another run), it becomes a key."""
    jumpy = np.concatenate([data[:3], data[:3, ::-1, ::-1] * 3.0])
    nv = neurvol.encode(jumpy, ratio=RATIO, steps=FIT_STEPS, group=8, seed=0, quiet=True,
                        arch="fvsrn")
    assert nv.info()["variables"][0]["groups"] == [[0, 3], [3, 6]]


def test_xarray_backend_exposes_variables_and_time(multi, series):
    xr = pytest.importorskip("xarray")
    from neurvol.integrations.xarray_backend import NeurvolBackendEntrypoint

    ds = xr.open_dataset(multi.to_bytes(), engine=NeurvolBackendEntrypoint)
    assert set(ds.data_vars) == {"density", "velocity_x"}
    assert ds["velocity_x"].dims == ("time", "z", "y", "x")
    assert ds["velocity_x"].attrs["units"] == "m/s" and ds["velocity_x"].attrs["axis"] == "x"
    assert ds["density"].dtype == np.uint8
    np.testing.assert_array_equal(ds["velocity_x"].isel(time=2, z=slice(3, 6)).values,
                                  multi["velocity_x"][2, 3:6])
    ds2 = xr.open_dataset(series, engine=NeurvolBackendEntrypoint)
    np.testing.assert_array_equal(ds2["time"].values, [0.0, 1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(ds2["data"].sel(time=3.0).values, series[3])


def test_docs_timeseries_example_runs(tmp_path, monkeypatch, capsys):
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "timeseries.md").read_text()
    code = re.search(r"## Example.*?```python\n(.*?)```", text, flags=re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/timeseries.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(6, 24, 24, 24) ['density', 'speed']" in out
    assert "'members_decoded': 5" in out and "m/s {'solver': 'demo'}" in out
    code = re.search(r"## Example: a smooth run.*?```python\n(.*?)```", text, flags=re.S).group(1)
    exec(compile(code, "docs/timeseries.md", "exec"), {})
    out = capsys.readouterr().out
    assert "correction group" in out and out.count(" True") == 2, out


# ---------------------------------------------------------------------- command line
def test_cli_pack_unpack_step_query_info(data, tmp_path, capsys):
    from neurvol.cli import main

    np.save(tmp_path / "run.npy", data)
    out = tmp_path / "run.nvol"
    assert main(["pack", str(tmp_path / "run.npy"), "-o", str(out), "--ratio", "8", "--steps",
                 "30", "--seed", "0", "--arch", "fvsrn", "--group", "3", "--device", "cpu"]) == 0
    assert "5 steps" in capsys.readouterr().out
    nv = neurvol.open(out)
    assert isinstance(nv, NeuralSeries) and nv.shape == data.shape
    assert main(["unpack", str(out), "-o", str(tmp_path / "s4.npy"), "--step", "4"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "s4.npy"), nv[4])
    assert main(["unpack", str(out), "-o", str(tmp_path / "all.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "all.npy"), nv.decode())
    assert main(["unpack", str(out), "-o", str(tmp_path / "all.nii")]) == 1   # needs --step
    np.save(tmp_path / "pts.npy", np.array([[3.0, 4.0, 5.0]]))
    capsys.readouterr()
    assert main(["query", str(out), "--points", str(tmp_path / "pts.npy"), "--t", "2.5"]) == 0
    got = float(capsys.readouterr().out.split()[0])
    assert got == pytest.approx(float(nv.query([[3.0, 4.0, 5.0]], t=2.5)[0]), rel=1e-5, abs=1e-5)
    assert main(["info", str(out)]) == 0
    assert "steps: 5" in capsys.readouterr().out


def test_cli_pack_masked_npy_series(data, tmp_path):
    """``pack --fill-value`` of a [t, z, y, x] .npy: voxels holding it are masked at every
    step and come back exactly; NaN voxels are masked without it."""
    from neurvol.cli import main

    run = data.copy()
    run[:, :, :, :2] = -1.0
    run[2, 5, 5, 5] = -1.0
    np.save(tmp_path / "run.npy", run)
    out = tmp_path / "run.nvol"
    assert main(["pack", str(tmp_path / "run.npy"), "-o", str(out), "--ratio", "8", "--steps",
                 "30", "--arch", "fvsrn", "--group", "3", "--device", "cpu", "-q",
                 "--fill-value", "-1"]) == 0
    with neurvol.open(out) as nv:
        assert nv["data"].fill_value == -1.0
        assert np.array_equal(nv.decode() == -1.0, run == -1.0)
    run[run == -1.0] = np.nan
    np.save(tmp_path / "nan.npy", run)
    out = tmp_path / "nan.nvol"
    assert main(["pack", str(tmp_path / "nan.npy"), "-o", str(out), "--ratio", "8", "--steps",
                 "30", "--arch", "fvsrn", "--group", "3", "--device", "cpu", "-q"]) == 0
    with neurvol.open(out) as nv:
        assert np.array_equal(np.isnan(nv.decode()), np.isnan(run))


def test_cli_netcdf_time_series_roundtrip(data, tmp_path, capsys):
    """A NetCDF-4 file of two (time, z, y, x) variables packs into one .nvol and unpacks
    to NetCDF with names, units, attributes, fill values and the time axis."""
    pytest.importorskip("h5py")
    from neurvol import io as nvio
    from neurvol.cli import main

    src = tmp_path / "sim.nc"
    coords = {"time": nvio.DatasetVariable("time", np.array([10.0, 10.5, 11.0, 12.0, 13.0]),
                                           ("time",), {"units": "s"}),
              "z": nvio.DatasetVariable("z", np.arange(16) * 0.5, ("z",)),
              "y": nvio.DatasetVariable("y", np.arange(16) * 0.5, ("y",)),
              "x": nvio.DatasetVariable("x", 2.0 + np.arange(16) * 0.5, ("x",))}
    dims = ("time", "z", "y", "x")
    variables = {
        "density": nvio.DatasetVariable("density", data, dims,
                                        {"units": "kg m-3", "long_name": "fluid density"},
                                        fill_value=-999.0),
        "tracer": nvio.DatasetVariable("tracer", (data[::-1] * 2).astype(np.float32), dims,
                                       {"units": "1", "scale": 2})}
    nvio.write_dataset(src, nvio.VolumeDataset(variables, coords))
    out = tmp_path / "sim.nvol"
    assert main(["pack", str(src), "-o", str(out), "--ratio", "8", "--steps", "30", "--seed",
                 "0", "--arch", "fvsrn", "--group", "3", "--device", "cpu", "-q"]) == 0
    nv = neurvol.open(out)
    assert nv.variables == ["density", "tracer"] and nv.time == (10.0, 10.5, 11.0, 12.0, 13.0)
    assert nv.layout.spacing == [0.5, 0.5, 0.5] and nv.layout.origin == [0.0, 0.0, 2.0]
    back = tmp_path / "back.nc"
    assert main(["unpack", str(out), "-o", str(back)]) == 0
    with nvio.read_dataset(back, lazy=False) as ds:
        assert list(ds.variables) == ["density", "tracer"]
        d, tr = ds.variables["density"], ds.variables["tracer"]
        assert d.dims == dims and d.units == "kg m-3" and d.attrs["long_name"] == "fluid density"
        assert d.fill_value == -999.0 and tr.attrs["scale"] == 2 and tr.units == "1"
        np.testing.assert_array_equal(ds.time.values(), [10.0, 10.5, 11.0, 12.0, 13.0])
        np.testing.assert_array_equal(ds.coords["x"].values(), 2.0 + np.arange(16) * 0.5)
        np.testing.assert_array_equal(d.values(), nv["density"].decode())
    assert main(["unpack", str(out), "-o", str(tmp_path / "t2.nc"), "--step", "2",
                 "--variable", "tracer"]) == 0
    np.testing.assert_array_equal(nvio.load_volume(tmp_path / "t2.nc").data[...],
                                  nv["tracer"][2])


def test_netcdf_with_fill_regions_round_trips_with_metadata(data, tmp_path):
    """Issue 25's acceptance: a multi-variable time-series NetCDF packs and unpacks with
    names, units, variable and global attributes, fill values and coordinates intact; the
    fill region exact, the data as the file decodes it, at the PSNR it reports."""
    from neurvol import io as nvio
    from neurvol.cli import main
    from neurvol.metrics import psnr

    times = np.array([10.0, 10.5, 11.0, 12.0, 13.0])
    coords = {"time": nvio.DatasetVariable("time", times, ("time",),
                                           {"units": "hours since 2005-09-01", "calendar":
                                            "standard"}),
              "z": nvio.DatasetVariable("z", np.arange(16) * 0.5, ("z",)),
              "y": nvio.DatasetVariable("y", np.arange(16) * 0.5, ("y",)),
              "x": nvio.DatasetVariable("x", 2.0 + np.arange(16) * 0.5, ("x",))}
    dims = ("time", "z", "y", "x")
    land = data.copy()
    land[:, :, :3, :] = -999.0                  # "land", the same at every step
    land[4, 12:, 10:, 10:] = -999.0             # and a region of the last step's own
    tracer = (data[::-1] * 2).astype(np.float32)
    variables = {
        "density": nvio.DatasetVariable("density", land, dims,
                                        {"units": "kg m-3", "long_name": "fluid density",
                                         "valid_range": [-20.0, 70.0]}, fill_value=-999.0),
        "tracer": nvio.DatasetVariable("tracer", tracer, dims, {"units": "1", "scale": 2})}
    global_attrs = {"title": "two variables, five steps", "history": "made by a test",
                    "version": 3}
    src = tmp_path / "sim.nc"
    nvio.write_dataset(src, nvio.VolumeDataset(variables, coords, global_attrs))
    out = tmp_path / "sim.nvol"
    assert main(["pack", str(src), "-o", str(out), "--ratio", "8", "--steps", "30", "--seed",
                 "0", "--arch", "fvsrn", "--group", "3", "--device", "cpu", "-q"]) == 0
    nv = neurvol.open(out)
    assert nv["density"].fill_value == -999.0 and nv["tracer"].fill_value is None
    back = tmp_path / "back.nc"
    assert main(["unpack", str(out), "-o", str(back)]) == 0
    with nvio.read_dataset(src, lazy=False) as a, nvio.read_dataset(back, lazy=False) as b:
        assert list(b.variables) == list(a.variables) == ["density", "tracer"]
        assert b.attrs == a.attrs == global_attrs
        assert sorted(b.coords) == sorted(a.coords)
        for name in a.coords:
            np.testing.assert_array_equal(b.coords[name].values(), a.coords[name].values())
        assert b.time.attrs == a.time.attrs
        assert b.time.attrs["units"] == "hours since 2005-09-01"
        for name in a.variables:
            va, vb = a.variables[name], b.variables[name]
            assert vb.dims == va.dims and vb.units == va.units and vb.dtype == va.dtype
            assert vb.attrs == va.attrs and vb.fill_value == va.fill_value
            got, orig = vb.values(), va.values()
            np.testing.assert_array_equal(got, nv[name].decode())
            fill = orig == -999.0 if va.fill_value is not None else np.zeros(orig.shape, bool)
            assert np.array_equal(got == -999.0, fill)          # the region, exactly
            for k in range(orig.shape[0]):
                reported = nv[name].fit_psnr[k]
                assert abs(psnr(orig[k], got[k], ~fill[k]) - reported) < 0.01
                assert reported > 20
    # "file.nc:var" packs that one variable, its fill region and attributes included
    one = tmp_path / "one.nvol"
    assert main(["pack", f"{src}:density", "-o", str(one), "--ratio", "8", "--steps", "30",
                 "--arch", "fvsrn", "--group", "3", "--device", "cpu", "-q"]) == 0
    with neurvol.open(one) as nv1:
        assert nv1.variables == ["density"] and nv1.attrs == global_attrs
        assert nv1.time == tuple(times) and nv1["density"].units == "kg m-3"
        assert np.array_equal(nv1["density"][4] == -999.0, land[4] == -999.0)


def test_golden_series_reads_alike_with_numpy_and_torch():
    """The torch-free reader decodes a series as the torch one does (spec/series.md: each
    member is a single-model evaluation)."""
    import os

    path = os.path.join(os.path.dirname(__file__), "golden", "series_v1.3.nvol")
    expected = np.load(path.replace(".nvol", ".expected.npy"))
    with neurvol.open(path, backend="numpy") as nv:
        pts = np.array([[1.0, 2.0, 3.0], [10.5, 4.25, 19.0]])
        for i, name in enumerate(nv.variables):
            span = float(expected[i].max() - expected[i].min()) or 1.0
            np.testing.assert_allclose(nv[name].decode(dtype=np.float32), expected[i],
                                       rtol=0, atol=2e-5 * span)
            with neurvol.open(path, backend="torch") as ref:
                np.testing.assert_allclose(nv[name].query(pts, t=1.5),
                                           ref[name].query(pts, t=1.5), rtol=0, atol=2e-5 * span)
        assert nv["density"].step(0).backend == "numpy"


def test_xarray_backend_shows_global_attributes_and_masks():
    """The xarray backend gives a masked series' global and time attributes, and NaN
    where a member is masked."""
    import os

    xr = pytest.importorskip("xarray")
    path = os.path.join(os.path.dirname(__file__), "golden", "series_masked_v1.3.nvol")
    from neurvol.integrations.xarray_backend import NeurvolBackendEntrypoint

    with xr.open_dataset(path, engine=NeurvolBackendEntrypoint) as ds:
        assert ds.attrs["title"] == "masked golden" and ds.attrs["version"] == 3
        assert ds["time"].attrs["units"] == "s"
        density = ds["density"].isel(time=2).values
        assert np.isnan(density[:3]).all() and np.isnan(density[10:, 12:, 15:]).all()
        assert not np.isnan(density[3:10]).any()
