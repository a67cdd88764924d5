"""Tests of the .nvol container layer (neurvol.container, neurvol._atomic)."""
from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurvol._atomic import atomic_open, atomic_write
from neurvol.container import (FORMAT_VERSION, MAGIC, MAX_BRICKS, MAX_HEADER_BYTES,
                               NvolReader, brick_ids, read_nvol_bytes, serialize_nvol,
                               write_nvol)
from neurvol.errors import (NeurvolFormatError, NeurvolInputError, NeurvolIOError,
                            NeurvolVersionError)

# A small file: 2x1x2 grid, one empty brick, opaque keys, one unknown extra section.
HEADER = {
    "bricks": {"grid": [2, 1, 2], "ghost": 1},
    "volume": {"shape": [4, 4, 8], "dtype": "float32", "name": "héllo"},
    "codec": ["zstd", {"level": 3}],
    "future_key": None,
}
BRICKS = [b"brick-zero", b"", b"brick-two!", b"3"]
EXTRA = {"meta": b'{"note":"x"}'}


@pytest.fixture(scope="module")
def small() -> bytes:
    data = serialize_nvol(HEADER, BRICKS, EXTRA)
    assert 300 <= len(data) <= 600
    return data


def _read_everything(r: NvolReader) -> None:
    for b in range(r.brick_count):
        r.read_brick(b)
    for name in r.section_names:
        r.read_section(name)


def _forge(header_json: bytes, rest: bytes = b"", major: int = 1, minor: int = 0) -> bytes:
    """Preamble + given header bytes + a *correct* header CRC + rest (to reach the JSON
    and section-table checks behind the CRC)."""
    head = struct.pack("<8sHHI", MAGIC, major, minor, len(header_json)) + header_json
    return head + struct.pack("<I", zlib.crc32(head)) + rest


def _reforge(data: bytes, edit) -> bytes:
    """Parse a valid file's header, apply *edit* to the dict, re-emit with valid CRC.

    Offsets are kept as they were, so the edit must keep the header length (or the test
    must expect an offset error)."""
    n = struct.unpack_from("<I", data, 12)[0]
    hdr = json.loads(data[16:16 + n])
    edit(hdr)
    new = json.dumps(hdr, sort_keys=True, separators=(",", ":")).encode()
    rest = data[20 + n:]
    # Shift absolute offsets by the change of header length so only the edit is wrong.
    delta = len(new) - n
    if delta:
        for s in hdr.get("sections", []):
            if isinstance(s, dict) and type(s.get("offset")) is int:
                s["offset"] += delta
        new = json.dumps(hdr, sort_keys=True, separators=(",", ":")).encode()
        assert len(new) - n == delta, "edit changed digit counts; pick another value"
    return _forge(new, rest)


# ---------------------------------------------------------------------------------------
# round trip, determinism, golden bytes

def test_round_trip(small: bytes) -> None:
    r = read_nvol_bytes(small)
    assert r.version == FORMAT_VERSION
    assert r.grid == (2, 1, 2) and r.brick_count == 4
    assert r.file_size == len(small)
    assert r.section_names == ("brick_index", "bricks", "meta")
    assert [r.read_brick(b) for b in range(4)] == BRICKS
    assert r.brick_length(1) == 0
    assert r.read_section("meta") == EXTRA["meta"]
    assert r.read_section("bricks") == b"".join(BRICKS)
    for key in ("volume", "codec", "future_key"):
        assert r.header[key] == HEADER[key]
    assert r.header["bricks"] == HEADER["bricks"]


def test_counters(small: bytes) -> None:
    r = read_nvol_bytes(small)
    assert (r.bricks_read, r.bytes_read) == (0, 0)  # opening reads no payload
    r.read_brick(0)
    r.read_brick(1)
    assert (r.bricks_read, r.bytes_read) == (2, len(BRICKS[0]))


def test_deterministic_and_reserializable(small: bytes) -> None:
    assert serialize_nvol(HEADER, BRICKS, EXTRA) == small
    # Mapping order does not matter: keys are sorted, extras stored by name.
    reordered = dict(reversed(list(HEADER.items())))
    extras = {"b": b"2", "a": b"1"}
    assert serialize_nvol(reordered, BRICKS, extras) == serialize_nvol(
        HEADER, BRICKS, dict(sorted(extras.items())))
    r = read_nvol_bytes(small)
    again = serialize_nvol(r.header, [r.read_brick(b) for b in range(r.brick_count)],
                           {n: r.read_section(n) for n in r.section_names[2:]})
    assert again == small


def test_serialize_does_not_mutate_and_replaces_sections() -> None:
    hdr = {"bricks": {"grid": [1, 1, 1]}, "sections": "junk", "x": [1, 2]}
    before = json.dumps(hdr, sort_keys=True)
    data = serialize_nvol(hdr, [b"a"])
    assert json.dumps(hdr, sort_keys=True) == before
    assert read_nvol_bytes(data).section_names == ("brick_index", "bricks")


# The worked example of spec/nvol.md; must never change for format 1.0.
SPEC_EXAMPLE_HEX = (
    "894e564c0d0a1a0a01000000dd0000007b22627269636b73223a7b2267726964223a5b312c312c325d"
    "7d2c2273656374696f6e73223a5b7b226372633332223a333237313438343236352c226c656e677468"
    "223a33322c226e616d65223a22627269636b5f696e646578222c226f6666736574223a3234317d2c7b"
    "226372633332223a6e756c6c2c226c656e677468223a322c226e616d65223a22627269636b73222c22"
    "6f6666736574223a3237337d2c7b226372633332223a323734353631343134372c226c656e67746822"
    "3a322c226e616d65223a226d657461222c226f6666736574223a3237357d5d7dedf8bbfe0000000000"
    "00000002000000ac2a93d80200000000000000000000000000000068697b7d")


def test_golden_bytes_of_spec_example() -> None:
    data = serialize_nvol({"bricks": {"grid": [1, 1, 2]}}, [b"hi", b""], {"meta": b"{}"})
    assert data.hex() == SPEC_EXAMPLE_HEX
    r = read_nvol_bytes(bytes.fromhex(SPEC_EXAMPLE_HEX))
    assert [r.read_brick(0), r.read_brick(1), r.read_section("meta")] == [b"hi", b"", b"{}"]


# ---------------------------------------------------------------------------------------
# corruption: truncation, bit flips, fuzzing

def test_every_truncation_fails_at_open(small: bytes) -> None:
    for n in range(len(small)):
        with pytest.raises(NeurvolFormatError):
            read_nvol_bytes(small[:n])


def test_truncation_message_says_what_happened(small: bytes) -> None:
    with pytest.raises(NeurvolFormatError, match="truncated"):
        read_nvol_bytes(small[:100])
    with pytest.raises(NeurvolFormatError, match="truncated"):
        read_nvol_bytes(small[:-1])
    with pytest.raises(NeurvolFormatError, match="truncated"):
        read_nvol_bytes(small[:12])
    with pytest.raises(NeurvolFormatError, match="unexpected bytes after"):
        read_nvol_bytes(small + b"\0")


def test_every_single_bit_flip_is_detected(small: bytes) -> None:
    undetected = []
    buf = bytearray(small)
    for pos in range(len(buf)):
        for bit in range(8):
            buf[pos] ^= 1 << bit
            try:
                _read_everything(read_nvol_bytes(bytes(buf)))
                undetected.append((pos, bit))
            except NeurvolFormatError:
                pass
            buf[pos] ^= 1 << bit
    assert undetected == []


def test_corrupt_brick_is_named_and_others_still_readable(small: bytes) -> None:
    r0 = read_nvol_bytes(small)
    start = r0.sections[1].offset  # "bricks" section; brick 2 starts after bricks 0 and 1
    buf = bytearray(small)
    buf[start + len(BRICKS[0]) + 3] ^= 0x10
    r = read_nvol_bytes(bytes(buf))  # opening does not read payloads
    with pytest.raises(NeurvolFormatError, match="brick 2 is corrupted"):
        r.read_brick(2)
    assert r.read_brick(0) == BRICKS[0] and r.read_brick(3) == BRICKS[3]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_mutations_only_raise_format_error(small: bytes, data: st.DataObject) -> None:
    buf = bytearray(small)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "set" and buf:
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif buf:
            del buf[pos:pos + data.draw(st.integers(1, 8))]
    # Half the time, repair the header CRC so the JSON and table checks are exercised.
    if data.draw(st.booleans()) and len(buf) >= 20:
        n = struct.unpack_from("<I", buf, 12)[0]
        if 20 + n <= len(buf):
            buf[16 + n:20 + n] = struct.pack("<I", zlib.crc32(bytes(buf[:16 + n])))
    try:
        _read_everything(read_nvol_bytes(bytes(buf)))
    except NeurvolFormatError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(hdr=st.dictionaries(st.sampled_from(["bricks", "sections", "x"]), json_values,
                           max_size=3),
       tail=st.binary(max_size=64))
def test_arbitrary_header_json_only_raises_format_error(hdr: dict, tail: bytes) -> None:
    raw = json.dumps(hdr).encode("utf-8", "surrogatepass")  # NaN, Infinity and all
    try:
        read_nvol_bytes(_forge(raw, tail))
    except NeurvolFormatError:
        pass


# ---------------------------------------------------------------------------------------
# malformed headers behind a valid CRC: each gets its own message

@pytest.mark.parametrize("raw, match", [
    (b'{"a":1,"a":2}', "twice"),
    (b'{"a":NaN}', "NaN"),
    (b'{"a":-Infinity}', "Infinity"),
    (b'{"a":1e999}', "overflows"),
    (b"[1,2]", "must be an object"),
    (b'{"a":', "not valid JSON"),
    (b'{"a":"\xff"}', "UTF-8"),
    (b'{"a":"\\ud800"}', "surrogate"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply|must be an object"),
    (b'{"a":' + b"9" * 5000 + b"}", "not valid JSON"),
    (b"{}", '"sections"'),
])
def test_bad_header_json(raw: bytes, match: str) -> None:
    with pytest.raises(NeurvolFormatError, match=match):
        read_nvol_bytes(_forge(raw))


def _sec(tbl_edit):
    def edit(h):
        tbl_edit(h["sections"])
    return edit


@pytest.mark.parametrize("edit, match", [
    (_sec(lambda s: s[0].__setitem__("length", True)), "non-negative integer"),
    (_sec(lambda s: s[0].__setitem__("length", 96.0)), "non-negative integer"),
    (_sec(lambda s: s[2].__setitem__("crc32", None)), "crc32"),
    (_sec(lambda s: s[1].__setitem__("crc32", 1)), "crc32 null"),
    (_sec(lambda s: s[2].__setitem__("crc32", 2**33)), "32 bits"),
    (_sec(lambda s: s[2].__setitem__("name", "bricks")), "twice"),
    (_sec(lambda s: s[2].__setitem__("name", "")), "name"),
    (_sec(lambda s: s.pop()), "unexpected bytes"),
    (_sec(lambda s: s.__setitem__(slice(0, 2), [s[1], s[0]])), "starts at byte"),
    (_sec(lambda s: s[0].__setitem__("offset", s[0]["offset"] + 1)), "starts at byte"),
    (lambda h: h.__setitem__("sections", {}), '"sections" list'),
    (lambda h: h.__setitem__("sections", [1, 2]), "not an object"),
    (lambda h: h.__delitem__("bricks"), '"bricks" object'),
    (lambda h: h["bricks"].__setitem__("grid", [2, 1]), "3 positive"),
    (lambda h: h["bricks"].__setitem__("grid", [2, 0, 2]), "3 positive"),
    (lambda h: h["bricks"].__setitem__("grid", [2, 1, True]), "3 positive"),
    (lambda h: h["bricks"].__setitem__("grid", [2.0, 1, 2]), "3 positive"),
    (lambda h: h["bricks"].__setitem__("grid", [3, 1, 1]), "brick_index is 64 bytes"),
    (lambda h: h["bricks"].__setitem__("grid", [2**12, 2**12, 2]), "limit"),
])
def test_bad_section_table_and_grid(small: bytes, edit, match: str) -> None:
    with pytest.raises(NeurvolFormatError, match=match):
        read_nvol_bytes(_reforge(small, edit))


def test_required_sections_first() -> None:
    # Only the brick index and bricks are checked by position; swapping an extra with
    # "bricks" is caught (by offset/contiguity or by position).
    data = serialize_nvol({"bricks": {"grid": [1, 1, 1]}}, [b"x"], {"a": b"yy"})

    def swap(h):
        s = h["sections"]
        s[1], s[2] = dict(s[2], offset=s[1]["offset"]), dict(s[1], offset=s[1]["offset"] + 2)
    with pytest.raises(NeurvolFormatError):
        read_nvol_bytes(_reforge(data, swap))


def test_bad_brick_index(small: bytes) -> None:
    rec = np.frombuffer(read_nvol_bytes(small).read_section("brick_index"),
                        dtype=[("o", "<u8"), ("l", "<u4"), ("c", "<u4")]).copy()
    gap = rec.copy()
    gap["o"][2] += 1
    with pytest.raises(NeurvolFormatError, match="entry 2 has offset"):
        read_nvol_bytes(_forge_index(small, gap.tobytes()))
    short = rec.copy()
    short["l"][3] = 0
    short["c"][3] = 0
    with pytest.raises(NeurvolFormatError, match="sum to"):
        read_nvol_bytes(_forge_index(small, short.tobytes()))
    empty = rec.copy()
    empty["c"][1] = 7
    with pytest.raises(NeurvolFormatError, match="empty brick 1"):
        read_nvol_bytes(_forge_index(small, empty.tobytes()))


def _forge_index(data: bytes, index: bytes) -> bytes:
    r = read_nvol_bytes(data)
    sec = r.sections[0]
    body = data[:sec.offset] + index + data[sec.offset + sec.length:]
    crc = zlib.crc32(index)
    # A crc32 with another digit count would shift offsets; _reforge handles the shift.
    return _reforge(body, lambda h: h["sections"][0].__setitem__("crc32", crc))


# ---------------------------------------------------------------------------------------
# versions, foreign files, caps

def test_unknown_major_version(small: bytes) -> None:
    for major in (0, 2, 65535):
        data = bytearray(small)
        data[8:10] = struct.pack("<H", major)
        with pytest.raises(NeurvolVersionError, match=rf"version {major}\.0.*upgrade"):
            read_nvol_bytes(bytes(data))


def test_newer_minor_accepted_and_unknown_keys_ignored() -> None:
    hdr = {"bricks": {"grid": [1, 1, 1], "new_thing": [1]}, "zz_future": {"a": 1}}
    body = serialize_nvol(hdr, [b"q"], {"future_section": b"..."})
    n = struct.unpack_from("<I", body, 12)[0]
    data = _forge(body[16:16 + n], body[20 + n:], minor=7)
    r = read_nvol_bytes(data)
    assert r.version == (1, 7)
    assert r.header["zz_future"] == {"a": 1}
    assert r.read_brick(0) == b"q"


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"hello world, not a volume at all\n", "text file"),
    (b"hi", "text file"),
    (b"\x89HDF\r\n\x1a\n" + bytes(64), "HDF5"),
    (b"PK\x03\x04" + bytes(64), "zip"),
    (MAGIC[:5], "truncated"),
    (MAGIC.replace(b"\r\n", b"\n") + bytes(64), "text-mode"),
])
def test_foreign_files(content: bytes, match: str) -> None:
    with pytest.raises(NeurvolFormatError, match=match):
        read_nvol_bytes(content)


def test_npy_file_says_use_pack() -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 4, 4), np.float32))
    with pytest.raises(NeurvolFormatError, match=r"\.npy file.*neurvol pack"):
        read_nvol_bytes(buf.getvalue())


def test_header_length_cap(small: bytes) -> None:
    data = bytearray(small)
    data[12:16] = struct.pack("<I", MAX_HEADER_BYTES + 1)
    with pytest.raises(NeurvolFormatError, match="exceeds"):
        read_nvol_bytes(bytes(data))
    data[12:16] = struct.pack("<I", 5000)
    with pytest.raises(NeurvolFormatError, match="declares 5000 bytes"):
        read_nvol_bytes(bytes(data))
    with pytest.raises(NeurvolInputError, match="limit"):
        serialize_nvol({"bricks": {"grid": [1, 1, 1]}, "x": "a" * MAX_HEADER_BYTES}, [b""])


@pytest.mark.parametrize("hdr, bricks, extra, match", [
    ({}, [b""], None, "grid"),
    ({"bricks": {"grid": [1, 1]}}, [b""], None, "3 ints"),
    ({"bricks": {"grid": [1, 1, 2]}}, [b""], None, "needs 2 bricks"),
    ({"bricks": {"grid": [1, 1, np.int64(1)]}}, [b""], None, "plain ints"),
    ({"bricks": {"grid": [MAX_BRICKS, 1, 2]}}, [], None, "at most"),
    ({"bricks": {"grid": [1, 1, 1]}, "x": np.float32(1)}, [b""], None, "numpy"),
    ({"bricks": {"grid": [1, 1, 1]}, "x": float("nan")}, [b""], None, "NaN"),
    ({"bricks": {"grid": [1, 1, 1]}, "x": {1: 2}}, [b""], None, "non-string key"),
    ({"bricks": {"grid": [1, 1, 1]}}, ["str"], None, "must be bytes"),
    ({"bricks": {"grid": [1, 1, 1]}}, [b""], {"bricks": b""}, "reserved"),
    ({"bricks": {"grid": [1, 1, 1]}}, [b""], {"": b""}, "non-empty"),
])
def test_serialize_rejects_bad_input(hdr, bricks, extra, match: str) -> None:
    with pytest.raises(NeurvolInputError, match=match):
        serialize_nvol(hdr, bricks, extra)


# ---------------------------------------------------------------------------------------
# file reader

def test_file_reader_lazy_threadsafe(tmp_path, small: bytes) -> None:
    path = tmp_path / "f.nvol"
    assert write_nvol(path, HEADER, BRICKS, EXTRA) == len(small)
    assert path.read_bytes() == small
    with NvolReader(path) as r:
        assert r.bytes_read == 0
        with ThreadPoolExecutor(8) as ex:
            got = list(ex.map(r.read_brick, [b % 4 for b in range(200)]))
        assert got == [BRICKS[b % 4] for b in range(200)]
        assert r.bricks_read == 200
        assert r.bytes_read == sum(len(BRICKS[b % 4]) for b in range(200))
        with pytest.raises(IndexError):
            r.read_brick(4)
        with pytest.raises(KeyError, match="no section"):
            r.read_section("nope")
    with pytest.raises(ValueError):
        r.read_brick(0)


def test_file_shrunk_while_open(tmp_path, small: bytes) -> None:
    path = tmp_path / "f.nvol"
    path.write_bytes(small)
    with NvolReader(str(path)) as r:
        with open(path, "r+b") as f:
            f.truncate(len(small) - 20)
        with pytest.raises(NeurvolFormatError, match="truncated or replaced"):
            r.read_section("meta")


def test_open_missing_or_directory(tmp_path) -> None:
    with pytest.raises(NeurvolIOError, match="no such file"):
        NvolReader(tmp_path / "missing.nvol")
    with pytest.raises(NeurvolIOError, match="directory"):
        NvolReader(tmp_path)


# ---------------------------------------------------------------------------------------
# brick hash

def _ref_id(z: float, y: float, x: float, grid) -> int:
    k_n, j_n, i_n = grid
    ax = [min(max(int(np.floor(n * (c + 1.0) / 2.0)), 0), n - 1)
          for c, n in ((x, i_n), (y, j_n), (z, k_n))]
    return ax[0] + i_n * ax[1] + i_n * j_n * ax[2]


def test_brick_hash_matches_formula() -> None:
    rng = np.random.default_rng(0)
    grid = (3, 4, 5)
    pts = rng.uniform(-1.2, 1.2, size=(2000, 3))
    faces = np.array([[-1, -1, -1], [1, 1, 1], [1, -1, 1], [0, 0, 0],
                      [-1 / 3, -0.5, -0.6], [1 / 3, 0.5, 0.6], [-0.2, 0.0, 0.2]])
    pts = np.concatenate([pts, faces])
    ids = brick_ids(pts, grid)
    assert ids.dtype == np.int64 and ids.shape == (len(pts),)
    assert ids.tolist() == [_ref_id(*p, grid) for p in pts]
    # = C-order ravel of (k, j, i) in shape (K, J, I)
    assert brick_ids(np.array([[1.0, 1.0, 1.0]]), grid)[0] == 3 * 4 * 5 - 1
    assert brick_ids(np.array([[-1.0, -1.0, -1.0]]), grid)[0] == 0


def test_brick_hash_faces_and_edges() -> None:
    grid = (2, 2, 4)
    # x faces at -0.5, 0, 0.5: the upper brick owns a face; +1.0 the last brick.
    xs = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, np.nextafter(-0.5, -1)])
    pts = np.stack([np.full_like(xs, -1.0), np.full_like(xs, -1.0), xs], axis=1)
    assert brick_ids(pts, grid).tolist() == [0, 1, 2, 3, 3, 0]
    z_face = np.array([[0.0, 0.0, -1.0]])  # k=1, j=1, i=0
    assert brick_ids(z_face, grid).tolist() == [1 * 8 + 1 * 4 + 0]
    assert brick_ids(z_face.astype(np.float32), grid).tolist() == [12]
    assert brick_ids(np.array([[5.0, -5.0, 2.0]]), grid).tolist() == [8 + 3]  # clamped
    assert brick_ids(np.zeros((0, 3)), grid).shape == (0,)


def test_brick_hash_rejects_bad_input() -> None:
    with pytest.raises(NeurvolInputError, match="finite"):
        brick_ids(np.array([[0.0, np.nan, 0.0]]), (1, 1, 1))
    with pytest.raises(NeurvolInputError, match=r"\(N, 3\)"):
        brick_ids(np.zeros((3, 2)), (1, 1, 1))
    with pytest.raises(NeurvolInputError, match="positive"):
        brick_ids(np.zeros((1, 3)), (1, 0, 1))


# ---------------------------------------------------------------------------------------
# atomic writes

def _leftovers(directory) -> list:
    return [p for p in os.listdir(directory) if ".tmp-" in p]


def test_atomic_write_failure_keeps_old_file(tmp_path) -> None:
    target = tmp_path / "out.nvol"
    target.write_bytes(b"old content")

    def chunks():
        yield b"new "
        yield b"partial"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, chunks())
    assert target.read_bytes() == b"old content"
    assert _leftovers(tmp_path) == []

    def interrupted():
        yield b"x"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted())
    assert target.read_bytes() == b"old content"
    assert _leftovers(tmp_path) == []


def test_atomic_write_and_open_success(tmp_path) -> None:
    target = tmp_path / "out.bin"
    atomic_write(target, b"abc")
    assert target.read_bytes() == b"abc"
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    os.chmod(target, 0o640)
    with atomic_open(target) as f:
        f.write(b"de")
        f.write(b"f")
    assert target.read_bytes() == b"def"
    assert target.stat().st_mode & 0o777 == 0o640  # existing mode kept
    with pytest.raises(ValueError):
        with atomic_open(target) as f:
            f.write(b"zzz")
            raise ValueError("stop")
    assert target.read_bytes() == b"def"
    assert _leftovers(tmp_path) == []


def test_atomic_write_missing_dir_or_target_is_dir(tmp_path) -> None:
    with pytest.raises(NeurvolIOError, match="does not exist.*mkdir"):
        atomic_write(tmp_path / "nope" / "f.nvol", b"x")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NeurvolIOError, match="not a directory"):
        atomic_write(tmp_path / "file" / "f.nvol", b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(NeurvolIOError, match="directory"):
        atomic_write(tmp_path / "d", b"x")
    assert _leftovers(tmp_path) == []


def test_atomic_write_unwritable_dir_simulated(tmp_path, monkeypatch) -> None:
    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", deny)
    with pytest.raises(NeurvolIOError, match="no permission.*writable"):
        atomic_write(tmp_path / "f.nvol", b"x")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_atomic_write_unwritable_dir_real(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(NeurvolIOError, match="writable"):
            write_nvol(ro / "f.nvol", {"bricks": {"grid": [1, 1, 1]}}, [b""])
    finally:
        ro.chmod(0o700)


def test_write_nvol_failure_keeps_existing(tmp_path, small: bytes) -> None:
    target = tmp_path / "f.nvol"
    target.write_bytes(small)
    with pytest.raises(NeurvolInputError):
        write_nvol(target, {"bricks": {"grid": [1, 1, 1]}}, [b"a", b"b"])
    assert target.read_bytes() == small
    assert _leftovers(tmp_path) == []


def test_container_does_not_import_torch() -> None:
    # Static check: importing neurvol itself may pull torch in via other layers.
    import ast
    import pathlib
    import neurvol.container as pkg
    files = list(pathlib.Path(pkg.__file__).parent.glob("*.py"))
    files.append(pathlib.Path(pkg.__file__).parent.parent / "_atomic.py")
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "torch" for n in names), f
