"""Gaussian pyramids whose pixel centers follow the exact level map of GUIDE section 3.

Each level blurs lightly and then averages 2x2 blocks, so coarse pixel ``(x_k, y_k)`` sits at fine
coordinates ``x_0 = 2**k * (x_k + 0.5) - 0.5``: :func:`regtool.transform.level_scaling` is the
matching coordinate map, and moving a transform with it adds no bias. An odd last row or column
has no partner to average with and is dropped (``n_k = n_{k-1} // 2``); the coarse grid then
covers fine coordinates ``[-0.5, 2 * n_k - 0.5]``, which loses that row without moving any center.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ._filters import correlate_rows, gaussian_taps

__all__ = ["auto_levels", "downsample", "downsample_mask", "build", "MIN_COARSE_SIDE"]

# The coarsest level keeps its shorter side in [24, 48): smaller holds too little texture for a
# reliable fit, larger wastes the capture range that coarse levels are for.
MIN_COARSE_SIDE = 24
# Pre-blur before the 2x2 box: with the box's own variance (1/4) the effective kernel has
# sigma ~ 0.78 fine pixels, enough to keep aliasing low while keeping detail at each level.
PRE_SIGMA = 0.6
_PRE_TAPS = gaussian_taps(PRE_SIGMA, truncate=3.0)


def auto_levels(*shapes: tuple[int, ...], min_side: int = MIN_COARSE_SIDE) -> int:
    """Number of levels putting the coarsest shorter side in ``[min_side, 2*min_side)``.

    Parameters
    ----------
    *shapes : tuple of int
        Shapes (rows, cols, ...) of the images that share the pyramid.
    min_side : int
        Smallest acceptable side of the coarsest level.

    Returns
    -------
    int
        At least 1.
    """
    side = min(min(s[0], s[1]) for s in shapes)
    if side < 2 * min_side:
        return 1
    return 1 + int(math.floor(math.log2(side / min_side)))


def max_levels(*shapes: tuple[int, ...], min_side: int = 8) -> int:
    """Largest number of levels whose coarsest shorter side is still at least ``min_side``."""
    side = min(min(s[0], s[1]) for s in shapes)
    return max(1, 1 + int(math.floor(math.log2(max(side, 1) / min_side))))


def downsample(image: np.ndarray) -> np.ndarray:
    """Halve a 2-D float image: light Gaussian blur, then the mean of each 2x2 block.

    Both steps are separable, so the columns are blurred and paired first and the rows then
    filtered at half the width: the same result as blurring the whole image, for less work.
    """
    h, w = image.shape[0] // 2, image.shape[1] // 2
    b = ndimage.gaussian_filter1d(image, PRE_SIGMA, axis=1, mode="nearest", truncate=3.0,
                                  output=np.float32)
    b = 0.5 * (b[:, 0 : 2 * w : 2] + b[:, 1 : 2 * w : 2])
    b = correlate_rows(b, _PRE_TAPS, mode="nearest")
    return 0.5 * (b[0 : 2 * h : 2] + b[1 : 2 * h : 2])


def downsample_mask(mask: np.ndarray) -> np.ndarray:
    """Halve a boolean validity mask: a coarse pixel is valid only if its whole support is.

    The support is the 2x2 block widened by the pre-blur's radius (about 2 fine pixels), so an
    invalid fine pixel can never leak into a coarse pixel that is still called valid.
    """
    h, w = mask.shape[0] // 2, mask.shape[1] // 2
    grown = ndimage.binary_erosion(mask, iterations=2, border_value=1)
    g = grown[: 2 * h, : 2 * w]
    return g[0::2, 0::2] & g[0::2, 1::2] & g[1::2, 0::2] & g[1::2, 1::2]


def build(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Return ``[level 0 (the image itself), level 1, ..., level levels-1]``."""
    out = [image]
    for _ in range(levels - 1):
        out.append(downsample(out[-1]))
    return out


def build_mask(mask: np.ndarray | None, levels: int) -> list[np.ndarray | None]:
    """Pyramid of a validity mask (None stays None: every pixel valid)."""
    if mask is None:
        return [None] * levels
    out = [mask]
    for _ in range(levels - 1):
        out.append(downsample_mask(out[-1]))
    return out
