"""Tests of regtool.executors: the bounded window, the local pool's workers, a real Dask cluster."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import distributed
import pytest

from regtool import executors

# --------------------------------------------------------------------------------------------
# bounded
# --------------------------------------------------------------------------------------------


class Gauge:
    """Counts the calls running at once, and the most there ever were."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def __call__(self, value: int) -> int:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        time.sleep(0.02)  # long enough for the others to start, even on a busy machine
        with self.lock:
            self.now -= 1
        return value * 10


def test_bounded_keeps_the_window_and_yields_every_task():
    gauge = Gauge()
    with ThreadPoolExecutor(6) as pool:
        got = {key: future.result()
               for key, future in executors.bounded(pool, gauge, ((i, (i,)) for i in range(30)),
                                                    window=3)}
    assert got == {i: 10 * i for i in range(30)}
    assert gauge.most <= 3 and gauge.most >= 2  # the window is used, never exceeded


def test_bounded_stop_submits_nothing_more_and_yields_what_was_submitted():
    gauge = Gauge()
    seen: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        for key, future in executors.bounded(pool, gauge, ((i, (i,)) for i in range(50)),
                                             window=2, stop=lambda: len(seen) >= 5):
            assert future.done() and future.result() == 10 * key
            seen.append(key)
    # at the stop 2 were in flight at most: they are still yielded, nothing after them runs
    assert 5 <= len(seen) <= 6 and gauge.calls == len(seen)


def test_bounded_window_may_change_while_it_runs():
    gauge = Gauge()
    sizes = iter([1] * 10 + [4] * 1000)
    with ThreadPoolExecutor(4) as pool:
        keys = [k for k, _ in executors.bounded(pool, gauge, ((i, (i,)) for i in range(30)),
                                                window=lambda: next(sizes))]
    assert sorted(keys) == list(range(30)) and gauge.most > 1


# --------------------------------------------------------------------------------------------
# The local pool
# --------------------------------------------------------------------------------------------


def test_local_workers_have_one_blas_thread_and_ignore_sigint():
    before = {name: os.environ.get(name) for name in executors.THREAD_VARIABLES}
    with executors.open_executor(jobs=2) as pool:
        assert executors.capacity(pool) == 2
        threads = [pool.submit(os.getenv, name) for name in executors.THREAD_VARIABLES]
        handler = pool.submit(signal.getsignal, signal.SIGINT)
        pids = {pool.submit(os.getpid).result() for _ in range(6)}
        assert [f.result() for f in threads] == ["1"] * len(executors.THREAD_VARIABLES)
        assert handler.result() == signal.SIG_IGN
        assert os.getpid() not in pids
    # the parent's environment is given back
    assert {name: os.environ.get(name) for name in executors.THREAD_VARIABLES} == before


def test_the_forkserver_ignores_sigint_from_its_start():
    # Its children are the workers: a Ctrl-C before their initializer ran used to kill one
    # (and break the pool) when the forkserver had Python's own SIGINT handler.
    from multiprocessing import forkserver

    with executors.open_executor(jobs=1) as pool:
        pool.submit(os.getpid).result()
        pid = forkserver._forkserver._forkserver_pid
        status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line for line in status.splitlines()
                       if line.startswith("SigIgn:")).split()[1], 16)
    assert ignored & (1 << (signal.SIGINT - 1))


# --------------------------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as local:
        yield local


def test_dask_futures_work_with_wait_and_bounded(cluster):
    with executors.open_executor(scheduler=cluster.scheduler_address) as executor:
        assert executors.capacity(executor) == 2
        futures = [executor.submit(pow, 2, i) for i in range(6)]
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        assert done and all(f.done() for f in done)
        done, not_done = wait(futures)
        assert not not_done and sorted(f.result() for f in futures) == [2 ** i for i in range(6)]
        # pure=False: identical calls are run once each, not de-duplicated
        ids = [executor.submit(uuid.uuid4) for _ in range(3)]
        assert len({f.result() for f in ids}) == 3
        # an exception in a task comes back as the future's exception
        bad = executor.submit(int, "x")
        wait([bad])
        assert isinstance(bad.exception(), ValueError)
        got = dict(executors.bounded(executor, pow, ((i, (3, i)) for i in range(8)), window=2))
        assert {k: f.result() for k, f in got.items()} == {i: 3 ** i for i in range(8)}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unusable_scheduler_addresses_fail_at_once_and_exit_cleanly():
    # In a process of its own: a half-made distributed.Client used to hang for 10 s at exit
    # and print a traceback there.
    addresses = [f"tcp://127.0.0.1:{closed_port()}", "127.0.0.1", "foo://bar",
                 "tcp://127.0.0.1:notaport", "inproc://x"]
    code = ("import sys, time\nfrom regtool import executors\n"
            "for address in sys.argv[1:]:\n"
            "    start = time.monotonic()\n"
            "    try:\n        executors.dask_executor(address)\n"
            "    except executors.SchedulerError as exc:\n"
            "        print(f'{time.monotonic() - start:.2f} {exc}')\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, *addresses], capture_output=True,
                          text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(addresses), proc.stdout
    for line, address in zip(lines, addresses, strict=True):
        seconds, message = line.split(" ", 1)
        assert message.startswith(f"{address}: ") and float(seconds) < 2, line
    assert elapsed < 8, elapsed  # the interpreter's exit included


def test_a_server_that_is_not_a_scheduler_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def babble() -> None:
        for _ in range(4):  # the socket probe, then distributed's connection
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello" * 10)

    thread = threading.Thread(target=babble, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(executors.SchedulerError) as info:
            executors.dask_executor(f"tcp://127.0.0.1:{port}", timeout=2)
        assert time.monotonic() - start < 4
    finally:
        server.close()
    assert str(info.value).startswith(f"tcp://127.0.0.1:{port}: ")
    assert "scheduler" in str(info.value)
