"""Global initialization: rotation over the whole circle and large shifts, before local descent.

Local descent only finds the nearest minimum. This module finds where to start, at one coarse
pyramid level, in three steps:

1. Rotation, up to the 180-degree ambiguity, from the magnitude spectra: a rotation of the image
   rotates its Fourier magnitude by the same angle and ignores translation, so a circular
   cross-correlation of the two polar-resampled spectra along the angle peaks at the rotation.
2. For each candidate angle and its opposite (the magnitude spectrum cannot tell them apart),
   the translation by phase correlation of the target with the source turned by that angle.
   When no angle lines up well, every angle is tried, and each also gives the shift of a
   partly whitened correlation, which a faint noisy image's high frequencies mislead less.
3. Each candidate is refined by a few Gauss-Newton steps and the one whose zero-mean normalized
   cross-correlation (NCC) over the overlap is highest wins. The plain start (centers matched,
   no rotation) is always among the candidates, so the search never does worse than no search.

Everything here is a pure function of arrays; coordinates follow GUIDE section 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import fft as sfft

from . import loss as L
from .optimize import gauss_newton
from .resample import bilinear_nan
from .transform import max_displacement

__all__ = ["Candidate", "candidates", "rotation_candidates", "phase_correlation", "rotation_about",
           "search", "target_spectrum"]

# Angular resolution of the polar spectra: 1 degree over the half circle.
N_ANGLES = 180


@dataclass
class Candidate:
    """A starting transform (target -> source, 3x3, search-level pixels) and its evidence."""

    matrix: np.ndarray
    theta: float
    peak: float
    spectral: bool = False  # the angle came from the magnitude spectra (not the sweep)
    partial: bool = False  # the shift from the partly whitened correlation (PARTIAL_WHITENING)


@lru_cache(maxsize=16)
def _hann(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1])).astype(np.float32)


def _prepared(image: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Zero-mean over the valid pixels, masked pixels at 0, tapered to 0 at the borders.

    The taper removes the cross that the image's own borders would add to its spectrum, which
    otherwise pulls every rotation estimate toward 0 and 90 degrees.
    """
    img = image.astype(np.float32, copy=True)
    mean = float(img[valid].mean()) if valid is not None else float(img.mean())
    img -= mean
    if valid is not None:
        img[~valid] = 0.0
    return img * _hann(img.shape)


def _padded(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.float32)
    out[: image.shape[0], : image.shape[1]] = image
    return out


@lru_cache(maxsize=16)
def _polar_grid(size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Bilinear taps ``(4, n)`` into the half spectrum (``size x size // 2 + 1``, rfft2's) and
    their weights, for the polar grid (radius x angle in [0, pi)) of the shifted spectrum in
    :func:`_polar_spectrum`, and its shape.

    The grid depends on the size alone: computed once, the resampling is four gathers (0.03
    instead of 0.19 ms per spectrum at 75x75 with scipy's map_coordinates and the grid made
    afresh). Every point lies inside the spectrum, so no edge mode is needed.
    """
    c = size / 2.0
    radii = np.arange(max(2.0, size / 32.0), size * 0.45, 1.0)
    angles = np.arange(N_ANGLES) * (math.pi / N_ANGLES)
    r, a = np.meshgrid(radii, angles, indexing="ij")
    # spectrum index (row = ky, col = kx); angle measured in the (x, y) frame of GUIDE 2
    rows = (c + r * np.sin(a)).ravel()
    cols = (c + r * np.cos(a)).ravel()
    r0, c0 = np.floor(rows), np.floor(cols)
    ty, tx = rows - r0, cols - c0
    row, col = r0.astype(np.intp), c0.astype(np.intp)
    # The taps of the shifted spectrum, read from the half that rfft2 returns: frequency
    # (ky, kx) sits at ((row - size // 2) mod size, (col - size // 2) mod size), and a real
    # image's |F(ky, kx)| is |F(-ky, -kx)|, so columns past size // 2 read their mirror.
    half = size // 2 + 1
    taps = []
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        ky = (row + dr - size // 2) % size
        kx = (col + dc - size // 2) % size
        mirror = kx >= half
        ky = np.where(mirror, (-ky) % size, ky)
        kx = np.where(mirror, size - kx, kx)
        taps.append(ky * half + kx)
    weights = np.stack([(1 - ty) * (1 - tx), (1 - ty) * tx, ty * (1 - tx), ty * tx])
    return np.stack(taps), weights, r.shape


def _polar_spectrum(image: np.ndarray, size: int) -> np.ndarray:
    """Log-magnitude spectrum on a polar grid (radius x angle in [0, pi)), rows standardized.

    From the half spectrum of rfft2 (:func:`_polar_grid` maps the taps): no full complex
    transform, shift and magnitudes of both halves.
    """
    spec = np.log1p(np.abs(sfft.rfft2(_padded(image, (size, size)))))
    taps, weights, shape = _polar_grid(size)
    # summed in float64 and rounded to the spectrum's type, as scipy does
    polar = np.einsum("kn,kn->n", np.take(spec.reshape(-1), taps), weights).astype(spec.dtype)
    polar = polar.reshape(shape)
    polar -= polar.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(polar, axis=1, keepdims=True)
    return polar / np.where(norm > 0, norm, 1.0)


def rotation_candidates(target: np.ndarray, source: np.ndarray,
                        target_valid: np.ndarray | None = None,
                        source_valid: np.ndarray | None = None,
                        count: int = 2) -> list[tuple[float, float]]:
    """Rotations (radians, in [0, pi)) that best turn the target's spectrum into the source's.

    Returns up to ``count`` ``(theta, score)`` pairs, strongest first; each theta stands for
    itself and ``theta + pi``. ``score`` is the normalized circular correlation at the peak.
    """
    size = sfft.next_fast_len(max(*target.shape, *source.shape))
    pf = _polar_spectrum(_prepared(target, target_valid), size)
    pg = _polar_spectrum(_prepared(source, source_valid), size)
    # corr(tau) = sum_r sum_phi pg(r, phi) pf(r, phi - tau): peaks where g's spectrum is f's
    # turned by tau
    corr = sfft.irfft(np.sum(sfft.rfft(pg, axis=1) * np.conj(sfft.rfft(pf, axis=1)),
                               axis=0), n=N_ANGLES) / pf.shape[0]
    order = np.argsort(corr)[::-1]
    found: list[tuple[float, float]] = []
    for j in order:
        # keep local maxima only, at least 5 degrees apart (circularly, period pi)
        if corr[j] < corr[(j - 1) % N_ANGLES] or corr[j] < corr[(j + 1) % N_ANGLES]:
            continue
        if any(min(abs(j - k), N_ANGLES - abs(j - k)) < 5 for k, _ in found):
            continue
        # parabolic refinement of the peak between the 1-degree samples
        y0, y1, y2 = corr[(j - 1) % N_ANGLES], corr[j], corr[(j + 1) % N_ANGLES]
        den = y0 - 2 * y1 + y2
        frac = 0.5 * (y0 - y2) / den if den < 0 else 0.0
        found.append((j + frac, float(y1)))
        if len(found) == count:
            break
    # a runner-up angle far weaker than the winner is not worth a candidate
    found = [(j, sc) for j, sc in found if sc >= 0.5 * found[0][1]]
    return [((j * math.pi / N_ANGLES) % math.pi, score) for j, score in found]


def rotation_about(theta: float, target_shape: tuple[int, int],
                   source_shape: tuple[int, int]) -> np.ndarray:
    """3x3 matrix turning by ``theta`` about the target's center onto the source's center."""
    ct = ((target_shape[1] - 1) / 2.0, (target_shape[0] - 1) / 2.0)
    cs = ((source_shape[1] - 1) / 2.0, (source_shape[0] - 1) / 2.0)
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, cs[0] - (c * ct[0] - s * ct[1])],
                     [s, c, cs[1] - (s * ct[0] + c * ct[1])],
                     [0.0, 0.0, 1.0]])


def phase_correlation(target: np.ndarray, moved: np.ndarray,
                      target_valid: np.ndarray | None = None,
                      moved_valid: np.ndarray | None = None,
                      target_fft: np.ndarray | None = None,
                      whitening: float = 1.0) -> tuple[float, float, float]:
    """Shift ``(sx, sy)`` with ``moved(x + s) ~ target(x)``, and the correlation peak's height.

    Both images are on one grid (same shape). The peak height (between 0 and 1) says how much
    of the cross-power spectrum agrees on that one shift. ``target_fft`` is the target's
    transform from an earlier call (:func:`target_spectrum`), reused across candidates.
    ``whitening`` is the power of the cross-power spectrum's magnitude it is divided by: 1 is
    phase correlation (every frequency counts alike), less keeps some of the magnitude's
    weight (:data:`PARTIAL_WHITENING`); the height is then over what full agreement would give.
    """
    return _correlations(target, moved, target_valid, moved_valid, target_fft, (whitening,))[0]


def _correlations(target: np.ndarray, moved: np.ndarray, target_valid: np.ndarray | None,
                  moved_valid: np.ndarray | None, target_fft: np.ndarray | None,
                  whitenings: tuple[float, ...]) -> list[tuple[float, float, float]]:
    """:func:`phase_correlation` for each of ``whitenings``, from one transform of ``moved``."""
    h, w = target.shape
    a = target_spectrum(target, target_valid) if target_fft is None else target_fft
    cross = sfft.rfft2(_prepared(moved, moved_valid)) * np.conj(a)
    magnitude = np.abs(cross)
    floor = 1e-12 * float(magnitude.max() or 1.0)
    out = []
    for whitening in whitenings:
        if whitening == 1.0:
            surface = sfft.irfft2(cross / (magnitude + floor), s=(h, w))
        else:
            scale = np.power(magnitude, np.float32(whitening)) + floor
            weight = magnitude / scale
            # what the surface would read where every frequency agreed: the weights over the
            # full spectrum (rfft2's half counts twice, but for its columns without a mirror)
            full = 2.0 * float(weight.sum()) - float(weight[:, 0].sum())
            if w % 2 == 0:
                full -= float(weight[:, -1].sum())
            surface = sfft.irfft2(cross / scale, s=(h, w)) * (h * w / max(full, 1e-30))
        out.append(_peak(surface))
    return out


def _peak(surface: np.ndarray) -> tuple[float, float, float]:
    """The shift at a correlation surface's highest point (parabolic between samples) and its
    height."""
    h, w = surface.shape
    # a shift of half the image or more is indistinguishable from the opposite one: prefer
    # the smaller, which leaves the larger overlap
    iy, ix = np.unravel_index(int(np.argmax(surface)), surface.shape)
    peak = float(surface[iy, ix])

    def refine(center: float, lo: float, hi: float) -> float:
        den = lo - 2 * center + hi
        return 0.5 * (lo - hi) / den if den < 0 else 0.0

    dy = refine(peak, surface[(iy - 1) % h, ix], surface[(iy + 1) % h, ix])
    dx = refine(peak, surface[iy, (ix - 1) % w], surface[iy, (ix + 1) % w])
    sy = iy + dy if iy <= h // 2 else iy + dy - h
    sx = ix + dx if ix <= w // 2 else ix + dx - w
    return float(sx), float(sy), peak


def target_spectrum(target: np.ndarray, target_valid: np.ndarray | None = None) -> np.ndarray:
    """The target's transform as :func:`phase_correlation` uses it."""
    return sfft.rfft2(_prepared(target, target_valid))


def turned(source: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The source sampled through ``matrix`` on a grid of ``shape`` (bilinear, NaN outside)."""
    return bilinear_nan(source, matrix, shape)


def _turned_source(target_shape: tuple[int, int], source: np.ndarray,
                   source_valid: np.ndarray | None, theta: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rotation about the centers by ``theta``, the source turned by it onto the target's
    grid (0 where it has no value) and where it has one."""
    rot = rotation_about(theta, target_shape, source.shape)
    moved = turned(source, rot, target_shape)
    moved_valid = np.isfinite(moved)
    if source_valid is not None:
        moved_valid &= turned(source_valid.astype(np.float32), rot, target_shape) > 0.999
    moved = np.where(moved_valid, moved, 0.0).astype(np.float32)
    return rot, moved, moved_valid


def _candidate(target: np.ndarray, source: np.ndarray, target_valid: np.ndarray | None,
               source_valid: np.ndarray | None, theta: float,
               target_fft: np.ndarray | None = None,
               turned_source: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
               whitenings: tuple[float, ...] = (1.0,)) -> list[Candidate]:
    """Turn the source by ``theta`` onto the target's grid and phase-correlate for the shift,
    once per whitening (:func:`phase_correlation`).

    ``turned_source`` is :func:`_turned_source` of ``theta`` when the caller has it.
    """
    rot, moved, moved_valid = (turned_source if turned_source is not None
                               else _turned_source(target.shape, source, source_valid, theta))
    out = []
    for whitening, (sx, sy, peak) in zip(whitenings, _correlations(
            target, moved, target_valid, moved_valid, target_fft, whitenings), strict=True):
        shift = np.array([[1.0, 0.0, sx], [0.0, 1.0, sy], [0.0, 0.0, 1.0]])
        out.append(Candidate(rot @ shift, math.atan2(math.sin(theta), math.cos(theta)), peak,
                             partial=whitening != 1.0))
    return out


# A phase-correlation peak this high means the turned source lines up with the target; below
# it the spectral angle is not trusted and every angle is tried, SWEEP_STEP apart (the
# descent at the search level captures half a step and more).
PEAK_SURE = 0.25
SWEEP_STEP = math.radians(8.0)
# In that sweep each angle's shift is also read off a partly whitened correlation (the
# cross-power spectrum over its magnitude to this power), and the strongest PARTIAL_POOL of
# those join the candidates refined. Phase correlation weighs every frequency alike, so on a
# faint noisy image the noise at high frequencies can bury the true shift: at the true angle
# of the benchmark's 512x512 hard rocket crop it found the shift on 45% of noise draws, with
# the magnitude to the power 0.8 on all. Used alone, though, the partly whitened peaks rise on
# smooth images too and misled the sweep's trigger and the choice (a coffee crop shifted by
# 170 px: 5 of 5 draws wrong); so they only join the pool, and a refined one replaces the
# best phase-correlated candidate only where it lands on another match, more than SAME_MATCH
# search-level pixels (the largest displacement over the image) away, with a lower loss:
# within one match a faint image's loss is mostly noise.
PARTIAL_WHITENING = 0.8
PARTIAL_POOL = 3
SAME_MATCH = 2.0


def candidates(target: np.ndarray, source: np.ndarray, target_valid: np.ndarray | None,
               source_valid: np.ndarray | None, count: int = 2) -> list[Candidate]:
    """Starting transforms (search-level pixels) from spectra and phase correlation.

    The magnitude spectra give the angle directly when the images share enough of their
    content; when the best candidate's phase correlation is weak (little overlap, noise,
    smooth images), a sweep over the whole circle backs it up, each angle also with the
    shift of the partly whitened correlation (``partial``, PARTIAL_WHITENING).
    """
    out: list[Candidate] = []
    spectrum = target_spectrum(target, target_valid)
    for theta0, _ in rotation_candidates(target, source, target_valid, source_valid, count):
        rot, moved, moved_valid = _turned_source(target.shape, source, source_valid, theta0)
        # Turning by theta + pi about the centers reads the same grid backwards (the target's
        # grid is symmetric about its center): a flip instead of a second resampling.
        half_turn = (rotation_about(theta0 + math.pi, target.shape, source.shape),
                     moved[::-1, ::-1], moved_valid[::-1, ::-1])
        for theta, seen in ((theta0, (rot, moved, moved_valid)), (theta0 + math.pi, half_turn)):
            (cand,) = _candidate(target, source, target_valid, source_valid, theta, spectrum,
                                 seen)
            cand.spectral = True
            out.append(cand)
    if not out or max(c.peak for c in out) < PEAK_SURE:
        for theta in np.arange(-math.pi, math.pi, SWEEP_STEP):
            out += _candidate(target, source, target_valid, source_valid, float(theta),
                              spectrum, whitenings=(1.0, PARTIAL_WHITENING))
    out.sort(key=lambda c: -c.peak)
    return out


# A best phase-correlation peak at least this many times the runner-up is taken as it is;
# closer calls are settled by refining each and comparing NCC.
CLEAR_WIN = 2.0


def search(level: L.LevelImages, target: np.ndarray, source: np.ndarray,
           target_valid: np.ndarray | None, source_valid: np.ndarray | None,
           plain: np.ndarray, min_overlap: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Best starting matrix at one coarse level, and what the search saw.

    ``level`` is the prepared level (for refining candidates), ``target``/``source`` its images
    and masks, ``plain`` the start without search (centers matched).
    """
    every = candidates(target, source, target_valid, source_valid)
    info: dict[str, Any] = {"candidates": len(every) + 1, "refined": 0}
    # the partly whitened sweep's candidates only join the refined pool: their peaks are on
    # another scale
    found = [c for c in every if not c.partial]
    partial = [c for c in every if c.partial]
    if not found:
        return plain, info
    best = found[0]
    runner_up = found[1].peak if len(found) > 1 else 0.0
    info["peak"] = round(best.peak, 4)
    if best.peak >= CLEAR_WIN * max(runner_up, 1e-12):
        return best.matrix, info
    # A close call: refine the strongest few and the plain start, keep the best correlation.
    center = ((target.shape[1] - 1) / 2.0, (target.shape[0] - 1) / 2.0)
    # the strongest few by phase correlation, the spectral angles whatever their peak (noise
    # and little overlap weaken phase correlation more than the spectra), and the plain start
    pool = [c.matrix for c in found[:3]]
    pool += [c.matrix for c in found[3:] if c.spectral] + [plain]
    extra = [c.matrix for c in partial[:PARTIAL_POOL]]
    scored = _refined(level, pool, center, min_overlap)
    others = _refined(level, extra, center, min_overlap)
    info["refined"] = len(pool) + len(extra)
    if not scored and not others:
        return best.matrix, info
    if not scored:
        return others[0][1], info
    # a partly whitened candidate is there to find another match, not to move this one
    loss, matrix = scored[0]
    for other_loss, other in others:
        if (other_loss < loss and max_displacement(np.linalg.inv(matrix) @ other, target.shape)
                > SAME_MATCH):
            return other, info
    return matrix, info


def _refined(level: L.LevelImages, starts: list[np.ndarray], center: tuple[float, float],
             min_overlap: float) -> list[tuple[float, np.ndarray]]:
    """Each start refined by a few Gauss-Newton steps at the search level: ``(1 - NCC,
    matrix)`` of those that ended in the overlap, lowest loss first."""
    scored = []
    for start in starts:
        out = gauss_newton(level, start, center, "ncc", 0.05, 15, min_overlap)
        if math.isfinite(out.loss) and out.reason is None or (
                out.reason or "").startswith("did not converge"):
            scored.append((out.loss, out.matrix))
    scored.sort(key=lambda s: s[0])
    return scored
