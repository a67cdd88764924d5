"""Run brick jobs: in-process, on a local process pool, or on a Dask cluster.

Every executor gives the same bytes for the same jobs (see :mod:`neurvol.ensemble.job`).
With ``workers`` local processes, the calling process is one of them: it fits jobs
between looking after a pool of ``workers - 1`` (it has torch loaded anyway, and a third
torch process would only add its import to the memory of the encode).
A job that raises a :class:`~neurvol.NeurvolError` (e.g. its budget share is too small)
fails the encode at once; any other failure (a crashed or killed worker, a lost Dask
worker) is retried up to ``retries`` times, then the encode fails naming the brick.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import NeurvolError
from .job import BrickJob, BrickResult

log = logging.getLogger("neurvol")


class NeurvolEncodeError(NeurvolError, RuntimeError):
    """A brick could not be fitted (after retries); the message names the brick."""


def _pool_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _is_dask(executor: Any) -> bool:
    return (type(executor).__module__ or "").startswith("distributed")


def run_jobs(jobs: Sequence[BrickJob], make_job_data: Callable[[BrickJob], BrickJob], *,
             fn: Callable[[BrickJob], BrickResult], workers: int, executor: Any = None,
             retries: int = 2, quiet: bool = True) -> Dict[int, BrickResult]:
    """Run ``fn`` on each of ``jobs`` and return their results by brick id.

    fn: a top-level (picklable) function, e.g. ``neurvol.encoding.brick_job.run_brick_job``.

    make_job_data: called on a job just before it is submitted (fills ``job.data`` for
    inputs workers cannot open themselves), so at most a few bricks are in memory.
    workers: local processes fitting, this one included (1: run in this process only).
    executor: a ``distributed.Client`` or any ``concurrent.futures.Executor`` (overrides
    workers).
    """
    from tqdm.auto import tqdm

    results: Dict[int, BrickResult] = {}
    if not jobs:
        return results
    with tqdm(total=len(jobs), desc="bricks", unit="brick", disable=quiet, leave=False) as bar:
        def done(res: BrickResult) -> None:
            results[res.brick] = res
            bar.update(1)

        if executor is None and workers <= 1:
            for job in jobs:
                done(_retrying(lambda j=job: fn(make_job_data(j)), job.brick, retries))
                job.data = None      # the brick's values, read for the job
            return results
        if executor is not None:
            _run_futures([executor], jobs, make_job_data, retries, done, fn,
                         window=max(4, 2 * _dask_threads(executor)) if _is_dask(executor) else 2 * workers)
            return results
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, int(jobs[0].threads))

        def new_pool() -> cf.ProcessPoolExecutor:
            return cf.ProcessPoolExecutor(max_workers=workers - 1, mp_context=ctx,
                                          initializer=_pool_init, initargs=(threads,))
        holder = [new_pool()]
        try:
            _run_futures(holder, jobs, make_job_data, retries, done, fn,
                         window=2 * (workers - 1), renew=new_pool,
                         local=lambda job: _retrying(lambda: fn(make_job_data(job)),
                                                     job.brick, retries))
        finally:
            holder[0].shutdown(wait=True, cancel_futures=True)
    return results


def _retrying(call: Callable[[], BrickResult], brick: int, retries: int) -> BrickResult:
    for attempt in range(retries + 1):
        try:
            return call()
        except NeurvolError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure of a job is retried
            if attempt == retries:
                raise NeurvolEncodeError(
                    f"brick {brick} failed {retries + 1} times (last error: "
                    f"{type(exc).__name__}: {exc}); nothing was written") from exc
            log.warning("brick %d failed (%s: %s); retrying", brick, type(exc).__name__, exc)
    raise AssertionError("unreachable")


def _dask_threads(client: Any) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - an old or custom client
        return 2


def _run_futures(holder: List[Any], jobs: Sequence[BrickJob],
                 make_job_data: Callable[[BrickJob], BrickJob], retries: int,
                 done: Callable[[BrickResult], None], fn: Callable[[BrickJob], BrickResult],
                 window: int, renew: Optional[Callable[[], Any]] = None,
                 local: Optional[Callable[[BrickJob], BrickResult]] = None) -> None:
    """Submit at most ``window`` jobs at a time; resubmit failed ones up to ``retries``.
    ``holder[0]`` is the executor; ``renew`` replaces a broken process pool; ``local``
    (if given) runs a job in this process, which takes the next job whenever the
    executor has ``window`` of them, and the last one (in this thread: an interrupt
    stops it as it stops a one-process encode)."""
    dask = _is_dask(holder[0])
    pending: List[BrickJob] = list(reversed(jobs))
    attempts: Dict[int, int] = {}
    running: Dict[Any, BrickJob] = {}

    def submit(job: BrickJob) -> None:
        job = make_job_data(job)
        executor = holder[0]
        if dask:
            fut = executor.submit(fn, job, pure=False,
                                  key=f"neurvol-brick-{job.brick}-{attempts.get(job.brick, 0)}-{id(jobs)}")
        else:
            fut = executor.submit(fn, job)
        running[fut] = job

    def fill() -> None:
        # The last job is left to ``local`` rather than queued behind a busy executor
        # (which would leave this process idle while it waits).
        while (pending and len(running) < window
               and (local is None or len(pending) > 1)):
            submit(pending.pop())

    try:
        fill()
        while running or pending:
            if local is not None and pending:
                job = pending.pop()
                done(local(job))
                job.data = None
                finished = _finished(running)
            else:
                finished = _wait_first(running, dask)
            for fut in finished:
                job = running.pop(fut)
                try:
                    res = fut.result()
                except NeurvolError:
                    raise
                except Exception as exc:  # noqa: BLE001 - crashed worker, lost worker, ...
                    n = attempts.get(job.brick, 0) + 1
                    attempts[job.brick] = n
                    if n > retries:
                        raise NeurvolEncodeError(
                            f"brick {job.brick} failed {n} times (last error: "
                            f"{type(exc).__name__}: {exc}); nothing was written") from exc
                    log.warning("brick %d failed (%s: %s); retrying", job.brick,
                                type(exc).__name__, exc)
                    job.data = None
                    pending.append(job)
                    if renew is not None and _broken(holder[0]):
                        # A dead worker breaks the whole pool: start a new one and
                        # resubmit everything that was running on it.
                        for other in list(running.values()):
                            other.data = None
                            pending.append(other)
                        running.clear()
                        holder[0].shutdown(wait=False, cancel_futures=True)
                        holder[0] = renew()
                        break
                    continue
                job.data = None          # the brick's values, read for the job
                done(res)
            fill()
    finally:
        for fut in running:
            fut.cancel()


def _finished(running: Dict[Any, BrickJob]) -> List[Any]:
    """The futures of ``running`` that are done (no waiting)."""
    return [fut for fut in running if fut.done()]


def _broken(pool: cf.ProcessPoolExecutor) -> bool:
    return bool(getattr(pool, "_broken", False))


def _wait_first(running: Dict[Any, BrickJob], dask: bool) -> List[Any]:
    if dask:
        from distributed import wait

        res = wait(list(running), return_when="FIRST_COMPLETED")
        return list(res.done)
    finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
    return list(finished)
