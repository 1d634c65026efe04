"""regtool.warp against exact resampling: scipy's float64 path and an independent spline.

The fast cubic path prefilters in float32 and samples in row strips (threaded on large
images). Its results must be those of the interpolating cubic B-spline up to float32
rounding: within ``TOL`` (1e-4) of the image's range for float32 work, 1e-10 for float64.
"""

import math

import numpy as np
import pytest
from scipy import ndimage

import regtool
from regtool import resample

# float32 rounding of the coefficients and the samples: observed ~1e-7 of the range.
TOL = 1e-4
TOL64 = 1e-10


def rigid(theta_deg: float, tx: float, ty: float) -> np.ndarray:
    t = math.radians(theta_deg)
    return np.array([[math.cos(t), -math.sin(t), tx], [math.sin(t), math.cos(t), ty]])


def scipy_exact(plane: np.ndarray, m: np.ndarray, shape: tuple[int, int], fill: float = 0.0,
                order: int = 3) -> np.ndarray:
    """scipy's own resampling in float64 with its implicit prefilter: the old warp, exact."""
    rc, offset = resample.ndimage_affine(m)
    return ndimage.affine_transform(plane.astype(np.float64), rc, offset=offset,
                                    output_shape=shape, order=order, mode="constant", cval=fill,
                                    prefilter=True)


def spline_coefficients_exact(values: np.ndarray) -> np.ndarray:
    """Interpolating cubic B-spline coefficients by a dense solve, per axis.

    Boundary: whole-sample mirror (c[-k] = c[k], c[n-1+k] = c[n-1-k]), so the spline of
    coefficients c interpolates: (c[i-1] + 4 c[i] + c[i+1]) / 6 = values[i].
    """
    c = values.astype(np.float64)
    for axis in (0, 1):
        n = c.shape[axis]
        if n == 1:
            continue
        a = np.zeros((n, n))
        for i in range(n):
            a[i, i] += 4.0
            for j in (i - 1, i + 1):
                jj = -j if j < 0 else (2 * (n - 1) - j if j > n - 1 else j)
                a[i, jj] += 1.0
        c = np.moveaxis(np.linalg.solve(a / 6.0, np.moveaxis(c, axis, 0)), 0, axis)
    return c


def bspline3(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def spline_value(coeffs: np.ndarray, x: float, y: float) -> float:
    """The spline at source pixel (x, y), summed term by term over its 4x4 support."""
    h, w = coeffs.shape

    def mirror(i: int, n: int) -> int:
        if n == 1:
            return 0
        i = abs(i) % (2 * n - 2)
        return i if i < n else 2 * n - 2 - i

    total = 0.0
    for r in range(math.floor(y) - 1, math.floor(y) + 3):
        for c in range(math.floor(x) - 1, math.floor(x) + 3):
            total += bspline3(y - r) * bspline3(x - c) * coeffs[mirror(r, h), mirror(c, w)]
    return float(total)


def photo_like(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth structure plus sharp edges and noise in [0, 1], so cubic overshoots."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    base = 0.5 + 0.3 * np.sin(xx / 3.1) * np.cos(yy / 4.7) + 0.2 * ((xx + 2 * yy) % 11 < 4)
    if len(shape) == 3:
        base = base[..., None] * np.linspace(0.6, 1.0, shape[2])
    return np.clip(base + 0.05 * rng.standard_normal(shape), 0, 1)


CASES = [  # (shape, matrix): odd sizes, rotations, shifts, output larger/smaller than input
    ((37, 53), rigid(7.0, 2.3, -1.7)),
    ((61, 29), rigid(-33.0, 15.2, 9.8)),
    ((40, 40), rigid(0.0, 0.37, -0.61)),
    ((23, 31), rigid(90.0, 30.0, 0.5)),
]


@pytest.mark.parametrize("shape, m", CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cubic_equals_scipy_float64_resampling(shape, m, dtype):
    img = photo_like(shape).astype(dtype)
    out_shape = (shape[0] + 4, shape[1] - 3)
    got = regtool.warp(img, m, out_shape, fill=0.25)
    assert got.dtype == img.dtype and got.shape == out_shape
    want = scipy_exact(img, m, out_shape, fill=0.25)
    tol = TOL if dtype == "float32" else TOL64
    assert np.max(np.abs(got - want)) <= tol * np.ptp(img)


def test_cubic_equals_an_independent_spline_evaluation():
    img = photo_like((19, 26), seed=3)
    coeffs = spline_coefficients_exact(img)
    # the coefficients interpolate: the spline at the pixel centers is the image
    assert spline_value(coeffs, 5.0, 7.0) == pytest.approx(img[7, 5], abs=1e-12)
    m = rigid(11.0, 1.3, -2.2)
    for dtype, tol in (("float64", TOL64), ("float32", TOL)):
        out = regtool.warp(img.astype(dtype), m, (22, 24), fill=-1.0)
        for r, c in [(0, 2), (3, 5), (10, 10), (12, 20), (18, 3), (21, 9), (4, 23)]:
            x, y = m @ [c, r, 1.0]
            if 0 <= x <= 25 and 0 <= y <= 18:
                want = spline_value(coeffs, x, y)
            else:
                want = -1.0
            assert abs(out[r, c] - want) <= tol, (dtype, r, c, x, y)


def test_border_pixels_use_the_mirrored_spline_and_outside_gets_fill():
    img = photo_like((15, 21), seed=5)
    coeffs = spline_coefficients_exact(img)
    h, w = img.shape
    # pure shifts that land every output column 0.3 px inside the left edge / just outside
    for dx, inside in ((0.3, True), (-0.3, False), (-1e-6, False), (0.0, True)):
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, 0.45]])
        out = regtool.warp(img.astype(np.float32), m, (h, w), fill=9.0)
        x, y = dx, 2 + 0.45
        want = spline_value(coeffs, x, y) if inside else 9.0
        assert out[2, 0] == pytest.approx(want, abs=TOL), dx
        assert np.all(out[-1] == 9.0)  # row h-1 samples y = h - 0.55, past the last row
    # the right edge, x = w - 1 exactly and just beyond
    m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = regtool.warp(img.astype(np.float32), m, (h, w + 1), fill=9.0)
    assert np.allclose(out[:, :w], img, atol=TOL)  # interpolating, up to the last column
    assert np.all(out[:, w] == 9.0)
    # whole-image border against scipy's float64 prefilter under a rotation
    m = rigid(3.0, 0.2, -0.4)
    got = regtool.warp(img.astype(np.float32), m, (h, w), fill=2.0)
    want = scipy_exact(img, m, (h, w), fill=2.0)
    assert np.array_equal(got == 2.0, want == 2.0)
    assert np.max(np.abs(got - want)) <= TOL


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 17, 40])
def test_prefilter_matches_scipy_on_short_and_long_axes(n):
    img = photo_like((n, 7), seed=n)
    for work, tol in ((np.float32, 1e-6), (np.float64, 1e-13)):
        got = resample._spline_coefficients(img.astype(work), work)
        want = ndimage.spline_filter(img, 3, output=np.float64, mode="constant")
        assert got.dtype == work
        assert np.max(np.abs(got - want)) <= tol * 10


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64"])
@pytest.mark.parametrize("channels", [3, 4])
def test_every_channel_is_its_own_gray_warp(dtype, channels):
    img = photo_like((27, 33, channels), seed=1)
    if dtype.startswith("uint"):
        img = np.rint(img * np.iinfo(dtype).max).astype(dtype)
    else:
        img = img.astype(dtype)
    m = rigid(-21.0, 6.5, 3.25)
    out = regtool.warp(img, m, (25, 35), fill=3)
    assert out.dtype == img.dtype and out.shape == (25, 35, channels)
    for ch in range(channels):
        gray = regtool.warp(np.ascontiguousarray(img[..., ch]), m, (25, 35), fill=3)
        assert np.array_equal(out[..., ch], gray)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_integer_outputs_are_exact_rounded_and_clipped(dtype):
    top = np.iinfo(dtype).max
    img = np.zeros((30, 30), dtype=dtype)
    img[8:22, 8:22] = top  # a hard step: the cubic overshoots above top and below 0
    m = rigid(13.0, 1.2, -0.8)
    got = regtool.warp(img, m, (30, 30), fill=0).astype(np.int64)
    exact = scipy_exact(img, m, (30, 30))
    assert exact.max() > top and exact.min() < 0  # the overshoot is there to clip
    want = np.clip(np.rint(exact), 0, top)
    # float32 work may flip a rounding where the exact value is within its rounding of .5
    near_half = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < TOL * top
    assert np.all((got == want) | near_half)
    assert got.min() >= 0 and got.max() == top


def test_fill_values_are_cast_like_the_samples():
    img = (np.arange(100, dtype=np.uint8) * 2).reshape(10, 10)
    far = np.array([[1.0, 0.0, 50.0], [0.0, 1.0, 0.0]])  # every pixel maps outside
    assert np.all(regtool.warp(img, far, (4, 4), fill=300.0) == 255)
    assert np.all(regtool.warp(img, far, (4, 4), fill=-5.0) == 0)
    assert np.all(regtool.warp(img, far, (4, 4), fill=7.4) == 7)
    flt = regtool.warp(img.astype(np.float32), far, (4, 4), fill=np.nan)
    assert np.all(np.isnan(flt))
    for interp in ("linear", "nearest"):
        assert np.all(regtool.warp(img, far, (3, 3), interp=interp, fill=12.0) == 12)


@pytest.mark.parametrize("interp, order", [("linear", 1), ("nearest", 0)])
@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
def test_linear_and_nearest_equal_scipy(interp, order, dtype):
    img = photo_like((31, 24), seed=2)
    img = (np.rint(img * 255).astype(dtype) if dtype == "uint8" else img.astype(dtype))
    m = rigid(17.0, 4.4, -3.3)
    got = regtool.warp(img, m, (29, 26), interp=interp, fill=1.0)
    want = scipy_exact(img, m, (29, 26), fill=1.0, order=order)
    if dtype == "uint8":
        want = np.clip(np.rint(want), 0, 255)
    tol = TOL64 if dtype == "float64" else 1e-5
    assert np.max(np.abs(got - want)) <= tol * 255


@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize("interp", ["cubic", "linear"])
def test_threaded_strips_equal_the_single_threaded_warp(monkeypatch, channels, interp):
    shape = (45, 38) if channels is None else (45, 38, channels)
    img = np.rint(photo_like(shape, seed=4) * 255).astype(np.uint8)
    m = rigid(5.0, -2.5, 1.5)
    whole = regtool.warp(img, m, (41, 37), interp=interp, fill=4)
    monkeypatch.setattr(resample, "STRIP_PIXELS", 3 * 37 + 5)  # 3 rows: 14 strips, last short
    serial = regtool.warp(img, m, (41, 37), interp=interp, fill=4, threads=1)
    threaded = regtool.warp(img, m, (41, 37), interp=interp, fill=4, threads=2)
    assert np.array_equal(serial, threaded)
    # strips move the offset by whole rows: the same samples as one call, up to the last bit
    # of a coordinate (which may flip a rounding of a value within 1e-9 of .5)
    assert np.max(np.abs(serial.astype(int) - whole.astype(int))) <= 1
    assert np.mean(serial == whole) > 0.999


def test_threaded_float_path_is_bitwise_serial(monkeypatch):
    img = photo_like((33, 35), seed=6).astype(np.float32)
    m = rigid(-8.0, 1.0, 2.0)
    monkeypatch.setattr(resample, "STRIP_PIXELS", 1)  # one row per strip
    a = regtool.warp(img, m, (33, 35), threads=1)
    b = regtool.warp(img, m, (33, 35), threads=3)
    assert np.array_equal(a, b)
    assert np.max(np.abs(a - scipy_exact(img, m, (33, 35)))) <= TOL


def test_thread_count_rules(monkeypatch):
    monkeypatch.delenv(resample.THREADS_ENV, raising=False)
    assert 1 <= resample.default_threads() <= resample.MAX_THREADS
    # small images stay on the calling thread unless asked
    assert resample._thread_count(None, 128 * 128) == 1
    assert resample._thread_count(2, 10) == 2
    monkeypatch.setenv(resample.THREADS_ENV, "3")
    assert resample.default_threads() == 3
    assert resample._thread_count(None, 10**9) == 3
    monkeypatch.setenv(resample.THREADS_ENV, "1")
    assert resample._thread_count(None, 10**9) == 1
    for bad in ("0", "-2", "many"):
        monkeypatch.setenv(resample.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=resample.THREADS_ENV):
            resample.default_threads()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            regtool.warp(np.zeros((4, 4)), np.eye(3), (4, 4), threads=bad)


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (2, 2), (1, 1)])
def test_thin_images(shape):
    img = photo_like(shape, seed=7)
    m = np.array([[1.0, 0.0, 0.25], [0.0, 1.0, 0.0]]) if shape[1] > 1 else np.eye(3)
    got = regtool.warp(img, m, shape)
    assert np.max(np.abs(got - scipy_exact(img, m, shape))) <= TOL64


def test_empty_source_gives_fill():
    assert np.all(regtool.warp(np.zeros((0, 5), np.uint8), np.eye(3), (3, 4), fill=6) == 6)
    assert regtool.warp(np.ones((5, 5)), np.eye(3), (0, 4)).shape == (0, 4)


def test_bool_and_wide_integers():
    rng = np.random.default_rng(8)
    mask = rng.random((20, 20)) > 0.5
    m = rigid(4.0, 0.5, 0.5)
    out = regtool.warp(mask, m, (20, 20))
    assert out.dtype == np.bool_
    assert np.array_equal(out, scipy_exact(mask, m, (20, 20)) >= 0.5)
    # 32-bit integers beyond float32's 2**24 resample in float64: exact on a pure shift
    big = (rng.integers(0, 2**31 - 1, (12, 12))).astype(np.int32)
    shifted = regtool.warp(big, [[1, 0, 2.0], [0, 1, 1.0]], (8, 8), interp="nearest")
    assert np.array_equal(shifted, big[1:9, 2:10])


def test_bilinear_nan_is_scipys_affine_transform_to_the_bit():
    import math

    from scipy import ndimage

    from regtool.resample import bilinear_nan, ndimage_affine

    rng = np.random.default_rng(3)
    for trial in range(120):
        h, w = (int(v) for v in rng.integers(2, 200, 2))
        image = (rng.random((h, w)) * 255).astype(np.float32 if trial % 2 else np.float64)
        theta = rng.uniform(-math.pi, math.pi)
        c, s = math.cos(theta), math.sin(theta)
        tx, ty = rng.uniform(-60, 60, 2)
        if trial % 3 == 0:  # grid points landing on the border pixel centers exactly
            c, s, tx, ty = 1.0, 0.0, float(round(tx)), float(round(ty))
        m = np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]]) @ np.diag([2.0, 2.0, 1.0])
        shape = (int(rng.integers(1, 100)), int(rng.integers(1, 100)))
        rc, offset = ndimage_affine(m)
        ref = ndimage.affine_transform(image, rc, offset=offset, output_shape=shape,
                                       output=np.float32, order=1, mode="constant", cval=np.nan)
        assert np.array_equal(bilinear_nan(image, m, shape), ref, equal_nan=True), trial
