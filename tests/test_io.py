"""Tests of regtool.io: every promised format/dtype/channel round trip, every refusal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from regtool import io
from regtool.io import ImageError, read_image, write_image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
RNG = np.random.default_rng(1234)
SHAPE = (23, 31)  # odd sizes, H != W, catch transposed axes


def make_image(dtype: str, channels: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Random image of ``dtype`` spanning its range (floats include negatives and > 1)."""
    full = shape if channels == 1 else (*shape, channels)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return RNG.random(full) > 0.5
    if dt.kind == "u":
        return RNG.integers(0, np.iinfo(dt).max, size=full, endpoint=True).astype(dt)
    return (RNG.standard_normal(full) * 1000).astype(dt)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------

TIFF_CASES = [(d, c) for d in ("bool", "uint8", "uint16", "float32", "float64") for c in (1, 3, 4)]
PNG_CASES = [("bool", 1), ("uint8", 1), ("uint8", 3), ("uint8", 4), ("uint16", 1)]
JPEG_CASES = [("uint8", 1), ("uint8", 3)]


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".TIF"])
@pytest.mark.parametrize(("dtype", "channels"), TIFF_CASES)
def test_tiff_round_trip_is_exact(tmp_path, ext, dtype, channels):
    image = make_image(dtype, channels)
    path = tmp_path / f"img{ext}"
    write_image(path, image)
    back = read_image(path)
    assert back.dtype == image.dtype
    assert back.shape == image.shape
    np.testing.assert_array_equal(back, image)
    assert files_in(tmp_path) == [path.name]  # no temporary left behind


@pytest.mark.parametrize(("dtype", "channels"), PNG_CASES)
def test_png_round_trip_is_exact(tmp_path, dtype, channels):
    image = make_image(dtype, channels)
    path = tmp_path / "img.png"
    write_image(path, image)
    back = read_image(path)
    assert back.dtype == image.dtype
    assert back.shape == image.shape
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize(("dtype", "channels"), JPEG_CASES)
def test_jpeg_round_trip_is_close(tmp_path, dtype, channels):
    # JPEG is lossy: a smooth image survives within a few gray levels.
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    plane = (100 + 60 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.uint8)
    image = plane if channels == 1 else np.stack([plane, plane[::-1], 255 - plane], axis=-1)
    for ext in (".jpg", ".jpeg"):
        path = tmp_path / f"img{ext}"
        write_image(path, image)
        back = read_image(path)
        assert back.dtype == np.uint8
        assert back.shape == image.shape
        assert np.abs(back.astype(int) - image.astype(int)).mean() < 4


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(["bool", "uint8", "uint16", "float32", "float64"]),
    channels=st.sampled_from([1, 3, 4]),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
)
def test_tiff_round_trip_any_size(tmp_path_factory, dtype, channels, height, width):
    folder = tmp_path_factory.mktemp("any")
    image = make_image(dtype, channels, (height, width))
    write_image(folder / "x.tif", image)
    back = read_image(folder / "x.tif")
    assert back.shape == image.shape and back.dtype == image.dtype
    np.testing.assert_array_equal(back, image)


def test_float_tiff_keeps_nan_and_inf(tmp_path):
    image = make_image("float32", 1)
    image[0, 0], image[1, 1], image[2, 2] = np.nan, np.inf, -np.inf
    write_image(tmp_path / "f.tif", image)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tif"), image)


def test_sample_photographs_read(tmp_path):
    camera = read_image(SAMPLES / "camera.png")
    assert camera.shape == (512, 512) and camera.dtype == np.uint8
    retina = read_image(SAMPLES / "retina.jpg")
    assert retina.shape == (1411, 1411, 3) and retina.dtype == np.uint8
    shapes = {"coffee.jpg": (400, 600, 3), "rocket.jpg": (427, 640, 3),
              "hubble_deep_field.jpg": (600, 600, 3), "gravel.jpg": (512, 512)}
    for name, shape in shapes.items():
        photo = read_image(SAMPLES / name)
        assert photo.shape == shape and photo.dtype == np.uint8, name
        assert (SAMPLES / name).stat().st_size < 150_000, name


# --------------------------------------------------------------------------------------------
# Conversions on read
# --------------------------------------------------------------------------------------------


def test_palette_png_reads_as_rgb(tmp_path):
    rgb = make_image("uint8", 3)
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    with Image.open(tmp_path / "pal.png") as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("RGB"))
    back = read_image(tmp_path / "pal.png")
    assert back.shape == (*SHAPE, 3) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, expected)


def test_palette_png_with_transparency_reads_as_rgba(tmp_path):
    im = Image.fromarray(make_image("uint8", 3)).convert("P")
    im.save(tmp_path / "pal.png", transparency=0)
    back = read_image(tmp_path / "pal.png")
    assert back.shape == (*SHAPE, 4)
    indices = np.asarray(Image.open(tmp_path / "pal.png"))
    np.testing.assert_array_equal(back[..., 3] == 0, indices == 0)


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    Image.fromarray(make_image("uint8", 3)).convert("CMYK").save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").shape == (*SHAPE, 3)


def test_planar_rgb_tiff_reads_interleaved(tmp_path):
    rgb = make_image("uint16", 3)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), rgb)


def test_single_channel_axis_is_dropped(tmp_path):
    gray = make_image("uint8", 1)
    tifffile.imwrite(tmp_path / "g.tif", gray[..., None], photometric="minisblack")
    back = read_image(tmp_path / "g.tif")
    assert back.shape == SHAPE


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("int8", "float32"), ("int16", "float32"), ("float16", "float32"),
     ("int32", "float64"), ("uint32", "float64"), (">u2", "uint16"), (">f8", "float64")],
)
def test_other_dtypes_convert_exactly(tmp_path, dtype, expected):
    dt = np.dtype(dtype)
    info = np.iinfo(dt) if dt.kind in "iu" else None
    if info is not None:
        image = np.linspace(info.min, info.max, SHAPE[0] * SHAPE[1]).reshape(SHAPE).astype(dt)
    else:
        image = make_image("float64", 1).astype(dt)
    tifffile.imwrite(tmp_path / "x.tif", image)
    back = read_image(tmp_path / "x.tif")
    assert back.dtype == np.dtype(expected)
    np.testing.assert_array_equal(back, image.astype(back.dtype))


def test_int64_within_float64_precision_converts(tmp_path):
    image = np.arange(SHAPE[0] * SHAPE[1], dtype=np.int64).reshape(SHAPE) - 100
    tifffile.imwrite(tmp_path / "x.tif", image)
    back = read_image(tmp_path / "x.tif")
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, image)


# --------------------------------------------------------------------------------------------
# Refusals on read: one line, naming the file
# --------------------------------------------------------------------------------------------


def refuse(path, *words, **options):
    with pytest.raises(ImageError) as info:
        read_image(path, **options)
    message = str(info.value)
    assert message.startswith(f"{os.fspath(path)}: ")
    assert "\n" not in message
    for word in words:
        assert word in message.lower()
    return message


def test_missing_file(tmp_path):
    refuse(tmp_path / "nope.png", "no such file")


def test_directory(tmp_path):
    refuse(tmp_path, "directory")


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    write_image(path, make_image("uint8", 1))
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        path.chmod(0)
    else:
        # root reads anything: make the open itself fail the way it fails for other users.
        def denied(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(io, "open", denied, raising=False)
    refuse(path, "permission denied")


def test_empty_file(tmp_path):
    (tmp_path / "e.png").write_bytes(b"")
    refuse(tmp_path / "e.png", "empty")


def test_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image\n")
    refuse(tmp_path / "notes.png", "not an image")


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.9])
def test_truncated_png(tmp_path, fraction):
    data = (SAMPLES / "camera.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: int(len(data) * fraction)])
    refuse(tmp_path / "cut.png", "truncated or corrupt png")


def test_truncated_tiff(tmp_path):
    write_image(tmp_path / "full.tif", make_image("uint16", 3))
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    refuse(tmp_path / "cut.tif", "truncated or corrupt tiff")


@pytest.mark.parametrize("name", ["img.png", "img.jpg", "img.tif"])
def test_max_pixels_decides_not_pillows_limit(tmp_path, monkeypatch, name):
    # 23x31 = 713 pixels. Pillow's own limit, set far below (it would refuse 200 and more),
    # plays no part and is left as it was; regtool's max_pixels refuses from the header.
    write_image(tmp_path / name, make_image("uint8", 1))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(tmp_path / name).shape == SHAPE
    assert read_image(tmp_path / name, max_pixels=713).shape == SHAPE
    assert Image.MAX_IMAGE_PIXELS == 100
    message = refuse(tmp_path / name, "declares 31x23 pixels", "limit of 712", "--max-pixels",
                     max_pixels=712)
    assert Image.MAX_IMAGE_PIXELS == 100
    assert message.endswith("more than the limit of 712 (--max-pixels)")


def test_max_pixels_must_be_positive(tmp_path):
    write_image(tmp_path / "img.png", make_image("uint8", 1))
    with pytest.raises(ValueError, match="at least 1"):
        read_image(tmp_path / "img.png", max_pixels=0)
    with pytest.raises(TypeError, match="integer"):
        read_image(tmp_path / "img.png", max_pixels=1e6)


def test_multipage_tiff(tmp_path):
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        tif.write(make_image("uint8", 1))
        tif.write(make_image("uint8", 1))
    refuse(tmp_path / "pages.tif", "multi-page", "2 pages")


def test_volume_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "vol.tif", RNG.random((5, *SHAPE)).astype(np.float32))
    refuse(tmp_path / "vol.tif", "5 pages")


def test_planar_volume_in_one_page(tmp_path):
    tifffile.imwrite(tmp_path / "vol.tif", make_image("uint8", 5).transpose(2, 0, 1),
                     photometric="minisblack", planarconfig="separate")
    refuse(tmp_path / "vol.tif", "volume")


def test_animated_gif_and_apng(tmp_path):
    frames = np.stack([make_image("uint8", 3), make_image("uint8", 3)])
    iio.imwrite(tmp_path / "anim.gif", frames, plugin="pillow", duration=100, loop=0)
    refuse(tmp_path / "anim.gif", "animated", "2 frames")
    iio.imwrite(tmp_path / "anim.png", frames, plugin="pillow", duration=100)
    refuse(tmp_path / "anim.png", "animated")


@pytest.mark.parametrize("channels", [2, 5])
def test_channel_count(tmp_path, channels):
    tifffile.imwrite(tmp_path / "c.tif", make_image("uint8", channels),
                     photometric="minisblack", planarconfig="contig")
    refuse(tmp_path / "c.tif", f"{channels} channels")


def test_gray_alpha_png(tmp_path):
    Image.fromarray(make_image("uint8", 1)).convert("LA").save(tmp_path / "la.png")
    refuse(tmp_path / "la.png", "gray + alpha")


def test_complex_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "z.tif", make_image("float32", 1).astype(np.complex64))
    refuse(tmp_path / "z.tif", "complex64")


def test_16_bit_rgb_png_is_refused_not_truncated(tmp_path):
    # Pillow would silently reduce this file to 8 bits; a hand-made 16-bit RGB PNG proves it.
    import struct
    import zlib

    h, w = 4, 5
    data = (np.arange(h * w * 3).reshape(h, w, 3) * 1000).astype(">u2")
    raw = b"".join(b"\x00" + data[y].tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    (tmp_path / "rgb16.png").write_bytes(png)
    message = refuse(tmp_path / "rgb16.png", "16-bit rgb png")
    assert ".tif" in message


# --------------------------------------------------------------------------------------------
# Refusals on write, and atomicity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dtype", "channels", "works"),
    [
        ("x.png", "uint16", 3, ".tif"),
        ("x.png", "uint16", 4, ".tif"),
        ("x.png", "float32", 1, ".tif"),
        ("x.png", "float64", 3, ".tif"),
        ("x.jpg", "uint8", 4, ".png or .tif"),
        ("x.jpg", "uint16", 1, ".png or .tif"),
        ("x.jpeg", "float32", 3, ".tif"),
        ("x.bmp", "uint8", 1, ".png, .tif or .jpg"),
        ("noext", "uint8", 1, ".png, .tif or .jpg"),
    ],
)
def test_write_refuses_what_the_format_cannot_hold(tmp_path, name, dtype, channels, works):
    with pytest.raises(ImageError) as info:
        write_image(tmp_path / name, make_image(dtype, channels))
    assert str(info.value).startswith(os.fspath(tmp_path / name) + ": ")
    assert works in str(info.value)
    assert files_in(tmp_path) == []


def test_write_removes_temporary_on_interrupt(tmp_path, monkeypatch):
    def interrupted(path, tmp, *args):
        Path(tmp).write_bytes(b"half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", make_image("uint8", 1))
    assert files_in(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    old = make_image("uint8", 1)
    write_image(tmp_path / "out.png", old)

    def broken(path, tmp, *args):
        Path(tmp).write_bytes(b"garbage")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io, "_encode", broken)
    with pytest.raises(ImageError, match="No space left"):
        write_image(tmp_path / "out.png", make_image("uint8", 1))
    assert files_in(tmp_path) == ["out.png"]
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(tmp_path / "out.png"), old)


def test_written_file_has_ordinary_permissions(tmp_path):
    write_image(tmp_path / "out.png", make_image("uint8", 1))
    mode = (tmp_path / "out.png").stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_write_json_round_trip_and_numpy_values(tmp_path):
    doc = {"a": np.float64(1.5), "b": np.arange(3), "c": float("nan"), "d": [np.int64(2)],
           "e": {"f": np.bool_(True), "g": float("inf")}, "p": tmp_path}
    io.write_json(tmp_path / "p.json", doc)
    back = json.loads((tmp_path / "p.json").read_text())
    assert back == {"a": 1.5, "b": [0, 1, 2], "c": None, "d": [2],
                    "e": {"f": True, "g": None}, "p": os.fspath(tmp_path)}
    assert files_in(tmp_path) == ["p.json"]


def test_output_set_removes_earlier_outputs_when_a_later_one_fails(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), io.OutputSet() as out:
        out.write_image(tmp_path / "a.png", make_image("uint8", 1))
        assert files_in(tmp_path) == ["a.png"]
        monkeypatch.setattr(io, "dumps_json", interrupted)
        out.write_json(tmp_path / "a.json", {})
    assert files_in(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Output checks before any work, and default names
# --------------------------------------------------------------------------------------------


def test_check_output_path_accepts_and_leaves_nothing(tmp_path):
    io.check_output_path(tmp_path / "out.png", [], dtype=np.uint8, channels=3)
    assert files_in(tmp_path) == []


def test_check_output_path_missing_folder(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        io.check_output_path(tmp_path / "nope" / "out.png")


def test_check_output_path_is_a_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        io.check_output_path(tmp_path)


def test_check_output_path_folder_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ImageError, match="not a directory"):
        io.check_output_path(tmp_path / "f" / "out.png")


def test_check_output_path_refuses_an_input(tmp_path, monkeypatch):
    write_image(tmp_path / "in.png", make_image("uint8", 1))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    for spelling in ["in.png", "./in.png", "sub/../in.png", os.fspath(tmp_path / "in.png")]:
        with pytest.raises(ImageError, match="overwrite an input"):
            io.check_output_path(spelling, ["in.png"])
    os.symlink(tmp_path / "in.png", tmp_path / "link.png")
    with pytest.raises(ImageError, match="overwrite an input"):
        io.check_output_path("link.png", [tmp_path / "in.png"])


def test_check_output_path_format(tmp_path):
    with pytest.raises(ImageError, match="use .tif"):
        io.check_output_path(tmp_path / "o.png", [], dtype=np.uint16, channels=3)


@pytest.mark.parametrize(
    ("source", "dtype", "channels", "expected"),
    [
        ("data/img.png", "uint8", 3, "img_aligned.png"),
        ("img.PNG", "uint16", 1, "img_aligned.PNG"),
        ("a/b/photo.jpg", "uint8", 3, "photo_aligned.jpg"),
        ("scan.tiff", "float64", 4, "scan_aligned.tiff"),
        ("x.gif", "uint8", 3, "x_aligned.png"),
        ("x.bmp", "uint8", 1, "x_aligned.png"),
        ("x.png", "uint16", 3, "x_aligned.tif"),
        ("x.jpg", "uint16", 1, "x_aligned.png"),
        ("x.webp", "float32", 1, "x_aligned.tif"),
        ("noext", "uint8", 1, "noext_aligned.png"),
    ],
)
def test_default_output_path(source, dtype, channels, expected):
    assert io.default_output_path(source, dtype, channels) == Path(expected)
    assert io.default_output_path(source, dtype, channels, "out") == Path("out") / expected


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def expected_mask(shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A mask with a hole and an odd border, so a transposed or shifted reading shows."""
    used = np.ones(shape, bool)
    used[3:9, 5:20] = False
    used[:, -1] = False
    return used


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("m.png", "bool"), ("m.png", "uint8"), ("m.png", "uint16"), ("m.tif", "uint16"),
     ("m.tif", "float32"), ("m.tif", "float64"), ("m.tif", "bool")],
)
def test_read_mask_gray_of_every_type(tmp_path, name, dtype):
    used = expected_mask()
    dt = np.dtype(dtype)
    on = True if dt == np.bool_ else (np.iinfo(dt).max if dt.kind == "u" else 0.5)
    write_image(tmp_path / name, np.where(used, on, 0).astype(dt))
    mask = io.read_mask(tmp_path / name, SHAPE)
    assert mask.dtype == np.bool_ and mask.shape == SHAPE
    np.testing.assert_array_equal(mask, used)


def test_read_mask_any_nonzero_value_counts(tmp_path):
    values = np.where(expected_mask(), 1, 0).astype(np.uint8)  # 1/255: dark, still used
    write_image(tmp_path / "m.png", values)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.png"), expected_mask())
    floats = np.where(expected_mask(), -1e-6, 0.0)
    floats[0, 0] = np.nan  # no value: not used
    write_image(tmp_path / "f.tif", floats)
    want = expected_mask()
    want[0, 0] = False
    np.testing.assert_array_equal(io.read_mask(tmp_path / "f.tif"), want)


def test_read_mask_jpeg_is_thresholded_at_half(tmp_path):
    used = expected_mask((64, 64))
    write_image(tmp_path / "m.jpg", np.where(used, 255, 0).astype(np.uint8))
    assert (io.read_image(tmp_path / "m.jpg")[~used] != 0).any()  # why: JPEG's black is not 0
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.jpg"), used)


def test_read_mask_color_any_channel(tmp_path):
    used = expected_mask()
    rgb = np.zeros((*SHAPE, 3), np.uint8)
    rgb[used, 1] = 255  # green where used
    rgb[0, 0] = (0, 0, 7)  # blue only: used too
    write_image(tmp_path / "m.png", rgb)
    want = used.copy()
    want[0, 0] = True
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.png", SHAPE), want)


def test_read_mask_rgba_opaque_black_and_white(tmp_path):
    used = expected_mask()
    rgba = np.full((*SHAPE, 4), 255, np.uint8)
    rgba[~used, :3] = 0  # opaque black: left out, although alpha is nonzero
    write_image(tmp_path / "m.png", rgba)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.png"), used)


def test_read_mask_rgba_transparent_is_left_out(tmp_path):
    used = expected_mask()
    rgba = np.full((*SHAPE, 4), 255, np.uint8)
    rgba[~used, 3] = 0  # drawn in the alpha channel over white
    write_image(tmp_path / "m.png", rgba)
    np.testing.assert_array_equal(io.read_mask(tmp_path / "m.png"), used)


def test_read_mask_size_mismatch_names_the_mask_and_both_sizes(tmp_path):
    write_image(tmp_path / "m.png", np.ones((20, 30), np.uint8))
    with pytest.raises(ImageError) as info:
        io.read_mask(tmp_path / "m.png", (23, 31), "the target t.png")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'm.png'}: ") and "\n" not in message
    assert "30x20" in message and "31x23" in message and "the target t.png" in message
    with pytest.raises(ImageError, match="its image is 31x23"):
        io.read_mask(tmp_path / "m.png", (23, 31, 3))


def test_read_mask_refuses_what_read_image_refuses(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        io.read_mask(tmp_path / "missing.png", SHAPE)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        io.read_mask(tmp_path / "bad.png", SHAPE)
