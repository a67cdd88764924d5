"""Fuzzing support shared by ``tests/test_fuzz.py`` (hypothesis, bounded, in CI) and
``tests/fuzz/fuzz_open.py`` (atheris / random loop, long runs).

* :func:`seed_files` - valid files to mutate: a tiny fvsrn model, a constant volume and
  every ``tests/golden/*.nvol`` (new architectures' golden files are picked up as they
  are added).
* :func:`mutate` - one structure-aware mutation: bit flips, byte replacements,
  truncations, insertions, deletions, header JSON edits with the header CRC (and, where
  the grid allows, the section table) recomputed, payload edits re-checksummed with
  ``serialize_nvol``, edits of the decompressed tensor records (re-compressed), zstd
  bombs, hostile constant bricks and re-gridded files.
* :func:`exercise` - the harness: open, info, repr, decode, query, region read and
  re-serialization. Only :class:`~neurvol.NeurvolFormatError` may escape from a damaged
  file; any other exception is a bug. :func:`guarded` adds a per-input deadline and an
  address-space cap, so hangs and huge allocations are reported too.

Mutations draw their choices from a :class:`Chooser`: hypothesis (``HypothesisChooser``)
in the test suite, ``random.Random`` (``RandomChooser``) in the long-running fuzzer, so
both explore the same mutation space.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import json
import math
import os
import random
import signal
import struct
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import zstandard

try:
    import resource
except ImportError:  # Windows: no address-space cap
    resource = None  # type: ignore[assignment]

import neurvol
from neurvol import NeuralVolume, NeurvolFormatError
from neurvol.series import NeuralSeries, is_series_header
from neurvol.cli import _format_info
from neurvol.container import MAGIC, NvolReader, serialize_nvol
from neurvol.container import compact as C
from neurvol.container.format import COMPACT_MINOR
from neurvol.errors import NeurvolInputError

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_DIR = os.path.join(os.path.dirname(HERE), "golden")

# ---------------------------------------------------------------------------------------
# seeds


@functools.lru_cache(maxsize=None)
def tiny_model_file(arch: str = "fvsrn", codec: Optional[str] = None,
                    compact: bool = False) -> bytes:
    """A real model file of ~2 KB (10x12x14 float32 crop of the sample, ratio 3);
    ``codec`` is an ``encode(codec=...)`` dict as JSON. The encoder writes a compact
    header (format 1.4); unless ``compact``, the same file with a JSON header (1.0), whose
    header the mutations and hostile tests edit as JSON."""
    vol = np.ascontiguousarray(neurvol.sample_volume()[26:36, 24:36, 22:36]).astype(np.float32)
    data = neurvol.encode(vol, ratio=3, steps=10, seed=0, arch=arch, quiet=True,
                          codec=json.loads(codec) if codec else None).to_bytes()
    return data if compact else as_json_file(data)


def as_json_file(data: bytes) -> bytes:
    """The file *data* with a JSON header (format 1.0) if it has a compact one."""
    r = NvolReader(data)
    if r.version[1] < COMPACT_MINOR:
        return data
    hdr = {k: v for k, v in r.header.items() if k != "sections"}
    return serialize_nvol(hdr, [r.read_brick(b) for b in range(r.brick_count)])


@functools.lru_cache(maxsize=None)
def constant_file() -> bytes:
    """A constant volume's file, with a JSON header (constant_v1.4.nvol is compact)."""
    vol = np.full((6, 7, 8), -3.25, dtype=np.float32)
    return as_json_file(neurvol.encode(vol, ratio=2, quiet=True).to_bytes())


def golden_files() -> List[str]:
    """Every golden ``.nvol`` file, whatever its architecture."""
    return sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.nvol")))


@functools.lru_cache(maxsize=None)
def masked_file() -> bytes:
    """A model file with a mask (format 1.3, spec/mask.md): the tiny crop with a ball of
    NaN, so mutations reach the mask section's decoder."""
    vol = np.ascontiguousarray(neurvol.sample_volume()[26:36, 24:36, 22:36]).astype(np.float32)
    z, y, x = np.mgrid[0:10, 0:12, 0:14]
    vol[(z - 5) ** 2 + (y - 6) ** 2 + (x - 7) ** 2 > 30] = np.nan
    return neurvol.encode(vol, ratio=3, steps=10, seed=0, arch="fvsrn", quiet=True).to_bytes()


def seed_files() -> List[Tuple[str, bytes]]:
    """(name, bytes) of every seed."""
    seeds = [("tiny_fvsrn", tiny_model_file()), ("tiny_amgsrn", tiny_model_file("amgsrn")),
             ("tiny_fvsrn_compact", tiny_model_file(compact=True)),
             ("constant", constant_file()), ("tiny_masked", masked_file()),
             ("tiny_series", tiny_series_file())]
    # Architectures and record kinds no golden file has (vq grids, pruned masks), so the
    # mutations reach their decoders too.
    extra = [("tiny_hashgrid", "hashgrid", None), ("tiny_neurcomp", "neurcomp", None),
             ("tiny_fvsrn_vq", "fvsrn", '{"grids": "vq"}'),
             ("tiny_fvsrn_pruned", "fvsrn", '{"prune": 0.5}')]
    for name, arch, codec in extra:
        try:
            seeds.append((name, tiny_model_file(arch, codec)))
        except neurvol.NeurvolError:   # a budget too small for this variant: skip it
            pass
    for path in golden_files():
        with open(path, "rb") as f:
            seeds.append((os.path.basename(path), f.read()))
    return seeds


# ---------------------------------------------------------------------------------------
# choosers


class Chooser:
    """Source of the mutators' choices."""

    def int(self, lo: int, hi: int) -> int:  # inclusive
        raise NotImplementedError

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.int(0, len(seq) - 1)]

    def bool(self) -> bool:
        return self.int(0, 1) == 1

    def bytes(self, max_len: int) -> bytes:
        return bytes(self.int(0, 255) for _ in range(self.int(1, max_len)))

    def position(self, n: int) -> int:
        """A position in [0, n), biased to the head (preamble, header) and to the ends."""
        if n <= 0:
            return 0
        kind = self.int(0, 3)
        if kind == 0:
            return self.int(0, min(n, 64) - 1)
        if kind == 1:
            return max(0, n - 1 - self.int(0, min(n, 64) - 1))
        return self.int(0, n - 1)


class RandomChooser(Chooser):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisChooser(Chooser):
    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self._st = st
        self.data = data

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self._st.integers(lo, hi))

    def bytes(self, max_len: int) -> bytes:
        return self.data.draw(self._st.binary(min_size=1, max_size=max_len))


# ---------------------------------------------------------------------------------------
# hostile values

HOSTILE_INTS = [0, 1, -1, 2, 3, 7, 255, 256, 4095, 4096, 4097, 65535, 65536, 65537,
                2 ** 24, 2 ** 24 + 1, 2 ** 28, 2 ** 28 + 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32,
                2 ** 40, 2 ** 40 + 1, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 10 ** 30,
                -2 ** 31, -2 ** 63, 10 ** 400]
HOSTILE_FLOATS = [0.0, -0.0, 0.5, -1.5, 1.0, 2.0, 2.5, 1e-300, 5e-324, 1e300, -1e300,
                  1.7976931348623157e308, -1.7976931348623157e308, 3.4e38, 65504.0, 1e10]
HOSTILE_STRINGS = ["", "a", "0", "12", "234", "-1", "float32", "<f4", ">f8", "<u2", "u1",
                   "i8", "f2", "f16", "g", "O", "V8", "S5", "U3", "b1", "?", "c8", "M8",
                   "m8", "f4,f4", "(2,)f4", "(1000000000,)f4", "(100000000000000,)f4",
                   "fvsrn", "neurcomp", "amgsrn", "kmeans-zstd", "nan", "inf", "1e999",
                   "\x00", "\u00e9" * 300, "x" * 5000]
HOSTILE_OTHER: List[Any] = [
    None, True, False, [], {}, [1], [2, 2, 2], [1, 1, 1], [2, 1, 1], [4096] * 3,
    [4096, 4096, 4097], [2 ** 31] * 3, [2 ** 40, 2, 2], [2 ** 20] * 3, [2.0, 2, 2],
    ["2", "2", "2"], [[2], [2], [2]], [-2, 2, 2], [3, 3, 3, 3], {"a": 1},
    {"name": "kmeans-zstd", "version": 1}, {"name": "kmeans-zstd", "version": 2},
    {"arch": "fvsrn", "config": {}}, {"shape": [2, 2, 2]},
]


def _nested(depth: int) -> Any:
    v: Any = []
    for _ in range(depth - 1):
        v = [v]
    return v


def hostile_value(ch: Chooser, current: Any = None, depth: int = 0) -> Any:
    """A value likely to break a validator: boundary ints, huge/negative/float numbers,
    dtype-like strings, wrong types, containers of those, or a tweak of *current*."""
    kind = ch.int(0, 7 if depth < 2 else 4)
    if kind == 0:
        return ch.choice(HOSTILE_INTS)
    if kind == 1:
        return ch.choice(HOSTILE_FLOATS)
    if kind == 2:
        return ch.choice(HOSTILE_STRINGS)
    if kind == 3:
        return ch.choice(HOSTILE_OTHER)
    if kind == 4:
        return _tweak(ch, current)
    if kind == 5:
        return [hostile_value(ch, None, depth + 1) for _ in range(ch.int(0, 4))]
    if kind == 6:
        return {ch.choice(["a", "shape", "grid", "arch", "config", "name", "version"]):
                hostile_value(ch, None, depth + 1) for _ in range(ch.int(0, 3))}
    return _nested(ch.choice([2, 60, 63, 64, 65, 70]))


def _tweak(ch: Chooser, v: Any) -> Any:
    """A small change of an existing value: off by one, scaled, negated, retyped."""
    if type(v) is int:
        return ch.choice([v + 1, v - 1, -v, v * 2, v * 4096, v * 2 ** 31, float(v), str(v),
                          [v], 0, v ** 3 if abs(v) < 10 ** 6 else v])
    if type(v) is float:
        return ch.choice([v * 2, -v, v * 1e300 if abs(v) < 1 else v * 1e10, int(v) if
                          math.isfinite(v) else 0, str(v), v + 1.0, 0.0])
    if isinstance(v, list) and v:
        i = ch.int(0, len(v) - 1)
        out = list(v)
        mode = ch.int(0, 3)
        if mode == 0:
            out[i] = _tweak(ch, v[i])
        elif mode == 1:
            del out[i]
        elif mode == 2:
            out.append(v[i])
        else:
            out = out[::-1]
        return out
    if isinstance(v, str):
        return ch.choice([v + "x", v.upper(), v[:-1], "<" + v, ">" + v, v * 2, ""])
    return ch.choice(HOSTILE_OTHER)


# ---------------------------------------------------------------------------------------
# file surgery


def split_compact(data: bytes) -> Optional[Tuple[Dict[str, Any], int, bytes]]:
    """(reduced header, brick CRC, brick) of a file with a compact header (format 1.4),
    or None if it has none or it does not decode."""
    if len(data) < 20 or data[:8] != MAGIC:
        return None
    n = struct.unpack_from("<I", data, 12)[0]
    raw = data[16:16 + n]
    if 20 + n > len(data) or not C.is_compact(raw) or len(raw) < C.COMPACT_PREFIX.size:
        return None
    _, dict_id, crc = C.COMPACT_PREFIX.unpack_from(raw)
    try:
        d = zstandard.ZstdDecompressor(dict_data=C._dictionary(dict_id))
        hdr = json.loads(d.decompress(C.ZSTD_MAGIC + raw[C.COMPACT_PREFIX.size:]))
    except (ValueError, zstandard.ZstdError, neurvol.NeurvolError, RecursionError):
        return None
    return (hdr, crc, data[20 + n:]) if isinstance(hdr, dict) else None


def forge_compact(reduced: Any, brick_crc: int, brick: bytes, *, dict_id: int = 1,
                  minor: int = 4, frame: Optional[bytes] = None) -> bytes:
    """A file with a compact header holding *reduced* (any JSON value, stored as given:
    no defaults left out), or the raw zstd *frame* (with its magic) if given, behind a
    correct header CRC."""
    if frame is None:
        frame = zstandard.ZstdCompressor(
            level=3, dict_data=C._dictionary(1), write_checksum=False, write_dict_id=False,
            write_content_size=True).compress(_dumps(reduced))
    raw = C.COMPACT_PREFIX.pack(C.COMPACT_MARKER, dict_id, brick_crc) + frame[4:]
    head = struct.pack("<8sHHI", MAGIC, 1, minor, len(raw)) + raw
    return head + struct.pack("<I", zlib.crc32(head)) + brick


def mutate_compact(data: bytes, ch: Chooser) -> Optional[bytes]:
    """Edit one value of a compact header's reduced JSON, or its frame or prefix (a
    lying size, an unknown dictionary, junk after the frame), behind a valid CRC."""
    parts = split_compact(data)
    if parts is None:
        return None
    hdr, crc, brick = parts
    op = ch.int(0, 5)
    if op == 0:        # the frame's declared size, as stored, changed
        frame = bytearray(C.ZSTD_MAGIC + data[22:16 + struct.unpack_from("<I", data, 12)[0]])
        frame[5] = ch.choice([0, 1, 0x7F, 0xFF, frame[5] ^ 1])
        return forge_compact(None, crc, brick, frame=bytes(frame))
    if op == 1:
        return forge_compact(hdr, crc, brick, dict_id=ch.choice([0, 2, 255]))
    if op == 2:        # junk or a second frame after the frame
        frame = C.ZSTD_MAGIC + data[22:16 + struct.unpack_from("<I", data, 12)[0]]
        return forge_compact(None, crc, brick, frame=frame + ch.choice([ch.bytes(8), frame]))
    if op == 3:        # a stored implied key, or a missing default restored
        hdr[ch.choice(["bricks", "sections"])] = hostile_value(ch)
        return forge_compact(hdr, crc, brick)
    paths = _paths(hdr)
    if not paths:
        return None
    path = ch.choice(paths)
    parent = _get(hdr, path[:-1])
    if op == 4 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = hostile_value(ch, parent[path[-1]])
    return forge_compact(hdr, crc if ch.int(0, 3) else zlib.crc32(brick) ^ 1, brick)


def split_compact_sections(data: bytes
                           ) -> Optional[Tuple[Dict[str, Any], bytes, List[list], bytes, bytes]]:
    """(reduced header, prefix, [[name bytes, crc, length], ...] of the extra sections,
    the brick length as stored (varint bytes), data area) of a file with a compact header
    with sections (format 1.5), or None."""
    if len(data) < 20 or data[:8] != MAGIC:
        return None
    n = struct.unpack_from("<I", data, 12)[0]
    raw = data[16:16 + n]
    if 20 + n > len(data) or raw[:1] != bytes([C.COMPACT_SECTIONS_MARKER]):
        return None
    try:
        brick_len, pos = C._read_varint(raw, C.COMPACT_PREFIX.size, "fuzz")
        count = raw[pos]
        pos += 1
        entries = []
        for _ in range(count):
            k = raw[pos]
            name = raw[pos + 1:pos + 1 + k]
            (crc,) = struct.unpack_from("<I", raw, pos + 1 + k)
            length, pos = C._read_varint(raw, pos + 5 + k, "fuzz")
            entries.append([name, crc, length])
        d = zstandard.ZstdDecompressor(dict_data=C._dictionary(raw[1]))
        hdr = json.loads(d.decompress(C.ZSTD_MAGIC + raw[pos:]))
    except (ValueError, IndexError, struct.error, zstandard.ZstdError, neurvol.NeurvolError,
            RecursionError):
        return None
    if not isinstance(hdr, dict):
        return None
    return hdr, raw[:C.COMPACT_PREFIX.size], entries, C._varint(brick_len), data[20 + n:]


def forge_compact_sections(reduced: Any, prefix: bytes, entries: Sequence[list],
                           brick_len: bytes, area: bytes, *, count: Optional[int] = None,
                           minor: int = 5) -> bytes:
    """A file with a compact header with sections: *prefix* (marker, dictionary, brick
    CRC), the brick length varint, *count* (default: the entries'), the entries, a frame of
    *reduced*, behind a correct header CRC."""
    frame = zstandard.ZstdCompressor(
        level=3, dict_data=C._dictionary(1), write_checksum=False, write_dict_id=False,
        write_content_size=True).compress(_dumps(reduced))
    table = bytearray(brick_len) + bytes([len(entries) if count is None else count])
    for name, crc, length in entries:
        table += bytes([len(name) & 0xFF]) + bytes(name) + struct.pack("<I", crc & 0xFFFFFFFF)
        table += C._varint(length)
    raw = bytes(prefix) + bytes(table) + frame[4:]
    head = struct.pack("<8sHHI", MAGIC, 1, minor, len(raw)) + raw
    return head + struct.pack("<I", zlib.crc32(head)) + area


def mutate_compact_sections(data: bytes, ch: Chooser) -> Optional[bytes]:
    """Edit a compact header with sections (format 1.5) behind a valid CRC: a lying brick
    or section length, a section count, name or CRC changed, the reduced JSON edited."""
    parts = split_compact_sections(data)
    if parts is None:
        return None
    hdr, prefix, entries, brick_len, area = parts
    op = ch.int(0, 5)
    lies = [0, 1, len(area), len(area) + 1, (1 << 32) - 1, ch.int(0, 1 << 20)]
    if op == 0:
        return forge_compact_sections(hdr, prefix, entries, C._varint(ch.choice(lies)), area)
    if op == 1 and entries:
        ch.choice(entries)[2] = ch.choice(lies)
        return forge_compact_sections(hdr, prefix, entries, brick_len, area)
    if op == 2:
        return forge_compact_sections(hdr, prefix, entries, brick_len, area,
                                      count=ch.choice([0, len(entries) + 1, 255]))
    if op == 3 and entries:
        e = ch.choice(entries)
        e[0] = ch.choice([b"bricks", b"brick_index", b"", b"\xff\xfe", entries[0][0],
                          ch.bytes(300)])
        return forge_compact_sections(hdr, prefix, entries, brick_len, area)
    if op == 4 and entries:
        ch.choice(entries)[1] ^= 1 << ch.int(0, 31)
        return forge_compact_sections(hdr, prefix, entries, brick_len, area)
    paths = _paths(hdr)
    if not paths:
        return None
    path = ch.choice(paths)
    parent = _get(hdr, path[:-1])
    if isinstance(parent, dict) and ch.bool():
        del parent[path[-1]]
    else:
        parent[path[-1]] = hostile_value(ch, parent[path[-1]])
    return forge_compact_sections(hdr, prefix, entries, brick_len, area)


def split_head(data: bytes) -> Optional[Tuple[Dict[str, Any], bytes]]:
    """(header dict, bytes after the header CRC), or None if the head is not parseable."""
    if len(data) < 20 or data[:8] != MAGIC:
        return None
    n = struct.unpack_from("<I", data, 12)[0]
    if 20 + n > len(data):
        return None
    try:
        hdr = json.loads(data[16:16 + n].decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(hdr, dict):
        return None
    return hdr, data[20 + n:]


def bricks_of(data: bytes) -> Optional[List[bytes]]:
    """Brick payloads of a file the container layer accepts, else None."""
    try:
        r = NvolReader(data)
        return [r.read_brick(b) for b in range(r.brick_count)]
    except NeurvolFormatError:
        return None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def forge(hdr: Dict[str, Any], tail: bytes, major: int = 1, minor: int = 0) -> bytes:
    """Preamble + *hdr* (section offsets shifted by the change of header length, so only
    the edit itself is wrong) + a correct header CRC + *tail*."""
    sections = hdr.get("sections")
    orig = []
    if isinstance(sections, list):
        orig = [(s, s.get("offset")) for s in sections
                if isinstance(s, dict) and type(s.get("offset")) is int]
    # Offsets are absolute: find the header length N for which they are consistent.
    first = min((o for _, o in orig), default=None)
    raw = _dumps(hdr)
    for _ in range(6):
        if first is None:
            break
        delta = 20 + len(raw) - first
        for s, o in orig:
            s["offset"] = o + delta
        new = _dumps(hdr)
        if len(new) == len(raw):
            raw = new
            break
        raw = new
    head = struct.pack("<8sHHI", MAGIC, major, minor, len(raw)) + raw
    return head + struct.pack("<I", zlib.crc32(head)) + tail


def rebuild(hdr: Dict[str, Any], bricks: Sequence[bytes]) -> Optional[bytes]:
    """A consistent file (section table and every CRC recomputed), or None if the writer
    refuses the header (e.g. a hostile grid)."""
    try:
        return serialize_nvol({k: v for k, v in hdr.items() if k != "sections"}, bricks)
    except (NeurvolInputError, ValueError, TypeError, RecursionError):
        return None


def _paths(obj: Any, prefix: Tuple[Any, ...] = (), out: Optional[list] = None,
           depth: int = 0) -> List[Tuple[Any, ...]]:
    """Every JSON path in *obj* (dict keys and list indices), containers included."""
    if out is None:
        out = []
    if depth > 6:
        return out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            _paths(v, prefix + (k,), out, depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out.append(prefix + (i,))
            _paths(v, prefix + (i,), out, depth + 1)
    return out


def _get(obj: Any, path: Tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def set_at(path: Sequence[Any], value: Any) -> Callable[[Dict[str, Any]], None]:
    """A header edit that sets the value at ``path`` (keys and indexes) to ``value``."""
    def edit(h: Dict[str, Any]) -> None:
        obj = h
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return edit


def _deep_copy(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


# Paths the validators own; edits there are drawn more often than opaque keys.
_FOCUS = [("volume", "shape"), ("volume", "dtype"), ("volume", "min"), ("volume", "max"),
          ("volume",), ("model",), ("model", "arch"), ("model", "config"), ("codec",),
          ("codec", "name"), ("codec", "version"), ("bricks", "grid"), ("bricks",),
          ("sections",)]


def mutate_header(data: bytes, ch: Chooser) -> Optional[bytes]:
    """Edit one value of the header JSON, then re-checksum (and re-lay-out if possible)."""
    parts = split_head(data)
    if parts is None:
        return None
    hdr, tail = parts
    hdr = _deep_copy(hdr)
    paths = _paths(hdr)
    if not paths:
        return None
    if ch.bool():
        focus = [p for p in _FOCUS if _has(hdr, p)]
        cfg = hdr.get("model", {}).get("config") if isinstance(hdr.get("model"), dict) else None
        if isinstance(cfg, dict):
            focus += [("model", "config", k) for k in cfg]
        path = ch.choice(focus or paths)
    else:
        path = ch.choice(paths)
    parent = _get(hdr, path[:-1])
    key = path[-1]
    op = ch.int(0, 9)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 1 and isinstance(parent, dict):
        parent[ch.choice(["zz_unknown", "A", "shape2"])] = hostile_value(ch)
    else:
        parent[key] = hostile_value(ch, parent[key])
    if path[0] != "sections" and ch.int(0, 3):
        bricks = bricks_of(data)
        if bricks is not None:
            # Keep the brick count consistent with an edited grid where possible.
            grid = hdr.get("bricks", {}).get("grid") if isinstance(hdr.get("bricks"), dict) else None
            if (isinstance(grid, list) and len(grid) == 3 and all(type(g) is int and 0 < g <= 8 for g in grid)
                    and len(bricks) != grid[0] * grid[1] * grid[2]):
                bricks = [bricks[0]] * (grid[0] * grid[1] * grid[2])
            out = rebuild(hdr, bricks)
            if out is not None:
                return out
    try:
        return forge(hdr, tail)
    except (ValueError, TypeError, RecursionError):
        return None


def _has(obj: Any, path: Tuple[Any, ...]) -> bool:
    try:
        _get(obj, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


def mutate_bytes(data: bytes, ch: Chooser) -> bytes:
    """Byte-level: bit flips, replacements, truncation, insertion, deletion."""
    b = bytearray(data)
    op = ch.int(0, 4)
    if not b:
        return bytes(ch.bytes(32))
    if op == 0:
        for _ in range(ch.int(1, 4)):
            b[ch.position(len(b))] ^= 1 << ch.int(0, 7)
    elif op == 1:
        for _ in range(ch.int(1, 3)):
            b[ch.position(len(b))] = ch.choice([0, 1, 0x7F, 0x80, 0xFF, ch.int(0, 255)])
    elif op == 2:
        del b[ch.position(len(b)):]
    elif op == 3:
        pos = ch.position(len(b) + 1)
        b[pos:pos] = ch.bytes(16)
    else:
        pos = ch.position(len(b))
        del b[pos:pos + ch.int(1, 16)]
    return bytes(b)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(data)


def _record_offsets(stream: bytes, sizes: Sequence[int]) -> List[Tuple[int, int]]:
    """(offset of the method byte, method) of each tensor record of a valid stream."""
    out, pos = [], 0
    for n in sizes:
        if pos >= len(stream):
            break
        method = stream[pos]
        out.append((pos, method))
        if method == 0:
            pos += 1 + 4 * n
        elif method == 1:
            pos += 1 + 2 * n
        elif method == 2 and pos + 8 <= len(stream):
            kind, layout, bits, k = struct.unpack_from("<BBBI", stream, pos + 1)
            width = 2 if kind == 0 else 4
            idx = {0: (n * bits + 7) // 8, 1: n, 2: 2 * n}.get(layout, 0)
            pos += 8 + width * k + idx
        else:
            break
    return out


def _tensor_sizes(hdr: Dict[str, Any]) -> Optional[List[int]]:
    try:
        from neurvol.neural_volume import _config_of, tensor_specs

        arch, cfg = _config_of(hdr.get("model"))
        return [math.prod(s) for _, s in tensor_specs(arch, cfg)]
    except (ImportError, NeurvolFormatError):
        return None


def mutate_records(data: bytes, ch: Chooser) -> Optional[bytes]:
    """Edit the decompressed tensor records of a model brick (method, k-means header,
    codebook, indices), re-compress, re-checksum."""
    parts = split_head(data)
    bricks = bricks_of(data)
    if parts is None or not bricks or bricks[0][:1] != b"\x01":
        return None
    hdr = parts[0]
    try:
        stream = bytearray(zstandard.ZstdDecompressor().stream_reader(bricks[0][1:]).read(1 << 24))
    except zstandard.ZstdError:
        return None
    sizes = _tensor_sizes(hdr) or []
    recs = _record_offsets(bytes(stream), sizes)
    op = ch.int(0, 6)
    recs = [(p, m) for p, m in recs if p + 12 <= len(stream)]
    if recs and op <= 3:
        pos, method = ch.choice(recs)
        if op == 0:
            stream[pos] = ch.choice([0, 1, 2, 3, 0xFF])
        elif method == 2 and op == 1:  # k-means header: codebook kind, layout, bits, k
            field = ch.int(0, 3)
            if field == 0:
                stream[pos + 1] = ch.choice([0, 1, 2, 0xFF])
            elif field == 1:
                stream[pos + 2] = ch.choice([0, 1, 2, 3, 0xFF])
            elif field == 2:
                stream[pos + 3] = ch.choice([0, 1, 7, 8, 9, 16, 17, 0xFF])
            else:
                struct.pack_into("<I", stream, pos + 4,
                                 ch.choice([0, 1, 2, 3, 64, 65535, 65536, 65537, 2 ** 31, 2 ** 32 - 1]))
        elif method == 2 and op == 2:  # a codebook value -> NaN / inf / huge
            kind = stream[pos + 1]
            if kind == 0:
                stream[pos + 8:pos + 10] = ch.choice([b"\x00\x7c", b"\x00\x7e", b"\xff\x7b"])
            else:
                stream[pos + 8:pos + 12] = struct.pack(
                    "<f", ch.choice([float("inf"), float("nan"), 3.4e38, -3.4e38]))
        else:  # an index or raw value byte right after the header
            off = min(len(stream) - 1, pos + 8 + ch.int(0, 16))
            stream[off] = ch.choice([0xFF, 0x80, 0x7F, 0])
    elif op == 4:
        del stream[ch.position(len(stream)):]
    elif op == 5:
        p = ch.position(len(stream) + 1)
        stream[p:p] = ch.bytes(8)
    else:
        stream += ch.bytes(8)
    new = [b"\x01" + _zstd(bytes(stream))] + bricks[1:]
    return rebuild(hdr, new)


def mutate_payload(data: bytes, ch: Chooser) -> Optional[bytes]:
    """Replace or damage a brick payload, with every checksum recomputed."""
    parts = split_head(data)
    bricks = bricks_of(data)
    if parts is None or not bricks:
        return None
    hdr = parts[0]
    b = ch.int(0, len(bricks) - 1)
    op = ch.int(0, 6)
    if op == 0:
        bricks[b] = mutate_bytes(bricks[b], ch)
    elif op == 1:  # zstd bomb: small frame, huge content
        bricks[b] = b"\x01" + _zstd(b"\x00" * ch.choice([1 << 16, 1 << 22, 1 << 26]))
    elif op == 2:  # hostile constant
        value = ch.choice([float("nan"), float("inf"), -float("inf"), 1e300, -1e300, 0.0,
                           1e-310, 3.4e38, 12345.0])
        bricks[b] = struct.pack("<Bd", 0, value)
    elif op == 3:
        bricks[b] = ch.choice([b"", b"\x00", b"\x01", b"\x02" + b"\x00" * 8,
                               b"\x00" * 10, b"\x01" + b"\x28\xb5\x2f\xfd", b"\xff" * 9])
    elif op == 4:  # a valid frame of random content
        bricks[b] = b"\x01" + _zstd(ch.bytes(64) * ch.int(1, 64))
    elif op == 5:  # a second frame, or junk, after the first one
        bricks[b] = bricks[b] + ch.choice([_zstd(b"x"), _zstd(b""), b"junk", b"\x00"])
    else:  # swap in another seed-like payload kind
        bricks[b] = struct.pack("<Bd", 0, 1.0) if bricks[b][:1] == b"\x01" else b"\x01" + _zstd(b"\x00")
    return rebuild(hdr, bricks)


def mutate_grid(data: bytes, ch: Chooser) -> Optional[bytes]:
    """Same header and payloads on another brick grid (several bricks; constants or
    copies of the original payload), exercising the multi-brick paths."""
    parts = split_head(data)
    bricks = bricks_of(data)
    if parts is None or not bricks:
        return None
    hdr = _deep_copy(parts[0])
    grid = ch.choice([[1, 1, 2], [2, 1, 1], [1, 2, 2], [2, 2, 2], [3, 1, 2], [1, 1, 1]])
    hdr.setdefault("bricks", {})
    if not isinstance(hdr["bricks"], dict):
        return None
    hdr["bricks"]["grid"] = grid
    vol = hdr.get("volume") if isinstance(hdr.get("volume"), dict) else {}
    lo, hi = vol.get("min", 0.0), vol.get("max", 1.0)
    out = []
    for _ in range(grid[0] * grid[1] * grid[2]):
        kind = ch.int(0, 3)
        if kind == 0:
            out.append(bricks[0])
        elif kind == 1 and isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            out.append(struct.pack("<Bd", 0, float(ch.choice([lo, hi, (lo + hi) / 2]))))
        elif kind == 2:
            out.append(b"")
        else:
            out.append(struct.pack("<Bd", 0, 7.0))
    return rebuild(hdr, out)


# Fields of a kind-2 payload (codec neurvol 2): (offset, size, what) of every count,
# length, size and stream a reader trusts, found by walking the records.
_STREAM_HEAD = struct.Struct("<BBI")


def _walk_stream(p: bytes, pos: int, fields: list) -> int:
    coder, width, length = _STREAM_HEAD.unpack_from(p, pos)
    fields += [(pos, 1, "coder"), (pos + 1, 1, "width"), (pos + 2, 4, "length")]
    data = pos + 6
    if coder == 2 and length >= 8:
        fields += [(data, 4, "alphabet"), (data + 4, 4, "table_length")]
    fields.append((data, length, f"stream{coder}"))
    return data + length


def _walk_records(p: bytes, specs: Sequence[Tuple[str, Tuple[int, ...]]]) -> list:
    """Fields of a valid kind-2 payload (stops quietly at anything unexpected)."""
    fields: list = []
    pos = 1
    try:
        for _name, shape in specs:
            method, flags = p[pos], p[pos + 1]
            fields += [(pos, 1, "method"), (pos + 1, 1, "flags")]
            pos += 2
            if flags & 1:
                pos = _walk_stream(p, pos, fields)
            if method in (2, 5):        # kmeans / vq: book kind, k, codebook
                kind, k = struct.unpack_from("<BI", p, pos)
                fields += [(pos, 1, "book_kind"), (pos + 1, 4, "k")]
                vec = shape[-4] if method == 5 and len(shape) >= 4 else 1
                pos += 5 + (2 if kind == 0 else 4) * k * vec
            elif method in (3, 4):      # lorenzo / interp: step
                fields.append((pos, 4, "step"))
                pos += 4
            pos = _walk_stream(p, pos, fields)
    except (IndexError, struct.error):
        pass
    return fields


def _hostile_stream(ch: Chooser, n_hint: int) -> bytes:
    """Stream data meant to be decoded to many symbols from few bytes."""
    n = ch.choice([0, 1, n_hint, n_hint + 1, n_hint * 4, 1 << 20, 1 << 26])
    kind = ch.int(0, 3)
    if kind == 0:   # zstd of zeros, content size declared (maybe not the expected one)
        return zstandard.ZstdCompressor(level=1).compress(bytes(min(n, 1 << 26)))
    if kind == 1:   # zstd without a content size
        return zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(min(n, 1 << 22)))
    if kind == 2:   # rANS table [n, 0] (or alphabet 1) and no words
        counts = np.array(ch.choice([[n, 0], [n], [n // 2, n - n // 2], [0, 0]]), "<u4")
        table = zstandard.ZstdCompressor().compress(counts.tobytes())
        return struct.pack("<II", counts.size, len(table)) + table + ch.bytes(8)[:ch.int(0, 8)]
    return ch.bytes(64)


def mutate_streams(data: bytes, ch: Chooser) -> Optional[bytes]:
    """Edit the counts, lengths, sizes and stream contents of a kind-2 model payload
    (method, flags, coder, width, stream length, k, step, rANS alphabet and table, or a
    whole stream replaced by a bomb), then re-checksum."""
    parts = split_head(data)
    bricks = bricks_of(data)
    if parts is None or not bricks:
        return None
    hdr = parts[0]
    b = ch.int(0, len(bricks) - 1)
    p = bricks[b]
    if p[:1] != b"\x02":
        return None
    try:
        from neurvol.neural_volume import _config_of, tensor_specs

        spec = hdr.get("model")
        models = hdr.get("bricks", {}).get("models") if isinstance(hdr.get("bricks"), dict) else None
        if models:
            spec = models[hdr["bricks"]["model_ids"][b]]
        specs = tensor_specs(*_config_of(spec))
    except Exception:  # noqa: BLE001 - a header this mutator cannot read
        return None
    fields = _walk_records(p, specs)
    if not fields:
        return None
    pos, size, what = ch.choice(fields)
    out = bytearray(p)
    if what.startswith("stream"):
        n_hint = max(1, size)
        new = _hostile_stream(ch, n_hint) if ch.bool() else bytes(mutate_bytes(bytes(out[pos:pos + size]) or b"\x00", ch))
        out[pos:pos + size] = new
        # keep the stream's length field consistent (or not, sometimes)
        if ch.int(0, 3) and pos >= 6:
            struct.pack_into("<I", out, pos - 4, len(new) & 0xFFFFFFFF)
            coder = {"zstd": 1, "rans": 2}.get(ch.choice(["keep", "zstd", "rans"]))
            if coder is not None:
                out[pos - 6] = coder
    elif size == 1:
        out[pos] = ch.choice([0, 1, 2, 3, 4, 5, 6, 0x7F, 0xFF, ch.int(0, 255)])
    elif size == 4 and what == "step":
        struct.pack_into("<f", out, pos, ch.choice([0.0, -1.0, float("inf"), float("nan"),
                                                     1e-45, 3.4e38, 1.0]))
    else:
        value = ch.choice([0, 1, 2, 255, 256, 65535, 65536, 65537, 1 << 20, (1 << 20) + 1,
                           1 << 28, 1 << 31, (1 << 32) - 1, ch.int(0, (1 << 32) - 1)])
        struct.pack_into("<I", out, pos, value)
    bricks[b] = bytes(out)
    return rebuild(hdr, bricks)


MUTATORS: List[Tuple[str, Callable[[bytes, Chooser], Optional[bytes]], int]] = [
    ("bytes", mutate_bytes, 3),
    ("header", mutate_header, 4),
    ("payload", mutate_payload, 2),
    ("records", mutate_records, 2),
    ("streams", mutate_streams, 3),
    ("grid", mutate_grid, 1),
    ("compact", mutate_compact, 2),
    ("compact_sections", mutate_compact_sections, 1),
]
_WEIGHTED = [m for m in MUTATORS for _ in range(m[2])]


def mutate(data: bytes, ch: Chooser, rounds: int = 1, kinds: Optional[Sequence[str]] = None
           ) -> Tuple[bytes, List[str]]:
    """Apply *rounds* mutations (kinds drawn by *ch*, restricted to *kinds* if given).
    Returns (new bytes, names of the mutations applied)."""
    pool = [m for m in _WEIGHTED if kinds is None or m[0] in kinds]
    applied = []
    for _ in range(rounds):
        name, fn, _w = ch.choice(pool)
        try:
            new = fn(data, ch)
        except Exception:  # noqa: BLE001 - the input was too damaged for this structured edit
            new = None
        if new is None:  # not applicable to this input (e.g. payload edits of a broken file)
            name, new = "bytes", mutate_bytes(data, ch)
        data = new
        applied.append(name)
    return data, applied


# ---------------------------------------------------------------------------------------
# the harness


class HarnessTimeout(Exception):
    """An input took longer than the per-input deadline (a hang)."""


#: Largest true-shape decode the harness does; bigger volumes are decoded resampled.
DECODE_VOXELS = 4096


def exercise(data: bytes) -> str:
    """Run the reader over *data* the way users do. Returns where the input was refused
    (``"open"``, ``"header"``, ``"data"``) or ``"ok"``. Raises only on a bug: any
    exception but NeurvolFormatError, or a broken invariant (AssertionError)."""
    try:
        reader = NvolReader(data)
    except NeurvolFormatError:
        return "open"
    if is_series_header(reader.header):
        return _exercise_series(reader)
    try:
        nv = NeuralVolume(reader)
    except NeurvolFormatError:
        reader.close()
        return "header"
    with nv:
        info = nv.info()
        json.dumps(info, allow_nan=False)  # info() must stay JSON-able
        for _line in _format_info(info):  # what `neurvol info` prints
            pass
        repr(nv)
        shape = nv.shape
        assert len(shape) == 3 and all(type(s) is int and s >= 2 for s in shape)
        try:
            small = shape if math.prod(shape) <= DECODE_VOXELS else (3, 4, 5)
            full = nv.decode(shape=small, dtype=np.float32)
            assert full.shape == tuple(small) and full.dtype == np.float32
            assert nv.masked or np.isfinite(full).all()   # masked files: NaN regions
            nv.decode(shape=(2, 3, 2))  # the original's dtype (integer casts)
            corners = np.array([[-1, -1, -1], [1, 1, 1], [0, 0, 0], [-1, 0.25, 1]], dtype=np.float64)
            v = nv.query(corners, space="normalized")
            assert v.shape == (4,) and (nv.masked or np.isfinite(v).all())
            pts = np.array([[0, 0, 0], [s - 1 for s in shape], [(s - 1) / 2 for s in shape],
                            [s + 5 for s in shape]], dtype=np.float64)
            nv.query(pts, clamp=True)
            region = nv[0, :2, -1]
            assert region.shape == (2,)
            # An accepted file re-serializes to a file that is accepted again.
            again = nv.to_bytes()
            with NeuralVolume(NvolReader(again)) as nv2:
                assert nv2.shape == shape
        except NeurvolFormatError:
            return "data"
    return "ok"


def _exercise_series(reader: NvolReader) -> str:
    """:func:`exercise` for a time-series file (spec/series.md): every variable's first
    and last step decoded (resampled when large), queried between steps, re-serialized."""
    try:
        nv = NeuralSeries(reader)
    except NeurvolFormatError:
        reader.close()
        return "header"
    with nv:
        json.dumps(nv.info(), allow_nan=False)
        repr(nv)
        t, *shape = nv.shape
        assert t >= 1 and len(shape) == 3
        try:
            small = shape if math.prod(shape) <= DECODE_VOXELS else (3, 4, 5)
            for name in nv.variables:
                var = nv[name]
                # masked members (spec/series.md §3.1): NaN where masked, finite elsewhere
                masked = var.fill_value is not None
                for k in sorted({0, t - 1}):
                    step = var.step(k)
                    full = step.decode(shape=small, dtype=np.float32)
                    assert full.shape == tuple(small)
                    if step.masked:
                        assert np.isfinite(full[step.valid_mask()] if tuple(small) ==
                                           tuple(shape) else full[~np.isnan(full)]).all()
                    else:
                        assert np.isfinite(full).all()
                corners = np.array([[-1, -1, -1], [1, 1, 1]], dtype=np.float64)
                v = var.query(corners, t=(t - 1) / 2, space="normalized")
                assert v.shape == (2,) and (masked or np.isfinite(v).all())
            again = nv.to_bytes()
            with NeuralSeries(NvolReader(again)) as nv2:
                assert nv2.shape == nv.shape
        except NeurvolFormatError:
            return "data"
    return "ok"


def tiny_series_file() -> bytes:
    """A real time-series file: 4 steps of a slowly brightening crop, one group of a key
    and three deltas."""
    crop = neurvol.sample_volume()[26:36, 24:36, 22:36].astype(np.float32)
    steps = np.stack([crop * np.float32(1 + 0.01 * t) for t in range(4)])
    return neurvol.encode(steps, ratio=3, steps=10, seed=0, arch="fvsrn", group=4,
                          quiet=True).to_bytes()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise HarnessTimeout in the main thread after *seconds* (no-op off the main thread
    or without SIGALRM)."""
    if not hasattr(signal, "setitimer") or _not_main_thread():
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise HarnessTimeout(f"input not handled within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _not_main_thread() -> bool:
    import threading

    return threading.current_thread() is not threading.main_thread()


def _vm_bytes() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextlib.contextmanager
def memory_cap(extra_bytes: int) -> Iterator[None]:
    """Limit the address space to its current size + *extra_bytes* (Linux), so an
    allocation driven by a hostile value fails with MemoryError (reported as a bug)
    instead of swapping the machine to death."""
    vm = _vm_bytes()
    if vm is None or resource is None or not hasattr(resource, "RLIMIT_AS"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def guarded(data: bytes, seconds: float = 10.0) -> str:
    """:func:`exercise` under a per-input deadline (memory: wrap in :func:`memory_cap`)."""
    with deadline(seconds):
        return exercise(data)
