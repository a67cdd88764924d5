"""Readers of ``.nvol`` files for other tools: numpy/dask (the array protocol of
:class:`~neurvol.NeuralVolume`), xarray (``engine="neurvol"``), napari and ParaView.

Each integration lives in its own module and imports its tool only when used, so the
optional packages (``neurvol[xarray]``, ``neurvol[napari]``, ``dask``) are needed only by
the integration that uses them. Every chunk, slice or extent these readers hand out is a
region read of the file (``nv[z0:z1, y0:y1, x0:x1]``): it decodes only the bricks it touches.
"""
