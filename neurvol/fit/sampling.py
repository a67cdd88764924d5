"""Training samples: random voxel centres of the target volume."""
from __future__ import annotations

from typing import Tuple

import torch


class VoxelSampler:
    """Draws batches of voxel-centre coordinates and their target values.

    ``volume``: (D, H, W) float32 normalized target. Coordinates come back normalized to
    [-1, 1] in (z, y, x) order, matching ``VolumeModel.forward``.
    """

    def __init__(self, volume: torch.Tensor, generator: torch.Generator):
        if volume.ndim != 3:
            raise ValueError("volume must be 3-D")
        self.volume = volume.contiguous()
        self.flat = self.volume.reshape(-1)
        self.shape = tuple(volume.shape)
        self.generator = generator
        self._scale = 2.0 / (torch.tensor(self.shape, dtype=torch.float32) - 1.0)

    def sample(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(coords (batch, 3), values (batch,))``, uniformly over all voxels."""
        lin = torch.randint(0, self.flat.numel(), (batch,), generator=self.generator)
        return self.coords_of(lin), self.flat[lin]

    def sample_with_gradient(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(coords (batch, 3), values (batch,), gradients (batch, 3))``: as :meth:`sample`
        (same random stream) plus the target's gradient at those voxels (:meth:`gradient_of`)."""
        lin = torch.randint(0, self.flat.numel(), (batch,), generator=self.generator)
        return self.coords_of(lin), self.flat[lin], self.gradient_of(lin)

    def gradient_of(self, lin: torch.Tensor) -> torch.Tensor:
        """Finite-difference gradient ``(d/dz, d/dy, d/dx)`` of the volume at flat voxel
        indices, per unit of *normalized* coordinate: central differences inside, one-sided
        at the faces (as neurcomp's clamped differences), 0 along an axis of length 1."""
        strides = (self.shape[1] * self.shape[2], self.shape[2], 1)
        out = torch.zeros(lin.shape[0], 3, dtype=self.flat.dtype)
        for a, (n, st) in enumerate(zip(self.shape, strides)):
            if n < 2:
                continue
            i = (lin // st) % n
            lo = torch.clamp(i - 1, min=0)
            hi = torch.clamp(i + 1, max=n - 1)
            diff = self.flat[lin + (hi - i) * st] - self.flat[lin + (lo - i) * st]
            # normalized spacing between voxel centres is 2 / (n - 1)
            out[:, a] = diff * ((n - 1) / 2.0) / (hi - lo).to(diff.dtype)
        return out

    def coords_of(self, lin: torch.Tensor) -> torch.Tensor:
        """Normalized (z, y, x) coordinates of flat voxel indices."""
        _, h, w = self.shape
        zyx = torch.stack([lin // (h * w), (lin // w) % h, lin % w], dim=1).float()
        return zyx * self._scale - 1.0
