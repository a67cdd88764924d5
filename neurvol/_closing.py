"""``with`` support for objects that hold a file open: leaving the block calls ``close()``."""
from __future__ import annotations

from typing import Any, TypeVar

_T = TypeVar("_T", bound="ClosesOnExit")


class ClosesOnExit:
    """Mixin: ``with obj:`` returns ``obj`` and calls ``obj.close()`` on the way out, also
    when the block raises (the exception propagates)."""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
