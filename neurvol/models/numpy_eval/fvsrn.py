"""fvsrn without torch: its config, tensor list and evaluation (``spec/payload.md`` §3.1).

Trilinear lookup of one dense feature grid, corners on the corners of [-1, 1]^3,
coordinates clamped to the grid (``grid_sample``'s ``padding_mode="border"``), decoded by a
ReLU MLP whose output is added to feature 0.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Mapping, Tuple

import numpy as np

from ..config import ModelConfig, TensorSpec, mlp_param_count, mlp_tensor_specs
from .ops import F32, DenseMLP, cell, trilinear_rows, vertex_table
from .registry import NumpyArchitecture, NumpyModel, register_numpy

MAX_GRID_SIDE = 4096
MAX_WIDTH = 4096
MAX_GRID_VALUES = 2 ** 31    # values in one model's feature grids (spec: payload.md §3.1)
DESCRIPTION = "dense trilinear feature grid + small MLP (fV-SRN)"


def check_grids_and_mlp(grid: Tuple[int, ...], channels: int, width: int, hidden_layers: int,
                        grids: int = 1) -> None:
    """Raise ValueError unless ``grids`` feature grids of ``grid`` vertices with ``channels``
    features each, decoded by an MLP of ``width`` x ``hidden_layers``, are within the
    limits of the grid architectures' configs (fvsrn, amgsrn)."""
    if len(grid) != 3 or not all(isinstance(g, int) and 2 <= g <= MAX_GRID_SIDE for g in grid):
        raise ValueError(f"grid must be 3 ints in [2, {MAX_GRID_SIDE}]")
    for name, v in (("channels", channels), ("width", width), ("hidden_layers", hidden_layers)):
        if not isinstance(v, int) or not 1 <= v <= MAX_WIDTH:
            raise ValueError(f"{name} must be an int in [1, {MAX_WIDTH}]")
    if grids * math.prod(grid) * channels > MAX_GRID_VALUES:
        raise ValueError("feature grids too large")


@dataclasses.dataclass(frozen=True)
class FVSRNConfig(ModelConfig):
    """Dimensions of an fV-SRN model.

    grid: feature grid resolution (D, H, W) along (z, y, x); channels: features per grid
    vertex; width / hidden_layers: the decoder MLP.
    """

    arch = "fvsrn"
    grid: Tuple[int, int, int] = (16, 16, 16)
    channels: int = 4
    width: int = 32
    hidden_layers: int = 2

    def validate(self) -> None:
        check_grids_and_mlp(self.grid, self.channels, self.width, self.hidden_layers)

    def param_count(self) -> int:
        return math.prod(self.grid) * self.channels + mlp_param_count(
            self.channels, self.width, self.hidden_layers
        )

    def tensor_specs(self) -> List[TensorSpec]:
        return [("grid", (1, self.channels, *self.grid))] + mlp_tensor_specs(
            "mlp", self.channels, self.width, self.hidden_layers)


class FVSRNNumpy(NumpyModel):
    """``grid`` as a vertex-major table + :class:`~.ops.DenseMLP`."""

    def __init__(self, config: FVSRNConfig, arrays: Mapping[str, np.ndarray]) -> None:
        super().__init__(config, arrays)
        self.table = vertex_table(arrays["grid"])
        self.mlp = DenseMLP(arrays, "mlp", config.hidden_layers)
        d, h, w = config.grid
        self.sides = (d, h, w)
        self.strides = (h * w, w, 1)

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        base = np.zeros(coords.shape[0], dtype=np.intp)
        fracs = []
        for a, (n, stride) in enumerate(zip(self.sides, self.strides)):
            u = (coords[:, a].astype(F32) + F32(1)) * F32(0.5 * (n - 1))
            np.clip(u, 0, n - 1, out=u)                     # border padding
            i0, frac = cell(u, 0, n - 2)
            base += i0 * stride
            fracs.append(frac)
        feats = trilinear_rows(self.table, base, self.strides, fracs)       # (N, C)
        out = self.mlp(feats)[:, 0]
        out += feats[:, 0]
        return out


register_numpy(NumpyArchitecture("fvsrn", FVSRNConfig, FVSRNNumpy, DESCRIPTION))
