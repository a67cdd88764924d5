"""The contract every scene-representation architecture follows.

An architecture is one ``torch.nn.Module`` plus one frozen config dataclass, registered by
name. The config is everything needed to rebuild the module (it is stored in the ``.nvol``
header as JSON); the module maps normalized coordinates to normalized values.
Models never do I/O and never see the byte format.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple, Type

import torch

from ..errors import NeurvolFormatError, NeurvolInputError

#: Most parameters (weights + persistent buffers) a model read from a file may have:
#: 2^28 = 268,435,456 values (1 GiB as float32). Checked before anything is allocated, so
#: a corrupted or hostile config (e.g. a 4096^3 x 4096 feature grid) cannot exhaust memory.
MAX_MODEL_PARAMS = 2 ** 28

#: Activations that act on each element alone (see :meth:`VolumeModel.hidden_neurons`).
_ELEMENTWISE = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.GELU, torch.nn.SiLU, torch.nn.Tanh,
                torch.nn.Sigmoid, torch.nn.Softplus, torch.nn.ELU)


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


def _short(v: Any, limit: int = 200) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


class VolumeModel(torch.nn.Module):
    """A scene-representation network: normalized coords -> normalized values.

    ``forward(coords)`` takes ``coords: (N, 3)`` float32 in [-1, 1]^3 ordered (z, y, x)
    and returns ``(N,)`` values, nominally in [0, 1] (the volume's min..max).
    """

    config: ModelConfig
    #: Names of tensors to store at float16 instead of k-means: those whose quantization
    #: error the network amplifies (e.g. a SIREN's first layer, multiplied by omega0).
    precise_tensors: ClassVar[FrozenSet[str]] = frozenset()
    #: Names of dense feature grids ``(..., D, H, W)``: smooth in their last three axes, so
    #: the codec stores them with Lorenzo prediction instead of k-means.
    grid_tensors: ClassVar[FrozenSet[str]] = frozenset()

    def fixed_tensors(self) -> FrozenSet[str]:
        """Names of parameters that keep their initial values: no optimiser, fine-tune
        included, may train them (e.g. AMGSRN's anchor transform)."""
        return frozenset()

    def param_groups(self, base_lr: float) -> Sequence[Dict[str, Any]]:
        """Optimizer parameter groups; architectures override to give grids their own lr."""
        return [{"params": list(self.parameters()), "lr": base_lr}]

    def init_from_volume(self, volume: torch.Tensor) -> None:
        """Optionally initialise from the normalized target volume ``(D, H, W)``."""

    def on_step(self, step: int, total_steps: int) -> None:
        """Called before every optimisation step (e.g. to start/stop training a part)."""

    def extra_loss(self, coords: torch.Tensor, pred: torch.Tensor,
                   target: torch.Tensor) -> Optional[torch.Tensor]:
        """An architecture's own regulariser added to the MSE (e.g. a density loss)."""
        return None

    def hidden_neurons(self) -> Sequence[Tuple[str, str]]:
        """``(producer, consumer)`` names of ``nn.Linear`` submodules such that output ``j``
        of ``producer`` reaches the rest of the network only through an elementwise
        activation into input ``j`` of ``consumer``: the hidden neurons structured pruning
        (Smallify) may remove, by zeroing row ``j`` of the producer (weight and bias) and
        column ``j`` of the consumer.

        Default: consecutive ``Linear -> elementwise activation -> Linear`` layers of every
        ``nn.Sequential`` submodule (the MLPs of :func:`.mlp.make_mlp`). Architectures with
        other wiring (residual blocks) override this."""
        pairs = []
        for prefix, seq in self.named_modules():
            if not isinstance(seq, torch.nn.Sequential):
                continue
            layers = list(seq.named_children())
            for i in range(len(layers) - 2):
                (pn, p), (_, act), (cn, c) = layers[i], layers[i + 1], layers[i + 2]
                if (isinstance(p, torch.nn.Linear) and isinstance(c, torch.nn.Linear)
                        and isinstance(act, _ELEMENTWISE)):
                    dot = f"{prefix}." if prefix else ""
                    pairs.append((dot + pn, dot + cn))
        return pairs


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A registry entry: how to build, size and rebuild one architecture."""

    name: str
    config_cls: Type[ModelConfig]
    model_cls: Type[VolumeModel]
    # (volume_shape, parameter budget in "value slots", options) -> config
    solve: Callable[[Tuple[int, int, int], int, Mapping[str, Any]], ModelConfig]
    description: str = ""
    # Names of the sizing options ``solve`` accepts (``encode(..., **options)``).
    options: Tuple[str, ...] = ()
    # Overrides of FitSettings fields (lr, batch, steps, ...) this architecture trains best with.
    fit_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def build(self, config: ModelConfig) -> VolumeModel:
        return self.model_cls(config)

    def option_type(self, name: str) -> type:
        """``int`` or ``float``: the type of sizing option ``name`` (that of the config
        field of the same name, else ``int``: counts such as layers or levels)."""
        for f in dataclasses.fields(self.config_cls):
            if f.name == name and isinstance(f.default, float):
                return float
        return int


_REGISTRY: Dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add an architecture to the registry (names are unique)."""
    if arch.name in _REGISTRY:
        raise ValueError(f"architecture {arch.name!r} registered twice")
    _REGISTRY[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    """Look up a registered architecture by name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NeurvolInputError(
            f"unknown architecture {name!r}; choose one of {sorted(_REGISTRY)}"
        ) from None


def architectures() -> Tuple[str, ...]:
    """Names of all registered architectures."""
    return tuple(sorted(_REGISTRY))


def resolve_device(device: Any) -> torch.device:
    """The torch device ``device`` names (None: CUDA when available, else the CPU); an
    unknown device, or CUDA where torch sees none, is an input error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise NeurvolInputError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NeurvolInputError("device='cuda' was asked for but torch sees no CUDA device; "
                                "use device='cpu'")
    return dev
