"""Error-bounded files (``spec/correction.md``): a base (a model, or a constant brick when
no model pays) plus a correction stream that brings every voxel within ``max_error``.

Encoding (:func:`encode_bounded`) tries the pure predictor and a model at each ratio of
``model_ratios``, keeps the smallest file, and decodes the file it is about to return
through the reader, voxel by voxel, before anything is written. Reading
(:class:`Corrections`) decodes only the correction blocks a request touches.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .compress import encode_constant
from .compress.correction import (BoundTooSmallError, CorrectionStream, block_grid,
                                  block_slices, encode_correction)
from .errors import NeurvolBudgetError, NeurvolFormatError, NeurvolInputError

#: Header key and section of an error-bounded file.
KEY_BOUND = "bound"
SECTION_CORRECTION = "correction"
#: Format minor version of error-bounded files (spec/correction.md §1).
BOUNDED_MINOR = 2
#: Model ratios the encoder tries besides the pure predictor (each costs a fit).
DEFAULT_MODEL_RATIOS: Tuple[float, ...] = (200.0, 400.0)
#: A decoder's model evaluation may differ from the encoder's by rounding (another machine
#: or library); the bound holds for bases within this fraction of the base's magnitude.
BASE_TOLERANCE = 2.0 ** -18
#: Decoded correction blocks a reader keeps (each ``block^3`` voxels, two float64 arrays).
BLOCK_CACHE = 16
_CODEC = {"name": "neurvol", "version": 2}


def resolve_bound(volume: np.ndarray, max_error: Optional[float],
                  rel_error: Optional[float]) -> Tuple[float, Optional[float]]:
    """``(E, rel)`` from exactly one of ``max_error`` (absolute, data units) and
    ``rel_error`` (``E = rel * (max - min)``, SZ3's REL mode)."""
    if (max_error is None) == (rel_error is None):
        raise NeurvolInputError("give exactly one of max_error= and rel_error=")
    value = max_error if max_error is not None else rel_error
    name = "max_error" if max_error is not None else "rel_error"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise NeurvolInputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise NeurvolInputError(f"{name} must be finite and >= 0, got {value}")
    if rel_error is None:
        return value, None
    lo, hi = float(np.min(volume)), float(np.max(volume))
    return value * (hi - lo), value


def encode_bounded(volume: np.ndarray, max_error: float, rel_error: Optional[float], *,
                   model_ratios: Sequence[float] = DEFAULT_MODEL_RATIOS,
                   spacing: Optional[Sequence[float]] = None,
                   origin: Optional[Sequence[float]] = None,
                   block: Optional[int] = None, quiet: bool = False,
                   **model_kwargs: Any):
    """The smallest error-bounded file of ``volume`` (a checked volume: 3-D, finite,
    integer or float) among the pure predictor and a model at each of ``model_ratios``
    plus its correction. ``model_kwargs`` go to :func:`neurvol.encode` for the models."""
    from .api import encode as encode_model
    from .container import NvolReader, serialize_nvol
    from .neural_volume import NeuralVolume

    x = np.asarray(volume)
    lo, hi = float(x.min()), float(x.max())
    stream_kw = {} if block is None else {"block": int(block)}
    bound = {"max_error": max_error, "rel_error": rel_error, "section": SECTION_CORRECTION}

    def finish(header: Dict[str, Any], brick: bytes, stream: bytes) -> bytes:
        header = {k: v for k, v in header.items() if k not in ("sections", "budget", "fit")}
        header[KEY_BOUND] = bound
        header["writer"] = f"neurvol {__version__}"
        return serialize_nvol(header, [brick], {SECTION_CORRECTION: stream},
                              minor=BOUNDED_MINOR)

    try:
        pure, _ = encode_correction(x, max_error, None, **stream_kw)
    except BoundTooSmallError as exc:
        raise NeurvolInputError(f"{exc}; use a larger bound") from None
    header = {"volume": {"shape": list(x.shape), "dtype": x.dtype.str, "min": lo, "max": hi,
                         "spacing": _triple(spacing, 1.0), "origin": _triple(origin, 0.0)},
              "bricks": {"grid": [1, 1, 1]}, "codec": _CODEC}
    best = finish(header, encode_constant(0.5 * (lo + hi)), pure)
    best_info: Dict[str, Any] = {"model_ratio": None}
    for ratio in model_ratios:
        if len(best) <= x.nbytes / ratio:      # the model alone would not fit what we have
            continue
        try:
            nv = encode_model(x, ratio=ratio, spacing=spacing, origin=origin, quiet=quiet,
                              **model_kwargs)
        except NeurvolBudgetError:
            continue
        if nv.brick_count != 1:
            continue
        base = nv.decode(dtype=np.float32).astype(np.float64)
        tol = BASE_TOLERANCE * float(np.abs(base).max())
        try:
            stream, _ = encode_correction(x, max_error, base, base_tolerance=tol, **stream_kw)
        except BoundTooSmallError:
            continue
        candidate = finish(nv.header, nv._reader.read_brick(0), stream)
        if len(candidate) < len(best):
            best, best_info = candidate, {"model_ratio": ratio}
    out = NeuralVolume(NvolReader(best))
    check_bound(out, x, max_error)
    out.bounded_choice = best_info
    return out


def check_bound(nv: Any, volume: np.ndarray, max_error: float) -> None:
    """Decode ``nv`` as a reader will and check every voxel (float64); raises
    :class:`NeurvolFormatError` naming the worst voxel otherwise (a bug, never expected)."""
    dec = nv.decode()
    err = np.abs(dec.astype(np.float64) - np.asarray(volume, dtype=np.float64))
    worst = float(err.max())
    if not worst <= max_error:
        at = np.unravel_index(int(np.argmax(err)), err.shape)
        raise NeurvolFormatError(
            f"internal error: the error-bounded file decodes voxel {tuple(map(int, at))} "
            f"{worst:g} away from the original (bound {max_error:g}); nothing was written. "
            "Please report this with the volume")


def _triple(v: Optional[Sequence[float]], default: float) -> List[float]:
    if v is None:
        return [default] * 3
    out = [float(a) for a in v]
    if len(out) != 3 or not all(math.isfinite(a) for a in out):
        raise NeurvolInputError(f"expected three finite numbers, got {v!r}")
    return out


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

    ``evaluate_base(zyx_slices)`` returns the base (float32 model values, before the
    cast) on the voxel grid of those slices; ``cast`` is the volume's dtype."""

    def __init__(self, data: bytes, shape: Sequence[int], dtype: np.dtype, max_error: float,
                 evaluate_base: Callable[[Tuple[slice, slice, slice]], np.ndarray]):
        self.stream = CorrectionStream(data, shape, dtype)
        if self.stream.max_error != max_error:
            raise NeurvolFormatError(
                f"the correction stream's bound {self.stream.max_error!r} differs from the "
                f"header's {max_error!r}; the file is damaged")
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.max_error = max_error
        self._base = evaluate_base
        self._cache: "OrderedDict[int, Tuple[np.ndarray, np.ndarray]]" = OrderedDict()

    def block(self, i: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(decoded values, corrections = decoded - base)`` of block ``i`` (cached)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        sl = block_slices(self.shape, self.stream.block, i)
        base = np.asarray(self._base(sl), dtype=np.float64)
        values = self.stream.decode_block(i, base)
        entry = (values, values.astype(np.float64) - base)
        self._cache[i] = entry
        if len(self._cache) > BLOCK_CACHE:
            self._cache.popitem(last=False)
        return entry

    def decode(self, base: np.ndarray) -> np.ndarray:
        """The whole volume given the whole base (no cache)."""
        return self.stream.decode(np.asarray(base, dtype=np.float64))

    def region(self, idx: Sequence[np.ndarray]) -> np.ndarray:
        """Decoded values at the outer product of per-axis voxel indices."""
        out = np.empty([len(i) for i in idx], dtype=self.dtype)
        B = self.stream.block
        for bz in np.unique(idx[0] // B):
            mz = np.flatnonzero(idx[0] // B == bz)
            for by in np.unique(idx[1] // B):
                my = np.flatnonzero(idx[1] // B == by)
                for bx in np.unique(idx[2] // B):
                    mx = np.flatnonzero(idx[2] // B == bx)
                    g = block_grid(self.shape, B)
                    values, _ = self.block(int((bz * g[1] + by) * g[2] + bx))
                    sub = values[np.ix_(idx[0][mz] - bz * B, idx[1][my] - by * B,
                                        idx[2][mx] - bx * B)]
                    out[np.ix_(mz, my, mx)] = sub
        return out

    def at_points(self, p: np.ndarray, model_values: np.ndarray) -> np.ndarray:
        """Query values at index-space points ``p`` (N, 3) inside the volume, given the
        model's values there: the decoded value at voxel centres, elsewhere the model plus
        the trilinear interpolation of the corrections at the eight centres around it."""
        p = np.clip(np.asarray(p, dtype=np.float64), 0.0,
                    np.asarray(self.shape, dtype=np.float64) - 1.0)
        out = np.asarray(model_values, dtype=np.float64).copy()
        r = np.rint(p)
        exact = np.all(p == r, axis=1)
        if exact.any():
            out[exact] = self._lookup(r[exact].astype(np.int64))[1]
        q = p[~exact]
        if len(q):
            top = np.asarray(self.shape, dtype=np.int64) - 1
            i0 = np.minimum(np.floor(q).astype(np.int64), np.maximum(top - 1, 0))
            f = q - i0
            corr = np.zeros(len(q))
            for corner in np.ndindex(2, 2, 2):
                d = np.asarray(corner)
                w = np.prod(np.where(d == 1, f, 1.0 - f), axis=1)
                corr += w * self._lookup(np.minimum(i0 + d, top))[0]
            out[~exact] += corr
        return out

    def _lookup(self, v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(correction, decoded value) at integer voxels ``v`` (N, 3)."""
        blocks = self.stream.block_of(v)
        corr = np.empty(len(v))
        vals = np.empty(len(v))
        B = self.stream.block
        for b in np.unique(blocks):
            m = blocks == b
            values, c = self.block(int(b))
            local = v[m] - (v[m] // B) * B
            corr[m] = c[local[:, 0], local[:, 1], local[:, 2]]
            vals[m] = values[local[:, 0], local[:, 1], local[:, 2]]
        return corr, vals
