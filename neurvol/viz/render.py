"""Ray-marched volume rendering straight from a neural volume (or any scalar field).

Everything is vectorised numpy, processed a chunk of rays and a batch of steps at a time, so
memory stays bounded whatever the image size. The field is sampled with
``NeuralVolume.query(points, space="normalized")``: nothing is decoded to a grid.

Geometry. The volume is an axis-aligned box in world space, x right, y forward, z up, with
physical extents ``(n - 1) * spacing`` per axis scaled so the longest is 2 (centred at the
origin). Arrays are indexed ``[z, y, x]``, so world ``(x, y, z)`` maps to normalized query
coordinates ``(z / hz, y / hy, x / hx)``. The camera orbits the centre: ``azimuth`` (degrees)
turns about z starting from the +x axis, ``elevation`` (degrees) rises above the xy plane and
``distance`` is measured in radii of the volume's bounding sphere (3.5 shows nearly all of it with the
default 30 degree field of view).

Transfer function. A value ``v`` is normalised to ``t = (v - vmin) / (vmax - vmin)``
(``value_range``, default the volume's range); its colour is ``cmap(t)`` (a matplotlib
colormap, looked up once into a 256-entry table) and its opacity rises linearly from 0 at
``t = opacity[0]`` to 1 at ``t = opacity[1]``. A sample of length ``dt`` absorbs
``alpha = 1 - exp(-density * opacity(t) * dt)``. Samples are composited front to back,
``C += T * alpha * rgb; T *= 1 - alpha``, and a ray stops once ``T < 1e-3``. The image is
``C + T * background``.

Example::

    >>> import neurvol
    >>> from neurvol.viz.render import render_volume
    >>> nv = neurvol.open("neghip.nvol")                               # doctest: +SKIP
    >>> img = render_volume(nv, azimuth=30, elevation=20, size=(256, 256))  # (256, 256, 3)
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import NeurvolInputError

log = logging.getLogger(__name__)

#: ``f(points) -> values``: ``points`` (N, 3) normalized z, y, x in [-1, 1]; values (N,).
FieldFn = Callable[[np.ndarray], np.ndarray]

_RAYS_PER_CHUNK = 4096
_STEPS_PER_BATCH = 16
_T_MIN = 1e-3


@dataclass
class Field:
    """A scalar field to render: a sampling function plus its grid description.

    Attributes:
        fn: ``fn(points)``, points ``(N, 3)`` normalized (z, y, x) in [-1, 1]^3 -> ``(N,)``.
        shape: grid shape (z, y, x) (used for the box's aspect and for slices).
        value_range: ``(vmin, vmax)`` of the data.
        spacing: voxel size (z, y, x).
    """

    fn: FieldFn
    shape: Tuple[int, int, int]
    value_range: Tuple[float, float]
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)


def trilinear(volume: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``volume`` (z, y, x) at normalized ``points`` (N, 3) z, y, x.

    ``-1``/``+1`` are the first/last voxel centres (as in ``NeuralVolume.query``); points are
    clamped to the box. Returns float32 ``(N,)``.
    """
    vol = np.asarray(volume)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    shape = np.asarray(vol.shape, dtype=np.float64)
    idx = (np.clip(pts, -1.0, 1.0) + 1.0) * 0.5 * (shape - 1.0)
    i0 = np.clip(np.floor(idx).astype(np.intp), 0, np.maximum(np.asarray(vol.shape) - 2, 0))
    f = idx - i0
    i1 = np.minimum(i0 + 1, np.asarray(vol.shape) - 1)
    out = np.zeros(len(pts), dtype=np.float64)
    for dz in (0, 1):
        z = i1[:, 0] if dz else i0[:, 0]
        wz = f[:, 0] if dz else 1.0 - f[:, 0]
        for dy in (0, 1):
            y = i1[:, 1] if dy else i0[:, 1]
            wy = f[:, 1] if dy else 1.0 - f[:, 1]
            for dx in (0, 1):
                x = i1[:, 2] if dx else i0[:, 2]
                wx = f[:, 2] if dx else 1.0 - f[:, 2]
                out += wz * wy * wx * vol[z, y, x]
    return out.astype(np.float32)


def as_field(source: Any, *, value_range: Optional[Sequence[float]] = None,
             spacing: Optional[Sequence[float]] = None) -> Field:
    """Wrap a :class:`~neurvol.NeuralVolume`, a 3-D array or a :class:`Field` as a Field.

    A NeuralVolume is sampled with ``query(space="normalized", clamp=True)`` (random access,
    no full decode); an array with :func:`trilinear`.
    """
    if isinstance(source, Field):
        f = source
    elif hasattr(source, "query") and hasattr(source, "shape") and hasattr(source, "info"):
        info = source.info()
        lo, hi = (info.get("value_range") or [0.0, 1.0])[:2]
        sp = info.get("spacing") or (1.0, 1.0, 1.0)

        def fn(p: np.ndarray, _nv: Any = source) -> np.ndarray:
            return np.asarray(_nv.query(p, space="normalized", clamp=True), dtype=np.float32)

        f = Field(fn, tuple(int(n) for n in source.shape), (float(lo), float(hi)),  # type: ignore[arg-type]
                  tuple(float(s) for s in sp))  # type: ignore[arg-type]
    else:
        arr = np.asarray(source)
        if arr.ndim != 3 or arr.dtype.kind not in "biuf":
            raise NeurvolInputError(f"can render a NeuralVolume or a numeric 3-D array, got "
                                    f"{type(source).__name__} of shape {getattr(arr, 'shape', None)}")
        lo, hi = float(arr.min()), float(arr.max())
        f = Field(lambda p, _a=arr: trilinear(_a, p), arr.shape, (lo, hi))  # type: ignore[arg-type]
    if value_range is not None:
        f = Field(f.fn, f.shape, (float(value_range[0]), float(value_range[1])), f.spacing)
    if spacing is not None:
        f = Field(f.fn, f.shape, f.value_range, tuple(float(s) for s in spacing))  # type: ignore[arg-type]
    return f


def colormap_lut(cmap: Union[str, Any] = "viridis", n: int = 256) -> np.ndarray:
    """``(n, 3)`` float RGB table of a matplotlib colormap (name or object).

    Raises:
        NeurvolInputError: matplotlib missing (``pip install 'neurvol[viz]'``) or unknown name.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise NeurvolInputError("colormaps need matplotlib: pip install 'neurvol[viz]'") from e
    try:
        cm = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    except KeyError:
        raise NeurvolInputError(f"unknown colormap {cmap!r}; try viridis, magma, inferno, gray, "
                                "bone, coolwarm") from None
    return np.asarray(cm(np.linspace(0.0, 1.0, n)), dtype=np.float64)[:, :3]


def camera_rays(shape_hw: Tuple[int, int], azimuth: float, elevation: float, distance: float,
                radius: float, fov: float = 30.0) -> Tuple[np.ndarray, np.ndarray]:
    """Perspective camera looking at the origin. Returns ``(eye (3,), dirs (H*W, 3))`` in world
    x, y, z; ``distance`` is in units of ``radius``."""
    h, w = shape_hw
    az, el = math.radians(azimuth), math.radians(elevation)
    eye = distance * radius * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
                                        math.sin(el)])
    forward = -eye / np.linalg.norm(eye)
    up0 = np.array([0.0, 0.0, 1.0])
    if abs(float(forward @ up0)) > 0.999:          # looking straight down/up: pick another up
        up0 = np.array([0.0, 1.0, 0.0]) * (1.0 if forward[2] < 0 else -1.0)
    right = np.cross(forward, up0)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    tan = math.tan(math.radians(fov) / 2.0)
    aspect = w / h
    u = ((np.arange(w) + 0.5) / w * 2.0 - 1.0) * tan * aspect
    v = (1.0 - (np.arange(h) + 0.5) / h * 2.0) * tan
    dirs = forward[None, None, :] + u[None, :, None] * right + v[:, None, None] * up
    dirs = dirs.reshape(-1, 3)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return eye, dirs


def render_volume(
    source: Any,
    *,
    azimuth: float = 30.0,
    elevation: float = 20.0,
    distance: float = 3.5,
    size: Tuple[int, int] = (256, 256),
    samples: int = 128,
    cmap: Union[str, Any] = "viridis",
    opacity: Tuple[float, float] = (0.1, 1.0),
    density: float = 8.0,
    value_range: Optional[Sequence[float]] = None,
    background: Sequence[float] = (0.0, 0.0, 0.0),
    fov: float = 30.0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> np.ndarray:
    """Ray-march a volume into an RGB image.

    Args:
        source: a :class:`~neurvol.NeuralVolume` (queried directly, never fully decoded), a
            3-D array indexed ``[z, y, x]``, or a :class:`Field`.
        azimuth, elevation: camera angles in degrees (see the module docstring).
        distance: camera distance from the centre in bounding-sphere radii (> 1).
        size: image ``(width, height)`` in pixels.
        samples: steps per ray across the bounding sphere's diameter.
        cmap: matplotlib colormap name or object.
        opacity: normalised values ``(t0, t1)`` where opacity ramps from 0 to 1.
        density: extinction scale (higher: more opaque).
        value_range: ``(vmin, vmax)`` for the transfer function (default: the data range).
        background: RGB in [0, 1] behind the volume.
        fov: vertical field of view in degrees.
        progress: ``progress(done_rays, total_rays)`` after each chunk.

    Returns:
        ``(height, width, 3)`` float32 RGB in [0, 1].

    Raises:
        NeurvolInputError: bad parameters.
    """
    w, h = (int(size[0]), int(size[1]))
    if not (1 <= w <= 8192 and 1 <= h <= 8192):
        raise NeurvolInputError(f"image size {size} must be 1..8192 pixels per side")
    if not isinstance(samples, (int, np.integer)) or not 2 <= samples <= 8192:
        raise NeurvolInputError(f"samples must be an integer in 2..8192, got {samples!r}")
    if not (math.isfinite(distance) and distance > 1.0):
        raise NeurvolInputError(f"distance must be > 1 (bounding-sphere radii), got {distance}")
    if not (math.isfinite(fov) and 1.0 <= fov <= 170.0):
        raise NeurvolInputError(f"fov must be in 1..170 degrees, got {fov}")
    t0_op, t1_op = float(opacity[0]), float(opacity[1])
    if not (math.isfinite(t0_op) and math.isfinite(t1_op) and t0_op < t1_op):
        raise NeurvolInputError(f"opacity ramp {opacity} must be two increasing numbers")
    if not (math.isfinite(density) and density > 0):
        raise NeurvolInputError(f"density must be positive, got {density}")
    field = as_field(source, value_range=value_range)
    lut = colormap_lut(cmap)
    bg = np.asarray(background, dtype=np.float64).reshape(3)
    vmin, vmax = field.value_range
    vscale = 1.0 / (vmax - vmin) if vmax > vmin else 0.0

    # Box half-extents in world (x, y, z), longest = 1.
    ext = np.array([(n - 1) * s for n, s in zip(field.shape, field.spacing)], dtype=np.float64)[::-1]
    ext = np.maximum(ext, 1e-9 * max(ext.max(), 1e-9))
    half = ext / ext.max()
    radius = float(np.linalg.norm(half))
    eye, dirs = camera_rays((h, w), azimuth, elevation, distance, radius, fov)
    dt = 2.0 * radius / samples
    n_rays = dirs.shape[0]
    image = np.zeros((n_rays, 3), dtype=np.float64)
    trans_out = np.ones(n_rays, dtype=np.float64)

    for r0 in range(0, n_rays, _RAYS_PER_CHUNK):
        d = dirs[r0:r0 + _RAYS_PER_CHUNK]
        n = d.shape[0]
        # Slab test against the box.
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            ta = (-half - eye) * inv
            tb = (half - eye) * inv
        tnear = np.nanmax(np.minimum(ta, tb), axis=1)
        tfar = np.nanmin(np.maximum(ta, tb), axis=1)
        tnear = np.maximum(tnear, 0.0)
        hit = tfar > tnear
        color = np.zeros((n, 3), dtype=np.float64)
        trans = np.ones(n, dtype=np.float64)
        idx = np.nonzero(hit)[0]
        if idx.size:
            # Samples on a global lattice (t = k * dt from the eye) so neighbouring rays agree.
            k_start = np.floor(tnear[idx] / dt).astype(np.int64)
            k_end = np.ceil(tfar[idx] / dt).astype(np.int64)
            steps = int((k_end - k_start).max())
            active = idx
            ks, ke = k_start, k_end
            for s0 in range(0, steps, _STEPS_PER_BATCH):
                if active.size == 0:
                    break
                m = min(_STEPS_PER_BATCH, steps - s0)
                kk = ks[:, None] + s0 + np.arange(m)[None, :] + 0.5       # (A, m)
                t = kk * dt
                pos = eye[None, None, :] + t[..., None] * d[active][:, None, :]   # (A, m, 3) xyz
                inside = (np.abs(pos) <= half * (1.0 + 1e-9)).all(axis=2) & (kk < ke[:, None])
                vals = np.zeros(inside.shape, dtype=np.float64)
                if inside.any():
                    p = pos[inside]
                    q = np.stack([p[:, 2] / half[2], p[:, 1] / half[1], p[:, 0] / half[0]], axis=1)
                    vals[inside] = field.fn(np.clip(q, -1.0, 1.0))
                tv = np.clip((vals - vmin) * vscale, 0.0, 1.0)
                ramp = np.clip((tv - t0_op) / (t1_op - t0_op), 0.0, 1.0)
                alpha = np.where(inside, 1.0 - np.exp(-density * ramp * dt), 0.0)
                rgb = lut[np.minimum((tv * (len(lut) - 1) + 0.5).astype(np.intp), len(lut) - 1)]
                c = color[active]
                tr = trans[active]
                for j in range(m):                                  # front to back
                    a = alpha[:, j]
                    c += (tr * a)[:, None] * rgb[:, j]
                    tr *= 1.0 - a
                color[active] = c
                trans[active] = tr
                keep = (tr > _T_MIN) & (ks + s0 + m < ke)
                active, ks, ke = active[keep], ks[keep], ke[keep]
        image[r0:r0 + n] = color
        trans_out[r0:r0 + n] = trans
        if progress is not None:
            progress(min(r0 + n, n_rays), n_rays)
    image += trans_out[:, None] * bg[None, :]
    return np.clip(image, 0.0, 1.0).reshape(h, w, 3).astype(np.float32)


def mid_slices(source: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three orthogonal slices through the centre: ``(z-slice [y, x], y-slice [z, x],
    x-slice [z, y])`` as float32. A NeuralVolume decodes only those slices."""
    shape = tuple(int(n) for n in source.shape)
    if len(shape) != 3:
        raise NeurvolInputError(f"need a 3-D volume, got shape {shape}")
    cz, cy, cx = (n // 2 for n in shape)
    if hasattr(source, "query") and hasattr(source, "decode"):
        get = lambda key: np.asarray(source[key], dtype=np.float32)  # noqa: E731
    else:
        arr = source
        get = lambda key: np.asarray(arr[key], dtype=np.float32)  # noqa: E731
    return (get((cz, slice(None), slice(None))).reshape(shape[1], shape[2]),
            get((slice(None), cy, slice(None))).reshape(shape[0], shape[2]),
            get((slice(None), slice(None), cx)).reshape(shape[0], shape[1]))
