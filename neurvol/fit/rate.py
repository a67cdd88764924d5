"""Rate-aware fitting of feature grids: a penalty on what the interp coder will store.

The interp coder (:mod:`neurvol.compress.interp`) stores each grid value as its residual
from a cubic / linear interpolation of coarser, already coded values, quantized to a step
the size search picks. Its bytes grow with the residuals' magnitudes, so a model fitted
without regard to them can need a coarse step, and then loses much of its quality in the
file. :class:`GridRate` adds ``weight x running MSE x mean |residual|`` to the loss: an L1
rate proxy (residuals near Laplacian, whose entropy grows with their mean magnitude),
weighted by the data loss so that the same ``weight`` suits volumes fitted to 25 or to 50
dB (the slope of distortion against rate is proportional to the distortion). It switches
on after ``START`` of the steps, once the fit has found the volume's structure, and the
residuals are taken against predictions from the float values, not the decoder's
reconstructed ones (the same up to the quantization error).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..compress.interp import prediction_passes
from .trainer import Regularizer

#: Fraction of the fit's steps before the penalty starts.
START = 0.3
#: Decay of the running mean of the data loss that scales the penalty.
LOSS_DECAY = 0.98


def interp_residuals(grid: torch.Tensor) -> torch.Tensor:
    """Residuals of ``grid`` (``(..., D, H, W)``) from the interp coder's predictions, in
    the coder's stream order, predicted from ``grid``'s own values (differentiable)."""
    anchor = grid[(Ellipsis, slice(0, 1), slice(0, 1), slice(0, 1))]
    out = [anchor.reshape(-1)]
    for axis, h, sel in prediction_passes(tuple(grid.shape)):
        view = grid[sel]
        ax = view.ndim - 3 + axis
        n = view.shape[ax]
        p = torch.arange(h, n, 2 * h, device=grid.device)

        def at(idx: torch.Tensor) -> torch.Tensor:
            return view.index_select(ax, idx.clamp(0, n - 1))

        shape = [1] * view.ndim
        shape[ax] = p.numel()
        cubic = ((p - 3 * h >= 0) & (p + 3 * h < n)).view(shape)
        linear = (p + h < n).view(shape)
        a, b, c, d = at(p - 3 * h), at(p - h), at(p + h), at(p + 3 * h)
        pred = torch.where(cubic, (9.0 * (b + c) - (a + d)) / 16.0,
                           torch.where(linear, (b + c) / 2.0, b))
        out.append((view.index_select(ax, p) - pred).reshape(-1))
    return torch.cat(out)


class GridRate(Regularizer):
    """``weight x running MSE x mean |interp residual|`` of ``grids``, from ``START`` of
    ``steps`` on (see the module docstring)."""

    def __init__(self, grids: Sequence[torch.Tensor], weight: float, steps: int):
        super().__init__()
        self.grids = list(grids)
        self.weight = float(weight)
        self.start = int(START * steps)
        self.step = 0
        self.loss = None

    def penalty(self, mse: torch.Tensor) -> torch.Tensor:
        # A tensor, not a float: no device sync per step on a GPU.
        mse = mse.detach()
        self.loss = mse if self.loss is None else LOSS_DECAY * self.loss + (1 - LOSS_DECAY) * mse
        if self.step < self.start or not self.grids:
            return mse.new_zeros(())
        l1 = torch.cat([interp_residuals(g).abs() for g in self.grids]).mean()
        return (self.weight * self.loss) * l1

    def after_step(self) -> None:
        self.step += 1
