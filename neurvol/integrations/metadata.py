"""What the integrations show of a file besides its values: world geometry (spacing,
origin) and descriptive attributes. Shared by the xarray, napari and ParaView readers."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Dict, List, Tuple, Union

from ..container import MAGIC
from ..errors import NeurvolFormatError

if TYPE_CHECKING:  # pragma: no cover
    from ..neural_volume import NeuralVolume

#: File name extension of ``.nvol`` files.
EXTENSION = ".nvol"
#: Dimension names of a volume, in axis order (spec/nvol.md §1: z, y, x).
DIMS = ("z", "y", "x")

Triple = Tuple[float, float, float]


def geometry(nv: "NeuralVolume") -> Tuple[Triple, Triple]:
    """(spacing, origin) along z, y, x from the header's ``volume`` (spec/payload.md §1.1):
    voxel ``(k, j, i)`` sits at ``origin + spacing * (k, j, i)``. Missing keys mean a unit
    grid at the origin; present ones must be three finite numbers."""
    vol = nv.header["volume"]
    return (_triple(vol.get("spacing", [1.0, 1.0, 1.0]), "spacing"),
            _triple(vol.get("origin", [0.0, 0.0, 0.0]), "origin"))


def _triple(value: Any, key: str) -> Triple:
    ok = (isinstance(value, list) and len(value) == 3
          and all(type(v) in (int, float) and math.isfinite(v) for v in value))
    if not ok:
        raise NeurvolFormatError(
            f"header 'volume.{key}' must be 3 finite numbers (z, y, x), got {value!r}"[:200]
            + "; the file is corrupted or was written by a foreign tool")
    return float(value[0]), float(value[1]), float(value[2])


def architectures(nv: "NeuralVolume") -> List[str]:
    """Names of the architectures the file's models use (empty: constant bricks only)."""
    bricks = nv.header.get("bricks")
    specs = bricks.get("models") if isinstance(bricks, dict) else None
    if not isinstance(specs, list):
        model = nv.header.get("model")
        specs = [model] if model is not None else []
    names = {s.get("arch") for s in specs if isinstance(s, dict)}
    return sorted(n for n in names if isinstance(n, str))


def attributes(nv: "NeuralVolume") -> Dict[str, Union[str, float, int, List[int]]]:
    """Descriptive attributes: compression ratio, architecture(s), fit PSNR (dB, when the
    writer recorded it), max error (when the header has ``fit.max_error``), value range,
    brick grid and file size."""
    info = nv.info()
    attrs: Dict[str, Union[str, float, int, List[int]]] = {
        "ratio": float(nv.ratio),
        "architecture": ",".join(architectures(nv)) or "constant",
        "file_bytes": int(nv.nbytes_file),
        "brick_grid": [int(g) for g in nv.header["bricks"]["grid"]],
        "value_range": [float(v) for v in info["value_range"]],
        "format_version": str(info["format_version"]),
    }
    psnr = nv.fit_psnr
    if not math.isnan(psnr):
        attrs["fit_psnr"] = psnr
    fit = nv.header.get("fit")
    max_error = fit.get("max_error") if isinstance(fit, dict) else None
    if type(max_error) in (int, float) and math.isfinite(max_error):
        attrs["max_error"] = float(max_error)
    return attrs


def looks_like_nvol(path: Any) -> bool:
    """True for a path ending in ``.nvol`` or a file starting with the ``.nvol`` signature."""
    try:
        p = os.fspath(path)
    except TypeError:
        return False
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if p.lower().endswith(EXTENSION):
        return True
    if not os.path.isfile(p):     # a directory or a pipe: never read (it could block)
        return False
    try:
        with open(p, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
