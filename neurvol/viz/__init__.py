"""Pictures of volumes: ray-marched renderings from the neural representation, slices,
comparisons and rate-distortion plots.

:mod:`neurvol.viz.render` holds the rendering maths (numpy; matplotlib only for colormap
tables); :mod:`neurvol.viz.figures` writes PNGs with matplotlib (``pip install
'neurvol[viz]'``). Both are imported on demand, so ``import neurvol`` never needs matplotlib.
"""
from .render import Field, as_field, mid_slices, render_volume, trilinear

__all__ = ["Field", "as_field", "mid_slices", "render_volume", "trilinear"]
