"""Reading and writing images and parameter files, with errors that name the file.

This module is the only place regtool touches image files. It does no numerics beyond exact dtype
conversion (and turning a mask image into used / not used): what it reads is either one of the
dtypes the library registers (bool, uint8, uint16, float32, float64) or refused with an
:class:`ImageError` whose message names the file and the problem in one line.

Formats
-------
Reading: PNG, JPEG and the other single-image formats Pillow knows (BMP, GIF, WebP, PPM...)
through Pillow; TIFF through tifffile (which imageio's TIFF plugin wraps), to see its pages and
axes. tifffile is imported on the first TIFF only. Both read from the open file as they go: a
file is never read whole into memory.

Writing (chosen by the extension of the output path): TIFF through imageio's ``tifffile``
plugin, PNG (zlib level 3) and JPEG (quality 95) through Pillow itself, which spares a command
that writes a PNG the import of all of Pillow's format plugins.

========  ==============================================================================
format    what it holds
========  ==============================================================================
``.tif``  everything: bool, uint8, uint16, float32, float64; gray, RGB or RGBA
``.png``  bool, uint8 and uint16 gray; uint8 RGB and RGBA (not 16-bit color, not float)
``.jpg``  uint8 gray and RGB (lossy)
========  ==============================================================================

Hostile files
-------------
Whatever a file holds, :func:`read_image` returns an image or raises :class:`ImageError` with
one line; no decoder error escapes, nothing is printed, and time and memory stay bounded:

* the declared width x height is checked against ``max_pixels`` (``--max-pixels``; default
  :data:`DEFAULT_MAX_PIXELS` = 2**28, 16384 x 16384) from the header, before decoding: PNG's
  IHDR, JPEG's frame header, Pillow's lazily opened size, tifffile's first page;
* a header declaring more than its data can hold is refused too (a PNG shorter than its rows /
  1032, deflate's largest ratio; a Huffman JPEG shorter than one bit per 8x8 block; a TIFF
  listing fewer strips than its layout, or data past the end of the file);
* the decoders' own slow paths are bounded: TIFF pages counted up to 1000, tiles no larger than
  the image or 2048^2, deflate / LZMA / PackBits strips inflated with a bound before tifffile's
  own unbounded decoders see them, JPEG scans up to 100.

Memory is then what the decoded image takes, at most ``max_pixels`` x 4 channels x 8 bytes
(8.6 GB for float64 RGBA at the default; 0.27 GB for 8-bit gray) plus a copy or two.
``benchmarks/fuzz_readers.py`` checks all this on thousands of mutated and hand-made files.

Every write is atomic: the data go to a temporary file in the destination folder, which then
replaces the destination in one step (:func:`os.replace`), so an interrupted run never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import lzma
import math
import mmap
import operator
import os
import re
import struct
import tempfile
import threading
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import imageio.v3 as iio
import numpy as np
from PIL import Image

__all__ = [
    "ImageError",
    "read_image",
    "read_mask",
    "write_image",
    "write_problem",
    "write_json",
    "read_text",
    "write_text",
    "file_mode",
    "check_output_path",
    "format_problem",
    "dumps_json",
    "default_output_path",
    "OutputSet",
    "READ_DTYPES",
    "WRITE_EXTENSIONS",
    "DEFAULT_MAX_PIXELS",
]

PathLike = str | os.PathLike

#: dtypes :func:`read_image` returns (others are converted exactly, or refused).
READ_DTYPES = ("bool", "uint8", "uint16", "float32", "float64")

#: extensions :func:`write_image` writes, lower case, mapped to a format name.
WRITE_EXTENSIONS = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
}

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)

# Pillow modes that are not gray, RGB or RGBA already: what to convert them to.
_PIL_CONVERT = {
    "PA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
    "La": "LA",
}


class ImageError(ValueError):
    """A file cannot be read or written as regtool needs it.

    ``str(error)`` is one line, ``"<path>: <problem>"``, ready to be printed after
    ``"regtool: error: "``.

    Parameters
    ----------
    path : str or os.PathLike
        The file at fault, as the user gave it.
    problem : str
        What is wrong, in a few words, without the path.
    """

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

#: Default of ``max_pixels`` (``--max-pixels``): 2**28 = 268,435,456 pixels, a 16384 x 16384
#: image exactly. Above what a camera, a microscope tile or a scan gives; a 16384^2 8-bit pair
#: takes about 4 GB to register (regtool's own 12.5 B/px beyond the inputs, SCALING.md, plus
#: the two images). The decoded image alone is 0.27 GB (8-bit gray) to 8.6 GB (float64 RGBA)
#: at the limit: on a 24 GB machine every kind fits once. A file declaring more is refused from
#: its header, before anything is decoded.
DEFAULT_MAX_PIXELS = 2**28

# A TIFF with a second page is refused; its pages are counted for the message up to this many.
# Each IFD is one small read, but a crafted chain can be millions long or a cycle (tifffile
# looks for repeated offsets once, at the 100th page: a longer cycle is walked for ever).
_MAX_COUNTED_PAGES = 1000

# tifffile decodes a tile into a buffer of a whole tile. A tile larger than its image is
# legitimate (a 100x100 image in one 256x256 tile) but a header can declare 65536x65536 tiles
# for a 16x16 image: tiles of up to this many pixels, or of the image's own size, are allowed.
_MAX_TILE_PIXELS = 2**22

# libjpeg decodes every scan of a progressive JPEG over the whole image, and a scan of a few
# bytes (one end-of-band run) makes it visit every block: a 99 kB 4096x4096 file with 1000
# repeated scans took 2.4 s, and the time grows with scans x pixels. libjpeg's own progressive
# files have 10 scans (6 in gray), optimizers a few more.
_MAX_JPEG_SCANS = 100

# TIFF compressions whose decoders inflate whatever the data say when they are tifffile's own
# pure-Python fallbacks (regtool's default install: no imagecodecs package): 1 MB of deflate
# gives 1 GB. With imagecodecs, tifffile passes the expected size (out=) and its decoders stop
# there. With the fallbacks each strip or tile is first inflated here with a bound (and thrown
# away) before tifffile decodes it: measured, 190 ms more on a 4096^2 16-bit deflate TIFF of
# 32 MB in 128 strips (tifffile alone: 280 ms).
_STREAM_CODECS = {8: "deflate", 32946: "deflate", 50013: "deflate", 34925: "lzma",
                  50000: "zstd", 32773: "packbits"}

# The most deflate can inflate: a 258-byte match coded in 2 bits. Bounds what a PNG of a given
# size can hold, and spares inflating TIFF segments too small to reach the bound even so.
_DEFLATE_MAX_RATIO = 1032

# The same for PackBits (2 bytes for 128). LZMA and Zstandard have no such useful bound.
_MAX_RATIO = {"deflate": _DEFLATE_MAX_RATIO, "packbits": 64}

# Memory an LZMA stream may ask for (its dictionary): xz's presets use 8 MiB (-6) to 64 MiB
# (-9); the format allows 1.5 GiB, which the decoder allocates before producing a byte.
_LZMA_MEMLIMIT = 256 * 2**20

# Formats Pillow is told to try for each recognized signature: only that plugin is imported
# and asked, not all of Pillow's ~40 (which an unrecognized file still goes through).
_PIL_FORMATS = {"PNG": ["PNG"], "JPEG": ["JPEG"], "GIF": ["GIF"], "BMP": ["BMP"],
                "WEBP": ["WEBP"]}


def _sniff(head: bytes) -> str | None:
    """Return the format whose signature starts ``head``, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


@contextlib.contextmanager
def _open(path: PathLike, kind: str = "an image file") -> Iterator[BinaryIO]:
    """Open the file for reading, turning every OS failure into a one-line :class:`ImageError`.

    The decoders read from the open file as they need (headers first), so neither a huge file
    nor a huge declared image costs memory before the checks. ``kind`` names what was
    expected, for "is a directory, not <kind>".
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise ImageError(path, f"is a directory, not {kind}")
        if not p.exists():
            raise ImageError(path, "no such file")
        if not p.is_file():  # a FIFO would block the open; a device would never end
            raise ImageError(path, "not a regular file")
        fh = open(p, "rb")  # closed by the with below, once the decoders are done
    except PermissionError:
        raise ImageError(path, "permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise ImageError(path, f"is a directory, not {kind}") from None
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read the file ({exc.strerror or exc})") from None
    with fh:
        yield fh


def _check_size(path: PathLike, width: int, height: int, max_pixels: int) -> None:
    """Refuse a declared size before decoding: empty, or more pixels than ``max_pixels``."""
    if width <= 0 or height <= 0:
        raise ImageError(path, f"declares {width}x{height} pixels: an empty image")
    if width * height > max_pixels:
        raise ImageError(
            path,
            f"declares {width}x{height} pixels, more than the limit of {max_pixels} "
            "(--max-pixels)",
        )


def _png_header(data: bytes) -> tuple[int, int] | None:
    """Return (bit depth, color type) from a PNG's IHDR chunk, or None if it is not there."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


class _PillowLimit:
    """Pillow's own bomb check switched off while regtool reads, then put back.

    Pillow compares every image it opens (and every GIF frame it seeks) with the module global
    ``Image.MAX_IMAGE_PIXELS``: a warning above it, ``DecompressionBombError`` above twice it
    (179 Mpx by default). regtool checks the declared size against its own ``max_pixels``
    first, so Pillow's check could only refuse what regtool's limit allows, or follow a value
    set elsewhere in the program. Pillow has no per-call limit: the global is None while at
    least one read is under way (a count under a lock, for threads) and restored when the last
    one ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: int | None = None

    @contextlib.contextmanager
    def lifted(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    Image.MAX_IMAGE_PIXELS = self._saved


_PILLOW_LIMIT = _PillowLimit()


# A JPEG marker: FF, then anything but a stuffed 00, a restart marker (D0-D7) or fill (FF).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


# Start-of-frame markers with Huffman coding (baseline, extended, progressive, lossless and
# their hierarchical forms); C9-CB and CD-CF are arithmetic-coded.
_JPEG_HUFFMAN_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7))
_JPEG_SOF = _JPEG_HUFFMAN_SOF | {0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_structure(fh: BinaryIO, stop: int) -> tuple[int, int | None, int, int]:
    """Scans (counted up to past ``stop``), the frame marker, its width and height.

    Walks the markers as a decoder does: a segment with a length (an APPn holding an EXIF
    thumbnail, say) is skipped by it; after a scan's header the entropy-coded data run to the
    next marker; the end-of-image marker ends the walk, so data appended after the image are
    not read. Over a memory map, so a huge file costs no memory and the regular expression
    skips the data at C speed. ``(0, None, 0, 0)`` parts stay when the markers are missing.
    """
    try:
        view: Any = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # not mappable: the first 256 MiB will do
        fh.seek(0)
        view = fh.read(256 * 2**20)
    try:
        pos, scans, sof, width, height = 2, 0, None, 0, 0
        while scans <= stop:
            found = _JPEG_MARKER.search(view, pos)
            if found is None:
                break
            pos = found.start()
            marker = view[pos + 1]
            if marker == 0xD9:  # end of image
                break
            if marker in (0x01, 0xD8):  # no length: TEM, a stray SOI
                pos += 2
                continue
            if marker in _JPEG_SOF and sof is None and pos + 9 <= len(view):
                sof = marker
                height, width = struct.unpack(">HH", view[pos + 5:pos + 9])
            pos += 2 + max(2, int.from_bytes(view[pos + 2:pos + 4], "big"))
            scans += marker == 0xDA
        return scans, sof, width, height
    finally:
        if isinstance(view, mmap.mmap):
            view.close()
        fh.seek(0)


def _check_jpeg(path: PathLike, fh: BinaryIO, max_pixels: int) -> None:
    """Refuse from the markers a JPEG whose decoding would cost far more than its bytes.

    * More than ``_MAX_JPEG_SCANS`` scans (see there).
    * Fewer bytes than its declared size needs: with Huffman coding every 8x8 block of the
      full-resolution component costs at least one bit (a DC code; codes are 1 to 16 bits),
      so a W x H image needs W H / 512 bytes or more. libjpeg would otherwise decode a 1 kB
      file declaring 16000 x 16000 pixels into 768 MB of gray filler, taking seconds.
      Arithmetic coding has no such bound and is left to the pixel limit.
    """
    scans, sof, width, height = _jpeg_structure(fh, _MAX_JPEG_SCANS)
    if sof is not None:
        _check_size(path, width, height, max_pixels)
    if scans > _MAX_JPEG_SCANS:
        raise ImageError(
            path,
            f"JPEG of more than {_MAX_JPEG_SCANS} scans (each is decoded over the whole image: "
            "a decoding-time bomb)",
        )
    need = (width // 8) * (height // 8) // 8
    size = os.fstat(fh.fileno()).st_size
    if sof in _JPEG_HUFFMAN_SOF and size < need:
        raise ImageError(
            path,
            f"truncated or corrupt JPEG file (its {width}x{height} pixels need at least "
            f"{need} bytes; the file has {size})",
        )


# Bits per pixel of each PNG color type, per bit of depth: gray, RGB, palette, gray + alpha,
# RGBA.
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _check_png(path: PathLike, fh: BinaryIO, max_pixels: int) -> None:
    """Refuse from IHDR, before Pillow parses anything: the size, 16-bit color, short data.

    A PNG holds its rows deflated, and deflate inflates at most 1032:1: a file smaller than
    its rows / 1032 cannot hold them (Pillow decodes an interlaced one anyway, into filler).
    """
    start = fh.read(33)
    fh.seek(0)
    header = _png_header(start)
    if header is None:
        return  # Pillow says what is wrong
    width, height = struct.unpack(">II", start[16:24])
    _check_size(path, width, height, max_pixels)
    depth, color = header
    if depth == 16 and color in (2, 4, 6):
        kind = {2: "RGB", 4: "gray + alpha", 6: "RGBA"}[color]
        raise ImageError(
            path,
            f"16-bit {kind} PNG cannot be read without losing precision "
            "(Pillow reduces it to 8 bits); save it as 16-bit TIFF (.tif) instead",
        )
    rows = height * -(-width * depth * _PNG_SAMPLES.get(color, 1) // 8)
    size = os.fstat(fh.fileno()).st_size
    if size * _DEFLATE_MAX_RATIO < rows:
        raise ImageError(
            path,
            f"truncated or corrupt PNG file (its {width}x{height} pixels need at least "
            f"{-(-rows // _DEFLATE_MAX_RATIO)} bytes; the file has {size})",
        )


def _read_pillow(path: PathLike, fh: BinaryIO, fmt: str | None, max_pixels: int) -> np.ndarray:
    """Decode a Pillow-readable image; palettes become RGB or RGBA.

    Pillow opens lazily: the size is known from the header before :meth:`~PIL.Image.load`.
    """
    if fmt == "PNG":
        _check_png(path, fh, max_pixels)
    elif fmt == "JPEG":
        _check_jpeg(path, fh, max_pixels)
    with _PILLOW_LIMIT.lifted(), Image.open(fh, formats=_PIL_FORMATS.get(fmt)) as im:
        width, height = im.size
        _check_size(path, width, height, max_pixels)
        if getattr(im, "is_animated", False):
            n_frames = getattr(im, "n_frames", 2)
            raise ImageError(
                path,
                f"animated or multi-frame image ({n_frames} frames); "
                "regtool reads one 2-D image per file",
            )
        mode = im.mode
        convert = None
        if mode == "P":
            palette_mode = im.palette.mode if im.palette is not None else "RGB"
            has_alpha = "transparency" in im.info or palette_mode == "RGBA"
            convert = "RGBA" if has_alpha else "RGB"
        elif mode in _PIL_CONVERT:
            convert = _PIL_CONVERT[mode]
        elif mode == "I" and im.format == "PNG":
            convert = "I;16"  # 16-bit gray that an older Pillow opens as 32-bit
        if convert == "LA" or mode == "LA":
            raise ImageError(
                path,
                "gray + alpha image (2 channels); regtool reads gray, RGB or RGBA: "
                "convert it to RGBA or to plain gray",
            )
        im.load()
        # np.array, not asarray: Pillow hands numpy a read-only buffer.
        return np.array(im.convert(convert) if convert else im)


def _quiet_tifffile() -> None:
    """Keep tifffile's complaints about a file off stderr when no logging is configured.

    tifffile logs a warning for every odd tag of a corrupt file on the logger ``tifffile``;
    with no handler anywhere, Python prints such records on stderr itself
    (:data:`logging.lastResort`), lines beside regtool's one. A NullHandler there stops only
    that: the records still propagate to any handler the application configured.
    """
    logger = logging.getLogger("tifffile")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _count_pages(pages: Any) -> int:
    """Pages of a TIFF, counted up to ``_MAX_COUNTED_PAGES + 1`` (tifffile walks lazily)."""
    for probe in (1, _MAX_COUNTED_PAGES):
        try:
            pages[probe]
        except IndexError:
            return 1 if probe == 1 else len(pages)
    return _MAX_COUNTED_PAGES + 1


def _check_one_image(path: PathLike, tif: Any, page: Any) -> None:
    """Refuse a stack that ImageJ or tifffile stored behind a single IFD.

    ImageJ writes stacks over 4 GB with one IFD and ``images=N`` in the description; tifffile's
    ``truncate`` mode writes one IFD and the whole shape as JSON. Both read as their first
    plane otherwise. Metadata that cannot be parsed is ignored (the page is then all there is).
    """
    images = 1
    with contextlib.suppress(Exception):
        images = int((tif.imagej_metadata or {}).get("images", 1))
    if images > 1:
        raise ImageError(
            path,
            f"ImageJ stack of {images} images stored as one TIFF page; "
            "regtool reads one 2-D image per file",
        )
    if page.is_shaped:
        shape: list[int] = []
        with contextlib.suppress(Exception):
            shape = [int(n) for n in json.loads(page.description)["shape"]]
        if shape and math.prod(shape) > math.prod(page.shape):
            raise ImageError(
                path,
                f"its description declares data of shape {'x'.join(map(str, shape))}, more "
                f"than its one page holds ({'x'.join(map(str, page.shape))}): a stack, or a "
                "corrupt file; regtool reads one 2-D image per file",
            )


def _tiff_layout(path: PathLike, page: Any) -> None:
    """Refuse, from the header, what read_image would refuse after decoding a TIFF page.

    A page declaring 65535 samples per pixel, a depth, or complex values would otherwise be
    decoded (up to 65535 x the pixel limit) before being refused.
    """
    dt = page.dtype
    if dt is None:
        raise ImageError(
            path,
            f"unsupported TIFF pixel format ({page.bitspersample}-bit samples, "
            f"SampleFormat {int(page.sampleformat)})",
        )
    if np.dtype(dt).kind not in "biuf":
        raise ImageError(
            path,
            f"unsupported pixel type {np.dtype(dt).name}; "
            "regtool reads bool, integer and real images",
        )
    shape, axes = _squeezed(tuple(page.shape), page.axes)
    described = "x".join(map(str, shape))
    if len(shape) == 3 and axes[0] == "S" and shape[0] in (3, 4):
        return  # planar RGB(A)
    if len(shape) >= 3 and axes[-1] != "S":
        raise ImageError(
            path,
            f"{len(shape)}-D volume of shape {described} (axes {axes}); "
            "regtool reads one 2-D image per file",
        )
    if len(shape) > 3:
        raise ImageError(
            path, f"{len(shape)}-D data of shape {described}; regtool reads one 2-D image per file"
        )
    if len(shape) == 3 and shape[-1] not in (3, 4):
        raise ImageError(
            path,
            f"{shape[-1]} channels; regtool reads gray (1), RGB (3) or RGBA (4) images",
        )


def _squeezed(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], str]:
    """Drop length-1 axes other than rows and columns (a single sample or plane)."""
    keep = [i for i, a in enumerate(axes) if a in "YX" or shape[i] != 1]
    if len(keep) < 2:
        return shape, axes
    return tuple(shape[i] for i in keep), "".join(axes[i] for i in keep)


def _segment_bytes(page: Any) -> int:
    """Bytes one strip or tile of ``page`` holds once decoded (the largest, the first)."""
    bits = page.bitspersample
    bits = max(bits) if isinstance(bits, tuple) else int(bits)
    samples = page.samplesperpixel if page.planarconfig == 1 else 1
    if page.is_tiled:
        width, length, depth = page.tilewidth, page.tilelength, max(1, page.tiledepth)
    else:
        width, length, depth = page.imagewidth, page.rowsperstrip or page.imagelength, 1
    return depth * length * -(-width * samples * bits // 8)


def _segment_count(page: Any) -> int:
    """Strips or tiles the page's geometry needs (tifffile decodes, or fills, each)."""
    planes = page.samplesperpixel if page.planarconfig == 2 else 1
    if page.is_tiled:
        return (planes * -(-page.imagewidth // page.tilewidth)
                * -(-page.imagelength // page.tilelength)
                * -(-max(1, page.imagedepth) // max(1, page.tiledepth)))
    rows = page.rowsperstrip or page.imagelength
    return planes * max(1, page.imagedepth) * -(-page.imagelength // rows)


def _packbits_size(data: bytes, stop: int) -> int:
    """Bytes PackBits ``data`` decode to, counted without decoding, up to past ``stop``."""
    total = i = 0
    n = len(data)
    while i < n and total <= stop:
        header = data[i]
        if header < 128:  # a literal of header + 1 bytes
            total += header + 1
            i += header + 2
        elif header > 128:  # one byte repeated 257 - header times
            total += 257 - header
            i += 2
        else:  # 128: no operation
            i += 1
    return total


def _stream_size(make: Any, data: bytes, stop: int) -> int:
    """Bytes concatenated LZMA or Zstandard streams inflate to, up to past ``stop``.

    The decompressor objects decode one stream (frame) each; tifffile decodes them all.
    """
    total = 0
    while data and total <= stop:
        decoder = make()
        total += len(decoder.decompress(data, max_length=stop + 1 - total))
        if not decoder.eof:
            break
        data = decoder.unused_data
    return total


def _inflated_size(kind: str, data: bytes, stop: int) -> int:
    """Bytes a compressed segment inflates to, up to past ``stop``; 0 if the data are corrupt.

    Corrupt data are left to tifffile's decoder, which stops where this did, short of
    ``stop`` (or this would have seen more).
    """
    if kind == "packbits":
        return _packbits_size(data, stop)
    if kind == "deflate":
        try:
            return len(zlib.decompressobj().decompress(data, stop + 1))
        except zlib.error:
            return 0
    if kind == "lzma":
        try:
            return _stream_size(lambda: lzma.LZMADecompressor(memlimit=_LZMA_MEMLIMIT), data,
                                stop)
        except lzma.LZMAError as exc:
            # A dictionary beyond _LZMA_MEMLIMIT is refused like a bomb: it is one.
            return stop + 1 if "memory" in str(exc).lower() else 0
        except EOFError:
            return 0
    try:
        from compression import zstd  # Python >= 3.14; tifffile has no zstd without it
    except ImportError:
        return 0
    try:
        return _stream_size(zstd.ZstdDecompressor, data, stop)
    except (zstd.ZstdError, EOFError):
        return 0


def _check_tiff_data(path: PathLike, page: Any, fh: BinaryIO) -> None:
    """Refuse, before decoding, strip or tile data that would be a bomb or is not there.

    * Fewer strips or tiles listed than the layout needs (tifffile would fill the others).
    * Data past the end of the file: a truncated file, and a read of the declared byte count
      (up to 2**64 in BigTIFF), or of a whole uncompressed page, would allocate all of it
      first.
    * Tiles larger than the image and ``_MAX_TILE_PIXELS`` (see there).
    * A compression tifffile cannot decode here (most need the imagecodecs package).
    * Deflate, LZMA, Zstandard or PackBits data that inflate past twice their strip's or tile's
      decoded size (a bomb, see ``_STREAM_CODECS``): with tifffile's fallback decoders each
      segment is inflated with that bound first, one at a time, so the memory used is one
      segment's.
    """
    import tifffile

    size = os.fstat(fh.fileno()).st_size
    offsets, counts = page.dataoffsets, page.databytecounts
    kind = "tile" if page.is_tiled else "strip"
    for i, (offset, count) in enumerate(zip(offsets, counts, strict=False)):
        if count and (offset >= size or offset + count > size):
            raise ImageError(
                path,
                f"truncated or corrupt TIFF file ({kind} {i} of {count} bytes at offset "
                f"{offset} lies past the end of the {size}-byte file)",
            )
    listed, needed = len(offsets), _segment_count(page)
    if needed > listed:
        # tifffile fills the missing ones, one Python call each: a few bytes of header can
        # declare 2**28 one-row strips.
        raise ImageError(
            path,
            f"truncated or corrupt TIFF file (its layout has {needed} {kind}"
            f"{'s' if needed != 1 else ''}; {listed} {'is' if listed == 1 else 'are'} listed)",
        )
    if page.is_contiguous and offsets and offsets[0] + page.nbytes > size:
        # tifffile reads such a page in one piece, allocating all of it first.
        raise ImageError(
            path,
            f"truncated or corrupt TIFF file (its {page.imagewidth}x{page.imagelength} pixels "
            f"need {page.nbytes} bytes at offset {offsets[0]}; the file has {size})",
        )
    if page.is_tiled:
        tile = page.tilewidth * page.tilelength * max(1, page.tiledepth)
        if tile > max(page.imagewidth * page.imagelength, _MAX_TILE_PIXELS):
            raise ImageError(
                path,
                f"declares tiles of {page.tilewidth}x{page.tilelength} pixels for a "
                f"{page.imagewidth}x{page.imagelength} image (each tile is decoded whole)",
            )
    code = int(page.compression)
    if code == 1:
        return
    try:
        tifffile.TIFF.DECOMPRESSORS[code]
    except KeyError:
        try:
            name = tifffile.COMPRESSION(code).name
        except ValueError:
            raise ImageError(path, f"unknown TIFF compression {code}") from None
        raise ImageError(
            path, f"TIFF compression {name} needs the imagecodecs package (pip install imagecodecs)"
        ) from None
    if code not in _STREAM_CODECS:
        return
    decompress = tifffile.TIFF.DECOMPRESSORS[code]
    if (getattr(decompress, "__module__", None) or "").startswith("imagecodecs"):
        return  # bounded by the out= size tifffile passes (see _STREAM_CODECS)
    codec = _STREAM_CODECS[code]
    expected = _segment_bytes(page)
    stop = 2 * expected + 4096
    ratio = _MAX_RATIO.get(codec)
    for i, (offset, count) in enumerate(zip(offsets, counts, strict=False)):
        if not count or (ratio is not None and count * ratio <= stop):
            continue
        fh.seek(offset)
        if _inflated_size(codec, fh.read(count), stop) > stop:
            raise ImageError(
                path,
                f"{kind} {i} inflates to more than {stop} bytes where {expected} are declared "
                "(a decompression bomb)",
            )


def _read_tiff(path: PathLike, fh: BinaryIO, max_pixels: int) -> np.ndarray:
    """Decode a single-image TIFF; refuse multi-page files and volumes.

    tifffile directly (imageio's TIFF plugin wraps it), to see pages and axes. Only the first
    page is decoded, and only after its header passed every check; tifffile's "series" (which
    for some flavors walks all pages or opens other files in the folder) are not used.
    """
    # Imported here: 17 ms that a PNG-only command need not pay.
    import tifffile

    _quiet_tifffile()
    # LSM, NDPI and ScanImage files make tifffile read every page when it opens them.
    with tifffile.TiffFile(fh, is_lsm=False, is_ndpi=False, is_scanimage=False) as tif:
        pages = tif.pages
        if not pages:
            raise ImageError(path, "truncated or corrupt TIFF file (no image in it)")
        page = pages[0]
        _check_size(path, page.imagewidth, page.imagelength, max_pixels)
        n_pages = _count_pages(pages)
        if n_pages > 1:
            counted = f"more than {_MAX_COUNTED_PAGES}" if n_pages > _MAX_COUNTED_PAGES else n_pages
            raise ImageError(
                path,
                f"multi-page TIFF ({counted} pages: a stack or volume); "
                "regtool reads one 2-D image per file",
            )
        if page.imagedepth > 1:
            raise ImageError(
                path,
                f"3-D volume of {page.imagedepth} planes in one TIFF page; "
                "regtool reads one 2-D image per file",
            )
        _check_one_image(path, tif, page)
        _tiff_layout(path, page)
        _check_tiff_data(path, page, fh)
        axes = page.axes
        image = np.asarray(page.asarray())
    shape, axes = _squeezed(image.shape, axes)
    image = image.reshape(shape)
    if image.ndim == 3 and axes[0] == "S":
        image = np.moveaxis(image, 0, -1)  # planar RGB(A) -> interleaved
    return image


def _as_supported_dtype(path: PathLike, image: np.ndarray) -> np.ndarray:
    """Return ``image`` in one of :data:`READ_DTYPES`, converting exactly, or refuse it."""
    dt = image.dtype
    if dt.name in READ_DTYPES:
        return image
    if dt.byteorder not in ("=", "|") and dt.newbyteorder("=").name in READ_DTYPES:
        return image.astype(dt.newbyteorder("="))
    if dt == np.float16 or dt in (np.int8, np.int16):
        return image.astype(np.float32)  # exact
    if dt in (np.int32, np.uint32):
        return image.astype(np.float64)  # exact
    if dt.kind in "iu":
        # 64-bit integers: exact in float64 only up to 2**53.
        if image.size == 0 or max(abs(int(image.min())), abs(int(image.max()))) <= 2**53:
            return image.astype(np.float64)
        raise ImageError(path, f"{dt.name} values beyond 2**53 cannot be registered exactly")
    raise ImageError(
        path,
        f"unsupported pixel type {dt.name}; regtool reads bool, integer and real images",
    )


def _detail(exc: BaseException) -> str:
    """The decoder's own words, when they are short, on one line, and say something."""
    text = " ".join(str(exc).split())
    if (not text or len(text) > 80 or isinstance(exc, Image.UnidentifiedImageError)
            or not text.isprintable()):
        return "cannot decode it"
    return text


def _check_limit(max_pixels: int) -> int:
    try:
        limit = operator.index(max_pixels)
    except TypeError:
        raise TypeError(f"max_pixels must be an integer, not {type(max_pixels).__name__}") from None
    if limit < 1:
        raise ValueError(f"max_pixels must be at least 1, not {limit}")
    return limit


def read_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one 2-D image (gray, RGB or RGBA) from a file.

    Parameters
    ----------
    path : str or os.PathLike
        PNG, JPEG, TIFF, or another single-image format Pillow reads (BMP, GIF, WebP...). The
        format is recognized from the file's content, not its name.
    max_pixels : int, optional
        Refuse an image whose header declares more pixels (width x height) than this, before
        decoding anything: a decompression bomb (a small file that inflates to a huge image)
        or an absurd header costs neither time nor memory. Default
        :data:`DEFAULT_MAX_PIXELS`, 2**28 (16384 x 16384). Pillow's own limit
        (``PIL.Image.MAX_IMAGE_PIXELS``) plays no part.

    Returns
    -------
    ndarray
        ``(H, W)`` for gray images, ``(H, W, 3)`` for RGB, ``(H, W, 4)`` for RGBA; dtype bool,
        uint8, uint16, float32 or float64. Palette images come back RGB, or RGBA when the
        palette has transparency. Other dtypes are converted exactly: float16, int8 and int16
        to float32; int32, uint32 (and 64-bit integers up to 2**53) to float64.

    Raises
    ------
    ImageError
        One line naming the file and the problem: missing, a directory, unreadable, not an
        image, truncated or corrupt, more than ``max_pixels`` pixels, a decompression bomb,
        multi-page or animated, a 3-D volume, a channel count other than 1, 3 or 4, an
        unsupported pixel type or compression, or a 16-bit color PNG (which Pillow cannot read
        losslessly). Whatever a decoder raises on a hostile file becomes such a line.
    ValueError
        If ``max_pixels`` is less than 1 (a bug of the caller, not of the file).

    Notes
    -----
    The file is read as the decoders need it, never whole first. Hostile headers are bounded
    before decoding: TIFF pages are counted only up to 1000, tiles may not exceed the image
    (or 2048^2 pixels), deflate / LZMA / PackBits strips are inflated with a bound before
    tifffile decodes them (its own decoders have none), and a JPEG may have at most 100 scans
    (libjpeg decodes every scan over the whole image). Memory is then bounded by the decoded
    image: at most ``max_pixels`` x 4 channels x 8 bytes, and a few times less for the usual
    8- and 16-bit images.

    Examples
    --------
    >>> from regtool.io import read_image
    >>> image = read_image("sample_images/camera.png")  # doctest: +SKIP
    >>> image.shape, image.dtype                          # doctest: +SKIP
    ((512, 512), dtype('uint8'))
    """
    limit = _check_limit(max_pixels)
    with _open(path) as fh:
        try:
            head = fh.read(16)
        except OSError as exc:
            raise ImageError(path, f"cannot read the file ({exc.strerror or exc})") from None
        if not head:
            raise ImageError(path, "empty file, not an image")
        fmt = _sniff(head)
        try:
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if fmt == "TIFF":
                    image = _read_tiff(path, fh, limit)
                else:
                    image = _read_pillow(path, fh, fmt, limit)
        except ImageError:
            raise
        except MemoryError:
            raise ImageError(path, "image too large to fit in memory") from None
        except Exception as exc:  # decoders raise anything from SyntaxError to struct.error
            if fmt is None:
                raise ImageError(path, "not an image file (unrecognized format)") from None
            raise ImageError(path, f"truncated or corrupt {fmt} file ({_detail(exc)})") from None

    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[-1] not in (3, 4):
        raise ImageError(
            path,
            f"{image.shape[-1]} channels; regtool reads gray (1), RGB (3) or RGBA (4) images",
        )
    if image.ndim not in (2, 3):
        raise ImageError(
            path,
            f"{image.ndim}-D data of shape {'x'.join(map(str, image.shape))}; "
            "regtool reads one 2-D image per file",
        )
    if image.size == 0:
        raise ImageError(path, "empty image (no pixels)")
    return _as_supported_dtype(path, image)


def _is_jpeg(path: PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            return _sniff(fh.read(16)) == "JPEG"
    except OSError:
        return False


def read_mask(
    path: PathLike,
    shape: tuple[int, ...] | None = None,
    image_name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read a mask image: which pixels of an image to use (nonzero) and which to leave out (0).

    Parameters
    ----------
    path : str or os.PathLike
        Any image :func:`read_image` reads: bool, 8/16-bit or float; gray, RGB or RGBA.
    shape : tuple of int, optional
        ``(H, W)`` (or the whole shape) of the image the mask belongs to; the mask must have
        that many rows and columns.
    image_name : str, optional
        How to name that image in the message when the sizes differ, e.g.
        ``"the target a.png"``.
    max_pixels : int, optional
        Passed on to :func:`read_image`: a mask declaring more pixels is refused unread.

    Returns
    -------
    ndarray of bool
        ``(H, W)``, True where the pixel is to be used. A gray pixel is used when it is nonzero
        (NaN counts as 0: it holds no value); a color pixel when any of its red, green and blue
        values is; in an RGBA mask, a fully transparent pixel is never used (so an opaque
        black-and-white mask, a mask drawn in the alpha channel over white, and the two combined
        all mean what they show). JPEG is lossy, its black seldom exactly 0: in a JPEG mask a
        pixel is used when a value is above 127, half the range.

    Raises
    ------
    ImageError
        The file cannot be read as an image (see :func:`read_image`), or its size differs from
        ``shape``: one line naming the mask file and both sizes.
    """
    mask = read_image(path, max_pixels=max_pixels)
    if shape is not None and tuple(mask.shape[:2]) != tuple(shape[:2]):
        h, w = mask.shape[:2]
        hh, ww = shape[:2]
        whose = image_name or "its image"
        raise ImageError(
            path,
            f"mask is {w}x{h} pixels but {whose} is {ww}x{hh}; "
            "a mask must have the size of its image",
        )
    values = mask if mask.ndim == 2 else mask[..., :3]
    if _is_jpeg(path):
        # JPEG is lossy: its black is rarely exactly 0, and "nonzero" would use every pixel.
        used = values > 127
    else:
        used = values != 0
    if values.dtype.kind == "f":
        used &= ~np.isnan(values)
    if used.ndim == 3:
        used = used.any(axis=-1)
    if mask.ndim == 3 and mask.shape[-1] == 4:
        used &= mask[..., 3] != 0
    return used


# --------------------------------------------------------------------------------------------
# What each output format holds
# --------------------------------------------------------------------------------------------


def _channels(shape: tuple[int, ...]) -> int:
    return 1 if len(shape) == 2 else int(shape[-1])


def _describe(dtype: np.dtype, channels: int) -> str:
    kind = {1: "gray", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}-channel")
    return f"{np.dtype(dtype).name} {kind}"


def format_problem(path: PathLike, dtype: np.dtype | str, channels: int) -> str | None:
    """Say why the format of ``path`` cannot hold an image, or return None if it can.

    Parameters
    ----------
    path : str or os.PathLike
        Output path; its extension (case-insensitive) selects the format.
    dtype : numpy dtype
        dtype of the image to write.
    channels : int
        1 (gray), 3 (RGB) or 4 (RGBA).

    Returns
    -------
    str or None
        A short sentence naming a format that works, or None.
    """
    ext = Path(path).suffix.lower()
    fmt = WRITE_EXTENSIONS.get(ext)
    dt = np.dtype(dtype)
    what = _describe(dt, channels)
    if fmt is None:
        shown = ext or "(none)"
        return f"cannot write images with extension {shown}; use .png, .tif or .jpg"
    if channels not in (1, 3, 4):
        return f"cannot write {channels}-channel images; regtool writes gray, RGB or RGBA"
    if dt.name not in READ_DTYPES:
        return f"cannot write pixel type {dt.name}; use bool, uint8, uint16, float32 or float64"
    if fmt == "TIFF":
        return None
    if fmt == "PNG":
        if dt.kind == "f":
            return f"PNG cannot hold {what} data; use .tif"
        if dt == np.uint16 and channels != 1:
            return f"PNG cannot hold {what} data (16-bit PNG is written as gray only); use .tif"
        if dt == np.bool_ and channels != 1:
            return f"PNG cannot hold {what} data; use .tif"
        return None
    # JPEG
    if dt == np.uint8 and channels in (1, 3):
        return None
    if channels == 4:
        return f"JPEG cannot hold {what} data (no alpha channel); use .png or .tif"
    better = ".png or .tif" if dt in (np.uint16, np.bool_) and channels == 1 else ".tif"
    return f"JPEG cannot hold {what} data (8-bit gray or RGB only); use {better}"


def default_output_path(
    source: PathLike, dtype: np.dtype | str, channels: int, folder: PathLike = ".",
    tag: str = "aligned",
) -> Path:
    """Name the aligned image after the source: ``<folder>/<stem>_<tag><ext>``.

    ``<ext>`` is the source's own extension when regtool writes that format and the format
    holds the data; otherwise ``.png`` if PNG holds it; otherwise ``.tif``, which holds
    everything.

    Parameters
    ----------
    source : str or os.PathLike
        Path of the source image, as given.
    dtype : numpy dtype
        dtype of the source image (the aligned image has the same).
    channels : int
        Channels of the source image: 1, 3 or 4.
    folder : str or os.PathLike
        Folder of the output, by default the current directory.
    tag : str
        What follows the stem: ``aligned`` (``regtool align``), ``warped`` (``regtool warp``).

    Returns
    -------
    pathlib.Path
    """
    src = Path(source)
    stem = src.stem
    for ext in (src.suffix, ".png", ".tif"):
        candidate = Path(folder) / f"{stem}_{tag}{ext}"
        if ext and format_problem(candidate, dtype, channels) is None:
            return candidate
    return Path(folder) / f"{stem}_{tag}.tif"  # not reached: TIFF holds every image we read


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(
    path: PathLike,
    inputs: Iterable[PathLike] = (),
    *,
    dtype: np.dtype | str | None = None,
    channels: int | None = None,
) -> None:
    """Refuse an output path before any work is done, so a failed run writes nothing.

    Parameters
    ----------
    path : str or os.PathLike
        Where an output will be written.
    inputs : iterable of path
        Input files that must not be overwritten.
    dtype, channels : optional
        If given, also check that the format chosen by the extension of ``path`` holds an image
        of that dtype and channel count (see :func:`format_problem`).

    Raises
    ------
    ImageError
        If the folder does not exist or is not writable, ``path`` is a directory, ``path`` is
        one of ``inputs``, or the format cannot hold the data.
    """
    p = Path(path)
    folder = p.parent
    if p.is_dir():
        raise ImageError(path, "is a directory; give a file name for the output")
    for inp in inputs:
        if _same_file(p, Path(inp)):
            raise ImageError(path, "output would overwrite an input file; choose another name")
    if not folder.exists():
        raise ImageError(path, f"output folder {os.fspath(folder)} does not exist")
    if not folder.is_dir():
        raise ImageError(path, f"output folder {os.fspath(folder)} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageError(path, f"output folder {os.fspath(folder)} is not writable")
    # A real probe: os.access says yes to root even on a read-only file system.
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{p.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ImageError(
            path, f"cannot write in output folder {os.fspath(folder)} ({reason})"
        ) from None
    if dtype is not None and channels is not None:
        problem = format_problem(p, dtype, channels)
        if problem is not None:
            raise ImageError(path, problem)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def file_mode(mode: int = 0o666) -> int:
    """``mode`` with the process's umask applied: what ``open`` would give a new file.

    Files made by :func:`tempfile.mkstemp` (and folders by ``mkdtemp``) start private (0600,
    0700); an output renamed into place gets the usual permissions from this.
    """
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@contextlib.contextmanager
def _atomic(path: PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    The temporary file is removed on any exception, KeyboardInterrupt included.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".part")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# zlib level of written PNGs. Pillow's default, 6, spent 1.75 s on a 4096x4096 8-bit photograph
# (38% of the whole `regtool align` command); level 3 took 0.63 s for a file 11% larger, level
# 1 0.43 s for 15% larger. PNG is lossless at every level.
PNG_LEVEL = 3


def _encode(path: Path, tmp: str, image: np.ndarray) -> None:
    fmt = WRITE_EXTENSIONS[path.suffix.lower()]
    if fmt == "TIFF":
        kwargs: dict[str, Any] = {"photometric": "minisblack"}
        if image.ndim == 3:
            kwargs["photometric"] = "rgb"
            if image.shape[-1] == 4:
                kwargs["extrasamples"] = ("unassalpha",)
            if image.dtype == np.bool_:
                # tifffile packs 1-bit interleaved samples wrongly; one plane per channel works.
                image = np.ascontiguousarray(np.moveaxis(image, -1, 0))
                kwargs["planarconfig"] = "separate"
        iio.imwrite(tmp, image, plugin="tifffile", extension=".tif", **kwargs)
    else:
        # Pillow directly: imageio's pillow writer asks Pillow for its registered extensions,
        # which imports every one of Pillow's ~40 format plugins first (~80 ms of a 0.5 s
        # command at 512x512, measured with python -X importtime).
        options = {"compress_level": PNG_LEVEL} if fmt == "PNG" else {"quality": 95}
        Image.fromarray(image).save(tmp, format=fmt, **options)


# Free space below which a short write is taken for a full disk (see write_problem).
_NEARLY_FULL_BYTES = 2**20


def write_problem(exc: OSError, path: PathLike) -> str:
    """What stopped a write to ``path``, in a few words: the system's message for ``exc``.

    tifffile writes pixel data with :meth:`numpy.ndarray.tofile`, whose error for a short write
    has no errno ("4096 requested and 3960 written"); a file system that has (nearly) no space
    left then says why: "No space left on device".

    Parameters
    ----------
    exc : OSError
    path : str or os.PathLike
        The file being written.
    """
    if exc.errno is None and hasattr(os, "statvfs"):
        with contextlib.suppress(OSError):
            st = os.statvfs(Path(path).parent)
            if st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES:
                return os.strerror(errno.ENOSPC)
    return exc.strerror or str(exc)


def write_image(path: PathLike, image: np.ndarray) -> None:
    """Write an image atomically, in the format named by the extension of ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        ``.png``, ``.tif``/``.tiff`` or ``.jpg``/``.jpeg`` (case-insensitive). The folder must
        exist.
    image : ndarray
        ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``; bool, uint8, uint16, float32 or float64. See
        the module docstring for which format holds what.

    Raises
    ------
    ImageError
        If the format cannot hold the image (the message names one that can), or the file
        cannot be written. Nothing is left at ``path`` or beside it in either case.
    """
    p = Path(path)
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ImageError(path, f"cannot write {arr.ndim}-D data; regtool writes 2-D images")
    problem = format_problem(p, arr.dtype, _channels(arr.shape))
    if problem is not None:
        raise ImageError(path, problem)
    arr = np.ascontiguousarray(arr)
    try:
        with _atomic(p) as tmp:
            _encode(p, tmp, arr)
    except OSError as exc:
        raise ImageError(path, f"cannot write the file ({write_problem(exc, p)})") from None


def _jsonable(value: Any) -> Any:
    """Turn numpy values into JSON ones, and non-finite floats into None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_json(document: Mapping[str, Any]) -> str:
    """Serialize a parameter document as regtool writes it: indented, newline-terminated.

    Parameters
    ----------
    document : mapping
        Values may include numpy scalars and arrays; NaN and infinities become ``null``.

    Returns
    -------
    str
    """
    return json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n"


def write_json(path: PathLike, document: Mapping[str, Any]) -> None:
    """Write a JSON document atomically (see :func:`dumps_json` for the form).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its folder must exist.
    document : mapping
        The parameters.

    Raises
    ------
    ImageError
        If the file cannot be written; nothing is left behind.
    """
    text = dumps_json(document)
    try:
        with _atomic(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise ImageError(path, f"cannot write the file ({exc.strerror or exc})") from None


def read_text(path: PathLike) -> str:
    """Read a UTF-8 text file (a parameter document, a CSV table) whole.

    Parameters
    ----------
    path : str or os.PathLike
        The file; a byte-order mark at its start (as spreadsheets write) is dropped.

    Returns
    -------
    str

    Raises
    ------
    ImageError
        One line naming the file: missing, a directory, unreadable, or not UTF-8 text.
    """
    with _open(path, "a file") as fh:
        try:
            data = fh.read()
        except OSError as exc:
            raise ImageError(path, f"cannot read the file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImageError(path, f"not a UTF-8 text file (byte {exc.start} cannot be "
                         "decoded)") from None


def write_text(path: PathLike, text: str) -> None:
    """Write a text file atomically, in UTF-8 (a points table, a report).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; its folder must exist.
    text : str
        Written as it is: line endings are the caller's.

    Raises
    ------
    ImageError
        If the file cannot be written; nothing is left behind.
    """
    try:
        with _atomic(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    except OSError as exc:
        raise ImageError(path, f"cannot write the file ({exc.strerror or exc})") from None


class OutputSet:
    """Write several outputs as a unit: if anything fails, remove the ones already written.

    Each file is written atomically; the set makes a run leave either all its outputs or none
    (an image without its parameters would be a trap).

    Examples
    --------
    >>> with OutputSet() as out:                      # doctest: +SKIP
    ...     out.write_image("aligned.png", aligned)
    ...     out.write_json("aligned.json", params)
    """

    def __init__(self) -> None:
        self.written: list[Path] = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            for p in self.written:
                with contextlib.suppress(OSError):
                    p.unlink()
            self.written.clear()

    def write_image(self, path: PathLike, image: np.ndarray) -> None:
        """Write an image with :func:`write_image` and remember it."""
        write_image(path, image)
        self.written.append(Path(path))

    def write_json(self, path: PathLike, document: Mapping[str, Any]) -> None:
        """Write a JSON document with :func:`write_json` and remember it."""
        write_json(path, document)
        self.written.append(Path(path))

    def write_text(self, path: PathLike, text: str) -> None:
        """Write a text file with :func:`write_text` and remember it."""
        write_text(path, text)
        self.written.append(Path(path))

