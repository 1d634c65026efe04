"""Where many tasks run: a local process pool or a Dask cluster, both as an ``Executor``.

Batches and stacks submit plain functions of paths to a :class:`concurrent.futures.Executor` and
never know which kind they got (GUIDE section 6):

* the local pool starts its workers with ``forkserver`` (``spawn`` where there is none), sets the
  BLAS and OpenMP thread counts to 1 in each worker before numpy loads (a registration is
  single-threaded by design and ``jobs`` processes share the cores), and makes the workers ignore
  SIGINT, so the parent alone decides what happens on Ctrl-C;
* a Dask cluster is reached through ``distributed.Client(address).get_executor(pure=False)``
  (identical calls would otherwise be run once). The address is parsed, its port tried with a
  plain socket and the server asked whether it is a scheduler before any client exists, so a
  mistyped, unreachable or wrong address is an error at once (a refused connection) or within
  :data:`CONNECT_TIMEOUT_S`, never the ten-second hang at exit that a failed client costs.

:func:`bounded` keeps a bounded window of futures in flight and stops submitting when asked:
cancelling a running future stops nothing, in either kind. Worse, a future of Dask's
``ClientExecutor`` is never marked running, so its ``cancel()`` always succeeds and cancels the
Dask task even while a worker runs it -- the task still finishes and writes its outputs, but its
result is lost. Nothing here cancels; a caller that stops waits for what it submitted.
:func:`capacity` says how many tasks can run at once, the natural window.

This module imports neither numpy nor ``distributed`` at load time: a spawned worker imports it
first, before the thread settings are made.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from typing import Any

__all__ = ["SchedulerError", "local_pool", "dask_executor", "open_executor", "bounded",
           "capacity", "default_jobs", "THREAD_VARIABLES"]

#: environment variables that cap the threads of BLAS, OpenMP and friends in a worker
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "REGTOOL_THREADS")
#: seconds to wait for a Dask scheduler before giving up
CONNECT_TIMEOUT_S = 5.0
#: seconds between two questions to a Dask scheduler about its number of worker threads
CAPACITY_REFRESH_S = 2.0

# How many tasks each executor made here runs at once (see capacity()).
_CAPACITY: weakref.WeakKeyDictionary[Executor, Callable[[], int]] = weakref.WeakKeyDictionary()


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


def _start_forkserver() -> None:
    """Start the forkserver (if it is not running) with SIGINT ignored from its birth.

    Ctrl-C reaches the whole process group. A worker forked from the forkserver gets the
    forkserver's original SIGINT handler back until :func:`_worker_start` runs; a Ctrl-C in
    that instant (at the start of a batch) killed the worker, which broke the pool and had the
    pool terminate the other workers in the middle of their writes. A process started with
    SIGINT ignored keeps it ignored, so the forkserver, and every worker, is started so.
    """
    from multiprocessing import forkserver

    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals are not ours to set
        forkserver.ensure_running()
        return
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def local_pool(jobs: int) -> ProcessPoolExecutor:
    """A process pool of ``jobs`` workers, each with one BLAS thread and SIGINT ignored.

    Parameters
    ----------
    jobs : int
        Worker processes, at least 1.
    """
    methods = multiprocessing.get_all_start_methods()
    method = "forkserver" if "forkserver" in methods else "spawn"
    context = multiprocessing.get_context(method)
    # The variables are also set in the parent for the start of the forkserver: its children
    # inherit its environment, and numpy must see them before it loads.
    if method == "forkserver":
        _start_forkserver()
    jobs = max(1, int(jobs))
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_start)
    _CAPACITY[pool] = lambda: jobs
    return pool


def _check_address(address: str, timeout: float) -> None:
    """Refuse a malformed address, and one where no Dask scheduler answers, within ``timeout``.

    ``distributed.Client`` retries a refused connection until its timeout, and when it fails
    for another reason (a malformed address, a server that is not a scheduler) it leaves a
    half-made client behind whose finalizer hangs for ten seconds at exit and prints a
    traceback. So the address is parsed first, a TCP port is tried with a plain socket (a
    refusal is immediate), and the scheduler is asked who it is before any client exists.
    """
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import registry
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.core import rpc
    from distributed.security import Security

    example = "give the address 'dask scheduler' printed, e.g. tcp://10.0.0.5:8786"
    try:
        scheme, location = parse_address(address)
        registry.get_backend(scheme)
        if scheme not in ("tcp", "tls", "ws", "wss"):
            raise ValueError(f"regtool reaches a scheduler over tcp, tls, ws or wss, not {scheme}")
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())
        raise SchedulerError(f"{address}: not a Dask scheduler address ({detail}); "
                             f"{example}") from None
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        raise SchedulerError(f"{address}: cannot reach the Dask scheduler ({reason})") from None

    async def identify() -> Any:
        # the TLS settings of Dask's configuration, as a Client would use them
        remote = rpc(address, timeout=timeout,
                     connection_args=Security().get_connection_args("client"))
        try:
            return await remote.identity()
        finally:
            await remote.close_rpc()

    left = max(0.5, timeout - (time.monotonic() - started))
    # In a thread of its own: asyncio.run refuses to run inside a caller's event loop (Jupyter)
    with ThreadPoolExecutor(1) as thread:
        try:
            who = thread.submit(lambda: asyncio.run(asyncio.wait_for(identify(), left))).result()
        except Exception as exc:  # whatever a server that is not a scheduler makes it raise
            if isinstance(exc, TimeoutError):
                detail = f"no answer within {timeout:g} s"
            elif isinstance(exc, OSError):
                detail = " ".join(str(exc).split()) or type(exc).__name__
            else:
                detail = "it does not answer in Dask's protocol"
            raise SchedulerError(f"{address}: no Dask scheduler answers there ({detail})") from None
    if not isinstance(who, dict) or who.get("type") != "Scheduler":
        kind = who.get("type") if isinstance(who, dict) else type(who).__name__
        raise SchedulerError(f"{address}: not a Dask scheduler (a {kind} answers there); "
                             f"{example}")


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
        ``distributed`` is not installed, the address is malformed, or the scheduler does not
        answer within ``timeout``.
    """
    try:
        import distributed
    except ImportError:
        raise SchedulerError("--scheduler needs Dask's distributed package: pip install "
                             "'regtool[dask]'") from None
    _check_address(address, timeout)
    try:
        client = distributed.Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SchedulerError(f"{address}: cannot reach the Dask scheduler within "
                             f"{timeout:g} s ({detail})") from None
    executor = client.get_executor(pure=False)
    _CAPACITY[executor] = _dask_threads(client)
    return executor, client


def _dask_threads(client: Any) -> Callable[[], int]:
    """The cluster's worker threads, asked again at most every :data:`CAPACITY_REFRESH_S`.

    Asked again because workers may join (or leave) while a batch runs.
    """
    last = {"at": -float("inf"), "threads": 1}

    def threads() -> int:
        now = time.monotonic()
        if now - last["at"] >= CAPACITY_REFRESH_S:
            with contextlib.suppress(Exception):  # a slow answer keeps the last count
                last["threads"] = max(1, sum(client.nthreads().values()))
            last["at"] = now
        return last["threads"]

    return threads


def capacity(executor: Executor) -> int:
    """How many tasks ``executor`` runs at once: its processes, or the cluster's threads.

    This is the window for :func:`bounded` under which every submitted task starts at once,
    so a caller that stops submitting starts no new work.

    Parameters
    ----------
    executor : concurrent.futures.Executor
        One made by :func:`local_pool` or :func:`dask_executor` (any other counts as
        ``max_workers`` when it has that attribute, else 1).
    """
    known = _CAPACITY.get(executor)
    if known is not None:
        return known()
    return max(1, int(getattr(executor, "_max_workers", 1) or 1))


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
            window: int | Callable[[], int], stop: Callable[[], bool] = lambda: False
            ) -> Iterator[tuple[Any, Future]]:
    """Run ``fn(*args)`` for each ``(key, args)`` of ``tasks``, at most ``window`` at a time.

    Yields ``(key, future)`` as each finishes (in the order they finish), so results are
    handled while the rest run and memory does not grow with the number of tasks. Once
    ``stop()`` is true no new task is submitted; those in flight are still yielded as they end
    (none is cancelled: see the module's docstring).

    Parameters
    ----------
    executor : concurrent.futures.Executor
    fn : callable
        A module-level function (it is pickled by name).
    tasks : iterable of (key, args)
        Consumed lazily.
    window : int or callable
        Futures in flight at most (at least 1), or a function that says it before each
        submission (e.g. :func:`capacity` of a cluster whose workers come and go).
    stop : callable
        Polled before each submission.
    """
    size = window if callable(window) else (lambda: window)
    pending: dict[Future, Any] = {}
    source = iter(tasks)
    exhausted = False
    while True:
        while not exhausted and len(pending) < max(1, int(size())) and not stop():
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
