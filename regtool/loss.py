"""Per-level image model and metrics: sampling, overlap, residuals, gradients.

Everything here works at one pyramid level, in that level's pixel coordinates, on float32 arrays.

Metrics
-------
``ssd``
    Mean over the overlap of ``(g(Psi(x)) - f(x))**2``: the mission's loss.
``ncc``
    Zero-mean normalized cross-correlation. Optimized through the equivalent least-squares form
    ``min_{a,b} mean((a g(Psi(x)) + b - f(x))**2) = var(f) (1 - ncc**2)``, which lets every
    optimizer treat it like ``ssd`` with a residual whose gain and offset are solved in closed form
    each iteration; the reported loss is ``1 - ncc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._filters import correlate_rows
from .resample import ndimage_affine

__all__ = [
    "LevelImages",
    "prepare_level",
    "overlap_fraction",
    "Residual",
    "residual",
    "spline_gradient",
    "loss_and_gradient",
]

# Interpolation used while estimating: cubic B-spline. Its loss surface has no kinks at integer
# shifts (bilinear's has), which matters for the last hundredth of a pixel.
ORDER = 3


# Levels with more usable target pixels than this register on a selection of them: the most
# textured quarter, never fewer than this many. Flat pixels carry little information about
# the motion but cost as much to sample as an edge.
DENSE_LIMIT = 1 << 14
SELECT_FRACTION = 0.25


@dataclass
class LevelImages:
    """What the solvers need of one pyramid level.

    The target is seen through a set of points: the whole grid in raster order (``dense``) or a
    selection of its most textured pixels. Every per-pixel array is 1-D over those points.

    Attributes
    ----------
    shape : (H, W)
        Target grid at this level.
    target : (n,) float32
        Target values f at the points.
    grad_x, grad_y : (n,) float32
        The target's exact spline derivatives at the points.
    target_valid : (n,) bool
        Points that may count: inside the border margin and not masked.
    index : (n,) int or None
        Raster indices of the points in the grid (None when dense).
    source_coeffs : (h, w) float32
        Cubic B-spline coefficients of the source g (prefiltered once per level).
    source_invalid : (h, w) bool or None
        Source pixels whose neighbourhood holds masked values (None: none masked).
    margin : float
        Sampled source points must lie at least this far inside the source's pixel centers.
    """

    shape: tuple[int, int]
    target: np.ndarray
    grad_x: np.ndarray
    grad_y: np.ndarray
    target_valid: np.ndarray
    index: np.ndarray | None
    source_coeffs: np.ndarray
    source_invalid: np.ndarray | None
    margin: float
    _coords: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def dense(self) -> bool:
        return self.index is None

    @property
    def source_shape(self) -> tuple[int, int]:
        return self.source_coeffs.shape  # type: ignore[return-value]

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the points, float64."""
        if self.index is None:
            ys, xs = np.indices(self.shape, dtype=np.float64)
            return xs.ravel(), ys.ravel()
        if self._coords is None:
            ys, xs = np.divmod(self.index, self.shape[1])
            self._coords = (xs.astype(np.float64), ys.astype(np.float64))
        return self._coords

    def sample(self, coeffs: np.ndarray, matrix: np.ndarray, order: int = ORDER,
               mode: str = "mirror", cval: float = 0.0) -> np.ndarray:
        """Values of the spline ``coeffs`` at ``matrix @ [x, y, 1]`` for every point."""
        if self.index is None:
            rc, offset = ndimage_affine(matrix)
            return ndimage.affine_transform(
                coeffs, rc, offset=offset, output_shape=self.shape, output=np.float32,
                order=order, mode=mode, cval=cval, prefilter=False,
            ).ravel()
        return ndimage.map_coordinates(coeffs, self._source_coords(matrix), output=np.float32,
                                       order=order, mode=mode, cval=cval, prefilter=False)

    def _source_coords(self, matrix: np.ndarray) -> np.ndarray:
        xs, ys = self.coords()
        out = np.empty((2, xs.size))
        out[0] = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]  # row = y'
        out[1] = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]  # col = x'
        return out

    def overlap(self, matrix: np.ndarray) -> np.ndarray:
        """Points that count at ``matrix``: valid in the target and mapping inside the source.

        A sample must land at least ``margin`` inside the source's outer pixel centers, so border
        padding never enters the fit, and away from masked source pixels.
        """
        sh, sw = self.source_shape
        m = self.margin
        eps = 1e-9
        if self.index is None:
            lo, hi = _row_intervals(matrix, self.shape, m, sw - 1 - m, m, sh - 1 - m)
            xs = np.arange(self.shape[1], dtype=float)
            inside = ((xs[None, :] >= lo[:, None] - eps) & (xs[None, :] <= hi[:, None] + eps))
            inside = inside.ravel()
        else:
            rc = self._source_coords(matrix)
            inside = ((rc[0] >= m - eps) & (rc[0] <= sh - 1 - m + eps)
                      & (rc[1] >= m - eps) & (rc[1] <= sw - 1 - m + eps))
        inside &= self.target_valid
        if self.source_invalid is not None:
            bad = self.sample(self.source_invalid.astype(np.float32), matrix, order=1,
                              mode="constant", cval=1.0)
            inside &= bad == 0
        return inside


def prepare_level(
    target: np.ndarray,
    target_valid: np.ndarray | None,
    source: np.ndarray,
    source_valid: np.ndarray | None,
    margin: float,
    select: bool = True,
) -> LevelImages:
    """Precompute the per-level data: masks shrunk by ``margin``, splines, target gradients.

    With ``select`` and more than :data:`DENSE_LIMIT` usable target pixels, keep only the most
    textured ones (largest gradient magnitude).
    """
    h, w = target.shape
    m = int(math.ceil(margin))
    tv = np.zeros((h, w), dtype=bool)
    # Border pixels of a blurred level were filtered with padded values: leave them out.
    tv[m : h - m, m : w - m] = True
    if target_valid is not None:
        tv &= target_valid
    gx, gy = image_gradient(target)
    coeffs = spline_coefficients(source)
    s_inv = None
    if source_valid is not None and not source_valid.all():
        # A cubic spline sample draws on a 4x4 neighbourhood: grow the invalid set by 2.
        s_inv = ndimage.binary_dilation(~source_valid, iterations=2)
    n_valid = int(np.count_nonzero(tv))
    keep = max(DENSE_LIMIT, int(SELECT_FRACTION * n_valid))
    if not select or n_valid <= keep:
        return LevelImages((h, w), target.ravel(), gx.ravel(), gy.ravel(), tv.ravel(), None,
                           coeffs, s_inv, margin)
    strength = gx * gx
    strength += gy * gy
    strength[~tv] = -1.0
    # The threshold comes from a regular subsample: an exact order statistic over every pixel
    # costs more than the rest of the selection, and the count only needs to be about right.
    flat = strength.ravel()
    probe = flat[:: max(1, flat.size // (4 * keep))]
    probe = probe[probe >= 0]
    threshold = np.partition(probe, probe.size - max(1, probe.size * keep // n_valid))[
        probe.size - max(1, probe.size * keep // n_valid)]
    index = np.flatnonzero(flat >= threshold)  # raster order keeps the source reads local
    return LevelImages((h, w), target.ravel()[index], gx.ravel()[index], gy.ravel()[index],
                       np.ones(index.size, dtype=bool), index, coeffs, s_inv, margin)


def _row_intervals(matrix: np.ndarray, shape: tuple[int, int], lo_x: float, hi_x: float,
                   lo_y: float, hi_y: float) -> tuple[np.ndarray, np.ndarray]:
    """Per target row y, the x-interval where ``matrix @ [x, y, 1]`` lies in the given box.

    The map is affine, so along one row each coordinate is linear in x and each constraint cuts a
    single interval: O(rows) work instead of testing every pixel.
    """
    h = shape[0]
    ys = np.arange(h, dtype=float)
    lo = np.full(h, -np.inf)
    hi = np.full(h, np.inf)
    for row, (a_lo, a_hi) in ((0, (lo_x, hi_x)), (1, (lo_y, hi_y))):
        a = matrix[row, 0]
        b = matrix[row, 1] * ys + matrix[row, 2]
        if abs(a) < 1e-12:
            inside = (b >= a_lo) & (b <= a_hi)
            hi = np.where(inside, hi, -np.inf)
            continue
        x1 = (a_lo - b) / a
        x2 = (a_hi - b) / a
        lo = np.maximum(lo, np.minimum(x1, x2))
        hi = np.minimum(hi, np.maximum(x1, x2))
    return lo, hi


def overlap_fraction(matrix: np.ndarray, target_shape: tuple[int, int],
                     source_shape: tuple[int, int]) -> float:
    """Fraction of the target's pixel centers that ``matrix`` sends inside the source's extent.

    The extent is the source's pixel area, ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. Counted row by
    row from the exact x-interval of each row: O(rows), no per-pixel work.
    """
    sh, sw = source_shape
    lo, hi = _row_intervals(matrix, target_shape, -0.5, sw - 0.5, -0.5, sh - 0.5)
    first = np.maximum(np.ceil(lo - 1e-9), 0)
    last = np.minimum(np.floor(hi + 1e-9), target_shape[1] - 1)
    return float(np.maximum(last - first + 1, 0).sum()) / (target_shape[0] * target_shape[1])


@dataclass
class Residual:
    """Residual of one evaluation: ``e = a * (g(Psi) - mean g) + mean f - f`` on the overlap.

    ``ssd``: ``a = 1`` and no centering, so ``e = g(Psi) - f``. ``ncc``: ``a = std f / std g``
    over the overlap, so ``e`` is the difference of the two standardized images in the target's
    units and ``mean(e**2) = 2 var(f) (1 - ncc)``. (The least-squares gain ``cov / var g``
    would not do: it shrinks a poorly correlated source to a constant and the step with it.)
    ``e`` is 0 off the overlap. ``objective`` is ``mean(e**2)``, what the optimizers minimize;
    ``loss`` is the reported value (``ssd``: the same; ``ncc``: ``1 - ncc``). ``e_grad`` is what
    multiplies ``a * grad g . dPsi/dp`` in the exact gradient of the objective: ``e`` itself for
    ``ssd``; for ``ncc`` ``e`` minus its projection on the standardized source, because ``a``
    and the means move with the parameters too.
    """

    e: np.ndarray
    valid: np.ndarray
    count: int
    objective: float
    loss: float
    gain: float
    e_grad: np.ndarray | None = None


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two 1-D arrays, in float64, without BLAS.

    Multithreaded OpenBLAS's ddot on a vector of 65536 doubles was measured here at 8 ms,
    against 0.03 ms for einsum's own loop (and 0.013 ms for ddot on one thread).
    """
    return float(np.einsum("i,i->", a, b, dtype=np.float64))


def gram(rows: np.ndarray) -> np.ndarray:
    """``rows @ rows.T`` in float64 for a few long rows, without BLAS (see :func:`dot`)."""
    return np.einsum("ij,kj->ik", rows, rows, dtype=np.float64)


def _sum_squares(e: np.ndarray) -> float:
    # float32 accumulation over a million pixels loses the last digits the optimizers compare
    flat = e.ravel()
    return dot(flat, flat)


def residual(warped: np.ndarray, target: np.ndarray, valid: np.ndarray, metric: str) -> Residual:
    """Residual of the warped source against the target over ``valid`` pixels."""
    n = int(np.count_nonzero(valid))
    if n == 0:
        return Residual(np.zeros_like(target), valid, 0, math.inf, math.inf, 1.0)
    if metric == "ssd":
        e = np.subtract(warped, target, dtype=np.float32)
        e[~valid] = 0.0
        obj = _sum_squares(e) / n
        return Residual(e, valid, n, obj, obj, 1.0, e)
    gv = warped[valid].astype(np.float64)
    fv = target[valid].astype(np.float64)
    gm, fm = gv.mean(), fv.mean()
    gc, fc = gv - gm, fv - fm
    sgg, sff, sgf = dot(gc, gc), dot(fc, fc), dot(gc, fc)
    if sgg <= 0.0 or sff <= 0.0:
        return Residual(np.zeros_like(target), valid, n, math.inf, math.inf, 1.0)
    a = math.sqrt(sff / sgg)
    ncc = sgf / math.sqrt(sgg * sff)
    e = np.zeros(target.shape, dtype=np.float32)
    e[valid] = a * gc - fc
    e_grad = np.zeros(target.shape, dtype=np.float32)
    e_grad[valid] = a * ncc * gc - fc
    obj = 2.0 * sff * (1.0 - ncc) / n
    return Residual(e, valid, n, obj, 1.0 - ncc, a, e_grad)


def spline_gradient(coeffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact x and y derivatives of a cubic-spline interpolant at the pixel centers.

    In 1-D, for coefficients c, the derivative at integer n is ``(c[n+1] - c[n-1]) / 2`` (the
    cubic B-spline's slope is -1/2 and +1/2 at the neighbouring knots, 0 at its own), and the
    value is ``(c[n-1] + 4 c[n] + c[n+1]) / 6``. In 2-D the derivative along x is the first
    filter along x applied after the second along y, and vice versa.
    """
    diff = np.array([-0.5, 0.0, 0.5], dtype=np.float32)  # correlate1d: c[n+1]/2 - c[n-1]/2
    value = np.array([1 / 6, 4 / 6, 1 / 6], dtype=np.float32)
    # Mirror boundary, as in the prefilter: c[-1] = c[1], so the edge slope is 0.
    gx = ndimage.correlate1d(coeffs, diff, axis=1, mode="mirror")
    gx = ndimage.correlate1d(gx, value, axis=0, mode="mirror")
    gy = ndimage.correlate1d(coeffs, diff, axis=0, mode="mirror")
    gy = ndimage.correlate1d(gy, value, axis=1, mode="mirror")
    return gx, gy


def _derivative_taps(radius: int = 6) -> np.ndarray:
    """Correlation weights of the exact cubic-spline derivative at the pixel centers.

    The exact filter (prefilter, then ``(c[n+1] - c[n-1]) / 2``) is infinite, but its taps
    shrink by a factor 2 - sqrt(3) ~ 0.27 per pixel: at radius 6 the rest is about 0.01%.
    """
    impulse = np.zeros(4 * radius + 1)
    impulse[2 * radius] = 1.0
    coeffs = ndimage.spline_filter1d(impulse, order=ORDER, mode="mirror")
    response = ndimage.correlate1d(coeffs, [-0.5, 0.0, 0.5], mode="mirror")
    # correlate1d applies weights reversed relative to an impulse response
    return response[radius : 3 * radius + 1][::-1].astype(np.float32)


DERIVATIVE_TAPS = _derivative_taps()


def _prefilter_taps(radius: int = 10) -> np.ndarray:
    """Correlation weights of the cubic B-spline prefilter (symmetric, so no reversal).

    The exact prefilter is recursive and infinite; its taps shrink by 2 - sqrt(3) per pixel,
    so at radius 10 what is left out is below 1e-5 of the signal.
    """
    impulse = np.zeros(4 * radius + 1)
    impulse[2 * radius] = 1.0
    coeffs = ndimage.spline_filter1d(impulse, order=ORDER, mode="mirror")
    return coeffs[radius : 3 * radius + 1].astype(np.float32)


PREFILTER_TAPS = _prefilter_taps()


def spline_coefficients(image: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of ``image`` (mirror boundary), float32.

    Equal to ``scipy.ndimage.spline_filter(image, 3, mode="mirror")`` within 1e-5 of the
    image's range, in half its time: two short FIR passes, the row pass done by slicing.
    """
    along_x = ndimage.correlate1d(image, PREFILTER_TAPS, axis=1, mode="mirror",
                                  output=np.float32)
    return correlate_rows(along_x, PREFILTER_TAPS, mode="mirror")


def image_gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The derivatives of :func:`spline_gradient`, straight from the image's samples.

    Along y, the value filter ``(1, 4, 1) / 6`` undoes the y prefilter exactly, so the x
    derivative is a 1-D filter along x alone (and vice versa): one short FIR pass per axis.
    """
    gx = ndimage.correlate1d(image, DERIVATIVE_TAPS, axis=1, mode="mirror", output=np.float32)
    gy = correlate_rows(image, DERIVATIVE_TAPS, mode="mirror")
    return gx, gy


def loss_and_gradient(
    level: LevelImages,
    matrix: np.ndarray,
    grad_coeffs: tuple[np.ndarray, np.ndarray] | None,
    center: tuple[float, float] | None,
    metric: str,
) -> tuple[Residual, np.ndarray | None]:
    """Objective at ``matrix`` and its gradient with respect to rigid parameters.

    The parameters are ``(sx, sy, theta)`` about ``center`` (``center=(0, 0)`` gives the seed's
    origin-based ``(tx, ty, theta)``), perturbing ``matrix`` as ``about_center(p) @ ...``: the
    derivative is taken at the current matrix with respect to the parameters of the matrix itself,
    ``Psi(x) = R(theta)(x - c) + c + s``.

    ``grad_coeffs`` are the spline coefficients of the source's derivative images (from
    :func:`spline_gradient`, prefiltered); when None only the objective is computed.

    Returns
    -------
    residual : Residual
    gradient : (3,) ndarray or None
        ``d objective / d (sx, sy, theta)``.
    """
    valid = level.overlap(matrix)
    res = residual(level.sample(level.source_coeffs, matrix), level.target, valid, metric)
    if grad_coeffs is None or res.count == 0:
        return res, None
    gxw = level.sample(grad_coeffs[0], matrix)
    gyw = level.sample(grad_coeffs[1], matrix)
    cx, cy = center if center is not None else (0.0, 0.0)
    theta = math.atan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1])
    c, s = math.cos(theta), math.sin(theta)
    xs, ys = level.coords()
    xs = xs - cx
    ys = ys - cy
    # dPsi/dtheta = R'(theta)(x - c) = (-s*dx - c*dy, c*dx - s*dy)
    dpx = -s * xs - c * ys
    dpy = c * xs - s * ys
    # d/dp mean(e^2) = 2/n sum e_grad * a * (grad g . dPsi/dp); 0 off the overlap.
    k = 2.0 * res.gain / res.count
    e = res.e_grad.astype(np.float64)
    g0 = k * float(np.sum(e * gxw))
    g1 = k * float(np.sum(e * gyw))
    g2 = k * float(np.sum(e * (gxw * dpx + gyw * dpy)))
    return res, np.array([g0, g1, g2])
