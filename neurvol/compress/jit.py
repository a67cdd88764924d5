"""The optional numba hook of the compiled decoders (:mod:`.correction.kernels`,
:mod:`.interp_kernel`): ``pip install "neurvol[fast]"``. Without numba, or with
``NEURVOL_NUMBA=0`` in the environment, :func:`available` is false and the numpy decoders
run; both give the same values bit for bit (tests compare them)."""
from __future__ import annotations

import os

#: Environment switch: ``NEURVOL_NUMBA=0`` keeps the numpy decoders even where numba is
#: installed (tests compare the two; a user can rule out the compiled path).
ENV_SWITCH = "NEURVOL_NUMBA"

try:  # numba is optional: the numpy decoders are the fallback
    if os.environ.get(ENV_SWITCH, "1") == "0":
        raise ImportError(f"{ENV_SWITCH}=0")
    from numba import njit
except ImportError:          # pragma: no cover - exercised by the numpy-only CI run
    njit = None


def jit(**options):
    """numba's ``njit`` where numba is installed (compiled on first call, cached on disk
    beside the module); else the plain function, which nothing calls. Kernels must not
    use ``fastmath``: decoders compute the spec's binary64 operations in its order."""
    return (lambda fn: fn) if njit is None else njit(**options)


def available() -> bool:
    """Whether the compiled decoders can be used (numba installed and not switched off)."""
    return njit is not None
