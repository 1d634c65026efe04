"""The coarse-to-fine driver: input checks, pyramid, per-level solves, and the Result."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from . import init as global_init
from . import loss as L
from . import pyramid
from ._filters import correlate_rows, gaussian_taps
from ._version import __version__
from .errors import InputError
from .optimize import DEFAULT_MAX_ITER, SOLVERS
from .resample import ndimage_affine
from .resample import warp as _warp
from .transform import (
    center_params,
    from_level,
    image_center,
    rigid_matrix,
    rigid_params,
    to_level,
)

__all__ = ["align", "Result", "LevelRecord", "OPTIMIZERS", "METRICS", "DEFAULT_OPTIMIZER"]

OPTIMIZERS = ("gauss-newton", "scaled", "gd")
METRICS = ("ssd", "ncc")
DEFAULT_OPTIMIZER = "gauss-newton"
MIN_SIDE = 16
MAX_NONFINITE = 0.5
# Rec. 601 luma: the weights most image tools use for "gray".
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
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
# The quality statistics use a grid of at most about this many pixels a side. Against 256, it
# cut the check from ~6.5 to ~2 ms at 512x512 with the same verdict on every benchmark case;
# over them unrelated pairs' detail NCC stayed at most 0.15 and related ones' at least 0.87.
QUALITY_GRID = 128


@dataclass
class LevelRecord:
    """What happened at one pyramid level (level 0 is the full-resolution image)."""

    level: int
    shape: tuple[int, int]
    iterations: int
    loss: float
    converged: bool
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "iterations": int(self.iterations),
            "loss": _num(self.loss),
            "converged": bool(self.converged),
            "time_s": round(float(self.time_s), 6),
        }


def _num(x: float) -> float | None:
    """JSON has no infinity or NaN: those become null."""
    return float(x) if math.isfinite(x) else None


@dataclass
class Result:
    """The outcome of :func:`align`.

    Attributes
    ----------
    matrix : (2, 3) ndarray
        Maps target pixel (x, y) to source pixel (x, y):
        ``aligned[y, x] = source(matrix @ [x, y, 1])``.
    tx, ty, theta : float
        ``matrix = [[cos, -sin, tx], [sin, cos, ty]]``: rotation by ``theta`` radians about the
        origin (the center of the top-left pixel), then translation.
    center : (float, float)
        The target's center ``((W-1)/2, (H-1)/2)``.
    shift : (float, float)
        Translation about ``center``: ``matrix @ [x, y, 1] = R (x - center) + center + shift``.
    metric, optimizer : str
        What was minimized, and how.
    loss : float
        Final value of the metric at the finest level (``ssd``: mean squared difference over the
        overlap, integer images scaled to [0, 1]; ``ncc``: ``1 - ncc``).
    converged : bool
        True when the finest level met the tolerance and nothing failed.
    reason : str or None
        Why not, when ``converged`` is False.
    levels : list of LevelRecord
        Coarsest first.
    time_s : float
        Wall time of the call.
    overlap : float
        Fraction of the target's pixels that ``matrix`` maps inside the source's extent.
    target_shape, source_shape : tuple of int
        ``(rows, cols)`` of the inputs.
    ncc : float
        Zero-mean normalized cross-correlation of target and aligned source over the overlap
        (a regular grid: every other pixel, or about 128 x 128 on larger images; bilinear):
        1 is a perfect match up to gain and offset, near 0 unrelated images.
    residual : float
        Root-mean-square intensity difference over the same pixels (integer images in [0, 1]).
    detail_ncc : float
        The NCC of the two images' detail (difference of Gaussians, sigma 1 and 3 pixels of that
        grid; sigma 3 and 9 when noise swamps the finer band) over the overlap: what decides
        whether the images match at all (at least 0.35, or 0.55 in the coarser band).
    init : dict
        How the start was found: ``method`` (``auto``, ``none`` or ``given``), the starting
        ``tx``, ``ty``, ``theta_deg``, and for ``auto`` the ``level`` searched, the number of
        ``candidates`` and ``time_s``.
    """

    matrix: np.ndarray
    tx: float
    ty: float
    theta: float
    center: tuple[float, float]
    shift: tuple[float, float]
    metric: str
    optimizer: str
    loss: float
    converged: bool
    reason: str | None
    levels: list[LevelRecord] = field(default_factory=list)
    time_s: float = 0.0
    overlap: float = 0.0
    target_shape: tuple[int, int] = (0, 0)
    source_shape: tuple[int, int] = (0, 0)
    ncc: float = math.nan
    residual: float = math.nan
    detail_ncc: float = math.nan
    init: dict[str, Any] = field(default_factory=dict)

    @property
    def theta_deg(self) -> float:
        """Rotation in degrees."""
        return math.degrees(self.theta)

    def warp(self, image: np.ndarray, *, interp: str = "cubic", fill: float = 0.0) -> np.ndarray:
        """Resample ``image`` (the source, or any image on its grid) onto the target's grid.

        Keeps the dtype and channels of ``image``; see :func:`regtool.warp`.
        """
        return _warp(image, self.matrix, self.target_shape, interp=interp, fill=fill)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (without the file names, which only a caller knows)."""
        return {
            "tx": float(self.tx),
            "ty": float(self.ty),
            "theta": float(self.theta),
            "theta_deg": float(self.theta_deg),
            "matrix": [[float(v) for v in row] for row in self.matrix],
            "center": [float(self.center[0]), float(self.center[1])],
            "shift": [float(self.shift[0]), float(self.shift[1])],
            "metric": self.metric,
            "optimizer": self.optimizer,
            "loss": _num(self.loss),
            "converged": bool(self.converged),
            "reason": self.reason,
            "overlap": round(float(self.overlap), 6),
            "ncc": _num(self.ncc),
            "residual": _num(self.residual),
            "detail_ncc": _num(self.detail_ncc),
            "init": {k: (_num(v) if isinstance(v, float) else v) for k, v in self.init.items()},
            "levels": [r.to_dict() for r in self.levels],
            "time_s": round(float(self.time_s), 6),
            "target_shape": [int(v) for v in self.target_shape],
            "source_shape": [int(v) for v in self.source_shape],
            "regtool_version": __version__,
        }


def _luminance(image: np.ndarray, which: str, mask: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Float32 luminance and validity mask (None: all valid) of a gray/RGB/RGBA array.

    ``mask`` (nonzero = use) is combined with the pixels that are NaN, infinite or transparent.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(
            f"expected a 2-D gray image or an RGB/RGBA image, got an array of shape {arr.shape}",
            which)
    kind = arr.dtype.kind
    if kind not in "buif":
        raise InputError(f"unsupported pixel type {arr.dtype}", which)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"image is too small to register ({w}x{h} pixels; "
                         f"at least {MIN_SIDE}x{MIN_SIDE} needed)", which)
    alpha = None
    scale = np.float32(1.0 / np.iinfo(arr.dtype).max) if kind in "ui" else None
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            alpha = arr[..., 3]
        if arr.dtype == np.float64:
            lum = (arr[..., :3] @ LUMA.astype(np.float64)).astype(np.float32)
        else:
            # three multiply-adds in float32: a (..., 3) @ (3,) product is slower here
            lum = np.multiply(arr[..., 0], LUMA[0], dtype=np.float32)
            lum += np.multiply(arr[..., 1], LUMA[1], dtype=np.float32)
            lum += np.multiply(arr[..., 2], LUMA[2], dtype=np.float32)
            if scale is not None:
                lum *= scale
    elif scale is not None:
        # Integers become [0, 1] so uint8 and uint16 inputs compare on one scale.
        lum = np.multiply(arr, scale, dtype=np.float32)
    else:
        lum = arr.astype(np.float32)
    if arr.ndim == 2 and kind != "f" and mask is None:
        # gray integers are finite and nothing is masked: only the constant check is left,
        # which the raw array answers fastest
        if not arr.max() > arr.min():
            raise InputError("image has no texture to register (it is constant)", which)
        return lum, None
    valid = np.isfinite(lum)
    if alpha is not None:
        valid &= alpha > 0
    n_bad = valid.size - int(np.count_nonzero(valid))
    if n_bad > MAX_NONFINITE * valid.size:
        what = "transparent, NaN or infinite" if alpha is not None else "NaN or infinite"
        raise InputError(f"{100 * n_bad / valid.size:.0f}% of the pixels are {what} "
                         f"(at most {100 * MAX_NONFINITE:.0f}% can be masked)", which)
    if mask is not None:
        user = np.asarray(mask)
        if user.shape != valid.shape:
            raise InputError(f"the mask's shape {user.shape} does not match the image's "
                             f"{valid.shape}", which)
        valid &= user.astype(bool)
        n_bad = valid.size - int(np.count_nonzero(valid))
        if valid.size - n_bad < MIN_SIDE * MIN_SIDE:
            raise InputError(f"the mask leaves only {valid.size - n_bad} usable pixels "
                             f"(at least {MIN_SIDE * MIN_SIDE} needed)", which)
    mask = None
    if n_bad:
        mask = valid
        # Fill masked pixels with the mean so blurring and splines see no spikes there.
        lum = np.where(valid, lum, np.float32(lum[valid].mean())).astype(np.float32)
    values = lum if mask is None else lum[mask]
    lo, hi = float(values.min()), float(values.max())
    if not hi - lo > 1e-6 * max(abs(hi), abs(lo), 1e-30):
        raise InputError("image has no texture to register (it is constant)", which)
    return np.ascontiguousarray(lum, dtype=np.float32), mask


def _points(k: int) -> dict[str, int]:
    """How many points level ``k`` registers on (see :func:`regtool.loss.prepare_level`)."""
    # Level 1 hands level 0 its start, and on noisy images level 0 can do little better than
    # that start (its loss then moves with the noise more than with hundredths of a pixel):
    # it keeps the finest level's floor. Coarser levels only need the next one's capture range.
    floor = L.DENSE_LIMIT if k <= 1 else L.MIN_POINTS_COARSE
    return {"min_points": floor, "max_points": L.MAX_POINTS}


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


def align(
    target: np.ndarray,
    source: np.ndarray,
    *,
    levels: int | None = None,
    optimizer: str = DEFAULT_OPTIMIZER,
    metric: str = "ssd",
    max_iter: int | None = None,
    tol: float = 1e-3,
    init: str | Sequence[float] | None = "auto",
    min_overlap: float = 0.25,
    target_mask: np.ndarray | None = None,
    source_mask: np.ndarray | None = None,
    progress: Callable[[LevelRecord, int, int], None] | None = None,
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
    f, f_mask = _luminance(target, "target", target_mask)
    g, g_mask = _luminance(source, "source", source_mask)
    n_max = pyramid.max_levels(f.shape, g.shape)
    if levels is None:
        n_levels = pyramid.auto_levels(f.shape, g.shape)
    else:
        if levels < 1 or levels > n_max:
            raise InputError(f"levels must be between 1 and {n_max} for these image sizes "
                             f"(the coarsest level needs at least 8 pixels a side), not {levels}")
        n_levels = int(levels)
    iters = max_iter if max_iter is not None else DEFAULT_MAX_ITER[optimizer]
    solver = SOLVERS[optimizer]

    # Centers on centers: for equal sizes, the identity.
    cf, cg = image_center(f.shape), image_center(g.shape)
    m = rigid_matrix(cg[0] - cf[0], cg[1] - cf[1], 0.0)
    auto = isinstance(init, str) and init == "auto"
    init_info: dict[str, Any] = {"method": "none"}
    if init is not None and not isinstance(init, str):
        tx0, ty0, deg0 = (float(v) for v in init)
        m = rigid_matrix(tx0, ty0, math.radians(deg0))
        init_info = {"method": "given"}
    k_search = pyramid.auto_levels(f.shape, g.shape, min_side=SEARCH_SIDE) - 1
    n_build = max(n_levels, k_search + 1) if auto else n_levels

    pyr_f = pyramid.build(f, n_build)
    pyr_g = pyramid.build(g, n_build)
    pyr_fm = pyramid.build_mask(f_mask, n_build)
    pyr_gm = pyramid.build_mask(g_mask, n_build)

    prepared: dict[int, L.LevelImages] = {}
    if auto:
        t_init = time.perf_counter()
        k = k_search
        level = L.prepare_level(pyr_f[k], pyr_fm[k], pyr_g[k], pyr_gm[k], MARGIN_COARSE,
                                **_points(k))
        prepared[k] = level
        start, init_info = global_init.search(level, pyr_f[k], pyr_g[k], pyr_fm[k], pyr_gm[k],
                                              to_level(m, k), min_overlap)
        m = from_level(start, k)
        init_info["method"] = "auto"
        init_info["level"] = k
        init_info["time_s"] = round(time.perf_counter() - t_init, 6)
    tx0, ty0, th0 = rigid_params(m)
    init_info.update(tx=tx0, ty=ty0, theta_deg=math.degrees(th0))

    records: list[LevelRecord] = []
    converged = False
    reason: str | None = None
    loss_value = math.inf
    # After a global search, levels coarser than the one searched have nothing left to find,
    # and down to level 2 the descent can halve the resolution twice per step: a level
    # converged to a hundredth of its pixels lands well inside the capture range of the level
    # four times finer. Levels 1 and 0 always run: on noisy images the finest level's loss
    # moves with the noise about as much as with a few hundredths of a pixel, so it needs a
    # start that close.
    if auto:
        first = min(n_levels - 1, k_search)
        schedule = [*range(first, 1, -2), *range(min(first, 1), -1, -1)]
    else:
        schedule = list(range(n_levels - 1, -1, -1))
    for index, k in enumerate(schedule):
        t_level = time.perf_counter()
        margin = MARGIN_FINE if k == 0 else MARGIN_COARSE
        level = prepared.pop(k, None) if margin == MARGIN_COARSE else None
        if level is None:
            level = L.prepare_level(pyr_f[k], pyr_fm[k], pyr_g[k], pyr_gm[k], margin,
                                    **_points(k))
        center = image_center(pyr_f[k].shape)
        level_tol = tol if k == 0 else max(tol, COARSE_TOL)
        out = solver(level, to_level(m, k), center, metric, level_tol, iters, min_overlap)
        m = from_level(out.matrix, k)
        loss_value = out.loss
        rec = LevelRecord(k, pyr_f[k].shape, out.iterations, out.loss, out.converged,
                          time.perf_counter() - t_level)
        records.append(rec)
        if progress is not None:
            progress(rec, index, len(schedule))
        converged, reason = out.converged, out.reason
        if reason is not None and not reason.startswith("did not converge"):
            break  # a failure (overlap lost, divergence): finer levels cannot rescue it
    if not converged and reason is None:
        reason = "stopped before the finest level"
    if reason is not None and reason.startswith("did not converge") and records:
        reason = f"{reason} at level {records[-1].level}"

    tx, ty, theta = rigid_params(m)
    m = rigid_matrix(tx, ty, theta)  # re-orthonormalize what round-off left
    overlap = L.overlap_fraction(m, f.shape, g.shape)
    ncc, rms, gain, offset, detail, needed = _quality(f, f_mask, g, g_mask, m)
    if converged and not (detail >= needed and ncc >= NCC_FLOOR):
        converged = False
        reason = (f"the images do not match: their detail correlates at {detail:.2f} over the "
                  f"overlap after alignment (a match has at least {needed}; plain NCC "
                  f"{ncc:.2f})")
    elif converged and metric == "ssd" and not (
            abs(math.log(gain)) <= math.log(MAX_SSD_GAIN) and abs(offset) <= MAX_SSD_OFFSET):
        # ssd compares raw intensities: under a gain or offset its minimum moves, by a few
        # pixels or, on smooth images, by tens. Say so rather than hand back a biased answer.
        converged = False
        reason = (f"the images' intensities differ (gain {gain:.2f}, offset {offset:+.2f} "
                  f"standard deviations): the ssd metric is biased by that; use the ncc metric")
    center0 = image_center(f.shape)
    sx, sy, _ = center_params(m, center0)
    return Result(
        matrix=m[:2].copy(), tx=tx, ty=ty, theta=theta, center=center0, shift=(sx, sy),
        metric=metric, optimizer=optimizer, loss=loss_value, converged=converged,
        reason=None if converged else reason, levels=records,
        time_s=time.perf_counter() - t_start, overlap=overlap,
        target_shape=(int(f.shape[0]), int(f.shape[1])),
        source_shape=(int(g.shape[0]), int(g.shape[1])),
        ncc=ncc, residual=rms, detail_ncc=detail, init=init_info,
    )


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    taps = gaussian_taps(sigma)
    along_x = ndimage.correlate1d(image, taps, axis=1, mode="nearest", output=np.float32)
    return correlate_rows(along_x, taps, mode="nearest")


# Detail bands (Gaussian sigmas of a difference of Gaussians, in quality-grid pixels), finest
# first, with the band-pass NCC each needs to call two images the same scene. The fine band
# decides unless noise swamps it (its expected NCC for a perfect match under 0.5); then the
# coarse one does, with a higher bar since unrelated shading agrees more at coarse scales.
DETAIL_BANDS = ((1.0, 3.0, 0.35), (3.0, 9.0, 0.55))
# Whatever the detail says, aligned views of one scene correlate at least this much overall.
NCC_FLOOR = 0.2
# ssd's answer is trusted only while the intensities agree: spreads within 10% and means within
# a tenth of the target's spread.
MAX_SSD_GAIN = 1.1
MAX_SSD_OFFSET = 0.1
_SECOND_DIFF = np.array([1.0, -2.0, 1.0], dtype=np.float32)


def _noise_sigma(image: np.ndarray, valid: np.ndarray) -> float:
    """White-noise standard deviation of an image (Immerkaer's estimator, 1996).

    Its 3x3 kernel is the outer product of two second differences, so it runs as two 1-D passes.
    """
    response = ndimage.correlate1d(image, _SECOND_DIFF, axis=1, mode="nearest")
    response = np.abs(correlate_rows(response, _SECOND_DIFF, mode="nearest"))
    inner = ndimage.minimum_filter(valid, size=3, mode="constant")
    if not inner.any():
        return 0.0
    return math.sqrt(math.pi / 2) / 6.0 * float(response[inner].mean())


@lru_cache(maxsize=8)
def _band_noise_gain(fine: float, coarse: float) -> float:
    """Variance of the band-passed image per unit variance of white noise: sum of taps^2."""
    r = int(3 * coarse) + 1
    impulse = np.zeros((2 * r + 1, 2 * r + 1), dtype=np.float32)
    impulse[r, r] = 1.0
    kernel = _gaussian(impulse, fine) - _gaussian(impulse, coarse)
    return float(np.sum(kernel.astype(np.float64) ** 2))


def _detail(warped: np.ndarray, target: np.ndarray, valid: np.ndarray
            ) -> tuple[float, float, float, float]:
    """Band-pass NCC of the two grids over the overlap in the finest band noise allows, the
    value a match needs in that band, and the intensity gain and offset of target vs source.

    Gain (ratio of spreads) and offset (difference of means, in target spreads) are read off
    the images blurred by the first band's coarse Gaussian: raw spreads include the noise, and
    the source's is lowered by interpolation, which on a noisy low-contrast pair alone can
    look like a 15% gain.

    A band that shows a match settles it. A band that does not settles it only if it is clean
    enough to have shown one (expected NCC of a perfect match, given each image's noise, of 0.5
    or more); otherwise the next, coarser band decides.
    """
    a = warped[valid]
    filled = np.where(valid, warped, np.float32(a.mean()))
    blurred: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    noise: tuple[float, float] | None = None
    result = (math.nan, DETAIL_BANDS[0][2])
    gain = offset = math.nan
    for fine, coarse, bar in DETAIL_BANDS:
        for sg in (fine, coarse):
            if sg not in blurred:
                blurred[sg] = (_gaussian(filled, sg), _gaussian(target, sg))
        # only pixels whose filter window lies wholly inside the overlap
        inner = ndimage.minimum_filter(valid, size=2 * int(3 * coarse) + 1, mode="constant")
        # a band needs room: a sliver of overlap correlates by chance, and a coarser band (a
        # wider window) may not replace a finer one on less than a quarter of the overlap
        room = 64 if fine == DETAIL_BANDS[0][0] else max(256, np.count_nonzero(valid) // 4)
        if np.count_nonzero(inner) < room:
            break
        if math.isnan(gain):
            sw = blurred[coarse][0][inner].astype(np.float64)
            st = blurred[coarse][1][inner].astype(np.float64)
            spread_w, spread_t = float(sw.std()), float(st.std())
            gain = spread_t / spread_w if spread_w > 0 else math.nan
            offset = (float(st.mean()) - float(sw.mean())) / spread_t if spread_t > 0 else math.nan
        bw = (blurred[fine][0] - blurred[coarse][0])[inner]
        bt = (blurred[fine][1] - blurred[coarse][1])[inner]
        result = (_ncc(bw, bt), bar)
        if result[0] >= bar:
            break
        if noise is None:
            noise = (_noise_sigma(filled, valid), _noise_sigma(target, valid))
        gain = _band_noise_gain(fine, coarse)
        tw, tt = float(np.var(bw)), float(np.var(bt))
        signal = max(tw - gain * noise[0] ** 2, 0.0) * max(tt - gain * noise[1] ** 2, 0.0)
        expected = math.sqrt(signal / (tw * tt)) if tw > 0 and tt > 0 else 0.0
        if expected >= 0.5:
            break
    return result + (gain, offset)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    # centred in their own float32 (the sums accumulate in float64): no float64 copies
    a = a - a.dtype.type(a.mean(dtype=np.float64))
    b = b - b.dtype.type(b.mean(dtype=np.float64))
    den = math.sqrt(L.dot(a, a) * L.dot(b, b))
    return L.dot(a, b) / den if den > 0 else math.nan


def _quality(f: np.ndarray, f_mask: np.ndarray | None, g: np.ndarray, g_mask: np.ndarray | None,
             m: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """Over the overlap: NCC, RMS difference, intensity gain and offset (target vs source),
    band-pass NCC and the band-pass NCC a match needs.

    Sampled on a regular grid of the target (every other pixel, coarser on images over 256
    pixels) with bilinear interpolation: plenty for a statistic, and a small part of the call.
    The band-pass NCC compares detail only: two unrelated photographs can share smooth shading
    well enough for a plain NCC of 0.5 or more, but not their fine structure.
    """
    # Every other pixel, or a coarser regular grid of about 128 x 128 on large images: the
    # statistics need no more, and the check stays a few milliseconds at any size.
    step = max(2, math.ceil(max(f.shape[0], f.shape[1]) / QUALITY_GRID))
    shape = ((f.shape[0] + step - 1) // step, (f.shape[1] + step - 1) // step)
    sub = m @ np.diag([float(step), float(step), 1.0])
    rc, offset = ndimage_affine(sub)
    warped = ndimage.affine_transform(g, rc, offset=offset, output_shape=shape,
                                      output=np.float32, order=1, mode="constant", cval=np.nan)
    target = f[::step, ::step]
    valid = np.isfinite(warped)
    if f_mask is not None:
        valid &= f_mask[::step, ::step]
    if g_mask is not None:
        bad = ndimage.affine_transform((~g_mask).astype(np.float32), rc, offset=offset,
                                       output_shape=shape, order=1, mode="constant", cval=1.0)
        valid &= bad == 0
    if np.count_nonzero(valid) < 16:
        return math.nan, math.nan, math.nan, math.nan, math.nan, DETAIL_BANDS[0][2]
    a, b = warped[valid], target[valid]
    diff = a - b
    rms = math.sqrt(L.dot(diff, diff) / diff.size)
    del diff
    ncc = _ncc(a, b)
    del a, b
    detail, needed, gain, offset = _detail(warped, np.ascontiguousarray(target), valid)
    return ncc, rms, gain, offset, detail, needed
