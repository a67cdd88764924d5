"""The next training batch drawn on a thread of its own while the current step's backward
and optimizer step run.

A batch depends only on the sampler's random stream and, for error-driven sampling, on
the errors recorded up to the current step's forward; nothing of the backward or the
optimizer step reaches it. Drawn one step early beside them, it is the batch a sequential
fit draws, bit for bit, and the draw's time (about a tenth of a step on the CPU) leaves the
step's critical path for a core that is otherwise idle during a single model's fit.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Generic, Optional, TypeVar

Batch = TypeVar("Batch")


class Prefetch(Generic[Batch]):
    """``draw()`` run one call ahead: :meth:`ahead` starts the next draw beside whatever
    the caller does next, :meth:`take` returns it (drawn now if none was started). A draw
    started and not taken stays pending for the next :meth:`take` (a fit paused and resumed
    takes it then, so its batches are those of one uninterrupted fit). Disabled,
    :meth:`ahead` does nothing and :meth:`take` draws in the caller: the same draws in the
    same order. :meth:`close` waits for a pending draw and ends the thread."""

    def __init__(self, draw: Callable[[], Batch], enabled: bool = True):
        self._draw = draw
        self._pool: Optional[ThreadPoolExecutor] = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurvol-sample")
            if enabled else None)
        self._pending: Optional["Future[Batch]"] = None

    def ahead(self) -> None:
        """Start the next draw (on the thread; in the caller when disabled)."""
        if self._pending is None and self._pool is not None:
            self._pending = self._pool.submit(self._draw)

    def take(self) -> Batch:
        """The next batch: the one started by :meth:`ahead`, else drawn now."""
        pending, self._pending = self._pending, None
        return self._draw() if pending is None else pending.result()

    def close(self) -> None:
        """Wait for a pending draw (it uses the sampler) and end the thread."""
        if self._pending is not None:
            self._pending.exception()        # waits; an error there is the fit's no more
            self._pending = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self) -> None:
        pool: Any = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)
