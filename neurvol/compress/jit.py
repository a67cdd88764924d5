"""The optional numba hook of the compiled decoders (:mod:`.correction.kernels`,
:mod:`.interp_kernel`): ``pip install "neurvol[fast]"``. Without numba, or with
``NEURVOL_NUMBA=0`` in the environment, :func:`available` is false and the numpy decoders
run; both give the same values bit for bit (tests compare them).

numba is imported on the first compiled call, not before: its LLVM libraries and the
compiled code take about 130 MiB per process, which an encode does not spend
(:func:`suspended`: encodes and brick jobs decode with numpy, the same values)."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List

#: Environment switch: ``NEURVOL_NUMBA=0`` keeps the numpy decoders even where numba is
#: installed (tests compare the two; a user can rule out the compiled path).
ENV_SWITCH = "NEURVOL_NUMBA"

_INSTALLED = (os.environ.get(ENV_SWITCH, "1") != "0"
              and importlib.util.find_spec("numba") is not None)
_lock = threading.Lock()
_suspended = 0
#: The module-level kernels not compiled yet, by module: compiled together on first use,
#: so a kernel's calls to another find a numba dispatcher in its module.
_pending: Dict[str, List["_Lazy"]] = {}


class _Lazy:
    """A kernel compiled with ``numba.njit(**options)`` on its module's first call."""

    def __init__(self, fn: Callable[..., Any], options: Dict[str, Any]):
        self.fn, self.options = fn, options
        _pending.setdefault(fn.__module__, []).append(self)

    def __call__(self, *args: Any) -> Any:
        return _compile_module(self.fn.__module__)[self.fn.__name__](*args)


def _compile_module(module: str) -> Dict[str, Any]:
    """Replace the module's pending kernels by numba dispatchers (its globals)."""
    namespace = vars(sys.modules[module])
    with _lock:
        pending = _pending.pop(module, [])
        if pending:
            from numba import njit
            for lazy in pending:
                namespace[lazy.fn.__name__] = njit(**lazy.options)(lazy.fn)
    return namespace


def jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Mark a module-level function as a kernel: compiled with numba's ``njit(**options)``
    on first use (numba caches it on disk beside the module). Kernels must not use
    ``fastmath``: decoders compute the spec's binary64 operations in its order."""
    return lambda fn: _Lazy(fn, options)


def available() -> bool:
    """Whether the compiled decoders are used now: numba installed, not switched off, and
    not inside :func:`suspended`."""
    return _INSTALLED and _suspended == 0


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Inside, decoders use numpy (the same values) and numba is not imported: encodes
    and brick jobs, whose memory per process counts, decode little."""
    global _suspended
    with _lock:
        _suspended += 1
    try:
        yield
    finally:
        with _lock:
            _suspended -= 1
