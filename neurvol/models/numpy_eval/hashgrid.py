"""hashgrid without torch: its config, tensor list and evaluation (``spec/arch/hashgrid.md``).

L levels of F-feature tables over [-1, 1]^3, dense where a level's lattice fits its table,
else indexed by the NGP spatial hash; trilinear per level, concatenated, ReLU MLP. The
lattice coordinates are computed in float32 with the reference's operations, so the
cell fractions match it bit for bit.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Mapping, Tuple

import numpy as np

from ..config import ModelConfig, TensorSpec, mlp_param_count, mlp_tensor_specs
from .ops import F32, DenseMLP, cell, lerp_into
from .registry import NumpyArchitecture, NumpyModel, register_numpy

# NGP's primes; the x (fastest, last) coordinate gets 1, y the second, z the third.
PRIME_X, PRIME_Y, PRIME_Z = 1, 2654435761, 805459861
MAX_LEVELS = 32
MAX_FEATURES = 64
MAX_LOG2_TABLE = 26
MAX_RESOLUTION = 1 << 20   # keeps vertex * prime below 2^52: exact in int64 (and float64)
MAX_WIDTH = 4096
MAX_HIDDEN = 16
DESCRIPTION = "multiresolution hash encoding + small ReLU MLP (NGP, Müller et al. 2022)"


@dataclasses.dataclass(frozen=True)
class HashGridConfig(ModelConfig):
    """Dimensions of a hash-grid model.

    resolutions: N_l per level (ints >= 1; the lattice has N_l + 1 vertices per axis);
    features: F per level; log2_table: T = 2^log2_table entries per level at most;
    width / hidden_layers: the decoder MLP (``L*F -> width (ReLU) x hidden -> 1``).
    """

    arch = "hashgrid"
    resolutions: Tuple[int, ...] = (4, 8, 16, 32)
    features: int = 2
    log2_table: int = 12
    width: int = 32
    hidden_layers: int = 1

    def validate(self) -> None:
        if (not isinstance(self.resolutions, tuple) or not 1 <= len(self.resolutions) <= MAX_LEVELS
                or not all(is_int(n) and 1 <= n <= MAX_RESOLUTION for n in self.resolutions)):
            raise ValueError(f"resolutions must be 1..{MAX_LEVELS} ints in [1, {MAX_RESOLUTION}]")
        checks = (("features", 1, MAX_FEATURES), ("log2_table", 1, MAX_LOG2_TABLE),
                  ("width", 1, MAX_WIDTH), ("hidden_layers", 0, MAX_HIDDEN))
        for name, lo, hi in checks:
            v = getattr(self, name)
            if not is_int(v) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an int in [{lo}, {hi}]")
        if self.param_count() > 2**31:
            raise ValueError("hash grid too large")

    def table_sizes(self) -> Tuple[int, ...]:
        """Entries of each level's table: ``min((N_l + 1)^3, T)``."""
        t = 1 << self.log2_table
        return tuple(min((n + 1) ** 3, t) for n in self.resolutions)

    def param_count(self) -> int:
        return sum(self.table_sizes()) * self.features + mlp_param_count(
            len(self.resolutions) * self.features, self.width, self.hidden_layers)

    def tensor_specs(self) -> List[TensorSpec]:
        tables = [(f"tables.{l}", (size, self.features)) for l, size in enumerate(self.table_sizes())]
        return tables + mlp_tensor_specs("mlp", len(self.resolutions) * self.features,
                                         self.width, self.hidden_layers)


def is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


class HashGridNumpy(NumpyModel):
    """Per level: 8 corner rows (dense index or hash), gathered and blended by lerps."""

    def __init__(self, config: HashGridConfig, arrays: Mapping[str, np.ndarray]) -> None:
        super().__init__(config, arrays)
        t = 1 << config.log2_table
        self.mask = t - 1
        self.levels = [(n, (n + 1) ** 3 > t, np.ascontiguousarray(arrays[f"tables.{l}"], dtype=F32))
                       for l, n in enumerate(config.resolutions)]
        self.features = config.features
        self.mlp = DenseMLP(arrays, "mlp", config.hidden_layers)

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        n_pts, f = coords.shape[0], self.features
        # As the reference: u = (clamp(c) + 1) * 0.5 and p = u * N, in float32.
        u = np.clip(coords.astype(F32), -1.0, 1.0)
        u += F32(1)
        u *= F32(0.5)
        feats = np.empty((n_pts, len(self.levels) * f), dtype=F32)
        for level, (n, hashed, table) in enumerate(self.levels):
            p = u * F32(n)
            i0, frac = cell(p, 0, n - 1)                               # (N, 3) z, y, x
            # Per-axis row terms of the lower (0) and upper (1) vertex.
            if hashed:
                terms = [((i0[:, a] * prime) & self.mask, ((i0[:, a] + 1) * prime) & self.mask)
                         for a, prime in enumerate((PRIME_Z, PRIME_Y, PRIME_X))]
                combine = np.bitwise_xor
            else:
                strides = ((n + 1) * (n + 1), n + 1, 1)
                terms = [(i0[:, a] * s, (i0[:, a] + 1) * s) for a, s in enumerate(strides)]
                combine = np.add
            (z0, z1), (y0, y1), (x0, x1) = terms
            fz, fy, fx = (frac[:, a:a + 1] for a in range(3))

            def along_x(zy: np.ndarray) -> np.ndarray:
                return lerp_into(table.take(combine(zy, x0), axis=0),
                                 table.take(combine(zy, x1), axis=0), fx)

            lo = lerp_into(along_x(combine(z0, y0)), along_x(combine(z0, y1)), fy)
            hi = lerp_into(along_x(combine(z1, y0)), along_x(combine(z1, y1)), fy)
            feats[:, level * f:(level + 1) * f] = lerp_into(lo, hi, fz)
        return self.mlp(feats)[:, 0]


register_numpy(NumpyArchitecture("hashgrid", HashGridConfig, HashGridNumpy, DESCRIPTION))
