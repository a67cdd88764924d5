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

    def coords_of(self, lin: torch.Tensor) -> torch.Tensor:
        """Normalized (z, y, x) coordinates of flat voxel indices."""
        _, h, w = self.shape
        zyx = torch.stack([lin // (h * w), (lin // w) % h, lin % w], dim=1).float()
        return zyx * self._scale - 1.0
