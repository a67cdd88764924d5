"""Readers of ``.nvol`` files for other tools: xarray (``engine="neurvol"``), napari and
ParaView. (numpy and dask need no reader: a ``NeuralVolume`` is array-like, see
:mod:`neurvol.arrays`.)

Each integration lives in its own module and imports its tool only when used, so the
optional packages (``neurvol[xarray]``, ``neurvol[napari]``, ParaView) are needed only by the
integration that uses them. Every slice, chunk or extent these readers hand out is a region
read of the file: it decodes only the bricks it touches.
"""
