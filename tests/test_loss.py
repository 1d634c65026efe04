"""The seed's question: is the analytic gradient right? Check it against finite differences."""

import math

import numpy as np
import pytest
from scipy import ndimage

from regtool import loss as L
from regtool.transform import about_center

CENTER = (34.5, 39.5)  # of the 70 x 80 target


def _level(gain=1.0, offset=0.0):
    rng = np.random.default_rng(3)
    source = ndimage.gaussian_filter(rng.random((160, 150)), 2.5).astype(np.float32)
    source = (source - source.min()) / np.ptp(source)
    # target: 80 x 70 pixels sampled from the source near (40, 40); every matrix used below sends
    # the target deep inside the source, so no pixel enters or leaves the overlap while the
    # parameters wiggle and the objective stays smooth
    target = ndimage.affine_transform(source, np.eye(2), offset=(40, 40), output_shape=(80, 70),
                                      order=3).astype(np.float32)
    target = (gain * target + offset).astype(np.float32)
    return L.prepare_level(target, None, source, None, margin=1.0)


@pytest.mark.parametrize("metric", ["ssd", "ncc"])
@pytest.mark.parametrize("about", ["center", "origin"])
def test_analytic_gradient_matches_central_differences(metric, about):
    level = _level(1.3, 0.1) if metric == "ncc" else _level()
    center = CENTER if about == "center" else (0.0, 0.0)
    # away from the optimum (shift (40, 40), no rotation) so every component is sizeable
    p0 = np.array([41.5, 39.0, 0.02])
    if about == "origin":
        p0[:2] = about_center(*p0, CENTER)[:2, 2]
    res, grad = L.loss_and_gradient(level, about_center(*p0, center), True, center, metric)
    steps = [1e-3, 1e-3, 1e-5]
    numeric = np.empty(3)
    for i in range(3):
        dp = np.zeros(3)
        dp[i] = steps[i]
        plus = L.loss_and_gradient(level, about_center(*(p0 + dp), center), False, center,
                                   metric)[0]
        minus = L.loss_and_gradient(level, about_center(*(p0 - dp), center), False, center,
                                    metric)[0]
        assert plus.count == minus.count == res.count  # the overlap did not change
        numeric[i] = (plus.objective - minus.objective) / (2 * steps[i])
    assert np.allclose(grad, numeric, rtol=RTOL, atol=RTOL * np.abs(numeric).max())


# The source's derivative is the spline derivative at the pixel centers, itself interpolated
# between them: close to, not exactly, the derivative of the interpolated source.
RTOL = 1e-3


def test_rotation_gradient_carries_the_lever_arm():
    # Not a bug, the seed's point: about the origin d/dtheta picks up the translation gradient
    # times the lever arm R'(theta) c, which for a corner-based rotation is the image's size.
    level = _level()
    theta = 0.03
    m0 = about_center(41.0, 39.5, theta, CENTER)
    _, g_center = L.loss_and_gradient(level, m0, True, CENTER, "ssd")
    _, g_origin = L.loss_and_gradient(level, m0, True, (0.0, 0.0), "ssd")
    assert np.allclose(g_center[:2], g_origin[:2], rtol=1e-6)
    cx, cy = CENTER
    c, s = math.cos(theta), math.sin(theta)
    lever = g_center[2] + g_origin[0] * (-s * cx - c * cy) + g_origin[1] * (c * cx - s * cy)
    assert math.isclose(g_origin[2], lever, rel_tol=1e-4)


def test_ncc_residual_ignores_gain_and_offset():
    rng = np.random.default_rng(0)
    f = rng.random((40, 50)).astype(np.float32)
    g = ndimage.shift(f, (0.3, 0.2), order=1).astype(np.float32)
    valid = np.ones(f.shape, bool)
    valid[:2] = False
    a = L.residual(g, f, valid, "ncc")
    b = L.residual(0.5 * g + 3.0, f, valid, "ncc")
    assert math.isclose(a.loss, b.loss, rel_tol=1e-5)
    assert math.isclose(a.objective, b.objective, rel_tol=1e-4)
    assert 0 < a.loss < 0.2
    s = L.residual(g, f, valid, "ssd")
    assert math.isclose(s.loss, float(np.mean((g - f)[valid] ** 2)), rel_tol=1e-5)
    assert L.residual(0.5 * g + 3.0, f, valid, "ssd").loss > 1.0


def test_overlap_fraction_counts_pixel_centers_inside_the_source():
    rng = np.random.default_rng(7)
    for _ in range(30):
        th = rng.uniform(-np.pi, np.pi)
        m = about_center(*rng.uniform(-40, 40, 2), th, (30.0, 20.0))
        tshape, sshape = (41, 61), tuple(int(v) for v in rng.integers(20, 90, 2))
        ys, xs = np.mgrid[0 : tshape[0], 0 : tshape[1]]
        u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
        v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        inside = (u >= -0.5) & (u <= sshape[1] - 0.5) & (v >= -0.5) & (v <= sshape[0] - 0.5)
        assert math.isclose(L.overlap_fraction(m, tshape, sshape), inside.mean(), abs_tol=1e-12)


def test_target_spline_view_is_the_spline_the_source_is_sampled_with():
    # value and derivatives at the pixel centers from the 3-tap filters must equal what
    # map_coordinates(order=3, prefilter=False) gives for the same samples
    rng = np.random.default_rng(11)
    img = ndimage.gaussian_filter(rng.random((70, 90)), 1.0).astype(np.float32)
    value, gx, gy = L.spline_view(np.pad(img, ((1, 1), (0, 0)), mode="reflect"))
    ys, xs = np.mgrid[5:65:7, 4:86:9]
    pts = np.array([ys.ravel(), xs.ravel()], dtype=float)
    direct = ndimage.map_coordinates(img, pts, order=3, prefilter=False)
    assert np.abs(value[ys, xs].ravel() - direct).max() < 1e-6
    h = 1e-3
    for axis, grad in ((1, gx), (0, gy)):
        plus, minus = pts.copy(), pts.copy()
        plus[axis] += h
        minus[axis] -= h
        fd = (ndimage.map_coordinates(img, plus, order=3, prefilter=False, output=float)
              - ndimage.map_coordinates(img, minus, order=3, prefilter=False, output=float)
              ) / (2 * h)
        assert np.abs(grad[ys, xs].ravel() - fd).max() < 1e-4 * np.abs(fd).max()


@pytest.mark.parametrize("shape", [(301, 251), (97, 1200)])
def test_selected_points_carry_the_dense_values(shape, monkeypatch):
    # the strip-by-strip selection must hand out exactly the dense values at its points, and
    # pick the most textured ones
    monkeypatch.setattr(L, "STRIP_PIXELS", 5000)  # many strips, odd boundaries
    rng = np.random.default_rng(5)
    img = ndimage.gaussian_filter(rng.random(shape), 2.0).astype(np.float32)
    dense = L.prepare_level(img, None, img, None, margin=2.0, select=False)
    sparse = L.prepare_level(img, None, img, None, margin=2.0)
    # the count comes from a threshold read off a subsample: about the target, not exactly
    assert not sparse.dense and 0.8 * L.DENSE_LIMIT <= sparse.index.size <= 1.25 * L.DENSE_LIMIT
    assert np.all(np.diff(sparse.index) > 0)
    assert np.all(dense.target_valid[sparse.index])
    for a in ("target", "grad_x", "grad_y"):
        assert np.allclose(getattr(sparse, a), getattr(dense, a)[sparse.index], atol=1e-6)
    strength = dense.grad_x ** 2 + dense.grad_y ** 2
    chosen = np.zeros(strength.size, bool)
    chosen[sparse.index] = True
    left = dense.target_valid & ~chosen
    # the chosen quarter is the textured one: on average several times stronger than the rest
    # (selection reads differences two pixels apart, so not exactly the top of this measure)
    assert strength[chosen].mean() > 3 * strength[left].mean()
    assert np.median(strength[chosen]) > np.quantile(strength[left], 0.75)


def test_area_overlap_counts_the_usable_pixels_not_the_selected_points():
    # texture on the left quarter only: the selection's points all lie there
    rng = np.random.default_rng(4)
    img = np.full((240, 320), 100.0, dtype=np.float32)
    img[:, :80] += 30.0 * ndimage.gaussian_filter(rng.normal(size=(240, 80)), 1.0)
    img = img.astype(np.float32)
    level = L.prepare_level(img, None, img, None, 1.0)
    assert level.index is not None and np.all(level.index % 320 < 90)
    for shift, expected in ((0.0, 1.0), (-100.0, 0.69), (-200.0, 0.375)):
        m = about_center(shift, 0.0, 0.0, (159.5, 119.5))
        points = np.count_nonzero(level.overlap(m)) / level.index.size
        assert points < 0.05 or shift == 0.0
        # pixels 1..318 of each row usable, those with x + shift inside [1, 318] count
        assert level.area_overlap(m) == pytest.approx(expected, abs=0.01)
    # a masked target: only its usable pixels count
    valid = np.ones(img.shape, dtype=bool)
    valid[:, 160:] = False
    masked = L.prepare_level(img, valid, img, None, 1.0)
    m = about_center(-100.0, 0.0, 0.0, (159.5, 119.5))
    # usable: columns 1..157 (the mask eroded by the selection's two pixels), 57 of them inside
    assert masked.area_overlap(m) == pytest.approx(57 / 157, abs=0.01)


def test_point_cap_bounds_the_selection():
    img = ndimage.gaussian_filter(np.random.default_rng(2).random((400, 500)), 1.5)
    level = L.prepare_level(img.astype(np.float32), None, img.astype(np.float32), None, 1.0,
                            max_points=20000)
    assert 15000 <= level.index.size <= 40000


def test_sampling_in_chunks_gives_the_same_values_to_the_bit(monkeypatch):
    # large point sets are sampled TAPS_CHUNK points at a time (the taps' index and weights stay
    # in cache): every chunk boundary, and border points in a later chunk (sampled by scipy),
    # must give exactly what one pass over all the points gives
    rng = np.random.default_rng(8)
    img = ndimage.gaussian_filter(rng.random((120, 140)), 1.5).astype(np.float32)
    src = ndimage.gaussian_filter(rng.random((110, 150)), 1.5).astype(np.float32)
    level = L.prepare_level(img, None, src, None, margin=1.0, max_points=3000, min_points=3000)
    m = about_center(-3.3, 2.1, 0.2, (69.5, 59.5))  # some points land on the margin or past it
    rc = level.source_coords(m)
    valid = level.overlap(m, rc)
    assert 0 < np.count_nonzero(valid) < valid.size
    whole = level.sample_taps(rc, valid)
    spline = L.spline_at(img, level.index)
    monkeypatch.setattr(L, "TAPS_CHUNK", 257)  # many chunks, the last a partial one
    assert level.index.size > 8 * L.TAPS_CHUNK
    parts = level.sample_taps(rc, valid)
    assert not parts.inside.all()  # border points, sampled by scipy, are among the chunks
    for a in ("values", "block", "wy", "along_x", "inside"):
        assert np.array_equal(getattr(parts, a), getattr(whole, a)), a
    for one, chunked in zip(spline, L.spline_at(img, level.index), strict=True):
        assert np.array_equal(one, chunked)
