import numpy as np
import pytest

from neurvol.compress import TensorPlan, decode_payload, default_plan, encode_constant, encode_tensors
from neurvol.compress.bitpack import pack_bits, unpack_bits
from neurvol.compress.kmeans import kmeans_quantize
from neurvol.errors import NeurvolFormatError


@pytest.mark.parametrize("bits", [1, 3, 6, 8, 9, 13, 16])
def test_bitpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    v = rng.integers(0, 2 ** bits, size=1001)
    data = pack_bits(v, bits)
    assert len(data) == (1001 * bits + 7) // 8
    np.testing.assert_array_equal(unpack_bits(data, bits, 1001), v)


def test_kmeans_error_shrinks_with_k():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000).astype(np.float32)
    errs = []
    for k in (4, 16, 64):
        book, idx = kmeans_quantize(x, k)
        assert book.size == k and np.all(np.diff(book) >= 0)
        errs.append(float(np.mean((book[idx] - x) ** 2)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 3e-3


def test_kmeans_few_distinct_values_is_exact():
    x = np.array([0.5, 0.25, 0.5, 3.0] * 10, dtype=np.float32)
    book, idx = kmeans_quantize(x, 16)
    np.testing.assert_array_equal(book[idx], x)


def _arrays(rng):
    return [
        ("grid", rng.normal(size=(1, 4, 10, 12, 9)).astype(np.float32)),
        ("w", rng.normal(size=(32, 32)).astype(np.float32)),
        ("b", rng.normal(size=(32,)).astype(np.float32)),
    ]


def test_tensor_payload_round_trip_and_error_bounds():
    rng = np.random.default_rng(1)
    arrays = _arrays(rng)
    plans = {n: default_plan(a.size, 64) for n, a in arrays}
    assert plans["b"].method == "raw16" and plans["grid"].k == 64
    payload = encode_tensors(arrays, plans)
    out = decode_payload(payload, [(n, a.shape) for n, a in arrays])
    for n, a in arrays:
        assert out[n].shape == a.shape and out[n].dtype == np.float32
    np.testing.assert_allclose(out["b"], arrays[2][1], atol=2e-3)
    # 64 levels over a unit normal: error well under a tenth of the std
    assert np.sqrt(np.mean((out["grid"] - arrays[0][1]) ** 2)) < 0.1
    # fewer bits than raw float32
    assert len(payload) < sum(a.nbytes for _, a in arrays) / 3


def test_raw32_is_lossless_and_deterministic():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(7, 5)).astype(np.float32)
    p1 = encode_tensors([("a", a)], {"a": TensorPlan("raw32")})
    p2 = encode_tensors([("a", a)], {"a": TensorPlan("raw32")})
    assert p1 == p2
    np.testing.assert_array_equal(decode_payload(p1, [("a", (7, 5))])["a"], a)


def test_constant_payload_exact():
    assert decode_payload(encode_constant(-3.25e7), []) == -3.25e7


def test_corrupt_payloads_raise_format_error():
    rng = np.random.default_rng(3)
    arrays = _arrays(rng)
    plans = {n: default_plan(a.size, 32) for n, a in arrays}
    payload = encode_tensors(arrays, plans)
    specs = [(n, a.shape) for n, a in arrays]
    bad_inputs = [b"", b"\x07abc", b"\x00\x01", b"\x01notzstd", payload[:-5]]
    # a payload that decodes to more data than its specs can hold
    bad_inputs.append(encode_tensors([("x", np.zeros(5000, np.float32))], {"x": TensorPlan("raw32")}))
    for bad in bad_inputs:
        with pytest.raises(NeurvolFormatError):
            decode_payload(bad, specs)
    # wrong specs (shape mismatch) are caught too
    with pytest.raises(NeurvolFormatError):
        decode_payload(payload, [(n, (2,) + tuple(a.shape)) for n, a in arrays])
