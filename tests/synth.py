"""Known rigid warps of real photographs, shared by the engine tests."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from regtool.resample import warp
from regtool.transform import about_center, image_center

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
LUMA = np.array([0.299, 0.587, 0.114])


# Photographs with content at every scale. brick.png is left out on purpose: its bricks repeat
# every ~32 px, so a shift of half a period is ambiguous for any local method.
PHOTOS = ("camera.png", "astronaut.jpg", "retina.jpg")


def photo_paths() -> list[Path]:
    """The photographs the engine tests warp."""
    return [SAMPLES / name for name in PHOTOS]


@cache
def photo(index: int = 0) -> np.ndarray:
    """Photograph ``index`` as float64 luminance in [0, 1]."""
    img = iio.imread(photo_paths()[index % len(photo_paths())])
    img = img.astype(np.float64) / np.iinfo(img.dtype).max
    if img.ndim == 3:
        img = img[..., :3] @ LUMA
    return img


def make_pair(
    image: np.ndarray,
    shape: tuple[int, int],
    shift: tuple[float, float],
    theta_deg: float,
    *,
    noise: float = 0.0,
    gain: float = 1.0,
    offset: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target = centered crop of ``image``; source such that ``source(M x) = target(x)``.

    ``shift`` and ``theta_deg`` describe M about the target's center. Returns
    ``(target, source, M)`` with M the true 3x3 target->source matrix.
    """
    h, w = shape
    oy, ox = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    target = image[oy : oy + h, ox : ox + w].copy()
    m = about_center(shift[0], shift[1], math.radians(theta_deg), image_center(shape))
    to_image = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy], [0.0, 0.0, 1.0]])
    # source(y) = image(offset + M^-1 y)  <=>  source(M x) = image(offset + x) = target(x)
    source = warp(image, to_image @ np.linalg.inv(m), shape, interp="cubic")
    source = gain * source + offset
    if noise:
        rng = np.random.default_rng(seed)
        target = target + rng.normal(0.0, noise, target.shape)
        source = source + rng.normal(0.0, noise, source.shape)
    return target, source, m


def endpoint_error(true: np.ndarray, found: np.ndarray, shape: tuple[int, int]) -> float:
    """Mean distance, over every target pixel, between where the two matrices send it."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    d = (np.asarray(true)[:2] @ pts) - (np.asarray(found)[:2] @ pts)
    return float(np.hypot(d[0], d[1]).mean())
