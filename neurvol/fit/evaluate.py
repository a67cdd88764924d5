"""A model's error on the voxels it was fitted to, as the reader evaluates them."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

# Points per model call: the size the reader's CPU path uses (neural_volume.MODEL_CHUNK).
_CHUNK = 1 << 14


def model_sse(model: torch.nn.Module, target: np.ndarray,
              core: Optional[Sequence[Tuple[int, int]]] = None,
              valid: Optional[np.ndarray] = None, stride: int = 1) -> Tuple[float, int]:
    """Sum of squared errors of ``model`` (on the CPU) against ``target`` (the normalized
    volume, values in [0, 1]) over the voxels of ``core`` (``((z0, z1), (y0, y1), (x0,
    x1))``, default: all), and their count; ``valid`` (bool, ``target``'s shape): only
    those voxels count (a masked volume, spec/mask.md). ``stride``: every ``stride``-th
    voxel along each axis only (an estimate for ``stride**3`` times less work). Values are
    clamped to [0, 1] as the reader clamps them; one z slice at a time, so memory stays one
    slice.

    All of it runs in torch: numpy work between torch's parallel ops competes with
    torch's idle OpenMP threads, which spin for a while after each op."""
    shape = target.shape
    if core is None:
        core = tuple((0, n) for n in shape)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    axes = [torch.arange(a, b, stride, dtype=torch.float64) * (2.0 / (n - 1)) - 1.0 if n > 1
            else torch.zeros(len(range(a, b, stride)), dtype=torch.float64)
            for (a, b), n in zip(core, shape)]
    box = tuple(slice(a, b, stride) for a, b in core)
    sub = torch.from_numpy(np.ascontiguousarray(target[box]))
    keep = None if valid is None else torch.from_numpy(np.ascontiguousarray(valid[box]))
    yy, xx = torch.meshgrid(axes[1].float(), axes[2].float(), indexing="ij")
    plane = torch.stack([torch.zeros_like(yy), yy, xx], -1).reshape(-1, 3)
    sse = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        for z in range(sub.shape[0]):
            plane[:, 0] = float(axes[0][z])
            values = sub[z].reshape(-1)
            for s in range(0, plane.shape[0], _CHUNK):
                pred = model(plane[s:s + _CHUNK]).float()
                err = pred.clamp_(0.0, 1.0).sub_(values[s:s + _CHUNK]).double()
                if keep is not None:
                    err = err[keep[z].reshape(-1)[s:s + _CHUNK]]
                sse += err.dot(err)
    return float(sse), int(sub.numel() if keep is None else keep.sum())
