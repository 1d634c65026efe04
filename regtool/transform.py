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
    "mean_endpoint_distance",
    "map_points",
]

#: Grid points per block of rows in :func:`mean_endpoint_distance`: a few MB of temporaries
#: whatever the image's size.
ENDPOINT_BLOCK = 1 << 18


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


def mean_endpoint_distance(m1: np.ndarray, m2: np.ndarray, shape: tuple[int, ...], *,
                           block: int = ENDPOINT_BLOCK) -> float:
    """Mean distance, over the pixels of a grid, between where two affine maps send them.

    ``mean over (x, y) of |m1 @ [x, y, 1] - m2 @ [x, y, 1]|`` for every pixel center of a
    ``shape`` grid (``x = 0 .. W-1``, ``y = 0 .. H-1``): how far apart, in pixels, the two
    transforms put the image on average. Unlike differences of ``(tx, ty, theta)``, it mixes
    no units (radians and pixels) and does not depend on where the rotation is taken about:
    it is the measure a tolerance in pixels can be compared with.

    Parameters
    ----------
    m1, m2 : array_like
        2x3 or 3x3 affine matrices (target->source, as ``Result.matrix``).
    shape : tuple of int
        ``(rows, cols, ...)`` of the grid, the target's.
    block : int
        Grid points evaluated at a time. The sum is exact whatever its value; it only bounds
        the temporaries (a few arrays of ``block`` floats), so a 16384 x 16384 grid needs no
        array of its size.

    Returns
    -------
    float
        The mean endpoint distance in pixels (0 for equal matrices).

    Raises
    ------
    ValueError
        If a matrix is not 2x3 or 3x3 or not finite, or ``shape`` has a side below 1.

    Notes
    -----
    The difference of two affine maps is affine, ``d(x) = D x + e`` with ``D = A1 - A2`` and
    ``e = b1 - b2``, so each row of the grid is ``d = D[:, 0] x + (D[:, 1] y + e)``: the sum
    is accumulated a block of rows at a time. When ``D`` is zero (the maps differ by a
    translation) every pixel moves by ``|e|``.

    Examples
    --------
    >>> a = [[1, 0, 3.0], [0, 1, 4.0]]
    >>> mean_endpoint_distance(a, [[1, 0, 0], [0, 1, 0]], (10, 20))
    5.0
    """
    a, b = (np.asarray(m, dtype=float) for m in (m1, m2))
    for m in (a, b):
        if m.shape not in ((2, 3), (3, 3)):
            raise ValueError(f"matrix must be 2x3 or 3x3, got {m.shape}")
        if not np.isfinite(m[:2]).all():
            raise ValueError("matrix holds non-finite values")
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ValueError(f"shape must have positive sides, not {tuple(shape)}")
    d = a[:2] - b[:2]
    if not d[:, :2].any():
        return float(math.hypot(d[0, 2], d[1, 2]))
    x = np.arange(w, dtype=float)
    across_x, across_y = d[0, 0] * x, d[1, 0] * x  # the part that varies along a row
    rows = max(1, int(block) // w)
    total = 0.0
    for top in range(0, h, rows):
        y = np.arange(top, min(h, top + rows), dtype=float)[:, None]
        dx = across_x + (d[0, 1] * y + d[0, 2])
        dy = across_y + (d[1, 1] * y + d[1, 2])
        # in place, and sqrt of the sum of squares rather than hypot: 1.5x faster, and pixel
        # distances are far from where hypot's care about overflow matters
        dx *= dx
        dy *= dy
        dx += dy
        total += float(np.sqrt(dx, out=dx).sum())
    return total / (h * w)


def map_points(matrix: np.ndarray, xy: np.ndarray, *, inverse: bool = False) -> np.ndarray:
    """Move points from the source's pixel coordinates to the target's, as the warp moves them.

    ``matrix`` maps target to source (``aligned[y, x] = source(matrix @ [x, y, 1])``), so the
    content at source pixel ``p`` appears in the aligned image (on the target's grid) at
    ``matrix^-1 @ p``: that is where this function sends a point tracked in the source. With
    ``inverse=True`` it goes the other way, target (aligned) -> source, which is ``matrix``
    itself.

    Parameters
    ----------
    matrix : array_like
        2x3 or 3x3 target->source matrix (``Result.matrix``, the JSON's ``matrix``); any
        invertible affine map.
    xy : array_like
        ``(N, 2)`` points, x (column) then y (row), in pixels with pixel centers at integer
        coordinates (GUIDE section 2); a single ``(2,)`` point is also accepted.
    inverse : bool
        False: source -> target (where a source point lies in the aligned image). True: target
        -> source.

    Returns
    -------
    ndarray of float64
        The mapped points, of the shape of ``xy``.

    Raises
    ------
    ValueError
        If ``matrix`` is not 2x3 or 3x3 or cannot be inverted, or ``xy`` is not ``(N, 2)``.

    Examples
    --------
    >>> m = [[1, 0, 5.0], [0, 1, -2.0]]  # target (x, y) samples source (x + 5, y - 2)
    >>> map_points(m, [[15.0, 8.0]])     # so source (15, 8) shows at target (10, 10)
    array([[10., 10.]])
    >>> map_points(m, [[10.0, 10.0]], inverse=True)
    array([[15.,  8.]])
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape not in ((2, 3), (3, 3)):
        raise ValueError(f"matrix must be 2x3 or 3x3, got {m.shape}")
    pts = np.asarray(xy, dtype=float)
    single = pts.shape == (2,)
    if single:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be (N, 2) x, y pairs, got shape {pts.shape}")
    a, t = m[:2, :2], m[:2, 2]
    if inverse:
        out = pts @ a.T + t
    else:
        if not np.isfinite(a).all() or abs(np.linalg.det(a)) < 1e-12:
            raise ValueError("matrix cannot be inverted")
        # Solving A q = p - t rather than multiplying by inv(A): one rounding fewer.
        out = np.linalg.solve(a, (pts - t).T).T
    return out[0] if single else out
