"""Where many tasks run: a local process pool or a Dask cluster, both as an ``Executor``.

Batches and stacks submit plain functions of paths to a :class:`concurrent.futures.Executor` and
never know which kind they got (GUIDE section 6):

* the local pool starts its workers with ``forkserver`` (``spawn`` where there is none), sets the
  BLAS and OpenMP thread counts to 1 in each worker before numpy loads (a registration is
  single-threaded by design and ``jobs`` processes share the cores), and makes the workers ignore
  SIGINT, so the parent alone decides what happens on Ctrl-C;
* a Dask cluster is reached through ``distributed.Client(address).get_executor(pure=False)``
  (identical calls would otherwise be run once), with a short connect timeout so an unreachable
  scheduler is an error within seconds.

:func:`bounded` keeps a bounded window of futures in flight and stops submitting when asked:
cancelling a running future stops nothing, in either kind.

This module imports neither numpy nor ``distributed`` at load time: a spawned worker imports it
first, before the thread settings are made.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from typing import Any

__all__ = ["SchedulerError", "local_pool", "dask_executor", "open_executor", "bounded",
           "default_jobs", "THREAD_VARIABLES"]

#: environment variables that cap the threads of BLAS, OpenMP and friends in a worker
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "REGTOOL_THREADS")
#: seconds to wait for a Dask scheduler before giving up
CONNECT_TIMEOUT_S = 5.0


class SchedulerError(RuntimeError):
    """A Dask scheduler cannot be reached (or ``distributed`` is not installed).

    ``str(error)`` is one line, ready to be printed after ``"regtool: error: "``.
    """


def default_jobs() -> int:
    """The number of worker processes by default: the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _worker_start() -> None:
    """Run first in every local worker process."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    # The parent handles Ctrl-C (no new work; let the running tasks finish their atomic writes)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def local_pool(jobs: int) -> ProcessPoolExecutor:
    """A process pool of ``jobs`` workers, each with one BLAS thread and SIGINT ignored.

    Parameters
    ----------
    jobs : int
        Worker processes, at least 1.
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    # The variables are also set in the parent for the start of the forkserver: its children
    # inherit its environment, and numpy must see them before it loads.
    return ProcessPoolExecutor(max_workers=max(1, int(jobs)), mp_context=context,
                               initializer=_worker_start)


def dask_executor(address: str, timeout: float = CONNECT_TIMEOUT_S) -> tuple[Executor, Any]:
    """An ``Executor`` over the Dask cluster whose scheduler is at ``address``, and its client.

    Parameters
    ----------
    address : str
        The scheduler, e.g. ``tcp://10.0.0.5:8786``.
    timeout : float
        Seconds to wait for the scheduler.

    Returns
    -------
    (executor, client)
        Close the client when done.

    Raises
    ------
    SchedulerError
        ``distributed`` is not installed, or the scheduler does not answer within ``timeout``.
    """
    try:
        import distributed
    except ImportError:
        raise SchedulerError("--scheduler needs Dask's distributed package: pip install "
                             "'regtool[dask]'") from None
    try:
        client = distributed.Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SchedulerError(f"{address}: cannot reach the Dask scheduler within "
                             f"{timeout:g} s ({detail})") from None
    return client.get_executor(pure=False), client


@contextlib.contextmanager
def open_executor(jobs: int | None = None, scheduler: str | None = None) -> Iterator[Executor]:
    """The executor a batch or a stack runs on: Dask's when ``scheduler`` is given, else local.

    On leaving, a local pool waits for its running tasks (none new start) and a Dask client is
    closed.

    Parameters
    ----------
    jobs : int, optional
        Local worker processes (default :func:`default_jobs`); ignored with ``scheduler``.
    scheduler : str, optional
        The address of a Dask scheduler.

    Raises
    ------
    SchedulerError
        The scheduler cannot be reached.
    """
    if scheduler is not None:
        executor, client = dask_executor(scheduler)
        try:
            yield executor
        finally:
            with contextlib.suppress(Exception):
                client.close()
        return
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    pool = local_pool(jobs if jobs is not None else default_jobs())
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bounded(executor: Executor, fn: Callable[..., Any], tasks: Iterable[tuple[Any, tuple]],
            window: int, stop: Callable[[], bool] = lambda: False
            ) -> Iterator[tuple[Any, Future]]:
    """Run ``fn(*args)`` for each ``(key, args)`` of ``tasks``, at most ``window`` at a time.

    Yields ``(key, future)`` as each finishes (in the order they finish), so results are
    handled while the rest run and memory does not grow with the number of tasks. Once
    ``stop()`` is true no new task is submitted; those in flight are still yielded as they end.

    Parameters
    ----------
    executor : concurrent.futures.Executor
    fn : callable
        A module-level function (it is pickled by name).
    tasks : iterable of (key, args)
        Consumed lazily.
    window : int
        Futures in flight at most (at least 1); e.g. twice the workers.
    stop : callable
        Polled before each submission.
    """
    pending: dict[Future, Any] = {}
    source = iter(tasks)
    exhausted = False
    while True:
        while not exhausted and len(pending) < max(1, window) and not stop():
            try:
                key, args = next(source)
            except StopIteration:
                exhausted = True
                break
            pending[executor.submit(fn, *args)] = key
        if not pending:
            return
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            yield pending.pop(future), future
