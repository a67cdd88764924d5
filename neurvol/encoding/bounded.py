"""Error-bounded files (``spec/correction.md``): a base (a model, or a constant brick when
no model pays) plus a correction stream that brings every voxel within ``max_error``.

:func:`encode_bounded` tries the pure predictor and a model at each ratio of
``model_ratios``, keeps the smallest file, and decodes the file it is about to return
through the reader, voxel by voxel, before anything is written. Reading is
:mod:`neurvol.compress.bound` (the reader decodes only the blocks a request touches).
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..compress import encode_constant
from ..compress.bound import BOUNDED_MINOR, KEY_BOUND, SECTION_CORRECTION
from ..compress.correction import BoundTooSmallError, encode_correction
from ..compress.correction.layout import MAX_BLOCK, MIN_BLOCK
from ..container import NvolReader, serialize_nvol
from ..errors import NeurvolBudgetError, NeurvolFormatError, NeurvolInputError
from ..neural_volume import NeuralVolume
from ..volume_checks import check_ratio, check_volume
from .plan import CODEC, DEFAULT_ARCH, HYBRID_KEY, DEFAULT_BITS, WRITER, triple

#: Model ratios the encoder tries besides the pure predictor (each costs a fit).
DEFAULT_MODEL_RATIOS: Tuple[float, ...] = (200.0, 400.0)
#: A decoder's model evaluation may differ from the encoder's by rounding (another machine,
#: backend or summation order: spec/payload.md lets decoders evaluate in any float32-or-
#: wider arithmetic); the bound holds for bases within this fraction of the larger of the
#: base's magnitude and the data range, far above float32 rounding through a model and
#: small against the bounds users ask for (each 2^-k here narrows the bins by 2^(1-k)).
BASE_TOLERANCE = 2.0 ** -17


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


#: What a model fit of an error-bounded encode passes to :func:`.entry.encode_volume`
#: besides the caller's options: one model, no search.
_MODEL_DEFAULTS: Dict[str, Any] = dict(
    psnr=None, arch=DEFAULT_ARCH, seed=0, device=None, steps=None, bits=DEFAULT_BITS,
    fit_settings=None,
    codec=None, brick=None, ghost=2, bricks=(1, 1, 1), blend=True, workers=None,
    devices=None, executor=None, retries=2)


def encode_bounded_volume(volume: Any, max_error: Optional[float], rel_error: Optional[float],
                          model_ratios: Optional[Sequence[float]], *, psnr: Optional[float],
                          brick: Optional[int], bricks: Optional[Sequence[int]],
                          block: Optional[int] = None, **model_kwargs: Any) -> NeuralVolume:
    """``neurvol.encode(max_error= / rel_error=)``: check the arguments, then
    :func:`encode_bounded`."""
    if psnr is not None or brick is not None or bricks is not None:
        raise NeurvolInputError("max_error= / rel_error= cannot be combined with psnr=, "
                                "brick= or bricks=")
    if max_error is None and rel_error is None:
        raise NeurvolInputError("model_ratios= applies to error-bounded encodes only "
                                "(max_error= or rel_error=)")
    if block is not None and (isinstance(block, bool) or not isinstance(block, (int, np.integer))
                              or not MIN_BLOCK <= block <= MAX_BLOCK):
        raise NeurvolInputError(f"correction_block must be an integer in [{MIN_BLOCK}, "
                                f"{MAX_BLOCK}], got {block!r}")
    ratios = DEFAULT_MODEL_RATIOS if model_ratios is None else tuple(model_ratios)
    for r in ratios:
        check_ratio(r)
    t0 = time.perf_counter()
    volume, _, _ = check_volume(volume)
    e, rel = resolve_bound(volume, max_error, rel_error)
    nv = encode_bounded(volume, e, rel, model_ratios=ratios, block=block, **model_kwargs)
    nv.encode_seconds = time.perf_counter() - t0
    return nv


def encode_bounded(volume: np.ndarray, max_error: float, rel_error: Optional[float], *,
                   model_ratios: Sequence[float] = DEFAULT_MODEL_RATIOS,
                   spacing: Optional[Sequence[float]] = None,
                   origin: Optional[Sequence[float]] = None,
                   block: Optional[int] = None, quiet: bool = False,
                   require_model: bool = False,
                   models: Optional[Dict[float, NeuralVolume]] = None, **model_kwargs: Any):
    """The smallest error-bounded file of ``volume`` (a checked volume: 3-D, finite,
    integer or float) among the pure predictor and a model at each of ``model_ratios``
    plus its correction. ``model_kwargs`` go to :func:`.entry.encode_volume` for the models.
    ``require_model``: keep the smallest file with a model even when the pure predictor is
    smaller (to pin the model path in tests and golden files). ``models``: single-model
    files already fitted to ``volume``, by ratio, used instead of fitting at those ratios
    (a benchmark over several bounds fits each model once)."""
    from .entry import encode_volume    # entry dispatches here: imported when used

    x = np.asarray(volume)
    lo, hi = float(x.min()), float(x.max())
    stream_kw = {} if block is None else {"block": int(block)}

    def finish(header: Dict[str, Any], brick: bytes, stream: bytes) -> bytes:
        return bounded_file(header, brick, stream, max_error, rel_error)

    try:
        pure, _ = encode_correction(x, max_error, None, **stream_kw)
    except BoundTooSmallError as exc:
        raise NeurvolInputError(f"{exc}; use a larger bound") from None
    header = {"volume": {"shape": list(x.shape), "dtype": x.dtype.str, "min": lo, "max": hi,
                         "spacing": triple(spacing, 1.0, "spacing"),
                         "origin": triple(origin, 0.0, "origin")},
              "bricks": {"grid": [1, 1, 1]}, "codec": CODEC}
    best: Optional[bytes] = None
    best_info: Dict[str, Any] = {"model_ratio": None}
    if not require_model:
        best = finish(header, encode_constant(0.5 * (lo + hi)), pure)
    for ratio in model_ratios:
        if best is not None and len(best) <= x.nbytes / ratio:
            continue        # the model alone would not fit in the best file so far
        nv = (models or {}).get(ratio)
        if nv is not None and (nv.max_error is not None or nv.info().get("content") != "model"):
            # Its decode is not what its brick alone decodes to: a correction on top of it
            # would be computed against the wrong base.
            raise NeurvolInputError(
                f"models[{ratio:g}] is an error-bounded or pure-predictor file, not a model; "
                "encode it with codec={'hybrid': False}")
        if nv is None:
            try:
                kw = dict(_MODEL_DEFAULTS, spacing=spacing, origin=origin, quiet=quiet,
                          **model_kwargs)
                # The base must be a model: the pure predictor is this encode's own candidate.
                kw["codec"] = dict(kw["codec"] or {}, **{HYBRID_KEY: False})
                nv = encode_volume(x, ratio, **kw)
            except NeurvolBudgetError:
                continue
        if nv.brick_count != 1:
            continue
        base = nv.decode(dtype=np.float32).astype(np.float64)
        tol = BASE_TOLERANCE * max(float(np.abs(base).max()), hi - lo)
        try:
            stream, _ = encode_correction(x, max_error, base, base_tolerance=tol, **stream_kw)
        except BoundTooSmallError:
            continue
        candidate = finish(nv.header, NvolReader(nv.to_bytes()).read_brick(0), stream)
        if best is None or len(candidate) < len(best):
            best, best_info = candidate, {"model_ratio": ratio}
    if best is None:
        raise NeurvolBudgetError(
            f"no model fits any of the ratios {list(model_ratios)}; use smaller ratios")
    out = NeuralVolume(NvolReader(best))
    check_bound(out, x, max_error)
    out.bounded_choice = best_info
    return out


def bounded_file(header: Dict[str, Any], brick: bytes, stream: bytes, max_error: float,
                 rel_error: Optional[float], *, extra: Optional[Dict[str, Any]] = None) -> bytes:
    """The bytes of an error-bounded file: ``header`` (an encode's; its budget and fit
    entries dropped), the base's brick payload and the correction ``stream``. ``extra``:
    header entries to add (a ``ratio=`` encode records its budget and choice)."""
    header = {k: v for k, v in header.items() if k not in ("sections", "budget", "fit")}
    header[KEY_BOUND] = {"max_error": max_error, "rel_error": rel_error,
                         "section": SECTION_CORRECTION}
    header["writer"] = WRITER
    header.update(extra or {})
    return serialize_nvol(header, [brick], {SECTION_CORRECTION: stream}, minor=BOUNDED_MINOR)


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
