"""Error-bounded correction stream: ``decoded = base + correction`` within ``E`` of the
original on every voxel, coded in independently decodable blocks (``spec/correction.md``).

``base`` is what the decoder already has on the voxel grid (a model's reconstruction, or
nothing when there is no model). Each block of ``B^3`` voxels is coded in the mode whose
codes cost the fewest bits:

* data modes — the multilevel interpolation predictor of :mod:`.interp` on the values
  themselves (SZ3's predictor), with its cubic kernel or a linear one (better on noisy
  data such as CT);
* residual modes — the same on ``value - base`` (the model predicts the large scales);
* base mode — the base is the prediction: ``code = round((value - base) / step)``.

All quantize in the loop with bins of width ``step = 2 E_q``, ``E_q`` a little under
``E`` (:func:`quantization_bound`), so every value is within ``E_q`` of its reconstruction
before the final cast to the volume's dtype. The encoder then decodes every block exactly
as the decoder will (float64, then the cast) and stores the few voxels that still break the
bound losslessly as *exceptions*, so the guarantee is exact, not probabilistic.

Codes are entropy coded with static rANS models (as in :mod:`.streams`), one per class:
a point's level and how rough its decoded neighbourhood is (:func:`_context`). The tables
are stored once for the whole stream, so a block costs only its own words. Codes beyond a
table's alphabet are *escapes*, stored as varints in the block.
"""
from __future__ import annotations

import dataclasses
import math
import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import zstandard

from ..errors import NeurvolFormatError
from .interp import MAX_CODE, _anchor, prediction_passes
from .interp import _predict as _predict_cubic
from .lorenzo import unzigzag, zigzag
from .coders.zstd import ZSTD_LEVEL, zstd_exact

# Block modes: what predicts a block's values (the kernel, and data or residual).
MODE_DATA_CUBIC = 0
MODE_DATA_LINEAR = 1
MODE_RESIDUAL_CUBIC = 2
MODE_RESIDUAL_LINEAR = 3
MODE_BASE = 4
MODE_NAMES = {MODE_DATA_CUBIC: "data-cubic", MODE_DATA_LINEAR: "data-linear",
              MODE_RESIDUAL_CUBIC: "residual-cubic", MODE_RESIDUAL_LINEAR: "residual-linear",
              MODE_BASE: "base"}
#: Modes that ignore the base, and those that only make sense with one.
DATA_MODES = (MODE_DATA_CUBIC, MODE_DATA_LINEAR)
BASE_MODES = (MODE_RESIDUAL_CUBIC, MODE_RESIDUAL_LINEAR, MODE_BASE)

#: Default block edge: a point query decodes at most 8 blocks of this many voxels per side.
DEFAULT_BLOCK = 64
MIN_BLOCK, MAX_BLOCK = 4, 256

#: Symbols are zigzagged codes below this; larger codes are escapes (kept rare by
#: construction: a code this large means a prediction off by thousands of bins).
MAX_ALPHABET = 1 << 16

#: Tables (classes) of interpolated points: level (``h == 1``, ``h == 2``, ``h >= 4``)
#: x the summed magnitude of the two neighbours' codes (0, 1, >= 2) x the distance of
#: their values in bins, bucketed at these edges (:func:`_context`); then one class for
#: the points of ``MODE_BASE`` blocks.
LEVEL_FINE, LEVEL_MID, LEVEL_COARSE = 0, 1, 2
N_CODE_CONTEXTS = 3
ROUGHNESS_EDGES = np.array([0.5, 2.0, 8.0])
N_ROUGHNESS = ROUGHNESS_EDGES.size + 1
ANCHOR_CLASS = LEVEL_COARSE * N_CODE_CONTEXTS * N_ROUGHNESS
BASE_CLASS = 3 * N_CODE_CONTEXTS * N_ROUGHNESS
N_CLASSES = BASE_CLASS + 1

#: Integer volumes are rounded after decoding: a value within ``k + 0.5`` (exclusive) of
#: an integer rounds to within ``k`` of it; this keeps the bins clear of the tie.
INT_TIE_MARGIN = 1.0 / 64

#: A float volume is cast to its dtype after decoding, which moves a value by up to half
#: an ulp; the quantization bound keeps this many ulps of the largest magnitude in reserve.
FLOAT_CAST_ULPS = 2.0

#: Tables store each symbol's count as one byte ``w``: 0 for an absent symbol, else
#: ``1 + round(2 log2(count))`` (half-bit steps, capped), read back as the integer weight
#: ``round(sqrt(2) ** (w - 1))``; the coding loss of the rounding is far below the bytes a
#: table of exact counts would take.
MAX_WEIGHT_CODE = 74     # weights below 2^37: a table's sum stays exact in binary64

STREAM_VERSION = 1
_HEAD = struct.Struct("<BBHdddHII")   # version, flags, block, E, step, base_tol,
                                      # n_tables, tables' bytes, their zstd frame's length


class BoundTooSmallError(ValueError):
    """The requested bound is below what the dtype's precision can honour through bins."""


# --------------------------------------------------------------------------- bounds
def quantization_bound(max_error: float, dtype: np.dtype, max_abs: float,
                       base_tolerance: float = 0.0) -> float:
    """The half bin width ``E_q`` used for quantization so that, after the cast to
    ``dtype`` and with a decoder's base differing from the encoder's by up to
    ``base_tolerance``, every voxel stays within ``max_error``."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        target = math.floor(max_error) + 0.5 - INT_TIE_MARGIN
    else:
        ulp = float(np.spacing(np.asarray(max(max_abs, 1e-300), dtype=dtype)))
        target = max_error - FLOAT_CAST_ULPS * ulp
    eq = target - base_tolerance
    if not eq > 0:
        raise BoundTooSmallError(
            f"max_error {max_error:g} is too small for {dtype.name} values up to {max_abs:g}")
    return eq


# --------------------------------------------------------------------------- blocks
def block_grid(shape: Sequence[int], block: int) -> Tuple[int, int, int]:
    """Blocks per axis."""
    return tuple(-(-int(n) // block) for n in shape)   # type: ignore[return-value]


def block_slices(shape: Sequence[int], block: int, index: int) -> Tuple[slice, slice, slice]:
    """Voxel slices of block ``index`` (C order over the block grid)."""
    g = block_grid(shape, block)
    kz, rem = divmod(index, g[1] * g[2])
    ky, kx = divmod(rem, g[2])
    return tuple(slice(k * block, min((k + 1) * block, int(n)))
                 for k, n in zip((kz, ky, kx), shape))   # type: ignore[return-value]


def _blocks_by_shape(shape: Sequence[int], block: int) -> Dict[Tuple[int, int, int], List[int]]:
    out: Dict[Tuple[int, int, int], List[int]] = {}
    for i in range(int(np.prod(block_grid(shape, block)))):
        sl = block_slices(shape, block, i)
        out.setdefault(tuple(s.stop - s.start for s in sl), []).append(i)
    return out


def _gather(vol: np.ndarray, shape3: Tuple[int, int, int], ids: List[int],
            block: int) -> np.ndarray:
    out = np.empty((len(ids),) + shape3, dtype=np.float64)
    for j, i in enumerate(ids):
        out[j] = vol[block_slices(vol.shape, block, i)]
    return out


# --------------------------------------------------------------------------- predictor
def _predict(view: np.ndarray, axis: int, h: int, cubic: bool
             ) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """Predictions of the points at odd multiples of ``h`` along ``axis`` of ``view``: the
    kernel of :func:`.interp._predict` (``cubic``), or linear only (noisy data, where the
    cubic kernel's overshoot costs more than its accuracy on smooth parts gains)."""
    if cubic:
        return _predict_cubic(view, axis, h)
    ax = view.ndim - 3 + axis
    n = view.shape[ax]
    p = np.arange(h, n, 2 * h)
    shape = [1] * view.ndim
    shape[ax] = p.size
    linear = (p + h < n).reshape(shape)
    b = np.take(view, p - h, axis=ax)
    c = np.take(view, np.clip(p + h, 0, n - 1), axis=ax)
    sel = [slice(None)] * view.ndim
    sel[ax] = slice(h, None, 2 * h)
    return np.where(linear, (b + c) / 2.0, b), tuple(sel)


def _context(view: np.ndarray, qview: np.ndarray, axis: int, h: int,
             step: float) -> np.ndarray:
    """Table (class) of each point of a pass, from what the decoder already has: its level,
    how large the codes of its two interpolation neighbours along ``axis`` were, and how
    far apart their values are (in bins). Both say how rough the data is here, so the many
    zero codes of smooth regions cost next to nothing. A point past the last neighbour
    uses the one it has twice."""
    level = LEVEL_FINE if h == 1 else LEVEL_MID if h == 2 else LEVEL_COARSE
    ax = qview.ndim - 3 + axis
    n = qview.shape[ax]
    p = np.arange(h, n, 2 * h)
    shape = [1] * qview.ndim
    shape[ax] = p.size
    inside = (p + h < n).reshape(shape)
    right = np.clip(p + h, 0, n - 1)
    qa = np.abs(np.take(qview, p - h, axis=ax))
    qb = np.where(inside, np.abs(np.take(qview, right, axis=ax)), qa)
    codes = np.minimum(N_CODE_CONTEXTS - 1, qa + qb)
    va = np.take(view, p - h, axis=ax)
    vb = np.where(inside, np.take(view, right, axis=ax), va)
    rough = np.searchsorted(ROUGHNESS_EDGES, np.abs(va - vb) / step, side="right")
    return (level * N_CODE_CONTEXTS + codes) * N_ROUGHNESS + rough


def _interp_batch(x: np.ndarray, step: float, cubic: bool
                  ) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Interpolation-code every grid of ``x`` (``(n, d, h, w)``) independently. Returns the
    passes, each ``(codes (n, k), classes (n, k))`` in C order, and the reconstruction."""
    rec = np.zeros_like(x)
    qgrid = np.zeros(x.shape, dtype=np.int64)
    passes: List[Tuple[np.ndarray, np.ndarray]] = []

    def code(target: np.ndarray, pred: np.ndarray) -> np.ndarray:
        q = np.round((target - pred) / step)
        if q.size and float(np.abs(q).max()) > MAX_CODE:
            raise BoundTooSmallError(f"step {step:g} is too small for values of this range")
        return q.astype(np.int64)

    anchor = _anchor(x.shape)
    q = code(x[anchor], np.zeros_like(x[anchor]))
    rec[anchor] = q * step
    qgrid[anchor] = q
    passes.append((q.reshape(len(x), -1), np.full((len(x), 1), ANCHOR_CLASS, np.int64)))
    for axis, h, sel in prediction_passes(x.shape):
        view, qview = rec[sel], qgrid[sel]     # basic slicing: views into the grids
        pred, psel = _predict(view, axis, h, cubic)
        cls = np.broadcast_to(_context(view, qview, axis, h, step), pred.shape)
        q = code(x[sel][psel], pred)
        view[psel] = pred + q * step
        qview[psel] = q
        passes.append((q.reshape(len(x), -1), cls.reshape(len(x), -1)))
    return passes, rec


def _interp_decode_block(shape3: Tuple[int, int, int], step: float, cubic: bool,
                         take: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Mirror of :func:`_interp_batch` for one block: ``take(classes)`` returns the codes
    of a pass's points (int64, the shape of ``classes``)."""
    rec = np.zeros(shape3, dtype=np.float64)
    qgrid = np.zeros(shape3, dtype=np.int64)
    anchor = _anchor(rec.shape)
    q = take(np.full((1, 1, 1), ANCHOR_CLASS, np.int64))
    rec[anchor] = q * step
    qgrid[anchor] = q
    for axis, h, sel in prediction_passes(rec.shape):
        view, qview = rec[sel], qgrid[sel]
        pred, psel = _predict(view, axis, h, cubic)
        q = take(np.ascontiguousarray(np.broadcast_to(_context(view, qview, axis, h, step),
                                                       pred.shape)))
        view[psel] = pred + q * step
        qview[psel] = q
    return rec


def _reconstruct(mode: int, shape3: Tuple[int, int, int], step: float, base: np.ndarray,
                 take: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Float64 values of one block before the cast, exactly as decoders compute them."""
    if mode == MODE_BASE:
        return base + take(np.full(shape3, BASE_CLASS, np.int64)) * step
    rec = _interp_decode_block(shape3, step, mode in (MODE_DATA_CUBIC, MODE_RESIDUAL_CUBIC),
                               take)
    return rec if mode in DATA_MODES else base + rec


def cast_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The final cast: integers rounded (half to even) and clipped, floats rounded to dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


# --------------------------------------------------------------------------- entropy
def _entropy_bits(codes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Order-0 entropy (bits) of each row of ``codes`` within each class (rows: blocks):
    the cost estimate that picks a block's mode."""
    out = np.zeros(codes.shape[0])
    for r in range(codes.shape[0]):
        key = classes[r] * (2 * MAX_CODE + 3) + codes[r] + MAX_CODE + 1
        _, cnt = np.unique(key, return_counts=True)
        _, tot = np.unique(classes[r], return_counts=True)
        out[r] = float(-(cnt * np.log2(cnt)).sum() + (tot * np.log2(tot)).sum())
    return out


def _varints(values: Sequence[int]) -> bytes:
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_varints(data: bytes, pos: int, n: int, what: str) -> Tuple[List[int], int]:
    out = []
    for _ in range(n):
        v, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 63:
                raise NeurvolFormatError(f"{what}: truncated or overlong varint; the file is damaged")
            b = data[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append(v)
    return out, pos


def _constriction():
    try:
        import constriction
    except ImportError as exc:   # pragma: no cover - a declared dependency
        raise NeurvolFormatError(
            "the correction stream is rANS coded, which needs the 'constriction' package: "
            "pip install constriction") from exc
    return constriction


def weight_codes(counts: np.ndarray) -> np.ndarray:
    """The stored byte per symbol of a table from its exact counts."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.zeros(counts.size, dtype=np.uint8)
    nz = counts > 0
    w[nz] = np.minimum(MAX_WEIGHT_CODE, 1 + np.rint(2.0 * np.log2(counts[nz]))).astype(np.uint8)
    return w


def _weight(code: int) -> int:
    """``round(sqrt(2) ** (code - 1))`` in exact integers (0 for code 0)."""
    if code == 0:
        return 0
    p2 = 1 << (code - 1)                 # weight ~ sqrt(p2)
    r = math.isqrt(p2)
    return r + 1 if (2 * r + 1) ** 2 <= 4 * p2 else r


_WEIGHTS = np.array([_weight(c) for c in range(MAX_WEIGHT_CODE + 1)], dtype=np.int64)


def _model(codes: np.ndarray):
    """The rANS model of a table of weight codes (integer weights, so every reader builds
    the same probabilities)."""
    c = _constriction()
    w = _WEIGHTS[np.asarray(codes, dtype=np.int64)]
    return c.stream.model.Categorical(w / float(w.sum()), perfect=False)


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False).compress(data)


@dataclasses.dataclass
class _Block:
    mode: int
    segments: List[Tuple[int, np.ndarray]]      # (class, codes) in stream order
    exceptions: List[Tuple[int, float]] = dataclasses.field(default_factory=list)


def _segments(passes: List[Tuple[np.ndarray, np.ndarray]], row: int
              ) -> List[Tuple[int, np.ndarray]]:
    """A block's codes in stream order: pass by pass, within a pass class by class
    (ascending), within a class in C order."""
    out = []
    for codes, classes in passes:
        q, c = codes[row], classes[row]
        for k in np.unique(c):
            out.append((int(k), q[c == k]))
    return out


# --------------------------------------------------------------------------- encoder
@dataclasses.dataclass
class CorrectionStats:
    """What an encode produced (informative)."""

    nbytes: int
    blocks: int
    modes: Dict[str, int]
    exceptions: int
    table_bytes: int
    index_bytes: int


def encode_correction(volume: np.ndarray, max_error: float, base: Optional[np.ndarray] = None,
                      *, block: int = DEFAULT_BLOCK, base_tolerance: float = 0.0,
                      modes: Optional[Sequence[int]] = None
                      ) -> Tuple[bytes, CorrectionStats]:
    """Code ``volume`` (3-D, integer or float) so that decoding the stream with ``base`` is
    within ``max_error`` of it on every voxel (checked here, voxel by voxel, through the
    decoder).

    base: float array of the volume's shape that the decoder will have (e.g. a model's
    decode; ``None``: zeros, a pure predictor). base_tolerance: how far a decoder's base
    may differ from this one (a model evaluated on another machine); the bound holds for
    any base within it. modes: the block modes to try (default: every mode that applies)."""
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
    xf = x.astype(np.float64)
    if not np.isfinite(xf).all():
        raise ValueError("the volume holds NaN or infinite values; no bound can hold")
    b = None if base is None else np.asarray(base, dtype=np.float64)
    if b is not None and (b.shape != x.shape or not np.isfinite(b).all()):
        raise ValueError("base must be a finite array of the volume's shape")
    eq = quantization_bound(max_error, dtype, float(np.abs(xf).max()),
                            base_tolerance if b is not None else 0.0)
    step = 2.0 * eq
    if modes is None:
        modes = DATA_MODES + (BASE_MODES if b is not None else ())
    modes = tuple(modes)
    if b is None and any(m in BASE_MODES for m in modes):
        raise ValueError("residual and base modes need a base")

    nblocks = int(np.prod(block_grid(x.shape, block)))
    blocks: List[Optional[_Block]] = [None] * nblocks
    for shape3, ids in _blocks_by_shape(x.shape, block).items():
        xs = _gather(xf, shape3, ids, block)
        bs = None if b is None else _gather(b, shape3, ids, block)
        cand = []
        for mode in modes:
            if mode == MODE_BASE:
                q = np.round((xs - bs) / step)
                if q.size and float(np.abs(q).max()) > MAX_CODE:
                    raise BoundTooSmallError(f"step {step:g} is too small for this base")
                q = q.astype(np.int64).reshape(len(ids), -1)
                passes = [(q, np.full(q.shape, BASE_CLASS, np.int64))]
            else:
                src = xs if mode in DATA_MODES else xs - bs
                passes, _ = _interp_batch(src, step, mode in (MODE_DATA_CUBIC, MODE_RESIDUAL_CUBIC))
            codes = np.concatenate([p[0] for p in passes], axis=1)
            classes = np.concatenate([p[1] for p in passes], axis=1)
            cand.append((passes, _entropy_bits(codes, classes)))
        best = np.argmin(np.stack([c[1] for c in cand]), axis=0)
        for j, i in enumerate(ids):
            k = int(best[j])
            blocks[i] = _Block(modes[k], _segments(cand[k][0], j))
    # Decode every block exactly as a reader will and keep the voxels that break the bound
    # as lossless exceptions (the exceptions do not change any code, so one pass suffices).
    data, _ = _serialize(blocks, x.shape, dtype, block, max_error, step, base_tolerance)
    stream = CorrectionStream(data, x.shape, dtype)
    for i, blk in enumerate(blocks):
        sl = block_slices(x.shape, block, i)
        pre = stream.decode_block(i, None if b is None else b[sl], before_cast=True)
        out = cast_to(pre, dtype).astype(np.float64)
        orig = xf[sl]
        bad = np.abs(out - orig) > max_error
        if blk.mode in BASE_MODES and base_tolerance > 0:
            if dtype.kind in "iu":
                # A base off by the tolerance must not move a value across a rounding tie.
                bad |= np.abs(pre - orig) >= math.floor(max_error) + 0.5 - base_tolerance
            else:
                bad |= np.abs(out - orig) > max_error - base_tolerance
        flat = np.flatnonzero(bad.reshape(-1))
        blk.exceptions = [(int(k), float(orig.reshape(-1)[k])) for k in flat]
    return _serialize(blocks, x.shape, dtype, block, max_error, step, base_tolerance)


def _serialize(blocks: List[_Block], shape, dtype, block: int, max_error: float, step: float,
               base_tolerance: float) -> Tuple[bytes, CorrectionStats]:
    hist: Dict[int, np.ndarray] = {}
    block_syms = []
    for blk in blocks:
        segs, escapes = [], []
        for cls, q in blk.segments:
            z = zigzag(q).astype(np.int64)
            esc = z >= MAX_ALPHABET - 1
            sym = np.where(esc, MAX_ALPHABET - 1, z)
            escapes.extend(int(e) for e in z[esc])
            h = np.bincount(sym, minlength=2)
            old = hist.get(cls, np.zeros(0, np.int64))
            n = max(old.size, h.size)
            hist[cls] = np.pad(old, (0, n - old.size)) + np.pad(h, (0, n - h.size))
            segs.append((cls, sym))
        block_syms.append((segs, escapes))
    tables = {k: weight_codes(v) for k, v in hist.items()}
    models = {k: _model(v) for k, v in tables.items()}
    raw = bytearray()
    for k in sorted(tables):
        raw += bytes([k]) + _varints([tables[k].size]) + tables[k].tobytes()
    table_blob = _zstd(bytes(raw))
    c = _constriction()
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
        payloads.append(bytes([blk.mode]) + _varints([len(escapes), len(idx)])
                        + _varints(escapes) + _varints(deltas) + vals + words)
    lengths = np.asarray([len(p) for p in payloads], dtype="<u4")
    index = _zstd(lengths.tobytes())
    head = _HEAD.pack(STREAM_VERSION, 0, block, max_error, step, base_tolerance, len(tables),
                      len(raw), len(table_blob))
    out = head + table_blob + struct.pack("<I", len(index)) + index + b"".join(payloads)
    modes: Dict[str, int] = {}
    for blk in blocks:
        modes[MODE_NAMES[blk.mode]] = modes.get(MODE_NAMES[blk.mode], 0) + 1
    stats = CorrectionStats(len(out), len(blocks), modes,
                            sum(len(b.exceptions) for b in blocks), len(table_blob),
                            4 + len(index))
    return out, stats


# --------------------------------------------------------------------------- decoder
class CorrectionStream:
    """A parsed correction stream of a volume of ``shape`` and ``dtype``: blocks decode on
    demand (random access); every size is checked against the bytes present."""

    def __init__(self, data: bytes, shape: Sequence[int], dtype, what: str = "correction"):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.what = what
        data = bytes(data)
        if len(data) < _HEAD.size:
            raise NeurvolFormatError(f"{what}: truncated header; the file is damaged")
        (version, _flags, block, self.max_error, self.step, self.base_tolerance,
         n_tables, raw_len, frame_len) = _HEAD.unpack_from(data)
        if version != STREAM_VERSION:
            raise NeurvolFormatError(
                f"{what}: correction stream version {version} is not supported "
                f"(this reader knows {STREAM_VERSION}); upgrade neurvol")
        if not (MIN_BLOCK <= block <= MAX_BLOCK and math.isfinite(self.step) and self.step > 0
                and math.isfinite(self.max_error) and self.max_error >= 0
                and math.isfinite(self.base_tolerance) and self.base_tolerance >= 0
                and n_tables <= N_CLASSES and raw_len <= N_CLASSES * (6 + MAX_ALPHABET)
                and _HEAD.size + frame_len <= len(data)):
            raise NeurvolFormatError(f"{what}: invalid stream parameters; the file is damaged")
        self.block = block
        pos = _HEAD.size
        raw = zstd_exact(data[pos:pos + frame_len], raw_len, what)
        pos += frame_len
        self._tables: Dict[int, np.ndarray] = {}
        tpos = 0
        for _ in range(n_tables):
            if tpos >= len(raw):
                raise NeurvolFormatError(f"{what}: truncated tables; the file is damaged")
            key = raw[tpos]
            (alphabet,), tpos = _read_varints(raw, tpos + 1, 1, what)
            codes = np.frombuffer(raw[tpos:tpos + alphabet], dtype=np.uint8)
            tpos += alphabet
            if (key >= N_CLASSES or key in self._tables or not 2 <= alphabet <= MAX_ALPHABET
                    or codes.size != alphabet or int(codes.max()) > MAX_WEIGHT_CODE
                    or not codes.any()):
                raise NeurvolFormatError(f"{what}: invalid table; the file is damaged")
            self._tables[key] = codes
        if tpos != len(raw):
            raise NeurvolFormatError(f"{what}: bytes after the tables; the file is damaged")
        self._models: Dict[int, object] = {}
        self.nblocks = int(np.prod(block_grid(self.shape, block)))
        if pos + 4 > len(data):
            raise NeurvolFormatError(f"{what}: truncated block index; the file is damaged")
        (ilen,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + ilen > len(data):
            raise NeurvolFormatError(f"{what}: truncated block index; the file is damaged")
        lengths = np.frombuffer(zstd_exact(data[pos:pos + ilen], 4 * self.nblocks, what), "<u4")
        pos += ilen
        self._offsets = pos + np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        if int(self._offsets[-1]) != len(data):
            raise NeurvolFormatError(
                f"{what}: the block index describes {int(self._offsets[-1]) - pos} bytes, the "
                f"stream holds {len(data) - pos}; the file is damaged")
        self._data = data

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
        if key not in self._tables:
            raise NeurvolFormatError(f"{self.what}: a block uses table {key}, which the stream "
                                     "does not hold; the file is damaged")
        if key not in self._models:
            self._models[key] = _model(self._tables[key])
        return self._models[key]

    def decode_block(self, i: int, base: Optional[np.ndarray], *,
                     before_cast: bool = False) -> np.ndarray:
        """Block ``i`` (see :func:`block_slices`) in the volume's dtype; ``base``: the base
        over the block's voxels (``None``: zeros). ``before_cast``: the float64 values
        before the cast and the exceptions (the encoder's check needs them)."""
        if not 0 <= i < self.nblocks:
            raise IndexError(f"block {i} out of range")
        sl = block_slices(self.shape, self.block, i)
        shape3 = tuple(s.stop - s.start for s in sl)
        n = int(np.prod(shape3))
        b = np.zeros(shape3) if base is None else np.asarray(base, np.float64).reshape(shape3)
        what = f"{self.what} block {i}"
        data = self._data[int(self._offsets[i]):int(self._offsets[i + 1])]
        if not data or data[0] not in MODE_NAMES:
            raise NeurvolFormatError(f"{what}: unknown block mode; the file is damaged")
        mode = data[0]
        (n_esc, n_exc), pos = _read_varints(data, 1, 2, what)
        if (n_esc > n or n_exc > n
                or pos + n_esc + n_exc * (1 + self.dtype.itemsize) > len(data)):
            raise NeurvolFormatError(f"{what}: more escapes or exceptions than its voxels or "
                                     "bytes allow; the file is damaged")
        escapes, pos = _read_varints(data, pos, n_esc, what)
        deltas, pos = _read_varints(data, pos, n_exc, what)
        vsize = n_exc * self.dtype.itemsize
        if pos + vsize > len(data) or (len(data) - pos - vsize) % 4:
            raise NeurvolFormatError(f"{what}: truncated block; the file is damaged")
        exc_vals = np.frombuffer(data[pos:pos + vsize], dtype=self.dtype.newbyteorder("<"))
        pos += vsize
        words = np.frombuffer(data[pos:], dtype="<u4").astype(np.uint32)
        c = _constriction()
        esc_iter = iter(escapes)
        try:
            coder = c.stream.stack.AnsCoder(words)
        except Exception as exc:   # constriction raises plain exceptions
            raise NeurvolFormatError(f"{what}: damaged rans stream: {exc}") from exc

        def take(classes: np.ndarray) -> np.ndarray:
            flat = classes.reshape(-1)
            z = np.empty(flat.size, dtype=np.int64)
            for k in np.unique(flat):
                m = flat == k
                try:
                    sym = np.asarray(coder.decode(self._model_for(int(k)), int(m.sum())),
                                     dtype=np.int64)
                except NeurvolFormatError:
                    raise
                except Exception as exc:
                    raise NeurvolFormatError(f"{what}: damaged rans stream: {exc}") from exc
                for j in np.flatnonzero(sym == MAX_ALPHABET - 1):   # in stream order
                    e = next(esc_iter, None)
                    if e is None or e < MAX_ALPHABET - 1 or e > 2 * MAX_CODE + 1:
                        raise NeurvolFormatError(f"{what}: bad escape; the file is damaged")
                    sym[j] = e
                z[m] = sym
            return unzigzag(z.astype(np.uint64)).reshape(classes.shape)

        pre = _reconstruct(mode, shape3, self.step, b, take)
        if not coder.is_empty() or next(esc_iter, None) is not None:
            raise NeurvolFormatError(f"{what}: symbols left over; the file is damaged")
        if before_cast:
            return pre
        out = cast_to(pre, self.dtype)
        if n_exc:
            idx = np.cumsum(np.asarray(deltas, dtype=np.int64) + 1) - 1
            if int(idx[-1]) >= n:
                raise NeurvolFormatError(f"{what}: exception index out of range; the file is damaged")
            out.reshape(-1)[idx] = exc_vals
        return out

    def decode(self, base: Optional[np.ndarray] = None) -> np.ndarray:
        """The whole volume (volume dtype); ``base`` as the encoder had it (``None``: zeros)."""
        out = np.empty(self.shape, dtype=self.dtype)
        for i in range(self.nblocks):
            sl = block_slices(self.shape, self.block, i)
            out[sl] = self.decode_block(i, None if base is None else base[sl])
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
