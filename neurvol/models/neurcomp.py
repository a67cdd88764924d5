"""neurcomp: a residual SIREN (Lu, Jiang, Berger 2021, "Compressive Neural Representations
of Volumetric Scalar Fields"; github.com/matthewberger/neurcomp, ``siren.py``).

``3 -> sine layer -> B residual sine blocks -> linear -> 1``, all hidden layers ``width``
wide. The input is the normalized (z, y, x) point multiplied per axis by ``scale`` so the
longest axis spans [-1, 1] and the others keep the volume's aspect ratio. Evaluation math
(the averaging weights of the residual blocks included) is normative in
``spec/arch/neurcomp.md``.

Published training (``PUBLISHED_FIT``): Adam lr 5e-5, 16384 samples per step, 75 passes
over the voxels, lr x0.2 every 20 passes; that is hours on a CPU. neurvol's defaults
(``fit_defaults`` below) are a short, higher-lr warm-up + cosine fit chosen by measurement.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import torch
from torch import nn

from ..errors import NeurvolBudgetError, NeurvolInputError
from .base import Architecture, VolumeModel, register
# The config (and the numpy evaluation readers use without torch) live in the torch-free half.
from .numpy_eval.neurcomp import (DEFAULT_LAYERS, MAX_BLOCKS, MAX_WIDTH,  # noqa: F401
                                  NeurcompConfig, neurcomp_param_count)
from .numpy_eval.neurcomp import finite_number as _finite_number

# The published training recipe: Adam lr 5e-5, batches of 16,384 points, 75 passes over
# the volume, lr x0.2 every 20 passes. ``encode(v, arch="neurcomp",
# fit=published_fit_settings(v.shape))`` reproduces it (~9,600 steps for 128^3).
PUBLISHED_FIT: Dict[str, Any] = {"lr": 5e-5, "batch": 16384, "passes": 75,
                                 "lr_decay": 0.2, "decay_every_passes": 20}


def published_fit_settings(shape: Tuple[int, int, int]) -> Dict[str, Any]:
    """FitSettings fields of the published recipe for a volume of ``shape``."""
    per_pass = math.prod(shape) / PUBLISHED_FIT["batch"]
    return {"lr": PUBLISHED_FIT["lr"], "batch": PUBLISHED_FIT["batch"],
            "steps": math.ceil(PUBLISHED_FIT["passes"] * per_pass), "warmup": 0.0,
            "schedule": "step", "decay": PUBLISHED_FIT["lr_decay"],
            "decay_every": max(1, math.ceil(PUBLISHED_FIT["decay_every_passes"] * per_pass))}


class _ResidualSineBlock(nn.Module):
    """``c * (h + sin(w0 * L2(sin(w0 * L1(a * h)))))`` with the published a, c weights."""

    def __init__(self, width: int, omega0: float, in_weight: float, out_weight: float):
        super().__init__()
        self.omega0, self.in_weight, self.out_weight = omega0, in_weight, out_weight
        self.linear_1 = nn.Linear(width, width)
        self.linear_2 = nn.Linear(width, width)
        bound = math.sqrt(6.0 / width) / omega0
        with torch.no_grad():
            self.linear_1.weight.uniform_(-bound, bound)
            self.linear_2.weight.uniform_(-bound, bound)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = torch.sin(self.omega0 * self.linear_1(self.in_weight * h))
        return self.out_weight * (h + torch.sin(self.omega0 * self.linear_2(s)))


class NeurcompModel(VolumeModel):
    """Residual SIREN; tensors ``first``, ``blocks.{i}.linear_{1,2}``, ``last``."""

    # omega0 (30) multiplies the first layer's errors, so k-means levels there wreck the
    # fit; float16 costs a few bytes per hidden unit and keeps it.
    precise_tensors = frozenset({"first.weight", "first.bias"})

    def __init__(self, config: NeurcompConfig):
        super().__init__()
        self.config = config
        w, nb, w0 = config.width, config.residual_blocks, float(config.omega0)
        self.omega0 = w0
        self.register_buffer("_scale", torch.tensor(config.scale, dtype=torch.float32), persistent=False)
        self.first = nn.Linear(3, w)
        with torch.no_grad():
            self.first.weight.uniform_(-1.0 / 3.0, 1.0 / 3.0)
        # As published: every block after the first halves its input, the last halves its output.
        self.blocks = nn.ModuleList(
            _ResidualSineBlock(w, w0, 1.0 if i == 0 else 0.5, 0.5 if i == nb - 1 else 1.0)
            for i in range(nb)
        )
        self.last = nn.Linear(w, 1)
        with torch.no_grad():
            bound = math.sqrt(6.0 / w) / w0
            self.last.weight.uniform_(-bound, bound)
        # Training-only settings the trainer applies over its FitSettings (never stored).
        self.fit_overrides: Dict[str, Any] = (
            {"grad_lambda": float(config.grad_lambda)} if config.grad_lambda > 0 else {})

    def init_from_volume(self, volume: torch.Tensor) -> None:
        # Start at the mean value: the sine layers then only learn the variation.
        with torch.no_grad():
            self.last.bias.fill_(float(volume.mean()))

    def hidden_neurons(self):
        # Only a block's inner neurons: sin(w0 * linear_1(.)) feeds linear_2 alone. The
        # outputs of first and of every linear_2 are the residual stream, which the skip
        # connections carry past the next layer, so no single consumer column removes them.
        return [(f"blocks.{i}.linear_1", f"blocks.{i}.linear_2") for i in range(len(self.blocks))]

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.omega0 * self.first(coords * self._scale))
        for block in self.blocks:
            h = block(h)
        return self.last(h).squeeze(-1)


def aspect_scale(shape: Tuple[int, int, int]) -> Tuple[float, float, float]:
    """Per-axis factor ``(n - 1) / max(n - 1)``: the longest axis spans [-1, 1]."""
    ext = [max(1, int(n) - 1) for n in shape]
    top = max(ext)
    return tuple(e / top for e in ext)  # type: ignore[return-value]


def solve_neurcomp(shape: Tuple[int, int, int], n_params: int, options: Mapping[str, Any]) -> NeurcompConfig:
    """Widest network of ``layers`` (default 8 = 1 sine layer + 7 residual blocks) layers
    whose parameters fit ``n_params``; ``width`` forces the width instead."""
    layers = options.get("layers", DEFAULT_LAYERS)
    if not isinstance(layers, int) or isinstance(layers, bool) or not 1 <= layers <= MAX_BLOCKS + 1:
        raise NeurvolInputError(f"layers must be an int in [1, {MAX_BLOCKS + 1}], got {layers!r}")
    blocks = layers - 1
    omega0 = options.get("omega0", 30.0)
    grad_lambda = options.get("grad_lambda", 0.0)
    for name, v in (("omega0", omega0), ("grad_lambda", grad_lambda)):
        if not _finite_number(v) or v < 0:
            raise NeurvolInputError(f"{name} must be a number >= 0, got {v!r}")
    if "width" in options:
        width = options["width"]
        if not isinstance(width, int) or isinstance(width, bool) or not 2 <= width <= MAX_WIDTH:
            raise NeurvolInputError(f"width must be an int in [2, {MAX_WIDTH}], got {width!r}")
    else:
        # Largest width with blocks*2*(w^2+w) + 5w + 1 <= n_params.
        a, b, c = 2 * blocks, 2 * blocks + 5, 1 - n_params
        if a:
            width = int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)) if n_params > 1 else 0
        else:
            width = (n_params - 1) // 5
        while width > 0 and neurcomp_param_count(width, blocks) > n_params:
            width -= 1
        while neurcomp_param_count(width + 1, blocks) <= n_params:
            width += 1
    width = min(width, MAX_WIDTH)
    if width < 2 or neurcomp_param_count(width, blocks) > n_params:
        raise NeurvolBudgetError(
            f"the byte budget holds about {n_params} parameters, too few for a {layers}-layer "
            "neurcomp network; use a smaller ratio or fewer layers")
    return NeurcompConfig(width=width, residual_blocks=blocks, omega0=float(omega0),
                          scale=aspect_scale(shape), grad_lambda=float(grad_lambda))


register(Architecture(
    name="neurcomp",
    model_cls=NeurcompModel,
    solver=solve_neurcomp,
    options=("layers", "width", "omega0", "grad_lambda"),
    # In a short fit lr 1e-3 fits far better than the published 5e-5 (which needs the
    # published 75 passes) and larger rates diverge; 16384 samples per step as published.
    fit_defaults={"lr": 1e-3, "batch": 16384, "steps": 1500},
))
