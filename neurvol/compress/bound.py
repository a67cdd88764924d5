"""Reading error-bounded files (``spec/correction.md``): the header's ``"bound"`` entry and
the correction stream decoded block by block, on demand, for ``decode()``, region reads and
``query()``. numpy only (the base comes from a callback)."""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..container.format import COMPACT_SECTIONS_MINOR
from ..errors import NeurvolFormatError
from .correction import BASE_MODES, CorrectionStream, block_grid, block_slices, cast_to, kernels
from .correction.stream import DECODE_THREADS

#: Header key and section of an error-bounded file.
KEY_BOUND = "bound"
SECTION_CORRECTION = "correction"
#: Format minor version writers write for error-bounded files (spec/correction.md §1):
#: 1.5, the compact header with sections and correction stream version 2 (readers read the
#: 1.2 files of stream version 1 too).
BOUNDED_MINOR = COMPACT_SECTIONS_MINOR
#: Bytes of decoded correction blocks a reader keeps (values, and float64 corrections for
#: blocks coded against the base), least recently used evicted first; the block in use is
#: kept whatever its size.
BLOCK_CACHE_BYTES = 256 << 20
#: A query that needs the corrections of a block coded without the base at more than this
#: fraction of its voxels evaluates the base on the whole block once and keeps the
#: corrections (later queries there read them); fewer voxels evaluate the base at those
#: voxels only (a scattered cold query touches many blocks at one or two points each).
DENSE_FRACTION = 1.0 / 8


def parse_bound(header: Dict[str, Any], section_names: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The header's ``"bound"`` entry, validated (``None`` for files without one)."""
    b = header.get(KEY_BOUND)
    if b is None:
        return None
    if not isinstance(b, dict):
        raise NeurvolFormatError("header 'bound' must be an object (spec/correction.md §1)")
    e = b.get("max_error")
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not (math.isfinite(e) and e >= 0):
        raise NeurvolFormatError(f"header 'bound.max_error' must be a finite number >= 0, got {e!r}")
    sec = b.get("section")
    if not isinstance(sec, str) or sec not in section_names:
        raise NeurvolFormatError(
            f"header 'bound' names section {sec!r}, which the file does not have; the file "
            "is damaged")
    return b


class Corrections:
    """Reader side: the correction stream of an open file, decoded block by block.

    ``evaluate_base(zyx_slices)`` returns the base (the model's float32 values, before
    the cast) on the voxel grid of those slices, ``base_at(zyx)`` at integer voxels
    ``(N, 3)``. A block whose mode ignores the base decodes without it; its corrections
    then need the base only at the voxels a query interpolates.

    Decoded blocks live in a pool of ``B^3`` slots (values, and float64 corrections for
    blocks coded against the base) of at most ``cache_bytes`` (default
    :data:`BLOCK_CACHE_BYTES`),
    least recently used evicted first, so a query reads every voxel it needs with one
    gather."""

    def __init__(self, data: bytes, shape: Sequence[int], dtype: np.dtype, max_error: float,
                 evaluate_base: Callable[[Tuple[slice, slice, slice]], np.ndarray],
                 base_at: Callable[[np.ndarray], np.ndarray],
                 cache_bytes: Optional[int] = None):
        self.stream = CorrectionStream(data, shape, dtype)
        if self.stream.max_error != max_error:
            raise NeurvolFormatError(
                f"the correction stream's bound {self.stream.max_error!r} differs from the "
                f"header's {max_error!r}; the file is damaged")
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.max_error = max_error
        self._base = evaluate_base
        self._base_at = base_at
        B = self.stream.block
        slot_bytes = B ** 3 * (self.dtype.itemsize + np.dtype(np.float64).itemsize)
        cache = BLOCK_CACHE_BYTES if cache_bytes is None else cache_bytes
        self._nslots = int(min(self.stream.nblocks, max(1, cache // slot_bytes)))
        self._slot_of = np.full(self.stream.nblocks, -1, dtype=np.int64)
        self._has_corr = np.zeros(self.stream.nblocks, dtype=bool)
        self._lru: "OrderedDict[int, int]" = OrderedDict()     # block -> slot, oldest first
        self._free = list(range(self._nslots))
        # np.empty: pages are touched only as slots fill.
        self._values = np.empty((self._nslots, B, B, B), dtype=self.dtype)
        self._corr: Optional[np.ndarray] = None               # allocated on first need
        # Queries from several threads share the pool: one fills or reads it at a time.
        self._lock = threading.RLock()

    def block(self, i: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(decoded values, corrections = decoded - base)`` of block ``i`` (decoded if
        not cached); the corrections are ``None`` for a block coded without the base.
        Views into the cache: valid until the next block is decoded."""
        sl = tuple(slice(0, s.stop - s.start)
                   for s in block_slices(self.shape, self.stream.block, int(i)))
        with self._lock:
            self._ensure([int(i)])
            slot = int(self._slot_of[i])
            values = self._values[slot][sl]
            return values, (self._corr[slot][sl] if self._has_corr[i] else None)

    def _corrections(self) -> np.ndarray:
        if self._corr is None:
            self._corr = np.empty(self._values.shape, dtype=np.float64)
        return self._corr

    def _keep_corrections(self, i: int) -> None:
        """Corrections of cached block ``i`` (coded without the base) from the base on the
        whole block."""
        sl = block_slices(self.shape, self.stream.block, i)
        local = (int(self._slot_of[i]),) + tuple(slice(0, s.stop - s.start) for s in sl)
        base = np.asarray(self._base(sl), dtype=np.float64)
        self._corrections()[local] = self._values[local].astype(np.float64) - base
        self._has_corr[i] = True

    def _ensure(self, ids: Sequence[int]) -> None:
        """Blocks ``ids`` (at most the pool's slots) in the cache: the missing ones decoded
        side by side, into the least recently used slots not among ``ids``."""
        for i in ids:
            if i in self._lru:
                self._lru.move_to_end(i)
        missing = [i for i in ids if self._slot_of[i] < 0]
        if not missing:
            return
        keep = set(ids)
        for old in list(self._lru):
            if len(self._free) >= len(missing):
                break
            if old not in keep:
                self._free.append(self._lru.pop(old))
                self._slot_of[old] = -1
        for dec in self.stream.decode_blocks(missing, DECODE_THREADS):
            shape3 = dec.r.shape[1:]
            local = (slice(0, shape3[0]), slice(0, shape3[1]), slice(0, shape3[2]))
            slots = [self._free.pop() for _ in dec.ids]
            data_rows = np.flatnonzero(~np.isin(dec.modes, BASE_MODES))
            if data_rows.size:
                # The blocks coded without the base, cast side by side (the cast is
                # elementwise: the same values as block by block), then their exceptions.
                data_slots = np.asarray(slots)[data_rows]
                if kernels.available():
                    kernels.cast_rows(dec.r, data_rows, self._values, data_slots)
                else:
                    self._values[(data_slots,) + local] = cast_to(dec.r[data_rows], self.dtype)
                for slot, j in zip(data_slots.tolist(), data_rows.tolist()):
                    idx, vals = dec.exceptions[j]
                    if idx.size:     # (a slot's corner is not contiguous for edge blocks)
                        self._values[slot][np.unravel_index(idx, shape3)] = vals
            for j, i in enumerate(dec.ids):
                slot = slots[j]
                if int(dec.modes[j]) in BASE_MODES:
                    sl = block_slices(self.shape, self.stream.block, i)
                    base = np.asarray(self._base(sl), dtype=np.float64)
                    values = dec.values(j, base, self.dtype)
                    self._corrections()[(slot,) + local] = values.astype(np.float64) - base
                    self._values[(slot,) + local] = values
                    self._has_corr[i] = True
                else:
                    self._has_corr[i] = False
                self._slot_of[i] = slot
                self._lru[i] = slot

    def decode(self, base: Optional[np.ndarray]) -> np.ndarray:
        """The whole volume given the whole base (``None``: zeros; no cache)."""
        return self.stream.decode(None if base is None else np.asarray(base, dtype=np.float64))

    def region(self, idx: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded values at the outer product of per-axis voxel indices."""
        out = np.empty([len(i) for i in idx], dtype=self.dtype)
        B = self.stream.block
        g = block_grid(self.shape, B)
        touched = [int((bz * g[1] + by) * g[2] + bx) for bz in np.unique(idx[0] // B)
                   for by in np.unique(idx[1] // B) for bx in np.unique(idx[2] // B)]
        with self._lock:
            return self._region_locked(idx, out, touched)

    def _region_locked(self, idx: Sequence[np.ndarray], out: np.ndarray,
                       touched: Sequence[int]) -> np.ndarray:
        B = self.stream.block
        g = block_grid(self.shape, B)
        if len(touched) <= self._nslots:
            self._ensure(touched)         # decoded side by side, then read from the cache
        for bz in np.unique(idx[0] // B):
            mz = np.flatnonzero(idx[0] // B == bz)
            for by in np.unique(idx[1] // B):
                my = np.flatnonzero(idx[1] // B == by)
                for bx in np.unique(idx[2] // B):
                    mx = np.flatnonzero(idx[2] // B == bx)
                    values, _ = self.block(int((bz * g[1] + by) * g[2] + bx))
                    sub = values[np.ix_(idx[0][mz] - bz * B, idx[1][my] - by * B,
                                        idx[2][mx] - bx * B)]
                    out[np.ix_(mz, my, mx)] = sub
        return out

    def at_points(self, p: np.ndarray, model_values: np.ndarray) -> np.ndarray:
        """Query values at index-space points ``p`` (N, 3) inside the volume, given the
        model's values there: the decoded value at voxel centres, elsewhere the model plus
        the trilinear interpolation of the corrections at the eight centres around it.
        Every block the points need is decoded once per call."""
        p = np.clip(np.asarray(p, dtype=np.float64), 0.0,
                    np.asarray(self.shape, dtype=np.float64) - 1.0)
        out = np.asarray(model_values, dtype=np.float64).copy()
        r = np.rint(p)
        exact = (p == r).all(axis=1)
        if exact.any():
            out[exact] = self._lookup(r[exact].astype(np.int64), corrections=False)
            if exact.all():
                return out
            between = ~exact
            q = p[between]
        else:
            between, q = slice(None), p
        top = np.asarray(self.shape, dtype=np.int64) - 1
        i0 = np.minimum(np.floor(q).astype(np.int64), np.maximum(top - 1, 0))
        f = q - i0
        voxels = i0[:, None, :] + _CORNERS[None]                          # (M, 8, 3)
        if (top == 0).any():                                              # a flat axis
            np.minimum(voxels, top, out=voxels)
        corr = self._lookup(voxels.reshape(-1, 3), corrections=True).reshape(-1, 2, 2, 2)
        wz, wy, wx = (np.stack([1.0 - f[:, a], f[:, a]], axis=1) for a in range(3))
        corr *= wz[:, :, None, None]
        corr *= wy[:, None, :, None]
        corr *= wx[:, None, None, :]
        out[between] += corr.reshape(-1, 8).sum(axis=1)
        return out

    def values_at(self, v: np.ndarray) -> np.ndarray:
        """Decoded values (float64) at integer voxels ``v`` (N, 3) inside the volume."""
        return self._lookup(np.asarray(v, dtype=np.int64).reshape(-1, 3), corrections=False)

    def _lookup(self, v: np.ndarray, corrections: bool) -> np.ndarray:
        with self._lock:
            return self._lookup_locked(v, corrections)

    def _lookup_locked(self, v: np.ndarray, corrections: bool) -> np.ndarray:
        """Decoded values (float64) at integer voxels ``v`` (N, 3), or the corrections
        there (``corrections``). The blocks they touch are decoded side by side, as many
        at a time as the cache holds."""
        B = self.stream.block
        k = v // B
        g = block_grid(self.shape, B)
        blocks = (k[:, 0] * g[1] + k[:, 1]) * g[2] + k[:, 2]
        local = v - k * B
        # Offset of each voxel within its slot (slots are B^3, C order).
        within = (local[:, 0] * B + local[:, 1]) * B + local[:, 2]
        counts = np.bincount(blocks, minlength=self.stream.nblocks)
        uniq = np.flatnonzero(counts).tolist()
        out = np.empty(len(v))
        sparse = np.zeros(len(v), dtype=bool)       # corrections from the base at the voxel
        values = self._values.reshape(-1)
        for c in range(0, len(uniq), self._nslots):
            chunk = uniq[c:c + self._nslots]
            self._ensure(chunk)
            m = slice(None) if len(chunk) == len(uniq) else np.flatnonzero(np.isin(blocks, chunk))
            bl = blocks[m]
            flat = self._slot_of[bl] * B ** 3 + within[m]
            if not corrections:
                out[m] = values.take(flat)
                continue
            dense = B ** 3 * DENSE_FRACTION
            for i in chunk:
                if not self._has_corr[i] and counts[i] >= dense:
                    self._keep_corrections(i)
            has = self._has_corr[bl]
            if has.all():
                out[m] = self._corr.reshape(-1).take(flat)
                continue
            got = values.take(flat).astype(np.float64)
            if has.any():
                got[has] = self._corr.reshape(-1).take(flat[has])
            out[m] = got
            idx = np.arange(len(v)) if isinstance(m, slice) else m
            sparse[idx[~has]] = True
        if sparse.any():    # blocks coded without the base, few voxels: the model there
            out[sparse] -= np.asarray(self._base_at(v[sparse]), dtype=np.float64)
        return out


#: The eight corners of a voxel cell, (z, y, x) offsets.
_CORNERS = np.asarray(list(np.ndindex(2, 2, 2)), dtype=np.int64)


def resample_linear(grid: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``grid`` (float) interpolated trilinearly at the points of a decode of ``shape``:
    output ``j`` of an axis of ``m`` sits at input position ``j (n - 1) / (m - 1)`` (the
    grid ``linspace(-1, 1, m)`` of spec/payload.md §1.2; the centre for ``m = 1``)."""
    out = np.asarray(grid, dtype=np.float64)
    for axis, m in enumerate(shape):
        n = out.shape[axis]
        if m == n:
            continue
        pos = np.linspace(0.0, n - 1.0, m) if m > 1 else np.full(1, (n - 1.0) / 2.0)
        i0 = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
        w = (pos - i0).reshape([-1 if a == axis else 1 for a in range(out.ndim)])
        out = (np.take(out, i0, axis=axis) * (1.0 - w)
               + np.take(out, np.minimum(i0 + 1, n - 1), axis=axis) * w)
    return out
