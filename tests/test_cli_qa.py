"""QA pictures on the command line (``align --qa``, ``--qa-dir``, ``stack --qa``) and
``--max-pixels`` on every command that reads images."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from clitools import as_uint8, run
from clitools import tree as listing
from synth import make_pair, photo

from regtool import batch, io, qa
from regtool.cli import options as cli_options
from regtool.pipeline import AlignOptions

SIZE = (80, 96)  # rows, cols




@pytest.fixture(scope="module")
def pair():
    target, source, _ = make_pair(photo(0), SIZE, (2.0, -1.5), 3.0)
    return as_uint8(target), as_uint8(source)


@pytest.fixture
def work(tmp_path, monkeypatch, pair):
    io.write_image(tmp_path / "target.png", pair[0])
    io.write_image(tmp_path / "source.png", pair[1])
    monkeypatch.chdir(tmp_path)
    return tmp_path






def one_line_error(result, prefix: str, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("regtool: error: " + prefix), lines[0]
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def red_pixels(picture: np.ndarray) -> int:
    r, g, b = (picture[..., i].astype(int) for i in range(3))
    return int(np.count_nonzero((r > 180) & (g < 90) & (b < 90)))


# --------------------------------------------------------------------------------------------
# align --qa
# --------------------------------------------------------------------------------------------


def test_align_qa_writes_the_panel_with_the_outputs(work, pair):
    result = run("align", "target.png", "source.png", "--qa", "check.png")
    assert result.exit_code == 0, result.output
    assert "qa         check.png" in result.stdout
    picture = io.read_image("check.png")
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    # a 96 px wide image is enlarged: three panels of at least MIN_SIDE
    assert picture.shape[1] >= 3 * qa.MIN_SIDE
    doc = json.loads(Path("source_aligned.json").read_text())
    assert doc["qa"] == "check.png"
    # the panel drawn from the parameter file is the one written: the worker's arrays and
    # the document agree
    again = qa.pair_panel(*pair, doc)
    assert again.shape == picture.shape
    assert np.mean(np.abs(again.astype(int) - picture.astype(int))) < 1.0  # the time differs
    assert listing(work) == ["check.png", "source.png", "source_aligned.json",
                             "source_aligned.png", "target.png"]
    # without --qa the document says so
    assert run("align", "target.png", "source.png", "-o", "plain.png").exit_code == 0
    assert json.loads(Path("plain.json").read_text())["qa"] is None


def test_align_qa_of_a_failed_match_is_drawn_too(work):
    noise = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8)
    io.write_image("noise.png", noise)
    result = run("align", "target.png", "noise.png", "--qa", "bad.png", "-q")
    assert result.exit_code == 1
    assert red_pixels(io.read_image("bad.png")) > 200  # "NOT CONVERGED: ..." in red


@pytest.mark.parametrize("qa_path, prefix, words", [
    ("check.gif", "check.gif: ", ("use .png",)),
    ("missing/check.png", "missing/check.png: ", ("does not exist",)),
    ("source.png", "source.png: ", ("overwrite an input",)),
    ("source_aligned.png", "source_aligned.png: ", ("overwrite the aligned image",)),
    ("out.png", "out.png: ", ("overwrite the parameter file",)),
])
def test_align_qa_that_cannot_be_written_is_refused_before_any_work(work, qa_path, prefix,
                                                                     words):
    extra = ["--params", "out.png", "-o", "a.png"] if qa_path == "out.png" else []
    before = listing(work)
    one_line_error(run("align", "target.png", "source.png", "--qa", qa_path, *extra), prefix,
                   *words)
    assert listing(work) == before


def test_align_qa_failing_to_write_leaves_no_output(work, monkeypatch):
    real = io.write_image

    def full_disk(path, image):
        if str(path).endswith("check.png"):
            raise io.ImageError(path, "cannot write the file (No space left on device)")
        real(path, image)

    monkeypatch.setattr(io, "write_image", full_disk)
    before = listing(work)
    one_line_error(run("align", "target.png", "source.png", "--qa", "check.png"),
                   "check.png: ", "No space left")
    assert listing(work) == before  # the aligned image written first was removed


def test_qa_options_belong_to_one_pair_or_to_a_batch(work):
    one_line_error(run("align", "target.png", "source.png", "--qa-dir", "qa"), "",
                   "--qa-dir applies to batches")
    one_line_error(run("align", "target.png", "source.png", "source.png", "--qa", "x.png"), "",
                   "--qa-dir DIR")
    assert listing(work) == ["source.png", "target.png"]


# --------------------------------------------------------------------------------------------
# A batch's --qa-dir
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sources(work, pair):
    os.mkdir("frames")
    for name in ("a", "b"):
        io.write_image(f"frames/{name}.png", pair[1])
    return work


def test_batch_qa_dir_draws_one_picture_per_source(sources):
    result = run("align", "target.png", "frames", "-o", "out", "--qa-dir", "out/qa", "-j", "1")
    assert result.exit_code == 0, result.output
    assert "qa pictures    out/qa/<stem>_qa.png" in result.stdout
    assert sorted(os.listdir("out/qa")) == ["a_qa.png", "b_qa.png"]
    for name in ("a", "b"):
        doc = json.loads(Path(f"out/{name}_aligned.json").read_text())
        assert doc["qa"] == os.path.join("out/qa", f"{name}_qa.png")
        assert io.read_image(doc["qa"]).shape[2] == 3
    # the pictures are outputs: --skip-existing finds them complete
    again = run("align", "target.png", "frames", "-o", "out", "--qa-dir", "out/qa",
                "--skip-existing", "-j", "1")
    assert again.exit_code == 0 and "skipped        2" in again.stdout


def test_skip_existing_considers_the_qa_picture(sources):
    """finished_row: a source is finished only with the picture this batch asks for."""
    with_qa = batch.plan_batch("target.png", ["frames"], "out", qa_folder="qa")
    batch.prepare_folder(with_qa)
    for source in with_qa.sources:  # the worker's task, here, in this process
        row = batch.align_source("target.png", None, source, None, "out", AlignOptions(), "qa")
        assert row["status"] == batch.DONE, row
    assert all(batch.finished_row(with_qa, s) is not None for s in with_qa.sources)
    os.remove("qa/a_qa.png")  # a picture lost: that source is to be done again
    assert batch.finished_row(with_qa, "frames/a.png") is None
    assert batch.finished_row(with_qa, "frames/b.png") is not None
    other = batch.plan_batch("target.png", ["frames"], "out", qa_folder="elsewhere")
    os.mkdir("elsewhere")
    Path("elsewhere/b_qa.png").write_bytes(Path("qa/b_qa.png").read_bytes())
    # a picture there, but the parameter file names another: not this batch's output
    assert batch.finished_row(other, "frames/b.png") is None
    without = batch.plan_batch("target.png", ["frames"], "out")
    assert batch.finished_row(without, "frames/b.png") is not None


def test_batch_qa_dir_over_an_input_is_refused(sources, pair):
    io.write_image("frames/a_qa.png", pair[1])  # a picture of an earlier batch, now a source
    with pytest.raises(batch.BatchError, match="a_qa.png: an output of frames/a.png"):
        batch.plan_batch("target.png", ["frames/a.png", "frames/b.png", "frames/a_qa.png"],
                         "out", qa_folder="frames")
    result = run("align", "target.png", "frames", "-o", "out", "--qa-dir", "frames")
    assert result.exit_code == 2 and "would overwrite this input" in result.stderr
    assert not os.path.exists("out")


# --------------------------------------------------------------------------------------------
# stack --qa
# --------------------------------------------------------------------------------------------


def make_stack(n: int = 6, blank: int | None = None) -> np.ndarray:
    """uint8 frames of a drifting scene; frame ``blank`` constant (held)."""
    frames = []
    for k in range(n):
        target, _, _ = make_pair(photo(0), (64, 64), (0.0, 0.0), 0.0)
        _, moved, _ = make_pair(photo(0), (64, 64), (0.4 * k, -0.3 * k), 0.2 * k)
        frame = as_uint8(moved if k else target)
        if k == blank:
            frame[:] = 90
        frames.append(frame)
    return np.stack(frames)


def test_stack_qa_draws_the_drift_with_the_held_frame(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("movie.tif", make_stack(blank=3))
    result = run("stack", "movie.tif", "--qa", "drift.png", "-j", "1")
    assert result.exit_code == 1, result.output  # frame 3 held
    assert "qa         drift.png" in result.stdout
    picture = io.read_image("drift.png")
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[1] >= 800
    assert red_pixels(picture) > 50  # the held frame marked
    assert sorted(os.listdir(".")) == ["drift.png", "movie.tif", "movie_aligned.tif",
                                       "movie_aligned_transforms.csv",
                                       "movie_aligned_transforms.json"]


def test_stack_qa_without_matplotlib_says_how_to_get_it_before_any_work(tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("movie.tif", make_stack())
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    one_line_error(run("stack", "movie.tif", "--qa", "drift.png"), "--qa: ",
                   "needs matplotlib", "pip install 'regtool[plot]'")
    assert os.listdir(".") == ["movie.tif"]


@pytest.mark.parametrize("qa_path, words", [
    ("out.tif", "overwrite the aligned stack"),
    ("out_transforms.csv", "use .png"),
    ("movie.tif", "overwrite an input"),
    ("nowhere/drift.png", "does not exist"),
])
def test_stack_qa_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch,
                                                                    qa_path, words):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("movie.tif", make_stack())
    one_line_error(run("stack", "movie.tif", "-o", "out.tif", "--qa", qa_path), f"{qa_path}: ",
                   words)
    assert os.listdir(".") == ["movie.tif"]


# --------------------------------------------------------------------------------------------
# --max-pixels
# --------------------------------------------------------------------------------------------


def test_max_pixels_default_is_the_readers():
    assert cli_options.DEFAULT_MAX_PIXELS == io.DEFAULT_MAX_PIXELS


@pytest.fixture
def big(tmp_path, monkeypatch):
    """100 x 100 images: 10000 pixels, refused at 5000, accepted at 20000."""
    target, source, _ = make_pair(photo(1), (100, 100), (1.5, -1.0), 2.0)
    io.write_image(tmp_path / "t.png", as_uint8(target))
    io.write_image(tmp_path / "s.png", as_uint8(source))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_align_max_pixels(big):
    line = one_line_error(run("align", "t.png", "s.png", "--max-pixels", "5000"), "t.png: ",
                          "100x100", "--max-pixels")
    assert "5000" in line
    assert listing(big) == ["s.png", "t.png"]
    result = run("align", "t.png", "s.png", "--max-pixels", "20000", "-q")
    assert result.exit_code == 0, result.output
    # the mask is read under the same limit
    io.write_image("m.png", np.ones((100, 100), dtype=np.uint8))
    one_line_error(run("align", "s.png", "s.png", "--target-mask", "m.png", "-o", "x.png",
                       "--max-pixels", "5000"), "s.png: ", "--max-pixels")
    result = run("align", "t.png", "s.png", "--max-pixels", "0")
    assert result.exit_code == 2 and "--max-pixels" in result.stderr


def test_batch_max_pixels(big, pair):
    io.write_image("small.png", pair[0])  # 80 x 96: 7680 pixels
    # the target refused: before any work
    one_line_error(run("align", "t.png", "s.png", "small.png", "-o", "out", "--max-pixels",
                       "5000"), "t.png: ", "--max-pixels")
    assert not os.path.exists("out")
    # a source refused: its row says why, the others go on (in the worker, in this process)
    plan = batch.plan_batch("small.png", ["s.png"], "out", max_pixels=8000)
    batch.check_inputs(plan)
    batch.prepare_folder(plan)
    row = batch.align_source("small.png", None, "s.png", None, "out", AlignOptions(), None,
                             plan.max_pixels)
    assert row["status"] == batch.FAILED
    assert row["reason"].startswith("s.png: declares 100x100 pixels") and "--max-pixels" in (
        row["reason"])
    assert os.listdir("out") == []


def test_stack_max_pixels(big):
    tifffile.imwrite("movie.tif", make_stack(n=3), photometric="minisblack")  # 4096 px a frame
    line = one_line_error(run("stack", "movie.tif", "--max-pixels", "4000"), "movie.tif: ",
                          "64x64", "--max-pixels")
    assert "frame" in line
    os.mkdir("frames")
    for k in range(2):
        io.write_image(f"frames/f{k}.png", io.read_image("t.png"))
    one_line_error(run("stack", "frames", "--max-pixels", "5000"), "frames/f0.png: ",
                   "--max-pixels")
    assert sorted(os.listdir(".")) == ["frames", "movie.tif", "s.png", "t.png"]


def test_warp_max_pixels(big):
    assert run("align", "t.png", "s.png", "-q").exit_code == 0
    one_line_error(run("warp", "s.png", "--params", "s_aligned.json", "-o", "w.png",
                       "--max-pixels", "5000"), "s.png: ", "--max-pixels")
    assert not os.path.exists("w.png")
    result = run("warp", "s.png", "--params", "s_aligned.json", "-o", "w.png",
                 "--max-pixels", "20000")
    assert result.exit_code == 0 and os.path.isfile("w.png")
    Path("p.csv").write_text("x,y\n1,2\n")
    result = run("warp", "--points", "p.csv", "--params", "s_aligned.json", "--max-pixels", "9")
    assert result.exit_code == 2 and "--max-pixels applies to images" in result.stderr
