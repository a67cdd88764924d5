"""neurcomp without torch: its config, tensor list and evaluation (``spec/arch/neurcomp.md``).

A residual SIREN: ``sin(w0 (W p + b))`` first layer, residual sine blocks with the
published averaging weights, a linear output layer.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from ..config import ModelConfig, TensorSpec
from .ops import F32
from .registry import NumpyArchitecture, NumpyModel, register_numpy

MAX_WIDTH = 4096
MAX_BLOCKS = 64
DEFAULT_LAYERS = 8   # as published: 1 sine layer + 7 residual blocks (+ the output layer)
DESCRIPTION = "residual SIREN MLP, width from the budget (neurcomp, Lu et al. 2021)"


@dataclasses.dataclass(frozen=True)
class NeurcompConfig(ModelConfig):
    """Dimensions of a neurcomp residual SIREN.

    width: neurons of every hidden layer; residual_blocks: B (the published ``n_layers``
    is ``B + 1``); omega0: the sine frequency factor (30); scale: the per-axis (z, y, x)
    factor applied to normalized coordinates, ``(n_a - 1) / max_b(n_b - 1)``.
    grad_lambda is a training setting, not a dimension: it is never written to a file
    (``to_dict`` leaves it out, ``from_dict`` reads 0) and only reaches the trainer
    through ``NeurcompModel.fit_overrides``.
    """

    arch = "neurcomp"
    width: int = 32
    residual_blocks: int = DEFAULT_LAYERS - 1
    omega0: float = 30.0
    scale: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    grad_lambda: float = dataclasses.field(default=0.0, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        d = super().to_dict()
        del d["grad_lambda"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        d = {k: v for k, v in dict(d).items() if k != "grad_lambda"}
        return super().from_dict({**d, "grad_lambda": 0.0})

    def validate(self) -> None:
        if not isinstance(self.width, int) or isinstance(self.width, bool) or not 1 <= self.width <= MAX_WIDTH:
            raise ValueError(f"width must be an int in [1, {MAX_WIDTH}]")
        if (not isinstance(self.residual_blocks, int) or isinstance(self.residual_blocks, bool)
                or not 0 <= self.residual_blocks <= MAX_BLOCKS):
            raise ValueError(f"residual_blocks must be an int in [0, {MAX_BLOCKS}]")
        if not finite_number(self.omega0) or not 0 < self.omega0 <= 1e4:
            raise ValueError("omega0 must be a number in (0, 1e4]")
        if (not isinstance(self.scale, tuple) or len(self.scale) != 3
                or not all(finite_number(s) and 0 < s <= 1 for s in self.scale)):
            raise ValueError("scale must be 3 numbers in (0, 1]")
        if not finite_number(self.grad_lambda) or self.grad_lambda < 0:
            raise ValueError("grad_lambda must be a number >= 0")

    def param_count(self) -> int:
        return neurcomp_param_count(self.width, self.residual_blocks)

    def tensor_specs(self) -> List[TensorSpec]:
        w = self.width
        specs: List[TensorSpec] = [("first.weight", (w, 3)), ("first.bias", (w,))]
        for i in range(self.residual_blocks):
            for lin in ("linear_1", "linear_2"):
                specs += [(f"blocks.{i}.{lin}.weight", (w, w)), (f"blocks.{i}.{lin}.bias", (w,))]
        return specs + [("last.weight", (1, w)), ("last.bias", (1,))]


def finite_number(v: Any) -> bool:
    """A real (non-bool) int or float that is finite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def neurcomp_param_count(width: int, blocks: int) -> int:
    """Parameters of a residual SIREN: first layer, ``blocks`` x 2 square layers, output."""
    return 4 * width + blocks * 2 * (width * width + width) + width + 1


class NeurcompNumpy(NumpyModel):
    """Residual SIREN; each layer one sgemm, then ``sin(w0 * .)`` in place."""

    def __init__(self, config: NeurcompConfig, arrays: Mapping[str, np.ndarray]) -> None:
        super().__init__(config, arrays)
        self.omega0 = F32(config.omega0)
        self.scale = np.asarray(config.scale, dtype=F32)

        def layer(name: str) -> Tuple[np.ndarray, np.ndarray]:
            return (np.ascontiguousarray(arrays[name + ".weight"].T, dtype=F32),
                    np.ascontiguousarray(arrays[name + ".bias"], dtype=F32))

        self.first = layer("first")
        nb = config.residual_blocks
        # (linear_1, linear_2, a_i, c_i): block 0 takes h as is, later ones halve it; the
        # last halves its output (spec/arch/neurcomp.md §3).
        self.blocks = [(layer(f"blocks.{i}.linear_1"), layer(f"blocks.{i}.linear_2"),
                        F32(1.0 if i == 0 else 0.5), F32(0.5 if i == nb - 1 else 1.0))
                       for i in range(nb)]
        self.last = layer("last")

    def _sine(self, x: np.ndarray, wb: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """``sin(w0 * (x @ W^T + b))`` in the product's buffer."""
        y = x @ wb[0]
        y += wb[1]
        y *= self.omega0
        return np.sin(y, out=y)

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        h = self._sine(coords.astype(F32) * self.scale, self.first)
        for lin1, lin2, a, c in self.blocks:
            t = self._sine(h * a if a != 1 else h, lin1)
            h += self._sine(t, lin2)
            if c != 1:
                h *= c
        out = h @ self.last[0]
        out += self.last[1]
        return out[:, 0]


register_numpy(NumpyArchitecture("neurcomp", NeurcompConfig, NeurcompNumpy, DESCRIPTION))
