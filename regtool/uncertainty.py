"""Error bars of a registration: the covariance of (shift, theta) from the data alone.

The estimate
------------
At convergence the Gauss-Newton solver of :mod:`regtool.optimize` stands where its estimating
equation ``b(p) = sum_i J_t,i e_i(p) = 0`` holds: ``J_t`` are the target's steepest-descent
images (``grad f . dPsi/dp``, centred over the overlap for ``ncc``), ``e`` the residuals. To first
order its error is ``dp = -S^-1 b(p_true)``, so

    Cov(dp) = S^-1 V S^-T,

a sandwich (Huber, White) whose two parts are both read off the data:

* ``S = d b / d p = sum_i J_t,i J_s,i^T``, with ``J_s`` the steepest-descent images of the warped
  SOURCE (its spline's gradient at the sampled points, turned into the target's frame and scaled
  by the metric's gain). The naive ``J_t^T J_t`` would count the target's gradient noise twice
  (its square has a positive mean): with noise of 5% of the range it made the bars 2 to 2.5 times
  too small. The two images' noises are independent, so ``J_t^T J_s`` has the noise-free mean.
* ``V = Var b``, from the residuals at the solution, summed over square blocks of
  ``BLOCK`` pixels before squaring (a cluster-robust estimate): the residuals of neighbouring
  pixels are correlated (the spline and the interpolation of the warped source both spread each
  pixel's noise over a few pixels), and a per-point sum of squares would miss that.

No noise level is given or assumed: whatever the residuals hold, noise of either image, a gain,
interpolation error, enters through ``V``.

What the numbers leave out: bias (a systematic error that does not average out, e.g. from a
motion that is not rigid, lens distortion, parallax, or a scene that changed), and any error of
the global search (a wrong match is not a small error). Where the estimate cannot be trusted the
fields are None and ``reason`` says why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import special

from . import loss as L
from .quality import _gaussian
from .transform import about_center, center_params

__all__ = ["Uncertainty", "estimate", "refine", "mean_endpoint", "quick_covariance",
           "gradient_noise_share", "SMOOTH_SHARE", "SMOOTH_SIGMA"]

# Side (pixels of the finest level) of the blocks whose residual sums are taken as independent.
# The residuals correlate over about 3 pixels (the target's 3x3 spline filters, the source's 4x4
# cubic support); 16 keeps a block's neighbours' share of its sum small.
BLOCK = 16
# Fewer blocks than this and V is too poorly determined to be worth a number.
MIN_BLOCKS = 24
# The linearization behind the sandwich holds for errors well inside a pixel; above this
# expected mean endpoint error (px) the bar is reported as untrustworthy instead.
MAX_ENDPOINT = 1.0
# Grid (per axis) over which the expected mean endpoint error is averaged.
ENDPOINT_GRID = 17


@dataclass(frozen=True)
class Uncertainty:
    """1-sigma error bars of a registration result.

    Attributes
    ----------
    shift : (float, float) or None
        Standard errors of ``Result.shift`` (x, y), in pixels.
    theta_deg : float or None
        Standard error of ``Result.theta_deg``, in degrees.
    endpoint_px : float or None
        Expected mean endpoint error over the target's pixels, in pixels: the average over the
        target grid of ``E |dPsi(x)|`` for an error ``dp`` with the estimated covariance.
    covariance : (3, 3) ndarray or None
        Covariance of ``(shift_x, shift_y, theta)`` about the target's center (pixels, radians)
        in the target's frame.
    reason : str or None
        Why the other fields are None.
    """

    shift: tuple[float, float] | None
    theta_deg: float | None
    endpoint_px: float | None
    covariance: np.ndarray | None = None
    reason: str | None = None

    @classmethod
    def unavailable(cls, reason: str) -> Uncertainty:
        """An uncertainty that could not be estimated, and why."""
        return cls(None, None, None, None, reason)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``shift``, ``theta_deg``, ``endpoint_px`` and ``reason``."""
        return {
            "shift": None if self.shift is None else [float(self.shift[0]),
                                                      float(self.shift[1])],
            "theta_deg": None if self.theta_deg is None else float(self.theta_deg),
            "endpoint_px": None if self.endpoint_px is None else float(self.endpoint_px),
            "reason": self.reason,
        }


@lru_cache(maxsize=32)
def _endpoint_grid(h: int, w: int, grid: int) -> tuple[np.ndarray, ...]:
    """The sub-grid of :func:`mean_endpoint` about the center, and the products it needs:
    ``x, y, 2x, 2y, x*x, y*y, x*y`` (made once per shape: the call takes half the time)."""
    xs = np.linspace(0.0, w - 1.0, min(w, grid)) - (w - 1) / 2.0
    ys = np.linspace(0.0, h - 1.0, min(h, grid)) - (h - 1) / 2.0
    x, y = (a.ravel() for a in np.meshgrid(xs, ys))
    out = (x, y, 2 * x, 2 * y, x * x, y * y, x * y)
    for a in out:
        a.setflags(write=False)
    return out


def mean_endpoint(covariance: np.ndarray, shape: tuple[int, int],
                  grid: int = ENDPOINT_GRID) -> float:
    """Expected mean endpoint error over a ``shape`` grid for ``dp ~ N(0, covariance)``.

    ``dp = (sx, sy, theta)`` about the grid's center. At each pixel ``dPsi = A_x dp`` is a
    zero-mean 2-D Gaussian; with the eigenvalues ``l1 >= l2`` of its covariance,
    ``E |dPsi| = sqrt(2 l1 / pi) E(1 - l2 / l1)`` (E: the complete elliptic integral of the
    second kind), which is the Rayleigh mean ``sqrt(pi l / 2)`` when ``l1 = l2``.

    Parameters
    ----------
    covariance : (3, 3) array_like
        Covariance of ``(sx, sy, theta)``, pixels and radians.
    shape : (rows, cols)
        The grid.
    grid : int
        Points per axis of the regular sub-grid the mean is taken over (corners included).

    Returns
    -------
    float
        Pixels.
    """
    c = np.asarray(covariance, dtype=float)
    x, y, x2, y2, xx, yy, xy = _endpoint_grid(int(shape[0]), int(shape[1]), grid)
    # Sigma_x = A C A^T with A = [[1, 0, -y], [0, 1, x]]
    sxx = c[0, 0] - y2 * c[0, 2] + yy * c[2, 2]
    syy = c[1, 1] + x2 * c[1, 2] + xx * c[2, 2]
    sxy = c[0, 1] + x * c[0, 2] - y * c[1, 2] - xy * c[2, 2]
    mid = 0.5 * (sxx + syy)
    half = np.sqrt(np.maximum(0.25 * (sxx - syy) ** 2 + sxy * sxy, 0.0))
    l1 = np.maximum(mid + half, 0.0)
    l2 = np.clip(mid - half, 0.0, None)
    ratio = np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0)
    values = np.sqrt(2.0 * l1 / math.pi) * special.ellipe(1.0 - ratio)
    return float(values.mean())


def _axis_weights(x: np.ndarray, size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cubic B-spline weights along one axis at ``x``: value and derivative, float32.

    Returns the value weights ``(4, n)`` of the taps ``floor(x) - 1 .. floor(x) + 2``, the
    weights ``(4, n)`` of the spline's exact derivative on the same taps, the first tap, and
    which points have every tap inside the image. The fraction is exact (float64); the weights
    are float32, as the solver's samples are (:meth:`regtool.loss.LevelImages.sample_cubic`).
    """
    # the value weights as regtool.loss._cubic_weights makes them (the same float32 steps), and
    # the derivative's from the same fraction
    f = np.floor(x)
    t = (x - f).astype(np.float32)
    first = f.astype(np.intp)
    first -= 1
    inside = first.view(np.uintp) <= size - 4  # 0 <= first <= size - 4
    t2 = t * t
    u = np.float32(1.0) - t
    uu = u * u
    value = np.empty((4, x.size), dtype=np.float32)
    np.multiply(uu, u * np.float32(1.0 / 6.0), out=value[0])
    t3 = t2 * t
    np.multiply(t3, np.float32(1.0 / 6.0), out=value[3])
    np.subtract(np.float32(0.5) * t3 + np.float32(2.0 / 3.0), t2, out=value[1])
    np.subtract(np.float32(1.0) - value[0], value[1], out=value[2])  # the weights sum to 1
    value[2] -= value[3]
    return value, _diff_weights(t, t2, uu), first, inside


def _diff_weights(t: np.ndarray, t2: np.ndarray, uu: np.ndarray) -> np.ndarray:
    """The cubic B-spline derivative's weights ``(4, n)`` on the taps ``floor(x) - 1 ..
    floor(x) + 2``, from the fraction ``t``, ``t**2`` and ``(1 - t)**2`` (float32)."""
    diff = np.empty((4, t.size), dtype=np.float32)
    np.multiply(uu, np.float32(-0.5), out=diff[0])
    np.multiply(t2, np.float32(0.5), out=diff[3])
    np.subtract(np.float32(1.5) * t2, np.float32(2.0) * t, out=diff[1])
    np.add(diff[0], diff[1], out=diff[2])  # the weights sum to 0
    diff[2] += diff[3]
    np.negative(diff[2], out=diff[2])
    return diff


def _axis_diff_weights(x: np.ndarray) -> np.ndarray:
    """:func:`_axis_weights`' derivative weights alone (the same float32 steps)."""
    t = (x - np.floor(x)).astype(np.float32)
    u = np.float32(1.0) - t
    return _diff_weights(t, t * t, u * u)


def _border_samples(coeffs: np.ndarray, rc: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spline value and derivatives at points whose taps reach past the border (rare: a
    sample on the margin), taps mirrored (``c[-1] = c[1]``, scipy's ``mode="mirror"``)."""
    h, w = coeffs.shape
    out = []
    weights = []
    for axis, size in ((0, h), (1, w)):
        value, diff, first, _ = _axis_weights(rc[axis], size)
        taps = np.abs(first + np.arange(4)[:, None])
        taps = np.where(taps > size - 1, 2 * (size - 1) - taps, taps)
        out.append(taps)
        weights.append((value, diff))
    (vy, dy), (vx, dx) = weights
    block = coeffs[out[0][:, None, :], out[1][None, :, :]]
    along_x = np.einsum("bn,abn->an", vx, block)
    diff_x = np.einsum("bn,abn->an", dx, block)
    return (np.einsum("an,an->n", vy, along_x), np.einsum("an,an->n", vy, diff_x),
            np.einsum("an,an->n", dy, along_x))


def _source_samples(coeffs: np.ndarray, rc: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source spline's value and derivatives along x' and y' at ``rc``, float32.

    One 4x4 gather serves the value and both derivatives, in float32 (the value is rounded to
    float32 for the residual anyway, and the derivatives need no more). The exact derivative,
    where the error bars were first calibrated with central differences 0.01 px apart: the two
    differ by 0.01**2 / 6 times the spline's third derivative, 1e-5 of the covariance on the
    benchmark's cases, and the differences needed a second route (five scipy samplings, then
    5-tap windows) for the 4% of points where they cross a knot. 0.8 instead of 1.3 ms at
    15000 points (float64 central differences).
    """
    h, w = coeffs.shape
    vy, dy, ry, in_y = _axis_weights(rc[0], h)
    vx, dx, rx, in_x = _axis_weights(rc[1], w)
    inside = in_y & in_x
    first = ry * w
    first += rx
    every = bool(inside.all())
    if not every:
        first[~inside] = 0
    # the 4x4 taps one row of four at a time: a (4, n) index instead of a (16, n) one
    flat = coeffs.reshape(-1)
    block = np.empty((4, 4, first.size), dtype=coeffs.dtype)
    taps = L._taps(w).reshape(4, 4, 1)
    for a in range(4):
        np.take(flat, first + taps[a], out=block[a])
    along_x = np.einsum("bn,abn->an", vx, block)
    diff_x = np.einsum("bn,abn->an", dx, block)
    value = np.einsum("an,an->n", vy, along_x)
    gx = np.einsum("an,an->n", vy, diff_x)
    gy = np.einsum("an,an->n", dy, along_x)
    if not every:
        edge = np.flatnonzero(~inside)
        value[edge], gx[edge], gy[edge] = _border_samples(coeffs, rc[:, edge])
    return value, gx, gy


def _derivatives(coeffs: np.ndarray, taps: L.Taps) -> tuple[np.ndarray, np.ndarray]:
    """The source spline's derivatives along x' and y' at the points of a sampling, float32:
    the exact derivative weights on the taps the values were made of (see
    :func:`_source_samples`)."""
    dy = _axis_diff_weights(taps.rc[0])
    dx = _axis_diff_weights(taps.rc[1])
    gx = np.einsum("an,an->n", taps.wy, np.einsum("bn,abn->an", dx, taps.block))
    gy = np.einsum("an,an->n", dy, taps.along_x)
    if not taps.inside.all():
        edge = np.flatnonzero(~taps.inside)
        _, gx[edge], gy[edge] = _border_samples(coeffs, taps.rc[:, edge])
    return gx, gy


def _steepest(gx: np.ndarray, gy: np.ndarray, xs: np.ndarray, ys: np.ndarray,
              center: tuple[float, float]) -> np.ndarray:
    """``grad . dPsi/d(sx, sy, theta)`` about ``center``, as a (3, n) float64 array."""
    out = np.empty((3, xs.size))
    out[0] = gx
    out[1] = gy
    np.multiply(out[1], xs - center[0], out=out[2])
    out[2] -= out[0] * (ys - center[1])
    return out


# Blurred weightings are tried (:func:`refine`) where the target's gradient noise adds at least
# this share to some diagonal entry of the answer's J^T J (:func:`gradient_noise_share`); on
# the benchmark's noisy photographs it was 0.01-0.07 at 251x301 for textured ones, 0.13-0.9
# for smooth or faint ones, where the plain weighting's errors were 1.5-2 times the bound.
SMOOTH_SHARE = 0.1
# The blur of the target for those weights, in level pixels. Over the benchmark's noisy tiers at
# 251x301 (6 noise draws per case), 1.0, 1.5, 2.0 and 3.0 took the mean-square error of the
# faint cases down by 25, 45, 44 and 30%; choosing among them by their error bars did worse
# than any one (the bars differ by less than their own noise).
SMOOTH_SIGMA = 1.5
# A blurred weighting replaces the plain one only when its expected mean endpoint error is
# below this share of the plain one's: both are estimates (from a few hundred blocks), and a
# choice among near-equals would only pick the noisier estimate.
SMOOTH_GAIN = 0.9


@dataclass
class _Pieces:
    """What every weighting of the estimating equation shares at one answer: the overlap's
    points, their source steepest-descent images and residuals (carried to the answer)."""

    every: bool
    valid: np.ndarray
    xs: np.ndarray
    ys: np.ndarray
    js: np.ndarray
    e: np.ndarray
    count: int
    objective: float

    def on(self, values: np.ndarray) -> np.ndarray:
        return values if self.every else values[self.valid]


def _pieces(level: L.LevelImages, matrix: np.ndarray, center: tuple[float, float],
            metric: str, evaluation: L.Evaluation | None) -> _Pieces:
    at = matrix  # where the residuals and the source's gradients are read
    if evaluation is not None:
        at, valid, res = evaluation.matrix, evaluation.valid, evaluation.residual
        every = bool(valid.all())
        gxs, gys = _derivatives(level.source_coeffs, evaluation.taps)
        if not every:
            gxs, gys = gxs[valid], gys[valid]
    else:
        rc = level.source_coords(matrix)
        valid = level.overlap(matrix, rc)
        # every point in the overlap (the usual case): no masked copies of the per-point arrays
        every = bool(valid.all())
        # the residual reads the warped source on the overlap only (np.compress: indexing a 2-D
        # array with a mask along its second axis took 0.17 ms here, compress 0.03 ms)
        value, gxs, gys = _source_samples(level.source_coeffs,
                                          rc if every else np.compress(valid, rc, axis=1))
        if every:
            warped = value
        else:
            warped = np.zeros(level.target.shape, dtype=np.float32)
            warped[valid] = value
        res = L.residual(warped, level.target, valid, metric, gradient=False)
    xs, ys = ((c if every else c[valid]).astype(np.float64) for c in level.coords())
    a = at[:2, :2]
    # d g(Psi(x)) / dx = A^T grad g(Psi(x)), A the linear part of Psi
    gxs, gys = a[0, 0] * gxs + a[1, 0] * gys, a[0, 1] * gxs + a[1, 1] * gys
    js = _steepest(gxs, gys, xs, ys, center)
    js *= res.gain
    e = (res.e if every else res.e[valid]).astype(np.float64)
    if at is not matrix:
        # the residuals carried to the answer to first order: g(M D x) ~ g(M x) + J_s dp for
        # the small motion D = M^-1 M_answer of the target's frame. Up to the solver's
        # tolerance, it is most of the residuals' signal on a noise-free pair, and on a coarse
        # level's answer (0.01 of its pixels) several error bars: left in, it would count as
        # noise in V.
        dp = np.array(center_params(np.linalg.inv(at) @ matrix, center))
        moved = dp @ js
        if metric == "ncc":
            moved -= moved.mean()
        e += moved
    return _Pieces(every, valid, xs, ys, js, e, int(res.count), float(res.objective))


def _sandwich(p: _Pieces, gx: np.ndarray, gy: np.ndarray, center: tuple[float, float],
              metric: str, block: int, width: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """``(S, b, V)`` of the estimating equation weighted by the target-side gradients
    ``(gx, gy)`` at the overlap's points (see the module's docstring), or why not."""
    jt = _steepest(gx, gy, p.xs, p.ys, center)
    if metric == "ncc":
        # the fitted offset: the estimating equation uses steepest-descent images centred over
        # the overlap (optimize.gauss_newton), and e is zero-mean there
        jt -= jt.mean(axis=1, keepdims=True)
    # einsum, not BLAS: 3 x n times n x 3 is over OpenBLAS's threshold for threads from 29128
    # points (see regtool.loss.dot)
    sens = np.einsum("in,jn->ij", jt, p.js)
    nbx = int(width // block) + 1
    # integer division: on the float coordinates it took 0.3 ms at 16384 points
    cluster = (p.ys.astype(np.intp) // block) * nbx + p.xs.astype(np.intp) // block
    # the occupied blocks numbered in order (np.unique's inverse, without its sort: 0.05
    # instead of 0.5 ms at 16384 points)
    occupied = np.bincount(cluster) > 0
    cluster = (np.cumsum(occupied) - 1)[cluster]
    n_blocks = int(np.count_nonzero(occupied))
    if n_blocks < MIN_BLOCKS:
        return f"too little of the image overlaps to estimate it ({n_blocks} blocks of {block} px)"
    sums = np.stack([np.bincount(cluster, weights=row * p.e, minlength=n_blocks) for row in jt])
    b = sums.sum(axis=1)
    # centred: the block sums add up to the estimating equation's b, zero at its solution; a
    # point a tolerance away from it (the solver's last evaluation) leaves a b whose square
    # would count as noise (on noise-free pairs it was most of V)
    sums -= sums.mean(axis=1, keepdims=True)
    v = (sums @ sums.T) * (n_blocks / (n_blocks - 1))
    return sens, b, v


def _covariance(sens: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """``S^-1 V S^-T``, or None when ``S`` does not determine the motion."""
    try:
        inv = np.linalg.inv(sens)
    except np.linalg.LinAlgError:
        return None
    cov = inv @ v @ inv.T
    cov = 0.5 * (cov + cov.T)
    if not np.all(np.isfinite(cov)) or np.any(np.diag(cov) <= 0) or np.linalg.cond(sens) > 1e12:
        return None
    return cov


def estimate(level: L.LevelImages, matrix: np.ndarray, center: tuple[float, float],
             metric: str, block: int = BLOCK, *, level_index: int = 0,
             full_shape: tuple[int, int] | None = None,
             evaluation: L.Evaluation | None = None) -> Uncertainty:
    """Covariance and error bars of a converged registration at the level of its answer.

    Parameters
    ----------
    level : LevelImages
        The level the answer comes from (level 0: the full-resolution images).
    matrix : (3, 3) ndarray
        The solution, target -> source, in that level's pixels.
    center : (float, float)
        The rotation center (the target's center) in that level's pixels.
    metric : {"ssd", "ncc"}
        The metric that was minimized.
    block : int
        Side in that level's pixels of the blocks treated as independent in ``V``.
    level_index : int
        Which pyramid level ``level`` is: its shifts are ``2**level_index`` full-resolution
        pixels (the pyramid keeps the center where it is, so theta is the same).
    full_shape : (rows, cols), optional
        The full-resolution target's shape (default: the level's own).
    evaluation : Evaluation, optional
        The solver's evaluation at its last accepted point on this level (``metric`` the
        same), which is at most the solver's tolerance from ``matrix``: the estimate is then
        made there, from its samples, instead of sampling the source again (half the cost;
        the bars differ by a tolerance's effect on the gradients, far below their own error).

    Returns
    -------
    Uncertainty
        With ``reason`` set and the numbers None when the estimate cannot be trusted.
    """
    return refine(level, matrix, center, metric, block, level_index=level_index,
                  full_shape=full_shape, evaluation=evaluation)[1]


def refine(level: L.LevelImages, matrix: np.ndarray, center: tuple[float, float],
           metric: str, block: int = BLOCK, *, level_index: int = 0,
           full_shape: tuple[int, int] | None = None,
           evaluation: L.Evaluation | None = None,
           image: np.ndarray | None = None,
           points: Callable[[], L.LevelImages] | None = None,
           sigma: float = SMOOTH_SIGMA,
           weightings: tuple[str, ...] = ("blurred", "plain"),
           against: float | None = None
           ) -> tuple[np.ndarray, Uncertainty]:
    """:func:`estimate`, and where the target's gradients are noisy, maybe a closer answer.

    The solver's estimating equation weights each residual by the target's gradient, noise and
    all, on the points the level selected by texture. Where that noise is a fair part of the
    gradients (a smooth or faint image under noise) it adds its own variance to the answer's,
    and the texture the selection left out holds a fair part of the information. Over the
    points of ``points()`` (more of them) the equation can be weighted by the gradients of the
    target blurred by a Gaussian of ``sigma`` level pixels (``"blurred"``) or by the target's
    own gradients (``"plain"``): each has its root, with a covariance from the same sandwich.
    A root is reached in one Newton step from ``matrix`` (the solver's answer; the roots lie an
    error bar or so apart, where the equation is nearly linear: a second step moves an answer
    by a few hundredths of its bar at most, see the tests). The root with the smallest
    expected mean endpoint error is the answer if that error is below SMOOTH_GAIN of the
    solver's answer's (or below ``against``); otherwise the solver's answer stays.

    Parameters
    ----------
    level, matrix, center, metric, block, level_index, full_shape, evaluation
        As in :func:`estimate`.
    image : ndarray, optional
        The level's target image (``level.shape``): with ``points``, try the blurred weights.
    points : callable, optional
        Makes the level's data on the points the weightings use (the source is sampled there
        afresh).
    sigma : float
        The blur, in level pixels.
    weightings : tuple of {"blurred", "plain"}
        The weightings tried on ``points()``.
    against : float, optional
        The expected mean endpoint error (full-resolution pixels) a root must beat instead of
        SMOOTH_GAIN times the solver's answer's: another answer's, which the roots compete
        with.

    Returns
    -------
    (matrix, Uncertainty)
        The answer (``matrix`` itself, the same object, unless a root won) and its error
        bars.
    """
    p = _pieces(level, matrix, center, metric, evaluation)
    if p.count < 3 * MIN_BLOCKS or not math.isfinite(p.objective):
        return matrix, Uncertainty.unavailable("too few pixels in the overlap to estimate it")
    width = level.shape[1]
    shape = level.shape if full_shape is None else full_shape
    to_full = np.diag([2.0**level_index, 2.0**level_index, 1.0])
    plain = _sandwich(p, p.on(level.grad_x), p.on(level.grad_y), center, metric, block, width)
    if isinstance(plain, str):
        return matrix, Uncertainty.unavailable(plain)
    cov = _covariance(plain[0], plain[2])
    if cov is None:
        return matrix, Uncertainty.unavailable("too little signal: the motion is not determined")
    answer = matrix
    if image is not None and points is not None:
        own = mean_endpoint(to_full @ cov @ to_full, shape)
        if not own <= MAX_ENDPOINT:
            # The weightings' roots are one Newton step from the solver's answer, linearized
            # there: where its own expected error is beyond the linear model, a root's smaller
            # bar says nothing (a faint crop's roots with bars of 0.5-0.6 px were 0.5-1.9 px
            # off, the solver's bars 1.5-5.7 px).
            return matrix, _from_covariance(to_full @ cov @ to_full, matrix, shape)
        more = points()
        q = _pieces(more, matrix, center, metric, None)
        best = SMOOTH_GAIN * own if against is None else against
        for name in weightings:
            if name == "blurred":
                gx, gy = _smoothed_gradients(image, sigma, more.index)
            else:
                gx, gy = more.grad_x, more.grad_y
            parts = _sandwich(q, q.on(gx), q.on(gy), center, metric, block, width)
            if isinstance(parts, str):
                continue
            sens, b, v = parts
            other = _covariance(sens, v)
            if other is None:
                continue
            endpoint = mean_endpoint(to_full @ other @ to_full, shape)
            if endpoint < best:
                dp = -np.linalg.solve(sens, b)  # the root: b + S dp = 0
                answer, cov, best = matrix @ about_center(*dp, center), other, endpoint
    return answer, _from_covariance(to_full @ cov @ to_full, answer, shape)


def _smoothed_gradients(image: np.ndarray, sigma: float, index: np.ndarray | None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The central differences (d/dx, d/dy) of ``image`` blurred by a Gaussian of ``sigma``
    pixels (truncated at 4 sigma, edges repeated), at the raster ``index`` (every pixel when
    None), float32.

    One blur (:func:`regtool.quality._gaussian`, the match decision's) and ``np.gradient``
    instead of two derivative-of-Gaussian filters (6.4 ms at 512x512, now about 2 with 65536
    points taken): any weighting keeps the estimating equation unbiased and its sandwich
    measures what it costs; the differences only add a little to the blur along their axis.
    """
    # central differences inside, half a one-sided one at the border (the blurred image
    # repeated there, as mode="nearest" does)
    blurred = _gaussian(image.astype(np.float32, copy=False), sigma, truncate=4.0)
    gx, gy = np.gradient(blurred, axis=1), np.gradient(blurred, axis=0)
    gx[:, [0, -1]] *= np.float32(0.5)
    gy[[0, -1], :] *= np.float32(0.5)
    gx, gy = gx.reshape(-1), gy.reshape(-1)
    if index is not None:
        gx, gy = np.take(gx, index), np.take(gy, index)
    return gx, gy


def _from_covariance(cov: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]
                     ) -> Uncertainty:
    """Error bars in the public parameters from the target-frame covariance (level pixels)."""
    endpoint = mean_endpoint(cov, shape)
    if not endpoint <= MAX_ENDPOINT:
        return Uncertainty.unavailable(
            f"too little signal: the expected error ({endpoint:.2g} px) is beyond what a "
            "linear error model can describe")
    # The solver's error is a motion of the target's frame: the shift about the center moves
    # by R ds, theta by dtheta.
    a = matrix[:2, :2]
    cs = a @ cov[:2, :2] @ a.T
    return Uncertainty(
        shift=(math.sqrt(cs[0, 0]), math.sqrt(cs[1, 1])),
        theta_deg=math.degrees(math.sqrt(cov[2, 2])),
        endpoint_px=endpoint,
        covariance=cov,
    )


def gradient_noise_share(hessian: np.ndarray, objective: float,
                         gradient_noise: np.ndarray) -> float:
    """The largest share of a diagonal entry of the solver's ``J^T J`` that the target's
    gradient noise makes (its estimate ``objective / 2 * N``, see :func:`quick_covariance`)."""
    h = np.diag(np.asarray(hessian, dtype=float))
    n = 0.5 * objective * np.diag(np.asarray(gradient_noise, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(h > 0, n / h, np.inf)
    return float(np.max(share))


def quick_covariance(hessian: np.ndarray, objective: float, gradient_noise: np.ndarray,
                     scale: float = 1.0) -> np.ndarray | None:
    """White-noise covariance of a Gauss-Newton answer from what the solver already holds.

    ``objective * (H - objective / 2 * N)^-1``, in the level's ``(sx, sy, theta)``, with ``H``
    the solver's (centred) ``J^T J``, ``objective`` its mean squared residual and ``N`` what unit
    noise in the target's gradients adds to ``H``: the target spline's derivative passes a
    quarter of the target's noise variance and its value (with the warped source's) about half,
    so the gradients carry about half the residual's variance, and that part of ``J^T J`` holds
    no information. ``scale`` multiplies the result (the residuals' correlation, which this
    ignores, differs between levels). Cheap (3x3 algebra) and only for comparing the answers of
    two levels of one image pair; :func:`estimate` gives the calibrated error bars. None when
    the corrected ``H`` is not positive definite (noise only).
    """
    h = np.asarray(hessian, dtype=float) - 0.5 * objective * np.asarray(gradient_noise)
    try:
        np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        return None
    return scale * objective * np.linalg.inv(h)
