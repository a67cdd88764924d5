"""Level-wise bin widths of the correction stream (spec/correction.md §2.4, stream version 2):
narrower bins on coarse interpolation levels, chosen per volume, with the bound still held
on every voxel."""
from __future__ import annotations

import numpy as np
import pytest

from neurvol.compress import correction as C
from neurvol.compress.correction import layout as L
from neurvol.compress.correction.levels import (CANDIDATES, OBJECTIVE_QUALITY, OBJECTIVE_SIZE,
                                                choose_levels)
from neurvol.compress.correction.predict import level_ratio, level_step
from neurvol.errors import NeurvolFormatError
from test_spec_correction import spec_decode


def _field(shape, dtype, seed=3, noise=0.02):
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    f = np.sin(6 * x) * np.cos(5 * y) + 2 * z * x + rng.normal(0, noise, x.shape)
    if np.dtype(dtype).kind in "iu":
        f = np.rint((f - f.min()) / np.ptp(f) * 250)
    return f.astype(dtype)


def test_level_ratios_follow_alpha_capped_at_beta():
    assert [level_ratio(h, 1.5, 4.0) for h in (1, 2, 4, 8, 16, 32)] == [
        1.0, 1.5, 2.25, 3.375, 4.0, 4.0]
    assert all(level_ratio(h, 1.0, 1.0) == 1.0 for h in (1, 2, 64))
    assert level_step(3.0, 4, 2.0, 4.0) == 0.75


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32", "float64"])
@pytest.mark.parametrize("levels", [(1.5, 4.0), (2.0, 4.0), (16.0, 1024.0)])
def test_bound_holds_on_every_voxel_with_level_wise_bins(dtype, levels):
    vol = _field((19, 23, 17), dtype)
    e = 0.02 * float(np.ptp(vol.astype(np.float64)))
    data, _ = C.encode_correction(vol, e, block=8, levels=levels)
    stream = C.CorrectionStream(data, vol.shape, vol.dtype)
    assert stream.levels == levels
    got = stream.decode()
    assert np.abs(got.astype(np.float64) - vol.astype(np.float64)).max() <= e
    np.testing.assert_array_equal(got, spec_decode(data, vol.shape, vol.dtype, None))


def test_bound_holds_with_a_base_and_level_wise_bins():
    vol = _field((16, 16, 16), "float32")
    rng = np.random.default_rng(5)
    base = vol.astype(np.float64) + rng.normal(0, 0.05, vol.shape)
    e = 0.01
    data, _ = C.encode_correction(vol, e, base, block=8, base_tolerance=1e-6,
                                  levels=(1.5, 4.0))
    got = C.decode_correction(data, vol.shape, vol.dtype, base)
    assert np.abs(got.astype(np.float64) - vol.astype(np.float64)).max() <= e


def test_coarse_levels_are_coded_with_the_narrower_bins():
    """The anchor grid (every 8th voxel of a 16^3 block) is within half its level's bin:
    four times narrower than the finest with beta 4."""
    vol = _field((16, 16, 16), "float64", noise=0.3)
    e = 0.2
    eq = L.quantization_bound(e, vol.dtype, float(np.abs(vol).max()))
    data, _ = C.encode_correction(vol, e, block=16, levels=(2.0, 4.0))
    got = C.decode_correction(data, vol.shape, vol.dtype)
    coarse = np.abs(got - vol)[::8, ::8, ::8]
    assert coarse.max() <= eq / 4 * (1 + 1e-12)
    # ... while one bin width everywhere lets the same points drift further.
    flat, _ = C.encode_correction(vol, e, block=16, levels=L.NO_LEVELS)
    assert np.abs(C.decode_correction(flat, vol.shape, vol.dtype) - vol)[::8, ::8, ::8].max() \
        > eq / 4


def test_level_wise_bins_raise_quality_at_a_large_bound():
    """The reason they exist: at a bound of a fifth of the range a smooth field decodes
    closer to the original with narrower coarse bins."""
    vol = _field((32, 32, 32), "float64", noise=0.0)
    e = 0.2 * float(np.ptp(vol))

    def mse(levels):
        data, _ = C.encode_correction(vol, e, block=32, levels=levels)
        return float(np.mean((C.decode_correction(data, vol.shape, vol.dtype) - vol) ** 2))

    assert mse((1.5, 4.0)) < 0.8 * mse(L.NO_LEVELS)


def test_choice_picks_a_candidate_and_integers_below_one_bin_stay_flat():
    vol = _field((32, 32, 32), "float64", noise=0.0)
    step = 0.2 * float(np.ptp(vol))
    for objective in (OBJECTIVE_SIZE, OBJECTIVE_QUALITY):
        assert choose_levels(vol, step, objective, 16) in CANDIDATES
    assert choose_levels(vol, step, OBJECTIVE_QUALITY, 32) != L.NO_LEVELS
    assert choose_levels(np.rint(vol), 0.97, OBJECTIVE_SIZE, 16, integer=True) == L.NO_LEVELS
    with pytest.raises(ValueError, match="objective"):
        choose_levels(vol, step, "fast", 16)


@pytest.mark.parametrize("levels", [(0.5, 4.0), (2.0, 0.5), (float("nan"), 2.0), (1.1, 2.0),
                                    (17.0, 2.0)])
def test_levels_that_cannot_be_stored_are_refused(levels):
    vol = _field((8, 8, 8), "float32")
    with pytest.raises(ValueError, match="alpha, beta"):
        C.encode_correction(vol, 0.1, levels=levels)


def _head(**kw):
    args = dict(block=8, max_error=1.0, step=1.9, base_tolerance=0.0, levels=(1.5, 4.0),
                n_tables=1, raw_len=10, frame_len=10, index_len=None)
    args.update(kw)
    return L.pack_head(**args)


def test_stream_head_round_trips_and_is_short():
    head = _head()
    h = L.parse_head(head + b"rest", "t")
    assert (h.version, h.block, h.max_error, h.step, h.levels) == (2, 8, 1.0, 1.9, (1.5, 4.0))
    assert h.flags == L.FLAG_TABLES_RAW | L.FLAG_INDEX_RAW | L.FLAG_LEVELS
    assert h.pos == len(head) and len(head) == 20 + 8 + 2
    flat = L.parse_head(_head(levels=L.NO_LEVELS, base_tolerance=1e-3, frame_len=7,
                              index_len=5), "t")
    assert flat.levels == L.NO_LEVELS and flat.base_tolerance == 1e-3
    assert (flat.frame_len, flat.index_len) == (7, 5)


@pytest.mark.parametrize("edit,message", [
    (lambda b: b[:1] + bytes([0x80 | b[1]]) + b[2:], "unknown stream flags"),
    (lambda b: bytes([3]) + b[1:], "version 3"),
    (lambda b: b[:20] + np.float32(0.5).tobytes() + b[24:], "level-wise"),
    (lambda b: b[:20] + np.float32(1.0).tobytes() + np.float32(1.0).tobytes() + b[28:],
     "level-wise"),
    (lambda b: b[:22], "truncated"),
])
def test_damaged_stream_heads_are_format_errors(edit, message):
    with pytest.raises(NeurvolFormatError, match=message):
        L.parse_head(edit(_head()), "t")


def test_version_1_streams_still_decode():
    """Stream version 1 (the 1.2 golden files) has one bin width and the fixed head."""
    import os
    import neurvol
    path = os.path.join(os.path.dirname(__file__), "golden", "bounded_pure_v1.2.nvol")
    with neurvol.open(path) as nv:
        stream = nv._correction_stream().stream
        assert stream.levels == L.NO_LEVELS
        assert nv._reader.read_section("correction")[0] == 1


def test_tiny_streams_may_share_tables_between_classes():
    """At a bound of half the range a small field's stream is a few dozen bytes, where
    coarser table maps cost less than the per-class tables; it decodes as the spec says."""
    vol = _field((13, 31, 29), "float32", noise=0.0)
    e = 0.5 * float(np.ptp(vol))
    data, _ = C.encode_correction(vol, e, levels=L.NO_LEVELS)
    stream = C.CorrectionStream(data, vol.shape, vol.dtype)
    assert stream.table_map != L.MAP_CLASSES
    assert (data[1] & L.FLAG_TABLE_MAP) >> L.TABLE_MAP_SHIFT == stream.table_map
    got = stream.decode()
    assert np.abs(got.astype(np.float64) - vol.astype(np.float64)).max() <= e
    np.testing.assert_array_equal(got, spec_decode(data, vol.shape, vol.dtype, None))


@pytest.mark.parametrize("table_map", L.TABLE_MAPS)
def test_every_table_map_decodes(table_map):
    from neurvol.compress.correction import encode as E
    vol = _field((12, 10, 9), "int16")
    orig = E._serialize

    def forced(*args, **kw):
        order = args[9] if len(args) > 9 else kw.get("order", 0)
        return orig(*args[:8], table_map, order)
    E._serialize = forced
    try:
        data, _ = C.encode_correction(vol, 3.0, block=8, levels=(1.5, 4.0))
    finally:
        E._serialize = orig
    stream = C.CorrectionStream(data, vol.shape, vol.dtype)
    assert stream.table_map == table_map
    got = stream.decode()
    assert np.abs(got.astype(np.float64) - vol.astype(np.float64)).max() <= 3.0
    np.testing.assert_array_equal(got, spec_decode(data, vol.shape, vol.dtype, None))
    assert all(L.table_of(k, table_map) == k for k in stream._tables)


def test_table_maps_group_classes():
    assert [L.table_of(c, L.MAP_NO_ROUGHNESS) for c in (0, 3, 5, 27, 36)] == [0, 0, 4, 24, 36]
    assert [L.table_of(c, L.MAP_LEVELS) for c in (0, 11, 12, 24, 35, 36)] == [0, 0, 12, 24, 24, 36]
    assert {L.table_of(c, L.MAP_ONE) for c in range(L.N_CLASSES)} == {0}


@pytest.mark.parametrize("half,expected", [(0.0, (0.0, 0.484375)), (0.6, (1.0, 0.6)),
                                           (1.4, (1.0, 1.4)), (1.6, (2.0, 1.6)),
                                           (3.0, (3.0, 3.0))])
def test_integer_bins_between_bounds_keep_the_lower_bound(half, expected):
    assert L.integer_bound(half) == expected


def test_integer_bins_narrower_than_the_bound_allows_hold_it():
    """A budget search codes integers with bins between two integer bounds' widths: the
    stream holds the lower bound, on every voxel."""
    vol = _field((20, 18, 22), "uint8")
    for half in (2.6, 2.9, 3.3):
        bound, bins = L.integer_bound(half)
        data, _ = C.encode_correction(vol, bound, bin_bound=bins, block=8)
        got = C.decode_correction(data, vol.shape, vol.dtype)
        assert np.abs(got.astype(np.float64) - vol.astype(np.float64)).max() <= bound
        assert C.CorrectionStream(data, vol.shape, vol.dtype).step == 2 * bins
    with pytest.raises(ValueError, match="bin_bound"):
        C.encode_correction(vol, 2.0, bin_bound=2.6)


def test_ratio_encodes_of_integer_volumes_use_their_budget():
    """The predictor candidate of a uint8 volume fills its budget (within the search's
    tolerance) instead of stopping at the largest integer bound that fits."""
    from neurvol.encoding.entry import _predictor
    import neurvol
    vol = np.ascontiguousarray(neurvol.sample_volume()[8:56, 8:56, 8:56])
    for ratio in (20.0, 60.0):
        cand = _predictor(vol, float(vol.min()), float(vol.max()), ratio, (1.0,) * 3, (0.0,) * 3)
        budget = vol.nbytes // ratio
        assert 0.9 * budget <= cand.volume.nbytes_file <= budget
        got = cand.volume.decode().astype(np.float64)
        assert np.abs(got - vol).max() <= cand.volume.max_error
        assert cand.volume.max_error == int(cand.volume.max_error)


@pytest.mark.parametrize("order", range(6))
def test_every_axis_order_holds_the_bound_and_decodes_as_the_spec_says(order):
    vol = _field((14, 11, 17), "float32")
    e = 0.03
    data, stats = C.encode_correction(vol, e, block=8, levels=(1.5, 4.0), order=order)
    stream = C.CorrectionStream(data, vol.shape, vol.dtype)
    assert stream.order == stats.order == order
    assert bool(data[1] & L.FLAG_ORDER) == (order != 0)
    got = stream.decode()
    assert np.abs(got.astype(np.float64) - vol.astype(np.float64)).max() <= e
    np.testing.assert_array_equal(got, spec_decode(data, vol.shape, vol.dtype, None))


def test_the_axis_order_is_chosen_by_cost():
    """A field smooth along z and rough across it: interpolating along z last (it predicts
    half of each level's points) codes smaller, and the encoder finds such an order."""
    from neurvol.compress.correction.levels import choose_order
    from neurvol.compress.correction.predict import AXIS_ORDERS
    rng = np.random.default_rng(2)
    z = np.linspace(0, 1, 32)[:, None, None]
    vol = np.sin(4 * z) + 0.3 * rng.standard_normal((1, 32, 32)).repeat(32, 0)
    sizes = [len(C.encode_correction(vol, 0.01, block=32, order=k, levels=L.NO_LEVELS)[0])
             for k in range(6)]
    chosen = choose_order(vol, 0.02, 32)
    assert AXIS_ORDERS[chosen][-1] == 0
    assert sizes[chosen] < sizes[0]
    with pytest.raises(ValueError, match="order"):
        C.encode_correction(vol, 0.01, order=6)


def test_damaged_axis_order_is_a_format_error():
    head = L.pack_head(8, 1.0, 1.9, 0.0, L.NO_LEVELS, 1, 10, 10, None, order=3)
    assert L.parse_head(head, "t").order == 3
    pos = L._HEAD2.size
    with pytest.raises(NeurvolFormatError, match="axis order"):
        L.parse_head(head[:pos] + bytes([7]) + head[pos + 1:], "t")
