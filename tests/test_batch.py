"""Tests of batches: regtool.batch and ``regtool align TARGET SOURCE...``, on real small images.

A batch here is 64x64 crops of a photograph, each moved by a known rigid transform, so every
recovered parameter can be checked; the local pool, a real Dask ``LocalCluster`` and a real
``python -m regtool`` process interrupted by a signal all run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import distributed
import numpy as np
import pytest
import synth
from clitools import run

from regtool import batch, io, pipeline
from regtool.cli import align as cli_align

SHAPE = (64, 64)
SHIFT_TOL = 0.05  # px: 8-bit quantization of a 64x64 crop costs about 0.01
THETA_TOL = 0.05  # degrees


def truth(i: int) -> tuple[tuple[float, float], float]:
    """The shift (about the center, px) and the rotation (degrees) of source ``i``."""
    return (0.8 + 0.13 * i, -0.6 + 0.07 * (i % 5)), 1.5 + 0.11 * i


def as_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_target(path: Path) -> None:
    target, _, _ = synth.make_pair(synth.photo(0), SHAPE, (0.0, 0.0), 0.0)
    io.write_image(path, as_uint8(target))


def write_sources(folder: Path, n: int, prefix: str = "s") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        shift, theta = truth(i)
        _, source, _ = synth.make_pair(synth.photo(0), SHAPE, shift, theta)
        name = f"{prefix}{i:03d}.png"
        io.write_image(folder / name, as_uint8(source))
        names.append(name)
    return names


@pytest.fixture
def work(tmp_path, monkeypatch):
    """target.png and frames/s000.png ... s005.png, in the current directory."""
    write_target(tmp_path / "target.png")
    write_sources(tmp_path / "frames", 6)
    monkeypatch.chdir(tmp_path)
    return tmp_path




def rows_by_source(path: Path) -> dict[str, dict[str, str]]:
    rows = batch.read_results(os.fspath(path))
    by_source = {row["source"]: row for row in rows}
    assert len(by_source) == len(rows), "a source has two rows"
    return by_source


def assert_recovered(row: dict[str, str], i: int) -> None:
    shift, theta = truth(i)
    assert row["status"] == "done" and row["converged"] == "true", row
    assert abs(float(row["shift_x"]) - shift[0]) < SHIFT_TOL, row
    assert abs(float(row["shift_y"]) - shift[1]) < SHIFT_TOL, row
    assert abs(float(row["theta_deg"]) - theta) < THETA_TOL, row


def assert_table_matches_disk(folder: Path) -> dict[str, dict[str, str]]:
    """Every row points at complete outputs, every output has a row, no temporary is left.

    The batch ran in the folder's parent (the paths in the rows are relative to it).
    """
    rows = rows_by_source(folder / "results.csv")
    names = set(os.listdir(folder))
    assert not [n for n in names if n.startswith(".")], names  # no .part temporaries
    outputs = set()
    for row in rows.values():
        if row["status"] == "failed":
            assert row["output"] == ""
            continue
        out = folder.parent / row["output"]
        doc = json.loads(out.with_suffix(".json").read_text())
        assert doc["source"] == row["source"] and doc["output"] == row["output"]
        assert io.read_image(out).shape == SHAPE
        outputs |= {out.name, out.with_suffix(".json").name}
    assert names - {"results.csv"} == outputs
    return rows


# --------------------------------------------------------------------------------------------
# Sources and plans
# --------------------------------------------------------------------------------------------


def test_expand_sources_files_folders_and_globs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("b.tif", "a.png", "c.JPG", "notes.txt", ".hidden.png", "sub/e.png"):
        (tmp_path / "d" / name).write_bytes(b"x")
    (tmp_path / "x.png").write_bytes(b"x")
    assert batch.expand_sources(["d"]) == ["d/a.png", "d/b.tif", "d/c.JPG"]  # sorted, by ext
    assert batch.expand_sources(["d/*.png"]) == ["d/a.png"]  # a glob the shell did not expand
    assert batch.expand_sources(["d/**/*.png"]) == ["d/a.png", "d/sub/e.png"]
    # named twice (a file and its folder): once, where it first appears
    assert batch.expand_sources(["d/b.tif", "d", "./x.png", "x.png"]) == [
        "d/b.tif", "d/a.png", "d/c.JPG", "./x.png"]
    # a file is taken as given, to fail in its own task if it is not one
    assert batch.expand_sources(["missing.png"]) == ["missing.png"]
    with pytest.raises(batch.BatchError, match="no file matches"):
        batch.expand_sources(["d/*.bmp"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(batch.BatchError, match="empty: the folder holds no image"):
        batch.expand_sources(["empty"])
    assert not batch.is_batch(["x.png"]) and not batch.is_batch(["missing.png"])
    assert batch.is_batch(["x.png", "d/a.png"]) and batch.is_batch(["d"])
    assert batch.is_batch(["d/*.png"])
    (tmp_path / "odd[1].png").write_bytes(b"x")  # a name with glob characters, as it is
    assert not batch.is_batch(["odd[1].png"])


def test_plan_refuses_two_sources_with_one_stem(tmp_path):
    for name in ("a/x.png", "b/x.tif"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(batch.BatchError) as info:
        batch.plan_batch("t.png", [f"{tmp_path}/a/x.png", f"{tmp_path}/b/x.tif"], "out")
    message = str(info.value)
    assert "a/x.png" in message and "b/x.tif" in message and "\n" not in message


def test_plan_refuses_outputs_over_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").mkdir()
    for name in ("a.png", "a_aligned.png"):  # the outputs of an earlier batch, as sources
        (tmp_path / "f" / name).write_bytes(b"x")
    with pytest.raises(batch.BatchError, match="overwrite"):
        batch.plan_batch("t.png", ["f"], "f")
    plan = batch.plan_batch("t.png", ["f"], "out")  # elsewhere it is fine
    assert plan.sources == ("f/a.png", "f/a_aligned.png")
    assert plan.params_path("f/a.png") == os.path.join("out", "a_aligned.json")


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


def test_the_target_is_read_once_per_worker(work, monkeypatch):
    os.mkdir("out")
    reads: list[str] = []
    real = io.read_image

    def counting(path, **kwargs):
        reads.append(os.fspath(path))
        return real(path, **kwargs)

    monkeypatch.setattr(io, "read_image", counting)
    monkeypatch.setattr(batch, "_CACHE", {})
    options = pipeline.AlignOptions()
    sources = sorted(f"frames/{n}" for n in os.listdir("frames"))
    for i, source in enumerate(sources[:3]):
        assert_recovered(
            {k: batch._cell(v) for k, v in
             batch.align_source("target.png", None, source, None, "out", options).items()}, i)
    assert reads.count("target.png") == 1 and len(reads) == 4
    # a changed target is read again
    os.utime("target.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    batch.align_source("target.png", None, sources[3], None, "out", options)
    assert reads.count("target.png") == 2


def test_a_task_that_fails_returns_a_row_and_writes_nothing(work):
    os.mkdir("out")
    data = Path("frames/s000.png").read_bytes()
    Path("cut.png").write_bytes(data[: len(data) // 3])
    io.write_image("flat.png", np.full(SHAPE, 7, np.uint8))
    options = pipeline.AlignOptions()
    cut = batch.align_source("target.png", None, "cut.png", None, "out", options)
    assert cut["status"] == "failed" and cut["output"] is None
    assert cut["reason"].startswith("cut.png: truncated or corrupt PNG")
    flat = batch.align_source("target.png", None, "flat.png", None, "out", options)
    assert flat["status"] == "failed" and flat["reason"].startswith("flat.png: ")
    assert "constant" in flat["reason"]
    assert os.listdir("out") == []


# --------------------------------------------------------------------------------------------
# The library's run: the table, resume, a stop
# --------------------------------------------------------------------------------------------


def test_run_batch_stop_leaves_a_table_that_matches_the_disk(work):
    plan = batch.plan_batch("target.png", ["frames"], "out")
    batch.check_inputs(plan)
    batch.prepare_folder(plan)
    seen: list[batch.Completed] = []
    with ThreadPoolExecutor(1) as pool:  # any Executor will do
        for completed in batch.run_batch(plan, pool, stop=lambda: len(seen) >= 2):
            seen.append(completed)
    assert len(seen) == 2  # window 1: the one in flight at the stop was the second
    rows = assert_table_matches_disk(work / "out")
    assert len(rows) == 2
    # resume: the two are skipped, keep their rows, and the rest is done
    with ThreadPoolExecutor(2) as pool:
        resumed = list(batch.run_batch(plan, pool, skip_existing=True))
    assert [c.skipped for c in resumed] == [True, True, False, False, False, False]
    after = assert_table_matches_disk(work / "out")
    assert {k: after[k] for k in rows} == rows  # the very same rows
    for i in range(6):
        assert_recovered(after[f"frames/s{i:03d}.png"], i)


def test_finished_row_needs_the_same_source_target_and_the_image(work):
    plan = batch.plan_batch("target.png", ["frames/s000.png", "frames/s001.png"], "out")
    batch.prepare_folder(plan)
    with ThreadPoolExecutor(1) as pool:
        list(batch.run_batch(plan, pool))
    assert batch.finished_row(plan, "frames/s000.png") is not None
    other = batch.plan_batch("frames/s001.png", ["frames/s000.png"], "out")  # another target
    assert batch.finished_row(other, "frames/s000.png") is None
    Path("out/s001_aligned.png").unlink()
    assert batch.finished_row(plan, "frames/s001.png") is None
    Path("out/s000_aligned.json").write_text("{ not json")
    assert batch.finished_row(plan, "frames/s000.png") is None


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def test_batch_with_a_corrupt_file_goes_on_and_exits_1(work):
    data = Path("frames/s003.png").read_bytes()
    Path("frames/s003.png").write_bytes(data[: len(data) // 2])
    result = run("align", "target.png", "frames", "-o", "out", "-j", "2")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("regtool: error: frames/s003.png: truncated or corrupt PNG")
    assert "Traceback" not in result.stderr
    rows = assert_table_matches_disk(work / "out")
    assert len(rows) == 6  # complete: a row per source, the failed one too
    failed = rows["frames/s003.png"]
    assert failed["status"] == "failed" and "truncated" in failed["reason"]
    for i in (0, 1, 2, 4, 5):
        assert_recovered(rows[f"frames/s{i:03d}.png"], i)
        assert (work / "out" / f"s{i:03d}_aligned.png").exists()
    summary = result.stdout
    assert "done           5" in summary and "failed         1" in summary
    assert "frames/s003.png: truncated" in summary


def test_batch_all_converged_exits_0_into_the_default_folder(work):
    result = run("align", "target.png", "frames/s000.png", "frames/s001.png", "frames/s002.png",
                 "-j", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no bar: stderr is not a terminal
    rows = assert_table_matches_disk(work / "aligned")  # the default -o
    assert set(rows) == {f"frames/s00{i}.png" for i in range(3)}
    doc = json.loads((work / "aligned" / "s001_aligned.json").read_text())
    assert doc["output"] == os.path.join("aligned", "s001_aligned.png")
    assert doc["source"] == "frames/s001.png" and doc["target"] == "target.png"
    assert "done           3" in result.stdout
    quiet = run("align", "target.png", "frames/*.png", "-o", "q", "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert len(rows_by_source(work / "q" / "results.csv")) == 6


def test_batch_not_converged_exits_1_with_outputs(work):
    result = run("align", "target.png", "frames/s000.png", "frames/s001.png", "-o", "out",
                 "--max-iter", "1", "--tol", "1e-6", "-j", "1")
    assert result.exit_code == 1, result.stderr
    rows = assert_table_matches_disk(work / "out")
    assert {r["status"] for r in rows.values()} == {"not converged"}
    assert all(r["converged"] == "false" and r["reason"] for r in rows.values())
    assert "not converged  2" in result.stdout


def test_every_align_option_reaches_the_batch(work):
    keep = np.ones(SHAPE, bool)
    keep[:6] = False
    io.write_image("keep.png", keep)
    result = run("align", "target.png", "frames/s000.png", "frames/s001.png", "-o", "out",
                 "-j", "1", "--optimizer", "scaled", "--metric", "ssd", "--levels", "2",
                 "--tol", "0.01", "--max-iter", "200", "--init", "0,0,1", "--interp", "linear",
                 "--fill", "255", "--min-overlap", "0.5", "--target-mask", "keep.png",
                 "--source-mask", "keep.png")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    doc = json.loads((work / "out" / "s001_aligned.json").read_text())
    assert doc["optimizer"] == "scaled" and doc["metric"] == "ssd" and len(doc["levels"]) == 2
    assert doc["init"]["method"] == "given"
    assert doc["target_mask"] == "keep.png" and doc["source_mask"] == "keep.png"
    assert io.read_image(work / "out" / "s001_aligned.png").max() == 255  # --fill
    assert_recovered(rows_by_source(work / "out" / "results.csv")["frames/s001.png"], 1)


def assert_usage_error(result, *words: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regtool: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--params", "p.json"], ["--params"]),
        (["--json"], ["--json"]),
        (["-o", "out.png"], ["out.png", "folder"]),
        (["--scheduler", "nonsense://x"], ["nonsense://x", "not a Dask scheduler address"]),
    ],
)
def test_batch_usage_errors_write_nothing(work, extra, words):
    assert_usage_error(run("align", "target.png", "frames", *extra), *words)
    assert sorted(os.listdir(work)) == ["frames", "target.png"]


def test_unusable_target_exits_2_before_any_work(work):
    io.write_image("flat.png", np.full(SHAPE, 9, np.uint8))
    assert_usage_error(run("align", "flat.png", "frames"), "flat.png: ", "constant")
    assert_usage_error(run("align", "missing.png", "frames"), "missing.png: no such file")
    assert_usage_error(run("align", "target.png", "frames", "--source-mask", "nope.png"),
                       "nope.png")
    Path("other").mkdir()
    Path("other/s001.tif").write_bytes(b"x")
    assert_usage_error(run("align", "target.png", "frames", "other"),
                       "frames/s001.png", "other/s001.tif")
    assert not (work / "aligned").exists()


def test_batch_options_refused_for_one_pair(work):
    assert_usage_error(run("align", "target.png", "frames/s000.png", "--skip-existing"),
                       "--skip-existing", "batches")
    assert_usage_error(run("align", "target.png", "frames/s000.png", "--scheduler", "x:1"),
                       "--scheduler")
    assert sorted(os.listdir(work)) == ["frames", "target.png"]


def test_unreachable_scheduler_is_one_line_exit_2_at_once(work):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    start = time.monotonic()
    result = run("align", "target.png", "frames", "--scheduler", address)
    assert time.monotonic() - start < 4
    assert_usage_error(result, f"{address}: cannot reach the Dask scheduler")
    assert sorted(os.listdir(work)) == ["frames", "target.png"]


def test_files_bar_on_a_terminal(work, monkeypatch):
    monkeypatch.setattr(cli_align, "stderr_is_terminal", lambda: True)
    result = run("align", "target.png", "frames", "-o", "out", "-j", "1")
    assert result.exit_code == 0
    assert "aligning" in result.stderr and "6/6" in result.stderr  # tqdm's bar over files
    quiet = run("align", "target.png", "frames", "-o", "out", "-j", "1", "-q")
    assert quiet.stderr == "" and quiet.stdout == ""


def test_a_results_table_that_cannot_be_written_is_one_line(work, monkeypatch):
    real = batch._cell

    def full(value):
        if value == "frames/s002.png":
            raise OSError(28, "No space left on device")
        return real(value)

    monkeypatch.setattr(batch, "_cell", full)
    result = run("align", "target.png", "frames", "-o", "out", "-j", "1")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stderr == ("regtool: error: out/results.csv: cannot write the file "
                             "(No space left on device)\n")
    assert len(rows_by_source(work / "out" / "results.csv")) == 2  # s000 and s001


def test_skip_existing_resumes_and_keeps_the_rows(work):
    first = run("align", "target.png", "frames", "-o", "out", "-j", "2")
    assert first.exit_code == 0, first.stderr
    before = rows_by_source(work / "out" / "results.csv")
    for suffix in (".png", ".json"):
        (work / "out" / f"s002_aligned{suffix}").unlink()
    result = run("align", "target.png", "frames", "-o", "out", "-j", "2", "--skip-existing")
    assert result.exit_code == 0, result.stderr
    assert "skipped        5" in result.stdout
    after = assert_table_matches_disk(work / "out")
    redone, was = after.pop("frames/s002.png"), before.pop("frames/s002.png")
    assert after == before  # the five kept their rows, to the last digit
    assert {k: redone[k] for k in ("tx", "ty", "theta_deg")} == {
        k: was[k] for k in ("tx", "ty", "theta_deg")}  # the sixth was redone: the same result


# --------------------------------------------------------------------------------------------
# Interruption of a real process
# --------------------------------------------------------------------------------------------


def data_rows(path: Path) -> int:
    try:
        with open(path) as fh:
            return max(0, sum(1 for _ in fh) - 1)
    except OSError:
        return 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_batch_then_resume(tmp_path, monkeypatch, signum):
    write_target(tmp_path / "target.png")
    n = 40
    write_sources(tmp_path / "frames", n)
    # the checkout first, so this regtool runs even when it is not installed
    paths = [os.fspath(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    # A session of its own: Ctrl-C is a SIGINT to the whole process group (the workers too);
    # a SIGTERM (kill PID) goes to the regtool process alone.
    proc = subprocess.Popen([sys.executable, "-m", "regtool", "align", "target.png", "frames",
                             "-o", "out", "-j", "2"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while data_rows(tmp_path / "out" / "results.csv") < 3 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (stdout, stderr)
    assert "regtool: interrupted" in stderr and "--skip-existing" in stderr
    assert "Traceback" not in stderr and "lost" not in stderr  # no worker died
    rows = assert_table_matches_disk(tmp_path / "out")
    assert 3 <= len(rows) < n  # it stopped: no new work after the signal
    assert all(row["status"] == "done" for row in rows.values())

    monkeypatch.chdir(tmp_path)
    resumed = run("align", "target.png", "frames", "-o", "out", "-j", "2", "--skip-existing")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"skipped        {len(rows)} " in resumed.stdout
    after = assert_table_matches_disk(tmp_path / "out")
    assert len(after) == n and {k: after[k] for k in rows} == rows
    for i in range(0, n, 7):
        assert_recovered(after[f"frames/s{i:03d}.png"], i)


# --------------------------------------------------------------------------------------------
# A Dask cluster
# --------------------------------------------------------------------------------------------


def test_batch_on_a_dask_cluster(work):
    data = Path("frames/s004.png").read_bytes()
    Path("frames/s004.png").write_bytes(data[:100])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster:
        result = run("align", "target.png", "frames", "-o", "out", "--scheduler",
                     cluster.scheduler_address)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "s004.png: truncated or corrupt PNG" in errors[0], errors
    assert f"on the Dask cluster at {cluster.scheduler_address}" in result.stdout
    rows = assert_table_matches_disk(work / "out")
    # the workers run in folders of their own: the tasks carry absolute paths
    by_index = {int(Path(s).stem[1:]): row for s, row in rows.items()}
    assert all(os.path.isabs(s) for s in rows) and sorted(by_index) == list(range(6))
    assert by_index[4]["status"] == "failed"
    for i in (0, 1, 2, 3, 5):
        assert_recovered(by_index[i], i)
