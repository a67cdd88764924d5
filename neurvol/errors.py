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


class NeurvolDependencyError(NeurvolError, ImportError):
    """An optional dependency a feature needs is not installed; the message says what to
    install (e.g. encoding needs ``neurvol[encode]``, which brings PyTorch)."""
