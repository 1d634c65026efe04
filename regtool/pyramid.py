"""Gaussian pyramids whose pixel centers follow the exact level map of GUIDE section 3.

Each level filters with the binomial ``(1, 3, 3, 1) / 8`` along each axis and keeps every other
sample, centred between each pair of fine pixels, so coarse pixel ``(x_k, y_k)`` sits at fine
coordinates ``x_0 = 2**k * (x_k + 0.5) - 0.5``: :func:`regtool.transform.level_scaling` is the
matching coordinate map, and moving a transform with it adds no bias. An odd last row or column
has no partner to average with and is dropped (``n_k = n_{k-1} // 2``); the coarse grid then
covers fine coordinates ``[-0.5, 2 * n_k - 0.5]``, which loses that row without moving any center.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["auto_levels", "downsample", "downsample_mask", "build", "MIN_COARSE_SIDE"]

# The coarsest level keeps its shorter side in [24, 48): smaller holds too little texture for a
# reliable fit, larger wastes the capture range that coarse levels are for.
MIN_COARSE_SIDE = 24
# The binomial (1, 3, 3, 1) / 8 is the 2x2 box blurred by (1, 2, 1) / 4: sigma 0.87 fine pixels,
# zero response at the fine Nyquist frequency and 0.35 at the coarse one, so little aliases. It
# is computed at the coarse positions only: about two passes over the fine image per level.


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


def _halve(a: np.ndarray, axis: int) -> np.ndarray:
    """``(1, 3, 3, 1) / 8`` along ``axis`` (0 or 1) at the coarse positions, edges repeated."""
    b = a if axis == 0 else a.T  # a view: the column pass reads with a stride, writes in order
    h = b.shape[0] // 2
    even, odd = b[0 : 2 * h : 2], b[1 : 2 * h : 2]
    dtype = np.result_type(a.dtype, np.float32)
    out = np.empty((h, b.shape[1]) if axis == 0 else (b.shape[1], h), dtype=dtype)
    o = out if axis == 0 else out.T
    np.add(even, odd, out=o)
    o *= 3.0
    o[1:] += odd[:-1]  # fine index 2i - 1
    o[0] += even[0]  # fine index -1 is 0
    o[:-1] += even[1:]  # fine index 2i + 2
    o[-1] += b[2 * h] if b.shape[0] > 2 * h else odd[-1]
    o *= 0.125
    return out


# Images of at least this many pixels are halved STRIP_ROWS coarse rows at a time, both passes
# on a strip that stays in cache: 1.03 instead of 1.3 ms for 1024^2 (and no image-sized
# intermediate); smaller images gain nothing (0.27 against 0.24 ms at 512^2).
STRIP_PIXELS = 1 << 19
STRIP_ROWS = 64


def _halve_rows(a: np.ndarray, r0: int, r1: int, out: np.ndarray) -> None:
    """Coarse rows ``r0:r1`` of ``_halve(a, 0)`` into ``out``, with the same sums in the same
    order (the same values to the bit)."""
    n = a.shape[0]
    h = n // 2
    even, odd = a[2 * r0 : 2 * r1 : 2], a[2 * r0 + 1 : 2 * r1 : 2]
    np.add(even, odd, out=out)
    out *= 3.0
    if r0 == 0:  # fine index 2i - 1; -1 is 0
        out[1:] += odd[:-1]
        out[0] += even[0]
    else:
        out += a[2 * r0 - 1 : 2 * r1 - 1 : 2]
    if r1 == h:  # fine index 2i + 2; past the end, the last row (2h when the count is odd)
        out[:-1] += a[2 * r0 + 2 : 2 * r1 : 2]
        out[-1] += a[2 * h] if n > 2 * h else odd[-1]
    else:
        out += a[2 * r0 + 2 : 2 * r1 + 1 : 2]
    out *= 0.125


def downsample(image: np.ndarray) -> np.ndarray:
    """Halve a 2-D float image: the binomial ``(1, 3, 3, 1) / 8`` along each axis, every other
    sample kept. Rows first, so the column pass runs on half the data."""
    h = image.shape[0] // 2
    if image.size < STRIP_PIXELS or h <= STRIP_ROWS:
        return _halve(_halve(image, 0), 1)
    dtype = np.result_type(image.dtype, np.float32)
    out = np.empty((h, image.shape[1] // 2), dtype=dtype)
    strip = np.empty((STRIP_ROWS, image.shape[1]), dtype=dtype)
    for r0 in range(0, h, STRIP_ROWS):
        r1 = min(h, r0 + STRIP_ROWS)
        _halve_rows(image, r0, r1, strip[: r1 - r0])
        out[r0:r1] = _halve(strip[: r1 - r0], 1)
    return out


def downsample_mask(mask: np.ndarray) -> np.ndarray:
    """Halve a boolean validity mask: a coarse pixel is valid only if its whole support is.

    The support is the 2x2 block widened by the pre-blur's radius (about 2 fine pixels), so an
    invalid fine pixel can never leak into a coarse pixel that is still called valid.
    """
    h, w = mask.shape[0] // 2, mask.shape[1] // 2
    grown = ndimage.binary_erosion(mask, iterations=2, border_value=1)
    g = grown[: 2 * h, : 2 * w]
    return g[0::2, 0::2] & g[0::2, 1::2] & g[1::2, 0::2] & g[1::2, 1::2]


def build(image: np.ndarray, levels: int, first: np.ndarray | None = None
          ) -> list[np.ndarray]:
    """Return ``[level 0 (the image itself), level 1, ..., level levels-1]``.

    ``first`` is level 1 when the caller has made it already (``downsample(image)``).
    """
    out = [image]
    if levels > 1 and first is not None:
        out.append(first)
    while len(out) < levels:
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
