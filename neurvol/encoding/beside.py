"""Work beside a single model's fit, on a thread of its own: the pure-predictor candidate,
then the default candidate's fit while the rate-aware pilot decides.

A fit step evaluates 16,384 points; most of its operations are under torch's grain size
and the rest gain little from a second thread, so a fit takes as long on one torch thread
as on two (BENCHMARKS.md, "work beside the fit"). A single-model encode with a side thread
therefore fits on one torch thread and gives another to :class:`SideWork`.

Every fit of such an encode runs on one thread, the side fit and the main one alike: a
fit's bits can depend on torch's thread count (small models, where an operation splits
its work by thread), and a side fit taken over part way must finish on the count it
started with, or its file would depend on when the pilot took it.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional

import torch

from ..ensemble.job import torch_threads
from .single import ModelFit, advance

#: Steps the side fit runs between looks at whether it should pause: the pilot waits for
#: at most this many steps of it (a few tenths of a second) when it takes the fit over.
SIDE_FIT_CHUNK = 50
#: Torch threads of every fit in an encode with a side thread.
SIDE_FIT_THREADS = 1


class SideWork:
    """One side thread for the work of an encode that can run beside its fit, in the
    order given; disabled (everything runs in the caller, when asked for) where torch has
    a single thread or the fit runs on a GPU. A context manager: leaving it waits for the
    side thread."""

    def __init__(self, enabled: bool):
        self.threads = torch.get_num_threads()
        self.enabled = bool(enabled) and self.threads >= 2
        self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurvol-side")
                      if self.enabled else None)

    def fit_threads(self) -> int:
        """Torch threads for the encode's fits: one beside a side thread (the count a
        side fit runs on), else the caller's."""
        return SIDE_FIT_THREADS if self.enabled else self.threads

    def submit(self, fn: Callable[..., Any], *args: Any) -> "Future[Any]":
        """``fn(*args)`` on the side thread, or now in the caller where disabled."""
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: "Future[Any]" = Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # handed over as the side thread would hand it over
            done.set_exception(exc)
        return done

    def __enter__(self) -> "SideWork":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class SideFit:
    """A candidate fitted on the side thread until it is taken over (:meth:`take`) or
    dropped (:meth:`drop`): the default candidate while the rate-aware pilot runs. Where
    the pilot finishes the rate-aware fit, the side fit is dropped (its steps cost the side
    core only); where it fits the default instead, that fit is already part way. A fit
    paused and resumed gives the model of one uninterrupted fit, so the file is the same
    either way."""

    def __init__(self, side: SideWork, start: Callable[[], ModelFit]):
        self._start = start
        self._pause = threading.Event()
        self._future: Optional["Future[Optional[ModelFit]]"] = (
            side.submit(self._fit) if side.enabled else None)

    def _fit(self) -> Optional[ModelFit]:
        if self._pause.is_set():
            return None         # dropped before the side thread got to it
        with torch_threads(SIDE_FIT_THREADS):
            run = self._start()
            while not self._pause.is_set() and not run.fitting.done:
                advance(run, run.fitting.step + SIDE_FIT_CHUNK)
        return run

    def take(self) -> ModelFit:
        """The candidate's fit, paused where the side thread got to (built now where no
        side thread runs it)."""
        if self._future is None:
            return self._start()
        self._pause.set()
        run = self._future.result()
        return self._start() if run is None else run

    def drop(self) -> None:
        """Stop the side fit (within :data:`SIDE_FIT_CHUNK` steps) without waiting for it."""
        self._pause.set()
