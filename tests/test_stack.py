"""Tests of regtool.stack and ``regtool stack``: small synthetic time-lapses of a photograph
with known drift, rotation, bleaching and drifting exposure, registered by real workers."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from clitools import run
from synth import endpoint_error, photo

from regtool import io
from regtool import stack as stacks
from regtool.executors import open_executor
from regtool.pipeline import AlignOptions
from regtool.resample import warp
from regtool.transform import about_center, image_center

SIZE = 64
N_FRAMES = 8
# where frame pixel (0, 0) sits in the photograph before the drift
ORIGIN = np.array([[1.0, 0.0, 200.0], [0.0, 1.0, 180.0], [0.0, 0.0, 1.0]])


def motion(k: int, size: int = SIZE) -> np.ndarray:
    """Frame k's drift: frame pixel x shows the scene at ORIGIN @ motion(k) @ x."""
    return about_center(0.37 * k + 0.2 * math.sin(k), -0.23 * k, math.radians(0.15 * k),
                        image_center((size, size)))


def true_matrix(k: int, ref: int) -> np.ndarray:
    """The reference->frame matrix that aligns frame k on frame ``ref``."""
    return np.linalg.inv(motion(k)) @ motion(ref)


def make_frames(n: int = N_FRAMES, size: int = SIZE, scene: int = 0, seed: int = 0,
                blank: int | None = None) -> np.ndarray:
    """uint16 frames: the scene drifting, bleaching by 8 % a frame, its offset drifting."""
    image = photo(scene)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        f = warp(image, ORIGIN @ motion(k, size), (size, size))
        f = f * (0.8 * math.exp(-0.08 * k)) + 0.05 + 0.01 * k + rng.normal(0, 0.002, f.shape)
        if k == blank:
            f = np.full_like(f, 0.3)
        out.append(np.clip(np.rint(f * 65535), 0, 65535).astype(np.uint16))
    return np.stack(out)


def matrices(rows: list[dict]) -> list[np.ndarray]:
    return [np.vstack([r["matrix"], [0.0, 0.0, 1.0]]) for r in rows]


def errors(rows: list[dict], reference: str | int) -> list[float]:
    """Endpoint error of every frame's matrix against the truth, in pixels."""
    found = matrices(rows)
    if reference == "mean":
        # the mean frame sits at no frame's position: compare each frame relative to frame 0
        return [endpoint_error(true_matrix(k, 0), m @ np.linalg.inv(found[0]), (SIZE, SIZE))
                for k, m in enumerate(found)]
    ref = 0 if reference in ("first", "previous") else int(reference)
    return [endpoint_error(true_matrix(k, ref), m, (SIZE, SIZE)) for k, m in enumerate(found)]


@pytest.fixture(scope="module")
def pool():
    """Two workers shared by the library tests (a pool starts in about a second)."""
    with open_executor(2) as executor:
        yield executor


@pytest.fixture(scope="module")
def drift_tif(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift")
    path = folder / "drift.tif"
    tifffile.imwrite(path, make_frames(), imagej=True, metadata={"axes": "TYX"})
    return path


def aligned_pages(path: Path) -> np.ndarray:
    return tifffile.imread(path)


# --------------------------------------------------------------------------------------------
# Accuracy of every reference mode
# --------------------------------------------------------------------------------------------

# measured 0.006 (first), 0.030 (previous: the links' errors add up), 0.041 (mean), 0.007 (3)
LIMITS = {"first": 0.02, "previous": 0.08, "mean": 0.08, 3: 0.02}


@pytest.mark.parametrize("reference", ["first", "previous", "mean", 3])
def test_reference_modes_recover_drift_and_bleaching(tmp_path, drift_tif, pool, reference):
    out = tmp_path / "aligned.tif"
    outcome = stacks.register_stack(drift_tif, os.fspath(out), reference=reference,
                                    executor=pool)
    rows = outcome.rows
    assert [r["index"] for r in rows] == list(range(N_FRAMES))
    assert all(r["converged"] for r in rows) and outcome.held == []
    err = errors(rows, reference)
    assert max(err) < LIMITS[reference], err
    expected = {"first": 0, "previous": 0, 3: 3}.get(reference)
    statuses = ["reference" if k == expected else "ok" for k in range(N_FRAMES)]
    assert [r["status"] for r in rows] == statuses
    # the motion is real: the last frame is more than 2.5 px away from the first
    assert endpoint_error(true_matrix(N_FRAMES - 1, 0), np.eye(3), (SIZE, SIZE)) > 2.5
    # the output is the input resampled with exactly the matrices of the table
    raw, aligned = tifffile.imread(drift_tif), aligned_pages(out)
    assert aligned.dtype == np.uint16 and aligned.shape == raw.shape
    for k, m in enumerate(matrices(rows)):
        np.testing.assert_array_equal(aligned[k], warp(raw[k], m, (SIZE, SIZE)))


def test_tables_say_the_same_in_csv_and_json(tmp_path, drift_tif, pool):
    outcome = stacks.register_stack(drift_tif, os.fspath(tmp_path / "a.tif"),
                                    reference="previous", executor=pool)
    assert outcome.table_csv == os.fspath(tmp_path / "a_transforms.csv")
    doc = json.loads(Path(outcome.table_json).read_text())
    assert doc["convention"].startswith("matrix maps reference pixel (x, y) to this frame's")
    assert doc["reference"] == "previous" and doc["frame_shape"] == [SIZE, SIZE]
    assert doc["frames"] == N_FRAMES and doc["held"] == []
    with open(outcome.table_csv, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == stacks.TABLE_COLUMNS
    for line, row in zip(table, doc["rows"], strict=True):
        assert int(line["index"]) == row["index"] and line["status"] == row["status"]
        assert float(line["m02"]) == row["matrix"][0][2]
        assert float(line["theta_deg"]) == row["theta_deg"]
        assert float(line["shift_y"]) == row["shift"][1]
        assert (int(line["width"]), int(line["height"])) == (SIZE, SIZE)
    # frame k of a previous chain is registered to k - 1 and is the product of the links
    links = [None] + [np.array(r["link_matrix"]) for r in doc["rows"][1:]]
    for m, composed in zip(matrices(doc["rows"]), stacks.compose_previous(links), strict=True):
        np.testing.assert_allclose(m, composed, rtol=0, atol=1e-12)
    assert [r["registered_to"] for r in doc["rows"]] == [None] + list(range(N_FRAMES - 1))


def test_previous_in_parallel_equals_serial_exactly(tmp_path, drift_tif, pool):
    with open_executor(1) as serial_pool:
        serial = stacks.register_stack(drift_tif, os.fspath(tmp_path / "serial.tif"),
                                       reference="previous", executor=serial_pool, window=1)
    # a window of 6 on two workers: pairs finish out of order
    parallel = stacks.register_stack(drift_tif, os.fspath(tmp_path / "parallel.tif"),
                                     reference="previous", executor=pool, window=6)
    for a, b in zip(serial.rows, parallel.rows, strict=True):
        assert a["matrix"] == b["matrix"] and a["link_matrix"] == b["link_matrix"]
    np.testing.assert_array_equal(aligned_pages(tmp_path / "serial.tif"),
                                  aligned_pages(tmp_path / "parallel.tif"))
    # and equal to registering the pairs one after the other here, then composing them (to
    # rounding: numpy in this process may sum with several BLAS threads, the workers' with one)
    options = AlignOptions()
    links: list[np.ndarray | None] = [None]
    for k in range(1, N_FRAMES):
        result = stacks.register_task(stacks.FrameRef(os.fspath(drift_tif), k, "stack"),
                                      stacks.FrameRef(os.fspath(drift_tif), k - 1, "stack"),
                                      None, options)
        links.append(np.array(result["matrix"]))
    for row, m in zip(parallel.rows, stacks.compose_previous(links), strict=True):
        np.testing.assert_allclose(row["matrix"], m[:2], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Layouts: ImageJ hyperstacks, BigTIFF, truncated ImageJ, RGB, folders and globs
# --------------------------------------------------------------------------------------------


def test_imagej_hyperstack_round_trips_axes_dtype_and_pixel_size(tmp_path, pool):
    # channel 1 holds the camera photograph, channel 0 another photograph under the same motion
    texture, other = make_frames(), make_frames(scene=1, seed=1)
    data = np.stack([other, texture], axis=1)  # T, C, Y, X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "TCYX", "unit": "um", "finterval": 1.5, "spacing": 2.0})
    out = tmp_path / "hyper_aligned.tif"
    outcome = stacks.register_stack(path, os.fspath(out), channel=1, executor=pool)
    assert max(errors(outcome.rows, "first")) < LIMITS["first"]
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        series = tif.series[0]
        assert series.axes == "TCYX" and series.shape == data.shape
        assert series.dtype == np.uint16
        meta = tif.imagej_metadata
        assert (meta["unit"], meta["finterval"], meta["spacing"]) == ("um", 1.5, 2.0)
        assert meta["channels"] == 2 and meta["frames"] == N_FRAMES
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(4.0)
        aligned = series.asarray()
    # every channel moved with its frame's transform, in order
    for k, m in enumerate(matrices(outcome.rows)):
        for c in (0, 1):
            np.testing.assert_array_equal(aligned[k, c], warp(data[k, c], m, (SIZE, SIZE)))
    # channel 0 is aligned too: its frames now agree with its frame 0 inside the borders
    inner = (slice(8, -8), slice(8, -8))
    last = aligned[-1, 0][inner].astype(float)
    first = aligned[0, 0][inner].astype(float)
    assert np.corrcoef(last.ravel(), first.ravel())[0, 1] > 0.99
    assert np.corrcoef(data[-1, 0][inner].ravel(), data[0, 0][inner].ravel())[0, 1] < 0.9


def test_bigtiff_truncated_imagej_and_rgb_inputs(tmp_path, pool):
    frames = make_frames(n=4)
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, frames, bigtiff=True, photometric="minisblack")
    trunc = tmp_path / "trunc.tif"  # one IFD, the data contiguous after it (ImageJ > 4 GB)
    tifffile.imwrite(trunc, frames, imagej=True, truncate=True, metadata={"axes": "TYX"})
    rgb = tmp_path / "rgb.tif"
    color = np.stack([(frames >> 8).astype(np.uint8)] * 3, axis=-1)
    color[..., 2] //= 2
    tifffile.imwrite(rgb, color, photometric="rgb")
    for path, bigtiff in ((big, True), (trunc, False), (rgb, False)):
        with stacks.open_stack(path) as stack:
            assert stack.n_frames == 4 and stack.shape == (SIZE, SIZE)
            np.testing.assert_array_equal(stack.page(stack.page_of(3)),
                                          (color if path == rgb else frames)[3])
        out = tmp_path / f"{path.stem}_out.tif"
        outcome = stacks.register_stack(path, os.fspath(out), executor=pool)
        assert all(r["converged"] for r in outcome.rows)
        assert max(errors(outcome.rows, "first")) < 0.05
        with tifffile.TiffFile(out) as tif:
            assert tif.is_bigtiff == bigtiff
            written = tif.series[0].asarray()
        assert written.shape == (color.shape if path == rgb else frames.shape)


def test_folder_of_frames_in_natural_order(tmp_path, monkeypatch, pool):
    frames = make_frames(n=11)
    folder = tmp_path / "run1"
    folder.mkdir()
    for k, frame in enumerate(frames):
        io.write_image(folder / f"t{k + 1}.png", frame)  # t1 ... t11: t10 after t9
    (folder / "notes.txt").write_text("not a frame")
    monkeypatch.chdir(tmp_path)
    outcome = stacks.register_stack("run1", reference="previous", executor=pool)
    assert outcome.output == "run1_aligned"
    assert [r["file"] for r in outcome.rows] == [f"t{k + 1}.png" for k in range(11)]
    found = matrices(outcome.rows)
    assert max(endpoint_error(true_matrix(k, 0), m, (SIZE, SIZE))
               for k, m in enumerate(found)) < 0.1
    written = sorted(os.listdir("run1_aligned"))
    assert written == sorted(f"t{k + 1}.png" for k in range(11))
    for k, m in enumerate(found):
        aligned = io.read_image(Path("run1_aligned") / f"t{k + 1}.png")
        assert aligned.dtype == np.uint16
        np.testing.assert_array_equal(aligned, warp(frames[k], m, (SIZE, SIZE)))
    # a glob of the same frames into one TIFF
    outcome = stacks.register_stack("run1/t*.png", "globbed.tif", executor=pool)
    assert tifffile.imread("globbed.tif").shape == (11, SIZE, SIZE)
    assert max(errors(outcome.rows, "first")) < LIMITS["first"]
    assert sorted(p for p in os.listdir(".") if p.startswith(".")) == []  # no temporaries


def test_folder_frame_of_another_size_stops_the_run(tmp_path, monkeypatch, pool):
    monkeypatch.chdir(tmp_path)
    os.mkdir("mixed")
    for k, frame in enumerate(make_frames(n=4)):
        io.write_image(f"mixed/f{k}.png", frame if k != 2 else frame[:40])
    with pytest.raises(io.ImageError) as caught:
        stacks.register_stack("mixed", "out", executor=pool)
    # named as given, though a worker (handed an absolute path) found it
    assert str(caught.value).startswith(os.path.join("mixed", "f2.png") + ": frame of 64x40 "
                                        "uint16 gray in a stack of 64x64 uint16 gray")
    assert sorted(os.listdir(".")) == ["mixed"]


# --------------------------------------------------------------------------------------------
# Failures: a blank frame
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reference", ["first", "previous"])
def test_blank_frame_is_held_and_later_frames_stay_right(tmp_path, pool, reference):
    blank = 4
    path = tmp_path / "blank.tif"
    tifffile.imwrite(path, make_frames(blank=blank), imagej=True, metadata={"axes": "TYX"})
    outcome = stacks.register_stack(path, os.fspath(tmp_path / "out.tif"), reference=reference,
                                    executor=pool)
    rows = outcome.rows
    assert outcome.held == [blank] and not outcome.converged
    row = rows[blank]
    assert row["status"] == "held" and row["converged"] is False
    assert "no texture" in row["reason"] and row["held_from"] == blank - 1
    assert row["matrix"] == rows[blank - 1]["matrix"]  # the last good transform, kept
    good = [e for k, e in enumerate(errors(rows, reference)) if k != blank]
    assert max(good) < LIMITS[reference]
    if reference == "previous":
        # the chain goes past the blank frame: frame 5 is registered to frame 3
        assert [r["registered_to"] for r in rows[blank:blank + 3]] == [3, 3, 5]
    doc = json.loads(Path(outcome.table_json).read_text())
    assert doc["held"] == [blank] and "held" in doc["failure_policy"]


def test_blank_reference_is_bad_input_before_any_work(tmp_path):
    path = tmp_path / "blank0.tif"
    tifffile.imwrite(path, make_frames(n=3, blank=0), photometric="minisblack")
    with pytest.raises(io.ImageError, match="the reference frame 0 cannot be registered: image "
                                            "has no texture"):
        stacks.plan_stack(path, os.fspath(tmp_path / "o.tif"))
    assert sorted(os.listdir(tmp_path)) == ["blank0.tif"]


# --------------------------------------------------------------------------------------------
# A saved table applied to another stack
# --------------------------------------------------------------------------------------------


def test_apply_table_to_another_stack(tmp_path, drift_tif, pool):
    outcome = stacks.register_stack(drift_tif, os.fspath(tmp_path / "a.tif"),
                                    reference="previous", executor=pool)
    other = make_frames(scene=1, seed=3)  # e.g. the other channel, saved as its own file
    other_path = tmp_path / "other.tif"
    tifffile.imwrite(other_path, other, imagej=True, metadata={"axes": "TYX"})
    for table in (outcome.table_csv, outcome.table_json):
        out = tmp_path / f"other_{Path(table).suffix[1:]}.tif"
        stacks.apply_table(other_path, table, out)
        written = tifffile.imread(out)
        for k, m in enumerate(matrices(outcome.rows)):
            np.testing.assert_array_equal(written[k], warp(other[k], m, (SIZE, SIZE)))
    short = tmp_path / "short.tif"
    tifffile.imwrite(short, other[:5])
    with pytest.raises(io.ImageError, match=r"a_transforms.csv: the table has 8 frames but "
                                            r".*short.tif has 5"):
        stacks.apply_table(short, outcome.table_csv, tmp_path / "x.tif")
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, other[:, :48, :40])
    with pytest.raises(io.ImageError, match=r"the table is for frames of 64x64 pixels but "
                                            r".*small.tif's are 40x48"):
        stacks.apply_table(small, outcome.table_json, tmp_path / "x.tif")
    bad = tmp_path / "bad.csv"
    bad.write_text("index,tx\n0,1\n")
    with pytest.raises(io.ImageError, match="bad.csv: not a regtool transforms table"):
        stacks.apply_table(other_path, bad, tmp_path / "x.tif")
    assert not (tmp_path / "x.tif").exists()


# --------------------------------------------------------------------------------------------
# Memory and interruption
# --------------------------------------------------------------------------------------------


def test_streaming_keeps_the_parent_far_below_the_stack_size(tmp_path, pool):
    n, size = 48, 128
    rng = np.random.default_rng(5)
    scene = photo(0)
    frames = np.stack([np.clip(np.rint(65535 * warp(
        scene, ORIGIN @ about_center(0.3 * k, 0.2 * k, 0.0, image_center((size, size))),
        (size, size))), 0, 65535).astype(np.uint16) for k in range(n)])
    frames += rng.integers(0, 50, frames.shape, dtype=np.uint16)
    path = tmp_path / "long.tif"
    tifffile.imwrite(path, frames, imagej=True, metadata={"axes": "TYX"})
    stack_bytes = frames.nbytes  # 1.5 MB
    tifffile.imwrite(tmp_path / "warm.tif", frames[:3], photometric="minisblack")
    del frames
    # a first run imports what the measured ones use: the imports are not the stream's
    stacks.register_stack(tmp_path / "warm.tif", os.fspath(tmp_path / "w.tif"),
                          reference="previous", executor=pool)
    for stage in ("register", "apply"):
        tracemalloc.start()
        try:
            if stage == "register":
                # init none: the drift is small, and the stream, not the search, is measured
                outcome = stacks.register_stack(path, os.fspath(tmp_path / "r.tif"),
                                                reference="previous", executor=pool, window=4,
                                                options=AlignOptions(init="none"))
            else:
                stacks.apply_table(path, outcome.table_json, tmp_path / "t.tif")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # measured: 0.43 MB registering (a page, its spline coefficients, the table's rows and
        # its text), 0.28 MB applying a table, for a 1.5 MB stack
        assert peak < stack_bytes / 3, (stage, peak, stack_bytes)
    assert all(r["converged"] for r in outcome.rows)


def test_stop_leaves_no_file_and_starts_no_new_work(tmp_path, drift_tif, pool):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 6

    with pytest.raises(stacks.Interrupted):
        stacks.register_stack(drift_tif, os.fspath(tmp_path / "s.tif"), reference="mean",
                              executor=pool, stop=stop)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------




def test_cli_stack_defaults_and_exit_statuses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("movie.tif", make_frames(n=6), imagej=True, metadata={"axes": "TYX"})
    result = run("stack", "movie.tif", "-j", "2")
    assert result.exit_code == 0, result.output
    assert "frames     6 (reference first), 6 converged" in result.output
    assert sorted(os.listdir(".")) == ["movie.tif", "movie_aligned.tif",
                                       "movie_aligned_transforms.csv",
                                       "movie_aligned_transforms.json"]
    tifffile.imwrite("blank.tif", make_frames(n=6, blank=2))
    result = run("stack", "blank.tif", "-o", "b.tif", "--table", "tables/b.csv")
    assert result.exit_code == 2  # the table's folder does not exist: nothing done
    assert result.output.strip() == ("regtool: error: tables/b.csv: output folder tables does "
                                     "not exist")
    os.mkdir("tables")
    result = run("stack", "blank.tif", "-o", "b.tif", "--table", "tables/b.csv", "-q",
                 "--reference", "previous", "-j", "1")
    assert result.exit_code == 1
    assert "regtool: 1 of 6 frames did not converge (held: 2)" in result.output
    assert sorted(os.listdir("tables")) == ["b.csv", "b.json"]


def test_cli_warp_applies_a_stacks_table_to_another_stack(tmp_path, monkeypatch):
    """One channel's transforms moved onto another: ``stack`` then ``warp --transforms``."""
    monkeypatch.chdir(tmp_path)
    green = make_frames(n=5)
    red = make_frames(n=5, scene=1)  # another picture that moves with the same drift
    tifffile.imwrite("green.tif", green, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite("red.tif", red, imagej=True, metadata={"axes": "TYX"})
    assert run("stack", "green.tif", "-q", "-j", "1").exit_code == 0
    result = run("warp", "red.tif", "--transforms", "green_aligned_transforms.csv")
    assert result.exit_code == 0, result.output
    assert os.path.exists("red_warped.tif")
    rows = json.loads(Path("green_aligned_transforms.json").read_text())["rows"]
    warped = tifffile.imread("red_warped.tif")
    assert warped.shape == red.shape and warped.dtype == red.dtype
    for k, row in enumerate(rows):
        expected = warp(red[k], np.vstack([row["matrix"], [0, 0, 1]]), (SIZE, SIZE))
        np.testing.assert_array_equal(warped[k], expected)
    # the same table on the stack it came from gives stack's own output exactly
    assert run("warp", "green.tif", "--transforms", "green_aligned_transforms.json",
               "-o", "again.tif", "-q").exit_code == 0
    np.testing.assert_array_equal(tifffile.imread("again.tif"),
                                  tifffile.imread("green_aligned.tif"))
    # frame counts must agree: one line naming the table, exit 2, nothing written
    tifffile.imwrite("short.tif", red[:3], imagej=True, metadata={"axes": "TYX"})
    before = sorted(os.listdir("."))
    result = run("warp", "short.tif", "--transforms", "green_aligned_transforms.csv")
    assert result.exit_code == 2
    assert result.output.strip() == ("regtool: error: green_aligned_transforms.csv: the table "
                                     "has 5 frames but short.tif has 3")
    assert sorted(os.listdir(".")) == before
    for args in (["red.tif"], ["red.tif", "--transforms", "t.csv", "--params", "p.json"],
                 ["--transforms", "green_aligned_transforms.csv"]):
        result = run("warp", *args)
        assert result.exit_code == 2 and "regtool: error:" in result.output


@pytest.mark.parametrize("args, message", [
    (["missing.tif"], "missing.tif: no such file or folder"),
    (["one.tif"], "one.tif: holds 1 frame; a stack needs at least 2"),
    (["movie.tif", "--reference", "9"], "movie.tif: has no frame 9 to be the reference: its "
                                        "frames are 0 to 2"),
    (["movie.tif", "--channel", "1"], "movie.tif: has no channel 1: its frames have 1 channel"),
    (["movie.tif", "-o", "movie.tif"], "movie.tif: output would overwrite an input file"),
    (["movie.tif", "-o", "out_dir"], "out_dir: a TIFF stack is written as a TIFF"),
    (["movie.tif", "--reference", "last"], "'last' is neither first, previous, mean nor a frame"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("movie.tif", make_frames(n=3), photometric="minisblack")
    tifffile.imwrite("one.tif", make_frames(n=1)[0])
    result = run("stack", *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regtool: error: ")
    assert message in lines[0]
    assert sorted(os.listdir(".")) == ["movie.tif", "one.tif"]


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch):
    from regtool.cli import stack as cli_stack

    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("m.tif", make_frames(n=4), photometric="minisblack")
    monkeypatch.setattr(cli_stack, "stderr_is_terminal", lambda: True)
    result = run("stack", "m.tif", "--reference", "mean", "-j", "1")
    assert result.exit_code == 0, result.output
    assert "mean frame" in result.stderr and "frames" in result.stderr  # tqdm's bars
    assert "frames     4 (reference mean), 4 converged" in result.stdout


@pytest.mark.parametrize("failure, status, message", [
    (KeyboardInterrupt, 130, "regtool: interrupted"),
    (OSError(28, "No space left on device"), 2,
     "regtool: error: m_aligned.tif: cannot write the file (No space left on device)"),
])
def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch, failure, status, message):
    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("m.tif", make_frames(n=4), photometric="minisblack")
    real = stacks._in_order

    def fail_on_the_third_page(*args, **kwargs):
        for n, page in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise failure
            yield page

    monkeypatch.setattr(stacks, "_in_order", fail_on_the_third_page)
    result = run("stack", "m.tif", "-j", "1")
    assert result.exit_code == status
    assert result.output.strip().splitlines()[-1] == message
    assert "Traceback" not in result.output
    assert os.listdir(".") == ["m.tif"]


def test_sigterm_during_a_stack_exits_130_and_leaves_nothing(tmp_path):
    frames = np.concatenate([make_frames(n=8)] * 25)  # 200 frames: seconds on one worker
    tifffile.imwrite(tmp_path / "long.tif", frames, imagej=True, metadata={"axes": "TYX"})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "regtool", "stack", "long.tif", "-j", "1",
                             "--reference", "previous"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        # the temporary output appears when the frames start being written
        while not any(p.endswith(".part") for p in os.listdir(tmp_path)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "regtool: interrupted" in err
    assert os.listdir(tmp_path) == ["long.tif"]


def test_stack_on_a_dask_cluster_equals_the_local_run(tmp_path, monkeypatch):
    import distributed

    monkeypatch.chdir(tmp_path)
    tifffile.imwrite("movie.tif", make_frames(n=6), imagej=True, metadata={"axes": "TYX"})
    assert run("stack", "movie.tif", "--reference", "previous", "-j", "1", "-q",
               "-o", "local.tif").exit_code == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster:
        result = run("stack", "movie.tif", "--reference", "previous", "-q", "-o", "dask.tif",
                     "--scheduler", cluster.scheduler_address)
    assert result.exit_code == 0, result.output
    local = json.loads(Path("local_transforms.json").read_text())["rows"]
    remote = json.loads(Path("dask_transforms.json").read_text())["rows"]
    # the same pairs registered elsewhere: the same matrices (float noise of another process's
    # BLAS threads at most)
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_allclose(a["matrix"], b["matrix"], atol=1e-9)
    np.testing.assert_array_equal(tifffile.imread("dask.tif"), tifffile.imread("local.tif"))
    result = run("stack", "movie.tif", "-q", "-o", "x.tif", "--scheduler", "tcp://127.0.0.1:9")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert not os.path.exists("x.tif")


def test_table_carries_error_bars_that_cover_the_errors(tmp_path, pool):
    """Frames large enough for error bars: every registered row has them, in the CSV too, and
    the observed errors are of their size (the calibration itself is measured in make bench)."""
    size = 128
    frames = make_frames(n=5, size=size, seed=4)
    frames = np.clip(frames.astype(float) + np.random.default_rng(1).normal(0, 600, frames.shape),
                     0, 65535).astype(np.uint16)
    path = tmp_path / "noisy.tif"
    tifffile.imwrite(path, frames, photometric="minisblack")
    out = stacks.register_stack(path, str(tmp_path / "o.tif"), executor=pool, window=4)
    rows = out.rows
    assert [r["status"] for r in rows] == ["reference"] + ["ok"] * 4
    assert rows[0]["endpoint_px"] == 0.0
    for k, r in enumerate(rows[1:], start=1):
        assert all(r[key] is not None and r[key] > 0 for key in stacks.SIGMA_KEYS), r
        err = endpoint_error(np.linalg.inv(motion(k, size)) @ motion(0, size),
                             np.vstack([r["matrix"], [0, 0, 1]]), (size, size))
        # seen: errors 0.5-1.2 times endpoint_px on these frames
        assert err < 4 * r["endpoint_px"], (k, err, r["endpoint_px"])
    with open(out.table_csv, newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert float(csv_rows[2]["sigma_theta_deg"]) == pytest.approx(rows[2]["sigma_theta_deg"])
