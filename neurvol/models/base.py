"""The contract every scene-representation architecture follows.

An architecture is one ``torch.nn.Module`` plus one frozen config dataclass, registered by
name. The config is everything needed to rebuild the module (it is stored in the ``.nvol``
header as JSON); the module maps normalized coordinates to normalized values. The configs,
their tensor lists and a numpy evaluation of the same maths are torch-free
(:mod:`.config`, :mod:`.numpy_eval`): reading a file needs no torch.
Models never do I/O and never see the byte format.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, ClassVar, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple, Type

import torch

from ..errors import NeurvolInputError
from .config import (MAX_MODEL_PARAMS, ModelConfig, NameRegistry, check_param_cap,  # noqa: F401  (re-exported)
                     validated_options)
from .numpy_eval import get_numpy_architecture

#: Activations that act on each element alone (see :meth:`VolumeModel.hidden_neurons`).
_ELEMENTWISE = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.GELU, torch.nn.SiLU, torch.nn.Tanh,
                torch.nn.Sigmoid, torch.nn.Softplus, torch.nn.ELU)


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
    """A registry entry: how to build, size and rebuild one architecture.

    The config class and description are those of the architecture's torch-free entry
    (:mod:`.numpy_eval`, registered under the same name), so the two halves cannot
    disagree on how a header's config reads.
    """

    name: str
    model_cls: Type[VolumeModel]
    # (volume_shape, parameter budget in "value slots", options) -> config; see :meth:`solve`.
    solver: Callable[[Tuple[int, int, int], int, Mapping[str, Any]], ModelConfig]
    # Names of the sizing options ``solve`` accepts (``encode(..., **options)``).
    options: Tuple[str, ...] = ()
    # Overrides of FitSettings fields (lr, batch, steps, ...) this architecture trains best with.
    fit_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def config_cls(self) -> Type[ModelConfig]:
        """The config dataclass (shared with the numpy evaluation)."""
        return get_numpy_architecture(self.name).config_cls

    @property
    def description(self) -> str:
        """One line on the architecture (shared with the numpy evaluation)."""
        return get_numpy_architecture(self.name).description

    def solve(self, shape: Tuple[int, int, int], n_params: int,
              options: Mapping[str, Any]) -> ModelConfig:
        """The config ``solver`` sizes for ``n_params`` parameters of a volume of ``shape``
        from the user's sizing ``options``, validated: a config that breaks a limit came
        from those options, so it is an input error."""
        return validated_options(self.solver(shape, n_params, options), options)

    def build(self, config: ModelConfig) -> VolumeModel:
        """A model of ``config``, randomly initialised without touching torch's global RNG
        (see :meth:`seeded_build`; a reader overwrites the tensors anyway)."""
        with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
            return self.model_cls(config)

    def seeded_build(self, config: ModelConfig, seed: int) -> VolumeModel:
        """A model of ``config`` initialised from torch's global RNG seeded with ``seed``.

        Module constructors draw from torch's one global RNG, so the builds of a process
        take turns and leave the global state as they found it, and nothing else in
        neurvol sets that state (fits and fine-tunes draw from generators of their own).
        Before, another thread's build, or a fit restoring the state it had forked,
        could land between this build's seeding and its draws (a reader's model, a
        sizing trial, a brick job on a dask thread): the initialisation changed, hence
        the fit and the file's bytes."""
        with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.model_cls(config)

    def option_type(self, name: str) -> type:
        """``int`` or ``float``: the type of sizing option ``name`` (that of the config
        field of the same name, else ``int``: counts such as layers or levels)."""
        for f in dataclasses.fields(self.config_cls):
            if f.name == name and isinstance(f.default, float):
                return float
        return int


#: Builds run one at a time (see :meth:`Architecture.seeded_build`); reentrant, so that a
#: model may build a part of itself through another architecture.
_BUILD_LOCK = threading.RLock()
_REGISTRY: NameRegistry[Architecture] = NameRegistry("architecture")
#: Add an architecture to the registry (names are unique).
register = _REGISTRY.add
#: Look up a registered architecture by name (an unknown name is an input error).
get_architecture = _REGISTRY.get
#: Names of all registered architectures, sorted.
architectures = _REGISTRY.names


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
