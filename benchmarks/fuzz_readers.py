"""Fuzz regtool's image readers: every file is read to a valid image or refused in one line.

Mutates small valid seed files (PNG 8/16-bit gray, RGB, RGBA, palette; TIFF gray, RGB, float,
compressed, tiled, multi-page, BigTIFF; JPEG gray, RGB, progressive; GIF, BMP) with random
bytes, bit flips, truncation, splices, header rewrites (absurd dimensions, bit depths, tag
values; PNG CRCs fixed so the decoder gets past the checksum), adds pure random bytes and a
set of hand-made hostile files (decompression bombs, absurd headers, headers declaring more
than their data can hold, TIFF IFD cycles, JPEGs with thousands of scans), and runs each
through :func:`regtool.io.read_image` in worker processes: a memory cap (``RLIMIT_AS``) per
worker, a wall-time limit per case (the worker is killed and replaced when a case overruns it).
A sample also goes through the real command line
(``python -m regtool align target.png FUZZED -o out.png``).

A case is a violation when

* ``read_image`` raises anything but :class:`regtool.io.ImageError`, returns something other
  than a 2-D gray, RGB or RGBA array of a supported dtype, or its message is not one line
  starting with the file's path;
* it takes longer than ``--timeout`` seconds (a hang), kills the worker (a crash, or the
  memory cap), or runs out of memory (the refusal says "too large to fit in memory": the reader
  asked for more than the cap, so its memory was not bounded by the pixel limit);
* it writes anything to stdout or stderr (the library never prints; the workers configure no
  logging, so a library logger's warnings would reach stderr as in the command line);
* on the command line: a refused file does not give exit status 2 with exactly one line on
  stderr, ``regtool: error: <file>: ...``, no traceback and no file written; an accepted one
  gives a traceback or an internal error.

The memory cap (``--mem-limit``, 4 GB) is below the largest image the default pixel limit
admits (2**28 pixels of float64 RGBA, 8.6 GB): a file that really held one would count as a
violation. None of the fuzzed files comes near (a header declaring more than its data can hold
is refused before decoding); to fuzz such files, lower ``--max-pixels`` or raise the cap.

Usage::

    .venv/bin/python benchmarks/fuzz_readers.py --cases 5000 --seed 1
    .venv/bin/python benchmarks/fuzz_readers.py --cases 300 --cli 10 --keep /tmp/fuzz-cases

Prints a summary (cases, outcomes by mutation and by format, the most frequent refusals, the
slowest cases, peak memory) and exits with status 1 if any case is a violation (each one is
listed, and saved under ``--keep`` when given). The case files are deterministic: ``--seed S``
and the case index reproduce a file exactly (``--only INDEX`` reruns one case).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import io as _io
import lzma
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# Seed files: small valid images of every kind the readers meet
# --------------------------------------------------------------------------------------------


def _texture(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [0, 1]: compresses like a photograph, not like noise."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    field_ = np.zeros((h, w))
    for _ in range(4):
        fx, fy, phase = rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4), rng.uniform(0, 6.3)
        field_ += np.sin(fx * xx + fy * yy + phase)
    field_ = (field_ - field_.min()) / (np.ptp(field_) + 1e-12)
    if len(shape) == 3:
        field_ = np.stack([np.roll(field_, 3 * c, axis=1) for c in range(shape[2])], axis=-1)
    return field_


@functools.cache
def make_seeds() -> dict[str, bytes]:
    """Return ``{name.ext: bytes}``: the valid files the mutations start from.

    Small (tens of pixels a side) so that a valid decode costs microseconds; every file is made
    here, from a fixed random state, so a seed and a case index reproduce a fuzzed file.
    """
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(20260)
    h, w = 29, 37
    gray = (_texture((h, w), rng) * 255).astype(np.uint8)
    gray16 = (_texture((h, w), rng) * 65535).astype(np.uint16)
    rgb = (_texture((h, w, 3), rng) * 255).astype(np.uint8)
    rgba = np.dstack([rgb, gray])
    flt = (_texture((h, w), rng) * 1000 - 300).astype(np.float32)

    seeds: dict[str, bytes] = {}

    def pil(name: str, image: Image.Image, fmt: str, **options: object) -> None:
        buf = _io.BytesIO()
        image.save(buf, format=fmt, **options)
        seeds[name] = buf.getvalue()

    def tif(name: str, data: np.ndarray | list[np.ndarray], **options: object) -> None:
        buf = _io.BytesIO()
        pages = data if isinstance(data, list) else [data]
        bigtiff = bool(options.pop("bigtiff", False))
        with tifffile.TiffWriter(buf, bigtiff=bigtiff) as writer:
            for page in pages:
                writer.write(page, **options)
        seeds[name] = buf.getvalue()

    pil("gray8.png", Image.fromarray(gray), "PNG")
    pil("gray16.png", Image.fromarray(gray16), "PNG")
    pil("bilevel.png", Image.fromarray(gray > 127), "PNG")
    pil("rgb8.png", Image.fromarray(rgb), "PNG")
    pil("rgba8.png", Image.fromarray(rgba), "PNG")
    pil("rgb8-interlaced.png", Image.fromarray(rgb), "PNG", interlace=1)
    pil("palette.png", Image.fromarray(rgb).convert("P"), "PNG")
    pil("palette-alpha.png", Image.fromarray(rgb).convert("P"), "PNG", transparency=0)
    pil("gray.jpg", Image.fromarray(gray), "JPEG", quality=90)
    pil("rgb.jpg", Image.fromarray(rgb), "JPEG", quality=90)
    pil("rgb-progressive.jpg", Image.fromarray(rgb), "JPEG", quality=90, progressive=True)
    pil("palette.gif", Image.fromarray(rgb).convert("P"), "GIF")
    pil("rgb.bmp", Image.fromarray(rgb), "BMP")
    tif("gray8.tif", gray, photometric="minisblack")
    tif("gray16.tif", gray16, photometric="minisblack")
    tif("rgb8.tif", rgb, photometric="rgb")
    tif("rgb16-planar.tif", np.moveaxis((_texture((h, w, 3), rng) * 65535).astype(np.uint16),
                                        -1, 0), photometric="rgb", planarconfig="separate")
    tif("float32.tif", flt, photometric="minisblack")
    tif("float64-deflate.tif", flt.astype(np.float64), photometric="minisblack",
        compression="zlib")
    tif("gray8-deflate-predictor.tif", gray, photometric="minisblack", compression="zlib",
        predictor=True, rowsperstrip=8)
    # tifffile writes no PackBits without imagecodecs: by hand, one strip of 8 rows each.
    seeds["gray8-packbits.tif"] = tiff_file(
        w, h, [packbits(gray[y:y + 8].tobytes()) for y in range(0, h, 8)], compression=32773,
        rows=8)
    tif("rgb8-lzma.tif", rgb, photometric="rgb", compression="lzma")
    tif("gray16-tiled-deflate.tif", np.pad(gray16, ((0, 35), (0, 27))),
        photometric="minisblack", tile=(32, 32), compression="zlib")
    tif("multipage.tif", [gray, gray[::-1]], photometric="minisblack")
    tif("bigtiff.tif", rgb, photometric="rgb", bigtiff=True)
    tif("bigtiff-deflate.tif", gray16, photometric="minisblack", bigtiff=True,
        compression="zlib")
    return seeds


# --------------------------------------------------------------------------------------------
# Hand-made hostile files
# --------------------------------------------------------------------------------------------


def packbits(data: bytes) -> bytes:
    """PackBits-encode ``data``: runs of 3 to 128 equal bytes, literals of up to 128."""
    out, i, n = bytearray(), 0, len(data)
    while i < n:
        run = 1
        while i + run < n and run < 128 and data[i + run] == data[i]:
            run += 1
        if run >= 3:
            out += bytes([257 - run, data[i]])
            i += run
            continue
        j = i
        while j < n and j - i < 128 and not (j + 2 < n and data[j] == data[j + 1] == data[j + 2]):
            j += 1
        out += bytes([j - i - 1]) + data[i:j]
        i = j
    return bytes(out)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zeros_deflate(n: int, *, wrap: str = "zlib") -> bytes:
    """A valid zlib (or raw deflate) stream inflating to ``n`` zero bytes, made without them.

    One block of 1 MiB of zeros is compressed once, ended by a full flush (byte-aligned, no
    reference back past it), and repeated; the tail and the Adler-32 of ``n`` zeros (``1 +
    (n mod 65521) << 16``) close the stream. About 1 KB of stream per MiB of zeros.
    """
    block = 1 << 20
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = comp.compress(bytes(block)) + comp.flush(zlib.Z_FULL_FLUSH)
    count, rest = divmod(n, block)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = comp.compress(bytes(rest)) + comp.flush(zlib.Z_FINISH)
    body = piece * count + tail
    if wrap == "raw":
        return body
    adler = ((n % 65521) << 16) | 1
    return b"\x78\xda" + body + struct.pack(">I", adler)


def png_declaring(width: int, height: int, *, idat: bytes | None = None, depth: int = 8,
                  color: int = 0) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (CRCs right), with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(bytes(64))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def png_zero_bomb(width: int, height: int) -> bytes:
    """A real, valid 8-bit gray PNG of ``width`` x ``height`` black pixels: a zlib bomb.

    The filtered rows (a 0 filter byte and ``width`` zeros each) are all zeros, so the IDAT is
    :func:`zeros_deflate` of ``height * (width + 1)`` bytes: 30000x30000 is about 0.9 MB.
    """
    return png_declaring(width, height, idat=zeros_deflate(height * (width + 1)))


def tiff_file(width: int, height: int, segments: list[bytes], *, compression: int = 1,
              bits: int = 8, samples: int = 1, photometric: int = 1, rows: int | None = None,
              tile: tuple[int, int] | None = None, extra: tuple[tuple[int, int, int], ...] = (),
              next_ifd: int = 0, tail: bytes = b"") -> bytes:
    """A little-endian classic TIFF with one IFD, laid out by hand (for hostile headers).

    ``extra`` adds ``(tag, type, value)`` entries (SHORT = 3 or LONG = 4, one value); ``tail``
    is appended after the IFD (``next_ifd`` may point into it).
    """
    data = b"".join(segments)
    offsets, pos = [], 8
    for seg in segments:
        offsets.append(pos)
        pos += len(seg)
    arrays = b""
    entries: list[tuple[int, int, int, int | bytes]] = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
        (262, 3, 1, photometric), (277, 3, 1, samples),
    ]
    if tile is None:
        entries.append((278, 4, 1, rows if rows is not None else height))
        off_tag, count_tag = 273, 279
    else:
        entries += [(322, 4, 1, tile[0]), (323, 4, 1, tile[1])]
        off_tag, count_tag = 324, 325
    base = 8 + len(data)
    for tag, values in ((off_tag, offsets), (count_tag, [len(s) for s in segments])):
        if len(values) == 1:
            entries.append((tag, 4, 1, values[0]))
        else:
            entries.append((tag, 4, len(values), base + len(arrays)))
            arrays += struct.pack(f"<{len(values)}I", *values)
    entries += [(tag, typ, 1, value) for tag, typ, value in extra]
    entries.sort()
    ifd_offset = base + len(arrays)
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", next_ifd)
    return b"II*\0" + struct.pack("<I", ifd_offset) + data + arrays + ifd + tail


def tiff_ifd_cycle(length: int) -> bytes:
    """A valid 4x4 page whose next-IFD chain is a cycle of ``length`` empty IFDs.

    tifffile checks for repeated offsets once, at the 100th page: a longer cycle sends a naive
    page count round it until 2**32 pages (for ever, with a list of offsets growing without
    bound), from a file of a few kilobytes.
    """
    head = tiff_file(4, 4, [bytes(16)])
    start = len(head)
    tail = b""
    for i in range(length):
        nxt = start + 6 * ((i + 1) % length)
        tail += struct.pack("<HI", 0, nxt)
    return tiff_file(4, 4, [bytes(16)], next_ifd=start, tail=tail)


def tiff_many_ifds(count: int) -> bytes:
    """A valid 4x4 page followed by a chain of ``count`` empty IFDs (6 bytes each)."""
    head = tiff_file(4, 4, [bytes(16)])
    start = len(head)
    tail = b"".join(struct.pack("<HI", 0, start + 6 * (i + 1) if i + 1 < count else 0)
                    for i in range(count))
    return tiff_file(4, 4, [bytes(16)], next_ifd=start, tail=tail)


def jpeg_many_scans(scans: int, side: int = 4096) -> bytes:
    """A flat gray progressive JPEG with one of its AC scans repeated, ``scans`` scans in all.

    The repeated scan is one end-of-band run over every block (33 bytes at 4096x4096); libjpeg
    warns about the bogus progression and decodes it again, visiting every block each time:
    time grows with scans x pixels, from a file of ``66 kB + 33 B x scans``.
    """
    from PIL import Image

    buf = _io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, format="JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    starts = [m.start() for m in re.finditer(b"\xff\xda", data)]
    ac_first = [s for s in starts if data[s + 7] > 0 and data[s + 9] >> 4 == 0]  # Ss > 0, Ah 0
    start = ac_first[0]
    end = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(
        data, start + 2 + int.from_bytes(data[start + 2:start + 4], "big")).start()
    eoi = data.rfind(b"\xff\xd9")
    return data[:eoi] + data[start:end] * max(0, scans - len(starts)) + data[eoi:]


@functools.cache
def hostile_files() -> list[tuple[str, str, bytes]]:
    """``(name, extension, bytes)`` of hand-made files no reader may choke on.

    The LZMA bomb is 64 concatenated streams of 16 MiB of zeros each (``lzma.decompress``
    decodes them all, one after the other): 1 GiB from about 150 KB.
    """
    files = [
        ("png-declares-1e5x1e5", ".png", png_declaring(100_000, 100_000)),
        ("png-declares-2^31-1-square", ".png", png_declaring(2**31 - 1, 2**31 - 1)),
        ("png-declares-1x2^31-1", ".png", png_declaring(1, 2**31 - 1)),
        ("png-declares-0x0", ".png", png_declaring(0, 0)),
        ("png-zero-bomb-30000^2", ".png", png_zero_bomb(30_000, 30_000)),
        ("png-rgba16-declares-1e5^2", ".png", png_declaring(100_000, 100_000, depth=16,
                                                             color=6)),
        ("tiff-declares-1e5x1e5", ".tif", tiff_file(100_000, 100_000, [bytes(64)])),
        ("tiff-deflate-bomb-1GB-in-64x64", ".tif",
         tiff_file(64, 64, [zeros_deflate(2**30)], compression=8)),
        ("tiff-lzma-bomb-1GB-in-64x64", ".tif",
         tiff_file(64, 64, [lzma.compress(bytes(2**24)) * 64], compression=34925)),
        ("tiff-packbits-bomb-in-64x64", ".tif",
         tiff_file(64, 64, [b"\x81\x00" * 200_000], compression=32773)),
        ("tiff-huge-tile-in-16x16", ".tif",
         tiff_file(16, 16, [zeros_deflate(4096)], compression=8, tile=(65536, 65536))),
        ("tiff-65535-samples", ".tif", tiff_file(100, 100, [bytes(64)], samples=65535)),
        ("tiff-ifd-cycle-300", ".tif", tiff_ifd_cycle(300)),
        ("tiff-200000-ifds", ".tif", tiff_many_ifds(200_000)),
        ("jpeg-4096^2-3000-scans", ".jpg", jpeg_many_scans(3000)),
    ]
    # Headers declaring sizes within the pixel limit that their data cannot fill: decoders
    # filled them with filler, for seconds (found by this script).
    png = bytearray(make_seeds()["rgb8-interlaced.png"])
    png[20:24] = struct.pack(">I", 6_000_000)
    files.append(("png-interlaced-37x6e6-in-2kB", ".png", fix_png_crcs(bytes(png))))
    jpg = bytearray(make_seeds()["rgb.jpg"])
    sof = jpg.find(b"\xff\xc0")
    jpg[sof + 5: sof + 9] = struct.pack(">HH", 16000, 16000)
    files.append(("jpeg-1kB-declares-16000^2", ".jpg", bytes(jpg)))
    files.append(("tiff-2^28-one-row-strips-1-listed", ".tif",
                  tiff_file(1, 2**28, [bytes(1)], rows=1)))
    # Pillow's own formats with absurd declared sizes.
    gif = bytearray(make_seeds()["palette.gif"])
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    files.append(("gif-declares-65535^2", ".gif", bytes(gif)))
    jpg = bytearray(make_seeds()["rgb.jpg"])
    sof = jpg.find(b"\xff\xc0")
    jpg[sof + 5: sof + 9] = struct.pack(">HH", 65500, 65500)
    files.append(("jpeg-declares-65500^2", ".jpg", bytes(jpg)))
    return files


# --------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------

# Header values that break decoders: zero, one, powers of two and their neighbours, the edges
# of signed and unsigned 16- and 32-bit integers.
ABSURD = (0, 1, 2, 3, 7, 8, 15, 16, 17, 255, 256, 4095, 4096, 16384, 16385, 30000, 32767,
          32768, 65535, 65536, 100_000, 2**20, 2**24, 2**31 - 1, 2**31, 2**32 - 1)


def _absurd(rng: random.Random, bits: int) -> int:
    if rng.random() < 0.7:
        return rng.choice([v for v in ABSURD if v < 2**bits])
    return rng.randrange(2**bits)


def png_chunks(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """``(offset, body length, type)`` of each complete chunk header of a PNG."""
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        yield pos, length, bytes(data[pos + 4:pos + 8])
        pos += 12 + length


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute the CRC of every complete chunk, so the decoder reads what is inside."""
    out = bytearray(data)
    for pos, length, _ in png_chunks(data):
        end = pos + 12 + length
        if end > len(out):
            break
        out[end - 4:end] = struct.pack(">I", zlib.crc32(out[pos + 4:end - 4]))
    return bytes(out)


def tiff_entries(data: bytes) -> tuple[str, bool, list[int]]:
    """Byte order, BigTIFF or not, and the offsets of the first IFD's entries."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 16:
        return order, False, []
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    if big:
        ifd = struct.unpack(order + "Q", data[8:16])[0]
        if ifd + 8 > len(data):
            return order, big, []
        n = struct.unpack(order + "Q", data[ifd:ifd + 8])[0]
        first, size = ifd + 8, 20
    else:
        ifd = struct.unpack(order + "I", data[4:8])[0]
        if ifd + 2 > len(data):
            return order, big, []
        n = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
        first, size = ifd + 2, 12
    return order, big, [first + i * size for i in range(min(n, 4096))
                        if first + (i + 1) * size <= len(data)]


# TIFF tags whose values decide sizes and layouts.
TIFF_SIZE_TAGS = (256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325,
                  338, 339, 32997)


def _mutate_tiff(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    order, big, entries = tiff_entries(data)
    if not entries:
        return "tiff-none", data
    out = bytearray(data)
    value_at = 12 if big else 8
    sizes = {3: 2, 4: 4, 16: 8}
    sized = [e for e in entries if struct.unpack(order + "H", data[e:e + 2])[0] in TIFF_SIZE_TAGS]
    choice = rng.random()
    if choice < 0.5 and sized:
        # A size or layout tag's (first) value set to an absurd number: keep the type.
        entry = rng.choice(sized)
        typ = struct.unpack(order + "H", data[entry + 2:entry + 4])[0]
        size = sizes.get(typ, 4)
        value = _absurd(rng, 8 * size)
        fmt = {2: "H", 4: "I", 8: "Q"}[size]
        out[entry + value_at:entry + value_at + size] = struct.pack(order + fmt, value)
        tag = struct.unpack(order + "H", data[entry:entry + 2])[0]
        return f"tiff-tag-{tag}", bytes(out)
    if choice < 0.75:
        # An entry's type or count rewritten: values move out of line, or read past the end.
        entry = rng.choice(entries)
        if rng.random() < 0.5:
            out[entry + 2:entry + 4] = struct.pack(order + "H", rng.randrange(0, 20))
        else:
            fmt = "Q" if big else "I"
            out[entry + 4:entry + 4 + struct.calcsize(fmt)] = struct.pack(
                order + fmt, _absurd(rng, 32))
        return "tiff-entry", bytes(out)
    # Width and height both rewritten (a header declaring an absurd image).
    for entry in entries:
        tag, typ = struct.unpack(order + "HH", data[entry:entry + 4])
        if tag in (256, 257):
            size = sizes.get(typ, 4)
            fmt = {2: "H", 4: "I", 8: "Q"}[size]
            out[entry + value_at:entry + value_at + size] = struct.pack(
                order + fmt, _absurd(rng, 8 * size))
    return "tiff-dims", bytes(out)


def _mutate_png(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    chunks = list(png_chunks(data))
    out = bytearray(data)
    choice = rng.random()
    if choice < 0.4:
        # IHDR: dimensions, bit depth, color type, interlace.
        field_ = rng.choice(["dims", "dims", "depth", "color", "interlace"])
        if field_ == "dims":
            out[16:24] = struct.pack(">II", _absurd(rng, 31), _absurd(rng, 31))
        elif field_ == "depth":
            out[24] = rng.choice([0, 1, 2, 3, 4, 8, 16, 32, 255])
        elif field_ == "color":
            out[25] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 255])
        else:
            out[28] = rng.choice([0, 1, 2, 255])
        return f"png-ihdr-{field_}", fix_png_crcs(bytes(out))
    if choice < 0.7 and chunks:
        # Bytes inside one chunk changed, CRCs fixed: the decoder sees corrupt content.
        pos, length, kind = rng.choice(chunks)
        if length:
            for _ in range(rng.randint(1, 8)):
                i = pos + 8 + rng.randrange(min(length, len(out) - pos - 8) or 1)
                if i < len(out):
                    out[i] = rng.randrange(256)
        return f"png-chunk-{kind.decode('latin-1')}", fix_png_crcs(bytes(out))
    if choice < 0.85:
        # The IDAT's inflated rows mutated (bad filter bytes, short or long data), recompressed.
        idats = [(p, n) for p, n, k in chunks if k == b"IDAT"]
        if not idats:
            return "png-none", data
        try:
            raw = bytearray(zlib.decompress(b"".join(data[p + 8:p + 8 + n] for p, n in idats)))
        except zlib.error:
            return "png-none", data
        action = rng.choice(["filter", "cut", "grow"])
        if action == "filter" and raw:
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.choice([5, 6, 255, rng.randrange(256)])
        elif action == "cut":
            raw = raw[:rng.randrange(len(raw) + 1)]
        else:
            raw += bytes(rng.randrange(1, 4096))
        first = idats[0][0]
        last_end = idats[-1][0] + 12 + idats[-1][1]
        body = (bytes(out[:first]) + _png_chunk(b"IDAT", zlib.compress(bytes(raw)))
                + bytes(out[last_end:]))
        return f"png-idat-{action}", body
    # A chunk duplicated or an APNG / palette / transparency chunk inserted before IDAT.
    idat = next((p for p, _, k in chunks if k == b"IDAT"), len(out))
    extra = rng.choice([
        _png_chunk(b"acTL", struct.pack(">II", _absurd(rng, 32), 0)),
        _png_chunk(b"PLTE", bytes(rng.randrange(256) for _ in range(3 * rng.randint(0, 300)))),
        _png_chunk(b"tRNS", bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))),
        _png_chunk(b"iCCP", b"p\0\0" + zeros_deflate(rng.choice([10, 2**20, 2**24]))),
        _png_chunk(b"zTXt", b"k\0\0" + zeros_deflate(rng.choice([10, 2**20, 2**24]))),
        _png_chunk(b"IHDR", bytes(out[16:29])),
    ])
    return "png-insert", bytes(out[:idat]) + extra + bytes(out[idat:])


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _mutate_jpeg(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    out = bytearray(data)
    sof = next((i for i in range(2, len(data) - 12) if data[i] == 0xFF and data[i + 1] in _SOF),
               None)
    choice = rng.random()
    if sof is not None and choice < 0.45:
        field_ = rng.choice(["dims", "dims", "components", "precision", "sampling"])
        if field_ == "dims":
            out[sof + 5:sof + 9] = struct.pack(">HH", _absurd(rng, 16), _absurd(rng, 16))
        elif field_ == "components":
            out[sof + 9] = rng.choice([0, 1, 2, 3, 4, 5, 255])
        elif field_ == "precision":
            out[sof + 4] = rng.choice([0, 1, 8, 12, 16, 255])
        else:
            out[sof + 11] = rng.randrange(256)
        return f"jpeg-sof-{field_}", bytes(out)
    if choice < 0.7:
        # A marker segment's length changed: the parser skips into the middle of something.
        markers = [i for i in range(2, len(data) - 3)
                   if data[i] == 0xFF and 0xC0 <= data[i + 1] <= 0xFE and data[i + 1] != 0xD9]
        if markers:
            i = rng.choice(markers)
            out[i + 2:i + 4] = struct.pack(">H", _absurd(rng, 16))
        return "jpeg-segment-length", bytes(out)
    # Scans repeated: many scans over the same coefficients.
    sos = data.rfind(b"\xff\xda")
    eoi = data.rfind(b"\xff\xd9")
    if sos < 0 or eoi < sos:
        return "jpeg-none", data
    copies = rng.choice([2, 10, 100, 1000])
    return f"jpeg-scans-x{copies}", data[:eoi] + data[sos:eoi] * copies + data[eoi:]


def _generic(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    out = bytearray(data)
    choice = rng.random()
    if choice < 0.3 and out:
        for _ in range(rng.choice([1, 1, 2, 4, 16, 64])):
            out[rng.randrange(len(out))] = rng.randrange(256)
        return "bytes", bytes(out)
    if choice < 0.55 and out:
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return "bits", bytes(out)
    if choice < 0.8:
        return "truncate", bytes(out[:rng.randrange(len(out) + 1)])
    if choice < 0.9 and out:
        # A slice copied elsewhere (inserted or overwriting).
        a = rng.randrange(len(out))
        piece = bytes(out[a:a + rng.randint(1, 512)])
        b = rng.randrange(len(out) + 1)
        if rng.random() < 0.5:
            return "splice-insert", bytes(out[:b]) + piece + bytes(out[b:])
        out[b:b + len(piece)] = piece
        return "splice-overwrite", bytes(out)
    # A slice repeated many times: long runs of chunks, IFDs, markers.
    if not out:
        return "repeat", bytes(out)
    a = rng.randrange(len(out))
    piece = bytes(out[a:a + rng.randint(1, 256)])
    times = rng.choice([10, 100, 1000])
    return f"repeat-x{times}", bytes(out[:a]) + piece * times + bytes(out[a:])


MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*",
          b"II+\x00\x08\x00\x00\x00", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"P5\n",
          b"8BPS", b"\x00\x00\x01\x00")


@dataclass
class Case:
    """One fuzzed file: where it came from, how it was made, its bytes."""

    index: int
    seed: str
    kind: str
    ext: str
    data: bytes


def make_case(seeds: dict[str, bytes], seed: int, index: int) -> Case:
    """The ``index``-th case of run ``seed``: the same bytes on every machine, every run."""
    rng = random.Random(seed * 1_000_003 + index)
    roll = rng.random()
    if roll < 0.04:
        data = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 100, 4096])))
        return Case(index, "none", "random", rng.choice([".png", ".tif", ".jpg", ""]), data)
    if roll < 0.08:
        magic = rng.choice(MAGICS)
        data = magic + bytes(rng.randrange(256) for _ in range(rng.choice([0, 8, 100, 2000])))
        return Case(index, "none", "magic+random", ".img", data)
    name = rng.choice(sorted(seeds))
    data = seeds[name]
    ext = Path(name).suffix
    kinds = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        # The format-aware mutations need the header an earlier mutation may have cut off.
        if rng.random() < 0.45 and len(data) >= 64:
            if ext == ".png" and data.startswith(b"\x89PNG"):
                kind, data = _mutate_png(data, rng)
            elif ext == ".tif" and data[:2] in (b"II", b"MM"):
                kind, data = _mutate_tiff(data, rng)
            elif ext == ".jpg" and data.startswith(b"\xff\xd8"):
                kind, data = _mutate_jpeg(data, rng)
            else:
                kind, data = _generic(data, rng)
        else:
            kind, data = _generic(data, rng)
            if ext == ".png" and rng.random() < 0.5:
                data = fix_png_crcs(data)
                kind += "+crc"
        kinds.append(kind)
    return Case(index, name, "+".join(kinds), ext, data)


# --------------------------------------------------------------------------------------------
# Checking one case in a worker
# --------------------------------------------------------------------------------------------

READ_DTYPES = ("bool", "uint8", "uint16", "float32", "float64")
OUT_OF_MEMORY = "too large to fit in memory"


def _status_bytes(field_: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_ + ":"):
                return 1024 * int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """VmHWM := VmRSS (Linux >= 4.0), so a case's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def check_result(path: str, outcome: object) -> str | None:
    """Why a read's outcome breaks the contract, or None. ``outcome``: an array or an error."""
    from regtool.io import ImageError

    if isinstance(outcome, BaseException):
        if not isinstance(outcome, ImageError):
            return f"raised {type(outcome).__name__}, not ImageError: {outcome!s:.200}"
        message = str(outcome)
        if "\n" in message or "\r" in message:
            return f"message of several lines: {message!r:.300}"
        if not message.startswith(f"{path}: "):
            return f"message does not start with the path: {message!r:.300}"
        if OUT_OF_MEMORY in message:
            return f"ran out of memory (not bounded by the pixel limit): {message!r:.200}"
        return None
    if not isinstance(outcome, np.ndarray):
        return f"returned {type(outcome).__name__}, not an array"
    if outcome.dtype.name not in READ_DTYPES:
        return f"returned dtype {outcome.dtype}"
    if outcome.ndim not in (2, 3) or (outcome.ndim == 3 and outcome.shape[-1] not in (3, 4)):
        return f"returned shape {outcome.shape}"
    if outcome.size == 0:
        return "returned an empty array"
    return None


def _worker(conn, seed: int, seed_dir: str, max_pixels: int | None, mem_limit: int) -> None:
    """Read the cases the parent names, one at a time; answer with a result dict each."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if mem_limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    # The library must print nothing: both streams go to a file checked after each case.
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 1)
    os.dup2(captured.fileno(), 2)
    import inspect

    from regtool.io import read_image

    kwargs = {}
    if max_pixels is not None and "max_pixels" in inspect.signature(read_image).parameters:
        kwargs["max_pixels"] = max_pixels
    seeds = {p.name: p.read_bytes() for p in Path(seed_dir).iterdir()}
    work = Path(tempfile.mkdtemp(prefix="fuzz-worker-"))
    hostile = None
    try:
        while True:
            request = conn.recv()
            if request is None:
                break
            if isinstance(request, str):  # a hostile file, by name
                if hostile is None:
                    hostile = {n: (e, d) for n, e, d in hostile_files()}
                ext, data = hostile[request]
                case = Case(-1, "hostile", request, ext, data)
            else:
                try:
                    case = make_case(seeds, seed, request)
                except Exception as exc:  # a bug of this script, not of the reader
                    conn.send({"index": request, "kind": "?", "outcome": "generator-error",
                               "problem": f"fuzzer bug making the case: {exc!r}", "time": 0.0,
                               "message": "", "peak": None, "hwm": None})
                    continue
            path = work / f"case{case.ext}"
            path.write_bytes(case.data)
            captured.seek(0, os.SEEK_END)
            before_out = captured.tell()
            rss0 = _status_bytes("VmRSS") or 0
            peak_ok = _reset_peak()
            t0 = time.perf_counter()
            try:
                outcome: object = read_image(os.fspath(path), **kwargs)
            except BaseException as exc:  # noqa: BLE001 - the point is to see everything
                outcome = exc
                if not isinstance(exc, Exception):
                    raise
            elapsed = time.perf_counter() - t0
            hwm = _status_bytes("VmHWM") if peak_ok else None
            captured.seek(0, os.SEEK_END)
            printed = b""
            if captured.tell() != before_out:
                captured.seek(before_out)
                printed = captured.read(400)
                captured.seek(0, os.SEEK_END)
            problem = check_result(os.fspath(path), outcome)
            if problem is None and printed:
                problem = f"printed {printed!r:.200}"
            if isinstance(outcome, BaseException):
                from regtool.io import ImageError

                message = str(outcome)
                if isinstance(outcome, ImageError):
                    message = outcome.problem
                result = {"outcome": "refused", "message": message}
                if not isinstance(outcome, ImageError):
                    result["traceback"] = "".join(traceback.format_exception(outcome))[-1500:]
            else:
                result = {"outcome": "read", "message": f"{outcome.shape} {outcome.dtype}"}
            others = [p.name for p in work.iterdir() if p != path]
            if problem is None and others:
                problem = f"left files behind: {others}"
            for p in work.iterdir():
                if p.is_file():
                    p.unlink()
            result.update(index=case.index, seed=case.seed, kind=case.kind, ext=case.ext,
                          size=len(case.data), time=elapsed, problem=problem,
                          peak=None if hwm is None else max(0, hwm - rss0), hwm=hwm)
            del outcome
            conn.send(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# The parent: workers, time limits, the command-line sample, the summary
# --------------------------------------------------------------------------------------------


@dataclass
class Pool:
    """Worker processes, each reading one case at a time under a time and memory limit."""

    seed: int
    seed_dir: str
    max_pixels: int | None
    mem_limit: int
    timeout: float
    jobs: int
    ctx: object = field(default=None)
    workers: list = field(default_factory=list)

    def __post_init__(self) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.workers = [self._start() for _ in range(self.jobs)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, self.seed, self.seed_dir,
                                                      self.max_pixels, self.mem_limit),
                                daemon=True)
        proc.start()
        child.close()
        return [proc, parent, None, 0.0]  # process, pipe, request in flight, its start

    def run(self, requests: list, on_result: Callable[[dict], None]) -> None:
        pending = collections.deque(requests)
        busy = 0
        while pending or busy:
            for slot in self.workers:
                if slot[2] is None and pending:
                    slot[2] = pending.popleft()
                    slot[3] = time.perf_counter()
                    slot[1].send(slot[2])
                    busy += 1
            for i, slot in enumerate(self.workers):
                proc, pipe, request, start = slot
                if request is None:
                    continue
                died = None
                try:
                    if pipe.poll(0.005):
                        on_result(pipe.recv())
                        slot[2] = None
                        busy -= 1
                        continue
                except (EOFError, OSError):
                    died = "worker died"
                waited = time.perf_counter() - start
                if died is None and not proc.is_alive():
                    died = "worker died"
                if died is None and waited <= self.timeout:
                    continue
                if died is not None:
                    proc.join(timeout=2)  # its own exit status, when it ended by itself
                proc.kill()
                proc.join()
                if died is None:
                    outcome, problem = "hang", f"took more than {self.timeout:g} s (killed)"
                else:
                    code = proc.exitcode
                    outcome = "crash"
                    problem = (f"{died} (exit code {code}; "
                               f"{'a signal' if code is not None and code < 0 else 'an exit'})")
                on_result({"index": request if isinstance(request, int) else -1,
                           "kind": request if isinstance(request, str) else "?",
                           "outcome": outcome, "problem": problem, "time": waited,
                           "message": "", "peak": None, "hwm": None, "request": request})
                self.workers[i] = self._start()
                busy -= 1

    def close(self) -> None:
        for proc, pipe, _, _ in self.workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                pipe.send(None)
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def _target_png(folder: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(9)
    path = folder / "target.png"
    Image.fromarray((_texture((64, 64), rng) * 255).astype(np.uint8)).save(path)
    return path


def run_cli(data: bytes, ext: str, refused: bool, timeout: float) -> str | None:
    """Run ``python -m regtool align target.png FUZZED -o out.png``; say what is wrong."""
    with tempfile.TemporaryDirectory(prefix="fuzz-cli-") as tmp:
        folder = Path(tmp)
        _target_png(folder)
        name = f"fuzzed{ext or '.bin'}"
        (folder / name).write_bytes(data)
        before = sorted(p.name for p in folder.iterdir())
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=os.fspath(REPO))
        env.pop("REGTOOL_DEBUG", None)
        try:
            proc = subprocess.run([sys.executable, "-m", "regtool", "align", "target.png", name,
                                   "-o", "out.png", "--quiet"], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"command line took more than {timeout:g} s"
        after = sorted(p.name for p in folder.iterdir())
        err = proc.stderr
        if "Traceback" in err or "internal error" in err:
            return f"command line: traceback or internal error: {err[-300:]!r}"
        if not refused:
            if proc.returncode not in (0, 1, 2):
                return f"command line: exit {proc.returncode} on a readable file"
            return None
        lines = err.splitlines()
        if proc.returncode != 2:
            return f"command line: exit {proc.returncode}, not 2; stderr {err[-300:]!r}"
        if len(lines) != 1 or not lines[0].startswith(f"regtool: error: {name}: "):
            return f"command line: stderr is not one line naming the file: {err[-300:]!r}"
        if proc.stdout:
            return f"command line: printed on stdout: {proc.stdout[:200]!r}"
        if after != before:
            return f"command line: files written: {sorted(set(after) - set(before))}"
        return None


def _category(message: str) -> str:
    """A refusal's message with its numbers and quoted details taken out, to count kinds."""
    text = re.sub(r"\(.*\)", "(...)", message)
    return re.sub(r"\d+", "N", text)[:110]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000, help="mutated files (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="run seed (default 1)")
    parser.add_argument("--cli", type=int, default=30, metavar="N",
                        help="cases also run through the command line (default 30)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="wall-time limit per case, seconds (default 10)")
    parser.add_argument("--mem-limit", type=float, default=4.0, metavar="GB",
                        help="address-space cap per worker, GB; 0 for none (default 4)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="read_image's max_pixels (default: the library's)")
    parser.add_argument("--no-hostile", action="store_true", help="skip the hand-made files")
    parser.add_argument("--only", type=int, default=None, metavar="INDEX",
                        help="run only this case (to reproduce one)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="save each violating case's file here")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    seeds = make_seeds()
    seed_dir = tempfile.mkdtemp(prefix="fuzz-seeds-")
    for name, data in seeds.items():
        Path(seed_dir, name).write_bytes(data)
    requests: list = [args.only] if args.only is not None else list(range(args.cases))
    if not args.no_hostile and args.only is None:
        requests = [name for name, _, _ in hostile_files()] + requests

    results: list[dict] = []
    done = [0]

    def on_result(result: dict) -> None:
        results.append(result)
        done[0] += 1
        if result.get("problem"):
            print(f"  VIOLATION case {result['index']} ({result.get('kind')}): "
                  f"{result['problem']}", flush=True)
        if done[0] % 1000 == 0:
            print(f"  {done[0]} / {len(requests)} cases, "
                  f"{time.perf_counter() - t_start:.0f} s", flush=True)

    print(f"fuzzing regtool.io.read_image: {len(requests)} cases (seed {args.seed}), "
          f"{args.jobs} worker(s), {args.timeout:g} s and {args.mem_limit:g} GB per case",
          flush=True)
    pool = Pool(args.seed, seed_dir, args.max_pixels, int(args.mem_limit * 2**30),
                args.timeout, args.jobs)
    try:
        pool.run(requests, on_result)
    finally:
        pool.close()
    t_read = time.perf_counter() - t_start

    # The command line on a sample: mostly refused files (the strict check), a few read ones.
    rng = random.Random(args.seed)
    cli_problems: list[tuple[dict, str]] = []
    hostile = {n: (e, d) for n, e, d in hostile_files()} if not args.no_hostile else {}
    refused = [r for r in results if r["outcome"] == "refused" and not r.get("problem")
               and r.get("kind") != "?"]
    readable = [r for r in results if r["outcome"] == "read" and not r.get("problem")]
    n_read = min(len(readable), args.cli // 5)
    sample = (rng.sample(refused, min(len(refused), args.cli - n_read))
              + rng.sample(readable, n_read))
    t_cli = time.perf_counter()
    for r in sample:
        if r["index"] >= 0:
            case = make_case(seeds, args.seed, r["index"])
            data, ext = case.data, case.ext
        else:
            ext, data = hostile[r["kind"]]
        problem = run_cli(data, ext, r["outcome"] == "refused", timeout=120)
        if problem:
            cli_problems.append((r, problem))
            print(f"  VIOLATION case {r['index']} ({r['kind']}) {problem}", flush=True)
    t_cli = time.perf_counter() - t_cli

    violations = [r for r in results if r.get("problem")]
    if args.keep is not None and (violations or cli_problems):
        args.keep.mkdir(parents=True, exist_ok=True)
        for r in violations + [r for r, _ in cli_problems]:
            if r["outcome"] == "generator-error":
                continue
            if r["index"] >= 0:
                case = make_case(seeds, args.seed, r["index"])
                (args.keep / f"case{r['index']}{case.ext}").write_bytes(case.data)
            else:
                ext, data = hostile[r.get("request") or r["kind"]]
                (args.keep / f"{r.get('request') or r['kind']}{ext}").write_bytes(data)
    shutil.rmtree(seed_dir, ignore_errors=True)

    # Summary.
    total = time.perf_counter() - t_start
    print()
    print(f"cases: {len(results)} in {t_read:.1f} s through read_image "
          f"({len(sample)} also through the command line, {t_cli:.1f} s); total {total:.1f} s")
    outcomes = collections.Counter(r["outcome"] for r in results)
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()))
    by_seed: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in results:
        by_seed[r.get("seed", "hostile") or "?"][r["outcome"]] += 1
        kind = (r.get("kind") or "?").split("+")[0]
        by_kind[re.sub(r"-(x\d+|\d+)$", "", kind)][r["outcome"]] += 1
    print("by seed file:")
    for name in sorted(by_seed):
        print(f"  {name:32s} " + ", ".join(f"{k} {v}" for k, v in sorted(by_seed[name].items())))
    print("by (first) mutation:")
    for name in sorted(by_kind):
        print(f"  {name:32s} " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind[name].items())))
    messages = collections.Counter(_category(r["message"]) for r in results
                                   if r["outcome"] == "refused")
    print("most frequent refusals:")
    for text, n in messages.most_common(12):
        print(f"  {n:6d}  {text}")
    hostile_rows = [r for r in results if r.get("seed") == "hostile" or r["index"] < 0]
    if hostile_rows:
        print("hand-made files:")
        for r in hostile_rows:
            peak = "" if r.get("peak") is None else f", peak {r['peak'] / 2**20:.0f} MB"
            print(f"  {r['kind']:34s} {r['outcome']:8s} {r['time']:.3f} s{peak}: "
                  f"{(r.get('problem') or r['message'])[:110]}")
    slow = sorted(results, key=lambda r: r["time"], reverse=True)[:5]
    print("slowest cases:")
    for r in slow:
        print(f"  {r['time']:.3f} s  case {r['index']} {r.get('seed', '')} {r.get('kind')} "
              f"-> {r['outcome']}: {(r.get('problem') or r['message'])[:90]}")
    peaks = [r for r in results if r.get("peak") is not None]
    if peaks:
        top = max(peaks, key=lambda r: r["peak"])
        hwm = max(r["hwm"] for r in peaks)
        print(f"peak memory: {top['peak'] / 2**20:.0f} MB above the worker's resident set "
              f"(case {top['index']} {top['kind']}: {top['message'][:80]}); highest resident "
              f"set of a worker {hwm / 2**20:.0f} MB")
    n_bad = len(violations) + len(cli_problems)
    print(f"violations: {n_bad}")
    for r in violations:
        print(f"  case {r['index']} {r.get('seed', '')} {r.get('kind')}: {r['problem']}")
        if r.get("traceback"):
            print("    " + r["traceback"].strip().splitlines()[-1][:200])
    for r, problem in cli_problems:
        print(f"  case {r['index']} {r.get('kind')}: {problem}")
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
