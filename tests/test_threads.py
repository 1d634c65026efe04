"""Threads inside one registration (regtool._threads): the same numbers as one thread, errors
in the serial order, and no threads below the size where they pay."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from synth import make_pair, photo

import regtool
from regtool import _threads, loss, register, resample
from regtool.errors import InputError


class _CountingPool(ThreadPoolExecutor):
    """A thread pool that counts the tasks it ran and the threads that ran them."""

    tasks = 0
    threads: set[int] = set()

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        def run():
            type(self).threads.add(threading.get_ident())
            return fn(*args, **kwargs)
        type(self).tasks += 1
        return super().submit(run)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[_CountingPool]:
    _CountingPool.tasks = 0
    _CountingPool.threads = set()
    monkeypatch.setattr(_threads, "ThreadPoolExecutor", _CountingPool)
    return _CountingPool


def test_run_all_keeps_order_and_raises_the_first_tasks_error(counting: type[_CountingPool]
                                                               ) -> None:
    assert _threads.run_all([lambda i=i: i * i for i in range(7)], 3) == [i * i for i in range(7)]
    assert counting.tasks == 7

    slow_done = threading.Event()

    def first() -> None:
        # finishes after the second task has already failed
        slow_done.wait(0.2)
        raise ValueError("first")

    def second() -> None:
        raise KeyError("second")

    with pytest.raises(ValueError, match="first"):
        _threads.run_all([first, second], 2)


def test_thread_count_follows_the_size_and_the_environment(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv(resample.THREADS_ENV, "2")
    assert _threads.thread_count(_threads.MIN_PARALLEL_POINTS - 1) == 1
    assert _threads.thread_count(_threads.MIN_PARALLEL_POINTS) == 2
    pixels = _threads.MIN_PARALLEL_PIXELS
    assert _threads.thread_count(pixels - 1, pixels) == 1
    assert _threads.thread_count(pixels, pixels) == 2
    monkeypatch.setenv(resample.THREADS_ENV, "1")
    assert _threads.thread_count(1 << 26) == 1
    # every timed size of the benchmark stays on one thread: the 512x512 error bars' all-pixel
    # weighting (262144 points), a 1024x1024 image's passes
    monkeypatch.setenv(resample.THREADS_ENV, "2")
    assert _threads.thread_count(512 * 512) == 1
    assert _threads.thread_count(1024 * 1024, pixels) == 1
    assert _threads.thread_count(2048 * 2048, pixels) == 2


def _noisy_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # the faint retina crop under noise: the error bars try their weightings on more points
    return make_pair(photo(2), (176, 208), (3.3, -2.1), 4.0, noise=0.02, seed=5)


def _fields(r: regtool.Result) -> tuple:
    u = r.uncertainty
    return (r.matrix.tobytes(), r.converged, r.reason, r.loss, r.ncc,
            u.endpoint_px, u.reason, tuple(u.shift or ()), u.theta_deg,
            tuple(rec.iterations for rec in r.levels))


def test_threaded_registration_gives_the_same_numbers(monkeypatch: pytest.MonkeyPatch,
                                                      counting: type[_CountingPool]) -> None:
    target, source, _ = _noisy_pair()
    # small chunks and no size threshold, so that this small pair takes every threaded path
    monkeypatch.setattr(loss, "TAPS_CHUNK", 1000)
    monkeypatch.setenv(resample.THREADS_ENV, "1")
    serial = regtool.align(target, source)
    assert counting.tasks == 0
    monkeypatch.setattr(_threads, "MIN_PARALLEL_POINTS", 1)
    monkeypatch.setattr(loss, "MIN_PARALLEL_PIXELS", 1)
    monkeypatch.setattr(register, "MIN_PARALLEL_PIXELS", 1)
    monkeypatch.setenv(resample.THREADS_ENV, "2")
    threaded = regtool.align(target, source)
    assert counting.tasks > 20 and len(counting.threads) == 2
    assert serial.converged and serial.uncertainty.endpoint_px is not None
    assert _fields(threaded) == _fields(serial)


def test_default_size_threshold_keeps_small_pairs_on_one_thread(
        monkeypatch: pytest.MonkeyPatch, counting: type[_CountingPool]) -> None:
    monkeypatch.setenv(resample.THREADS_ENV, "2")
    target, source, _ = _noisy_pair()
    regtool.align(target, source)
    assert counting.tasks == 0


def test_threaded_inputs_report_the_targets_error_first(monkeypatch: pytest.MonkeyPatch,
                                                        counting: type[_CountingPool]) -> None:
    monkeypatch.setattr(register, "MIN_PARALLEL_PIXELS", 1)
    monkeypatch.setenv(resample.THREADS_ENV, "2")
    flat = np.zeros((64, 64), dtype=np.uint8)
    for _ in range(5):
        with pytest.raises(InputError) as err:
            regtool.align(flat, np.full((64, 64), np.nan))
        assert err.value.which == "target"
    assert counting.tasks >= 2
    with pytest.raises(InputError) as err:
        regtool.align(photo(0)[:64, :64], flat)
    assert err.value.which == "source"
