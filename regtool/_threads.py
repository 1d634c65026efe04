"""Threads inside one registration, for large images only.

numpy's gathers, contractions and elementwise loops release the GIL, so the independent chunks
of a large image's work run on several cores from a thread pool: the two images' luminance and
pyramids, the finest level's selection strip by strip, and the sampling and spline values of a
million points chunk by chunk. Only work of at least :data:`MIN_PARALLEL_PIXELS` pixels or
:data:`MIN_PARALLEL_POINTS` points is shared out: below that a pool's start-up and hand-overs
cost more than they save, and the benchmark's timed cases (at most 1024x1024, against a
single-threaded OpenCV) stay on one thread. The count follows
:func:`regtool.resample.default_threads` (``REGTOOL_THREADS``; ``1`` turns threads off, as a
batch's worker processes do).

Every chunk writes its own part of the result, in the same order as the serial loop, so the
numbers are the same to the bit with or without threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .resample import default_threads

__all__ = ["MIN_PARALLEL_PIXELS", "MIN_PARALLEL_POINTS", "thread_count", "run_all"]

T = TypeVar("T")

#: Image-wide passes (luminance, pyramid, the finest level's selection) are shared out from
#: this many pixels per image (2048x2048), ...
MIN_PARALLEL_PIXELS = 1 << 22
#: ... and per-point work (the sampling of the points, their spline values) from this many
#: points: the finest level of a pair from 2048x2048 (1048576 points). Neither reaches the
#: benchmark's timed sizes (at most 1024x1024: 16384 points at level 0; the error bars'
#: all-pixel weighting at 512x512 has 262144). Measured on 2 cores at 4096x4096: the two images'
#: luminance and pyramids took 0.62 of their serial time (2048x2048: 0.61; 1024x1024 would
#: take 0.81: a pool's hand-overs against 6 ms of work); ``align`` took 0.81 of its
#: one-thread time at 4096x4096 and 0.82 at 2048x2048.
MIN_PARALLEL_POINTS = 1 << 19


def thread_count(work: int, minimum: int | None = None) -> int:
    """Threads for ``work`` pixels or points: 1 below ``minimum`` (MIN_PARALLEL_POINTS, or
    MIN_PARALLEL_PIXELS for image-wide passes), else the default
    (:func:`regtool.resample.default_threads`)."""
    if work < (MIN_PARALLEL_POINTS if minimum is None else minimum):
        return 1
    return default_threads()


def run_all(tasks: Sequence[Callable[[], T]], threads: int) -> list[T]:
    """Results of ``tasks`` in their order, from ``threads`` threads (serially when 1).

    The first task's exception (in the tasks' order, not in time) is raised once every task has
    finished: an error never depends on which thread was faster.
    """
    if threads <= 1 or len(tasks) <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(min(threads, len(tasks))) as pool:
        futures = [pool.submit(task) for task in tasks]
        return [f.result() for f in futures]
