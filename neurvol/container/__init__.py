"""The ``.nvol`` container: byte layout, checksums, versions, brick index (bytes only).

Normative description: ``spec/nvol.md``. This package never imports torch and knows
nothing about models; every header key except ``"sections"`` and ``"bricks"`` is opaque.

Example:
    >>> from neurvol.container import serialize_nvol, read_nvol_bytes
    >>> data = serialize_nvol({"bricks": {"grid": [1, 1, 2]}}, [b"ab", b""])
    >>> r = read_nvol_bytes(data)
    >>> r.grid, r.read_brick(0), r.read_brick(1)
    ((1, 1, 2), b'ab', b'')
"""
from .brickhash import axis_bricks, brick_ids
from .format import (COMPACT_MINOR, FORMAT_VERSION, INDEX_RECORD_SIZE, MAGIC, MAX_BRICKS,
                     MAX_HEADER_BYTES, MAX_SECTIONS, MIN_FILE_SIZE)
from .reader import NvolReader, Section, read_nvol_bytes
from .writer import serialize_nvol, write_nvol

__all__ = [
    "MAGIC", "FORMAT_VERSION", "COMPACT_MINOR", "MAX_HEADER_BYTES", "MAX_BRICKS", "MAX_SECTIONS",
    "MIN_FILE_SIZE", "INDEX_RECORD_SIZE",
    "serialize_nvol", "write_nvol", "NvolReader", "Section", "read_nvol_bytes",
    "brick_ids", "axis_bricks",
]
