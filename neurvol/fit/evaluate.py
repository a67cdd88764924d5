"""A model's error on the voxels it was fitted to, as the reader evaluates them."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch


def model_sse(model: torch.nn.Module, target: np.ndarray,
              core: Optional[Sequence[Tuple[int, int]]] = None) -> Tuple[float, int]:
    """Sum of squared errors of ``model`` (on the CPU) against ``target`` (the normalized
    volume, values in [0, 1]) over the voxels of ``core`` (``((z0, z1), (y0, y1), (x0,
    x1))``, default: all), and their count. Values are clamped to [0, 1] as the reader
    clamps them; one z slice at a time, so memory stays one slice."""
    shape = target.shape
    if core is None:
        core = tuple((0, n) for n in shape)
    axes = [np.arange(a, b, dtype=np.float64) * (2.0 / (n - 1)) - 1.0 if n > 1
            else np.zeros(b - a) for (a, b), n in zip(core, shape)]
    sub = target[tuple(slice(a, b) for a, b in core)]
    yy, xx = np.meshgrid(axes[1], axes[2], indexing="ij")
    sse = 0.0
    with torch.inference_mode():
        for z in range(sub.shape[0]):
            pts = np.stack([np.full(yy.size, axes[0][z]), yy.ravel(), xx.ravel()], axis=1)
            pred = model(torch.from_numpy(pts.astype(np.float32))).float().numpy()
            err = (np.clip(pred, 0.0, 1.0) - sub[z].ravel()).astype(np.float64)
            sse += float(np.dot(err, err))
    return sse, int(sub.size)
