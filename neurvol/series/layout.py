"""The ``series`` header object of a time-series file (``spec/series.md`` §3), validated.

Every value is checked with its JSON type and bounds before it is used, so a hostile
header is refused with a :class:`NeurvolFormatError` before anything is allocated.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..container.format import REQUIRED_SECTIONS
from ..errors import NeurvolFormatError, brief
from ..volume_checks import FLOAT32_MAX, MAX_AXIS, MAX_VOXELS

#: Header key of a time-series file.
KEY_SERIES = "series"
#: The version of the ``series`` object of files without correction groups (readers of
#: version 1 read them).
SERIES_VERSION = 1
#: The version of files with correction groups (spec/series.md §2.1); readers of version 1
#: refuse them at the header instead of misreading them.
CORRECTION_SERIES_VERSION = 2
#: The versions this reader knows.
SERIES_VERSIONS = (SERIES_VERSION, CORRECTION_SERIES_VERSION)
#: Most time steps a file may declare.
MAX_STEPS = 1 << 16
#: Most variables a file may declare.
MAX_VARIABLES = 256
#: Longest chain of a group: decoding one step decodes at most this many members.
MAX_GROUP_STEPS = 256
#: Longest chain of a correction group (spec/series.md §2.1): a region read or query of a
#: step goes through every member before it, one nested call each.
MAX_CORRECTION_STEPS = 64
#: Longest variable name and units string.
MAX_NAME = 256
#: Longest name of a member's mask section (spec/series.md §3.1).
MAX_MASK_SECTION_NAME = 64
#: Sections a series' masks may not name: the container's own.
_RESERVED_SECTIONS = REQUIRED_SECTIONS


@dataclasses.dataclass(frozen=True)
class MemberMask:
    """A masked member's mask: the number of masked voxels and the section holding it
    (``spec/mask.md`` §2); members with equal masks may share a section."""

    masked: int
    section: str


@dataclasses.dataclass(frozen=True)
class VariableMask:
    """A variable's ``mask`` entry: its fill (None: NaN) and each step's mask (None: a step
    without masked voxels)."""

    fill: Optional[float]
    steps: Tuple[Optional[MemberMask], ...]


@dataclasses.dataclass(frozen=True)
class Group:
    """Steps ``[start, stop)`` of one variable: a key member, then members coded against
    their predecessors (weight deltas of a model group, corrections of a correction group)."""

    start: int
    stop: int
    model: Optional[Dict[str, Any]]      # None: a constant or a correction group
    codec: Optional[Dict[str, Any]]
    #: A correction group's bound per step (spec/series.md §2.1); None for other groups.
    max_error: Optional[Tuple[float, ...]] = None

    @property
    def corrected(self) -> bool:
        """Whether the group's members are correction streams (no model)."""
        return self.max_error is not None


@dataclasses.dataclass(frozen=True)
class Variable:
    """One variable of a series: its value range, dtype, metadata and groups."""

    name: str
    dtype: np.dtype
    lo: float
    hi: float
    units: Optional[str]
    attrs: Dict[str, Any]
    groups: Tuple[Group, ...]
    psnr: Tuple[Optional[float], ...]
    mask: Optional[VariableMask] = None


@dataclasses.dataclass(frozen=True)
class SeriesLayout:
    """The validated ``series`` object."""

    shape: Tuple[int, int, int]
    spacing: Optional[List[float]]
    origin: Optional[List[float]]
    steps: int
    time: Optional[Tuple[float, ...]]
    variables: Tuple[Variable, ...]
    attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    time_attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def member(self, variable: int, step: int) -> int:
        """The brick id of a member: variable-major, then step."""
        return variable * self.steps + step

    def group_of(self, variable: int, step: int) -> Group:
        """The group holding ``step`` of ``variable``."""
        for g in self.variables[variable].groups:
            if g.start <= step < g.stop:
                return g
        raise AssertionError("groups partition the steps")   # checked at parse


def _fail(what: str, value: Any, expected: str) -> NeurvolFormatError:
    return NeurvolFormatError(
        f"header 'series.{what}' must be {expected}, got {brief(value)}; the file is "
        "corrupted or was not written by neurvol")


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _fail(what, v, f"an integer in [{lo}, {hi}]")
    return v


def _number(v: Any, what: str) -> float:
    if type(v) not in (int, float):
        raise _fail(what, v, "a number")
    try:
        x = float(v)
    except OverflowError:
        raise _fail(what, v, "a finite number") from None
    if not math.isfinite(x):
        raise _fail(what, v, "a finite number")
    return x


def _triple(v: Any, what: str, positive: bool) -> Optional[List[float]]:
    if v is None:
        return None
    if not (isinstance(v, list) and len(v) == 3):
        raise _fail(what, v, "3 numbers (z, y, x) or null")
    out = [_number(x, what) for x in v]
    if positive and min(out) <= 0:
        raise _fail(what, v, "3 numbers > 0")
    return out


def _dtype(v: Any, what: str) -> np.dtype:
    if not isinstance(v, str) or len(v) > 32:
        raise _fail(what, v, "a numpy dtype string")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            dt = np.dtype(v)
    except Exception:  # noqa: BLE001 - numpy raises several types for junk
        raise _fail(what, v, "a numpy dtype string") from None
    if dt.kind not in "iuf" or dt.fields is not None or dt.subdtype is not None:
        raise _fail(what, v, "an integer or float dtype")
    return dt


def _groups(v: Any, what: str, steps: int, version: int) -> Tuple[Group, ...]:
    if not isinstance(v, list) or not 1 <= len(v) <= steps:
        raise _fail(what, v, f"a list of 1 to {steps} groups")
    out: List[Group] = []
    expected = 0
    for i, g in enumerate(v):
        w = f"{what}[{i}]"
        if not isinstance(g, dict):
            raise _fail(w, g, "an object")
        start = _int(g.get("start"), f"{w}.start", 0, steps - 1)
        stop = _int(g.get("stop"), f"{w}.stop", 1, steps)
        if start != expected or not start < stop <= start + MAX_GROUP_STEPS:
            raise NeurvolFormatError(
                f"header 'series.{w}' covers steps [{start}, {stop}) but groups must cover "
                f"the steps back to back from {expected}, each at most {MAX_GROUP_STEPS} "
                "long; the file is corrupted")
        expected = stop
        model, codec = g.get("model"), g.get("codec")
        if (model is None) != (codec is None) or not (
                model is None or isinstance(model, dict) and isinstance(codec, dict)):
            raise _fail(w, g, "an object with 'model' and 'codec' objects (or both null)")
        bounds = g.get("max_error")
        if bounds is not None:
            if version < CORRECTION_SERIES_VERSION:
                raise NeurvolFormatError(
                    f"header 'series.{w}' is a correction group, which 'series.version' "
                    f"{version} does not have; the file is corrupted")
            if model is not None:
                raise _fail(w, g, "a correction group (with 'max_error') whose 'model' and "
                            "'codec' are null")
            if not (isinstance(bounds, list) and len(bounds) == stop - start):
                raise _fail(f"{w}.max_error", bounds, f"a list of {stop - start} numbers")
            if stop - start > MAX_CORRECTION_STEPS:
                raise NeurvolFormatError(
                    f"header 'series.{w}' is a correction group of {stop - start} steps; "
                    f"they are at most {MAX_CORRECTION_STEPS} long; the file is corrupted")
            bounds = tuple(_number(e, f"{w}.max_error") for e in bounds)
            if min(bounds) < 0:
                raise _fail(f"{w}.max_error", list(bounds), "numbers >= 0")
        out.append(Group(start, stop, model, codec, bounds))
    if expected != steps:
        raise NeurvolFormatError(
            f"header 'series.{what}' covers steps up to {expected}, not all {steps}; the "
            "file is corrupted")
    return tuple(out)


def _mask(v: Any, what: str, steps: int, voxels: int, dtype: np.dtype
          ) -> Optional[VariableMask]:
    """A variable's ``mask`` entry (spec/series.md §3.1), or None without one."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _fail(what, v, "an object with 'fill' and 'steps', or absent")
    fill = v.get("fill")
    if fill is None:
        if dtype.kind != "f":
            raise _fail(f"{what}.fill", fill, f"a number: {dtype} has no NaN")
    else:
        fill = _number(fill, f"{what}.fill")
    entries = v.get("steps")
    if not (isinstance(entries, list) and len(entries) == steps):
        raise _fail(f"{what}.steps", entries, f"a list of {steps} objects or nulls")
    out: List[Optional[MemberMask]] = []
    counts: Dict[str, int] = {}
    for t, e in enumerate(entries):
        if e is None:
            out.append(None)
            continue
        w = f"{what}.steps[{t}]"
        if not isinstance(e, dict):
            raise _fail(w, e, "an object with 'masked' and 'section', or null")
        masked = _int(e.get("masked"), f"{w}.masked", 1, voxels - 1)
        section = e.get("section")
        if not (isinstance(section, str) and 1 <= len(section) <= MAX_MASK_SECTION_NAME) \
                or section in _RESERVED_SECTIONS:
            raise _fail(f"{w}.section", section,
                        f"the name of an extra section (1 to {MAX_MASK_SECTION_NAME} characters)")
        if counts.setdefault(section, masked) != masked:
            raise NeurvolFormatError(
                f"header 'series.{w}' names section {section!r} with {masked} masked voxels, "
                f"an earlier step the same section with {counts[section]}; the file is "
                "corrupted")
        out.append(MemberMask(masked, section))
    if all(m is None for m in out):
        raise _fail(f"{what}.steps", entries, "a list with at least one masked step")
    return VariableMask(None if fill is None else float(fill), tuple(out))


def _attrs(v: Any, what: str) -> Dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _fail(what, v, "an object")
    return v


def _variable(v: Any, i: int, steps: int, voxels: int, version: int) -> Variable:
    what = f"variables[{i}]"
    if not isinstance(v, dict):
        raise _fail(what, v, "an object")
    name = v.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME:
        raise _fail(f"{what}.name", name, f"a string of 1 to {MAX_NAME} characters")
    dt = _dtype(v.get("dtype"), f"{what}.dtype")
    lo, hi = _number(v.get("min"), f"{what}.min"), _number(v.get("max"), f"{what}.max")
    if not (lo <= hi and max(abs(lo), abs(hi), hi - lo) <= FLOAT32_MAX):
        raise NeurvolFormatError(
            f"header 'series.{what}' value range [{lo!r}, {hi!r}] is invalid: min <= max, "
            "all finite in float32")
    units = v.get("units")
    if units is not None and not (isinstance(units, str) and len(units) <= MAX_NAME):
        raise _fail(f"{what}.units", units, f"a string of at most {MAX_NAME} characters or null")
    attrs = v.get("attrs", {})
    if not isinstance(attrs, dict):
        raise _fail(f"{what}.attrs", attrs, "an object")
    psnr = v.get("psnr")
    if not (isinstance(psnr, list) and len(psnr) == steps):
        raise _fail(f"{what}.psnr", psnr, f"a list of {steps} numbers or nulls")
    for p in psnr:
        if p is not None:
            _number(p, f"{what}.psnr")
    groups = _groups(v.get("groups"), f"{what}.groups", steps, version)
    mask = _mask(v.get("mask"), f"{what}.mask", steps, voxels, dt)
    for g in groups:
        if g.corrected and mask is not None and any(
                mask.steps[t] is not None for t in range(g.start, g.stop)):
            raise NeurvolFormatError(
                f"header 'series.{what}' has masked steps in the correction group "
                f"[{g.start}, {g.stop}) (spec/series.md §2.1: correction groups are not "
                "masked); the file is corrupted")
    return Variable(name, dt, lo, hi, units, attrs, groups,
                    tuple(None if p is None else float(p) for p in psnr), mask)


def parse_series(header: Dict[str, Any], grid: Tuple[int, int, int],
                 section_names: Sequence[str] = ()) -> SeriesLayout:
    """Validate the header's ``series`` object against the brick grid ``[1, 1, M]``
    (``M`` = variables x steps) and the file's sections (those masks name)."""
    s = header.get(KEY_SERIES)
    if not isinstance(s, dict):
        raise NeurvolFormatError("header has no 'series' object; this is not a time-series file")
    if "volume" in header:
        raise NeurvolFormatError(
            "header has both 'series' and 'volume' (spec/series.md §1: a series file has no "
            "'volume'); the file is corrupted")
    version = s.get("version")
    if type(version) is not int or version not in SERIES_VERSIONS:
        raise NeurvolFormatError(
            f"header 'series.version' is {brief(version)}; this neurvol reads versions "
            f"{list(SERIES_VERSIONS)}; upgrade neurvol (pip install -U neurvol)")
    shape = s.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(n) is int for n in shape)
            and min(shape) >= 2 and max(shape) <= MAX_AXIS and math.prod(shape) <= MAX_VOXELS):
        raise _fail("shape", shape, f"3 integers in [2, {MAX_AXIS}] (at most {MAX_VOXELS} voxels)")
    steps = _int(s.get("steps"), "steps", 1, MAX_STEPS)
    time = s.get("time")
    if time is not None:
        if not (isinstance(time, list) and len(time) == steps):
            raise _fail("time", time, f"a list of {steps} increasing numbers or null")
        time = tuple(_number(x, "time") for x in time)
        if any(b <= a for a, b in zip(time, time[1:])):
            raise _fail("time", list(time), "strictly increasing")
    variables = s.get("variables")
    if not (isinstance(variables, list) and 1 <= len(variables) <= MAX_VARIABLES):
        raise _fail("variables", variables, f"a list of 1 to {MAX_VARIABLES} variables")
    parsed = tuple(_variable(v, i, steps, math.prod(shape), version)
                   for i, v in enumerate(variables))
    for v in parsed:
        for m in (v.mask.steps if v.mask is not None else ()):
            if m is not None and m.section not in section_names:
                raise NeurvolFormatError(
                    f"variable {v.name!r} names mask section {m.section!r}, which the file "
                    "does not have; the file is corrupted")
    names = [v.name for v in parsed]
    if len(set(names)) != len(names):
        raise NeurvolFormatError(f"header 'series.variables' names a variable twice: {brief(names)}")
    if tuple(grid) != (1, 1, len(parsed) * steps):
        raise NeurvolFormatError(
            f"a time-series file's brick grid must be [1, 1, {len(parsed) * steps}] (one "
            f"member per variable and step), got {list(grid)}; the file is corrupted")
    return SeriesLayout((shape[0], shape[1], shape[2]),
                        _triple(s.get("spacing"), "spacing", True),
                        _triple(s.get("origin"), "origin", False), steps, time, parsed,
                        _attrs(s.get("attrs"), "attrs"), _attrs(s.get("time_attrs"), "time_attrs"))
