"""The correction stream's constants, bounds and block geometry (``spec/correction.md``
§2.1): what the encoder and the decoder must agree on before any block is coded."""
from __future__ import annotations

import math
import struct
from typing import Dict, List, Sequence, Tuple

import numpy as np

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

STREAM_VERSION = 1
_HEAD = struct.Struct("<BBHdddHII")   # version, flags, block, E, step, base_tol,
                                      # n_tables, tables' bytes, their zstd frame's length


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
    """``ids`` grouped by block shape (blocks of one shape are coded side by side)."""
    out: Dict[Tuple[int, int, int], List[int]] = {}
    for i in ids:
        out.setdefault(block_shape(shape, block, int(i)), []).append(int(i))
    return out
