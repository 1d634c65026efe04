"""Pictures of a registration, to judge it at a glance: a pair panel and a stack's drift plot.

:func:`pair_panel` shows one pair in three panels side by side: the target (magenta) and the
source (green) overlaid as they lie before alignment, the same after it, and the absolute
difference after it; below them a legend and the parameters with their error bars. Where the
two images agree the overlay is gray or white; a misplaced edge shows as a magenta and green
fringe (:func:`pair_panels` gives the three panels alone). :func:`drift_plot` draws a
stack's per-frame shift and rotation with their error bars as bands and the failed frames
marked.

Both return RGB ``uint8`` arrays; writing them is the caller's (``regtool.io.write_image``):
nothing here prints or touches a file. The panel needs only Pillow; the drift plot needs
matplotlib (the ``plot`` extra), imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .prepare import luminance
from .resample import warp

__all__ = ["pair_panel", "pair_panels", "drift_plot", "PlottingUnavailable", "MAX_SIDE",
           "MIN_SIDE", "DIFF_FULL_SCALE", "PLOT_INSTALL"]

#: Panels are reduced (area averaging) so that their longer side is at most this many pixels:
#: three of them side by side still fit a screen.
MAX_SIDE = 600
#: Images whose longer side is shorter are enlarged by an integer factor (nearest neighbour,
#: so their pixels stay visible as squares) until it is at least this long.
MIN_SIDE = 256
#: Percentiles of the target's valid pixels mapped to black and full intensity: a few hot or
#: dead pixels do not squeeze the rest of the image into a narrow gray range.
PERCENTILES = (1.0, 99.0)
#: The difference panel is white at this fraction of the target's percentile range. Fixed, not
#: fitted to the difference itself, so a good alignment looks dark and a bad one bright.
DIFF_FULL_SCALE = 0.5
#: With fewer overlapping pixels than this, the source's gain and offset are not fitted to the
#: target's; it is normalized by its own percentiles instead.
MIN_FIT_PIXELS = 64
#: A pixel of the warped validity map counts as valid from this value: the bilinear weights of
#: its four neighbours must all fall on valid, inside pixels (up to rounding).
VALID_LEVEL = 0.99
#: What to run when matplotlib is missing.
PLOT_INSTALL = "pip install 'regtool[plot]'"

_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)
_GOOD = (0, 120, 40)
_ALERT = (190, 0, 0)
# Points of text per pixel of canvas width, and its bounds: legible in a 3 x 256 px canvas,
# not shouting in a 3 x 600 px one.
_FONT_PER_WIDTH = 1 / 80
_FONT_MIN, _FONT_MAX = 13, 22


class PlottingUnavailable(RuntimeError):
    """matplotlib, which the drift plot needs, is not installed."""

    def __init__(self) -> None:
        super().__init__(f"the drift plot needs matplotlib: {PLOT_INSTALL}")


# --------------------------------------------------------------------------------------------
# Geometry: how large a panel is drawn and the pixel maps between scales.


def _display_shape(shape: tuple[int, int], max_side: int, min_side: int
                   ) -> tuple[tuple[int, int], int]:
    """The shape an image is worked on at, and the integer enlargement applied afterwards.

    Large images are reduced (any factor) so their longer side is ``max_side``; small ones keep
    their pixels and are enlarged ``k`` times, ``k`` the smallest integer that makes the longer
    side at least ``min_side``, as long as it stays within ``max_side``.
    """
    h, w = shape
    longer = max(h, w)
    if longer > max_side:
        f = max_side / longer
        return (max(1, round(h * f)), max(1, round(w * f))), 1
    enlarge = 1
    if longer < min_side:
        enlarge = max(1, min(math.ceil(min_side / longer), max_side // longer))
    return (h, w), enlarge


def _to_full(shape: tuple[int, int], reduced: tuple[int, int]) -> np.ndarray:
    """3x3 matrix mapping pixel (x, y) of a box-reduced image to the original's pixel (x, y).

    Pixel centers are integers, so reduced pixel ``u`` covers the original interval
    ``[u s - 1/2, (u + 1) s - 1/2]`` with ``s = W / W'``: its center is ``(u + 1/2) s - 1/2``.
    """
    sx, sy = shape[1] / reduced[1], shape[0] / reduced[0]
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _reduce(values: np.ndarray, valid: np.ndarray | None, size: tuple[int, int]
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """Area-average ``values`` over its ``valid`` pixels (None: all) down to ``size``.

    A reduced pixel is valid when at least half of what it covers is; its value is the mean of
    the valid part, so masked pixels do not darken their neighbours.
    """
    if values.shape == size:
        return values, valid
    box = Image.Resampling.BOX
    wh = (size[1], size[0])
    if valid is None:  # the common case, and half the work of the weighted one
        return np.asarray(Image.fromarray(values).resize(wh, box), dtype=np.float32), None
    weight = np.asarray(Image.fromarray(valid.astype(np.float32)).resize(wh, box))
    total = np.asarray(Image.fromarray(np.where(valid, values, np.float32(0)))
                       .resize(wh, box))
    ok = weight >= 0.5
    out = np.zeros(size, dtype=np.float32)
    np.divide(total, weight, out=out, where=ok)
    return out, ok


def _fill_invalid(values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``values`` with invalid pixels set to the mean of the others: no spikes for a spline."""
    if valid is None or valid.all():
        return values
    mean = float(values[valid].mean()) if valid.any() else 0.0
    return np.where(valid, values, np.float32(mean)).astype(np.float32)


def _inside(matrix: np.ndarray, shape: tuple[int, int], extent: tuple[int, int]) -> np.ndarray:
    """Pixels of a ``shape`` grid that ``matrix`` maps inside ``[0, W-1] x [0, H-1]``."""
    h, w = extent
    y, x = np.arange(shape[0], dtype=np.float64)[:, None], np.arange(shape[1], dtype=np.float64)
    tol = 1e-6 * max(h, w)  # the rounding of the matrix: an identity's edge pixel is inside
    sx = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2]
    ok = (sx >= -tol) & (sx <= w - 1 + tol)
    sy = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2]
    ok &= (sy >= -tol) & (sy <= h - 1 + tol)
    return ok


def _resample(values: np.ndarray, valid: np.ndarray | None, matrix: np.ndarray,
              shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Warp an image and its validity onto a grid: cubic values, strict bilinear validity.

    The identity (an untransformed image shown at its own scale) is a copy: no interpolation.
    """
    if np.array_equal(matrix, np.eye(3)):
        rows, cols = min(shape[0], values.shape[0]), min(shape[1], values.shape[1])
        out = np.zeros(shape, dtype=np.float32)
        ok = np.zeros(shape, dtype=bool)
        out[:rows, :cols] = values[:rows, :cols]
        ok[:rows, :cols] = True if valid is None else valid[:rows, :cols]
        return out, ok
    out = warp(_fill_invalid(values, valid), matrix, shape, interp="cubic")
    if valid is None:
        return out, _inside(matrix, shape, values.shape)
    # bilinear weights of all four neighbours on valid pixels inside the image
    return out, warp(valid.astype(np.float32), matrix, shape, interp="linear") >= VALID_LEVEL


# --------------------------------------------------------------------------------------------
# Intensities: both images on the target's normalized scale.


def _normalizer(values: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Gain and offset taking the robust range of the valid pixels to [0, 1]."""
    if not valid.any():
        return 1.0, 0.0
    lo, hi = np.percentile(values[valid], PERCENTILES)
    if not hi > lo:  # nearly constant: spread whatever range there is
        lo, hi = float(values[valid].min()), float(values[valid].max())
    if not hi > lo:
        return 1.0, -float(lo) + 0.5
    return 1.0 / float(hi - lo), -float(lo) / float(hi - lo)


def _match(source: np.ndarray, target: np.ndarray, both: np.ndarray,
           fallback: tuple[float, float]) -> tuple[float, float]:
    """Gain and offset giving ``source`` the mean and spread of ``target`` where both are valid.

    The NCC view of two images: a gain or offset between them does not tint the overlay, so
    what remains of the colour is misplacement (or a real change of the scene).
    """
    if int(np.count_nonzero(both)) < MIN_FIT_PIXELS:
        return fallback
    s, t = source[both].astype(np.float64), target[both].astype(np.float64)
    s_std, t_std = float(s.std()), float(t.std())
    if not s_std > 0 or not t_std > 0:
        return fallback
    gain = t_std / s_std
    return gain, float(t.mean()) - gain * float(s.mean())


def _overlay(target: np.ndarray, t_valid: np.ndarray, source: np.ndarray,
             s_valid: np.ndarray) -> np.ndarray:
    """False colour: target in red and blue (magenta), source in green; no data is black."""
    t = np.where(t_valid, np.clip(target, 0, 1), 0)
    s = np.where(s_valid, np.clip(source, 0, 1), 0)
    return _to_uint8(np.stack([t, s, t], axis=-1))


def _difference(target: np.ndarray, source: np.ndarray, both: np.ndarray) -> np.ndarray:
    """|source - target| in gray, white at :data:`DIFF_FULL_SCALE`; outside the overlap black."""
    d = np.where(both, np.abs(np.clip(source, 0, 1) - np.clip(target, 0, 1)), 0)
    gray = np.clip(d / DIFF_FULL_SCALE, 0, 1)
    return _to_uint8(np.repeat(gray[..., None], 3, axis=-1))


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(x) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The text.


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font at ``size`` px (Pillow 10.1 and newer with FreeType), else its bitmap."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0 takes no size: the small bitmap font still reads
        return ImageFont.load_default()


def _text(font: Any, text: str) -> str:
    """``text`` in glyphs ``font`` has: the bitmap font has no ``±`` or ``°``."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.replace("±", "+/-").replace("°", " deg")


def _decimals(sigma: float | None, default: int) -> int:
    """Decimals that show two significant digits of an error bar (2 to 6)."""
    if sigma is None or not math.isfinite(sigma) or sigma <= 0:
        return default
    return int(min(6, max(2, 1 - math.floor(math.log10(sigma)))))


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def _document(result: Any) -> dict[str, Any]:
    """The JSON document of a :class:`regtool.Result`, or a mapping that already is one."""
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if isinstance(result, Mapping):
        return dict(result)
    raise TypeError(f"expected a regtool Result or its JSON document, not {type(result)!r}")


def _scale_note(shape: tuple[int, int], work: tuple[int, int], enlarge: int) -> str:
    if enlarge > 1:
        return f"shown {enlarge}x enlarged"
    if work != shape:
        return f"shown reduced 1:{shape[1] / work[1]:.3g}"
    return "shown 1:1"


def _lines(doc: dict[str, Any], scale: str, shapes: tuple[tuple[int, ...], tuple[int, ...]]
           ) -> list[tuple[str, tuple[int, int, int]]]:
    """The text block under the panels: (line, colour), the verdict first.

    ``shapes`` are the target's and the source's (rows, cols): of the arrays drawn, which a
    document read back from a file need not describe.
    """
    unc = doc.get("uncertainty") or {}
    s_sig = unc.get("shift") or [None, None]
    th_sig = unc.get("theta_deg")
    converged = bool(doc.get("converged"))
    lines: list[tuple[str, tuple[int, int, int]]] = []
    if converged:
        lines.append(("converged", _GOOD))
    else:
        lines.append((f"NOT CONVERGED: {doc.get('reason') or 'no reason given'}", _ALERT))

    def pm(sigma: float | None, d: int) -> str:
        return "" if sigma is None else f" ± {sigma:.{d}f}"

    d_th = _decimals(th_sig, 4)
    lines.append((f"theta  {_fmt(doc.get('theta_deg'), f'+.{d_th}f')}{pm(th_sig, d_th)}°",
                  _INK))
    shift, center = doc.get("shift") or [None, None], doc.get("center") or [None, None]
    parts = []
    for value, sigma in zip(shift, s_sig, strict=True):
        d = _decimals(sigma, 3)
        parts.append(f"{_fmt(value, f'+.{d}f')}{pm(sigma, d)}")
    lines.append((f"shift  {parts[0]}, {parts[1]} px   (about the center "
                  f"{_fmt(center[0], 'g')}, {_fmt(center[1], 'g')})", _INK))
    lines.append((f"tx, ty  {_fmt(doc.get('tx'), '+.3f')}, {_fmt(doc.get('ty'), '+.3f')} px   "
                  "(rotation about pixel 0, 0)", _INK))
    if unc.get("endpoint_px") is not None:
        lines.append((f"expected error  {unc['endpoint_px']:.2g} px (mean endpoint over the "
                      "target; ± are 1-sigma)", _INK))
    else:
        lines.append((f"error bars  n/a: {unc.get('reason') or 'not estimated'}", _INK))
    overlap = doc.get("overlap")
    overlap = "n/a" if overlap is None else f"{100 * overlap:.1f} %"
    lines.append((f"match  ncc {_fmt(doc.get('ncc'), '.4f')}, detail ncc "
                  f"{_fmt(doc.get('detail_ncc'), '.4f')}, overlap {overlap}   "
                  f"(metric {doc.get('metric', 'n/a')})", _INK))
    time_s = doc.get("time_s")
    lines.append((f"target {shapes[0][1]}x{shapes[0][0]}, source {shapes[1][1]}x{shapes[1][0]} "
                  f"px, {scale}" + ("" if time_s is None else f";  time {time_s:.2f} s"), _INK))
    return lines


def _wrap(draw: ImageDraw.ImageDraw, font: Any, text: str, width: float) -> list[str]:
    """Break ``text`` at spaces into lines no wider than ``width`` (a long word stays whole)."""
    out: list[str] = []
    line = ""
    for word in text.split(" "):
        trial = word if not line else f"{line} {word}"
        if line and draw.textlength(trial, font=font) > width:
            out.append(line)
            line = word
        else:
            line = trial
    out.append(line)
    return out


# --------------------------------------------------------------------------------------------
# The panel.


def pair_panel(
    target: np.ndarray,
    source: np.ndarray,
    result: Any,
    *,
    target_mask: np.ndarray | None = None,
    source_mask: np.ndarray | None = None,
    max_side: int = MAX_SIDE,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """A picture of one registration: overlays before and after, the difference, the numbers.

    The three pictures of :func:`pair_panels` side by side under their titles ("before
    (untransformed)", "after", "|after - target|"), and below them a legend of the colours and
    the result: converged or not and why, theta and the shift with their 1-sigma error bars,
    tx and ty, the expected endpoint error, ncc, detail ncc, the overlap, the metric, the
    images' sizes, the scale they are shown at and the time.

    Parameters
    ----------
    target, source, result, target_mask, source_mask, max_side, min_side
        As for :func:`pair_panels`.

    Returns
    -------
    (rows, cols, 3) uint8 ndarray
        The picture, for :func:`regtool.io.write_image`. It is at most
        ``3 * max_side`` plus margins wide, and at least ``3 * MIN_SIDE`` plus margins.

    Raises
    ------
    regtool.InputError
        If an image or mask is unusable (as :func:`regtool.align` would have reported).
    """
    doc = _document(result)
    panels, (scale, shapes) = _panels(target, source, doc, target_mask, source_mask, max_side,
                                      min_side)
    return _compose(list(panels), _lines(doc, scale, shapes))


def pair_panels(
    target: np.ndarray,
    source: np.ndarray,
    result: Any,
    *,
    target_mask: np.ndarray | None = None,
    source_mask: np.ndarray | None = None,
    max_side: int = MAX_SIDE,
    min_side: int = MIN_SIDE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three pictures of a registration, on the target's grid, without text.

    * **before**: the target in magenta and the source in green, untransformed: pixel (x, y)
      of one over pixel (x, y) of the other;
    * **after**: the same with the source aligned (warped through the result's ``matrix``);
    * **difference**: ``|after - target|`` in gray, white at :data:`DIFF_FULL_SCALE` of the
      target's range.

    Color images are shown by their luminance. Each image is normalized over its valid pixels
    first (the target by its 1st and 99th percentiles, the source to the target's mean and
    spread over their overlap, as NCC sees them), so a gain or offset between the two does not
    tint the overlay: gray or white where they agree, magenta or green fringes where an edge of
    one lies off the other's. A pixel of an image that is masked, NaN, transparent or outside
    it adds nothing to the overlay (black where neither image has data); in the difference
    every pixel outside the overlap is black.

    Parameters
    ----------
    target, source : ndarray
        The images as read: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``, any dtype
        :func:`regtool.prepare.luminance` takes.
    result : Result or mapping
        The :class:`regtool.Result` of aligning them, or its JSON document
        (:meth:`~regtool.Result.to_dict`, or the parameter file read back).
    target_mask, source_mask : ndarray, optional
        The masks the registration used (nonzero = use).
    max_side : int
        Longest side of a picture: larger images are reduced by area averaging.
    min_side : int
        Images whose longer side is shorter are enlarged by an integer factor (nearest
        neighbour, so their pixels show as squares) to reach it, within ``max_side``.

    Returns
    -------
    before, after, difference : (rows, cols, 3) uint8 ndarray
        Three pictures of one shape: the target's, reduced or enlarged.

    Raises
    ------
    regtool.InputError
        If an image or mask is unusable (as :func:`regtool.align` would have reported).
    """
    panels, _ = _panels(target, source, _document(result), target_mask, source_mask,
                        max_side, min_side)
    return panels


def _panels(target: np.ndarray, source: np.ndarray, doc: dict[str, Any],
            target_mask: np.ndarray | None, source_mask: np.ndarray | None,
            max_side: int, min_side: int
            ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray],
                       tuple[str, tuple[tuple[int, ...], tuple[int, ...]]]]:
    """The three pictures of :func:`pair_panels`, the scale they are shown at, the shapes.

    The scale note and the target's and source's shapes are for the text of :func:`pair_panel`.
    """
    if max_side < 1 or min_side < 1:
        raise ValueError(f"max_side and min_side must be positive, not {max_side}, {min_side}")
    # None for "every pixel valid" until the reduction: full-size masks cost time at 4096^2
    t, tv = luminance(target, "target", target_mask)
    s, sv = luminance(source, "source", source_mask)

    work, enlarge = _display_shape(t.shape, max_side, min_side)
    # One reduction factor for both images, the target's, so the pictures share a scale; the
    # source's own rounding is absorbed by its own pixel map.
    f = work[1] / t.shape[1]
    s_work = (max(1, round(s.shape[0] * f)), max(1, round(s.shape[1] * f))) if f != 1 else s.shape
    t_r, tv_r = _reduce(t, tv, work)
    tv_r = np.ones(work, dtype=bool) if tv_r is None else tv_r
    s_r, sv_r = _reduce(s, sv, s_work)
    # Warping the reduced source through the matrix in reduced coordinates costs a few ms where
    # warping the full image would cost a second at 4096^2.
    to_t, from_s = _to_full(t.shape, work), np.linalg.inv(_to_full(s.shape, s_work))
    matrix = np.eye(3)
    matrix[:2] = np.asarray(doc["matrix"], dtype=float)[:2]
    before, before_v = _resample(s_r, sv_r, from_s @ to_t, work)
    after, after_v = _resample(s_r, sv_r, from_s @ matrix @ to_t, work)

    t_gain, t_off = _normalizer(t_r, tv_r)
    tn = t_r * t_gain + t_off
    both = tv_r & after_v
    s_gain, s_off = _match(after, tn, both,
                           _normalizer(s_r, np.ones(s_r.shape, dtype=bool) if sv_r is None
                                       else sv_r))
    panels = (
        _overlay(tn, tv_r, before * s_gain + s_off, before_v),
        _overlay(tn, tv_r, after * s_gain + s_off, after_v),
        _difference(tn, after * s_gain + s_off, both),
    )
    if enlarge > 1:
        panels = tuple(np.repeat(np.repeat(p, enlarge, axis=0), enlarge, axis=1)
                       for p in panels)
    return panels, (_scale_note(t.shape, work, enlarge), (t.shape, s.shape))


def _compose(panels: list[np.ndarray], lines: list[tuple[str, tuple[int, int, int]]]
             ) -> np.ndarray:
    """Lay out the panels with their titles, the legend and the text block on one canvas."""
    ph, pw = panels[0].shape[:2]
    min_width = 3 * MIN_SIDE
    width_panels = 3 * pw
    font_size = int(np.clip(max(width_panels, min_width) * _FONT_PER_WIDTH, _FONT_MIN, _FONT_MAX))
    font = _font(font_size)
    margin = gap = font_size
    line_h = round(font_size * 1.35)
    canvas_w = max(width_panels + 2 * gap, min_width) + 2 * margin
    text_w = canvas_w - 2 * margin

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend = [((255, 0, 255), "target"), ((0, 255, 0), "source"),
              ((190, 190, 190), "agree (gray/white)"), ((0, 0, 0), "no data")]
    diff_note = (f"difference: black = agree (or no data), white = {100 * DIFF_FULL_SCALE:.0f}% "
                 f"of the target's range (its percentiles {PERCENTILES[0]:g} to "
                 f"{PERCENTILES[1]:g})")
    body: list[tuple[str, tuple[int, int, int]]] = []
    for text, colour in lines:
        body += [(line, colour) for line in _wrap(probe, font, _text(font, text), text_w)]
    body_notes = _wrap(probe, font, _text(font, diff_note), text_w)

    top = margin + line_h  # titles
    height = (top + ph + gap + line_h  # panels, legend
              + line_h * len(body_notes) + gap // 2 + line_h * len(body) + margin)
    canvas = Image.new("RGB", (canvas_w, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x0 = margin + (text_w - (width_panels + 2 * gap)) // 2
    titles = ("before (untransformed)", "after", "|after - target|")
    for i, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        x = x0 + i * (pw + gap)
        canvas.paste(Image.fromarray(panel), (x, top))
        draw.text((x, margin), _text(font, title), font=font, fill=_INK)

    y = top + ph + gap
    x = margin
    box = max(6, font_size - 4)
    for colour, label in legend:
        draw.rectangle((x, y + 2, x + box, y + 2 + box), fill=colour, outline=_INK)
        x += box + font_size // 3
        draw.text((x, y), _text(font, label), font=font, fill=_INK)
        x += int(draw.textlength(_text(font, label), font=font)) + font_size
    y += line_h
    for line in body_notes:
        draw.text((margin, y), line, font=font, fill=_INK)
        y += line_h
    y += gap // 2
    for line, colour in body:
        draw.text((margin, y), line, font=font, fill=colour)
        y += line_h
    return np.asarray(canvas, dtype=np.uint8).copy()


# --------------------------------------------------------------------------------------------
# The drift plot of a stack.


def _value(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _failed(row: Mapping[str, Any]) -> bool:
    """A frame failed unless it converged (the reference frame, which is not aligned, is fine)."""
    return not (row.get("converged") is True or row.get("status") == "reference")


def drift_plot(
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
    size: tuple[float, float] = (10.0, 7.5),
    dpi: int = 100,
) -> np.ndarray:
    """The drift of a stack: shift x, shift y and rotation per frame, with error bands.

    Three axes over the frame index: the shift about the center in x and in y (pixels) and the
    rotation (degrees). Converged frames are joined by a line, with their 1-sigma error bar as
    a band (usually thinner than the line: each axis gives its median); failed frames are
    marked by a pale red column and a red cross at their value, or a red caret at the axis's
    edge when the value lies off the converged frames' range.

    Parameters
    ----------
    rows : sequence of mapping
        One per frame, with ``index``, ``converged`` (True for a good frame), ``status``
        (``"reference"`` counts as good), ``shift_x``, ``shift_y`` (or, without them, ``tx``,
        ``ty``), ``theta_deg`` and the error bars ``sigma_shift_x``, ``sigma_shift_y``,
        ``sigma_theta_deg``. Missing and None values are left out.
    title : str, optional
        Above the plot; by default the number of frames and of failed ones.
    size : (float, float)
        Figure size in inches.
    dpi : int
        Pixels per inch: the picture is ``size * dpi`` pixels.

    Returns
    -------
    (rows, cols, 3) uint8 ndarray
        The picture, for :func:`regtool.io.write_image`.

    Raises
    ------
    PlottingUnavailable
        If matplotlib is not installed; the message says how to install it.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
        from matplotlib.transforms import blended_transform_factory
    except ImportError:
        raise PlottingUnavailable() from None

    n = len(rows)
    index = np.array([_value(r, "index") if r.get("index") is not None else i
                      for i, r in enumerate(rows)], dtype=float)
    failed = np.array([_failed(r) for r in rows], dtype=bool)
    shift_keys = any(r.get("shift_x") is not None for r in rows)
    series = [
        ("shift_x" if shift_keys else "tx", "sigma_shift_x",
         "shift x (px)" if shift_keys else "tx (px)"),
        ("shift_y" if shift_keys else "ty", "sigma_shift_y",
         "shift y (px)" if shift_keys else "ty (px)"),
        ("theta_deg", "sigma_theta_deg", "theta (deg)"),
    ]
    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    for ax, (key, sigma_key, label) in zip(axes, series, strict=True):
        value = np.array([_value(r, key) for r in rows])
        sigma = np.array([_value(r, sigma_key) for r in rows])
        median = _drift_axis(ax, index, value, sigma, failed, blended_transform_factory)
        # The band is usually thinner than the line at the drift's scale: say how wide it is.
        ax.set_ylabel(label if median is None else f"{label}\nmedian σ {median:.2g}")
    axes[-1].set_xlabel("frame")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    # One legend for the three axes, of every kind of mark any of them shows.
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    if title is None:
        title = f"drift over {n} frames" + (f", {int(failed.sum())} failed" if failed.any()
                                            else "")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles),
               bbox_to_anchor=(0.5, 0.955), frameon=False)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _drift_axis(ax: Any, index: np.ndarray, value: np.ndarray, sigma: np.ndarray,
                failed: np.ndarray, blended: Any) -> float | None:
    """One parameter over the frames: line, 1-sigma band, failed frames marked.

    Returns the median error bar of the converged frames, None without any.
    """
    good = np.where(failed, np.nan, value)
    ax.plot(index, good, "-o", color="tab:blue", lw=1.2, ms=3 if len(index) <= 200 else 0,
            label="converged")
    band = np.isfinite(good) & np.isfinite(sigma)
    if band.any():
        ax.fill_between(index, good - sigma, good + sigma, where=band, color="tab:blue",
                        alpha=0.3, lw=0, label="±1σ")
    median = float(np.median(sigma[band])) if band.any() else None
    _limits(ax, good, sigma)
    ax.grid(True, alpha=0.3)
    if not failed.any():
        return median
    lo, hi = ax.get_ylim()
    # At least a frame wide, and at least 1/300 of the axis so it shows among hundreds.
    half = max(0.5, (np.nanmax(index) - np.nanmin(index)) / 600)
    for i in np.flatnonzero(failed):
        ax.axvspan(index[i] - half, index[i] + half, color="red", alpha=0.15, lw=0)
    x, y = index[failed], value[failed]
    inside = (y >= lo) & (y <= hi)
    if inside.any():
        ax.plot(x[inside], y[inside], "x", color="red", ms=9, mew=2, label="failed")
    # A failed frame's value may be wild: a caret at the axis's edge points to it instead of
    # stretching the axis away from the converged frames' drift. (No value: the column only.)
    to_edge = blended(ax.transData, ax.transAxes)
    for where, marker, mask in ((0.97, "^", y > hi), (0.03, "v", y < lo)):
        if mask.any():
            ax.plot(x[mask], np.full(int(mask.sum()), where), marker, color="red", ms=9,
                    transform=to_edge, label="failed, off scale")
    return median


def _limits(ax: Any, good: np.ndarray, sigma: np.ndarray) -> None:
    """y range of the converged frames and their bands, padded; a flat series gets +-1."""
    ok = np.isfinite(good)
    if not ok.any():
        ax.set_ylim(-1.0, 1.0)
        return
    s = np.where(np.isfinite(sigma), sigma, 0.0)
    lo, hi = float(np.min((good - s)[ok])), float(np.max((good + s)[ok]))
    pad = 0.08 * (hi - lo) if hi > lo else max(1.0, abs(hi)) * 0.1
    ax.set_ylim(lo - pad, hi + pad)
