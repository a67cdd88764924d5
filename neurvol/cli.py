"""The ``neurvol`` command line: a thin layer over :mod:`neurvol` and :mod:`neurvol.io`.

Exit codes: 0 success, 1 a neurvol error (message on stderr, no traceback), 2 bad usage,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

This is the only module of the package that prints.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._atomic import completed_since, write_count
from . import io as nvio
from .volume_checks import check_ratio
from .compress.registry import grid_codings
from .errors import NeurvolError, NeurvolInputError, NeurvolIOError

log = logging.getLogger("neurvol")

PROG = "neurvol"
# `neurvol info` shows where the bytes go (reading every brick) up to this many bricks.
INFO_BYTES_MAX_BRICKS = 64


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM.

    A KeyboardInterrupt subclass so that every ``except BaseException``/``finally`` cleanup
    (atomic writes remove their temp files) runs exactly as it does for Ctrl-C.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# ---------------------------------------------------------------------------------------
# argument types: raise ArgumentTypeError so mistakes are usage errors (exit 2)


def _number(text: str, kind: type, ok: Callable[[Any], bool], must: str) -> Any:
    """``text`` parsed as ``kind`` (int or float) that passes ``ok``, else a usage error
    saying it ``must`` be ..."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be {must}")
    return value


def _positive_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def _ratio(text: str) -> float:
    """A compression ratio: the API's rule (:func:`check_ratio`), as a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check_ratio(value)
    except NeurvolInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a positive integer")


def _nonnegative_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")


def _finite_float(text: str) -> float:
    return _number(text, float, math.isfinite, "a finite number")


def _rate(text: str) -> Any:
    return "auto" if text == "auto" else _nonnegative_float(text)


def _fraction(text: str) -> float:
    value = _nonnegative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a fraction in [0, 1)")
    return value


def _arch_options() -> dict:
    """Every architecture's sizing options: name -> (int or float, [architectures])."""
    from .models import architectures, get_architecture

    found: dict = {}
    for arch in architectures():
        a = get_architecture(arch)
        for name in a.options:
            found.setdefault(name, (a.option_type(name), []))[1].append(arch)
    return found


def _arch_choices() -> Tuple[str, str, Tuple[str, ...], dict]:
    """(auto name, default architecture, architecture names, :func:`_arch_options`) for the
    parser. The core install has no torch: the names then come from the torch-free registry
    and no sizing options are offered (encoding stops with NeurvolDependencyError)."""
    try:
        from .api import AUTO_ARCH, DEFAULT_ARCH
        from .models import architectures
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        from .models.numpy_eval import numpy_architectures

        return "auto", "auto", numpy_architectures(), {}
    return AUTO_ARCH, DEFAULT_ARCH, architectures(), _arch_options()


def _given_arch_options(args: argparse.Namespace) -> dict:
    """The architecture options given on the command line (``--grids 4`` -> grids=4)."""
    return {k[len("opt_"):]: v for k, v in vars(args).items() if k.startswith("opt_")}


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer in [0, 2^63)")
    return value


def _shape(text: str) -> tuple:
    try:
        shape = nvio.parse_shape(text)
    except NeurvolInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    assert shape is not None
    return shape


def _dtype(text: str) -> str:
    try:
        return nvio.parse_dtype(text).name
    except NeurvolInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N")
    return text


# ---------------------------------------------------------------------------------------
# output helpers


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _human_bytes(n: int) -> str:
    """``1234`` -> ``"1,234 bytes"``; from 1 MiB on the binary unit is added."""
    if n < 1 << 20:
        return f"{n:,} bytes"
    size, unit = float(n) / (1 << 20), "MiB"
    for bigger in ("GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n:,} bytes ({size:.1f} {unit})"


def _check_output(path: str, force: bool) -> Path:
    """Fail before any work if ``path`` exists (without ``--force``) or its folder is missing."""
    p = Path(path)
    if p.exists() and not force:
        raise NeurvolIOError(f"output {path!r} already exists; pass --force to overwrite it")
    if p.is_dir():
        raise NeurvolIOError(f"output {path!r} is a directory; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise NeurvolIOError(f"cannot write {path!r}: directory {str(parent)!r} does not exist; "
                             "create it first")
    return p


def _find(info: Mapping[str, Any], *keys: str) -> Any:
    """First value under any of ``keys`` in ``info`` or a nested dict (breadth-first)."""
    queue: List[Mapping[str, Any]] = [info]
    while queue:
        d = queue.pop(0)
        for k in keys:
            if k in d and d[k] is not None:
                return d[k]
        queue.extend(v for v in d.values() if isinstance(v, Mapping))
    return None


# Deeper levels of `neurvol info` output (opaque header keys can nest) are shown as
# compact JSON on one line, cut at _MAX_INFO_TEXT characters.
_MAX_INFO_DEPTH = 6
_MAX_INFO_TEXT = 2000


def _format_info(value: Any, indent: int = 0) -> Iterator[str]:
    """Lines of a nested dict/list as indented ``key: value`` text."""
    pad = "  " * indent
    if indent >= _MAX_INFO_DEPTH:
        yield f"{pad}{_compact(value)}"
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, Mapping) and v:
                yield f"{pad}{k}:"
                yield from _format_info(v, indent + 1)
            elif isinstance(v, (list, tuple)) and any(isinstance(x, (Mapping, list, tuple)) for x in v):
                yield f"{pad}{k}:"
                for i, item in enumerate(v):
                    if isinstance(item, Mapping):
                        yield f"{pad}  [{i}]"
                        yield from _format_info(item, indent + 2)
                    else:
                        yield f"{pad}  - {_scalar(item)}"
            else:
                yield f"{pad}{k}: {_scalar(v)}"
    else:
        yield f"{pad}{_scalar(value)}"


def _compact(v: Any) -> str:
    """One-line JSON of *v*, truncated (never recursing in Python: headers can nest)."""
    try:
        text = json.dumps(v, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError, RecursionError):
        text = repr(v)
    return text if len(text) <= _MAX_INFO_TEXT else text[:_MAX_INFO_TEXT] + "..."


def _scalar(v: Any, depth: int = 0) -> str:
    if isinstance(v, (list, tuple)):
        if depth >= _MAX_INFO_DEPTH:
            return _compact(v)
        return "[" + ", ".join(_scalar(x, depth + 1) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, Mapping):  # empty ones, or ones inside a list of scalars
        return _compact(v)
    text = str(v)
    return text if len(text) <= _MAX_INFO_TEXT else text[:_MAX_INFO_TEXT] + "..."


def _json_default(o: Any) -> Any:
    # info() is meant to be JSON-able already; tolerate numpy scalars/arrays anyway.
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _api() -> Any:
    """Import the top-level package lazily: it pulls in torch, which ``--help`` should not."""
    import neurvol

    return neurvol


# ---------------------------------------------------------------------------------------
# subcommands


def cmd_pack(args: argparse.Namespace) -> int:
    """Fit a network to a volume and save it as ``.nvol``."""
    out = _check_output(args.output, args.force)
    series_input = _series_input(args)
    if series_input is not None:
        return _pack_series(args, out, series_input)
    if args.group is not None:
        raise NeurvolInputError("--group applies to time series: give a [t, z, y, x] .npy")
    loaded = nvio.load_volume(args.input, shape=args.shape, dtype=args.dtype,
                              byte_order=args.byte_order, format=args.format)
    volume = loaded.data
    nv_mod = _api()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        executor = None
        if args.scheduler:
            try:
                from distributed import Client
            except ImportError:
                raise NeurvolInputError(
                    "--scheduler needs Dask distributed: pip install 'neurvol[dask]'") from None
            executor = stack.enter_context(Client(args.scheduler))
        bounded = {k: v for k, v in (("max_error", args.max_error),
                                     ("rel_error", args.rel_error),
                                     ("model_ratios", args.model_ratios),
                                     ("correction_block", args.correction_block),
                                     ("fill_value", args.fill_value)) if v is not None}
        nv = nv_mod.encode(volume, ratio=args.ratio, arch=args.arch, seed=args.seed,
                           device=args.device, steps=args.steps, quiet=args.quiet,
                           spacing=loaded.spacing, origin=loaded.origin,
                           brick=args.brick, bricks=args.bricks, ghost=args.ghost,
                           workers=args.workers, executor=executor, psnr=args.psnr,
                           codec=_codec_options(args), **bounded, **_given_arch_options(args))
    nv.save(out)
    seconds = time.perf_counter() - t0
    if not args.quiet and nv.max_error is not None:
        from .metrics import max_abs_error, psnr as psnr_of

        size = out.stat().st_size
        dec = nv.decode()
        err, psnr = max_abs_error(volume, dec), psnr_of(volume, dec)
        model = nv.bounded_choice["model_ratio"]
        _out(f"wrote {out}: {_human_bytes(size)}, ratio {int(volume.nbytes) / size:.1f}:1, "
             f"every voxel within {nv.max_error:.6g} "
             f"({'pure predictor' if model is None else f'model at ratio {model:g} + corrections'})")
        _out(f"max error {err:.6g}, PSNR {_fmt_db(psnr)}, {seconds:.1f} s")
    elif not args.quiet:
        size = out.stat().st_size
        nbytes = int(volume.nbytes)
        info = nv.info()
        fit = info.get("fit")
        psnr = _find(fit, "psnr") if isinstance(fit, Mapping) else None
        if psnr is None:
            psnr = _find(info, "fit_psnr", "psnr")
        _out(f"wrote {out}: {_human_bytes(size)}, ratio {nbytes / size:.1f}:1 "
             f"(asked {args.ratio:g}, budget {_human_bytes(int(nbytes // args.ratio))})")
        # The file's worst voxel needs a decode; users compare codecs on it.
        from .metrics import max_abs_error

        err = max_abs_error(volume, nv.decode(), valid=nv.valid_mask())
        masked = f", {info['mask']['masked']} voxels masked" if "mask" in info else ""
        _out(f"fit PSNR {_fmt_db(psnr)}, max error {err:.6g}{masked}, {seconds:.1f} s")
    return 0


#: The attribute a packed variable's declared fill value is kept under (given back as the
#: NetCDF fill value by unpack).
FILL_ATTR = "_FillValue"
#: Extensions of NetCDF-4 / HDF5 files, which may hold a time series of several variables.
_DATASET_EXTENSIONS = (".nc", ".nc4", ".h5", ".hdf5")


@dataclasses.dataclass
class _SeriesInput:
    """What ``pack`` encodes as a time series: the variables, and their metadata."""

    data: Any
    time: Optional[List[float]] = None
    metadata: Optional[Dict[str, Any]] = None
    spacing: Optional[List[float]] = None
    origin: Optional[List[float]] = None
    dataset: Any = None
    fill_value: Optional[Dict[str, float]] = None    # a variable's declared fill, by name
    attrs: Optional[Dict[str, Any]] = None           # the file's global attributes
    time_attrs: Optional[Dict[str, Any]] = None      # the time coordinate's attributes


def _series_input(args: argparse.Namespace) -> Optional[_SeriesInput]:
    """A time series to pack (spec/series.md): a ``[t, z, y, x]`` .npy (memmapped), or the
    ``(time, z, y, x)`` variables of a NetCDF-4 / HDF5 file; None for a single volume."""
    path = str(args.input)
    lower = path.lower()
    if lower.endswith(".npy") and args.format in (None, "npy") and os.path.isfile(path):
        from .io.npy import load_npy

        arr = load_npy(Path(path))
        return _SeriesInput(arr) if arr.ndim == 4 else None
    if args.format is None and lower.endswith(_DATASET_EXTENSIONS) and os.path.isfile(path):
        return _dataset_series(path)
    base, var = nvio.split_variable(path)
    if args.format is None and var is not None and str(base).lower().endswith(
            _DATASET_EXTENSIONS) and os.path.isfile(base):
        return _dataset_series(str(base), var.lstrip("/"))     # "file.nc:var"
    return None     # the single-volume loader reads it, or says what is wrong


def _dataset_series(path: str, pick: Optional[str] = None) -> Optional[_SeriesInput]:
    """The ``(time, z, y, x)`` variables of a NetCDF-4 / HDF5 file (only ``pick`` when
    given) with their units, attributes, fill values (``_FillValue``, else
    ``missing_value``: voxels holding it are masked, as NaN voxels are), the global
    attributes and the time coordinate; None when it has none."""
    ds = nvio.read_dataset(path)
    timed = {n: v for n, v in ds.variables.items() if v.has_time}
    if pick is not None:     # one variable; a 3-D one (or none) is the volume loader's
        timed = {pick: timed[pick]} if pick in timed else {}
    if not timed:
        ds.close()
        return None
    metadata: Dict[str, Any] = {}
    fills: Dict[str, float] = {}
    for name, var in timed.items():
        attrs = {k: v for k, v in var.attrs.items() if k != "units"}
        if var.fill_value is not None:
            attrs[FILL_ATTR] = var.fill_value
            if math.isfinite(var.fill_value):      # a NaN fill: NaN voxels are masked anyway
                fills[name] = var.fill_value
        metadata[name] = {"units": var.units, "attrs": nvio.json_attrs(attrs)}
    time, time_attrs = None, None
    if ds.time is not None:
        values = np.asarray(ds.time.values(), dtype=np.float64).reshape(-1)
        if values.size == next(iter(timed.values())).shape[0] and np.isfinite(values).all() \
                and (values.size < 2 or (np.diff(values) > 0).all()):
            time = [float(v) for v in values]
            time_attrs = nvio.json_attrs(ds.time.attrs)
    spacing, origin = _dataset_geometry(ds)
    return _SeriesInput({n: v.data for n, v in timed.items()}, time, metadata, spacing, origin,
                        ds, fills or None, nvio.json_attrs(ds.attrs), time_attrs)


def _dataset_geometry(ds: Any) -> Tuple[Optional[List[float]], Optional[List[float]]]:
    """Spacing and origin (z, y, x) from evenly spaced ``z``, ``y``, ``x`` coordinates."""
    spacing, origin = [], []
    for dim in ("z", "y", "x"):
        coord = ds.coords.get(dim)
        if coord is None:
            return None, None
        v = np.asarray(coord.values(), dtype=np.float64).reshape(-1)
        step = np.diff(v)
        if v.size < 2 or not np.isfinite(v).all() or not np.allclose(step, step[0]) \
                or step[0] <= 0:
            return None, None
        spacing.append(float(step[0]))
        origin.append(float(v[0]))
    return spacing, origin


def _pack_series(args: argparse.Namespace, out: Path, data: _SeriesInput) -> int:
    """``pack`` of a time series: one file, the ratio over all steps."""
    given = [flag for flag, v in (("--psnr", args.psnr), ("--max-error", args.max_error),
                                  ("--rel-error", args.rel_error), ("--brick", args.brick),
                                  ("--correction-block", args.correction_block),
                                  ("--bricks", args.bricks), ("--scheduler", args.scheduler))
             if v is not None]
    if given:
        raise NeurvolInputError(f"{', '.join(given)} do not apply to a time series; give --ratio")
    t0 = time.perf_counter()
    try:
        fill = data.fill_value if data.fill_value is not None else args.fill_value
        nv = _api().encode(data.data, ratio=args.ratio, arch=args.arch, seed=args.seed,
                           device=args.device, steps=args.steps, quiet=args.quiet,
                           group=args.group, codec=_codec_options(args), time=data.time,
                           metadata=data.metadata, spacing=data.spacing, origin=data.origin,
                           fill_value=fill, attrs=data.attrs, time_attrs=data.time_attrs,
                           **_given_arch_options(args))
    finally:
        if data.dataset is not None:
            data.dataset.close()
    nv.save(out)
    if not args.quiet:
        size = out.stat().st_size
        psnrs = [p for v in nv.info()["variables"] for p in v["psnr"] if p is not None]
        _out(f"wrote {out}: {nv.shape[0]} steps, {_human_bytes(size)}, ratio "
             f"{nv.original_bytes / size:.1f}:1 (asked {args.ratio:g})")
        if psnrs:
            _out(f"PSNR per step: mean {sum(psnrs) / len(psnrs):.2f} dB, min {min(psnrs):.2f} dB, "
                 f"{time.perf_counter() - t0:.1f} s")
    return 0


def _codec_options(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The CodecSettings fields given on the command line (None: all defaults)."""
    given = {"prune": args.prune, "prune_method": args.prune_method, "grids": args.grid_coding,
             "finetune": args.finetune, "vq_ema": args.vq_ema, "grid_bits": args.grid_bits,
             "rate": args.rate}
    given = {k: v for k, v in given.items() if v is not None}
    return given or None


def _fmt_db(psnr: Any) -> str:
    if psnr is None:
        return "n/a"
    psnr = float(psnr)
    return "inf dB (exact)" if math.isinf(psnr) else f"{psnr:.2f} dB"


def cmd_unpack(args: argparse.Namespace) -> int:
    """Decode an ``.nvol`` file to a volume file."""
    out = _check_output(args.output, args.force)
    nvio.resolve_format(out, args.format, mode="write")  # fail on a bad extension before decoding
    t0 = time.perf_counter()
    with _api().open(args.input) as nv:
        if hasattr(nv, "variables"):      # a time series (spec/series.md)
            nv = _series_volume(nv, args, out)
            if nv is None:
                if not args.quiet:
                    _out(f"wrote {out}: all steps, {time.perf_counter() - t0:.1f} s")
                return 0
        elif args.step is not None or args.variable is not None:
            raise NeurvolInputError("--step and --variable apply to time-series files; "
                                    f"{args.input} holds one volume")
        volume = nv.decode(shape=args.shape, dtype=args.dtype)
        spacing, origin = _output_geometry(nv, volume.shape)
    nvio.write_volume(out, volume, format=args.format, spacing=spacing, origin=origin)
    if not args.quiet:
        shape = "x".join(map(str, volume.shape))
        _out(f"wrote {out}: {shape} {volume.dtype}, {time.perf_counter() - t0:.1f} s")
    return 0


def _series_volume(series: Any, args: argparse.Namespace, out: Path) -> Any:
    """For ``unpack`` of a time series: the single volume to write (``--step k`` of
    ``--variable``, or of the only variable), or None after writing every step of one
    variable to a ``[t, z, y, x]`` .npy."""
    suffix = out.suffix.lower()
    if args.step is None and suffix in _DATASET_EXTENSIONS and args.shape is None:
        names = [args.variable] if args.variable is not None else series.variables
        for name in names:
            series[name]      # an unknown name: refused before anything is decoded
        nvio.write_dataset(out, _series_dataset(series, names, args.dtype))
        return None
    if args.variable is not None:
        var = series[args.variable]
    elif len(series.variables) == 1:
        var = series[series.variables[0]]
    else:
        raise NeurvolInputError(
            f"{args.input} holds {len(series.variables)} variables {series.variables}; "
            "choose one with --variable NAME")
    if args.step is not None:
        return var.step(args.step)
    if args.shape is not None or suffix != ".npy":
        raise NeurvolInputError(
            f"{args.input} is a time series of {series.steps} steps: give --step K to write "
            "one step, or write all steps (at their own shape) to a .npy (one variable) or "
            "a .nc / .h5 (every variable, with units, attributes and the time axis)")
    from .io.npy import write_npy

    write_npy(out, var.decode(dtype=args.dtype))
    return None


def _series_dataset(series: Any, names: Sequence[str], dtype: Any) -> Any:
    """The :class:`neurvol.io.VolumeDataset` of a time series' variables: dims
    ``(time, z, y, x)``, units, attributes, fill values, time and grid coordinates."""
    lay = series.layout
    spacing = lay.spacing or [1.0, 1.0, 1.0]
    origin = lay.origin or [0.0, 0.0, 0.0]
    coords = {dim: nvio.DatasetVariable(dim, o + s * np.arange(n), (dim,))
              for dim, n, s, o in zip(("z", "y", "x"), lay.shape, spacing, origin)}
    times = series.time if series.time is not None else range(series.steps)
    coords["time"] = nvio.DatasetVariable("time", np.asarray(times, dtype=np.float64),
                                          ("time",), series.time_attrs)
    variables = {}
    for name in names:
        var = series[name]
        attrs = dict(var.attrs)
        fill = attrs.pop(FILL_ATTR, None)
        if var.units is not None:
            attrs["units"] = var.units
        variables[name] = nvio.DatasetVariable(
            name, var.decode(dtype=dtype), ("time", "z", "y", "x"), attrs,
            fill if isinstance(fill, (int, float)) and not isinstance(fill, bool) else None)
    return nvio.VolumeDataset(variables, coords, series.attrs)


def _output_geometry(nv: Any, shape: Sequence[int]) -> tuple:
    """Spacing and origin (z, y, x) for a decode of ``nv`` on ``shape``: the header's, with
    the spacing rescaled when the grid changed (corner voxel centres stay where they were)."""
    info = nv.info()
    spacing = info.get("spacing") or [1.0, 1.0, 1.0]
    origin = info.get("origin") or [0.0, 0.0, 0.0]
    spacing = [float(s) * (n - 1) / (m - 1) if m > 1 else float(s)
               for s, n, m in zip(spacing, nv.shape, shape)]
    return spacing, [float(o) for o in origin]


def cmd_info(args: argparse.Namespace) -> int:
    """Print what an ``.nvol`` file holds."""
    with _api().open(args.input) as nv:
        info = nv.info()
        # Where the bytes go needs every brick read: by default only for small ensembles.
        if hasattr(nv, "variables"):       # a time series: no per-brick breakdown
            pass
        elif args.bytes or nv.brick_count <= INFO_BYTES_MAX_BRICKS:
            info["bytes"] = nv.byte_breakdown()
    if args.json:
        _out(json.dumps(info, indent=2, default=_json_default))
    else:
        for line in _format_info(info):
            _out(line)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Evaluate an ``.nvol`` file at points."""
    out = _check_output(args.output, args.force) if args.output else None
    if out is not None and out.suffix.lower() not in nvio.POINT_EXTENSIONS:
        raise NeurvolIOError(f"cannot write values to {args.output!r}: use .npy, .csv or .txt")
    points = nvio.read_points(args.points)
    with _api().open(args.input) as nv:
        if hasattr(nv, "variables"):      # a time series: at step (or time) --t
            target = nv[args.variable] if args.variable is not None else nv
            values = target.query(points, t=0 if args.t is None else args.t, space=args.space,
                                  clamp=args.clamp)
        elif args.t is not None or args.variable is not None:
            raise NeurvolInputError("--t and --variable apply to time-series files; "
                                    f"{args.input} holds one volume")
        else:
            values = nv.query(points, space=args.space, clamp=args.clamp)
        values = np.asarray(values).reshape(-1)
    if out is not None:
        nvio.write_values(out, values)
        if not args.quiet:
            print(f"wrote {len(values)} values to {out}", file=sys.stderr)
    else:
        sys.stdout.write("".join(nvio.format_value(v) + "\n" for v in values))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Pack and unpack the embedded sample volume and report the numbers."""
    nv_mod = _api()
    from .metrics import max_abs_error, psnr as psnr_fn

    original = nv_mod.sample_volume()
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="neurvol-demo-")))
        packed = workdir / "neghip.nvol"
        unpacked = workdir / "neghip_decoded.npy"

        t0 = time.perf_counter()
        nv = nv_mod.encode(original, ratio=args.ratio, arch=args.arch, seed=args.seed,
                           device=args.device, steps=args.steps, quiet=args.quiet,
                           **_given_arch_options(args))
        nv.save(packed)
        t_enc = time.perf_counter() - t0

        t0 = time.perf_counter()
        with nv_mod.open(packed) as reopened:
            decoded = reopened.decode()
        nvio.write_volume(unpacked, decoded)
        t_dec = time.perf_counter() - t0

        size = packed.stat().st_size
        quality = psnr_fn(original, decoded)
        shape = "x".join(map(str, original.shape))
        _out(f"neurvol demo: neghip {shape} {original.dtype} ({_human_bytes(int(original.nbytes))})")
        _out(f"  ratio    {original.nbytes / size:.1f}:1 achieved ({args.ratio:g}:1 asked)")
        _out(f"  file     {_human_bytes(size)} (budget {_human_bytes(int(original.nbytes // args.ratio))})")
        _out(f"  PSNR     {_fmt_db(quality)}")
        _out(f"  max err  {max_abs_error(original, decoded):g} (abs, data range "
             f"{float(original.min()):g}..{float(original.max()):g})")
        _out(f"  encode   {t_enc:.1f} s")
        _out(f"  decode   {t_dec:.1f} s")
        if args.workdir:
            _out(f"  files    {packed}, {unpacked}")
    return 0


# ---------------------------------------------------------------------------------------
# pictures and benchmarks (matplotlib is imported only inside neurvol.viz.figures)


def _image_size(text: str) -> tuple:
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m or not all(1 <= int(g) <= 8192 for g in m.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 512x512, each 1..8192)")
    return int(m.group(1)), int(m.group(2))


def _float_pair(text: str) -> tuple:
    try:
        a, b = (float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not two numbers LO,HI (e.g. 0.1,1)") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise argparse.ArgumentTypeError(f"{text!r}: need LO < HI")
    return a, b


def _ratios(text: str) -> List[float]:
    out = []
    for t in text.split(","):
        if t.strip():
            out.append(_positive_float(t.strip()))
    if not out:
        raise argparse.ArgumentTypeError("give at least one ratio, e.g. 100,400")
    return out


def _model_ratios(text: str) -> List[float]:
    """``--model-ratios``: ratios, or ``none`` for the pure predictor alone."""
    return [] if text.strip().lower() == "none" else _ratios(text)


def _csv_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _figures() -> Any:
    from .viz import figures

    return figures


def _open_source(path: str, args: argparse.Namespace, stack: contextlib.ExitStack) -> Any:
    """An .nvol file as an open NeuralVolume, anything else as a volume array."""
    if Path(path).suffix.lower() == ".nvol":
        return stack.enter_context(_api().open(path))
    return nvio.read_volume(path, shape=getattr(args, "shape", None), dtype=getattr(args, "dtype", None),
                            format=getattr(args, "format", None))


def _render_options(args: argparse.Namespace) -> dict:
    return {"azimuth": args.azimuth, "elevation": args.elevation, "distance": args.distance,
            "size": args.size, "samples": args.samples, "opacity": args.opacity,
            "density": args.density}


def cmd_render(args: argparse.Namespace) -> int:
    """Ray-march a picture of an .nvol file (or slices) into a PNG."""
    out = _check_output(args.output, args.force)
    figures = _figures()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        src = _open_source(args.input, args, stack)
        if args.slices:
            figures.save_slices(src, out, cmap=args.cmap if args.cmap != "viridis" else "gray",
                                title=Path(args.input).name)
        else:
            bar = None
            if not args.quiet:
                from tqdm import tqdm

                bar = stack.enter_context(tqdm(total=args.size[0] * args.size[1], unit="ray",
                                               desc="render", leave=False, file=sys.stderr))

            def progress(done: int, total: int) -> None:
                if bar is not None:
                    bar.update(done - bar.n)

            figures.save_rendering(src, out, cmap=args.cmap, progress=progress, **_render_options(args))
    if not args.quiet:
        what = "slices" if args.slices else f"{args.size[0]}x{args.size[1]} rendering"
        _out(f"wrote {out}: {what}, {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Original, decoded and error side by side in a PNG, PSNR in the title."""
    out = _check_output(args.output, args.force)
    figures = _figures()
    original = nvio.read_volume(args.original, shape=args.shape, dtype=args.dtype, format=args.format)
    with _api().open(args.input) as nv:
        if tuple(int(n) for n in original.shape) != tuple(nv.shape):
            raise NeurvolInputError(f"{args.original} has shape {tuple(original.shape)} but "
                                    f"{args.input} holds {tuple(nv.shape)}; compare a file with "
                                    "the volume it was packed from")
        opts = _render_options(args)
        opts.pop("size")
        quality = figures.save_comparison(
            np.asarray(original), nv, out, render_options={"size": args.size, **opts},
            title=f"{Path(args.original).name} vs {Path(args.input).name} (ratio {nv.ratio:.1f}:1)")
    if not args.quiet:
        _out(f"wrote {out}: PSNR {_fmt_db(quality)}")
    return 0


BENCH_METHODS = ("neurvol", "downsample", "zfp", "sz3", "sperr", "zstd")


def cmd_bench(args: argparse.Namespace) -> int:
    """Run neurvol and the classical baselines at several ratios; table + R-D plot."""
    from .bench.baselines import BASELINES, available_baselines
    from .bench.report import format_table
    from .bench.runner import run_benchmark
    from .models import architectures

    plot = _check_output(args.plot, args.force) if args.plot else None
    unknown = [m for m in args.methods if m != "neurvol" and m not in BASELINES]
    if unknown:
        raise NeurvolInputError(f"unknown method(s) {unknown}; choose from neurvol, "
                                f"{', '.join(sorted(BASELINES))}")
    archs = args.arch if "neurvol" in args.methods else []
    from .api import AUTO_ARCH

    known = (AUTO_ARCH,) + tuple(architectures())
    bad = [a for a in archs if a not in known]
    if bad:
        raise NeurvolInputError(f"unknown architecture(s) {bad}; choose from {', '.join(known)}")
    if plot is not None:
        _figures()._mpl()  # fail now, not after the runs, if matplotlib is missing
    reasons = available_baselines()
    baselines = []
    for m in args.methods:
        if m == "neurvol":
            continue
        if reasons.get(m):
            print(f"note: skipping baseline {m}: {reasons[m]}", file=sys.stderr)
        else:
            baselines.append(m)
    volume = np.ascontiguousarray(nvio.read_volume(args.input, shape=args.shape, dtype=args.dtype,
                                                   format=args.format))
    name = Path(args.input).name
    total = len(args.ratios) * (len(archs) + sum(BASELINES[b].budgeted for b in baselines)) \
        + sum(not BASELINES[b].budgeted for b in baselines)
    from tqdm import tqdm

    with tqdm(total=total, desc=f"bench {name}", unit="run", disable=args.quiet, leave=False,
              file=sys.stderr) as bar:
        def progress(row: dict) -> None:
            bar.set_postfix_str(f"{row['method']} @{row.get('ratio_requested') or '-'}")
            bar.update(1)
            log.info("%s @%s: PSNR %s", row["method"], row.get("ratio_requested"), row.get("psnr_db"))

        rows = run_benchmark(volume, name, args.ratios, archs=archs, baselines=baselines,
                             steps=args.steps, seed=args.seed, device=args.device,
                             query_points=args.query_points, progress=progress)
    shape = "x".join(map(str, volume.shape))
    _out(f"{name}: {shape} {volume.dtype} ({_human_bytes(int(volume.nbytes))})")
    _out(format_table(rows))
    if args.json:
        from .bench.runner import rows_to_json

        jout = _check_output(args.json, args.force)
        from ._atomic import atomic_write

        atomic_write(jout, (json.dumps({"volume": name, "shape": list(volume.shape),
                                        "rows": rows_to_json(rows)}, indent=1, default=str) + "\n").encode())
    if plot is not None:
        _figures().save_rd_plot(rows, plot, title=f"{name} ({shape} {volume.dtype})")
        if not args.quiet:
            _out(f"wrote {plot}")
    return 0


# ---------------------------------------------------------------------------------------
# parser


def _add_fit_options(p: argparse.ArgumentParser, *, ratio_default: float = 100.0) -> None:
    p.add_argument("--ratio", type=_ratio, default=ratio_default,
                   help="compression ratio: the whole file is at most input bytes / RATIO "
                        "(default: %(default)g)")
    # The architectures and their options live in neurvol.models (torch): looked up only
    # when a command that fits is being parsed (see _parser_for and _arch_choices).
    auto, default, names, options = _arch_choices()
    p.add_argument("--arch", default=default, choices=(auto,) + names,
                   help="network architecture (default: %(default)s)")
    # Every architecture's sizing options, e.g. --grids, --grad-lambda; only the ones
    # given reach encode(), which rejects those the chosen --arch does not take.
    for name, (kind, archs) in sorted(options.items()):
        p.add_argument("--" + name.replace("_", "-"), dest="opt_" + name, type=_positive_int if kind is int else _nonnegative_float,
                       default=argparse.SUPPRESS, metavar=kind.__name__.upper(),
                       help=f"{name.replace('_', ' ')} (--arch {', '.join(archs)})")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps (default: chosen by the fitter)")
    p.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("neurvol")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def _add_pack_options(p: argparse.ArgumentParser, fmt_help: str) -> None:
    """The options of ``neurvol pack``."""
    p.add_argument("input", metavar="INPUT",
                   help="volume file: .npy; .raw/.bin with --shape and --dtype; .h5/.nc "
                        "(FILE.h5:/group/var names the variable); .vti; .nii/.nii.gz. Spacing "
                        "and origin in the file are stored in the .nvol header")
    p.add_argument("-o", "--output", required=True, metavar="OUT.nvol", help="output file")
    _add_fit_options(p)
    g = p.add_argument_group("weight compression (neurvol.pipeline.CodecSettings)")
    g.add_argument("--psnr", type=_finite_float, default=None, metavar="DB",
                   help="quality target instead of a ratio: the smallest file found whose "
                        "PSNR reaches DB (a search of a few encodes, starting at --ratio)")
    g.add_argument("--prune", type=_fraction, default=None, metavar="F",
                   help="prune this fraction of the network weights (stored as bit masks)")
    g.add_argument("--prune-method", choices=("magnitude", "smallify", "vd"), default=None,
                   help="how --prune chooses the weights: smallest magnitude (default), "
                        "whole neurons by learned Smallify switches, or by sparse variational "
                        "dropout (these two train during the --finetune budget)")
    g.add_argument("--grid-coding", choices=grid_codings(), default=None,
                   help="feature grid coding: a record method of the codec registry "
                        "(`python -m neurvol.compress`; default: interp)")
    g.add_argument("--vq-ema", type=_fraction, default=None, metavar="DECAY",
                   help="with --grid-coding vq: the codebook learns during fine-tuning "
                        "(EMA with this decay, e.g. 0.9; needs neurvol[vq])")
    g.add_argument("--finetune", type=_fraction, default=None, metavar="F",
                   help="quantization-aware fine-tuning steps as a fraction of --steps "
                        "(0 turns it off)")
    g.add_argument("--grid-bits", type=_finite_float, default=None, metavar="B",
                   help="bits per grid value the model is sized for (default 4 for interp; "
                        "fewer: a larger model in the same bytes)")
    g.add_argument("--rate", type=_rate, default=None, metavar="W",
                   help="rate-aware fitting of interp grids with this weight (e.g. 12, with "
                        "--grid-bits 2): better on rough volumes such as CT and turbulence, "
                        "worse on smooth fields (BENCHMARKS.md); 'auto': fit with it to "
                        "40%% of the steps, finish it unless coding costs it over 2.4 dB, "
                        "else fit the default (default for one model unless --grid-bits or "
                        "--grid-coding is given; 0 turns it off)")
    p.add_argument("--fill-value", type=_finite_float, default=None, metavar="V",
                   help="voxels equal to V hold no data: stored as a lossless mask and "
                        "restored exactly (NaN voxels of float volumes always are; "
                        "spec/mask.md); one model, not with bricks or --max-error")
    g = p.add_argument_group("error-bounded mode (spec/correction.md)")
    bound = g.add_mutually_exclusive_group()
    bound.add_argument("--max-error", type=_nonnegative_float, default=None, metavar="E",
                       help="instead of a ratio: every decoded voxel within E (data units) "
                            "of the input, checked before the file is written")
    bound.add_argument("--rel-error", type=_nonnegative_float, default=None, metavar="R",
                       help="as --max-error with E = R * (max - min), e.g. 1e-3")
    g.add_argument("--model-ratios", type=_model_ratios, default=None, metavar="R1,R2,...",
                   help="with a bound: model ratios tried besides the pure predictor (default "
                        "200,400; the smallest file is kept; 'none': no model)")
    g.add_argument("--correction-block", type=_positive_int, default=None, metavar="B",
                   help="with a bound: edge of the independently decodable blocks (default "
                        "64); 16 or 8 answer cold scattered queries several times faster "
                        "at a larger file")
    g = p.add_argument_group("bricks (large volumes; spec/bricks.md)")
    g.add_argument("--brick", type=_positive_int, default=None, metavar="N",
                   help="fit bricks of about N voxels a side (default: 128 above 2^25 voxels, "
                        "else one model)")
    g.add_argument("--bricks", type=_shape, default=None, metavar="K,J,I",
                   help="brick counts along z, y, x (1,1,1: one model)")
    g.add_argument("--ghost", type=int, default=2, metavar="G",
                   help="ghost voxels per brick side, blended across faces (default: %(default)s)")
    g.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="local processes fitting bricks (default: 1)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="fit bricks on a Dask cluster (e.g. tcp://host:8786); workers read "
                        "the input from the same path (pip install 'neurvol[dask]')")
    p.add_argument("--shape", type=_shape, default=None, metavar="Z,Y,X", help="raw input shape")
    p.add_argument("--dtype", type=_dtype, default=None, help="raw input dtype, e.g. uint8, uint16, float32")
    p.add_argument("--byte-order", choices=("little", "big"), default="little",
                   help="raw input byte order (default: %(default)s)")
    p.add_argument("--format", default=None, help=fmt_help)
    p.add_argument("--group", type=_positive_int, default=None, metavar="N",
                   help="time series ([t, z, y, x] .npy input): steps per group of a key step "
                        "and its deltas (default 8; spec/series.md)")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")


def _add_bench_options(p: argparse.ArgumentParser, fmt_help: str) -> None:
    """The options of ``neurvol bench``."""
    p.add_argument("input", metavar="VOLUME", help="volume file (any input format of 'pack')")
    p.add_argument("--ratios", type=_ratios, default=[100.0], metavar="R1,R2,...",
                   help="compression ratios (default: 100)")
    p.add_argument("--methods", type=_csv_list, default=list(BENCH_METHODS), metavar="M1,M2,...",
                   help=f"methods to run (default: {','.join(BENCH_METHODS)}; also downsample_ref)")
    _auto, _default, _names, _ = _arch_choices()
    p.add_argument("--arch", type=_csv_list, default=[_default], metavar="A1,A2,...",
                   help=f"neurvol architectures, from {', '.join((_auto,) + _names)} "
                        f"(default: {_default})")
    p.add_argument("--steps", type=_positive_int, default=None, help="neurvol training steps")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--device", type=_device, default=None, help="neurvol device (default: cuda if available)")
    p.add_argument("--query-points", type=_positive_int, default=100_000,
                   help="points for neurvol's query throughput (default: %(default)s)")
    p.add_argument("--plot", default=None, metavar="RD.png", help="write a rate-distortion plot")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write all rows as JSON")
    p.add_argument("--shape", type=_shape, default=None, metavar="Z,Y,X", help="raw VOLUME shape")
    p.add_argument("--dtype", type=_dtype, default=None, help="raw VOLUME dtype")
    p.add_argument("--format", default=None, help=fmt_help)
    p.add_argument("-f", "--force", action="store_true", help="overwrite outputs if they exist")


# Subcommands whose options list the architectures (neurvol.models, which imports torch).
MODEL_COMMANDS = frozenset({"pack", "demo", "bench"})


def build_parser(*, models: bool = True) -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation).

    Args:
        models: build the options of the commands in :data:`MODEL_COMMANDS` (they import
            torch). Without them those subcommands are present with their one-line help
            only, which is all the top-level ``--help`` and the other commands need.
    """
    # Global options live on a parent parser so they work before *and* after the subcommand;
    # SUPPRESS keeps a subparser from resetting a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars, only essential output")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging on stderr")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compress 3D scalar volumes into small neural networks (.nvol files) "
                    "and query them.",
        epilog="Run 'neurvol COMMAND --help' for a command's options. Try 'neurvol demo'.",
    )
    # Own copies, not parents=[common]: argparse shares parent actions by reference, and
    # these need default False where the subcommands' need SUPPRESS.
    parser.add_argument("-q", "--quiet", action="store_true", default=False,
                        help="no progress bars, only essential output")
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="debug logging on stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    fmt_help = "volume format name overriding the extension: " + ", ".join(
        f.name for f in nvio.volume_formats())

    p = sub.add_parser("pack", parents=[common], help="fit a volume and write an .nvol file",
                       description="Fit a small network to a volume and write it as .nvol.")
    if models:
        _add_pack_options(p, fmt_help)
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("unpack", parents=[common], help="decode an .nvol file to a volume",
                       description="Decode an .nvol file to a volume file (.npy, .raw, .h5, .nc, "
                                   ".vti for ParaView, .nii/.nii.gz), with the spacing and origin "
                                   "from the .nvol header where the format records them.")
    p.add_argument("input", metavar="IN.nvol")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output volume: .npy, .raw/.bin, .h5, .nc, .vti or .nii/.nii.gz")
    p.add_argument("--dtype", type=_dtype, default=None, help="output dtype (default: the input's)")
    p.add_argument("--shape", type=_shape, default=None, metavar="Z,Y,X",
                   help="decode on another grid (default: the input's shape)")
    p.add_argument("--format", default=None, help=fmt_help)
    p.add_argument("--step", type=int, default=None, metavar="K",
                   help="time-series files: write step K only (decodes only its group up to K)")
    p.add_argument("--variable", default=None, metavar="NAME",
                   help="time-series files with several variables: the one to write")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("info", parents=[common], help="show what an .nvol file holds",
                       description="Show header, architecture, sizes, ratio and fit quality.")
    p.add_argument("input", metavar="IN.nvol")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--bytes", action="store_true",
                   help=f"show where the bytes go even for files of more than "
                        f"{INFO_BYTES_MAX_BRICKS} bricks (reads every brick)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("query", parents=[common], help="evaluate an .nvol file at points",
                       description="Evaluate an .nvol file at (N, 3) z,y,x points; print one "
                                   "value per line or write them to a file.")
    p.add_argument("input", metavar="IN.nvol")
    p.add_argument("--points", required=True, metavar="PTS",
                   help="points file: .npy (N, 3) or .csv/.txt (z,y,x per line)")
    p.add_argument("--space", choices=("index", "normalized"), default="index",
                   help="index: voxel coordinates; normalized: [-1, 1]^3 (default: %(default)s)")
    p.add_argument("--clamp", action="store_true",
                   help="clamp points outside the volume to its boundary instead of failing")
    p.add_argument("-o", "--output", default=None, metavar="VALUES",
                   help="write values to .npy or .csv/.txt instead of printing them")
    p.add_argument("--t", type=_finite_float, default=None, metavar="T",
                   help="time-series files: the step (default 0); between steps, e.g. 2.5, "
                        "linear in time")
    p.add_argument("--variable", default=None, metavar="NAME",
                   help="time-series files with several variables: the one to query")
    p.add_argument("-f", "--force", action="store_true", help="overwrite VALUES if it exists")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("demo", parents=[common], help="pack and unpack the embedded sample",
                       description="Pack the embedded 66^3 sample volume, unpack it and report "
                                   "ratio, size, PSNR and timings.")
    if models:
        _add_fit_options(p)
        p.add_argument("--workdir", default=None, metavar="DIR",
                       help="keep neghip.nvol and neghip_decoded.npy in DIR, overwriting them "
                            "(default: a temporary directory)")
    p.set_defaults(func=cmd_demo)

    def add_camera(p: argparse.ArgumentParser, size: str) -> None:
        g = p.add_argument_group("rendering")
        g.add_argument("--azimuth", type=float, default=30.0,
                       help="camera angle about the z (up) axis, degrees from +x (default: %(default)g)")
        g.add_argument("--elevation", type=float, default=20.0,
                       help="camera angle above the xy plane, degrees (default: %(default)g)")
        g.add_argument("--distance", type=_positive_float, default=3.5,
                       help="camera distance in bounding-sphere radii, > 1 (default: %(default)g)")
        g.add_argument("--size", type=_image_size, default=_image_size(size), metavar="WxH",
                       help=f"image size in pixels (default: {size})")
        g.add_argument("--samples", type=_positive_int, default=128,
                       help="samples per ray across the volume (default: %(default)s)")
        g.add_argument("--opacity", type=_float_pair, default=(0.1, 1.0), metavar="LO,HI",
                       help="opacity ramps from 0 at normalised value LO to 1 at HI "
                            "(default: 0.1,1)")
        g.add_argument("--density", type=_positive_float, default=8.0,
                       help="opacity scale: higher is more opaque (default: %(default)g)")

    p = sub.add_parser("render", parents=[common], help="ray-marched picture of an .nvol file",
                       description="Volume-render an .nvol file straight from its network (points "
                                   "queried along camera rays, colormap + opacity ramp, "
                                   "front-to-back compositing) into a PNG; --slices draws three "
                                   "orthogonal mid slices instead. Needs matplotlib "
                                   "(pip install 'neurvol[viz]').")
    p.add_argument("input", metavar="IN", help=".nvol file (or a volume file, rendered the same way)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="output PNG")
    p.add_argument("--slices", action="store_true", help="three orthogonal mid slices instead of a rendering")
    p.add_argument("--cmap", default="viridis", help="matplotlib colormap (default: %(default)s; "
                                                     "gray for --slices)")
    add_camera(p, "512x512")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("compare", parents=[common], help="original vs decoded vs error, as a PNG",
                       description="Put the original volume, the decoded .nvol and their absolute "
                                   "error side by side (three mid slices and a rendering each), "
                                   "PSNR in the title. Needs matplotlib.")
    p.add_argument("original", metavar="ORIGINAL", help="the volume the .nvol was packed from "
                                                        "(any input format of 'pack')")
    p.add_argument("input", metavar="IN.nvol")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="output PNG")
    p.add_argument("--shape", type=_shape, default=None, metavar="Z,Y,X", help="raw ORIGINAL shape")
    p.add_argument("--dtype", type=_dtype, default=None, help="raw ORIGINAL dtype")
    p.add_argument("--format", default=None, help=fmt_help)
    add_camera(p, "200x200")
    p.add_argument("-f", "--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", parents=[common], help="neurvol vs classical codecs: table + R-D plot",
                       description="Compress VOLUME with neurvol and the baselines (downsample at "
                                   "equal bytes, ZFP via zfpy, SZ3 via pysz, lossless zstd) at each "
                                   "ratio; print ratio, PSNR, max error, encode/decode seconds and "
                                   "optionally write a rate-distortion plot. Baselines whose "
                                   "package is missing are skipped with a note.")
    if models:
        _add_bench_options(p, fmt_help)
    p.set_defaults(func=cmd_bench)
    return parser


# ---------------------------------------------------------------------------------------
# entry point


@contextlib.contextmanager
def _logging(verbose: bool) -> Iterator[None]:
    """Route the package's log records to the current stderr for the duration of a command."""

    class _StderrHandler(logging.StreamHandler):
        # Look sys.stderr up at emit time so redirection (tests, callers) is honoured.
        @property  # type: ignore[override]
        def stream(self) -> Any:
            return sys.stderr

        @stream.setter
        def stream(self, _value: Any) -> None:
            pass

    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(
        "neurvol: %(levelname)s: %(name)s: %(message)s" if verbose else "neurvol: %(levelname)s: %(message)s"))
    old_level, old_propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    log.propagate = False  # we are the handler; avoid duplicates via the root logger
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        log.propagate = old_propagate


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _needs_models(argv: Sequence[str]) -> bool:
    """Whether parsing ``argv`` needs the options of :data:`MODEL_COMMANDS`.

    The global options take no value, so the first argument not starting with ``-`` names
    the command; without one (``neurvol --help``, ``--version``) no command's options are
    shown. Anything unexpected builds the whole parser, so the answer is never wrong.
    """
    for arg in argv:
        if arg == "--":
            return True
        if not arg.startswith("-"):
            return arg not in _TORCH_FREE_COMMANDS
    return False


# Commands whose parsing needs no architecture list.
_TORCH_FREE_COMMANDS = frozenset({"unpack", "info", "query", "render", "compare"})


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``neurvol`` command line; returns the exit code.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(models=_needs_models(argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help/--version (0) or a usage error (2)
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)

    func: Callable[[argparse.Namespace], int] = args.func
    writes = write_count()
    with _logging(args.verbose), _sigterm_raises():
        try:
            return func(args)
        except NeurvolError as e:
            log.debug("details", exc_info=True)
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 1
        except BrokenPipeError:
            # stdout closed early (`neurvol query ... | head`): not an error worth a trace.
            _silence_stdout()
            return 141
        except OSError as e:
            # Not wrapped by the library (e.g. a full disk mid-write): still the user's
            # environment, not a bug, so no traceback unless --verbose.
            log.debug("details", exc_info=True)
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            print(f"{PROG}: error: {e.strerror or e}{where}", file=sys.stderr)
            return 1
        except Terminated as e:
            print(f"{PROG}: terminated{_completed_note(writes)}", file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted{_completed_note(writes)}", file=sys.stderr)
            return 130


def _completed_note(writes: int) -> str:
    """Which outputs were already complete when a signal stopped the command (a signal
    just after the rename must not suggest the file is damaged)."""
    done = completed_since(writes)
    if not done:
        return ""
    return "; " + ", ".join(done) + (" is" if len(done) == 1 else " are") + \
        " complete (written before the signal)"


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":  # pragma: no cover - `python -m neurvol` goes through __main__.py
    sys.exit(main())
