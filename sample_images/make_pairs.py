"""Regenerate the synthetic registration pairs in this folder from its photographs.

    python sample_images/make_pairs.py

Writes, next to this script:

* ``target.png``, ``source.png``, ``true_params.json`` -- 512x512 gray, from ``camera.png``;
* ``target_251x301.png``, ``source_251x301.png``, ``true_params_251x301.json`` -- width 251,
  height 301, RGB, from ``astronaut.jpg``.

How a pair is made. ``M`` is the true 2x3 matrix in regtool's public convention: it maps a
TARGET pixel (x, y) to a SOURCE pixel. The target is a crop of the photograph P whose top-left
pixel is P's pixel ``o``: ``target(x) = P(o + x)``. The source is sampled so that
``source(M x) = target(x)``, that is ``source(x') = P(o + M^-1 x')``. So resampling the source
through ``M`` on the target's grid (``aligned(x) = source(M x)``) gives back the target, which
this script checks before writing anything.

Samples are cubic B-spline interpolations of P; where ``o + M^-1 x'`` falls outside P, the
photograph is continued by mirror reflection, as if the camera saw more of the scene.

Only numpy, scipy and imageio are needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent

# name: (photograph, crop (x0, y0, width, height), theta in degrees, shift about the center)
PAIRS = {
    "": ("camera.png", (0, 0, 512, 512), 7.0, (12.0, -8.0)),
    "_251x301": ("astronaut.jpg", (130, 105, 251, 301), -4.5, (-6.25, 9.5)),
}


def rigid_about_center(theta_deg: float, shift: tuple[float, float], center) -> np.ndarray:
    """3x3 matrix of ``Psi(x) = R (x - c) + c + s``, theta counter-clockwise in (x, y)."""
    t = math.radians(theta_deg)
    c, s = math.cos(t), math.sin(t)
    cx, cy = center
    tx = cx + shift[0] - (c * cx - s * cy)
    ty = cy + shift[1] - (s * cx + c * cy)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def sample(coeffs: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Evaluate prefiltered cubic spline planes ``coeffs`` (H, W, C) at points (x, y) (2, ...)."""
    rows_cols = np.stack([xy[1], xy[0]])
    planes = [
        ndimage.map_coordinates(coeffs[..., ch], rows_cols, order=3, mode="mirror",
                                prefilter=False)
        for ch in range(coeffs.shape[-1])
    ]
    return np.stack(planes, axis=-1)


def spline(image: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of each channel, (H, W, C) float64."""
    planes = image[..., None] if image.ndim == 2 else image
    return np.stack(
        [ndimage.spline_filter(planes[..., ch].astype(np.float64), order=3, mode="mirror")
         for ch in range(planes.shape[-1])],
        axis=-1,
    )


def to_uint8(values: np.ndarray, gray: bool) -> np.ndarray:
    out = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out[..., 0] if gray else out


def make_pair(suffix: str, photo_name: str, crop, theta_deg: float, shift) -> float:
    photo = iio.imread(HERE / photo_name)
    gray = photo.ndim == 2
    x0, y0, width, height = crop
    if x0 + width > photo.shape[1] or y0 + height > photo.shape[0]:
        raise SystemExit(f"crop {crop} does not fit in {photo_name} {photo.shape}")
    target = photo[y0:y0 + height, x0:x0 + width]

    center = ((width - 1) / 2.0, (height - 1) / 2.0)
    m = rigid_about_center(theta_deg, shift, center)
    m_inv = np.linalg.inv(m)

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    grid = np.stack([xs, ys, np.ones_like(xs)])  # (3, H, W) homogeneous (x, y, 1)
    in_photo = np.tensordot(m_inv, grid, axes=1)[:2] + np.array([x0, y0])[:, None, None]
    source = to_uint8(sample(spline(photo), in_photo), gray)

    # Check: aligned(x) = source(M x) must give back the target wherever M x is well inside
    # the source (away from its border, where the spline sees the mirror continuation).
    in_source = np.tensordot(m, grid, axes=1)[:2]
    aligned = sample(spline(source), in_source)
    margin = 4
    inside = ((in_source[0] >= margin) & (in_source[0] <= width - 1 - margin)
              & (in_source[1] >= margin) & (in_source[1] <= height - 1 - margin))
    diff = aligned - (target[..., None] if gray else target).astype(np.float64)
    rms = float(np.sqrt(np.mean(diff[inside] ** 2)))
    if rms > 6.0:
        raise SystemExit(f"pair{suffix}: warp(source, M) differs from target, RMS {rms:.2f}")

    tx, ty = float(m[0, 2]), float(m[1, 2])
    theta = math.radians(theta_deg)
    params = {
        "tx": tx,
        "ty": ty,
        "theta": theta,
        "theta_deg": theta_deg,
        "matrix": [[float(v) for v in row] for row in m[:2]],
        "center": list(center),
        "shift": list(shift),
        "target_shape": [height, width],
        "photo": photo_name,
        "crop": {"x0": x0, "y0": y0, "width": width, "height": height},
        "check_rms": round(rms, 3),
        "convention": "matrix maps target pixel (x, y) to source pixel; "
                      "aligned[y, x] = source(matrix @ [x, y, 1]) equals target[y, x]",
    }
    iio.imwrite(HERE / f"target{suffix}.png", target)
    iio.imwrite(HERE / f"source{suffix}.png", source)
    (HERE / f"true_params{suffix}.json").write_text(json.dumps(params, indent=2) + "\n")
    return rms


def main() -> None:
    for suffix, (photo, crop, theta_deg, shift) in PAIRS.items():
        rms = make_pair(suffix, photo, crop, theta_deg, shift)
        print(f"target{suffix}.png / source{suffix}.png: theta {theta_deg} deg, shift {shift}, "
              f"check RMS {rms:.2f} gray levels")


if __name__ == "__main__":
    main()
