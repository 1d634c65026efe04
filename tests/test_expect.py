"""``regtool align --expect``: the mean endpoint distance and the CI check built on it."""

from __future__ import annotations

import json
import math
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from clitools import run
from synth import make_pair, photo

from regtool import io, pipeline
from regtool.cli.align import DEFAULT_TOLERANCE
from regtool.transform import (
    about_center,
    center_params,
    image_center,
    mean_endpoint_distance,
    rigid_matrix,
    rigid_params,
)

SIZE = (96, 112)  # rows, cols: not square, so a mixed-up axis shows
SHIFT, THETA_DEG = (2.5, -1.5), 3.0


def brute_force(m1: np.ndarray, m2: np.ndarray, shape: tuple[int, int]) -> float:
    """Every pixel's two endpoints, the whole grid at once: the definition, spelt out."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    pts = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    d = np.asarray(m1, dtype=float)[:2] @ pts - np.asarray(m2, dtype=float)[:2] @ pts
    return float(np.hypot(d[0], d[1]).mean())


# --------------------------------------------------------------------------------------------
# The distance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (37, 53), (250, 4)])
@pytest.mark.parametrize("block", [1, 50, 1 << 18])
def test_distance_equals_the_brute_force_mean(shape, block):
    rng = np.random.default_rng(sum(shape) + block)
    for _ in range(4):
        rigid = [rigid_matrix(*rng.normal(0, 20, 2), rng.normal(0, 0.3)) for _ in range(2)]
        affine = [np.vstack([rng.normal(0, 1, (2, 3)), [0, 0, 1]]) for _ in range(2)]
        for m1, m2 in (rigid, affine):
            got = mean_endpoint_distance(m1, m2, shape, block=block)
            assert got == pytest.approx(brute_force(m1, m2, shape), rel=1e-12, abs=1e-12)
            # symmetric, and a 2x3 matrix is the 3x3 one
            assert mean_endpoint_distance(m2[:2], m1, shape, block=block) == pytest.approx(
                got, rel=1e-12, abs=1e-12)


def test_distance_of_a_translation_and_of_equal_matrices():
    m = rigid_matrix(3.0, -4.0, 0.2)
    moved = m.copy()
    moved[:2, 2] += [3.0, 4.0]
    assert mean_endpoint_distance(m, moved, (16384, 16384)) == 5.0  # every pixel moves by 5
    assert mean_endpoint_distance(m, m, (33, 17)) == 0.0


def test_distance_does_not_depend_on_the_rotation_center_convention():
    """The same two transforms written about the center or the origin: one distance. Raw
    parameter differences would disagree (tx, ty change with the center, theta does not)."""
    shape = (301, 251)
    center = image_center(shape)
    found = about_center(12.0, -8.0, math.radians(7.0), center)
    expected = about_center(12.1, -8.0, math.radians(7.05), center)
    tx, ty, theta = rigid_params(expected)
    assert mean_endpoint_distance(found, rigid_matrix(tx, ty, theta), shape) == pytest.approx(
        brute_force(found, expected, shape), rel=1e-12)


def test_distance_of_a_large_grid_needs_no_array_of_its_size():
    shape = (2048, 2048)  # the brute force would hold 2 x 4M float64: 64 MiB at least
    m1, m2 = rigid_matrix(1.0, 2.0, 0.01), rigid_matrix(0.0, 0.0, 0.0)
    tracemalloc.start()
    try:
        got = mean_endpoint_distance(m1, m2, shape)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak
    # against the same sum done a row at a time in float64
    x = np.arange(shape[1], dtype=float)
    d = m1[:2] - m2[:2]
    rows = [np.hypot(d[0, 0] * x + d[0, 1] * y + d[0, 2], d[1, 0] * x + d[1, 1] * y + d[1, 2])
            .sum() for y in range(shape[0])]
    assert got == pytest.approx(sum(rows) / (shape[0] * shape[1]), rel=1e-12)


def test_distance_refuses_what_is_not_a_transform():
    with pytest.raises(ValueError, match="2x3 or 3x3"):
        mean_endpoint_distance(np.eye(2), np.eye(3), (4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        mean_endpoint_distance([[1, 0, np.nan], [0, 1, 0]], np.eye(3), (4, 4))
    with pytest.raises(ValueError, match="positive"):
        mean_endpoint_distance(np.eye(3), np.eye(3), (0, 4))


def test_compare_transforms_reports_both_in_the_public_convention():
    shape = (96, 112)
    center = image_center(shape)
    found = about_center(2.5, -1.5, math.radians(3.0), center)
    expected = about_center(2.5, -1.0, math.radians(3.0), center)
    comparison = pipeline.compare_transforms(found, expected, shape, 0.4)
    assert comparison.distance == pytest.approx(0.5, rel=1e-12)  # a pure shift of 0.5 px
    assert not comparison.within
    assert pipeline.compare_transforms(found, expected, shape, 0.5).within
    assert comparison.found["shift"] == pytest.approx([2.5, -1.5])
    assert comparison.expected["shift"] == pytest.approx([2.5, -1.0])
    assert comparison.expected["theta_deg"] == pytest.approx(3.0)
    assert comparison.found["tx"] == pytest.approx(found[0, 2])
    assert comparison.shape == shape


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    target, source, truth = make_pair(photo(0), SIZE, SHIFT, THETA_DEG)
    return (np.clip(target * 255, 0, 255).round().astype(np.uint8),
            np.clip(source * 255, 0, 255).round().astype(np.uint8), truth)


@pytest.fixture
def work(tmp_path, monkeypatch, pair):
    target, source, _ = pair
    io.write_image(tmp_path / "target.png", target)
    io.write_image(tmp_path / "source.png", source)
    monkeypatch.chdir(tmp_path)
    return tmp_path




def expected_file(path: Path, matrix: np.ndarray, **extra) -> str:
    tx, ty, theta = rigid_params(matrix)
    path.write_text(json.dumps({"tx": tx, "ty": ty, "theta_deg": math.degrees(theta),
                                **extra}))
    return str(path)


def offset(matrix: np.ndarray, dx: float, dtheta_deg: float = 0.0) -> np.ndarray:
    """``matrix`` shifted by ``dx`` and turned by ``dtheta_deg`` about the target's center."""
    sx, sy, theta = center_params(matrix, image_center(SIZE))
    return about_center(sx + dx, sy, theta + math.radians(dtheta_deg), image_center(SIZE))


def test_within_the_tolerance_exits_0(work, pair):
    expect = expected_file(work / "truth.json", pair[2])
    result = run("align", "target.png", "source.png", "--expect", expect)
    assert result.exit_code == 0, result.output
    line = next(s for s in result.stdout.splitlines() if s.startswith("expected"))
    distance = float(re.search(r"expected\s+(\S+) px", line).group(1))
    doc = json.loads((work / "source_aligned.json").read_text())
    assert distance == pytest.approx(
        mean_endpoint_distance(doc["matrix"], pair[2], SIZE), rel=1e-3)
    assert distance < 0.05
    assert f"(tolerance {DEFAULT_TOLERANCE:g} px): within" in line
    assert result.stderr == ""


def test_a_previous_align_json_is_an_expectation(work):
    assert run("align", "target.png", "source.png", "-o", "ref.png").exit_code == 0
    result = run("align", "target.png", "source.png", "--expect", "ref.json", "--tolerance",
                 "0", "-q")  # the same run twice: the same transform, distance 0
    assert result.exit_code == 0, result.output
    assert result.output == ""


def test_beyond_the_tolerance_exits_1_with_both_transforms(work, pair):
    wrong = offset(pair[2], 0.5, 0.2)
    expect = expected_file(work / "wrong.json", wrong)
    result = run("align", "target.png", "source.png", "--expect", expect, "--quiet")
    assert result.exit_code == 1
    assert result.stdout == ""  # --quiet: the failed check alone, on stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    doc = json.loads((work / "source_aligned.json").read_text())  # outputs written anyway
    assert (work / "source_aligned.png").is_file()
    distance = mean_endpoint_distance(doc["matrix"], wrong, SIZE)
    assert distance > DEFAULT_TOLERANCE
    assert lines[0].startswith(f"regtool: the transform found is {distance:.4g} px from the "
                               f"one expected in {expect} (beyond the tolerance of 0.1 px")
    assert "112x96 target" in lines[0] and "outputs written anyway" in lines[0]
    found, expected = lines[1].split(), lines[2].split()
    assert found[0] == "found" and expected[0] == "expected"
    for key in ("tx", "ty", "theta_deg", "shift"):
        assert key in found and key in expected
    assert float(found[found.index("theta_deg") + 1].rstrip(",")) == pytest.approx(
        doc["theta_deg"], abs=1e-4)
    assert float(expected[expected.index("theta_deg") + 1].rstrip(",")) == pytest.approx(
        THETA_DEG + 0.2, abs=1e-3)
    # the same run with a tolerance that covers the distance passes
    again = run("align", "target.png", "source.png", "--expect", expect, "--tolerance",
                f"{distance * 1.01:.6f}", "-q")
    assert again.exit_code == 0, again.output


def test_a_registration_that_does_not_converge_stays_exit_1(work, pair):
    noise = np.random.default_rng(0).integers(0, 256, (SIZE[0], SIZE[1]), dtype=np.uint8)
    io.write_image(work / "noise.png", noise)
    expect = expected_file(work / "truth.json", pair[2])
    result = run("align", "target.png", "noise.png", "--expect", expect, "--tolerance", "1e6")
    assert result.exit_code == 1
    assert "registration did not converge" in result.stderr
    assert "within the tolerance of 1e+06 px" in result.stderr  # the comparison, for the log
    assert (work / "noise_aligned.json").is_file()


@pytest.mark.parametrize("content, words", [
    ('{"tx": 1, ', "not valid json"),
    ("[1, 2]", "not a regtool parameter document"),
    ('{"tx": 1, "ty": 2}', 'no "theta"'),
    ('{"tx": 1, "ty": 2, "theta_deg": 3, "target_shape": [50, 60]}', "60x50 target"),
    ('{"tx": 1, "ty": 2, "theta_deg": 3, "source_shape": [96, 100]}', "100x96 source"),
])
def test_a_broken_expected_file_is_bad_input(work, content, words):
    (work / "e.json").write_text(content)
    result = run("align", "target.png", "source.png", "--expect", "e.json")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regtool: error: e.json: "), result.stderr
    assert words in lines[0].lower()
    assert result.stdout == "" and "Traceback" not in result.output
    assert sorted(p.name for p in work.iterdir()) == ["e.json", "source.png", "target.png"]


def test_expect_usage_errors_write_nothing(work, pair):
    expect = expected_file(work / "truth.json", pair[2])
    cases = [
        (["--expect", "missing.json"], "missing.json: no such file"),
        (["--tolerance", "0.5"], "--tolerance goes with --expect"),
        (["--expect", expect, "--tolerance", "nan"], "finite"),
        (["--expect", expect, "--tolerance", "-1"], "--tolerance"),
        # the default parameter file would overwrite the expectation
        (["--expect", "source_aligned.json"], "source_aligned.json: output would overwrite"),
    ]
    (work / "source_aligned.json").write_text(Path(expect).read_text())
    for extra, words in cases:
        result = run("align", "target.png", "source.png", *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, extra
    result = run("align", "target.png", "source.png", "source.png", "--expect", expect)
    assert result.exit_code == 2 and "one pair" in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["source.png", "source_aligned.json",
                                                      "target.png", "truth.json"]
