"""Error bars: the closed-form mean endpoint error, calibration against ground truth, nulls."""

import math

import numpy as np
import pytest
from scipy import ndimage
from synth import endpoint_error, make_pair, photo

import regtool
from regtool import uncertainty as U
from regtool.transform import center_params


def test_mean_endpoint_matches_monte_carlo():
    rng = np.random.default_rng(1)
    shape = (60, 90)
    a = rng.normal(size=(3, 3)) * [[0.02], [0.03], [0.0004]]
    cov = a @ a.T
    draws = rng.multivariate_normal(np.zeros(3), cov, size=40000)
    # the same 21 x 21 grid the function averages over, corners included
    xs, ys = np.meshgrid(np.linspace(0, shape[1] - 1, 21), np.linspace(0, shape[0] - 1, 21))
    x = xs.ravel() - (shape[1] - 1) / 2
    y = ys.ravel() - (shape[0] - 1) / 2
    dx = draws[:, :1] - draws[:, 2:] * y
    dy = draws[:, 1:2] + draws[:, 2:] * x
    monte_carlo = float(np.hypot(dx, dy).mean())
    assert U.mean_endpoint(cov, shape, grid=21) == pytest.approx(monte_carlo, rel=0.01)
    # isotropic translation only: the Rayleigh mean sigma * sqrt(pi / 2)
    iso = np.diag([0.01, 0.01, 0.0])
    assert U.mean_endpoint(iso, shape) == pytest.approx(0.1 * math.sqrt(math.pi / 2), rel=1e-9)


def _textured(shape, seed):
    rng = np.random.default_rng(seed)
    big = (shape[0] + 80, shape[1] + 80)
    img = sum(w * ndimage.gaussian_filter(rng.standard_normal(big), s)
              for s, w in ((1.5, 0.5), (4.0, 1.0), (12.0, 2.0)))
    return (img - img.min()) / (img.max() - img.min())


def test_error_bars_are_calibrated_on_noisy_pairs():
    # Both images noisy, a gain and an offset between them: the bars must describe the errors
    # that actually occur (ratio observed / predicted near 1, unit z-scores), seeded.
    ratios, z_theta, z_shift = [], [], []
    shape = (120, 136)
    for i in range(16):
        rng = np.random.default_rng(100 + i)
        image = _textured(shape, i)
        shift = tuple(rng.uniform(-6, 6, 2))
        deg = float(rng.uniform(-8, 8))
        target, source, m = make_pair(image, shape, shift, deg, noise=0.04,
                                      gain=float(rng.uniform(0.7, 1.3)),
                                      offset=float(rng.uniform(-0.1, 0.1)), seed=200 + i)
        r = regtool.align(target, source)
        assert r.converged, r.reason
        u = r.uncertainty
        assert u is not None and u.endpoint_px is not None, u
        ratios.append(endpoint_error(m, r.matrix, shape) / u.endpoint_px)
        z_theta.append((r.theta_deg - deg) / u.theta_deg)
        sx, sy, _ = center_params(np.vstack([r.matrix, [0, 0, 1]]), r.center)
        z_shift += [(sx - shift[0]) / u.shift[0], (sy - shift[1]) / u.shift[1]]
    assert 0.7 <= np.mean(ratios) <= 1.4, ratios
    assert max(ratios) < 4.0, ratios
    assert 0.6 <= np.std(z_theta) <= 1.5, z_theta
    assert 0.6 <= np.std(z_shift) <= 1.5, z_shift


def test_bars_shrink_with_the_noise():
    shape = (128, 128)
    bars = []
    for noise in (0.01, 0.04):
        target, source, _ = make_pair(photo(0), shape, (3.0, -2.0), 4.0, noise=noise, seed=3)
        bars.append(regtool.align(target, source).uncertainty.endpoint_px)
    assert 2.0 < bars[1] / bars[0] < 8.0, bars


def test_flat_noise_pair_has_no_error_bars_and_says_why():
    rng = np.random.default_rng(5)
    target = 0.5 + 0.05 * rng.standard_normal((96, 112))
    source = 0.5 + 0.05 * rng.standard_normal((96, 112))
    r = regtool.align(target, source)
    assert not r.converged
    u = r.uncertainty
    assert u.shift is None and u.theta_deg is None and u.endpoint_px is None
    assert u.reason and "did not" in u.reason
    doc = r.to_dict()["uncertainty"]
    assert doc == {"shift": None, "theta_deg": None, "endpoint_px": None, "reason": u.reason}


def test_uncertainty_in_the_json_document():
    target, source, _ = make_pair(photo(1), (128, 144), (2.0, 1.0), -3.0, noise=0.02, seed=4)
    doc = regtool.align(target, source).to_dict()["uncertainty"]
    assert doc["reason"] is None
    assert len(doc["shift"]) == 2 and all(0 < s < 0.1 for s in doc["shift"])
    assert 0 < doc["theta_deg"] < 0.1 and 0 < doc["endpoint_px"] < 0.1


def test_too_much_predicted_error_is_not_reported_as_a_number():
    cov = np.diag([4.0, 4.0, 1e-6])
    u = U._from_covariance(cov, np.eye(3), (64, 64))
    assert u.endpoint_px is None and "too little signal" in u.reason


def test_a_periodic_texture_has_a_rival_match_and_no_error_bars():
    # A tiling repeats every 20 px: the answer could be a period off, which no bar describes.
    rng = np.random.default_rng(0)
    tile = ndimage.gaussian_filter(rng.random((20, 20)), 1.5, mode="wrap")
    scene = np.tile(tile, (16, 16))
    shape = (192, 192)
    target, source, _ = make_pair(scene, shape, (3.3, -2.2), 2.0, noise=0.01, seed=1)
    r = regtool.align(target, source)
    u = r.uncertainty
    assert u.endpoint_px is None and u.shift is None
    assert "another match" in u.reason and "20" in u.reason


def test_natural_photographs_have_no_rival():
    for which in range(3):
        target, source, _ = make_pair(photo(which), (160, 160), (5.0, 3.0), 10.0, noise=0.02,
                                      seed=which)
        u = regtool.align(target, source).uncertainty
        assert u.endpoint_px is not None, u.reason


@pytest.mark.parametrize("noise", [0.0, 0.03])
def test_bars_from_the_solvers_last_evaluation_match_a_fresh_sampling(noise):
    # The error bars reuse the Gauss-Newton solve's last accepted evaluation, a step short of
    # the answer, its residuals carried to the answer to first order: a step many error bars
    # long on a noise-free pair, as a coarse level's tolerance (0.01 px) allows (without the
    # carry the noise-free bars came out 12 times too large here; with it, 5% off).
    from regtool import loss as L
    from regtool.optimize import gauss_newton
    from regtool.transform import about_center, image_center

    shape = (128, 144)
    target, source, m = make_pair(photo(1), shape, (2.5, -1.5), 3.0, noise=noise, seed=7)
    f = np.asarray(target, dtype=np.float32)
    g = np.asarray(source, dtype=np.float32)
    level = L.prepare_level(f, None, g, None, 1.0)
    center = image_center(shape)
    # one iteration from a start 0.05 px off: the answer is one whole step past the evaluation
    start = m @ about_center(0.04, -0.03, 2e-4, center)
    out = gauss_newton(level, start, center, "ncc", 1e-6, 1, 0.25)
    assert out.evaluation is not None and np.array_equal(out.evaluation.matrix, start)
    fresh = U.estimate(level, out.matrix, center, "ncc")
    reused = U.estimate(level, out.matrix, center, "ncc", evaluation=out.evaluation)
    assert reused.endpoint_px == pytest.approx(fresh.endpoint_px, rel=0.1)
    assert reused.theta_deg == pytest.approx(fresh.theta_deg, rel=0.1)


def test_blurred_weighting_brings_faint_noisy_pairs_closer(monkeypatch):
    # retina.jpg's centre: faint vessels on a smooth background, where the target's gradient
    # noise is a fair part of its gradients. The plain estimating equation (the solver's) and
    # the blurred one on more points (uncertainty.refine), on the same 12 seeded noisy pairs:
    # the second's errors must be clearly smaller (root mean square 0.70 of the plain one's
    # here) and its error bars still describe them.
    shape = (251, 301)
    plain, refined, ratios = [], [], []
    for i in range(12):
        rng = np.random.default_rng(300 + i)
        shift = tuple(rng.uniform(-5, 5, 2))
        deg = float(rng.uniform(-6, 6))
        target, source, m = make_pair(photo(2), shape, shift, deg, noise=0.02, seed=400 + i)
        monkeypatch.setattr(U, "SMOOTH_SHARE", math.inf)
        before = regtool.align(target, source)
        monkeypatch.setattr(U, "SMOOTH_SHARE", 0.1)
        after = regtool.align(target, source)
        assert after.converged and after.uncertainty.endpoint_px is not None
        plain.append(endpoint_error(m, before.matrix, shape))
        refined.append(endpoint_error(m, after.matrix, shape))
        ratios.append(refined[-1] / after.uncertainty.endpoint_px)
    rms = math.sqrt(np.mean(np.square(refined)) / np.mean(np.square(plain)))
    assert rms < 0.85, rms
    assert sum(a != b for a, b in zip(plain, refined, strict=True)) >= 8  # it did move them
    assert 0.6 < float(np.mean(ratios)) < 1.4, ratios


def test_level0_weighting_brings_faint_noisy_pairs_closer_where_level_1_answered(monkeypatch):
    # 512x512 crops of retina.jpg under 2% noise: level 1's answer wins (a quarter of the
    # pixels, each an average of four) and level 0's gradients are noisy, so the blurred
    # weighting on every level-0 pixel is tried (register._error_bars). On these 12 seeded
    # pairs its answers' root mean square error is 0.92 of level 1's (0.88 on 40 others), it
    # moves most of them, and its bars still describe the errors.
    from regtool import register as R

    shape = (512, 512)
    before, after, ratios = [], [], []
    calls = []
    refine = U.refine

    def spy(level, matrix, *args, **kwargs):
        out = refine(level, matrix, *args, **kwargs)
        if kwargs.get("against") is not None:
            calls.append(out[0] is not matrix)
        return out

    monkeypatch.setattr(U, "refine", spy)
    for i in range(12):
        rng = np.random.default_rng(700 + i)
        shift = tuple(rng.uniform(-5, 5, 2))
        deg = float(rng.uniform(-6, 6))
        target, source, m = make_pair(photo(2), shape, shift, deg, noise=0.02, seed=800 + i)
        monkeypatch.setattr(R, "REFINE_LEVEL0_MAX_PIXELS", 0)
        plain = regtool.align(target, source)
        assert plain.answer_level == 1
        monkeypatch.setattr(R, "REFINE_LEVEL0_MAX_PIXELS", 1 << 18)
        tried = len(calls)
        res = regtool.align(target, source)
        assert len(calls) == tried + 1  # tried once, on this pair only
        assert res.converged and res.uncertainty.endpoint_px is not None
        before.append(endpoint_error(m, plain.matrix, shape))
        after.append(endpoint_error(m, res.matrix, shape))
        ratios.append(after[-1] / res.uncertainty.endpoint_px)
        if not calls[-1]:  # the weighting's root lost: level 1's answer and bars stay
            assert after[-1] == before[-1]
            assert res.uncertainty.endpoint_px == plain.uncertainty.endpoint_px
    rms = math.sqrt(np.mean(np.square(after)) / np.mean(np.square(before)))
    assert rms < 0.97, rms
    assert sum(calls) >= 8, calls
    assert 0.6 < float(np.mean(ratios)) < 1.4, ratios


def test_a_root_must_beat_the_given_error_instead_of_the_margin(monkeypatch):
    # ``against`` replaces SMOOTH_GAIN times the solver's own expected error: a root whose
    # expected error is below it wins, one above it leaves the matrix itself.
    target, source, f, level, more, center = _weighting_pair()
    start = np.vstack([regtool.align(target, source).matrix, [0.0, 0.0, 1.0]])
    kw = {"image": f, "points": lambda: more, "weightings": ("blurred",)}
    root, bars = U.refine(level, start, center, "ncc", against=math.inf, **kw)
    assert root is not start
    won, same_bars = U.refine(level, start, center, "ncc", against=1.01 * bars.endpoint_px, **kw)
    assert np.array_equal(won, root) and same_bars.endpoint_px == bars.endpoint_px
    lost, own = U.refine(level, start, center, "ncc", against=0.99 * bars.endpoint_px, **kw)
    assert lost is start
    assert own.endpoint_px == U.estimate(level, start, center, "ncc").endpoint_px


def _weighting_pair():
    """A noisy 251x301 pair for the weightings of :func:`regtool.uncertainty.refine`: the
    images, the target as float32, the level's data on its own points and on 65536 points,
    and the rotation center."""
    from regtool import loss as L
    from regtool.transform import image_center

    shape = (251, 301)
    target, source, _ = make_pair(photo(2), shape, (2.0, -3.0), 4.0, noise=0.02, seed=5)
    f = np.asarray(target, dtype=np.float32)
    g = np.asarray(source, dtype=np.float32)
    level = L.prepare_level(f, None, g, None, 1.0)
    more = L.prepare_level(f, None, g, None, 1.0, max_points=1 << 16, min_points=1 << 16)
    return target, source, f, level, more, image_center(shape)


def test_the_refined_answer_is_its_equations_root(monkeypatch):
    # One Newton step from the solver's answer reaches the root of the equation on more points
    # (blurred weights, or plain ones): a second step from there moves the answer by a small
    # fraction of its error bar.
    target, source, f, level, more, center = _weighting_pair()
    monkeypatch.setattr(U, "SMOOTH_SHARE", math.inf)  # the plain root
    start = np.vstack([regtool.align(target, source).matrix, [0.0, 0.0, 1.0]])
    monkeypatch.setattr(U, "SMOOTH_GAIN", math.inf)  # take the blurred root whatever its bar
    for weighting in ("blurred", "plain"):
        _check_root(level, more, start, center, f, weighting)
    # with nothing to try, the matrix itself and estimate()'s bars come back
    same, u0 = U.refine(level, start, center, "ncc")
    assert same is start
    assert u0.endpoint_px == U.estimate(level, start, center, "ncc").endpoint_px


def test_no_weighting_rescues_an_answer_whose_own_bar_is_beyond_the_linear_model(monkeypatch):
    # The weightings' roots are one Newton step from the solver's answer, linearized there:
    # when that answer's own expected error is beyond MAX_ENDPOINT, no root with a smaller bar
    # replaces it, and there is no bar.
    target, source, f, level, more, center = _weighting_pair()
    start = np.vstack([regtool.align(target, source).matrix, [0.0, 0.0, 1.0]])
    monkeypatch.setattr(U, "SMOOTH_GAIN", math.inf)  # any root would do, whatever its bar
    own = U.estimate(level, start, center, "ncc").endpoint_px
    kw = {"image": f, "points": lambda: more}
    moved, bars = U.refine(level, start, center, "ncc", **kw)
    assert moved is not start and bars.endpoint_px is not None
    monkeypatch.setattr(U, "MAX_ENDPOINT", 0.9 * own)
    same, none = U.refine(level, start, center, "ncc", **kw)
    assert same is start
    assert none.endpoint_px is None and "too little signal" in none.reason


def _check_root(level, more, start, center, f, weighting):
    kw = {"image": f, "points": lambda: more, "weightings": (weighting,)}
    first, u1 = U.refine(level, start, center, "ncc", **kw)
    second, _ = U.refine(level, first, center, "ncc", **kw)
    assert first is not start
    step = center_params(np.linalg.inv(start) @ first, center)
    again = center_params(np.linalg.inv(first) @ second, center)
    assert math.hypot(step[0], step[1]) > 0.2 * u1.shift[0], step  # a real move
    assert math.hypot(again[0], again[1]) < 0.05 * u1.shift[0], (step, again)
    assert abs(again[2]) < 0.05 * math.radians(u1.theta_deg), (step, again)


def test_blurred_weights_are_central_differences_of_the_blurred_image():
    rng = np.random.default_rng(11)
    image = rng.normal(size=(37, 53)).astype(np.float32)
    blurred = ndimage.gaussian_filter(image.astype(np.float64), 1.5, mode="nearest", truncate=4.0)
    # np.gradient: central differences inside, one-sided full differences at the border,
    # where the blurred image repeated (mode="nearest") gives half of those
    ex, ey = np.gradient(blurred, axis=1), np.gradient(blurred, axis=0)
    ex[:, [0, -1]] *= 0.5
    ey[[0, -1], :] *= 0.5
    gx, gy = U._smoothed_gradients(image, 1.5, None)
    assert gx.dtype == np.float32 and gx.shape == (37 * 53,)
    np.testing.assert_allclose(gx, ex.ravel(), atol=1e-6)
    np.testing.assert_allclose(gy, ey.ravel(), atol=1e-6)
    index = np.array([0, 52, 53 * 10 + 7, 37 * 53 - 1])
    px, py = U._smoothed_gradients(image, 1.5, index)
    np.testing.assert_array_equal(px, gx[index])
    np.testing.assert_array_equal(py, gy[index])
