"""Per-level solvers: plain gradient descent, scaled gradient descent, Gauss-Newton (LM).

Each solver takes one pyramid level (:class:`regtool.loss.LevelImages`), a starting target->source
matrix in that level's pixel coordinates and the rotation center, and returns a
:class:`LevelOutcome`. None of them prints, reads files or keeps state between calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from . import loss as L
from . import uncertainty as U
from .transform import about_center, center_params, max_displacement, rigid_matrix, rigid_params

__all__ = ["LevelOutcome", "IterationLog", "SOLVERS", "gauss_newton", "scaled_gd", "plain_gd",
           "DEFAULT_MAX_ITER"]

DEFAULT_MAX_ITER = {"gauss-newton": 50, "scaled": 300, "gd": 300}

#: What a solver's ``log`` callback receives once per iteration, as a dict with the keys
#: ``iteration`` (1, 2, ...: the ``iterations`` a :class:`LevelOutcome` counts), ``loss`` (the
#: reported loss at the point the iteration evaluated; NaN when the overlap was lost there),
#: ``step_px`` (the largest displacement, in the level's pixels, of the step the iteration
#: took; None when it took none), ``damping`` (``gauss_newton``: the Levenberg-Marquardt
#: lambda of that step; ``scaled_gd``: its step length alpha; ``plain_gd``: the fixed rate) and
#: ``accepted`` (False when the point raised the objective and was rejected: only
#: ``gauss_newton`` rejects points, the others' line search or fixed rate never does; False too
#: on a row that ends the level in failure: the overlap lost, ``plain_gd`` diverging).
IterationLog = Callable[[dict[str, Any]], None]


@dataclass
class LevelOutcome:
    """Result of one level's solve."""

    matrix: np.ndarray
    iterations: int
    loss: float
    converged: bool
    reason: str | None
    overlap: float
    # Gauss-Newton only, at its last accepted point: the (centred) J^T J over the overlap, the
    # objective mean(e**2), and that point's evaluation (the error bars read it: the answer is
    # at most the tolerance away from it).
    hessian: np.ndarray | None = None
    objective: float = math.nan
    evaluation: L.Evaluation | None = field(default=None, repr=False)
    # the level and rotation center of the solve, for gradient_noise
    level: L.LevelImages | None = field(default=None, repr=False)
    center: tuple[float, float] | None = None

    @cached_property
    def gradient_noise(self) -> np.ndarray | None:
        """What unit noise in the target's gradients adds to ``hessian`` at the last accepted
        point (see :func:`regtool.uncertainty.quick_covariance`); None without one. Made on
        first use: only the driver's level choice reads it."""
        if self.evaluation is None or self.level is None or self.center is None:
            return None
        return _gradient_noise(self.level, self.center, self.evaluation.valid,
                               self.evaluation.residual.count)


# A step the loss rejects ends the level at the last accepted point when that step moved the
# image by less than this many times the white-noise error there (:func:`_white_noise_error`),
# instead of being retried with ten times the damping until it falls below the tolerance. On
# noisy faint images the retries picked among points the noise cannot tell apart, sometimes in
# a cycle of accepted and rejected points (a retina crop at 251x301: 17 iterations at level 0,
# 92 ms; now 2 and 59 ms, the answer 0.0002 px away). Over the benchmark's noisy tiers at
# 251x301 and 512x512 (5 draws per case) the medians and mean squares over the bound moved by at
# most 0.01, the hard tier at 251x301 took 0.83 of the time (median of per-case ratios), and no
# unrelated pair was accepted (100 of the bench's, 288 more with noise of 2 and 5% and up to
# 400 iterations).
STALL_SHARE = 2.0


def _white_noise_error(hessian: np.ndarray, objective: float, shape: tuple[int, int]) -> float:
    """Expected mean endpoint error (level pixels) of a Gauss-Newton answer under white noise
    alone, ``objective * H^-1`` (:func:`regtool.uncertainty.quick_covariance` without the
    gradient-noise correction, which makes it an underestimate); 0 where ``H`` is singular."""
    cov = U.quick_covariance(hessian, objective, np.zeros((3, 3)))
    return 0.0 if cov is None else U.mean_endpoint(cov, shape)


def _note(log: IterationLog, iteration: int, loss: float, step_px: float | None,
          damping: float, accepted: bool) -> None:
    """One iteration for a solver's ``log`` (see :data:`IterationLog`)."""
    log({"iteration": iteration, "loss": float(loss),
         "step_px": None if step_px is None else float(step_px), "damping": float(damping),
         "accepted": bool(accepted)})


# A selected level with fewer of its points in the overlap fails whatever its area share.
MIN_OVERLAP_POINTS = 64


def _overlap_share(level: L.LevelImages, m: np.ndarray, n_valid: int, n_target: int,
                   min_overlap: float) -> float:
    """The share of the target in the overlap at ``m`` that ``min_overlap`` is checked
    against: of the level's points, or on a selected level whose points fall short, of its
    usable pixels (:meth:`regtool.loss.LevelImages.area_overlap`: the points are the most
    textured pixels, and their share in the overlap is the texture's, not the image's)."""
    share = float(n_valid) / max(n_target, 1)
    if share < min_overlap and not level.dense and n_valid >= MIN_OVERLAP_POINTS:
        share = max(share, level.area_overlap(m))
    return share


def _overlap_fail(frac: float, min_overlap: float) -> str:
    return (f"overlap fell to {100 * frac:.1f}% of the target (minimum {100 * min_overlap:.0f}%)"
            if frac > 0 else "the images no longer overlap")


def _gradient_noise(level: L.LevelImages, center: tuple[float, float], valid: np.ndarray,
                    count: int) -> np.ndarray:
    """Sum over the overlap of what unit white noise in the target's gradients adds to the
    (centred) ``J^T J``: ``[[n, 0, -Sy], [0, n, Sx], [-Sy, Sx, S(x^2 + y^2)]]`` about the center,
    from the rows (1, 0, -dy), (0, 1, dx), (-dy, dx, dx**2 + dy**2) of dPsi/dp per point."""
    xs, ys = level.coords()
    dx = np.compress(valid, xs).astype(np.float64) - center[0]
    dy = np.compress(valid, ys).astype(np.float64) - center[1]
    sx, sy = float(dx.sum()), float(dy.sum())
    sr = L.dot(dx, dx) + L.dot(dy, dy)
    return np.array([[count, 0.0, -sy], [0.0, count, sx], [-sy, sx, sr]])


def gauss_newton(level: L.LevelImages, matrix: np.ndarray, center: tuple[float, float],
                 metric: str, tol: float, max_iter: int, min_overlap: float, *,
                 log: IterationLog | None = None) -> LevelOutcome:
    """Inverse-compositional Gauss-Newton with Levenberg-Marquardt damping.

    The steepest-descent images ``grad f . dPsi/dp`` and the Hessian ``J^T J`` depend only on the
    target, so they are computed once per level (Baker and Matthews); each iteration then costs
    one sampling of the source and a 3xN product. Points leaving the overlap are subtracted from
    the precomputed Hessian instead of rebuilding it. A step that raises the objective by more
    than rounding and the model's own predicted gain is rejected and retried with more damping.

    ``log``, when given, is called once per iteration (see :data:`IterationLog`); a rejected
    point's row has ``accepted`` False, and its ``step_px`` and ``damping`` are those of the
    retried step, taken again from the last accepted point with the raised lambda.
    """
    tv = level.target_valid
    n_target = int(np.count_nonzero(tv))
    xs, ys = level.coords()
    gx, gy = level.grad_x, level.grad_y
    # dPsi/d(sx, sy, theta) at the identity, about the center: (1, 0), (0, 1), (-(y-cy), x-cx).
    sd = np.empty((3, gx.size), dtype=np.float32)
    sd[0] = gx
    sd[1] = gy
    sd[2] = gy * (xs - center[0]) - gx * (ys - center[1])
    del xs, ys
    h_all = L.gram(sd if n_target == tv.size else sd[:, tv])
    # (hessian, evaluation) at the last accepted point
    stats: tuple[np.ndarray, L.Evaluation] | None = None

    def outcome(mat: np.ndarray, converged: bool, reason: str | None) -> LevelOutcome:
        if stats is None:
            return LevelOutcome(mat, it, best_loss, converged, reason, overlap)
        h, evaluation = stats
        return LevelOutcome(mat, it, best_loss, converged, reason, overlap, h,
                            evaluation.residual.objective, evaluation, level, center)

    # sum of the steepest-descent images over the usable points, for the ncc centring while
    # every one of them is in the overlap (the usual case); computed once, as the loop would
    sd_sum: np.ndarray | None = None

    m = matrix.copy()
    # (matrix, hessian, gradient, objective, predicted reduction) of the last accepted point
    prev: tuple[np.ndarray, np.ndarray, np.ndarray, float, float] | None = None
    lam = 0.0
    best_loss = math.inf
    overlap = 0.0
    it = 0
    last_moved = math.inf  # the last step taken from the last accepted point (level pixels)
    while it < max_iter:
        it += 1
        # a dense level's overlap comes from row intervals, without the points' coordinates
        rc = None if level.dense else level.source_coords(m)
        valid = level.overlap(m, rc)
        n_valid = int(np.count_nonzero(valid))  # valid lies within tv
        overlap = _overlap_share(level, m, n_valid, n_target, min_overlap)
        if overlap < min_overlap:
            if log is not None:
                _note(log, it, math.nan, None, lam, False)
            return LevelOutcome(m, it, best_loss, False, _overlap_fail(overlap, min_overlap),
                                overlap)
        if rc is None:
            # sample_cubic beats scipy's affine_transform on a whole grid too (0.25 -> 0.14 ms
            # on a 75x62 grid)
            rc = level.source_coords(m)
        taps = level.sample_taps(rc, valid)
        res = L.residual(taps.values, level.target, valid, metric, gradient=False)
        if prev is not None:
            rise = res.objective - prev[3]
            if rise > 1e-6 * prev[3] and rise > 0.25 * prev[4]:
                # The last step made things worse by more than the model can explain: go back
                # and take a shorter, more gradient-like step ...
                m_prev, h_prev, b_prev, _, _ = prev
                if last_moved < STALL_SHARE * _white_noise_error(h_prev, prev[3], level.shape):
                    # ... unless that step was well inside the noise's reach: the loss no
                    # longer resolves motion at this scale, and shorter steps would only pick
                    # among points the noise cannot tell apart
                    if log is not None:
                        _note(log, it, res.loss, None, lam, False)
                    return outcome(m_prev, True, None)
                lam = max(10.0 * lam, 1e-3)
                step = np.linalg.solve(h_prev + lam * np.diag(np.diag(h_prev)), b_prev)
                pred = (2 * b_prev @ step - step @ h_prev @ step) / max(res.count, 1)
                prev = (m_prev, h_prev, b_prev, prev[3], pred)
                inv = np.linalg.inv(about_center(*step, center))
                m = m_prev @ inv
                moved = max_displacement(inv, level.shape)
                if log is not None:
                    _note(log, it, res.loss, moved, lam, False)
                if moved < tol:
                    return outcome(m_prev, True, None)
                continue
        lam *= 0.1
        best_loss = res.loss
        b = (sd @ res.e).astype(np.float64)
        h = h_all
        if n_valid < n_target:
            h = h_all - L.gram(sd[:, np.flatnonzero(tv & ~valid)])
        if metric == "ncc":
            # The fitted offset makes e zero-mean on the overlap; centre the steepest-descent
            # images too, so the Hessian ignores the part a constant offset already explains.
            if n_valid < n_target:
                total = sd @ valid.astype(np.float32)
            else:
                if sd_sum is None:
                    sd_sum = sd @ valid.astype(np.float32)
                total = sd_sum
            mean = total.astype(np.float64) / res.count
            h = h - res.count * np.outer(mean, mean)
        stats = (h, L.Evaluation(m, valid, taps, res))
        try:
            step = np.linalg.solve(h + lam * np.diag(np.diag(h)), b)
        except np.linalg.LinAlgError:
            if log is not None:
                _note(log, it, res.loss, None, lam, True)
            return LevelOutcome(m, it, best_loss, False, "the image has no texture to align on",
                                overlap)
        pred = (2 * b @ step - step @ h @ step) / res.count
        prev = (m, h, b, res.objective, pred)
        inv = np.linalg.inv(about_center(*step, center))
        m = m @ inv
        # M is an isometry, so the image moves by exactly as much as the update moves x.
        moved = max_displacement(inv, level.shape)
        last_moved = moved
        if log is not None:
            _note(log, it, res.loss, moved, lam, True)
        if moved < tol:
            return outcome(m, True, None)
    return outcome(m, False, f"did not converge in {max_iter} iterations")


def scaled_gd(level: L.LevelImages, matrix: np.ndarray, center: tuple[float, float],
              metric: str, tol: float, max_iter: int, min_overlap: float, *,
              log: IterationLog | None = None) -> LevelOutcome:
    """Gradient descent on ``(sx, sy, rho * theta)`` about the center, with Armijo backtracking.

    ``rho`` is the RMS distance of the target's pixels from the center, so one unit of each
    parameter moves the image by about one pixel. Each trial step length comes from the
    Barzilai-Borwein secant rule; the Armijo line search guarantees the loss never rises.

    ``log``, when given, is called once per iteration (see :data:`IterationLog`), with the
    step length alpha the line search settled on as ``damping``; every row is accepted, and
    the last has no step when the line search found no descent.
    """
    shape = level.shape
    n_target = int(np.count_nonzero(level.target_valid))
    xs, ys = level.coords()
    tv = level.target_valid
    rho2 = float(np.mean((xs[tv] - center[0]) ** 2 + (ys[tv] - center[1]) ** 2)) or 1.0
    del xs, ys
    precond = np.array([1.0, 1.0, 1.0 / rho2])
    params = np.array(center_params(matrix, center))

    def evaluate(p: np.ndarray, with_grad: bool) -> tuple[L.Residual, np.ndarray | None, float]:
        m = about_center(*p, center)
        valid = level.overlap(m)
        frac = _overlap_share(level, m, int(np.count_nonzero(valid)), n_target, min_overlap)
        if frac < min_overlap:
            return L.Residual(level.target, valid, 0, math.inf, math.inf, 1.0, 0.0), None, frac
        res, grad = L.loss_and_gradient(level, m, with_grad, center, metric)
        return res, grad, frac

    res, grad, overlap = evaluate(params, True)
    if grad is None:
        if log is not None:
            _note(log, 1, math.nan, None, math.nan, False)
        return LevelOutcome(about_center(*params, center), 1, math.inf, False,
                            _overlap_fail(overlap, min_overlap), overlap)
    alpha = None
    last: tuple[np.ndarray, np.ndarray] | None = None  # previous (params, gradient)
    it = 0
    while it < max_iter:
        it += 1
        direction = -precond * grad
        unit = max_displacement(about_center(*direction, center), shape)
        if unit == 0.0:
            if log is not None:
                _note(log, it, res.loss, 0.0, math.nan if alpha is None else alpha, True)
            return LevelOutcome(about_center(*params, center), it, res.loss, True, None, overlap)
        if alpha is None:
            alpha = 1.0 / unit  # first trial moves the image by one pixel at most
        elif last is not None:
            # Barzilai-Borwein: the step length a secant model of the curvature suggests, in
            # the preconditioned metric. It adapts to narrow valleys, where a doubled last step
            # would crawl; the line search below still keeps the loss from rising.
            s_k, y_k = params - last[0], grad - last[1]
            sy = float(s_k @ y_k)
            if sy > 0:
                alpha = float(s_k @ (s_k / precond)) / sy
            else:
                alpha *= 2.0
        slope = float(grad @ direction)
        accepted = False
        for _ in range(40):
            trial = params + alpha * direction
            t_res, _, t_frac = evaluate(trial, False)
            if t_res.objective <= res.objective + 1e-4 * alpha * slope:
                accepted = True
                break
            alpha *= 0.5
            if alpha * unit < 1e-3 * tol:
                break
        moved = alpha * unit
        if log is not None:
            _note(log, it, res.loss, moved if accepted else None, alpha, True)
        if not accepted:
            # No descent at a step far below the tolerance: this is the minimum.
            return LevelOutcome(about_center(*params, center), it, res.loss, True, None, overlap)
        last = (params, grad)
        params = trial
        res, grad, overlap = evaluate(params, True)
        if grad is None:
            return LevelOutcome(about_center(*params, center), it, res.loss, False,
                                _overlap_fail(overlap, min_overlap), overlap)
        if moved < tol:
            return LevelOutcome(about_center(*params, center), it, res.loss, True, None, overlap)
    return LevelOutcome(about_center(*params, center), it, res.loss, False,
                        f"did not converge in {max_iter} iterations", overlap)


def plain_gd(level: L.LevelImages, matrix: np.ndarray, center: tuple[float, float],
             metric: str, tol: float, max_iter: int, min_overlap: float, *,
             log: IterationLog | None = None) -> LevelOutcome:
    """The naive method: fixed-step gradient descent on the seed's (tx, ty, theta).

    Rotation is about the origin (the top-left pixel) and one learning rate serves all three
    parameters. The rate is the one that suits translation (half a Newton step for a shift); the
    rotation's lever arm of up to the image diagonal then makes theta overshoot. Kept as the
    baseline that shows why regtool preconditions; ``center`` is ignored on purpose.

    ``log``, when given, is called once per iteration (see :data:`IterationLog`) with the
    fixed rate as ``damping``; every step is taken, so every row is accepted.
    """
    shape = level.shape
    n_target = int(np.count_nonzero(level.target_valid))
    tv = level.target_valid
    curvature = 2.0 * float(np.mean(level.grad_x[tv] ** 2 + level.grad_y[tv] ** 2)) or 1.0
    rate = 1.0 / curvature
    params = np.array(rigid_params(matrix))
    origin = (0.0, 0.0)
    loss_value = math.inf
    overlap = 0.0
    for it in range(1, max_iter + 1):
        m = rigid_matrix(*params)
        valid = level.overlap(m)
        overlap = _overlap_share(level, m, int(np.count_nonzero(valid)), n_target, min_overlap)
        if overlap < min_overlap:
            if log is not None:
                _note(log, it, math.nan, None, rate, False)
            return LevelOutcome(m, it, loss_value, False, _overlap_fail(overlap, min_overlap),
                                overlap)
        res, grad = L.loss_and_gradient(level, m, True, origin, metric)
        if grad is None or not np.all(np.isfinite(grad)):
            if log is not None:
                _note(log, it, res.loss, None, rate, False)
            return LevelOutcome(m, it, loss_value, False, "gradient descent diverged", overlap)
        loss_value = res.loss
        new = params - rate * grad
        delta = np.linalg.inv(m) @ rigid_matrix(*new)
        params = new
        moved = max_displacement(delta, shape)
        if log is not None:
            _note(log, it, loss_value, moved, rate, True)
        if moved < tol:
            return LevelOutcome(rigid_matrix(*params), it, loss_value, True, None, overlap)
    return LevelOutcome(rigid_matrix(*params), max_iter, loss_value, False,
                        f"did not converge in {max_iter} iterations", overlap)


class Solver(Protocol):
    """The signature the three solvers share."""

    def __call__(self, level: L.LevelImages, matrix: np.ndarray, center: tuple[float, float],
                 metric: str, tol: float, max_iter: int, min_overlap: float, *,
                 log: IterationLog | None = None) -> LevelOutcome: ...

SOLVERS: dict[str, Solver] = {"gauss-newton": gauss_newton, "scaled": scaled_gd, "gd": plain_gd}
