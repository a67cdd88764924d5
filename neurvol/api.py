"""The public verbs: :func:`encode`, :func:`open` and :func:`sample_volume`.

A thin facade: encodes are planned and run by :mod:`neurvol.encoding`, files are read by
:class:`neurvol.NeuralVolume`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from .compress import jit
from .encoding import encode_volume
from .errors import NeurvolInputError
from .encoding.bounded import encode_bounded_volume
from .encoding.pilot import AUTO_RATE, RATE_CODING_LOSS_DB, RATE_PILOT, RATE_PILOT_DECLINE_DB
from .encoding.plan import (AUTO_ARCH, AUTO_BRICK, AUTO_BRICK_VOXELS, AUTO_ORDER,
                            CONSTANT_BRICK_PSNR, DEFAULT_ARCH, DEFAULT_BITS, DEFAULT_STEPS)
from .container import NvolReader
from .encoding.series import encode_series
from .errors import NeurvolInputError
from .neural_volume import NeuralVolume
from .series import (MAX_CORRECTION_STEPS, MAX_GROUP_STEPS, MAX_NAME, MAX_STEPS, MAX_VARIABLES, NeuralSeries,
                     open_any)

__all__ = ["encode", "open", "sample_volume", "AUTO_ARCH", "AUTO_BRICK", "AUTO_BRICK_VOXELS",
           "AUTO_ORDER", "AUTO_RATE", "CONSTANT_BRICK_PSNR", "DEFAULT_ARCH", "DEFAULT_BITS",
           "DEFAULT_STEPS", "RATE_CODING_LOSS_DB", "RATE_PILOT", "RATE_PILOT_DECLINE_DB"]


def encode(
    volume: Any,
    ratio: float = 100.0,
    *,
    psnr: Optional[float] = None,
    arch: str = DEFAULT_ARCH,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    steps: Optional[int] = None,
    bits: int = DEFAULT_BITS,
    spacing: Optional[Sequence[float]] = None,
    origin: Optional[Sequence[float]] = None,
    fit_settings: Optional[Dict[str, Any]] = None,
    codec: Optional[Dict[str, Any]] = None,
    quiet: bool = False,
    brick: Optional[int] = None,
    ghost: int = 2,
    bricks: Optional[Sequence[int]] = None,
    blend: bool = True,
    workers: Optional[int] = None,
    devices: Optional[Sequence[str]] = None,
    executor: Any = None,
    retries: int = 2,
    max_error: Optional[float] = None,
    rel_error: Optional[float] = None,
    model_ratios: Optional[Sequence[float]] = None,
    correction_block: Optional[int] = None,
    fill_value: Union[float, Dict[str, float], None] = None,
    time: Optional[Sequence[float]] = None,
    group: Optional[int] = None,
    metadata: Optional[Dict[str, Any]] = None,
    attrs: Optional[Dict[str, Any]] = None,
    time_attrs: Optional[Dict[str, Any]] = None,
    **arch_options: Any,
) -> Union[NeuralVolume, NeuralSeries]:
    """Compress a 3-D volume into a :class:`NeuralVolume` whose file fits the byte budget.

    volume: ``(D, H, W)`` array indexed ``[z, y, x]`` (numpy array, memmap, h5py dataset,
    or anything with ``shape``, ``dtype`` and slicing), integer or float.
    ratio: the whole ``.nvol`` file, header included, is at most ``volume.nbytes / ratio``.
    With ``arch="auto"`` (the default) and one model, the budget goes to whichever of two
    candidates has the better PSNR over the volume: the model, or a pure predictor file
    (no model; an error-bounded correction stream whose bound is searched so the file fits,
    ``spec/correction.md``), which wins on smooth fields and at low ratios and also
    reaches budgets too small for any model. ``info()["content"]`` says which was kept,
    ``byte_breakdown()`` splits the bytes, ``hybrid_candidates`` gives both PSNRs;
    ``codec={"hybrid": False}`` fits a model only. Bricked encodes are model-only.
    psnr: instead of a ratio, a quality target in dB: the smallest file found (by a search
    over ratios, a few encodes, starting at ``ratio``) whose PSNR reaches it; when none
    does, the best one found, with a warning.
    arch: architecture name (``neurvol.models.architectures()``), or ``"auto"`` (default:
    the first of ``AUTO_ORDER`` that fits the budget); ``arch_options`` are
    the named architecture's sizing options (e.g. ``grids=4`` for amgsrn,
    ``grad_lambda=0.1`` for neurcomp).
    steps: optimisation steps (default: the architecture's, 2000 for amgsrn, 1500 for
    the others); bits: k-means bits for large tensors.
    device: ``"cpu"``, ``"cuda"`` ... (default: CUDA when available).
    fit_settings: :class:`neurvol.fit.FitSettings` fields overriding the architecture's
    training defaults, e.g. neurcomp's published recipe:
    ``fit_settings=neurvol.models.neurcomp.published_fit_settings(volume.shape)``.
    codec: :class:`neurvol.pipeline.CodecSettings` fields: how weights become bytes, e.g.
    ``codec={"prune": 0.3}`` (``"prune_method": "smallify"`` or ``"vd"`` to learn what to
    prune) or ``codec={"grids": "kmeans", "finetune": 0}`` (the foundation's plain
    k-means + zstd). ``codec={"rate": "auto"}`` chooses per volume between the
    ``CodecSettings`` defaults and rate-aware fitting (:data:`AUTO_RATE`; it wins on
    rough volumes and loses on smooth ones): the rate-aware model is fitted to
    :data:`RATE_PILOT` of its steps and coded; it is finished unless coding cost it more
    than :data:`RATE_CODING_LOSS_DB` against its float values or its float PSNR fell
    during the pilot (:data:`RATE_PILOT_DECLINE_DB`), and the default is fitted
    instead. Time: one rate-aware encode plus a coding of the pilot when it is kept,
    about 0.4 fit more when not. It is the default when ``codec`` sets neither ``rate``
    nor ``grid_bits`` and keeps the interp grid coder (``codec={"rate": 0}`` turns it
    off); in a bricked encode each brick makes this choice for its own model.

    Bricked ensembles (``spec/bricks.md``; automatic with ``brick=128`` for volumes over
    ``AUTO_BRICK_VOXELS``): ``brick=N`` cuts the volume into bricks of about N voxels a
    side, ``bricks=(K, J, I)`` gives the brick counts along z, y, x (``(1, 1, 1)``: one
    model). Each brick's model covers its extent plus ``ghost`` voxels per side; with
    ``blend`` queries within ``ghost`` voxels of a face mix both bricks (no seams). The
    input is read one brick at a time. ``workers``: local processes fitting bricks
    (default 1, or one per entry of ``devices=["cuda:0", ...]``); ``executor``: a
    ``distributed.Client`` (or any ``concurrent.futures.Executor``); a failing brick is
    retried ``retries`` times. The same seed gives the same bytes with any executor.

    Error-bounded mode (``spec/correction.md``): ``max_error=E`` (data units) or
    ``rel_error=r`` (``E = r * (max - min)``) instead of a ratio: every voxel of
    ``decode()`` and every ``query()`` at a voxel centre is within ``E`` (integers after
    rounding), checked voxel by voxel before the file is returned. The file is the
    smallest of a pure predictor-coded grid and a model fitted at each ratio of
    ``model_ratios`` (default ``neurvol.encoding.bounded.DEFAULT_MODEL_RATIOS``; ``()``:
    no model) plus its correction stream; ``ratio``, ``psnr`` and the brick options do
    not apply. ``correction_block``: the edge of the stream's independently decodable
    blocks (default ``neurvol.compress.correction.DEFAULT_BLOCK``): a point query decodes
    the blocks its neighbouring voxels lie in, so smaller blocks (16, 8) answer a cold
    scattered query several times faster, at a larger file (each block restarts the
    predictor; see BENCHMARKS.md, "Error-bounded random access").

    Masked volumes (``spec/mask.md``): NaN voxels of a float volume, or the voxels equal
    to ``fill_value``, hold no data. They are stored as a lossless, entropy-coded mask
    (its bytes count in the budget), the model is fitted on the valid voxels only, and
    ``decode()`` gives NaN / the fill value back there exactly; ``query()`` answers NaN at
    points whose nearest voxel is masked. The value range, ``fit_psnr`` and
    :func:`neurvol.metrics.psnr` are over the valid voxels. Masks need one model: not
    with bricks or ``max_error``.

    Time series and several variables (``spec/series.md``, ``docs/timeseries.md``): a
    ``[t, z, y, x]`` array, a list of ``[z, y, x]`` volumes (arrays, memmaps, h5py
    datasets) or a dict ``{name: either}`` of variables sharing the time and grid gives a
    :class:`neurvol.series.NeuralSeries`; ``ratio`` is over the whole series. Steps are
    coded in groups of ``group`` (default ``neurvol.encoding.series.DEFAULT_GROUP``): a
    key step, then each step as a difference from its predecessor; reading a step decodes
    only its group up to it. ``time``: one coordinate per step (stored, shown by the
    xarray backend); ``metadata``: ``{name: {"units": str, "attrs": dict}}``; ``attrs``
    and ``time_attrs``: the global and the time coordinate's attributes (JSON values, at
    most ``neurvol.encoding.series.MAX_ATTRS_BYTES`` as JSON each), kept in the file.
    Steps may have masked (NaN / fill) regions: ``fill_value`` is one number for every
    variable or ``{name: number}``; each member's mask is stored losslessly (steps with
    equal masks share one copy), the fit sees its valid voxels only, and decodes and
    queries treat masked voxels as a masked single volume does. The brick, error-bound
    and ``psnr`` options do not apply to series.

    Example::

        >>> import neurvol
        >>> nv = neurvol.encode(neurvol.sample_volume(), ratio=100, steps=50, quiet=True)
        >>> nv.nbytes_file <= neurvol.sample_volume().nbytes / 100
        True
    """
    if is_series_input(volume):
        if psnr is not None or max_error is not None or rel_error is not None or \
                brick is not None or bricks is not None or model_ratios is not None:
            raise NeurvolInputError(
                "psnr=, max_error=, rel_error=, model_ratios=, brick= and bricks= do not "
                "apply to a time series or several variables; give ratio=")
        data, seconds = encode_series(
            volume, ratio, time_axis=time, group=group, metadata=metadata,
            fill_value=fill_value, attrs=attrs, time_attrs=time_attrs, arch=arch,
            seed=seed, device=device, steps=steps, bits=bits, spacing=spacing, origin=origin,
            fit_settings=fit_settings, codec=codec, quiet=quiet,
            limits=(MAX_STEPS, MAX_VARIABLES, MAX_GROUP_STEPS, MAX_NAME, MAX_CORRECTION_STEPS),
            **arch_options)
        series = NeuralSeries(NvolReader(data), device=device)
        series.encode_seconds = seconds
        return series
    if time is not None or group is not None or metadata is not None or attrs is not None \
            or time_attrs is not None:
        raise NeurvolInputError(
            "time=, group=, metadata=, attrs= and time_attrs= apply to time series: give a "
            "[t, z, y, x] array, a list of volumes or a dict of variables")
    if isinstance(fill_value, dict):
        raise NeurvolInputError(
            "fill_value as a dict of variables applies to several variables; give one number")
    if correction_block is not None and max_error is None and rel_error is None:
        raise NeurvolInputError("correction_block= applies to error-bounded encodes: give "
                                "max_error= or rel_error= too")
    if max_error is not None or rel_error is not None or model_ratios is not None:
        if fill_value is not None:
            raise NeurvolInputError(
                "fill_value (a masked volume) does not combine with max_error/rel_error: "
                "the error-bounded mode has no masks yet; encode with ratio= or psnr=")
        return encode_bounded_volume(
            volume, max_error, rel_error, model_ratios, psnr=psnr, brick=brick, bricks=bricks,
            block=correction_block, arch=arch, seed=seed, device=device, steps=steps, bits=bits, spacing=spacing,
            origin=origin, fit_settings=fit_settings, codec=codec, quiet=quiet, ghost=ghost,
            blend=blend, workers=workers, devices=devices, executor=executor,
            retries=retries, **arch_options)
    # numpy decoders inside (the same values): an encode's memory counts, and numba's
    # LLVM would add ~130 MiB to the process (neurvol/compress/jit.py).
    with jit.suspended():
        return encode_volume(
            volume, ratio, psnr=psnr, arch=arch, seed=seed, device=device, steps=steps,
            bits=bits, spacing=spacing, origin=origin, fit_settings=fit_settings, codec=codec,
            quiet=quiet, brick=brick, ghost=ghost, bricks=bricks, blend=blend, workers=workers,
            devices=devices, executor=executor, retries=retries, fill_value=fill_value,
            **arch_options)


def open(path: Union[str, os.PathLike], *, device: Union[str, torch.device, None] = None,
         backend: Optional[str] = None) -> Union[NeuralVolume, NeuralSeries]:
    """Open a ``.nvol`` file lazily: reads the header and brick index only. A time-series
    file gives a :class:`neurvol.series.NeuralSeries`, any other a :class:`NeuralVolume`.

    backend: ``"torch"``, ``"numpy"`` or None (``$NEURVOL_BACKEND``, else torch when it is
    installed); see :func:`neurvol.neural_volume.open_volume`.
    """
    return open_any(path, device=device, backend=backend)


def is_series_input(volume: Any) -> bool:
    """Whether an encode's input is a time series: a dict of variables, a 4-D array, or a
    list/tuple of 3-D arrays (a nested list of numbers stays one volume)."""
    if isinstance(volume, dict):
        return True
    if isinstance(volume, (list, tuple)):
        return bool(volume) and len(getattr(volume[0], "shape", ())) == 3
    shape = getattr(volume, "shape", None)
    return shape is not None and len(shape) == 4


def sample_volume() -> np.ndarray:
    """The embedded sample: VolVis "neghip", 66x66x66 uint8 (see ``neurvol/sample/README.md``)."""
    here = os.path.join(os.path.dirname(__file__), "sample", "neghip.npy")
    return np.load(here, allow_pickle=False)
