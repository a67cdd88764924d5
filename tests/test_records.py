"""Codec version 2: Lorenzo and interpolation-coded grids, per-record streams (raw / zstd / rANS), masks, stats."""
import struct

import numpy as np
import pytest

from neurvol.compress import TensorPlan, decode_payload, encode_records, payload_stats
from neurvol.compress.lorenzo import lorenzo_reconstruct, lorenzo_residuals, unzigzag, zigzag
from neurvol.compress.interp import interp_decode, interp_encode
from neurvol.compress.records import decode_record, encode_record, grid_codes, vq_values
from neurvol.compress.vq import from_vectors, grid_vectors, vector_kmeans
from neurvol.compress.streams import (CODER_RANS, CODER_RAW, CODER_ZSTD, decode_stream,
                                      encode_stream)
from neurvol.errors import NeurvolFormatError


def _take(data: bytes):
    pos = [0]

    def take(n, what):
        if pos[0] + n > len(data):
            raise NeurvolFormatError(f"truncated {what}")
        out = data[pos[0]:pos[0] + n]
        pos[0] += n
        return out
    return take


def _smooth_grid(rng, shape=(2, 3, 9, 10, 11)):
    g = rng.normal(size=shape)
    for ax in (-3, -2, -1):
        g = np.cumsum(g, axis=ax) / 3
    return g.astype(np.float32)


def test_lorenzo_is_exact_and_invertible():
    rng = np.random.default_rng(0)
    q = rng.integers(-1000, 1000, size=(2, 5, 6, 7))
    r = lorenzo_residuals(q)
    np.testing.assert_array_equal(lorenzo_reconstruct(r), q)
    np.testing.assert_array_equal(unzigzag(zigzag(r)), r)
    np.testing.assert_array_equal(zigzag(np.array([0, -1, 1, -2, 2])), [0, 1, 2, 3, 4])
    # A linear ramp has all-zero residuals away from the first samples.
    ramp = np.add.outer(np.add.outer(np.arange(6), 2 * np.arange(7)), 3 * np.arange(8))
    assert np.count_nonzero(lorenzo_residuals(ramp)[1:, 1:, 1:]) == 0


@pytest.mark.parametrize("method", ["lorenzo", "interp"])
@pytest.mark.parametrize("step", [1e-3, 0.05, 0.7])
def test_grid_record_error_is_bounded_by_half_a_step(step, method):
    g = _smooth_grid(np.random.default_rng(1))
    rec = encode_record(g, method, step=step)
    out, st = decode_record(_take(rec), g.shape, "g")
    step32 = float(np.float32(step))
    assert np.abs(out - g).max() <= step32 / 2 * (1 + 1e-5) + 1e-6
    assert st.method == method and st.total == len(rec)
    np.testing.assert_array_equal(out, grid_codes(g, method, step32)[1])


@pytest.mark.parametrize("method", ["lorenzo", "interp"])
def test_coarser_steps_cost_fewer_bytes(method):
    g = _smooth_grid(np.random.default_rng(2))
    sizes = [len(encode_record(g, method, step=s)) for s in (0.001, 0.01, 0.1, 1.0)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > 2 * sizes[-1]


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 1), (3, 5, 7), (2, 2, 17, 9, 33), (16, 16, 16)])
def test_interp_covers_every_point_once_and_decodes_exactly(shape):
    x = np.random.default_rng(3).normal(size=shape)
    codes, rec = interp_encode(x, 0.1)
    assert codes.size == x.size
    assert np.abs(rec - x).max() <= 0.05 + 1e-12
    np.testing.assert_array_equal(interp_decode(codes, shape, 0.1), rec)
    with pytest.raises(ValueError):
        interp_decode(codes[1:], shape, 0.1)


@pytest.mark.parametrize("coder", [CODER_RAW, CODER_ZSTD, CODER_RANS])
def test_every_coder_round_trips(coder):
    pytest.importorskip("constriction") if coder == CODER_RANS else None
    rng = np.random.default_rng(3)
    sym = np.abs(np.round(rng.laplace(0, 4, size=5000))).astype(np.int64)
    data = encode_stream(sym, (coder,))
    assert data[0] == coder
    out, name = decode_stream(_take(data), sym.size, "s", max_symbol=int(sym.max()))
    np.testing.assert_array_equal(out, sym)


def test_rans_beats_zstd_on_iid_skewed_symbols():
    pytest.importorskip("constriction")
    rng = np.random.default_rng(4)
    sym = np.abs(np.round(rng.laplace(0, 3, size=100000))).astype(np.int64)
    assert len(encode_stream(sym, (CODER_RANS,))) < len(encode_stream(sym, (CODER_ZSTD,)))
    # ... and the automatic choice takes the smallest.
    assert len(encode_stream(sym)) == min(len(encode_stream(sym, (c,)))
                                          for c in (CODER_RAW, CODER_ZSTD, CODER_RANS))


def test_coder_slack_takes_zstd_within_the_slack_and_rans_beyond():
    """spec/payload.md §2.2.1: with a slack, the smallest fast coder (zstd) wins over a
    smaller rANS stream when it is at most that fraction larger; without, the smallest."""
    pytest.importorskip("constriction")
    rng = np.random.default_rng(4)
    sym = np.abs(np.round(rng.laplace(0, 3, size=100000))).astype(np.int64)
    rans = len(encode_stream(sym, (CODER_RANS,)))
    zstd = len(encode_stream(sym, (CODER_ZSTD,)))
    extra = (zstd - 6) / (rans - 6) - 1            # data bytes, without the stream head
    assert extra > 0
    assert encode_stream(sym)[0] == CODER_RANS
    assert encode_stream(sym, slack=extra / 2)[0] == CODER_RANS
    chosen = encode_stream(sym, slack=extra * 1.01)
    assert chosen == encode_stream(sym, (CODER_ZSTD,))
    out, name = decode_stream(_take(chosen), sym.size, "s")
    assert name == "zstd"
    np.testing.assert_array_equal(out, sym)
    # A fast coder that is smallest anyway needs no slack; raw counts as fast too.
    flat = np.arange(300) % 256
    assert encode_stream(flat, (CODER_RAW, CODER_RANS), slack=10.0)[0] == CODER_RAW
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="slack"):
            encode_stream(sym, slack=bad)


def test_grid_records_follow_the_coder_slack():
    """The pipeline's records pass CodecSettings.coder_slack to every stream."""
    pytest.importorskip("constriction")
    from neurvol.pipeline import DEFAULT_CODER_SLACK, CodecSettings, _RecordCache
    grid = np.random.default_rng(5).normal(size=(4, 1, 20, 20, 20)).astype(np.float32)
    plan = TensorPlan("interp", step=0.5)

    def grid_coder(slack):
        payload = _RecordCache({"g": grid}, ["g"], CodecSettings().coders, slack).payload({"g": plan})
        return payload_stats(payload, [("g", grid.shape)])[0].coder

    assert grid_coder(0.0) == "rans"
    assert grid_coder(DEFAULT_CODER_SLACK) == "zstd"
    assert CodecSettings().coder_slack == DEFAULT_CODER_SLACK > 0
    for bad in (-0.01, 2.0, float("nan"), True):
        with pytest.raises(ValueError, match="coder_slack"):
            CodecSettings(coder_slack=bad)


def test_masked_kmeans_keeps_zeros_exact_and_counts_mask_bytes():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(40, 30)).astype(np.float32)
    w[np.abs(w) < 0.7] = 0.0
    rec = encode_record(w, "kmeans", k=32, masked=True)
    out, st = decode_record(_take(rec), w.shape, "w")
    np.testing.assert_array_equal(out == 0, w == 0)
    assert np.mean((out - w) ** 2) < 0.01 * np.mean(w ** 2)
    assert st.mask > 0 and st.codebook > 0 and st.values > 0
    assert st.total == len(rec)


def test_payload_round_trip_and_stats_cover_every_byte():
    rng = np.random.default_rng(6)
    arrays = [("grid", _smooth_grid(rng)), ("w", rng.normal(size=(16, 16)).astype(np.float32)),
              ("b", rng.normal(size=16).astype(np.float32))]
    plans = {"grid": TensorPlan("lorenzo", step=0.01), "w": TensorPlan("kmeans", k=16),
             "b": TensorPlan("raw16")}
    payload = encode_records(arrays, plans)
    specs = [(n, a.shape) for n, a in arrays]
    out = decode_payload(payload, specs)
    for n, a in arrays:
        assert out[n].shape == a.shape and out[n].dtype == np.float32
    stats = payload_stats(payload, specs)
    assert 1 + sum(s.total for s in stats) == len(payload)
    assert [s.method for s in stats] == ["lorenzo", "kmeans", "raw16"]


def test_damaged_records_are_format_errors():
    rng = np.random.default_rng(7)
    arrays = [("grid", _smooth_grid(rng)), ("w", rng.normal(size=(16, 16)).astype(np.float32))]
    plans = {"grid": TensorPlan("lorenzo", step=0.01), "w": TensorPlan("kmeans", k=16)}
    payload = encode_records(arrays, plans)
    specs = [(n, a.shape) for n, a in arrays]
    bad = [
        payload[:-1],                                   # truncated
        payload + b"\x00",                              # trailing byte
        payload[:1] + b"\x09" + payload[2:],            # unknown method
        payload[:1] + b"\x03\x01" + payload[3:],        # masked lorenzo
        payload[:1] + b"\x03\x00" + struct.pack("<f", float("nan")) + payload[7:],  # bad step
    ]
    for b in bad:
        with pytest.raises(NeurvolFormatError):
            decode_payload(b, specs)
    # interp: masked, or a step so large that values overflow float32
    ipay = encode_records(arrays, {"grid": TensorPlan("interp", step=0.01), "w": plans["w"]})
    for b in (ipay[:1] + b"\x04\x01" + ipay[3:],
              ipay[:1] + b"\x04\x00" + struct.pack("<f", 3e38) + ipay[7:]):
        with pytest.raises(NeurvolFormatError):
            decode_payload(b, specs)
    with pytest.raises(NeurvolFormatError):               # lorenzo needs 3 axes
        decode_payload(encode_records([("g", np.zeros((4, 4, 4), np.float32))],
                                      {"g": TensorPlan("lorenzo", step=1.0)}), [("g", (64,))])


def test_vq_record_stores_codebook_rows_per_vertex():
    rng = np.random.default_rng(8)
    # 5 distinct channel vectors: a codebook of 8 holds them exactly
    rows = rng.normal(size=(5, 3)).astype(np.float16).astype(np.float32)
    g = from_vectors(rows[rng.integers(0, 5, 2 * 4 * 5 * 6)], (2, 3, 4, 5, 6))
    assert g.shape == (2, 3, 4, 5, 6)
    np.testing.assert_array_equal(from_vectors(grid_vectors(g), g.shape), g)
    rec = encode_record(g, "vq", k=8)
    out, st = decode_record(_take(rec), g.shape, "g")
    np.testing.assert_array_equal(out, g)
    assert st.method == "vq" and st.codebook == 5 + 2 * 5 * 3 and st.total == len(rec)
    # lossy case: the decoder returns exactly what the encoder planned, and more vectors
    # mean a smaller error
    h = _smooth_grid(rng, (1, 4, 8, 9, 10))
    errs = []
    for k in (4, 32, 256):
        out, _ = decode_record(_take(encode_record(h, "vq", k=k)), h.shape, "h")
        np.testing.assert_array_equal(out, vq_values(h, k))
        errs.append(float(np.mean((out - h) ** 2)))
    assert errs[0] > errs[1] > errs[2]


def test_vector_kmeans_is_deterministic_and_no_worse_than_its_start():
    x = np.random.default_rng(9).normal(size=(3000, 4))
    b1, i1 = vector_kmeans(x, 64, seed=1)
    b2, i2 = vector_kmeans(x, 64, seed=1)
    np.testing.assert_array_equal(b1, b2)
    err = np.mean(((b1[i1] - x) ** 2).sum(1))
    rand = np.mean(((x[:64][np.argmin(((x[:, None] - x[None, :64]) ** 2).sum(-1), 1)] - x) ** 2).sum(1))
    assert err < 0.8 * rand


def test_damaged_vq_records_are_format_errors():
    g = _smooth_grid(np.random.default_rng(10), (1, 4, 5, 6, 7))
    rec = encode_record(g, "vq", k=16)
    bad = [rec[:-1], rec[:1] + b"\x01" + rec[2:],                  # truncated, masked
           rec[:2] + b"\x07" + rec[3:],                             # unknown book kind
           rec[:2] + struct.pack("<BI", 0, 0) + rec[7:]]            # k = 0
    for b in bad:
        with pytest.raises(NeurvolFormatError):
            out, _ = decode_record(_take(b), g.shape, "g")
            assert len(b) == len(rec)       # a shorter record must not decode
    with pytest.raises(NeurvolFormatError):                     # vq needs 4 axes
        decode_record(_take(rec), (4, 5, 42), "g")
