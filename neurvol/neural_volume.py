"""``NeuralVolume``: a compressed volume you query like an array, backed by ``.nvol`` bytes."""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import operator
import os
import threading
import warnings
from collections import OrderedDict, deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._closing import ClosesOnExit
from .backend import Backend, select_backend
from .compress import decode_payload, payload_stats
from .compress.bound import Corrections, parse_bound, resample_linear
from .compress.payload import max_payload_bytes
from .compress.registry import stage_names
from .container import NvolReader, serialize_nvol, write_nvol
from .ensemble.geometry import BrickLayout, parse_layout
from .ensemble.routing import RoutedQuery, Router, spatial_order
from .errors import NeurvolFormatError, NeurvolInputError, NeurvolIOError, brief
from .masking import LoadedMask, nearest_indices, parse_mask
from .model_limits import check_model_cost, counted_tensors
from .models.config import MAX_MODEL_PARAMS, ModelConfig
from .models.numpy_eval import NumpyArchitecture, get_numpy_architecture
from .volume_checks import (FLOAT32_MAX, MAX_AXIS, MAX_VOXELS, cast_to_int, check_decode_dtype,
                            check_finite_points, check_points, check_shape)

# Points evaluated per forward pass: bounds memory (~100 bytes/point) and stays cache-friendly.
QUERY_CHUNK = 1 << 17
# Points per model call on the CPU: the per-point intermediates (e.g. amgsrn's M x N local
# coordinates) then stay in the L2 cache; 2^14 was fastest of 2^13..2^15 for amgsrn's
# evaluation path (median of 5 interleaved 10^6-point queries, BENCHMARKS.md).
MODEL_CHUNK = 1 << 14
#: Threads that evaluate a query's chunks (and a decode's blocks) side by side on the CPU:
#: torch's own threads and numpy leave much of one chunk's time single-threaded (BENCHMARKS.md,
#: "queries and decodes on a small thread pool"). Each chunk is the same computation, so
#: results do not depend on the thread count.
QUERY_THREADS = max(1, min(4, os.cpu_count() or 1))
_BRICK_CACHE = 8
# Bricked files: the LRU holds up to this many decoded brick models, so a slab decode that
# crosses a row of bricks does not decode each of them again for every block.
_BRICK_CACHE_BRICKED = 64
#: Most bytes of model parameters the brick cache holds (the resource model,
#: spec/resources.md); the brick in use is kept whatever its size.
MAX_CACHE_BYTES = 128 << 20
#: Most tensors, summed over the distinct model configs of a file, whose shapes a reader
#: builds (spec/resources.md): bounds the structure work a header can ask for.
MAX_FILE_CONFIG_TENSORS = 1 << 13
#: Most distinct model configs a bricked header may list (bricks.models).
MAX_BRICK_CONFIGS = 4096
_SPACE_TOL = 1e-6
# Points per block of a grid decode (decode, region reads): coordinates ~24 bytes/point.
_DECODE_BLOCK = QUERY_CHUNK * 4
#: Most points of a bricked query routed and sorted at once (~40 bytes a point while they
#: are evaluated): each brick then gets its points in as few, large batches as possible.
ROUTE_CHUNK = 1 << 20
#: Points a query thread routes and sorts at once: large enough that the routing's many
#: short numpy calls do not make the threads contend for the GIL (smaller pieces, even
#: ones whose temporaries fit the L2 cache, were slower on two threads), small enough
#: that the pieces spread over the threads.
ROUTE_PIECE = 1 << 17
#: Most entries of one brick evaluated by one task: a brick holding most of a query's
#: points is still shared by the threads.
BRICK_TASK = 1 << 16
#: Queries evaluate their points cell by cell (:func:`~neurvol.ensemble.routing.spatial_order`)
#: of a grid of this many cells a side over a single model, or over each brick: random points
#: then read a model's grids from the CPU caches (``benchmarks/run_bricked_query.py``).
QUERY_CELLS = 32
BRICK_QUERY_CELLS = 8
#: Fewer points than this are evaluated in their order (sorting would not pay).
SPATIAL_MIN_POINTS = 4096
#: Bricked queries of at most this many points decode their cold bricks before evaluating
#: any, then evaluate them on one query thread (:meth:`NeuralVolume._query_bricked`).
FEW_POINTS = 4096
#: Codecs this reader decodes (header key "codec": {"name", "version"}).
SUPPORTED_CODECS = {("kmeans-zstd", 1), ("neurvol", 2)}


class NeuralVolume(ClosesOnExit):
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

    Models are evaluated by a backend (:mod:`neurvol.backend`): torch when it is
    installed, numpy otherwise, or as ``backend=`` / ``$NEURVOL_BACKEND`` say; both
    evaluate the spec's maths and agree to float32 rounding.
    """

    def __init__(self, reader: NvolReader, *, device: Any = None,
                 backend: Optional[str] = None):
        if not isinstance(reader, NvolReader):
            raise NeurvolInputError(
                f"NeuralVolume needs an NvolReader, got {type(reader).__name__}; use "
                "neurvol.open(path) to open a file")
        self._backend: Backend = select_backend(backend, device)
        self._reader = reader
        self.header: Dict[str, Any] = reader.header
        #: Where models run: a ``torch.device`` (torch backend) or ``"cpu"`` (numpy).
        self.device = self._backend.device
        vol = self.header.get("volume")
        if not isinstance(vol, dict):
            raise NeurvolFormatError("header has no 'volume' object")
        self._parse_volume(vol)
        # Bricked files (spec/bricks.md): layout, per-brick model configs. None: one brick.
        self._layout: Optional[BrickLayout] = None
        self._router: Optional[Router] = None
        self._brick_specs: Optional[List[Any]] = None
        self._model_ids: Optional[List[int]] = None
        self._cache_size = _BRICK_CACHE
        if reader.brick_count > 1:
            self._parse_bricks(self.header.get("bricks"))
        self._models: "OrderedDict[int, Tuple[Any, int]]" = OrderedDict()   # brick -> (float or model, its bytes)
        self._cache_bytes = 0
        # Bricks being decoded by some thread: others needing them wait for that decode.
        self._loading: Dict[int, "Future[Any]"] = {}
        # Shapes of each distinct model config, built once per file (spec/resources.md).
        self._specs: Dict[str, Tuple[Any, Any, List[Tuple[str, Tuple[int, ...]]]]] = {}
        self._spec_tensors = 0
        self._lock = threading.Lock()
        self._spec_lock = threading.Lock()
        # Error-bounded files (spec/correction.md): the bound, and the correction stream
        # once a request needs it.
        self._bound = parse_bound(self.header, reader.section_names)
        self._corrections: Optional[Corrections] = None
        # Masked files (spec/mask.md): NaN / fill regions, decoded on first use.
        self._mask = self._parse_mask()
        self.encode_seconds: Optional[float] = None  # set by encode(); not stored in files
        # Set by an error-bounded encode: {"model_ratio": the model kept, or None}.
        self.bounded_choice: Optional[Dict[str, Any]] = None
        # Set by a ratio= encode that weighed a pure predictor file against a model: each
        # candidate's PSNR in dB (None: no model fitted the budget), the better one kept.
        self.hybrid_candidates: Optional[Dict[str, Any]] = None

    def _parse_mask(self) -> Optional[LoadedMask]:
        spec = parse_mask(self.header, self._reader.section_names, self._shape, self._dtype)
        if spec is None:
            return None
        if self._bound is not None or self._reader.brick_count > 1:
            raise NeurvolFormatError(
                "this file has a mask and bricks or an error bound, which format 1.3 does "
                "not combine (spec/mask.md); the file is damaged")
        return LoadedMask(spec, self._shape,
                          lambda: self._reader.read_section(spec.to_header()["section"]))

    @property
    def masked(self) -> bool:
        """Whether the volume has masked (NaN / fill value) regions (spec/mask.md)."""
        return self._mask is not None

    @property
    def fill_value(self) -> Optional[float]:
        """The fill value of a masked volume (NaN for NaN regions); None without a mask."""
        if self._mask is None:
            return None
        return math.nan if self._mask.spec.fill is None else self._mask.spec.fill

    def valid_mask(self) -> Optional[np.ndarray]:
        """Bool array of the volume's shape, True where the volume has data (None for a
        file without a mask)."""
        if self._mask is None:
            return None
        self._check_open()
        return ~self._mask.region([np.arange(n) for n in self._shape])

    def _parse_volume(self, vol: Dict[str, Any]) -> None:
        """Validate the header's "volume" object (spec/payload.md §1.1) with JSON types
        checked exactly: a string "234" is not a shape, null is not a dtype."""
        shape = vol.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3
                and all(type(n) is int for n in shape)):
            raise NeurvolFormatError(
                f"header 'volume.shape' must be 3 integers [D, H, W], got {_short(shape)}")
        if min(shape) < 2 or max(shape) > MAX_AXIS or math.prod(shape) > MAX_VOXELS:
            raise NeurvolFormatError(
                f"header 'volume.shape' {brief(shape)} is impossible: every axis must be in "
                f"[2, {MAX_AXIS}] and the volume at most {MAX_VOXELS} voxels")
        dtype = vol.get("dtype")
        if not isinstance(dtype, str) or len(dtype) > 32:
            raise NeurvolFormatError(
                f"header 'volume.dtype' must be a numpy dtype string, got {_short(dtype)}")
        try:
            with warnings.catch_warnings():     # deprecated aliases ('a') are refused below
                warnings.simplefilter("ignore", DeprecationWarning)
                dt = np.dtype(dtype)
        except Exception:  # noqa: BLE001 - numpy raises TypeError/ValueError/... for junk
            raise NeurvolFormatError(f"header 'volume.dtype' {dtype!r} is not a dtype") from None
        if dt.kind not in "iuf" or dt.fields is not None or dt.subdtype is not None:
            raise NeurvolFormatError(
                f"header 'volume.dtype' {dtype!r} is not an integer or float dtype")
        lo, hi = vol.get("min"), vol.get("max")
        if not all(type(v) in (int, float) for v in (lo, hi)):
            raise NeurvolFormatError(
                f"header 'volume.min'/'max' must be numbers, got {_short(lo)}, {_short(hi)}")
        try:
            lo, hi = float(lo), float(hi)
        except OverflowError:
            raise NeurvolFormatError("header 'volume.min'/'max' overflow a double") from None
        if not (lo <= hi and max(abs(lo), abs(hi), hi - lo) <= FLOAT32_MAX):
            raise NeurvolFormatError(
                f"header 'volume' value range [{lo!r}, {hi!r}] is invalid: decoding computes "
                "in float32, so min <= max and both (and max - min) must be finite in float32")
        codec = self.header.get("codec")
        name = codec.get("name") if isinstance(codec, dict) else None
        version = codec.get("version") if isinstance(codec, dict) else None
        if not (isinstance(name, str) and type(version) is int):
            raise NeurvolFormatError(
                f'header \'codec\' must be {{"name": str, "version": int}}, got {_short(codec)}')
        if (name, version) not in SUPPORTED_CODECS:
            raise NeurvolFormatError(
                f"codec {name!r} version {version} is not supported by this neurvol "
                f"(it reads {sorted(SUPPORTED_CODECS)}); upgrade neurvol")
        for key, positive in (("spacing", True), ("origin", False)):
            v = vol.get(key)
            if v is not None and not (
                    isinstance(v, list) and len(v) == 3
                    and all(_finite_number(x) and (x > 0 or not positive) for x in v)):
                raise NeurvolFormatError(
                    f"header 'volume.{key}' must be 3 finite numbers"
                    + (" > 0" if positive else "") + f" (z, y, x) or absent, got {brief(v)}")
        self._shape: Tuple[int, int, int] = (shape[0], shape[1], shape[2])
        self._dtype = dt
        self._lo, self._hi = lo, hi

    def _parse_bricks(self, bricks: Any) -> None:
        """Validate the ensemble keys of a multi-brick header (spec/bricks.md §3): the
        layout (ghost, blend) and, when present, the config table and per-brick ids."""
        if not isinstance(bricks, dict):
            raise NeurvolFormatError("header 'bricks' must be an object")
        self._layout = parse_layout(self._shape, self._reader.grid, bricks)
        self._router = Router(self._layout)
        count = self._reader.brick_count
        self._cache_size = max(_BRICK_CACHE, min(count, _BRICK_CACHE_BRICKED))
        models, ids = bricks.get("models"), bricks.get("model_ids")
        if models is None and ids is None:
            if "model" in self.header:
                raise NeurvolFormatError(
                    "header has a 'model' but 'bricks' lists no 'models'/'model_ids' "
                    "(spec/bricks.md §3); the file is corrupted")
            return  # constant bricks only (checked when a brick is read)
        if not (isinstance(models, list) and 1 <= len(models) <= min(count, MAX_BRICK_CONFIGS)):
            raise NeurvolFormatError(
                f"header 'bricks.models' must be a list of 1 to {min(count, MAX_BRICK_CONFIGS)} "
                f"model objects, got {_short(models)}")
        if not (isinstance(ids, list) and len(ids) == count
                and all(type(i) is int and 0 <= i < len(models) for i in ids)):
            raise NeurvolFormatError(
                f"header 'bricks.model_ids' must list {count} integers in [0, {len(models) - 1}] "
                f"(one per brick), got {_short(ids)}")
        for m in models:
            if not isinstance(m, dict):
                raise NeurvolFormatError(
                    f"header 'bricks.models' entries must be objects, got {_short(m)}")
        seen = set()
        for i in sorted(set(ids)):   # configs and parameter caps, checked before any brick
            key = _spec_key(models[i])   # is read; once per distinct config
            if key not in seen:
                seen.add(key)
                _config_of(models[i])
        if self.header.get("model", models[0]) != models[0]:
            raise NeurvolFormatError(
                "header 'model' must equal 'bricks.models[0]' in a bricked file; the file is "
                "corrupted")
        self._brick_specs, self._model_ids = models, ids

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
    def backend(self) -> str:
        """The evaluation backend: ``"torch"`` or ``"numpy"`` (see :mod:`neurvol.backend`)."""
        return self._backend.name

    @property
    def brick_count(self) -> int:
        """Number of bricks (1 for a single model)."""
        return self._reader.brick_count

    @property
    def fit_psnr(self) -> float:
        """PSNR in dB of the stored model against the original, measured at encode time
        (header ``fit.psnr``; of the whole decode for an error-bounded file): ``inf`` for a
        file without a model or correction (exact), ``nan`` when the writer did not record it."""
        if (self.header.get("model") is None and not self.header.get("bricks", {}).get("models")
                and self._bound is None):
            return math.inf
        bound = None if self._bound is None else float(self._bound["max_error"])
        if bound == 0 or bound is not None and self._dtype.kind in "iu" and bound < _EXACT_INT_BOUND:
            return math.inf     # a bound below the rounding of the stored values: exact
        fit = self.header.get("fit")
        value = fit.get("psnr") if isinstance(fit, dict) else None
        if isinstance(value, bool) or not _finite_number(value) and not isinstance(value, float):
            return math.nan     # not a number, or an int too large for a float
        return float(value)

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
            "model": self._model_info(),
            "codec": self._codec_info(),
            "bricks": h.get("bricks"),
            "fit": h.get("fit"),
            "budget": h.get("budget"),
        }
        if self._bound is not None:
            out["bound"] = dict(self._bound)
        # How the bytes are split (spec/correction.md): a model, a correction stream, or both.
        out["content"] = ("model" if self._bound is None else "predictor"
                          if out["model"] is None else "model+correction")
        if self._mask is not None:
            out["mask"] = {"fill": self._mask.spec.fill, "masked": self._mask.spec.masked,
                           "bytes": self._section_length(self._mask.spec.to_header()["section"])}
        return out

    def _section_length(self, name: str) -> int:
        return next(x.length for x in self._reader.sections if x.name == name)

    @property
    def max_error(self) -> Optional[float]:
        """The guaranteed bound of an error-bounded file (``None`` for other files): every
        voxel of ``decode()`` and every ``query()`` at a voxel centre is within it."""
        return None if self._bound is None else float(self._bound["max_error"])

    def _correction_stream(self) -> Corrections:
        with self._lock:
            if self._corrections is None:
                data = self._reader.read_section(self._bound["section"])
                self._corrections = Corrections(data, self._shape, self._dtype,
                                                float(self._bound["max_error"]),
                                                self._base_block, self._base_voxels)
            return self._corrections

    def _decode_bounded(self, target: Tuple[int, int, int]) -> np.ndarray:
        """An error-bounded file's decode: on its own grid the model plus the corrections
        (the volume's dtype, within the bound); on another grid, as query() between voxel
        centres, the model there plus the trilinear interpolation of the corrections."""
        base = np.empty(self._shape, dtype=np.float32)
        self._fill_grid([_LinspaceAxis(n) for n in self._shape], base, np.dtype(np.float32))
        values = self._correction_stream().decode(base)
        if target == self._shape:
            return values
        model = np.empty(target, dtype=np.float32)
        self._fill_grid([_LinspaceAxis(n) for n in target], model, np.dtype(np.float32))
        corr = values.astype(np.float64) - base
        return model + resample_linear(corr, target)

    def _base_voxels(self, zyx: np.ndarray) -> np.ndarray:
        """The model's float32 values at integer voxels ``(N, 3)``, at the coordinates
        decode() gives them (``np.linspace(-1, 1, n)[i]``)."""
        top = np.asarray(self._shape, dtype=np.float64) - 1.0
        v = np.asarray(zyx, dtype=np.float64)
        norm = np.where(v == top, 1.0, v * (2.0 / top) + -1.0)
        return self._evaluate(norm)

    def _base_block(self, sl: Tuple[slice, ...]) -> np.ndarray:
        """The model's float32 values on a box of voxels, with the coordinates decode()
        uses, so corrections decoded by block meet the base they were coded against."""
        out = np.empty([s.stop - s.start for s in sl], dtype=np.float32)
        self._fill_grid([_SliceAxis(n, s.start, s.stop) for n, s in zip(self._shape, sl)],
                        out, np.dtype(np.float32))
        return out

    def _codec_info(self) -> Any:
        """The header's codec entry plus ``stages``: its pipeline's stage names, from
        configs (newer files) or labels (older ones) alike (spec/payload.md §1.3)."""
        codec = self.header.get("codec")
        if not isinstance(codec, dict):
            return codec
        return dict(codec, stages=stage_names(codec.get("pipeline")))

    def _model_info(self) -> Optional[Dict[str, Any]]:
        """The header's model entry plus its description and parameter count."""
        spec = self.header.get("model")
        if spec is None:
            return None
        try:
            arch, config, specs = self._config_specs(spec)
            count = sum(math.prod(shape) for _, shape in specs)
        except NeurvolFormatError as exc:
            # info() describes damaged files too; decoding a model brick raises instead.
            return {"invalid": str(exc)}
        return dict(spec, description=arch.description, parameters=count)

    def __repr__(self) -> str:
        model = self.header.get("model")
        arch = model.get("arch", "?") if isinstance(model, dict) else "constant"
        arch = arch if isinstance(arch, str) else "?"
        return (f"NeuralVolume(shape={self._shape}, dtype={self._dtype.name}, arch={arch}, "
                f"file_bytes={self.nbytes_file}, ratio={self.ratio:.1f})")

    # ------------------------------------------------------------------ file
    @property
    def closed(self) -> bool:
        """True after :meth:`close`: queries and decodes then raise NeurvolInputError."""
        return self._reader.closed

    def _check_open(self) -> None:
        if self._reader.closed:
            raise NeurvolInputError(
                f"this NeuralVolume ({self._reader.name}) is closed; open the file again")

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the ``.nvol`` file atomically (temp file + rename; never a partial file)."""
        self._check_open()
        bricks = [self._reader.read_brick(b) for b in range(self._reader.brick_count)]
        write_nvol(path, _without_sections(self.header), bricks, self._extra_sections(),
                   minor=self._reader.version[1])

    def to_bytes(self) -> bytes:
        """The ``.nvol`` file's bytes."""
        self._check_open()
        bricks = [self._reader.read_brick(b) for b in range(self._reader.brick_count)]
        return serialize_nvol(_without_sections(self.header), bricks, self._extra_sections(),
                              minor=self._reader.version[1])

    def _extra_sections(self) -> Dict[str, bytes]:
        """Sections after the bricks (e.g. an error-bounded file's corrections), kept as
        they are when the file is written again."""
        return {name: self._reader.read_section(name)
                for name in self._reader.section_names[2:]}

    def close(self) -> None:
        """Release the file handle (also done by ``with``). Idempotent; afterwards data
        access raises NeurvolInputError (metadata such as ``shape`` and ``info()`` still works)."""
        self._reader.close()
        with self._lock:
            self._models.clear()
            self._cache_bytes = 0


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
        self._check_open()
        if not isinstance(space, str) or space not in ("index", "normalized"):
            raise NeurvolInputError(f"space must be 'index' or 'normalized', got {space!r}")
        if not isinstance(clamp, (bool, np.bool_)):
            raise NeurvolInputError(f"clamp must be True or False, got {clamp!r}")
        p = check_points(points, finite=False)
        n = p.shape[0]
        scale = 2.0 / (np.asarray(self._shape, dtype=np.float64) - 1.0)
        out = np.empty(n, dtype=np.float32)
        if self._router is not None:
            n_outside, first_outside = self._query_bricked(p, space == "index", scale,
                                                           clamp, out)
        else:
            n_outside, first_outside = self._query_model(p, space == "index", scale,
                                                         clamp, out)
        if n_outside and not clamp:
            raise NeurvolInputError(
                f"{n_outside} points lie outside the volume (first: {first_outside} "
                f"in {space} space, shape {self._shape}); pass clamp=True (CLI: --clamp) to clamp them to the boundary"
            )
        if self._bound is not None and n:
            # Error-bounded: exact at voxel centres, model + trilinear corrections between.
            idx = p.astype(np.float64)
            if space == "normalized":
                idx = (idx + 1.0) * ((np.asarray(self._shape, dtype=np.float64) - 1.0) / 2.0)
            out = self._correction_stream().at_points(idx, out).astype(np.float32)
        if self._mask is not None and n:
            # NaN where the nearest voxel is masked (spec/mask.md).
            idx = p.astype(np.float64)
            if space == "normalized":
                idx = (idx + 1.0) * ((np.asarray(self._shape, dtype=np.float64) - 1.0) / 2.0)
            out[self._mask.at_points(idx)] = np.nan
        return out

    def _query_model(self, p: np.ndarray, index: bool, scale: np.ndarray, clamp: bool,
                     out: np.ndarray) -> Tuple[int, Optional[List[float]]]:
        """One model: the points ``p`` into ``out`` in chunks of :data:`QUERY_CHUNK` on the
        query threads; the count of points outside the volume and the first of them (then,
        without ``clamp``, nothing is evaluated)."""
        def evaluate_chunk(s: int, loader: Optional[Executor]) -> Tuple[int, Optional[List[float]]]:
            norm, count, first = normalized_points(p[s:s + QUERY_CHUNK], index, scale)
            if count and not clamp:
                return count, first                # will raise
            out[s:s + QUERY_CHUNK] = self._evaluate(norm, loader, spatial=True)
            return 0, None

        n_outside, first_outside = 0, None
        for count, first in self._map_chunks(evaluate_chunk, range(0, p.shape[0], QUERY_CHUNK)):
            n_outside += count
            if first_outside is None:
                first_outside = first
        return n_outside, first_outside

    def _query_bricked(self, p: np.ndarray, index: bool, scale: np.ndarray, clamp: bool,
                       out: np.ndarray) -> Tuple[int, Optional[List[float]]]:
        """A bricked file: :meth:`_query_model`'s contract. Up to :data:`ROUTE_CHUNK` points
        at a time are routed in pieces of :data:`ROUTE_PIECE` side by side on the query
        threads (:class:`~neurvol.ensemble.routing.RoutedQuery`), sorted by brick and cell
        in one pass, and each touched brick is evaluated on all of its points in a few
        tasks of up to :data:`BRICK_TASK` entries on the same threads (which decode the
        bricks not in the cache side by side, longest payload first; a query of at most
        :data:`FEW_POINTS` points decodes them all first, then evaluates on one thread);
        then the values are summed per point."""
        assert self._router is not None
        n = p.shape[0]
        with self._backend.scope(), self._query_pool() as pool:
            def run(fn: Callable[[Any], Any], items: Sequence[Any]) -> List[Any]:
                if pool is None or len(items) < 2:
                    return [fn(item) for item in items]
                return list(pool.map(fn, items))

            for s in range(0, n, ROUTE_CHUNK):
                part = p[s:s + ROUTE_CHUNK]
                m = part.shape[0]
                routed = RoutedQuery(self._router,
                                     BRICK_QUERY_CELLS if m >= SPATIAL_MIN_POINTS else 1)

                def route(a: int) -> Tuple[int, Optional[List[float]]]:
                    norm, count, first = normalized_points(part[a:a + ROUTE_PIECE], index, scale)
                    if count and not clamp:
                        return count, first        # will raise
                    routed.add(a, norm)
                    return 0, None

                pieces = range(0, m, ROUTE_PIECE)
                checks = run(route, pieces)
                n_outside = sum(count for count, _ in checks)
                if n_outside and not clamp:
                    first = next(f for count, f in checks if count)
                    # The whole query's count for the message; nothing more is evaluated.
                    for a in range(s + ROUTE_CHUNK, n, ROUTE_CHUNK):
                        n_outside += normalized_points(p[a:a + ROUTE_CHUNK], index, scale)[1]
                    return n_outside, first
                tasks = self._cold_first(routed.tasks(BRICK_TASK))
                cold = self._decode_first(tasks) if pool is not None and m <= FEW_POINTS else []
                if pool is not None and cold:
                    # A few points over cold bricks: the bricks are decoded side by side
                    # first, then evaluated one after another on one query thread. (Each
                    # brick gets a few points, a few dozen short tensor calls; evaluated
                    # beside the other thread's decoding, each call lets that thread take
                    # the GIL for its decode's Python before this one may go on.)
                    run(self._brick_model, cold)
                    pool.submit(lambda: [routed.run(task, self._evaluate_brick)
                                         for task in tasks]).result()
                else:
                    run(lambda task: routed.run(task, self._evaluate_brick), tasks)
                part_out = out[s:s + m]
                run(lambda a: routed.combine(a, part_out[a:a + ROUTE_PIECE]), pieces)
        return 0, None

    def _cold_first(self, tasks: List[Any]) -> List[Any]:
        """Brick tasks ``(brick, ...)`` in the order the query threads take them: when
        some bricks are not in the cache, those first, longest payload first (decoding
        dominates a cold brick's task, and it grows with the payload), so the threads do
        not end waiting on one large brick taken last; else as given."""
        with self._lock:
            missing = {b for b, _ in tasks if b not in self._models}
        if not missing:
            return tasks
        return sorted(tasks, key=lambda t: -self._reader.brick_length(t[0])
                      if t[0] in missing else 0)

    def _decode_first(self, tasks: List[Any]) -> List[int]:
        """The bricks of ``tasks`` not in the cache, to decode before any is evaluated;
        none when fewer than two, or when they would not all fit in the cache beside
        the cached ones (decoded ones would then be evicted before their evaluation)."""
        bricks = list(dict.fromkeys(b for b, _ in tasks))
        with self._lock:
            missing = [b for b in bricks if b not in self._models]
            count, nbytes = len(self._models), self._cache_bytes
        if len(missing) < 2 or count + len(missing) > self._cache_size:
            return []
        if nbytes + sum(self._brick_bytes(b) for b in missing) > MAX_CACHE_BYTES:
            return []
        return missing

    @contextlib.contextmanager
    def _query_pool(self) -> Iterator[Optional[Executor]]:
        """:data:`QUERY_THREADS` threads for one call (:meth:`_map_chunks` says why they
        live for one call and run torch on one thread each), or None on one thread or a
        GPU."""
        if not self._backend.threaded or QUERY_THREADS < 2:
            yield None
            return
        with self._backend.worker_threads() as (init, initargs):
            with ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="neurvol-query",
                                    initializer=init, initargs=initargs) as pool:
                yield pool

    def _evaluate(self, norm: np.ndarray, loader: Optional[Executor] = None,
                  spatial: bool = False) -> np.ndarray:
        """``(N,)`` float32 values at normalized points ``norm (N, 3)`` (float64 in
        [-1, 1]). Bricked files: the points are routed to their bricks in one pass (spatial
        hash and blend bands, :class:`~neurvol.ensemble.routing.Router`), each touched brick
        is evaluated once on all of its points, and the weighted values summed; ``loader``
        (threads): when a touched brick is not in the cache, the bricks are decoded and
        evaluated on its threads side by side.
        ``spatial``: the points are in no particular order (a query), so they are evaluated
        cell by cell (:data:`QUERY_CELLS`); grid decodes are in order already."""
        n = norm.shape[0]
        if n == 0:
            return np.empty(0, dtype=np.float32)
        spatial = spatial and n >= SPATIAL_MIN_POINTS
        if self._router is None:
            if not spatial:
                return self._evaluate_brick(0, norm)
            order = spatial_order(norm, QUERY_CELLS)
            out = np.empty(n, dtype=np.float32)
            out[order] = self._evaluate_brick(0, np.take(norm, order, axis=0))
            return out
        batches = self._router.batches(norm, BRICK_QUERY_CELLS if spatial else 1)
        bricks = batches.bricks.tolist()
        values = np.empty(batches.point.shape[0], dtype=np.float32)

        def run(g: int) -> None:
            a, e = int(batches.bounds[g]), int(batches.bounds[g + 1])
            values[a:e] = self._evaluate_brick(bricks[g], batches.local[a:e])

        if loader is not None and len(bricks) > 1 and self._any_missing(bricks):
            # Cold bricks: each is decoded and evaluated (its first evaluation builds the
            # model's lookup tables) on the loader's threads side by side; a brick's model
            # is used as soon as it is decoded, so none waits in the cache. Memory: the
            # cache plus one brick per loader thread.
            for _ in loader.map(run, range(len(bricks))):
                pass
        else:
            for g in range(len(bricks)):
                run(g)
        return batches.combine(values)

    def _any_missing(self, bricks: List[int]) -> bool:
        """Whether any of ``bricks`` is not in the cache."""
        with self._lock:
            return any(b not in self._models for b in bricks)

    def _brick_bytes(self, b: int) -> int:
        """The parameter bytes brick ``b``'s model takes once decoded (0 for a constant,
        known from the index; a damaged config counts 0: its decode raises)."""
        if self._reader.brick_length(b) <= _CONSTANT_PAYLOAD:
            return 0
        try:
            _, _, specs = self._config_specs(self._brick_spec(b))
        except NeurvolFormatError:
            return 0
        return 4 * sum(math.prod(shape) for _, shape in specs)

    def _evaluate_brick(self, b: int, norm: np.ndarray) -> np.ndarray:
        model = self._brick_model(b)
        if isinstance(model, float):
            return np.full(norm.shape[0], model, dtype=np.float32)
        scale = np.float32(self._hi - self._lo)
        res = np.empty(norm.shape[0], dtype=np.float32)
        step = QUERY_CHUNK
        if self._backend.threaded:
            # Calls of about MODEL_CHUNK points: a brick's batch a little over it is one
            # call, not one and a small one (a call has a fixed cost).
            step = -(-norm.shape[0] // max(1, round(norm.shape[0] / MODEL_CHUNK)))
        for s in range(0, norm.shape[0], QUERY_CHUNK):
            res[s:s + QUERY_CHUNK] = self._backend.evaluate(model, norm[s:s + QUERY_CHUNK], step)
        if not np.isfinite(res).all():
            # Only a damaged (or hostile) set of weights overflows float32.
            raise NeurvolFormatError(
                f"the model of brick {b} produces non-finite values; the file is corrupted")
        # The original's values lie in [min, max]: clamping there can only reduce error.
        res *= scale
        res += np.float32(self._lo)
        return np.clip(res, np.float32(self._lo), np.float32(self._hi), out=res)

    def _brick_model(self, b: int) -> Any:
        """Brick ``b``'s constant value or its model (a torch module or a numpy model,
        as the backend builds it), decoded on first use and kept in an LRU. Threads decode
        different bricks side by side; a thread needing a brick another one is decoding
        waits for it (if that decode fails, it tries itself and raises its own error: a
        shared exception would tie the threads' frames together)."""
        while True:
            with self._lock:
                hit = self._models.get(b)
                if hit is not None:
                    self._models.move_to_end(b)
                    return hit[0]
                pending = self._loading.get(b)
                if pending is None:
                    pending = self._loading[b] = Future()
                    break
            model = pending.result()
            if model is not None:
                return model
        try:
            model, nbytes = self._load_brick(b)
        except BaseException:
            with self._lock:
                del self._loading[b]
            pending.set_result(None)
            raise
        with self._lock:
            del self._loading[b]
            if not self._reader.closed:
                self._models[b] = (model, nbytes)
                self._cache_bytes += nbytes
                # Evict by count and by bytes (spec/resources.md), never the brick just loaded.
                while len(self._models) > 1 and (len(self._models) > self._cache_size
                                                 or self._cache_bytes > MAX_CACHE_BYTES):
                    self._cache_bytes -= self._models.popitem(last=False)[1][1]
        pending.set_result(model)
        return model

    def _config_specs(self, spec: Any) -> Tuple[Any, Any, List[Tuple[str, Tuple[int, ...]]]]:
        """(architecture, config, tensor shapes) of a header model entry, validated and
        built once per distinct config; the file's total is capped (spec/resources.md)."""
        key = _spec_key(spec)
        with self._spec_lock:       # bricks are decoded on several threads
            hit = self._specs.get(key)
            if hit is None:
                arch, config = _config_of(spec)
                specs = tensor_specs(arch, config)
                self._spec_tensors += len(specs)
                if self._spec_tensors > MAX_FILE_CONFIG_TENSORS:
                    raise NeurvolFormatError(
                        f"the model configs of this file have more than "
                        f"{MAX_FILE_CONFIG_TENSORS} tensors in all (the reader's limit, "
                        "spec/resources.md); the file is corrupted or hostile")
                hit = self._specs[key] = (arch, config, specs)
        return hit

    def _load_brick(self, b: int) -> Tuple[Any, int]:
        """Brick ``b``'s constant or model, and the model's parameter bytes."""
        # The longest payload the brick may have is known before it is read: a constant's 9
        # bytes, or the most its model's tensors can take (spec/resources.md).
        length = self._reader.brick_length(b)
        try:
            arch, config, specs = self._config_specs(self._brick_spec(b))
            error = None
        except NeurvolFormatError as exc:   # fine if the brick turns out to be a constant
            # Without its traceback: kept, it would hold the caller's frames (and the
            # block of coordinates being decoded) in a reference cycle.
            specs, error = [], exc.with_traceback(None)
        limit = max(_CONSTANT_PAYLOAD, max_payload_bytes(specs) if error is None else 0)
        if error is None and length > _CONSTANT_PAYLOAD:
            check_model_cost(arch.name, specs, length)   # compute per point (§2)
        if length > limit:
            # Too long for a constant: without a usable model config it cannot be valid.
            raise error or NeurvolFormatError(
                f"brick {b} is {length:,} bytes, longer than any valid payload for its "
                f"model ({limit:,} bytes); the file is corrupted or hostile")
        payload = self._reader.read_brick(b)
        if payload[:1] == b"\x00":
            value = float(decode_payload(payload, []))  # constant brick
            if not self._lo <= value <= self._hi:
                raise NeurvolFormatError(
                    f"constant brick {b} holds {value!r}, outside the volume's range "
                    f"[{self._lo!r}, {self._hi!r}]; the file is corrupted")
            return value, 0
        if error is not None:
            raise error
        # Validate the payload against the tensor shapes before allocating the model: a
        # damaged payload then costs nothing, and the shapes are known to be within caps.
        arrays = decode_payload(payload, specs)
        assert isinstance(arrays, dict)
        model = self._backend.load(arch.name, config, {n: arrays[n] for n, _ in specs})
        del arrays
        nbytes = 4 * sum(math.prod(shape) for _, shape in specs)
        return model, nbytes

    def byte_breakdown(self) -> Dict[str, Any]:
        """Where the file's bytes go (reads every brick): ``header`` (preamble, JSON,
        index, checksums), ``weights`` / ``codebooks`` / ``masks`` summed over the model
        bricks, ``constants`` (constant bricks), and per tensor name its method, value
        coder and bytes. Files of codec version 1 code all tensors in one frame, so their
        bytes are all ``weights`` and the per-tensor entries are absent."""
        self._check_open()
        out: Dict[str, Any] = {"header": self.nbytes_file, "weights": 0, "codebooks": 0,
                               "masks": 0, "constants": 0, "tensors": {}}
        if self._bound is not None:
            name = self._bound["section"]
            sec = next(x for x in self._reader.sections if x.name == name)
            out["correction"] = sec.length
            out["header"] -= sec.length
        if self._mask is not None:
            out["mask"] = self._section_length(self._mask.spec.to_header()["section"])
            out["header"] -= out["mask"]
        for b in range(self._reader.brick_count):
            payload = self._reader.read_brick(b)
            out["header"] -= len(payload)
            if not payload:
                continue
            if payload[:1] == b"\x00":
                out["constants"] += len(payload)
                continue
            arch, config, specs = self._config_specs(self._brick_spec(b))
            stats = payload_stats(payload, specs)
            if stats is None:
                out["weights"] += len(payload)
                continue
            out["weights"] += 1   # the kind byte
            for st in stats:
                out["weights"] += st.values
                out["codebooks"] += st.codebook
                out["masks"] += st.mask
                t = out["tensors"].setdefault(st.name, {"method": st.method, "coder": st.coder,
                                                        "bytes": 0, "codebook": 0})
                t["bytes"] += st.total
                t["codebook"] += st.codebook
        return out

    def _brick_spec(self, b: int) -> Dict[str, Any]:
        """The header's model entry for model brick ``b``."""
        spec = self.header.get("model")
        if self._layout is not None:
            if self._brick_specs is None or self._model_ids is None:
                raise NeurvolFormatError(
                    f"brick {b} holds weights but the header's 'bricks' has no 'models' and "
                    "'model_ids' (spec/bricks.md); the file is corrupted")
            spec = self._brick_specs[self._model_ids[b]]
        if not isinstance(spec, dict):
            raise NeurvolFormatError("a brick holds weights but the header has no 'model'")
        if self._layout is None and self._reader.brick_count != 1:
            # Format 1.0 defines per-brick models for a single brick only; bricked
            # ensembles (local coordinates, ghost cells) arrive in a later minor version.
            raise NeurvolFormatError("this file stores several brick models, which this neurvol cannot decode; upgrade neurvol")
        return spec

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
        self._check_open()
        target = self._shape if shape is None else check_shape(shape)
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise NeurvolInputError(
                    f"out must be a numpy array (e.g. np.memmap), got {type(out).__name__}")
            if tuple(out.shape) != target:
                raise NeurvolInputError(f"out has shape {out.shape}, expected {target}")
            if not out.flags.writeable:
                raise NeurvolInputError("out is read-only")
            check_decode_dtype(out.dtype)
        if dtype is not None:
            dt = check_decode_dtype(dtype)
            if out is not None and out.dtype != dt:
                raise NeurvolInputError(f"out has dtype {out.dtype}, but dtype={dt} was asked for")
        else:
            dt = out.dtype if out is not None else self._dtype
        if self._mask is not None:
            self._mask.fill_for(dt)    # refuses NaN regions in an integer dtype up front
        if out is None:
            try:
                out = np.empty(target, dtype=dt)
            except (MemoryError, ValueError) as exc:
                nbytes = math.prod(target) * dt.itemsize
                raise NeurvolInputError(
                    f"cannot allocate the decoded volume {target} {dt} ({nbytes:,} bytes): "
                    f"{exc}; decode into a disk-backed array with out=np.memmap(...), or "
                    "read regions with nv[z0:z1, ...]") from None
        if self._bound is not None:
            out[...] = _cast(self._decode_bounded(target), dt)
            return out
        self._fill_grid([_LinspaceAxis(n) for n in target], out, dt)
        if self._mask is not None:
            self._mask.apply(out, [nearest_indices(t, n) for t, n in zip(target, self._shape)])
        return out

    def _fill_grid(self, axes: Sequence["_Axis"], out: np.ndarray, dt: np.dtype) -> None:
        """Evaluate the outer product of three axes' normalized coordinates into *out*,
        block by block (at most ``_DECODE_BLOCK`` points), so the memory beyond *out* stays
        bounded for any shape, however long one axis is."""
        d, h, w = (len(a) for a in axes)
        if d * h * w == 0:
            return
        if h * w <= _DECODE_BLOCK:
            step = (max(1, _DECODE_BLOCK // (h * w)), h, w)
        elif w <= _DECODE_BLOCK:
            step = (1, max(1, _DECODE_BLOCK // w), w)
        else:
            step = (1, 1, _DECODE_BLOCK)

        def fill(block: Tuple[int, int, int], loader: Optional[Executor]) -> None:
            (z0, y0, x0), (sz, sy, sx) = block, step
            z1, y1, x1 = min(d, z0 + sz), min(h, y0 + sy), min(w, x0 + sx)
            coords = np.empty((z1 - z0, y1 - y0, x1 - x0, 3))
            coords[..., 0] = axes[0].coords(z0, z1)[:, None, None]
            coords[..., 1] = axes[1].coords(y0, y1)[None, :, None]
            coords[..., 2] = axes[2].coords(x0, x1)[None, None, :]
            vals = self._evaluate(coords.reshape(-1, 3), loader)
            out[z0:z1, y0:y1, x0:x1] = _cast(vals, dt).reshape(coords.shape[:3])

        blocks = itertools.product(range(0, d, step[0]), range(0, h, step[1]),
                                   range(0, w, step[2]))
        for _ in self._map_chunks(fill, blocks):
            pass

    def _map_chunks(self, fn: Callable[[Any, Optional[Executor]], Any],
                    items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item, loader)`` for each item, in order; on the CPU the items run on
        :data:`QUERY_THREADS` threads, at most a few per thread in flight, so a huge decode
        does not queue all of its blocks at once. ``fn`` must write only its own part.
        ``loader``: for bricked files on the CPU, threads that decode the bricks an item
        touches side by side (:meth:`_evaluate`), else None.

        The threads live for one call: an idle thread that has run torch ops keeps an
        OpenMP team that slows later training in the same process. Each runs torch on one
        thread of its own: chunks side by side already fill the cores, and each chunk's own
        OpenMP team would only add threads spinning against them (BENCHMARKS.md, "queries
        and decodes on a small thread pool")."""
        with self._backend.scope():
            yield from self._map_chunks_in_scope(fn, items)

    def _map_chunks_in_scope(self, fn: Callable[[Any, Optional[Executor]], Any],
                             items: Iterable[Any]) -> Iterator[Any]:
        items = iter(items)
        head = list(itertools.islice(items, 2))
        if not self._backend.threaded or QUERY_THREADS < 2 or (
                len(head) < 2 and self._layout is None):     # one model, one item: no threads
            yield from (fn(item, None) for item in itertools.chain(head, items))
            return
        with self._backend.worker_threads() as (init, initargs):
            # Threads start on first use: a query whose bricks are all cached starts none.
            loader = None if self._layout is None else ThreadPoolExecutor(
                QUERY_THREADS, thread_name_prefix="neurvol-brick", initializer=init,
                initargs=initargs)
            try:
                # A bricked file's single item runs on a pool thread too: its first
                # evaluations of freshly decoded bricks build their tables, and the
                # caller's OpenMP team there would spin against the loader threads.
                window = 2 * QUERY_THREADS
                with ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="neurvol-query",
                                        initializer=init, initargs=initargs) as pool:
                    pending: "deque[Any]" = deque()
                    for item in itertools.chain(head, items):
                        pending.append(pool.submit(fn, item, loader))
                        if len(pending) >= window:
                            yield pending.popleft().result()
                    while pending:
                        yield pending.popleft().result()
            finally:
                if loader is not None:
                    loader.shutdown()

    def __getitem__(self, key: Any) -> np.ndarray:
        """Numpy-style region decode with outer indexing: ints drop an axis, slices and
        1-D integer arrays keep it (each axis indexed independently, as zarr's ``oindex``)."""
        self._check_open()
        per_axis = _expand_key(key)
        idx: List[np.ndarray] = []
        keep: List[bool] = []
        for n, k in zip(self._shape, per_axis):
            sel, kept = _axis_selection(k, n)
            idx.append(sel)
            keep.append(kept)
        if self._bound is not None:
            full = self._correction_stream().region(idx)
            return full.reshape([len(i) for i, k in zip(idx, keep) if k])
        full = np.empty([len(i) for i in idx], dtype=self._dtype)
        # Normalized coordinates exactly as query() computes them for index space.
        axes = [_IndexAxis(i, n) for i, n in zip(idx, self._shape)]
        self._fill_grid(axes, full, self._dtype)
        if self._mask is not None:
            self._mask.apply(full, idx)
        return full.reshape([len(i) for i, k in zip(idx, keep) if k])

    # ------------------------------------------------------------------ array protocol
    # The logic lives in neurvol/arrays/ (docs/xarray.md).
    @property
    def ndim(self) -> int:
        """Number of axes: 3 (z, y, x)."""
        return len(self._shape)

    @property
    def size(self) -> int:
        """Number of voxels (as numpy's ``size``; napari's layer-data protocol needs it)."""
        return math.prod(self._shape)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        """``np.asarray(nv)``: the decoded grid (``decode()``), cast to ``dtype`` if given."""
        from .arrays import to_numpy

        return to_numpy(self, dtype, copy)

    def to_dask(self, chunks: Any = None) -> Any:
        """A lazy ``dask.array.Array``: one chunk per brick (single models: blocks of
        ``SINGLE_MODEL_BLOCK`` voxels a side), each decoded by a region read when computed."""
        from .arrays import to_dask

        return to_dask(self, chunks)


def normalized_points(chunk: np.ndarray, index: bool, scale: np.ndarray
                ) -> Tuple[np.ndarray, int, Optional[List[float]]]:
    """``(norm, n_outside, first_outside)``: the points ``chunk`` (index space when
    ``index``, with ``scale = 2 / (shape - 1)``, else normalized) as float64 normalized
    coordinates clamped to [-1, 1], the count of those outside the volume and the first of
    them (as a list, or None)."""
    norm = chunk.astype(np.float64)
    if index:
        np.multiply(norm, scale, out=norm)
        norm -= 1.0
    count, first = 0, None
    # Fast path: two reductions prove every point finite and inside (NaN fails the
    # comparison); only otherwise are the points checked one by one.
    if not (chunk.size == 0 or max(norm.max(), -norm.min()) <= 1.0 + _SPACE_TOL):
        check_finite_points(chunk)
        outside = (np.abs(norm) > 1.0 + _SPACE_TOL).any(axis=1)
        if outside.any():
            count = int(outside.sum())
            first = chunk[int(np.argmax(outside))].astype(np.float64).tolist()
    np.clip(norm, -1.0, 1.0, out=norm)
    return norm, count, first


def open_volume(path: Union[str, os.PathLike], *, device: Any = None,
                backend: Optional[str] = None) -> NeuralVolume:
    """Open a ``.nvol`` file lazily: reads the header and brick index only (this is
    ``neurvol.open``). Needs no torch: see :func:`neurvol.backend.select_backend` for how
    ``backend`` (``"torch"``, ``"numpy"`` or None: ``$NEURVOL_BACKEND``, else torch when
    installed) is chosen. ``device`` (torch only): ``"cpu"`` (default) or ``"cuda"``.

    Bricks are decoded when a query first touches them. Use as a context manager to
    close the file handle promptly.
    """
    return NeuralVolume(NvolReader(existing_file(path)), device=device, backend=backend)


def existing_file(path: Union[str, os.PathLike]) -> str:
    """``path`` as a str, once it names an existing file (errors a user can act on)."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise NeurvolInputError(f"path must be a str or os.PathLike, got {path!r}") from None
    if not os.path.exists(p):
        raise NeurvolIOError(f"no such file: {p}")
    if os.path.isdir(p):
        raise NeurvolIOError(f"{p} is a directory, not a .nvol file")
    return p


def build_model(spec: Dict[str, Any]) -> Any:
    """Rebuild an untrained torch model (a ``VolumeModel``) from the header's ``model``
    object; needs torch.

    The config is validated, and its parameter count checked against
    :data:`~neurvol.models.config.MAX_MODEL_PARAMS`, before anything is allocated.
    """
    from .backend import require_torch

    require_torch("build_model")
    from .models import get_architecture

    arch, config = _config_of(spec)
    tensor_specs(arch, config)
    return get_architecture(arch.name).build(config)


def _config_of(spec: Any) -> Tuple[NumpyArchitecture, ModelConfig]:
    """(architecture's torch-free registry entry, validated config) of the header's
    ``model`` object."""
    if not isinstance(spec, dict):
        raise NeurvolFormatError(f"header 'model' must be an object, got {_short(spec)}")
    name = spec.get("arch")
    if not isinstance(name, str):
        raise NeurvolFormatError(f"header 'model.arch' must be a string, got {_short(name)}")
    try:
        arch = get_numpy_architecture(name)
    except NeurvolInputError as exc:
        raise NeurvolFormatError(f"header 'model' names no known architecture: {exc}") from exc
    config = spec.get("config")
    if not isinstance(config, dict):
        raise NeurvolFormatError(
            f"header 'model.config' must be an object, got {_short(config)}")
    return arch, arch.config_cls.from_dict(config)


def config_of(spec: Any) -> Tuple[NumpyArchitecture, ModelConfig]:
    """(torch-free architecture entry, validated config) of a header ``model`` object;
    :class:`NeurvolFormatError` for anything else (public for :mod:`neurvol.series`)."""
    return _config_of(spec)


def tensor_specs(arch: Any, config: ModelConfig) -> List[Tuple[str, Tuple[int, ...]]]:
    """``[(name, shape)]`` of the model's tensors, in payload order, without allocating
    them (``config.tensor_specs()``, the spec's tensor list); the total size is checked
    against MAX_MODEL_PARAMS. ``arch`` names the architecture in messages."""
    try:
        specs = counted_tensors((str(n), tuple(int(d) for d in shape))
                                for n, shape in config.tensor_specs())
    except NeurvolFormatError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        # validate() accepted a config whose tensor list cannot be formed.
        raise NeurvolFormatError(
            f"cannot form the {arch.name} tensor list of this file's config: {exc}") from exc
    total = sum(math.prod(shape) for _, shape in specs)
    if total > MAX_MODEL_PARAMS:
        raise NeurvolFormatError(
            f"{arch.name} model config declares {total:,} parameters, more than the limit of "
            f"{MAX_MODEL_PARAMS:,}; the file is corrupted or not meant for this reader")
    return specs


class _Axis:
    """Normalized coordinates of one output axis, computed a block at a time."""

    def __len__(self) -> int:
        raise NotImplementedError

    def coords(self, a: int, b: int) -> np.ndarray:
        raise NotImplementedError


class _LinspaceAxis(_Axis):
    """``np.linspace(-1, 1, n)[a:b]`` (``0`` for n = 1), bit for bit, without building the
    whole axis (numpy computes ``arange * step + start`` and pins the last value)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def coords(self, a: int, b: int) -> np.ndarray:
        if self.n == 1:
            return np.zeros(b - a)
        c = np.arange(a, b, dtype=np.float64) * (2.0 / (self.n - 1)) + -1.0
        if b == self.n:
            c[-1] = 1.0
        return c


class _SliceAxis(_LinspaceAxis):
    """``np.linspace(-1, 1, n)[start:stop]``: a box of the grid decode() evaluates."""

    def __init__(self, n: int, start: int, stop: int) -> None:
        super().__init__(n)
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def coords(self, a: int, b: int) -> np.ndarray:
        return super().coords(self.start + a, self.start + b)


class _IndexAxis(_Axis):
    """Voxel indices of an axis of length n, normalized as ``query`` does."""

    def __init__(self, idx: np.ndarray, n: int) -> None:
        self.idx, self.scale = idx, 2.0 / (np.float64(n) - 1.0)

    def __len__(self) -> int:
        return len(self.idx)

    def coords(self, a: int, b: int) -> np.ndarray:
        return np.clip(self.idx[a:b].astype(np.float64) * self.scale - 1.0, -1.0, 1.0)


def _axis_selection(k: Any, n: int) -> Tuple[np.ndarray, bool]:
    """(selected indices, axis kept) for one axis key; memory is O(selection), not O(n)."""
    if isinstance(k, slice):
        try:
            r = range(n)[k]
        except (TypeError, ValueError) as exc:
            raise NeurvolInputError(f"unsupported index {k!r}: {exc}") from exc
        return np.arange(r.start, r.stop, r.step, dtype=np.int64), True
    if isinstance(k, (bool, np.bool_)):
        raise NeurvolInputError(f"unsupported index {k!r}: use ints, slices or 1-D int arrays")
    if not isinstance(k, np.ndarray) or k.ndim == 0:
        try:
            i = operator.index(k)
        except TypeError:
            i = None
        if i is not None:
            if not -n <= i < n:
                raise NeurvolInputError(f"index {i} out of range for axis of length {n}")
            return np.array([i % n], dtype=np.int64), False
    try:
        arr = np.asarray(k)
    except Exception as exc:  # noqa: BLE001 - ragged lists and other junk
        raise NeurvolInputError(f"unsupported index {k!r}: {exc}") from exc
    if arr.size == 0 and arr.ndim == 1:
        return np.empty(0, dtype=np.int64), True
    if arr.ndim != 1:
        raise NeurvolInputError("only 1-D index arrays are supported per axis")
    if arr.dtype.kind == "b":
        if arr.shape[0] != n:
            raise NeurvolInputError(
                f"boolean index of length {arr.shape[0]} for an axis of length {n}")
        return np.flatnonzero(arr).astype(np.int64), True
    if arr.dtype.kind not in "iu":
        raise NeurvolInputError(f"unsupported index {_short(k)}: use ints, slices or 1-D int arrays")
    if arr.size and (arr.min() < -n or arr.max() >= n):
        raise NeurvolInputError(f"index {_short(k)} out of range for axis of length {n}")
    return np.where(arr < 0, arr + n, arr).astype(np.int64), True


#: An integer error-bounded file with a bound below this decodes every voxel exactly
#: (values round to the stored integer).
_EXACT_INT_BOUND = 0.5


def _short(v: Any, limit: int = 120) -> str:
    return brief(v, limit)


def _finite_number(x: Any) -> bool:
    """A JSON number that is finite as a float (an int of 400 digits is not: float()
    of it overflows)."""
    if type(x) is int:
        return x.bit_length() <= 1023
    return type(x) is float and math.isfinite(x)


#: A constant brick's payload: kind byte + float64.
_CONSTANT_PAYLOAD = 9


def _spec_key(spec: Any) -> str:
    """A key equal for equal header model entries (canonical JSON)."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


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
        return cast_to_int(values, dtype)
    return values.astype(dtype, copy=False)


def _without_sections(header: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in header.items() if k != "sections"}
