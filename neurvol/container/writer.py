"""Serialize a header and brick payloads into ``.nvol`` bytes (format 1.0)."""
from __future__ import annotations

import os
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .._atomic import atomic_write
from ..errors import NeurvolInputError
from ._json import canonical_json, check_json_value
from .brickhash import check_grid
from .compact import encode_compact
from .format import (COMPACT_MINOR, COMPACT_SECTIONS_MINOR, FORMAT_VERSION, HEADER_CRC, INDEX_DTYPE, KEY_BRICKS, KEY_GRID,
                     KEY_SECTIONS, MAGIC, MAX_HEADER_BYTES, MAX_SECTIONS, MIN_FILE_SIZE,
                     PREAMBLE, REQUIRED_SECTIONS, SECTION_BRICK_INDEX, SECTION_BRICKS,
                     U32_MAX)

BytesLike = Union[bytes, bytearray, memoryview]

__all__ = ["serialize_nvol", "write_nvol"]


def serialize_nvol(header: Mapping[str, Any], bricks: Sequence[BytesLike],
                   extra_sections: Optional[Mapping[str, BytesLike]] = None, *,
                   minor: Optional[int] = None) -> bytes:
    """Build a complete ``.nvol`` file in memory.

    Args:
        header: JSON-compatible mapping. Must hold ``"bricks": {"grid": [K, J, I], ...}``;
            every other key is stored as given. A ``"sections"`` key is replaced by the
            computed section table. The mapping is not modified.
        bricks: K*J*I payloads in brick-id order (see :func:`brick_ids`); ``b""`` marks an
            empty brick.
        extra_sections: optional named blobs stored after the bricks, in sorted name
            order (so equal mappings give equal bytes). Names must be non-empty and may
            not be ``"brick_index"`` or ``"bricks"``.
        minor: the minor format version to write (default ``FORMAT_VERSION[1]``, 0); a
            layer that uses keys of a later minor (e.g. bricked ensembles, 1.1) says so.
            From ``COMPACT_MINOR`` (4) on, a one-brick file without extra sections gets
            the compact header (spec/nvol.md §3.3) where its header allows one; from
            ``COMPACT_SECTIONS_MINOR`` (5) on, one with extra sections too (§3.4).

    Returns:
        The file content. Deterministic: equal arguments give identical bytes (for a
        compact header, with the same zstd release: spec/nvol.md §3.3).

    Raises:
        NeurvolInputError: the header is not plain JSON, the grid is invalid, the number
            of bricks does not match it, a payload is not bytes, or a limit is exceeded.
    """
    if not isinstance(header, Mapping):
        raise NeurvolInputError(f"header must be a dict, got {type(header).__name__}")
    hdr: Dict[str, Any] = {k: v for k, v in header.items() if k != KEY_SECTIONS}
    grid = _grid_of(hdr)
    check_json_value(hdr)
    if minor is None:
        minor = FORMAT_VERSION[1]
    if isinstance(minor, bool) or not isinstance(minor, int) or not 0 <= minor <= 0xFFFF:
        raise NeurvolInputError(f"minor version must be an int in [0, 65535], got {minor!r}")

    payloads = [_as_bytes(b, f"brick {n}") for n, b in enumerate(bricks)]
    count = grid[0] * grid[1] * grid[2]
    if len(payloads) != count:
        raise NeurvolInputError(
            f"brick grid {list(grid)} needs {count} bricks, got {len(payloads)}")
    index = _build_index(payloads)
    extras = _check_extras(extra_sections)
    if count == 1 and minor >= (COMPACT_SECTIONS_MINOR if extras else COMPACT_MINOR):
        sections = (len(payloads[0]), [(n, bytes(d)) for n, d in extras]) if extras else None
        compact = encode_compact(hdr, zlib.crc32(payloads[0]), sections)
        if compact is not None:
            head = PREAMBLE.pack(MAGIC, FORMAT_VERSION[0], minor, len(compact)) + compact
            return (head + HEADER_CRC.pack(zlib.crc32(head)) + payloads[0]
                    + b"".join(bytes(d) for _, d in extras))

    blobs: List[tuple] = [(SECTION_BRICK_INDEX, index, zlib.crc32(index)),
                          (SECTION_BRICKS, None, None)]
    blobs += [(name, data, zlib.crc32(data)) for name, data in extras]
    bricks_len = sum(len(p) for p in payloads)
    lengths = [len(index), bricks_len] + [len(d) for _, d in extras]

    header_bytes = _header_with_sections(hdr, blobs, lengths)
    head = PREAMBLE.pack(MAGIC, FORMAT_VERSION[0], minor, len(header_bytes))
    head += header_bytes
    out = bytearray(head)
    out += HEADER_CRC.pack(zlib.crc32(head))
    out += index
    for p in payloads:
        out += p
    for _, data in extras:
        out += data
    return bytes(out)


def write_nvol(path: Union[str, "os.PathLike[str]"], header: Mapping[str, Any],
               bricks: Sequence[BytesLike],
               extra_sections: Optional[Mapping[str, BytesLike]] = None, *,
               minor: Optional[int] = None) -> int:
    """Serialize (see :func:`serialize_nvol`) and write atomically to *path*.

    Returns:
        Number of bytes written.

    Raises:
        NeurvolInputError: invalid arguments (nothing is written).
        NeurvolIOError: the file cannot be written; an existing file is left intact.
    """
    data = serialize_nvol(header, bricks, extra_sections, minor=minor)
    atomic_write(path, data)
    return len(data)


def _grid_of(hdr: Mapping[str, Any]) -> tuple:
    bricks = hdr.get(KEY_BRICKS)
    if not isinstance(bricks, Mapping) or KEY_GRID not in bricks:
        raise NeurvolInputError(
            'header must contain "bricks": {"grid": [K, J, I], ...} (brick counts along '
            "z, y, x); use [1, 1, 1] for a single brick")
    grid = check_grid(bricks[KEY_GRID])
    # JSON needs plain ints, not numpy ints; compare by value so a tuple or list is fine.
    if any(type(n) is not int for n in bricks[KEY_GRID]):
        raise NeurvolInputError(
            f"header['bricks']['grid'] must hold plain ints, got {bricks[KEY_GRID]!r}; "
            "convert with int()")
    return grid


def _as_bytes(b: Any, what: str) -> bytes:
    if isinstance(b, bytes):
        return b
    if isinstance(b, (bytearray, memoryview)):
        return bytes(b)
    raise NeurvolInputError(f"{what} must be bytes, got {type(b).__name__}")


def _build_index(payloads: List[bytes]) -> bytes:
    """Brick index: (offset, length, crc32) per brick, little-endian, contiguous."""
    lengths = np.array([len(p) for p in payloads], dtype=np.int64)
    if lengths.size and lengths.max() > U32_MAX:
        big = int(np.argmax(lengths))
        raise NeurvolInputError(
            f"brick {big} is {int(lengths[big])} bytes; a brick payload is limited to "
            f"{U32_MAX} bytes - use more, smaller bricks")
    rec = np.zeros(len(payloads), dtype=INDEX_DTYPE)
    rec["length"] = lengths
    rec["offset"][1:] = np.cumsum(lengths)[:-1]
    rec["crc32"] = [zlib.crc32(p) for p in payloads]
    return rec.tobytes()


def _check_extras(extra: Optional[Mapping[str, BytesLike]]) -> List[tuple]:
    if not extra:
        return []
    if len(extra) > MAX_SECTIONS - len(REQUIRED_SECTIONS):
        raise NeurvolInputError(
            f"{len(extra)} extra sections given; at most "
            f"{MAX_SECTIONS - len(REQUIRED_SECTIONS)} are allowed")
    out = []
    for name in sorted(extra):
        if not isinstance(name, str) or not name:
            raise NeurvolInputError(f"section names must be non-empty str, got {name!r}")
        if name in REQUIRED_SECTIONS:
            raise NeurvolInputError(
                f"section name {name!r} is reserved by the container; choose another")
        check_json_value(name, "section name")
        out.append((name, _as_bytes(extra[name], f"section {name!r}")))
    return out


def _header_with_sections(hdr: Dict[str, Any], blobs: List[tuple],
                          lengths: List[int]) -> bytes:
    """Encode the header with its section table.

    Section offsets are absolute, so they depend on the header's own length N. Iterate
    N -> len(encode(offsets from 20 + N)) from N = 0: the length is non-decreasing in N
    and bounded, so this reaches the smallest fixed point within a few rounds, and always
    the same one (determinism).
    """
    n = 0
    while True:
        offset = MIN_FILE_SIZE + n
        table = []
        for (name, _, crc), length in zip(blobs, lengths):
            table.append({"name": name, "offset": offset, "length": length, "crc32": crc})
            offset += length
        encoded = canonical_json({**hdr, KEY_SECTIONS: table})
        if len(encoded) > MAX_HEADER_BYTES:
            raise NeurvolInputError(
                f"header is {len(encoded)} bytes; the limit is {MAX_HEADER_BYTES} - store "
                "large data in a section, not in the header")
        if len(encoded) == n:
            return encoded
        n = len(encoded)
