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

import math
import warnings
from typing import Sequence

import numpy as np
import torch

from ..compress.interp import prediction_passes
from .trainer import Regularizer

#: Fraction of the fit's steps before the penalty starts.
START = 0.3
#: Decay of the running mean of the data loss that scales the penalty.
LOSS_DECAY = 0.98


#: A row's neighbour offsets (in units of the pass's ``h``) in ascending column order,
#: with their weights where the point is predicted cubically, linearly, or by its left
#: neighbour alone (the interp coder's stencil).
_STENCIL = ((-3, 1 / 16, 0.0, 0.0), (-1, -9 / 16, -0.5, -1.0), (0, 1.0, 1.0, 1.0),
            (1, -9 / 16, -0.5, 0.0), (3, 1 / 16, 0.0, 0.0))


def residual_csr(shape: Sequence[int]):
    """The sparse ``(N, N)`` matrix (``N = prod(shape)``) taking a flattened grid of
    ``shape`` (``(..., D, H, W)``) to its residuals from the interp coder's predictions,
    in the coder's stream order, predicted from the grid's own values (the predictions
    are linear, so one sparse product, and its transpose backwards, gives them all), and
    its transpose: CSR arrays ``(crow, col, values)`` (int64, int64, float32). Built
    straight in CSR order, without COO intermediates and their sorts (a fit's largest
    transient allocation otherwise): each row's columns come out ascending (offsets in
    ascending order, no two alike), and rows in order."""
    shape = tuple(int(s) for s in shape)
    size = math.prod(shape)
    idx = np.arange(size).reshape(shape)
    anchor = idx[(Ellipsis, slice(0, 1), slice(0, 1), slice(0, 1))].reshape(-1)
    cols, vals, counts = [anchor], [np.ones(anchor.size, np.float32)], [np.ones(anchor.size, np.int64)]
    for axis, h, sel in prediction_passes(shape):
        view = idx[sel]
        ax = view.ndim - 3 + axis
        n = view.shape[ax]
        p = np.arange(h, n, 2 * h)
        mask_shape = [1] * view.ndim
        mask_shape[ax] = p.size
        cubic = ((p - 3 * h >= 0) & (p + 3 * h < n)).reshape(mask_shape)
        linear = (p + h < n).reshape(mask_shape) & ~cubic
        rows = np.take(view, p, axis=ax).size
        w = np.empty((rows, len(_STENCIL)), np.float32)
        c = np.empty((rows, len(_STENCIL)), np.int64)
        ones = np.ones(np.take(view, p, axis=ax).shape, np.float32)
        for k, (off, wc, wl, wn) in enumerate(_STENCIL):
            w[:, k] = (np.where(cubic, wc, np.where(linear, wl, wn)) * ones).reshape(-1)
            c[:, k] = np.take(view, np.clip(p + off * h, 0, n - 1), axis=ax).reshape(-1)
        keep = w != 0
        counts.append(keep.sum(axis=1))
        cols.append(c[keep])
        vals.append(w[keep])
        del w, c, keep
    col = np.concatenate(cols)
    del cols
    val = np.concatenate(vals)
    del vals
    crow = np.zeros(size + 1, np.int64)
    np.cumsum(np.concatenate(counts), out=crow[1:])
    # The transpose: entries ordered by column, then row (a stable sort of the row-ordered
    # entries by column).
    order = np.argsort(col, kind="stable")
    row_of = np.repeat(np.arange(size, dtype=np.int64), np.diff(crow))
    col_t = row_of[order]
    del row_of
    val_t = val[order]
    crow_t = np.zeros(size + 1, np.int64)
    np.cumsum(np.bincount(col, minlength=size), out=crow_t[1:])
    del order
    return (crow, col, val), (crow_t, col_t, val_t)


class _SparseApply(torch.autograd.Function):
    """``op @ x`` with the gradient ``op.T @ g``, both as CSR products (torch's own sparse
    backward is much slower for this operator)."""

    @staticmethod
    def forward(ctx, x, op, op_t):  # type: ignore[override]
        ctx.op_t = op_t
        return op @ x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return ctx.op_t @ grad, None, None


class ResidualOperator:
    """:func:`residual_csr` for grids of one shape, ready to apply (on the grid's device
    and dtype)."""

    def __init__(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype):
        size = math.prod(int(n) for n in shape)
        with warnings.catch_warnings():     # torch's "sparse CSR is in beta" notice
            warnings.simplefilter("ignore", UserWarning)
            self.op, self.op_t = (
                torch.sparse_csr_tensor(*(torch.from_numpy(a) for a in arrays), (size, size))
                .to(device=device, dtype=dtype)
                for arrays in residual_csr(shape))

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        if self.op.device != grid.device:   # the model moved (fit moves it to its device)
            self.op, self.op_t = self.op.to(grid.device), self.op_t.to(grid.device)
        return _SparseApply.apply(grid.reshape(-1, 1), self.op, self.op_t).reshape(-1)


def interp_residuals(grid: torch.Tensor) -> torch.Tensor:
    """Residuals of ``grid`` (``(..., D, H, W)``) from the interp coder's predictions (see
    :func:`residual_csr`), differentiable in ``grid``."""
    return ResidualOperator(grid.shape, grid.device, grid.dtype)(grid)


class GridRate(Regularizer):
    """``weight x running MSE x mean |interp residual|`` of ``grids``, from ``START`` of
    ``steps`` on (see the module docstring)."""

    def __init__(self, grids: Sequence[torch.Tensor], weight: float, steps: int):
        super().__init__()
        self.grids = list(grids)
        self.ops = [ResidualOperator(g.shape, g.device, g.dtype) for g in self.grids]
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
        l1 = torch.cat([op(g).abs() for op, g in zip(self.ops, self.grids)]).mean()
        return (self.weight * self.loss) * l1

    def after_step(self) -> None:
        self.step += 1
