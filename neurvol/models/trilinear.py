"""Trilinear lookup in batches of small 3-D grids through torch's 2-D sampler.

``F.grid_sample`` on 5-D input (trilinear) runs a scalar loop on the CPU, while the 4-D
(bilinear) kernel is vectorized and several times faster per tap. A 3-D
grid ``(D, H, W)`` is therefore laid out as a 2-D atlas: its z-slices stacked along H,
each followed by one zero row, with a zero slice before the first and after the last,
and with slice ``k + 1`` stored as extra channels beside slice ``k``. One bilinear sample
at slice ``z0`` then returns both slices a trilinear sample needs, and a lerp along z
finishes it. The zero rows and slices make the result equal to trilinear interpolation
with zero padding (``padding_mode="zeros"``, ``align_corners=True``) up to float32
rounding of the atlas row coordinate. Differentiable in the grid values and the
coordinates, like ``grid_sample``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def slice_atlas(grids: torch.Tensor) -> torch.Tensor:
    """``(M, C, D, H, W)`` -> ``(M, 2C, (D + 1) * (H + 1), W)``: the 2-D layout
    :func:`trilinear_zeros` samples (channels ``C..2C-1`` hold the next slice).

    Atlas slot ``s`` (``D + 1`` of them, each ``H`` rows and one zero row) holds slice
    ``s - 1`` in channels ``0..C-1`` (zeros at ``s = 0``) and slice ``s`` in channels
    ``C..2C-1`` (zeros at ``s = D``). Built in place, its gradient summed straight from
    the two halves: a fit builds it every step, and the padded copy and per-half
    zero-filled gradients of a pad-and-concatenate (the same values, the same sums) would
    cost three more grid-sized buffers a step."""
    return _SliceAtlas.apply(grids)


class _SliceAtlas(torch.autograd.Function):
    """:func:`slice_atlas`; the gradient of slice ``k`` is the atlas gradient at slot
    ``k + 1`` (channels ``0..C-1``) plus that at slot ``k`` (channels ``C..2C-1``)."""

    @staticmethod
    def forward(ctx, grids):  # type: ignore[override]
        m, c, d, h, w = grids.shape
        ctx.dims = (c, d, h)
        atlas = grids.new_zeros((m, 2 * c, d + 1, h + 1, w))
        atlas[:, :c, 1:, :h] = grids
        atlas[:, c:, :d, :h] = grids
        return atlas.view(m, 2 * c, (d + 1) * (h + 1), w)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        c, d, h = ctx.dims
        g = g.reshape(g.shape[0], 2 * c, d + 1, h + 1, g.shape[-1])
        return g[:, :c, 1:, :h] + g[:, c:, :d, :h]


def trilinear_zeros(grids: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Sample ``grids (M, C, D, H, W)`` at ``local (M, N, 3)`` -> ``(M, C, N)``.

    ``local`` holds each grid's own points as (x, y, z) in ``[-1, 1]`` with -1 / +1 at the
    first / last vertex (``align_corners=True``); vertices outside the grid count as 0.
    Equals ``F.grid_sample(grids, local.view(M, 1, 1, N, 3), padding_mode="zeros",
    align_corners=True).view(M, C, N)``.
    """
    (ys, yo), (zs, zo) = atlas_axes(grids.shape)
    ya = local[..., 1] * ys + yo
    uz = local[..., 2] * zs + zo
    return sample_atlas(slice_atlas(grids), grids.shape, local[..., 0], ya, uz)


def atlas_axes(shape: Sequence[int]) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """``((ys, yo), (zs, zo))`` for grids of ``shape (M, C, D, H, W)``: a local y, z in
    ``[-1, 1]`` maps to the atlas row coordinate of its point in slice 0, ``ya = y * ys +
    yo`` (normalized over the atlas height), and to the z vertex index ``uz = z * zs +
    zo``: the coordinates :func:`sample_atlas` takes (affine, so callers that compute
    local coordinates by an affine map can fold these in)."""
    _, _, d, h, _ = shape
    rows = h + 1
    scale = 2.0 / ((d + 1) * rows - 1)                 # atlas rows -> normalized y
    # Slice 0 sits at atlas slot 1 (slot 0 is the zero slice before the grid).
    half_h, half_d = 0.5 * (h - 1), 0.5 * (d - 1)
    return (half_h * scale, (half_h + rows) * scale - 1.0), (half_d, half_d)


def sample_atlas(atlas: torch.Tensor, shape: Sequence[int], x: torch.Tensor,
                 ya: torch.Tensor, uz: torch.Tensor) -> torch.Tensor:
    """:func:`trilinear_zeros` on a prebuilt :func:`slice_atlas` of grids of ``shape``
    ``(M, C, D, H, W)``, at points given as ``(M, N)`` tensors: x normalized, ``ya`` and
    ``uz`` as :func:`atlas_axes` defines them."""
    m, c, d, h, _ = shape
    n = x.shape[1]
    rows = h + 1
    scale = 2.0 / ((d + 1) * rows - 1)
    top = rows * scale - 1.0                           # ya of vertex row 0 of slice 0
    # Beyond one cell outside the grid a sample is 0; clamping y and z there keeps it 0
    # (the taps land on zero rows / slices) instead of reaching a neighbouring slice.
    uz = uz.clamp(-1.0, float(d))
    z0 = uz.detach().floor()
    y = ya.clamp(top - scale, top + h * scale).add_(z0, alpha=rows * scale)
    pts = torch.stack([x, y], -1).unsqueeze(1)                  # (M, 1, N, 2)
    both = F.grid_sample(atlas, pts, mode="bilinear", padding_mode="zeros",
                         align_corners=True).view(m, 2 * c, n)
    return torch.lerp(both[:, :c], both[:, c:], (uz - z0).unsqueeze(1))
