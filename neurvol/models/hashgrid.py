"""hashgrid: multiresolution hash encoding + small ReLU MLP (Müller et al. 2022, "Instant
Neural Graphics Primitives"; as used for volumes by instant-vnr).

L levels of F-feature tables. Level l is a cubic lattice of ``(N_l + 1)^3`` vertices over
[-1, 1]^3 (vertices on the corners, like fvsrn's grid); when that many vertices fit the
table (``<= T = 2^log2_table``) they are indexed densely, otherwise through the NGP
spatial hash. Features are trilinearly interpolated per level, concatenated and decoded by
a ReLU MLP. Evaluation math is normative in ``spec/arch/hashgrid.md``.

This is the pure PyTorch path, the only one implemented: tiny-cuda-nn places level
vertices differently (``pos * scale + 0.5``), so it cannot reproduce this math (see the
spec).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Tuple

import torch
from torch import nn

from ..errors import NeurvolBudgetError, NeurvolInputError
from .base import Architecture, VolumeModel, register
from .mlp import make_mlp, mlp_param_count
# The config (and the numpy evaluation readers use without torch) live in the torch-free half.
from .numpy_eval.hashgrid import (MAX_FEATURES, MAX_HIDDEN,  # noqa: F401
                                  MAX_LEVELS, MAX_LOG2_TABLE, MAX_RESOLUTION, MAX_WIDTH, PRIME_X,
                                  PRIME_Y, PRIME_Z, HashGridConfig)
from .numpy_eval.hashgrid import is_int as _is_int

TABLE_INIT = 1e-4
TABLE_LR_FACTOR = 10.0     # tables train with 10x the MLP's learning rate (not tuned)

# Encoder defaults: levels x features, width and learning rate chosen by measurement at
# ratio 100 (BENCHMARKS.md, "Architectures"). The base resolution is NGP-like, not tuned.
DEFAULT_LEVELS = 8
DEFAULT_FEATURES = 2
DEFAULT_BASE_RESOLUTION = 4
DEFAULT_WIDTH = 32
DEFAULT_HIDDEN = 1


class HashGrid(VolumeModel):
    """Per-level tables ``tables.{l}`` of shape ``(min((N_l+1)^3, T), F)`` + ReLU MLP."""

    def __init__(self, config: HashGridConfig):
        super().__init__()
        self.config = config
        t = 1 << config.log2_table
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(size, config.features).uniform_(-TABLE_INIT, TABLE_INIT))
            for size in config.table_sizes()
        )
        self.mlp = make_mlp(len(config.resolutions) * config.features, config.width, config.hidden_layers)
        self._hashed = tuple((n + 1) ** 3 > t for n in config.resolutions)

    def param_groups(self, base_lr: float):
        # Each table entry sees few samples per step: a higher lr converges much faster.
        return [
            {"params": list(self.tables.parameters()), "lr": base_lr * TABLE_LR_FACTOR},
            {"params": list(self.mlp.parameters()), "lr": base_lr},
        ]

    def init_from_volume(self, volume: torch.Tensor) -> None:
        # Start at the mean value: the encoding then only learns the variation.
        with torch.no_grad():
            self.mlp[-1].bias.fill_(float(volume.mean()))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` normalized (z, y, x) -> ``(N, L*F)`` concatenated level features
        (level 0 first)."""
        n_pts = coords.shape[0]
        u = (coords.clamp(-1.0, 1.0) + 1.0) * 0.5
        mask = (1 << self.config.log2_table) - 1
        feats = []
        for level, n in enumerate(self.config.resolutions):
            p = u * float(n)                                       # (N, 3) in [0, n], z y x
            i0 = torch.clamp(torch.floor(p.detach()).to(torch.int64), max=n - 1)
            frac = p - i0.to(p.dtype)
            v = torch.stack([i0, i0 + 1], dim=-1)                  # (N, 3, 2) lower/upper vertex
            wgt = torch.stack([1.0 - frac, frac], dim=-1)          # (N, 3, 2) their weights
            if self._hashed[level]:
                # (a ^ b ^ c) & m == (a & m) ^ (b & m) ^ (c & m): mask the per-axis terms.
                tz, ty, tx = ((v[:, a] * prime) & mask for a, prime in enumerate((PRIME_Z, PRIME_Y, PRIME_X)))
                rows = tz[:, :, None, None] ^ ty[:, None, :, None] ^ tx[:, None, None, :]
            else:
                tz, ty, tx = v[:, 0] * ((n + 1) * (n + 1)), v[:, 1] * (n + 1), v[:, 2]
                rows = tz[:, :, None, None] + ty[:, None, :, None] + tx[:, None, None, :]
            # (N, 2, 2, 2) over (dz, dy, dx): corner c = 4*dz + 2*dy + dx after the reshape.
            w = wgt[:, 0, :, None, None] * wgt[:, 1, None, :, None] * wgt[:, 2, None, None, :]
            corners = self.tables[level].index_select(0, rows.reshape(-1)).reshape(n_pts, 8, -1)
            feats.append(torch.bmm(w.reshape(n_pts, 1, 8), corners).reshape(n_pts, -1))
        return torch.cat(feats, dim=1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encode(coords)).squeeze(-1)


def level_resolutions(levels: int, base: int, finest: int) -> Tuple[int, ...]:
    """NGP's geometric progression ``N_l = floor(base * b^l)``, ``b = (finest/base)^(1/(L-1))``
    (computed here once; files store the resulting integers)."""
    if levels == 1:
        return (max(1, finest),)
    b = math.exp((math.log(finest) - math.log(base)) / (levels - 1)) if finest > base else 1.0
    return tuple(max(1, int(math.floor(base * b ** l + 1e-9))) for l in range(levels))


def solve_hashgrid(shape: Tuple[int, int, int], n_params: int, options: Mapping[str, Any]) -> HashGridConfig:
    """Largest table (``log2_table``) whose parameters fit ``n_params``, for ``levels``
    levels from ``base_resolution`` to ``max_resolution`` (default: one cell per voxel
    along the longest axis) with ``features`` each; ``log2_table`` forces the table size."""
    levels = _int_option(options, "levels", DEFAULT_LEVELS, 1, MAX_LEVELS)
    features = _int_option(options, "features", DEFAULT_FEATURES, 1, MAX_FEATURES)
    base = _int_option(options, "base_resolution", DEFAULT_BASE_RESOLUTION, 1, MAX_RESOLUTION)
    finest = _int_option(options, "max_resolution", max(1, max(shape) - 1), 1, MAX_RESOLUTION)
    width = _int_option(options, "width", DEFAULT_WIDTH, 1, MAX_WIDTH)
    hidden = _int_option(options, "hidden_layers", DEFAULT_HIDDEN, 0, MAX_HIDDEN)
    resolutions = level_resolutions(levels, base, max(base, finest))

    def config(log2_t: int) -> HashGridConfig:
        return HashGridConfig(resolutions=resolutions, features=features, log2_table=log2_t,
                              width=width, hidden_layers=hidden)

    if "log2_table" in options:
        cfg = config(_int_option(options, "log2_table", 0, 1, MAX_LOG2_TABLE))
        if cfg.param_count() > n_params:
            raise NeurvolBudgetError(f"a log2_table={cfg.log2_table} hash grid does not fit "
                                     f"{n_params} parameters")
        return cfg
    # Past the size where every level is dense a larger table adds nothing.
    full = max(1, math.ceil(math.log2(max((n + 1) ** 3 for n in resolutions))))
    best = None
    for log2_t in range(1, min(full, MAX_LOG2_TABLE) + 1):
        cfg = config(log2_t)
        if cfg.param_count() > n_params:
            break
        best = cfg
    if best is None or best.log2_table < 4:
        raise NeurvolBudgetError(
            f"the byte budget holds about {n_params} parameters, too few for a hashgrid model "
            f"(its MLP alone has {mlp_param_count(levels * features, width, hidden)}); "
            "use a smaller ratio or fewer levels/features")
    return best


def _int_option(options: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    v = options.get(name, default)
    if not _is_int(v) or not lo <= v <= hi:
        raise NeurvolInputError(f"hashgrid option {name} must be an int in [{lo}, {hi}], got {v!r}")
    return v


register(Architecture(
    name="hashgrid",
    model_cls=HashGrid,
    solver=solve_hashgrid,
    options=("levels", "features", "base_resolution", "max_resolution", "log2_table",
             "width", "hidden_layers"),
    # The tables train at TABLE_LR_FACTOR times this base rate; see the encoder defaults.
    fit_defaults={"lr": 3e-3, "batch": 16384, "steps": 1500},
))
