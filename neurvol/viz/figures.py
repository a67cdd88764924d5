"""PNG figures: renderings, orthogonal slices, original/decoded/error comparisons and
rate-distortion plots. The only module of neurvol that imports matplotlib (``neurvol[viz]``).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas (no pyplot, no global
state, no display needed) and written atomically.

Example::

    >>> import neurvol
    >>> from neurvol.viz import figures
    >>> nv = neurvol.open("neghip.nvol")                              # doctest: +SKIP
    >>> figures.save_rendering(nv, "view.png", azimuth=45)            # doctest: +SKIP
    >>> figures.save_comparison(neurvol.sample_volume(), nv, "cmp.png")   # doctest: +SKIP
"""
from __future__ import annotations

import io
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._atomic import atomic_write
from ..errors import NeurvolInputError
from .render import as_field, mid_slices, render_volume

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def _mpl() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise NeurvolInputError("pictures need matplotlib: pip install 'neurvol[viz]' "
                                "(or pip install matplotlib)") from e
    return matplotlib, Figure, FigureCanvasAgg


def _save_figure(fig: Any, path: PathLike, dpi: int = 100) -> None:
    _, _, canvas_cls = _mpl()
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write(path, buf.getvalue())
    log.debug("wrote %s", path)


def save_image(image: np.ndarray, path: PathLike) -> None:
    """Write an ``(H, W, 3)`` float RGB image in [0, 1] as PNG, atomically."""
    import matplotlib.image

    buf = io.BytesIO()
    matplotlib.image.imsave(buf, np.clip(np.asarray(image), 0.0, 1.0), format="png")
    atomic_write(path, buf.getvalue())


def save_rendering(source: Any, path: PathLike, **render_options: Any) -> np.ndarray:
    """Render ``source`` (see :func:`~neurvol.viz.render.render_volume`) and write it as PNG.

    Returns the ``(H, W, 3)`` image.
    """
    _mpl()
    img = render_volume(source, **render_options)
    save_image(img, path)
    return img


def _slice_axes(fig: Any, row: int, nrows: int, ncols: int, col0: int, slices: Sequence[np.ndarray],
                spacing: Sequence[float], vmin: float, vmax: float, cmap: str, label: str,
                with_titles: bool) -> Any:
    """Three slices in a column (z, y, x planes) starting at subplot column ``col0``."""
    names = (("x", "y", 2, 1), ("x", "z", 2, 0), ("y", "z", 1, 0))   # (cols, rows, col axis, row axis)
    im = None
    for i, (sl, (cn, rn, ca, ra)) in enumerate(zip(slices, names)):
        ax = fig.add_subplot(nrows, ncols, (row + i) * ncols + col0 + 1)
        im = ax.imshow(sl, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                       aspect=float(spacing[ra]) / float(spacing[ca]), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(cn, fontsize=8)
        ax.set_ylabel(rn, fontsize=8)
        if with_titles and i == 0:
            ax.set_title(label, fontsize=10)
    return im


def save_slices(source: Any, path: PathLike, *, cmap: str = "gray",
                value_range: Optional[Sequence[float]] = None, title: Optional[str] = None) -> None:
    """Three orthogonal mid slices (z, y, x planes) of a NeuralVolume or array, side by side."""
    _, figure_cls, _ = _mpl()
    field = as_field(source, value_range=value_range)
    sl = mid_slices(source)
    vmin, vmax = field.value_range
    fig = figure_cls(figsize=(10.5, 3.6))
    cz, cy, cx = (n // 2 for n in field.shape)
    for i, (s, name, ca, ra) in enumerate(zip(sl, (f"z = {cz}", f"y = {cy}", f"x = {cx}"),
                                             (2, 2, 1), (1, 0, 0))):
        ax = fig.add_subplot(1, 3, i + 1)
        im = ax.imshow(s, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax,
                       aspect=field.spacing[ra] / field.spacing[ca], interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=fig.axes, shrink=0.8)
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)


def save_comparison(original: Any, decoded: Any, path: PathLike, *, cmap: str = "gray",
                    render_cmap: str = "viridis", error_cmap: str = "magma",
                    render_options: Optional[Dict[str, Any]] = None,
                    psnr_db: Optional[float] = None, title: Optional[str] = None) -> float:
    """Original, decoded and absolute error side by side: three slice rows plus a rendering row.

    Args:
        original: the original volume (array, ``[z, y, x]``).
        decoded: a NeuralVolume (decoded here) or an array of the same shape.
        path: output PNG.
        render_options: passed to :func:`render_volume` for the bottom row (size, samples,
            azimuth ...); the error volume is rendered with ``error_cmap``.
        psnr_db: shown in the title (computed when ``None``).

    Returns:
        The PSNR in dB.
    """
    from ..metrics import max_abs_error, psnr

    _, figure_cls, _ = _mpl()
    orig = np.asarray(original)
    dec = np.asarray(decoded.decode() if hasattr(decoded, "decode") else decoded)
    if orig.shape != dec.shape:
        raise NeurvolInputError(f"original has shape {orig.shape} but the decoded volume "
                                f"{dec.shape}; compare volumes of the same grid")
    if psnr_db is None:
        psnr_db = psnr(orig, dec)
    maxerr = max_abs_error(orig, dec)
    err = np.abs(orig.astype(np.float32) - dec.astype(np.float32))
    vmin, vmax = float(orig.min()), float(orig.max())
    emax = float(err.max()) or 1.0
    spacing = getattr(decoded, "info", lambda: {})().get("spacing") or (1.0, 1.0, 1.0)

    opts = {"size": (200, 200), "samples": 96}
    opts.update(render_options or {})
    fig = figure_cls(figsize=(9.0, 12.0))
    cols = [("original", orig, vmin, vmax, cmap), ("decoded", dec, vmin, vmax, cmap),
            ("|error|", err, 0.0, emax, error_cmap)]
    for c, (label, vol, lo, hi, cm) in enumerate(cols):
        im = _slice_axes(fig, 0, 4, 3, c, mid_slices(vol), spacing, lo, hi, cm, label, True)
        if c == 2:
            fig.colorbar(im, ax=fig.axes[-3:], shrink=0.7, label="abs error")
        rcm = render_cmap if c < 2 else error_cmap
        img = render_volume(vol if c < 2 else err, value_range=(lo, hi), cmap=rcm, **opts)
        ax = fig.add_subplot(4, 3, 9 + c + 1)
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("rendering", fontsize=8)
    psnr_txt = "inf dB (exact)" if math.isinf(psnr_db) else f"{psnr_db:.2f} dB"
    head = f"{title}\n" if title else ""
    fig.suptitle(f"{head}PSNR {psnr_txt}, max abs error {maxerr:.4g}", fontsize=12)
    _save_figure(fig, path)
    return float(psnr_db)


def save_rd_plot(rows: Sequence[Dict[str, Any]], path: PathLike, *, title: Optional[str] = None) -> None:
    """Rate-distortion plot (achieved ratio vs PSNR, one line per method) from bench rows.

    Rows without a finite PSNR or ratio (skipped baselines, lossless zstd) are left out; a
    lossless method is drawn as a vertical line at its ratio.
    """
    _, figure_cls, _ = _mpl()
    fig = figure_cls(figsize=(7.0, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    by: Dict[str, List[Tuple[float, float]]] = {}
    lossless: List[Tuple[str, float]] = []
    for r in rows:
        ratio, p = r.get("ratio_achieved"), r.get("psnr_db")
        if ratio is None or p is None or not math.isfinite(float(ratio)):
            continue
        if math.isinf(float(p)):
            lossless.append((str(r["method"]), float(ratio)))
            continue
        by.setdefault(str(r["method"]), []).append((float(ratio), float(p)))
    markers = "os^Dv<>px*"
    for i, (method, pts) in enumerate(sorted(by.items())):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=markers[i % len(markers)],
                label=method, linewidth=2.2 if method.startswith("neurvol") else 1.2)
    for method, ratio in lossless:
        ax.axvline(ratio, linestyle=":", color="gray")
        ax.annotate(f"{method} (lossless)", (ratio, 0.02), xycoords=("data", "axes fraction"),
                    rotation=90, fontsize=8, color="gray")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (original bytes / stored bytes)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, which="both", alpha=0.3)
    if by:
        ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, path)
