"""Tests of the ``regtool`` command line, end to end on small real images (no mocked engine)."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from clitools import listing, run

import regtool
from regtool import cli as cli_module
from regtool import io
from regtool.cli import align as cli_align

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
SIZE = 96
THETA_DEG = 3.0
SHIFT = (2.5, -1.5)  # about the target's center

DOC_KEYS = {
    "target", "source", "output", "target_mask", "source_mask", "tx", "ty", "theta",
    "theta_deg", "matrix", "center", "shift",
    "metric", "loss", "converged", "reason", "levels", "optimizer", "time_s", "overlap",
    "regtool_version",
}
LEVEL_KEYS = {"level", "shape", "iterations", "loss", "converged", "time_s"}


def true_matrix(theta_deg: float = THETA_DEG,
                shift: tuple[float, float] = SHIFT) -> np.ndarray:
    t = math.radians(theta_deg)
    c, s = math.cos(t), math.sin(t)
    cx = cy = (SIZE - 1) / 2.0
    tx = cx + shift[0] - (c * cx - s * cy)
    ty = cy + shift[1] - (s * cx + c * cy)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def make_pair(rgb: bool = False, theta_deg: float = THETA_DEG,
              shift: tuple[float, float] = SHIFT) -> tuple[np.ndarray, np.ndarray]:
    """A 96x96 crop of a photograph and the same scene moved: ``source(M x) = target(x)``."""
    photo = io.read_image(SAMPLES / ("astronaut.jpg" if rgb else "camera.png"))
    top = 180 if not rgb else 120
    patch = photo[top - 32 : top + SIZE + 32, top - 32 : top + SIZE + 32]
    target = patch[32 : 32 + SIZE, 32 : 32 + SIZE]
    to_patch = np.array([[1.0, 0, 32], [0, 1.0, 32], [0, 0, 1]])
    moved = np.linalg.inv(true_matrix(theta_deg, shift))
    source = regtool.warp(patch, to_patch @ moved, (SIZE, SIZE))
    return target, source


@pytest.fixture(scope="module")
def pair_arrays():
    return make_pair()


@pytest.fixture
def work(tmp_path, monkeypatch, pair_arrays):
    """A folder holding target.png and source.png, made the current directory."""
    target, source = pair_arrays
    io.write_image(tmp_path / "target.png", target)
    io.write_image(tmp_path / "source.png", source)
    monkeypatch.chdir(tmp_path)
    return tmp_path






def assert_one_line_error(result, path: str | None, *words: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    prefix = "regtool: error: " + (f"{path}: " if path is not None else "")
    assert line.startswith(prefix), line
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in line.lower(), line
    return line


# --------------------------------------------------------------------------------------------
# Success
# --------------------------------------------------------------------------------------------


def test_align_defaults_write_named_outputs_and_summary(work):
    result = run("align", "target.png", "source.png")
    assert result.exit_code == 0, result.stderr
    assert listing(work) == ["source.png", "source_aligned.json", "source_aligned.png",
                             "target.png"]
    assert result.stderr == ""  # no bar: stderr is not a terminal here
    out = result.stdout
    for word in ("theta", "tx, ty", "shift", "loss", "converged  yes", "source_aligned.png",
                 "source_aligned.json"):
        assert word in out

    doc = json.loads((work / "source_aligned.json").read_text())
    assert DOC_KEYS <= set(doc)
    assert doc["target"] == "target.png" and doc["source"] == "source.png"
    assert doc["output"] == "source_aligned.png"
    assert doc["converged"] is True and doc["reason"] is None
    assert doc["regtool_version"] == regtool.__version__
    assert doc["optimizer"] == "gauss-newton" and doc["metric"] == "ncc"
    m = true_matrix()
    assert abs(doc["theta_deg"] - THETA_DEG) < 0.05
    assert abs(doc["tx"] - m[0, 2]) < 0.1 and abs(doc["ty"] - m[1, 2]) < 0.1
    assert np.allclose(doc["shift"], SHIFT, atol=0.1)
    assert doc["center"] == [(SIZE - 1) / 2] * 2
    assert np.allclose(doc["matrix"], m[:2], atol=0.1)
    assert math.isclose(doc["theta"], math.radians(doc["theta_deg"]))
    assert doc["levels"] and all(LEVEL_KEYS <= set(r) for r in doc["levels"])
    assert doc["levels"][-1]["level"] == 0
    assert 0.5 < doc["overlap"] <= 1.0

    aligned = io.read_image(work / "source_aligned.png")
    target = io.read_image(work / "target.png")
    assert aligned.shape == target.shape and aligned.dtype == np.uint8
    inner = (slice(12, -12), slice(12, -12))
    assert np.abs(aligned[inner].astype(int) - target[inner]).mean() < 6


def test_explicit_outputs_and_params_beside_image(work):
    (work / "out").mkdir()
    result = run("align", "target.png", "source.png", "-o", "out/a.tif")
    assert result.exit_code == 0, result.stderr
    assert listing(work / "out") == ["a.json", "a.tif"]
    doc = json.loads((work / "out" / "a.json").read_text())
    assert doc["output"] == "out/a.tif"
    result = run("align", "target.png", "source.png", "-o", "out/b.png", "--params", "p.json")
    assert result.exit_code == 0, result.stderr
    assert "b.png" in listing(work / "out") and (work / "p.json").exists()


def test_json_flag_prints_only_the_document(work):
    result = run("align", "target.png", "source.png", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert doc == json.loads((work / "source_aligned.json").read_text())
    assert DOC_KEYS <= set(doc)


def test_quiet_prints_nothing(work):
    result = run("align", "target.png", "source.png", "--quiet")
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    assert (work / "source_aligned.png").exists() and (work / "source_aligned.json").exists()


def test_options_reach_the_engine(work):
    result = run("align", "target.png", "source.png", "--json", "--optimizer", "scaled",
                 "--metric", "ncc", "--levels", "2", "--tol", "0.01", "--max-iter", "200",
                 "--init", "0,0,1", "--interp", "linear", "--fill", "255")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["optimizer"] == "scaled" and doc["metric"] == "ncc"
    assert len(doc["levels"]) == 2
    assert abs(doc["theta_deg"] - THETA_DEG) < 0.1
    aligned = io.read_image(work / "source_aligned.png")
    assert aligned.max() == 255  # the corners that left the source are filled


def test_negative_init_value(work):
    result = run("align", "target.png", "source.png", "--init", "-1,2,0.5", "-q")
    assert result.exit_code == 0, result.stderr


def test_rgb_uint16_source_defaults_to_tiff(tmp_path, monkeypatch):
    target, source = make_pair(rgb=True)
    io.write_image(tmp_path / "t.tif", target.astype(np.uint16) * 257)
    io.write_image(tmp_path / "s.tif", source.astype(np.uint16) * 257)
    monkeypatch.chdir(tmp_path)
    result = run("align", "t.tif", "s.tif", "-q")
    assert result.exit_code == 0, result.stderr
    aligned = io.read_image(tmp_path / "s_aligned.tif")
    assert aligned.dtype == np.uint16 and aligned.shape == (SIZE, SIZE, 3)


def test_float_source_with_nan_fill(tmp_path, monkeypatch, pair_arrays):
    target, source = pair_arrays
    io.write_image(tmp_path / "t.tif", target.astype(np.float32))
    io.write_image(tmp_path / "s.tif", source.astype(np.float32) / 255)
    monkeypatch.chdir(tmp_path)
    result = run("align", "t.tif", "s.tif", "--metric", "ncc", "--fill", "nan", "-q")
    assert result.exit_code == 0, result.stderr
    aligned = io.read_image(tmp_path / "s_aligned.tif")
    assert aligned.dtype == np.float32 and np.isnan(aligned).any()


def test_progress_bar_on_a_terminal(work, monkeypatch):
    monkeypatch.setattr(cli_align, "stderr_is_terminal", lambda: True)
    result = run("align", "target.png", "source.png")
    assert result.exit_code == 0
    assert "levels" in result.stderr  # tqdm's bar
    assert "theta" in result.stdout and "levels:" not in result.stdout
    quiet = run("align", "target.png", "source.png", "-q")
    assert quiet.stderr == ""


def test_help_and_version():
    result = run("--help")
    assert result.exit_code == 0 and "Examples" in result.stdout and "align" in result.stdout
    result = run("align", "--help")
    assert result.exit_code == 0
    for option in ("--output", "--params", "--json", "--levels", "--optimizer", "--metric",
                   "--max-iter", "--tol", "--init", "--interp", "--fill", "--quiet",
                   "--target-mask", "--source-mask", "--min-overlap"):
        assert option in result.stdout
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"regtool {regtool.__version__}"
    result = run()
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_cli_names_match_the_engine():
    from regtool import register, resample

    assert cli_module.OPTIMIZERS == register.OPTIMIZERS
    assert cli_module.METRICS == register.METRICS
    assert cli_module.DEFAULT_OPTIMIZER == register.DEFAULT_OPTIMIZER
    assert cli_module.DEFAULT_METRIC == register.DEFAULT_METRIC
    assert cli_module.DEFAULT_METRIC == inspect.signature(register.align).parameters[
        "metric"].default
    assert cli_module.DEFAULT_INIT == inspect.signature(register.align).parameters["init"].default
    assert cli_module.INIT_WORDS == ("auto", "none")
    assert set(cli_module.INTERPOLATIONS) == set(resample.INTERP_ORDERS)


def test_python_dash_m_version():
    proc = subprocess.run([sys.executable, "-m", "regtool", "--version"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"regtool {regtool.__version__}"


def test_console_script_end_to_end(work):
    script = Path(sys.executable).with_name("regtool")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    proc = subprocess.run([os.fspath(script), "align", "target.png", "source.png", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["converged"] is True
    assert (work / "source_aligned.png").exists()
    bad = subprocess.run([os.fspath(script), "align", "target.png", "missing.png"],
                         capture_output=True, text=True, timeout=120, cwd=work)
    assert bad.returncode == 2
    assert bad.stderr == "regtool: error: missing.png: no such file\n"


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------

STAMP = (slice(SIZE - 30, SIZE - 8), slice(SIZE - 44, SIZE - 6))  # rows, columns


def stamped(image: np.ndarray) -> np.ndarray:
    """``image`` with a bright, textured stamp (a time stamp, a scale bar) at ``STAMP``."""
    out = image.copy()
    h, w = SIZE - 8 - (SIZE - 30), SIZE - 6 - (SIZE - 44)
    stamp = np.full((h, w), 255, np.uint8)
    stamp[4:-4, 4:-4:6] = 0
    stamp[8:-8:5, 4:-4] = 0
    out[STAMP] = stamp
    return out


def stamp_mask() -> np.ndarray:
    """True = use: everything but the stamp and a 3-pixel margin around it."""
    used = np.ones((SIZE, SIZE), bool)
    used[STAMP[0].start - 3 : STAMP[0].stop + 3, STAMP[1].start - 3 : STAMP[1].stop + 3] = False
    return used


@pytest.fixture
def stamped_work(work, pair_arrays):
    """target.png and source.png carrying the same stamp at the same place (it does not move)."""
    target, source = pair_arrays
    io.write_image(work / "target.png", stamped(target))
    io.write_image(work / "source.png", stamped(source))
    return work


@pytest.mark.parametrize(
    ("target_mask", "source_mask"),
    [
        (("tm.png", "bool", 1), ("sm.png", "uint8", 1)),
        (("tm.tif", "uint16", 1), ("sm.png", "uint8", 3)),  # color: any channel nonzero
        (("tm.tif", "float32", 1), ("sm.tif", "float64", 4)),
    ],
)
def test_masks_leave_out_a_stationary_stamp(stamped_work, target_mask, source_mask):
    m = true_matrix()
    plain = run("align", "target.png", "source.png", "--json", "--params", "plain.json")
    off = json.loads(plain.stdout)
    # The stamp, which does not move, pulls the unmasked estimate towards no motion at all.
    assert math.hypot(off["tx"] - m[0, 2], off["ty"] - m[1, 2]) > 0.2, off

    used = stamp_mask()
    for name, dtype, channels in (target_mask, source_mask):
        dt = np.dtype(dtype)
        on = True if dt == np.bool_ else (np.iinfo(dt).max if dt.kind == "u" else 1.0)
        mask = np.where(used, on, 0).astype(dt)
        if channels > 1:
            color = np.zeros((SIZE, SIZE, channels), dt)
            color[..., 1] = mask  # the mask in green alone
            if channels == 4:
                color[..., 3] = mask  # and transparent where left out
            mask = color
        io.write_image(stamped_work / name, mask)
    result = run("align", "target.png", "source.png", "--json",
                 "--target-mask", target_mask[0], "--source-mask", source_mask[0])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["target_mask"] == target_mask[0] and doc["source_mask"] == source_mask[0]
    assert abs(doc["tx"] - m[0, 2]) < 0.05 and abs(doc["ty"] - m[1, 2]) < 0.05, doc
    assert abs(doc["theta_deg"] - THETA_DEG) < 0.02


def test_one_mask_is_enough_for_a_stamp_in_the_target_only(work, pair_arrays):
    target, source = pair_arrays
    io.write_image(work / "target.png", stamped(target))
    io.write_image(work / "keep.png", stamp_mask())
    result = run("align", "target.png", "source.png", "--json", "--target-mask", "keep.png")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["target_mask"] == "keep.png" and doc["source_mask"] is None
    m = true_matrix()
    assert abs(doc["tx"] - m[0, 2]) < 0.05 and abs(doc["ty"] - m[1, 2]) < 0.05, doc


def test_no_masks_are_recorded_as_null(work):
    result = run("align", "target.png", "source.png", "--json")
    doc = json.loads(result.stdout)
    assert doc["target_mask"] is None and doc["source_mask"] is None


@pytest.mark.parametrize("option", ["--target-mask", "--source-mask"])
def test_mask_size_mismatch_is_one_line_exit_2(work, option):
    io.write_image(work / "small.png", np.ones((SIZE - 6, SIZE + 4), np.uint8))
    line = assert_one_line_error(run("align", "target.png", "source.png", option, "small.png"),
                                 "small.png", "size")
    which = option[2:8]
    assert f"{SIZE + 4}x{SIZE - 6}" in line and f"{SIZE}x{SIZE}" in line
    assert f"the {which} {which}.png" in line
    assert listing(work) == ["small.png", *INPUTS]


def test_mask_of_the_other_image_size(work, pair_arrays):
    # The target is smaller than the source: each mask is checked against its own image.
    io.write_image(work / "target.png", pair_arrays[0][:80, :70])
    io.write_image(work / "tm.png", np.ones((80, 70), np.uint8))
    line = assert_one_line_error(
        run("align", "target.png", "source.png", "--source-mask", "tm.png"), "tm.png", "70x80")
    assert f"{SIZE}x{SIZE}" in line


@pytest.mark.parametrize("option", ["--target-mask", "--source-mask"])
def test_missing_or_corrupt_mask_file(work, option):
    assert_one_line_error(run("align", "target.png", "source.png", option, "nope.png"),
                          "nope.png", "no such file")
    (work / "bad.png").write_text("not a mask\n")
    assert_one_line_error(run("align", "target.png", "source.png", option, "bad.png"),
                          "bad.png", "not an image")
    assert listing(work) == ["bad.png", *INPUTS]


def test_mask_leaving_nothing_names_the_mask(work):
    io.write_image(work / "zero.png", np.zeros((SIZE, SIZE), np.uint8))
    assert_one_line_error(run("align", "target.png", "source.png", "--source-mask", "zero.png"),
                          "zero.png", "mask")
    assert listing(work) == INPUTS + ["zero.png"]


def test_output_would_overwrite_a_mask(work):
    io.write_image(work / "m.png", np.ones((SIZE, SIZE), np.uint8))
    before = (work / "m.png").read_bytes()
    assert_one_line_error(
        run("align", "target.png", "source.png", "--target-mask", "m.png", "-o", "m.png"),
        "m.png", "overwrite an input")
    assert (work / "m.png").read_bytes() == before


# --------------------------------------------------------------------------------------------
# Where the descent starts: --init auto|none|TX,TY,DEG
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "method"),
                         [(None, "auto"), ("auto", "auto"), ("AUTO", "auto"), ("none", "none"),
                          (" None ", "none"), ("0,0,1", "given")])
def test_init_is_recorded_in_the_json(work, given, method):
    args = ["align", "target.png", "source.png", "--json"]
    if given is not None:
        args += ["--init", given]
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["init"]["method"] == method
    assert {"tx", "ty", "theta_deg"} <= set(doc["init"])
    if method == "given":
        assert [doc["init"][k] for k in ("tx", "ty", "theta_deg")] == pytest.approx([0, 0, 1])
    if method == "none":  # equal sizes: centers matched is the identity
        assert [doc["init"][k] for k in ("tx", "ty", "theta_deg")] == pytest.approx([0, 0, 0])
    assert abs(doc["theta_deg"] - THETA_DEG) < 0.05


def test_init_auto_finds_a_large_rotation_that_none_misses(tmp_path, monkeypatch):
    target, source = make_pair(theta_deg=120.0, shift=(6.0, -4.0))
    io.write_image(tmp_path / "target.png", target)
    io.write_image(tmp_path / "source.png", source)
    monkeypatch.chdir(tmp_path)
    result = run("align", "target.png", "source.png")  # auto, the default
    assert result.exit_code == 0, result.stderr
    assert "start      global search" in result.stdout and "match      ncc" in result.stdout
    doc = json.loads((tmp_path / "source_aligned.json").read_text())
    assert doc["init"]["method"] == "auto" and doc["ncc"] > 0.9
    assert doc.get("detail_ncc", 1.0) > 0.5
    m = true_matrix(120.0, (6.0, -4.0))
    assert abs(doc["theta_deg"] - 120.0) < 0.05
    assert abs(doc["tx"] - m[0, 2]) < 0.1 and abs(doc["ty"] - m[1, 2]) < 0.1

    missed = run("align", "target.png", "source.png", "--init", "none", "--json")
    assert missed.exit_code == 1  # reported, not a silent wrong answer
    doc = json.loads(missed.stdout)
    assert doc["converged"] is False and doc["reason"]
    assert doc["init"]["method"] == "none"


def test_unrelated_images_exit_1_with_the_reason(work):
    other = io.read_image(SAMPLES / "gravel.jpg")[100 : 100 + SIZE, 200 : 200 + SIZE]
    io.write_image(work / "other.png", other)
    result = run("align", "target.png", "other.png")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "converged  NO" in result.stdout and "ncc" in result.stdout
    assert "did not converge" in result.stderr
    doc = json.loads((work / "other_aligned.json").read_text())
    assert doc["converged"] is False and doc["reason"]
    assert doc["ncc"] is None or doc["ncc"] < 0.5
    assert (work / "other_aligned.png").exists()


# --------------------------------------------------------------------------------------------
# Minimum overlap
# --------------------------------------------------------------------------------------------


def test_min_overlap_reaches_the_engine(work):
    # The 3-degree rotation leaves about 4% of the target outside the source.
    result = run("align", "target.png", "source.png", "--min-overlap", "0.99")
    assert result.exit_code == 1, result.stderr
    doc = json.loads((work / "source_aligned.json").read_text())
    assert doc["converged"] is False and "overlap" in doc["reason"]
    assert run("align", "target.png", "source.png", "--min-overlap", "0.5", "-q").exit_code == 0


# --------------------------------------------------------------------------------------------
# Registration that does not converge: exit 1, outputs written anyway
# --------------------------------------------------------------------------------------------


def test_not_converged_exits_1_and_says_why(work):
    result = run("align", "target.png", "source.png", "--max-iter", "1", "--tol", "1e-6")
    assert result.exit_code == 1, result.stderr
    assert "converged  NO" in result.stdout
    assert "did not converge" in result.stderr
    doc = json.loads((work / "source_aligned.json").read_text())
    assert doc["converged"] is False and doc["reason"]
    assert (work / "source_aligned.png").exists()


def test_not_converged_with_json_keeps_stdout_pure(work):
    result = run("align", "target.png", "source.png", "--max-iter", "1", "--tol", "1e-6",
                 "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["converged"] is False


# --------------------------------------------------------------------------------------------
# Bad usage and bad input: exit 2, one line naming the file, no output
# --------------------------------------------------------------------------------------------

INPUTS = ["source.png", "target.png"]


def test_missing_file(work):
    assert_one_line_error(run("align", "target.png", "nope.png"), "nope.png", "no such file")
    assert_one_line_error(run("align", "nope.png", "source.png"), "nope.png", "no such file")
    assert listing(work) == INPUTS


def test_directory_as_input(work):
    (work / "d").mkdir()
    assert_one_line_error(run("align", "d", "source.png"), "d", "directory")
    assert listing(work) == ["d", *INPUTS]


def test_unreadable_file(work, monkeypatch):
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        (work / "source.png").chmod(0)
    else:
        real_open = open

        def deny_source(file, *args, **kwargs):
            if os.fspath(file).endswith("source.png"):
                raise PermissionError(13, "Permission denied", os.fspath(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(io, "open", deny_source, raising=False)
    assert_one_line_error(run("align", "target.png", "source.png"), "source.png",
                          "permission denied")
    assert listing(work) == INPUTS


def test_not_an_image(work):
    (work / "notes.png").write_text("hello\n")
    assert_one_line_error(run("align", "target.png", "notes.png"), "notes.png", "not an image")


def test_truncated_png(work):
    data = (work / "source.png").read_bytes()
    (work / "cut.png").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("align", "target.png", "cut.png"), "cut.png", "truncated")
    assert listing(work) == ["cut.png", *INPUTS]


def test_constant_image(work):
    io.write_image(work / "flat.png", np.full((SIZE, SIZE), 128, np.uint8))
    assert_one_line_error(run("align", "flat.png", "source.png"), "flat.png", "constant")
    assert_one_line_error(run("align", "target.png", "flat.png"), "flat.png", "constant")
    assert listing(work) == ["flat.png", *INPUTS]


def test_too_small_image(work):
    io.write_image(work / "tiny.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert_one_line_error(run("align", "target.png", "tiny.png"), "tiny.png", "too small")
    assert listing(work) == INPUTS + ["tiny.png"]


def test_multipage_tiff(work):
    with tifffile.TiffWriter(work / "stack.tif") as tif:
        for _ in range(3):
            tif.write(np.zeros((SIZE, SIZE), np.uint8))
    assert_one_line_error(run("align", "target.png", "stack.tif"), "stack.tif", "multi-page")


def test_volume_tiff(work):
    tifffile.imwrite(work / "vol.tif", np.zeros((6, SIZE, SIZE), np.uint8),
                     photometric="minisblack", planarconfig="separate")
    assert_one_line_error(run("align", "vol.tif", "source.png"), "vol.tif", "volume")


def test_mostly_nan_float_tiff(work, pair_arrays):
    image = pair_arrays[1].astype(np.float32)
    image[: int(SIZE * 0.8)] = np.nan
    io.write_image(work / "nan.tif", image)
    assert_one_line_error(run("align", "target.png", "nan.tif"), "nan.tif", "nan")
    assert listing(work) == ["nan.tif", *INPUTS]


def test_output_folder_missing(work):
    assert_one_line_error(run("align", "target.png", "source.png", "-o", "no/dir/a.png"),
                          "no/dir/a.png", "does not exist")
    assert_one_line_error(run("align", "target.png", "source.png", "--params", "no/p.json"),
                          "no/p.json", "does not exist")
    assert listing(work) == INPUTS


@pytest.mark.parametrize("output", ["source.png", "target.png", "./target.png"])
def test_output_equal_to_an_input(work, output):
    before = (work / "source.png").read_bytes(), (work / "target.png").read_bytes()
    assert_one_line_error(run("align", "target.png", "source.png", "-o", output), output,
                          "overwrite an input")
    assert ((work / "source.png").read_bytes(), (work / "target.png").read_bytes()) == before
    assert listing(work) == INPUTS


def test_params_equal_to_an_input_or_the_image(work):
    assert_one_line_error(run("align", "target.png", "source.png", "--params", "target.png"),
                          "target.png", "overwrite an input")
    assert_one_line_error(
        run("align", "target.png", "source.png", "-o", "a.png", "--params", "a.png"),
        "a.png", "overwrite the aligned image")
    assert listing(work) == INPUTS


def test_output_format_cannot_hold_the_data(work, pair_arrays):
    io.write_image(work / "s16.tif", np.stack([pair_arrays[1].astype(np.uint16)] * 3, -1))
    line = assert_one_line_error(run("align", "target.png", "s16.tif", "-o", "out.png"),
                                 "out.png", "png cannot hold")
    assert ".tif" in line
    line = assert_one_line_error(run("align", "target.png", "source.png", "-o", "out.bmp"),
                                 "out.bmp", "extension")
    assert listing(work) == ["s16.tif", *INPUTS]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["align", "target.png"], ["missing argument"]),
        (["align", "target.png", "source.png", "--bogus"], ["no such option"]),
        (["align", "target.png", "source.png", "--init", "1,2"], ["tx,ty,deg"]),
        (["align", "target.png", "source.png", "--init", "a,b,c"], ["tx,ty,deg"]),
        (["align", "target.png", "source.png", "--init", "automatic"], ["auto", "none"]),
        (["align", "target.png", "source.png", "--init", "1,2,inf"], ["tx,ty,deg"]),
        (["align", "target.png", "source.png", "--optimizer", "adam"], ["adam"]),
        (["align", "target.png", "source.png", "--tol", "0"], ["--tol"]),
        (["align", "target.png", "source.png", "--levels", "0"], ["--levels"]),
        (["align", "target.png", "source.png", "--levels", "30"], ["levels"]),
        (["align", "target.png", "source.png", "--fill", "nan"], ["--fill"]),
        (["align", "target.png", "source.png", "--min-overlap", "0"], ["--min-overlap"]),
        (["align", "target.png", "source.png", "--min-overlap", "1.5"], ["--min-overlap"]),
        (["align", "target.png", "source.png", "--min-overlap", "x"], ["--min-overlap"]),
        (["frobnicate"], ["no such command"]),
    ],
)
def test_bad_usage_is_one_line(work, args, words):
    assert_one_line_error(run(*args), None, *words)
    assert listing(work) == INPUTS


# --------------------------------------------------------------------------------------------
# Interruptions and internal errors: nothing left behind
# --------------------------------------------------------------------------------------------


def test_ctrl_c_while_writing_the_image(work, monkeypatch):
    def interrupted(path, tmp, *args):
        Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_encode", interrupted)
    result = run("align", "target.png", "source.png")
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert listing(work) == INPUTS


def test_ctrl_c_while_writing_the_json_removes_the_image(work, monkeypatch):
    def interrupted(document):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "dumps_json", interrupted)
    result = run("align", "target.png", "source.png")
    assert result.exit_code == 130
    assert listing(work) == INPUTS


def test_disk_full_while_writing_is_one_line_exit_2(work, monkeypatch):
    def full(path, tmp, *args):
        Path(tmp).write_bytes(b"part")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "_encode", full)
    assert_one_line_error(run("align", "target.png", "source.png"), "source_aligned.png",
                          "no space left")
    assert listing(work) == INPUTS


def test_ctrl_c_during_registration(work, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(regtool, "align", interrupted)
    result = run("align", "target.png", "source.png")
    assert result.exit_code == 130
    assert listing(work) == INPUTS


def test_unexpected_error_is_one_line_exit_1(work, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("something broke\nover two lines")

    monkeypatch.setattr(regtool.Result, "warp", broken)
    result = run("align", "target.png", "source.png")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regtool: internal error: RuntimeError")
    assert listing(work) == INPUTS


# --------------------------------------------------------------------------------------------
# The sample pairs shipped for the demo
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("suffix", "shape"), [("", (512, 512)), ("_251x301", (301, 251))])
def test_sample_pairs_match_their_true_parameters(suffix, shape):
    target = io.read_image(SAMPLES / f"target{suffix}.png")
    source = io.read_image(SAMPLES / f"source{suffix}.png")
    truth = json.loads((SAMPLES / f"true_params{suffix}.json").read_text())
    assert target.shape[:2] == shape and source.shape[:2] == shape
    m = np.array(truth["matrix"])
    t = math.radians(truth["theta_deg"])
    assert math.isclose(truth["theta"], t)
    assert np.allclose(m, [[math.cos(t), -math.sin(t), truth["tx"]],
                           [math.sin(t), math.cos(t), truth["ty"]]])
    aligned = regtool.warp(source, m, shape).astype(float)
    inner = (slice(40, -40), slice(40, -40))
    rms = np.sqrt(np.mean((aligned[inner] - target[inner]) ** 2))
    nudged = m.copy()
    nudged[:, 2] += 0.5
    rms_off = np.sqrt(np.mean((regtool.warp(source, nudged, shape)[inner] - target[inner]) ** 2))
    assert rms < 4 and rms_off > 1.5 * rms


def test_bad_thread_count_in_the_environment_is_bad_usage(work, monkeypatch):
    # read deep in the engine and the warp: said once, before any work or output
    monkeypatch.setenv("REGTOOL_THREADS", "two")
    before = listing(work)
    result = run("align", "target.png", "source.png")
    line = assert_one_line_error(result, None, "regtool_threads", "positive integer")
    assert "'two'" in line
    assert listing(work) == before
