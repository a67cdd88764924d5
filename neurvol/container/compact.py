"""The compact header of format 1.4 (spec/nvol.md §3.3), and its form with extra sections
of format 1.5 (§3.4).

A one-brick file (1.5: also one with extra sections) may replace its JSON header and brick
index by ``marker, dictionary id, brick CRC-32, [section table,] zstd frame`` whose content is the canonical JSON
of the header with its implied keys (``bricks``, ``sections``) and the defaults of
:data:`DEFAULTS` left out. The frame is coded against a raw-content dictionary fixed by
the spec (``spec/nvol-header-dict-1.bin``, checked by SHA-256 here), which holds the
key names and values headers repeat, so a typical header costs a few dozen bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import struct
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import zstandard

from ..errors import NeurvolFormatError, NeurvolVersionError
from ._json import canonical_json, parse_header
from .format import (KEY_BRICKS, KEY_GRID, KEY_SECTIONS, U32_MAX,
                     SECTION_BRICK_INDEX as KEY_SECTION_BRICK_INDEX,
                     SECTION_BRICKS as KEY_SECTION_BRICKS)

#: First header byte of a compact header. Never valid in UTF-8, so it cannot start a
#: JSON header, and a reader of 1.0-1.3 refuses the file at its UTF-8 check.
COMPACT_MARKER = 0xFF

#: First header byte of a compact header with extra sections (format 1.5, spec/nvol.md
#: §3.4): the section table follows the prefix in binary. A 1.4 reader refuses it as a
#: reserved marker (a version error).
COMPACT_SECTIONS_MARKER = 0xFE

#: First header bytes from this one up (none of them can start UTF-8 JSON) are header
#: encodings: COMPACT_MARKER, the others reserved for later minors (a version error).
RESERVED_MARKERS = 0x80

#: u8 marker, u8 dictionary id, u32 CRC-32 of the brick payload.
COMPACT_PREFIX = struct.Struct("<BBI")

#: Dictionaries by id: file name in this package and its SHA-256 (normative bytes, the
#: same as in spec/).
DICTIONARIES: Dict[int, Tuple[str, str]] = {
    1: ("nvol-header-dict-1.bin",
        "eb87779be9a8151f913a903d8e854c30f50a1100e3e9811abd3451923e0d7513"),
}
#: The dictionary writers use.
WRITE_DICTIONARY = 1

#: Largest decompressed compact header a reader accepts (checked against the frame's
#: declared content size before decompressing, and enforced while decompressing). One
#: model's header is a few hundred bytes; writers fall back to JSON above this.
MAX_COMPACT_JSON_BYTES = 64 * 1024

#: The 4-byte zstd frame magic, left out of the stored frame (the marker says what follows).
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

#: Writers' zstd level (readers do not need it; the header is tiny, so the slowest is cheap).
COMPACT_LEVEL = 19

#: Keys a compact header never stores: the reader restores them.
IMPLIED_BRICKS = {KEY_GRID: [1, 1, 1]}

#: Members of top-level objects that a compact header leaves out when they equal these
#: values; a reader restores a missing member only where its object is present.
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "volume": {"spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0]},
    "codec": {"name": "neurvol", "version": 2},
}

_dict_cache: Dict[int, zstandard.ZstdCompressionDict] = {}


#: Longest extra section name, and most extra sections, a compact header stores (u8 each).
MAX_SECTION_NAME = 255
MAX_COMPACT_SECTIONS = 255


@dataclasses.dataclass(frozen=True)
class CompactSection:
    """An extra section of a compact header with sections: name, length, CRC-32."""

    name: str
    length: int
    crc32: int


def is_compact(raw: bytes) -> bool:
    """True if header bytes *raw* start with a compact marker (with or without sections)."""
    return raw[:1] in (bytes([COMPACT_MARKER]), bytes([COMPACT_SECTIONS_MARKER]))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(raw: bytes, pos: int, where: str) -> Tuple[int, int]:
    """(value, next position) of the unsigned LEB128 at ``pos``; at most 5 bytes (u32)."""
    v = 0
    for k in range(5):
        if pos >= len(raw):
            break
        b = raw[pos]
        pos += 1
        v |= (b & 0x7F) << (7 * k)
        if not b & 0x80:
            if v > U32_MAX:
                break
            return v, pos
    raise NeurvolFormatError(f"{where}: truncated or overlong length in its section table; "
                             "the file is corrupted")


def _section_table(extras: Sequence[Tuple[str, bytes]], brick_len: int) -> Optional[bytes]:
    """The binary section table of a compact header with sections, or None when a name
    cannot be stored (empty, not UTF-8 encodable or longer than 255 bytes)."""
    if len(extras) > MAX_COMPACT_SECTIONS:
        return None
    out = bytearray(_varint(brick_len))
    out.append(len(extras))
    for name, data in extras:
        try:
            enc = name.encode("utf-8")
        except UnicodeEncodeError:
            return None
        if not 0 < len(enc) <= MAX_SECTION_NAME:
            return None
        out += bytes([len(enc)]) + enc + struct.pack("<I", zlib.crc32(data))
        out += _varint(len(data))
    return bytes(out)


def _dictionary(dict_id: int, name: str = "") -> zstandard.ZstdCompressionDict:
    cached = _dict_cache.get(dict_id)
    if cached is not None:
        return cached
    if dict_id not in DICTIONARIES:
        raise NeurvolVersionError(
            f"{name}: the compact header uses header dictionary {dict_id}, which this neurvol "
            f"does not know (it knows {sorted(DICTIONARIES)}); the file was written by a newer "
            "neurvol - upgrade neurvol (pip install -U neurvol), or the file is corrupted")
    fname, digest = DICTIONARIES[dict_id]
    try:
        with open(os.path.join(os.path.dirname(__file__), fname), "rb") as f:
            content = f.read()
    except OSError:
        content = b""
    if hashlib.sha256(content).hexdigest() != digest:
        # The package itself is damaged: no file can be read or written correctly.
        raise NeurvolFormatError(
            f"the installed header dictionary {fname} is missing or does not match its "
            "SHA-256; reinstall neurvol")
    d = zstandard.ZstdCompressionDict(content, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    _dict_cache[dict_id] = d
    return d


def reduce_header(header: Dict[str, Any]) -> Dict[str, Any]:
    """*header* (without ``sections``) minus its implied keys and default members."""
    out = {k: v for k, v in header.items() if k not in (KEY_BRICKS, KEY_SECTIONS)}
    for key, defaults in DEFAULTS.items():
        obj = out.get(key)
        if isinstance(obj, dict):
            out[key] = {k: v for k, v in obj.items()
                        if not (k in defaults and canonical_json(v) == canonical_json(defaults[k]))}
    return out


def expand_header(reduced: Dict[str, Any]) -> Dict[str, Any]:
    """The full header of a compact one (inverse of :func:`reduce_header`), without
    ``sections``."""
    out = dict(reduced)
    for key, defaults in DEFAULTS.items():
        obj = out.get(key)
        if isinstance(obj, dict):
            out[key] = {**{k: v for k, v in defaults.items() if k not in obj}, **obj}
    out[KEY_BRICKS] = dict(IMPLIED_BRICKS)
    return out


def encode_compact(header: Dict[str, Any], brick_crc: int,
                   sections: Optional[Tuple[int, Sequence[Tuple[str, bytes]]]] = None
                   ) -> Optional[bytes]:
    """The compact header bytes of a one-brick file, or None when *header* cannot be
    stored compactly: its bricks entry is not exactly ``{"grid": [1, 1, 1]}``, an object
    of :data:`DEFAULTS` lacks a member a reader would restore, or it is too long.
    ``sections``: ``(brick length, [(name, bytes), ...])`` of a file with extra sections
    (format 1.5, :data:`COMPACT_SECTIONS_MARKER`), stored after the brick in that order."""
    if canonical_json(header.get(KEY_BRICKS)) != canonical_json(IMPLIED_BRICKS):
        return None
    hdr = {k: v for k, v in header.items() if k != KEY_SECTIONS}
    reduced = reduce_header(hdr)
    if canonical_json(expand_header(reduced)) != canonical_json(hdr):
        return None             # e.g. a "volume" without "spacing": a reader would add it
    text = canonical_json(reduced)
    if len(text) > MAX_COMPACT_JSON_BYTES:
        return None
    frame = zstandard.ZstdCompressor(
        level=COMPACT_LEVEL, dict_data=_dictionary(WRITE_DICTIONARY), write_checksum=False,
        write_dict_id=False, write_content_size=True).compress(text)
    assert frame[:4] == ZSTD_MAGIC
    if sections is None:
        return COMPACT_PREFIX.pack(COMPACT_MARKER, WRITE_DICTIONARY, brick_crc) + frame[4:]
    table = _section_table(sections[1], sections[0])
    if table is None or not sections[1]:
        return None
    return (COMPACT_PREFIX.pack(COMPACT_SECTIONS_MARKER, WRITE_DICTIONARY, brick_crc) + table
            + frame[4:])


def decode_compact(raw: bytes, name: str) -> Tuple[Dict[str, Any], int]:
    """(full header without ``sections``, brick CRC-32) of compact header bytes *raw*
    without extra sections (:func:`decode_compact_sections` reads both kinds).

    Raises NeurvolFormatError for a damaged or hostile header (short prefix, bad frame,
    declared or actual size past :data:`MAX_COMPACT_JSON_BYTES`, size mismatch, implied
    keys stored, invalid JSON), NeurvolVersionError for an unknown dictionary.
    """
    header, brick_crc, _, sections = decode_compact_sections(raw, name)
    if sections:
        raise NeurvolFormatError(f"{name}: compact header with sections where none are "
                                 "allowed; the file is corrupted")
    return header, brick_crc


def decode_compact_sections(raw: bytes, name: str
                            ) -> Tuple[Dict[str, Any], int, Optional[int], List[CompactSection]]:
    """(full header without ``sections``, brick CRC-32, brick length or None, extra
    sections) of compact header bytes *raw*. Without sections (marker ``0xFF``) the brick
    length is None (the rest of the file) and the list is empty. Errors as
    :func:`decode_compact`, and NeurvolFormatError for a damaged section table (no
    section, a repeated or required name, a name that is not UTF-8)."""
    where = f"{name}: compact header"
    if len(raw) < COMPACT_PREFIX.size:
        raise NeurvolFormatError(
            f"{where} is {len(raw)} bytes, shorter than its {COMPACT_PREFIX.size}-byte prefix; "
            "the file is corrupted")
    marker, dict_id, brick_crc = COMPACT_PREFIX.unpack_from(raw)
    pos = COMPACT_PREFIX.size
    brick_len: Optional[int] = None
    sections: List[CompactSection] = []
    if marker == COMPACT_SECTIONS_MARKER:
        brick_len, pos = _read_varint(raw, pos, where)
        if pos >= len(raw) or raw[pos] == 0:
            raise NeurvolFormatError(f"{where}: its section table lists no section; the file "
                                     "is corrupted")
        count = raw[pos]
        pos += 1
        for _ in range(count):
            if pos >= len(raw):
                raise NeurvolFormatError(f"{where}: truncated section table; the file is "
                                         "corrupted")
            n = raw[pos]
            end = pos + 1 + n + 4
            if n == 0 or end > len(raw):
                raise NeurvolFormatError(f"{where}: truncated section table; the file is "
                                         "corrupted")
            try:
                sname = raw[pos + 1:pos + 1 + n].decode("utf-8")
            except UnicodeDecodeError:
                raise NeurvolFormatError(f"{where}: a section name is not UTF-8; the file is "
                                         "corrupted") from None
            (crc,) = struct.unpack_from("<I", raw, pos + 1 + n)
            length, pos = _read_varint(raw, end, where)
            if sname in (KEY_SECTION_BRICK_INDEX, KEY_SECTION_BRICKS) or any(
                    sec.name == sname for sec in sections):
                raise NeurvolFormatError(f"{where}: section {sname!r} is listed twice; the "
                                         "file is corrupted")
            sections.append(CompactSection(sname, length, crc))
    dictionary = _dictionary(dict_id, name)
    frame = ZSTD_MAGIC + raw[pos:]
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
    except zstandard.ZstdError as exc:
        raise NeurvolFormatError(f"{where} is not a valid zstd frame ({exc}); the file is "
                                 "corrupted") from None
    if declared == zstandard.CONTENTSIZE_UNKNOWN or declared > MAX_COMPACT_JSON_BYTES:
        shown = "no size" if declared == zstandard.CONTENTSIZE_UNKNOWN else f"{declared} bytes"
        raise NeurvolFormatError(
            f"{where} declares {shown}; it must declare at most {MAX_COMPACT_JSON_BYTES} "
            "(spec/resources.md); the file is corrupted or hostile")
    text = _decompress_at_most(frame, dictionary, declared, where)
    if len(text) != declared:
        raise NeurvolFormatError(
            f"{where} holds {len(text)} bytes but declares {declared}; the file is corrupted")
    _check_one_frame(frame, dictionary, where)
    reduced = parse_header(text)
    for key in (KEY_BRICKS, KEY_SECTIONS):
        if key in reduced:
            raise NeurvolFormatError(
                f"{where} stores {key!r}, which a compact header implies; the file was "
                "written by a faulty tool")
    return expand_header(reduced), brick_crc, brick_len, sections


def _check_one_frame(frame: bytes, dictionary: zstandard.ZstdCompressionDict,
                     where: str) -> None:
    """Refuse bytes after the first frame (a skippable frame included, which decodes to
    nothing). Called once the content is known to be at most the cap, so decoding the
    first frame again costs no more."""
    try:
        dobj = zstandard.ZstdDecompressor(dict_data=dictionary).decompressobj()
        dobj.decompress(frame)
    except zstandard.ZstdError as exc:
        raise NeurvolFormatError(f"{where} is not a valid zstd frame ({exc}); the file is "
                                 "corrupted") from None
    if not dobj.eof or dobj.unused_data:
        raise NeurvolFormatError(
            f"{where} has {len(dobj.unused_data)} bytes after its zstd frame; the file is "
            "corrupted")


def _decompress_at_most(frame: bytes, dictionary: zstandard.ZstdCompressionDict, cap: int,
                        where: str) -> bytes:
    """The frame's content, reading at most ``cap + 1`` bytes (a lying size costs no
    more); bytes after the frame must decode too (junk is an error, another frame's
    content lands past the cap)."""
    try:
        dctx = zstandard.ZstdDecompressor(dict_data=dictionary)
        parts, total = [], 0
        with dctx.stream_reader(io.BytesIO(frame), read_across_frames=True) as r:
            while total <= cap:
                chunk = r.read(cap + 1 - total)
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
        return b"".join(parts)
    except zstandard.ZstdError as exc:
        raise NeurvolFormatError(f"{where} is not a valid zstd frame ({exc}); the file is "
                                 "corrupted") from None
