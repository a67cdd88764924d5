"""Error-bounded coding: the correction stream (spec/correction.md) holds its bound on
every voxel, decodes block by block, and refuses damaged bytes."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trilinear_reference import trilinear

from neurvol.compress import correction as C
from neurvol.errors import NeurvolFormatError

REL_BOUNDS = (1e-2, 1e-3, 1e-4)
DATA = "/work/shared/data"


def _bound(volume: np.ndarray, rel: float) -> float:
    return rel * (float(volume.max()) - float(volume.min()))


def _max_err(decoded: np.ndarray, volume: np.ndarray) -> float:
    return float(np.abs(decoded.astype(np.float64) - volume.astype(np.float64)).max())


def _smooth(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """A smooth field plus noise, scaled to the dtype (so every predictor mode matters)."""
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    f = np.sin(6 * x + rng.uniform(0, 3)) * np.cos(5 * y) + z ** 2
    f = f + rng.normal(0, rng.uniform(0.001, 0.2), shape)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo, hi = max(info.min, -30000), min(info.max, 30000)
        f = (f - f.min()) / (np.ptp(f) or 1.0) * (hi - lo) + lo
        return np.rint(f).astype(dt)
    return (f * rng.uniform(0.01, 1e4)).astype(dt)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 31 - 1),
       shape=st.tuples(st.integers(1, 21), st.integers(1, 21), st.integers(1, 21)),
       dtype=st.sampled_from(["float32", "float64", "uint8", "uint16", "int16"]),
       rel=st.sampled_from(REL_BOUNDS),
       block=st.sampled_from([4, 8, 64]),
       with_base=st.booleans())
def test_bound_holds_on_every_voxel(seed, shape, dtype, rel, block, with_base):
    rng = np.random.default_rng(seed)
    vol = _smooth(rng, shape, dtype)
    e = _bound(vol, rel)
    base = None
    tol = 0.0
    if with_base:   # a "model": the volume blurred and biased, as float32 like a decode
        base = (vol.astype(np.float64) + rng.normal(0, 3 * e + 1e-3, shape)).astype(np.float32)
        base = base.astype(np.float64)
        tol = float(np.abs(base).max()) * 2.0 ** -18
    try:
        data, stats = C.encode_correction(vol, e, base, block=block, base_tolerance=tol)
    except C.BoundTooSmallError:
        assert e == 0 or vol.dtype.kind == "f"   # a bound below the dtype's precision
        return
    dec = C.decode_correction(data, vol.shape, vol.dtype, base)
    assert dec.dtype == vol.dtype and dec.shape == vol.shape
    assert _max_err(dec, vol) <= e
    if with_base:   # any base within the tolerance keeps the bound
        jitter = base + rng.uniform(-tol, tol, shape)
        assert _max_err(C.decode_correction(data, vol.shape, vol.dtype, jitter), vol) <= e


def _crops():
    out = []
    for name, sl in (("sim_neghip", np.s_[20:44, 10:40, 30:52]),
                     ("sim_viscous_fingers_t64", np.s_[8:40, 20:44, 0:28]),
                     ("ct_walnut", np.s_[40:64, 30:60, 50:80]),
                     ("sim_isabel_windspeed_t30", np.s_[0:25, 40:70, 40:75])):
        out.append(pytest.param(name, sl, id=name))
    return out


@pytest.mark.parametrize("name,sl", _crops())
@pytest.mark.parametrize("rel", REL_BOUNDS)
def test_real_crops_hold_the_bound(name, sl, rel):
    vol = np.ascontiguousarray(np.load(f"{DATA}/{name}.npy", mmap_mode="r")[sl])
    e = _bound(vol, rel)
    data, stats = C.encode_correction(vol, e, block=16)
    dec = C.decode_correction(data, vol.shape, vol.dtype)
    assert _max_err(dec, vol) <= e
    assert len(data) < vol.nbytes          # it compresses
    assert stats.nbytes == len(data)


def test_integer_bound_below_half_is_lossless():
    vol = np.load(f"{DATA}/sim_neghip.npy")[10:40, 10:40, 10:40]
    data, _ = C.encode_correction(vol, 0.3)
    assert np.array_equal(C.decode_correction(data, vol.shape, vol.dtype), vol)


def test_blocks_decode_independently():
    rng = np.random.default_rng(1)
    vol = _smooth(rng, (19, 23, 17), "float32")
    e = _bound(vol, 1e-3)
    base = vol.astype(np.float64) + rng.normal(0, e, vol.shape)
    data, stats = C.encode_correction(vol, e, base, block=8)
    stream = C.CorrectionStream(data, vol.shape, vol.dtype)
    whole = stream.decode(base)
    assert stream.nblocks == 3 * 3 * 3 == stats.blocks
    for i in reversed(range(stream.nblocks)):     # any order: no block needs another
        sl = C.block_slices(vol.shape, 8, i)
        fresh = C.CorrectionStream(data, vol.shape, vol.dtype)
        assert np.array_equal(fresh.decode_block(i, base[sl]), whole[sl])
    zyx = np.array([[0, 0, 0], [18, 22, 16], [8, 7, 15]])
    assert stream.block_of(zyx).tolist() == [0, 26, 3 * 3 + 0 * 3 + 1]


def test_model_modes_are_chosen_where_the_base_helps():
    """A base equal to the data up to small noise makes the base mode cheapest; a useless
    base leaves the data modes."""
    rng = np.random.default_rng(2)
    vol = rng.normal(0, 1, (32, 32, 32)).astype(np.float32)      # noise: no predictor helps
    e = 0.01
    good = vol.astype(np.float64) + rng.uniform(-e, e, vol.shape)
    data_good, st_good = C.encode_correction(vol, e, good, block=16)
    data_none, st_none = C.encode_correction(vol, e, block=16)
    assert set(st_good.modes) <= {"base", "residual-cubic", "residual-linear"}
    assert len(data_good) < len(data_none) / 3
    useless = np.zeros(vol.shape)
    _, st_useless = C.encode_correction(vol, e, useless + 100.0, block=16)
    assert set(st_useless.modes) <= {"data-cubic", "data-linear", "residual-linear",
                                     "residual-cubic"}


def test_exceptions_repair_what_quantization_breaks(monkeypatch):
    """Bins twice too wide break the bound on many voxels: the encoder's check stores them
    losslessly, so the decoded volume still holds the bound."""
    rng = np.random.default_rng(3)
    vol = _smooth(rng, (16, 16, 16), "float32")
    e = _bound(vol, 1e-3)
    real = C.quantization_bound
    monkeypatch.setattr(C.encode, "quantization_bound", lambda *a, **k: 2.0 * real(*a, **k))
    data, stats = C.encode_correction(vol, e, block=8)
    assert stats.exceptions > 0
    assert _max_err(C.decode_correction(data, vol.shape, vol.dtype), vol) <= e


def test_big_codes_are_escaped():
    """A jump of far more than 2^16 bins goes through the escape path and back."""
    vol = np.zeros((9, 9, 9), np.float64)
    vol[4, 4, 4] = 1e6
    vol[0, 0, 0] = -3e5
    data, _ = C.encode_correction(vol, 1.0, block=8)
    assert _max_err(C.decode_correction(data, vol.shape, vol.dtype), vol) <= 1.0


def test_tiny_float_bound_is_refused():
    vol = np.full((4, 4, 4), 1e7, np.float32)
    with pytest.raises(C.BoundTooSmallError):
        C.encode_correction(vol, 0.1)


@pytest.mark.parametrize("where", ["truncate", "mode", "words", "index", "version"])
def test_damaged_streams_are_refused(where):
    rng = np.random.default_rng(4)
    vol = _smooth(rng, (12, 12, 12), "uint16")
    data, _ = C.encode_correction(vol, 20.0, block=8)
    buf = bytearray(data)
    if where == "truncate":
        buf = buf[:-3]
    elif where == "mode":
        stream = C.CorrectionStream(data, vol.shape, vol.dtype)
        buf[int(stream._offsets[0])] = 9
    elif where == "words":
        buf[-1] ^= 0x5A
    elif where == "index":
        buf = buf[:C._HEAD.size] + bytes(5) + buf[C._HEAD.size + 5:]
    else:
        buf[0] = 7
    with pytest.raises(NeurvolFormatError):
        C.CorrectionStream(bytes(buf), vol.shape, vol.dtype).decode()


def test_weight_table_is_exact_integers():
    assert C._WEIGHTS[:8].tolist() == [0, 1, 1, 2, 3, 4, 6, 8]
    assert C._WEIGHTS[C.MAX_WEIGHT_CODE] * C.MAX_ALPHABET < 2 ** 53
    counts = np.array([0, 1, 5, 1000, 2 ** 30])
    w = C._WEIGHTS[C.weight_codes(counts)]
    assert w[0] == 0 and all(abs(np.log2(w[1:] / counts[1:])) <= 0.3)


# ----------------------------------------------------------------- files (encode / read)
import neurvol  # noqa: E402
from neurvol.encoding import bounded as B  # noqa: E402
from neurvol.errors import NeurvolInputError  # noqa: E402


def _neghip_crop() -> np.ndarray:
    return np.ascontiguousarray(neurvol.sample_volume()[20:44, 18:42, 22:46])


def test_encode_pure_predictor_file(tmp_path):
    vol = _neghip_crop()
    nv = neurvol.encode(vol, rel_error=1e-2, model_ratios=(), quiet=True)
    e = 1e-2 * (float(vol.max()) - float(vol.min()))
    assert nv.max_error == pytest.approx(e)
    info = nv.info()
    assert info["format_version"] == "1.5"
    assert info["bound"]["max_error"] == pytest.approx(e) and info["bound"]["rel_error"] == 1e-2
    bb = nv.byte_breakdown()
    assert bb["correction"] > 0 and bb["weights"] == 0
    assert bb["header"] + bb["correction"] + bb["constants"] == nv.nbytes_file
    dec = nv.decode()
    assert dec.dtype == vol.dtype and _max_err(dec, vol) <= e
    path = tmp_path / "b.nvol"
    nv.save(path)
    with neurvol.open(path) as again:
        assert np.array_equal(again.decode(), dec)
        assert again.to_bytes() == nv.to_bytes()
        # region reads decode only the blocks they touch and agree with decode()
        assert np.array_equal(again[3:9, 5, ::2], dec[3:9, 5, ::2])


def test_query_is_exact_at_centres_and_trilinear_between():
    vol = _neghip_crop()
    nv = B.encode_bounded(vol, 3.0, None, model_ratios=(), block=8)
    dec = nv.decode().astype(np.float64)
    rng = np.random.default_rng(5)
    centres = rng.integers(0, 24, (50, 3)).astype(np.float64)
    np.testing.assert_array_equal(nv.query(centres), dec[tuple(centres.astype(int).T)])
    # No model: the base is a constant, so between centres the query is the trilinear
    # interpolation of the decoded values, continuous across the 8^3 blocks.
    p = np.array([[7.5, 3.0, 4.0], [7.25, 8.0, 15.5]])
    want0 = 0.5 * (dec[7, 3, 4] + dec[8, 3, 4])
    want1 = (0.75 * 0.5 * (dec[7, 8, 15] + dec[7, 8, 16])
             + 0.25 * 0.5 * (dec[8, 8, 15] + dec[8, 8, 16]))
    np.testing.assert_allclose(nv.query(p), [want0, want1], rtol=1e-6)
    line = np.stack([np.linspace(6, 10, 401), np.full(401, 3.0), np.full(401, 4.0)], axis=1)
    vals = nv.query(line)
    assert np.abs(np.diff(vals)).max() <= np.abs(np.diff(dec[6:11, 3, 4])).max() / 100 + 1e-4


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_model_plus_correction_file(dtype):
    rng = np.random.default_rng(6)
    vol = _smooth(rng, (20, 18, 22), dtype)
    e = _bound(vol, 1e-3)
    nv = B.encode_bounded(vol, e, 1e-3, model_ratios=(4.0,), require_model=True, steps=20,
                          arch="fvsrn", seed=0, quiet=True, device="cpu")
    assert nv.bounded_choice == {"model_ratio": 4.0}
    bb = nv.byte_breakdown()
    assert bb["weights"] > 0 and bb["correction"] > 0
    dec = nv.decode()
    assert _max_err(dec, vol) <= e
    centres = rng.integers(0, 17, (40, 3)).astype(np.float64)
    got = nv.query(centres).astype(np.float64)
    assert np.abs(got - vol[tuple(centres.astype(int).T)]).max() <= e
    # Between centres: the model there plus interpolated corrections, close to the data.
    mid = centres + 0.5
    corners = [vol[tuple((centres + np.array(c)).astype(int).T)] for c in np.ndindex(2, 2, 2)]
    lo, hi = np.min(corners, axis=0), np.max(corners, axis=0)
    between = nv.query(mid).astype(np.float64)
    span = float(vol.max()) - float(vol.min())
    assert np.all((between >= lo - 0.2 * span) & (between <= hi + 0.2 * span))


def test_encode_checks_every_voxel_before_returning(monkeypatch):
    """A stream that decodes outside the bound (simulated) is refused, not returned."""
    vol = _neghip_crop()
    real = C.CorrectionStream.decode

    def off_by_ten(self, base=None):
        out = real(self, base)
        return (out.astype(np.int64) + 10).clip(0, 255).astype(out.dtype)

    nv = B.encode_bounded(vol, 2.0, None, model_ratios=())
    monkeypatch.setattr(C.CorrectionStream, "decode", off_by_ten)
    with pytest.raises(NeurvolFormatError, match="nothing was written"):
        B.check_bound(nv, vol, 2.0)
    with pytest.raises(NeurvolFormatError, match="nothing was written"):
        B.encode_bounded(vol, 2.0, None, model_ratios=())


@pytest.mark.parametrize("kwargs", [dict(max_error=1.0, rel_error=0.1), dict(max_error=-1.0),
                                    dict(rel_error=float("nan")), dict(max_error="2"),
                                    dict(max_error=1.0, psnr=40.0),
                                    dict(max_error=1.0, bricks=(2, 1, 1))])
def test_bad_bounds_are_refused(kwargs):
    with pytest.raises(NeurvolInputError):
        neurvol.encode(_neghip_crop(), model_ratios=(), quiet=True, **kwargs)


def test_correction_block_sets_the_blocks_and_keeps_the_bound():
    vol = _neghip_crop()
    nv = neurvol.encode(vol, max_error=1.5, model_ratios=(), correction_block=8, quiet=True)
    stream = nv._correction_stream().stream
    assert stream.block == 8
    assert stream.nblocks == int(np.prod([-(-n // 8) for n in vol.shape]))
    assert _max_err(nv.decode(), vol) <= 1.5
    default = neurvol.encode(vol, max_error=1.5, model_ratios=(), quiet=True)
    assert default._correction_stream().stream.block != 8


@pytest.mark.parametrize("kwargs", [dict(max_error=1.0, correction_block=3),
                                    dict(max_error=1.0, correction_block=1000),
                                    dict(max_error=1.0, correction_block=8.5),
                                    dict(ratio=10, correction_block=8)])
def test_bad_correction_blocks_are_refused(kwargs):
    with pytest.raises(NeurvolInputError, match="correction_block"):
        neurvol.encode(_neghip_crop(), quiet=True, **kwargs)


def test_cli_correction_block(tmp_path, capsys):
    from neurvol.cli import main

    src = tmp_path / "crop.npy"
    np.save(src, _neghip_crop())
    out = tmp_path / "crop.nvol"
    assert main(["pack", str(src), "-o", str(out), "--max-error", "1.5", "--model-ratios",
                 "none", "--correction-block", "16"]) == 0
    with neurvol.open(out) as nv:
        assert nv._correction_stream().stream.block == 16
    assert main(["pack", str(src), "-o", str(out), "--correction-block", "16"]) == 1
    assert "correction_block" in capsys.readouterr().err


def test_model_ratios_needs_a_bound():
    with pytest.raises(NeurvolInputError, match="error-bounded"):
        neurvol.encode(_neghip_crop(), ratio=10, model_ratios=(10,), quiet=True)


def test_a_predictor_file_is_refused_as_a_base_model():
    """A pre-fitted "model" that is itself a predictor or bounded file decodes to more than
    its brick: correcting it would break the bound, so it is refused, not used."""
    vol = _neghip_crop()
    predictor = neurvol.encode(vol, max_error=4.0, model_ratios=(), quiet=True)
    assert predictor.info()["content"] == "predictor"
    with pytest.raises(NeurvolInputError, match="hybrid"):
        B.encode_bounded(vol, 2.0, None, model_ratios=(8.0,), models={8.0: predictor})


def test_header_bound_must_name_a_present_section():
    nv = B.encode_bounded(_neghip_crop(), 2.0, None, model_ratios=())
    header = {k: v for k, v in nv.header.items() if k != "sections"}
    header["bound"] = dict(header["bound"], section="nope")
    from neurvol.container import NvolReader, serialize_nvol
    data = serialize_nvol(header, [nv._reader.read_brick(0)],
                          {"correction": nv._reader.read_section("correction")}, minor=2)
    with pytest.raises(NeurvolFormatError, match="does not have"):
        neurvol.NeuralVolume(NvolReader(data))


def test_cli_pack_with_a_bound_and_info(tmp_path, capsys):
    from neurvol.cli import main

    src = tmp_path / "crop.npy"
    vol = _neghip_crop()
    np.save(src, vol)
    out = tmp_path / "crop.nvol"
    assert main(["pack", str(src), "-o", str(out), "--max-error", "1.5",
                 "--model-ratios", "none"]) == 0
    text = capsys.readouterr().out
    assert "every voxel within 1.5" in text and "max error 1" in text
    with neurvol.open(out) as nv:
        assert nv.max_error == 1.5 and _max_err(nv.decode(), vol) <= 1
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bound:" in text and "max_error: 1.5" in text and "correction:" in text
    # one bound at a time: a usage error
    assert main(["pack", str(src), "-o", str(out), "--max-error", "1", "--rel-error", "0.1"]) == 2


def test_query_between_centres_is_model_plus_trilinear_corrections():
    rng = np.random.default_rng(7)
    vol = _smooth(rng, (17, 19, 18), "float32")
    e = _bound(vol, 1e-2)
    nv = B.encode_bounded(vol, e, None, model_ratios=(4.0,), require_model=True, block=8,
                          steps=20, arch="fvsrn", seed=0, quiet=True, device="cpu")
    modes = nv._correction_stream().stream.modes()
    assert sum(modes.values()) == 27
    dec = nv.decode().astype(np.float64)
    base = nv._base_block(tuple(slice(0, n) for n in vol.shape)).astype(np.float64)
    corr = dec - base
    p = rng.uniform(0, 1, (200, 3)) * (np.array(vol.shape) - 1)
    norm = p * (2.0 / (np.array(vol.shape) - 1.0)) - 1.0
    model = nv._evaluate(norm).astype(np.float64)
    tri = trilinear(corr, p)
    span = float(vol.max() - vol.min())
    np.testing.assert_allclose(nv.query(p), model + tri, rtol=0, atol=1e-5 * span)


def test_decode_at_another_shape_is_model_plus_interpolated_corrections():
    vol = _neghip_crop()
    nv = B.encode_bounded(vol, 3.0, None, model_ratios=(), block=8)
    dec = nv.decode().astype(np.float64)
    # No model (a constant base): the corrections' interpolation is the values'.
    half = nv.decode(shape=(12, 24, 47), dtype=np.float32)
    z = np.linspace(0, 23, 12)
    x = np.linspace(0, 23, 47)
    pts = np.stack(np.meshgrid(z, np.arange(24.0), x, indexing="ij"), -1).reshape(-1, 3)
    np.testing.assert_allclose(half.reshape(-1), nv.query(pts), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(half[0, :, 0], dec[0, :, 0], atol=1e-4)
    assert nv.decode(shape=(2, 3, 2)).dtype == vol.dtype
