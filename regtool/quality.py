"""The match decision after aligning: NCC, detail (band-pass) NCC and intensity agreement.

Whether two aligned images show the same scene is decided on a regular grid of the target
(about 128 x 128) with bilinear sampling: plenty for a statistic, and a few milliseconds at any
size. The band-pass NCC compares detail only: two unrelated photographs can share smooth shading
well enough for a plain NCC of 0.5 or more, but not their fine structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from . import loss as L
from ._filters import correlate_rows, gaussian_taps
from .resample import bilinear_nan, ndimage_affine

__all__ = ["Quality", "assess", "verdict", "QUALITY_GRID", "DETAIL_BANDS", "NCC_FLOOR"]

# The quality statistics use a grid of at most about this many pixels a side. Against 256, it
# cut the check from ~6.5 to ~2 ms at 512x512 with the same verdict on every benchmark case;
# over them unrelated pairs' detail NCC stayed at most 0.15 and related ones' at least 0.87.
QUALITY_GRID = 128


# Sides up to this many pixels are blurred by small matrix products (:func:`_gaussian`).
MATRIX_BLUR_SIDE = 256
# Each of those products stays at most this many multiply-adds (M * N * K), below OpenBLAS's
# threshold for threads (4 * 65536): one product of 128^3 in 2 threads took 28 ms at the 99th
# percentile while another process kept the other core busy, against 0.08 ms for the blocks.
BLAS_BLOCK = 1 << 17


@lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float, truncate: float = 3.0) -> np.ndarray:
    """The Gaussian of :func:`gaussian_taps` along an axis of ``n`` samples as an ``(n, n)``
    float32 matrix, edges repeated (scipy's ``mode="nearest"``): ``B @ x`` blurs ``x``."""
    taps = gaussian_taps(sigma, truncate).astype(np.float64)
    r = len(taps) // 2
    cols = np.clip(np.arange(n)[:, None] + np.arange(-r, r + 1)[None, :], 0, n - 1)
    out = np.zeros((n, n))
    np.add.at(out, (np.repeat(np.arange(n), len(taps)), cols.ravel()), np.tile(taps, n))
    return out.astype(np.float32)


def _banded_product(band: np.ndarray, radius: int, x: np.ndarray) -> np.ndarray:
    """``band @ x`` for a matrix nonzero only within ``radius`` of its diagonal, by blocks of
    rows, each against the rows of ``x`` it reaches (at most BLAS_BLOCK multiply-adds)."""
    n, m = x.shape
    rows = max(8, int(math.sqrt(radius * radius + BLAS_BLOCK / max(m, 1))) - radius)
    out = np.empty((n, m), dtype=np.float32)
    for i in range(0, n, rows):
        j0, j1 = max(0, i - radius), min(n, i + rows + radius)
        np.matmul(band[i : i + rows, j0:j1], x[j0:j1], out=out[i : i + rows])
    return out


def _gaussian(image: np.ndarray, sigma: float, truncate: float = 3.0) -> np.ndarray:
    """Gaussian blur of a float32 image (truncated at ``truncate`` sigma, edges repeated).

    On the small grids of the match decision (at most 128 a side) and the search level, as
    banded matrix products: 0.03 instead of 0.12 ms for sigma 3 on 101 x 84, single-threaded;
    the values agree with the two 1-D correlations to float32 rounding (2e-7).
    """
    h, w = image.shape
    if max(h, w) <= MATRIX_BLUR_SIDE:
        radius = len(gaussian_taps(sigma, truncate)) // 2
        image = image.astype(np.float32, copy=False)
        along_x = _banded_product(_blur_matrix(w, sigma, truncate), radius, image.T)  # (w, h)
        return _banded_product(_blur_matrix(h, sigma, truncate), radius, along_x.T)
    taps = gaussian_taps(sigma, truncate)
    along_x = ndimage.correlate1d(image, taps, axis=1, mode="nearest", output=np.float32)
    return correlate_rows(along_x, taps, mode="nearest")


# Detail bands (Gaussian sigmas of a difference of Gaussians, in quality-grid pixels), finest
# first, with the band-pass NCC each needs to call two images the same scene. The fine band
# decides unless noise swamps it (its expected NCC for a perfect match under 0.5); then the
# coarse one does, with a higher bar since unrelated shading agrees more at coarse scales.
DETAIL_BANDS = ((1.0, 3.0, 0.35), (3.0, 9.0, 0.55))
# On small overlaps the fine band's bar grows (see _small_overlap_bar).
SMALL_AREA = 20.0
SMALL_SIGMAS = 5.0
SMALL_FROM = 4096
SMALL_CAP = 0.9
# Where noise swamps every band that had room (each band's expected NCC for a perfect match
# under 0.5), the fine band decides against a bar of its own: at least CHANCE_SIGMAS times the
# spread of an unrelated pair's band NCC (sqrt(SMALL_AREA / count), as on small overlaps), and
# at least NOISY_SHARE of what a perfect match would reach under that noise. On the hard tier's
# faint, rotated 1024x1024 crops the fine band reached 0.32-0.34 of an expected 0.29-0.34 and
# the coarse band lacked room inside the rotated overlap, so right answers (0.04-0.16 px) were
# called no match; over 320 unrelated pairs (four sizes, ten seeds) the fine band stayed at
# most 0.24, and at most 0.8 of that bar.
CHANCE_SIGMAS = SMALL_SIGMAS
NOISY_SHARE = 0.7
# The fine band's window (2 * 3 sigma_coarse + 1 = 19 pixels) must fit 64 times in the overlap:
# about this many grid pixels a side.
MIN_CHECK_SIDE = 27
# Whatever the detail says, aligned views of one scene correlate at least this much overall ...
NCC_FLOOR = 0.2
# ... unless noise keeps even a perfect match below it: then NOISY_SHARE of the plain NCC a
# perfect match would reach under the measured noise. (A synthetic pair with noise of 0.8 times
# the range, right to 0.35 px and with detail at 0.72 against the 0.55 needed, had a plain NCC
# of 0.14.)
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


def _detail(warped: np.ndarray, target: np.ndarray, valid: np.ndarray, small: bool = False
            ) -> tuple[float, float, float, float, float]:
    """Band-pass NCC of the two grids over the overlap in the finest band noise allows, the
    value a match needs in that band, the intensity gain and offset of target vs source, and
    the NCC a perfect match would reach under the noise where noise swamps every band (NaN
    otherwise).

    Gain (ratio of spreads) and offset (difference of means, in target spreads) are read off
    the images blurred by the first band's coarse Gaussian: raw spreads include the noise, and
    the source's is lowered by interpolation, which on a noisy low-contrast pair alone can
    look like a 15% gain.

    A band that shows a match settles it. A band that does not settles it only if it is clean
    enough to have shown one (expected NCC of a perfect match, given each image's noise, of 0.5
    or more); otherwise the next, coarser band decides. When none is that clean (or the coarser
    band lacks room), the fine band decides against a bar set by chance and by what a perfect
    match would reach under the noise (:func:`_noisy_bar`). ``small``: the grid is a small
    image used whole, whose fine band asks more on small overlaps (:func:`_small_overlap_bar`).
    """
    a = warped[valid]
    filled = np.where(valid, warped, np.float32(a.mean()))
    blurred: dict[float, tuple[np.ndarray, np.ndarray]] = {}
    noise: tuple[float, float] | None = None
    result = (math.nan, DETAIL_BANDS[0][2])
    gain = offset = math.nan
    # the fine band's (NCC, bar, expected NCC of a perfect match, pixel count) when noise
    # swamped it
    swamped: tuple[float, float, float, int] | None = None
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
        if small and fine == DETAIL_BANDS[0][0]:
            bar = max(bar, _small_overlap_bar(bw.size))
        result = (_ncc(bw, bt), bar)
        if result[0] >= bar:
            break
        if noise is None:
            noise = (_noise_sigma(filled, valid), _noise_sigma(target, valid))
        # (not `gain`: that name holds the intensity gain returned below)
        noise_gain = _band_noise_gain(fine, coarse)
        tw, tt = float(np.var(bw)), float(np.var(bt))
        signal = (max(tw - noise_gain * noise[0] ** 2, 0.0)
                  * max(tt - noise_gain * noise[1] ** 2, 0.0))
        expected = math.sqrt(signal / (tw * tt)) if tw > 0 and tt > 0 else 0.0
        if expected >= 0.5:
            swamped = None  # clean enough to have shown a match: its no settles it
            break
        if swamped is None and fine == DETAIL_BANDS[0][0]:
            swamped = (result[0], result[1], expected, int(bw.size))
    reach = math.nan
    if swamped is not None and not result[0] >= result[1]:
        # no band was clean enough to settle it: the fine band against chance and the noise
        ncc, bar, reach, count = swamped
        result = (ncc, min(bar, _noisy_bar(reach, count)))
    return result + (gain, offset, reach)


def _noisy_bar(expected: float, count: int) -> float:
    """The fine band's bar where noise swamps every band: above chance (CHANCE_SIGMAS spreads
    of an unrelated pair's band NCC over ``count`` pixels) and near what a perfect match would
    reach under the noise (NOISY_SHARE of ``expected``)."""
    chance = CHANCE_SIGMAS * math.sqrt(SMALL_AREA / max(count, 1))
    return round(min(SMALL_CAP, max(chance, NOISY_SHARE * expected)), 3)


def _small_overlap_bar(count: int) -> float:
    """The fine band's bar on a small overlap of ``count`` grid pixels: chance agreement grows.

    The fine band's values decorrelate over about SMALL_AREA grid pixels, so ``count`` pixels
    hold about ``count / SMALL_AREA`` independent ones and an unrelated pair's band NCC spreads
    as ``sqrt(SMALL_AREA / count)`` -- more once the descent has maximized it. The bar asks for
    SMALL_SIGMAS of that spread, which is DETAIL_BANDS' 0.35 at SMALL_FROM pixels, and is capped
    at SMALL_CAP: a 48x64 crop of one photograph against another reached 0.44 after alignment,
    the right pair 0.998. Only images used whole (at most QUALITY_GRID a side) get it: on the
    halved grid of a 160x160 pair, a right, noisy, rotated one had 0.42 over 3000 pixels.
    """
    if count >= SMALL_FROM:
        return 0.0
    return min(SMALL_CAP, SMALL_SIGMAS * math.sqrt(SMALL_AREA / max(count, 1)))


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    # centred in their own float32 (the sums accumulate in float64): no float64 copies
    a = a - a.dtype.type(a.mean(dtype=np.float64))
    b = b - b.dtype.type(b.mean(dtype=np.float64))
    den = math.sqrt(L.dot(a, a) * L.dot(b, b))
    return L.dot(a, b) / den if den > 0 else math.nan


def _statistics(f: np.ndarray, f_mask: np.ndarray | None, g: np.ndarray,
                g_mask: np.ndarray | None, m: np.ndarray
                ) -> tuple[float, float, float, float, float, float, float, float]:
    """Over the overlap: NCC, RMS difference, intensity gain and offset (target vs source),
    band-pass NCC, the band-pass NCC a match needs, what a perfect match would reach where
    noise swamps the detail (NaN elsewhere), and the plain NCC a match needs.

    Sampled on a regular grid of the target (every other pixel, coarser on images over 256
    pixels) with bilinear interpolation: plenty for a statistic, and a small part of the call.
    The band-pass NCC compares detail only: two unrelated photographs can share smooth shading
    well enough for a plain NCC of 0.5 or more, but not their fine structure.
    """
    # Every other pixel, or a coarser regular grid of about 128 x 128 on large images: the
    # statistics need no more, and the check stays a few milliseconds at any size. Images of
    # at most QUALITY_GRID pixels a side are used whole: halved, a 64x48 pair left the fine
    # detail band (a 19-pixel window) too little room and a right answer was called no match.
    longest = max(f.shape[0], f.shape[1])
    step = 1 if longest <= QUALITY_GRID else max(2, math.ceil(longest / QUALITY_GRID))
    shape = ((f.shape[0] + step - 1) // step, (f.shape[1] + step - 1) // step)
    sub = m @ np.diag([float(step), float(step), 1.0])
    rc, offset = ndimage_affine(sub)
    warped = bilinear_nan(g, sub, shape)
    target = f[::step, ::step]
    valid = np.isfinite(warped)
    if f_mask is not None:
        valid &= f_mask[::step, ::step]
    if g_mask is not None:
        bad = ndimage.affine_transform((~g_mask).astype(np.float32), rc, offset=offset,
                                       output_shape=shape, order=1, mode="constant", cval=1.0)
        valid &= bad == 0
    if np.count_nonzero(valid) < 16:
        return (math.nan, math.nan, math.nan, math.nan, math.nan, DETAIL_BANDS[0][2], math.nan,
                NCC_FLOOR)
    a, b = warped[valid], target[valid]
    diff = a - b
    rms = math.sqrt(L.dot(diff, diff) / diff.size)
    del diff
    ncc = _ncc(a, b)
    target = np.ascontiguousarray(target)
    floor = NCC_FLOOR
    if ncc < NCC_FLOOR:
        floor = _ncc_floor(warped, target, valid, float(np.var(a)), float(np.var(b)))
    del a, b
    detail, needed, gain, offset, reach = _detail(warped, target, valid, small=step == 1)
    return ncc, rms, gain, offset, detail, needed, reach, floor


def _ncc_floor(warped: np.ndarray, target: np.ndarray, valid: np.ndarray, var_w: float,
               var_t: float) -> float:
    """The plain NCC a match needs: NCC_FLOOR, or less where noise (measured on both grids)
    keeps even a perfect match below it (NOISY_SHARE of what one would reach)."""
    filled = np.where(valid, warped, np.float32(np.nanmean(warped[valid])))
    nw, nt = _noise_sigma(filled, valid), _noise_sigma(target, valid)
    if not (var_w > 0 and var_t > 0):
        return NCC_FLOOR
    reach = math.sqrt(max(var_w - nw * nw, 0.0) * max(var_t - nt * nt, 0.0) / (var_w * var_t))
    return round(min(NCC_FLOOR, NOISY_SHARE * reach), 3)


@dataclass(frozen=True)
class Quality:
    """How well the aligned images agree over their overlap (see :func:`assess`).

    Attributes
    ----------
    ncc : float
        Zero-mean normalized cross-correlation.
    residual : float
        Root-mean-square intensity difference (integer images in [0, 1]).
    gain, offset : float
        Intensity gain (ratio of spreads, target over source) and offset (difference of means,
        in target spreads) read off the images blurred by the first detail band's coarse
        Gaussian.
    detail_ncc : float
        Band-pass NCC in the finest band the noise allows.
    needed : float
        The band-pass NCC a match needs in that band.
    reach : float
        Where noise swamps every detail band: the band-pass NCC a perfect match would reach
        under that noise (NaN where a band was clean enough to settle the match).
    ncc_needed : float
        The plain NCC a match needs: NCC_FLOOR, or less on images so noisy that a perfect
        match would not reach it.
    """

    ncc: float
    residual: float
    gain: float
    offset: float
    detail_ncc: float
    needed: float
    reach: float = math.nan
    ncc_needed: float = NCC_FLOOR


def assess(f: np.ndarray, f_mask: np.ndarray | None, g: np.ndarray, g_mask: np.ndarray | None,
           matrix: np.ndarray) -> Quality:
    """Agreement of the target ``f`` and the source ``g`` seen through ``matrix``.

    Parameters
    ----------
    f, g : ndarray
        Float32 luminance of the target and the source (full resolution).
    f_mask, g_mask : ndarray or None
        Their validity masks (None: every pixel valid).
    matrix : (3, 3) ndarray
        Target -> source.

    Returns
    -------
    Quality
    """
    return Quality(*_statistics(f, f_mask, g, g_mask, matrix))


def verdict(quality: Quality, metric: str) -> str | None:
    """Why a registration that converged numerically is still not a match, or None.

    A match needs detail that correlates (``quality.needed`` or more in the band noise allows)
    and a plain NCC of at least ``quality.ncc_needed`` (NCC_FLOOR but on very noisy images);
    with the ``ssd`` metric the intensities must also agree, since ``ssd``'s minimum moves under
    a gain or an offset. Where noise swamps the detail so that even a perfect match would fall
    short of ``needed``, the reason says that the match cannot be confirmed, not that the images
    do not match.
    """
    q = quality
    floor = q.ncc_needed
    if math.isnan(q.detail_ncc) and q.ncc >= floor:
        return ("the overlap is too small to check the match: the detail check needs about "
                f"{MIN_CHECK_SIDE}x{MIN_CHECK_SIDE} pixels of overlap after alignment "
                f"(plain NCC {q.ncc:.2f})")
    if q.ncc >= floor and q.reach < q.needed and not q.detail_ncc >= q.needed:
        # even a perfect match would fall short: say so rather than call them unrelated
        return (f"the match cannot be confirmed: noise swamps the images' detail, which "
                f"correlates at {q.detail_ncc:.2f} over the overlap after alignment (a perfect "
                f"match would reach about {q.reach:.2f} under this noise, and {q.needed} is "
                f"needed to stand above chance; plain NCC {q.ncc:.2f})")
    if q.detail_ncc >= q.needed and not q.ncc >= floor:
        # the detail agrees but the images as a whole do not (a very noisy pair, or detail
        # that happens to line up): name the figure that failed
        return (f"the images do not match overall: their plain NCC is {q.ncc:.2f} over the "
                f"overlap after alignment (a match has at least {floor}), though their "
                f"detail correlates at {q.detail_ncc:.2f}")
    if not (q.detail_ncc >= q.needed and q.ncc >= floor):
        return (f"the images do not match: their detail correlates at {q.detail_ncc:.2f} over "
                f"the overlap after alignment (a match has at least {q.needed}; plain NCC "
                f"{q.ncc:.2f})")
    if metric == "ssd" and not (abs(math.log(q.gain)) <= math.log(MAX_SSD_GAIN)
                                and abs(q.offset) <= MAX_SSD_OFFSET):
        # ssd compares raw intensities: under a gain or offset its minimum moves, by a few
        # pixels or, on smooth images, by tens. Say so rather than hand back a biased answer.
        return (f"the images' intensities differ (gain {q.gain:.2f}, offset {q.offset:+.2f} "
                "standard deviations): the ssd metric is biased by that; use the ncc metric")
    return None
