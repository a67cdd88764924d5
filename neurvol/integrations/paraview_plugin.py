"""ParaView reader plugin: ``.nvol`` files open as ``vtkImageData`` (docs/paraview.md).

Load this file in ParaView (Tools > Manage Plugins > Load New) or in ``pvpython``/``pvbatch``
with ``LoadPlugin(path, ns=globals())``;
then ``OpenDataFile("f.nvol")`` or ``NeurvolReader(FileName="f.nvol")``.

- The reader honours the update extent ParaView asks for: a slice, a streamed piece or a
  parallel rank's share decodes just that extent (a region read: only the bricks it
  touches), not the whole volume.
- ``Resolution`` (x, y, z; 0 keeps the file's grid along that axis) resamples the same
  extent on another grid, as ``decode(shape=...)``: coarser for a quick look, finer to
  render the continuous model beyond the original voxels.
- Spacing and origin come from the header; the point array is named ``volume`` and has
  the original's dtype.

ParaView runs its own Python: ``neurvol`` and its reader's dependencies must be importable
there (docs/paraview.md). When ``neurvol`` is not, this file adds the directory holding the
``neurvol`` package it belongs to.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence, Tuple

import numpy as np
from paraview.util.vtkAlgorithm import smdomain, smhint, smproperty, smproxy
from vtkmodules.util import numpy_support
from vtkmodules.util.vtkAlgorithm import VTKPythonAlgorithmBase
from vtkmodules.vtkCommonDataModel import vtkDataObject, vtkImageData
from vtkmodules.vtkCommonExecutionModel import vtkAlgorithm, vtkStreamingDemandDrivenPipeline

#: Name of the point-data array the reader produces.
ARRAY_NAME = "volume"
_SDDP = vtkStreamingDemandDrivenPipeline


def _neurvol() -> Any:
    """The ``neurvol`` package: from ParaView's ``sys.path``, else from the directory this
    plugin file lies in (a source checkout or an installed package)."""
    try:
        import neurvol
        return neurvol
    except ModuleNotFoundError as exc:
        if exc.name != "neurvol":
            raise _missing(exc) from exc
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.append(root)
    try:
        import neurvol
    except ModuleNotFoundError as exc:
        raise _missing(exc) from exc
    return neurvol


def _missing(exc: ModuleNotFoundError) -> ImportError:
    return ImportError(
        f"neurvol's ParaView reader needs the Python package {exc.name!r} in ParaView's own "
        f"Python ({sys.executable}, Python {sys.version.split()[0]}), which does not see your "
        "virtualenv: see docs/paraview.md (PYTHONPATH) to make it importable there")


@smproxy.reader(name="NeurvolReader", label="neurvol compressed volume",
                extensions="nvol", file_description="neurvol compressed volume")
class NeurvolReader(VTKPythonAlgorithmBase):
    """``vtkImageData`` of a ``.nvol`` file, decoded extent by extent on request."""

    def __init__(self) -> None:
        VTKPythonAlgorithmBase.__init__(self, nInputPorts=0, nOutputPorts=1,
                                        outputType="vtkImageData")
        self._filename: Optional[str] = None
        self._resolution: Tuple[int, int, int] = (0, 0, 0)     # x, y, z; 0 = the file's
        self._nv: Any = None

    # ------------------------------------------------------------------ properties
    @smproperty.stringvector(name="FileName")
    @smdomain.filelist()
    @smhint.filechooser(extensions="nvol", file_description="neurvol compressed volume")
    def SetFileName(self, name: str) -> None:
        """The ``.nvol`` file to read."""
        if name != self._filename:
            self._filename = name
            if self._nv is not None:
                self._nv.close()
            self._nv = None
            self.Modified()

    @smproperty.intvector(name="Resolution", default_values=[0, 0, 0])
    @smdomain.intrange(min=0, max=65536)
    def SetResolution(self, x: int, y: int, z: int) -> None:
        """Output grid (x, y, z): as ``decode(shape=(z, y, x))``; 0 keeps the file's grid."""
        value = (int(x), int(y), int(z))
        if value != self._resolution:
            self._resolution = value
            self.Modified()

    # ------------------------------------------------------------------ helpers
    def volume(self) -> Any:
        """The open ``NeuralVolume`` (opened on first use)."""
        if self._nv is None:
            if not self._filename:
                raise ValueError("NeurvolReader: no FileName set")
            self._nv = _neurvol().open(self._filename)
        return self._nv

    def grid_shape(self) -> Tuple[int, int, int]:
        """The output grid, (z, y, x)."""
        nv = self.volume()
        res = self._resolution[::-1]      # Resolution is x, y, z
        z, y, x = (int(r) if r > 0 else int(n) for r, n in zip(res, nv.shape))
        return z, y, x

    def geometry(self) -> Tuple[Sequence[float], Sequence[float]]:
        """(spacing, origin) of the output grid in VTK's order (x, y, z): the same physical
        extent as the file's grid, whose corner voxel centres the resampled grid keeps."""
        from neurvol.integrations.metadata import geometry

        nv = self.volume()
        spacing, origin = geometry(nv)
        out = [s * (n - 1) / (m - 1) if m > 1 else s
               for s, n, m in zip(spacing, nv.shape, self.grid_shape())]
        return out[::-1], list(origin)[::-1]

    def read_extent(self, extent: Sequence[int]) -> np.ndarray:
        """Values of the VTK extent ``(x0, x1, y0, y1, z0, z1)`` (inclusive) of the output
        grid, as a ``(z, y, x)`` array: a region read of the file."""
        from neurvol.arrays import ResampledSource

        x0, x1, y0, y1, z0, z1 = (int(e) for e in extent)
        key = (slice(z0, z1 + 1), slice(y0, y1 + 1), slice(x0, x1 + 1))
        nv = self.volume()
        shape = self.grid_shape()
        if shape == tuple(nv.shape):
            return nv[key]
        return ResampledSource(nv, shape)[key]

    # ------------------------------------------------------------------ pipeline
    def RequestInformation(self, request: Any, inInfoVec: Any, outInfoVec: Any) -> int:
        z, y, x = self.grid_shape()
        spacing, origin = self.geometry()
        info = outInfoVec.GetInformationObject(0)
        info.Set(_SDDP.WHOLE_EXTENT(), 0, x - 1, 0, y - 1, 0, z - 1)
        info.Set(vtkDataObject.SPACING(), *spacing)
        info.Set(vtkDataObject.ORIGIN(), *origin)
        info.Set(vtkAlgorithm.CAN_PRODUCE_SUB_EXTENT(), 1)
        return 1

    def RequestData(self, request: Any, inInfoVec: Any, outInfoVec: Any) -> int:
        info = outInfoVec.GetInformationObject(0)
        extent = info.Get(_SDDP.UPDATE_EXTENT())
        spacing, origin = self.geometry()
        values = self.read_extent(extent)
        output = vtkImageData.GetData(outInfoVec, 0)
        output.SetExtent(*extent)
        output.SetSpacing(*spacing)
        output.SetOrigin(*origin)
        # (z, y, x) in C order runs x fastest, as VTK orders the points of an image.
        array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values).ravel(), deep=True)
        array.SetName(ARRAY_NAME)
        output.GetPointData().SetScalars(array)
        return 1
