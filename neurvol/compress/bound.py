"""Reading error-bounded files (``spec/correction.md``): the header's ``"bound"`` entry and
the correction stream decoded block by block, on demand, for ``decode()``, region reads and
``query()``. numpy only (the base comes from a callback)."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import NeurvolFormatError
from .correction import BASE_MODES, CorrectionStream, block_grid, block_slices
from .correction.stream import BATCH_VOXELS

#: Header key and section of an error-bounded file.
KEY_BOUND = "bound"
SECTION_CORRECTION = "correction"
#: Format minor version of error-bounded files (spec/correction.md §1).
BOUNDED_MINOR = 2
#: Bytes of decoded correction blocks a reader keeps (values, and float64 corrections for
#: blocks coded against the base), least recently used evicted first; the block in use is
#: kept whatever its size.
BLOCK_CACHE_BYTES = 256 << 20


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
    then need the base only at the voxels a query interpolates."""

    def __init__(self, data: bytes, shape: Sequence[int], dtype: np.dtype, max_error: float,
                 evaluate_base: Callable[[Tuple[slice, slice, slice]], np.ndarray],
                 base_at: Callable[[np.ndarray], np.ndarray]):
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
        self._cache: "OrderedDict[int, Tuple[np.ndarray, Optional[np.ndarray]]]" = OrderedDict()
        self._cache_bytes = 0

    def block(self, i: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """``(decoded values, corrections = decoded - base)`` of block ``i`` (cached); the
        corrections are ``None`` for a block coded without the base."""
        return self._blocks([i])[i]

    def _blocks(self, ids: Sequence[int]) -> Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]]:
        """The entries of blocks ``ids``: cached ones as they are, the others decoded side
        by side (one batch) and cached. The result holds them all, whatever the cache
        evicts meanwhile."""
        out: Dict[int, Tuple[np.ndarray, Optional[np.ndarray]]] = {}
        missing = []
        for i in ids:
            i = int(i)
            if i in self._cache:
                self._cache.move_to_end(i)
                out[i] = self._cache[i]
            else:
                missing.append(i)
        for dec in self.stream.decode_blocks(missing):
            for j, i in enumerate(dec.ids):
                if int(dec.modes[j]) in BASE_MODES:
                    sl = block_slices(self.shape, self.stream.block, i)
                    base = np.asarray(self._base(sl), dtype=np.float64)
                    values = dec.values(j, base, self.dtype)
                    entry: Tuple[np.ndarray, Optional[np.ndarray]] = (
                        values, values.astype(np.float64) - base)
                else:
                    entry = (dec.values(j, None, self.dtype), None)
                out[i] = entry
                self._store(i, entry)
        return out

    def _store(self, i: int, entry: Tuple[np.ndarray, Optional[np.ndarray]]) -> None:
        self._cache[i] = entry
        self._cache_bytes += _nbytes(entry)
        while self._cache_bytes > BLOCK_CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= _nbytes(old)

    def decode(self, base: np.ndarray) -> np.ndarray:
        """The whole volume given the whole base (no cache)."""
        return self.stream.decode(np.asarray(base, dtype=np.float64))

    def region(self, idx: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded values at the outer product of per-axis voxel indices."""
        out = np.empty([len(i) for i in idx], dtype=self.dtype)
        B = self.stream.block
        g = block_grid(self.shape, B)
        touched = [int((bz * g[1] + by) * g[2] + bx) for bz in np.unique(idx[0] // B)
                   for by in np.unique(idx[1] // B) for bx in np.unique(idx[2] // B)]
        if len(touched) * B ** 3 <= BATCH_VOXELS:
            self._blocks(touched)         # decoded side by side, then read from the cache
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
        exact = np.all(p == r, axis=1)
        q = p[~exact]
        top = np.asarray(self.shape, dtype=np.int64) - 1
        i0 = np.minimum(np.floor(q).astype(np.int64), np.maximum(top - 1, 0))
        corners = np.asarray(list(np.ndindex(2, 2, 2)))
        voxels = np.concatenate([r[exact].astype(np.int64)]
                                + [np.minimum(i0 + c, top) for c in corners])
        n_exact = int(exact.sum())
        corr, vals = self._lookup(voxels, np.arange(len(voxels)) >= n_exact)
        out[exact] = vals[:n_exact]
        if len(q):
            f = q - i0
            acc = np.zeros(len(q))
            for k, c in enumerate(corners):
                w = np.prod(np.where(c == 1, f, 1.0 - f), axis=1)
                acc += w * corr[n_exact + k * len(q):n_exact + (k + 1) * len(q)]
            out[~exact] += acc
        return out

    def _lookup(self, v: np.ndarray, want_corr: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(correction, decoded value) at integer voxels ``v`` (N, 3); the correction only
        where ``want_corr`` (else NaN). The blocks they touch are decoded side by side, at
        most :data:`BATCH_VOXELS` voxels at a time."""
        blocks = self.stream.block_of(v)
        corr = np.full(len(v), np.nan)
        vals = np.empty(len(v))
        B = self.stream.block
        order = np.argsort(blocks, kind="stable")
        sorted_blocks = blocks[order]
        starts = np.flatnonzero(np.r_[True, sorted_blocks[1:] != sorted_blocks[:-1]])
        ends = np.r_[starts[1:], len(order)]
        uniq = sorted_blocks[starts].tolist()
        per = max(1, BATCH_VOXELS // B ** 3)
        need_base = []
        for c in range(0, len(uniq), per):
            entries = self._blocks(uniq[c:c + per])
            for b, s, e in zip(uniq[c:c + per], starts[c:c + per], ends[c:c + per]):
                m = order[s:e]
                values, cb = entries[b]
                local = v[m] - (v[m] // B) * B
                vals[m] = values[local[:, 0], local[:, 1], local[:, 2]]
                if cb is None:
                    need_base.append(m)
                else:
                    corr[m] = cb[local[:, 0], local[:, 1], local[:, 2]]
        if need_base:     # blocks coded without the base: the model at those voxels only
            m = np.concatenate(need_base)
            m = m[want_corr[m]]
            corr[m] = vals[m] - np.asarray(self._base_at(v[m]), dtype=np.float64)
        return corr, vals


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


def _nbytes(entry: Tuple[np.ndarray, Optional[np.ndarray]]) -> int:
    return sum(a.nbytes for a in entry if a is not None)

