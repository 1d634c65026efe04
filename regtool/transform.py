"""Rigid transforms as 3x3 homogeneous matrices.

Conventions (see GUIDE section 2): a point is (x, y) with x the column and y the row, pixel
centers at integer coordinates. Every matrix here maps TARGET pixel coordinates to SOURCE pixel
coordinates: ``source_xy = M @ [x, y, 1]``.

Two parameterizations of the same rigid motion are used:

* origin-based ``(tx, ty, theta)``: ``M = [[c, -s, tx], [s, c, ty]]`` (the public one);
* center-based ``(sx, sy, theta)`` about a point ``c``: ``Psi(x) = R (x - c) + c + s`` (the
  internal one, which decouples rotation from translation).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "rigid_matrix",
    "rigid_params",
    "about_center",
    "center_params",
    "image_center",
    "level_scaling",
    "to_level",
    "from_level",
    "max_displacement",
]


def rigid_matrix(tx: float, ty: float, theta: float) -> np.ndarray:
    """Return the 3x3 matrix of ``Psi(x) = R(theta) x + t`` (origin-based parameters)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def rigid_params(matrix: np.ndarray) -> tuple[float, float, float]:
    """Return origin-based ``(tx, ty, theta)`` of a rigid 2x3 or 3x3 matrix."""
    m = np.asarray(matrix, dtype=float)
    theta = math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
    return float(m[0, 2]), float(m[1, 2]), theta


def about_center(sx: float, sy: float, theta: float, center: tuple[float, float]) -> np.ndarray:
    """Return the 3x3 matrix of ``Psi(x) = R(theta)(x - c) + c + s``."""
    c, s = math.cos(theta), math.sin(theta)
    cx, cy = center
    # t = c + s - R c
    tx = cx + sx - (c * cx - s * cy)
    ty = cy + sy - (s * cx + c * cy)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def center_params(matrix: np.ndarray, center: tuple[float, float]) -> tuple[float, float, float]:
    """Return ``(sx, sy, theta)`` such that ``matrix == about_center(sx, sy, theta, center)``."""
    m = np.asarray(matrix, dtype=float)
    cx, cy = center
    theta = math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
    # s = Psi(c) - c
    sx = m[0, 0] * cx + m[0, 1] * cy + m[0, 2] - cx
    sy = m[1, 0] * cx + m[1, 1] * cy + m[1, 2] - cy
    return float(sx), float(sy), theta


def image_center(shape: tuple[int, ...]) -> tuple[float, float]:
    """Return the (x, y) center of an image of ``shape`` (rows, cols, ...): ((W-1)/2, (H-1)/2)."""
    return ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)


def level_scaling(level: int) -> np.ndarray:
    """Return S mapping level-0 pixel coordinates to level-``level`` coordinates.

    Each level halves the image by averaging 2x2 blocks, so pixel centers move:
    ``x_k = (x_0 + 0.5) / 2**k - 0.5`` (GUIDE section 3), not ``x_0 / 2**k``.
    """
    f = 0.5**level
    off = 0.5 * f - 0.5
    return np.array([[f, 0.0, off], [0.0, f, off], [0.0, 0.0, 1.0]])


def to_level(matrix: np.ndarray, level: int) -> np.ndarray:
    """Express a level-0 target->source matrix in level-``level`` pixel coordinates."""
    s = level_scaling(level)
    return s @ matrix @ np.linalg.inv(s)


def from_level(matrix: np.ndarray, level: int) -> np.ndarray:
    """Express a level-``level`` target->source matrix in level-0 pixel coordinates."""
    s = level_scaling(level)
    return np.linalg.inv(s) @ matrix @ s


def max_displacement(delta: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance any pixel of an image of ``shape`` moves under the 3x3 ``delta``.

    For an affine map the displacement ``|D x - x|`` is convex in x, so its maximum over the
    image is attained at one of the four corners.
    """
    h, w = shape[0], shape[1]
    corners = np.array([[0.0, 0.0, 1.0], [w - 1.0, 0.0, 1.0], [0.0, h - 1.0, 1.0],
                        [w - 1.0, h - 1.0, 1.0]]).T
    moved = delta @ corners
    return float(np.max(np.hypot(moved[0] - corners[0], moved[1] - corners[1])))
