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

Predicting from the grid's own values makes every pass independent of the others, so the
residuals are a few strided slice expressions per pass over the grid itself: no operator
to build or keep (a sparse one costs over a hundred bytes per grid value), and the
gradient is the same slices accumulated backwards into one buffer.
"""
from __future__ import annotations

import math
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

import torch

from ..compress.interp import prediction_passes
from .trainer import Regularizer

#: Fraction of the fit's steps before the penalty starts.
START = 0.3
#: The penalty is applied at every this many steps, times this many (the same mean
#: gradient; each application is a pass over every grid and back).
PENALTY_EVERY = 2
#: Decay of the running mean of the data loss that scales the penalty.
LOSS_DECAY = 0.98

#: The interp stencil, written as corrections of the nearest-neighbour residual
#: ``t - E[j]``: linear ``(E[j] + E[j+1]) / 2`` is ``E[j] + LINEAR x (E[j+1] - E[j])``, and
#: cubic ``(9 (E[j] + E[j+1]) - (E[j-1] + E[j+2])) / 16`` is the linear prediction plus
#: ``CUBIC x ((E[j] + E[j+1]) - (E[j-1] + E[j+2]))``.
LINEAR = 0.5
CUBIC = 1.0 / 16.0


class _Pass(NamedTuple):
    """One prediction pass over a grid: its view (``sel``), the array axis it predicts
    along, its level ``h``, the shape of its predicted points, and how many points it
    predicts (``k``), have a right neighbour (``j < kl``) and are predicted cubically
    (``1 <= j < kc``)."""

    sel: Tuple[slice, ...]
    ax: int
    h: int
    shape: Tuple[int, ...]
    k: int
    kl: int
    kc: int


def _passes(shape: Tuple[int, ...]) -> List[_Pass]:
    """The passes of :func:`neurvol.compress.interp.prediction_passes` for a grid of
    ``shape``, in stream order."""
    out = []
    for axis, h, sel in prediction_passes(shape):
        ax = len(shape) - 3 + axis
        points = [len(range(n)[s]) for n, s in zip(shape, sel)]
        k = points[ax] = len(range(h, shape[ax], 2 * h))
        m = len(range(0, shape[ax], 2 * h))
        out.append(_Pass(sel, ax, h, tuple(points), k, min(k, m - 1), min(k, m - 2)))
    return out


def _anchor(ndim: int) -> Tuple[slice, ...]:
    return (slice(None),) * (ndim - 3) + (slice(0, 1),) * 3


class _GridViews(NamedTuple):
    """Views of one pass into a grid-shaped tensor: the predicted points ``t`` (odd
    multiples of ``h`` along the pass's axis), ``E[0:k]`` (their left neighbours, at
    multiples of ``2h``), ``(E[0:kl], E[1:kl+1])`` for the linear correction and
    ``(E[0:kc-1], ..., E[3:kc+2])`` for the cubic one (None where no point has it)."""

    t: torch.Tensor
    left: torch.Tensor
    linear: Optional[Tuple[torch.Tensor, torch.Tensor]]
    cubic: Optional[Tuple[torch.Tensor, ...]]


def _grid_views(x: torch.Tensor, p: _Pass) -> _GridViews:
    v = x[p.sel]
    lead = (slice(None),) * p.ax
    e = v[lead + (slice(0, None, 2 * p.h),)]
    c = p.kc - 1
    return _GridViews(
        v[lead + (slice(p.h, None, 2 * p.h),)], e.narrow(p.ax, 0, p.k),
        (e.narrow(p.ax, 0, p.kl), e.narrow(p.ax, 1, p.kl)) if p.kl > 0 else None,
        tuple(e.narrow(p.ax, i, c) for i in range(4)) if c > 0 else None)


class _StreamViews(NamedTuple):
    """Views of one pass into a flat stream-order vector: its residuals (the predicted
    points' shape) and their linear (``j < kl``) and cubic (``1 <= j < kc``) parts."""

    r: torch.Tensor
    linear: Optional[torch.Tensor]
    cubic: Optional[torch.Tensor]


def _stream_views(flat: torch.Tensor, shape: Tuple[int, ...], passes: List[_Pass]
                  ) -> Tuple[torch.Tensor, List[_StreamViews]]:
    """The anchor's view (the grid's anchor shape) and every pass's views of ``flat``."""
    lead = math.prod(shape[:-3])
    views, off = [], lead
    for p in passes:
        n = math.prod(p.shape)
        r = flat[off:off + n].view(p.shape)
        off += n
        views.append(_StreamViews(r, r.narrow(p.ax, 0, p.kl) if p.kl > 0 else None,
                                  r.narrow(p.ax, 1, p.kc - 1) if p.kc > 1 else None))
    return flat[:lead].view(shape[:-3] + (1, 1, 1)), views


class ResidualOperator:
    """The residuals of grids of one shape (``(..., D, H, W)``) from the interp coder's
    predictions made from the grid's own values, in the coder's stream order (the anchor,
    then pass by pass, each pass's points in C order), differentiable: ``op(grid)``.

    Each pass's residuals are ``t - E[j]``, corrected to the linear and the cubic
    prediction where they apply; the gradient runs the same slices backwards. The views
    of the grid, of the residual vector and of the gradient are made once and reused (the
    fit applies the operator to the same parameter every step, and a small grid's cost is
    the number of torch calls): two grid-sized buffers, no operator."""

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(int(n) for n in shape)
        self.passes = _passes(self.shape)
        self._key: Optional[Tuple[Any, ...]] = None

    def _bind(self, grid: torch.Tensor) -> None:
        """(Re)makes the views when ``grid`` is a new tensor (a first call, or the fit
        moved the model to its device)."""
        if tuple(grid.shape) != self.shape:
            raise ValueError(f"a residual operator of grids {self.shape} got {tuple(grid.shape)}")
        key = (grid.data_ptr(), grid.device, grid.dtype, grid.stride())
        if key == self._key:
            return
        x = grid.detach()
        self.out = torch.empty(grid.numel(), dtype=grid.dtype, device=grid.device)
        self.grad = torch.empty_like(x, memory_format=torch.contiguous_format)
        anchor = _anchor(grid.dim())
        self.x_anchor, self.x_views = x[anchor], [_grid_views(x, p) for p in self.passes]
        self.g_anchor, self.g_views = self.grad[anchor], [_grid_views(self.grad, p)
                                                           for p in self.passes]
        self.out_anchor, self.out_views = _stream_views(self.out, self.shape, self.passes)
        self._key = key

    def release(self) -> None:
        """Drop the buffers and views (made anew at the next call: every value of them is
        written before it is read)."""
        for name in ("out", "grad", "x_anchor", "x_views", "g_anchor", "g_views",
                     "out_anchor", "out_views"):
            self.__dict__.pop(name, None)
        self._key = None

    def __call__(self, grid: torch.Tensor) -> torch.Tensor:
        self._bind(grid)
        return _ApplyResiduals.apply(grid, self)

    def l1(self, grid: torch.Tensor) -> torch.Tensor:
        """``self(grid).abs().sum()``, differentiable, with fewer grid-sized tensors."""
        self._bind(grid)
        return _ResidualL1.apply(grid, self)

    def forward(self) -> torch.Tensor:
        """The bound grid's residuals, in ``self.out``."""
        self.out_anchor.copy_(self.x_anchor)
        for x, o in zip(self.x_views, self.out_views):
            # In place, term by term: no temporaries the size of a pass.
            torch.sub(x.t, x.left, out=o.r)
            if x.linear is not None:
                o.linear.sub_(x.linear[1], alpha=LINEAR).add_(x.linear[0], alpha=LINEAR)
            if x.cubic is not None:
                e0, e1, e2, e3 = x.cubic
                o.cubic.sub_(e1, alpha=CUBIC).sub_(e2, alpha=CUBIC)
                o.cubic.add_(e0, alpha=CUBIC).add_(e3, alpha=CUBIC)
        return self.out

    def transpose(self, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The operator's transpose applied to ``g`` (a stream-order vector; None: what
        ``self.out`` holds), in ``self.grad``."""
        if g is not None:
            self.out.copy_(g)
        self.grad.zero_()
        self.g_anchor.copy_(self.out_anchor)
        for x, o in zip(self.g_views, self.out_views):
            x.t.add_(o.r)
            x.left.sub_(o.r)
            if x.linear is not None:
                x.linear[0].add_(o.linear, alpha=LINEAR)
                x.linear[1].sub_(o.linear, alpha=LINEAR)
            if x.cubic is not None:
                e0, e1, e2, e3 = x.cubic
                e1.sub_(o.cubic, alpha=CUBIC)
                e2.sub_(o.cubic, alpha=CUBIC)
                e0.add_(o.cubic, alpha=CUBIC)
                e3.add_(o.cubic, alpha=CUBIC)
        return self.grad


class _ApplyResiduals(torch.autograd.Function):
    """``op(grid)`` with the gradient ``op.T @ g``. The operator's buffers are reused
    from call to call, so both directions return copies."""

    @staticmethod
    def forward(ctx, grid, op):  # type: ignore[override]
        ctx.op = op
        return op.forward().clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return ctx.op.transpose(g).clone(), None


class _ResidualL1(torch.autograd.Function):
    """``sum |op(grid)|``, its residuals and their signs kept in the operator's own
    buffer: a step of the fit allocates one grid-sized tensor for the penalty (the
    gradient it returns) instead of four. The buffer is saved for the backward, so a
    second forward before it is caught (torch's in-place check), not silently used."""

    @staticmethod
    def forward(ctx, grid, op):  # type: ignore[override]
        ctx.op = op
        out = op.forward()
        ctx.save_for_backward(out)
        return out.abs().sum()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        torch.sign(out, out=out)
        # (``out`` is no longer the operator's buffer if it was bound to another tensor
        # since: the transpose needs only the signs.)
        return ctx.op.transpose(None if out is ctx.op.out else out).mul(g), None


def interp_residuals(grid: torch.Tensor) -> torch.Tensor:
    """Residuals of ``grid`` (``(..., D, H, W)``) from the interp coder's predictions (see
    :class:`ResidualOperator`), differentiable in ``grid``."""
    return ResidualOperator(grid.shape)(grid)


class GridRate(Regularizer):
    """``weight x running MSE x mean |interp residual|`` of ``grids``, from ``START`` of
    ``steps`` on (see the module docstring), applied at every :data:`PENALTY_EVERY`-th
    step at that many times its weight."""

    def __init__(self, grids: Sequence[torch.Tensor], weight: float, steps: int):
        super().__init__()
        self.grids = list(grids)
        self.ops = [ResidualOperator(g.shape) for g in self.grids]
        self.values = sum(g.numel() for g in self.grids)
        self.weight = float(weight)
        self.start = int(START * steps)
        self.step = 0
        self.loss = None

    def penalty(self, mse: torch.Tensor) -> torch.Tensor:
        # A tensor, not a float: no device sync per step on a GPU.
        mse = mse.detach()
        self.loss = mse if self.loss is None else LOSS_DECAY * self.loss + (1 - LOSS_DECAY) * mse
        if self.step < self.start or not self.grids or (self.step - self.start) % PENALTY_EVERY:
            return mse.new_zeros(())
        l1 = sum(op.l1(g) for op, g in zip(self.ops, self.grids)) / self.values
        return (self.weight * PENALTY_EVERY * self.loss) * l1

    def after_step(self) -> None:
        self.step += 1

    def release_buffers(self) -> None:
        for op in self.ops:
            op.release()
