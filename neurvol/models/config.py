"""The torch-free half of the model contract: config dataclasses and their checks.

A config is everything needed to rebuild a model (it is stored in the ``.nvol`` header as
JSON). Reading a file needs the configs, their tensor lists and the numpy evaluation
(:mod:`neurvol.models.numpy_eval`), never torch; the torch modules (:mod:`.base` and the
architecture modules) import their configs from here and from ``numpy_eval``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, Generic, List, Mapping, Tuple, TypeVar

from ..errors import NeurvolFormatError, NeurvolInputError

#: Most parameters (weights + persistent buffers) a model read from a file may have:
#: 2^28 = 268,435,456 values (1 GiB as float32). Checked before anything is allocated, so
#: a corrupted or hostile config (e.g. a 4096^3 x 4096 feature grid) cannot exhaust memory.
MAX_MODEL_PARAMS = 2 ** 28

#: ``(name, shape)`` of one stored tensor, in payload order.
TensorSpec = Tuple[str, Tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base class of architecture configs: JSON-able, frozen, rebuilt with ``from_dict``."""

    arch: ClassVar[str] = ""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        if not isinstance(d, Mapping):
            raise NeurvolFormatError(
                f"model config for {cls.arch!r} must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(d)
        if missing:
            raise NeurvolFormatError(
                f"model config for {cls.arch!r} lacks {sorted(missing)}; the file is damaged or "
                "was written by an incompatible neurvol"
            )
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        _reject_bools(cls, kwargs)
        try:
            cfg = cls(**kwargs)
            cfg.validate()
        except (TypeError, ValueError, OverflowError) as exc:
            raise NeurvolFormatError(
                f"invalid {cls.arch} model config {_short(dict(d))}: {exc}") from exc
        check_param_cap(cfg)
        return cfg

    def validate(self) -> None:
        """Raise ValueError if the dimensions are not sane (checked when read from a file)."""

    def tensor_specs(self) -> List[TensorSpec]:
        """``[(name, shape)]`` of the stored tensors in payload order (the spec's tensor
        list): pure arithmetic on the config, nothing is allocated."""
        raise NotImplementedError(f"{type(self).__name__} does not list its tensors")


def _reject_bools(cls: type, kwargs: Mapping[str, Any]) -> None:
    """JSON true/false where a field is not a bool (``isinstance(True, int)`` would let
    them through ``validate`` as 1/0, and torch then fails on them)."""
    for f in dataclasses.fields(cls):
        if f.name not in kwargs or isinstance(f.default, bool):
            continue
        v = kwargs[f.name]
        if isinstance(v, bool) or (isinstance(v, tuple) and any(isinstance(x, bool) for x in v)):
            raise NeurvolFormatError(
                f"invalid {cls.arch} model config: {f.name} is {v!r}, not a number")


def check_param_cap(cfg: "ModelConfig") -> None:
    """Raise NeurvolFormatError if ``cfg.param_count()`` (when defined) exceeds
    :data:`MAX_MODEL_PARAMS`. Pure arithmetic on the config: nothing is allocated."""
    count = getattr(cfg, "param_count", None)
    if not callable(count):
        return
    try:
        n = int(count())
    except (TypeError, ValueError, OverflowError) as exc:
        raise NeurvolFormatError(f"invalid {cfg.arch} model config: {exc}") from exc
    if n > MAX_MODEL_PARAMS:
        raise NeurvolFormatError(
            f"{cfg.arch} model config declares {n:,} parameters, more than the limit of "
            f"{MAX_MODEL_PARAMS:,}; the file is corrupted or not meant for this reader")


def validated_options(cfg: "ModelConfig", options: Mapping[str, Any]) -> "ModelConfig":
    """``cfg`` (solved from the user's ``options``) after ``validate()``: a config that
    breaks a limit there came from those options, so it is an input error."""
    try:
        cfg.validate()
    except ValueError as exc:
        raise NeurvolInputError(f"invalid {cfg.arch} option(s) {dict(options)}: {exc}") from exc
    return cfg


def mlp_param_count(n_in: int, width: int, hidden_layers: int, n_out: int = 1) -> int:
    """Number of parameters of :func:`.mlp.make_mlp` with the same arguments."""
    count, prev = 0, n_in
    for _ in range(hidden_layers):
        count += (prev + 1) * width
        prev = width
    return count + (prev + 1) * n_out


def mlp_tensor_specs(prefix: str, n_in: int, width: int, hidden_layers: int,
                     n_out: int = 1) -> List[TensorSpec]:
    """Tensor list of :func:`.mlp.make_mlp` (an ``nn.Sequential`` named ``prefix``): the
    Linear layers sit at even indices, the ReLUs between them hold no tensors."""
    specs: List[TensorSpec] = []
    prev = n_in
    for i in range(hidden_layers):
        specs += [(f"{prefix}.{2 * i}.weight", (width, prev)), (f"{prefix}.{2 * i}.bias", (width,))]
        prev = width
    last = 2 * hidden_layers
    return specs + [(f"{prefix}.{last}.weight", (n_out, prev)), (f"{prefix}.{last}.bias", (n_out,))]


def _short(v: Any, limit: int = 200) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


_Entry = TypeVar("_Entry")


class NameRegistry(Generic[_Entry]):
    """Entries with a unique ``name`` attribute, looked up by name (the torch architectures
    and their numpy evaluations each keep one)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, _Entry] = {}

    def add(self, entry: _Entry) -> _Entry:
        """Add ``entry`` under its name (a name registered twice is a ValueError)."""
        name = entry.name  # type: ignore[attr-defined]
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> _Entry:
        """The entry of ``name`` (an unknown name is an input error listing the known)."""
        try:
            return self._entries[name]
        except KeyError:
            raise NeurvolInputError(
                f"unknown architecture {name!r}; choose one of {sorted(self._entries)}"
            ) from None

    def names(self) -> Tuple[str, ...]:
        """Every registered name, sorted."""
        return tuple(sorted(self._entries))
