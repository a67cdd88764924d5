"""Encoding time series and several variables into one file (``spec/series.md``).

Each variable's steps are cut into groups of ``group`` consecutive steps. A group's first
step (its *key*) is a single-volume encode (:func:`.entry.encode_single_or_predictor`) at a larger
budget than an average step; every following step warm-starts from its predecessor's
*decoded* weights, fine-tunes the feature grids only (the decoder MLP and the grid
placement are the key's) for a fraction of the fit's steps, with an L1 pull towards the
predecessor so that most grid values do not move, and is stored as the quantized
difference from the predecessor's decoded grids (:mod:`neurvol.compress.delta`). The
quantization step is searched so that the delta fits its share of the budget. Because
each delta is taken against what the decoder has, errors do not accumulate along the chain,
and decoding step ``k`` needs only the members of its group up to ``k``.

Where the key's own encode keeps the pure predictor (a smooth field, as for a single
volume: :func:`.entry.encode_single_or_predictor`), the group is a *correction group*
instead: the key is that predictor's correction stream, and every following step is a
correction stream against the previous step's decoded values (SZ3-style prediction in
time, then in space), its error bound searched to fit its share; no model is fitted after
the key's, and every step of the group has a pointwise bound.

Budget: the whole file (header included) is at most the original bytes / ``ratio``. Each
member has a nominal share (a key :data:`KEY_WORTH` steps' worth, the deltas the rest of
their group's); what a member leaves unused is spread over the members after it, so a
step that changes little gives its bytes to those that change more.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..compress import TensorPlan, decode_payload, encode_constant, encode_records
from ..compress.bound import SECTION_CORRECTION
from ..compress.correction import BoundTooSmallError, decode_correction, encode_correction
from ..compress.correction.layout import integer_bound
from ..compress.correction.levels import OBJECTIVE_QUALITY
from ..compress.delta import decode_delta, encode_delta
from ..container import NvolReader, serialize_nvol
from ..errors import NeurvolBudgetError, NeurvolFormatError, NeurvolInputError
from ..fit import Fitting
from ..fit.trainer import Regularizer
from ..metrics import psnr
from ..models import get_architecture
from ..models.base import resolve_device
from ..neural_volume import NeuralVolume, config_of, tensor_specs
from ..compress.mask import encode_mask
from ..masking import MASK_KEY
from ..volume_checks import check_masked_volume, check_ratio
from .entry import encode_single_or_predictor
from .hybrid import MAX_REL_BOUND, MIN_REL_BOUND, ORDER_TRIAL_BOUND, order_for, split_codec
from .masked import DEFAULT_FILL, FILL_METHODS, masked_input
from .pilot import rate_is_default
from .plan import (AUTO_ARCH, CODEC, FIT_PLACEHOLDER, WRITER, candidates_for, check_int,
                   fit_settings_for, normalized_tensor, triple)

log = logging.getLogger("neurvol")

#: Format minor version of time-series files (spec/nvol.md §6).
SERIES_MINOR = 3
#: ``series.version`` written (spec/series.md §3): 1 without correction groups, so every
#: 1.3 reader reads the file; 2 with them. (The reader's are neurvol.series.layout's, a
#: part beside this one; tests/test_series_correction.py checks they agree.)
SERIES_VERSION = 1
CORRECTION_SERIES_VERSION = 2
#: Default steps per group (a key and its deltas).
DEFAULT_GROUP = 8
#: Name of the variable of an encode given one array or a list of steps.
DEFAULT_VARIABLE = "data"
#: A key member's nominal budget in average steps' worth (groups of at least
#: ``1 + (KEY_WORTH - 1) / KEY_WORTH_PER_STEP`` steps; shorter groups give it less).
KEY_WORTH = 2.5
KEY_WORTH_PER_STEP = 0.3
#: A delta's fine-tune: this fraction of the fit's steps ...
DELTA_FIT = 0.3
#: ... at this fraction of its learning rate, without warm-up (the weights start close).
DELTA_LR = 0.1
#: Weight of the L1 pull of the grids towards the predecessor's, relative to the running
#: MSE (so it scales with the data): larger keeps more grid values unchanged (cheaper
#: deltas), too large stops the grids following the data.
DELTA_L1 = 100.0
#: A step further than this PSNR (dB, over its own range) from the step before starts a
#: new group (a key): a delta pays where consecutive steps are close (viscous fingers,
#: 37-43 dB apart: +3.7 dB over independent steps) and loses where they are not (Isabel,
#: 31-34 dB apart: -2.3 dB), BENCHMARKS.md "Time series"; a jump between runs is far less.
CUT_PSNR = 35.0
#: Running-MSE smoothing of the L1 pull.
_LOSS_DECAY = 0.98
#: Bisection of a delta's quantization step (log scale), in grid units.
_STEP_RANGE = (1e-7, 1.0)
_STEP_SEARCH = 24
#: Header bytes kept free beyond the estimate (config numbers of later groups may be
#: longer than the first group's).
_SLACK_PER_GROUP = 24
_SLACK = 64
#: Stream coders a delta tries in turn (None: the default choice, rANS included); the
#: next is used when the reader's bounds refuse what one wrote.
_DELTA_CODER_CHOICES: Tuple[Optional[Tuple[str, ...]], ...] = (None, ("raw", "zstd"))
#: Header bytes reserved before the first group's model entry is known.
_UNKNOWN_MODEL_BYTES = 2048
#: A bound as the header may write it, at its longest (the reservation's placeholder).
_WIDEST_BOUND = 1.2345678901234567e-300
#: A correction member's bound search (:func:`_fill_bound`): at most this many stream
#: encodes, the first step this long in log(bound), stopping within this fraction below
#: the member's target; bounds closer than _SAME_BOUND in log(bound) count as one.
_FILL_TRIALS = 12
_FIRST_MOVE = 0.5
_FILL_TOLERANCE = 0.03
_SAME_BOUND = 2e-3
#: Most distinct masks one file stores (one container section each, spec/nvol.md's
#: section table holds at most 1024 entries).
MAX_MASK_SECTIONS = 1000
#: Prefix of the sections holding the members' masks: ``mask.<variable>.<i>``.
MASK_SECTION_PREFIX = "mask"
#: Header bytes a masked key's own single-volume file spends on its mask entry (its
#: budget covers them; the series file does not have them).
_MASK_ENTRY_BYTES = 64
#: Largest JSON text of the global or time attributes (spec/series.md §3).
MAX_ATTRS_BYTES = 1 << 16


@dataclasses.dataclass
class _Var:
    name: str
    steps: List[Any]
    dtype: np.dtype
    lo: float
    hi: float
    units: Optional[str]
    attrs: Dict[str, Any]
    #: Each step's mask (True: masked; None: no masked voxel) and the variable's fill
    #: value (None: masked voxels are NaN).
    masks: List[Optional[np.ndarray]] = dataclasses.field(default_factory=list)
    fill: Optional[float] = None


class _PullTowards(Regularizer):
    """``weight x running MSE x mean |grids - reference|`` over the trained tensors."""

    def __init__(self, tensors: Sequence[torch.Tensor], reference: Sequence[torch.Tensor],
                 weight: float) -> None:
        super().__init__()
        self.tensors, self.reference, self.weight = list(tensors), list(reference), weight
        self.loss: Optional[torch.Tensor] = None

    def penalty(self, mse: torch.Tensor) -> torch.Tensor:
        mse = mse.detach()
        self.loss = mse if self.loss is None else _LOSS_DECAY * self.loss + (1 - _LOSS_DECAY) * mse
        l1 = torch.cat([(t - r.to(t.device)).abs().reshape(-1)
                        for t, r in zip(self.tensors, self.reference)]).mean()
        return (self.weight * self.loss) * l1


def series_inputs(data: Any, metadata: Optional[Mapping[str, Any]], max_name: int,
                  fill_value: Any = None) -> List[_Var]:
    """The variables of an encode's input: a dict ``{name: 4-D array or list of 3-D}``, a
    4-D array, or a list/tuple of 3-D volumes; checked (finite or masked, same shapes).
    ``fill_value``: one number for every variable, or ``{name: number}``; voxels equal to
    it (and NaN voxels of float variables) are masked (spec/series.md §3.1)."""
    if isinstance(data, Mapping):
        if not data:
            raise NeurvolInputError("the dict of variables is empty; give at least one array")
        items = list(data.items())
    else:
        items = [(DEFAULT_VARIABLE, data)]
    metadata = dict(metadata or {})
    unknown = sorted(set(metadata) - {str(n) for n, _ in items})
    if unknown:
        raise NeurvolInputError(f"metadata names unknown variables {unknown}")
    fills = dict(fill_value) if isinstance(fill_value, Mapping) else None
    if fills is not None:
        unknown = sorted(set(fills) - {str(n) for n, _ in items})
        if unknown:
            raise NeurvolInputError(f"fill_value names unknown variables {unknown}")
    out: List[_Var] = []
    shape = count = None
    for name, value in items:
        if not isinstance(name, str) or not 1 <= len(name) <= max_name:
            raise NeurvolInputError(
                f"variable names must be strings of 1 to {max_name} characters, got {name!r}")
        if isinstance(value, (list, tuple)):
            steps = list(value)
        else:
            vshape = getattr(value, "shape", None)
            if vshape is None:
                value = np.asarray(value)
                vshape = value.shape
            if len(vshape) != 4:
                raise NeurvolInputError(
                    f"variable {name!r}: a time series is a [t, z, y, x] array or a list of "
                    f"[z, y, x] volumes, got shape {tuple(vshape)}")
            steps = [value[t] for t in range(int(vshape[0]))]
        if not steps:
            raise NeurvolInputError(f"variable {name!r} has no steps")
        fill = fills.get(name) if fills is not None else fill_value
        checked, masks, lo, hi = [], [], math.inf, -math.inf
        for t, step in enumerate(steps):
            try:
                vol, a, b, mask = check_masked_volume(step, fill)
            except NeurvolInputError as exc:
                raise NeurvolInputError(f"variable {name!r}, step {t}: {exc}") from None
            checked.append(vol)
            masks.append(mask)
            lo, hi = min(lo, a), max(hi, b)
        dtypes = {np.dtype(v.dtype) for v in checked}
        shapes = {tuple(int(n) for n in v.shape) for v in checked}
        if len(dtypes) != 1 or len(shapes) != 1:
            raise NeurvolInputError(
                f"variable {name!r}: every step must have one shape and dtype, got shapes "
                f"{sorted(shapes)} and dtypes {sorted(str(d) for d in dtypes)}")
        if shape is not None and (shapes != {shape} or len(checked) != count):
            raise NeurvolInputError(
                f"variable {name!r} has {len(checked)} steps of shape {shapes.pop()}, but "
                f"{out[0].name!r} has {count} of {shape}; all variables share the time and grid")
        shape, count = shapes.pop() if shape is None else shape, len(checked)
        meta = metadata.get(name) or {}
        if not isinstance(meta, Mapping) or set(meta) - {"units", "attrs"}:
            raise NeurvolInputError(
                f"metadata[{name!r}] must be a dict with 'units' (str) and/or 'attrs' (dict)")
        units, attrs = meta.get("units"), dict(meta.get("attrs") or {})
        if units is not None and not isinstance(units, str):
            raise NeurvolInputError(f"metadata[{name!r}]['units'] must be a str, got {units!r}")
        out.append(_Var(name, checked, dtypes.pop(), lo, hi, units, attrs, masks,
                        None if fill is None else float(fill)))
    return out


def check_attrs(attrs: Optional[Mapping[str, Any]], what: str) -> Dict[str, Any]:
    """Global or time attributes for the header: a JSON-able dict of bounded size."""
    if attrs is None:
        return {}
    if not isinstance(attrs, Mapping) or not all(isinstance(k, str) for k in attrs):
        raise NeurvolInputError(f"{what} must be a dict with str keys, got {attrs!r}")
    try:
        text = json.dumps(dict(attrs), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise NeurvolInputError(
            f"{what} must hold JSON values (str, finite numbers, lists, dicts): {exc}; "
            "neurvol.io.json_attrs converts NetCDF attributes") from None
    if len(text) > MAX_ATTRS_BYTES:
        raise NeurvolInputError(
            f"{what} take {len(text)} bytes as JSON; at most {MAX_ATTRS_BYTES} are stored: "
            "drop the large ones")
    return dict(attrs)


def mask_sections(variables: Sequence[_Var]) -> Tuple[List[Optional[Dict[str, Any]]],
                                                       Dict[str, bytes]]:
    """Each variable's header ``mask`` entry (None: no masked step) and the sections that
    hold the masks: steps whose masks are equal share one section (spec/series.md §3.1)."""
    entries: List[Optional[Dict[str, Any]]] = []
    sections: Dict[str, bytes] = {}
    for vi, var in enumerate(variables):
        if all(m is None for m in var.masks):
            entries.append(None)
            continue
        known: Dict[bytes, str] = {}
        steps: List[Optional[Dict[str, Any]]] = []
        for mask in var.masks:
            if mask is None:
                steps.append(None)
                continue
            key = np.packbits(mask).tobytes()
            name = known.get(key)
            if name is None:
                if len(sections) >= MAX_MASK_SECTIONS:
                    raise NeurvolInputError(
                        f"the series has more than {MAX_MASK_SECTIONS} distinct masks; a file "
                        "stores at most that many: encode fewer steps per file")
                name = known[key] = f"{MASK_SECTION_PREFIX}.{vi}.{len(known)}"
                sections[name] = encode_mask(mask)
            steps.append({"masked": int(np.count_nonzero(mask)), "section": name})
        entries.append({"fill": var.fill, "steps": steps})
    return entries, sections


def _key_worth(length: int) -> float:
    return min(KEY_WORTH, 1.0 + KEY_WORTH_PER_STEP * (length - 1))


def _groups(var: _Var, group: int) -> List[Tuple[int, int]]:
    """Groups of at most ``group`` steps; a new group also starts where a step is further
    from the one before than :data:`CUT_PSNR` (a jump in time: a delta would cost more
    than a key)."""
    out, start = [], 0
    for t in range(1, len(var.steps)):
        if t - start >= group or psnr(var.steps[t], var.steps[t - 1]) < CUT_PSNR:
            out.append((start, t))
            start = t
    out.append((start, len(var.steps)))
    return out


def _member_header(shape: Sequence[int], var: _Var, spacing: List[float],
                   origin: List[float]) -> Dict[str, Any]:
    return {"volume": {"shape": list(shape), "dtype": var.dtype.str, "min": var.lo,
                       "max": var.hi, "spacing": spacing, "origin": origin},
            "bricks": {"grid": [1, 1, 1]}}


def _as_volume(header: Dict[str, Any], weights: Dict[str, np.ndarray],
               specs: Sequence[Tuple[str, Tuple[int, ...]]]) -> NeuralVolume:
    """A single-volume file holding ``weights`` exactly (float32 records): decodes what a
    reader of the series decodes for them."""
    payload = encode_records([(n, weights[n]) for n, _ in specs],
                             {n: TensorPlan("raw32") for n, _ in specs})
    return NeuralVolume(NvolReader(serialize_nvol(header, [payload])))


def build_series_header(shape: Sequence[int], spacing: List[float], origin: List[float],
                        steps: int, time_axis: Optional[List[float]],
                        variables: List[Dict[str, Any]], ratio: float,
                        budget: int, attrs: Optional[Dict[str, Any]] = None,
                        time_attrs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The header of a series file (``spec/series.md`` §3); empty attributes are left
    out (files without them read as before)."""
    series: Dict[str, Any] = {"version": SERIES_VERSION, "shape": list(shape), "spacing": spacing,
                              "origin": origin, "steps": steps, "time": time_axis,
                              "variables": variables}
    if attrs:
        series["attrs"] = attrs
    if time_attrs:
        series["time_attrs"] = time_attrs
    return {
        "bricks": {"grid": [1, 1, len(variables) * steps]},
        "series": series,
        "budget": {"ratio": ratio, "bytes": budget},
        "writer": WRITER,
    }


def encode_series(data: Any, ratio: float, *, time_axis: Optional[Sequence[float]] = None,
                  group: Optional[int] = None, metadata: Optional[Mapping[str, Any]] = None,
                  fill_value: Any = None, attrs: Optional[Mapping[str, Any]] = None,
                  time_attrs: Optional[Mapping[str, Any]] = None,
                  arch: str, seed: int, device: Any, steps: Optional[int], bits: int,
                  spacing: Optional[Sequence[float]], origin: Optional[Sequence[float]],
                  fit_settings: Optional[Dict[str, Any]], codec: Optional[Dict[str, Any]],
                  quiet: bool, limits: Tuple[int, int, int, int, int],
                  **arch_options: Any) -> Tuple[bytes, float]:
    """The bytes of the series file of ``data`` (see :func:`neurvol.encode`) and the
    seconds it took. ``limits``: the reader's most steps, variables, steps per group,
    characters of a name (refused before anything is fitted) and steps per correction
    group (longer groups whose key is the predictor are cut) (:mod:`neurvol.series.layout`)."""
    t_start = time.perf_counter()
    ratio = check_ratio(ratio)
    group = DEFAULT_GROUP if group is None else group
    max_steps, max_variables, max_group, max_name, max_correction = limits
    check_int(group, "group", 1, max_group)
    check_int(seed, "seed", 0, what="a non-negative int")
    variables = series_inputs(data, metadata, max_name, fill_value)
    attrs_d, time_attrs_d = check_attrs(attrs, "attrs"), check_attrs(time_attrs, "time_attrs")
    if len(variables) > max_variables:
        raise NeurvolInputError(f"{len(variables)} variables given; at most {max_variables}")
    n_steps = len(variables[0].steps)
    if n_steps > max_steps:
        raise NeurvolInputError(f"{n_steps} steps given; at most {max_steps}")
    shape = tuple(int(n) for n in variables[0].steps[0].shape)
    if time_axis is not None:
        time_axis = [float(x) for x in time_axis]
        if len(time_axis) != n_steps or not all(math.isfinite(x) for x in time_axis) or any(
                b <= a for a, b in zip(time_axis, time_axis[1:])):
            raise NeurvolInputError(
                f"time must be {n_steps} finite, strictly increasing numbers (one per step)")
    spacing_t, origin_t = triple(spacing, 1.0, "spacing"), triple(origin, 0.0, "origin")
    candidates = candidates_for(arch, arch_options)
    dev = resolve_device(device)
    voxels = math.prod(shape)
    original = sum(n_steps * voxels * v.dtype.itemsize for v in variables)
    budget = int(original // ratio)
    var_groups = [_groups(var, group) for var in variables]

    # Nominal shares, in "average step" units per variable.
    plan: List[Tuple[int, int, float]] = []    # (variable, step, nominal bytes)
    for vi, var in enumerate(variables):
        per_step = voxels * var.dtype.itemsize / ratio
        for s, e in var_groups[vi]:
            worth = _key_worth(e - s)
            plan.append((vi, s, worth * per_step))
            for t in range(s + 1, e):
                plan.append((vi, t, (e - s - worth) / (e - s - 1) * per_step))
    nominal_left = sum(p for _, _, p in plan)

    mask_entries, sections = mask_sections(variables)
    var_entries: List[Dict[str, Any]] = [
        {"name": v.name, "dtype": v.dtype.str, "min": v.lo, "max": v.hi, "units": v.units,
         "attrs": v.attrs, "groups": [], "psnr": [FIT_PLACEHOLDER["psnr"]] * n_steps}
        for v in variables]
    for e, m in zip(var_entries, mask_entries):
        if m is not None:
            e[MASK_KEY] = m
    payloads: Dict[Tuple[int, int], bytes] = {}

    hybrid, codec = split_codec(codec)
    # Groups whose key may be the pure predictor (then a correction group): as for a
    # single volume, arch="auto" with the hybrid choice on, and no masked member.
    may_correct = [[hybrid and arch == AUTO_ARCH and var.lo != var.hi
                    and all(var.masks[t] is None for t in range(s, e))
                    for s, e in var_groups[vi]] for vi, var in enumerate(variables)]

    def reserve() -> int:
        """Header bytes of the final file: the groups still unknown assumed like the
        first known model group (and with a bound per step where they may be correction
        groups), psnr values and bounds at their widest."""
        known = next((g for e in var_entries for g in e["groups"] if g["model"] is not None),
                     None)
        unknown_model = False
        entries = []
        for vi, (e, groups) in enumerate(zip(var_entries, var_groups)):
            gs = []
            for gi, (s, stop) in enumerate(groups):
                if gi < len(e["groups"]):
                    g = dict(e["groups"][gi])
                    if "max_error" in g:         # in progress: the bounds still to come
                        g["max_error"] = g["max_error"] + [_WIDEST_BOUND] * (
                            stop - s - len(g["max_error"]))
                    gs.append(g)
                    continue
                unknown_model = unknown_model or known is None
                g = {"start": s, "stop": stop, "model": known["model"] if known else None,
                     "codec": known["codec"] if known else None}
                if may_correct[vi][gi]:
                    g["max_error"] = [_WIDEST_BOUND] * (stop - s)
                gs.append(g)
            entries.append(dict(e, groups=gs))
        header = build_series_header(shape, spacing_t, origin_t, n_steps, time_axis, entries,
                                     ratio, budget, attrs_d, time_attrs_d)
        size = len(serialize_nvol(header, [b""] * (len(variables) * n_steps), sections,
                                  minor=SERIES_MINOR))
        return size + _SLACK + _SLACK_PER_GROUP * sum(map(len, var_groups)) + (
            _UNKNOWN_MODEL_BYTES if unknown_model else 0)

    used = 0
    plan_pos = 0
    fit_base = None
    for vi, var in enumerate(variables):
        for gi, (s, e) in enumerate(var_groups[vi]):
            if var.lo == var.hi:     # a constant variable: every member exact, no model
                for t in range(s, e):
                    payloads[(vi, t)] = encode_constant(var.lo)
                    var_entries[vi]["psnr"][t] = None
                    used += len(payloads[(vi, t)])
                    nominal_left -= plan[plan_pos][2]
                    plan_pos += 1
                var_entries[vi]["groups"].append({"start": s, "stop": e, "model": None,
                                                  "codec": None})
                continue
            # The key: a single-volume encode to its share of what is left.
            share = plan[plan_pos][2]
            available = budget - reserve() - used
            key_budget = int(available * share / nominal_left)
            if key_budget <= 0:
                raise NeurvolBudgetError(
                    f"a budget of {budget} bytes is too small for {n_steps} steps of "
                    f"{len(variables)} variable(s); use a smaller ratio")
            # A masked key is fitted on its valid voxels as a masked single volume; that
            # file's budget also holds its mask, which the series stores (and counts) once.
            key_mask = masked_input(var.masks[s], var.fill)
            file_budget = key_budget + (0 if key_mask is None else
                                        len(key_mask.section) + _MASK_ENTRY_BYTES)
            key_file = encode_single_or_predictor(
                var.steps[s], var.lo, var.hi, ratio=voxels * var.dtype.itemsize / file_budget,
                predictor=may_correct[vi][gi], candidates=candidates,
                arch_options=arch_options, seed=seed, dev=dev, steps=steps, bits=bits,
                spacing=spacing_t, origin=origin_t, fit_settings=fit_settings, codec=codec,
                auto_rate=rate_is_default(codec), quiet=True, masked=key_mask)
            if key_file.max_error is not None:
                # The pure predictor won the key: a correction group, cut where the
                # reader's chains end (the rest a group of its own, its key next).
                if e - s > max_correction:
                    var_groups[vi][gi:gi + 1] = [(s, s + max_correction),
                                                 (s + max_correction, e)]
                    may_correct[vi][gi:gi + 1] = [True, True]
                    e = s + max_correction
                key_stream = NvolReader(key_file.to_bytes()).read_section(SECTION_CORRECTION)
                payloads[(vi, s)] = key_stream
                used += len(key_stream)
                nominal_left -= share
                plan_pos += 1
                bounds = [float(key_file.max_error)]
                var_entries[vi]["groups"].append({"start": s, "stop": e, "model": None,
                                                  "codec": None, "max_error": bounds})
                var_entries[vi]["psnr"][s] = key_file.fit_psnr
                log.info("series: %s group %d: predictor key %d bytes, %.2f dB", var.name, gi,
                         len(key_stream), key_file.fit_psnr)
                key_values = np.asarray(var.steps[s])
                decoded = decode_correction(key_stream, shape, var.dtype)
                order = order_for(key_values, ORDER_TRIAL_BOUND * (var.hi - var.lo))
                for t in range(s + 1, e):
                    share = plan[plan_pos][2]
                    available = budget - reserve() - used
                    target = int(available * share / nominal_left)
                    values = np.asarray(var.steps[t])
                    stream, bound, decoded = correction_member(
                        values, decoded, target, bounds[-1], order, var.hi - var.lo)
                    payloads[(vi, t)] = stream
                    used += len(stream)
                    nominal_left -= share
                    plan_pos += 1
                    bounds.append(bound)
                    var_entries[vi]["psnr"][t] = psnr(values, decoded)
                    log.info("series: %s step %d: correction %d of %d bytes, max_error %g, "
                             "%.2f dB", var.name, t, len(stream), target, bound,
                             var_entries[vi]["psnr"][t])
                continue
            key_payload = NvolReader(key_file.to_bytes()).read_brick(0)
            payloads[(vi, s)] = key_payload
            used += len(key_payload)
            nominal_left -= share
            plan_pos += 1
            if key_file.header.get("model") is None:
                raise AssertionError("a non-constant range gives a model")
            model_entry = key_file.header["model"]
            codec_entry = key_file.header["codec"]
            var_entries[vi]["groups"].append({"start": s, "stop": e, "model": model_entry,
                                              "codec": codec_entry})
            var_entries[vi]["psnr"][s] = key_file.fit_psnr
            arch_np, config = config_of(model_entry)
            specs = tensor_specs(arch_np, config)
            prev = decode_payload(key_payload, specs)
            assert isinstance(prev, dict)
            member_header = dict(_member_header(shape, var, spacing_t, origin_t),
                                 model=model_entry, codec=dict(CODEC))
            tarch = get_architecture(arch_np.name)
            fit_base = fit_settings_for(tarch, fit_settings, steps)
            fit = dataclasses.replace(fit_base, steps=max(1, int(round(fit_base.steps * DELTA_FIT))),
                                      lr=fit_base.lr * DELTA_LR, warmup=0.0)
            log.info("series: %s group %d: key %d bytes, %.2f dB", var.name, gi,
                     len(key_payload), key_file.fit_psnr)
            for t in range(s + 1, e):
                share = plan[plan_pos][2]
                available = budget - reserve() - used
                target = int(available * share / nominal_left)
                payload, prev = _delta_member(
                    tarch, config, specs, prev, var.steps[t], var.lo, var.hi, fit,
                    seed + t, dev, target, var.masks[t])
                payloads[(vi, t)] = payload
                used += len(payload)
                nominal_left -= share
                plan_pos += 1
                value = psnr(var.steps[t], _as_volume(member_header, prev, specs).decode(),
                             None if var.masks[t] is None else ~var.masks[t])
                var_entries[vi]["psnr"][t] = value
                log.info("series: %s step %d: %d of %d bytes, %.2f dB", var.name, t,
                         len(payload), target, value)
    for e in var_entries:
        e["psnr"] = [None if p is None or not math.isfinite(p) else round(float(p), 3)
                     for p in e["psnr"]]
    header = build_series_header(shape, spacing_t, origin_t, n_steps, time_axis, var_entries,
                                 ratio, budget, attrs_d, time_attrs_d)
    if any("max_error" in g for e in var_entries for g in e["groups"]):
        header["series"]["version"] = CORRECTION_SERIES_VERSION
    bricks = [payloads[(vi, t)] for vi in range(len(variables)) for t in range(n_steps)]
    out = serialize_nvol(header, bricks, sections, minor=SERIES_MINOR)
    if len(out) > budget:
        raise NeurvolBudgetError(
            f"the series file is {len(out)} bytes but the budget is {budget}; use a smaller "
            "ratio")
    return out, time.perf_counter() - t_start


def _delta_member(tarch: Any, config: Any, specs: Sequence[Tuple[str, Tuple[int, ...]]],
                  prev: Dict[str, np.ndarray], volume: Any, lo: float, hi: float, fit: Any,
                  seed: int, dev: torch.device, target: int,
                  mask: Optional[np.ndarray] = None) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """The delta payload of one step (at most ``target`` bytes where any step allows it)
    and the weights a decoder gets from it. ``mask`` (True: masked): the fit sees the
    valid voxels only, as a masked single volume's does."""
    data = normalized_tensor(volume, lo, hi)
    valid = None
    if mask is not None:
        values = data.numpy()
        values[mask] = 0.0
        FILL_METHODS[DEFAULT_FILL](values, mask)
        valid = torch.from_numpy(~mask)
    model = tarch.seeded_build(config, seed)
    trained = set(model.grid_tensors) or {n for n, _ in specs}
    params = dict(model.named_parameters())
    pulled = [params[n] for n in sorted(trained) if n in params]
    reference = [torch.from_numpy(prev[n]).clone() for n in sorted(trained) if n in params]
    regularizer = _PullTowards(pulled, reference, DELTA_L1)
    fitting = Fitting(model, data, fit, seed=seed, device=dev, regularizer=regularizer,
                      valid=valid)
    with torch.no_grad():   # the predecessor's decoded weights, not the data-driven init
        model.load_state_dict({n: torch.from_numpy(prev[n]) for n, _ in specs})
    # Only the grids learn: placement (and anything an architecture trains in phases)
    # stays the key's.
    model.on_step = lambda step, total: None     # type: ignore[method-assign]
    for n, p in model.named_parameters():
        p.requires_grad_(n in trained)
    fitting.run()
    fitting.finish()
    new = {n: t.detach().cpu().numpy() for n, t in model.state_dict().items()}
    coded = [n for n, _ in specs if n in trained]

    keep_predecessor = encode_delta(prev, new, specs, {})
    # Each coder choice in turn, kept only if the reader accepts what it wrote: a file the
    # reader's bounds would refuse is never written.
    for coders in _DELTA_CODER_CHOICES:
        def code(step: float, coders: Any = coders) -> Tuple[bytes, Dict[str, np.ndarray]]:
            return encode_delta(prev, new, specs, {n: step for n in coded}, coders=coders)

        lo_s, hi_s = _STEP_RANGE
        best = code(hi_s)
        if len(best[0]) > target:     # even the coarsest step does not fit
            return keep_predecessor
        best = _search_step(code, best, target, lo_s, hi_s)
        try:
            decode_delta(best[0], prev, specs)
        except NeurvolFormatError as exc:
            log.info("series: a delta coded with %s fails the reader's bounds (%s)",
                     coders or "the default coders", exc)
            continue
        return best
    return keep_predecessor


def correction_member(values: np.ndarray, previous: np.ndarray, target: int, start: float,
                      order: int, data_range: float) -> Tuple[bytes, float, np.ndarray]:
    """``(stream, bound, decoded)``: one step of a correction group coded against the
    previous step's decoded values ``previous`` (spec/series.md §2.1), with the smallest
    error bound found whose stream fits ``target`` bytes (searched from ``start``, the
    previous step's bound: consecutive steps land near each other) and the axis order
    ``order``; each trial chooses its level-wise bins for the best PSNR per byte (on a
    chain of residuals they are worth several dB over one bin width: BENCHMARKS.md, "time
    series"). Where no bound fits, the largest searched (the smallest stream there is)."""
    base = np.asarray(previous, dtype=np.float64)
    integer = values.dtype.kind in "iu"
    streams: Dict[float, Tuple[bytes, float]] = {}

    def stream_at(e: float) -> Optional[bytes]:
        # Integers: ``e`` is the bins' half width, the bound the integer it guarantees.
        bound, half = integer_bound(e) if integer else (e, None)
        if e not in streams:
            try:
                streams[e] = (encode_correction(values, bound, base, levels=OBJECTIVE_QUALITY,
                                                bin_bound=half, order=order)[0], bound)
            except BoundTooSmallError:
                return None
        return streams[e][0]

    span = max(data_range, float(np.abs(values).max()), 1e-30)
    e = _fill_bound(stream_at, target, start, span * MIN_REL_BOUND, span * MAX_REL_BOUND)
    if stream_at(e) is None:
        raise AssertionError("a bound of the whole range always codes")
    stream, bound = streams[e]
    return stream, bound, decode_correction(stream, values.shape, values.dtype, base)


def _fill_bound(stream_at: Any, target: int, start: float, lo: float, hi: float) -> float:
    """The smallest bound in ``[lo, hi]`` found whose ``stream_at(bound)`` fits ``target``
    bytes (``hi`` where none does), in log(bound): from ``start``, steps that double in
    length until the target is bracketed (residual streams' sizes can fall ten times slower
    with the bound than a volume's), then regula falsi on log(size), halving where it
    stalls; stops within :data:`_FILL_TOLERANCE` below the target."""
    lo_t, hi_t = math.log(lo), math.log(hi)
    t = min(max(math.log(start), lo_t), hi_t) if start > 0 else hi_t
    fit: Optional[Tuple[float, float]] = None       # (log bound, log size) that fits
    over: Optional[Tuple[float, float]] = None      # ... and one below it that does not
    goal = math.log(target * (1.0 - _FILL_TOLERANCE / 2)) if target > 0 else -math.inf
    move = _FIRST_MOVE
    last_side: Optional[bool] = None
    for _ in range(_FILL_TRIALS):
        data = stream_at(math.exp(t))
        size = math.log(len(data)) if data is not None else math.inf
        fits = data is not None and len(data) <= target
        if fits:
            if fit is None or t < fit[0]:
                fit = (t, size)
            if len(data) >= target * (1.0 - _FILL_TOLERANCE):
                break
        elif over is None or t > over[0]:
            over = (t, size)
        if fit is not None and over is not None and over[0] < fit[0]:
            if fit[0] - over[0] < _SAME_BOUND:
                break
            (t1, s1), (t2, s2) = over, fit
            t = (t2 + (goal - s2) * (t1 - t2) / (s1 - s2)
                 if math.isfinite(s1) and s1 != s2 else 0.5 * (t1 + t2))
            # Stay inside the bracket's middle 80 %, and halve it where two trials in a
            # row moved the same end (regula falsi stalling on a curved size curve).
            width = t2 - t1
            t = min(max(t, t1 + 0.1 * width), t2 - 0.1 * width)
            if last_side is fits:
                t = 0.5 * (t1 + t2)
            last_side = fits
            continue
        if fit is None and t >= hi_t:
            break                         # even the largest bound is over the target
        t = min(max(t + (move if fit is None else -move), lo_t), hi_t)
        move *= 2.0
    return math.exp(fit[0]) if fit is not None else hi


def _search_step(code: Any, best: Tuple[bytes, Dict[str, np.ndarray]], target: int,
                 lo_s: float, hi_s: float) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """The finest quantization step whose delta fits ``target`` bytes (bisection)."""
    for _ in range(_STEP_SEARCH):
        mid = math.sqrt(lo_s * hi_s)
        try:
            trial = code(mid)
        except ValueError:        # a step too small for the values: finer is impossible
            lo_s = mid
            continue
        if len(trial[0]) <= target:
            hi_s, best = mid, trial
        else:
            lo_s = mid
    return best
