"""The coarse-to-fine driver: it calls the rooms of the engine in order.

:mod:`regtool.prepare` (luminance and masks), :mod:`regtool.pyramid`, :mod:`regtool.init` (the
global search), :mod:`regtool.loss` and :mod:`regtool.optimize` (one level's solve),
:mod:`regtool.quality` (the match decision), :mod:`regtool.uncertainty` (the error bars) and
:mod:`regtool.result` (what is returned). Nothing here computes beyond choosing what runs when.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from . import ambiguity, pyramid
from . import init as global_init
from . import loss as L
from . import quality as Q
from . import uncertainty as U
from ._threads import MIN_PARALLEL_PIXELS, run_all, thread_count
from .errors import InputError
from .optimize import DEFAULT_MAX_ITER, SOLVERS
from .prepare import coarse_confirms, luminance, luminance_deferred
from .result import IterationRecord, LevelRecord, Result
from .transform import (
    center_params,
    from_level,
    image_center,
    rigid_matrix,
    rigid_params,
    to_level,
)

__all__ = ["align", "Result", "LevelRecord", "IterationRecord", "OPTIMIZERS", "METRICS",
           "DEFAULT_OPTIMIZER", "DEFAULT_METRIC"]

OPTIMIZERS = ("gauss-newton", "scaled", "gd")
METRICS = ("ssd", "ncc")
DEFAULT_OPTIMIZER = "gauss-newton"
DEFAULT_METRIC = "ncc"
# Sampled source points stay this far (level pixels) inside the source's outer pixel centers.
# Level 0 is the original image: one pixel keeps the spline away from its mirrored border.
# Coarser levels were blurred with edge padding as well: two pixels cover that filter's reach.
MARGIN_FINE = 1.0
MARGIN_COARSE = 2.0
# Coarse levels only have to land inside the next level's capture range; a hundredth of a
# level pixel is cheap there and saves iterations where pixels are many.
COARSE_TOL = 0.01
# The global search runs at the level whose shorter side is 48 to 95 pixels: enough texture for
# the spectra and phase correlation, and a few milliseconds of FFTs.
SEARCH_SIDE = 48
# The level-1 answer's white-noise covariance is scaled by this before it is compared with level
# 0's (:func:`_level1_is_better`): the pyramid filter correlates level 1's residuals.
LEVEL1_NOISE_SCALE = 1.6
# The blurred weighting of the error bars' step (:func:`regtool.uncertainty.refine`) uses up to
# this many points of the answer's level, all of them at 251x301: on the benchmark's faint noisy
# cases there it took the mean-square error from 7.3 to 3.2 times the bound's (medium tier, 4
# draws per case) where the level's own 16384 points took it to 4.5.
REFINE_POINTS = 1 << 16
# ... and only on images of at most this many pixels: at 1024x1024 (where level 1's answer
# already stands on 65536 points) it changed no answer of the benchmark's noisy medium and
# hard tiers over 3 draws per case, and cost up to 20 ms.
REFINE_MAX_PIXELS = 1 << 18
# Where level 1's answer won, on images of at most this many pixels, the blurred weighting is
# also tried on every level-0 pixel (:func:`_error_bars`).
REFINE_LEVEL0_MAX_PIXELS = 1 << 18
# Level 1 registers on up to this many points: it may finish the registration
# (:func:`_level1_is_better`), and there 65536 points (a quarter of level 1 at 1024x1024) gave
# 1.1-1.2 times the bound against 1.6-2.0 for level 0's 16384.
LEVEL1_MAX_POINTS = 1 << 16
# Level 0 stops after its first Gauss-Newton iteration when level 1's answer is expected to be
# closer by more than this share of the mean endpoint error, judged from what that iteration
# held (at level 1's answer): over the benchmark's cases the judgement at level 1's answer and
# at level 0's converged one differed by at most 0.2% on noisy pairs (2.3% on noise-free ones,
# where level 0 wins by 4x and more), so a 2% margin leaves every decision as it was, and the
# level's remaining iterations (1 to 16, ~0.6 ms each at 16384 points) are saved.
LEVEL1_EARLY_MARGIN = 0.02
# ... where level 1 can win at all: level 0 keeping at most this share of its pixels. Level 1
# won on half the noisy cases at 512x512 (level 0 keeps 6%) and on all at 1024x1024 (1.6%),
# never at 251x301 (22%), where the check would only cost the first iteration twice.
LEVEL1_EARLY_SHARE = 1 / 8


# The finest level of an image of at least LARGE_PIXELS pixels registers on up to a
# LARGE_SHARE-th of them (at most LARGE_MAX_POINTS) instead of MAX_POINTS. There its 16384
# points kept too little of the image's information for either level 0 or level 1 to come near
# the Cramer-Rao bound: on the scaling benchmark's noisy 2048x2048 pair (6 noise draws) the
# median error went from 2.2 to 1.15 times the bound and the mean-square ratio from 6.1 to 1.8
# with a sixteenth of the pixels (262144 points), the call from 66 to 164 ms (OpenCV's
# pyramidal ECC: 535 ms). An eighth (524288 points, once sampling in chunks made a point
# cheaper) took the error bars from 1.23-1.29 to 1.11-1.15 times the bound and the mean-square
# ratio from 1.6-1.8 to 1.25-1.6 (three scenes, 6-8 draws each) for 70-90 ms more; a quarter
# gained a few percent more for twice that. At 4096x4096 (capped) the bars went from 1.84 to
# 1.49 times the bound, 195 -> 247 ms. At 1024x1024, where the default must stay within a
# third of ECC's time, 32768 level-0 points were slower and no closer (level 1's answer at
# 65536 points wins there), so smaller images keep MAX_POINTS. A quarter (up to 1048576
# points), over 24 noise draws of that pair: the bars from 1.14 to 1.06 times the bound, the
# mean-square ratio from 1.71 to 1.53 (seed 0) and from 1.12 to 0.88 (seed 21), 176 -> 294 ms
# (OpenCV's pyramidal ECC: 628 ms); at 4096x4096 the bars from 1.49 to 1.27 times the bound,
# 228 -> 331 ms.
LARGE_PIXELS = 1 << 22
LARGE_SHARE = 4
LARGE_MAX_POINTS = 1 << 20


def _points(k: int, pixels: int = 0) -> dict[str, int]:
    """How many points level ``k`` of ``pixels`` pixels registers on (see
    :func:`regtool.loss.prepare_level`)."""
    # Level 1 hands level 0 its start, and on noisy images level 0 can do little better than
    # that start (its loss then moves with the noise more than with hundredths of a pixel):
    # it keeps the finest level's floor. Coarser levels only need the next one's capture range.
    floor = L.DENSE_LIMIT if k <= 1 else L.MIN_POINTS_COARSE
    cap = LEVEL1_MAX_POINTS if k == 1 else L.MAX_POINTS
    if k == 0 and pixels >= LARGE_PIXELS:
        cap = max(cap, min(pixels // LARGE_SHARE, LARGE_MAX_POINTS))
    return {"min_points": floor, "max_points": cap}


def _check_options(optimizer: str, metric: str, tol: float, max_iter: int | None,
                   min_overlap: float, init: object) -> None:
    if isinstance(init, str) and init not in ("auto", "none"):
        raise ValueError(f"init must be 'auto', 'none' or (tx, ty, theta_deg), not {init!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {optimizer!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive number of pixels, not {tol!r}")
    if max_iter is not None and max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, not {max_iter!r}")
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must be in (0, 1], not {min_overlap!r}")


@dataclass
class _Pyramids:
    """Both images and their masks, level 0 (full resolution) first."""

    f: list[np.ndarray]
    g: list[np.ndarray]
    fm: list[np.ndarray | None]
    gm: list[np.ndarray | None]

    def level(self, k: int, margin: float) -> L.LevelImages:
        return L.prepare_level(self.f[k], self.fm[k], self.g[k], self.gm[k], margin,
                               **_points(k, self.f[k].size))


@dataclass
class _Descent:
    """What the level-by-level descent ended with."""

    matrix: np.ndarray
    records: list[LevelRecord]
    converged: bool
    reason: str | None
    loss: float
    finest: L.LevelImages | None  # the data of the level the answer comes from
    answer_level: int = 0  # 0, or 1 when level 1's answer is expected to be closer
    # that level's solve's outcome (its Hessian, its last accepted evaluation: the error bars')
    answer: Any = None
    # level 0's data and solve's outcome, kept where level 1's answer won (for the error bars'
    # weightings on every level-0 pixel)
    level0: L.LevelImages | None = None
    level0_answer: Any = None

    @property
    def evaluation(self) -> L.Evaluation | None:
        return None if self.answer is None else self.answer.evaluation


def _luminance(image: np.ndarray, which: str, mask: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`regtool.prepare.luminance`, and the image's level 1 when it was made for the
    checks of the values (:func:`regtool.prepare.coarse_confirms`), to start its pyramid."""
    lum, valid, unchecked = luminance_deferred(image, which, mask)
    if not unchecked:
        return lum, valid, None
    first = pyramid.downsample(lum)
    if coarse_confirms(first):
        return lum, None, first
    lum, valid = luminance(image, which, mask)  # raises, or finds the NaNs to mask
    return lum, valid, None


def _pixels(image: object) -> int:
    """Pixels of an input image (0 for what is not an array of at least 2 dimensions: its
    error comes from :func:`_luminance`)."""
    shape = getattr(image, "shape", ())
    return int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0


def _level_count(f: np.ndarray, g: np.ndarray, levels: int | None) -> int:
    n_max = pyramid.max_levels(f.shape, g.shape)
    if levels is None:
        return pyramid.auto_levels(f.shape, g.shape)
    if levels < 1 or levels > n_max:
        raise InputError(f"levels must be between 1 and {n_max} for these image sizes "
                         f"(the coarsest level needs at least 8 pixels a side), not {levels}")
    return int(levels)


def _plain_start(f: np.ndarray, g: np.ndarray, init: object
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """The start before any search: the given transform, or centers on centers."""
    if init is not None and not isinstance(init, str):
        tx0, ty0, deg0 = (float(v) for v in init)  # type: ignore[union-attr]
        return rigid_matrix(tx0, ty0, math.radians(deg0)), {"method": "given"}
    cf, cg = image_center(f.shape), image_center(g.shape)
    return rigid_matrix(cg[0] - cf[0], cg[1] - cf[1], 0.0), {"method": "none"}


def _search(pyr: _Pyramids, k: int, plain: np.ndarray, min_overlap: float
            ) -> tuple[np.ndarray, dict[str, Any], L.LevelImages]:
    """The global search at level ``k``: its start (level 0), what it saw, its level data."""
    t_init = time.perf_counter()
    level = pyr.level(k, MARGIN_COARSE)
    start, info = global_init.search(level, pyr.f[k], pyr.g[k], pyr.fm[k], pyr.gm[k],
                                     to_level(plain, k), min_overlap)
    info.update(method="auto", level=k, time_s=round(time.perf_counter() - t_init, 6))
    return from_level(start, k), info, level


def _schedule(n_levels: int, searched: int | None) -> list[int]:
    """The levels the descent visits, coarsest first; always ends with levels 1 and 0."""
    if searched is None:
        return list(range(n_levels - 1, -1, -1))
    # After a global search, levels coarser than the one searched have nothing left to find,
    # and down to level 2 the descent can halve the resolution twice per step: a level
    # converged to a hundredth of its pixels lands well inside the capture range of the level
    # four times finer. Levels 1 and 0 always run: on noisy images the finest level's loss
    # moves with the noise about as much as with a few hundredths of a pixel, so it needs a
    # start that close.
    first = min(n_levels - 1, searched)
    return [*range(first, 1, -2), *range(min(first, 1), -1, -1)]


def _descend(pyr: _Pyramids, schedule: list[int], m: np.ndarray, prepared: dict[int, Any],
             solver: Any, metric: str, tol: float, iters: int, min_overlap: float,
             progress: Callable[[LevelRecord, int, int], None] | None, *,
             early: bool = False,
             log: Callable[[IterationRecord], None] | None = None,
             t_start: float = 0.0) -> _Descent:
    """Solve level by level along ``schedule``, handing each result down.

    ``early`` (Gauss-Newton only): level 0 may stop after its first iteration when level 1's
    answer is clearly the better one (:func:`_finest`). ``log`` receives each iteration of
    each level (:class:`IterationRecord`), its step in level-0 pixels and its time since
    ``t_start`` (a :func:`time.perf_counter` value).
    """
    records: list[LevelRecord] = []
    converged, reason, loss_value = False, None, math.inf
    stopped = False
    finest = None
    levels: dict[int, L.LevelImages] = {}
    answers: dict[int, Any] = {}
    for index, k in enumerate(schedule):
        t_level = time.perf_counter()
        margin = MARGIN_FINE if k == 0 else MARGIN_COARSE
        level = prepared.pop(k, None) if margin == MARGIN_COARSE else None
        if level is None:
            level = pyr.level(k, margin)
        center = image_center(pyr.f[k].shape)
        level_tol = tol if k == 0 else max(tol, COARSE_TOL)
        level_log = None if log is None else _level_log(log, k, t_start)
        if k == 0 and early and 1 in answers and answers[1].converged:
            out, stopped = _finest(solver, level, to_level(m, k), center, metric, level_tol,
                                   iters, min_overlap, answers[1], pyr.f[0].shape, level_log)
        else:
            out = solver(level, to_level(m, k), center, metric, level_tol, iters, min_overlap,
                         log=level_log)
        answers[k] = out
        if k <= 1:
            levels[k] = level
        m = from_level(out.matrix, k)
        loss_value = out.loss
        # stopped early, level 0 counts as converged: it was judged not to improve on level 1
        converged, reason = (True, None) if stopped else (out.converged, out.reason)
        rec = LevelRecord(k, pyr.f[k].shape, out.iterations, out.loss, converged,
                          time.perf_counter() - t_level)
        records.append(rec)
        if progress is not None:
            progress(rec, index, len(schedule))
        if k == 0:
            finest = level
        if reason is not None and not reason.startswith("did not converge"):
            break  # a failure (overlap lost, divergence): finer levels cannot rescue it
    answer_level = 0
    level0 = None
    if stopped or converged and finest is not None and _level1_is_better(answers, finest.shape):
        m = from_level(answers[1].matrix, 1)
        level0 = finest
        finest, answer_level = levels[1], 1
    if not converged and reason is None:
        reason = "stopped before the finest level"
    if reason is not None and reason.startswith("did not converge") and records:
        reason = f"{reason} at level {records[-1].level}"
    return _Descent(m, records, converged, reason, loss_value, finest, answer_level,
                    answers.get(answer_level), level0,
                    answers.get(0) if level0 is not None else None)


def _level_log(log: Callable[[IterationRecord], None], k: int, t_start: float
               ) -> Callable[[dict[str, Any]], None]:
    """A solver's ``log`` at level ``k`` that hands ``log`` level-0 records."""
    scale = 2.0**k

    def note(row: dict[str, Any]) -> None:
        step = row["step_px"]
        log(IterationRecord(k, row["iteration"], row["loss"],
                            None if step is None else step * scale, row["damping"],
                            row["accepted"], 1e3 * (time.perf_counter() - t_start)))
    return note


def _finest(solver: Any, level: L.LevelImages, start: np.ndarray, center: tuple[float, float],
            metric: str, tol: float, iters: int, min_overlap: float, level1: Any,
            shape: tuple[int, int],
            log: Callable[[dict[str, Any]], None] | None = None) -> tuple[Any, bool]:
    """Level 0's solve, and whether it stopped after one iteration for level 1's answer.

    The first iteration evaluates level 0 at level 1's answer; when that already shows level
    1's answer to be the closer one by LEVEL1_EARLY_MARGIN (:func:`_level1_is_better`), the
    rest of the level cannot change the choice and is skipped. Otherwise level 0 goes on one
    iteration per call (:func:`_one_by_one`), which is one solve's path exactly, at the cost of
    a solver's set-up per iteration (0.1 ms at 16384 points, against 0.7 ms for solving again
    from the start). Only where level 0 keeps at most LEVEL1_EARLY_SHARE of its pixels;
    elsewhere level 0 is solved as it is.
    """
    n_pixels = level.shape[0] * level.shape[1]
    if iters == 1 or level.dense or level.target.size > LEVEL1_EARLY_SHARE * n_pixels:
        return solver(level, start, center, metric, tol, iters, min_overlap, log=log), False
    # The iteration log is kept back until it is known which calls make the answer: the calls
    # one by one (numbered as one solve's iterations), or one solve from the start.
    rows: list[dict[str, Any]] = []
    number = [1]

    def keep(row: dict[str, Any]) -> None:
        rows.append({**row, "iteration": number[0]})

    hold = None if log is None else keep
    first = solver(level, start, center, metric, tol, 1, min_overlap, log=hold)
    out, stopped = first, False
    if first.converged or not (first.reason or "").startswith("did not converge"):
        pass  # the whole solve: it ended at its first iteration
    elif _level1_is_better({1: level1, 0: first}, shape, margin=LEVEL1_EARLY_MARGIN,
                           need_converged=False):
        stopped = True
    else:
        out = _one_by_one(solver, level, start, first, center, metric, tol, iters, min_overlap,
                          hold, number)
        if out is None:  # where one solve would not have gone on as a new one does
            rows.clear()
            out = solver(level, start, center, metric, tol, iters, min_overlap, log=log)
    if log is not None:
        for row in rows:
            log(row)
    return out, stopped


# Iterations :func:`_one_by_one` takes before it hands over to one solve from the start.
ONE_BY_ONE_MAX = 12


def _one_by_one(solver: Any, level: L.LevelImages, start: np.ndarray, first: Any,
                center: tuple[float, float], metric: str, tol: float, iters: int,
                min_overlap: float, log: Callable[[dict[str, Any]], None] | None = None,
                number: list[int] | None = None) -> Any | None:
    """Gauss-Newton from its first iteration ``first`` on, one iteration per call, as one
    solve goes on; None where the calls could not follow it (then solve from the start).

    A new call starts undamped and without a previous point, as one solve's iterations are
    while none is rejected: one solve rejects a step whose objective rose by more than 1e-6 of
    itself and a quarter of the predicted gain (:func:`regtool.optimize.gauss_newton`), which
    is checked here on each call's first evaluation. Failures and the iteration cap are left
    to one solve.
    """
    prev_matrix, prev = start, first
    for n in range(2, min(iters, ONE_BY_ONE_MAX) + 1):
        if number is not None:
            number[0] = n  # the iteration this call is of one solve
        out = solver(level, prev.matrix, center, metric, tol, 1, min_overlap, log=log)
        if out.hessian is None or prev.hessian is None or prev.gradient_noise is None:
            return None  # a failure (its reports differ from one solve's)
        step = np.array(center_params(np.linalg.inv(prev.matrix) @ prev_matrix, center))
        predicted = float(step @ prev.hessian @ step) / prev.gradient_noise[0, 0]
        rise = out.objective - prev.objective
        if rise > 1e-6 * prev.objective and rise > 0.25 * predicted:
            return None
        out.iterations = n
        if out.converged:
            return out
        if out.reason is not None and not out.reason.startswith("did not converge"):
            return None
        prev_matrix, prev = prev.matrix, out
    return None


def _level1_is_better(answers: dict[int, Any], shape: tuple[int, int], margin: float = 0.0,
                      need_converged: bool = True) -> bool:
    """Whether level 1's answer is expected to be closer than level 0's (both converged).

    On noisy images the finest level is often the worse estimator: its points hold only part of
    the image's information (16384 of a million pixels at 1024x1024 kept 5-46% of it), and its
    target gradients are noisier relative to the signal than a level that averaged four pixels
    into one, while a smooth (enlarged) image has little signal above level 1's band. Measured
    on the benchmark's noisy tiers: finishing at level 1 (64k points) instead of level 0 took
    the median error from 1.6-2.0 to 1.1-1.2 times the Cramer-Rao bound at 1024x1024. On a
    noise-free pair the residual of level 0 is far smaller and level 0 wins. Both answers'
    white-noise covariances come from what the solver held (:func:`U.quick_covariance`);
    level 1's is scaled by LEVEL1_NOISE_SCALE for the correlation its pyramid filter gives
    the residuals.
    """
    if 0 not in answers or 1 not in answers:
        return False
    covs = []
    for k in (1, 0):
        out = answers[k]
        if (need_converged and not out.converged) or out.hessian is None:
            return False
        scale = LEVEL1_NOISE_SCALE if k == 1 else 1.0
        cov = U.quick_covariance(out.hessian, out.objective, out.gradient_noise, scale)
        if cov is None:
            # Level 1 without a covariance settles nothing. Level 0 without one is all noise
            # in some direction: the target's gradient noise makes its whole J^T J there, and
            # its steps shrink by that share each iteration
            return k == 0
        d = np.diag([2.0**k, 2.0**k, 1.0])  # level-k shifts in level-0 pixels
        covs.append(d @ cov @ d)
    return U.mean_endpoint(covs[0], shape) < (1.0 - margin) * U.mean_endpoint(covs[1], shape)


def _more_points(pyr: _Pyramids, k: int, count: int = REFINE_POINTS
                 ) -> Callable[[], L.LevelImages]:
    """Level ``k``'s data on up to ``count`` points (every pixel of a smaller level), made
    when called."""
    margin = MARGIN_FINE if k == 0 else MARGIN_COARSE
    return lambda: L.prepare_level(pyr.f[k], pyr.fm[k], pyr.g[k], pyr.gm[k], margin,
                                   max_points=count, min_points=count)


def _noisy(out: Any) -> bool:
    """Whether a solve's target gradients are noisy enough for the weightings to be tried."""
    return (out is not None and out.hessian is not None and out.gradient_noise is not None
            and U.gradient_noise_share(out.hessian, out.objective, out.gradient_noise)
            >= U.SMOOTH_SHARE)


def _error_bars(descent: _Descent, m: np.ndarray, metric: str, converged: bool,
                pyr: _Pyramids, k: int, level: L.LevelImages | None, min_overlap: float
                ) -> tuple[np.ndarray, U.Uncertainty]:
    """The answer and its error bars, or ``m`` and why there are none.

    ``k`` is the coarse level where rival matches are looked for (the search level) and
    ``level`` its data when the search prepared it. Where the answer level's target gradients
    are noisy (:func:`regtool.uncertainty.gradient_noise_share`), the answer may move to the
    root of an estimating equation on more points, weighted by blurred or plain gradients,
    which is expected to be closer (:func:`regtool.uncertainty.refine`); where level 1's answer
    won and level 0's gradients are noisy, also to the blurred weighting's root on every
    level-0 pixel.
    """
    if not converged:
        return m, U.Uncertainty.unavailable("the registration did not converge or did not "
                                            "match")
    if descent.finest is None:
        return m, U.Uncertainty.unavailable("the finest level did not run")
    if level is None:
        level = pyr.level(k, MARGIN_COARSE)
    other = ambiguity.rival(level, pyr.f[k], pyr.fm[k], to_level(m, k), min_overlap)
    if other is not None:
        return m, U.Uncertainty.unavailable(
            f"another match almost as good lies {other['distance_px'] * 2 ** k:.1f} px away "
            "(a periodic or repeated texture): the answer may be that far off, which no "
            "error bar around it describes")
    k = descent.answer_level
    out = descent.answer
    # the weightings on more points (made and sampled: 2-5 ms) only where the gradients' noise
    # makes them worth trying
    small = pyr.fm[k] is None and pyr.f[0].size <= REFINE_MAX_PIXELS
    at = to_level(m, k)
    answer, bars = U.refine(descent.finest, at, image_center(descent.finest.shape), metric,
                            level_index=k, full_shape=pyr.f[0].shape,
                            evaluation=descent.evaluation, image=pyr.f[k],
                            points=_more_points(pyr, k) if small and _noisy(out) else None)
    answer = m if answer is at else from_level(answer, k)
    # (``small`` at level 1: no target mask at level 0 either, the masks' pyramid keeps None)
    if (k == 1 and small and pyr.f[0].size <= REFINE_LEVEL0_MAX_PIXELS
            and bars.endpoint_px is not None
            and descent.level0 is not None and _noisy(descent.level0_answer)):
        # Level 1's answer stands on a quarter as many pixels, each an average of four through
        # the pyramid's filter: where level 0's gradients are noisy, the blurred weighting on
        # every level-0 pixel keeps what that averaging lost. On the benchmark's faint 512x512
        # retina crop (40 draws) it took the error from 1.29-1.45 to 0.98-1.25 times the
        # bound per parameter, though its bars (1.16 times the bound's endpoint) hardly differ
        # from level 1's (1.14-1.23): its root wins wherever its expected error is below
        # level 1's, without SMOOTH_GAIN's margin, since it holds strictly more information
        # (all of level 0's pixels). About 25 ms at 512x512, on the cases past the gate only.
        center0 = image_center(pyr.f[0].shape)
        level0, bars0 = U.refine(descent.level0, answer, center0, metric,
                                 full_shape=pyr.f[0].shape, image=pyr.f[0],
                                 points=_more_points(pyr, 0, pyr.f[0].size),
                                 weightings=("blurred",), against=bars.endpoint_px)
        if level0 is not answer:
            return level0, bars0
    return answer, bars


def align(
    target: np.ndarray,
    source: np.ndarray,
    *,
    levels: int | None = None,
    optimizer: str = DEFAULT_OPTIMIZER,
    metric: str = DEFAULT_METRIC,
    max_iter: int | None = None,
    tol: float = 1e-3,
    init: str | Sequence[float] | None = "auto",
    min_overlap: float = 0.25,
    target_mask: np.ndarray | None = None,
    source_mask: np.ndarray | None = None,
    progress: Callable[[LevelRecord, int, int], None] | None = None,
    log: Callable[[IterationRecord], None] | None = None,
) -> Result:
    """Find the rigid transform that best maps ``target``'s pixels onto ``source``.

    Minimizes the metric between ``f = target`` and ``g(Psi(x))``, ``Psi(x) = R(theta) x + t``,
    coarse to fine over a Gaussian pyramid. Rotation is handled about the target's center
    internally and reported about the origin (``tx, ty, theta``) and as ``matrix``.

    Parameters
    ----------
    target, source : ndarray
        ``(H, W)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA; bool, integer or float; sizes
        may differ. Estimation uses luminance (integers scaled to [0, 1]); NaN and infinite
        pixels and fully transparent ones are left out.
    levels : int, optional
        Pyramid levels; by default chosen so the coarsest shorter side is 24 to 47 pixels.
    optimizer : {"gauss-newton", "scaled", "gd"}
        ``gauss-newton``: inverse-compositional Gauss-Newton with Levenberg-Marquardt damping
        (the default: most accurate and fastest in the benchmark). ``scaled``: gradient descent on
        ``(tx, ty, rho * theta)`` with a backtracking line search. ``gd``: the naive fixed-step
        descent on the seed's ``(tx, ty, theta)``, kept as a baseline.
    metric : {"ssd", "ncc"}
        Mean squared difference, or zero-mean normalized cross-correlation (insensitive to a gain
        and offset between the images' intensities).
    max_iter : int, optional
        Iteration cap per level (default 50 for gauss-newton, 300 for the others).
    tol : float
        Stop a level when its update moves no pixel by more than ``tol`` pixels of the full
        image (coarser levels stop at 0.01 of their own pixels).
    init : "auto", "none", None or (tx, ty, theta_deg)
        Where the descent starts. ``"auto"`` (the default): a global search for the rotation
        over the whole circle (from the images' magnitude spectra) and the translation (phase
        correlation) at a coarse level, so any rotation and large shifts are found.
        ``"none"``/None: the images' centers matched, no rotation. A tuple: that transform in
        the public convention (e.g. a previous result).
    min_overlap : float
        Fail when fewer than this fraction of the target's usable pixels map inside the source
        (checked at every iteration of every level).
    target_mask, source_mask : ndarray, optional
        Boolean (or nonzero = use) arrays of the images' ``(H, W)``: pixels to leave out, such
        as scale bars, time stamps, black borders or saturated areas. Combined with NaN,
        infinite and fully transparent pixels, which are always left out.
    progress : callable, optional
        Called as ``progress(record, index, total)`` after each level.
    log : callable, optional
        Called as ``log(record)`` after each iteration of each level, with an
        :class:`IterationRecord` (level, iteration, loss, step in full-resolution pixels,
        damping, accepted, milliseconds since the call): what to look at when a registration
        goes wrong. It changes nothing in the result.

    Returns
    -------
    Result

    Raises
    ------
    InputError
        An input cannot be registered (wrong shape, too small, constant, mostly NaN); its
        ``which`` says whether the target or the source.
    ValueError
        An option is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import ndimage
    >>> import regtool
    >>> rng = np.random.default_rng(0)
    >>> target = ndimage.gaussian_filter(rng.random((128, 128)), 3)
    >>> # the scene moves 2.5 px left and 1.25 px down: source(x - 2.5, y + 1.25) = target(x, y)
    >>> source = ndimage.shift(target, (1.25, -2.5), order=3, mode="nearest")
    >>> r = regtool.align(target, source)
    >>> bool(r.converged), round(r.tx, 3), round(r.ty, 3), round(r.theta_deg, 3)
    (True, -2.5, 1.25, 0.0)
    >>> aligned = r.warp(source)  # source resampled on the target's grid
    """
    t_start = time.perf_counter()
    _check_options(optimizer, metric, tol, max_iter, min_overlap, init)
    # the two images' luminance and pyramids are independent: on large images, one thread each
    # (the target's error first when both are bad, as serially)
    threads = thread_count(min(_pixels(target), _pixels(source)), MIN_PARALLEL_PIXELS)
    (f, f_mask, f1), (g, g_mask, g1) = run_all(
        [partial(_luminance, target, "target", target_mask),
         partial(_luminance, source, "source", source_mask)], threads)
    n_levels = _level_count(f, g, levels)
    iters = max_iter if max_iter is not None else DEFAULT_MAX_ITER[optimizer]

    m, init_info = _plain_start(f, g, init)
    auto = isinstance(init, str) and init == "auto"
    k_search = pyramid.auto_levels(f.shape, g.shape, min_side=SEARCH_SIDE) - 1
    # the search level is also where rival matches are looked for, with or without a search
    n_build = max(n_levels, k_search + 1)
    pyr_f, pyr_g = run_all([partial(pyramid.build, f, n_build, f1),
                            partial(pyramid.build, g, n_build, g1)], threads)
    pyr = _Pyramids(pyr_f, pyr_g, pyramid.build_mask(f_mask, n_build),
                    pyramid.build_mask(g_mask, n_build))
    prepared: dict[int, L.LevelImages] = {}
    searched = None
    if auto:
        m, init_info, searched = _search(pyr, k_search, m, min_overlap)
        prepared[k_search] = searched
    tx0, ty0, th0 = rigid_params(m)
    init_info.update(tx=tx0, ty=ty0, theta_deg=math.degrees(th0))

    descent = _descend(pyr, _schedule(n_levels, k_search if auto else None), m, prepared,
                       SOLVERS[optimizer], metric, tol, iters, min_overlap, progress,
                       early=optimizer == "gauss-newton", log=log, t_start=t_start)
    tx, ty, theta = rigid_params(descent.matrix)
    m = rigid_matrix(tx, ty, theta)  # re-orthonormalize what round-off left
    quality = Q.assess(f, f_mask, g, g_mask, m)
    converged, reason = descent.converged, descent.reason
    if converged:
        reason = Q.verdict(quality, metric)
        converged = reason is None
    refined, bars = _error_bars(descent, m, metric, converged, pyr, k_search, searched,
                                min_overlap)
    if refined is not m:  # moved by an error bar or so: the quality above still holds
        tx, ty, theta = rigid_params(refined)
        m = rigid_matrix(tx, ty, theta)
    center0 = image_center(f.shape)
    sx, sy, _ = center_params(m, center0)
    return Result(
        matrix=m[:2].copy(), tx=tx, ty=ty, theta=theta, center=center0, shift=(sx, sy),
        metric=metric, optimizer=optimizer, loss=descent.loss, converged=converged,
        reason=None if converged else reason, levels=descent.records,
        time_s=time.perf_counter() - t_start,
        overlap=L.overlap_fraction(m, f.shape, g.shape),
        target_shape=(int(f.shape[0]), int(f.shape[1])),
        source_shape=(int(g.shape[0]), int(g.shape[1])),
        ncc=quality.ncc, residual=quality.residual, detail_ncc=quality.detail_ncc,
        init=init_info, answer_level=descent.answer_level,
        uncertainty=bars,
    )
