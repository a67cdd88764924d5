"""The correction stream's constants, bounds and block geometry (``spec/correction.md``
§2.1): what the encoder and the decoder must agree on before any block is coded."""
from __future__ import annotations

import dataclasses
import math
import struct
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import NeurvolFormatError
from .entropy import read_varints, varints

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
CUBIC_MODES = (MODE_DATA_CUBIC, MODE_RESIDUAL_CUBIC)

#: Default block edge: a point query decodes the blocks of this many voxels per side that
#: its eight neighbouring voxels lie in. Smaller blocks decode faster but cost ratio on
#: smooth fields, most on small volumes (each block restarts the predictor at its anchor);
#: see BENCHMARKS.md, "Error-bounded random access".
DEFAULT_BLOCK = 64
MIN_BLOCK, MAX_BLOCK = 4, 256

#: Symbols are zigzagged codes below this; larger codes are escapes (kept rare by
#: construction: a code this large means a prediction off by thousands of bins).
MAX_ALPHABET = 1 << 16
ESCAPE = MAX_ALPHABET - 1

#: Tables (classes) of interpolated points: level (``h == 1``, ``h == 2``, ``h >= 4``)
#: x the summed magnitude of the two neighbours' codes (0, 1, >= 2) x the distance of
#: their values in bins, bucketed at these edges (:func:`.predict.context`); then one
#: class for the points of ``MODE_BASE`` blocks.
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

#: The stream version writers write, and those readers know (§2.1: version 1 has one bin
#: width and a fixed head; version 2 adds the level-wise bin widths and a shorter head).
STREAM_VERSION = 2
READ_VERSIONS = (1, 2)
_HEAD = struct.Struct("<BBHdddHII")   # version 1: version, flags, block, E, step, base_tol,
                                      # n_tables, tables' bytes, their zstd frame's length
_HEAD2 = struct.Struct("<BBHdd")      # version 2: version, flags, block, E, step
_TOLERANCE = struct.Struct("<d")
_LEVELS = struct.Struct("<ff")        # alpha, beta (binary32, read as binary64)

# Version 2 flags: what the head holds and how the tables and the index are stored.
FLAG_TABLES_RAW = 1       # the tables' content as is (no zstd frame: small tables)
FLAG_INDEX_RAW = 2        # the block lengths as varints (no zstd frame: few blocks)
FLAG_TOLERANCE = 4        # a base tolerance follows (else 0)
FLAG_LEVELS = 8           # level-wise bin widths: alpha, beta follow (else 1, 1)
#: Bits 4-5: which table codes a class (:func:`table_of`).
TABLE_MAP_SHIFT = 4
FLAG_TABLE_MAP = 3 << TABLE_MAP_SHIFT
FLAG_ORDER = 64           # an axis order follows (u8, an index of AXIS_ORDERS; else 0)
KNOWN_FLAGS = (FLAG_TABLES_RAW | FLAG_INDEX_RAW | FLAG_TOLERANCE | FLAG_LEVELS
               | FLAG_TABLE_MAP | FLAG_ORDER)
#: Axis orders a stream may name (the permutations of z, y, x, :data:`.predict.AXIS_ORDERS`).
N_ORDERS = 6

#: Table maps: small streams code several classes with one table, whose cost can exceed
#: what the finer contexts save. Per class; one table; per level and neighbours' codes
#: (the roughness dropped); per level.
MAP_CLASSES, MAP_ONE, MAP_NO_ROUGHNESS, MAP_LEVELS = 0, 1, 2, 3
TABLE_MAPS = (MAP_CLASSES, MAP_ONE, MAP_NO_ROUGHNESS, MAP_LEVELS)

#: ``(alpha, beta)`` of one bin width at every level (:func:`.predict.level_step`), and the
#: range a stream may hold (a wider ratio would only waste codes on the coarse levels).
NO_LEVELS = (1.0, 1.0)
MAX_LEVEL_ALPHA = 16.0
MAX_LEVEL_BETA = 1024.0


@dataclasses.dataclass
class StreamHead:
    """The parsed head of a stream (§2.1): its parameters, how its tables and index are
    stored, and where the tables start."""

    version: int
    flags: int
    block: int
    max_error: float
    step: float
    base_tolerance: float
    levels: Tuple[float, float]
    order: int                   # index of the axis order (0: z, y, x)
    n_tables: int
    raw_len: int                 # bytes of the tables' content
    frame_len: int               # bytes the tables take in the stream
    index_len: Optional[int]     # bytes of the index frame (None: varints; -1: version 1,
                                 # a u32 length before the frame, after the tables)
    pos: int                     # where the tables start


def table_of(cls: int, table_map: int) -> int:
    """The table (its class byte in the stream) that codes class ``cls`` under
    ``table_map`` (§2.2): the class itself; 0; the class with its roughness dropped; the
    first class of its level."""
    if table_map == MAP_ONE:
        return 0
    if table_map == MAP_NO_ROUGHNESS:
        return cls - cls % N_ROUGHNESS
    if table_map == MAP_LEVELS:
        per_level = N_CODE_CONTEXTS * N_ROUGHNESS
        return cls - cls % per_level
    return cls


def levels_valid(levels: Tuple[float, float]) -> bool:
    """Whether ``(alpha, beta)`` may be stored: finite, ``1 <= alpha <= MAX_LEVEL_ALPHA``,
    ``1 <= beta <= MAX_LEVEL_BETA``, and exact in binary32."""
    a, b = (float(v) for v in levels)
    return (math.isfinite(a) and math.isfinite(b) and 1.0 <= a <= MAX_LEVEL_ALPHA
            and 1.0 <= b <= MAX_LEVEL_BETA and float(np.float32(a)) == a
            and float(np.float32(b)) == b)


def pack_head(block: int, max_error: float, step: float, base_tolerance: float,
              levels: Tuple[float, float], n_tables: int, raw_len: int, frame_len: int,
              index_len: Optional[int], table_map: int = MAP_CLASSES,
              order: int = 0) -> bytes:
    """A version-2 head: ``frame_len == raw_len`` marks raw tables, ``index_len=None`` an
    index of varints; ``table_map`` which table codes each class (:func:`table_of`)."""
    flags = ((FLAG_TABLES_RAW if frame_len == raw_len else 0)
             | (table_map << TABLE_MAP_SHIFT)
             | (FLAG_INDEX_RAW if index_len is None else 0)
             | (FLAG_TOLERANCE if base_tolerance != 0 else 0)
             | (FLAG_LEVELS if tuple(levels) != NO_LEVELS else 0)
             | (FLAG_ORDER if order else 0))
    out = _HEAD2.pack(STREAM_VERSION, flags, block, max_error, step)
    if flags & FLAG_TOLERANCE:
        out += _TOLERANCE.pack(base_tolerance)
    if flags & FLAG_LEVELS:
        out += _LEVELS.pack(*levels)
    if flags & FLAG_ORDER:
        out += bytes([order])
    sizes = [n_tables, raw_len]
    if not flags & FLAG_TABLES_RAW:
        sizes.append(frame_len)
    if index_len is not None:
        sizes.append(index_len)
    return out + varints(sizes)


def parse_head(data: bytes, what: str) -> StreamHead:
    """The head of a stream of either version (bounds of the values are the caller's to
    check; raises :class:`NeurvolFormatError` for a truncated head or an unknown version
    or flag)."""
    if len(data) < 1:
        raise NeurvolFormatError(f"{what}: truncated header; the file is damaged")
    version = data[0]
    if version not in READ_VERSIONS:
        raise NeurvolFormatError(
            f"{what}: correction stream version {version} is not supported "
            f"(this reader knows {list(READ_VERSIONS)}); upgrade neurvol")
    if version == 1:
        if len(data) < _HEAD.size:
            raise NeurvolFormatError(f"{what}: truncated header; the file is damaged")
        (_, flags, block, e, step, tol, n_tables, raw_len, frame_len) = _HEAD.unpack_from(data)
        return StreamHead(1, flags, block, e, step, tol, NO_LEVELS, 0, n_tables, raw_len,
                          frame_len, -1, _HEAD.size)
    if len(data) < _HEAD2.size:
        raise NeurvolFormatError(f"{what}: truncated header; the file is damaged")
    _, flags, block, e, step = _HEAD2.unpack_from(data)
    if flags & ~KNOWN_FLAGS:
        raise NeurvolFormatError(f"{what}: unknown stream flags {flags:#04x}; the file is "
                                 "damaged or was written by a newer neurvol (upgrade neurvol)")
    pos = _HEAD2.size
    tol, levels = 0.0, NO_LEVELS
    if flags & FLAG_TOLERANCE:
        if len(data) < pos + _TOLERANCE.size:
            raise NeurvolFormatError(f"{what}: truncated header; the file is damaged")
        (tol,) = _TOLERANCE.unpack_from(data, pos)
        pos += _TOLERANCE.size
    if flags & FLAG_LEVELS:
        if len(data) < pos + _LEVELS.size:
            raise NeurvolFormatError(f"{what}: truncated header; the file is damaged")
        levels = tuple(float(v) for v in _LEVELS.unpack_from(data, pos))  # type: ignore
        pos += _LEVELS.size
        if not levels_valid(levels) or levels == NO_LEVELS:
            raise NeurvolFormatError(f"{what}: invalid level-wise bin widths; the file is "
                                     "damaged")
    order = 0
    if flags & FLAG_ORDER:
        if len(data) <= pos:
            raise NeurvolFormatError(f"{what}: truncated header; the file is damaged")
        order = data[pos]
        pos += 1
        if not 0 < order < N_ORDERS:
            raise NeurvolFormatError(f"{what}: invalid axis order {order}; the file is "
                                     "damaged")
    n_sizes = 2 + (0 if flags & FLAG_TABLES_RAW else 1) + (0 if flags & FLAG_INDEX_RAW else 1)
    sizes, pos = read_varints(data, pos, n_sizes, what)
    if max(sizes) > 1 << 32:
        raise NeurvolFormatError(f"{what}: invalid stream sizes; the file is damaged")
    n_tables, raw_len = sizes[0], sizes[1]
    frame_len = raw_len if flags & FLAG_TABLES_RAW else sizes[2]
    index_len = None if flags & FLAG_INDEX_RAW else sizes[-1]
    return StreamHead(2, flags, block, e, step, tol, levels, order, n_tables, raw_len,
                      frame_len, index_len, pos)


class BoundTooSmallError(ValueError):
    """The requested bound is below what the dtype's precision can honour through bins."""


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


def integer_bound(half_bin: float) -> Tuple[float, float]:
    """``(max_error, half bin width)`` for an integer volume quantized with bins of half
    width ``half_bin`` (raised to the lossless one if below it): a value within
    ``k + 0.5`` (exclusive) of an integer rounds to within ``k`` of it, so the bound is the
    smallest integer ``k`` whose bins (:func:`quantization_bound`) are at least as wide.
    Bins between two such widths keep the lower bound and cost more bytes for less error,
    which lets a budget search use all of a budget."""
    half = max(float(half_bin), 0.5 - INT_TIE_MARGIN)
    k = max(0, math.ceil(half - 0.5 + INT_TIE_MARGIN))
    return float(k), min(half, k + 0.5 - INT_TIE_MARGIN)


def cast_to(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The final cast: integers rounded (half to even) and clipped, floats rounded to dtype."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


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


def block_shape(shape: Sequence[int], block: int, index: int) -> Tuple[int, int, int]:
    """Voxels per axis of block ``index``."""
    return tuple(s.stop - s.start for s in block_slices(shape, block, index))  # type: ignore


def blocks_by_shape(shape: Sequence[int], block: int,
                    ids: Sequence[int]) -> Dict[Tuple[int, int, int], List[int]]:
    """``ids`` grouped by block shape (blocks of one shape are coded side by side), each
    group in the order of ``ids``; groups in order of their first block."""
    ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if not ids_arr.size:
        return {}
    g = block_grid(shape, block)
    k = np.stack([ids_arr // (g[1] * g[2]), ids_arr // g[2] % g[1], ids_arr % g[2]], axis=1)
    dims = np.minimum(block, np.asarray(shape, dtype=np.int64) - k * block)
    # One vectorised pass instead of a block_shape() call per block: a query's decode
    # groups about a thousand blocks.
    uniq, first, inverse = np.unique(dims, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    out: Dict[Tuple[int, int, int], List[int]] = {}
    for u in np.argsort(first, kind="stable").tolist():
        out[tuple(int(v) for v in uniq[u])] = ids_arr[inverse == u].tolist()  # type: ignore
    return out
