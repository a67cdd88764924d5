"""AMGSRN: adaptively placed multi-grid SRN (Wurster et al., IEEE VIS 2023).

``M`` small dense feature grids ``(C, D', H', W')``, each seen through its own learnable
affine map ``local = A x + t`` from global normalized coords to the grid's local
``[-1, 1]^3`` (zero features outside a grid). The ``M * C`` features are concatenated and
decoded by a small ReLU MLP. Where the grids sit is steered by a *feature-density* loss:
the grids' summed flat-top Gaussian density is pulled (KL divergence) towards a target
density that is higher where the current reconstruction error is higher, so grids shrink
onto hard regions. The transforms start moving after a delay and are frozen before the
end, so the grids and the decoder fine-tune in place.

Departures from the paper, for short fits at small budgets (each is measured in
BENCHMARKS.md, "Architectures" and "the anchor grid"):

* a data-initialised residual, as fvsrn's: channel 0 of every grid starts as the data seen
  through that grid, and the coverage-weighted mean of channel 0 over the grids covering a
  point is added to the MLP output (the MLP learns the correction);
* placement before training: the transforms are first fitted, with the same density loss
  and no network, to a static target from the data (where a single coarse grid would err),
  so the grids start where they are needed instead of drifting there over many steps;
* the reconstruction loss also reaches the transforms (the paper samples the grids at
  coordinates detached from them): in a short fit, grids moved by the density loss alone
  end up with contents misaligned to their new place;
* an anchor grid (:data:`ANCHOR_GRIDS`, in models of :data:`ANCHOR_MIN_GRIDS` grids or
  more): grid 0's transform stays the identity, so the whole volume is always covered.
  The density loss can only pull a grid towards points it already covers, so with all
  grids adaptive, placement can leave parts of a volume to the MLP alone, where the fit
  then fails.

The evaluation math is normative in ``spec/arch/amgsrn.md``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, FrozenSet, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import NeurvolBudgetError, NeurvolInputError
from .adam import Adam
from .base import Architecture, VolumeModel, register
from .fvsrn import proportional_grid
from .mlp import make_mlp, mlp_param_count, run_mlp_columns
from .trilinear import atlas_axes, sample_atlas, slice_atlas
# The config (and the numpy evaluation readers use without torch) live in the torch-free half.
# DIRECT_MAX_POINTS: the most points evaluated without the vertex table (the numpy
# evaluation takes the same two paths).
from .numpy_eval.amgsrn import (COVERAGE_FLOOR, DIRECT_MAX_POINTS,  # noqa: F401
                                MAX_GRID_SIDE, MAX_GRIDS, MAX_WIDTH, AMGSRNConfig,
                                direct_corners)

# Training schedule of the transforms, as fractions of the fit's steps: they move only in
# [TRANSFORM_START, TRANSFORM_STOP) and are frozen before and after.
TRANSFORM_START = 0.05
TRANSFORM_STOP = 0.3
TRANSFORM_LR = 0.05       # transforms' lr as a multiple of the base lr (the paper's ratio)
GRID_LR = 3.0             # feature grids' lr as a multiple of the base lr (as fvsrn)
DENSITY_WEIGHT = 1e-3     # weight of the density KL next to the MSE (larger pulls grids
                          # away from where the reconstruction needs them)
DENSITY_BATCH = 4096      # points of each batch on which the density KL is estimated
INIT_NOISE = 0.05         # std of the noise added to the identity transforms (paper: 0.05)
# Grids whose transforms stay the identity, so no voxel is left to the MLP alone (see
# the module docstring; BENCHMARKS.md, "the anchor grid").
ANCHOR_GRIDS = 1
# ... in models of at least this many grids: an anchor takes 1/M of the grid capacity, too
# much where the budget buys only one or two grids.
ANCHOR_MIN_GRIDS = 4
# Placement before training: Adam steps on the density loss alone, against the target
# q ∝ E^PLACE_GAMMA (3/7: the density that minimises trilinear error ∝ h^4 under a fixed
# vertex count), E the squared error of the volume resampled at one grid's resolution.
PLACE_STEPS = 300
PLACE_GAMMA = 3.0 / 7.0
PLACE_LR = 1e-2
PLACE_BATCH = 4096
DEFAULT_GRIDS = 8         # fewer, larger grids fit better at small budgets than 16 or 32
MIN_GRID_VERTICES = 343   # the solver uses fewer grids rather than grids under 7^3
_CLAMP_LOCAL = 3.0        # |local| beyond which exp(-x^20 / 2) is exactly 0 in float32
# Attributes of the evaluation path's caches (derived from the parameters).
_EVAL_CACHES = frozenset({"_map_cache", "_map_key", "_table_cache", "_table_key"})


class AMGSRN(VolumeModel):
    """M affine-placed feature grids ``(M, C, D', H', W')`` + MLP, data-initialised residual.

    Tensors (state_dict order): ``grids`` (M, C, D', H', W'); ``transforms.{g}`` (3, 4) for
    g in 0..M-1, the map ``local = T[:, :3] @ (z, y, x) + T[:, 3]`` (one tensor per grid so
    each stays under the quantizer's 64-value threshold and is stored as float16);
    ``mlp.*`` as in fvsrn.
    """

    grid_tensors = frozenset({"grids"})

    def __init__(self, config: AMGSRNConfig):
        super().__init__()
        self.config = config
        m = config.grids
        self.grids = nn.Parameter(torch.empty(m, config.channels, *config.grid).uniform_(-1e-4, 1e-4))
        eye = torch.eye(3, 4)
        self.transforms = nn.ParameterList(
            [nn.Parameter(eye + INIT_NOISE * torch.randn(3, 4)) for _ in range(m)])
        with torch.no_grad():
            for t in self.anchors():
                t.copy_(eye)
                t.requires_grad_(False)
        self.mlp = make_mlp(m * config.channels, config.width, config.hidden_layers)
        with torch.no_grad():
            self.mlp[-1].weight.mul_(0.01)
            self.mlp[-1].bias.zero_()
        self._density_active = False

    def __deepcopy__(self, memo: Dict[int, Any]) -> "AMGSRN":
        """A deep copy without the evaluation caches (:meth:`_vertex_table`,
        :meth:`_vertex_map`): they are rebuilt from the parameters when the copy is
        evaluated, and the encoder copies models beside the one it codes (a cached vertex
        table is as large as the grids)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k not in _EVAL_CACHES}
        new.__setstate__(copy.deepcopy(state, memo))
        return new

    # ------------------------------------------------------------------ geometry
    def anchor_count(self) -> int:
        """How many of the first grids are anchors (:data:`ANCHOR_GRIDS`, none in models
        of fewer than :data:`ANCHOR_MIN_GRIDS` grids)."""
        return ANCHOR_GRIDS if self.config.grids >= ANCHOR_MIN_GRIDS else 0

    def anchors(self) -> List[nn.Parameter]:
        """The transforms that stay the identity."""
        return list(self.transforms)[:self.anchor_count()]

    def fixed_tensors(self) -> FrozenSet[str]:
        return frozenset(f"transforms.{g}" for g in range(self.anchor_count()))

    def adaptive_transforms(self) -> List[nn.Parameter]:
        """The transforms that placement and training move."""
        return list(self.transforms)[self.anchor_count():]

    def transform_matrix(self) -> torch.Tensor:
        """``(M, 3, 4)``: all grids' global -> local affine maps."""
        return torch.stack(list(self.transforms))

    def local_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """``coords (N, 3)`` global z,y,x -> ``(M, 3, N)``: each grid's local z, y, x as
        rows, one ``(3M, 3) x (3, N)`` product (rows are what the lookup takes)."""
        t = self.transform_matrix()
        m = t.shape[0]
        return torch.addmm(t[:, :, 3].reshape(3 * m, 1), t[:, :, :3].reshape(3 * m, 3),
                           coords.t()).view(m, 3, -1)

    def feature_density(self, local: torch.Tensor) -> torch.Tensor:
        """Summed flat-top Gaussian density of the grids at points given in local coords
        ``(M, 3, N)`` -> ``(N,)``: ``sum_g det(A_g) / (2 pi)^{3/2} exp(-sum_k l_k^20 / 2)``."""
        a = self.transform_matrix()[:, :, :3]
        coeff = torch.linalg.det(a) / (2.0 * math.pi) ** 1.5
        # Beyond |l| = 3 the exponential is exactly 0 in float32; clamping keeps l^20 finite
        # (an inf there would make a NaN gradient).
        lc = local.clamp(-_CLAMP_LOCAL, _CLAMP_LOCAL)
        # l^20 by squaring (5 multiplies): torch's pow is several times slower on CPU.
        l4 = (lc * lc).square()
        l20 = l4.square().square() * l4
        return (coeff[:, None] * torch.exp(-0.5 * l20.sum(1))).sum(0)

    # ------------------------------------------------------------------ training hooks
    def param_groups(self, base_lr: float):
        return [
            {"params": [self.grids], "lr": base_lr * GRID_LR},
            {"params": self.adaptive_transforms(), "lr": base_lr * TRANSFORM_LR},
            {"params": list(self.mlp.parameters()), "lr": base_lr},
        ]

    def init_from_volume(self, volume: torch.Tensor) -> None:
        """Place the grids where the data needs them (:meth:`place_grids`), then fill
        channel 0 of each grid with the data (:meth:`fill_grids`)."""
        if PLACE_STEPS > 0:
            self.place_grids(volume)
        self.fill_grids(volume)

    def place_grids(self, volume: torch.Tensor) -> None:
        """Fit the transforms to the static error-driven target (no network involved)."""
        gen = torch.Generator().manual_seed(4321)
        with torch.no_grad():
            down = F.interpolate(volume[None, None], size=self.config.grid, mode="trilinear",
                                 align_corners=True)
            up = F.interpolate(down, size=volume.shape, mode="trilinear", align_corners=True)
            q_map = ((volume - up[0, 0]) ** 2).reshape(-1) ** PLACE_GAMMA
            if not float(q_map.sum()) > 0:
                return
            shape = torch.tensor(volume.shape)
            scale = 2.0 / (shape.float() - 1.0)
        params = self.adaptive_transforms()
        was = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        # torch.optim.Adam's default on the CPU (single-tensor), without importing torch._dynamo.
        opt = Adam([{"params": params, "lr": PLACE_LR}], fused=False)
        h, w = volume.shape[1], volume.shape[2]
        for _ in range(PLACE_STEPS):
            lin = torch.randint(0, q_map.numel(), (PLACE_BATCH,), generator=gen)
            zyx = torch.stack([lin // (h * w), (lin // w) % h, lin % w], 1).float() * scale - 1.0
            q = q_map[lin]
            if not float(q.sum()) > 0:
                continue
            with torch.enable_grad():
                loss = self.density_kl(zyx, torch.log(q / q.sum() + 1e-30))
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
        for p, r in zip(params, was):
            p.grad = None
            p.requires_grad_(r)

    def fill_grids(self, volume: torch.Tensor) -> None:
        """Channel 0 of each grid := the data at that grid's vertices (trilinear, border)."""
        cfg = self.config
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            t = self.transform_matrix().to(volume.device)
            axes = [torch.linspace(-1.0, 1.0, n) for n in cfg.grid]
            local = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
            for g in range(cfg.grids):
                a, b = t[g, :, :3], t[g, :, 3]
                glob = torch.linalg.solve(a, (local - b).t()).t()        # (V, 3) z,y,x
                vals = F.grid_sample(
                    volume[None, None], glob.flip(-1).reshape(1, -1, 1, 1, 3),
                    mode="bilinear", padding_mode="border", align_corners=True)
                self.grids[g, 0] = vals.reshape(cfg.grid).to(self.grids)
            if cfg.channels > 1:
                noise = 0.01 * torch.randn(self.grids[:, 1:].shape, generator=gen)
                self.grids[:, 1:] = noise.to(self.grids)

    def on_step(self, step: int, total_steps: int) -> None:
        active = int(TRANSFORM_START * total_steps) <= step < int(TRANSFORM_STOP * total_steps)
        self._density_active = active
        for p in self.adaptive_transforms():
            p.requires_grad_(active)

    def extra_loss(self, coords: torch.Tensor, pred: torch.Tensor,
                   target: torch.Tensor) -> Optional[torch.Tensor]:
        if not self._density_active:
            return None
        # The KL is estimated on a random subset (the batch is in random order): the grids'
        # placement needs a few thousand points, not the whole batch (half the step's cost).
        n = DENSITY_BATCH
        return DENSITY_WEIGHT * self.density_loss(coords[:n], (pred[:n].detach() - target[:n]) ** 2)

    def density_loss(self, coords: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """KL(target || density) over a batch, with the paper's error-driven target.

        density p_i: the grids' density at the points, normalised to sum 1 over the batch
        (the normaliser held constant, as in the paper's code). target q_i ∝
        p_i^(mean(err)/err_i): above-average error raises the target, below-average lowers it.
        """
        logp = self._log_density(coords)
        with torch.no_grad():
            logq = logp * (err.mean() / (err + 1e-16))
            logq = logq - torch.logsumexp(logq, 0)
        return _kl(logq, logp)

    def density_kl(self, coords: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
        """KL(q || p) over a batch for a fixed target ``logq`` (log, normalised)."""
        return _kl(logq, self._log_density(coords))

    def _log_density(self, coords: torch.Tensor) -> torch.Tensor:
        dens = self.feature_density(self.local_coords(coords))
        return torch.log(dens / dens.sum().detach() + 1e-16)

    # ------------------------------------------------------------------ evaluation
    def features(self, local: torch.Tensor) -> torch.Tensor:
        """``(M, 3, N)`` local z,y,x -> ``(M * C, N)`` features, grid-major (grid g channel
        c in row g*C + c); trilinear, zero outside each grid (``align_corners=True``)."""
        shape = self.grids.shape
        (ys, yo), (zs, zo) = atlas_axes(shape)
        feats = sample_atlas(slice_atlas(self.grids), shape, local[:, 2],
                             local[:, 1] * ys + yo, local[:, 0] * zs + zo)     # (M, C, N)
        return feats.view(shape[0] * shape[1], local.shape[2])

    def coverage(self, local: torch.Tensor) -> torch.Tensor:
        """``(M, 3, N)`` local coords -> ``(M, N)``: the summed trilinear weight of each
        grid's in-range vertices (1 inside the grid, fading to 0 one cell outside it): per
        axis ``1 - h (|l| - 1)`` clamped to [0, 1], ``h = (n - 1) / 2`` vertices per unit."""
        half = (torch.tensor(self.config.grid, dtype=local.dtype, device=local.device) - 1) / 2
        beyond = (local.abs() - 1).clamp_(min=0).mul_(half[:, None])
        return beyond.neg_().add_(1).clamp_(min=0).prod(1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._evaluate(coords)
        m, c = self.config.grids, self.config.channels
        local = self.local_coords(coords)
        with torch.no_grad():
            cover = self.coverage(local)
        feats = _zero_outside(self.features(local).view(m, c, -1), cover)
        base = feats[:, 0].sum(0) / cover.sum(0).clamp_(min=COVERAGE_FLOOR)
        feats = feats.view(m * c, -1)
        if _hooked(self.mlp):
            return self.mlp(feats.t()).squeeze(-1) + base
        # Feature-major: the lookup's layout, no transpose copy, and every matmul of the
        # backward on contiguous (width, N) rows (several times cheaper on CPU).
        return run_mlp_columns(self.mlp, feats)[0] + base

    def _evaluate(self, coords: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without autograd (queries, decodes), with the lookup done as
        gathers: every grid is zero-padded by one vertex into one vertex-major table, and
        one ``(3M, 3) x (3, N)`` product gives every grid's continuous vertex coordinates
        ``u``, clamped to ``[-1, n]`` so that a point beyond one cell outside lands with
        weight 1 on a zero vertex (exactly 0, spec §3 step 2); the 8 corner rows are
        gathered by integer index and blended by lerps. (The atlas lookup of the training
        path takes its row as a float32 coordinate over the whole atlas, which errs by up
        to ~1e-4 of the range on grids of 20^3; integer rows do not.) The coverage is spec
        step 5 on the same ``u``; the MLP runs feature-major. ``neurvol/models/numpy_eval/
        amgsrn.py`` (the torch-free reader) takes the same steps."""
        cfg = self.config
        m, c, n = cfg.grids, cfg.channels, coords.shape[0]
        if (c == 1 and n <= DIRECT_MAX_POINTS and coords.device.type == "cpu"
                and coords.dtype == torch.float32 and not self._has_table()):
            return self._evaluate_direct(coords)
        table, offsets, strides = self._vertex_table()      # table (V, C), or (V,) for C = 1
        t = self._vertex_map(coords.dtype)
        u_all = torch.addmm(t[:, 3:], t[:, :3], coords.t()).view(3, m, n)
        rows = offsets.expand(m, n).clone()
        cover: Optional[torch.Tensor] = None
        fracs = []
        for a, (side, stride) in enumerate(zip(cfg.grid, strides)):
            u = u_all[a]                                                    # (M, N)
            h = 0.5 * (side - 1)
            # Spec step 5 per axis: clip(1 + h - |u - h|, 0, 1), h = (n - 1) / 2.
            w = (u - h).abs_().neg_().add_(h + 1.0).clamp_(0.0, 1.0)
            cover = w if cover is None else cover.mul_(w)
            u.clamp_(-1.0, float(side))
            i0 = u.floor().clamp_(max=side - 1)
            fracs.append(u.sub_(i0).reshape(-1))
            rows += i0.to(rows.dtype) * stride
        feats = _trilinear_rows(table, rows.reshape(-1), strides, fracs)   # (M * N, C)
        feats = feats.view(m, n, c).permute(0, 2, 1).reshape(m * c, n)
        assert cover is not None
        base = feats[::c].sum(0).div_(cover.sum(0).clamp_(min=COVERAGE_FLOOR))
        y = run_mlp_columns(self.mlp, feats)
        return y[0].add_(base)

    def _evaluate_direct(self, coords: torch.Tensor) -> torch.Tensor:
        """:meth:`_evaluate` of a one-channel model on the CPU without its vertex table,
        for a few points (:data:`DIRECT_MAX_POINTS`): the same values bit for bit.

        The eight corners of every point's cell in every grid are gathered from the grids
        themselves, an exact 0 where a corner lies outside its grid (the padded table's
        value there), by :func:`~.numpy_eval.amgsrn.direct_corners` with the coverage and
        the fractions: steps that only move, compare or round values once, so numpy (or
        its compiled kernel) gives torch's bits, at a fraction of torch's per-call cost
        on a few points. The steps whose bits depend on torch's kernels (the affine
        product, lerps, sums and the MLP) stay torch's, each on all the corner pairs it
        blends, in the table path's order."""
        cfg = self.config
        m, n = cfg.grids, coords.shape[0]
        t = self._vertex_map(coords.dtype)
        u = torch.addmm(t[:, 3:], t[:, :3], coords.t()).numpy().reshape(3, m, n)
        frac_np, cover_np, vals = direct_corners(u, cfg.grid,
                                                 self.grids.detach().numpy().reshape(-1))
        frac = torch.from_numpy(frac_np)
        cover = torch.from_numpy(cover_np)
        corners = torch.from_numpy(vals)
        along_x = corners[0].lerp(corners[1], frac[2])                      # (dy, dz, M, N)
        along_y = along_x[0].lerp(along_x[1], frac[1])                      # (dz, M, N)
        feats = along_y[0].lerp(along_y[1], frac[0])                        # (M, N)
        base = feats.sum(0).div_(cover.sum(0).clamp_(min=COVERAGE_FLOOR))
        y = run_mlp_columns(self.mlp, feats)
        return y[0].add_(base)

    def _has_table(self) -> bool:
        """Whether the vertex table of the current grids is built (:meth:`_vertex_table`)."""
        return getattr(self, "_table_key", None) == self._table_key_now()

    def _table_key_now(self) -> Tuple[int, int, torch.device]:
        return (self.grids.data_ptr(), self.grids._version, self.grids.device)

    def _vertex_map(self, dtype: torch.dtype) -> torch.Tensor:
        """``(3M, 4)`` in ``dtype``: the affine maps from global coordinates to each grid's
        continuous vertex coordinates ``u = (l + 1) / 2 * (n - 1)``, axis-major rows (all
        grids' z, then y, then x), folded in float64. Cached until a transform changes.
        (Folded in numpy: the same binary64 products and sums as torch's, in a handful of
        calls; the model is built per brick of a bricked file.)"""
        # The list's own dict: indexing a ParameterList costs a few Python calls a grid.
        transforms = list(self.transforms._parameters.values())
        key = (tuple((p.data_ptr(), p._version) for p in transforms), dtype)
        if getattr(self, "_map_key", None) != key:
            cfg = self.config
            t = torch.stack(transforms).detach().cpu().numpy().astype(np.float64)
            half = (np.asarray(cfg.grid, dtype=np.float64) - 1) / 2
            t = (t * half[None, :, None]).transpose(1, 0, 2)               # (3, M, 4)
            t[:, :, 3] += half[:, None]
            self._map_cache = torch.from_numpy(t.reshape(3 * cfg.grids, 4)).to(
                device=self.grids.device, dtype=dtype)
            self._map_key = key
        return self._map_cache

    def _vertex_table(self) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int, int]]:
        """``(table, offsets, strides)`` for :meth:`_evaluate`: the grids zero-padded by
        one vertex, vertex-major ``(M * (D'+2)(H'+2)(W'+2), C)``; the row of each grid's
        vertex (0, 0, 0), ``(M, 1)``; and the rows per vertex step along z, y, x. Cached
        until the grids change (torch bumps a tensor's version on every in-place write)."""
        key = self._table_key_now()
        if getattr(self, "_table_key", None) != key:
            m, c, d, h, w = self.grids.shape
            padded = F.pad(self.grids.detach(), (1, 1, 1, 1, 1, 1))
            table = padded.permute(0, 2, 3, 4, 1).reshape(-1, c).contiguous()
            if c == 1:
                table = table.view(-1)           # gathers of scalars: several times faster
            strides = ((h + 2) * (w + 2), w + 2, 1)
            # int32 rows where they fit: half the index traffic of int64.
            index = torch.int32 if table.shape[0] < 2 ** 31 else torch.int64
            offsets = (torch.arange(m, device=table.device) * ((d + 2) * (h + 2) * (w + 2))
                       + sum(strides))[:, None].to(index)
            self._table_cache = (table, offsets, strides)
            self._table_key = key
        return self._table_cache


def _trilinear_rows(table: torch.Tensor, base: torch.Tensor, strides: Tuple[int, int, int],
                    frac: List[torch.Tensor]) -> torch.Tensor:
    """Trilinear blend of the 8 rows ``base + dz*sz + dy*sy + dx*sx`` of ``table (V, C)``
    (or ``(V,)``: one channel) with the three ``(N,)`` fractions ``frac`` (z, y, x) ->
    ``(N, C)`` (``(N,)``)."""
    sz, sy, sx = strides
    fz, fy, fx = (f if table.dim() == 1 else f[:, None] for f in frac)

    def along_x(off: int) -> torch.Tensor:
        # Row ``base + off (+ sx)`` is row ``base`` of the table viewed from ``off``: no
        # shifted copy of the indices.
        lo = table[off:].index_select(0, base)
        return lo.lerp_(table[off + sx:].index_select(0, base), fx)

    y0 = along_x(0).lerp_(along_x(sy), fy)
    return y0.lerp_(along_x(sz).lerp_(along_x(sz + sy), fy), fz)


def _hooked(mlp: nn.Sequential) -> bool:
    """Whether a module of ``mlp`` has forward hooks (e.g. a pruning regularizer's,
    :mod:`neurvol.fit.sparsify`): those run only when the modules are called."""
    return any(layer._forward_hooks or layer._forward_pre_hooks for layer in mlp)


def _zero_outside(feats: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
    """``feats (M, C, N)`` with exact zeros where grid g does not cover point n
    (``cover[g, n] == 0``: beyond one cell outside it), as spec/arch/amgsrn.md §3 step 2
    requires. The atlas lookup's float32 row coordinate can leak a neighbouring slice's
    value (~1e-7) into such points, and step 6 divides it by the coverage floor."""
    return feats * (cover > 0).unsqueeze(1).to(feats.dtype)


def _kl(logq: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``sum_i q_i (log q_i - log p_i)``."""
    return (logq.exp() * (logq - logp)).sum()


def solve_amgsrn(shape: Tuple[int, int, int], n_params: int, options: Mapping[str, Any]) -> AMGSRNConfig:
    """Choose M, C, the grid resolution and the decoder width for ``n_params`` parameters.

    Defaults: C = 1 and M = 8 grids (fewer when the budget would leave a grid under 7^3
    vertices); the decoder is sized as fvsrn's; the rest goes to the grids, shaped like
    the volume (each grid starts covering all of it)."""
    channels = int(options.get("channels", 1))
    if channels < 1 or not 1 <= int(options.get("grids", 1)) <= MAX_GRIDS:
        raise NeurvolInputError(
            f"amgsrn needs 1 <= grids <= {MAX_GRIDS} and channels >= 1, got {dict(options)}")
    auto_width = 2 ** int(math.log2(max(8.0, min(32.0, math.sqrt(0.12 * max(n_params, 1))))))
    width = int(options.get("width", auto_width))
    hidden = int(options.get("hidden_layers", 2))
    if "grids" in options:
        grids = int(options["grids"])
    else:
        spare = n_params - mlp_param_count(DEFAULT_GRIDS * channels, width, hidden)
        grids = max(1, min(DEFAULT_GRIDS, spare // (channels * MIN_GRID_VERTICES + 12)))
    fixed = mlp_param_count(grids * channels, width, hidden) + 12 * grids
    vertices = (n_params - fixed) // (grids * channels)
    if vertices < 8:
        raise NeurvolBudgetError(
            f"the byte budget holds about {n_params} parameters, too few for an amgsrn model "
            f"with {grids} grids (its MLP and transforms alone have {fixed}); use a smaller ratio "
            "or fewer grids")
    return AMGSRNConfig(grids=grids, grid=proportional_grid(shape, vertices), channels=channels,
                        width=width, hidden_layers=hidden)


register(Architecture(
    name="amgsrn",
    model_cls=AMGSRN,
    solver=solve_amgsrn,
    options=("grids", "channels", "width", "hidden_layers"),
    # Smaller batches, more steps: at equal samples the grids converge about as well with
    # more, smaller updates, in less time (BENCHMARKS.md, "speed").
    # Error-driven sampling (ErrorSampler: 3/4 of each batch drawn where the running error
    # is high, importance-weighted) helps the adaptive grids (BENCHMARKS.md, "error-driven
    # sampling").
    fit_defaults={"batch": 16384, "steps": 2000, "sampling": "error"},
))
