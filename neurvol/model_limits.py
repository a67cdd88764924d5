"""Compute and structure caps on the models a reader rebuilds from a file's header
(the resource model, spec/resources.md).

A config within an architecture's own checks and the parameter cap can still describe a
model that is slow to build (4,096 hidden layers: a second of module construction, even
on the meta device) or slow to evaluate (1,000 layers of width 256: 65 M multiply-adds per
point). The reader therefore

* builds a model's shapes under a *tensor budget*: module construction stops with a
  :class:`~neurvol.errors.NeurvolFormatError` as soon as it has registered more than
  :data:`MAX_MODEL_TENSORS` tensors or :data:`MAX_MODEL_MODULES` modules, so refusing a
  deep config costs milliseconds, whatever its depth;
* checks the multiply-adds per query point, :func:`macs_per_point`, against
  :func:`mac_budget` of the brick's payload length before the payload is read.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterable, Iterator, List, Sequence, Tuple

from .errors import NeurvolFormatError

#: Most tensors (parameters + buffers) of a model read from a file. The largest real
#: configs have a few hundred (neurcomp with 64 residual blocks: 260).
MAX_MODEL_TENSORS = 1024
#: Most modules constructed while a model read from a file is built.
MAX_MODEL_MODULES = 4 * MAX_MODEL_TENSORS
#: Multiply-adds per query point (:func:`macs_per_point`) any model may need: a 16^3
#: decode (4,096 points) is then at most 4.3 G multiply-adds.
FREE_MACS_PER_POINT = 1 << 20
#: ... and per byte of its payload beyond that. Grid and table models need 10^3..10^4
#: per point whatever their size; an MLP-only model (neurcomp) one per weight, and the
#: encoder stores about 1.3 weights per byte: a model that needs more compute per point
#: than 32 per byte of its payload did not come from an encoder.
MACS_PER_PAYLOAD_BYTE = 32
#: Multiply-adds charged per point for each entry of a lookup table or grid channel that
#: is interpolated (trilinear: 8 corners).
_LOOKUP_CORNERS = 8

TensorSpecs = Sequence[Tuple[str, Tuple[int, ...]]]

_state = threading.local()


class _BudgetExceeded(NeurvolFormatError):
    """Raised from a registration hook to stop building a model that is too large."""


def _count(kind: str, limit: int) -> None:
    budget = getattr(_state, "budget", None)
    if budget is None:
        return
    budget[kind] += 1
    if budget[kind] > limit:
        what = "tensors" if kind == "tensors" else "modules"
        raise _BudgetExceeded(
            f"the model config in this file builds more than {limit} {what} (the reader's "
            "limit, spec/resources.md); the file is corrupted or hostile")


def _on_tensor(module: Any, name: str, value: Any) -> None:
    if value is not None:
        _count("tensors", MAX_MODEL_TENSORS)


def _on_module(module: Any, name: str, submodule: Any) -> None:
    if submodule is not None:
        _count("modules", MAX_MODEL_MODULES)


_hooks_lock = threading.Lock()
_hooks_installed = False


def _install_hooks() -> None:
    """Register the process-wide hooks (once); they count only inside
    :func:`tensor_budget` on the same thread. Installed on first use, so that the numpy
    reader, which checks the tensor count of a config's tensor list instead, needs no torch."""
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        import torch

        torch.nn.modules.module.register_module_parameter_registration_hook(_on_tensor)
        torch.nn.modules.module.register_module_buffer_registration_hook(_on_tensor)
        torch.nn.modules.module.register_module_module_registration_hook(_on_module)
        _hooks_installed = True


@contextlib.contextmanager
def _budget() -> Iterator[None]:
    previous = getattr(_state, "budget", None)
    _state.budget = {"tensors": 0, "modules": 0}
    try:
        yield
    finally:
        _state.budget = previous


@contextlib.contextmanager
def tensor_budget() -> Iterator[None]:
    """Build models from file configs inside this: construction that registers more than
    :data:`MAX_MODEL_TENSORS` tensors or :data:`MAX_MODEL_MODULES` modules raises
    NeurvolFormatError at once (this thread only)."""
    _install_hooks()
    with _budget():
        yield


def counted_tensors(specs: Iterable[Tuple[str, Tuple[int, ...]]]) -> List[Tuple[str, Tuple[int, ...]]]:
    """A config's tensor list (``config.tensor_specs()``), under the same budget as a
    model build: more than :data:`MAX_MODEL_TENSORS` entries raise NeurvolFormatError
    after at most that many are counted. No model is built, so no torch is needed."""
    out = []
    with _budget():
        for spec in specs:
            _count("tensors", MAX_MODEL_TENSORS)
            out.append(spec)
    return out


def macs_per_point(specs: TensorSpecs) -> int:
    """Multiply-adds one query point costs, from the model's tensor shapes.

    A 2-D ``*.weight`` is a linear layer: every entry is used once per point. Any other
    tensor is a table or grid that is looked up: its channel entries (all but the first
    axis of a 2-D table, the axis before the last three of a grid) at 8 corners. Biases
    and small 1-D tensors cost one per entry.
    """
    total = 0
    for name, shape in specs:
        if len(shape) == 2 and name.endswith("weight"):
            total += shape[0] * shape[1]
        elif len(shape) == 2:
            total += _LOOKUP_CORNERS * shape[1]
        elif len(shape) >= 3:
            total += _LOOKUP_CORNERS * math.prod(shape[:-3])
        else:
            total += math.prod(shape)
    return total


def mac_budget(payload_bytes: int) -> int:
    """Most multiply-adds per query point a model with a payload of this length may need
    (spec/resources.md §2)."""
    return max(FREE_MACS_PER_POINT, MACS_PER_PAYLOAD_BYTE * payload_bytes)


def check_model_cost(arch_name: str, specs: TensorSpecs, payload_bytes: int) -> None:
    """Raise NeurvolFormatError if evaluating the model would need more than
    :func:`mac_budget` multiply-adds per query point."""
    macs = macs_per_point(specs)
    if macs > mac_budget(payload_bytes):
        raise NeurvolFormatError(
            f"the {arch_name} model in this file needs {macs:,} multiply-adds per point, "
            f"more than the reader's limit of {mac_budget(payload_bytes):,} for a "
            f"{payload_bytes:,}-byte payload (spec/resources.md); the file is corrupted "
            "or hostile")
