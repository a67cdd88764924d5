"""``NeuralVolume``: a compressed volume you query like an array, backed by ``.nvol`` bytes."""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .compress import decode_payload
from .container import NvolReader, brick_ids, serialize_nvol, write_nvol
from .errors import NeurvolFormatError, NeurvolInputError
from .models import VolumeModel, get_architecture
from .volume_checks import check_points

# Points evaluated per forward pass: bounds memory (~100 bytes/point) and stays cache-friendly.
QUERY_CHUNK = 1 << 17
_BRICK_CACHE = 8
_SPACE_TOL = 1e-6


class NeuralVolume:
    """A compressed neural volume.

    Made by :func:`neurvol.encode` or :func:`neurvol.open`; both are backed by the exact
    bytes of a ``.nvol`` file, so a volume answers the same before and after saving.

    Example::

        nv = neurvol.encode(volume, ratio=100)
        nv.save("f.nvol")
        nv = neurvol.open("f.nvol")
        nv.query([[10.0, 20.5, 3.0]])       # (N, 3) z, y, x voxel coordinates -> (N,)
        nv[10:50, :, 100]                    # region decode (outer indexing)
        nv.decode()                          # whole grid in the input's dtype
    """

    def __init__(self, reader: NvolReader, *, device: Union[str, torch.device, None] = None):
        self._reader = reader
        self.header: Dict[str, Any] = reader.header
        self.device = torch.device(device or "cpu")
        vol = self.header.get("volume")
        if not isinstance(vol, dict):
            raise NeurvolFormatError("header has no 'volume' object")
        self._parse_volume(vol)
        self._models: "OrderedDict[int, Union[float, VolumeModel]]" = OrderedDict()
        self._lock = threading.Lock()
        self.encode_seconds: Optional[float] = None  # set by encode(); not stored in files

    def _parse_volume(self, vol: Dict[str, Any]) -> None:
        try:
            shape = tuple(int(s) for s in vol["shape"])
            self._dtype = np.dtype(vol["dtype"])
            self._lo, self._hi = float(vol["min"]), float(vol["max"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NeurvolFormatError(f"header 'volume' is malformed: {exc}") from exc
        if len(shape) != 3 or min(shape) < 2 or max(shape) > 2**31 or self._dtype.kind not in "iuf":
            raise NeurvolFormatError(f"header 'volume' declares an impossible shape/dtype {shape} {self._dtype}")
        if not (math.isfinite(self._lo) and math.isfinite(self._hi) and self._lo <= self._hi):
            raise NeurvolFormatError("header 'volume' value range is invalid")
        self._shape = shape

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> Tuple[int, int, int]:
        """Shape of the original volume, (z, y, x)."""
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        """dtype of the original volume (decoded arrays use it unless asked otherwise)."""
        return self._dtype

    @property
    def nbytes_file(self) -> int:
        """Size of the ``.nvol`` file in bytes, header included."""
        return self._reader.file_size

    @property
    def ratio(self) -> float:
        """Achieved compression ratio: original native bytes / file bytes."""
        return math.prod(self._shape) * self._dtype.itemsize / self.nbytes_file

    @property
    def stats(self) -> Dict[str, int]:
        """Random-access counters: bricks decoded and payload bytes read so far."""
        return {"bricks_read": self._reader.bricks_read, "bytes_read": self._reader.bytes_read}

    def info(self) -> Dict[str, Any]:
        """Everything ``neurvol info`` shows, as a JSON-able dict."""
        h = self.header
        out = {
            "format_version": ".".join(map(str, self._reader.version)),
            "shape": list(self._shape),
            "dtype": self._dtype.name,
            "value_range": [self._lo, self._hi],
            "spacing": h["volume"].get("spacing"),
            "origin": h["volume"].get("origin"),
            "file_bytes": self.nbytes_file,
            "original_bytes": math.prod(self._shape) * self._dtype.itemsize,
            "ratio": round(self.ratio, 3),
            "model": h.get("model"),
            "codec": h.get("codec"),
            "bricks": h.get("bricks"),
            "fit": h.get("fit"),
            "budget": h.get("budget"),
        }
        return out

    def __repr__(self) -> str:
        arch = (self.header.get("model") or {}).get("arch", "constant")
        return (f"NeuralVolume(shape={self._shape}, dtype={self._dtype.name}, arch={arch}, "
                f"file_bytes={self.nbytes_file}, ratio={self.ratio:.1f})")

    # ------------------------------------------------------------------ file
    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the ``.nvol`` file atomically (temp file + rename; never a partial file)."""
        bricks = [self._reader.read_brick(b) for b in range(self._reader.brick_count)]
        write_nvol(path, _without_sections(self.header), bricks)

    def to_bytes(self) -> bytes:
        """The ``.nvol`` file's bytes."""
        bricks = [self._reader.read_brick(b) for b in range(self._reader.brick_count)]
        return serialize_nvol(_without_sections(self.header), bricks)

    def close(self) -> None:
        """Release the file handle (also done by ``with``)."""
        self._reader.close()

    def __enter__(self) -> "NeuralVolume":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ queries
    def query(self, points: Any, space: str = "index", *, clamp: bool = False) -> np.ndarray:
        """Values at arbitrary points, decoding only the bricks they fall in.

        points: ``(N, 3)`` coordinates ordered (z, y, x). ``space="index"`` (default): voxel
        coordinates, voxel centres at integers, 0..n-1 per axis; ``space="normalized"``:
        [-1, 1]^3 with -1/+1 at the first/last voxel centres. Points outside the volume
        raise :class:`NeurvolInputError` unless ``clamp=True`` clamps them to the boundary.
        Returns ``(N,)`` float32 in the original's units (trilinear-consistent: at voxel
        centres it equals ``decode()``).
        """
        p = check_points(points)
        if space == "index":
            norm = p * (2.0 / (np.asarray(self._shape, dtype=np.float64) - 1.0)) - 1.0
        elif space == "normalized":
            norm = p
        else:
            raise NeurvolInputError(f"space must be 'index' or 'normalized', got {space!r}")
        outside = np.abs(norm) > 1.0 + _SPACE_TOL
        if outside.any():
            if not clamp:
                row = int(np.argmax(outside.any(axis=1)))
                raise NeurvolInputError(
                    f"{int(outside.any(axis=1).sum())} points lie outside the volume (first: {p[row].tolist()} "
                    f"in {space} space, shape {self._shape}); pass clamp=True (CLI: --clamp) to clamp them to the boundary"
                )
        norm = np.clip(norm, -1.0, 1.0)
        return self._evaluate(norm)

    def _evaluate(self, norm: np.ndarray) -> np.ndarray:
        out = np.empty(norm.shape[0], dtype=np.float32)
        if norm.shape[0] == 0:
            return out
        grid = self._reader.grid
        if math.prod(grid) == 1:
            out[:] = self._evaluate_brick(0, norm)
            return out
        ids = brick_ids(norm, grid)
        for b in np.unique(ids):
            sel = np.nonzero(ids == b)[0]
            out[sel] = self._evaluate_brick(int(b), norm[sel])
        return out

    def _evaluate_brick(self, b: int, norm: np.ndarray) -> np.ndarray:
        model = self._brick_model(b)
        if isinstance(model, float):
            return np.full(norm.shape[0], model, dtype=np.float32)
        scale = np.float32(self._hi - self._lo)
        res = np.empty(norm.shape[0], dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, norm.shape[0], QUERY_CHUNK):
                c = torch.from_numpy(norm[s:s + QUERY_CHUNK].astype(np.float32)).to(self.device)
                res[s:s + QUERY_CHUNK] = model(c).float().cpu().numpy()
        # The original's values lie in [min, max]: clamping there can only reduce error.
        return np.clip(res * scale + np.float32(self._lo), np.float32(self._lo), np.float32(self._hi))

    def _brick_model(self, b: int) -> Union[float, VolumeModel]:
        with self._lock:
            if b in self._models:
                self._models.move_to_end(b)
                return self._models[b]
            model = self._load_brick(b)
            self._models[b] = model
            if len(self._models) > _BRICK_CACHE:
                self._models.popitem(last=False)
            return model

    def _load_brick(self, b: int) -> Union[float, VolumeModel]:
        payload = self._reader.read_brick(b)
        spec = self.header.get("model")
        if payload[:1] == b"\x00":
            return float(decode_payload(payload, []))  # constant brick
        if not isinstance(spec, dict):
            raise NeurvolFormatError("a brick holds weights but the header has no 'model'")
        if self._reader.brick_count != 1:
            # Format 1.0 defines per-brick models for a single brick only; bricked
            # ensembles (local coordinates, ghost cells) arrive in a later minor version.
            raise NeurvolFormatError("this file stores several brick models, which this neurvol cannot decode; upgrade neurvol")
        model = build_model(spec)
        names = list(model.state_dict().keys())
        specs = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
        arrays = decode_payload(payload, specs)
        assert isinstance(arrays, dict)
        model.load_state_dict({n: torch.from_numpy(arrays[n]) for n in names})
        return model.to(self.device).eval()

    def decode(
        self,
        shape: Optional[Sequence[int]] = None,
        dtype: Any = None,
        *,
        out: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """Decode the whole grid (slab by slab, in bounded memory).

        shape: output grid (default: the original's); another shape resamples the same
        extent (corner voxel centres coincide). dtype: default the original's (integers are
        rounded and clipped); ``np.float32`` gives the raw reconstruction. out: an array
        (e.g. a ``np.memmap``) of that shape to fill, for outputs larger than memory.
        """
        target = self._shape if shape is None else tuple(int(s) for s in shape)
        if len(target) != 3 or min(target) < 1:
            raise NeurvolInputError(f"shape must be 3 positive ints, got {shape!r}")
        dt = self._dtype if dtype is None else np.dtype(dtype)
        if out is None:
            out = np.empty(target, dtype=dt)
        elif tuple(out.shape) != target:
            raise NeurvolInputError(f"out has shape {out.shape}, expected {target}")
        axes = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in target]
        rows = max(1, QUERY_CHUNK * 4 // (target[1] * target[2]))
        yx = np.stack(np.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
        for z0 in range(0, target[0], rows):
            zs = axes[0][z0:z0 + rows]
            coords = np.empty((len(zs), yx.shape[0], 3))
            coords[..., 0] = zs[:, None]
            coords[..., 1:] = yx[None]
            vals = self._evaluate(coords.reshape(-1, 3))
            out[z0:z0 + len(zs)] = _cast(vals, dt).reshape(len(zs), target[1], target[2])
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        """Numpy-style region decode with outer indexing: ints drop an axis, slices and
        1-D integer arrays keep it (each axis indexed independently, as zarr's ``oindex``)."""
        per_axis = _expand_key(key)
        idx: List[np.ndarray] = []
        keep: List[bool] = []
        for n, k in zip(self._shape, per_axis):
            try:
                sel = np.arange(n)[k]
            except IndexError as exc:
                raise NeurvolInputError(f"index {k!r} out of range for axis of length {n}") from exc
            except (TypeError, ValueError) as exc:
                raise NeurvolInputError(f"unsupported index {k!r}: {exc}") from exc
            if np.ndim(sel) > 1:
                raise NeurvolInputError("only 1-D index arrays are supported per axis")
            keep.append(np.ndim(sel) == 1)
            idx.append(np.atleast_1d(sel))
        mesh = np.meshgrid(*idx, indexing="ij")
        pts = np.stack([m.reshape(-1) for m in mesh], 1).astype(np.float64)
        vals = self.query(pts) if pts.shape[0] else np.empty(0, np.float32)
        full = _cast(vals, self._dtype).reshape([len(i) for i in idx])
        return full.reshape([len(i) for i, k in zip(idx, keep) if k])


def build_model(spec: Dict[str, Any]) -> VolumeModel:
    """Rebuild an untrained model from the header's ``model`` object."""
    try:
        arch = get_architecture(spec["arch"])
    except (KeyError, TypeError, NeurvolInputError) as exc:
        raise NeurvolFormatError(f"header 'model' names no known architecture: {exc}") from exc
    config = arch.config_cls.from_dict(spec.get("config") or {})
    return arch.build(config)


def _expand_key(key: Any) -> Tuple[Any, Any, Any]:
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is None for k in key):
        raise NeurvolInputError("np.newaxis is not supported in region decodes")
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise NeurvolInputError("at most one Ellipsis in an index")
    if n_ell:
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
    if len(key) > 3:
        raise NeurvolInputError(f"too many indices for a 3-D volume: {len(key)}")
    return tuple(key) + (slice(None),) * (3 - len(key))  # type: ignore[return-value]


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def _without_sections(header: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in header.items() if k != "sections"}
