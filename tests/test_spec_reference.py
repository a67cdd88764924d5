"""An independent numpy decoder written from spec/nvol.md + spec/payload.md only.

If the reference implementation and this reading of the spec disagree, one of them is
wrong: the spec is normative, so fix whichever departs from it.
"""
import hashlib
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import zstandard

import neurvol


SPEC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "spec")


def _compact_header(raw: bytes, minor: int):
    """spec/nvol.md §3.3: (expanded header, brick CRC) of a compact header."""
    assert minor >= 4 and raw[:2] == b"\xff\x01"
    (crc,) = struct.unpack_from("<I", raw, 2)
    with open(os.path.join(SPEC_DIR, "nvol-header-dict-1.bin"), "rb") as f:
        dictionary = f.read()
    assert hashlib.sha256(dictionary).hexdigest() == (
        "eb87779be9a8151f913a903d8e854c30f50a1100e3e9811abd3451923e0d7513")
    frame = b"\x28\xb5\x2f\xfd" + raw[6:]
    size = zstandard.get_frame_parameters(frame).content_size
    assert 0 <= size <= 65536
    d = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(
        dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT))
    text = d.decompress(frame)
    assert len(text) == size
    header = json.loads(text)
    assert "bricks" not in header and "sections" not in header
    defaults = {"volume": {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0]},
                "codec": {"name": "neurvol", "version": 2}}
    for key, members in defaults.items():
        if key in header:
            header[key] = {**members, **header[key]}
    header["bricks"] = {"grid": [1, 1, 1]}
    return header, crc


def _parse_container(data: bytes):
    assert data[:8] == b"\x89NVL\r\n\x1a\n"
    major, minor, n = struct.unpack_from("<HHI", data, 8)
    assert major == 1 and minor in (0, 4)
    assert struct.unpack_from("<I", data, 16 + n)[0] == zlib.crc32(data[:16 + n])
    if data[16] == 0xFF:
        header, crc = _compact_header(data[16:16 + n], minor)
        payload = data[20 + n:]
        assert zlib.crc32(payload) == crc
        return header, [payload]
    header = json.loads(data[16:16 + n])
    sections = {s["name"]: s for s in header["sections"]}
    idx = sections["brick_index"]
    bricks = sections["bricks"]
    k, j, i = header["bricks"]["grid"]
    payloads = []
    for b in range(k * j * i):
        off, length, crc = struct.unpack_from("<QII", data, idx["offset"] + 16 * b)
        p = data[bricks["offset"] + off: bricks["offset"] + off + length]
        assert zlib.crc32(p) == crc
        payloads.append(p)
    return header, payloads


def _stream(buf: bytes, pos: int, m: int):
    """spec/payload.md §2.2 stream -> (m unsigned ints, new position)."""
    coder, width, length = struct.unpack_from("<BBI", buf, pos)
    pos += 6
    data = buf[pos:pos + length]
    dt = {1: "<u1", 2: "<u2", 4: "<u4"}[width]
    if coder == 0:
        sym = np.frombuffer(data, dt, m)
    elif coder == 1:
        sym = np.frombuffer(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(), dt)
    else:
        constriction = pytest.importorskip("constriction")
        alphabet, tlen = struct.unpack_from("<II", data)
        counts = np.frombuffer(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data[8:8 + tlen])).read(), "<u4")
        assert counts.size == alphabet
        model = constriction.stream.model.Categorical(counts / counts.astype(np.float64).sum(), perfect=False)
        words = np.frombuffer(data[8 + tlen:], "<u4").astype(np.uint32)
        sym = constriction.stream.stack.AnsCoder(words).decode(model, m)
    assert len(sym) == m
    return np.asarray(sym, dtype=np.int64), pos + length


def _records_v2(payload: bytes, shapes):
    pos, out = 1, []
    for shape in shapes:
        n = int(np.prod(shape))
        method, flags = payload[pos], payload[pos + 1]
        pos += 2
        keep = None
        if flags & 1:
            packed, pos = _stream(payload, pos, (n + 7) // 8)
            keep = np.unpackbits(packed.astype(np.uint8), bitorder="little")[:n].astype(bool)
        m = int(keep.sum()) if keep is not None else n
        if method == 0:
            sym, pos = _stream(payload, pos, m)
            vals = sym.astype("<u4").view("<f4").astype(np.float32)
        elif method == 1:
            sym, pos = _stream(payload, pos, m)
            vals = sym.astype("<u2").view("<f2").astype(np.float32)
        elif method == 2:
            kind, k = struct.unpack_from("<BI", payload, pos)
            pos += 5
            dt = "<f2" if kind == 0 else "<f4"
            book = np.frombuffer(payload, dt, k, pos).astype(np.float32)
            pos += k * np.dtype(dt).itemsize
            idx, pos = _stream(payload, pos, m)
            vals = book[idx]
        elif method == 3:
            (step,) = struct.unpack_from("<f", payload, pos)
            pos += 4
            z, pos = _stream(payload, pos, n)
            r = ((z >> 1) ^ -(z & 1)).reshape(shape)
            q = np.cumsum(np.cumsum(np.cumsum(r, axis=-1), axis=-2), axis=-3)
            vals = (q.astype(np.float64) * step).astype(np.float32).reshape(-1)
        elif method == 5:
            kind, k = struct.unpack_from("<BI", payload, pos)
            pos += 5
            dt = "<f2" if kind == 0 else "<f4"
            c = shape[-4]
            book = np.frombuffer(payload, dt, k * c, pos).astype(np.float32).reshape(k, c)
            pos += k * c * np.dtype(dt).itemsize
            idx, pos = _stream(payload, pos, n // c)
            vertex = tuple(shape[:-4]) + tuple(shape[-3:])
            vals = np.empty(shape, np.float32)
            for flat, i in enumerate(idx.tolist()):
                at = np.unravel_index(flat, vertex)
                for ch in range(c):
                    vals[tuple(at[:-3]) + (ch,) + tuple(at[-3:])] = book[i, ch]
            vals = vals.reshape(-1)
        else:
            assert method == 4
            (step,) = struct.unpack_from("<f", payload, pos)
            pos += 4
            z, pos = _stream(payload, pos, n)
            r = (z >> 1) ^ -(z & 1)
            vals = _interp_per_spec(r, tuple(shape), float(step)).astype(np.float32).reshape(-1)
        if keep is not None:
            full = np.zeros(n, np.float32)
            full[keep] = vals
            vals = full
        out.append(vals)
    assert pos == len(payload)
    return out


def _interp_per_spec(r, shape, step):
    """spec/payload.md §2.2 interp, point by point (slow, independent of neurvol)."""
    x = np.zeros(shape, np.float64)
    lead, dims = shape[:-3], shape[-3:]
    it = iter(r.tolist())
    passes = [[(0, 0, 0)]]
    preds = [None]
    S = 1
    while S < max(dims):
        S *= 2
    h = S // 2
    while h >= 1:
        for a in range(3):
            if h >= dims[a]:
                continue
            pts = [idx for idx in np.ndindex(*dims)
                   if idx[a] % (2 * h) == h
                   and all(idx[b] % h == 0 for b in range(a))
                   and all(idx[b] % (2 * h) == 0 for b in range(a + 1, 3))]
            passes.append(pts)
            preds.append((a, h))
        h //= 2
    for pts, how in zip(passes, preds):
        for head in np.ndindex(*lead):
            for idx in pts:
                if how is None:
                    pred = 0.0
                else:
                    a, h = how
                    p, n_a = idx[a], dims[a]

                    def v(i):
                        j = list(idx)
                        j[a] = i
                        return x[head + tuple(j)]
                    if p - 3 * h >= 0 and p + 3 * h < n_a:
                        pred = (9.0 * (v(p - h) + v(p + h)) - (v(p - 3 * h) + v(p + 3 * h))) / 16.0
                    elif p + h < n_a:
                        pred = (v(p - h) + v(p + h)) / 2.0
                    else:
                        pred = v(p - h)
                x[head + idx] = pred + float(next(it)) * step
    assert next(it, None) is None
    return x


def _records(payload: bytes, sizes, shapes=None):
    if payload[0] == 2:
        return _records_v2(payload, shapes)
    assert payload[0] == 1
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload[1:])).read()
    pos, out = 0, []
    for n in sizes:
        method = raw[pos]; pos += 1
        if method == 0:
            out.append(np.frombuffer(raw, "<f4", n, pos).astype(np.float32)); pos += 4 * n
        elif method == 1:
            out.append(np.frombuffer(raw, "<f2", n, pos).astype(np.float32)); pos += 2 * n
        else:
            book_kind, layout, bits, k = struct.unpack_from("<BBBI", raw, pos); pos += 7
            dt = "<f2" if book_kind == 0 else "<f4"
            book = np.frombuffer(raw, dt, k, pos).astype(np.float32); pos += k * np.dtype(dt).itemsize
            if layout == 0:
                nbytes = (n * bits + 7) // 8
                allbits = np.unpackbits(np.frombuffer(raw, np.uint8, nbytes, pos), bitorder="little")
                idx = (allbits[: n * bits].reshape(n, bits).astype(np.int64) << np.arange(bits)).sum(1)
                pos += nbytes
            elif layout == 1:
                idx = np.frombuffer(raw, np.uint8, n, pos); pos += n
            else:
                idx = np.frombuffer(raw, "<u2", n, pos); pos += 2 * n
            out.append(book[idx])
    assert pos == len(raw)
    return out


def _fvsrn_eval(cfg, tensors, pts):
    """pts: (N, 3) normalized z, y, x."""
    c = cfg["channels"]
    d, h, w = cfg["grid"]
    grid = tensors[0].reshape(c, d, h, w)
    pos = [(pts[:, a] + 1) / 2 * (n - 1) for a, n in enumerate((d, h, w))]
    pos = [np.clip(p, 0, n - 1) for p, n in zip(pos, (d, h, w))]
    lo = [np.minimum(np.floor(p).astype(int), n - 2) for p, n in zip(pos, (d, h, w))]
    fr = [p - l for p, l in zip(pos, lo)]
    feat = np.zeros((pts.shape[0], c))
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                wgt = ((fr[0] if dz else 1 - fr[0]) * (fr[1] if dy else 1 - fr[1])
                       * (fr[2] if dx else 1 - fr[2]))
                feat += grid[:, lo[0] + dz, lo[1] + dy, lo[2] + dx].T * wgt[:, None]
    hcur = feat
    rest = tensors[1:]
    for layer in range(cfg["hidden_layers"]):
        wmat = rest[2 * layer].reshape(cfg["width"], -1)
        hcur = np.maximum(hcur @ wmat.T + rest[2 * layer + 1], 0)
    wout, bout = rest[-2].reshape(1, -1), rest[-1]
    return (hcur @ wout.T + bout)[:, 0] + feat[:, 0]


def _fvsrn_shapes(cfg):
    c, wd, hl = cfg["channels"], cfg["width"], cfg["hidden_layers"]
    shapes = [(1, c, *cfg["grid"])]
    prev = c
    for _ in range(hl):
        shapes += [(wd, prev), (wd,)]
        prev = wd
    return shapes + [(1, prev), (1,)]


def _fvsrn_sizes(cfg):
    return [int(np.prod(s)) for s in _fvsrn_shapes(cfg)]


@pytest.fixture(scope="module")
def fvsrn_nv(small_volume):
    return neurvol.encode(small_volume, ratio=5, steps=60, arch="fvsrn", quiet=True)


@pytest.fixture(scope="module")
def fvsrn_pruned_nv(small_volume):
    return neurvol.encode(small_volume, ratio=5, steps=60, arch="fvsrn", quiet=True,
                          codec={"prune": 0.3})


@pytest.fixture(scope="module")
def fvsrn_lorenzo_nv(small_volume):
    return neurvol.encode(small_volume, ratio=5, steps=60, arch="fvsrn", quiet=True,
                          codec={"grids": "lorenzo"})


@pytest.fixture(scope="module")
def fvsrn_interp_nv(small_volume):
    return neurvol.encode(small_volume, ratio=5, steps=60, arch="fvsrn", quiet=True,
                          codec={"grids": "interp"})


@pytest.fixture(scope="module")
def fvsrn_vq_nv(small_volume):
    return neurvol.encode(small_volume, ratio=5, steps=60, arch="fvsrn", quiet=True,
                          codec={"grids": "vq"})


def _golden_fvsrn():
    import os
    return neurvol.open(os.path.join(os.path.dirname(__file__), "golden", "fvsrn_v1.0.nvol"))


@pytest.mark.parametrize("which", ["default", "pruned", "lorenzo", "interp", "vq", "golden_v1"])
def test_independent_decoder_matches_reference(which, request):
    small_nv = {"default": lambda: request.getfixturevalue("fvsrn_nv"),
                "pruned": lambda: request.getfixturevalue("fvsrn_pruned_nv"),
                "lorenzo": lambda: request.getfixturevalue("fvsrn_lorenzo_nv"),
                "interp": lambda: request.getfixturevalue("fvsrn_interp_nv"),
                "vq": lambda: request.getfixturevalue("fvsrn_vq_nv"),
                "golden_v1": _golden_fvsrn}[which]()
    header, payloads = _parse_container(small_nv.to_bytes())
    cfg = header["model"]["config"]
    assert header["model"]["arch"] == "fvsrn"
    assert payloads[0][0] == (1 if which == "golden_v1" else 2)
    tensors = _records(payloads[0], _fvsrn_sizes(cfg), _fvsrn_shapes(cfg))
    if which in ("lorenzo", "interp", "vq"):
        # spec/payload.md §1.3: entries are configs ({"id": name, ...}) or, in older
        # files, names.
        stages = [s["id"] if isinstance(s, dict) else s for s in header["codec"]["pipeline"]]
        assert stages.count(which) == 1
        # the grid decodes bit for bit as the reference decodes it
        grid = small_nv._brick_model(0).state_dict()["grid"].numpy().reshape(-1)
        np.testing.assert_array_equal(tensors[0], grid)
    vol = header["volume"]
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, size=(2000, 3))
    pts[:8] = [[-1, -1, -1], [1, 1, 1], [1, -1, 1], [0, 0, 0], [-1, 1, 0.5], [1, 1, -1], [0.3, 1, 1], [-1, -1, 1]]
    mine = np.clip(vol["min"] + _fvsrn_eval(cfg, tensors, pts) * (vol["max"] - vol["min"]), vol["min"], vol["max"])
    ref = small_nv.query(pts, space="normalized")
    np.testing.assert_allclose(ref, mine, rtol=1e-4, atol=1e-3 * (vol["max"] - vol["min"]))


def test_constant_payload_per_spec():
    vol = np.full((4, 5, 6), 42.5, dtype=np.float32)
    header, payloads = _parse_container(neurvol.encode(vol, ratio=1.01, quiet=True).to_bytes())
    assert payloads[0][0] == 0 and len(payloads[0]) == 9
    assert struct.unpack("<d", payloads[0][1:])[0] == 42.5
    assert "model" not in header
