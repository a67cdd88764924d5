"""Constants of the ``.nvol`` byte layout, format 1.0 (see ``spec/nvol.md``).

Everything here is normative: a second implementation must use the same values.
"""
from __future__ import annotations

import struct

#: 8-byte signature, PNG style. The high-bit first byte catches 7-bit transfers, ``\r\n``
#: catches CRLF<->LF conversion, ``\x1a`` stops ``type`` on DOS, the final ``\n`` catches
#: LF->CRLF conversion.
MAGIC = b"\x89NVL\r\n\x1a\n"

#: (major, minor) written by this implementation. Readers accept any minor of a known major.
FORMAT_VERSION = (1, 0)

#: Largest header (JSON) a reader accepts; checked before the header is read, so a
#: corrupted length field cannot make a reader allocate gigabytes.
MAX_HEADER_BYTES = 16 * 1024 * 1024

#: Largest number of bricks (K*J*I); bounds the brick index to 256 MiB.
MAX_BRICKS = 2 ** 24

#: Largest number of entries in the section table.
MAX_SECTIONS = 1024

#: magic, u16 major, u16 minor, u32 header length.
PREAMBLE = struct.Struct("<8sHHI")
PREAMBLE_SIZE = PREAMBLE.size  # 16

#: u32 CRC-32 of bytes [0, 16+N) that follows the header.
HEADER_CRC = struct.Struct("<I")

#: Smallest possible file: preamble + empty header + header CRC (still invalid, but this
#: is the size below which nothing else can be checked).
MIN_FILE_SIZE = PREAMBLE_SIZE + HEADER_CRC.size  # 20

#: One brick index record: u64 offset (relative to the "bricks" section), u32 length,
#: u32 CRC-32 of the brick payload.
INDEX_RECORD = struct.Struct("<QII")
INDEX_RECORD_SIZE = INDEX_RECORD.size  # 16

#: numpy equivalent of INDEX_RECORD, for vectorised validation of large indexes.
INDEX_DTYPE = [("offset", "<u8"), ("length", "<u4"), ("crc32", "<u4")]

#: The two required sections, always first and in this order.
SECTION_BRICK_INDEX = "brick_index"
SECTION_BRICKS = "bricks"
REQUIRED_SECTIONS = (SECTION_BRICK_INDEX, SECTION_BRICKS)

#: Header keys owned by the container; every other top-level key is opaque.
KEY_SECTIONS = "sections"
KEY_BRICKS = "bricks"
KEY_GRID = "grid"

U32_MAX = 2 ** 32 - 1

#: Minor version of the compact header (spec/nvol.md §3.3): a one-brick file without
#: extra sections may store its header as a dictionary-compressed frame.
COMPACT_MINOR = 4

#: Minor version of the compact header with extra sections (spec/nvol.md §3.4): a one-brick
#: file with extra sections (e.g. an error-bounded file's correction stream) may store its
#: header and section table compactly.
COMPACT_SECTIONS_MINOR = 5
