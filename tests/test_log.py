"""The iteration log: the solvers' ``log`` callback, ``align(log=...)``, ``align --log`` and a
batch's ``--log-dir``."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from clitools import as_uint8, run
from clitools import tree as listing
from scipy import ndimage
from synth import make_pair, photo

import regtool
from regtool import batch, io, pipeline
from regtool import loss as L
from regtool import optimize as O
from regtool.pipeline import AlignOptions
from regtool.transform import image_center, max_displacement, rigid_matrix

HEADER = ["level", "iteration", "loss", "step_px", "damping", "accepted", "elapsed_ms"]




@pytest.fixture(scope="module")
def noisy():
    """A noisy pair on which Levenberg-Marquardt rejects steps at level 0 (checked below)."""
    target, source, _ = make_pair(photo(0), (128, 160), (5.0, -3.0), 12.0, noise=0.1, seed=2)
    return as_uint8(target), as_uint8(source)


@pytest.fixture
def work(tmp_path, monkeypatch, noisy):
    io.write_image(tmp_path / "target.png", noisy[0])
    io.write_image(tmp_path / "source.png", noisy[1])
    monkeypatch.chdir(tmp_path)
    return tmp_path






def read_log(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]


def one_line_error(result, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("regtool: error: ") and "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------
# The solvers and the library
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def level():
    """A fine texture against a noisy copy of itself: far from the start, at the noise floor,
    Gauss-Newton's steps raise the objective and are rejected."""
    rng = np.random.default_rng(2)
    f = ndimage.gaussian_filter(rng.random((48, 48)), 0.6).astype(np.float32)
    g = f + 0.05 * rng.standard_normal(f.shape).astype(np.float32)
    return L.prepare_level(f, None, g, None, 2.0)


@pytest.mark.parametrize("name", list(O.SOLVERS))
def test_each_solver_logs_every_iteration(level, name):
    rows: list[dict] = []
    start = rigid_matrix(3.7, -5.9, 0.144)
    out = O.SOLVERS[name](level, start, image_center(level.shape), "ncc", 1e-3, 40, 0.25,
                          log=rows.append)
    assert [r["iteration"] for r in rows] == list(range(1, out.iterations + 1))
    assert all(set(r) == {"iteration", "loss", "step_px", "damping", "accepted"} for r in rows)
    assert all(math.isfinite(r["loss"]) for r in rows if r["accepted"])
    # the log changes nothing
    again = O.SOLVERS[name](level, start, image_center(level.shape), "ncc", 1e-3, 40, 0.25)
    assert np.array_equal(again.matrix, out.matrix) and again.iterations == out.iterations
    if name != "gauss-newton":
        # a line search or a fixed rate never rejects; a row that ends the level in failure
        # (the overlap lost, gd diverging) is not accepted
        failed = out.reason is not None and not out.reason.startswith("did not converge")
        assert all(r["accepted"] for r in rows[:-1])
        assert rows[-1]["accepted"] is not failed


def test_gauss_newton_logs_rejected_points_and_rising_damping(level, monkeypatch):
    rows: list[dict] = []
    # the retries go on until a step is below the tolerance only without the stall rule (see
    # the next test)
    monkeypatch.setattr(O, "STALL_SHARE", 0.0)
    # ssd: the loss is the objective the step is judged on (ncc's objective also moves with
    # the target's variance over the overlap)
    out = O.gauss_newton(level, rigid_matrix(3.7, -5.9, 0.144), image_center(level.shape),
                         "ssd", 1e-3, 50, 0.25, log=rows.append)
    assert out.converged
    assert len(rows) == out.iterations
    first = next(i for i, r in enumerate(rows) if not r["accepted"])
    assert first > 0 and rows[first - 1]["accepted"]
    # a rejected point's loss is above the last accepted one's; its retried step is damped more
    assert rows[first]["loss"] > rows[first - 1]["loss"]
    assert rows[first]["damping"] == pytest.approx(1e-3)
    run_of = [r for r in rows[first:] if not r["accepted"]]
    for a, b in zip(run_of, run_of[1:], strict=False):
        if b["iteration"] == a["iteration"] + 1:
            assert b["damping"] == pytest.approx(10 * a["damping"])
    assert rows[-1]["step_px"] < 1e-3  # the step that met the tolerance


def test_a_rejected_step_inside_the_noise_ends_the_level(monkeypatch):
    # At the noise floor a rejected step that moved the image by less than STALL_SHARE times
    # the white-noise error ends the level at the last accepted point: the rejected point's row
    # has no step, and the answer lies well within that error of where the damped retries
    # would have ended, iterations earlier.
    t, s, m = make_pair(photo(1), (160, 200), (2.0, -1.5), 3.0, noise=0.06, seed=2)
    level = L.prepare_level(np.asarray(t, np.float32), None, np.asarray(s, np.float32), None,
                            1.0)
    center = image_center(level.shape)
    start = m @ np.array([[1.0, 0.0, 0.05], [0.0, 1.0, -0.04], [0.0, 0.0, 1.0]])
    rows: list[dict] = []
    out = O.gauss_newton(level, start, center, "ncc", 1e-3, 50, 0.25, log=rows.append)
    assert out.converged and len(rows) == out.iterations
    assert not rows[-1]["accepted"] and rows[-1]["step_px"] is None
    assert rows[-2]["accepted"] and rows[-2]["step_px"] >= 1e-3
    noise = O._white_noise_error(out.hessian, out.objective, level.shape)
    assert rows[-2]["step_px"] < O.STALL_SHARE * noise
    # the answer is the last accepted point, where the error bars' evaluation was made
    assert np.array_equal(out.evaluation.matrix, out.matrix)
    monkeypatch.setattr(O, "STALL_SHARE", 0.0)
    retried = O.gauss_newton(level, start, center, "ncc", 1e-3, 50, 0.25)
    assert retried.converged and retried.iterations > out.iterations
    assert max_displacement(np.linalg.inv(retried.matrix) @ out.matrix, level.shape) < 0.2 * noise


def test_align_log_gives_level_records_and_the_same_result(noisy):
    target, source = noisy
    records: list[regtool.IterationRecord] = []
    logged = regtool.align(target, source, log=records.append)
    plain = regtool.align(target, source)
    assert np.array_equal(logged.matrix, plain.matrix)
    assert logged.to_dict()["levels"][0]["iterations"] == plain.levels[0].iterations
    assert all(isinstance(r, regtool.IterationRecord) for r in records)
    assert len(records) == sum(rec.iterations for rec in logged.levels)
    assert any(not r.accepted for r in records if r.level == 0)
    elapsed = [r.elapsed_ms for r in records]
    assert elapsed == sorted(elapsed) and elapsed[-1] <= 1e3 * logged.time_s
    # steps are in full-resolution pixels: each level stops below its tolerance there, or at a
    # rejected point without a step (a step inside the noise, see above)
    for rec in logged.levels:
        last = [r for r in records if r.level == rec.level][-1]
        assert (last.step_px is None and not last.accepted
                or last.step_px < max(1e-3, 0.01) * 2**rec.level)


# --------------------------------------------------------------------------------------------
# align --log
# --------------------------------------------------------------------------------------------


def test_align_log_writes_a_row_per_iteration(work):
    result = run("align", "target.png", "source.png", "--log", "run.csv")
    assert result.exit_code == 0, result.output
    assert "log        run.csv" in result.stdout
    doc = json.loads(Path("source_aligned.json").read_text())
    assert doc["log"] == "run.csv"
    header, rows = read_log("run.csv")
    assert header == HEADER
    assert len(rows) == sum(rec["iterations"] for rec in doc["levels"])
    # the levels in the order they ran, each's iterations 1, 2, ... in order
    ran = [int(r["level"]) for r in rows]
    assert list(dict.fromkeys(ran)) == [rec["level"] for rec in doc["levels"]]
    assert ran == sorted(ran, reverse=True)
    for rec in doc["levels"]:
        mine = [r for r in rows if int(r["level"]) == rec["level"]]
        assert [int(r["iteration"]) for r in mine] == list(range(1, rec["iterations"] + 1))
        assert any(r["accepted"] == "true" for r in mine)
        last = mine[-1]
        assert (last["step_px"] == "" and last["accepted"] == "false"
                or float(last["step_px"]) < max(1e-3, 0.01) * 2 ** rec["level"])
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert {r["accepted"] for r in rows} == {"true", "false"}  # this pair rejects steps
    level0 = [r for r in rows if r["level"] == "0"]
    # --tol's default, in full-resolution pixels, or a rejected step inside the noise
    assert level0[-1]["step_px"] == "" or float(level0[-1]["step_px"]) < 1e-3
    elapsed = [float(r["elapsed_ms"]) for r in rows]
    assert elapsed == sorted(elapsed)


@pytest.mark.parametrize("log_path, extra, words", [
    ("missing/run.csv", [], ("missing/run.csv: ", "does not exist")),
    ("source.png", [], ("source.png: ", "overwrite an input")),
    ("source_aligned.json", [], ("overwrite the parameter file",)),
    ("check.png", ["--qa", "check.png"], ("overwrite the QA picture",)),
    (".", [], ("is a directory",)),
])
def test_align_log_that_cannot_be_written_is_refused_before_any_work(work, log_path, extra,
                                                                      words):
    before = listing(work)
    one_line_error(run("align", "target.png", "source.png", "--log", log_path, *extra), *words)
    assert listing(work) == before


def test_align_log_failing_to_write_leaves_no_output(work, monkeypatch):
    def full_disk(path, text):
        raise io.ImageError(path, "cannot write the file (No space left on device)")

    monkeypatch.setattr(io, "write_text", full_disk)
    before = listing(work)
    one_line_error(run("align", "target.png", "source.png", "--log", "run.csv"),
                   "run.csv: ", "No space left")
    assert listing(work) == before  # the aligned image written first was removed


def test_log_options_belong_to_one_pair_or_to_a_batch(work):
    one_line_error(run("align", "target.png", "source.png", "--log-dir", "logs"),
                   "--log-dir applies to batches")
    one_line_error(run("align", "target.png", "source.png", "source.png", "--log", "x.csv"),
                   "--log-dir DIR")
    assert listing(work) == ["source.png", "target.png"]


def test_log_text_formats_missing_values_as_empty():
    text = pipeline.log_text([regtool.IterationRecord(0, 1, math.nan, None, 0.0, False, 1.5)])
    assert text == ",".join(HEADER) + "\n0,1,,,0,false,1.500\n"


# --------------------------------------------------------------------------------------------
# A batch's --log-dir
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sources(work, noisy):
    os.mkdir("frames")
    for name in ("a", "b"):
        io.write_image(f"frames/{name}.png", noisy[1])
    return work


def test_batch_log_dir_writes_one_per_source_and_resume_honours_it(sources):
    result = run("align", "target.png", "frames", "-o", "out", "--log-dir", "out/logs", "-j", "1")
    assert result.exit_code == 0, result.output
    assert "logs           out/logs/<stem>_log.csv" in result.stdout
    assert sorted(os.listdir("out/logs")) == ["a_log.csv", "b_log.csv"]
    for name in ("a", "b"):
        doc = json.loads(Path(f"out/{name}_aligned.json").read_text())
        assert doc["log"] == os.path.join("out/logs", f"{name}_log.csv")
        header, rows = read_log(doc["log"])
        assert header == HEADER
        assert len(rows) == sum(rec["iterations"] for rec in doc["levels"])
    # the logs are outputs: --skip-existing finds them complete, and redoes a lost one
    os.remove("out/logs/a_log.csv")
    plan = batch.plan_batch("target.png", ["frames"], "out", log_folder="out/logs")
    assert batch.finished_row(plan, "frames/a.png") is None
    assert batch.finished_row(plan, "frames/b.png") is not None
    assert batch.finished_row(batch.plan_batch("target.png", ["frames"], "out"),
                              "frames/a.png") is not None  # without logs, a is complete
    again = run("align", "target.png", "frames", "-o", "out", "--log-dir", "out/logs",
                "--skip-existing", "-j", "1")
    assert again.exit_code == 0 and "skipped        1" in again.stdout, again.output
    assert sorted(os.listdir("out/logs")) == ["a_log.csv", "b_log.csv"]


def test_batch_log_is_an_output_of_the_source(sources):
    """A lost task's log goes with its other outputs; a log over an input is refused."""
    paths = batch._output_candidates("frames/a.png", "out", None, "logs")
    assert os.path.join("logs", "a_log.csv") in paths
    row = batch.align_source("target.png", None, "frames/a.png", None, ".", AlignOptions(),
                             None, log_folder=".")
    assert row["status"] == batch.DONE, row
    assert read_log("a_log.csv")[0] == HEADER
    with pytest.raises(batch.BatchError, match="a_log.csv: an output of frames/a.png"):
        batch.plan_batch("a_log.csv", ["frames"], "out", log_folder=".")


def test_batch_log_dir_that_is_a_file_is_refused(sources):
    Path("logs").write_text("")
    result = run("align", "target.png", "frames", "-o", "out", "--log-dir", "logs", "-j", "1")
    line = one_line_error(result, "logs: ", "log folder")
    assert "is a file" in line
    assert not os.path.exists("out/a_aligned.png")
