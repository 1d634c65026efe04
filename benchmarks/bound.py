"""The Cramer-Rao bound of a benchmark case: the floor its registration error is compared with.

For additive Gaussian noise, sigma_t on the target and sigma_s on the source, whose signal is
scaled by a gain ``a``, no unbiased estimator of ``p = (shift_x, shift_y, theta)`` about the
target's center ``c`` has a covariance below

    C = (sigma_t^2 + (sigma_s / a)^2) G^-1,    G = sum over the overlap of J(x)^T J(x),
    J(x) = [f_x, f_y, -(y - c_y) f_x + (x - c_x) f_y],

``f`` the NOISE-FREE target (GUIDE section 5). The gradient here comes from the continuous model
that made the case: the target is a plain crop of ``Photo.image`` at the integer offset
``(ox, oy)``, and ``Photo.spline`` holds that image's interpolating cubic B-spline coefficients
``c_k``, so ``f(x) = sum_k c_k beta3(ox + x - k)`` and its derivatives are exact derivatives of
the spline. At the integer positions of a crop the cubic B-spline and its derivative take the
values ``beta3(0) = 2/3, beta3(+-1) = 1/6`` and ``beta3'(0) = 0, beta3'(-+1) = +-1/2`` (from
``beta3(t) = 2/3 - t^2 + |t|^3 / 2`` on ``|t| <= 1`` and ``(2 - |t|)^3 / 6`` on ``1 <= |t| <= 2``),
so on a crop

    f   = (c_{i-1} + 4 c_i + c_{i+1}) / 6 along each axis,
    f_x = (c_{i+1} - c_{i-1}) / 2 along x, times (1, 4, 1) / 6 along y,

three-tap filters on the coefficients (``tests/test_bound.py`` checks them against finite
differences of ``scipy.ndimage.map_coordinates`` on the same coefficients).

The bound is turned into the benchmark's error measure: the mean endpoint error over the
target's ``ERROR_GRID x ERROR_GRID`` sub-grid (:func:`cases.endpoint_error`) of an error ``dp ~
N(0, C)``, ``dPsi(x) = [dsx - dtheta (y - c_y), dsy + dtheta (x - c_x)]``. At each grid point
``dPsi ~ N(0, Sigma_x)``, ``Sigma_x = A_x C A_x^T``, and for a zero-mean 2-D Gaussian with
eigenvalues ``l1 >= l2``

    E |dPsi| = sqrt(2 / pi) sqrt(l1) E(1 - l2 / l1)

(``E(m)`` the complete elliptic integral of the second kind, parameter ``m``:
``scipy.special.ellipe``; ``l1 = l2`` gives the Rayleigh mean ``sqrt(pi l / 2)``, ``l2 = 0`` the
half-normal ``sqrt(2 l1 / pi)``). The bound's mean square ``E (mean_x |dPsi|)^2`` has no such
closed form and is estimated by Monte Carlo with a fixed seed.

Like cases.py this imports no regtool: the floor does not depend on the thing measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

__all__ = [
    "Bound",
    "spline_grid",
    "overlap_mask",
    "fisher_information",
    "grid_points",
    "point_covariances",
    "expected_norm",
    "mean_endpoint",
    "mean_square_endpoint",
    "bound",
    "case_bound",
]

#: Points per axis of the grid the endpoint error is averaged over (as cases.ERROR_GRID).
GRID = 65
#: Monte Carlo draws of dp for the bound's mean square (its relative error is about 1%).
MS_DRAWS = 2048
MS_SEED = 20261124
#: Draws per matrix product in the Monte Carlo (memory: CHUNK x GRID^2 x 8 bytes per array).
CHUNK = 512


@dataclass(frozen=True)
class Bound:
    """The Cramer-Rao bound of one case.

    Attributes
    ----------
    covariance : (3, 3) ndarray
        ``C`` for ``(shift_x, shift_y, theta)`` about the target's center (px, px, radians).
    endpoint_px : float
        ``E mean_x |dPsi(x)|`` for ``dp ~ N(0, C)``, px (closed form per grid point).
    ms_px2 : float
        ``E (mean_x |dPsi(x)|)^2``, px^2 (Monte Carlo, fixed seed).
    overlap : float
        Share of the target's pixels in the overlap (those counted in ``G``).
    noise_var : float
        ``sigma_t^2 + (sigma_s / a)^2``, grey levels squared.
    """

    covariance: np.ndarray
    endpoint_px: float
    ms_px2: float
    overlap: float
    noise_var: float

    @property
    def theta_deg(self) -> float:
        """The bound's standard deviation of theta, degrees."""
        return math.degrees(math.sqrt(self.covariance[2, 2]))

    @property
    def shift(self) -> tuple[float, float]:
        """The bound's standard deviations of the shift about the center, px."""
        return (math.sqrt(self.covariance[0, 0]), math.sqrt(self.covariance[1, 1]))


def spline_grid(spline: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value and exact derivatives of a cubic B-spline on the crop at integer ``offset``.

    Parameters
    ----------
    spline : (Hp, Wp) ndarray
        Cubic B-spline coefficients (``scipy.ndimage.spline_filter`` of an image, mode mirror).
    offset : (ox, oy)
        Integer position of the crop's pixel (0, 0) in the spline's image.
    shape : (h, w)
        The crop.

    Returns
    -------
    f, f_x, f_y : (h, w) float64 ndarrays
        The spline's value (the image itself, for an interpolating spline) and its derivatives
        along x (columns) and y (rows) at ``(ox + x, oy + y)``.
    """
    ox, oy = int(offset[0]), int(offset[1])
    h, w = shape
    hp, wp = spline.shape
    lo_y, hi_y, lo_x, hi_x = oy - 1, oy + h + 1, ox - 1, ox + w + 1
    if lo_y >= 0 and lo_x >= 0 and hi_y <= hp and hi_x <= wp:
        c = np.asarray(spline[lo_y:hi_y, lo_x:hi_x], dtype=np.float64)
    else:  # a crop touching the border: continue the coefficients as spline_filter's mirror
        pad = ((max(0, -lo_y), max(0, hi_y - hp)), (max(0, -lo_x), max(0, hi_x - wp)))
        full = np.pad(np.asarray(spline, dtype=np.float64), pad, mode="reflect")
        c = full[lo_y + pad[0][0]:hi_y + pad[0][0], lo_x + pad[1][0]:hi_x + pad[1][0]]

    def smooth(a: np.ndarray, axis: int) -> np.ndarray:
        a = np.moveaxis(a, axis, 0)
        return np.moveaxis((a[:-2] + 4.0 * a[1:-1] + a[2:]) / 6.0, 0, axis)

    def slope(a: np.ndarray, axis: int) -> np.ndarray:
        a = np.moveaxis(a, axis, 0)
        return np.moveaxis((a[2:] - a[:-2]) / 2.0, 0, axis)

    sy = smooth(c, 0)  # rows done: (h, w + 2)
    f = smooth(sy, 1)
    f_x = slope(sy, 1)
    f_y = smooth(slope(c, 0), 1)
    return f, f_x, f_y


def overlap_mask(matrix: np.ndarray, shape: tuple[int, int],
                 source_shape: tuple[int, int]) -> np.ndarray:
    """Target pixels whose image under ``matrix`` lies in the source's pixel area.

    The area is ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` of the source, the extent regtool uses
    for its overlap.
    """
    h, w = shape
    sh, sw = source_shape
    m = np.asarray(matrix, dtype=float)
    xs, ys = np.arange(w, dtype=float)[None, :], np.arange(h, dtype=float)[:, None]
    u = m[0, 0] * xs + (m[0, 1] * ys + m[0, 2])
    v = m[1, 0] * xs + (m[1, 1] * ys + m[1, 2])
    return (u >= -0.5) & (u <= sw - 0.5) & (v >= -0.5) & (v <= sh - 0.5)


def fisher_information(f_x: np.ndarray, f_y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``G = sum over mask of J^T J``, ``J = [f_x, f_y, -(y - c_y) f_x + (x - c_x) f_y]``."""
    h, w = f_x.shape
    xs = np.arange(w, dtype=float)[None, :] - (w - 1) / 2.0
    ys = np.arange(h, dtype=float)[:, None] - (h - 1) / 2.0
    keep = mask.astype(float)
    jac = [(f_x * keep).ravel(), (f_y * keep).ravel()]
    jac.append((xs * f_y - ys * f_x).ravel() * keep.ravel())
    return np.array([[float(np.dot(a, b)) for b in jac] for a in jac])


def grid_points(shape: tuple[int, int], grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates about the center of the endpoint error's sub-grid (as cases.endpoint_error)."""
    h, w = shape
    xs = np.linspace(0.0, w - 1.0, min(w, grid)) - (w - 1) / 2.0
    ys = np.linspace(0.0, h - 1.0, min(h, grid)) - (h - 1) / 2.0
    gx, gy = np.meshgrid(xs, ys)
    return gx.ravel(), gy.ravel()


def _rows(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two rows of ``A_x`` at every point: dPsi = (ax . dp, ay . dp)."""
    one, zero = np.ones_like(x), np.zeros_like(x)
    return np.stack([one, zero, -y], axis=1), np.stack([zero, one, x], axis=1)


def point_covariances(cov: np.ndarray, x: np.ndarray, y: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Sigma_x = A_x C A_x^T`` at every point: its entries (xx, yy, xy)."""
    ax, ay = _rows(x, y)
    cov = np.asarray(cov, dtype=float)
    return (np.einsum("ni,ij,nj->n", ax, cov, ax), np.einsum("ni,ij,nj->n", ay, cov, ay),
            np.einsum("ni,ij,nj->n", ax, cov, ay))


def expected_norm(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray) -> np.ndarray:
    """``E |d|`` for zero-mean 2-D Gaussians ``d`` with covariances ``[[sxx, sxy], [sxy, syy]]``."""
    mid = 0.5 * (sxx + syy)
    half = np.hypot(0.5 * (sxx - syy), sxy)
    l1 = np.maximum(mid + half, 0.0)
    l2 = np.clip(mid - half, 0.0, None)
    m = 1.0 - np.divide(l2, l1, out=np.ones_like(l1), where=l1 > 0)
    return math.sqrt(2.0 / math.pi) * np.sqrt(l1) * special.ellipe(np.clip(m, 0.0, 1.0))


def mean_endpoint(cov: np.ndarray, shape: tuple[int, int], grid: int = GRID) -> float:
    """``E mean_x |dPsi(x)|`` over the sub-grid for ``dp ~ N(0, cov)``, px (closed form)."""
    x, y = grid_points(shape, grid)
    return float(np.mean(expected_norm(*point_covariances(cov, x, y))))


def mean_square_endpoint(cov: np.ndarray, shape: tuple[int, int], grid: int = GRID,
                         draws: int = MS_DRAWS, seed: int = MS_SEED
                         ) -> tuple[float, float]:
    """Monte Carlo ``E (mean_x |dPsi|)^2`` and ``E mean_x |dPsi|`` for ``dp ~ N(0, cov)``.

    ``dp = L z`` with ``L L^T = cov`` and ``z`` standard normal from a fixed seed, so the same
    draws serve every case.
    """
    x, y = grid_points(shape, grid)
    ax, ay = _rows(x, y)
    cov = np.asarray(cov, dtype=float)
    lower = np.linalg.cholesky(cov + 1e-300 * np.eye(3))
    # (3, n): dPsi at each point for a unit z; float32 products (a relative 1e-7 is plenty)
    ux, uy = (np.ascontiguousarray((a @ lower).T, dtype=np.float32) for a in (ax, ay))
    z = np.random.default_rng(seed).standard_normal((draws, 3)).astype(np.float32)
    means = np.empty(draws)
    for k in range(0, draws, CHUNK):
        zk = z[k:k + CHUNK]
        dx, dy = zk @ ux, zk @ uy
        dx *= dx
        dy *= dy
        dx += dy
        means[k:k + CHUNK] = np.sqrt(dx, out=dx).mean(axis=1, dtype=np.float64)
    return float(np.mean(means * means)), float(np.mean(means))


def bound(spline: np.ndarray, offset: tuple[int, int], matrix: np.ndarray,
          shape: tuple[int, int], source_shape: tuple[int, int], sigma_t: float,
          sigma_s: float, gain: float = 1.0) -> Bound:
    """The Cramer-Rao bound of a pair whose target is the crop of a spline's image at ``offset``.

    Parameters
    ----------
    spline : ndarray
        Cubic B-spline coefficients of the noise-free scene.
    offset : (ox, oy)
        Integer offset of the target's crop in the scene.
    matrix : (3, 3) or (2, 3) array_like
        True target->source matrix.
    shape, source_shape : (rows, cols)
        Target's and source's shapes.
    sigma_t, sigma_s : float
        Noise standard deviations of the target and of the source as it is given (after its
        gain), grey levels.
    gain : float
        The gain ``a`` of the source's signal.
    """
    _, f_x, f_y = spline_grid(spline, offset, shape)
    mask = overlap_mask(matrix, shape, source_shape)
    g = fisher_information(f_x, f_y, mask)
    noise_var = sigma_t ** 2 + (sigma_s / gain) ** 2
    cov = noise_var * np.linalg.inv(g)
    cov = 0.5 * (cov + cov.T)
    ms, _ = mean_square_endpoint(cov, shape)
    return Bound(covariance=cov, endpoint_px=mean_endpoint(cov, shape), ms_px2=ms,
                 overlap=float(mask.mean()), noise_var=float(noise_var))


def case_bound(case: Any) -> Bound | None:
    """The bound of a :class:`cases.Case`, or None (no noise, unrelated pair, no scene kept).

    cases.py adds the noise BEFORE the gain: ``source = a (g + n_s) + b`` with ``n_s`` of the
    tier's sigma, so the given source's noise is ``sigma_s = a sigma`` and ``sigma_s / a =
    sigma``: the gain does not change the bound (it scales signal and noise alike).
    """
    if not case.related or not case.noise or case.scene is None or case.offset is None:
        return None
    sigma = float(case.noise)
    return bound(case.scene.spline, case.offset, case.matrix, case.target.shape,
                 case.source.shape, sigma_t=sigma, sigma_s=case.gain * sigma, gain=case.gain)


def ms_ratio_interval(cases: list[tuple[np.ndarray, float]], share: float = 0.9,
                      resamples: int = 2000, seed: int = 5) -> tuple[float, float] | None:
    """How far a mean-square ratio moves with the noise draws alone: the central ``share`` of
    ``sum(err^2) / sum(ms)`` over bootstrap resamples of each case's draws.

    Parameters
    ----------
    cases : list of (errors, ms)
        Per case, its draws' mean endpoint errors (px) and its bound's mean square (px^2).
    share : float
        The central share of the resamples the interval covers.
    resamples, seed : int
        The bootstrap's size and random seed (the same interval on every call).

    Returns
    -------
    (low, high), or None when a case has fewer than 2 draws (nothing to resample).
    """
    if not cases or min(len(errors) for errors, _ in cases) < 2:
        return None
    rng = np.random.default_rng(seed)
    num = np.zeros(resamples)
    den = 0.0
    for errors, ms in cases:
        sq = np.square(np.asarray(errors, dtype=float))
        pick = rng.integers(0, sq.size, size=(resamples, sq.size))
        num += sq[pick].sum(axis=1)
        den += ms * sq.size
    tail = 0.5 * (1.0 - share)
    lo, hi = np.quantile(num / den, [tail, 1.0 - tail])
    return float(lo), float(hi)
