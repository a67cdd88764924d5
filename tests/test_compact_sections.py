"""The compact header with extra sections (format 1.5, spec/nvol.md §3.4): one-brick files
with sections (error-bounded files) store their header and section table in a few dozen
bytes, read back exactly as the JSON form, and damaged tables are refused."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

import neurvol
from neurvol.container import NvolReader, serialize_nvol
from neurvol.container import compact as C
from neurvol.container.format import COMPACT_SECTIONS_MINOR
from neurvol.errors import NeurvolFormatError

HEADER = {"bricks": {"grid": [1, 1, 1]}, "codec": {"name": "neurvol", "version": 2},
          "bound": {"max_error": 2.0, "rel_error": None, "section": "correction"},
          "writer": "test"}
BRICK, EXTRA, MORE = b"brick!", b"correction bytes", b"\x00\x01"


def _file(extras=None, minor=COMPACT_SECTIONS_MINOR):
    extras = {"correction": EXTRA} if extras is None else extras
    return serialize_nvol(HEADER, [BRICK], extras, minor=minor)


def _sections(r):
    return [(s.name, s.offset, s.length, s.crc32) for s in r.sections]


def test_sections_file_is_compact_and_reads_as_the_json_form():
    data = _file({"correction": EXTRA, "more": MORE})
    assert data[16] == C.COMPACT_SECTIONS_MARKER
    compact = NvolReader(data)
    json_form = NvolReader(_file({"correction": EXTRA, "more": MORE}, minor=2))
    assert json_form.version == (1, 2) and compact.version == (1, COMPACT_SECTIONS_MINOR)
    assert compact.read_section("correction") == EXTRA
    assert compact.read_section("more") == MORE
    assert compact.read_brick(0) == BRICK
    without = {k: v for k, v in compact.header.items() if k != "sections"}
    assert without == {k: v for k, v in json_form.header.items() if k != "sections"}
    # The same sections, each where the file's bytes put it.
    names = [s[0] for s in _sections(compact)]
    assert names == ["brick_index", "bricks", "correction", "more"]
    for name, offset, length, _ in _sections(compact)[2:]:
        assert data[offset:offset + length] == {"correction": EXTRA, "more": MORE}[name]
    assert len(data) < len(_file({"correction": EXTRA, "more": MORE}, minor=2)) - 150


def test_only_format_1_5_writes_it():
    assert _file(minor=4)[16:17] == b"{"
    assert _file(minor=COMPACT_SECTIONS_MINOR)[16] == C.COMPACT_SECTIONS_MARKER


def test_a_1_4_reader_refuses_the_marker_as_a_newer_encoding():
    """spec/nvol.md §6: 0xFE is in the range 1.4 readers refuse with a version error."""
    assert C.COMPACT_SECTIONS_MARKER >= C.RESERVED_MARKERS
    assert C.COMPACT_SECTIONS_MARKER != C.COMPACT_MARKER


def _forge(raw: bytes, tail: bytes, minor: int = COMPACT_SECTIONS_MINOR) -> bytes:
    head = struct.pack("<8sHHI", b"\x89NVL\r\n\x1a\n", 1, minor, len(raw)) + raw
    return head + struct.pack("<I", zlib.crc32(head)) + tail


def _split(data: bytes):
    n = struct.unpack_from("<I", data, 12)[0]
    return data[16:16 + n], data[20 + n:]


def _table(brick_len, entries):
    out = bytearray(C._varint(brick_len)) + bytes([len(entries)])
    for name, crc, length in entries:
        out += bytes([len(name)]) + name + struct.pack("<I", crc) + C._varint(length)
    return bytes(out)


def _with_table(table: bytes, tail=None):
    raw, good_tail = _split(_file())
    frame_at = C.COMPACT_PREFIX.size + len(_table(len(BRICK), [(b"correction", 0, len(EXTRA))]))
    return _forge(raw[:C.COMPACT_PREFIX.size] + table + raw[frame_at:],
                  good_tail if tail is None else tail)


def test_the_forged_table_of_a_valid_file_reads():
    crc = zlib.crc32(EXTRA)
    r = NvolReader(_with_table(_table(len(BRICK), [(b"correction", crc, len(EXTRA))])))
    assert r.read_section("correction") == EXTRA


@pytest.mark.parametrize("table,message", [
    (lambda crc: _table(len(BRICK), [(b"correction", crc, len(EXTRA) + 1)]), "describe"),
    (lambda crc: _table(len(BRICK) + 1, [(b"correction", crc, len(EXTRA))]), "describe"),
    (lambda crc: _table(len(BRICK), []), "no section"),
    (lambda crc: _table(len(BRICK), [(b"bricks", crc, len(EXTRA))]), "twice"),
    (lambda crc: _table(len(BRICK), [(b"a", crc, 8), (b"a", crc, len(EXTRA) - 8)]), "twice"),
    (lambda crc: _table(len(BRICK), [(b"\xff", crc, len(EXTRA))]), "UTF-8"),
    (lambda crc: _table(len(BRICK), [(b"", crc, len(EXTRA))]), "truncated"),
    (lambda crc: C._varint(len(BRICK)) + b"\x01\xfacorr", "truncated"),
    (lambda crc: b"\xff\xff\xff\xff\xff\xff", "overlong"),
])
def test_damaged_section_tables_are_format_errors(table, message):
    with pytest.raises(NeurvolFormatError, match=message):
        NvolReader(_with_table(table(zlib.crc32(EXTRA))))


def test_a_damaged_section_is_caught_by_its_crc():
    data = bytearray(_file())
    data[-1] ^= 0x01
    r = NvolReader(bytes(data))
    with pytest.raises(NeurvolFormatError, match="(?i)crc|checksum"):
        r.read_section("correction")


def test_the_marker_under_an_older_minor_is_corrupt():
    raw, tail = _split(_file())
    with pytest.raises(NeurvolFormatError, match="1.5"):
        NvolReader(_forge(raw, tail, minor=4))


def test_error_bounded_files_are_written_compactly():
    vol = neurvol.sample_volume()[20:36, 20:36, 20:36]
    nv = neurvol.encode(vol, rel_error=0.05, model_ratios=(), quiet=True)
    data = nv.to_bytes()
    assert data[16] == C.COMPACT_SECTIONS_MARKER
    assert nv.info()["format_version"] == "1.5"
    n = struct.unpack_from("<I", data, 12)[0]
    assert n < 160          # the JSON header of the same file took over 500 bytes
    assert np.abs(nv.decode().astype(float) - vol.astype(float)).max() <= nv.max_error
