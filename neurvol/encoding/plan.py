"""Encode planning: the settings of an encode, the header it writes, and the size solver
that picks the largest model whose file fits the byte budget.

Shared by single-model and bricked encodes (:mod:`.single`, :mod:`.bricked`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..version import __version__
from ..container import serialize_nvol
from ..container.format import COMPACT_MINOR
from ..errors import NeurvolBudgetError, NeurvolInputError
from ..fit import FitSettings
from ..models import Architecture, ModelConfig, architectures, get_architecture
from ..compress.registry import coder_names
from ..pipeline import (GRID_CODINGS, PRUNE_METHODS, PRUNE_STAGES, CodecSettings,
                        estimate_payload)
from ..volume_checks import CHUNK_VOXELS, check_triple, check_volume

log = logging.getLogger("neurvol")

AUTO_ARCH = "auto"
#: arch="auto" takes the first of these whose model fits the budget: amgsrn measured best
#: (BENCHMARKS.md, "architectures"); fvsrn needs fewer parameters (no per-grid
#: transforms), so it covers tiny budgets.
AUTO_ORDER = ("amgsrn", "fvsrn")
DEFAULT_ARCH = AUTO_ARCH
#: Feature-grid k-means bits (BENCHMARKS.md, "Design measurements behind the defaults").
DEFAULT_BITS = 6
DEFAULT_STEPS = 1500
#: Fine-tuning lr as a fraction of the fit's lr.
FINETUNE_LR = 0.1
#: The header's ``codec`` entry (without its ``pipeline``).
CODEC = {"name": "neurvol", "version": 2}
#: The header's ``writer`` entry.
WRITER = f"neurvol {__version__}"
#: Widest values the "fit" header entry can take; sizing reserves them so the real entry
#: (written after the file's PSNR is known) cannot push the file over budget. Longer
#: than any real value, in digits without repeats or shared runs: the compact header is
#: compressed, and a repetitive placeholder ("1000000000") would compress below the real
#: value it stands for.
FIT_PLACEHOLDER = {"steps": 1029384756, "k": 7319046, "psnr": -5827.1953}
#: Bytes a compact header may still grow by when the real "fit" replaces the placeholder:
#: zstd's output length is not monotone in its input (tests/test_compact_header.py
#: measures the worst case, well below this).
FIT_JITTER = 4
#: Bytes kept free beyond the probed overhead of a single-model file: a margin for header
#: fields whose final text the widened probe might not bound.
HEADER_SLACK = 16
#: What a number in a config probe is widened to: longer than anything a solver produces
#: (digits without repeats, which compress no better than a real number's).
_WIDEST_INT = 918273
_WIDEST_FLOAT = -1.2345678901234567e-300      # the longest repr a float has
#: Most parameters the size solver tries per payload byte (8 bits a byte, one bit a
#: parameter: no coder here stores less).
PARAMS_PER_BYTE = 8
#: Volumes with more voxels than this are bricked automatically (bricks of AUTO_BRICK
#: voxels a side): a single model would hold the whole volume in memory while fitting.
AUTO_BRICK_VOXELS = 1 << 25
AUTO_BRICK = 128
#: A brick whose values deviate from their mean by at most this PSNR's error (RMS over the
#: data range) is stored as that constant: near-empty space costs a few bytes.
CONSTANT_BRICK_PSNR = 50.0


def triple(v: Optional[Sequence[float]], default: float, name: str) -> List[float]:
    """Spacing or origin for the header: three finite floats (z, y, x)."""
    return list(check_triple(v, default, name))


def check_int(value: Any, name: str, lo: int, hi: Optional[int] = None,
              what: str = "int") -> None:
    """Refuse anything but an int (not a bool) in ``[lo, hi]``."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < lo
            or (hi is not None and value > hi)):
        bound = f"an int in {lo}..{hi}" if hi is not None else what
        raise NeurvolInputError(f"{name} must be {bound}, got {value!r}")


def candidates_for(arch: str, arch_options: Dict[str, Any]) -> List[Architecture]:
    """The architectures an encode tries in turn: ``AUTO_ORDER`` for ``"auto"``."""
    if not isinstance(arch, str):
        raise NeurvolInputError(f"arch must be an architecture name (str), got {arch!r}")
    if arch == AUTO_ARCH:
        if arch_options:
            raise NeurvolInputError(
                f"architecture options {sorted(arch_options)} need an explicit arch= "
                f"(one of {list(architectures())}), not arch='auto'")
        return [get_architecture(a) for a in AUTO_ORDER]
    candidates = [get_architecture(arch)]
    unknown = sorted(set(arch_options) - set(candidates[0].options))
    if unknown:
        raise NeurvolInputError(
            f"unknown option(s) {unknown} for arch={arch!r}; it accepts "
            f"{list(candidates[0].options)}")
    return candidates


def replace_fields(base: Any, overrides: Any, arg: str, what: str) -> Any:
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


#: ``encode(codec=)`` key that turns hybrid rate allocation off (``{"hybrid": False}``:
#: a ``ratio=`` encode fits a model and keeps it, :mod:`.hybrid`).
HYBRID_KEY = "hybrid"


def codec_settings(codec: Optional[Dict[str, Any]]) -> CodecSettings:
    """The :class:`CodecSettings` of an ``encode(codec=)`` dict (lists of coders allowed)."""
    values = dict(codec) if isinstance(codec, dict) else codec
    if isinstance(values, dict) and isinstance(values.get("coders"), (list, str)):
        c = values["coders"]
        values["coders"] = (c,) if isinstance(c, str) else tuple(c)
    return replace_fields(CodecSettings(), values, "codec", "codec")


def fit_settings_for(architecture: Architecture, overrides: Optional[Dict[str, Any]],
                     steps: Optional[int]) -> FitSettings:
    """The fit settings of ``architecture``'s models: its defaults, then the
    ``encode(fit_settings=)`` overrides, then ``steps``."""
    settings = dataclasses.replace(FitSettings(steps=DEFAULT_STEPS), **architecture.fit_defaults)
    if overrides:
        settings = replace_fields(settings, overrides, "fit_settings", "fit")
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    return settings


def _widest_pipeline() -> List[Dict[str, Any]]:
    """The longest ``codec.pipeline`` any codec writes, its numbers widened: sizing reserves
    it, so it never underestimates the header."""
    def widen(config: Dict[str, Any]) -> Dict[str, Any]:
        return {k: _WIDEST_FLOAT if isinstance(v, float) else
                _WIDEST_INT if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in config.items()}
    longest_prune = max(PRUNE_METHODS, key=lambda m: len(PRUNE_STAGES[m]))
    candidates = []
    for grids in GRID_CODINGS:
        codec = CodecSettings(grids=grids, prune=0.5, prune_method=longest_prune, finetune=0.5,
                              vq_ema=0.5, rate=1.0 if grids == "interp" else 0.0,
                              coders=coder_names())
        candidates.append([widen(c) for c in codec.stage_configs(True)])
    return max(candidates, key=lambda p: len(json.dumps(p, separators=(",", ":"))))


#: Every stage a codec.pipeline can list, widest form, so sizing never underestimates the
#: header.
WIDEST_PIPELINE = _widest_pipeline()


def volume_header(shape: Sequence[int], dtype: np.dtype, lo: float, hi: float,
                  spacing: List[float], origin: List[float], bricks: Dict[str, Any],
                  ratio: float, budget: int, *,
                  codec_pipeline: Optional[List[Dict[str, Any]]] = None
                  ) -> Dict[str, Any]:
    """The header entries an encode knows before fitting (the model's come later)."""
    header: Dict[str, Any] = {
        "volume": {"shape": list(shape), "dtype": dtype.str, "min": lo, "max": hi,
                   "spacing": spacing, "origin": origin},
        "bricks": bricks,
    }
    if codec_pipeline is not None:
        header["codec"] = dict(CODEC, pipeline=codec_pipeline)
    header["budget"] = {"ratio": ratio, "bytes": budget}
    header["writer"] = WRITER
    return header


def normalized_tensor(volume: Any, lo: float, hi: float) -> torch.Tensor:
    """The volume as float32 in [0, 1], converted slab by slab (no full float64 copy)."""
    shape = tuple(volume.shape)
    out = np.empty(shape, dtype=np.float32)
    scale = 1.0 / (hi - lo)
    per = max(1, CHUNK_VOXELS // (shape[1] * shape[2]))
    for z in range(0, shape[0], per):
        slab = np.asarray(volume[z:z + per], dtype=np.float64)
        out[z:z + per] = (slab - lo) * scale
    return torch.from_numpy(out)


def brick_grid(volume: Any, brick: Optional[int],
               bricks: Optional[Sequence[int]]) -> Optional[Tuple[int, int, int]]:
    """The brick grid an encode asks for, or None for a single model."""
    from ..ensemble.geometry import grid_for, optional_grid

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


# ---------------------------------------------------------------------- size solving
def first_solvable(candidates: Sequence[Architecture], header: Dict[str, Any],
                   shape: Tuple[int, int, int], budget: int, bits: int,
                   options: Dict[str, Any], codec: CodecSettings
                   ) -> Tuple[Architecture, ModelConfig]:
    """The first architecture whose model fits the budget, with its solved config."""
    for i, architecture in enumerate(candidates):
        try:
            # Size the header from the widest config, then from the solved one (a config
            # can be longer than the defaults, e.g. hashgrid with more levels).
            # The codec's own stages (a superset of what a model of it lists): exact.
            pipeline = codec.stage_configs(True)
            overhead = overhead_bytes(header, architecture, None, pipeline)
            config = solve_config(architecture, shape, budget - overhead, bits, options, codec)
            exact = overhead_bytes(header, architecture, config.to_dict(), pipeline)
            if exact > overhead:
                config = solve_config(architecture, shape, budget - exact, bits, options, codec)
            return architecture, config
        except NeurvolBudgetError:
            if i == len(candidates) - 1:
                raise
            log.info("encode: %s does not fit %d bytes, trying %s", architecture.name, budget,
                     candidates[i + 1].name)
    raise AssertionError("no candidates")


def overhead_bytes(header: Dict[str, Any], architecture: Architecture,
                   config: Optional[Dict[str, Any]],
                   pipeline: Optional[List[Dict[str, Any]]] = None) -> int:
    """Bytes a single-model file spends outside the weights: preamble, compact header
    (format 1.4, spec/nvol.md §3.3) and checksums.

    Every number of ``config`` (default: the architecture's default config) is widened
    past anything a solver produces, so the real header is never longer than the probe.
    ``pipeline``: the ``codec.pipeline`` the file will list (default: the widest any codec
    lists).
    """
    def widest(v: Any) -> Any:
        if isinstance(v, bool):
            return v
        if isinstance(v, int):
            return _WIDEST_INT
        if isinstance(v, float):
            return _WIDEST_FLOAT
        if isinstance(v, (tuple, list)):
            return [widest(x) for x in v]
        return v
    if config is None:
        config = {f.name: f.default for f in dataclasses.fields(architecture.config_cls)}
    probe = dict(header, model={"arch": architecture.name,
                                "config": {k: widest(v) for k, v in config.items()}},
                 codec=dict(CODEC, pipeline=WIDEST_PIPELINE if pipeline is None else pipeline),
                 fit=FIT_PLACEHOLDER)
    return len(serialize_nvol(probe, [b""], minor=COMPACT_MINOR)) + HEADER_SLACK


def solve_config(architecture: Architecture, shape: Tuple[int, int, int], payload_budget: int,
                 bits: int, options: Dict[str, Any], codec: CodecSettings) -> ModelConfig:
    """Largest config whose estimated payload fits: binary search on the parameter count."""
    def fits(n_params: int) -> Optional[ModelConfig]:
        try:
            cfg = architecture.solve(shape, n_params, options)
        except NeurvolBudgetError:
            return None
        model = architecture.build(cfg)
        return cfg if estimate_payload(model, bits, codec) <= payload_budget else None

    lo_n, hi_n = 1, max(2, payload_budget * PARAMS_PER_BYTE)
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
            f"a budget of {payload_budget} bytes for weights is too small for any "
            f"{architecture.name} model of this volume; use a smaller ratio")
    return best
