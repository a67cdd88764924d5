"""Trained weights -> payload within a byte budget: the weight-compression pipeline.

Stages, each optional and recorded in the header's ``codec.pipeline``:

* ``kmeans``: scalar k-means per tensor (neurcomp), ``k`` searched so the file fits;
* ``interp`` / ``lorenzo``: feature grids coded with an error bound of half a step by
  multilevel interpolation prediction (the predictor of SZ3) or 3-D Lorenzo prediction
  (SZ's), the step searched so the file fits; models are sized for it, so at the same
  bytes they get more parameters than under k-means;
* ``rate``: rate-aware fitting: the fit penalises the interp coder's residuals of the
  grids, so they code in fewer bytes (``CodecSettings.rate``; chosen per volume by a
  single-model ``encode`` unless set);
* ``finetune``: quantization-aware fine-tuning: with the grids fixed to the values the file
  stores, the rest of the network trains to work with them, then is quantized;
* ``prune`` / ``smallify`` / ``vd``: pruning of the k-means tensors to a sparsity (by
  magnitude, by Smallify's learned neuron switches, or by sparse variational dropout's
  learned noise: ``CodecSettings.prune_method``), fine-tuned with the mask held, zeros
  stored as an entropy-coded bit mask;
* every stream goes through the smallest of raw / zstd / rANS (:mod:`.compress.streams`).

The search needs only ``file_size(payload)``, so the same code serves one model and the
bricks of an ensemble (:mod:`neurvol.encoding.single`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from .compress import TensorPlan, default_plan
from .compress.kmeans import kmeans_quantize
from .compress.codebook import stored_book
from .compress.payload import KIND_RECORDS
from .errors import NeurvolInputError
from .compress.records import DEFAULT_CODERS, encode_record, grid_method
from .compress.registry import (CONFIG_ID, GridMethod, coder_names, get_coder, get_method,
                                grid_codings)
from .compress.vq import grid_vectors, vector_kmeans
from .fit.rate import GridRate
from .fit.sparsify import (Smallify, VariationalDropout, linear_tensors, smallify_prune,
                           vd_prune)
from .fit.sparsify import restore_order as _restore_order
from .models import VolumeModel

#: Most k-means levels tried when the budget leaves room.
MAX_LEVELS = 1024
#: Bits per byte, for the cost model's bit counts.
BITS_PER_BYTE = 8
#: Bytes the cost model adds per coded tensor (record header, coder framing).
RECORD_OVERHEAD_BYTES = 16
#: Grid bits the size solver plans for when the grid coding names none.
DEFAULT_GRID_BITS = 4.0
#: Bytes per float16 value (codebooks, raw16 tensors).
F16_BYTES = 2
#: With grids, the other tensors' k-means levels are halved until the file with the grids
#: at their coarsest fills less than this fraction of the budget (room left for the grids).
REST_MAX_SHARE = 0.9
#: Grid step search: factor between probes while bracketing, and the most probes (the
#: bracket's end ratio is the method's ``GridMethod.step_tolerance``).
_STEP_FACTOR = 1.25
_STEP_PROBES = 60
#: A step this much finer than the coarsest is as fine as it gets (and floats underflow).
_FINEST_STEP = 1e-9
#: The entropy estimate's bisection: its range below the coarsest step, and its rounds.
_ENTROPY_STEP_RANGE = 1e-7
_ENTROPY_ROUNDS = 40
#: Ways to code dense feature grids (CodecSettings.grids): the registry's grid-coding
#: methods (a GridMethod's step is searched; kmeans codes the grids as the other tensors).
GRID_CODINGS = grid_codings()
#: CodecSettings.coder_slack's default: the grid streams of fully fitted bricks cost zstd
#: about a fifth more bytes than rANS, and zstd decodes them tens of times faster.
DEFAULT_CODER_SLACK = 0.25
#: The largest coder slack accepted (beyond it the budget pays more than it buys).
MAX_CODER_SLACK = 1.0
#: How pruning chooses the weights (CodecSettings.prune_method).
PRUNE_METHODS = ("magnitude", "smallify", "vd")
#: The header's codec.pipeline stage of each pruning method.
PRUNE_STAGES = {"magnitude": "prune", "smallify": "smallify", "vd": "vd"}


@dataclasses.dataclass(frozen=True)
class CodecSettings:
    """How weights become bytes (``encode(codec={...})`` overrides fields).

    grids: how dense feature grids are coded: ``"interp"`` (default), ``"lorenzo"``,
    ``"vq"`` (vector quantization of each vertex's channel vector, VQRF-style) or
    ``"kmeans"``.
    grid_bits: bits per grid value the size solver plans for under interp/lorenzo/vq (fewer
    bits per value: a larger model for the same bytes); default (None) 4 for
    interp/lorenzo (BENCHMARKS.md, "Grid bits") and 2 for vq (``log2(K) / channels``: a
    codebook of 256 for fvsrn's 4 channels).
    finetune: quantization-aware fine-tuning steps as a fraction of the fit's steps.
    prune: fraction of the k-means tensors' weights set to zero (0: no pruning).
    prune_method: how the pruned weights are chosen. ``"magnitude"`` (default): the
    smallest ``prune`` fraction of each k-means tensor. ``"smallify"``: a training phase
    with a learned switch per hidden neuron (Leclerc et al. 2018), then whole neurons
    removed (a row of their layer, a column of the next) until ``prune`` of the layers'
    k-means weights are zero (to within one neuron); k-means tensors outside Linear layers
    (hash tables, k-means-coded grids) are pruned by magnitude. ``"vd"``: a training phase
    with sparse variational dropout (Molchanov et al. 2017), then the ``prune`` fraction
    of each k-means tensor with the largest learned dropout rate. The phases train for the
    ``finetune`` budget (so it must be > 0) before the masked fine-tune, and are recorded
    in the header as the stage ``smallify`` / ``vd`` (magnitude: ``prune``).
    coders: entropy coders tried per stream (the smallest wins).
    vq_ema: with ``grids="vq"`` and fine-tuning, the codebook learns during the fine-tune
    (``vector-quantize-pytorch``, exponential moving averages with this decay, from the
    k-means codebook) while the grid vectors train too; 0 (default) keeps the k-means
    codebook and trains only the rest of the network against it.
    rate: rate-aware fitting of interp-coded grids (:class:`neurvol.fit.rate.GridRate`):
    the fit adds ``rate x running MSE x mean |interp residual|`` to its loss from 30 % of
    its steps, so the grids come out cheap to code and the step search can keep them
    fine. 0 turns it off. It gains on rough volumes and loses on smooth ones
    (BENCHMARKS.md, "rate-aware fitting of the grids"), so ``neurvol.encode`` chooses per model when
    the codec sets neither ``rate`` nor ``grid_bits`` (:mod:`neurvol.encoding.pilot`);
    this dataclass's own default, 0, is what explicit settings get. Recorded in the
    header as the stage ``rate``.
    coder_slack: a stream whose smallest coding is rANS (which decodes symbol by symbol)
    is stored with the smallest fast coder (zstd, raw) instead when that is at most this
    fraction larger, so readers decode it many times faster (a cold bricked query
    decodes every touched brick's grids). The budget still holds: the step search sees
    the larger sizes. 0: always the smallest (spec/payload.md §2.2.1).
    """

    grids: str = "interp"
    grid_bits: Optional[float] = None
    finetune: float = 0.1
    prune: float = 0.0
    prune_method: str = "magnitude"
    coders: Tuple[str, ...] = DEFAULT_CODERS
    vq_ema: float = 0.0
    rate: float = 0.0
    coder_slack: float = DEFAULT_CODER_SLACK

    def __post_init__(self) -> None:
        if self.grids not in GRID_CODINGS:
            raise ValueError(f"grids must be one of {', '.join(GRID_CODINGS)}, "
                             f"got {self.grids!r}")
        if self.grid_bits is not None and not (
                isinstance(self.grid_bits, (int, float)) and 0.25 <= self.grid_bits <= 16):
            raise ValueError("grid_bits must be a number in [0.25, 16]")
        if not (isinstance(self.finetune, (int, float)) and 0 <= self.finetune <= 1):
            raise ValueError("finetune must be a fraction in [0, 1]")
        if not (isinstance(self.prune, (int, float)) and 0 <= self.prune < 1):
            raise ValueError("prune must be a fraction in [0, 1)")
        if self.prune_method not in PRUNE_METHODS:
            raise ValueError(f"prune_method must be one of {', '.join(PRUNE_METHODS)}, "
                             f"got {self.prune_method!r}")
        if self.prune_method != "magnitude":
            if not self.prune > 0:
                raise ValueError(f"prune_method={self.prune_method!r} needs prune > 0 (the "
                                 "fraction of weights to prune)")
            if not self.finetune > 0:
                raise ValueError(f"prune_method={self.prune_method!r} learns what to prune "
                                 "during the fine-tuning steps: it needs finetune > 0")
        if not (isinstance(self.vq_ema, (int, float)) and 0 <= self.vq_ema < 1):
            raise ValueError("vq_ema must be a decay in [0, 1) (0: no learned codebook)")
        if not (isinstance(self.rate, (int, float)) and not isinstance(self.rate, bool)
                and math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError("rate must be a finite number >= 0 (0: no rate-aware fitting)")
        if self.rate > 0 and self.grids != "interp":
            raise ValueError("rate penalises the interp coder's residuals: it needs "
                             "grids='interp'")
        if not (isinstance(self.coder_slack, (int, float)) and not isinstance(self.coder_slack, bool)
                and math.isfinite(self.coder_slack) and 0 <= self.coder_slack <= MAX_CODER_SLACK):
            raise ValueError(f"coder_slack must be a fraction in [0, {MAX_CODER_SLACK:g}] "
                             "(0: always the smallest coder)")
        known = coder_names()
        bad = set(self.coders) - set(known)
        if not self.coders or bad:
            raise ValueError(f"coders must be a non-empty subset of {', '.join(known)}, "
                             f"got {self.coders!r}")

    @property
    def bits_per_grid_value(self) -> float:
        """``grid_bits``, or its default for the grid coding."""
        if self.grid_bits is not None:
            return float(self.grid_bits)
        method = get_method(self.grids)
        return method.default_grid_bits if issubclass(method, GridMethod) else DEFAULT_GRID_BITS

    def pipeline(self, model: VolumeModel) -> List[str]:
        """The names of the stages this codec applies to ``model``, in order."""
        return [c[CONFIG_ID] for c in self.stage_configs(bool(self.grid_names(model)))]

    def pipeline_configs(self, model: VolumeModel) -> List[Union[str, Dict[str, Any]]]:
        """The header's ``codec.pipeline`` (spec/payload.md §1.3): the stages this codec
        applies to ``model``, each as its config ``{"id": name, parameter: value}``, or as
        its bare name when every parameter is at its default (the header is part of the
        byte budget). The record methods and coders are the registry's (their configs
        without the parameters the encoder searches per file, which every record stores)."""
        return [compact_stage(c) for c in self.stage_configs(bool(self.grid_names(model)))]

    def stage_configs(self, grids: bool) -> List[Dict[str, Any]]:
        """:meth:`pipeline_configs` for a model with (``grids``) or without feature grids
        this codec codes."""
        stages: List[Dict[str, Any]] = []
        if self.rate > 0 and grids:
            stages.append({CONFIG_ID: "rate", "weight": float(self.rate)})
        if self.prune > 0:
            stages.append({CONFIG_ID: PRUNE_STAGES[self.prune_method],
                           "fraction": float(self.prune)})
        stages.append({CONFIG_ID: get_method("kmeans").name})
        if grids:
            stages.append({CONFIG_ID: get_method(self.grids).name,
                           "grid_bits": self.bits_per_grid_value})
            if self.grids == "vq" and self.vq_ema > 0 and self.finetune > 0:
                stages.append({CONFIG_ID: "ema", "decay": float(self.vq_ema)})
        if self.finetune > 0 and (grids or self.prune > 0):
            stages.append({CONFIG_ID: "finetune", "fraction": float(self.finetune)})
        # raw is always tried; the others are listed by name (as the labels were).
        for name in sorted(set(self.coders) - {"raw"}):
            stages.append(get_coder(name)().get_config())
        return stages

    def grid_names(self, model: VolumeModel) -> Tuple[str, ...]:
        """The feature grids this codec codes with its grid method (none under kmeans: the
        grids are then coded as the other tensors)."""
        method = get_method(self.grids)
        if not issubclass(method, GridMethod):
            return ()
        sd = model.state_dict()
        return tuple(n for n in sd if n in model.grid_tensors and sd[n].dim() >= method.min_axes)


def stage_defaults(stage_id: str) -> Optional[Dict[str, Any]]:
    """The parameters of stage ``stage_id`` at their defaults (spec/payload.md §1.3), or
    None for a stage whose parameters have no default (``rate``, the pruning stages)."""
    if stage_id == "finetune":
        return {"fraction": CodecSettings.finetune}
    if stage_id == "ema":
        return {}
    for lookup in (get_method, get_coder):
        try:
            cls = lookup(stage_id)
        except KeyError:
            continue
        if issubclass(cls, GridMethod):
            return {"grid_bits": float(cls.default_grid_bits)}
        config = cls().get_config()
        config.pop(CONFIG_ID)
        return config
    return None


def compact_stage(stage: Dict[str, Any]) -> Union[str, Dict[str, Any]]:
    """``stage``'s bare name when each parameter it states is at its default, else
    ``stage``."""
    defaults = stage_defaults(stage[CONFIG_ID])
    if defaults is None:
        return stage
    same = all(k in defaults and v == defaults[k] for k, v in stage.items() if k != CONFIG_ID)
    return stage[CONFIG_ID] if same else stage


def fit_regularizer(model: VolumeModel, codec: CodecSettings, steps: int) -> Optional[GridRate]:
    """The penalty the fit of ``model`` adds for ``codec`` (``codec.rate``), or None."""
    if codec.rate <= 0:
        return None
    grids = codec.grid_names(model)
    if not grids:
        raise NeurvolInputError(
            "codec rate= shapes feature grids, and this architecture has none; use an "
            "architecture with grids (amgsrn, fvsrn) or leave rate at 0")
    params = dict(model.named_parameters())
    return GridRate([params[g] for g in grids], codec.rate, steps)


def plans_for(model: VolumeModel, k: int, codec: CodecSettings,
              step: float = 0.0) -> Dict[str, TensorPlan]:
    """Every tensor's plan: grids coded by ``codec.grids`` at ``step`` (for vq: ``1 / K``,
    see :func:`_grid_plan`), the rest k-means / float16."""
    grids = set(codec.grid_names(model))
    out = {}
    for name, t in model.state_dict().items():
        if name in grids:
            out[name] = _grid_plan(codec, step or 1.0)
        else:
            p = default_plan(t.numel(), k, precise=name in model.precise_tensors)
            out[name] = dataclasses.replace(p, masked=codec.prune > 0 and p.method == "kmeans")
    return out


def _grid_class(codec: CodecSettings) -> type:
    """The registry's grid method class of ``codec.grids`` (a :class:`GridMethod`)."""
    cls = get_method(codec.grids)
    assert issubclass(cls, GridMethod), f"{codec.grids} codes no grids"   # grid_names() is ()
    return cls


def _grid_plan(codec: CodecSettings, step: float) -> TensorPlan:
    """The grids' plan at ``step``: the grid method's config for the search's step (what
    ``step`` means is the method's, :meth:`GridMethod.at_step`)."""
    cfg = grid_method(codec.grids, step).get_config()
    return TensorPlan(codec.grids, k=cfg.get("k", 0), step=cfg.get("step", 0.0))


def _stored_grid(codec: CodecSettings, arr: np.ndarray, step: float) -> np.ndarray:
    """The float32 values a grid record of ``arr`` at ``step`` decodes to."""
    return grid_method(codec.grids, step).stored_values(arr)


def estimate_payload(model: VolumeModel, bits: int, codec: CodecSettings) -> float:
    """Expected payload bytes of ``model`` (the size solver's cost model)."""
    grids = set(codec.grid_names(model))
    total = 0.0
    for name, plan in plans_for(model, 2 ** bits, codec, step=1.0).items():
        n = model.state_dict()[name].numel()
        if name in grids:
            total += n * codec.bits_per_grid_value / BITS_PER_BYTE + RECORD_OVERHEAD_BYTES
        elif plan.method == "raw16":
            total += F16_BYTES * n
        else:
            kept = n * (1 - codec.prune)
            mask = n * _binary_entropy(codec.prune) / BITS_PER_BYTE if codec.prune > 0 else 0
            total += (kept * math.log2(plan.k) / BITS_PER_BYTE + F16_BYTES * plan.k
                      + RECORD_OVERHEAD_BYTES + mask)
    return total


def _binary_entropy(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


class _RecordCache:
    """Records of one model's tensors, memoised by plan (a search re-uses most of them)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], order: List[str], coders: Tuple[str, ...],
                 slack: float = 0.0):
        self.arrays, self.order, self.coders, self.slack = arrays, order, coders, slack
        self.cache: Dict[Tuple[str, TensorPlan], bytes] = {}

    def payload(self, plans: Mapping[str, TensorPlan]) -> bytes:
        parts = [bytes([KIND_RECORDS])]
        for name in self.order:
            key = (name, plans[name])
            if key not in self.cache:
                p = plans[name]
                self.cache[key] = encode_record(self.arrays[name], p.record_method(),
                                                masked=p.masked, coders=self.coders,
                                                slack=self.slack)
            parts.append(self.cache[key])
        return b"".join(parts)


@dataclasses.dataclass
class Compressed:
    payload: bytes
    k: int
    step: Optional[float]     # step of the coded grids (None: no interp/lorenzo grids)
    size: int                 # file bytes with this payload


def compress_model(model: VolumeModel, file_size: Callable[[bytes], int], budget: int,
                   k0: int, codec: CodecSettings,
                   finetune: Optional[Callable[..., None]] = None,
                   score: Optional[Callable[[bytes], float]] = None) -> Compressed:
    """The payload of ``model`` with the finest quantization whose file fits ``budget``.

    Without interp/lorenzo grids: the largest k in [2, MAX_LEVELS] that fits (from ``k0``). With
    them: k-means at ``k0`` levels for the other tensors (fewer if they alone overflow),
    then the smallest grid step that fits. ``finetune(trainable)``, when given, trains the
    parameters ``trainable`` accepts with the grids replaced by their stored values; the
    other tensors are then quantized again, and the grid step kept unless the file no longer
    fits (re-coding the stored grids at a finer step would quantize them twice). The
    pruning methods that learn
    (``codec.prune_method``) call ``finetune(trainable, regularizer=...)`` first (a
    :class:`neurvol.fit.Regularizer` to add to the loss and train along). ``score(payload)``,
    when given, is the error of the model a payload stores (lower is better): fine-tuning
    is kept only if it lowers it (it can cost more than it gains at high ratios,
    BENCHMARKS.md, "fine-tuning guard"). The model's grid parameters are left at their stored
    (dequantized) values.
    """
    grids = codec.grid_names(model)
    hooks = []
    if codec.prune > 0:
        masks = _prune_in_place(model, codec, k0, finetune)
        # Adam keeps a weight whose gradient is always 0 where it is: the zeros stay, in
        # this fine-tune and in the quantization-aware one that follows with grids.
        params = dict(model.named_parameters())
        hooks = [params[n].register_hook(lambda g, m=m: g * m.to(g.device))
                 for n, m in masks.items() if n in params]
    try:
        if codec.prune > 0 and finetune is not None:
            finetune(lambda name: name not in grids)
        return _compress(model, file_size, budget, k0, codec, finetune, score)
    finally:
        for h in hooks:
            h.remove()


def _compress(model: VolumeModel, file_size: Callable[[bytes], int], budget: int, k0: int,
              codec: CodecSettings, finetune: Optional[Callable[..., None]],
              score: Optional[Callable[[bytes], float]]) -> Compressed:
    """:func:`compress_model` after pruning."""
    coders = codec.coders
    grids = codec.grid_names(model)
    arrays = _arrays(model)
    order = list(arrays)
    cache = _RecordCache(arrays, order, coders, codec.coder_slack)
    if not grids:
        def trial(k: int) -> Tuple[bytes, int]:
            payload = cache.payload(plans_for(model, k, codec))
            return payload, file_size(payload)
        k, (payload, size) = _largest_fitting_k(trial, k0, budget)
        return Compressed(payload, k, None, size)

    k = k0
    while True:  # the other tensors must leave room for the grids
        base = _rest_size(cache, model, codec, k, grids, file_size)
        if base < budget * REST_MAX_SHARE or k <= 2:
            break
        k = max(2, k // 2)
    step = _grid_step(cache, model, codec, k, grids, file_size, budget)
    if finetune is not None and step is not None:
        plain = (cache, step, {n: t.detach().clone() for n, t in model.state_dict().items()})
        _set_grids(model, cache, codec, grids, step)
        learned = codec.grids == "vq" and codec.vq_ema > 0
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                _fake_quantized(model, plans_for(model, k, codec, step=step), cache.arrays))
            if learned:
                stack.enter_context(_learned_codebooks(model, grids, _grid_plan(codec, step).k,
                                                       codec.vq_ema))
            finetune(lambda name: name not in grids)
        # Keep the stored grid records unless the grids moved (a learned codebook).
        kept = {key: v for key, v in cache.cache.items() if key[0] in grids and not learned}
        cache = _RecordCache(_arrays(model), order, coders, codec.coder_slack)
        cache.cache.update(kept)
        # The grids were trained for (or set to) their values at this step: a finer step
        # would quantize them twice, a coarser one undo what was learned. Re-search only
        # if the fine-tuned rest no longer fits beside them.
        if file_size(cache.payload(plans_for(model, k, codec, step=step))) > budget:
            step = _grid_step(cache, model, codec, k, grids, file_size, budget, start=step)
        if score is not None and (step is None or score(
                cache.payload(plans_for(model, k, codec, step=step))) > score(
                plain[0].payload(plans_for(model, k, codec, step=plain[1])))):
            cache, step = plain[0], plain[1]
            model.load_state_dict(plain[2])
        arrays = cache.arrays
    if step is None:
        payload = cache.payload(plans_for(model, 2, codec, step=_max_step(arrays, grids, codec)))
        return Compressed(payload, 2, None, file_size(payload))
    payload = cache.payload(plans_for(model, k, codec, step=step))
    _set_grids(model, cache, codec, grids, step)
    return Compressed(payload, k, step, file_size(payload))


def _arrays(model: VolumeModel) -> Dict[str, np.ndarray]:
    return {n: t.detach().cpu().numpy().astype(np.float32, copy=True)
            for n, t in model.state_dict().items()}


def _rest_size(cache: _RecordCache, model: VolumeModel, codec: CodecSettings, k: int,
               grids: Tuple[str, ...], file_size: Callable[[bytes], int]) -> int:
    """File size with the grids at the coarsest step (about their smallest cost)."""
    step = _max_step(cache.arrays, grids, codec)
    return file_size(cache.payload(plans_for(model, k, codec, step=step)))


def _max_step(arrays: Mapping[str, np.ndarray], grids: Tuple[str, ...],
              codec: CodecSettings) -> float:
    """The coarsest step: every value 0 (interp, lorenzo), or 2 vectors (vq)."""
    return _grid_class(codec).coarsest_step([arrays[g] for g in grids])


def _grid_step(cache: _RecordCache, model: VolumeModel, codec: CodecSettings, k: int,
               grids: Tuple[str, ...], file_size: Callable[[bytes], int], budget: int,
               start: Optional[float] = None) -> Optional[float]:
    """Smallest grid step (to 1%) whose file fits, or None if even the coarsest does not."""
    def size(step: float) -> int:
        return file_size(cache.payload(plans_for(model, k, codec, step=float(np.float32(step)))))

    hi = _max_step(cache.arrays, grids, codec)
    # Bracket with the order-0 entropy of the residuals (cheap), then refine with real sizes.
    if start is None:
        start = _entropy_step(cache, model, codec, k, grids, file_size, budget, hi)
    if size(hi) > budget and size(min(start, hi)) > budget:
        return None
    lo_fail, hi_ok = None, None
    s = min(start, hi)
    for _ in range(_STEP_PROBES):
        if size(s) <= budget:
            hi_ok = s
            if lo_fail is not None or s < hi * _FINEST_STEP:
                break
            s /= _STEP_FACTOR
        else:
            lo_fail = s
            if hi_ok is not None:
                break
            s = min(s * _STEP_FACTOR, hi)
    if hi_ok is None:
        hi_ok = hi
    if lo_fail is None:
        return float(np.float32(hi_ok))
    while hi_ok / lo_fail > _grid_class(codec).step_tolerance:
        mid = math.sqrt(hi_ok * lo_fail)
        if size(mid) <= budget:
            hi_ok = mid
        else:
            lo_fail = mid
    return float(np.float32(hi_ok))


def _entropy_step(cache: _RecordCache, model: VolumeModel, codec: CodecSettings, k: int,
                  grids: Tuple[str, ...], file_size: Callable[[bytes], int], budget: int,
                  hi: float) -> float:
    base = file_size(cache.payload(plans_for(model, k, codec, step=hi)))
    avail = max(1.0, budget - base)

    def est(step: float) -> float:
        total = 0.0
        method = grid_method(codec.grids, step)
        for g in grids:
            total += method.estimate_bytes(cache.arrays[g])
        return total
    lo_s, hi_s = hi * _ENTROPY_STEP_RANGE, hi
    for _ in range(_ENTROPY_ROUNDS):
        mid = math.sqrt(lo_s * hi_s)
        if est(mid) <= avail:
            hi_s = mid
        else:
            lo_s = mid
    return hi_s


def _set_grids(model: VolumeModel, cache: _RecordCache, codec: CodecSettings,
               grids: Tuple[str, ...], step: float) -> None:
    """Replace the grid parameters by the values the file stores at ``step``."""
    sd = model.state_dict()
    with torch.no_grad():
        for g in grids:
            stored = _stored_grid(codec, cache.arrays[g], float(np.float32(step)))
            sd[g].copy_(torch.from_numpy(np.ascontiguousarray(stored)))


class _FakeQuant(torch.nn.Module):
    """Parametrization: a weight as its nearest codebook value in the forward pass, the
    gradient passed straight through to the float weight (straight-through estimator)."""

    def __init__(self, codebook: np.ndarray):
        super().__init__()
        book = torch.from_numpy(np.sort(codebook).astype(np.float32))
        self.register_buffer("book", book)
        self.register_buffer("mids", (book[1:] + book[:-1]) * 0.5)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = self.book[torch.bucketize(w.detach(), self.mids)]
        # Exactly q (w - w is 0), the gradient 1: the values left when the block ends are
        # codebook values, which the record then stores as they are.
        return q + (w - w.detach())


class _LearnedVQ(torch.nn.Module):
    """Parametrization: a ``(..., C, D, H, W)`` grid as its vertices' nearest codebook
    vectors, through a ``vector_quantize_pytorch.VectorQuantize`` whose codebook follows
    exponential moving averages of the vectors assigned to it (VQ-VAE / VQRF); the gradient
    passes straight through to the continuous grid."""

    def __init__(self, vq: torch.nn.Module):
        super().__init__()
        self.vq = vq

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        moved = w.movedim(-4, -1)
        q, _, _ = self.vq(moved.reshape(1, -1, moved.shape[-1]))
        return q.reshape(moved.shape).movedim(-1, -4)


@contextlib.contextmanager
def _learned_codebooks(model: VolumeModel, grids: Tuple[str, ...], k: int, decay: float):
    """Within the block the vq grids are quantized by codebooks that learn (EMA, decay
    ``decay``), starting from the k-means codebook of the grids' current values, while the
    grids' continuous vectors train too. On exit each grid holds its quantized values, one
    of at most ``k`` vectors per vertex, which the vq record then stores exactly (k-means on
    at most ``k`` distinct vectors returns them)."""
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError as exc:  # pragma: no cover - exercised where the extra is missing
        raise NeurvolInputError(
            "codec={'vq_ema': ...} needs vector-quantize-pytorch: pip install 'neurvol[vq]' "
            "(or vq_ema=0: the codebook stays the k-means one)") from exc
    from torch.nn.utils import parametrize

    done = []
    for name in grids:
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        arr = getattr(module, attr).detach().cpu().numpy()
        book, idx = vector_kmeans(grid_vectors(arr), k)
        vq = VectorQuantize(dim=book.shape[1], codebook_size=book.shape[0], decay=decay,
                            commitment_weight=0.0, kmeans_init=False)
        counts = np.bincount(idx, minlength=book.shape[0]).astype(np.float32)
        with torch.no_grad():
            cb = vq._codebook
            cb.embed.copy_(torch.from_numpy(book)[None])
            cb.cluster_size.copy_(torch.from_numpy(counts)[None])
            cb.embed_avg.copy_(torch.from_numpy(book * counts[:, None])[None])
        names = list(module._parameters)
        parametrize.register_parametrization(module, attr, _LearnedVQ(vq))
        done.append((module, attr, names, vq))
    try:
        yield
    finally:
        for module, attr, names, vq in reversed(done):
            vq.eval()     # the last evaluation assigns without another EMA update
            with torch.no_grad():
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            _restore_order(module, names)


@contextlib.contextmanager
def _fake_quantized(model: VolumeModel, plans: Mapping[str, TensorPlan],
                    arrays: Mapping[str, np.ndarray]):
    """Within the block, every k-means tensor of ``model`` acts as its k-means-quantized
    self (codebooks from ``arrays`` at the plan's k, held fixed, at the precision the record
    stores them), so fine-tuning optimises the network as it will be stored. When the block
    ends each such tensor keeps the quantized values of the last step: at most k codebook
    values, which the k-means record stores exactly. (Re-quantizing the float weights the
    straight-through gradient moved instead gave a network the fine-tune never saw, and
    lost up to 1.4 dB: BENCHMARKS.md, "fine-tuned weights stored as trained".)"""
    from torch.nn.utils import parametrize

    done = []
    for name, plan in plans.items():
        if plan.method != "kmeans" or plan.masked or name not in dict(model.named_parameters()):
            continue
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        names = list(module._parameters)
        parametrize.register_parametrization(
            module, attr, _FakeQuant(stored_book(kmeans_quantize(arrays[name], plan.k)[0])[1]))
        done.append((module, attr, names))
    try:
        yield
    finally:
        for module, attr, names in reversed(done):
            with torch.no_grad():
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            _restore_order(module, names)


def _prune_in_place(model: VolumeModel, codec: CodecSettings, k0: int,
                    finetune: Optional[Callable[..., None]] = None) -> Dict[str, torch.Tensor]:
    """Zero ``codec.prune`` of the k-means tensors' weights, chosen by
    ``codec.prune_method`` (smallify, vd: after a training phase through ``finetune``);
    returns keep-masks (1: kept) of the tensors whose zeros fine-tuning must hold."""
    plans = plans_for(model, k0, codec, step=1.0)
    names = [n for n, p in plans.items() if p.method == "kmeans"]
    if codec.prune_method == "magnitude" or not names:
        return _magnitude_prune(model, names, codec.prune)
    grids = codec.grid_names(model)

    def train(reg) -> None:
        if finetune is not None:
            finetune(lambda name: name not in grids, regularizer=reg)
            model.cpu()
    if codec.prune_method == "smallify":
        layers = set(linear_tensors(model, names))
        pairs = [(p, c) for p, c in model.hidden_neurons()
                 if {f"{p}.weight", f"{p}.bias", f"{c}.weight"} & layers]
        with Smallify(model, pairs) as reg:
            train(reg)
        masks = smallify_prune(model, reg, layers, codec.prune)
        # Hash tables, k-means-coded grids: no neurons there; pruned by magnitude.
        masks.update(_magnitude_prune(model, [n for n in names if n not in layers], codec.prune))
        return masks
    with VariationalDropout(model, names) as reg:
        train(reg)
    return vd_prune(model, reg, codec.prune)


def _magnitude_prune(model: VolumeModel, names: List[str], fraction: float) -> Dict[str, torch.Tensor]:
    """Zero the smallest-magnitude ``fraction`` of each tensor of ``names``; returns the
    masks (1: kept)."""
    sd = model.state_dict()
    masks: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in names:
            t = sd[name]
            n = int(fraction * t.numel())
            if n < 1:
                continue
            thresh = t.abs().reshape(-1).kthvalue(n).values
            t[t.abs() <= thresh] = 0.0
            masks[name] = (t != 0).to(t.dtype)
    return masks


def _largest_fitting_k(quantized: Callable[[int], Tuple[bytes, int]], k0: int, budget: int):
    """Binary search for the largest k in [2, MAX_LEVELS] whose file fits ``budget``,
    starting at ``k0`` (file size grows with k, up to small entropy-coder wiggles)."""
    first = quantized(k0)
    if first[1] <= budget:
        best_k, best, lo_k, hi_k = k0, first, k0 + 1, max(k0, MAX_LEVELS)
    else:
        best_k, best, lo_k, hi_k = 2, None, 2, k0 - 1
    while lo_k <= hi_k:
        mid = (lo_k + hi_k) // 2
        trial = quantized(mid)
        if trial[1] <= budget:
            best_k, best, lo_k = mid, trial, mid + 1
        else:
            hi_k = mid - 1
    if best is None:
        return 2, quantized(2)
    return best_k, best
