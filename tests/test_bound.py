"""The benchmark's Cramer-Rao bound (benchmarks/bound.py): spline derivatives and endpoint error."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bound as B  # noqa: E402


def _scene(seed: int = 3, shape: tuple[int, int] = (60, 70)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) * 100.0
    return ndimage.spline_filter(img, order=3)


@pytest.mark.parametrize("offset", [(5, 7), (0, 0)])
def test_spline_grid_matches_spline_and_finite_differences(offset: tuple[int, int]) -> None:
    spline = _scene()
    shape = (40, 50)
    f, f_x, f_y = B.spline_grid(spline, offset, shape)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    xs += offset[0]
    ys += offset[1]

    def at(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(spline, [y, x], order=3, prefilter=False, mode="mirror")

    h = 1e-4
    scale = np.abs(f_x).max()
    assert np.allclose(f, at(xs, ys), atol=1e-9 * np.abs(f).max())
    assert np.allclose(f_x, (at(xs + h, ys) - at(xs - h, ys)) / (2 * h), atol=1e-5 * scale)
    assert np.allclose(f_y, (at(xs, ys + h) - at(xs, ys - h)) / (2 * h), atol=1e-5 * scale)


@pytest.mark.parametrize("cov", [
    np.diag([0.04, 0.01, 1e-6]),
    np.array([[0.02, 0.015, 2e-5], [0.015, 0.03, -1e-5], [2e-5, -1e-5, 4e-7]]),
    np.diag([0.01, 0.01, 0.0]) + 1e-12 * np.eye(3),
])
def test_mean_endpoint_closed_form_matches_monte_carlo(cov: np.ndarray) -> None:
    shape = (41, 53)
    closed = B.mean_endpoint(cov, shape)
    ms, mc_mean = B.mean_square_endpoint(cov, shape, draws=20000, seed=1)
    assert mc_mean == pytest.approx(closed, rel=0.01)
    assert ms >= closed ** 2  # E X^2 >= (E X)^2
    # Each grid point's E|d| against draws of that point's own 2-D Gaussian.
    x, y = B.grid_points(shape, grid=5)
    sxx, syy, sxy = B.point_covariances(cov, x, y)
    rng = np.random.default_rng(2)
    for k in (0, 7, len(x) - 1):
        d = rng.multivariate_normal([0.0, 0.0], [[sxx[k], sxy[k]], [sxy[k], syy[k]]], 40000)
        expect = B.expected_norm(sxx[k:k + 1], syy[k:k + 1], sxy[k:k + 1])[0]
        assert np.mean(np.hypot(d[:, 0], d[:, 1])) == pytest.approx(expect, rel=0.015)


def test_expected_norm_limits() -> None:
    one = np.array([2.0])
    assert B.expected_norm(one, one, np.zeros(1))[0] == pytest.approx(math.sqrt(math.pi))
    assert B.expected_norm(one, np.zeros(1), np.zeros(1))[0] == pytest.approx(
        math.sqrt(2 * 2.0 / math.pi))


def test_bound_of_a_translation_only_scene_scales_with_noise() -> None:
    spline = _scene(shape=(80, 90))
    shape, m = (60, 70), np.eye(3)
    b1 = B.bound(spline, (10, 10), m, shape, shape, sigma_t=1.0, sigma_s=1.0)
    b2 = B.bound(spline, (10, 10), m, shape, shape, sigma_t=2.0, sigma_s=2.0)
    assert b1.overlap == 1.0
    assert b2.endpoint_px == pytest.approx(2 * b1.endpoint_px, rel=1e-9)
    assert b2.ms_px2 == pytest.approx(4 * b1.ms_px2, rel=1e-9)
    # gain: the source's noise over its gain is what counts
    b3 = B.bound(spline, (10, 10), m, shape, shape, sigma_t=1.0, sigma_s=2.0, gain=2.0)
    assert b3.endpoint_px == pytest.approx(b1.endpoint_px, rel=1e-9)


def test_a_redrawn_case_keeps_its_scene_and_draws_new_noise() -> None:
    # The bench's noise redraws (bench.draw_again): the same geometry, gain and bias, the
    # noise-free images made again exactly, fresh noise of the tier's level.
    import cases as C

    photos = C.load_photos()
    case = next(C.make_cases(photos, (64, 80), "gain", 1, seed=3))
    again = C.redraw(case, np.random.default_rng(1), 1)
    assert again.name == case.name + "#1"
    assert np.array_equal(again.matrix, case.matrix) and again.gain == case.gain
    # both draws hold one noise-free target: their difference is two draws of the noise
    diff_t = (again.target - case.target).astype(np.float64)
    assert abs(diff_t.mean()) < 0.1 * case.noise
    assert math.isclose(diff_t.std(), math.sqrt(2) * case.noise, rel_tol=0.1)
    diff_s = (again.source - case.source).astype(np.float64) / case.gain
    assert math.isclose(diff_s.std(), math.sqrt(2) * case.noise, rel_tol=0.1)
    clean = next(C.make_cases(photos, (64, 80), "small", 1, seed=3))
    with pytest.raises(ValueError):
        C.redraw(clean, np.random.default_rng(1), 1)


def test_ms_ratio_interval_covers_an_estimator_at_the_bound_and_narrows_with_draws() -> None:
    # two cases whose errors are exactly at their bounds: |N(0, s^2 I_2)| has mean square 2 s^2
    rng = np.random.default_rng(11)

    def case(n: int, s: float) -> tuple[np.ndarray, float]:
        return np.hypot(*rng.normal(0.0, s, size=(2, n))), 2 * s * s

    def intervals(n: int) -> np.ndarray:
        spans = [B.ms_ratio_interval([case(n, 0.01), case(n, 0.05)], resamples=400)
                 for _ in range(100)]
        return np.array(spans)

    few, many = intervals(10), intervals(160)
    covered = np.mean((many[:, 0] < 1.0) & (1.0 < many[:, 1]))
    assert 0.75 <= covered <= 0.99  # a 90% interval (0.81-0.96 over 12 seeds of this test)
    # about 1 / sqrt(16) as wide
    assert np.mean(many[:, 1] - many[:, 0]) < 0.4 * np.mean(few[:, 1] - few[:, 0])
    # the same interval on every call (a fixed seed), the point ratio inside it
    one = [case(20, 0.02)]
    point = float(np.mean(one[0][0] ** 2) / one[0][1])
    lo, hi = B.ms_ratio_interval(one)
    assert (lo, hi) == B.ms_ratio_interval(one)
    assert lo < point < hi
    # constant errors: nothing moves; a single draw: nothing to resample
    assert B.ms_ratio_interval([(np.full(4, 0.1), 0.01)]) == pytest.approx((1.0, 1.0))
    assert B.ms_ratio_interval([(np.array([0.1]), 0.01), case(9, 0.02)]) is None
