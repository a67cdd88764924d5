"""The public verbs: :func:`encode` and :func:`open`."""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import __version__
from .compress import TensorPlan, default_plan, encode_constant
from .container import NvolReader, serialize_nvol
from .errors import NeurvolBudgetError, NeurvolIOError, NeurvolInputError
from .fit import FitResult, FitSettings, Fitting
from .fit import finetune as _finetune
from .fit.evaluate import model_sse
from .metrics import psnr as _psnr
from .models import Architecture, ModelConfig, VolumeModel, architectures, get_architecture
from .neural_volume import NeuralVolume
from .pipeline import CodecSettings, compress_model, estimate_payload, fit_regularizer
from .volume_checks import check_ratio, check_volume

log = logging.getLogger("neurvol")

AUTO_ARCH = "auto"
# arch="auto" takes the first of these whose model fits the budget: amgsrn was best at
# ratios 100 and 400 on all four benchmark volumes (BENCHMARKS.md, architectures table);
# fvsrn needs fewer parameters (no per-grid transforms), so it covers tiny budgets.
AUTO_ORDER = ("amgsrn", "fvsrn")
DEFAULT_ARCH = AUTO_ARCH
DEFAULT_BITS = 6          # feature-grid k-means bits (chosen by measurement, BENCHMARKS.md)
DEFAULT_STEPS = 1500
_CODEC = {"name": "neurvol", "version": 2}
# Volumes with more voxels than this are bricked automatically (bricks of AUTO_BRICK
# voxels a side): a single model would hold the whole volume in memory while fitting.
AUTO_BRICK_VOXELS = 1 << 25
AUTO_BRICK = 128
# A brick whose values deviate from their mean by at most this PSNR's error (RMS over the
# data range) is stored as that constant: near-empty space costs 9 bytes.
CONSTANT_BRICK_PSNR = 50.0
# Widest values the "fit" header entry can take; sizing uses it so the real entry fits.
_FIT_PLACEHOLDER = {"steps": 0, "k": 65536, "psnr": -999.999}
# Every stage a codec.pipeline can list, so sizing never underestimates the header.
# (The pruning stage is "prune", "smallify" or "vd": the longest is listed.)
_WIDEST_PIPELINE = ["smallify", "kmeans", "lorenzo", "ema", "finetune", "rans", "zstd"]
# Fine-tuning lr as a fraction of the fit's lr.
FINETUNE_LR = 0.1


def _resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise NeurvolInputError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NeurvolInputError("device='cuda' was asked for but torch sees no CUDA device; use device='cpu'")
    return dev


def encode(
    volume: Any,
    ratio: float = 100.0,
    *,
    psnr: Optional[float] = None,
    arch: str = DEFAULT_ARCH,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    steps: Optional[int] = None,
    bits: int = DEFAULT_BITS,
    spacing: Optional[Sequence[float]] = None,
    origin: Optional[Sequence[float]] = None,
    fit_settings: Optional[Dict[str, Any]] = None,
    codec: Optional[Dict[str, Any]] = None,
    quiet: bool = False,
    brick: Optional[int] = None,
    ghost: int = 2,
    bricks: Optional[Sequence[int]] = None,
    blend: bool = True,
    workers: Optional[int] = None,
    devices: Optional[Sequence[str]] = None,
    executor: Any = None,
    retries: int = 2,
    max_error: Optional[float] = None,
    rel_error: Optional[float] = None,
    model_ratios: Optional[Sequence[float]] = None,
    **arch_options: Any,
) -> NeuralVolume:
    """Compress a 3-D volume into a :class:`NeuralVolume` whose file fits the byte budget.

    volume: ``(D, H, W)`` array indexed ``[z, y, x]`` (numpy array, memmap, h5py dataset,
    or anything with ``shape``, ``dtype`` and slicing), integer or float.
    ratio: the whole ``.nvol`` file, header included, is at most ``volume.nbytes / ratio``.
    psnr: instead of a ratio, a quality target in dB: the smallest file found (by a search
    over ratios, a few encodes, starting at ``ratio``) whose PSNR reaches it; when none
    does, the best one found, with a warning.
    arch: architecture name (``neurvol.models.architectures()``), or ``"auto"`` (default:
    the best measured one that fits the budget, see ``AUTO_ORDER``); ``arch_options`` are
    the named architecture's sizing options (e.g. ``grids=4`` for amgsrn,
    ``grad_lambda=0.1`` for neurcomp).
    steps: optimisation steps (default: the architecture's, 2000 for amgsrn, 1500 for
    the others); bits: k-means bits for large tensors.
    device: ``"cpu"``, ``"cuda"`` ... (default: CUDA when available).
    fit_settings: :class:`neurvol.fit.FitSettings` fields overriding the architecture's
    training defaults, e.g. neurcomp's published recipe:
    ``fit_settings=neurvol.models.neurcomp.published_fit_settings(volume.shape)``.
    codec: :class:`neurvol.pipeline.CodecSettings` fields: how weights become bytes, e.g.
    ``codec={"prune": 0.3}`` (``"prune_method": "smallify"`` or ``"vd"`` to learn what to
    prune) or ``codec={"grids": "kmeans", "finetune": 0}`` (the foundation's plain
    k-means + zstd). ``codec={"rate": "auto"}`` chooses per volume between the
    ``CodecSettings`` defaults and rate-aware fitting (:data:`AUTO_RATE`; it wins on
    rough volumes and loses on smooth ones): the rate-aware model is fitted to
    :data:`RATE_PILOT` of its steps and coded; it is finished unless coding cost it more
    than :data:`RATE_CODING_LOSS_DB` against its float values or its float PSNR fell
    during the pilot (:data:`RATE_PILOT_DECLINE_DB`), and the default is fitted
    instead. Time: one rate-aware encode plus a coding of the pilot when it is kept
    (measured 1.06-1.21x a default encode), about 0.4 fit more when not. It is the
    default for one model when ``codec`` sets neither ``rate`` nor ``grid_bits`` and
    keeps the interp grid coder (``codec={"rate": 0}`` turns it off). Bricked encodes
    default to rate 0; an explicit ``"auto"`` runs both whole and keeps the better file.

    Bricked ensembles (``spec/bricks.md``; automatic with ``brick=128`` for volumes over
    ``AUTO_BRICK_VOXELS``): ``brick=N`` cuts the volume into bricks of about N voxels a
    side, ``bricks=(K, J, I)`` gives the brick counts along z, y, x (``(1, 1, 1)``: one
    model). Each brick's model covers its extent plus ``ghost`` voxels per side; with
    ``blend`` queries within ``ghost`` voxels of a face mix both bricks (no seams). The
    input is read one brick at a time. ``workers``: local processes fitting bricks
    (default 1, or one per entry of ``devices=["cuda:0", ...]``); ``executor``: a
    ``distributed.Client`` (or any ``concurrent.futures.Executor``); a failing brick is
    retried ``retries`` times. The same seed gives the same bytes with any executor.

    Error-bounded mode (``spec/correction.md``): ``max_error=E`` (data units) or
    ``rel_error=r`` (``E = r * (max - min)``) instead of a ratio: every voxel of
    ``decode()`` and every ``query()`` at a voxel centre is within ``E`` (integers after
    rounding), checked voxel by voxel before the file is returned. The file is the
    smallest of a pure predictor-coded grid and a model fitted at each ratio of
    ``model_ratios`` (default :data:`neurvol.bounded.DEFAULT_MODEL_RATIOS`; ``()``: no
    model) plus its correction stream; ``ratio``, ``psnr`` and the brick options do not
    apply.

    Example::

        >>> import neurvol
        >>> nv = neurvol.encode(neurvol.sample_volume(), ratio=100, steps=50, quiet=True)
        >>> nv.nbytes_file <= neurvol.sample_volume().nbytes / 100
        True
    """
    if max_error is not None or rel_error is not None:
        return _encode_bounded(volume, max_error, rel_error, model_ratios, psnr=psnr,
                               brick=brick, bricks=bricks, arch=arch, seed=seed,
                               device=device, steps=steps, bits=bits, spacing=spacing,
                               origin=origin, fit_settings=fit_settings, codec=codec,
                               quiet=quiet, **arch_options)
    if model_ratios is not None:
        raise NeurvolInputError("model_ratios= applies to error-bounded encodes only "
                                "(max_error= or rel_error=)")
    explicit_auto_rate = isinstance(codec, dict) and isinstance(codec.get("rate"), str)
    kwargs = dict(
        arch=arch, seed=seed, device=device, steps=steps, bits=bits, spacing=spacing,
        origin=origin, fit_settings=fit_settings, codec=codec, quiet=quiet, brick=brick,
        ghost=ghost, bricks=bricks, blend=blend, workers=workers, devices=devices,
        executor=executor, retries=retries, **arch_options)
    if psnr is not None:     # a search: several encodes with these arguments
        return _encode_to_psnr(volume, psnr, ratio, kwargs)
    t_start = time.perf_counter()
    grid = _brick_grid(volume, brick, bricks)   # None: one model (format 1.0 files)
    if grid is None:
        volume, lo, hi = check_volume(volume)
    elif explicit_auto_rate:     # bricks: the better of two whole encodes
        return _encode_best_rate(volume, ratio, kwargs)
    # One model chooses its rate by default (a pilot, not a second encode).
    auto_rate = explicit_auto_rate or (grid is None and _rate_is_default(codec))
    ratio = check_ratio(ratio)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise NeurvolInputError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(arch, str):
        raise NeurvolInputError(f"arch must be an architecture name (str), got {arch!r}")
    if isinstance(bits, bool) or isinstance(steps, bool):
        raise NeurvolInputError("bits and steps must be ints, not booleans")
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise NeurvolInputError(f"bits must be an int in 1..16, got {bits!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise NeurvolInputError(f"steps must be a non-negative int, got {steps!r}")
    if arch == AUTO_ARCH:
        if arch_options:
            raise NeurvolInputError(
                f"architecture options {sorted(arch_options)} need an explicit arch= "
                f"(one of {list(architectures())}), not arch='auto'")
        candidates = [get_architecture(a) for a in AUTO_ORDER]
    else:
        candidates = [get_architecture(arch)]
        unknown = sorted(set(arch_options) - set(candidates[0].options))
        if unknown:
            raise NeurvolInputError(
                f"unknown option(s) {unknown} for arch={arch!r}; it accepts "
                f"{list(candidates[0].options)}")
    dev = _resolve_device(device)
    if grid is not None:
        from .ensemble.encode import encode_bricked

        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise NeurvolInputError(f"retries must be a non-negative int, got {retries!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise NeurvolInputError(f"workers must be a positive int, got {workers!r}")
        if devices is not None:
            devices = [str(_resolve_device(d)) for d in devices]
            if not devices:
                raise NeurvolInputError("devices must list at least one device, e.g. ['cuda:0']")
        return encode_bricked(
            volume, ratio=ratio, grid=grid, ghost=ghost, blend=bool(blend),
            candidates=candidates, arch_options=arch_options, seed=seed, device=str(dev),
            devices=devices, steps=steps, bits=bits,
            spacing=_triple(spacing, 1.0, "spacing"), origin=_triple(origin, 0.0, "origin"),
            fit_settings=fit_settings, codec=codec, quiet=quiet,
            workers=workers, executor=executor, retries=retries,
            const_psnr=CONSTANT_BRICK_PSNR)
    shape = tuple(int(s) for s in volume.shape)
    dtype = np.dtype(volume.dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    budget = int(nbytes // ratio)
    header: Dict[str, Any] = {
        "volume": {
            "shape": list(shape),
            "dtype": dtype.str,
            "min": lo,
            "max": hi,
            "spacing": _triple(spacing, 1.0, "spacing"),
            "origin": _triple(origin, 0.0, "origin"),
        },
        "bricks": {"grid": [1, 1, 1]},
        "budget": {"ratio": ratio, "bytes": budget},
        "writer": f"neurvol {__version__}",
    }

    if lo == hi:  # constant volume: stored exactly, no model
        header["codec"] = _CODEC
        return _finish(header, [encode_constant(lo)], budget)

    data = _normalized_tensor(volume, lo, hi)

    def start(codec_fields: Optional[Dict[str, Any]]) -> _Run:
        return _start_fit(data, header, budget, bits, candidates, arch_options,
                          _codec_settings(codec_fields), fit_settings, steps, seed, dev)

    if auto_rate:
        default_codec, rate_codec = _rate_candidates({"rate": "auto", **(codec or {})})
        # The default's refusals (budget, options) come first, as without auto.
        _first_solvable(candidates, header, tuple(data.shape), budget, bits, arch_options,
                        _codec_settings(default_codec))
        try:
            rated: Optional[_Run] = start(rate_codec)
        except (NeurvolInputError, NeurvolBudgetError):
            rated = None     # an architecture without feature grids: the default it is
        run = start(default_codec) if rated is None else _rate_pilot(
            rated, lambda: start(default_codec), volume, data, budget, bits, seed, dev, quiet)
    else:
        run = start(codec)
    _advance(run, None, quiet, "fitting")
    nv = _pack(run, run.fitting.finish(), volume, data, budget, bits, seed, dev)
    # Timings vary run to run, so they live on the object, not in the (deterministic) file.
    nv.encode_seconds = time.perf_counter() - t_start
    return nv


@dataclasses.dataclass
class _Run:
    """One candidate model of an encode: its codec, sizing and fit in progress."""

    codec: CodecSettings
    architecture: Architecture
    config: ModelConfig
    settings: FitSettings
    model: VolumeModel
    fitting: Fitting
    header: Dict[str, Any]
    rng_state: torch.Tensor


def _start_fit(data: torch.Tensor, header: Dict[str, Any], budget: int, bits: int,
               candidates: Sequence[Architecture], arch_options: Dict[str, Any],
               codec: CodecSettings, fit_settings: Optional[Dict[str, Any]],
               steps: Optional[int], seed: int, dev: torch.device) -> _Run:
    """Size, build and start fitting the model ``codec`` plans for (no steps run yet)."""
    shape = tuple(data.shape)
    architecture, config = _first_solvable(candidates, header, shape, budget, bits,
                                           arch_options, codec)
    settings = dataclasses.replace(FitSettings(steps=DEFAULT_STEPS), **architecture.fit_defaults)
    if fit_settings:
        settings = _with_fit_settings(settings, fit_settings)
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    # Seed a private copy of torch's global RNG (module init uses it) for reproducible
    # files; each candidate keeps its own stream between the stages of its fit.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = architecture.build(config)
        regularizer = fit_regularizer(model, codec, settings.steps)
        log.info("encode: %s %s, budget %d bytes, %d parameters, %d steps on %s",
                 architecture.name, config.to_dict(), budget, _param_count(model),
                 settings.steps, dev)
        fitting = Fitting(model, data, settings, seed=seed, device=dev, regularizer=regularizer)
        state = torch.get_rng_state()
    return _Run(codec, architecture, config, settings, model, fitting, dict(header), state)


def _advance(run: _Run, until: Optional[int], quiet: bool, desc: str) -> None:
    """Fit ``run`` on to step ``until`` (None: the end), with a progress bar."""
    from tqdm.auto import tqdm

    total = run.settings.steps
    with tqdm(total=total, initial=run.fitting.step, desc=desc, unit="step", disable=quiet,
              leave=False) as bar:
        def progress(step: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.2e}", refresh=False)
            bar.update(step - bar.n)  # tqdm throttles redraws itself
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(run.rng_state)
            run.fitting.run(until, progress=progress)
            run.rng_state = torch.get_rng_state()


#: ``codec={"rate": "auto"}``: the rate-aware fit runs to this fraction of its steps
#: (its penalty has then acted for a tenth of them) before it is judged.
RATE_PILOT = 0.4
#: ... and its float PSNR there is compared with that at this fraction (before the
#: penalty starts):
RATE_PILOT_EARLY = 0.2
#: a fit whose float PSNR fell by more than this, dB, is unstable and the default is
#: fitted instead. (Before AMGSRN's anchor grid, its placement could leave structure
#: uncovered and the fit drifted down: the rate-aware model of the 256^3 RM volume fell
#: from 27.5 to 24.0 dB. The anchor fixed that case, and this stays as a safety net; on
#: the 128^3 volumes the fall was at most 0.5 dB. BENCHMARKS.md, session 12.)
RATE_PILOT_DECLINE_DB = 1.0
#: ... and it is finished unless coding it at that point costs more than this, dB (PSNR
#: of the float model minus that of the file it makes). A model sized for 2 bits per grid
#: value loses that much only where the volume needs finer values than that sizing
#: affords, smooth fields at high PSNR; the default is fitted instead (BENCHMARKS.md,
#: session 9: 18 volume / ratio cases).
RATE_CODING_LOSS_DB = 2.4


def _rate_is_default(codec: Any) -> bool:
    """Whether ``codec`` leaves the model's sizing to ``encode``: no ``rate`` or
    ``grid_bits`` of its own and the default (interp) grid coder, so ``rate="auto"``
    applies."""
    if codec is None:
        return True
    return (isinstance(codec, dict) and "rate" not in codec and "grid_bits" not in codec
            and codec.get("grids", "interp") == "interp")


def _rate_candidates(codec: Dict[str, Any]) -> List[Optional[Dict[str, Any]]]:
    """The ``codec`` settings of the two candidates ``codec={"rate": "auto"}`` chooses
    from: the default codec and rate-aware fitting (:data:`AUTO_RATE`), each with
    ``codec``'s other fields."""
    rest = dict(codec)
    if rest.pop("rate") != "auto":
        raise NeurvolInputError("codec rate= must be a number >= 0 or 'auto'")
    if rest.get("grids", "interp") != "interp":
        raise NeurvolInputError("codec rate='auto' tries rate-aware fitting, which needs "
                                "grids='interp'")
    return [rest or None, {**AUTO_RATE, **rest, "rate": AUTO_RATE["rate"]}]


def _rate_pilot(rated: _Run, start_default: Callable[[], _Run], volume: np.ndarray,
                data: torch.Tensor, budget: int, bits: int, seed: int, dev: torch.device,
                quiet: bool) -> _Run:
    """Fit the rate-aware candidate to :data:`RATE_PILOT` of its steps and code a copy as
    the file would store it (no fine-tune): go on with it if its fit was stable (float
    PSNR at most :data:`RATE_PILOT_DECLINE_DB` below that at :data:`RATE_PILOT_EARLY`)
    and coding cost at most :data:`RATE_CODING_LOSS_DB`, else start and return the
    default candidate."""
    desc = "fitting (rate-aware, pilot)"
    _advance(rated, int(RATE_PILOT_EARLY * rated.settings.steps), quiet, desc)
    early_psnr = _float_psnr(copy.deepcopy(rated.model).cpu().eval(), data)
    _advance(rated, int(RATE_PILOT * rated.settings.steps), quiet, desc)
    probe = dataclasses.replace(
        rated, model=copy.deepcopy(rated.model), header=dict(rated.header),
        # Learned pruning (smallify, vd) trains in the fine-tune; magnitude pruning to the
        # same fraction stands in for it here.
        codec=dataclasses.replace(rated.codec, finetune=0.0, prune_method="magnitude"))
    probe.model.cpu().eval()
    float_psnr = _float_psnr(probe.model, data)
    result = FitResult(steps=rated.fitting.step, seconds=0.0, final_loss=rated.fitting.loss)
    coded_psnr = _pack(probe, result, volume, data, budget, bits, seed, dev).fit_psnr
    stable = float_psnr >= early_psnr - RATE_PILOT_DECLINE_DB
    keep = stable and float_psnr - coded_psnr <= RATE_CODING_LOSS_DB
    log.info("encode: rate='auto' pilot at %d%% of the steps: the rate-aware model codes "
             "at %.2f dB from %.2f dB in float (%.2f dB at %d%%); %s",
             round(100 * RATE_PILOT), coded_psnr, float_psnr, early_psnr,
             round(100 * RATE_PILOT_EARLY),
             "finishing it" if keep else "fitting the default instead")
    return rated if keep else start_default()


def _float_psnr(model: VolumeModel, data: torch.Tensor) -> float:
    """PSNR of ``model``'s float values (a CPU model in eval mode) on every voxel of
    ``data`` (normalized)."""
    sse, voxels = model_sse(model, data.numpy())
    return math.inf if sse == 0 else -10.0 * math.log10(sse / voxels)


def _pack(run: _Run, result: FitResult, volume: np.ndarray, data: torch.Tensor,
          budget: int, bits: int, seed: int, dev: torch.device) -> NeuralVolume:
    """The file of ``run``'s fitted model: the codec pipeline (fine-tune included), within
    ``budget`` bytes. Modifies the model (fine-tune, quantized grids)."""
    header, model, codec_settings, settings = run.header, run.model, run.codec, run.settings
    header["model"] = {"arch": run.architecture.name, "config": run.config.to_dict()}
    header["codec"] = dict(_CODEC, pipeline=codec_settings.pipeline(model))
    # The placeholder reserves the widest "fit" values, so the real ones cannot push the
    # file over budget.
    header["fit"] = dict(_FIT_PLACEHOLDER, steps=result.steps)
    tune_steps = int(round(codec_settings.finetune * settings.steps))

    def finetune(trainable, regularizer=None) -> None:
        if tune_steps > 0:
            with torch.random.fork_rng(devices=[]):
                _finetune(model, data, steps=tune_steps, lr=settings.lr * FINETUNE_LR,
                          trainable=trainable, batch=settings.batch, seed=seed, device=dev,
                          regularizer=regularizer)
            model.cpu()

    def stored_error(payload: bytes) -> float:
        """Minus the PSNR of the file a payload makes (the whole volume decoded)."""
        return -_psnr(volume, _finish(header, [payload], None).decode(dtype=np.float32))

    model = model.cpu()
    packed = compress_model(model, lambda payload: len(serialize_nvol(header, [payload])),
                            budget, 2 ** bits, codec_settings, finetune=finetune,
                            score=stored_error)
    if packed.size > budget:
        raise NeurvolBudgetError(
            f"the model does not fit the budget of {budget} bytes even at the coarsest "
            "quantization; use a smaller ratio")
    recon = _finish(header, [packed.payload], None).decode(dtype=np.float32)
    quality = _psnr(volume, recon)
    header["fit"] = {"steps": result.steps, "k": packed.k,
                     "psnr": round(quality, 3) if math.isfinite(quality) else None}
    return _finish(header, [packed.payload], budget)


#: Encodes a psnr= search may run, and the ratios it stays within.
PSNR_SEARCH_TRIALS = 6
PSNR_TOLERANCE_DB = 0.5
_PSNR_RATIOS = (1.5, 100000.0)
# Starting slope of PSNR against log2(ratio), dB per doubling (neural codecs: ~3-6).
_PSNR_SLOPE = -4.0


def _encode_bounded(volume: Any, max_error: Optional[float], rel_error: Optional[float],
                    model_ratios: Optional[Sequence[float]], *, psnr: Optional[float],
                    brick: Optional[int], bricks: Optional[Sequence[int]],
                    **model_kwargs: Any) -> NeuralVolume:
    """encode(max_error= / rel_error=): see :mod:`neurvol.bounded`."""
    from .bounded import DEFAULT_MODEL_RATIOS, encode_bounded, resolve_bound

    if psnr is not None or brick is not None or bricks is not None:
        raise NeurvolInputError("max_error= / rel_error= cannot be combined with psnr=, "
                                "brick= or bricks=")
    ratios = DEFAULT_MODEL_RATIOS if model_ratios is None else tuple(model_ratios)
    for r in ratios:
        check_ratio(r)
    t0 = time.perf_counter()
    volume, _, _ = check_volume(volume)
    e, rel = resolve_bound(volume, max_error, rel_error)
    spacing, origin = model_kwargs.pop("spacing"), model_kwargs.pop("origin")
    nv = encode_bounded(volume, e, rel, model_ratios=ratios, spacing=spacing, origin=origin,
                        **model_kwargs)
    nv.encode_seconds = time.perf_counter() - t0
    return nv


def _encode_to_psnr(volume: Any, target: float, ratio: float, kwargs: Dict[str, Any]) -> NeuralVolume:
    """The smallest file whose PSNR reaches ``target``: a secant search on log2(ratio)."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise NeurvolInputError(f"psnr must be a finite number of dB, got {target!r}")
    ratio = check_ratio(ratio)
    t_start = time.perf_counter()
    tried: List[Tuple[float, float, NeuralVolume]] = []   # (log2 ratio, psnr, volume)
    x = math.log2(min(max(ratio, _PSNR_RATIOS[0]), _PSNR_RATIOS[1]))
    lo_x, hi_x = math.log2(_PSNR_RATIOS[0]), math.log2(_PSNR_RATIOS[1])
    for _ in range(PSNR_SEARCH_TRIALS):
        try:
            nv = encode(volume, 2.0 ** x, **kwargs)
            got = nv.fit_psnr
        except NeurvolBudgetError:
            hi_x = min(hi_x, x)          # too small a budget for any model: go bigger
            x = (x + lo_x) / 2 if not tried else min(t[0] for t in tried) - 1
            continue
        log.info("encode(psnr=%.2f): ratio %.1f gives %.2f dB", target, 2.0 ** x, got)
        tried.append((x, got, nv))
        if target <= got <= target + PSNR_TOLERANCE_DB or got == math.inf:
            break
        if got >= target:
            lo_x = max(lo_x, x)
        else:
            hi_x = min(hi_x, x)
        if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
            (x1, p1, _), (x2, p2, _) = tried[-2], tried[-1]
            slope = min((p2 - p1) / (x2 - x1), -0.5) if x2 != x1 else _PSNR_SLOPE
        else:
            slope = _PSNR_SLOPE
        # Aim a little above the target so the step lands inside the tolerance band.
        nxt = x + (target + PSNR_TOLERANCE_DB / 2 - got) / slope
        if not lo_x < nxt < hi_x:          # keep inside the bracket found so far
            nxt = (lo_x + hi_x) / 2
        if any(abs(nxt - t[0]) < 1e-3 for t in tried):
            break
        x = nxt
    if not tried:
        raise NeurvolBudgetError("no ratio tried could hold a model of this volume; give ratio= instead")
    ok = [t for t in tried if t[1] >= target]
    if ok:
        best = max(ok, key=lambda t: t[0])[2]
    else:
        best = max(tried, key=lambda t: t[1])[2]
        warnings.warn(f"encode(psnr={target}): the best PSNR found is {best.fit_psnr:.2f} dB "
                      f"(ratio {best.ratio:.1f}); more steps or another arch may reach the target",
                      stacklevel=3)
    best.encode_seconds = time.perf_counter() - t_start
    return best


#: The candidate ``codec={"rate": "auto"}`` tries beside the default codec: rate-aware
#: fitting of a model sized for 2 bits per grid value (BENCHMARKS.md, session 7: +0.6 to
#: +2.6 dB on CT and rough simulations at ratio 100, -2 to -2.6 dB on smooth fields).
AUTO_RATE: Dict[str, float] = {"rate": 12.0, "grid_bits": 2.0}


def _encode_best_rate(volume: Any, ratio: float, kwargs: Dict[str, Any]) -> NeuralVolume:
    """``codec={"rate": "auto"}`` for bricked encodes: the better (higher PSNR) of two
    whole encodes, with the default codec and with rate-aware fitting; ties keep the
    default. Architectures without grids get the default only. (A single model chooses
    from a pilot instead, :func:`_rate_pilot`.)"""
    plain, rate_aware = _rate_candidates(kwargs.pop("codec"))
    t_start = time.perf_counter()
    best = encode(volume, ratio, codec=plain, **kwargs)
    try:
        rated = encode(volume, ratio, codec=rate_aware, **kwargs)
    except NeurvolInputError:
        # The same inputs just encoded, so only the rate-aware fit can be refused: a
        # model without feature grids. The default it is.
        rated = None
    if rated is not None and rated.fit_psnr > best.fit_psnr:
        best = rated
    best.encode_seconds = time.perf_counter() - t_start
    return best


def _codec_settings(codec: Optional[Dict[str, Any]]) -> CodecSettings:
    values = dict(codec) if isinstance(codec, dict) else codec
    if isinstance(values, dict) and isinstance(values.get("coders"), (list, str)):
        c = values["coders"]
        values["coders"] = (c,) if isinstance(c, str) else tuple(c)
    return _replace_fields(CodecSettings(), values, "codec", "codec")


def _replace_fields(base: Any, overrides: Any, arg: str, what: str) -> Any:
    """``base`` (a dataclass) with the fields in the dict ``overrides`` replaced; bad
    names or values are input errors naming the encode() argument ``arg`` and ``what``
    its fields set."""
    if overrides is None:
        return base
    kind = type(base).__name__
    if not isinstance(overrides, dict):
        raise NeurvolInputError(f"{arg} must be a dict of {kind} fields, got {overrides!r}")
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise NeurvolInputError(f"unknown {what} setting(s) {unknown}; known: {sorted(names)}")
    try:
        return dataclasses.replace(base, **overrides)
    except (TypeError, ValueError) as exc:
        raise NeurvolInputError(f"invalid {what} settings {overrides}: {exc}") from exc


def _brick_grid(volume: Any, brick: Optional[int],
                bricks: Optional[Sequence[int]]) -> Optional[Tuple[int, int, int]]:
    """The brick grid an encode asks for, or None for a single model."""
    from .ensemble.geometry import grid_for, optional_grid

    if brick is not None and bricks is not None:
        raise NeurvolInputError("give brick= (voxels per brick) or bricks= (brick counts), not both")
    grid = optional_grid(bricks)
    if grid is None:
        shape = getattr(volume, "shape", None)
        if shape is None or len(shape) != 3 or min(int(n) for n in shape) < 2:
            if brick is not None:
                check_volume(volume)   # raises the usual shape error
            return None
        shape = tuple(int(n) for n in shape)
        if brick is None:
            if math.prod(shape) <= AUTO_BRICK_VOXELS:
                return None
            brick = AUTO_BRICK
        grid = grid_for(shape, brick)
    return None if grid == (1, 1, 1) else grid


def _finish(header: Dict[str, Any], bricks: List[bytes], budget: Optional[int]) -> NeuralVolume:
    data = serialize_nvol(header, bricks)
    if budget is not None and len(data) > budget:
        raise NeurvolBudgetError(
            f"the smallest file neurvol can make is {len(data)} bytes but the budget is {budget} "
            f"bytes; use a smaller ratio (at most {int(header['budget']['ratio'] * budget / len(data))})"
        )
    return NeuralVolume(NvolReader(data))


def open(path: Union[str, os.PathLike], *, device: Union[str, torch.device, None] = None) -> NeuralVolume:
    """Open a ``.nvol`` file lazily: reads the header and brick index only.

    Bricks are decoded when a query first touches them. Use as a context manager to
    close the file handle promptly.
    """
    try:
        p = os.fspath(path)
    except TypeError:
        raise NeurvolInputError(f"path must be a str or os.PathLike, got {path!r}") from None
    if not os.path.exists(p):
        raise NeurvolIOError(f"no such file: {p}")
    if os.path.isdir(p):
        raise NeurvolIOError(f"{p} is a directory, not a .nvol file")
    return NeuralVolume(NvolReader(p), device=_resolve_device(device or "cpu"))


def sample_volume() -> np.ndarray:
    """The embedded sample: VolVis "neghip", 66x66x66 uint8 (see ``neurvol/sample/README.md``)."""
    here = os.path.join(os.path.dirname(__file__), "sample", "neghip.npy")
    return np.load(here, allow_pickle=False)


# ---------------------------------------------------------------------- helpers
def _triple(v: Optional[Sequence[float]], default: float, name: str) -> List[float]:
    if v is None:
        return [default] * 3
    try:
        t = [float(x) for x in v]
    except (TypeError, ValueError):
        raise NeurvolInputError(f"{name} must be 3 numbers (z, y, x)") from None
    if len(t) != 3 or not all(math.isfinite(x) for x in t):
        raise NeurvolInputError(f"{name} must be 3 finite numbers (z, y, x)")
    return t


def _normalized_tensor(volume: Any, lo: float, hi: float) -> torch.Tensor:
    """The volume as float32 in [0, 1], converted slab by slab (no full float64 copy)."""
    shape = tuple(volume.shape)
    out = np.empty(shape, dtype=np.float32)
    scale = 1.0 / (hi - lo)
    per = max(1, (1 << 22) // (shape[1] * shape[2]))
    for z in range(0, shape[0], per):
        slab = np.asarray(volume[z:z + per], dtype=np.float64)
        out[z:z + per] = (slab - lo) * scale
    return torch.from_numpy(out)


def _with_fit_settings(settings: FitSettings, overrides: Dict[str, Any]) -> FitSettings:
    return _replace_fields(settings, overrides, "fit_settings", "fit")


def _first_solvable(candidates: Sequence[Architecture], header: Dict[str, Any],
                    shape: Tuple[int, int, int], budget: int, bits: int,
                    options: Dict[str, Any], codec: Optional[CodecSettings] = None
                    ) -> Tuple[Architecture, ModelConfig]:
    """The first architecture whose model fits the budget, with its solved config."""
    for i, architecture in enumerate(candidates):
        try:
            # Size the header from the widest config, then from the solved one (a config
            # can be longer than the defaults, e.g. hashgrid with more levels).
            overhead = _overhead_bytes(header, architecture, None)
            config = _solve_config(architecture, shape, budget - overhead, bits, options, codec)
            exact = _overhead_bytes(header, architecture, config.to_dict())
            if exact > overhead:
                config = _solve_config(architecture, shape, budget - exact, bits, options, codec)
            return architecture, config
        except NeurvolBudgetError:
            if i == len(candidates) - 1:
                raise
            log.info("encode: %s does not fit %d bytes, trying %s", architecture.name, budget,
                     candidates[i + 1].name)
    raise AssertionError("no candidates")


def _overhead_bytes(header: Dict[str, Any], architecture: Architecture,
                    config: Optional[Dict[str, Any]]) -> int:
    """Bytes the file spends outside the weights: preamble, header JSON, index, frame.

    Every number of ``config`` (default: the architecture's default config) is widened
    past anything a solver produces, so the real header is never longer than the probe.
    """
    def widest(v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, int):
            return 999999
        if isinstance(v, float):
            return -1.2345678901234567e-300   # the longest repr a float has
        if isinstance(v, (tuple, list)):
            return [widest(x) for x in v]
        return v
    if config is None:
        config = {f.name: f.default for f in dataclasses.fields(architecture.config_cls)}
    probe = dict(header, model={"arch": architecture.name, "config": {k: widest(v) for k, v in config.items()}},
                 codec=dict(_CODEC, pipeline=_WIDEST_PIPELINE), fit=dict(_FIT_PLACEHOLDER, steps=10 ** 9))
    return len(serialize_nvol(probe, [b""])) + 16


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _plans(model: VolumeModel, k: int) -> Dict[str, TensorPlan]:
    """The default quantization plan of every tensor of ``model`` at ``k`` levels."""
    return {name: default_plan(t.numel(), k, precise=name in model.precise_tensors)
            for name, t in model.state_dict().items()}


# Without codec settings the solver sizes for plain k-means (bricked ensembles, v1 payloads).
_KMEANS_ONLY = CodecSettings(grids="kmeans", finetune=0.0)


def _solve_config(architecture: Any, shape: Tuple[int, int, int], payload_budget: int,
                  bits: int, options: Dict[str, Any],
                  codec: Optional[CodecSettings] = None) -> ModelConfig:
    """Largest config whose estimated payload fits: binary search on the parameter count."""
    codec = codec or _KMEANS_ONLY
    def fits(n_params: int) -> Optional[ModelConfig]:
        try:
            cfg = architecture.solve(shape, n_params, options)
        except NeurvolBudgetError:
            return None
        model = architecture.build(cfg)
        return cfg if estimate_payload(model, bits, codec) <= payload_budget else None

    lo_n, hi_n = 1, max(2, payload_budget * 8)
    best = None
    while lo_n < hi_n:
        mid = (lo_n + hi_n + 1) // 2
        cfg = fits(mid)
        if cfg is not None:
            best, lo_n = cfg, mid
        else:
            hi_n = mid - 1
    if best is None:
        raise NeurvolBudgetError(
            f"a budget of {payload_budget + 0} bytes for weights is too small for any {architecture.name} "
            "model of this volume; use a smaller ratio"
        )
    return best
