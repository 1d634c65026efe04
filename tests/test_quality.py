"""The match decision: agreement statistics and the verdict on them."""

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
