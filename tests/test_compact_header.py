"""The compact header of format 1.4 (spec/nvol.md §3.3): layout, round trips, the fixed
overhead it buys, and every refusal of §7 step 6 as a clean NeurvolError."""
from __future__ import annotations

import hashlib
import os
import struct
import zlib

import numpy as np
import pytest
import zstandard

import neurvol
from neurvol import NeurvolFormatError, NeurvolVersionError
from neurvol.container import MAGIC, NvolReader, read_nvol_bytes, serialize_nvol
from neurvol.container import compact as C
from neurvol.container.format import COMPACT_MINOR

import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz"))
import nvol_fuzzlib as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Issue 22's limit on the fixed overhead (file bytes minus payload bytes).
MAX_OVERHEAD = 128

HEADER = {"volume": {"shape": [66, 66, 66], "dtype": "|u1", "min": 0.0, "max": 255.0,
                     "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0]},
          "bricks": {"grid": [1, 1, 1]},
          "codec": {"name": "neurvol", "version": 2,
                    "pipeline": [{"id": "rate", "weight": 12.0}, "kmeans",
                                 {"grid_bits": 2.0, "id": "interp"}, "finetune", "rans", "zstd"]},
          "model": {"arch": "amgsrn", "config": {"channels": 1, "grid": [9, 8, 8], "grids": 8,
                                                  "hidden_layers": 2, "width": 16}},
          "fit": {"k": 64, "psnr": 32.227, "steps": 2000},
          "budget": {"ratio": 100.0, "bytes": 2874},
          "writer": "neurvol 0.1.0"}


def _compact(header=HEADER, payload=b"weights!"):
    return serialize_nvol(header, [payload], minor=COMPACT_MINOR)


def _without_sections(h):
    return {k: v for k, v in h.items() if k != "sections"}


def test_dictionary_is_the_spec_file_and_its_digest():
    spec = open(os.path.join(ROOT, "spec", "nvol-header-dict-1.bin"), "rb").read()
    pkg = open(os.path.join(os.path.dirname(C.__file__), C.DICTIONARIES[1][0]), "rb").read()
    assert spec == pkg
    assert hashlib.sha256(spec).hexdigest() == C.DICTIONARIES[1][1]
    assert C.DICTIONARIES[1][1] in open(os.path.join(ROOT, "spec", "nvol.md")).read()
    assert not spec.startswith(b"\x37\xa4\x30\xec")   # a raw-content dictionary, not zstd's format


def test_layout_and_round_trip():
    data = _compact()
    magic, major, minor, n = struct.unpack_from("<8sHHI", data)
    assert (magic, major, minor) == (MAGIC, 1, COMPACT_MINOR)
    marker, dict_id, crc = struct.unpack_from("<BBI", data, 16)
    assert (marker, dict_id, crc) == (0xFF, 1, zlib.crc32(b"weights!"))
    assert struct.unpack_from("<I", data, 16 + n)[0] == zlib.crc32(data[:16 + n])
    assert data[20 + n:] == b"weights!"
    r = read_nvol_bytes(data)
    assert r.version == (1, COMPACT_MINOR) and r.grid == (1, 1, 1) and r.brick_count == 1
    assert r.read_brick(0) == b"weights!"
    assert _without_sections(r.header) == HEADER
    assert [(s.name, s.offset, s.length, s.crc32) for s in r.sections] == [
        ("brick_index", 20 + n, 0, 0), ("bricks", 20 + n, 8, None)]
    assert r.read_section("brick_index") == b""
    # Rewriting what was read gives the same bytes (NeuralVolume.save passes the minor).
    assert serialize_nvol(_without_sections(r.header), [b"weights!"], minor=r.version[1]) == data
    # The frame's content is the reduced header: implied keys and defaults left out.
    frame = C.ZSTD_MAGIC + data[22:16 + n]
    text = zstandard.ZstdDecompressor(dict_data=C._dictionary(1)).decompress(frame)
    assert b"spacing" not in text and b"bricks" not in text and b'"name"' not in text


#: The compact example of spec/nvol.md §3.3.
SPEC_COMPACT_HEX = ("894e564c0d0a1a0a010004001800000" "0ff01ac2a93d820196d0000207b78227d"
                    "02004839b015eb0a37bf1c556869")


def test_spec_example_reads():
    data = bytes.fromhex(SPEC_COMPACT_HEX)
    r = read_nvol_bytes(data)
    assert len(data) == 46 and r.version == (1, COMPACT_MINOR)
    assert _without_sections(r.header) == {"bricks": {"grid": [1, 1, 1]}, "writer": "x",
                                           "codec": {"name": "neurvol", "version": 2}}
    assert r.read_brick(0) == b"hi"
    # The writer's file of the same header reads the same (its bytes may differ with the
    # zstd release, §3.3).
    again = read_nvol_bytes(serialize_nvol(_without_sections(r.header), [b"hi"],
                                           minor=COMPACT_MINOR))
    assert again.header == r.header and again.read_brick(0) == b"hi"


def test_fixed_overhead_of_a_typical_header_is_small():
    assert len(_compact()) - len(b"weights!") <= MAX_OVERHEAD
    assert len(serialize_nvol(HEADER, [b"weights!"])) - 8 > 4 * MAX_OVERHEAD   # JSON form


def test_a_value_equal_to_a_default_only_as_a_number_is_stored():
    header = dict(HEADER, volume=dict(HEADER["volume"], spacing=[1, 1, 1]))
    data = _compact(header)
    assert data[16] == 0xFF
    assert _without_sections(read_nvol_bytes(data).header) == header   # ints, as written


def test_empty_brick():
    r = read_nvol_bytes(_compact(payload=b""))
    assert r.read_brick(0) == b"" and r.brick_length(0) == 0


@pytest.mark.parametrize("header,why", [
    (dict(HEADER, bricks={"grid": [1, 1, 1], "ghost": 2}), "bricks entry beyond the grid"),
    (dict(HEADER, volume={k: v for k, v in HEADER["volume"].items() if k != "spacing"}),
     "a reader would restore the default spacing"),
    (dict(HEADER, big="x" * (C.MAX_COMPACT_JSON_BYTES + 1)), "longer than the cap"),
])
def test_headers_a_compact_form_cannot_hold_keep_json(header, why):
    data = _compact(header)
    r = read_nvol_bytes(data)
    assert data[16:17] == b"{", why
    assert r.version == (1, COMPACT_MINOR) and _without_sections(r.header) == header


def test_files_with_extra_sections_or_bricks_keep_json():
    hdr = dict(HEADER, bricks={"grid": [1, 1, 2]})
    assert serialize_nvol(hdr, [b"a", b"b"], minor=COMPACT_MINOR)[16:17] == b"{"
    assert serialize_nvol(HEADER, [b"a"], {"extra": b"x"}, minor=COMPACT_MINOR)[16:17] == b"{"
    # Older minors are JSON whatever the file.
    assert serialize_nvol(HEADER, [b"a"])[16:17] == b"{"


def test_every_bit_flip_and_cut_is_detected():
    data = _compact()
    n = struct.unpack_from("<I", data, 12)[0]
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        try:
            r = read_nvol_bytes(bytes(bad))
        except neurvol.NeurvolError:
            continue
        assert i // 8 >= 20 + n, i          # only a payload flip opens...
        with pytest.raises(NeurvolFormatError, match="CRC"):
            r.read_brick(0)                 # ...and it is caught when the brick is read
    for cut in range(len(data)):
        try:
            r = read_nvol_bytes(data[:cut])
        except neurvol.NeurvolError:
            continue
        with pytest.raises(NeurvolFormatError):
            r.read_brick(0)


def _frame(text: bytes, **kw) -> bytes:
    return zstandard.ZstdCompressor(dict_data=C._dictionary(1), write_dict_id=False,
                                    write_checksum=False, **kw).compress(text)


BRICK = b"payload"
CRC = zlib.crc32(BRICK)
REDUCED = {"volume": HEADER["volume"], "writer": "x"}


def _lying_size(frame: bytes, declared: int) -> bytes:
    """*frame* (single segment, 1-byte size) with its declared content size replaced."""
    assert frame[4] & 0xE0 == 0x20 and frame[4] & 0xC0 == 0   # single segment, FCS 1 byte
    return frame[:5] + bytes([declared]) + frame[6:]


HOSTILE = {
    "lying size (smaller)": (lambda: F.forge_compact(None, CRC, BRICK, frame=_lying_size(
        _frame(b'{"writer":"neurvol 0.1.0"}'), 10)), "valid zstd frame|holds"),
    "lying size (larger)": (lambda: F.forge_compact(None, CRC, BRICK, frame=_lying_size(
        _frame(b'{"writer":"neurvol 0.1.0"}'), 200)), "valid zstd frame|holds"),
    "no declared size": (lambda: F.forge_compact(None, CRC, BRICK, frame=_frame(
        b'{"writer":"x"}', write_content_size=False)), "declares no size"),
    "past the cap": (lambda: F.forge_compact(None, CRC, BRICK, frame=_frame(
        b'{"a":"' + b" " * C.MAX_COMPACT_JSON_BYTES + b'"}')), "at most 65536"),
    "past the cap, size hidden": (lambda: F.forge_compact(None, CRC, BRICK, frame=_frame(
        b'{"a":"' + b" " * (1 << 20) + b'"}', write_content_size=False)), "declares no size"),
    "junk after the frame": (lambda: F.forge_compact(None, CRC, BRICK, frame=_frame(
        b'{"writer":"x"}') + b"\x00junk"), "valid zstd frame|holds"),
    "a skippable frame after": (lambda: F.forge_compact(None, CRC, BRICK, frame=_frame(
        b'{"writer":"x"}') + struct.pack("<II", 0x184D2A50, 3) + b"abc"), "after its zstd frame"),
    "a second frame": (lambda: F.forge_compact(None, CRC, BRICK, frame=_frame(
        b'{"writer":"x"}') + _frame(b'{"writer":"x"}')[4:]), "valid zstd frame|holds"),
    "reserved frame bit": (lambda: F.forge_compact(None, CRC, BRICK, frame=C.ZSTD_MAGIC + b"\x08\x00"),
                           "not a valid zstd frame"),
    "frame header cut": (lambda: F.forge_compact(None, CRC, BRICK, frame=C.ZSTD_MAGIC + b"\xe0\x01"),
                         "not a valid zstd frame"),
    "corrupt block": (lambda: F.forge_compact(None, CRC, BRICK, frame=_frame(
        b'{"writer":"neurvol 0.1.0"}')[:-3] + b"\xff\xff\xff"), "valid zstd frame|holds"),
    "prefix cut": (lambda: _forge_raw(b"\xff\x01\x00"), "shorter than its 6-byte prefix"),
    "bricks stored": (lambda: F.forge_compact(dict(REDUCED, bricks={"grid": [2, 2, 2]}), CRC, BRICK),
                      "implies"),
    "sections stored": (lambda: F.forge_compact(dict(REDUCED, sections=[]), CRC, BRICK), "implies"),
    "not an object": (lambda: F.forge_compact([1, 2], CRC, BRICK), "must be an object"),
    "duplicate keys": (lambda: F.forge_compact(None, CRC, BRICK, frame=_frame(
        b'{"a":1,"a":2}')), "twice"),
    "old minor": (lambda: F.forge_compact(REDUCED, CRC, BRICK, minor=3), "declares version 1.3"),
    "empty brick with a crc": (lambda: F.forge_compact(REDUCED, 5, b""), "non-zero crc32"),
}


def _forge_raw(raw: bytes) -> bytes:
    head = struct.pack("<8sHHI", MAGIC, 1, COMPACT_MINOR, len(raw)) + raw
    return head + struct.pack("<I", zlib.crc32(head)) + BRICK


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_compact_headers_are_refused(case):
    build, message = HOSTILE[case]
    with pytest.raises(NeurvolFormatError, match=message):
        NvolReader(build())


@pytest.mark.parametrize("marker", [0x80, 0xC0, 0xFD])
def test_reserved_header_encodings_are_a_version_error(marker):
    raw = bytes([marker]) + b"\x01anything"
    with pytest.raises(NeurvolVersionError, match=f"{marker:#04x}.*upgrade"):
        NvolReader(_forge_raw(raw))


def test_json_header_with_a_bad_byte_later_is_still_a_format_error():
    with pytest.raises(NeurvolFormatError, match="UTF-8"):
        NvolReader(_forge_raw(b'{"a":"\xff"}'))


@pytest.mark.parametrize("dict_id", [0, 2, 255])
def test_unknown_dictionary_is_a_version_error(dict_id):
    data = F.forge_compact(REDUCED, CRC, BRICK, dict_id=dict_id)
    with pytest.raises(NeurvolVersionError, match=f"dictionary {dict_id}.*upgrade"):
        NvolReader(data)


def test_forged_reduced_header_reads_like_the_writers():
    r = NvolReader(F.forge_compact(REDUCED, CRC, BRICK))
    assert _without_sections(r.header) == dict(REDUCED, volume=HEADER["volume"],
                                               bricks={"grid": [1, 1, 1]})


def test_a_reader_of_1_0_to_1_3_refuses_a_compact_file():
    """What such a reader does with the header bytes (spec/nvol.md §6): UTF-8 fails at
    the marker, so the file is refused at step 6, never misread."""
    from neurvol.container._json import parse_header
    data = _compact()
    n = struct.unpack_from("<I", data, 12)[0]
    with pytest.raises(NeurvolFormatError, match="not valid UTF-8 \\(byte 0"):
        parse_header(data[16:16 + n])


def test_encoder_writes_compact_files_and_counts_their_overhead():
    vol = np.ascontiguousarray(neurvol.sample_volume()[26:36, 24:36, 22:36]).astype(np.float32)
    nv = neurvol.encode(vol, ratio=3, steps=10, seed=0, quiet=True, arch="fvsrn")
    data = nv.to_bytes()
    r = read_nvol_bytes(data)
    assert r.version == (1, COMPACT_MINOR) and data[16] == 0xFF
    assert len(data) - r.brick_length(0) <= MAX_OVERHEAD
    assert len(data) <= nv.header["budget"]["bytes"]
    # Re-saving keeps the bytes; the JSON form of the same file decodes the same.
    again = neurvol.NeuralVolume(NvolReader(data))
    assert again.to_bytes() == data
    old = neurvol.NeuralVolume(NvolReader(F.as_json_file(data)))
    assert old._reader.version == (1, 0)
    np.testing.assert_array_equal(old.decode(), again.decode())


def test_sizing_placeholders_never_compress_below_real_values():
    """The encoder sizes a file with placeholder "fit" values (plus FIT_JITTER bytes);
    the real header must not come out longer than that once compressed (a file at its
    budget would then be refused after the fit)."""
    from neurvol.encoding.plan import FIT_JITTER, FIT_PLACEHOLDER
    small = dict(HEADER, model={"arch": "fvsrn", "config": {"channels": 4, "grid": [5, 5, 4],
                                                            "hidden_layers": 2, "width": 8}},
                 volume=dict(HEADER["volume"], dtype="<f4", max=3.140625))
    rng = np.random.default_rng(0)
    worst = -FIT_JITTER
    for i in range(600):
        header = (HEADER, small, dict(HEADER, codec={"name": "neurvol", "version": 2}))[i % 3]
        real = {"steps": int(rng.choice([10, 40, 200, 1500, 2000, int(rng.integers(1, 10 ** 9))])),
                "k": int(rng.choice([16, 64, 256, int(rng.integers(1, 65537))])),
                "psnr": [None, round(float(rng.uniform(-99, 200)), 3)][i % 5 > 0]}
        placeholder = dict(FIT_PLACEHOLDER, steps=real["steps"])
        grow = len(_compact(dict(header, fit=real))) - len(_compact(dict(header, fit=placeholder)))
        worst = max(worst, grow)
    assert worst <= FIT_JITTER - 2     # a margin beyond the worst case seen
