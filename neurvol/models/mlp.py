"""Small decoder MLPs shared by the grid-based architectures."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import mlp_param_count  # noqa: F401  (re-exported: the sizing code imports it here)


def make_mlp(n_in: int, width: int, hidden_layers: int, n_out: int = 1) -> nn.Sequential:
    """``n_in -> width (ReLU) x hidden_layers -> n_out``; biases everywhere."""
    layers: list[nn.Module] = []
    prev = n_in
    for _ in range(hidden_layers):
        layers += [nn.Linear(prev, width), nn.ReLU()]
        prev = width
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


def run_mlp(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` without autograd, with the ReLUs applied in place (one buffer fewer per
    layer): the evaluation path of queries and decodes. Same values as ``mlp(x)``."""
    for layer in mlp:
        x = x.relu_() if isinstance(layer, nn.ReLU) else layer(x)
    return x


def run_mlp_columns(mlp: nn.Sequential, x: torch.Tensor,
                    first_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`run_mlp` on ``x (features, N)``, points along columns, -> ``(n_out, N)``.

    Feature-major input is what a grid lookup produces, so no transpose copy is needed;
    ``first_weight`` replaces the first layer's weight (e.g. widened with zero columns for
    extra rows of ``x`` the MLP must ignore)."""
    first = True
    for layer in mlp:
        if isinstance(layer, nn.ReLU):
            x = x.relu_()
            continue
        weight = first_weight if first and first_weight is not None else layer.weight
        x = torch.addmm(layer.bias[:, None], weight, x)
        first = False
    return x


def to_grid_sample_coords(coords: torch.Tensor) -> torch.Tensor:
    """(N, 3) z,y,x coords -> (1, N, 1, 1, 3) x,y,z as ``F.grid_sample`` wants for 5-D input."""
    return coords.flip(-1).reshape(1, -1, 1, 1, 3)
