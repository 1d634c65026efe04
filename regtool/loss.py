"""Per-level image model and metrics: sampling, overlap, residuals, gradients.

Everything here works at one pyramid level, in that level's pixel coordinates, on float32 arrays.

Image model
-----------
Both images are seen through one cubic B-spline kernel with their samples as the coefficients (the
smoothing, "approximating" spline): the source is sampled at warped points as
``map_coordinates(order=3, prefilter=False)`` would (the solver's iterations through
:meth:`LevelImages.sample_cubic`, the same sum in float32), and the target at its own pixel
centers, where the same spline reduces to the 3-tap filter ``(1, 4, 1) / 6`` along each axis, with
exact derivatives ``(-1/2, 0, 1/2)`` along one axis and ``(1, 4, 1) / 6`` along the other. The
spline is C2, so the loss surface has no kinks at integer shifts (bilinear's has), and with
identical blur on both sides a perfect match stays a perfect match. Against interpolating the
source (prefilter, then sample) it saves the prefilter's full-image passes and an image-sized
coefficient array per level; its sub-pixel behaviour is the same order (both kernels pass the
aliased part of the spectrum at about 1% at half the Nyquist frequency).

Metrics
-------
``ssd``
    Mean over the overlap of ``(g(Psi(x)) - f(x))**2``: the mission's loss.
``ncc``
    Zero-mean normalized cross-correlation, optimized through standardized residuals
    (:class:`Residual`); the reported loss is ``1 - ncc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache, partial

import numpy as np
from scipy import ndimage

from ._threads import MIN_PARALLEL_PIXELS, run_all, thread_count
from .resample import ndimage_affine

__all__ = [
    "LevelImages",
    "Taps",
    "Evaluation",
    "prepare_level",
    "spline_view",
    "spline_at",
    "overlap_fraction",
    "Residual",
    "residual",
    "loss_and_gradient",
]

# Cubic B-spline: its loss surface has no kinks at integer shifts (bilinear's has), which matters
# for the last hundredth of a pixel.
ORDER = 3

# Levels with more usable target pixels than DENSE_LIMIT register on a selection of them: the
# most textured SELECT_FRACTION, but about max_points at most (the driver's choice: MAX_POINTS,
# 16384, measured as accurate as 32768 at 251x301 on the benchmark's noisy tier; level 1 more,
# since on noisy images it may finish the registration, see register._level1_is_better; at
# 1024x1024 level 0's 16384 points keep only 5-46% of the image's information) and, on levels
# 2 and up (which only have to land inside
# the next level's capture range), MIN_POINTS_COARSE at least. Flat pixels carry little
# information about the motion but cost as much to sample as an edge, and a cubic sample costs
# ~60 ns whatever the image size.
DENSE_LIMIT = 1 << 14
SELECT_FRACTION = 0.25
MAX_POINTS = 1 << 14
MIN_POINTS_COARSE = 1 << 12
# Target pixels handled per block while preparing a level: at most STRIP_PIXELS (a few hundred
# kilobytes per array, so the filters run in cache and nothing image-sized is allocated) and at
# most an eighth of the level, down to MIN_STRIP_PIXELS (below that, per-block overhead shows).
STRIP_PIXELS = 1 << 17
MIN_STRIP_PIXELS = 1 << 13
# Pixels of the regular subsample that sets the selection threshold.
PROBE_PIXELS = 1 << 13
SELECT_SPACING = 2
# Central-difference step (source pixels) for the source's derivative in loss_and_gradient.
FD_STEP = 1e-2


@dataclass
class Taps:
    """One sampling of the source spline (:meth:`LevelImages.sample_taps`).

    Attributes
    ----------
    rc : (2, n) float64
        The sampled (row, col) positions.
    values : (n,) float32
        The spline there (0 where the sampling's ``valid`` was False).
    block : (4, 4, n) float32
        Each point's 4x4 coefficients, rows first (meaningless where not ``inside``).
    wy : (4, n) float32
        The value weights along the rows.
    along_x : (4, n) float32
        ``block`` contracted with the value weights along the columns.
    inside : (n,) bool
        Points whose 4x4 taps lie inside the image (the others were sampled by scipy).
    """

    rc: np.ndarray
    values: np.ndarray
    block: np.ndarray
    wy: np.ndarray
    along_x: np.ndarray
    inside: np.ndarray


@dataclass
class Evaluation:
    """The loss evaluated at one point of a solve: what the error bars read at the answer.

    Attributes
    ----------
    matrix : (3, 3) ndarray
        Target -> source, level pixels.
    valid : (n,) bool
        The points in the overlap there.
    taps : Taps
        The source's sampling.
    residual : Residual
        The residual (without ``e_grad``).
    """

    matrix: np.ndarray
    valid: np.ndarray
    taps: Taps
    residual: Residual


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
        Target spline values f at the points.
    grad_x, grad_y : (n,) float32
        The target spline's exact derivatives at the points.
    target_valid : (n,) bool
        Points that may count: inside the border margin and not masked.
    index : (n,) int or None
        Raster indices of the points in the grid (None when dense).
    source_coeffs : (h, w) float32
        The source level's samples, which are its cubic B-spline coefficients.
    source_invalid : (h, w) bool or None
        Source pixels whose neighbourhood holds masked values (None: none masked).
    margin : float
        Sampled source points must lie at least this far inside the source's pixel centers.
    usable : (h, w) bool or None
        A selected level's usable target pixels when the target is masked (None: every pixel
        ``margin`` inside the border), for :meth:`area_overlap`.
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
    usable: np.ndarray | None = None
    _coords: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def dense(self) -> bool:
        return self.index is None

    @property
    def source_shape(self) -> tuple[int, int]:
        return self.source_coeffs.shape  # type: ignore[return-value]

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the points, float32 (integers, so exact up to 2**24)."""
        if self._coords is None:
            if self.index is None:
                ys, xs = np.indices(self.shape, dtype=np.float32)
                self._coords = (xs.ravel(), ys.ravel())
            else:
                ys, xs = np.divmod(self.index, self.shape[1])
                self._coords = (xs.astype(np.float32), ys.astype(np.float32))
        return self._coords

    def source_coords(self, matrix: np.ndarray) -> np.ndarray:
        """(2, n) source (row, col) of every point under ``matrix``, float64; pass it on to
        reuse it."""
        xs, ys = self.coords()
        out = np.empty((2, xs.size))
        tmp = np.empty(xs.size)
        # products in float64 (dtype=): a float32 product would round positions at 1e-4 px
        for row, (a, b, c) in enumerate((matrix[1], matrix[0])):  # row = y', col = x'
            np.multiply(xs, a, out=out[row], dtype=np.float64)
            np.multiply(ys, b, out=tmp, dtype=np.float64)
            out[row] += tmp
            out[row] += c
        return out

    def sample(self, coeffs: np.ndarray, matrix: np.ndarray, order: int = ORDER,
               mode: str = "mirror", cval: float = 0.0, rc: np.ndarray | None = None,
               output: type = np.float32) -> np.ndarray:
        """Values of the spline ``coeffs`` at ``matrix @ [x, y, 1]`` for every point.

        ``rc`` is :meth:`source_coords` of ``matrix`` when the caller has it already.
        """
        if self.index is None and rc is None:
            m_rc, offset = ndimage_affine(matrix)
            return ndimage.affine_transform(
                coeffs, m_rc, offset=offset, output_shape=self.shape, output=output,
                order=order, mode=mode, cval=cval, prefilter=False,
            ).ravel()
        if rc is None:
            rc = self.source_coords(matrix)
        return ndimage.map_coordinates(coeffs, rc, output=output, order=order, mode=mode,
                                       cval=cval, prefilter=False)

    def sample_cubic(self, rc: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The source spline at ``rc`` (float32) where ``valid``; 0 elsewhere.

        One 16-tap gather and two small contractions in float32, instead of scipy's per-point
        loop in float64: 0.53 instead of 0.91 ms at 16384 points (float64 here took 0.76 ms).
        The values differ from :meth:`sample`'s by a few float32 roundings (1e-7 relative); over
        the benchmark's 90 cases of the small, medium and gain tiers that moved the results by
        at most 5e-7 px and changed no error by more than 2e-5 of itself. Points whose taps
        leave the image (a sample exactly on the margin) go through scipy.
        """
        return self.sample_taps(rc, valid).values

    def sample_taps(self, rc: np.ndarray, valid: np.ndarray) -> Taps:
        """:meth:`sample_cubic`, with the taps and weights that made the values (:class:`Taps`):
        the spline's derivatives at the same points then cost two contractions.

        In chunks of TAPS_CHUNK points: the (16, n) tap index and the weights of a chunk stay
        in cache, where the whole set's (a 33 MB index at 262144 points) would be allocated
        and filled afresh at every sampling (the same values to the bit)."""
        coeffs = self.source_coeffs
        h, w = coeffs.shape
        n = rc.shape[1]
        flat = coeffs.reshape(-1)
        taps = _taps(w)
        if n <= TAPS_CHUNK:
            out, block, wy, along_x, inside = _taps_chunk(flat, taps, h, w, rc)
        else:
            out = np.empty(n, dtype=np.float32)
            block = np.empty((4, 4, n), dtype=np.float32)
            wy = np.empty((4, n), dtype=np.float32)
            along_x = np.empty((4, n), dtype=np.float32)
            inside = np.empty(n, dtype=bool)

            def chunk(i: int, j: int) -> None:
                (out[i:j], block[:, :, i:j], wy[:, i:j], along_x[:, i:j],
                 inside[i:j]) = _taps_chunk(flat, taps, h, w, rc[:, i:j])
            run_all([partial(chunk, i, min(n, i + TAPS_CHUNK)) for i in range(0, n, TAPS_CHUNK)],
                    thread_count(n))
        out[~valid] = 0.0
        edge = np.flatnonzero(valid & ~inside)
        if edge.size:
            out[edge] = ndimage.map_coordinates(coeffs, rc[:, edge], output=np.float32,
                                                order=ORDER, mode="mirror", prefilter=False)
        return Taps(rc, out, block, wy, along_x, inside)

    def overlap(self, matrix: np.ndarray, rc: np.ndarray | None = None) -> np.ndarray:
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
            if rc is None:
                rc = self.source_coords(matrix)
            inside = (rc[0] >= m - eps) & (rc[0] <= sh - 1 - m + eps)
            inside &= rc[1] >= m - eps
            inside &= rc[1] <= sw - 1 - m + eps
        inside &= self.target_valid
        if self.source_invalid is not None:
            bad = self.sample(self.source_invalid.astype(np.float32), matrix, order=1,
                              mode="constant", cval=1.0, rc=rc)
            inside &= bad == 0
        return inside

    def area_overlap(self, matrix: np.ndarray) -> float:
        """Share of the level's usable target pixels, not only its points, that count at
        ``matrix`` (as :meth:`overlap` decides), read on a regular sub-grid of about
        AREA_PROBE pixels.

        A selected level's points are its most textured pixels, which may lie mostly on one side
        of the image: their share in the overlap is not the overlap's share of the image (a
        noise-free 251x301 crop 67% inside the source had 22% of its points there).
        """
        h, w = self.shape
        m = int(math.ceil(self.margin))
        step = max(1, int(math.sqrt(h * w / AREA_PROBE)))
        ys, xs = np.mgrid[m : h - m : step, m : w - m : step]
        if self.usable is not None:
            keep = self.usable[ys, xs]
            ys, xs = ys[keep], xs[keep]
        if ys.size == 0:
            return 0.0
        # the level seen through the sub-grid's pixels: overlap() reads only their coordinates
        # and validity (the per-point target arrays are left as they are, unread)
        probe = replace(self, target_valid=np.ones(ys.size, dtype=bool),
                        index=(ys * w + xs).ravel(), _coords=None)
        return float(np.count_nonzero(probe.overlap(matrix))) / ys.size


# Points a sampling handles at a time (:meth:`LevelImages.sample_taps`).
TAPS_CHUNK = 1 << 15
# Pixels :meth:`LevelImages.area_overlap` reads (at most a few hundred microseconds).
AREA_PROBE = 1 << 14


def _taps_chunk(flat: np.ndarray, taps: np.ndarray, h: int, w: int, rc: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of :meth:`LevelImages.sample_taps`: the values (before the overlap and the
    border points are seen to), the (4, 4, n) taps, the row weights, the taps contracted
    along the columns, and which points have every tap inside the image."""
    wy, fy = _cubic_weights(rc[0], np.float32)
    wx, fx = _cubic_weights(rc[1], np.float32)
    # 0 <= first <= size - 4, negative firsts wrapping to huge unsigned ones
    inside = fy.view(np.uintp) <= h - 4
    inside &= fx.view(np.uintp) <= w - 4
    first = fy * w
    first += fx
    if not inside.all():
        first[~inside] = 0
    # np.take, not fancy indexing: 0.15 against 0.25 ms for 16 x 16384 taps
    block = np.take(flat, first + taps).astype(np.float32, copy=False)
    block = block.reshape(4, 4, -1)
    along_x = np.einsum("bn,abn->an", wx, block)
    out = np.einsum("an,an->n", wy, along_x)
    return out, block, wy, along_x, inside


@lru_cache(maxsize=16)
def _taps(width: int) -> np.ndarray:
    """Raster offsets ``(16, 1)`` of a 4x4 neighbourhood in an image ``width`` pixels wide."""
    return (np.arange(4)[:, None] * width + np.arange(4)[None, :]).reshape(16, 1)


def _cubic_weights(x: np.ndarray, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline weights ``(4, n)`` at ``x`` of the taps from ``floor(x) - 1`` on, and
    that first tap."""
    f = np.floor(x)
    t = (x - f).astype(dtype, copy=False)  # the fraction exact in float64, then rounded
    first = f.astype(np.intp)
    first -= 1
    t2 = t * t
    t3 = t2 * t
    u = 1.0 - t
    weights = np.empty((4, x.size), dtype=dtype)
    np.multiply(u * u, u * (1.0 / 6.0), out=weights[0])
    np.multiply(t3, 1.0 / 6.0, out=weights[3])
    np.subtract(0.5 * t3 + 2.0 / 3.0, t2, out=weights[1])
    np.subtract(1.0 - weights[0], weights[1], out=weights[2])  # the weights sum to 1
    weights[2] -= weights[3]
    return weights, first


def spline_view(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target spline at the pixel centers of the rows inside a block with one halo row each side.

    For ``block`` of ``(m + 2, w)`` rows (the first and last only as neighbours) returns, for
    the ``m`` inner rows, the spline's value and exact derivatives ``(value, grad_x, grad_y)``.
    Columns mirror at the edges (``c[-1] = c[1]``), as scipy's ``mode="mirror"`` does.
    """
    up, mid, down = block[:-2], block[1:-1], block[2:]
    v = np.add(up, down, dtype=np.float32)  # the (1, 4, 1) / 6 filter along y
    dy = np.subtract(down, up, dtype=np.float32)
    dy *= np.float32(0.5)
    v += np.float32(4.0) * mid
    v *= np.float32(1.0 / 6.0)
    return _along_x(v, smooth=True), _along_x(v, smooth=False), _along_x(dy, smooth=True)


def _along_x(a: np.ndarray, smooth: bool) -> np.ndarray:
    """``(1, 4, 1) / 6`` (smooth) or ``(-1/2, 0, 1/2)`` along the last axis, mirror edges."""
    out = np.empty_like(a)
    if a.shape[1] < 3:
        out[...] = a if smooth else 0.0
        return out
    left, right = a[:, :-2], a[:, 2:]
    inner = out[:, 1:-1]
    if smooth:
        np.add(left, right, out=inner)
        inner += np.float32(4.0) * a[:, 1:-1]
        inner *= np.float32(1.0 / 6.0)
        out[:, 0] = (np.float32(4.0) * a[:, 0] + np.float32(2.0) * a[:, 1]) / np.float32(6.0)
        out[:, -1] = (np.float32(4.0) * a[:, -1] + np.float32(2.0) * a[:, -2]) / np.float32(6.0)
    else:
        np.subtract(right, left, out=inner)
        inner *= np.float32(0.5)
        out[:, 0] = 0.0  # mirror: the neighbours are equal
        out[:, -1] = 0.0
    return out


def _strength(target: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """Squared differences two pixels apart, ``(f[x+2] - f[x-2])**2 + (f[y+2] - f[y-2])**2``.

    The selection's measure of texture, cheap over the whole image (the spline's derivatives are
    then gathered at the chosen pixels only). Two pixels apart, not one, so that it reads none
    of the pixels the spline derivative at that pixel reads: selecting on the same noisy values
    the steepest-descent images are made of picks pixels whose gradient noise happens to be
    large, which inflates the Hessian and slows and biases the descent. On the benchmark's
    noisy tier this halved the mean error at 251x301 (worst case 0.10 -> 0.04 px) and let the
    finest level drop from 32768 to 16384 points with no loss of accuracy.
    """
    d = SELECT_SPACING

    def moved(s: slice, by: int) -> slice:
        return slice(s.start + by, s.stop + by, s.step)

    dx = np.subtract(target[rows, moved(cols, d)], target[rows, moved(cols, -d)],
                     dtype=np.float32)
    dy = np.subtract(target[moved(rows, d), cols], target[moved(rows, -d), cols],
                     dtype=np.float32)
    np.multiply(dx, dx, out=dx)
    np.multiply(dy, dy, out=dy)
    dx += dy
    return dx


def _threshold(target: np.ndarray, target_valid: np.ndarray | None, m: int, n_valid: int,
               keep: int) -> float:
    """:func:`_strength` level above which about ``keep`` of the ``n_valid`` pixels lie.

    Read off a regular subsample of about PROBE_PIXELS pixels (every s-th row and column): an
    exact order statistic over every pixel costs more than the rest of the selection, and the
    count only has to be about right.
    """
    h, w = target.shape
    step = max(1, int(math.sqrt(n_valid / PROBE_PIXELS)))
    rows, cols = slice(m, h - m, step), slice(m, w - m, step)
    strength = _strength(target, rows, cols)
    if target_valid is not None:
        strength = strength[target_valid[rows, cols]]
    probe = strength.ravel()
    if probe.size == 0:
        return 0.0
    rank = probe.size - max(1, round(probe.size * keep / n_valid))
    rank = min(max(rank, 0), probe.size - 1)
    return float(np.partition(probe, rank)[rank])


def spline_at(target: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """The target spline's value and exact derivatives at raster ``index`` (never a border
    pixel): the 3x3 filters of :func:`spline_view`, evaluated at those pixels only, TAPS_CHUNK
    pixels at a time (their gathers stay in cache)."""
    flat = target.reshape(-1)
    w = target.shape[1]
    n = index.size
    if n <= TAPS_CHUNK:
        return _spline_chunk(flat, w, index)
    out = np.empty((3, n), dtype=np.float32)

    def chunk(i: int, j: int) -> None:
        out[0, i:j], out[1, i:j], out[2, i:j] = _spline_chunk(flat, w, index[i:j])
    run_all([partial(chunk, i, min(n, i + TAPS_CHUNK)) for i in range(0, n, TAPS_CHUNK)],
            thread_count(n))
    return out[0], out[1], out[2]


def _spline_chunk(flat: np.ndarray, w: int, index: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`spline_at` at some of the pixels (``flat``: the target, raveled)."""
    index = index.astype(np.intp)  # once, not once per gather
    sixth = np.float32(1.0 / 6.0)
    rows_h, rows_d = [], []
    for offset in (-w, 0, w):
        left, mid, right = (np.take(flat, index + (offset + d)) for d in (-1, 0, 1))
        d = right - left
        d *= np.float32(0.5)
        left += right
        left += np.float32(4.0) * mid
        left *= sixth
        rows_h.append(left)
        rows_d.append(d)
    value = (rows_h[0] + rows_h[2] + np.float32(4.0) * rows_h[1]) * sixth
    gx = (rows_d[0] + rows_d[2] + np.float32(4.0) * rows_d[1]) * sixth
    gy = (rows_h[2] - rows_h[0]) * np.float32(0.5)
    return value.astype(np.float32, copy=False), gx, gy


def prepare_level(
    target: np.ndarray,
    target_valid: np.ndarray | None,
    source: np.ndarray,
    source_valid: np.ndarray | None,
    margin: float,
    select: bool = True,
    max_points: int = MAX_POINTS,
    min_points: int = DENSE_LIMIT,
) -> LevelImages:
    """Precompute the per-level data: the target spline's values and derivatives, the masks.

    With ``select`` and more than ``min_points`` usable target pixels, keep only the most
    textured ones (:func:`_strength`): a quarter of them, between about ``min_points`` and
    ``max_points``. The target is processed in blocks of rows, so apart from the selected points
    nothing image-sized is allocated; the source is used as it is.
    """
    h, w = target.shape
    m = int(math.ceil(margin))
    if target_valid is not None and not target_valid.all():
        # A point's spline value and derivatives read its 3x3 neighbourhood and the selection's
        # strength pixels two away: next to a masked pixel both would see the fill value, a
        # false edge the source does not have, which the selection then favours. With a 40x80
        # NaN hole in a noisy 256x256 photograph this took the error from 0.0014 to 0.0049 px.
        target_valid = ndimage.binary_erosion(target_valid, iterations=SELECT_SPACING,
                                              border_value=1)
    s_inv = None
    if source_valid is not None and not source_valid.all():
        # A cubic spline sample draws on a 4x4 neighbourhood: grow the invalid set by 2.
        s_inv = ndimage.binary_dilation(~source_valid, iterations=2)
    inner = max(h - 2 * m, 0) * max(w - 2 * m, 0)
    n_valid = inner if target_valid is None else int(np.count_nonzero(
        target_valid[m : h - m, m : w - m]))
    keep = min(max(min_points, int(SELECT_FRACTION * n_valid)), max(max_points, min_points))
    if not select or n_valid <= keep:
        # mirrored halo rows (row -1 is row 1), as along x
        value, gx, gy = spline_view(np.pad(target, ((1, 1), (0, 0)), mode="reflect"))
        tv = np.zeros((h, w), dtype=bool)
        # Border pixels of a blurred level were filtered with padded values: leave them out.
        tv[m : h - m, m : w - m] = True
        if target_valid is not None:
            tv &= target_valid
        return LevelImages((h, w), value.ravel(), gx.ravel(), gy.ravel(), tv.ravel(), None,
                           source, s_inv, margin)
    mm = max(m, SELECT_SPACING)  # what a chosen pixel's measures read lies inside the image
    threshold = _threshold(target, target_valid, mm, n_valid, keep)
    cols = slice(mm, w - mm)
    wi = w - 2 * mm
    strip = min(STRIP_PIXELS, max(MIN_STRIP_PIXELS, h * w // 8))
    rows_per_strip = max(1, strip // max(w, 1))

    def strip_points(r0: int) -> np.ndarray:
        r1 = min(r0 + rows_per_strip, h - mm)
        chosen = _strength(target, slice(r0, r1), cols) >= threshold
        if target_valid is not None:
            chosen &= target_valid[r0:r1, cols]
        local = np.flatnonzero(chosen)  # raster order keeps the source reads local
        rr, cc = np.divmod(local, wi)
        return (rr + r0) * w + (cc + mm)
    found = run_all([partial(strip_points, r0) for r0 in range(mm, h - mm, rows_per_strip)],
                    thread_count(h * w, MIN_PARALLEL_PIXELS))
    index = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    if index.size > 2 * keep:
        # many equal strengths at the threshold (a ramp, a synthetic pattern): thin evenly
        index = index[np.linspace(0, index.size - 1, keep).round().astype(np.intp)]
    if h * w < 2**31:
        index = index.astype(np.int32)  # half the memory of the per-point index
    vals, gxs, gys = spline_at(target, index)
    return LevelImages((h, w), vals, gxs, gys, np.ones(index.size, dtype=bool), index,
                       source, s_inv, margin, target_valid)


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
    # converted first: einsum's own casting (dtype=) took twice as long (0.093 against 0.047
    # ms for 3 x 16384 float32)
    rows = rows.astype(np.float64, copy=False)
    return np.einsum("ij,kj->ik", rows, rows)


def _sum_squares(e: np.ndarray) -> float:
    # float32 accumulation over a million pixels loses the last digits the optimizers compare
    flat = e.ravel()
    return dot(flat, flat)


def residual(warped: np.ndarray, target: np.ndarray, valid: np.ndarray, metric: str,
             gradient: bool = True) -> Residual:
    """Residual of the warped source against the target over ``valid`` pixels.

    ``gradient=False`` leaves ``e_grad`` None (for ``ncc``: one image-sized array less, which
    only the gradient-based solvers read).
    """
    n = int(np.count_nonzero(valid))
    if n == 0:
        return Residual(np.zeros_like(target), valid, 0, math.inf, math.inf, 1.0)
    if metric == "ssd":
        e = np.subtract(warped, target, dtype=np.float32)
        e[~valid] = 0.0
        obj = _sum_squares(e) / n
        return Residual(e, valid, n, obj, obj, 1.0, e)
    every = n == valid.size  # no masked gathers then (the usual case on a coarse level)
    gv = (warped if every else warped[valid]).astype(np.float64)
    fv = (target if every else target[valid]).astype(np.float64)
    gm, fm = gv.mean(), fv.mean()
    gc, fc = gv - gm, fv - fm
    sgg, sff, sgf = dot(gc, gc), dot(fc, fc), dot(gc, fc)
    if sgg <= 0.0 or sff <= 0.0:
        return Residual(np.zeros_like(target), valid, n, math.inf, math.inf, 1.0)
    a = math.sqrt(sff / sgg)
    ncc = sgf / math.sqrt(sgg * sff)

    def on_overlap(values: np.ndarray) -> np.ndarray:
        if every:
            return values.astype(np.float32)
        out = np.zeros(target.shape, dtype=np.float32)
        out[valid] = values
        return out

    e = on_overlap(a * gc - fc)
    e_grad = on_overlap(a * ncc * gc - fc) if gradient else None
    obj = 2.0 * sff * (1.0 - ncc) / n
    return Residual(e, valid, n, obj, 1.0 - ncc, a, e_grad)


def loss_and_gradient(
    level: LevelImages,
    matrix: np.ndarray,
    gradient: bool,
    center: tuple[float, float] | None,
    metric: str,
) -> tuple[Residual, np.ndarray | None]:
    """Objective at ``matrix`` and, with ``gradient``, its gradient in rigid parameters.

    The parameters are ``(sx, sy, theta)`` about ``center`` (``center=(0, 0)`` gives the seed's
    origin-based ``(tx, ty, theta)``), perturbing ``matrix`` as ``about_center(p) @ ...``: the
    derivative is taken at the current matrix with respect to the parameters of the matrix itself,
    ``Psi(x) = R(theta)(x - c) + c + s``.

    The source spline's derivative at the warped points comes from central differences of the
    spline itself, ``FD_STEP`` source pixels apart: the spline is a piecewise cubic with
    continuous second derivative, so this is exact to about ``FD_STEP**2``, far below what the
    gradient-based solvers can use.

    Returns
    -------
    residual : Residual
    gradient : (3,) ndarray or None
        ``d objective / d (sx, sy, theta)``.
    """
    rc = level.source_coords(matrix)
    valid = level.overlap(matrix, rc)
    res = residual(level.sample(level.source_coeffs, matrix, rc=rc), level.target, valid, metric)
    if not gradient or res.count == 0:
        return res, None
    grads = []
    for axis in (1, 0):  # d/dx' (columns), then d/dy' (rows)
        shifted = rc.copy()
        shifted[axis] += FD_STEP
        plus = level.sample(level.source_coeffs, matrix, rc=shifted, output=np.float64)
        shifted[axis] -= 2 * FD_STEP
        minus = level.sample(level.source_coeffs, matrix, rc=shifted, output=np.float64)
        grads.append((plus - minus) / (2 * FD_STEP))
    gxw, gyw = grads
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
