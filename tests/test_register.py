"""End-to-end behaviour of regtool.align on known warps of real photographs."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from synth import endpoint_error, make_pair, photo

import regtool
from regtool import pyramid
from regtool.transform import about_center, rigid_params

# (photo, rotation in degrees, shift as a fraction of the size): |theta| <= 20, |t| <= 10%
CASES = [
    (0, 12.0, (0.06, -0.04)),
    (1, -20.0, (-0.10, 0.03)),
    (2, 5.5, (0.02, 0.09)),
    (2, -9.0, (0.08, 0.08)),
    (0, 17.0, (-0.07, -0.10)),
    (1, 0.0, (0.10, -0.05)),
]


@pytest.mark.parametrize("optimizer", ["gauss-newton", "scaled"])
def test_recovers_known_transforms_of_photographs_with_noise(optimizer):
    errors = []
    for i, (which, deg, (fx, fy)) in enumerate(CASES):
        shape = (200, 176)
        target, source, m = make_pair(photo(which), shape, (fx * shape[1], fy * shape[0]), deg,
                                      noise=0.01, seed=i)
        r = regtool.align(target, source, optimizer=optimizer)
        assert r.converged, (i, r.reason)
        errors.append(endpoint_error(m, r.matrix, shape))
    assert np.mean(errors) < 0.05, errors
    assert max(errors) < 0.1, errors


def test_ncc_holds_under_gain_and_offset():
    shape = (192, 208)
    target, source, m = make_pair(photo(0), shape, (9.0, -6.0), 11.0, noise=0.01, gain=1.35,
                                  offset=-0.15, seed=5)
    r = regtool.align(target, source, metric="ncc")
    assert r.converged, r.reason
    assert endpoint_error(m, r.matrix, shape) < 0.05
    assert 0 <= r.loss < 0.05  # 1 - ncc
    assert r.metric == "ncc"


def test_plain_gd_fails_where_preconditioned_methods_succeed():
    # The seed's point, shown honestly: the same rotation, three optimizers.
    shape = (160, 160)
    target, source, m = make_pair(photo(0), shape, (2.0, -1.5), 6.0)
    gd = regtool.align(target, source, optimizer="gd")
    assert not gd.converged
    assert gd.reason
    assert endpoint_error(m, gd.matrix, shape) > 1.0
    for optimizer in ("scaled", "gauss-newton"):
        r = regtool.align(target, source, optimizer=optimizer)
        assert r.converged, r.reason
        assert endpoint_error(m, r.matrix, shape) < 0.05
        # and the loss never rose level to level on the way down
        assert r.loss < gd.loss or not math.isfinite(gd.loss)


@pytest.mark.parametrize("shape", [(301, 251), (257, 193), (256, 256), (97, 131)])
def test_pure_subpixel_shift_has_no_pyramid_bias(shape):
    target, source, m = make_pair(photo(1), shape, (0.3, -0.7), 0.0)
    r = regtool.align(target, source)
    # after the global search the descent starts at the level searched (coarser ones have
    # nothing left to find) and runs down to the full image
    # (two levels at a time down to level 2; levels 1 and 0 always)
    k = min(r.init["level"], pyramid.auto_levels(shape) - 1)
    expect = sorted({*range(k, 1, -2), *range(min(k, 1), -1, -1)}, reverse=True)
    assert [rec.level for rec in r.levels] == expect
    assert len(regtool.align(target, source, init="none").levels) == pyramid.auto_levels(shape)
    assert r.converged
    assert abs(r.tx - 0.3) < 0.01 and abs(r.ty + 0.7) < 0.01, (r.tx, r.ty)
    assert abs(r.theta) < 1e-4


def test_reported_parameters_agree_with_matrix_and_center():
    shape = (180, 150)
    target, source, m = make_pair(photo(2), shape, (4.0, 3.0), -7.0)
    r = regtool.align(target, source)
    assert np.allclose(r.matrix, [[math.cos(r.theta), -math.sin(r.theta), r.tx],
                                  [math.sin(r.theta), math.cos(r.theta), r.ty]])
    assert r.center == (74.5, 89.5)
    assert np.allclose(about_center(*r.shift, r.theta, r.center)[:2], r.matrix)
    assert math.isclose(r.theta_deg, -7.0, abs_tol=0.01)
    tx, ty, th = rigid_params(m)
    assert abs(r.tx - tx) < 0.05 and abs(r.ty - ty) < 0.05
    doc = json.loads(json.dumps(r.to_dict()))
    for key in ("tx", "ty", "theta", "theta_deg", "matrix", "center", "shift", "metric", "loss",
                "converged", "levels", "optimizer", "time_s", "overlap", "regtool_version"):
        assert key in doc
    assert doc["levels"][-1]["level"] == 0 and doc["levels"][-1]["shape"] == [180, 150]
    assert all(rec["iterations"] >= 1 for rec in doc["levels"])


def test_target_smaller_than_source():
    big = photo(2)
    source_shape, shape = (300, 280), (180, 200)
    # the source shows the scene rotated; the target is a window of its middle
    target_full, source, m_full = make_pair(big, source_shape, (0.0, 0.0), 0.0)
    oy, ox = (300 - 180) // 2, (280 - 200) // 2
    m_true = about_center(3.0, -2.0, math.radians(8.0), (139.5, 149.5))
    inner = regtool.warp(source, m_true @ [[1, 0, ox], [0, 1, oy], [0, 0, 1]], shape)
    r = regtool.align(inner, source)
    assert r.converged, r.reason
    expect = m_true @ np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1.0]])
    assert endpoint_error(expect, r.matrix, shape) < 0.05
    assert r.target_shape == shape and r.source_shape == source_shape
    assert r.overlap > 0.9


def test_nan_pixels_are_left_out():
    shape = (160, 176)
    target, source, m = make_pair(photo(0), shape, (5.0, 4.0), 6.0)
    target = target.astype(np.float32)
    target[20:60, 30:90] = np.nan
    source = source.astype(np.float32)
    source[100:130, 10:50] = np.inf
    r = regtool.align(target, source)
    assert r.converged, r.reason
    assert endpoint_error(m, r.matrix, shape) < 0.05


def test_progress_reports_every_level_coarse_to_fine():
    target, source, _ = make_pair(photo(1), (256, 256), (3.0, 2.0), 4.0)
    seen = []
    r = regtool.align(target, source, init="none",
                      progress=lambda rec, i, n: seen.append((rec.level, i, n)))
    assert seen == [(3, 0, 4), (2, 1, 4), (1, 2, 4), (0, 3, 4)]
    assert [rec.level for rec in r.levels] == [3, 2, 1, 0]
    seen.clear()
    r = regtool.align(target, source, progress=lambda rec, i, n: seen.append((rec.level, i, n)))
    assert r.init["level"] == 2  # 256 -> 128 -> 64: short side 64 is where the search runs
    assert seen == [(2, 0, 3), (1, 1, 3), (0, 2, 3)]


def test_init_and_levels_options():
    shape = (192, 192)
    target, source, m = make_pair(photo(2), shape, (6.0, -5.0), 9.0)
    tx, ty, th = rigid_params(m)
    r = regtool.align(target, source, levels=1, init=(tx + 0.5, ty - 0.5, math.degrees(th) + 0.3))
    assert len(r.levels) == 1 and r.converged
    assert endpoint_error(m, r.matrix, shape) < 0.05


def test_failures_are_reported_not_raised():
    shape = (128, 128)
    target, source, _ = make_pair(photo(0), shape, (3.0, 2.0), 5.0)
    r = regtool.align(target, source, init=(110.0, 0.0, 0.0))
    assert not r.converged and "overlap" in r.reason
    r = regtool.align(target, source, max_iter=1)
    assert not r.converged and "did not converge" in r.reason
    assert json.dumps(r.to_dict())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: np.full((64, 64), 7, np.uint8), "no texture"),
        (lambda: np.random.default_rng(0).random((10, 64)), "too small"),
        (lambda: np.random.default_rng(0).random((64, 64, 5)), "shape"),
        (lambda: np.random.default_rng(0).random((3, 64, 64, 1)), "shape"),
        (lambda: np.full((64, 64), np.nan), "NaN"),
        (lambda: np.random.default_rng(0).random((64, 64)) + 1j, "pixel type"),
    ],
)
def test_unusable_inputs_raise_input_error_naming_the_image(make, message):
    good = photo(0)[:64, :64]
    with pytest.raises(regtool.InputError, match=message) as info:
        regtool.align(good, make())
    assert info.value.which == "source"
    with pytest.raises(regtool.InputError) as info:
        regtool.align(make(), good)
    assert info.value.which == "target"


def test_bad_options_raise_value_error():
    img = photo(0)[:64, :64]
    with pytest.raises(ValueError, match="optimizer"):
        regtool.align(img, img, optimizer="adam")
    with pytest.raises(ValueError, match="metric"):
        regtool.align(img, img, metric="mi")
    with pytest.raises(regtool.InputError, match="levels"):
        regtool.align(img, img, levels=9)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [None, 3, 4])
def test_result_warp_keeps_dtype_and_channels(dtype, channels):
    shape = (120, 136)
    target, source, m = make_pair(photo(1), shape, (2.5, -3.0), 4.0)
    scale = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0

    def as_image(gray):
        img = np.clip(gray, 0, 1)
        if channels:
            planes = [img, 0.8 * img, 0.6 * img, np.ones_like(img)][:channels]
            img = np.stack(planes, axis=-1)
        img = img * scale
        return np.rint(img).astype(dtype) if scale != 1.0 else img.astype(dtype)

    r = regtool.align(as_image(target), as_image(source))
    assert r.converged and endpoint_error(m, r.matrix, shape) < 0.05
    out = r.warp(as_image(source))
    assert out.dtype == dtype
    assert out.shape == (shape if channels is None else shape + (channels,))
    inner = (slice(15, -15), slice(15, -15))
    ref = as_image(target).astype(float)
    assert np.abs(out.astype(float)[inner] - ref[inner]).mean() < 0.01 * scale


def test_integer_output_is_clipped_not_wrapped():
    # a hard edge: cubic interpolation overshoots above white and below black on both sides,
    # which wraps around (255 -> 0) if cast without clipping
    img = np.zeros((40, 40), np.uint8)
    img[:, 20:] = 255
    shift = [[1, 0, 0.5], [0, 1, 0]]
    raw = regtool.warp(img.astype(np.float64), shift, (40, 40))
    assert raw.max() > 255 and raw.min() < 0  # the overshoot is there...
    out = regtool.warp(img, shift, (40, 40), interp="cubic")
    assert out[:, 22:39].min() >= 254 and out[:, 1:17].max() <= 1  # ...and clipped, not wrapped
    out16 = regtool.warp(img.astype(np.uint16) * 257, shift, (40, 40))
    assert out16.dtype == np.uint16
    assert out16[:, 22:39].min() > 65000 and out16[:, 1:17].max() < 500
    assert out16[:, -1].max() == 0  # the last column samples outside: the fill value


def test_ncc_moves_from_a_poorly_correlated_start():
    # A least-squares gain (cov / var) shrinks a badly aligned source to a constant and the
    # Gauss-Newton step with it; the standardized residual keeps the step at full size.
    shape = (301, 251)
    target, source, m = make_pair(photo(0), shape, (19.31, 25.35), 9.16, noise=0.01,
                                  gain=0.709, offset=0.073, seed=16)
    for optimizer in ("gauss-newton", "scaled"):
        r = regtool.align(target, source, metric="ncc", optimizer=optimizer)
        assert r.converged, r.reason
        assert endpoint_error(m, r.matrix, shape) < 0.05


def test_masked_time_stamp_no_longer_pulls_the_result():
    # A time stamp sits at the same place in both frames while the scene moves under it: it
    # pulls toward the identity unless masked out.
    shape = (200, 200)
    target, source, m = make_pair(photo(0), shape, (4.0, -3.0), 3.0)
    stamp = np.zeros((36, 120))
    stamp[:, ::6] = 1.0
    stamp[::6, :] = 1.0
    for img in (target, source):
        img[6:42, 6:126] = stamp
    mask = np.ones(shape, bool)
    mask[4:44, 4:128] = False
    free = regtool.align(target, source)
    masked = regtool.align(target, source, target_mask=mask, source_mask=mask)
    assert masked.converged, masked.reason
    assert endpoint_error(m, masked.matrix, shape) < 0.05
    assert endpoint_error(m, free.matrix, shape) > 0.2  # without the mask, pulled away


def test_mask_shape_and_coverage_are_checked():
    img = photo(0)[:64, :64]
    with pytest.raises(regtool.InputError, match="shape") as info:
        regtool.align(img, img, source_mask=np.ones((64, 63), bool))
    assert info.value.which == "source"
    with pytest.raises(regtool.InputError, match="usable pixels") as info:
        regtool.align(img, img, target_mask=np.zeros((64, 64), bool))
    assert info.value.which == "target"


def test_the_default_handles_a_gain_and_an_offset():
    # Another exposure, bleaching, another camera: no option needed.
    for i, (gain, offset) in enumerate(((0.6, 0.15), (1.4, -0.2), (0.8, -0.1))):
        shape = (176, 192)
        target, source, m = make_pair(photo(i), shape, (7.0, -5.0), 9.0 - 6 * i, noise=0.02,
                                      gain=gain, offset=offset, seed=30 + i)
        r = regtool.align(target, source)
        assert r.converged, r.reason
        # well inside a pixel, and within what its own error bar allows (retina is smooth)
        err = endpoint_error(m, r.matrix, shape)
        assert err < 0.1 and err < 3 * r.uncertainty.endpoint_px, (err, r.uncertainty)
        assert r.metric == "ncc"


def test_the_answer_comes_from_level_1_only_when_noise_makes_it_the_better_one():
    # A smooth scene holds little above level 1's band; with noise, level 1's averaged pixels
    # give the better answer. Without noise level 0's does.
    from scipy import ndimage

    rng = np.random.default_rng(0)
    scene = ndimage.gaussian_filter(rng.standard_normal((400, 400)), 5.0)
    scene = (scene - scene.min()) / (scene.max() - scene.min())
    shape = (256, 256)
    clean = make_pair(scene, shape, (4.0, -3.0), 5.0, seed=6)
    noisy = make_pair(scene, shape, (4.0, -3.0), 5.0, noise=0.05, seed=6)
    r_clean = regtool.align(*clean[:2])
    r_noisy = regtool.align(*noisy[:2])
    assert r_clean.answer_level == 0 and r_clean.to_dict()["answer_level"] == 0
    assert endpoint_error(clean[2], r_clean.matrix, shape) < 0.002
    assert r_noisy.converged and r_noisy.answer_level == 1
    assert r_noisy.to_dict()["answer_level"] == 1
    err = endpoint_error(noisy[2], r_noisy.matrix, shape)
    assert err < 0.1 and err < 3 * r_noisy.uncertainty.endpoint_px, (err, r_noisy.uncertainty)


def test_quick_covariance_removes_the_gradient_noise_and_refuses_noise_only():
    from regtool.uncertainty import quick_covariance

    n = np.diag([100.0, 100.0, 1e6])
    h = np.diag([400.0, 400.0, 4e6])
    cov = quick_covariance(h, 2.0, n)  # H - objective / 2 * N = 3/4 H
    assert np.allclose(cov, 2.0 * np.linalg.inv(0.75 * h))
    assert quick_covariance(h, 20.0, n) is None  # the noise explains all of H


def test_float32_inputs_are_used_as_they_are_and_left_untouched():
    shape = (160, 144)
    target, source, _ = make_pair(photo(0), shape, (4.0, -3.0), 6.0, noise=0.01, seed=5)
    target, source = target.astype(np.float32), source.astype(np.float32)
    before = target.copy(), source.copy()
    r = regtool.align(target, source)
    assert r.converged
    assert np.array_equal(target, before[0]) and np.array_equal(source, before[1])


def test_level_0_one_iteration_per_call_follows_one_solve():
    # register._one_by_one must reproduce one Gauss-Newton solve exactly (it mirrors the
    # solver's check for a rejected step), or hand back None.
    from regtool import loss as L
    from regtool import register as R
    from regtool.optimize import gauss_newton
    from regtool.transform import image_center

    followed = 0
    for i, noise in enumerate((0.02, 0.05, 0.08)):
        shape = (256, 256)
        target, source, m = make_pair(photo(i), shape, (3.3, -2.1), 4.0, noise=noise, seed=i)
        level = L.prepare_level(target.astype(np.float32), None, source.astype(np.float32),
                                None, R.MARGIN_FINE, max_points=1 << 12)
        center = image_center(shape)
        start = about_center(0.05, -0.04, 0.0005, center) @ m
        whole = gauss_newton(level, start, center, "ncc", 1e-3, 50, 0.25)
        first = gauss_newton(level, start, center, "ncc", 1e-3, 1, 0.25)
        if first.converged:
            continue
        out = R._one_by_one(gauss_newton, level, start, first, center, "ncc", 1e-3, 50, 0.25)
        if out is None:
            continue
        followed += 1
        assert out.iterations == whole.iterations
        assert np.array_equal(out.matrix, whole.matrix)
        assert out.objective == whole.objective and out.converged == whole.converged
    assert followed >= 2


def test_a_masked_hole_costs_only_its_pixels():
    """Points next to masked pixels would read the fill value (a false edge the source lacks)
    and the selection favoured them: a 40x80 NaN hole once took the error from 0.0014 to
    0.0049 px. Now the hole's own share of the information is all it costs."""
    target, source, m = make_pair(photo(1), (256, 256), (4.0, -3.0), 5.0, noise=0.01, seed=1)
    whole = regtool.align(target, source)
    holed = target.copy()
    holed[100:140, 80:160] = np.nan
    with_hole = regtool.align(holed, source)
    assert with_hole.converged
    err_whole = endpoint_error(m, whole.matrix, target.shape)
    err_hole = endpoint_error(m, with_hole.matrix, target.shape)
    assert err_hole < 0.003 and err_hole < 1.6 * max(err_whole, whole.uncertainty.endpoint_px)
    # and the error bar still describes the error
    assert with_hole.uncertainty.endpoint_px < 1.5 * whole.uncertainty.endpoint_px


def test_the_finest_level_of_a_large_image_registers_on_more_points():
    # Above LARGE_PIXELS the finest level's budget grows with the image (a LARGE_SHARE-th of its
    # pixels, capped); smaller images and the other levels keep theirs.
    from regtool import loss as L
    from regtool import register as R

    assert R._points(0, 1024 * 1024)["max_points"] == L.MAX_POINTS
    assert R._points(0, 2048 * 2048)["max_points"] == 2048 * 2048 // R.LARGE_SHARE
    assert R._points(0, 8192 * 8192)["max_points"] == R.LARGE_MAX_POINTS
    assert R._points(1, 8192 * 8192)["max_points"] == R.LEVEL1_MAX_POINTS
    assert R._points(2, 8192 * 8192)["max_points"] == L.MAX_POINTS


def test_a_textured_side_outside_the_overlap_is_no_lost_overlap():
    # The finest level registers on its most textured pixels. Here they lie in the target's
    # left third, most of which maps outside the source: 70% of the target overlaps the source
    # but a fifth of those points did, which once failed the level as "overlap fell to 20.2% of
    # the target (minimum 25%)" on this noise-free pair.
    rng = np.random.default_rng(3)
    strong = ndimage.gaussian_filter(rng.normal(size=(400, 480)), 1.5)
    weak = ndimage.gaussian_filter(rng.normal(size=(400, 480)), 3.0)
    strong, weak = strong / strong.std(), weak / weak.std()
    scene = np.where(np.arange(480)[None, :] < 200, 40.0 * strong, 0.0) + 10.0 * weak + 128.0
    shape = (200, 240)
    target, source, m = make_pair(scene, shape, (-70.3, 1.4), 0.0)
    tx, ty, theta = rigid_params(m)
    # started 1.5 px off (the global search is not what this is about)
    r = regtool.align(target, source, init=(tx + 1.5, ty - 1.0, math.degrees(theta)))
    assert r.converged, r.reason
    assert 0.65 < r.overlap < 0.75
    assert endpoint_error(m, r.matrix, shape) < 0.01
    assert r.uncertainty.endpoint_px is not None
