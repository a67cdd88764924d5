"""``NeuralSeries``: a time series of one or more variables in one ``.nvol`` file
(``spec/series.md``), read one member (variable x step) at a time.

Each member is evaluated by a :class:`~neurvol.neural_volume.NeuralVolume` of its own
(:class:`MemberVolume`), so a step behaves exactly as a single-volume file; only where its
weights come from differs: a key member's payload is a single-volume payload, a delta
member's payload is added to its predecessor's decoded weights. A member of a correction
group (:class:`CorrectionMember`) reads as an error-bounded file whose base is its
predecessor's decoded values (zero for the key). Decoding step ``k`` decodes the members
of its group from the key up to ``k`` and nothing else (a region or query: only the
blocks it touches, in each of them).
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from .._closing import ClosesOnExit
from ..compress import decode_payload
from ..compress.bound import KEY_BOUND, SECTION_CORRECTION, Corrections, resample_linear
from ..compress.delta import KIND_DELTA, decode_delta
from ..compress.payload import max_payload_bytes
from ..container import NvolReader, serialize_nvol, write_nvol
from ..container.format import REQUIRED_SECTIONS
from ..compress.mask import MASK_SECTION
from ..errors import NeurvolFormatError, NeurvolInputError, brief
from ..masking import MASK_KEY, MASK_MINOR
from ..model_limits import check_model_cost
from ..neural_volume import (NeuralVolume, config_of, existing_file, normalized_points,
                              tensor_specs)
from .layout import KEY_SERIES, SeriesLayout, Variable, parse_series

#: Most bytes of decoded member weights kept for later steps of a chain.
MAX_CHAIN_CACHE_BYTES = 128 << 20
#: Most member volumes (each holding its evaluated model) kept for reuse.
MAX_MEMBER_VOLUMES = 64
#: The longest a constant member's payload is (kind byte + float64).
_CONSTANT_PAYLOAD = 9
#: Codec entry of the per-member header of a constant group (no model).
_CONSTANT_CODEC = {"name": "neurvol", "version": 2}
#: Per tensor of a delta payload beyond 4 bytes a code: flag, step, stream head.
_DELTA_TENSOR_OVERHEAD = 16
#: Decoded correction blocks one member keeps for region reads and queries: every member
#: kept (:data:`MAX_MEMBER_VOLUMES`) together hold at most :data:`MAX_CHAIN_CACHE_BYTES`.
MEMBER_BLOCK_CACHE_BYTES = MAX_CHAIN_CACHE_BYTES // MAX_MEMBER_VOLUMES

Key = Tuple[int, int]      # (variable, step)


class MemberVolume(NeuralVolume):
    """One step of one variable, read as a single-model volume whose weights come from the
    series (:meth:`NeuralSeries.member_weights`)."""

    def __init__(self, series: "NeuralSeries", variable: int, step: int, header: Dict[str, Any],
                 backend: Optional[str], device: Any,
                 sections: Optional[Dict[str, bytes]] = None) -> None:
        super().__init__(NvolReader(serialize_nvol(header, [b""], sections,
                                                   minor=MASK_MINOR if sections else None)),
                         device=device, backend=backend)
        self._series, self._key = series, (variable, step)

    def _load_brick(self, b: int) -> Tuple[Any, int]:
        weights = self._series.member_weights(*self._key)
        if isinstance(weights, float):
            return weights, 0
        arch, config, specs = self._config_specs(self.header["model"])
        model = self._backend.load(arch.name, config, weights)
        return model, 4 * sum(math.prod(shape) for _, shape in specs)

    @property
    def stats(self) -> Dict[str, int]:
        """The series' counters (members decoded, bytes read)."""
        return self._series.stats


class CorrectionMember(MemberVolume):
    """A member of a correction group (spec/series.md §2.1): an error-bounded volume whose
    correction stream is the member's payload and whose base is the previous step's
    decoded values (zeros for the group's key), so every voxel is within the member's
    ``max_error`` of the original. Between voxel centres a query is the previous step's
    query there plus the trilinear interpolation of this member's corrections, as an
    error-bounded file's is its model's plus them (spec/correction.md §3)."""

    def __init__(self, series: "NeuralSeries", variable: int, step: int,
                 header: Dict[str, Any], backend: Optional[str], device: Any) -> None:
        super().__init__(series, variable, step, header, backend, device,
                         {SECTION_CORRECTION: b""})
        self._is_key = step == series.layout.group_of(variable, step).start

    def _load_brick(self, b: int) -> Tuple[Any, int]:
        # No brick: the base is the predecessor's values (every path that would evaluate
        # one, decodes, regions and queries, is overridden here).
        raise AssertionError("a correction member has no model to evaluate")

    def _previous(self) -> "CorrectionMember":
        variable, step = self._key
        prev = self._series.member_volume(variable, step - 1)
        assert isinstance(prev, CorrectionMember)
        return prev

    def _correction_stream(self) -> Corrections:
        if self._corrections is None:
            # Read outside this member's lock: the series' lock is taken first elsewhere
            # (a chain's decode holds it while it asks each member for its stream).
            data = self._series.member_stream(*self._key)
            with self._lock:
                if self._corrections is None:
                    self._corrections = Corrections(
                        data, self._shape, self._dtype, float(self._bound["max_error"]),
                        self._base_block, self._base_voxels,
                        cache_bytes=MEMBER_BLOCK_CACHE_BYTES)
        return self._corrections

    def _base_block(self, sl: Tuple[slice, ...]) -> np.ndarray:
        shape = [s.stop - s.start for s in sl]
        if self._is_key:
            return np.zeros(shape)
        idx = [np.arange(s.start, s.stop) for s in sl]
        return self._previous()._correction_stream().region(idx).astype(np.float64)

    def _base_voxels(self, zyx: np.ndarray) -> np.ndarray:
        if self._is_key:
            return np.zeros(len(zyx))
        return self._previous()._correction_stream().values_at(zyx)

    def _decode_bounded(self, target: Tuple[int, int, int]) -> np.ndarray:
        values = self._series.member_grid(*self._key)
        if target == self._shape:
            return values
        if self._is_key:
            return resample_linear(values, target)
        prev = self._previous()
        base = self._series.member_grid(*prev._key).astype(np.float64)
        return prev._decode_bounded(target) + resample_linear(values - base, target)

    def _query_model(self, p: np.ndarray, index: bool, scale: np.ndarray, clamp: bool,
                     out: np.ndarray) -> Tuple[int, Optional[List[float]]]:
        """The base at the points (then :meth:`query` adds the corrections): zeros for the
        key, else the previous step's query (in the caller's space, so its voxel centres
        are this one's)."""
        _, n_outside, first = normalized_points(p, index, scale)
        if n_outside and not clamp:
            return n_outside, first
        if self._is_key:
            out[:] = 0.0
        else:
            out[:] = self._previous().query(p, "index" if index else "normalized", clamp=True)
        return n_outside, first


class SeriesVariable:
    """One variable of a series: a ``[t, z, y, x]`` array you query and slice.

    ``sv.step(k)`` is step ``k`` as a :class:`NeuralVolume`; ``sv[k]`` decodes it,
    ``sv[k0:k1, z0:z1, ...]`` decodes a region of several steps; ``sv.query(points, t=k)``
    answers at step ``k`` (a fractional ``t`` interpolates linearly between the two
    neighbouring steps)."""

    def __init__(self, series: "NeuralSeries", index: int) -> None:
        self._series, self._index = series, index
        self._var: Variable = series.layout.variables[index]

    @property
    def name(self) -> str:
        """The variable's name."""
        return self._var.name

    @property
    def units(self) -> Optional[str]:
        """The variable's units (None when not given)."""
        return self._var.units

    @property
    def attrs(self) -> Dict[str, Any]:
        """The variable's attributes (JSON values), as given to encode."""
        return dict(self._var.attrs)

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """``(t, z, y, x)``."""
        return (self._series.layout.steps,) + self._series.layout.shape

    @property
    def fill_value(self) -> Optional[float]:
        """The value masked voxels decode to (NaN for NaN regions); None when no step has
        masked voxels (spec/series.md §3.1)."""
        if self._var.mask is None:
            return None
        return math.nan if self._var.mask.fill is None else self._var.mask.fill

    @property
    def ndim(self) -> int:
        """4: time, z, y, x."""
        return 4

    @property
    def dtype(self) -> np.dtype:
        """dtype of the original values (decoded arrays use it unless asked otherwise)."""
        return self._var.dtype

    @property
    def value_range(self) -> Tuple[float, float]:
        """(min, max) of the original values over all steps."""
        return (self._var.lo, self._var.hi)

    @property
    def fit_psnr(self) -> List[Optional[float]]:
        """PSNR in dB of each stored step against the original (header), per step."""
        return list(self._var.psnr)

    @property
    def time(self) -> Optional[Tuple[float, ...]]:
        """The time coordinate of each step (None: steps 0, 1, ...)."""
        return self._series.layout.time

    @property
    def stats(self) -> Dict[str, int]:
        """The file's random-access counters (see :attr:`NeuralSeries.stats`)."""
        return self._series.stats

    def step(self, k: int) -> NeuralVolume:
        """Step ``k`` as a single volume (decodes nothing until queried)."""
        return self._series.member_volume(self._index, self._step_index(k))

    def _step_index(self, k: Any) -> int:
        steps = self._series.layout.steps
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise NeurvolInputError(f"a step must be an int in [0, {steps - 1}], got {k!r}")
        k = int(k)
        if k < 0:
            k += steps
        if not 0 <= k < steps:
            raise NeurvolInputError(f"step {k} is out of range: the series has {steps} steps")
        return k

    def query(self, points: Any, t: Any = 0, space: str = "index", *,
              clamp: bool = False) -> np.ndarray:
        """Values at ``points`` (``(N, 3)`` z, y, x; as :meth:`NeuralVolume.query`) at step
        ``t``. A fractional ``t`` (e.g. 2.5) is linear in time between the steps either
        side: ``(1 - f) * q(floor(t)) + f * q(floor(t) + 1)``, ``f = t - floor(t)``; ``t``
        must lie in ``[0, steps - 1]``."""
        steps = self._series.layout.steps
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, float, np.integer,
                                                                np.floating)):
            raise NeurvolInputError(f"t must be a number in [0, {steps - 1}], got {t!r}")
        tf = float(t)
        if not (math.isfinite(tf) and 0.0 <= tf <= steps - 1):
            raise NeurvolInputError(
                f"t={t!r} is outside the series' steps [0, {steps - 1}]; the time axis is "
                "in steps (see .time for their coordinates)")
        k0 = int(math.floor(tf))
        f = tf - k0
        first = self.step(k0).query(points, space, clamp=clamp)
        if f == 0.0:
            return first
        second = self.step(k0 + 1).query(points, space, clamp=clamp)
        return ((1.0 - f) * first.astype(np.float64) + f * second).astype(np.float32)

    def decode(self, dtype: Any = None) -> np.ndarray:
        """All steps, ``(t, z, y, x)`` (dtype: default the original's; ``np.float32`` gives
        the raw reconstruction)."""
        return np.stack([self.step(k).decode(dtype=dtype) for k in range(self.shape[0])])

    def __getitem__(self, key: Any) -> np.ndarray:
        """``sv[k]``: step ``k`` decoded (z, y, x); ``sv[k0:k1, ...]``: the steps of a slice
        (or a list of steps), each indexed by the rest of the key as
        :meth:`NeuralVolume.__getitem__` does."""
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key[:1]):
            key = (slice(None),) + key
        tkey, rest = key[0], key[1:]
        if isinstance(tkey, (int, np.integer)) and not isinstance(tkey, (bool, np.bool_)):
            return self.step(int(tkey))[rest if rest else ...]
        steps = self._series.layout.steps
        if isinstance(tkey, slice):
            ks = list(range(steps))[tkey]
        else:
            try:
                arr = np.asarray(tkey)
            except Exception:  # noqa: BLE001
                arr = np.asarray([])
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise NeurvolInputError(
                    f"the time index must be an int, a slice or a 1-D list of ints, got {brief(tkey)}")
            ks = [self._step_index(int(k)) for k in arr]
        parts = [self.step(k)[rest if rest else ...] for k in ks]
        if not parts:
            one = self.step(0)[rest if rest else ...]
            return np.empty((0,) + one.shape, dtype=one.dtype)
        return np.stack(parts)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        out = self.decode()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return (f"<SeriesVariable {self.name!r} shape={self.shape} dtype={self.dtype.name} "
                f"units={self.units!r}>")


class NeuralSeries(ClosesOnExit):
    """A compressed time series (``[t, z, y, x]``) of one or more variables.

    Made by :func:`neurvol.encode` from a 4-D array, a list of 3-D volumes or a dict of
    them, or by :func:`neurvol.open` on such a file. With one variable it behaves as
    that variable (:class:`SeriesVariable`: ``query(points, t=k)``, ``nv[k]``,
    ``decode()``); ``nv["name"]`` is the variable of that name.
    """

    def __init__(self, reader: NvolReader, *, device: Any = None,
                 backend: Optional[str] = None) -> None:
        if not isinstance(reader, NvolReader):
            raise NeurvolInputError(
                f"NeuralSeries needs an NvolReader, got {type(reader).__name__}; use "
                "neurvol.open(path)")
        self._reader = reader
        self.header: Dict[str, Any] = reader.header
        self.layout: SeriesLayout = parse_series(self.header, reader.grid, reader.section_names)
        self._device, self._backend = device, backend
        self._lock = threading.RLock()
        self._weights: "OrderedDict[Key, Tuple[Any, int]]" = OrderedDict()
        self._cache_bytes = 0
        self._members: "OrderedDict[Key, MemberVolume]" = OrderedDict()
        self._specs: Dict[str, Any] = {}
        self._decoded = 0
        self.encode_seconds: Optional[float] = None    # set by encode(); not in the file
        # Validate every group's model config now (cheap, bounded): a hostile config is
        # refused at open, not at the first query.
        for v in self.layout.variables:
            for g in v.groups:
                if g.model is not None:
                    self._group_specs(g.model)
                if g.corrected and v.lo == v.hi:
                    raise NeurvolFormatError(
                        f"variable {v.name!r} is constant but has a correction group; the "
                        "file is corrupted")

    # ------------------------------------------------------------------ properties
    @property
    def variables(self) -> List[str]:
        """Variable names, in file order."""
        return [v.name for v in self.layout.variables]

    @property
    def steps(self) -> int:
        """Number of time steps."""
        return self.layout.steps

    @property
    def time(self) -> Optional[Tuple[float, ...]]:
        """The time coordinate of each step (None: steps 0, 1, ...)."""
        return self.layout.time

    @property
    def attrs(self) -> Dict[str, Any]:
        """The series' global attributes (JSON values), as given to encode."""
        return dict(self.layout.attrs)

    @property
    def time_attrs(self) -> Dict[str, Any]:
        """The time coordinate's attributes (e.g. its units), as given to encode."""
        return dict(self.layout.time_attrs)

    @property
    def shape(self) -> Tuple[int, int, int, int]:
        """``(t, z, y, x)`` of every variable."""
        return (self.layout.steps,) + self.layout.shape

    @property
    def ndim(self) -> int:
        """4: time, z, y, x."""
        return 4

    @property
    def dtype(self) -> np.dtype:
        """dtype of the only variable (several variables: ask one, ``nv[name].dtype``)."""
        return self._only().dtype

    @property
    def nbytes_file(self) -> int:
        """Size of the ``.nvol`` file in bytes, header included."""
        return self._reader.file_size

    @property
    def original_bytes(self) -> int:
        """Bytes of the original arrays, all variables and steps, in their dtypes."""
        n = self.layout.steps * math.prod(self.layout.shape)
        return sum(n * v.dtype.itemsize for v in self.layout.variables)

    @property
    def ratio(self) -> float:
        """Achieved compression ratio: original bytes / file bytes."""
        return self.original_bytes / self.nbytes_file

    @property
    def stats(self) -> Dict[str, int]:
        """Random-access counters: ``members_decoded`` (member payloads decoded into
        weights), ``bricks_read`` and ``bytes_read`` (member payloads read from the file)."""
        return {"members_decoded": self._decoded, "bricks_read": self._reader.bricks_read,
                "bytes_read": self._reader.bytes_read}

    def info(self) -> Dict[str, Any]:
        """A JSON-able summary (``neurvol info``)."""
        lay = self.layout
        return {
            "format_version": ".".join(map(str, self._reader.version)),
            "attrs": dict(lay.attrs),
            "series": {"steps": lay.steps, "time": None if lay.time is None else list(lay.time),
                       "shape": list(lay.shape), "spacing": lay.spacing, "origin": lay.origin},
            "variables": [{"name": v.name, "dtype": v.dtype.name, "value_range": [v.lo, v.hi],
                           "units": v.units, "attrs": v.attrs,
                           "masked_steps": 0 if v.mask is None else sum(
                               m is not None for m in v.mask.steps),
                           "groups": [[g.start, g.stop] for g in v.groups],
                           "model": v.groups[0].model, "psnr": list(v.psnr)}
                          for v in lay.variables],
            "file_bytes": self.nbytes_file,
            "original_bytes": self.original_bytes,
            "ratio": round(self.ratio, 3),
            "budget": self.header.get("budget"),
        }

    def __repr__(self) -> str:
        return (f"<NeuralSeries shape={self.shape} variables={self.variables} "
                f"ratio={self.ratio:.1f}>")

    # ------------------------------------------------------------------ variables
    def variable(self, name: str) -> SeriesVariable:
        """The variable called ``name``."""
        for i, v in enumerate(self.layout.variables):
            if v.name == name:
                return SeriesVariable(self, i)
        raise NeurvolInputError(f"no variable {name!r} in this file; it has {self.variables}")

    def _only(self) -> SeriesVariable:
        if len(self.layout.variables) != 1:
            raise NeurvolInputError(
                f"this file holds {len(self.layout.variables)} variables {self.variables}; "
                "pick one first, e.g. nv['" + self.variables[0] + "']")
        return SeriesVariable(self, 0)

    def __getitem__(self, key: Any) -> Any:
        """``nv["name"]``: a variable; otherwise indexes the only variable
        (:meth:`SeriesVariable.__getitem__`)."""
        if isinstance(key, str):
            return self.variable(key)
        return self._only()[key]

    def query(self, points: Any, t: Any = 0, space: str = "index", *,
              clamp: bool = False) -> np.ndarray:
        """:meth:`SeriesVariable.query` of the only variable."""
        return self._only().query(points, t, space, clamp=clamp)

    def decode(self, dtype: Any = None) -> np.ndarray:
        """:meth:`SeriesVariable.decode` of the only variable: ``(t, z, y, x)``."""
        return self._only().decode(dtype)

    def step(self, k: int) -> NeuralVolume:
        """Step ``k`` of the only variable as a single volume."""
        return self._only().step(k)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        return self._only().__array__(dtype, copy)

    # ------------------------------------------------------------------ members
    def _group_specs(self, model: Dict[str, Any]) -> Any:
        key = repr(sorted(model.items()))
        hit = self._specs.get(key)
        if hit is None:
            arch, config = config_of(model)
            hit = self._specs[key] = (arch, config, tensor_specs(arch, config))
        return hit

    def member_volume(self, variable: int, step: int) -> MemberVolume:
        """The :class:`MemberVolume` of one variable at one step (kept for reuse)."""
        with self._lock:
            hit = self._members.get((variable, step))
            if hit is None:
                lay, var = self.layout, self.layout.variables[variable]
                group = lay.group_of(variable, step)
                header: Dict[str, Any] = {
                    "volume": {"shape": list(lay.shape), "dtype": var.dtype.str, "min": var.lo,
                               "max": var.hi, "spacing": lay.spacing, "origin": lay.origin},
                    "bricks": {"grid": [1, 1, 1]},
                    "codec": group.codec if group.codec is not None else _CONSTANT_CODEC,
                }
                if header["volume"]["spacing"] is None:
                    del header["volume"]["spacing"]
                if header["volume"]["origin"] is None:
                    del header["volume"]["origin"]
                if group.corrected:
                    assert group.max_error is not None
                    header[KEY_BOUND] = {"max_error": group.max_error[step - group.start],
                                         "rel_error": None, "section": SECTION_CORRECTION}
                    hit = CorrectionMember(self, variable, step, header, self._backend,
                                           self._device)
                    self._keep_member((variable, step), hit)
                    return hit
                if group.model is not None:
                    header["model"] = group.model
                sections = None
                member_mask = None if var.mask is None else var.mask.steps[step]
                if member_mask is not None:
                    # The member reads as a masked single volume (spec/mask.md): its mask
                    # section is read now, and only this member's.
                    header[MASK_KEY] = {"fill": var.mask.fill, "masked": member_mask.masked,
                                        "section": MASK_SECTION}
                    sections = {MASK_SECTION: self._reader.read_section(member_mask.section)}
                hit = MemberVolume(self, variable, step, header, self._backend, self._device,
                                   sections)
                self._keep_member((variable, step), hit)
            else:
                self._members.move_to_end((variable, step))
            return hit

    def _keep_member(self, key: Key, member: MemberVolume) -> None:
        self._members[key] = member
        while len(self._members) > MAX_MEMBER_VOLUMES:
            self._members.popitem(last=False)

    def member_stream(self, variable: int, step: int) -> bytes:
        """The correction stream of a member of a correction group (its payload, read now:
        the decode counters count it)."""
        with self._lock:
            payload = self._reader.read_brick(self.layout.member(variable, step))
            self._decoded += 1
            return payload

    def member_grid(self, variable: int, step: int) -> np.ndarray:
        """The decoded voxels (the variable's dtype) of a member of a correction group:
        its group's chain decoded from the nearest decoded predecessor (at worst the key),
        each member against the one before (spec/series.md §2.1). Kept for later steps
        where they fit :data:`MAX_CHAIN_CACHE_BYTES`; treat as read-only."""
        with self._lock:
            group = self.layout.group_of(variable, step)
            start = step
            while start > group.start and (variable, start) not in self._weights:
                start -= 1
            hit = self._weights.get((variable, start))
            values = None if hit is None else hit[0]
            first = start if values is None else start + 1
            for k in range(first, step + 1):
                member = self.member_volume(variable, k)
                assert isinstance(member, CorrectionMember)
                values = member._correction_stream().decode(
                    None if k == group.start else values)
                self._remember((variable, k), values)
            if (variable, step) in self._weights:
                self._weights.move_to_end((variable, step))
            assert values is not None
            return values

    def member_weights(self, variable: int, step: int) -> Union[float, Dict[str, np.ndarray]]:
        """The decoded weights (or constant) of one member of a model or constant group:
        its group's chain is decoded from the nearest decoded predecessor (at worst the
        key) up to ``step``."""
        with self._lock:
            group = self.layout.group_of(variable, step)
            if group.corrected:
                raise AssertionError("a correction group's members have no weights")
            start = step
            while start > group.start and (variable, start) not in self._weights:
                start -= 1
            prev = None if (variable, start) not in self._weights else \
                self._weights[(variable, start)][0]
            first = start if prev is None else start + 1
            for k in range(first, step + 1):
                prev = self._decode_member(variable, k, group, prev)
                self._remember((variable, k), prev)
            self._weights.move_to_end((variable, step))
            return self._weights[(variable, step)][0]

    def _decode_member(self, variable: int, step: int, group: Any, prev: Any) -> Any:
        brick = self.layout.member(variable, step)
        length = self._reader.brick_length(brick)
        var = self.layout.variables[variable]
        if group.model is None:       # a constant group: every member is a constant
            if length != _CONSTANT_PAYLOAD:
                raise NeurvolFormatError(
                    f"member {brick} of a constant group is {length} bytes, not a constant "
                    "payload; the file is corrupted")
            value = decode_payload(self._reader.read_brick(brick), [])
            self._decoded += 1
            if not isinstance(value, float) or not var.lo <= value <= var.hi:
                raise NeurvolFormatError(
                    f"constant member {brick} holds {brief(value)}, outside the variable's "
                    f"range [{var.lo!r}, {var.hi!r}]; the file is corrupted")
            return value
        arch, config, specs = self._group_specs(group.model)
        if step == group.start:
            limit = max_payload_bytes(specs)
        else:
            limit = 1 + sum(4 * math.prod(s) + _DELTA_TENSOR_OVERHEAD for _, s in specs)
        if length > limit:
            raise NeurvolFormatError(
                f"member {brick} is {length:,} bytes, longer than any valid payload for its "
                f"model ({limit:,} bytes); the file is corrupted or hostile")
        # The model's cost is judged against its key's payload, as for a single-model
        # file: a delta that changes little is short but evaluates the same model.
        check_model_cost(arch.name, specs,
                         self._reader.brick_length(self.layout.member(variable, group.start)))
        payload = self._reader.read_brick(brick)
        if step == group.start:
            if payload[:1] == bytes([KIND_DELTA]):
                raise NeurvolFormatError(
                    f"member {brick} is the key of its group but holds a delta payload; "
                    "the file is corrupted")
            weights = decode_payload(payload, specs)
            if not isinstance(weights, dict):
                raise NeurvolFormatError(
                    f"member {brick} is a constant but its group has a model; the file is "
                    "corrupted")
        else:
            if not isinstance(prev, dict):
                raise AssertionError("a delta's predecessor is decoded first")
            weights = decode_delta(payload, prev, specs)
        self._decoded += 1
        return weights

    def _remember(self, key: Key, weights: Any) -> None:
        if isinstance(weights, np.ndarray):      # a correction member's decoded voxels
            nbytes = weights.nbytes
            if nbytes > MAX_CHAIN_CACHE_BYTES:
                return       # decoded again when asked: a volume that large is not kept
        else:
            nbytes = 0 if isinstance(weights, float) else sum(a.nbytes for a in weights.values())
        old = self._weights.pop(key, None)
        if old is not None:
            self._cache_bytes -= old[1]
        self._weights[key] = (weights, nbytes)
        self._cache_bytes += nbytes
        while len(self._weights) > 1 and self._cache_bytes > MAX_CHAIN_CACHE_BYTES:
            self._cache_bytes -= self._weights.popitem(last=False)[1][1]

    # ------------------------------------------------------------------ files
    def _bricks(self) -> List[bytes]:
        return [self._reader.read_brick(b) for b in range(self._reader.brick_count)]

    def _extra_sections(self) -> Dict[str, bytes]:
        """The sections after the bricks (the members' masks), by name."""
        return {name: self._reader.read_section(name) for name in self._reader.section_names
                if name not in REQUIRED_SECTIONS}

    def to_bytes(self) -> bytes:
        """The ``.nvol`` file's bytes."""
        header = {k: v for k, v in self.header.items() if k != "sections"}
        return serialize_nvol(header, self._bricks(), self._extra_sections(),
                              minor=self._reader.version[1])

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the ``.nvol`` file atomically."""
        header = {k: v for k, v in self.header.items() if k != "sections"}
        write_nvol(path, header, self._bricks(), self._extra_sections(),
                   minor=self._reader.version[1])

    def close(self) -> None:
        """Release the file handle."""
        self._reader.close()
        with self._lock:
            self._weights.clear()
            self._cache_bytes = 0



def is_series_header(header: Dict[str, Any]) -> bool:
    """Whether a file's header is a time series (has the ``series`` key)."""
    return KEY_SERIES in header


def open_any(path: Union[str, os.PathLike], *, device: Any = None,
             backend: Optional[str] = None) -> Union[NeuralVolume, NeuralSeries]:
    """Open any ``.nvol`` file lazily (header and index only): a :class:`NeuralSeries` for
    a time-series file, else a :class:`NeuralVolume`."""
    reader = NvolReader(existing_file(path))
    try:
        if is_series_header(reader.header):
            return NeuralSeries(reader, device=device, backend=backend)
        return NeuralVolume(reader, device=device, backend=backend)
    except BaseException:
        reader.close()
        raise
