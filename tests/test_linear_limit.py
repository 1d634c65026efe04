"""The first-order limit of linearly weighted estimators (benchmarks/linear_limit.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import linear_limit as LL  # noqa: E402


def _case(noise: float, shape: tuple[int, int] = (64, 72)) -> SimpleNamespace:
    """A smooth random scene's crop, shifted and turned a little, with ``noise`` grey levels."""
    rng = np.random.default_rng(11)
    img = ndimage.gaussian_filter(rng.standard_normal((120, 130)), 2.0) * 100.0
    c, s = np.cos(0.02), np.sin(0.02)
    matrix = np.array([[c, -s, 1.5], [s, c, -2.0], [0.0, 0.0, 1.0]])
    return SimpleNamespace(
        scene=SimpleNamespace(spline=ndimage.spline_filter(img, order=3)), offset=(20, 25),
        matrix=matrix, target=np.zeros(shape), source=np.zeros(shape), noise=noise,
        gain=1.0, related=True)


def test_without_noise_in_the_weights_every_weighting_reaches_the_bound() -> None:
    # noise far below the signal: the weights are the noise-free gradients (the plain ones
    # exactly up to the spline's approximation), and the limit is the bound itself
    r = LL.ratios(_case(1e-4))
    assert abs(r["linear limit"] - 1.0) < 0.02, r
    assert abs(r["plain"] - 1.0) < 0.1, r


def test_the_limit_is_below_each_weighting_and_rises_with_the_noise() -> None:
    low, high = LL.ratios(_case(2.0)), LL.ratios(_case(20.0))
    for r in (low, high):
        assert 1.0 <= r["linear limit"] <= min(r["plain"], r["blur 1.5"]) + 1e-9, r
    assert high["linear limit"] > low["linear limit"] + 0.05, (low, high)
    assert high["plain"] > high["blur 1.5"], high  # on a smooth scene the blur pays
