"""Compiled decoding of correction blocks (``spec/correction.md`` §2.3–§2.4), with numba.

The numpy decoder (:mod:`.stream`) runs the predictor a pass at a time over many blocks
side by side, but it still does some forty array operations per voxel, and the rANS
symbols are read class by class through Python calls; a point query touching a thousand
small blocks pays for that. Here one compiled loop per block reads each symbol, predicts
each point and computes its class in one go, the rANS coder written from
``spec/payload.md`` §2.3 (tests check it against the numpy decoder, which reads symbols
through constriction, and the spec's test vector). The values are the numpy decoder's bit for bit: the same binary64 operations
in the same order (numba does not contract ``a * b + c`` into fused multiply-adds
without ``fastmath``).

numba is optional (``pip install "neurvol[fast]"``; the hook is :mod:`..jit`): without
it, with ``NEURVOL_NUMBA=0``, or inside an encode, :func:`available` is false and readers
use the numpy decoder."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from .entropy import _WEIGHTS
from .layout import (ANCHOR_CLASS, BASE_CLASS, ESCAPE, LEVEL_COARSE, LEVEL_FINE, LEVEL_MID,
                     MODE_BASE, MODE_DATA_CUBIC, MODE_NAMES, MODE_RESIDUAL_CUBIC, N_CLASSES,
                     N_CODE_CONTEXTS, N_ROUGHNESS, ROUGHNESS_EDGES, table_of)
from .predict import _top, level_step, prediction_passes
from ..interp import MAX_CODE
from ..jit import available, jit as _jit  # noqa: F401  (available: the readers' switch)

#: rANS (payload.md §2.3): probability bits and word size.
PRECISION = 24
WORD_BITS = 32

#: The largest mode byte (§2.3).
MODE_MAX = max(MODE_NAMES)

#: The roughness edges of §2.4's classes, as scalars the compiled loop keeps in registers.
ROUGH_0, ROUGH_1, ROUGH_2 = (float(v) for v in ROUGHNESS_EDGES)

#: What a block's decode reports (the first field of its status row); the second field
#: says which class, symbol or count was at fault.
OK = 0
BAD_FIRST_WORD = 1      # the last word of the stack is 0
NO_TABLE = 2            # a class whose table the stream does not hold
BAD_ESCAPE = 3          # an escape with no value left, or a value out of range
LEFT_OVER = 4           # words, state or escapes left after the last symbol
ZERO_WEIGHT = 5         # a symbol whose weight is 0
BAD_HEAD = 6            # a block head that is empty, has an unknown mode, or overruns
MESSAGES = {
    BAD_FIRST_WORD: "damaged rans stream: its last word is 0",
    NO_TABLE: "a block uses a class whose table the stream does not hold",
    BAD_ESCAPE: "bad escape",
    LEFT_OVER: "symbols left over",
    ZERO_WEIGHT: "damaged rans stream: a symbol its table gives weight 0",
    BAD_HEAD: "unknown mode, or a head that overruns the block",
}

def class_tables(tables: dict, table_map: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray,
                                                        np.ndarray]:
    """The cumulative tables F (payload.md §2.3.2) of every class, concatenated:
    ``(F, offset per class (-1: no table), alphabet per class, a flag per F entry for the
    symbols that need a second look: weight 0, or the escape)``. ``tables``: the stream's weight codes by table class."""
    chunks: List[np.ndarray] = []
    zero: List[np.ndarray] = []
    start = {}
    pos = 0
    for key in sorted(tables):
        w = _WEIGHTS[np.asarray(tables[key], dtype=np.int64)]
        chunks.append(cumulative(w))
        special = np.append(w == 0, True)
        if w.size > ESCAPE:
            special[ESCAPE] = True
        zero.append(special.astype(np.uint8))
        start[key] = (pos, w.size)
        pos += w.size + 1
    off = np.full(N_CLASSES, -1, dtype=np.int64)
    alpha = np.zeros(N_CLASSES, dtype=np.int64)
    for c in range(N_CLASSES):
        t = table_of(c, table_map)
        if t in start:
            off[c], alpha[c] = start[t]
    f = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    z = np.concatenate(zero) if zero else np.zeros(0, dtype=np.uint8)
    return f, off, alpha, z


def cumulative(counts: np.ndarray) -> np.ndarray:
    """F_0 .. F_A of payload.md §2.3.2, in its operation order (binary64, left to right:
    ``np.cumsum`` adds sequentially, unlike ``np.sum``)."""
    c = np.asarray(counts, dtype=np.float64)
    a = c.size
    p = c / float(np.int64(c.sum()))
    s = float(np.cumsum(p)[-1])
    scale = float((1 << PRECISION) - a) / s
    acc = np.concatenate([[0.0], np.cumsum(p)[:-1]])
    f = np.empty(a + 1, dtype=np.int64)
    f[:a] = np.floor(acc * scale).astype(np.int64) + np.arange(a)
    f[a] = 1 << PRECISION
    return f


def pass_table(shape3: Tuple[int, int, int], order: Tuple[int, int, int], step: float,
               alpha: float, beta: float) -> Tuple[np.ndarray, np.ndarray, float]:
    """The passes of a block of ``shape3`` (§2.4) as rows ``(axis, h, level, start_z,
    stride_z, start_y, stride_y, start_x, stride_x)`` and each pass's bin width; and the
    anchor's bin width."""
    rows, steps = [], []
    for axis, h, sel in prediction_passes((1,) + tuple(shape3), order):
        level = LEVEL_FINE if h == 1 else LEVEL_MID if h == 2 else LEVEL_COARSE
        row = [axis, h, level]
        for b in range(3):
            s = sel[1 + b]
            row += [h, 2 * h] if b == axis else [0, s.step or 1]
        rows.append(row)
        steps.append(level_step(step, h, alpha, beta))
    s0 = level_step(step, _top((1,) + tuple(shape3)), alpha, beta)
    return (np.asarray(rows, dtype=np.int64).reshape(-1, 9),
            np.asarray(steps, dtype=np.float64), s0)


@_jit(nogil=True, cache=True, inline="always", error_model="numpy")
def read_symbol(x, nxt, data, first, ftab, off, a):
    """One symbol (payload.md §2.3.3) from the table at ``ftab[off:]`` of ``a``
    symbols: returns ``(symbol, state, next word)``. Plain values in and out, so the
    state stays in registers; the common symbol 0 takes one comparison. Escapes and
    zero-weight symbols are looked at afterwards (:func:`finish_symbol`), off the
    coder's chain of dependent operations."""
    q = np.int64(x & np.uint64((1 << PRECISION) - 1))
    f1 = ftab[off + 1]
    if q < f1:
        i = 0
        f0 = np.int64(0)
    else:
        # Branchless search (a select per halving, no mispredicted jumps): the
        # largest i in [1, a) with F_i <= q.
        i = 1
        n = a - 1
        while n > 1:
            half = n >> 1
            i = i + half if ftab[off + i + half] <= q else i
            n -= half
        f0 = ftab[off + i]
        f1 = ftab[off + i + 1]
    x = (x >> np.uint64(PRECISION)) * np.uint64(f1 - f0) + np.uint64(q - f0)
    if x < np.uint64(1 << WORD_BITS) and nxt >= 0:
        x = (x << np.uint64(WORD_BITS)) | word_at(data, first, nxt)
        nxt -= 1
    return i, x, nxt

@_jit(nogil=True, cache=True, inline="always", error_model="numpy")
def finish_symbol(s, special, e, esc, eend):
    """``(code, next escape, status)`` of symbol ``s`` (``special``: its table flags it
    as the escape or as weight 0)."""
    err = OK
    if special:
        if s != ESCAPE:
            err = ZERO_WEIGHT
        elif e >= eend:
            err = BAD_ESCAPE
        else:
            s = esc[e]
            e += 1
            if s < ESCAPE or s > 2 * MAX_CODE + 1:
                err = BAD_ESCAPE
    return (s >> 1) ^ -(s & 1), e, err

@_jit(nogil=True, cache=True, inline="always", error_model="numpy")
def read_varint(data, pos, end):
    """``(value, next position)`` of the LEB128 varint at ``data[pos]`` (§2.2), or
    ``(-1, pos)`` when it runs past ``end`` or past 63 bits."""
    v = 0
    shift = 0
    while True:
        if pos >= end or shift > 56:
            return -1, pos
        b = np.int64(data[pos])
        pos += 1
        v |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return v, pos


@_jit(nogil=True, cache=True, inline="always", error_model="numpy")
def word_at(data, first, k):
    """The ``k``-th little-endian u32 word of the words starting at ``data[first]``."""
    p = first + 4 * k
    return (np.uint64(data[p]) | (np.uint64(data[p + 1]) << np.uint64(8))
            | (np.uint64(data[p + 2]) << np.uint64(16)) | (np.uint64(data[p + 3]) << np.uint64(24)))


@_jit(nogil=True, cache=True, error_model="numpy")
def decode(data, starts, ends, itemsize, ftab, foff, falpha, fspecial, passes, psteps, s0,
           step, out, modes, n_exc, status):
    """Blocks ``data[starts[j]:ends[j]]`` (§2.3), one after another, into ``out`` (n, d,
    h, w; float64 ``r``), their mode bytes into ``modes`` and exception counts into
    ``n_exc`` (the exceptions themselves are read by the caller, for the rare blocks
    that have any)."""
    n, d, hh, w = out.shape
    npts = d * hh * w
    qm = np.zeros(npts, dtype=np.uint8)
    pidx = np.empty(npts, dtype=np.int64)
    pcls = np.empty(npts, dtype=np.int64)
    ppred = np.empty(npts, dtype=np.float64)
    spidx = np.empty(npts, dtype=np.int64)
    spred = np.empty(npts, dtype=np.float64)
    sym = np.empty(npts, dtype=np.int64)
    esc = np.empty(npts, dtype=np.int64)
    counts = np.zeros(N_CLASSES + 1, dtype=np.int64)
    dims = np.array([d, hh, w], dtype=np.int64)
    mul = np.array([hh * w, w, 1], dtype=np.int64)
    for j in range(n):
        r = out[j].reshape(npts)
        end = ends[j]
        pos = starts[j]
        err = OK
        detail = 0
        # The block's head (§2.3): mode, escape and exception counts, escapes, exceptions.
        if pos >= end or data[pos] > MODE_MAX:
            status[j, 0] = BAD_HEAD
            continue
        mode = np.int64(data[pos])
        modes[j] = mode
        ne, pos = read_varint(data, pos + 1, end)
        nx, pos = read_varint(data, pos, end)
        if ne < 0 or nx < 0 or ne > npts or nx > npts or pos + ne + nx * (1 + itemsize) > end:
            status[j, 0] = BAD_HEAD
            continue
        for t in range(ne):
            v, pos = read_varint(data, pos, end)
            if v < 0:
                err = BAD_HEAD
                break
            esc[t] = v
        for t in range(nx):
            v, pos = read_varint(data, pos, end)
            if v < 0:
                err = BAD_HEAD
                break
        pos += nx * itemsize
        if err != OK or pos > end or (end - pos) % 4:
            status[j, 0] = BAD_HEAD
            continue
        n_exc[j] = nx
        first = pos
        k = (end - pos) // 4
        e = 0
        ee = ne
        x = np.uint64(0)
        nxt = k - 1
        if k > 0:
            x = word_at(data, first, k - 1)
            if x == 0:
                status[j, 0] = BAD_FIRST_WORD
                continue
            nxt = k - 2
            if k >= 2:
                x = (x << np.uint64(WORD_BITS)) | word_at(data, first, k - 2)
                nxt = k - 3
        if mode == MODE_BASE:                      # C order, one class
            off = foff[BASE_CLASS]
            if off < 0:
                status[j, 0] = NO_TABLE
                status[j, 1] = BASE_CLASS
                continue
            a = falpha[BASE_CLASS]
            for p in range(npts):
                sym[p], x, nxt = read_symbol(x, nxt, data, first, ftab, off, a)
            for p in range(npts):
                code, e, err = finish_symbol(sym[p], fspecial[off + sym[p]], e, esc, ee)
                if err != OK:
                    detail = BASE_CLASS
                    break
                r[p] = code * step
        else:
            cubic = mode == MODE_DATA_CUBIC or mode == MODE_RESIDUAL_CUBIC
            off = foff[ANCHOR_CLASS]
            if off < 0:
                status[j, 0] = NO_TABLE
                status[j, 1] = ANCHOR_CLASS
                continue
            i0, x, nxt = read_symbol(x, nxt, data, first, ftab, off, falpha[ANCHOR_CLASS])
            code, e, err = finish_symbol(i0, fspecial[off + i0], e, esc, ee)
            r[0] = code * s0
            qm[0] = min(abs(code), N_CODE_CONTEXTS - 1)
            for ip in range(passes.shape[0]):
                if err != OK:
                    break
                axis = passes[ip, 0]
                h = passes[ip, 1]
                level = passes[ip, 2]
                s = psteps[ip]
                na = dims[axis]
                da = mul[axis] * h
                m = 0
                counts[:] = 0
                for z in range(passes[ip, 3], d, passes[ip, 4]):
                    for y in range(passes[ip, 5], hh, passes[ip, 6]):
                        for x_ in range(passes[ip, 7], w, passes[ip, 8]):
                            p = z * mul[0] + y * mul[1] + x_
                            c = z if axis == 0 else (y if axis == 1 else x_)
                            left = p - da
                            a0 = r[left]
                            if c + h <= na - 1:
                                right = p + da
                                a1 = r[right]
                                if cubic and c - 3 * h >= 0 and c + 3 * h <= na - 1:
                                    pred = (9.0 * (a0 + a1)
                                            - (r[left - 2 * da] + r[right + 2 * da])) / 16.0
                                else:
                                    pred = (a0 + a1) / 2.0
                                dist = abs(a0 - a1) / s
                            else:
                                right = left
                                pred = a0
                                dist = 0.0
                            cc = min(np.int64(qm[left]) + np.int64(qm[right]),
                                     N_CODE_CONTEXTS - 1)
                            g = ((dist >= ROUGH_0) + (dist >= ROUGH_1)
                                 + (dist >= ROUGH_2))
                            cl = (level * N_CODE_CONTEXTS + cc) * N_ROUGHNESS + g
                            pidx[m] = p
                            pcls[m] = cl
                            ppred[m] = pred
                            counts[cl + 1] += 1
                            m += 1
                # Stream order: class by class ascending, each class's points in C
                # order (a counting sort, stable).
                for c in range(N_CLASSES):
                    counts[c + 1] += counts[c]
                for i in range(m):
                    t = counts[pcls[i]]
                    spidx[t] = pidx[i]
                    spred[t] = ppred[i]
                    counts[pcls[i]] = t + 1
                # Class by class (a contiguous run of the sorted points each), so the
                # table's place and its F_1 stay in registers through the run.
                t0 = 0
                for c in range(N_CLASSES):
                    t1 = counts[c]
                    if t1 == t0:
                        continue
                    off = foff[c]
                    if off < 0:
                        err = NO_TABLE
                        detail = c
                        break
                    a = falpha[c]
                    special0 = fspecial[off]
                    for t in range(t0, t1):
                        sy, x, nxt = read_symbol(x, nxt, data, first, ftab, off, a)
                        p = spidx[t]
                        if sy == 0 and not special0:     # the common case: code 0
                            r[p] = spred[t] + 0.0 * s
                            qm[p] = 0
                            continue
                        if fspecial[off + sy]:
                            code, e, err = finish_symbol(sy, True, e, esc, ee)
                            if err != OK:
                                detail = c
                                break
                        else:
                            code = (sy >> 1) ^ -(sy & 1)
                        r[p] = spred[t] + code * s
                        qm[p] = min(abs(code), N_CODE_CONTEXTS - 1)
                    if err != OK:
                        break
                    t0 = t1
        if err == OK and (nxt >= 0 or x != 0 or e != ee):
            err = LEFT_OVER
        status[j, 0] = err
        status[j, 1] = detail

@_jit(nogil=True, cache=True, error_model="numpy")
def cast_into(r, rows, out, slots, is_int, lo, hi):
    """``out[slots[k], :d, :h, :w] = cast(r[rows[k]])`` (:func:`.layout.cast_to`:
    integers rounded half to even and clipped to ``[lo, hi]``, floats rounded to
    ``out``'s dtype by the assignment)."""
    d, hh, w = r.shape[1], r.shape[2], r.shape[3]
    for k in range(rows.size):
        src = r[rows[k]]
        dst = out[slots[k]]
        for z in range(d):
            for y in range(hh):
                for x in range(w):
                    v = src[z, y, x]
                    if is_int:
                        v = np.rint(v)
                        if v < lo:
                            v = lo
                        elif v > hi:
                            v = hi
                    dst[z, y, x] = v


def cast_rows(r: np.ndarray, rows: np.ndarray, out: np.ndarray, slots: np.ndarray) -> None:
    """Blocks ``r[rows]`` cast to ``out``'s dtype (:func:`.layout.cast_to`'s values) into
    ``out[slots]`` (the leading corner of each slot: edge blocks are smaller)."""
    dtype = out.dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        is_int, lo, hi = True, float(info.min), float(info.max)
    else:
        is_int, lo, hi = False, 0.0, 0.0
    cast_into(r, np.asarray(rows, dtype=np.int64), out, np.asarray(slots, dtype=np.int64),
              is_int, lo, hi)


def decode_blocks(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, itemsize: int,
                  shape3: Tuple[int, int, int], tables: Tuple[np.ndarray, ...],
                  step: float, levels: Tuple[float, float], order: Tuple[int, int, int]
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode the blocks ``data[starts[j]:ends[j]]`` (``data``: the stream as uint8), all
    of ``shape3``, for a volume of ``itemsize``-byte values. Returns ``r`` (n, *shape3)
    float64, each block's mode byte and exception count, and a status row per block
    (``OK`` or a :data:`MESSAGES` key, and a detail)."""
    n = len(starts)
    passes, psteps, s0 = pass_table(shape3, order, step, *levels)
    out = np.empty((n,) + tuple(shape3), dtype=np.float64)
    modes = np.zeros(n, dtype=np.int64)
    n_exc = np.zeros(n, dtype=np.int64)
    status = np.zeros((n, 2), dtype=np.int64)
    f, off, alpha, special = tables
    decode(data, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64),
           int(itemsize), f, off, alpha, special, passes, psteps, float(s0), float(step), out,
           modes, n_exc, status)
    return out, modes, n_exc, status
