"""``regtool warp``: a saved transform applied to other images and to points, end to end."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clitools import listing, run

import regtool
from regtool import io

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
SIZE = 96
THETA_DEG = 3.0
SHIFT = (2.5, -1.5)  # about the target's center
# Target pixels away from the center, where a transform and its inverse differ by pixels.
TARGET_POINTS = np.array([[12.0, 10.0], [80.5, 14.25], [70.0, 85.0], [8.0, 60.0]])


def true_matrix() -> np.ndarray:
    """The 3x3 target->source matrix the test pair was made with."""
    t = math.radians(THETA_DEG)
    c, s = math.cos(t), math.sin(t)
    cx = cy = (SIZE - 1) / 2.0
    return np.array([[c, -s, cx + SHIFT[0] - (c * cx - s * cy)],
                     [s, c, cy + SHIFT[1] - (s * cx + c * cy)], [0.0, 0.0, 1.0]])


def make_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 96x96 uint8 crop of a photograph and the scene moved: ``source(M x) = target(x)``."""
    photo = io.read_image(SAMPLES / "camera.png")
    patch = photo[148:148 + SIZE + 64, 148:148 + SIZE + 64]
    target = patch[32:32 + SIZE, 32:32 + SIZE]
    to_patch = np.array([[1.0, 0, 32], [0, 1.0, 32], [0, 0, 1]])
    source = regtool.warp(patch, to_patch @ np.linalg.inv(true_matrix()), (SIZE, SIZE))
    return target, source


def label_image() -> np.ndarray:
    """A uint8 label image on the source's grid: 16x16 blocks labelled 1 to 7."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    return ((rows // 16 * 6 + cols // 16) % 7 + 1).astype(np.uint8)






def assert_one_line_error(result, path: str | None, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    prefix = "regtool: error: " + (f"{path}: " if path is not None else "")
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> dict[str, Path]:
    """``regtool align`` run once with cubic and once with nearest: folder per interp."""
    target, source = make_pair()
    folders = {}
    for interp in ("cubic", "nearest"):
        folder = tmp_path_factory.mktemp(f"aligned_{interp}")
        io.write_image(folder / "target.png", target)
        io.write_image(folder / "source.png", source)
        io.write_image(folder / "labels.png", label_image())
        result = run("align", folder / "target.png", folder / "source.png", "-o",
                     folder / "aligned.png", "--params", folder / "p.json", "--interp", interp,
                     "-q")
        assert result.exit_code == 0, result.stderr
        folders[interp] = folder
    return folders


@pytest.fixture
def work(tmp_path, monkeypatch, aligned) -> Path:
    """A fresh current directory holding source.png, labels.png and p.json (cubic)."""
    for name in ("source.png", "labels.png", "p.json", "aligned.png"):
        shutil.copy(aligned["cubic"] / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def matrix_of(path: Path) -> np.ndarray:
    return np.array(json.loads(path.read_text())["matrix"])


# --------------------------------------------------------------------------------------------
# (a) round trips: warp reproduces align's own output
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interp", ["cubic", "nearest"])
def test_warp_of_the_source_is_aligns_output_byte_for_byte(aligned, tmp_path, interp):
    folder = aligned[interp]
    out = tmp_path / "warped.png"
    result = run("warp", folder / "source.png", "--params", folder / "p.json", "-o", out,
                 "--interp", interp)
    assert result.exit_code == 0, result.stderr
    assert str(out) in result.stdout and result.stderr == ""
    mine, theirs = io.read_image(out), io.read_image(folder / "aligned.png")
    assert mine.dtype == theirs.dtype == np.uint8 and mine.shape == theirs.shape
    assert np.array_equal(mine, theirs)


def test_label_image_with_nearest_keeps_its_labels(aligned, tmp_path):
    folder = aligned["nearest"]
    labels = label_image()
    result = run("warp", folder / "labels.png", "--params", folder / "p.json", "-o",
                 tmp_path / "labels_aligned.png", "--interp", "nearest")
    assert result.exit_code == 0, result.stderr
    out = io.read_image(tmp_path / "labels_aligned.png")
    matrix = matrix_of(folder / "p.json")
    assert np.array_equal(out, regtool.warp(labels, matrix, (SIZE, SIZE), interp="nearest"))
    assert set(np.unique(out)) <= set(np.unique(labels)) | {0}  # 0: the fill outside
    # what nearest avoids: cubic invents labels between neighbouring blocks
    cubic = regtool.warp(labels, matrix, (SIZE, SIZE), interp="cubic")
    assert set(np.unique(cubic)) - set(np.unique(labels)) - {0}


def test_default_output_name_and_an_rgb_image(work):
    rgb = np.stack([io.read_image("source.png")] * 2 + [label_image() * 30], axis=-1)
    io.write_image("red.png", rgb)
    result = run("warp", "red.png", "--params", "p.json")
    assert result.exit_code == 0, result.stderr
    out = io.read_image(work / "red_warped.png")
    assert out.shape == (SIZE, SIZE, 3)
    assert np.array_equal(out, regtool.warp(rgb, matrix_of(work / "p.json"), (SIZE, SIZE)))
    assert np.array_equal(out[..., 0], io.read_image("aligned.png"))  # align's own output


def test_hand_written_parameters(work):
    doc = {"tx": 3.25, "ty": -2.0, "theta_deg": 4.0, "target_shape": [70, 90]}
    Path("hand.json").write_text(json.dumps(doc))
    result = run("warp", "source.png", "--params", "hand.json", "-o", "out.tif", "--fill",
                 "255", "--interp", "linear")
    assert result.exit_code == 0, result.stderr
    m = np.array([[math.cos(math.radians(4.0)), -math.sin(math.radians(4.0)), 3.25],
                  [math.sin(math.radians(4.0)), math.cos(math.radians(4.0)), -2.0]])
    expected = regtool.warp(io.read_image("source.png"), m, (70, 90), interp="linear",
                            fill=255)
    assert np.array_equal(io.read_image("out.tif"), expected)


def test_a_not_converged_transform_is_applied_with_a_warning_and_exit_1(work):
    doc = json.loads(Path("p.json").read_text())
    doc.update(converged=False, reason="did not converge in 50 iterations at level 0")
    Path("bad.json").write_text(json.dumps(doc))
    result = run("warp", "source.png", "--params", "bad.json", "-o", "out.png")
    assert result.exit_code == 1
    assert "did not converge in 50 iterations" in result.stderr
    assert np.array_equal(io.read_image("out.png"), io.read_image("aligned.png"))
    quiet = run("warp", "source.png", "--params", "bad.json", "-o", "out2.png", "-q")
    assert quiet.exit_code == 1 and quiet.stdout == "" and quiet.stderr == ""


# --------------------------------------------------------------------------------------------
# (b) stdin: align --json | warp --params -
# --------------------------------------------------------------------------------------------


def test_pipe_from_align_through_real_processes(aligned, tmp_path):
    for name in ("target.png", "source.png"):
        shutil.copy(aligned["cubic"] / name, tmp_path / name)
    python = [sys.executable, "-m", "regtool"]
    align = subprocess.Popen(python + ["align", "target.png", "source.png", "--json", "-q"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    warp = subprocess.run(python + ["warp", "source.png", "--params", "-", "-o", "piped.png"],
                          cwd=tmp_path, stdin=align.stdout, capture_output=True, text=True,
                          timeout=120)
    align.stdout.close()
    assert align.wait(timeout=120) == 0, align.stderr.read()
    align.stderr.close()
    assert warp.returncode == 0, warp.stderr
    assert "<stdin>" in warp.stdout
    piped = io.read_image(tmp_path / "piped.png")
    assert np.array_equal(piped, io.read_image(tmp_path / "source_aligned.png"))
    assert np.array_equal(piped, io.read_image(aligned["cubic"] / "aligned.png"))


def test_stdin_in_process(work):
    result = run("warp", "source.png", "--params", "-", "-o", "out.png",
                 input=Path("p.json").read_bytes())
    assert result.exit_code == 0, result.stderr
    assert np.array_equal(io.read_image("out.png"), io.read_image("aligned.png"))


@pytest.mark.parametrize("data, words", [
    (b"", ["empty", "before the pipe fail"]),
    (b"   \n", ["empty"]),
    (b"regtool: error: missing.png: no such file\n", ["not valid json"]),
    (b'{"converged": true}', ['no "matrix"']),
])
def test_bad_stdin_is_one_line_naming_stdin(work, data, words):
    before = listing(work)
    assert_one_line_error(run("warp", "source.png", "--params", "-", "-o", "out.png",
                              input=data), "<stdin>", *words)
    assert listing(work) == before


# --------------------------------------------------------------------------------------------
# (c) points
# --------------------------------------------------------------------------------------------


def write_table(path: Path, xy: np.ndarray) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["track", "frame", "X", "Y", "note"])
        for i, (x, y) in enumerate(xy):
            writer.writerow([i + 1, 7, repr(float(x)), repr(float(y)), f"cell {i}, dividing"])


def read_table(path: Path) -> tuple[list[str], list[list[str]], np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    xy = np.array([[float(r[2]), float(r[3])] for r in rows[1:]])
    return rows[0], rows[1:], xy


def test_points_tracked_in_the_source_land_where_they_are_in_the_target(work):
    m_true = true_matrix()
    source_points = TARGET_POINTS @ m_true[:2, :2].T + m_true[:2, 2]  # where they are in the source
    write_table(work / "tracks.csv", source_points)
    result = run("warp", "--points", "tracks.csv", "--params", "p.json", "-o", "mapped.csv")
    assert result.exit_code == 0, result.stderr
    assert "4 points" in result.stdout and "source -> target" in result.stdout
    header, rows, xy = read_table(work / "mapped.csv")
    assert header == ["track", "frame", "X", "Y", "note"]
    assert [r[:2] + r[4:] for r in rows] == [[str(i + 1), "7", f"cell {i}, dividing"]
                                            for i in range(4)]
    # Exactly what the saved matrix says: source = M target, so target = M^-1 source ...
    m = matrix_of(work / "p.json")
    assert np.allclose(xy, (np.linalg.inv(np.vstack([m, [0, 0, 1]])) @ np.c_[
        source_points, np.ones(4)].T)[:2].T, atol=1e-9, rtol=0)
    # ... which is where the true transform put them, to the registration's accuracy, and
    # the other direction would be pixels away.
    assert np.abs(xy - TARGET_POINTS).max() < 0.05
    wrong_way = source_points @ m[:2, :2].T + m[:2, 2]
    assert np.abs(wrong_way - TARGET_POINTS).max() > 3

    back = run("warp", "--points", "mapped.csv", "--params", "p.json", "-o", "back.csv",
               "--inverse")
    assert back.exit_code == 0, back.stderr
    assert "target -> source" in back.stdout
    _, back_rows, back_xy = read_table(work / "back.csv")
    assert np.allclose(back_xy, source_points, atol=1e-9, rtol=0)
    assert [r[4] for r in back_rows] == [r[4] for r in rows]


def test_mapped_points_follow_the_warped_image(work):
    """A bright spot of the source, warped with the JSON, sits where its point is mapped."""
    spot = np.array([[61.3, 22.7]])  # source pixels
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    blob = np.exp(-((cols - spot[0, 0]) ** 2 + (rows - spot[0, 1]) ** 2) / (2 * 2.0**2))
    io.write_image(work / "blob.tif", blob.astype(np.float32))
    assert run("warp", "blob.tif", "--params", "p.json", "-o", "blob_aligned.tif").exit_code == 0
    warped = io.read_image(work / "blob_aligned.tif").astype(float)
    centroid = np.array([(warped * cols).sum(), (warped * rows).sum()]) / warped.sum()

    write_table(work / "spot.csv", spot)
    assert run("warp", "--points", "spot.csv", "--params", "p.json").exit_code == 0
    _, _, xy = read_table(work / "spot_warped.csv")  # the default output name
    assert np.hypot(*(xy[0] - centroid)) < 0.02
    assert np.hypot(*(spot[0] - centroid)) > 2  # the spot did move


def test_points_need_no_target_shape_and_keep_the_delimiter(work):
    Path("shift.json").write_text('{"tx": 5, "ty": -2, "theta": 0}')
    Path("p.tsv").write_text("x\ty\tid\n15\t8\ta\n")
    result = run("warp", "--points", "p.tsv", "--params", "shift.json")
    assert result.exit_code == 0, result.stderr
    assert Path("p_warped.tsv").read_text() == "x\ty\tid\n10.0\t10.0\ta\n"


# --------------------------------------------------------------------------------------------
# (d) bad input: one line naming the file, exit 2, nothing written
# --------------------------------------------------------------------------------------------

GOOD_MATRIX = [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]


@pytest.mark.parametrize("text, words", [
    ('{"matrix": [[1, 0, 2], [0, 1', ["not valid json", "line 1"]),
    ("[1, 2, 3]", ["not a regtool parameter document", "a list"]),
    ('"hello"', ["not a regtool parameter document"]),
    ('{"name": "a StackReg file"}', ['no "matrix"']),
    ('{"target_shape": [96, 96]}', ['no "matrix"']),
    (json.dumps({"matrix": GOOD_MATRIX}), ['no "target_shape"']),
    (json.dumps({"matrix": GOOD_MATRIX, "target_shape": [96]}), ['"target_shape" must be']),
    (json.dumps({"matrix": GOOD_MATRIX, "target_shape": [0, 96]}), ["positive integers"]),
    (json.dumps({"matrix": GOOD_MATRIX, "target_shape": [96.5, 96]}), ["positive integers"]),
    (json.dumps({"matrix": GOOD_MATRIX, "target_shape": [True, 96]}), ["positive integers"]),
    (json.dumps({"matrix": [[1, 0], [0, 1]], "target_shape": [96, 96]}), ["2x3"]),
    (json.dumps({"matrix": [[1, 0, "2"], [0, 1, 0]], "target_shape": [96, 96]}), ["2x3"]),
    (json.dumps({"matrix": [[1, 0, None], [0, 1, 0]], "target_shape": [96, 96]}), ["2x3"]),
    ('{"matrix": [[1, 0, NaN], [0, 1, 0]], "target_shape": [96, 96]}', ["nan"]),
    (json.dumps({"matrix": [[1, 2, 0], [2, 4, 0]], "target_shape": [96, 96]}), ["singular"]),
    ('{"matrix": [[1, 0, 1%s], [0, 1, 0]], "target_shape": [96, 96]}' % ("0" * 400), ["2x3"]),
    ('{"matrix": [[1, 0, 1e999], [0, 1, 0]], "target_shape": [96, 96]}', ["2x3"]),
    ('{"tx": 1e999, "ty": 0, "theta": 0, "target_shape": [96, 96]}', ['"tx" must be']),
    (json.dumps({"matrix": [[1, 0, 0], [0, 1, 0], [1, 0, 1]], "target_shape": [96, 96]}),
     ["third row"]),
    (json.dumps({"matrix": GOOD_MATRIX, "tx": 2.5, "ty": -1.0, "theta": 0.0,
                 "target_shape": [96, 96]}), ["disagree"]),
    (json.dumps({"tx": 1, "theta_deg": 2, "target_shape": [96, 96]}), ['no "ty"']),
    (json.dumps({"tx": 1, "ty": "2", "theta": 0, "target_shape": [96, 96]}),
     ['"ty" must be a number']),
])
def test_broken_parameter_documents(work, text, words):
    Path("bad.json").write_text(text)
    before = listing(work)
    assert_one_line_error(run("warp", "source.png", "--params", "bad.json", "-o", "out.png"),
                          "bad.json", *words)
    assert listing(work) == before


@pytest.mark.parametrize("params, words", [
    ("missing.json", ["no such file"]),
    (".", ["directory"]),
    ("source.png", ["utf-8"]),
])
def test_unreadable_parameter_files(work, params, words):
    before = listing(work)
    assert_one_line_error(run("warp", "labels.png", "--params", params, "-o", "out.png"),
                          params, *words)
    assert listing(work) == before


def test_image_of_another_size_than_the_source(work):
    io.write_image("small.png", io.read_image("source.png")[:80])
    before = listing(work)
    line = assert_one_line_error(run("warp", "small.png", "--params", "p.json"), "small.png",
                                 "96x80", "96x96", "p.json")
    assert "source" in line
    assert listing(work) == before


@pytest.mark.parametrize("setup, image, args, path, words", [
    (None, "missing.png", [], "missing.png", ["no such file"]),
    ("notes.png", "notes.png", [], "notes.png", ["not an image"]),
    (None, "source.png", ["--fill", "nan"], "source.png", ["fill", "uint8"]),
    (None, "source.png", ["-o", "source.png"], "source.png", ["overwrite an input"]),
    (None, "source.png", ["-o", "p.json"], "p.json", ["overwrite an input"]),
    (None, "source.png", ["-o", "nowhere/out.png"], "nowhere/out.png", ["does not exist"]),
    (None, "source.png", ["-o", "out.gif"], "out.gif", ["extension .gif"]),
])
def test_bad_image_or_output(work, setup, image, args, path, words):
    if setup is not None:
        Path(setup).write_text("not an image at all")
    before = listing(work)
    assert_one_line_error(run("warp", image, "--params", "p.json", *args), path, *words)
    assert listing(work) == before
    assert np.array_equal(io.read_image("source.png"), io.read_image(work / "source.png"))


@pytest.mark.parametrize("table, words", [
    ("", ["empty file"]),
    ("1.5,2.5\n3,4\n", ["no header line"]),
    ("track,col,row\n1,2,3\n", ["no columns named x and y", "track, col, row"]),
    ("x,X,y\n1,2,3\n", ["2 columns x"]),
    ("id,x,y\n1,2.5,3\n2,4,abc\n", ["line 3", "y is 'abc', not a number"]),
    ("id,x,y\n1,,3\n", ["line 2", "x is empty"]),
    ("id,x,y\n1,2\n", ["line 2", "no y value"]),
    ("id,x,y\n1,nan,2\n", ["line 2", "not a finite number"]),
    ("id,x,y\n\n\n1,2,inf\n", ["line 4", "not a finite number"]),
])
def test_broken_points_tables(work, table, words):
    Path("pts.csv").write_text(table)
    before = listing(work)
    assert_one_line_error(run("warp", "--points", "pts.csv", "--params", "p.json"),
                          "pts.csv", *words)
    assert listing(work) == before


def test_points_output_never_overwrites_an_input(work):
    Path("pts.csv").write_text("x,y\n1,2\n")
    before = listing(work)
    for out in ("pts.csv", "p.json"):
        assert_one_line_error(run("warp", "--points", "pts.csv", "--params", "p.json", "-o",
                                  out), out, "overwrite an input")
    assert listing(work) == before and Path("pts.csv").read_text() == "x,y\n1,2\n"


@pytest.mark.parametrize("args, words", [
    (["--params", "p.json"], ["either image or --points"]),
    (["source.png", "--points", "pts.csv", "--params", "p.json"], ["either image"]),
    (["source.png", "--params", "p.json", "--inverse"], ["--inverse applies to --points"]),
    (["--points", "pts.csv", "--params", "p.json", "--interp", "nearest"], ["--interp"]),
    (["--points", "pts.csv", "--params", "p.json", "--fill", "0"], ["--fill"]),
    (["source.png"], ["--params"]),
    (["source.png", "--params", "p.json", "--interp", "quadratic"], ["quadratic"]),
])
def test_bad_usage_is_one_line(work, args, words):
    Path("pts.csv").write_text("x,y\n1,2\n")
    before = listing(work)
    line = assert_one_line_error(run("warp", *args), None, *words)
    assert "warp --help" in line
    assert listing(work) == before


def test_ctrl_c_while_writing_leaves_nothing(work, monkeypatch):
    def interrupted(path, tmp, *args):
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_encode", interrupted)
    before = listing(work)
    result = run("warp", "source.png", "--params", "p.json", "-o", "out.png")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert listing(work) == before


def test_warp_is_listed_in_the_group_help():
    result = run("--help")
    assert result.exit_code == 0 and "warp" in result.stdout
    assert "--inverse" in run("warp", "--help").stdout
