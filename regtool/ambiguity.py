"""Rival matches: is the answer unique, or does a repeated texture offer another almost as good?

A periodic or repeated texture (bricks, tiles, a grating, a crystal lattice) matches itself
shifted by its period. A registration of such images may land one period off, and its error
bars, which describe the small errors around the answer it found, would then be confidently
wrong. This module looks for such a second answer near the final one: the target's detail
autocorrelation at a coarse level proposes the lags at which the target resembles itself, each
lag is refined from the final answer by a few Gauss-Newton steps, and a refined transform that
lands elsewhere with a match nearly as good is a rival.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from . import loss as L
from .optimize import gauss_newton
from .quality import _gaussian
from .transform import max_displacement

__all__ = ["rival", "self_similar_lags"]

# Lags at which the target's band-passed autocorrelation reaches this share of its value at 0
# are tried. Natural photographs stay below it except along long straight edges, where the
# refinement then slides back or stays poor.
MIN_SELF_SIMILARITY = 0.45
# At most this many lags are refined (a ~1 ms refinement each at the coarse level).
MAX_LAGS = 4
# A refined rival counts when its 1 - NCC is at most this multiple of the answer's plus
# RIVAL_SLACK, and it lies at least RIVAL_DISTANCE level pixels away (the largest
# displacement over the image). A tiling with 1% and 5% noise gave rivals within 1.05 times
# the answer's loss; the long straight edge of a nearly featureless crop (rocket.jpg), whose
# answer was right, gave 2.7 and 10 times, which a looser bar (2x + 0.01) took for rivals.
RIVAL_LOSS_RATIO = 1.5
RIVAL_SLACK = 0.002
RIVAL_DISTANCE = 1.5
# A lag is refined RIVAL_FIRST_ITER Gauss-Newton steps first, and on (to RIVAL_MAX_ITER) only
# if its loss is then within RIVAL_HOPELESS times the rival bar. Tilings (periods of 12-32 px,
# 0-10% noise, 192x192 and 300x400) put their rivals within 1.12 times their final loss at
# the first step and converged in 1-2; the lags of a brick wall, which are no rivals, took 4-8
# steps to end at 40-300 times the answer's loss (about 1.5 ms each at 251x301).
RIVAL_FIRST_ITER = 2
RIVAL_MAX_ITER = 15
RIVAL_HOPELESS = 3.0


def self_similar_lags(image: np.ndarray, valid: np.ndarray | None = None,
                      count: int = MAX_LAGS, threshold: float = MIN_SELF_SIMILARITY
                      ) -> list[tuple[float, float, float]]:
    """Lags ``(dx, dy)`` at which ``image`` resembles itself, with the resemblance in (0, 1].

    The resemblance is the autocorrelation of the image's detail (a difference of Gaussians,
    sigma 1 and 3 pixels) under a Hann taper, over its value at lag 0; only local maxima
    outside the central lobe (more than 3 pixels) and within a third of the image are kept.
    """
    band = _gaussian(image, 1.0) - _gaussian(image, 3.0)
    if valid is not None:
        band = np.where(valid, band, 0.0)
    band = band - band.mean()
    h, w = band.shape
    band = band * np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    # lags up to a third of the image: padding by that much keeps them free of wrap-around,
    # and padding further to sizes with small prime factors changes no lag's value (the
    # search level's 75 x 62 gave 101 x 83, both prime: 0.76 ms for the two transforms with
    # numpy's, against 0.1 ms for 108 x 84 with scipy's in single precision)
    ry, rx = h // 3 + 1, w // 3 + 1
    size = (sfft.next_fast_len(h + ry, real=True), sfft.next_fast_len(w + rx, real=True))
    spec = sfft.rfft2(band, s=size)
    ac = sfft.irfft2(spec * np.conj(spec), s=size)
    zero = float(ac[0, 0])
    if not zero > 0:
        return []
    # the window of lags -r..r, lag (0, 0) at (ry, rx)
    ac = np.roll(ac, (ry, rx), axis=(0, 1))[: 2 * ry + 1, : 2 * rx + 1] / zero
    ys, xs = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    usable = (np.hypot(ys, xs) > 3.0) & (np.abs(ys) < h / 3) & (np.abs(xs) < w / 3)
    peaks = usable & (ac == ndimage.maximum_filter(ac, size=3)) & (ac >= threshold)
    order = np.argsort(ac[peaks])[::-1][:count]
    return [(float(xs[peaks][i]), float(ys[peaks][i]), float(ac[peaks][i])) for i in order]


def rival(level: L.LevelImages, image: np.ndarray, valid: np.ndarray | None,
          matrix: np.ndarray, min_overlap: float) -> dict[str, Any] | None:
    """A second match almost as good as ``matrix`` at this (coarse) level, or None.

    Parameters
    ----------
    level : LevelImages
        A coarse level's data (the global search's level).
    image, valid : ndarray
        That level's target image and validity mask.
    matrix : (3, 3) ndarray
        The final answer in that level's pixels.
    min_overlap : float
        As in :func:`regtool.align`.

    Returns
    -------
    dict or None
        ``distance_px`` (level pixels, the largest displacement over the image), ``lag`` and
        the two ``loss`` values (1 - NCC) when a rival is found.
    """
    lags = self_similar_lags(image, valid)
    if not lags:
        return None
    center = ((image.shape[1] - 1) / 2.0, (image.shape[0] - 1) / 2.0)
    here = gauss_newton(level, matrix, center, "ncc", 0.05, 15, min_overlap)
    if here.reason is not None and not here.reason.startswith("did not converge"):
        return None
    bar = RIVAL_LOSS_RATIO * here.loss + RIVAL_SLACK
    for dx, dy, similarity in lags:
        # f(x) ~ f(x + T) makes g(M (x - T)) ~ f(x): start at M composed with a shift by -T
        start = matrix @ np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy], [0.0, 0.0, 1.0]])
        out = gauss_newton(level, start, center, "ncc", 0.05, RIVAL_FIRST_ITER, min_overlap)
        if out.reason is not None and not out.reason.startswith("did not converge"):
            continue
        if not out.converged:
            if not out.loss <= RIVAL_HOPELESS * bar:
                continue  # still far above the bar: no rival is on its way there
            out = gauss_newton(level, out.matrix, center, "ncc", 0.05,
                               RIVAL_MAX_ITER - RIVAL_FIRST_ITER, min_overlap)
            if out.reason is not None and not out.reason.startswith("did not converge"):
                continue
        distance = max_displacement(np.linalg.inv(here.matrix) @ out.matrix, level.shape)
        if (distance >= RIVAL_DISTANCE and math.isfinite(out.loss)
                and out.loss <= bar):
            return {"distance_px": distance, "lag": (dx, dy), "similarity": similarity,
                    "loss": (here.loss, out.loss)}
    return None
