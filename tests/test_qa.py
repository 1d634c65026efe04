"""The QA pictures: overlays that balance when aligned, sizes, no-data pixels, text, drift plot."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from synth import photo

import regtool
from regtool import qa
from regtool.resample import warp


def _doc(matrix=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)), converged=True, **extra):
    """A result's JSON document with only what the pictures read."""
    doc = {"matrix": [list(r) for r in matrix], "tx": matrix[0][2], "ty": matrix[1][2],
           "theta_deg": 0.0, "shift": [matrix[0][2], matrix[1][2]], "center": [0.0, 0.0],
           "converged": converged, "reason": None if converged else "the images do not match",
           "metric": "ncc", "ncc": 0.99, "detail_ncc": 0.98, "overlap": 0.9, "time_s": 0.1,
           "uncertainty": {"shift": [0.001, 0.002], "theta_deg": 0.0001, "endpoint_px": 0.002,
                           "reason": None}}
    doc.update(extra)
    return doc


def _pair(shape=(240, 300), dx=8.0, dy=-5.0):
    """Target = a photograph's crop; source such that source(x + d) = target(x)."""
    image = photo(0)
    h, w = shape
    target = image[100:100 + h, 120:120 + w].astype(np.float32)
    # source(y) = image(y - d + offset): its pixel x + d holds target pixel x
    shifted = [[1.0, 0.0, 120 - dx], [0.0, 1.0, 100 - dy]]
    source = warp(image.astype(np.float32), shifted, shape, interp="cubic")
    return target, source, ((1.0, 0.0, dx), (0.0, 1.0, dy))


def _imbalance(panel, border=20):
    """Mean |red - green| (0..255) inside ``border``, where both images of a pair have data.

    0 where magenta and green add up to gray: the two images agree.
    """
    rgb = panel[border:-border, border:-border].astype(int)
    return float(np.abs(rgb[..., 0] - rgb[..., 1]).mean())


def test_panel_is_an_rgb_uint8_picture():
    target, source, m = _pair()
    picture = qa.pair_panel(target, source, _doc(m))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    before, after, diff = qa.pair_panels(target, source, _doc(m))
    # 300 x 240 lies between MIN_SIDE and MAX_SIDE: shown 1:1
    assert before.shape == after.shape == diff.shape == (240, 300, 3)
    assert picture.shape[0] > 240 and picture.shape[1] > 3 * 300


def test_after_balances_and_before_does_not():
    target, source, m = _pair()
    before, after, _ = qa.pair_panels(target, source, _doc(m))
    assert _imbalance(after) < 1
    # 8 px apart: magenta and green fringes at every edge
    assert _imbalance(before) > 20


def test_gain_and_offset_do_not_tint_the_overlay():
    target, source, m = _pair()
    before, after, diff = qa.pair_panels(target, 3.0 * source + 0.4, _doc(m))
    assert _imbalance(after) < 1
    assert np.percentile(diff[..., 0], 99) < 0.1 * 255


def test_difference_is_dark_when_aligned_and_bright_when_not():
    target, source, m = _pair()
    *_, diff = qa.pair_panels(target, source, _doc(m))
    off = ((1.0, 0.0, m[0][2] + 3.0), (0.0, 1.0, m[1][2]))
    *_, diff_off = qa.pair_panels(target, source, _doc(off))
    assert diff.mean() < 3 and np.percentile(diff, 99) < 25
    assert diff_off.mean() > 5 * max(diff.mean(), 1.0)


def test_large_images_are_reduced_and_small_ones_enlarged():
    rng = np.random.default_rng(0)
    big = rng.random((900, 1500)).astype(np.float32)
    before, *_ = qa.pair_panels(big, big, _doc())
    assert before.shape[:2] == (360, 600)  # longer side MAX_SIDE, aspect kept
    picture = qa.pair_panel(big, big, _doc())
    assert picture.shape[1] <= 3 * qa.MAX_SIDE + 8 * 22  # three panels and the margins

    small = rng.random((30, 40)).astype(np.float32)
    before, after, _ = qa.pair_panels(small, small, _doc())
    k = 7  # the smallest integer taking 40 px to MIN_SIDE (256) or more
    assert before.shape[:2] == (30 * k, 40 * k)
    blocks = after.reshape(30, k, 40, k, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # whole pixels, nearest neighbour


def test_no_data_is_black():
    target, source, m = _pair(dx=0.0, dy=0.0)
    target[40:60, 50:90] = np.nan
    source[40:60, 50:90] = np.nan
    target[100:120, 20:40] = np.nan  # the target only: the source's green remains
    mask = np.ones(source.shape, dtype=bool)
    mask[130:150, 150:190] = False  # the source's mask: the target's magenta remains
    before, after, diff = qa.pair_panels(target, source, _doc(m), source_mask=mask)
    for panel in (before, after, diff):
        assert (panel[40:60, 50:90] == 0).all()
    assert (after[100:120, 20:40][..., [0, 2]] == 0).all()
    assert (after[100:120, 20:40][..., 1] > 0).mean() > 0.9
    assert (after[132:148, 152:188, 1] == 0).all()
    assert (after[132:148, 152:188, 0] > 0).mean() > 0.9
    assert (diff[100:120, 20:40] == 0).all() and (diff[132:148, 152:188] == 0).all()


def _red(picture):
    """Pure-red pixels: the panels' magenta, green and gray have none."""
    a = picture.astype(int)
    return int(((a[..., 0] > 140) & (a[..., 1] < 60) & (a[..., 2] < 60)).sum())


def test_text_is_written_and_red_when_not_converged():
    target, source, m = _pair()
    good = qa.pair_panel(target, source, _doc(m))
    other = qa.pair_panel(target, source, _doc(m, theta_deg=1.25))
    bad = qa.pair_panel(target, source, _doc(m, converged=False))
    assert good.shape == other.shape == bad.shape
    # the same panels; the numbers under them differ
    changed = np.flatnonzero((good != other).any(axis=(1, 2)))
    assert changed.size > 5 and changed.min() > 240
    last_line = good[-40:]
    assert (last_line < 128).all(axis=-1).sum() > 100  # dark ink on white
    assert _red(good) == 0 and _red(bad) > 50


def test_a_result_from_align_and_color_images():
    target, source, _ = _pair(shape=(128, 128), dx=3.3, dy=-2.1)
    tint = np.array([1.0, 0.8, 0.6], dtype=np.float32)
    target_rgb = target[..., None] * tint
    source_rgb = source[..., None] * tint
    result = regtool.align(target_rgb, source_rgb)
    assert result.converged
    picture = qa.pair_panel(target_rgb, source_rgb, result)
    assert picture.dtype == np.uint8
    _, after, _ = qa.pair_panels(target_rgb, source_rgb, result.to_dict())
    assert _imbalance(after, border=10) < 2


def _rows(failed=()):
    return [{"index": i, "status": "failed" if i in failed else "ok",
             "converged": i not in failed, "reason": None,
             "shift_x": 0.3 * i, "shift_y": -0.1 * i, "theta_deg": 0.01 * i,
             "sigma_shift_x": 0.05, "sigma_shift_y": 0.05, "sigma_theta_deg": 0.001}
            for i in range(12)]


def test_drift_plot_marks_failed_frames():
    pytest.importorskip("matplotlib")
    clean = qa.drift_plot(_rows(), size=(6, 4.5), dpi=60)
    assert clean.dtype == np.uint8 and clean.shape == (270, 360, 3)
    assert _red(clean) == 0
    assert _red(qa.drift_plot(_rows(failed=(5,)), size=(6, 4.5), dpi=60)) > 50
    rows = _rows(failed=(5,))
    rows[5].update(shift_x=500.0, shift_y=None, theta_deg=None)  # wild or missing values
    wild = qa.drift_plot(rows, size=(6, 4.5), dpi=60)
    assert _red(wild) > 20  # a caret at the top of the shift x axis


def test_drift_plot_without_matplotlib_says_how_to_get_it(monkeypatch):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(qa.PlottingUnavailable, match=r"pip install 'regtool\[plot\]'"):
        qa.drift_plot(_rows())
    assert issubclass(qa.PlottingUnavailable, RuntimeError)
