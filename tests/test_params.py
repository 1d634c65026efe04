"""Saved transforms (regtool.params), point mapping (transform.map_points), points tables."""

from __future__ import annotations

import doctest
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from synth import make_pair, photo

import regtool
import regtool.params
import regtool.points
import regtool.transform
from regtool import io, points
from regtool.params import SavedTransform, parse_params, read_params
from regtool.transform import map_points, rigid_matrix


@pytest.fixture(scope="module")
def result() -> regtool.Result:
    target, source, _ = make_pair(photo(0), (80, 96), (2.0, -1.5), 4.0)
    return regtool.align(target, source)


# --------------------------------------------------------------------------------------------
# Parameter documents
# --------------------------------------------------------------------------------------------


def test_an_align_document_gives_back_its_exact_matrix_and_grid(result):
    doc = result.to_dict()
    text = io.dumps_json(doc)
    for form in (text, text.encode(), "\ufeff" + text, doc, json.loads(text)):
        saved = parse_params(form, "p.json")
        assert np.array_equal(saved.matrix[:2], result.matrix)  # bit for bit, through JSON
        assert np.array_equal(saved.matrix[2], [0.0, 0.0, 1.0])
        assert saved.target_shape == (80, 96) and saved.source_shape == (80, 96)
        assert saved.converged is True and saved.reason is None and saved.name == "p.json"


def test_saved_warp_is_result_warp_byte_for_byte(result):
    saved = parse_params(io.dumps_json(result.to_dict()), "p.json")
    rng = np.random.default_rng(1)
    gray = (rng.random((80, 96)) * 255).astype(np.uint8)
    rgb16 = (rng.random((80, 96, 3)) * 65535).astype(np.uint16)
    labels = rng.integers(0, 5, (80, 96)).astype(np.uint8)
    for image, interp in ((gray, "cubic"), (rgb16, "linear"), (labels, "nearest")):
        mine = saved.warp(image, interp=interp, fill=3)
        assert mine.dtype == image.dtype
        assert np.array_equal(mine, result.warp(image, interp=interp, fill=3))


def test_hand_written_tx_ty_theta(result):
    by_rad = parse_params({"tx": 1.5, "ty": -2.0, "theta": 0.1, "target_shape": [5, 7]}, "h")
    by_deg = parse_params({"tx": 1.5, "ty": -2.0, "theta_deg": math.degrees(0.1),
                           "target_shape": [5, 7]}, "h")
    assert np.allclose(by_rad.matrix, rigid_matrix(1.5, -2.0, 0.1), atol=1e-15)
    assert np.allclose(by_deg.matrix, by_rad.matrix, atol=1e-15)
    assert by_rad.source_shape is None and by_rad.converged is None
    both = {"tx": 1.5, "ty": -2.0, "theta": 0.1, "theta_deg": 5.0, "target_shape": [5, 7]}
    with pytest.raises(io.ImageError, match="disagree"):
        parse_params(both, "h.json")


def test_a_3x3_matrix_and_a_non_rigid_one_are_accepted():
    shear = [[1.0, 0.2, 3.0], [0.0, 1.1, 4.0], [0, 0, 1]]
    saved = parse_params({"matrix": shear, "target_shape": [4, 4]}, "a.json")
    assert np.array_equal(saved.matrix, np.array(shear, dtype=float))


def test_an_edited_tx_is_caught(result):
    doc = result.to_dict()
    doc["tx"] += 0.5  # the matrix still says the old value
    with pytest.raises(io.ImageError) as info:
        parse_params(doc, "edited.json")
    assert str(info.value).startswith("edited.json: ") and "disagree" in str(info.value)
    doc = result.to_dict()
    doc["theta"] += 2 * math.pi  # the same rotation
    doc["theta_deg"] = math.degrees(doc["theta"])
    assert np.array_equal(parse_params(doc, "p").matrix[:2], result.matrix)


def test_errors_are_one_line_naming_the_document():
    cases = ["", "{", "[]", "{}", '{"matrix": [[1, 0, 0], [0, 1, 0]]}',
             '{"matrix": [[1, 0, 0], [0, 1, 0]], "target_shape": [4, 4], '
             '"source_shape": [4]}']
    for text in cases:
        with pytest.raises(io.ImageError) as info:
            parse_params(text, "doc.json")
        message = str(info.value)
        assert message.startswith("doc.json: ") and "\n" not in message
        assert info.value.path == "doc.json"


def test_target_shape_is_optional_for_points_only():
    saved = parse_params({"tx": 1, "ty": 2, "theta": 0}, "p.json", need_target_shape=False)
    assert saved.target_shape is None
    assert np.allclose(saved.map_points(np.array([[0.0, 0.0]])), [[-1.0, -2.0]])
    with pytest.raises(io.ImageError, match='no "target_shape"'):
        saved.warp(np.zeros((4, 4)))
    with pytest.raises(io.ImageError, match='p.json: no "target_shape"'):
        saved.check_image("a.png", np.zeros((4, 4)))


def test_check_image_names_the_image_and_the_sizes(result):
    saved = parse_params(result.to_dict(), "p.json")
    saved.check_image("ok.png", np.zeros((80, 96, 3), np.uint8))
    with pytest.raises(io.ImageError) as info:
        saved.check_image("small.png", np.zeros((96, 80), np.uint8))
    assert str(info.value).startswith("small.png: image is 80x96 pixels")
    assert "96x80 source" in str(info.value) and "p.json" in str(info.value)
    with pytest.raises(io.ImageError, match="fill value of nan"):
        saved.check_image("a.png", np.zeros((80, 96), np.uint16), math.nan)
    saved.check_image("a.tif", np.zeros((80, 96), np.float32), math.nan)  # floats hold NaN


def test_read_params_reads_a_file(tmp_path, result):
    path = tmp_path / "p.json"
    io.write_json(path, result.to_dict())
    saved = read_params(path)
    assert isinstance(saved, SavedTransform) and saved.name == os.fspath(path)
    with pytest.raises(io.ImageError, match="no such file"):
        read_params(tmp_path / "missing.json")


# --------------------------------------------------------------------------------------------
# map_points
# --------------------------------------------------------------------------------------------


def test_map_points_goes_source_to_target_by_default():
    m = rigid_matrix(4.0, -3.0, 0.3)
    target = np.array([[0.0, 0.0], [10.0, 5.0], [-2.5, 7.25]])
    source = target @ m[:2, :2].T + m[:2, 2]  # source = M target
    assert np.allclose(map_points(m, source), target, atol=1e-12)
    assert np.allclose(map_points(m[:2], target, inverse=True), source, atol=1e-12)
    assert map_points(m, source[1]).shape == (2,)  # one point
    assert map_points(m, np.zeros((0, 2))).shape == (0, 2)


@settings(max_examples=50, deadline=None)
@given(tx=st.floats(-1e3, 1e3), ty=st.floats(-1e3, 1e3), theta=st.floats(-7, 7),
       x=st.floats(-5e3, 5e3), y=st.floats(-5e3, 5e3))
def test_map_points_round_trips(tx, ty, theta, x, y):
    m = rigid_matrix(tx, ty, theta)
    there = map_points(m, [[x, y]])
    assert np.allclose(map_points(m, there, inverse=True), [[x, y]], rtol=0, atol=1e-9)


def test_map_points_refuses_what_it_cannot_map():
    with pytest.raises(ValueError, match="inverted"):
        map_points([[1, 1, 0], [1, 1, 0]], [[1.0, 2.0]])
    with pytest.raises(ValueError, match="2x3 or 3x3"):
        map_points(np.eye(2), [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        map_points(np.eye(3), [[1.0, 2.0, 3.0]])


# --------------------------------------------------------------------------------------------
# Points tables
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, delimiter", [
    ("id,x,y,note\n1,1.5,2,\"a, b\"\n2,3,4,c\n", ","),
    ("\ufeffID\tX\tY\tnote\r\n1\t1.5\t2\ta, b\r\n\r\n2\t3\t4\tc\r\n", "\t"),
    ("id; X ;Y;note\n1;1.5;2;a, b\n2;3;4;c\n", ";"),
])
def test_tables_in_their_dialects(text, delimiter):
    table = points.parse_points(text, "t.csv")
    assert table.delimiter == delimiter
    assert np.array_equal(table.xy, [[1.5, 2.0], [3.0, 4.0]])
    assert [r[3] for r in table.rows] == ["a, b", "c"]
    text_again = points.format_points(table)
    assert text_again.count(delimiter) == text.count(delimiter) and "\r" not in text_again
    again = points.parse_points(text_again, "t.csv")
    assert again.header == table.header and again.delimiter == delimiter
    assert [r[0] + r[3] for r in again.rows] == [r[0] + r[3] for r in table.rows]
    assert np.array_equal(again.xy, table.xy)


def test_mapped_values_are_written_exactly_and_the_rest_is_untouched():
    table = points.parse_points("frame,x,y,track\n003,1,2,A7\n", "t.csv")
    xy = np.array([[0.1 + 0.2, -1e-17]])
    text = points.format_points(table.with_xy(xy))
    assert text == f"frame,x,y,track\n003,{0.1 + 0.2!r},-1e-17,A7\n"
    assert np.array_equal(points.parse_points(text, "t.csv").xy, xy)  # no digit lost
    with pytest.raises(ValueError, match="1 x, y pairs"):
        table.with_xy(np.zeros((2, 2)))


def test_a_header_only_table_has_no_points():
    table = points.parse_points("x,y\n", "t.csv")
    assert table.xy.shape == (0, 2)
    assert points.format_points(table) == "x,y\n"


def test_write_points_is_atomic(tmp_path, monkeypatch):
    table = points.parse_points("x,y\n1,2\n", "t.csv")
    dest = tmp_path / "out.csv"
    points.write_points(dest, table)
    assert dest.read_text() == "x,y\n1.0,2.0\n"

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        points.write_points(tmp_path / "new.csv", table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_read_points_names_the_file(tmp_path):
    path = tmp_path / "pts.csv"
    path.write_bytes(b"x,y\n1,2\n\xff\xfe\n")
    with pytest.raises(io.ImageError, match="pts.csv: not a UTF-8 text file"):
        points.read_points(path)
    with pytest.raises(io.ImageError, match="is a directory"):
        points.read_points(tmp_path)
    Path(path).write_text("x,y\n1,2\n")
    assert np.array_equal(points.read_points(path).xy, [[1.0, 2.0]])


@pytest.mark.parametrize("module", [regtool.params, regtool.points, regtool.transform])
def test_docstring_examples(module):
    failures, tried = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0
