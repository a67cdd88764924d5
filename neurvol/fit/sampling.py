"""Training samples: random voxel centres of the target volume."""
from __future__ import annotations

from typing import Optional, Tuple

import torch


class VoxelSampler:
    """Draws batches of voxel-centre coordinates and their target values.

    ``volume``: (D, H, W) float32 normalized target. Coordinates come back normalized to
    [-1, 1] in (z, y, x) order, matching ``VolumeModel.forward``. ``valid``: a bool
    tensor of the volume's shape for masked volumes (spec/mask.md): samples are drawn
    from the valid voxels only (None: every voxel; the same random stream as before).
    """

    def __init__(self, volume: torch.Tensor, generator: torch.Generator,
                 valid: Optional[torch.Tensor] = None):
        if volume.ndim != 3:
            raise ValueError("volume must be 3-D")
        self.volume = volume.contiguous()
        self.flat = self.volume.reshape(-1)
        self.shape = tuple(volume.shape)
        self.generator = generator
        self._scale = 2.0 / (torch.tensor(self.shape, dtype=torch.float32) - 1.0)
        self.valid: Optional[torch.Tensor] = None
        self._valid_index: Optional[torch.Tensor] = None
        if valid is not None:
            if tuple(valid.shape) != self.shape:
                raise ValueError("valid must have the volume's shape")
            self.valid = valid.reshape(-1).to(torch.bool)
            self._valid_index = torch.nonzero(self.valid).reshape(-1)
            if self._valid_index.numel() == 0:
                raise ValueError("valid selects no voxel")

    @property
    def voxels(self) -> int:
        """Number of voxels samples are drawn from (the valid ones of a masked volume)."""
        return self.flat.numel() if self._valid_index is None else self._valid_index.numel()

    def _draw(self, batch: int) -> torch.Tensor:
        """``batch`` flat indices, uniformly over the voxels samples come from."""
        if self._valid_index is None:
            return torch.randint(0, self.flat.numel(), (batch,), generator=self.generator)
        pick = torch.randint(0, self._valid_index.numel(), (batch,), generator=self.generator)
        return self._valid_index.index_select(0, pick)

    def sample(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(coords (batch, 3), values (batch,))``, uniformly over all (valid) voxels."""
        lin = self._draw(batch)
        return self.coords_of(lin), self.flat.index_select(0, lin)

    def sample_with_gradient(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(coords (batch, 3), values (batch,), gradients (batch, 3))``: as :meth:`sample`
        (same random stream) plus the target's gradient at those voxels (:meth:`gradient_of`)."""
        lin = self._draw(batch)
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


class ErrorSampler(VoxelSampler):
    """Samples more where the model errs, without changing what the loss estimates.

    The volume is cut into blocks of ``block``^3 voxels. Each batch is a fixed mixture:
    its first ``uniform`` fraction is drawn uniformly over all voxels (as
    :class:`VoxelSampler`, so a loss that needs an unbiased subset, e.g. amgsrn's density
    KL on the first 4096 points, can use the batch's head), the rest block by block in
    proportion to the square root of a running mean of each block's squared error
    (systematic resampling), then uniformly inside the block. Every sample carries the
    balance-heuristic weight ``u(x) / p(x)``, ``p`` the mixture's density and ``u`` the
    uniform one, so the weighted MSE is an unbiased estimate of the volume's MSE: the same
    objective (PSNR over every voxel), with less gradient noise where the error lives. The
    block errors start at each block's variance (the error of a constant fit) and follow
    the batches through :meth:`record_error`. Defaults (4^3 blocks, a quarter uniform):
    BENCHMARKS.md, "error-driven sampling".
    """

    def __init__(self, volume: torch.Tensor, generator: torch.Generator, *,
                 block: int = 4, uniform: float = 0.25, decay: float = 0.98,
                 valid: Optional[torch.Tensor] = None):
        super().__init__(volume, generator, valid)
        if not 0 < uniform <= 1:
            raise ValueError("uniform must be a fraction in (0, 1]")
        self.uniform, self.decay, self.block = uniform, decay, block
        d, h, w = self.shape
        self.nblocks = tuple(-(-n // block) for n in self.shape)
        bz, by, bx = self.nblocks
        # Each block's first voxel and extent (edge blocks are cut by the volume).
        zs = torch.arange(bz) * block
        ys = torch.arange(by) * block
        xs = torch.arange(bx) * block
        z0, y0, x0 = (t.reshape(-1) for t in torch.meshgrid(zs, ys, xs, indexing="ij"))
        self._origin = torch.stack([z0, y0, x0], 1)
        self._extent = torch.stack([(d - z0).clamp(max=block), (h - y0).clamp(max=block),
                                    (w - x0).clamp(max=block)], 1).float()
        self._strides = torch.tensor([h * w, w, 1])
        self.count = self._extent.prod(1)
        # Each block's variance; the volume is padded (one copy) only when the blocks do
        # not tile it.
        if (bz * block, by * block, bx * block) == self.shape:
            vol = self.volume
        else:
            vol = torch.zeros(bz * block, by * block, bx * block, dtype=self.volume.dtype)
            vol[:d, :h, :w] = self.volume

        def per_block(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(bz, block, by, block, bx, block).sum((1, 3, 5)).reshape(-1)

        mean = per_block(vol) / self.count
        var = (per_block(vol.square()) / self.count - mean * mean).clamp(min=0)
        # Masked volumes: a block draws in proportion to its valid voxels (a block with
        # none never), and invalid draws weigh 0, so the weighted MSE estimates the MSE
        # over the valid voxels.
        self._valid_count = self.count
        if self.valid is not None:
            v = torch.zeros(bz * block, by * block, bx * block, dtype=self.volume.dtype)
            v[:d, :h, :w] = self.valid.reshape(self.shape).to(v.dtype)
            self._valid_count = per_block(v)
        self.err_sum = var + 1e-12
        self.err_weight = torch.ones_like(var)
        self._n = float(self.voxels)

    def sample_weighted(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(coords, values, weights, blocks)``: the mixture's samples, their weights
        ``u / p`` (mean about 1) and block indices (for :meth:`record_error`)."""
        n_uniform = max(1, int(round(self.uniform * batch)))
        lin_u = self._draw(n_uniform)
        _, h, w = self.shape
        zyx_u = torch.stack([lin_u // (h * w), (lin_u // w) % h, lin_u % w], 1)
        q = self._block_probabilities()
        blocks_e = self._systematic(q, batch - n_uniform)
        zyx = torch.cat([zyx_u, self._voxel_in_block(blocks_e)])
        blocks = torch.cat([self._block_of(zyx_u), blocks_e])
        lin = (zyx * self._strides).sum(1)
        alpha = n_uniform / batch
        u = 1.0 / self._n
        # Mixture density per voxel of each block: alpha u + (1 - alpha) q_b / n_b.
        p_voxel = (q / self.count).mul_(1.0 - alpha).add_(alpha * u)
        weights = u / p_voxel.index_select(0, blocks)
        if self.valid is not None:
            weights = weights * self.valid.index_select(0, lin).to(weights.dtype)
        # index_select: cheaper than advanced indexing for these 1-D gathers.
        return (zyx.float().mul_(self._scale).sub_(1.0), self.flat.index_select(0, lin),
                weights, blocks)

    def record_error(self, blocks: torch.Tensor, sq_err: torch.Tensor,
                     counted: Optional[torch.Tensor] = None) -> None:
        """Fold one batch's squared errors into the blocks' running means; ``counted``
        (bool, per sample; default all): the samples that count (a masked volume's valid
        draws)."""
        err = sq_err.detach().to(self.err_sum)
        ones = torch.ones(blocks.shape[0], dtype=self.err_weight.dtype)
        if counted is not None:
            err = err * counted.to(err.dtype)
            ones = counted.to(ones.dtype)
        self.err_sum.mul_(self.decay).index_add_(0, blocks, err)
        self.err_weight.mul_(self.decay).index_add_(0, blocks, ones)

    def _block_probabilities(self) -> torch.Tensor:
        mse = self.err_sum / self.err_weight.clamp(min=1e-12)
        q = mse.clamp(min=0).sqrt() * self._valid_count
        total = q.sum()
        return q / total if float(total) > 0 else self._valid_count / self._valid_count.sum()

    def _systematic(self, q: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` block indices drawn by systematic resampling from ``q`` (one uniform offset,
        ``n`` evenly spaced positions on the CDF): each block gets ``n q_b`` samples up to
        rounding, unbiased, with less variance than independent draws and a cost linear in
        the blocks (``torch.multinomial`` took about half of a training step's time)."""
        cdf = torch.cumsum(q.double(), 0)
        cdf = cdf / cdf[-1]
        offset = float(torch.rand((), generator=self.generator))
        edges = torch.floor(cdf * n + offset).long()
        counts = torch.diff(edges, prepend=edges.new_zeros(1))
        return torch.repeat_interleave(torch.arange(q.numel()), counts, output_size=n)

    def _block_of(self, zyx: torch.Tensor) -> torch.Tensor:
        """Block index of voxels given as ``(n, 3)`` integer z, y, x."""
        _, by, bx = self.nblocks
        zb, yb, xb = (zyx // self.block).unbind(1)
        return (zb * by + yb) * bx + xb

    def _voxel_in_block(self, blocks: torch.Tensor) -> torch.Tensor:
        """A uniformly random voxel ``(n, 3)`` z, y, x inside each of ``blocks``."""
        r = torch.rand(blocks.shape[0], 3, generator=self.generator)
        return self._origin.index_select(0, blocks) + r.mul_(self._extent.index_select(0, blocks)).long()
