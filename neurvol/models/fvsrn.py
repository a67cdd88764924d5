"""fV-SRN: one dense trilinear feature grid decoded by a small MLP (Weiss et al. 2022).

The grid covers the volume with ``align_corners=True`` semantics: normalized -1 and +1 are
the centres of the first and last voxels, so the grid's corners sit on voxel centres.
Feature channel 0 is initialised with the (downsampled) data and the MLP output is added to
it, so the model starts as a trilinear downsample of the volume and the network learns the
correction: a good start that makes short CPU fits converge.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NeurvolBudgetError
from .base import Architecture, VolumeModel, register
from .mlp import run_mlp, make_mlp, mlp_param_count, to_grid_sample_coords
# The config (and the numpy evaluation readers use without torch) live in the torch-free half.
from .numpy_eval.fvsrn import (MAX_GRID_SIDE, MAX_GRID_VALUES,  # noqa: F401
                                MAX_WIDTH, FVSRNConfig, check_grids_and_mlp)


class FVSRN(VolumeModel):
    """Dense feature grid ``(1, C, D, H, W)`` + MLP, with the data-initialised residual."""

    grid_tensors = frozenset({"grid"})

    def __init__(self, config: FVSRNConfig):
        super().__init__()
        self.config = config
        self.grid = nn.Parameter(torch.zeros(1, config.channels, *config.grid))
        self.mlp = make_mlp(config.channels, config.width, config.hidden_layers)
        # Start the MLP's correction at ~0 so the initial model is the downsampled data.
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.01)
            self.mlp[-1].bias.zero_()

    def param_groups(self, base_lr: float):
        # Grid vertices each see few samples per step: a higher lr converges much faster.
        return [
            {"params": [self.grid], "lr": base_lr * 3.0},
            {"params": list(self.mlp.parameters()), "lr": base_lr},
        ]

    def init_from_volume(self, volume: torch.Tensor) -> None:
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            down = F.interpolate(
                volume[None, None], size=self.config.grid, mode="trilinear", align_corners=True
            )
            self.grid[:, :1] = down.to(self.grid)
            noise = 0.01 * torch.randn(self.grid[:, 1:].shape, generator=gen)
            self.grid[:, 1:] = noise.to(self.grid)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        feats = F.grid_sample(
            self.grid, to_grid_sample_coords(coords), mode="bilinear",
            padding_mode="border", align_corners=True,
        )
        feats = feats.reshape(self.config.channels, -1).t()
        if not torch.is_grad_enabled():  # queries and decodes: ReLUs in place
            return run_mlp(self.mlp, feats).squeeze(-1).add_(feats[:, 0])
        return self.mlp(feats).squeeze(-1) + feats[:, 0]


def solve_fvsrn(shape: Tuple[int, int, int], n_params: int, options: Mapping[str, Any]) -> FVSRNConfig:
    """Largest grid (proportional to the volume's shape) whose parameters fit ``n_params``."""
    channels = int(options.get("channels", 4))
    # The decoder should cost about a tenth of the budget: full width for normal budgets,
    # narrower for tiny ones (a 32-wide MLP alone would not fit a few-KB file).
    auto_width = 2 ** int(math.log2(max(8.0, min(32.0, math.sqrt(0.12 * max(n_params, 1))))))
    width = int(options.get("width", auto_width))
    hidden = int(options.get("hidden_layers", 2))
    mlp = mlp_param_count(channels, width, hidden)
    vertices = (n_params - mlp) // channels
    if vertices < 8:
        raise NeurvolBudgetError(
            f"the byte budget holds about {n_params} parameters, too few for an fvsrn model "
            f"(its MLP alone has {mlp}); use a smaller ratio"
        )
    grid = proportional_grid(shape, vertices)
    return FVSRNConfig(grid=grid, channels=channels, width=width, hidden_layers=hidden)


def proportional_grid(shape: Tuple[int, int, int], vertices: int) -> Tuple[int, int, int]:
    """A grid with at most ``vertices`` vertices, sides proportional to ``shape`` and never
    finer than the volume itself (a finer grid adds bytes, not detail)."""
    free = [0, 1, 2]
    dims = [0, 0, 0]
    remaining = float(vertices)
    # Axes that would exceed the volume are pinned to its size; the rest share what is left.
    while free:
        scale = (remaining / math.prod(shape[a] for a in free)) ** (1.0 / len(free))
        pinned = [a for a in free if shape[a] * scale >= shape[a]]
        if not pinned:
            for a in free:
                dims[a] = max(2, int(shape[a] * scale))
            break
        for a in pinned:
            dims[a] = max(2, shape[a])
            remaining /= dims[a]
            free.remove(a)
    # Round-down can leave room for one more layer on the smallest axis.
    while True:
        best = min(range(3), key=lambda a: dims[a] / shape[a])
        trial = list(dims)
        trial[best] += 1
        if trial[best] > max(2, shape[best]) or math.prod(trial) > vertices:
            break
        dims = trial
    return tuple(dims)  # type: ignore[return-value]


register(Architecture(
    name="fvsrn",
    model_cls=FVSRN,
    solver=solve_fvsrn,
    options=("channels", "width", "hidden_layers"),
    # Error-driven sampling helps the grid where the error concentrates (BENCHMARKS.md,
    # "error-driven sampling"; neurcomp, mixed there, stays uniform).
    fit_defaults={"sampling": "error"},
))
