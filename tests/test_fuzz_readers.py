"""The readers against hostile files: mutated files, decompression bombs, absurd headers.

A seeded sample of benchmarks/fuzz_readers.py's mutated files (the script runs thousands), its
hand-made bombs, and ``max_pixels`` both ways. Every file either reads to a valid image or is
refused with one line naming it; a bomb is refused quickly and with little memory; nothing is
printed and nothing written.
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from regtool import io
from regtool.cli import cli
from regtool.io import DEFAULT_MAX_PIXELS, ImageError, read_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fuzz_readers as F  # noqa: E402

SEED = 7
CASES = 100


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    return F.make_seeds()


def assert_read_or_refused(path: Path, outcome: object) -> str:
    """An array regtool registers, or an ImageError of one line starting with the path."""
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, ImageError), repr(outcome)
        message = str(outcome)
        assert message.startswith(f"{os.fspath(path)}: "), message
        assert "\n" not in message and "\r" not in message, repr(message)
        assert message.isprintable(), repr(message)
        return "refused"
    assert isinstance(outcome, np.ndarray)
    assert outcome.dtype.name in io.READ_DTYPES
    assert outcome.ndim == 2 or (outcome.ndim == 3 and outcome.shape[-1] in (3, 4))
    assert outcome.size > 0
    return "read"


def attempt(path: Path, **options: object) -> object:
    try:
        return read_image(path, **options)
    except Exception as exc:
        return exc


def _proc_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return 1024 * int(line.split()[1])
    except OSError:
        pass
    return None


def measured(path: Path, **options: object) -> tuple[object, float, int, int | None]:
    """Outcome, seconds, peak Python allocations (tracemalloc), peak resident-set growth.

    The resident set counts what tracemalloc cannot see (Pillow's and zlib's C buffers); its
    high-water mark is reset first where Linux allows (else None).
    """
    rss = None
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss = _proc_bytes("VmRSS")
    except OSError:
        pass
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        outcome = attempt(path, **options)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    hwm = _proc_bytes("VmHWM")
    growth = None if rss is None or hwm is None else hwm - rss
    return outcome, seconds, peak, growth


def refused_quickly(path: Path, *words: str, **options: object) -> str:
    """Refused in one line holding ``words``, in under 1 s, with under 64 MB of memory."""
    outcome, seconds, peak, growth = measured(path, **options)
    assert assert_read_or_refused(path, outcome) == "refused", outcome
    message = str(outcome)
    for word in words:
        assert word in message, message
    assert seconds < 1.0, (seconds, message)
    assert peak < 64 * 2**20, (peak, message)
    if growth is not None:
        assert growth < 64 * 2**20, (growth, message)
    return message


# --------------------------------------------------------------------------------------------
# The seeded sample of mutated files
# --------------------------------------------------------------------------------------------


def test_seeded_sample_reads_or_refuses_in_one_line(tmp_path, seeds, capfd, monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])  # no logging configured, as in the CLI
    outcomes: collections.Counter[str] = collections.Counter()
    slowest = 0.0
    for index in range(CASES):
        case = F.make_case(seeds, SEED, index)
        path = tmp_path / f"case{index}{case.ext}"
        path.write_bytes(case.data)
        t0 = time.perf_counter()
        outcome = attempt(path)
        slowest = max(slowest, time.perf_counter() - t0)
        try:
            outcomes[assert_read_or_refused(path, outcome)] += 1
        except AssertionError as exc:
            raise AssertionError(f"case {index} ({case.seed}, {case.kind}): {exc}") from exc
    # The sample reaches both outcomes, and no file took long.
    assert outcomes["read"] >= 10 and outcomes["refused"] >= 50, outcomes
    assert slowest < 2.0
    # Nothing printed (tifffile's complaints about corrupt tags stay off stderr), nothing
    # written beside the cases.
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"case{i}{F.make_case(seeds, SEED, i).ext}" for i in range(CASES))


def test_tifffile_complaints_stay_off_stderr(tmp_path, monkeypatch, capsys):
    # With no logging configured (as in the command line: pytest's own handler is taken off
    # here), Python prints a library logger's warnings on stderr itself, and tifffile logs one
    # for every odd tag of a corrupt file. This one has 1000 LONGs past the end of the file.
    monkeypatch.setattr(logging.root, "handlers", [])
    data = bytearray(F.tiff_file(8, 8, [bytes(64)], extra=((305, 4, 2**31),)))
    entry = next(e for e in F.tiff_entries(bytes(data))[2]
                 if data[e:e + 2] == struct.pack("<H", 305))
    data[entry + 4:entry + 8] = struct.pack("<I", 1000)
    (tmp_path / "odd.tif").write_bytes(data)
    assert read_image(tmp_path / "odd.tif").shape == (8, 8)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_cases_are_reproducible(seeds):
    # The fuzz script's promise: a seed and an index name one file, whatever ran before.
    assert F.make_case(seeds, SEED, 42).data == F.make_case(seeds, SEED, 42).data
    assert F.make_case(seeds, SEED, 42).data != F.make_case(seeds, SEED + 1, 42).data


@pytest.fixture
def cli_work(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    io.write_image(tmp_path / "target.png", (F._texture((64, 64), rng) * 255).astype(np.uint8))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_cli_refuses(folder: Path, name: str) -> str:
    before = sorted(p.name for p in folder.iterdir())
    result = CliRunner().invoke(cli, ["align", "target.png", name, "-o", "out.png"])
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"regtool: error: {name}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written
    return lines[0]


def test_command_line_refuses_mutated_files_in_one_line(cli_work, seeds):
    refused = 0
    for index in range(CASES):
        case = F.make_case(seeds, SEED, index)
        name = f"fuzzed{index}{case.ext}"
        (cli_work / name).write_bytes(case.data)
        if isinstance(attempt(cli_work / name), ImageError):
            assert_cli_refuses(cli_work, name)
            refused += 1
        (cli_work / name).unlink()
        if refused == 6:
            break
    assert refused == 6


def test_command_line_refuses_bombs(cli_work):
    (cli_work / "bomb.png").write_bytes(F.png_zero_bomb(30_000, 30_000))
    line = assert_cli_refuses(cli_work, "bomb.png")
    assert "declares 30000x30000 pixels" in line and "--max-pixels" in line
    (cli_work / "bomb.tif").write_bytes(
        F.tiff_file(64, 64, [F.zeros_deflate(2**30)], compression=8))
    assert "decompression bomb" in assert_cli_refuses(cli_work, "bomb.tif")


# --------------------------------------------------------------------------------------------
# Absurd headers and decompression bombs
# --------------------------------------------------------------------------------------------


def test_png_header_declaring_1e5_squared(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(F.png_declaring(100_000, 100_000))
    message = refused_quickly(path, "declares 100000x100000 pixels")
    assert message == (f"{path}: declares 100000x100000 pixels, more than the limit of "
                       f"{DEFAULT_MAX_PIXELS} (--max-pixels)")


def test_png_zero_bomb_is_a_real_png_and_refused(tmp_path):
    # The construction makes a valid PNG: a small one decodes to the zeros it claims.
    small = tmp_path / "small.png"
    small.write_bytes(F.png_zero_bomb(300, 200))
    image = read_image(small)
    assert image.shape == (200, 300) and image.dtype == np.uint8 and not image.any()
    # 30000x30000 (900 MB of pixels) in under a megabyte.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(F.png_zero_bomb(30_000, 30_000))
    assert bomb.stat().st_size < 2**20
    refused_quickly(bomb, "declares 30000x30000 pixels", "--max-pixels")


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (2**31 - 1, 1)])
def test_png_empty_or_absurd_dimensions(tmp_path, width, height):
    path = tmp_path / "odd.png"
    path.write_bytes(F.png_declaring(width, height))
    refused_quickly(path, f"declares {width}x{height} pixels")


def test_tiff_header_declaring_1e5_squared(tmp_path):
    path = tmp_path / "huge.tif"
    path.write_bytes(F.tiff_file(100_000, 100_000, [bytes(64)]))
    refused_quickly(path, "declares 100000x100000 pixels", "--max-pixels")


@pytest.mark.parametrize("codec", ["deflate", "lzma", "packbits"])
def test_tiff_strip_bombs(tmp_path, codec):
    # A 64x64 8-bit page (4 KB) whose one strip inflates to 1 GiB (deflate, LZMA) or 25 MB
    # (PackBits, whose ratio is at most 64): tifffile's own decoders would inflate it all.
    strip, code = {
        "deflate": (F.zeros_deflate(2**30), 8),
        "lzma": (F.lzma.compress(bytes(2**24)) * 64, 34925),
        "packbits": (b"\x81\x00" * 200_000, 32773),
    }[codec]
    path = tmp_path / f"{codec}.tif"
    path.write_bytes(F.tiff_file(64, 64, [strip], compression=code))
    refused_quickly(path, "strip 0 inflates to more than", "where 4096 are declared",
                    "decompression bomb")


def test_tiff_valid_compressed_strips_still_read(tmp_path):
    # The same construction with the declared amount of zeros is an ordinary file.
    for strip, code in [(F.zeros_deflate(4096), 8), (F.lzma.compress(bytes(4096)), 34925),
                        (F.packbits(bytes(4096)), 32773)]:
        (tmp_path / "ok.tif").write_bytes(F.tiff_file(64, 64, [strip], compression=code))
        image = read_image(tmp_path / "ok.tif")
        assert image.shape == (64, 64) and not image.any()


def test_tiff_huge_tiles_and_samples(tmp_path):
    (tmp_path / "tile.tif").write_bytes(
        F.tiff_file(16, 16, [F.zeros_deflate(4096)], compression=8, tile=(65536, 65536)))
    refused_quickly(tmp_path / "tile.tif", "tiles of 65536x65536 pixels for a 16x16 image")
    (tmp_path / "samples.tif").write_bytes(F.tiff_file(100, 100, [bytes(64)], samples=65535))
    refused_quickly(tmp_path / "samples.tif", "65535 channels")


def test_tiff_ifd_cycle_and_chain_are_not_walked(tmp_path):
    # tifffile checks for a cycle only at the 100th page: a cycle of 300 would be walked until
    # 2**32 pages; 200000 empty IFDs, one by one.
    (tmp_path / "cycle.tif").write_bytes(F.tiff_ifd_cycle(300))
    refused_quickly(tmp_path / "cycle.tif", "multi-page TIFF (more than 1000 pages")
    (tmp_path / "chain.tif").write_bytes(F.tiff_many_ifds(200_000))
    refused_quickly(tmp_path / "chain.tif", "multi-page TIFF (more than 1000 pages")
    (tmp_path / "three.tif").write_bytes(F.tiff_many_ifds(2))
    refused_quickly(tmp_path / "three.tif", "multi-page TIFF (3 pages")


def test_tiff_data_past_the_end_of_the_file(tmp_path):
    # A strip that says it holds 4 GB: tifffile's read would allocate them first.
    data = bytearray(F.tiff_file(64, 64, [bytes(4096)]))
    (tmp_path / "full.tif").write_bytes(data)
    assert read_image(tmp_path / "full.tif").shape == (64, 64)
    order, big, entries = F.tiff_entries(bytes(data))
    counts = next(e for e in entries if struct.unpack("<H", data[e:e + 2])[0] == 279)
    data[counts + 8:counts + 12] = struct.pack("<I", 2**32 - 1)
    (tmp_path / "past.tif").write_bytes(data)
    refused_quickly(tmp_path / "past.tif", "truncated or corrupt TIFF", "past the end")


def test_jpeg_scan_limit_both_ways(tmp_path):
    # libjpeg decodes every scan over the whole image: 3000 scans of a flat 4096^2 image are
    # a 165 kB file that takes seconds.
    bomb = tmp_path / "scans.jpg"
    bomb.write_bytes(F.jpeg_many_scans(3000))
    assert bomb.stat().st_size < 200_000
    refused_quickly(bomb, "JPEG of more than 100 scans")
    (tmp_path / "100.jpg").write_bytes(F.jpeg_many_scans(100, side=64))
    assert read_image(tmp_path / "100.jpg").shape == (64, 64)
    (tmp_path / "101.jpg").write_bytes(F.jpeg_many_scans(101, side=64))
    refused_quickly(tmp_path / "101.jpg", "JPEG of more than 100 scans")


def test_jpeg_and_gif_declaring_huge_sizes(tmp_path, seeds):
    jpg = bytearray(seeds["rgb.jpg"])
    sof = jpg.find(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 65500, 65500)
    (tmp_path / "huge.jpg").write_bytes(jpg)
    refused_quickly(tmp_path / "huge.jpg", "declares 65500x65500 pixels")
    gif = bytearray(seeds["palette.gif"])
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    (tmp_path / "huge.gif").write_bytes(gif)
    refused_quickly(tmp_path / "huge.gif", "declares 65535x65535 pixels")


def test_headers_declaring_more_than_their_data_can_hold(tmp_path, seeds):
    # Sizes within the pixel limit, data of a few bytes: the decoders would fill hundreds of
    # megabytes with filler for seconds (cases the fuzz script found). Each format's data have
    # a least size for a declared size: PNG rows / 1032 (deflate's largest ratio), a Huffman
    # JPEG one bit per 8x8 block, a TIFF one listed strip or tile per strip or tile.
    png = bytearray(seeds["rgb8-interlaced.png"])
    png[20:24] = struct.pack(">I", 6_000_000)
    (tmp_path / "tall.png").write_bytes(F.fix_png_crcs(bytes(png)))
    refused_quickly(tmp_path / "tall.png", "its 37x6000000 pixels need at least 645349 bytes")
    jpg = bytearray(seeds["rgb.jpg"])
    sof = jpg.find(b"\xff\xc0")
    jpg[sof + 5:sof + 9] = struct.pack(">HH", 16000, 16000)
    (tmp_path / "big.jpg").write_bytes(jpg)
    refused_quickly(tmp_path / "big.jpg", "its 16000x16000 pixels need at least 500000 bytes")
    (tmp_path / "strips.tif").write_bytes(F.tiff_file(1, 2**28, [bytes(1)], rows=1))
    refused_quickly(tmp_path / "strips.tif", "layout has 268435456 strips; 1 is listed")


def test_least_sizes_admit_the_most_compressible_real_files(tmp_path):
    # Flat images compress best and come closest to the least sizes above: at 2048^2 a zero
    # RGBA PNG at zlib level 9 is 0.6 % above it (0.2 % at 16384^2), an optimized progressive
    # JPEG of quality 1 twice it.
    flat = np.zeros((2048, 2048, 4), np.uint8)
    Image.fromarray(flat).save(tmp_path / "flat.png", compress_level=9)
    size = (tmp_path / "flat.png").stat().st_size
    assert size * 1032 < 1.01 * flat.size  # the case is as close as claimed
    assert read_image(tmp_path / "flat.png").shape == (2048, 2048, 4)
    Image.fromarray(flat[..., 0]).save(tmp_path / "flat.jpg", optimize=True, progressive=True,
                                       quality=1)
    assert read_image(tmp_path / "flat.jpg").shape == (2048, 2048)


@pytest.mark.parametrize("name", ["gray8.png", "rgb.jpg", "gray16.tif"])
def test_huge_file_is_not_read_whole(tmp_path, seeds, name):
    # A valid image followed by 50 GB (a sparse file: no disk used): read as before, quickly,
    # with little memory. The JPEG's scans are counted up to its end-of-image marker only.
    path = tmp_path / f"huge{Path(name).suffix}"
    path.write_bytes(seeds[name])
    with open(path, "r+b") as fh:
        fh.truncate(50 * 2**30)
    if path.stat().st_blocks * 512 > 2**30:
        pytest.skip("no sparse files on this file system")
    outcome, seconds, peak, growth = measured(path)
    assert isinstance(outcome, np.ndarray), outcome
    assert outcome.shape[:2] == (29, 37)
    assert seconds < 1.0 and peak < 64 * 2**20
    if growth is not None:
        assert growth < 64 * 2**20


# --------------------------------------------------------------------------------------------
# max_pixels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["img.png", "img.tif", "img.jpg", "img.gif", "img.bmp"])
def test_max_pixels_both_ways(tmp_path, name):
    image = np.zeros((100, 100), np.uint8)
    path = tmp_path / name
    if name.endswith((".gif", ".bmp")):
        Image.fromarray(image).save(path)
    else:
        io.write_image(path, image)
    assert read_image(path, max_pixels=20_000).shape[:2] == (100, 100)
    assert read_image(path, max_pixels=10_000).shape[:2] == (100, 100)  # the limit is allowed
    refused_quickly(path, "declares 100x100 pixels, more than the limit of 5000 (--max-pixels)",
                    max_pixels=5000)


def test_read_mask_passes_max_pixels_on(tmp_path):
    io.write_image(tmp_path / "m.png", np.ones((100, 100), np.uint8))
    assert io.read_mask(tmp_path / "m.png", max_pixels=20_000).all()
    with pytest.raises(ImageError, match="limit of 5000"):
        io.read_mask(tmp_path / "m.png", max_pixels=5000)


def test_default_limit_admits_16384_squared_and_not_one_pixel_more(tmp_path):
    # Only the headers: neither file holds its pixels, so the first is refused as truncated
    # (after the size check passed, and before tifffile allocated the 268 MB it declares) and
    # the second by the limit.
    assert DEFAULT_MAX_PIXELS == 16384 * 16384
    (tmp_path / "at.tif").write_bytes(F.tiff_file(16384, 16384, [bytes(64)]))
    message = refused_quickly(tmp_path / "at.tif", "truncated or corrupt", "need 268435456 bytes")
    assert "--max-pixels" not in message
    (tmp_path / "over.tif").write_bytes(F.tiff_file(16385, 16384, [bytes(64)]))
    refused_quickly(tmp_path / "over.tif", "declares 16385x16384 pixels")


def test_pillow_limit_is_restored_after_concurrent_reads(tmp_path):
    # Pillow's global limit is lifted while reads are under way and put back by the last one.
    before = Image.MAX_IMAGE_PIXELS
    io.write_image(tmp_path / "a.png", np.zeros((50, 60), np.uint8))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((50, 60), np.uint8))
    seen = set()

    def read(i: int) -> tuple[int, ...]:
        seen.add(threading.get_ident())
        return read_image(tmp_path / ("a.png" if i % 2 else "b.tif")).shape

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(read, range(40))) == {(50, 60)}
    assert Image.MAX_IMAGE_PIXELS == before


def test_fuzz_script_runs(tmp_path, capsys):
    # The script end to end on a few cases (worker process, time and memory limits, the
    # command line once): no violations, exit status 0.
    status = F.main(["--cases", "25", "--seed", "3", "--cli", "1", "--no-hostile",
                     "--keep", os.fspath(tmp_path / "kept")])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "violations: 0" in out and "cases: 25 " in out
    assert not (tmp_path / "kept").exists()
