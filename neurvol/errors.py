"""Exceptions raised by neurvol.

Every error a user can cause is a :class:`NeurvolError`; its message says what to do.
"""
from __future__ import annotations


class NeurvolError(Exception):
    """Base class of every error neurvol raises on purpose."""


class NeurvolFormatError(NeurvolError, ValueError):
    """A file is not a valid ``.nvol`` (truncated, corrupted, foreign or malformed)."""


class NeurvolVersionError(NeurvolFormatError):
    """A ``.nvol`` file was written by an incompatible (newer major) format version."""


class NeurvolInputError(NeurvolError, ValueError):
    """An argument or input volume cannot be used (wrong shape, dtype, NaN, range ...)."""


class NeurvolBudgetError(NeurvolInputError):
    """The byte budget (``ratio``) is too small for any model of the chosen architecture."""


class NeurvolIOError(NeurvolError, OSError):
    """A file could not be read or written (missing, unwritable, unknown extension ...)."""


#: Integers longer than this many bits are shown by size in messages: ``str()`` of an
#: int of more than 4300 digits raises ValueError (CPython's limit), and a message must
#: never fail while it is being built.
_MAX_SHOWN_INT_BITS = 128


def brief(value: object, limit: int = 120) -> str:
    """A short ``repr`` of a value read from a file, safe to put in an error message.

    Huge integers (anywhere in nested lists/dicts) are shown as ``<int of N bits>``, deep
    or long containers are elided, and the text is cut at *limit* characters. Never
    raises, whatever the value.
    """
    import reprlib

    class _Brief(reprlib.Repr):
        def repr_int(self, x: int, level: int) -> str:
            if x.bit_length() > _MAX_SHOWN_INT_BITS:
                return f"<int of {x.bit_length()} bits>"
            return repr(x)

    r = _Brief()
    r.maxlevel, r.maxlist, r.maxdict, r.maxstring, r.maxother = 4, 8, 8, limit, limit
    try:
        text = r.repr(value)
    except Exception:  # noqa: BLE001 - a message must not fail; say what it is instead
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


class NeurvolDependencyError(NeurvolError, ImportError):
    """An optional dependency a feature needs is not installed; the message says what to
    install (e.g. encoding needs ``neurvol[encode]``, which brings PyTorch)."""
