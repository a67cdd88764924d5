"""Encoding a correction stream (``spec/correction.md`` §4, informative): every block
coded in every mode that applies, the cheapest kept, then every block decoded exactly as a
reader will and the voxels that still break the bound stored as exceptions.

Memory: blocks are coded and checked a batch at a time (:data:`ENCODE_BATCH_VOXELS`), so
the float64 and int64 temporaries cover one batch, never the whole volume; what is kept
for every block until the rANS tables are known is its symbols (uint16, two bytes a
voxel). Blocks are coded independently, so the batching does not change a byte."""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .entropy import constriction, entropy_bits, rans_model, varints, weight_codes, zstd_compress
from .layout import (BASE_CLASS, BASE_MODES, CUBIC_MODES, DATA_MODES, DEFAULT_BLOCK, ESCAPE,
                     MAP_CLASSES, MAX_BLOCK, MIN_BLOCK, MODE_BASE, MODE_NAMES, NO_LEVELS,
                     TABLE_MAPS, block_grid, block_slices, blocks_by_shape, cast_to,
                     levels_valid, pack_head, quantization_bound, table_of)
from .levels import OBJECTIVE_SIZE, choose_levels, choose_order
from .predict import AXIS_ORDERS, DEFAULT_ORDER, interp_passes, quantize
from .stream import CorrectionStream
from ..lorenzo import zigzag

Passes = List[Tuple[np.ndarray, np.ndarray]]     # (codes (n, k), classes (n, k)) per pass

#: Streams up to this size also try the coarser table maps (their tables are a large
#: share of them; the tries cost a few rANS passes over few symbols).
SMALL_STREAM_BYTES = 16 << 10
#: Voxels coded (and decoded for the exception check) per batch of blocks: bounds the
#: encoder's temporaries (about 60 bytes a voxel of the batch) whatever the volume's size.
ENCODE_BATCH_VOXELS = 1 << 20
#: Stored symbols: zigzagged codes below :data:`ESCAPE` fit in 16 bits.
_SYMBOL_DTYPE = np.uint16


@dataclasses.dataclass
class _Segment:
    """One class's codes of a block: their symbols (escapes as :data:`ESCAPE`) and the
    escaped values, in C order."""

    cls: int
    symbols: np.ndarray
    escapes: List[int]


@dataclasses.dataclass
class _Block:
    mode: int
    segments: List[_Segment]                    # in stream order
    exceptions: List[Tuple[int, float]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CorrectionStats:
    """What an encode produced (informative)."""

    nbytes: int
    blocks: int
    modes: Dict[str, int]
    exceptions: int
    table_bytes: int
    index_bytes: int
    levels: Tuple[float, float] = NO_LEVELS     # (alpha, beta) of the level-wise bins
    order: int = DEFAULT_ORDER                  # index of the axis order


def _segments(passes: Passes, row: int) -> List[_Segment]:
    """A block's codes in stream order: pass by pass, within a pass class by class
    (ascending), within a class in C order."""
    out = []
    for codes, classes in passes:
        q, c = codes[row], classes[row]
        for k in np.unique(c):
            z = zigzag(q[c == k])
            esc = z >= ESCAPE
            escapes = [int(e) for e in z[esc]]
            z[esc] = ESCAPE
            out.append(_Segment(int(k), z.astype(_SYMBOL_DTYPE), escapes))
    return out


def _interp_code(x: np.ndarray, step: float, cubic: bool,
                 levels: Tuple[float, float] = NO_LEVELS,
                 keep: Optional[list] = None, order: int = DEFAULT_ORDER) -> Passes:
    """Interpolation-code every grid of ``x`` (``(n, d, h, w)``) independently: the passes
    in stream order (C order within each). ``levels``: ``(alpha, beta)`` of the level-wise
    bin widths (:func:`.predict.level_step`). ``keep``: a list the reconstruction is
    appended to. ``order``: index of the axis order (:data:`.predict.AXIS_ORDERS`)."""
    passes: Passes = []
    n = len(x)

    def coder(sel, psel, pred, classes, s):
        target = x[psel] if sel is None else x[sel][psel]
        q = quantize(target, pred, s)
        passes.append((q.reshape(n, -1), np.ascontiguousarray(classes).reshape(n, -1)))
        return q

    rec = interp_passes(x.shape, step, cubic, coder, *levels, order=AXIS_ORDERS[order])
    if keep is not None:
        keep.append(rec)
    return passes


def _gather(vol: np.ndarray, shape3: Tuple[int, int, int], ids: Sequence[int],
            block: int) -> np.ndarray:
    """Blocks ``ids`` (all of shape ``shape3``) side by side, as float64."""
    out = np.empty((len(ids),) + shape3, dtype=np.float64)
    for j, i in enumerate(ids):
        out[j] = vol[block_slices(vol.shape, block, i)]
    return out


def encode_correction(volume: np.ndarray, max_error: float, base: Optional[np.ndarray] = None,
                      *, block: int = DEFAULT_BLOCK, base_tolerance: float = 0.0,
                      modes: Optional[Sequence[int]] = None,
                      levels: Union[Tuple[float, float], str] = OBJECTIVE_SIZE,
                      bin_bound: Optional[float] = None, order: Optional[int] = None
                      ) -> Tuple[bytes, CorrectionStats]:
    """Code ``volume`` (3-D, integer or float) so that decoding the stream with ``base`` is
    within ``max_error`` of it on every voxel (checked here, voxel by voxel, through the
    decoder).

    base: float array of the volume's shape that the decoder will have (e.g. a model's
    decode; ``None``: zeros, a pure predictor). base_tolerance: how far a decoder's base
    may differ from this one (a model evaluated on another machine); the bound holds for
    any base within it. modes: the block modes to try (default: every mode that applies).
    levels: ``(alpha, beta)`` of the level-wise bin widths of the interpolation modes
    (:func:`.predict.level_step`), or what :func:`.levels.choose_levels` should choose them
    for: ``"size"`` (the smallest stream at this bound) or ``"quality"`` (the best PSNR per
    byte, for encodes that search the bound to fill a budget). bin_bound: the half bin
    width to quantize with, below the widest ``max_error`` allows (an integer volume's
    bound moves in steps of 1, its bins need not: a budget search uses this). order:
    index of the axes' order in the interpolation (:data:`.predict.AXIS_ORDERS`; ``None``:
    the one whose codes cost least on sample blocks, :func:`.levels.choose_order`)."""
    x = np.asarray(volume)
    if x.ndim != 3 or x.size == 0:
        raise ValueError(f"expected a non-empty 3-D volume, got shape {x.shape}")
    dtype = x.dtype
    if dtype.kind not in "iuf":
        raise ValueError(f"expected an integer or float volume, got {dtype}")
    if not (math.isfinite(max_error) and max_error >= 0):
        raise ValueError(f"max_error must be finite and >= 0, got {max_error}")
    if not MIN_BLOCK <= block <= MAX_BLOCK:
        raise ValueError(f"block edge must be in [{MIN_BLOCK}, {MAX_BLOCK}], got {block}")
    # No float64 copy of the volume or base: blocks are converted as they are gathered
    # (float64 holds every value of the supported dtypes exactly).
    if not _all_finite(x):
        raise ValueError("the volume holds NaN or infinite values; no bound can hold")
    b = None if base is None else np.asarray(base)
    if b is not None and (b.shape != x.shape or b.dtype.kind not in "iuf"
                          or not _all_finite(b)):
        raise ValueError("base must be a finite array of the volume's shape")
    eq = quantization_bound(max_error, dtype, _max_abs(x),
                            base_tolerance if b is not None else 0.0)
    if bin_bound is not None:
        if not 0 < bin_bound <= eq:
            raise ValueError(f"bin_bound must be in (0, {eq}], got {bin_bound}")
        eq = float(bin_bound)
    step = 2.0 * eq
    if modes is None:
        modes = DATA_MODES + (BASE_MODES if b is not None else ())
    modes = tuple(modes)
    if b is None and any(m in BASE_MODES for m in modes):
        raise ValueError("residual and base modes need a base")
    # The trials read sample blocks only: the difference is formed a block at a time.
    src = x if b is None else _BlockDifference(x, b)
    if order is None:
        order = choose_order(src, step, block)
    if not 0 <= order < len(AXIS_ORDERS):
        raise ValueError(f"order must be an index of AXIS_ORDERS, got {order}")
    if isinstance(levels, str):
        levels = choose_levels(src, step, levels, block, integer=dtype.kind in "iu"
                               and b is None, order=order)
    levels = (float(levels[0]), float(levels[1]))
    if not levels_valid(levels):
        raise ValueError(f"level-wise bin widths (alpha, beta) = {levels} cannot be stored")

    nblocks = int(np.prod(block_grid(x.shape, block)))
    blocks: List[Optional[_Block]] = [None] * nblocks
    for shape3, ids in _batches(x.shape, block, range(nblocks)):
        xs = _gather(x, shape3, ids, block)
        bs = None if b is None else _gather(b, shape3, ids, block)
        cand = []
        for mode in modes:
            if mode == MODE_BASE:
                q = quantize(xs, bs, step).reshape(len(ids), -1)
                passes = [(q, np.full(q.shape, BASE_CLASS, np.int64))]
            else:
                src = xs if mode in DATA_MODES else xs - bs
                passes = _interp_code(src, step, mode in CUBIC_MODES, levels, order=order)
            codes = np.concatenate([p[0] for p in passes], axis=1)
            classes = np.concatenate([p[1] for p in passes], axis=1)
            cand.append((passes, entropy_bits(codes, classes)))
            del codes, classes
        best = np.argmin(np.stack([c[1] for c in cand]), axis=0)
        for j, i in enumerate(ids):
            k = int(best[j])
            blocks[i] = _Block(modes[k], _segments(cand[k][0], j))
        del cand, xs, bs
    # Decode every block exactly as a reader will and keep the voxels that break the bound
    # as lossless exceptions (the exceptions do not change any code, so one pass suffices).
    data, _ = _serialize(blocks, x.shape, dtype, block, max_error, step, base_tolerance,
                         levels, order=order)
    stream = CorrectionStream(data, x.shape, dtype)
    for dec in (d for _, ids in _batches(x.shape, block, range(nblocks))
                for d in stream.decode_blocks(ids)):
        for j, i in enumerate(dec.ids):
            blk = blocks[i]
            sl = block_slices(x.shape, block, i)
            pre = dec.pre(j, None if b is None else np.asarray(b[sl], dtype=np.float64))
            out = cast_to(pre, dtype).astype(np.float64)
            orig = np.asarray(x[sl], dtype=np.float64)
            bad = np.abs(out - orig) > max_error
            if blk.mode in BASE_MODES and base_tolerance > 0:
                if dtype.kind in "iu":
                    # A base off by the tolerance must not move a value across a rounding tie.
                    bad |= np.abs(pre - orig) >= math.floor(max_error) + 0.5 - base_tolerance
                else:
                    bad |= np.abs(out - orig) > max_error - base_tolerance
            flat = np.flatnonzero(bad.reshape(-1))
            blk.exceptions = [(int(k), float(orig.reshape(-1)[k])) for k in flat]
    # Small streams: coarser table maps may cost less than the tables they replace.
    full = _serialize(blocks, x.shape, dtype, block, max_error, step, base_tolerance, levels,
                      order=order)
    if full[1].nbytes > SMALL_STREAM_BYTES:
        return full
    return min([full] + [_serialize(blocks, x.shape, dtype, block, max_error, step,
                                    base_tolerance, levels, m, order)
                         for m in TABLE_MAPS if m != MAP_CLASSES], key=lambda r: len(r[0]))


class _BlockDifference:
    """``x - base`` in float64, computed for the slices read (no whole-volume copy)."""

    def __init__(self, x: np.ndarray, base: np.ndarray) -> None:
        self.x, self.base, self.shape = x, base, x.shape

    def __getitem__(self, sl: Tuple[slice, ...]) -> np.ndarray:
        return (np.asarray(self.x[sl], dtype=np.float64)
                - np.asarray(self.base[sl], dtype=np.float64))


def _batches(shape: Sequence[int], block: int, ids: Sequence[int]
             ) -> Iterator[Tuple[Tuple[int, int, int], List[int]]]:
    """``ids`` grouped by block shape, each group cut into batches of at most
    :data:`ENCODE_BATCH_VOXELS` voxels (at least one block)."""
    for shape3, group in blocks_by_shape(shape, block, ids).items():
        per = max(1, ENCODE_BATCH_VOXELS // int(np.prod(shape3)))
        for s in range(0, len(group), per):
            yield shape3, group[s:s + per]


def _slabs(x: np.ndarray) -> Iterator[np.ndarray]:
    """``x`` a few planes at a time (about :data:`ENCODE_BATCH_VOXELS` voxels each)."""
    plane = max(1, int(np.prod(x.shape[1:])))
    per = max(1, ENCODE_BATCH_VOXELS // plane)
    for z in range(0, x.shape[0], per):
        yield x[z:z + per]


def _all_finite(x: np.ndarray) -> bool:
    if x.dtype.kind in "iu":
        return True
    return all(bool(np.isfinite(s).all()) for s in _slabs(x))


def _max_abs(x: np.ndarray) -> float:
    """Largest magnitude, as float64 (exact: the abs of an integer or float is exact,
    computed in float64 so the most negative integer does not wrap)."""
    return max(float(np.abs(s.astype(np.float64)).max()) for s in _slabs(x))


def _serialize(blocks: List[_Block], shape, dtype, block: int, max_error: float, step: float,
               base_tolerance: float, levels: Tuple[float, float],
               table_map: int = MAP_CLASSES, order: int = DEFAULT_ORDER
               ) -> Tuple[bytes, CorrectionStats]:
    """The stream's bytes, each class coded with the table :func:`.layout.table_of` maps
    it to under ``table_map``."""
    hist: Dict[int, np.ndarray] = {}
    block_syms = []
    for blk in blocks:
        segs, escapes = [], []
        for seg in blk.segments:
            escapes.extend(seg.escapes)
            key = table_of(seg.cls, table_map)
            h = np.bincount(seg.symbols, minlength=2)
            # Added in place, grown only when a segment holds a larger symbol: tens of
            # thousands of segments, so no padded copies per segment.
            acc = hist.get(key)
            if acc is None or acc.size < h.size:
                grown = np.zeros(h.size, np.int64)
                if acc is not None:
                    grown[:acc.size] = acc
                hist[key] = acc = grown
            acc[:h.size] += h
            segs.append((key, seg.symbols))
        block_syms.append((segs, escapes))
    tables = {k: weight_codes(v) for k, v in hist.items()}
    models = {k: rans_model(v) for k, v in tables.items()}
    raw = bytearray()
    for k in sorted(tables):
        raw += bytes([k]) + varints([tables[k].size]) + tables[k].tobytes()
    table_blob = zstd_compress(bytes(raw))
    if len(table_blob) >= len(raw):
        table_blob = bytes(raw)           # small tables: a zstd frame would cost more
    c = constriction()
    payloads = []
    for blk, (segs, escapes) in zip(blocks, block_syms):
        enc = c.stream.stack.AnsCoder()
        for cls, sym in reversed(segs):
            enc.encode_reverse(sym.astype(np.int32), models[cls])
        words = enc.get_compressed().astype("<u4").tobytes()
        idx = [k for k, _ in blk.exceptions]
        deltas = [idx[0]] + [q - p - 1 for p, q in zip(idx, idx[1:])] if idx else []
        vals = np.asarray([v for _, v in blk.exceptions], np.float64).astype(
            np.dtype(dtype).newbyteorder("<")).tobytes()
        payloads.append(bytes([blk.mode]) + varints([len(escapes), len(idx)])
                        + varints(escapes) + varints(deltas) + vals + words)
    lengths = np.asarray([len(p) for p in payloads], dtype="<u4")
    index = zstd_compress(lengths.tobytes())
    index_len: Optional[int] = len(index)
    as_varints = varints(lengths.tolist())
    if len(as_varints) <= len(index):
        index, index_len = as_varints, None     # few blocks: varints cost less than a frame
    head = pack_head(block, max_error, step, base_tolerance, levels, len(tables), len(raw),
                     len(table_blob), index_len, table_map, order)
    out = head + table_blob + index + b"".join(payloads)
    modes: Dict[str, int] = {}
    for blk in blocks:
        modes[MODE_NAMES[blk.mode]] = modes.get(MODE_NAMES[blk.mode], 0) + 1
    stats = CorrectionStats(len(out), len(blocks), modes,
                            sum(len(b.exceptions) for b in blocks), len(table_blob),
                            len(index), levels, order)
    return out, stats


