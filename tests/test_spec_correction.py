"""The correction stream of spec/correction.md, decoded by a reader written from the spec.

``spec_decode`` below uses the standard library, numpy and zstandard only (and the rANS
table rule of spec/payload.md §2.3.2 from ``test_spec_rans``): no ``constriction``, no
neurvol code. It must decode the golden error-bounded files and streams written by
neurvol's encoder to exactly neurvol's values.
"""
from __future__ import annotations

import os
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import zstandard

import neurvol
from neurvol.compress import correction as C
from test_spec_rans import SpecError, cumulative_table

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
HEAD = "<BBHdddHII"
ESCAPE = 65535
EDGES = (0.5, 2.0, 8.0)


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    v, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos


def _weight(w: int) -> int:
    if w == 0:
        return 0
    p = 1 << (w - 1)
    r = int(np.floor(np.sqrt(p)))
    while r * r > p:
        r -= 1
    while (r + 1) * (r + 1) <= p:
        r += 1
    return r + 1 if (2 * r + 1) ** 2 <= 4 * p else r


class Coder:
    """One rANS word stack (payload.md §2.3.3), each symbol with its own table."""

    def __init__(self, words: List[int]):
        self.stack = list(words)
        self.x = 0
        if self.stack:
            if self.stack[-1] == 0:
                raise SpecError("the last word is 0")
            self.x = self.stack.pop()
            if self.stack:
                self.x = (self.x << 32) | self.stack.pop()

    def symbol(self, f: List[int]) -> int:
        q = self.x % (1 << 24)
        i = int(np.searchsorted(f, q, side="right")) - 1
        self.x = (self.x >> 24) * (f[i + 1] - f[i]) + (q - f[i])
        if self.x < 1 << 32 and self.stack:
            self.x = (self.x << 32) | self.stack.pop()
        return i

    def done(self) -> bool:
        return not self.stack and self.x == 0


#: §2.1: the axis orders, by their index (the permutations of z, y, x in lexicographic order).
ORDERS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


def _passes(dims: Tuple[int, int, int], order=(0, 1, 2)):
    """(axis, h) of every pass, coarse to fine (interp.py's docstring, the axes of each
    level in ``order``)."""
    top = 1
    while top < max(dims):
        top *= 2
    h = top // 2
    while h >= 1:
        for a in order:
            if h < dims[a]:
                yield a, h
        h //= 2


def _sel(a: int, h: int, order=(0, 1, 2)) -> Tuple[slice, ...]:
    """Axes before ``a`` in ``order`` at multiples of ``h``, those after at ``2h``."""
    rank = {b: i for i, b in enumerate(order)}
    return tuple(slice(None) if b == a else
                 slice(0, None, h if rank[b] < rank[a] else 2 * h) for b in range(3))


def _level_step(step: float, h: int, alpha: float, beta: float) -> float:
    """§2.4: ``step / r`` with ``r_0 = 1``, ``r_k = min(r_{k-1} * alpha, beta)``, h = 2^k."""
    r, k = 1.0, 1
    while k < h:
        r = min(r * alpha, beta)
        k *= 2
    return step / r


def _decode_block(data: bytes, dims, step: float, tables: Dict[int, List[int]],
                  base: np.ndarray, dtype: np.dtype,
                  levels: Tuple[float, float] = (1.0, 1.0), order=(0, 1, 2)) -> np.ndarray:
    n = int(np.prod(dims))
    mode = data[0]
    if mode > 4:
        raise SpecError("unknown mode")
    n_esc, pos = _varint(data, 1)
    n_exc, pos = _varint(data, pos)
    escapes = []
    for _ in range(n_esc):
        v, pos = _varint(data, pos)
        escapes.append(v)
    deltas = []
    for _ in range(n_exc):
        v, pos = _varint(data, pos)
        deltas.append(v)
    le = np.dtype(dtype).newbyteorder("<")
    values = np.frombuffer(data[pos:pos + n_exc * le.itemsize], dtype=le)
    pos += n_exc * le.itemsize
    coder = Coder(list(struct.unpack(f"<{(len(data) - pos) // 4}I", data[pos:])))
    esc = iter(escapes)

    def codes_for(classes: np.ndarray) -> np.ndarray:
        flat = classes.reshape(-1)
        out = np.zeros(flat.size, dtype=np.int64)
        for k in sorted(set(flat.tolist())):
            for j in np.flatnonzero(flat == k):
                s = coder.symbol(tables[k])
                if s == ESCAPE:
                    s = next(esc)
                out[j] = (s >> 1) ^ -(s & 1)
        return out.reshape(classes.shape)

    if mode == 4:
        pre = base + codes_for(np.full(dims, 36)) * step
    else:
        cubic = mode in (0, 2)
        r = np.zeros(dims)
        code = np.zeros(dims, dtype=np.int64)
        c0 = codes_for(np.full((1, 1, 1), 24))
        top = 1
        while top < max(dims):
            top *= 2
        r[0, 0, 0] = c0[0, 0, 0] * _level_step(step, top, *levels)
        code[0, 0, 0] = c0[0, 0, 0]
        for a, h in _passes(dims, order):
            s = _level_step(step, h, *levels)
            view, cview = r[_sel(a, h, order)], code[_sel(a, h, order)]
            m = view.shape[a]
            p = np.arange(h, m, 2 * h)
            at = lambda arr, i: np.take(arr, np.clip(i, 0, m - 1), axis=a)  # noqa: E731
            shape = [1, 1, 1]
            shape[a] = p.size
            has_r = (p + h < m).reshape(shape)
            lin = (at(view, p - h) + at(view, p + h)) / 2.0
            pred = np.where(has_r, lin, at(view, p - h))
            if cubic:
                has4 = ((p - 3 * h >= 0) & (p + 3 * h < m)).reshape(shape)
                cub = (9.0 * (at(view, p - h) + at(view, p + h))
                       - (at(view, p - 3 * h) + at(view, p + 3 * h))) / 16.0
                pred = np.where(has4, cub, pred)
            level = 0 if h == 1 else 1 if h == 2 else 2
            cl, cr = np.abs(at(cview, p - h)), np.abs(at(cview, p + h))
            cr = np.where(has_r, cr, cl)
            vl, vr = at(view, p - h), at(view, p + h)
            vr = np.where(has_r, vr, vl)
            g = sum((np.abs(vl - vr) / s >= e).astype(np.int64) for e in EDGES)
            cls = (level * 3 + np.minimum(2, cl + cr)) * 4 + g
            q = codes_for(np.broadcast_to(cls, pred.shape))
            idx = [slice(None)] * 3
            idx[a] = slice(h, None, 2 * h)
            view[tuple(idx)] = pred + q * s
            cview[tuple(idx)] = q
        pre = r if mode in (0, 1) else base + r
    if not coder.done() or next(esc, None) is not None:
        raise SpecError("symbols left over")
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(pre), info.min, info.max).astype(dtype)
    else:
        out = pre.astype(dtype)
    if n_exc:
        out.reshape(-1)[np.cumsum(np.asarray(deltas) + 1) - 1] = values
    return out


def _head(stream: bytes):
    """§2.1: (B, step, levels, n_tables, T_raw, tables' bytes, raw tables?, index length
    (None: varints; -1: a u32 after the tables), position of the tables, table map, axis
    order)."""
    version = stream[0]
    if version == 1:
        _, flags, B, _e, step, _tol, n_tables, raw_len, frame_len = struct.unpack_from(HEAD, stream)
        return (B, step, (1.0, 1.0), n_tables, raw_len, frame_len, False, -1,
                struct.calcsize(HEAD), 0, ORDERS[0])
    if version != 2:
        raise SpecError("version")
    _, flags, B, _e, step = struct.unpack_from("<BBHdd", stream)
    if flags & ~127:
        raise SpecError("flags")
    pos = 20
    if flags & 4:
        pos += 8
    levels = (1.0, 1.0)
    if flags & 8:
        levels = struct.unpack_from("<ff", stream, pos)
        pos += 8
    order = ORDERS[0]
    if flags & 64:
        if not 0 < stream[pos] < 6:
            raise SpecError("order")
        order = ORDERS[stream[pos]]
        pos += 1
    n_tables, pos = _varint(stream, pos)
    raw_len, pos = _varint(stream, pos)
    frame_len = raw_len
    if not flags & 1:
        frame_len, pos = _varint(stream, pos)
    ilen = None
    if not flags & 2:
        ilen, pos = _varint(stream, pos)
    return B, step, levels, n_tables, raw_len, frame_len, bool(flags & 1), ilen, pos, \
        (flags >> 4) & 3, order


def spec_decode(stream: bytes, shape, dtype, base: Optional[np.ndarray]) -> np.ndarray:
    """spec/correction.md §2: the whole volume."""
    (B, step, levels, n_tables, raw_len, frame_len, raw_tables, ilen, pos, tmap,
     order) = _head(stream)
    raw = stream[pos:pos + frame_len]
    if not raw_tables:
        raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=raw_len)
    pos += frame_len
    tables: Dict[int, List[int]] = {}
    t = 0
    for _ in range(n_tables):
        k = raw[t]
        a, t = _varint(raw, t + 1)
        tables[k] = cumulative_table([_weight(w) for w in raw[t:t + a]])
        t += a
    # §2.2 table maps: the table of class c (level*12 + codes*4 + roughness, or 36).
    table_of = [lambda c: c, lambda c: 0, lambda c: c - c % 4, lambda c: c - c % 12][tmap]
    if any(table_of(k) != k for k in tables):
        raise SpecError("table map")
    tables = {c: tables[table_of(c)] for c in range(37) if table_of(c) in tables}
    if ilen == -1:
        (ilen,) = struct.unpack_from("<I", stream, pos)
        pos += 4
    grid = [-(-n // B) for n in shape]
    nb = grid[0] * grid[1] * grid[2]
    if ilen is None:
        lengths = []
        for _ in range(nb):
            v, pos = _varint(stream, pos)
            lengths.append(v)
    else:
        lengths = struct.unpack(f"<{nb}I", zstandard.ZstdDecompressor().decompress(
            stream[pos:pos + ilen], max_output_size=4 * nb))
        pos += ilen
    out = np.empty(shape, dtype=dtype)
    base = np.zeros(shape) if base is None else np.asarray(base, dtype=np.float64)
    for b in range(nb):
        kz, rem = divmod(b, grid[1] * grid[2])
        ky, kx = divmod(rem, grid[2])
        sl = tuple(slice(k * B, min((k + 1) * B, n)) for k, n in zip((kz, ky, kx), shape))
        dims = tuple(s.stop - s.start for s in sl)
        out[sl] = _decode_block(stream[pos:pos + lengths[b]], dims, step, tables, base[sl], dtype,
                                levels, order)
        pos += lengths[b]
    assert pos == len(stream)
    return out


@pytest.mark.parametrize("name", ["bounded_pure_v1.2", "bounded_model_v1.2", "bounded_pure_v1.5",
                                  "bounded_model_v1.5"])
def test_golden_streams_decode_with_the_spec_decoder(name):
    expected = np.load(os.path.join(GOLDEN, name + ".expected.npy"))
    with neurvol.open(os.path.join(GOLDEN, name + ".nvol")) as nv:
        stream = nv._reader.read_section("correction")
        base = nv._base_block(tuple(slice(0, n) for n in nv.shape)).astype(np.float64)
        got = spec_decode(stream, nv.shape, nv.dtype, base)
        np.testing.assert_array_equal(got, nv.decode())
    if "pure" in name:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype,with_base,block", [("uint8", False, 8), ("float32", True, 8),
                                                    ("int16", True, 16), ("float64", False, 64)])
def test_encoder_streams_decode_with_the_spec_decoder(dtype, with_base, block):
    rng = np.random.default_rng(11)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (13, 17, 11)], indexing="ij")
    f = np.sin(5 * x) * np.cos(4 * y) + z + rng.normal(0, 0.05, x.shape)
    if np.dtype(dtype).kind in "iu":
        f = np.rint((f - f.min()) / np.ptp(f) * 200)
    vol = f.astype(dtype)
    e = 0.01 * float(np.ptp(vol.astype(np.float64)))
    base = vol.astype(np.float64) + rng.normal(0, 2 * e, vol.shape) if with_base else None
    # A spike: large codes, and for floats one beyond the tables' alphabet (an escape).
    vol[3, 4, 5] = vol.max() + (1e5 if vol.dtype.kind == "f" else 90) * e
    stream, _ = C.encode_correction(vol, e, base, block=block)
    got = spec_decode(stream, vol.shape, vol.dtype, base)
    np.testing.assert_array_equal(got, C.decode_correction(stream, vol.shape, vol.dtype, base))
    assert np.abs(got.astype(np.float64) - vol.astype(np.float64)).max() <= e


def test_the_spec_decoder_is_not_vacuous():
    """A changed coder word changes the values or breaks the stack's final state."""
    vol = np.load(os.path.join(GOLDEN, "bounded_pure_v1.2.original.npy"))
    stream, _ = C.encode_correction(vol, 2.0, None, block=8)
    good = spec_decode(stream, vol.shape, vol.dtype, None)
    bad = bytearray(stream)
    bad[-2] ^= 0x10
    try:
        other = spec_decode(bytes(bad), vol.shape, vol.dtype, None)
    except (SpecError, StopIteration, IndexError, KeyError):
        return
    assert not np.array_equal(other, good)
