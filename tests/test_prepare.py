"""Input preparation: luminance, scaling, masks and the checks on unusable inputs."""

import numpy as np
import pytest

from regtool.errors import InputError
from regtool.prepare import LUMA, luminance


def _ramp(shape=(32, 40)):
    return np.add.outer(np.arange(shape[0]), np.arange(shape[1])).astype(np.float64)


def test_integers_of_any_depth_share_one_scale():
    base = _ramp() / _ramp().max()
    lum8, _ = luminance(np.round(base * 255).astype(np.uint8), "target")
    lum16, _ = luminance(np.round(base * 65535).astype(np.uint16), "target")
    assert lum8.dtype == np.float32 and lum16.dtype == np.float32
    assert np.max(np.abs(lum8 - lum16)) < 1.0 / 255


def test_rgb_uses_rec601_weights_and_transparent_pixels_are_masked():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (24, 20, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[:4, :4, 3] = 0
    lum, valid = luminance(rgba, "source")
    expected = rgba[..., :3].astype(np.float64) @ LUMA.astype(np.float64) / 255
    assert valid is not None and not valid[:4, :4].any() and valid[4:, 4:].all()
    assert np.allclose(lum[valid], expected[valid], atol=1e-5)
    # masked pixels hold the mean of the others, so filters see no spikes there
    assert np.allclose(lum[:4, :4], expected[valid].mean(), atol=1e-4)


def test_nan_pixels_and_a_user_mask_combine():
    img = _ramp()
    img[0, 0] = np.nan
    mask = np.ones(img.shape, bool)
    mask[5, :] = False
    _, valid = luminance(img, "target", mask)
    assert not valid[0, 0] and not valid[5].any() and valid.sum() == img.size - 1 - img.shape[1]


@pytest.mark.parametrize("image, words", [
    (np.zeros((32, 32)), "constant"),
    (np.ones((8, 64)), "too small"),
    (np.ones((32, 32, 2)), "shape"),
    (np.full((32, 32), np.nan), "NaN"),
])
def test_unusable_inputs_say_which_and_why(image, words):
    with pytest.raises(InputError, match=words) as info:
        luminance(image, "source")
    assert info.value.which == "source"


def test_a_mask_of_the_wrong_shape_is_refused():
    with pytest.raises(InputError, match="mask"):
        luminance(_ramp(), "target", np.ones((3, 3), bool))


def test_level_1_settles_the_value_checks_only_when_it_may():
    import regtool
    from regtool import pyramid, register
    from regtool.errors import InputError
    from regtool.prepare import coarse_confirms

    rng = np.random.default_rng(0)
    img = rng.random((64, 80)).astype(np.float32)
    assert coarse_confirms(pyramid.downsample(img))
    # a checkerboard keeps little at level 1 (the filter's zero at Nyquist): whatever level 1
    # says, the board is no constant image
    board = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    lum, valid, first = register._luminance(board, "target", None)
    assert valid is None and lum is not None
    with_nan = img.copy()
    with_nan[5, 7] = np.nan
    assert not coarse_confirms(pyramid.downsample(with_nan))
    flat = np.full((64, 64), 3.0, np.float32)
    flat[0, 0] += 1e-6
    with pytest.raises(InputError, match="constant"):
        regtool.align(flat, img[:, :64])
