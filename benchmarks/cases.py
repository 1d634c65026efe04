"""Deterministic synthetic rigid-registration cases for the benchmark.

Every case is a (target, source, matrix) triple where ``matrix`` maps TARGET pixel (x, y) to
SOURCE pixel (x, y) (regtool's convention, GUIDE section 2) and ``source(matrix @ x) ==
target(x)`` wherever ``matrix @ x`` falls inside the source.

How a pair is made: a photograph ``P`` (larger than the case) is the ground truth scene.
``target[y, x] = P(o + (x, y))`` is a plain crop at offset ``o``; the source is the same scene
seen through the inverse transform, ``source[y', x'] = P(o + M^-1 (x', y'))``, sampled with a
cubic spline. Then ``source(M x) = P(o + x) = target(x)`` for every target pixel whose image
``M x`` lies in the source: the only mismatch left is the interpolation error of sampling the
source (kept small by smoothing the photograph lightly first, sigma 0.7 px).

Nothing here imports regtool: the bench measures regtool, so the ground truth is built with
scipy.ndimage alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "TIERS",
    "TIER_SPECS",
    "TierSpec",
    "Case",
    "Photo",
    "load_photos",
    "make_cases",
    "needed_extent",
    "rigid_about_center",
    "matrix_params",
    "endpoint_error",
    "sample",
    "check_synthesis",
]

#: Value range of the images (photographs are scaled to 0..255 float32).
RANGE = 255.0
#: Light pre-smoothing of the photograph so that cubic resampling is nearly exact.
PRESMOOTH_SIGMA = 0.7
#: Number of sub-grid points per axis used for the mean endpoint error.
ERROR_GRID = 65


@dataclass(frozen=True)
class TierSpec:
    """How the cases of one difficulty tier are drawn.

    Attributes
    ----------
    name : str
        Tier name.
    theta_max : float
        Rotation drawn uniformly in ``[-theta_max, theta_max]`` degrees (180: the whole circle).
    shift_frac : float
        Each shift component uniform in ``[-shift_frac * W, shift_frac * W]`` (x) and the same
        fraction of H (y); 0 when the tier gives its shift in pixels instead.
    shift_px : float
        Each shift component uniform in ``[-shift_px, shift_px]`` (when ``shift_frac`` is 0).
    noise : float
        Gaussian noise sigma as a fraction of the range, independent in target and source.
    gain : (float, float) or None
        Source intensity gain ``a`` drawn uniformly in this interval (None: no intensity change).
    bias : float
        Source offset ``b`` uniform in ``[-bias, bias]`` times the range.
    related : bool
        False for pairs cut from two DIFFERENT photographs (no true transform exists).
    """

    name: str
    theta_max: float
    shift_frac: float = 0.0
    shift_px: float = 0.0
    noise: float = 0.0
    gain: tuple[float, float] | None = None
    bias: float = 0.0
    related: bool = True


#: Every tier, in the order of their random-stream ids (append new tiers at the END, so that
#: the cases of the existing tiers do not change).
TIER_SPECS: dict[str, TierSpec] = {t.name: t for t in (
    TierSpec("small", 5.0, shift_px=10.0),
    TierSpec("medium", 20.0, shift_frac=0.08, noise=0.02),
    TierSpec("gain", 20.0, shift_frac=0.08, noise=0.02, gain=(0.7, 1.3), bias=0.1),
    TierSpec("hard", 45.0, shift_frac=0.20, noise=0.05, gain=(0.6, 1.4), bias=0.2),
    TierSpec("huge", 180.0, shift_frac=0.10, noise=0.02),
    TierSpec("translation", 0.0, shift_frac=0.25, noise=0.02),
    # The source is a second photograph warped as in ``medium``; the target a plain crop of
    # another photograph.
    TierSpec("unrelated", 20.0, shift_frac=0.08, noise=0.02, related=False),
)}
TIERS = tuple(TIER_SPECS)
#: Tiers whose cases are cut from photographs enlarged at least as much as these need (the
#: classic tiers share one enlargement, so their cases stay what they were).
BASE_EXTENT_TIER = "medium"
#: Enlarged photographs, shared by every make_cases call: (name, factor) -> Photo.
_ENLARGED: dict[tuple[str, int], Photo] = {}
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Photo:
    """A grayscale photograph used as the ground-truth scene.

    Attributes
    ----------
    name : str
        File name (or ``"synthetic"``).
    image : ndarray
        ``(H, W)`` float32 in 0..255, already pre-smoothed.
    spline : ndarray
        Cubic B-spline coefficients of ``image`` (prefiltered once, for fast sampling).
    upsampled : int
        1, or the factor by which the original was enlarged (cubic) to be big enough.
    """

    name: str
    image: np.ndarray
    spline: np.ndarray = field(repr=False)
    upsampled: int = 1


@dataclass(frozen=True)
class Case:
    """One registration problem with its ground truth.

    Attributes
    ----------
    name : str
        ``"<size>/<tier>/<index>"``.
    tier : str
        One of :data:`TIERS`.
    target, source : ndarray
        ``(H, W)`` float32 images.
    matrix : ndarray
        3x3 true target->source matrix.
    theta_deg : float
        Rotation in degrees (counter-clockwise in (x, y), about the image center).
    shift : tuple of float
        Shift ``s`` about the center: ``M x = R (x - c) + c + s``.
    gain, bias : float
        Source intensity change ``a * I + b`` (1, 0 unless the tier changes intensities).
    photo : str
        Name of the photograph the source was cut from (with ``x2`` when upsampled); for a
        related pair the target comes from the same one.
    related : bool
        False for an ``unrelated`` pair: the target is cut from ``target_photo``, a different
        photograph, and ``matrix`` is only the warp applied to the source's photograph (there
        is no true target->source transform).
    target_photo : str
        The target's photograph when it differs from ``photo``.
    offset : (int, int) or None
        Integer offset ``(ox, oy)`` of a related target's crop in ``scene``: ``target[y, x] =
        scene.image[oy + y, ox + x]`` before noise.
    scene : Photo or None
        The (enlarged) photograph both images were made from: its noise-free continuous model
        (``scene.spline``) is what the Cramer-Rao bound (bound.py) needs.
    noise : float
        Standard deviation (grey levels) of the Gaussian noise added to the target and to the
        source before the source's gain; 0 for a noise-free case.
    """

    name: str
    tier: str
    target: np.ndarray = field(repr=False)
    source: np.ndarray = field(repr=False)
    matrix: np.ndarray = field(repr=False)
    theta_deg: float
    shift: tuple[float, float]
    gain: float = 1.0
    bias: float = 0.0
    photo: str = ""
    related: bool = True
    target_photo: str = ""
    offset: tuple[int, int] | None = None
    scene: Photo | None = field(default=None, repr=False, compare=False)
    noise: float = 0.0

    def describe(self) -> str:
        """One-line summary of the case's parameters."""
        geometry = (f"theta={self.theta_deg:+.2f} deg, "
                    f"shift=({self.shift[0]:+.2f}, {self.shift[1]:+.2f}) px")
        if not self.related:
            return (f"{self.name}: target from {self.target_photo}, source from {self.photo} "
                    f"warped by {geometry}")
        text = f"{self.name}: {geometry}"
        if TIER_SPECS[self.tier].gain is not None:
            text += f", gain={self.gain:.3f}, bias={self.bias:+.1f}"
        return text + f", photo={self.photo}"


# --------------------------------------------------------------------------- geometry


def rigid_about_center(theta: float, shift: tuple[float, float],
                       center: tuple[float, float]) -> np.ndarray:
    """3x3 matrix of ``x -> R(theta) (x - c) + c + s`` in (x, y) pixel coordinates."""
    co, si = math.cos(theta), math.sin(theta)
    cx, cy = center
    rot = np.array([[co, -si], [si, co]])
    t = np.array([cx + shift[0], cy + shift[1]]) - rot @ np.array([cx, cy])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = t
    return m


def matrix_params(matrix: np.ndarray) -> tuple[float, float, float]:
    """Origin-based ``(tx, ty, theta_deg)`` of a rigid 2x3 or 3x3 matrix."""
    m = np.asarray(matrix, dtype=float)
    theta = math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
    return float(m[0, 2]), float(m[1, 2]), math.degrees(theta)


def endpoint_error(true: np.ndarray, found: np.ndarray, shape: tuple[int, int]) -> float:
    """Mean endpoint error (px) between two target->source matrices over the target grid.

    The difference of two affine maps is affine, so ``|true x - found x|`` is smooth; its mean
    over the full ``H x W`` pixel grid is approximated by the mean over a uniform
    ``ERROR_GRID x ERROR_GRID`` sub-grid spanning the same extent (corners included), which
    agrees with the full-grid mean to well under 1%.
    """
    a = np.asarray(true, dtype=float)[:2]
    b = np.asarray(found, dtype=float)[:2]
    h, w = shape
    xs = np.linspace(0.0, w - 1.0, min(w, ERROR_GRID))
    ys = np.linspace(0.0, h - 1.0, min(h, ERROR_GRID))
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
    d = (a - b) @ pts
    return float(np.mean(np.hypot(d[0], d[1])))


def sample(spline: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample cubic-spline coefficients at (x, y) pixel coordinates (NaN outside)."""
    out = ndimage.map_coordinates(spline, [y, x], order=3, prefilter=False, mode="constant",
                                  cval=np.nan)
    return out.astype(np.float32)


# --------------------------------------------------------------------------- photographs


def _to_gray(img: np.ndarray) -> np.ndarray:
    """Luminance in 0..255 float64 of a gray/RGB/RGBA image of any dtype."""
    raw = np.asarray(img)
    a = raw.astype(float)
    if a.ndim == 3:
        if a.shape[2] >= 3:
            a = a[..., :3] @ np.array([0.299, 0.587, 0.114])
        else:
            a = a[..., 0]
    if np.issubdtype(raw.dtype, np.integer):
        a = a * (RANGE / np.iinfo(raw.dtype).max)
    else:
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (RANGE / max(hi - lo, 1e-12))
    return a


def _make_photo(name: str, gray: np.ndarray, upsampled: int = 1) -> Photo:
    img = ndimage.gaussian_filter(gray, PRESMOOTH_SIGMA).astype(np.float32)
    spline = ndimage.spline_filter(img.astype(np.float64), order=3)
    return Photo(name=name, image=img, spline=spline, upsampled=upsampled)


def synthetic_scene(size: int = 1600, seed: int = 12345) -> np.ndarray:
    """A photograph-like test scene (multi-scale smoothed noise plus shapes), 0..255."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size))
    for sigma, weight in ((40.0, 1.0), (12.0, 0.6), (4.0, 0.35), (1.5, 0.15)):
        layer = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
        img += weight * layer / layer.std()
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(40):
        cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(10, 80)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] += rng.uniform(-1.5, 1.5)
    img -= img.min()
    return img * (RANGE / img.max())


def load_photos(directory: Path | None = None) -> list[Photo]:
    """Load the sample photographs (``sample_images/*.png|jpg`` except ``target*``/``source*``).

    ``target*``/``source*`` are ready-made pairs, not scenes. JPEGs are photographs as well.

    Falls back to one :func:`synthetic_scene` when there are none.
    """
    if directory is None:
        directory = Path(__file__).resolve().parent.parent / "sample_images"
    photos: list[Photo] = []
    paths = sorted(p for p in directory.iterdir()
                   if p.suffix.lower() in PHOTO_SUFFIXES
                   and not p.name.startswith(("target", "source")))
    if paths:
        import imageio.v3 as iio

        for p in paths:
            photos.append(_make_photo(p.name, _to_gray(iio.imread(p))))
    if not photos:
        photos.append(_make_photo("synthetic", synthetic_scene()))
    return photos


def _needed_extent(h: int, w: int, theta_max: float, shift_x: float, shift_y: float
                   ) -> tuple[int, int]:
    """Photo region (rows, cols) that holds the target crop and every source pixel's pre-image.

    For ``M x = R (x - c) + c + s`` the source's pre-image ``M^-1`` of the ``w x h`` box is the
    box rotated by ``-theta`` about ``c`` (bounding box ``w|cos| + h|sin|`` wide) and moved by
    ``-R^-1 s``, whose x component is at most ``|s|`` (``|s_x|`` without rotation). Together
    with the target crop at ``c`` that spans at most the bounding box plus that move, for any
    rotation up to ``theta_max`` radians (which may be pi: the whole circle) and any shift
    within ``shift_x``, ``shift_y`` px per component. 8 px of margin on top (the crop keeps 2-3
    px away from the photo's border).
    """
    thetas = np.concatenate([np.linspace(0.0, theta_max, 721),
                             [a for a in (math.atan2(h, w), math.atan2(w, h), math.pi / 2)
                              if a <= theta_max]])
    co, si = np.abs(np.cos(thetas)), np.abs(np.sin(thetas))
    box_w = float(np.max((w - 1) * co + (h - 1) * si))
    box_h = float(np.max((h - 1) * co + (w - 1) * si))
    reach_x = math.hypot(shift_x, shift_y) if theta_max > 0 else shift_x
    reach_y = math.hypot(shift_x, shift_y) if theta_max > 0 else shift_y
    return int(math.ceil(box_h + reach_y + 8)), int(math.ceil(box_w + reach_x + 8))


def needed_extent(spec: TierSpec, h: int, w: int) -> tuple[int, int]:
    """Photo region (rows, cols) that every case of ``spec`` at ``h x w`` needs.

    At least what :data:`BASE_EXTENT_TIER` needs, so that the classic tiers share one
    enlargement of each photograph and no tier uses a less enlarged one than they do.
    """

    def one(t: TierSpec) -> tuple[int, int]:
        sx = t.shift_frac * w if t.shift_frac else t.shift_px
        sy = t.shift_frac * h if t.shift_frac else t.shift_px
        return _needed_extent(h, w, math.radians(t.theta_max), sx, sy)

    own, base = one(spec), one(TIER_SPECS[BASE_EXTENT_TIER])
    return max(own[0], base[0]), max(own[1], base[1])


def _photo_for(photos: list[Photo], need: tuple[int, int], cache: dict[tuple[str, int], Photo],
               index: int) -> Photo:
    """The ``index``-th photo (cycling), enlarged 2x, 3x... with cubic splines if under ``need``.

    Cycling over every photo keeps each size's mix of scenes the same, at the price of
    enlarging the small photographs for the large sizes (the report lists which).
    """
    base = photos[index % len(photos)]
    if base.image.shape[0] >= need[0] and base.image.shape[1] >= need[1]:
        return base
    factor = 2
    while base.image.shape[0] * factor < need[0] or base.image.shape[1] * factor < need[1]:
        factor += 1
    key = (base.name, factor)
    if key not in cache:
        up = ndimage.zoom(base.image.astype(np.float64), factor, order=3, mode="mirror",
                          grid_mode=True)
        cache[key] = _make_photo(f"{base.name}x{factor}", np.clip(up, 0, RANGE), factor)
    return cache[key]


# --------------------------------------------------------------------------- cases


def _tier_geometry(spec: TierSpec, rng: np.random.Generator, h: int, w: int
                   ) -> tuple[float, tuple[float, float]]:
    # The order and form of the draws are part of the cases' identity: keep them.
    theta = rng.uniform(-spec.theta_max, spec.theta_max) if spec.theta_max else 0.0
    if spec.shift_frac:
        shift = (rng.uniform(-spec.shift_frac, spec.shift_frac) * w,
                 rng.uniform(-spec.shift_frac, spec.shift_frac) * h)
    else:
        shift = (rng.uniform(-spec.shift_px, spec.shift_px),
                 rng.uniform(-spec.shift_px, spec.shift_px))
    return theta, shift


def _crop_range(photo: Photo, pre_lo: np.ndarray, pre_hi: np.ndarray, h: int, w: int
                ) -> tuple[float, float, float, float]:
    """Offsets ``o`` keeping the box ``[pre_lo, pre_hi]`` and the ``w x h`` crop inside."""
    ph, pw = photo.image.shape
    lo_x = max(2.0 - pre_lo[0], 2.0)
    hi_x = min(pw - 3.0 - pre_hi[0], pw - 3.0 - (w - 1))
    lo_y = max(2.0 - pre_lo[1], 2.0)
    hi_y = min(ph - 3.0 - pre_hi[1], ph - 3.0 - (h - 1))
    return lo_x, hi_x, lo_y, hi_y


def make_case(photo: Photo, tier: str, h: int, w: int, rng: np.random.Generator,
              name: str, target_photo: Photo | None = None, clean: bool = False) -> Case:
    """Cut one case of ``tier`` and size ``h x w`` out of ``photo``.

    With ``target_photo`` (the ``unrelated`` tier) the source is cut from ``photo`` as usual
    and the target is a plain crop of ``target_photo`` at its own random offset. ``clean``
    leaves out the tier's noise and intensity change.
    """
    spec = TIER_SPECS[tier]
    theta_deg, shift = _tier_geometry(spec, rng, h, w)
    c = ((w - 1) / 2.0, (h - 1) / 2.0)
    m = rigid_about_center(math.radians(theta_deg), shift, c)
    minv = np.linalg.inv(m)
    # Choose the crop offset so that every source pixel's pre-image lies inside the photo.
    corners = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], float)
    pre = minv @ corners
    lo_x, hi_x, lo_y, hi_y = _crop_range(photo, pre[:2].min(axis=1), pre[:2].max(axis=1), h, w)
    if hi_x < lo_x or hi_y < lo_y:
        raise ValueError(f"photo {photo.name} {photo.image.shape} too small for {name}")
    ox = float(np.floor(rng.uniform(lo_x, hi_x)))
    oy = float(np.floor(rng.uniform(lo_y, hi_y)))
    source = _warped_source(photo, m, ox, oy, h, w)
    if target_photo is None:
        target = photo.image[int(oy):int(oy) + h, int(ox):int(ox) + w].astype(np.float32)
    else:
        box = np.zeros(2)
        lo_x, hi_x, lo_y, hi_y = _crop_range(target_photo, box, box, h, w)
        if hi_x < lo_x or hi_y < lo_y:
            raise ValueError(f"photo {target_photo.name} {target_photo.image.shape} too small "
                             f"for {name}")
        tx = int(np.floor(rng.uniform(lo_x, hi_x)))
        ty = int(np.floor(rng.uniform(lo_y, hi_y)))
        target = target_photo.image[ty:ty + h, tx:tx + w].astype(np.float32)
    gain, bias, sigma = 1.0, 0.0, 0.0
    if spec.noise and not clean:
        sigma = spec.noise * RANGE
        target = target + rng.normal(0.0, sigma, target.shape).astype(np.float32)
        source = source + rng.normal(0.0, sigma, source.shape).astype(np.float32)
    if spec.gain is not None and not clean:
        gain = float(rng.uniform(*spec.gain))
        bias = float(rng.uniform(-spec.bias, spec.bias) * RANGE)
        source = gain * source + bias
    return Case(name=name, tier=tier, target=np.ascontiguousarray(target, dtype=np.float32),
                source=np.ascontiguousarray(source, dtype=np.float32), matrix=m,
                theta_deg=float(theta_deg), shift=(float(shift[0]), float(shift[1])),
                gain=gain, bias=bias, photo=photo.name, related=target_photo is None,
                target_photo="" if target_photo is None else target_photo.name,
                offset=(int(ox), int(oy)) if target_photo is None else None, scene=photo,
                noise=float(sigma))


def _warped_source(photo: Photo, m: np.ndarray, ox: float, oy: float, h: int, w: int
                   ) -> np.ndarray:
    """The noise-free source: the photograph's spline where ``m`` sends the target's pixels,
    the target being the crop at ``(ox, oy)``."""
    minv = np.linalg.inv(m)
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    sx = minv[0, 0] * xs + minv[0, 1] * ys + minv[0, 2] + ox
    sy = minv[1, 0] * xs + minv[1, 1] * ys + minv[1, 2] + oy
    return sample(photo.spline, sx, sy)


def redraw(case: Case, rng: np.random.Generator, draw: int) -> Case:
    """``case`` with fresh noise: the same scene, geometry, gain and bias, new noise draws.

    The noise-free target and source are made again from the scene (as :func:`make_case` made
    them) and the tier's noise is drawn from ``rng``; the name gets ``#<draw>``. Only for a
    related noisy case (its ``scene`` and ``offset`` kept).
    """
    if case.scene is None or case.offset is None or not case.noise:
        raise ValueError(f"{case.name}: only a related noisy case can be drawn again")
    h, w = case.target.shape
    ox, oy = case.offset
    target = case.scene.image[oy:oy + h, ox:ox + w].astype(np.float32)
    source = _warped_source(case.scene, case.matrix, float(ox), float(oy), h, w)
    target = target + rng.normal(0.0, case.noise, target.shape).astype(np.float32)
    source = source + rng.normal(0.0, case.noise, source.shape).astype(np.float32)
    source = case.gain * source + case.bias
    return replace(case, name=f"{case.name}#{draw}",
                   target=np.ascontiguousarray(target, dtype=np.float32),
                   source=np.ascontiguousarray(source, dtype=np.float32))


def _partner(index: int, n: int) -> int:
    """Index of the target's photograph for unrelated pair ``index`` (never the same one)."""
    step = 1 + (index // n) % (n - 1)
    return (index + step) % n


def make_cases(photos: list[Photo], size: tuple[int, int], tier: str, count: int,
               seed: int = 0, clean: bool = False) -> Iterator[Case]:
    """Yield ``count`` deterministic cases of ``tier`` at ``size`` = (H, W).

    The random stream depends only on (seed, size, tier), so a case is the same whatever else
    is benchmarked alongside it. ``unrelated`` pairs take the source from the ``i``-th
    photograph (cycling) and the target from another one, cycling through the partners.
    ``clean`` drops the tier's noise and intensity change (for the synthesis check).
    """
    h, w = size
    tier_id = TIERS.index(tier)
    rng = np.random.default_rng([seed, h, w, tier_id])
    spec = TIER_SPECS[tier]
    need = needed_extent(spec, h, w)
    if not spec.related and len(photos) < 2:
        photos = photos + [_make_photo("synthetic-2", synthetic_scene(seed=54321))]
    for i in range(count):
        photo = _photo_for(photos, need, _ENLARGED, i)
        other = None
        if not spec.related:
            # Enlarged like the source's photograph, so both hold texture of the same scale.
            other = _photo_for(photos, need, _ENLARGED, _partner(i, len(photos)))
        yield make_case(photo, tier, h, w, rng, f"{w}x{h}/{tier}/{i}", other, clean)


def check_synthesis(case: Case) -> tuple[float, float]:
    """Check ``source(M x) == target(x)`` on a noise-free case.

    Returns the RMS mismatch (in grey levels, 0..255) of the source sampled through the true
    matrix against the target, over interior pixels whose image lies at least 3 px inside the
    source; and the same through a matrix shifted by 0.5 px, for scale. The first must be far
    below the second.
    """
    h, w = case.target.shape
    spline = ndimage.spline_filter(case.source.astype(np.float64), order=3)
    ys, xs = np.mgrid[0:h, 0:w].astype(float)

    def mismatch(m: np.ndarray) -> float:
        sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
        sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        inside = (sx >= 3) & (sx <= w - 4) & (sy >= 3) & (sy <= h - 4)
        inside[:3] = inside[-3:] = False
        inside[:, :3] = inside[:, -3:] = False
        vals = sample(spline, sx[inside], sy[inside])
        return float(np.sqrt(np.mean((vals - case.target[inside]) ** 2)))

    off = case.matrix.copy()
    off[0, 2] += 0.5
    return mismatch(case.matrix), mismatch(off)
