"""A :class:`~neurvol.NeuralVolume` as an array: the array protocol (``np.asarray(nv)``,
``nv.to_dask()``) and array-likes that decode only what is indexed.

- :mod:`.sources`: :class:`RegionSource` (the volume's grid, ``nv[key]``) and
  :class:`ResampledSource` (the grid of ``decode(shape=...)``), picklable as the file's bytes.
- :mod:`.dask_array`: ``np.asarray``, dask arrays with one chunk per brick, and a lazy
  ``decode(shape=...)`` as a dask array.

Below ``neural_volume`` in the layers (its array-protocol methods call in here): nothing
here imports the reader or the package facade; a volume is used only through its public
methods. The readers for other tools (xarray, napari, ParaView) are in ``integrations``.
"""
from .dask_array import brick_chunks, default_chunks, owned_sizes, resampled, to_dask, to_numpy
from .sources import RegionSource, ResampledSource

__all__ = ["RegionSource", "ResampledSource", "brick_chunks", "default_chunks", "owned_sizes",
           "resampled", "to_dask", "to_numpy"]
