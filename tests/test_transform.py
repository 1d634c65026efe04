import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from regtool.transform import (
    about_center,
    center_params,
    from_level,
    image_center,
    level_scaling,
    max_displacement,
    rigid_matrix,
    rigid_params,
    to_level,
)

finite = st.floats(-500, 500, allow_nan=False)
angle = st.floats(-math.pi + 1e-6, math.pi - 1e-6)


@given(finite, finite, angle, finite, finite)
def test_center_and_origin_parameters_describe_one_motion(sx, sy, theta, cx, cy):
    m = about_center(sx, sy, theta, (cx, cy))
    # the center moves by exactly the shift
    moved = m @ [cx, cy, 1.0]
    assert np.allclose(moved[:2], [cx + sx, cy + sy], atol=1e-9)
    back = center_params(m, (cx, cy))
    assert np.allclose(back[:2], (sx, sy), atol=1e-8)
    assert math.isclose(back[2], theta, abs_tol=1e-12)
    tx, ty, th = rigid_params(m)
    assert np.allclose(rigid_matrix(tx, ty, th), m, atol=1e-9)


def test_image_center_uses_pixel_centers():
    # a 251 x 301 (W x H) image: x in [0, 250], y in [0, 300]
    assert image_center((301, 251)) == (125.0, 150.0)
    assert image_center((4, 6, 3)) == (2.5, 1.5)


def test_level_map_moves_pixel_centers_not_corners():
    # level 1 pixel 0 averages level-0 pixels 0 and 1: its center is at x0 = 0.5
    s = level_scaling(1)
    assert np.allclose(np.linalg.inv(s) @ [0.0, 0.0, 1.0], [0.5, 0.5, 1.0])
    assert np.allclose(np.linalg.inv(level_scaling(3)) @ [0.0, 0.0, 1.0], [3.5, 3.5, 1.0])
    assert np.allclose(s @ [-0.5, 9.5, 1.0], [-0.5, 4.5, 1.0])  # image edges stay edges


@given(finite, finite, angle, st.integers(0, 6))
def test_level_transfer_round_trip_and_scaling(tx, ty, theta, k):
    m = rigid_matrix(tx, ty, theta)
    mk = to_level(m, k)
    assert np.allclose(from_level(mk, k), m, atol=1e-8)
    # rotation is unchanged; a pure translation shrinks by 2**k
    assert math.isclose(rigid_params(mk)[2], theta, abs_tol=1e-12)
    if theta == 0:
        assert np.allclose(mk[:2, 2], np.array([tx, ty]) / 2**k, atol=1e-9)


def test_max_displacement_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        d = rigid_matrix(*rng.normal(0, 3, 2), rng.normal(0, 0.1))
        h, w = rng.integers(5, 60, 2)
        ys, xs = np.mgrid[0:h, 0:w]
        pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
        brute = np.hypot(*((d @ pts)[:2] - pts[:2])).max()
        assert math.isclose(max_displacement(d, (h, w)), brute, rel_tol=1e-12)
