"""Resampling an image on another grid through a target->source matrix."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["warp", "ndimage_affine", "INTERP_ORDERS"]

INTERP_ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}


def ndimage_affine(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn an (x, y) target->source matrix into scipy.ndimage's (row, col) matrix and offset.

    ``scipy.ndimage.affine_transform`` samples ``input[matrix @ (r, c) + offset]`` at each output
    index (r, c); ours maps (x, y) = (c, r), so the 2x2 block is transposed across the diagonal.
    """
    m = np.asarray(matrix, dtype=float)
    rc = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    return rc, np.array([m[1, 2], m[0, 2]])


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert float samples to ``dtype``: round and clip integers so nothing wraps around."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    if dtype == np.bool_:
        return values >= 0.5
    return values.astype(dtype, copy=False)


def warp(
    image: np.ndarray,
    matrix: np.ndarray,
    shape: tuple[int, int],
    *,
    interp: str = "cubic",
    fill: float = 0.0,
) -> np.ndarray:
    """Resample ``image`` on a grid of ``shape`` through a target->source matrix.

    ``out[y, x] = image(matrix @ [x, y, 1])``: the convention of :class:`regtool.Result`'s
    ``matrix`` (the same direction as OpenCV's ECC warp and ITK's fixed->moving transform).

    Parameters
    ----------
    image : ndarray
        Source image, ``(H, W)`` or ``(H, W, C)``, of any integer, bool or float dtype.
    matrix : array_like
        2x3 or 3x3 matrix mapping output (target) pixel (x, y) to input (source) pixel (x, y).
    shape : tuple of int
        ``(rows, cols)`` of the output grid.
    interp : {"cubic", "linear", "nearest"}
        Interpolation: cubic B-spline, bilinear, or nearest neighbour.
    fill : float
        Value of output pixels that map outside the source.

    Returns
    -------
    ndarray
        ``(rows, cols)`` or ``(rows, cols, C)`` with the dtype of ``image``; integer outputs are
        rounded and clipped to the dtype's range, never wrapped.

    Examples
    --------
    >>> import numpy as np, regtool
    >>> img = np.arange(20.0).reshape(4, 5)
    >>> shift = [[1, 0, 1.0], [0, 1, 0.0]]  # target x samples source x + 1
    >>> regtool.warp(img, shift, (4, 5), interp="linear")[0]
    array([1., 2., 3., 4., 0.])
    """
    if interp not in INTERP_ORDERS:
        raise ValueError(f"interp must be one of {sorted(INTERP_ORDERS)}, not {interp!r}")
    order = INTERP_ORDERS[interp]
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D or 3-D (H, W, C), got shape {img.shape}")
    m = np.asarray(matrix, dtype=float)
    if m.shape not in ((2, 3), (3, 3)):
        raise ValueError(f"matrix must be 2x3 or 3x3, got {m.shape}")
    rc, offset = ndimage_affine(m)
    out_shape = (int(shape[0]), int(shape[1]))
    # float64 for float64 inputs keeps their precision; everything else resamples in float32,
    # which holds 16-bit integers exactly.
    work = np.float64 if img.dtype == np.float64 else np.float32
    planes = img[..., None] if img.ndim == 2 else img
    out = np.empty(out_shape + (planes.shape[2],), dtype=work)
    for ch in range(planes.shape[2]):
        ndimage.affine_transform(
            planes[..., ch].astype(work, copy=False), rc, offset=offset, output_shape=out_shape,
            output=out[..., ch], order=order, mode="constant", cval=fill, prefilter=order > 1,
        )
    if img.ndim == 2:
        out = out[..., 0]
    return _cast(out, img.dtype)
