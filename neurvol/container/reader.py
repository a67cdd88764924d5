"""Lazy, validating reader of ``.nvol`` files (format 1.x)."""
from __future__ import annotations

import operator
import os
import stat
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import (NeurvolFormatError, NeurvolInputError, NeurvolIOError,
                      NeurvolVersionError, brief)
from ._json import parse_header
from .compact import (COMPACT_MARKER, COMPACT_SECTIONS_MARKER, RESERVED_MARKERS,
                      decode_compact_sections, is_compact)
from .format import (COMPACT_MINOR, COMPACT_SECTIONS_MINOR, FORMAT_VERSION, HEADER_CRC, INDEX_DTYPE, INDEX_RECORD_SIZE,
                     KEY_BRICKS, KEY_GRID, KEY_SECTIONS, MAGIC, MAX_BRICKS,
                     MAX_HEADER_BYTES, MAX_SECTIONS, MIN_FILE_SIZE, PREAMBLE,
                     PREAMBLE_SIZE, REQUIRED_SECTIONS, SECTION_BRICK_INDEX,
                     SECTION_BRICKS, U32_MAX)
from .sniff import describe_foreign

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

__all__ = ["NvolReader", "Section", "read_nvol_bytes"]


@dataclass(frozen=True)
class Section:
    """One entry of the section table: absolute byte range and CRC-32 (None for bricks)."""

    name: str
    offset: int
    length: int
    crc32: Optional[int]


class NvolReader:
    """Open an ``.nvol`` file (path) or buffer (bytes) for lazy, checked access.

    Opening reads and validates the preamble, header, section table and brick index, in
    the order given in spec/nvol.md, but no brick payload. Payloads are read on demand by
    :meth:`read_brick` / :meth:`read_section` and checked against their CRC-32. Reads are
    thread-safe (``os.pread``, or a lock where it is missing).

    Attributes:
        header: the parsed header JSON, every key ("sections" included). Treat as
            read-only; the reader keeps its own validated copies of what it uses.
        version: (major, minor) format version of the file.
        grid: (K, J, I) brick counts along z, y, x.
        brick_count: K * J * I.
        bytes_read: payload bytes returned by read_brick/read_section so far.
        bricks_read: number of bricks returned by read_brick so far.

    Raises:
        NeurvolFormatError: the file is not a valid .nvol (message says why).
        NeurvolVersionError: the file has a major version this code does not know.
        NeurvolIOError: the path cannot be opened.

    Example:
        >>> with NvolReader("f.nvol") as r:          # doctest: +SKIP
        ...     payload = r.read_brick(0)
    """

    def __init__(self, source: Source) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.bytes_read = 0
        self.bricks_read = 0
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._src: _Source = _BytesSource(bytes(source))
            self.name = "<bytes>"
        else:
            try:
                self.name = os.fspath(source)
            except TypeError:
                raise NeurvolInputError(
                    "NvolReader needs a path (str or os.PathLike) or bytes, got "
                    f"{type(source).__name__}") from None
            self._src = _FileSource(source)
        try:
            self._open()
        except BaseException:
            self._src.close()
            raise

    # -- validation at open, in spec order ---------------------------------------------
    def _open(self) -> None:
        size = self._src.size
        head = self._src.pread(0, min(size, PREAMBLE_SIZE))
        if size < MIN_FILE_SIZE:
            self._fail_small(size, head)
        magic, major, minor, n = PREAMBLE.unpack(head)
        if magic != MAGIC:
            foreign = describe_foreign(head)
            raise NeurvolFormatError(
                f"{self.name}: not an .nvol file (bad signature {magic!r})"
                + (f"; {foreign}" if foreign else ""))
        if major != FORMAT_VERSION[0]:
            raise NeurvolVersionError(
                f"{self.name}: .nvol format version {major}.{minor} is not supported by "
                f"this neurvol (reads {FORMAT_VERSION[0]}.x); upgrade neurvol "
                "(pip install -U neurvol). If the file should be version "
                f"{FORMAT_VERSION[0]}.x, it is corrupted")
        self.version: Tuple[int, int] = (major, minor)
        if n > MAX_HEADER_BYTES:
            raise NeurvolFormatError(
                f"{self.name}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit; "
                "the file is corrupted")
        remaining = size - PREAMBLE_SIZE
        if n + HEADER_CRC.size > remaining:
            raise NeurvolFormatError(
                f"{self.name}: file is truncated: header declares {n} bytes (+4 for its "
                f"checksum) but only {remaining} remain; the file was probably cut off "
                "during a copy or download")
        raw = self._src.pread(PREAMBLE_SIZE, n + HEADER_CRC.size)
        (stored,) = HEADER_CRC.unpack(raw[n:])
        computed = zlib.crc32(memoryview(raw)[:n], zlib.crc32(head))
        if stored != computed:
            raise NeurvolFormatError(
                f"{self.name}: header checksum mismatch (stored {stored:#010x}, computed "
                f"{computed:#010x}); the file is corrupted")
        self._data_start = MIN_FILE_SIZE + n
        if is_compact(raw[:n]):
            self._open_compact(raw[:n], minor, size)
            return
        if n and raw[0] >= RESERVED_MARKERS:
            raise NeurvolVersionError(
                f"{self.name}: the header starts with byte {raw[0]:#04x}, a header encoding "
                "this neurvol does not know (it reads JSON and the compact headers "
                f"{COMPACT_MARKER:#04x}, {COMPACT_SECTIONS_MARKER:#04x}); "
                "the file was written by a newer neurvol - upgrade neurvol (pip install -U "
                "neurvol), or the file is corrupted")
        self.header: Dict[str, Any] = parse_header(raw[:n])
        self._sections = self._check_sections(self.header.get(KEY_SECTIONS), size)
        self.grid = self._check_grid(self.header.get(KEY_BRICKS))
        self.brick_count = self.grid[0] * self.grid[1] * self.grid[2]
        self._index = self._check_index()
        self._bricks_offset = self._sections[SECTION_BRICKS].offset

    def _open_compact(self, raw: bytes, minor: int, size: int) -> None:
        """A compact header (spec/nvol.md §3.3): one brick, the rest of the file; or, with
        extra sections (§3.4), the brick and those sections back to back."""
        needed = COMPACT_SECTIONS_MINOR if raw[0] == COMPACT_SECTIONS_MARKER else COMPACT_MINOR
        if minor < needed:
            raise NeurvolFormatError(
                f"{self.name}: the file has a compact header but declares version 1.{minor} "
                f"(this compact header is format 1.{needed}); the file is corrupted")
        header, crc, brick_len, extras = decode_compact_sections(raw, self.name)
        start, length = self._data_start, size - self._data_start
        if brick_len is not None:
            tail = sum(e.length for e in extras)
            if brick_len + tail != length:
                raise NeurvolFormatError(
                    f"{self.name}: the compact header's sections describe {brick_len + tail} "
                    f"bytes, the file holds {length} after its header; the file is truncated "
                    "or corrupted")
            length = brick_len
        if length > U32_MAX:
            raise NeurvolFormatError(
                f"{self.name}: the brick of a compact file is {length} bytes, more than the "
                f"{U32_MAX} a brick may hold; the file is corrupted")
        if length == 0 and crc != 0:
            raise NeurvolFormatError(f"{self.name}: empty brick 0 has a non-zero crc32")
        # The implied section table, as a JSON header would list it: an empty index (the
        # brick's record is the header's CRC and the file's length) and the brick.
        table = [{"name": SECTION_BRICK_INDEX, "offset": start, "length": 0, "crc32": 0},
                 {"name": SECTION_BRICKS, "offset": start, "length": length, "crc32": None}]
        offset = start + length
        for e in extras:
            table.append({"name": e.name, "offset": offset, "length": e.length,
                          "crc32": e.crc32})
            offset += e.length
        self.header = {**header, KEY_SECTIONS: table}
        self._sections = {e["name"]: Section(e["name"], e["offset"], e["length"], e["crc32"])
                          for e in table}
        self.grid = (1, 1, 1)
        self.brick_count = 1
        self._index = np.array([(0, length, crc)], dtype=INDEX_DTYPE)
        self._bricks_offset = start

    def _fail_small(self, size: int, head: bytes) -> None:
        if size == 0:
            raise NeurvolFormatError(f"{self.name}: file is empty (0 bytes), not an .nvol")
        if MAGIC.startswith(head[:8]):  # a cut-off .nvol, not a foreign file
            raise NeurvolFormatError(
                f"{self.name}: file is truncated: {size} bytes, but an .nvol file has at "
                f"least {MIN_FILE_SIZE}; the file was probably cut off during a copy")
        foreign = describe_foreign(head)
        raise NeurvolFormatError(
            f"{self.name}: not an .nvol file ({size} bytes, shorter than the "
            f"{MIN_FILE_SIZE}-byte minimum)" + (f"; {foreign}" if foreign else ""))

    def _check_sections(self, table: Any, size: int) -> Dict[str, Section]:
        where = f"{self.name}: header"
        if not isinstance(table, list):
            raise NeurvolFormatError(f'{where} has no "sections" list; the file is not a '
                                     "valid .nvol")
        if not len(REQUIRED_SECTIONS) <= len(table) <= MAX_SECTIONS:
            raise NeurvolFormatError(
                f"{where} lists {len(table)} sections; between {len(REQUIRED_SECTIONS)} "
                f"and {MAX_SECTIONS} are allowed")
        out: Dict[str, Section] = {}
        expected = self._data_start
        for pos, entry in enumerate(table):
            if not isinstance(entry, dict):
                raise NeurvolFormatError(f"{where}: section #{pos} is not an object")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise NeurvolFormatError(
                    f"{where}: section #{pos} has no valid name (non-empty string)")
            if name in out:
                raise NeurvolFormatError(f"{where}: section {brief(name)} is listed twice")
            offset = _uint(entry.get("offset"), f"{where}: section {brief(name)} offset")
            length = _uint(entry.get("length"), f"{where}: section {brief(name)} length")
            crc = entry.get("crc32")
            if name == SECTION_BRICKS:
                if crc is not None:
                    raise NeurvolFormatError(
                        f'{where}: section "bricks" must have crc32 null (each brick is '
                        "checksummed in the brick index)")
            else:
                crc = _uint(crc, f"{where}: section {brief(name)} crc32")
                if crc > U32_MAX:
                    raise NeurvolFormatError(
                        f"{where}: section {brief(name)} crc32 {brief(crc)} does not fit in 32 bits")
            if offset != expected:
                raise NeurvolFormatError(
                    f"{where}: section {brief(name)} starts at byte {brief(offset)}, expected "
                    f"{expected}; sections must be back to back from the end of the header")
            expected = offset + length
            if expected > size:
                raise NeurvolFormatError(
                    f"{self.name}: file is truncated: section {brief(name)} ends at byte "
                    f"{brief(expected)} but the file has {size} bytes; the file was probably cut "
                    "off during a copy or download")
            out[name] = Section(name, offset, length, crc)
        if expected != size:
            raise NeurvolFormatError(
                f"{self.name}: {size - expected} unexpected bytes after the last section "
                f"(sections end at {expected}, file size {size}); the file was appended to "
                "or is corrupted")
        names = [e["name"] for e in table[:len(REQUIRED_SECTIONS)]]
        if tuple(names) != REQUIRED_SECTIONS:
            raise NeurvolFormatError(
                f"{where}: the first sections must be {list(REQUIRED_SECTIONS)}, found "
                f"{brief(names)}")
        return out

    def _check_grid(self, bricks: Any) -> Tuple[int, int, int]:
        where = f"{self.name}: header"
        if not isinstance(bricks, dict):
            raise NeurvolFormatError(f'{where} has no "bricks" object')
        grid = bricks.get(KEY_GRID)
        if not (isinstance(grid, list) and len(grid) == 3
                and all(type(g) is int and g >= 1 for g in grid)):
            raise NeurvolFormatError(
                f'{where}: "bricks.grid" must be 3 positive integers [K, J, I], got {brief(grid)}')
        k, j, i = grid
        if k * j * i > MAX_BRICKS:
            raise NeurvolFormatError(
                f'{where}: "bricks.grid" {brief(grid)} has {brief(k * j * i)} bricks, more than the '
                f"limit of {MAX_BRICKS}")
        return k, j, i

    def _check_index(self) -> np.ndarray:
        sec = self._sections[SECTION_BRICK_INDEX]
        want = INDEX_RECORD_SIZE * self.brick_count
        if sec.length != want:
            raise NeurvolFormatError(
                f"{self.name}: brick_index is {sec.length} bytes, but grid {list(self.grid)} "
                f"needs {self.brick_count} x {INDEX_RECORD_SIZE} = {want}")
        raw = self._read_checked(sec)
        index = np.frombuffer(raw, dtype=INDEX_DTYPE)
        lengths = index["length"].astype(np.uint64)
        ends = np.cumsum(lengths, dtype=np.uint64)
        starts = ends - lengths
        bad = np.flatnonzero(index["offset"] != starts)
        if bad.size:
            b = int(bad[0])
            raise NeurvolFormatError(
                f"{self.name}: brick_index entry {b} has offset {int(index['offset'][b])}, "
                f"expected {int(starts[b])}; bricks must be stored back to back")
        total = int(ends[-1])
        if total != self._sections[SECTION_BRICKS].length:
            raise NeurvolFormatError(
                f"{self.name}: brick lengths sum to {total} bytes but the bricks section "
                f"is {self._sections[SECTION_BRICKS].length}")
        bad = np.flatnonzero((index["length"] == 0) & (index["crc32"] != 0))
        if bad.size:
            raise NeurvolFormatError(
                f"{self.name}: empty brick {int(bad[0])} has a non-zero crc32")
        return index

    # -- public API --------------------------------------------------------------------
    @property
    def file_size(self) -> int:
        """Total size of the file in bytes."""
        return self._src.size

    @property
    def section_names(self) -> Tuple[str, ...]:
        """Section names in file order ("brick_index", "bricks", then any extras)."""
        return tuple(self._sections)

    @property
    def sections(self) -> Tuple[Section, ...]:
        """The validated section table, in file order."""
        return tuple(self._sections.values())

    def brick_length(self, b: int) -> int:
        """Stored payload size of brick *b* in bytes (0 for an empty brick)."""
        return int(self._index["length"][self._brick(b)])

    def read_brick(self, b: int) -> bytes:
        """Return the payload of brick *b* (``b""`` if empty), after checking its CRC-32.

        Raises:
            IndexError: *b* is not in ``range(brick_count)``.
            NeurvolFormatError: the payload is corrupted or the file shrank since open.
        """
        self._check_open()
        b = self._brick(b)
        rec = self._index[b]
        length = int(rec["length"])
        data = self._src.pread(self._bricks_offset + int(rec["offset"]), length)
        self._check_length(data, length, f"brick {b}")
        if zlib.crc32(data) != int(rec["crc32"]):
            raise NeurvolFormatError(
                f"{self.name}: brick {b} is corrupted (CRC-32 mismatch); the file was "
                "damaged after it was written - restore it from a backup or re-encode")
        with self._lock:
            self.bricks_read += 1
            self.bytes_read += length
        return data

    def read_section(self, name: str) -> bytes:
        """Return the content of section *name*, after checking its CRC-32.

        For ``"bricks"`` the whole brick area is returned and every brick's CRC is checked.

        Raises:
            KeyError: no such section (see :attr:`section_names`).
            NeurvolFormatError: the section is corrupted.
        """
        try:
            sec = self._sections[name]
        except KeyError:
            raise KeyError(f"no section {name!r} in {self.name}; it has "
                           f"{list(self._sections)}") from None
        self._check_open()
        if name == SECTION_BRICKS:
            data = b"".join(self.read_brick(b) for b in range(self.brick_count))
            return data
        data = self._read_checked(sec)
        with self._lock:
            self.bytes_read += len(data)
        return data

    @property
    def closed(self) -> bool:
        """True after :meth:`close`; reads then raise NeurvolInputError (a ValueError,
        like reading a closed Python file)."""
        return self._closed

    def close(self) -> None:
        """Close the underlying file. Idempotent."""
        if not self._closed:
            self._closed = True
            self._src.close()

    def __enter__(self) -> "NvolReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        src = getattr(self, "_src", None)
        if src is not None:
            src.close()

    def __repr__(self) -> str:
        return (f"NvolReader({self.name!r}, version={self.version[0]}.{self.version[1]}, "
                f"grid={list(self.grid)}, {self.file_size} bytes)")

    # -- helpers -----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise NeurvolInputError(f"{self.name} is closed; open it again to read from it")

    def _brick(self, b: int) -> int:
        b = operator.index(b)
        if not 0 <= b < self.brick_count:
            raise IndexError(f"brick {b} out of range: the file has {self.brick_count} "
                             f"bricks (grid {list(self.grid)})")
        return b

    def _read_checked(self, sec: Section) -> bytes:
        data = self._src.pread(sec.offset, sec.length)
        self._check_length(data, sec.length, f"section {sec.name!r}")
        if zlib.crc32(data) != sec.crc32:
            raise NeurvolFormatError(
                f"{self.name}: section {sec.name!r} is corrupted (CRC-32 mismatch); "
                "restore the file from a backup or re-encode")
        return data

    def _check_length(self, data: bytes, length: int, what: str) -> None:
        if len(data) != length:
            raise NeurvolFormatError(
                f"{self.name}: {what}: got {len(data)} of {length} bytes; the file was "
                "truncated or replaced while open")


def read_nvol_bytes(data: Union[bytes, bytearray, memoryview]) -> NvolReader:
    """Open an in-memory ``.nvol`` (same checks as :class:`NvolReader`)."""
    return NvolReader(bytes(data))


def _uint(v: Any, what: str) -> int:
    # bool is an int subclass and 1.0 == 1; neither is a valid offset or length.
    if type(v) is not int or v < 0:
        raise NeurvolFormatError(f"{what} must be a non-negative integer, got {brief(v)}")
    return v


class _Source:
    size: int

    def pread(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _BytesSource(_Source):
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    def pread(self, offset: int, length: int) -> bytes:
        return self._data[offset:offset + length]


class _FileSource(_Source):
    def __init__(self, path: Any) -> None:
        p = os.fspath(path)
        try:
            # O_NONBLOCK: opening a FIFO (or a device) must not block waiting for a writer;
            # it is refused just below. It changes nothing for regular files.
            self._fd: Optional[int] = os.open(
                p, os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise NeurvolIOError(f"{p}: no such file") from None
        except IsADirectoryError:
            raise NeurvolIOError(f"{p} is a directory, not an .nvol file") from None
        except OSError as e:
            raise NeurvolIOError(f"cannot open {p}: {e.strerror or e}") from e
        try:
            st = os.fstat(self._fd)
        except OSError as e:
            self.close()
            raise NeurvolIOError(f"cannot open {p}: {e.strerror or e}") from e
        if not stat.S_ISREG(st.st_mode):
            self.close()
            raise NeurvolIOError(f"{p} is not a regular file")
        self.size = st.st_size
        self._path = p
        self._lock = threading.Lock()

    def pread(self, offset: int, length: int) -> bytes:
        fd = self._fd
        if fd is None:
            raise NeurvolInputError(f"{self._path} is closed; open it again to read from it")
        chunks: List[bytes] = []
        try:
            while length > 0:  # pread may return less than asked (large reads, signals)
                if hasattr(os, "pread"):
                    chunk = os.pread(fd, length, offset)
                else:  # Windows: no pread; serialise seek+read
                    with self._lock:
                        os.lseek(fd, offset, os.SEEK_SET)
                        chunk = os.read(fd, length)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                length -= len(chunk)
        except OSError as e:
            raise NeurvolIOError(f"cannot read {self._path}: {e.strerror or e}") from e
        return b"".join(chunks)

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)
