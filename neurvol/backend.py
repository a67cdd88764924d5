"""Evaluation backends of the reader: torch when it is installed, numpy everywhere.

A backend turns a brick's decoded weights into a model and evaluates it on chunks of
normalized points. ``torch`` is faster and can use CUDA; ``numpy`` needs nothing beyond
the core install and evaluates the same maths (``spec/arch/*``) to float32 rounding.

Choice, first match wins: ``neurvol.open(path, backend=...)``; the environment variable
``NEURVOL_BACKEND`` (``torch`` or ``numpy``); ``torch`` if it imports, else ``numpy``.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
from collections import OrderedDict
from typing import (Any, Callable, ContextManager, Dict, Iterator, Mapping, NamedTuple,
                    Optional, Tuple, Type)

import numpy as np

from .errors import NeurvolDependencyError, NeurvolInputError
from .models.config import ModelConfig
from .models.numpy_eval import get_numpy_architecture

#: Environment variable that picks the backend when ``open`` is not told.
BACKEND_ENV = "NEURVOL_BACKEND"
#: Built models the torch backend keeps to copy from, one per config, most recent first:
#: at most this many, and this many bytes of parameters (a bricked file has tens of
#: configs; each template is one brick's model).
MODEL_TEMPLATES = 64
MODEL_TEMPLATE_BYTES = 64 << 20
#: What to install for the torch backend (and for encoding).
TORCH_INSTALL_HINT = ('pip install "neurvol[encode]" (CPU-only torch: pip install torch '
                      '--index-url https://download.pytorch.org/whl/cpu)')


def import_torch() -> Optional[Any]:
    """The torch module, or None when it is not installed (or blocked)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def require_torch(feature: str) -> Any:
    """The torch module, or :class:`NeurvolDependencyError` saying how to install it."""
    torch = import_torch()
    if torch is None:
        raise NeurvolDependencyError(
            f"{feature} needs PyTorch, which is not installed; install it with {TORCH_INSTALL_HINT}")
    return torch


class Backend:
    """How a reader builds and evaluates brick models."""

    name = ""
    #: The device models run on (a ``torch.device`` for torch, ``"cpu"`` for numpy).
    device: Any = "cpu"

    @property
    def threaded(self) -> bool:
        """Whether chunks may be evaluated on several CPU threads side by side."""
        return True

    def load(self, arch: str, config: ModelConfig, arrays: Mapping[str, np.ndarray]) -> Any:
        """A model of architecture ``arch`` from its decoded ``{name: float32 array}``."""
        raise NotImplementedError

    def evaluate(self, model: Any, norm: np.ndarray, step: int) -> np.ndarray:
        """``(N,)`` float32 normalized values at ``norm (N, 3)`` normalized points,
        ``step`` points per model call (bounds the memory of one call)."""
        raise NotImplementedError

    def scope(self) -> ContextManager[Any]:
        """Context around one query or decode (all of its chunks)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def worker_threads(self) -> Iterator[Tuple[Optional[Callable[..., None]], Tuple[Any, ...]]]:
        """Context for a pool of chunk threads: yields ``(initializer, initargs)``."""
        yield None, ()


class NumpyBackend(Backend):
    """numpy evaluation (:mod:`neurvol.models.numpy_eval`); CPU only."""

    name = "numpy"

    def __init__(self, device: Any = None) -> None:
        if device is not None and str(device) != "cpu":
            raise NeurvolInputError(
                f"the numpy backend runs on the CPU, not device={device!r}; use "
                f"backend='torch' for GPUs ({TORCH_INSTALL_HINT})")

    def load(self, arch: str, config: ModelConfig, arrays: Mapping[str, np.ndarray]) -> Any:
        return get_numpy_architecture(arch).build(config, arrays)

    def evaluate(self, model: Any, norm: np.ndarray, step: int) -> np.ndarray:
        res = np.empty(norm.shape[0], dtype=np.float32)
        pts = _float32(norm)
        for a in range(0, norm.shape[0], step):
            res[a:a + step] = model(pts[a:a + step])
        return res

    def scope(self) -> ContextManager[Any]:
        # The chunks run side by side on their own threads; a multi-threaded BLAS under
        # each of them serialises the callers on its lock and spins against them (a
        # 10^6-point amgsrn query ran 5x slower), so BLAS gets one thread per caller
        # for the call. (Process-wide while the call runs: BLAS offers no per-thread count.)
        controller = _blas_controller()
        return controller.limit(limits=1, user_api="blas") if controller else contextlib.nullcontext()


class TorchBackend(Backend):
    """The torch modules of :mod:`neurvol.models`, on the CPU or a CUDA device."""

    name = "torch"

    def __init__(self, device: Any = None) -> None:
        self._torch = require_torch("backend='torch'")
        from .models.base import resolve_device

        self.device = resolve_device(device or "cpu")

    @property
    def threaded(self) -> bool:
        return self.device.type == "cpu"

    def load(self, arch: str, config: ModelConfig, arrays: Mapping[str, np.ndarray]) -> Any:
        template, slots, copy = _model_template(arch, config)
        model = copy(False)                                   # eval mode
        # The decoded arrays become the parameters (no copy): they are fresh float32
        # arrays of this brick; one that is not writeable (a view of the payload) is copied.
        tensors = {n: self._torch.from_numpy(a if a.flags.writeable else a.copy())
                   for n, a in arrays.items()}
        if not _assign(model, slots, tensors):
            # Names or shapes that are not the template's: load_state_dict says which.
            model.load_state_dict(tensors, assign=True)
        return model if self.device.type == "cpu" else model.to(self.device)

    def evaluate(self, model: Any, norm: np.ndarray, step: int) -> np.ndarray:
        torch = self._torch
        res = np.empty(norm.shape[0], dtype=np.float32)
        with torch.inference_mode():
            c = torch.from_numpy(_float32(norm))
            if self.device.type != "cpu":
                c = c.to(self.device)
            if c.shape[0] <= step:
                # One call, without the slicing and conversions that would return their
                # input (each a dispatcher call: a cold query makes one per brick).
                out = model(c)
                if out.dtype != torch.float32 or out.device.type != "cpu":
                    out = out.float().cpu()
                res[:] = out.numpy()
                return res
            for a in range(0, c.shape[0], step):
                res[a:a + step] = model(c[a:a + step]).float().cpu().numpy()
        return res

    @contextlib.contextmanager
    def worker_threads(self) -> Iterator[Tuple[Optional[Callable[..., None]], Tuple[Any, ...]]]:
        # Each chunk thread runs torch on one thread of its own: the chunks side by side
        # fill the cores. set_num_threads(1) in the workers is also the count torch gives
        # threads created later, so the caller's count is put back as that default.
        threads = self._torch.get_num_threads()
        try:
            yield self._torch.set_num_threads, (1,)
        finally:
            self._torch.set_num_threads(threads)


# Untouched models, one per recent config, shared by the process's readers: a brick's
# model is a copy of one (a build runs the random initialisation of every tensor).
_TEMPLATES: "OrderedDict[str, _Template]" = OrderedDict()
_TEMPLATES_LOCK = threading.Lock()


class _Slot(NamedTuple):
    """Where a state-dict entry of a template lives: the path of its module (attribute
    names from the root), the entry's name there, whether it is a parameter (else a
    persistent buffer), the parameter's ``requires_grad``, and its shape."""

    path: Tuple[str, ...]
    name: str
    parameter: bool
    requires_grad: bool
    shape: Tuple[int, ...]


def _module_copy(module: Any, training: Optional[bool] = None) -> Any:
    """A copy of an ``nn.Module`` tree whose modules, and their parameter, buffer, hook
    and other dicts, sets and lists, are its own, while its tensors are still the
    original's: :func:`_assign` then gives it its own tensors without copying any. A
    bricked file builds a model per brick, and ``copy.deepcopy`` (hundreds of Python calls
    per model, and a clone of every tensor that the load then overwrites) took most of a
    cold query's model builds. The template is never evaluated, so it holds no caches to
    share. ``training``: the copies' mode (``module.eval()`` without another walk), or
    the original's. (:func:`_copier` makes such copies of one module repeatedly.)"""
    return _copier(module)(training)


def _copier(module: Any) -> Callable[[Optional[bool]], Any]:
    """A function making :func:`_module_copy`'s copies of ``module``: which attributes
    are containers to copy and which are shared is worked out once, not per copy."""
    cls = module.__class__
    # (name, value, copied?) in the attributes' order; the children are copiers.
    entries = [(key, value, isinstance(value, (dict, set, list)))
               for key, value in module.__dict__.items() if key != "_modules"]
    children = [(name, None if child is None else _copier(child))
                for name, child in module.__dict__["_modules"].items()]

    def copy(training: Optional[bool] = None) -> Any:
        new = cls.__new__(cls)
        state = new.__dict__
        for key, value, copied in entries:
            state[key] = value.copy() if copied else value   # keeps the type (OrderedDict hooks)
        state["_modules"] = {name: None if make is None else make(training)
                             for name, make in children}
        if training is not None:
            state["training"] = training
        return new

    return copy


def _slots(model: Any) -> Dict[str, _Slot]:
    """The state-dict entries of ``model`` by name (:class:`_Slot`)."""
    slots = {}
    for prefix, module in model.named_modules():
        path = tuple(prefix.split(".")) if prefix else ()
        dot = prefix + "." if prefix else ""
        for name, p in module._parameters.items():
            if p is not None:
                slots[dot + name] = _Slot(path, name, True, p.requires_grad, tuple(p.shape))
        for name, b in module._buffers.items():
            if b is not None and name not in module._non_persistent_buffers_set:
                slots[dot + name] = _Slot(path, name, False, False, tuple(b.shape))
    return slots


def _assign(model: Any, slots: Mapping[str, _Slot], tensors: Mapping[str, Any]) -> bool:
    """``model.load_state_dict(tensors, assign=True)`` for a copy of a template whose
    slots are ``slots``, without its per-module Python machinery (a bricked file loads a
    model per brick): each tensor becomes its slot's parameter (with the template's
    ``requires_grad``) or buffer, uncopied. False, with nothing assigned, when the names
    or shapes are not the slots' (the caller then lets ``load_state_dict`` explain)."""
    if tensors.keys() != slots.keys() or any(
            tuple(tensors[n].shape) != s.shape for n, s in slots.items()):
        return False
    from torch.nn import Parameter

    for n, s in slots.items():
        owner = model
        for part in s.path:
            owner = owner._modules[part]
        if s.parameter:
            owner._parameters[s.name] = Parameter(tensors[n], requires_grad=s.requires_grad)
        else:
            owner._buffers[s.name] = tensors[n]
    return True


class _Template(NamedTuple):
    """A template model, its state-dict slots (:func:`_slots`), its copier
    (:func:`_copier`) and its parameter bytes."""

    model: Any
    slots: Dict[str, "_Slot"]
    copy: Callable[[Optional[bool]], Any]
    nbytes: int


def _model_template(arch: str, config: ModelConfig) -> Tuple[Any, Dict[str, "_Slot"],
                                                              Callable[[Optional[bool]], Any]]:
    """A freshly built CPU model of ``arch`` and ``config``, its slots (:func:`_slots`) and
    its copier (:func:`_copier`), kept for the next bricks of that config
    (:data:`MODEL_TEMPLATES`, :data:`MODEL_TEMPLATE_BYTES`); never evaluated or changed,
    only copied."""
    from .model_limits import tensor_budget
    from .models import get_architecture

    key = f"{arch}:{config!r}"
    with _TEMPLATES_LOCK:
        hit = _TEMPLATES.get(key)
        if hit is not None:
            _TEMPLATES.move_to_end(key)
            return hit.model, hit.slots, hit.copy
    with tensor_budget():
        model = get_architecture(arch).build(config)
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    entry = _Template(model, _slots(model), _copier(model), nbytes)
    with _TEMPLATES_LOCK:
        _TEMPLATES[key] = entry
        total = sum(e.nbytes for e in _TEMPLATES.values())
        while len(_TEMPLATES) > 1 and (len(_TEMPLATES) > MODEL_TEMPLATES
                                       or total > MODEL_TEMPLATE_BYTES):
            total -= _TEMPLATES.popitem(last=False)[1].nbytes
    return entry.model, entry.slots, entry.copy


def _float32(points: np.ndarray) -> np.ndarray:
    """``points`` as a C-contiguous, writeable float32 array: itself when it is one (a
    bricked query's local coordinates are), else a copy."""
    if points.dtype == np.float32 and points.flags.c_contiguous and points.flags.writeable:
        return points
    return np.array(points, dtype=np.float32, order="C")


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


_BACKENDS: Dict[str, Type[Backend]] = {"numpy": NumpyBackend, "torch": TorchBackend}


def select_backend(backend: Optional[str] = None, device: Any = None) -> Backend:
    """The backend to read with: ``backend`` if given, else ``$NEURVOL_BACKEND``, else
    torch when it imports and numpy otherwise."""
    name = backend if backend is not None else (os.environ.get(BACKEND_ENV) or None)
    if name is None:
        name = "torch" if import_torch() is not None else "numpy"
    if not isinstance(name, str) or name not in _BACKENDS:
        where = "backend" if backend is not None else f"${BACKEND_ENV}"
        raise NeurvolInputError(f"{where} must be one of {sorted(_BACKENDS)}, got {name!r}")
    return _BACKENDS[name](device)
