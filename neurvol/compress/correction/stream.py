"""Decoding a correction stream (``spec/correction.md`` §2): the parsed header, tables and
block index, and blocks decoded on demand. Blocks of one shape and kernel decode side by
side (one vectorized run of the predictor for all of them); only the rANS symbols are read
block by block, class by class."""
from __future__ import annotations

import dataclasses
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import NeurvolFormatError
from ..coders.zstd import zstd_exact
from .entropy import MAX_WEIGHT_CODE, constriction, rans_model, read_varints
from .layout import (BASE_CLASS, CUBIC_MODES, DATA_MODES, ESCAPE, FLAG_TABLES_RAW,
                     MAX_ALPHABET, MAX_BLOCK, MIN_BLOCK, MODE_BASE, MODE_NAMES, N_CLASSES,
                     TABLE_MAP_SHIFT, block_grid, block_slices, blocks_by_shape, cast_to,
                     parse_head, table_of)
from . import kernels
from .predict import AXIS_ORDERS, interp_passes
from ..interp import MAX_CODE

#: Voxels of the blocks decoded side by side at most (float64 values and int64 codes:
#: 16 bytes each), so a whole-volume decode holds a bounded working set.
BATCH_VOXELS = 1 << 21
#: Threads that decode groups of blocks side by side in a reader (a whole-volume decode,
#: the blocks a query touches); the encoder's checks decode on the calling thread.
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))


#: The exceptions of a block that has none: (flat positions, values).
_NO_EXCEPTIONS = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))


@dataclasses.dataclass
class DecodedBlocks:
    """Blocks of one shape decoded before the base is added: ``r`` (float64, ``(n, *shape)``)
    is the value for data modes and what is added to the base for the others."""

    ids: List[int]
    modes: np.ndarray                  # (n,) mode byte of each block
    r: np.ndarray
    exceptions: List[Tuple[np.ndarray, np.ndarray]]   # (flat positions, values) per block

    def pre(self, j: int, base: Optional[np.ndarray]) -> np.ndarray:
        """Float64 values of block ``j`` before the cast (``base``: over its voxels)."""
        if int(self.modes[j]) in DATA_MODES:
            return self.r[j]
        b = np.zeros(self.r.shape[1:]) if base is None else base
        return np.asarray(b, dtype=np.float64).reshape(self.r.shape[1:]) + self.r[j]

    def values(self, j: int, base: Optional[np.ndarray], dtype: np.dtype) -> np.ndarray:
        """Block ``j`` in the volume's dtype: the cast, then the exceptions."""
        out = cast_to(self.pre(j, base), dtype)
        idx, vals = self.exceptions[j]
        if idx.size:
            out.reshape(-1)[idx] = vals
        return out


@dataclasses.dataclass
class _Opened:
    """A block's rANS words (its word stack, little-endian u32) and escapes, as stored."""

    words: np.ndarray
    escapes: List[int]
    what: str

    def symbols(self) -> "_Symbols":
        """A reader of the block's symbols (constriction's coder over the words)."""
        try:
            coder = constriction().stream.stack.AnsCoder(self.words)   # copies the words
        except Exception as exc:   # constriction raises plain exceptions
            raise NeurvolFormatError(f"{self.what}: damaged rans stream: {exc}") from exc
        return _Symbols(coder, self.escapes, self.what)


@dataclasses.dataclass
class _Symbols:
    """The symbols of one block: its rANS word stack and its escapes (used in order)."""

    coder: object
    escapes: List[int]
    what: str
    used: int = 0

    def check_done(self) -> None:
        if not self.coder.is_empty() or self.used != len(self.escapes):
            raise NeurvolFormatError(f"{self.what}: symbols left over; the file is damaged")


def _read_codes(blocks: List[_Symbols], classes: np.ndarray, models: List[object],
                model_for) -> np.ndarray:
    """The codes (int64, ``classes``' shape ``(n, ...)``) of one pass of ``n`` blocks side
    by side: each block's symbols in stream order (§2.4: class by class ascending, each
    class's points in C order), one rANS call per block and class present. ``models``:
    the rANS model of each class where already built (else ``None``; ``model_for(class)``
    builds it)."""
    n = len(blocks)
    cls = np.ascontiguousarray(classes).reshape(n, -1)
    k = cls.shape[1]
    z = np.empty(n * k, dtype=np.int64)
    if k == 0:
        return z.reshape(classes.shape)
    # Stable sort by class within each row: a row's points in its stream order.
    order = np.argsort(cls.astype(np.uint8, copy=False), axis=1, kind="stable")
    order += (np.arange(n, dtype=np.int64) * k)[:, None]
    key = cls + (np.arange(n, dtype=np.int64) * N_CLASSES)[:, None]
    counts = np.bincount(key.reshape(-1), minlength=n * N_CLASSES).reshape(n, N_CLASSES)
    rows, keys = np.nonzero(counts)        # C order: block by block, classes ascending
    ends = np.cumsum(counts[rows, keys]).tolist()
    coders = [b.coder for b in blocks]
    pos = 0
    # The hot loop of a query's decode (one pass per block and class present): plain
    # lists and locals, no per-call lookups beyond the model list.
    for j, key, end in zip(rows.tolist(), keys.tolist(), ends):
        model = models[key]
        if model is None:
            model = model_for(key)
        try:
            z[pos:end] = coders[j].decode(model, end - pos)
        except NeurvolFormatError:
            raise
        except Exception as exc:   # constriction raises plain exceptions
            raise NeurvolFormatError(f"{blocks[j].what}: damaged rans stream: {exc}") from exc
        pos = end
    esc = np.flatnonzero(z == ESCAPE)
    for e in esc.tolist():                 # rare: codes beyond a table's alphabet
        blk = blocks[e // k]
        v = blk.escapes[blk.used] if blk.used < len(blk.escapes) else -1
        if not ESCAPE <= v <= 2 * MAX_CODE + 1:
            raise NeurvolFormatError(f"{blk.what}: bad escape; the file is damaged")
        z[e] = v
        blk.used += 1
    out = np.empty_like(z)
    out[order.reshape(-1)] = z
    # Unzigzag (§2.3): symbols are below 2^32, so int64 holds them and the result.
    sign = out & 1
    out >>= 1
    out ^= -sign
    return out.reshape(classes.shape)


class CorrectionStream:
    """A parsed correction stream of a volume of ``shape`` and ``dtype``: blocks decode on
    demand (random access); every size is checked against the bytes present."""

    def __init__(self, data: bytes, shape: Sequence[int], dtype, what: str = "correction"):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.what = what
        data = bytes(data)
        head = parse_head(data, what)
        block, self.max_error, self.step = head.block, head.max_error, head.step
        self.base_tolerance, self.levels = head.base_tolerance, head.levels
        self.order = head.order
        if not (MIN_BLOCK <= block <= MAX_BLOCK and math.isfinite(self.step) and self.step > 0
                and math.isfinite(self.max_error) and self.max_error >= 0
                and math.isfinite(self.base_tolerance) and self.base_tolerance >= 0
                and head.n_tables <= N_CLASSES
                and head.raw_len <= N_CLASSES * (6 + MAX_ALPHABET)
                and head.pos + head.frame_len <= len(data)):
            raise NeurvolFormatError(f"{what}: invalid stream parameters; the file is damaged")
        self.block = block
        pos = head.pos
        frame = data[pos:pos + head.frame_len]
        raw = frame if head.flags & FLAG_TABLES_RAW else zstd_exact(frame, head.raw_len, what)
        pos += head.frame_len
        self._tables: Dict[int, np.ndarray] = {}
        tpos = 0
        for _ in range(head.n_tables):
            if tpos >= len(raw):
                raise NeurvolFormatError(f"{what}: truncated tables; the file is damaged")
            key = raw[tpos]
            (alphabet,), tpos = read_varints(raw, tpos + 1, 1, what)
            codes = np.frombuffer(raw[tpos:tpos + alphabet], dtype=np.uint8)
            tpos += alphabet
            if (key >= N_CLASSES or key in self._tables or not 2 <= alphabet <= MAX_ALPHABET
                    or codes.size != alphabet or int(codes.max()) > MAX_WEIGHT_CODE
                    or not codes.any()):
                raise NeurvolFormatError(f"{what}: invalid table; the file is damaged")
            self._tables[key] = codes
        if tpos != len(raw):
            raise NeurvolFormatError(f"{what}: bytes after the tables; the file is damaged")
        self.table_map = (head.flags >> TABLE_MAP_SHIFT) & 3
        if any(table_of(k, self.table_map) != k for k in self._tables):
            raise NeurvolFormatError(f"{what}: a table its table map never uses; the file is "
                                     "damaged")
        # The rANS model of each class, built on first use (shared tables share a model).
        self._models: List[Optional[object]] = [None] * N_CLASSES
        # The compiled decoder's cumulative tables and the stream as bytes, on first use.
        self._class_tables = None
        self._bytes: Optional[np.ndarray] = None
        self.nblocks = int(np.prod(block_grid(self.shape, block)))
        ilen = head.index_len
        if ilen == -1:                     # version 1: the frame's length follows the tables
            if pos + 4 > len(data):
                raise NeurvolFormatError(f"{what}: truncated block index; the file is damaged")
            (ilen,) = struct.unpack_from("<I", data, pos)
            pos += 4
        if ilen is None:
            if self.nblocks > len(data) - pos:     # each length takes at least one byte
                raise NeurvolFormatError(f"{what}: truncated block index; the file is damaged")
            lens, pos = read_varints(data, pos, self.nblocks, what)
            if max(lens) >= 1 << 32:
                raise NeurvolFormatError(f"{what}: invalid block length; the file is damaged")
            lengths = np.asarray(lens, dtype=np.int64)
        else:
            if pos + ilen > len(data):
                raise NeurvolFormatError(f"{what}: truncated block index; the file is damaged")
            lengths = np.frombuffer(zstd_exact(data[pos:pos + ilen], 4 * self.nblocks, what),
                                    "<u4")
            pos += ilen
        self._offsets = pos + np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        if int(self._offsets[-1]) != len(data):
            raise NeurvolFormatError(
                f"{what}: the block index describes {int(self._offsets[-1]) - pos} bytes, the "
                f"stream holds {len(data) - pos}; the file is damaged")
        self._data = data
        self._view = memoryview(data)

    def block_bytes(self, i: int) -> int:
        """Stored bytes of block ``i``."""
        return int(self._offsets[i + 1] - self._offsets[i])

    def modes(self) -> Dict[str, int]:
        """How many blocks use each mode (informative)."""
        out: Dict[str, int] = {}
        for i in range(self.nblocks):
            name = MODE_NAMES.get(self._data[int(self._offsets[i])], "?") if self.block_bytes(i) else "?"
            out[name] = out.get(name, 0) + 1
        return out

    def block_mode(self, i: int) -> int:
        """The mode byte of block ``i`` (checked when the block is decoded)."""
        if not 0 <= i < self.nblocks:
            raise IndexError(f"block {i} out of range")
        return self._data[int(self._offsets[i])] if self.block_bytes(i) else -1

    def _model_for(self, key: int):
        """The rANS model of class ``key`` (built once, then kept in ``self._models``)."""
        if self._models[key] is None:
            table = table_of(key, self.table_map)
            if table not in self._tables:
                raise NeurvolFormatError(f"{self.what}: a block uses table {table}, which the "
                                         "stream does not hold; the file is damaged")
            model = self._models[table]
            if model is None:
                model = self._models[table] = rans_model(self._tables[table])
            self._models[key] = model
        return self._models[key]

    def _open_block(self, i: int, n: int) -> Tuple[int, "_Opened", Tuple[np.ndarray, np.ndarray]]:
        """Mode, rANS words and escapes, and exceptions of block ``i`` of ``n`` voxels."""
        what = f"{self.what} block {i}"
        # A view, not a copy: a query opens about a thousand blocks.
        data = self._view[int(self._offsets[i]):int(self._offsets[i + 1])]
        if not data or data[0] not in MODE_NAMES:
            raise NeurvolFormatError(f"{what}: unknown block mode; the file is damaged")
        mode = data[0]
        if len(data) >= 3 and data[1] < 0x80 and data[2] < 0x80:   # two one-byte varints
            n_esc, n_exc, pos = data[1], data[2], 3
        else:
            (n_esc, n_exc), pos = read_varints(data, 1, 2, what)
        if (n_esc > n or n_exc > n
                or pos + n_esc + n_exc * (1 + self.dtype.itemsize) > len(data)):
            raise NeurvolFormatError(f"{what}: more escapes or exceptions than its voxels or "
                                     "bytes allow; the file is damaged")
        escapes: List[int] = []
        if n_esc:
            escapes, pos = read_varints(data, pos, n_esc, what)
        idx, exc_vals = _NO_EXCEPTIONS
        if n_exc:
            deltas, pos = read_varints(data, pos, n_exc, what)
            vsize = n_exc * self.dtype.itemsize
            if pos + vsize > len(data):
                raise NeurvolFormatError(f"{what}: truncated block; the file is damaged")
            exc_vals = np.frombuffer(data[pos:pos + vsize], dtype=self.dtype.newbyteorder("<"))
            pos += vsize
            idx = np.cumsum(np.asarray(deltas, dtype=np.int64) + 1) - 1
            if int(idx[-1]) >= n:
                raise NeurvolFormatError(f"{what}: exception index out of range; the file is "
                                         "damaged")
        if (len(data) - pos) % 4:
            raise NeurvolFormatError(f"{what}: truncated block; the file is damaged")
        words = np.frombuffer(data[pos:], dtype="<u4")
        return mode, _Opened(words, escapes, what), (idx, exc_vals)

    def decode_blocks(self, ids: Sequence[int], threads: int = 1) -> List[DecodedBlocks]:
        """Blocks ``ids`` decoded side by side, grouped by shape (at most
        :data:`BATCH_VOXELS` voxels per group); the base is added by the caller
        (:meth:`DecodedBlocks.pre`). ``threads > 1``: the groups (then at least one per
        thread) decode on that many threads at once; the rANS coder and numpy's array
        loops release the GIL, and each group's values are the same whichever thread
        decodes it."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.nblocks]
        if bad:
            raise IndexError(f"block {bad[0]} out of range (the stream has {self.nblocks})")
        jobs = []
        for shape3, group in blocks_by_shape(self.shape, self.block, ids).items():
            n = int(np.prod(shape3))
            per = max(1, min(BATCH_VOXELS // n, -(-len(group) // max(1, threads))))
            jobs.extend((group[s:s + per], shape3) for s in range(0, len(group), per))
        if threads < 2 or len(jobs) < 2:
            return [self._decode_group(g, shape3) for g, shape3 in jobs]
        with ThreadPoolExecutor(min(threads, len(jobs)),
                                thread_name_prefix="neurvol-correction") as pool:
            return list(pool.map(lambda job: self._decode_group(*job), jobs))

    def _decode_group(self, ids: List[int], shape3: Tuple[int, int, int]) -> DecodedBlocks:
        if kernels.available():
            return self._decode_compiled(ids, shape3)
        n = int(np.prod(shape3))
        opened = [self._open_block(i, n) for i in ids]
        modes = np.asarray([m for m, _, _ in opened], dtype=np.int64)
        r = self._decode_numpy(shape3, opened, modes)
        return DecodedBlocks(list(ids), modes, r, [exc for _, _, exc in opened])

    def _decode_compiled(self, ids: List[int], shape3: Tuple[int, int, int]) -> DecodedBlocks:
        """Blocks ``ids`` by :mod:`.kernels`, heads included (the same values as
        :meth:`_decode_numpy`); only the rare blocks with exceptions are opened here."""
        if self._class_tables is None:
            self._class_tables = kernels.class_tables(self._tables, self.table_map)
            self._bytes = np.frombuffer(self._data, dtype=np.uint8)
        at = np.asarray(ids, dtype=np.int64)
        r, modes, n_exc, status = kernels.decode_blocks(
            self._bytes, self._offsets[at], self._offsets[at + 1], self.dtype.itemsize, shape3,
            self._class_tables, self.step, self.levels, AXIS_ORDERS[self.order])
        bad = np.flatnonzero(status[:, 0] != kernels.OK)
        if bad.size:
            j = int(bad[0])
            raise NeurvolFormatError(f"{self.what} block {ids[j]}: "
                                     f"{kernels.MESSAGES[int(status[j, 0])]}; the file is "
                                     "damaged")
        n = int(np.prod(shape3))
        exceptions = [_NO_EXCEPTIONS] * len(ids)
        for j in np.flatnonzero(n_exc).tolist():
            exceptions[j] = self._open_block(ids[j], n)[2]
        return DecodedBlocks(list(ids), modes, r, exceptions)

    def _decode_numpy(self, shape3: Tuple[int, int, int], opened,
                      modes: np.ndarray) -> np.ndarray:
        """The blocks' ``r`` with numpy: each pass of the predictor over all blocks side by
        side, the symbols read through constriction block by block and class by class."""
        symbols = [o.symbols() for _, o, _ in opened]
        r = np.empty((len(opened),) + shape3, dtype=np.float64)
        for kind in (True, False, None):     # cubic, linear, base mode
            if kind is None:
                rows = np.flatnonzero(modes == MODE_BASE)
            else:
                rows = np.flatnonzero((modes != MODE_BASE)
                                      & (np.isin(modes, CUBIC_MODES) == kind))
            if not rows.size:
                continue
            readers = [symbols[j] for j in rows]
            if kind is None:
                cls = np.full((len(rows),) + shape3, BASE_CLASS, np.uint8)
                r[rows] = _read_codes(readers, cls, self._models, self._model_for) * self.step
            else:
                def coder(sel, psel, pred, classes, step, readers=readers):
                    return _read_codes(readers, classes, self._models, self._model_for)
                r[rows] = interp_passes((len(rows),) + shape3, self.step, kind, coder,
                                        *self.levels, order=AXIS_ORDERS[self.order])
            for rd in readers:
                rd.check_done()
        return r

    def decode_block(self, i: int, base: Optional[np.ndarray], *,
                     before_cast: bool = False) -> np.ndarray:
        """Block ``i`` (see :func:`block_slices`) in the volume's dtype; ``base``: the base
        over the block's voxels (``None``: zeros). ``before_cast``: the float64 values
        before the cast and the exceptions (the encoder's check needs them)."""
        if not 0 <= i < self.nblocks:
            raise IndexError(f"block {i} out of range")
        (dec,) = self.decode_blocks([i])
        return dec.pre(0, base) if before_cast else dec.values(0, base, self.dtype)

    def decode(self, base: Optional[np.ndarray] = None) -> np.ndarray:
        """The whole volume (volume dtype); ``base`` as the encoder had it (``None``: zeros)."""
        out = np.empty(self.shape, dtype=self.dtype)
        # A few groups' worth of blocks at a time: the float64 values of decoded blocks
        # never span the whole volume.
        per = max(1, BATCH_VOXELS * DECODE_THREADS // self.block ** 3)
        for first in range(0, self.nblocks, per):
            ids = range(first, min(first + per, self.nblocks))
            for dec in self.decode_blocks(ids, DECODE_THREADS):
                for j, i in enumerate(dec.ids):
                    sl = block_slices(self.shape, self.block, i)
                    out[sl] = dec.values(j, None if base is None else base[sl], self.dtype)
        return out

    def block_of(self, zyx: np.ndarray) -> np.ndarray:
        """Block index of each integer voxel ``(z, y, x)`` (rows of ``zyx``)."""
        g = block_grid(self.shape, self.block)
        k = np.asarray(zyx, dtype=np.int64) // self.block
        return (k[:, 0] * g[1] + k[:, 1]) * g[2] + k[:, 2]


def decode_correction(data: bytes, shape: Sequence[int], dtype,
                      base: Optional[np.ndarray] = None) -> np.ndarray:
    """Decode a whole correction stream (``base`` as given to the encoder)."""
    return CorrectionStream(data, shape, dtype).decode(base)
