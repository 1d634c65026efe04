"""Input preparation: arrays of any type and layout -> float32 luminance + validity mask."""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

__all__ = ["luminance", "luminance_deferred", "coarse_confirms", "MIN_SIDE", "LUMA"]

MIN_SIDE = 16
MAX_NONFINITE = 0.5
# Rec. 601 luma: the weights most image tools use for "gray".
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luminance(image: np.ndarray, which: str, mask: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Float32 luminance and validity mask of a gray/RGB/RGBA array, with the input checks.

    Parameters
    ----------
    image : ndarray
        ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``; bool, integer or float.
        Integers are scaled to [0, 1] so that 8- and 16-bit inputs compare on one scale.
    which : str
        ``"target"`` or ``"source"``: named in the :class:`InputError` of a bad input.
    mask : ndarray, optional
        ``(H, W)``, nonzero = use; combined with the pixels that are NaN, infinite or fully
        transparent.

    Returns
    -------
    luminance : (H, W) float32 ndarray
        Rec. 601 luma; masked pixels hold the mean of the others (no spikes for the filters).
    valid : (H, W) bool ndarray or None
        None when every pixel is usable.

    Raises
    ------
    InputError
        Wrong shape or type, too small, constant, mostly unusable, or a mask that does not fit.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InputError(
            f"expected a 2-D gray image or an RGB/RGBA image, got an array of shape {arr.shape}",
            which)
    kind = arr.dtype.kind
    if kind not in "buif":
        raise InputError(f"unsupported pixel type {arr.dtype}", which)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputError(f"image is too small to register ({w}x{h} pixels; "
                         f"at least {MIN_SIDE}x{MIN_SIDE} needed)", which)
    if arr.ndim == 2 and kind == "f" and mask is None:
        # Gray floats, nothing masked: min and max are finite only if every pixel is, which
        # settles the NaN check and the constant check in one pass, and float32 input is used
        # as it is (nothing downstream writes to it): 0.29 instead of 0.82 ms per 1024^2 image.
        lum = arr if arr.dtype == np.float32 else arr.astype(np.float32)
        lo, hi = float(lum.min()), float(lum.max())
        if math.isfinite(lo) and math.isfinite(hi):
            if not hi - lo > 1e-6 * max(abs(hi), abs(lo), 1e-30):
                raise InputError("image has no texture to register (it is constant)", which)
            return np.ascontiguousarray(lum), None
    alpha = None
    scale = np.float32(1.0 / np.iinfo(arr.dtype).max) if kind in "ui" else None
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            alpha = arr[..., 3]
        if arr.dtype == np.float64:
            lum = (arr[..., :3] @ LUMA.astype(np.float64)).astype(np.float32)
        else:
            # three multiply-adds in float32: a (..., 3) @ (3,) product is slower here
            lum = np.multiply(arr[..., 0], LUMA[0], dtype=np.float32)
            lum += np.multiply(arr[..., 1], LUMA[1], dtype=np.float32)
            lum += np.multiply(arr[..., 2], LUMA[2], dtype=np.float32)
            if scale is not None:
                lum *= scale
    elif scale is not None:
        # Integers become [0, 1] so uint8 and uint16 inputs compare on one scale.
        lum = np.multiply(arr, scale, dtype=np.float32)
    else:
        lum = arr.astype(np.float32)
    if arr.ndim == 2 and kind != "f" and mask is None:
        # gray integers are finite and nothing is masked: only the constant check is left,
        # which the raw array answers fastest
        if not arr.max() > arr.min():
            raise InputError("image has no texture to register (it is constant)", which)
        return lum, None
    valid = np.isfinite(lum)
    if alpha is not None:
        valid &= alpha > 0
    n_bad = valid.size - int(np.count_nonzero(valid))
    if n_bad > MAX_NONFINITE * valid.size:
        what = "transparent, NaN or infinite" if alpha is not None else "NaN or infinite"
        raise InputError(f"{100 * n_bad / valid.size:.0f}% of the pixels are {what} "
                         f"(at most {100 * MAX_NONFINITE:.0f}% can be masked)", which)
    if mask is not None:
        user = np.asarray(mask)
        if user.shape != valid.shape:
            raise InputError(f"the mask's shape {user.shape} does not match the image's "
                             f"{valid.shape}", which)
        valid &= user.astype(bool)
        n_bad = valid.size - int(np.count_nonzero(valid))
        if valid.size - n_bad < MIN_SIDE * MIN_SIDE:
            raise InputError(f"the mask leaves only {valid.size - n_bad} usable pixels "
                             f"(at least {MIN_SIDE * MIN_SIDE} needed)", which)
    mask = None
    if n_bad:
        mask = valid
        # Fill masked pixels with the mean so blurring and splines see no spikes there.
        lum = np.where(valid, lum, np.float32(lum[valid].mean())).astype(np.float32)
    values = lum if mask is None else lum[mask]
    lo, hi = float(values.min()), float(values.max())
    if not hi - lo > 1e-6 * max(abs(hi), abs(lo), 1e-30):
        raise InputError("image has no texture to register (it is constant)", which)
    return np.ascontiguousarray(lum, dtype=np.float32), mask


def luminance_deferred(image: np.ndarray, which: str, mask: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """:func:`luminance`, except that a gray float image without a mask skips the checks of
    its values (no NaN or infinite pixel, not constant).

    Returns the luminance, the validity mask and whether those checks are still open: then
    :func:`coarse_confirms` on the image's next pyramid level settles them, or
    :func:`luminance` does. (Its min and max over a 1024^2 image took 0.28 ms; over the level
    four times smaller that the pyramid makes anyway, 0.07 ms.)
    """
    arr = np.asarray(image)
    if arr.ndim == 2 and arr.dtype.kind == "f" and mask is None and min(arr.shape) >= MIN_SIDE:
        lum = arr if arr.dtype == np.float32 else arr.astype(np.float32)
        return np.ascontiguousarray(lum), None, True
    lum, valid = luminance(image, which, mask)
    return lum, valid, False


def coarse_confirms(coarse: np.ndarray) -> bool:
    """Whether an image's next pyramid level shows the image itself finite and not constant.

    Every pixel enters some coarse pixel with a positive weight, so a NaN or infinite pixel
    leaves a NaN or infinite coarse one; the coarse pixels are weighted means, so their range
    lies within the image's and the image's largest magnitude exceeds theirs by at most its
    range: a coarse range over 2e-6 of the coarse magnitude (twice the bar of
    :func:`luminance`, which also covers float32 rounding) means an image range over 1e-6 of
    the image's. False only says "look at the image itself".
    """
    lo, hi = float(coarse.min()), float(coarse.max())
    return (math.isfinite(lo) and math.isfinite(hi)
            and hi - lo > 2e-6 * max(abs(hi), abs(lo), 1e-30))
