"""Spatial hash from normalized coordinates to brick ids (spec/nvol.md, "Brick lookup")."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from ..errors import NeurvolInputError
from .format import MAX_BRICKS


def check_grid(grid: Sequence[int], what: str = "brick grid") -> Tuple[int, int, int]:
    """Return *grid* as a tuple (K, J, I) of positive ints, or raise NeurvolInputError
    (whose message calls it *what*: the user's name for it)."""
    try:
        k, j, i = grid
    except (TypeError, ValueError):
        raise NeurvolInputError(f"{what} must be 3 ints (K, J, I), got {grid!r}") from None
    out = []
    for n in (k, j, i):
        # numpy integers are fine here; bools and floats are not.
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise NeurvolInputError(
                f"{what} must be 3 positive ints (K, J, I), got {grid!r}")
        out.append(int(n))
    if out[0] * out[1] * out[2] > MAX_BRICKS:
        raise NeurvolInputError(
            f"brick grid {tuple(out)} has {out[0] * out[1] * out[2]} bricks; at most "
            f"{MAX_BRICKS} are allowed - use larger bricks")
    return out[0], out[1], out[2]


def brick_ids(points: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Brick id of each point.

    Args:
        points: (N, 3) normalized coordinates in [-1, 1]^3, columns (z, y, x). Any float
            or int dtype; computed in float64. Points outside the cube are clamped to the
            nearest brick.
        grid: (K, J, I) brick counts along z, y, x.

    Returns:
        (N,) int64 ids ``i + I*j + I*J*k`` with ``i = clamp(floor(I*(x+1)/2), 0, I-1)``
        (same for j from y/J and k from z/K), i.e. the C-order ravel of (k, j, i) in shape
        (K, J, I). A point on a face between two bricks belongs to the upper one, except
        at +1.0, which belongs to the last brick.

    Raises:
        NeurvolInputError: wrong shape, or a NaN/infinite coordinate.

    Example:
        >>> brick_ids(np.array([[-1.0, 0.0, 1.0]]), (2, 2, 2)).tolist()
        [3]
    """
    k_n, j_n, i_n = check_grid(grid)
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise NeurvolInputError(f"points must have shape (N, 3) as (z, y, x), got {p.shape}")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        raise NeurvolInputError("points contain NaN or infinity; pass finite coordinates")
    ids = axis_bricks(p[:, 0], k_n)
    ids *= j_n
    ids += axis_bricks(p[:, 1], j_n)
    ids *= i_n
    ids += axis_bricks(p[:, 2], i_n)
    return ids


def axis_bricks(c: np.ndarray, n: int) -> np.ndarray:
    """Brick index along one axis of ``n`` bricks of float64 normalized coordinates ``c``
    (finite; the caller checks): ``clamp(floor(n * (c + 1) / 2), 0, n - 1)`` as int64."""
    # The exact float64 expression of the spec, in its order, so other implementations
    # put points on a face into the same brick.
    idx = np.floor(n * (c + 1.0) / 2.0)
    np.clip(idx, 0, n - 1, out=idx)
    return idx.astype(np.int64)
