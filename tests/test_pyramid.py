import numpy as np
import pytest

from regtool import pyramid
from regtool.transform import level_scaling


@pytest.mark.parametrize(
    ("shape", "levels"),
    [((47, 47), 1), ((48, 48), 2), ((301, 251), 4), ((512, 512), 5), ((1024, 768), 6),
     ((20, 4000), 1)],
)
def test_auto_levels_puts_coarsest_side_in_24_to_47(shape, levels):
    n = pyramid.auto_levels(shape)
    assert n == levels
    side = min(shape)
    for _ in range(n - 1):
        side //= 2
    assert side < 48 and (side >= 24 or n == 1)


@pytest.mark.parametrize("shape", [(64, 64), (301, 251), (97, 129)])
def test_coarse_pixels_sit_where_the_level_map_says(shape):
    # blur and 2x2 averaging keep linear images linear, so every interior coarse pixel must equal
    # the ramp evaluated at its fine-level position: any quarter-pixel bias would show here
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    ramp = 0.3 * xs - 0.7 * ys + 5.0
    levels = pyramid.build(ramp, 3)
    for k, img in enumerate(levels):
        assert img.shape == (shape[0] // 2**k, shape[1] // 2**k)
        inv = np.linalg.inv(level_scaling(k))
        cy, cx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float64)
        x0 = inv[0, 0] * cx + inv[0, 2]
        y0 = inv[1, 1] * cy + inv[1, 2]
        b = 3  # edge padding bends the ramp within the filter's reach of the border
        expect = 0.3 * x0 - 0.7 * y0 + 5.0
        assert np.allclose(img[b:-b, b:-b], expect[b:-b, b:-b], atol=1e-9)


def test_mask_pyramid_never_calls_a_pixel_valid_near_an_invalid_one():
    mask = np.ones((64, 64), dtype=bool)
    mask[30, 41] = False
    coarse = pyramid.build_mask(mask, 2)[1]
    # fine (41, 30) lies in coarse pixel (20, 15); the blur reaches the neighbours too
    assert not coarse[15, 20]
    assert coarse.sum() >= coarse.size - 9
    assert pyramid.build_mask(None, 3) == [None, None, None]


@pytest.mark.parametrize("mode", ["mirror", "reflect", "nearest"])
@pytest.mark.parametrize("shape", [(301, 251), (7, 40), (3, 5)])
def test_row_filter_by_slicing_equals_scipy(mode, shape):
    from scipy import ndimage

    from regtool._filters import correlate_rows

    rng = np.random.default_rng(2)
    img = rng.random(shape).astype(np.float32)
    w = rng.random(13).astype(np.float32)
    expect = ndimage.correlate1d(img, w, axis=0, mode=mode)
    assert np.allclose(correlate_rows(img, w, mode), expect, atol=1e-5)
