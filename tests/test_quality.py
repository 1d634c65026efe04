"""The match decision: agreement statistics and the verdict on them."""

import math

import numpy as np
from synth import make_pair, photo

from regtool import quality as Q
from regtool.transform import rigid_matrix


def _pair(gain=1.0, offset=0.0, which=0):
    target, source, m = make_pair(photo(which), (160, 176), (4.0, -3.0), 6.0, noise=0.01,
                                  gain=gain, offset=offset, seed=1)
    return target.astype(np.float32), source.astype(np.float32), m


def test_a_match_is_a_match_for_both_metrics():
    f, g, m = _pair()
    q = Q.assess(f, None, g, None, m)
    assert q.ncc > 0.95 and q.detail_ncc > 0.8 and abs(q.gain - 1) < 0.05
    assert Q.verdict(q, "ncc") is None and Q.verdict(q, "ssd") is None


def test_a_gain_is_fine_for_ncc_and_reported_for_ssd():
    f, g, m = _pair(gain=1.4, offset=-0.2)
    q = Q.assess(f, None, g, None, m)
    assert abs(q.gain - 1 / 1.4) < 0.05
    assert Q.verdict(q, "ncc") is None
    assert "intensities differ" in Q.verdict(q, "ssd")


def test_a_wrong_transform_or_another_scene_is_no_match():
    f, g, m = _pair()
    wrong = m @ rigid_matrix(25.0, -18.0, 0.3)
    assert "do not match" in Q.verdict(Q.assess(f, None, g, None, wrong), "ncc")
    other, _, _ = make_pair(photo(2), f.shape, (0.0, 0.0), 0.0, seed=2)
    q = Q.assess(other.astype(np.float32), None, g, None, m)
    assert "do not match" in Q.verdict(q, "ncc")


def test_masked_pixels_are_left_out():
    f, g, m = _pair()
    f_mask = np.ones(f.shape, bool)
    f_mask[:, :60] = False
    f2 = f.copy()
    f2[:, :60] = np.random.default_rng(0).random((f.shape[0], 60))  # garbage where masked
    q = Q.assess(f2, f_mask, g, None, m)
    assert q.ncc > 0.95 and Q.verdict(q, "ncc") is None


def test_small_images_are_checked_whole_with_a_bar_for_their_size():
    """A 48x64 pair is judged on every pixel (halved, no detail band fitted and a right answer
    was called no match); chance agreement of a small overlap is not taken for a match; an
    overlap too small for the detail check says so."""
    import regtool

    for which in (0, 1):
        t, s, _ = make_pair(photo(which), (48, 64), (2.0, -1.5), 3.0, noise=0.01, seed=2)
        assert regtool.align(t, s).converged
    t, _, _ = make_pair(photo(0), (48, 64), (2.0, -1.5), 3.0)
    _, other, _ = make_pair(photo(1), (48, 64), (2.0, -1.5), 3.0)
    wrong = regtool.align(t, other)
    # this pair's detail reaches 0.44 after alignment: above the 0.35 of a large overlap
    assert not wrong.converged and wrong.detail_ncc > Q.DETAIL_BANDS[0][2]
    t, s, _ = make_pair(photo(0), (24, 24), (1.0, 0.5), 2.0)
    tiny = regtool.align(t, s)
    assert not tiny.converged and "too small to check the match" in tiny.reason
    assert Q._small_overlap_bar(Q.SMALL_FROM) == 0.0
    assert Q._small_overlap_bar(Q.SMALL_FROM - 1) >= Q.DETAIL_BANDS[0][2] - 1e-3


def _faint_grids(seed: int, n: int = 160, noise: float = 2.7):
    """A diamond-shaped overlap (a 45-degree rotation) on an ``n`` x ``n`` grid of a smooth
    texture under noise that swamps the detail bands: the right match, the same scene 6 pixels
    off, and another scene, each as (warped, target, valid)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    valid = np.abs(xx - c) + np.abs(yy - c) <= n / 2 - 1

    def texture():
        t = ndimage.gaussian_filter(rng.normal(size=(n + 16, n + 16)), 2.0)
        return t / t.std()

    def noisy(a, dx=0):
        return (a[8 : 8 + n, 8 + dx : 8 + dx + n] + rng.normal(0, noise, (n, n))).astype(
            np.float32)

    scene, other = texture(), texture()
    target = noisy(scene)
    views = [noisy(scene), noisy(scene, 6), noisy(other)]
    return [(np.where(valid, v, np.nan).astype(np.float32), target, valid) for v in views]


def test_where_noise_swamps_the_detail_the_fine_band_is_judged_against_chance():
    """On a faint, rotated overlap neither band is clean enough to settle the match (a perfect
    match's expected detail NCC about 0.3) and the coarse band has too little room: the right
    match is told from a wrong one and from another scene by a bar set by chance and by that
    expected value, below the 0.35 a clean pair must reach."""
    below_usual = 0
    for seed in range(6):
        right, off, other = (Q._detail(*grids) for grids in _faint_grids(seed))
        assert right[0] >= right[1], seed
        below_usual += right[0] < Q.DETAIL_BANDS[0][2]
        for wrong in (off, other):
            assert wrong[0] < wrong[1] <= Q.DETAIL_BANDS[0][2], seed
    assert below_usual >= 4  # the cases the usual bar called no match
    # fainter still, not even a perfect match would stand above chance: the reason says so
    right = Q._detail(*_faint_grids(0, noise=5.0)[0])
    q = Q.Quality(0.5, 0.1, 1.0, 0.0, right[0], right[1], right[4])
    assert right[4] < right[1] and "cannot be confirmed" in Q.verdict(q, "ncc")
    clean = Q._detail(*_faint_grids(0, noise=0.3)[1])  # clean and 6 px off: a plain no
    assert math.isnan(clean[4]) and clean[1] == Q.DETAIL_BANDS[0][2]
    # detail that agrees with a plain NCC below the floor: the reason names the plain NCC
    overall = Q.verdict(Q.Quality(0.14, 0.3, 1.0, 0.0, 0.72, 0.55), "ncc")
    assert "plain NCC is 0.14" in overall and "at least 0.2" in overall
    # the bar: chance over the pixels counted, or most of what a perfect match would reach
    assert Q._noisy_bar(0.1, 8000) == round(Q.CHANCE_SIGMAS * (Q.SMALL_AREA / 8000) ** 0.5, 3)
    assert Q._noisy_bar(0.45, 8000) == round(Q.NOISY_SHARE * 0.45, 3)
    assert Q._noisy_bar(0.3, 10) == Q.SMALL_CAP


def test_on_very_noisy_images_the_plain_ncc_floor_follows_the_noise():
    """Noise of 0.8 times the range keeps a perfect match's plain NCC near 0.15, under the 0.2
    a clean pair must reach: the right answer is a match (its detail agrees), with an error
    bar that covers its error, while another scene under the same noise is not."""
    import regtool

    for which in (0, 1):
        t, s, m = make_pair(photo(which), (256, 256), (4.0, -3.0), 6.0, noise=0.8, seed=2)
        r = regtool.align(t, s)
        assert r.converged and r.ncc < Q.NCC_FLOOR
        err = float(np.abs(np.asarray(r.matrix)[:, 2] - m[:2, 2]).max())
        assert err < 3 * r.uncertainty.endpoint_px < 3.0
        _, other, _ = make_pair(photo(2), (256, 256), (4.0, -3.0), 6.0, noise=0.8, seed=2)
        assert not regtool.align(t, other).converged
