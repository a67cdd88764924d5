"""napari reader plugin (npe2 manifest ``napari.yaml``, entry point ``napari.manifest``):
drag a ``.nvol`` file into napari, or ``napari f.nvol`` (docs/napari.md).

The file opens as one image layer: a multiscale pyramid whose full-resolution level is the
``NeuralVolume`` itself and whose coarser levels are ``decode(shape=...)`` grids of halving
size (:class:`~neurvol.arrays.ResampledSource`), down to about
:data:`MIN_LEVEL_EDGE` voxels a side. Every level is a lazy array-like: napari indexes the
plane (or, in 3-D, the level) it shows, and that is all that is decoded, a region read
touching only its bricks. (Dask arrays would decode whole chunks for every plane.) ``scale`` and ``translate`` are the file's spacing and
origin, ``contrast_limits`` its value range. napari itself is not imported here.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..arrays import ResampledSource
from .metadata import EXTENSION, attributes, geometry

#: The pyramid halves every axis while the largest one exceeds this many voxels.
MIN_LEVEL_EDGE = 64

PathLike = Union[str, "os.PathLike[str]"]
LayerData = Tuple[Any, Dict[str, Any], str]


def get_reader(path: Union[PathLike, Sequence[PathLike]]) -> Optional[Callable[..., List[LayerData]]]:
    """napari's reader hook: :func:`read_nvol` for ``.nvol`` paths (one or several), else
    ``None`` (napari then asks other plugins)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(os.fspath(p).lower().endswith(EXTENSION) for p in paths):
        return None
    return read_nvol


def read_nvol(path: Union[PathLike, Sequence[PathLike]]) -> List[LayerData]:
    """One ``(data, add_kwargs, "image")`` layer per file; ``data`` is the list of pyramid
    levels (the ``NeuralVolume`` alone when it is already small)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return [_layer(p) for p in paths]


def level_shapes(shape: Sequence[int], min_edge: int = MIN_LEVEL_EDGE) -> List[Tuple[int, int, int]]:
    """Shapes of the pyramid: ``shape``, then every axis halved (rounded up, at least 2)
    while the previous level's largest axis exceeds ``min_edge``."""
    levels = [tuple(int(n) for n in shape)]
    while max(levels[-1]) > min_edge:
        levels.append(tuple(max(2, (n + 1) // 2) for n in levels[-1]))
    return levels  # type: ignore[return-value]


def _layer(path: PathLike) -> LayerData:
    import neurvol

    nv = neurvol.open(path)     # stays open: the layer's arrays read from it lazily
    spacing, origin = geometry(nv)
    shapes = level_shapes(nv.shape)
    levels = [nv] + [ResampledSource(nv, s) for s in shapes[1:]]
    lo, hi = nv.info()["value_range"]
    kwargs: Dict[str, Any] = {
        "name": os.path.splitext(os.path.basename(os.fspath(path)))[0],
        "multiscale": len(levels) > 1,
        "scale": list(spacing),
        "translate": list(origin),
        "metadata": dict(attributes(nv), source=os.fspath(path)),
    }
    if lo < hi:
        kwargs["contrast_limits"] = [lo, hi]
    return (levels if len(levels) > 1 else levels[0]), kwargs, "image"
