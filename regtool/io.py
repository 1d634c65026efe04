"""Reading and writing images and parameter files, with errors that name the file.

This module is the only place regtool touches image files. It does no numerics beyond exact dtype
conversion (and turning a mask image into used / not used): what it reads is either one of the
dtypes the library registers (bool, uint8, uint16, float32, float64) or refused with an
:class:`ImageError` whose message names the file and the problem in one line.

Formats
-------
Reading: PNG, JPEG and the other single-image formats Pillow knows (BMP, GIF, WebP, PPM...)
through imageio's ``pillow`` plugin; TIFF through tifffile (which imageio's TIFF plugin wraps), to
see its pages and axes. tifffile is imported on the first TIFF only.

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

Every write is atomic: the data go to a temporary file in the destination folder, which then
replaces the destination in one step (:func:`os.replace`), so an interrupted run never leaves a
half-written file behind.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
from PIL import Image

__all__ = [
    "ImageError",
    "read_image",
    "read_mask",
    "write_image",
    "write_json",
    "read_text",
    "write_text",
    "check_output_path",
    "format_problem",
    "dumps_json",
    "default_output_path",
    "OutputSet",
    "READ_DTYPES",
    "WRITE_EXTENSIONS",
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


def _sniff(head: bytes) -> str | None:
    """Return the format whose signature starts ``head``, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def _read_bytes(path: PathLike) -> bytes:
    """Read the whole file, turning every OS failure into a one-line :class:`ImageError`."""
    p = Path(path)
    try:
        if p.is_dir():
            raise ImageError(path, "is a directory, not an image file")
        if not p.exists():
            raise ImageError(path, "no such file")
        if not p.is_file():
            raise ImageError(path, "not a regular file")
        with open(p, "rb") as fh:
            return fh.read()
    except PermissionError:
        raise ImageError(path, "permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read the file ({exc.strerror or exc})") from None


def _png_header(data: bytes) -> tuple[int, int] | None:
    """Return (bit depth, color type) from a PNG's IHDR chunk, or None if it is not there."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    return data[24], data[25]


def _read_tiff(path: PathLike, data: bytes) -> np.ndarray:
    """Decode a single-image TIFF; refuse multi-page files and volumes."""
    # tifffile directly (imageio's TIFF plugin wraps it): the page count and the axes of the
    # first series are needed to tell an RGB image from a stack. Imported here: 17 ms that a
    # PNG-only command need not pay.
    import tifffile

    with tifffile.TiffFile(_io.BytesIO(data)) as tif:
        n_pages = len(tif.pages)
        if n_pages > 1:
            raise ImageError(
                path,
                f"multi-page TIFF ({n_pages} pages: a stack or volume); "
                "regtool reads one 2-D image per file",
            )
        series = tif.series[0]
        axes = series.axes
        image = np.asarray(series.asarray())
    # Drop length-1 axes other than rows and columns (e.g. a single sample or plane).
    extra = tuple(i for i, a in enumerate(axes) if a not in "YX" and image.shape[i] == 1)
    if extra and image.ndim - len(extra) >= 2:
        image = image.squeeze(axis=extra)
        axes = "".join(a for i, a in enumerate(axes) if i not in extra)
    if image.ndim == 3 and axes[0] == "S" and image.shape[0] in (3, 4):
        image = np.moveaxis(image, 0, -1)  # planar RGB(A) -> interleaved
    elif image.ndim >= 3 and axes[-1] != "S":
        raise ImageError(
            path,
            f"{image.ndim}-D volume of shape {'x'.join(map(str, image.shape))} (axes {axes}); "
            "regtool reads one 2-D image per file",
        )
    return image


def _read_pillow(path: PathLike, data: bytes, fmt: str | None) -> np.ndarray:
    """Decode a Pillow-readable image; palettes become RGB or RGBA."""
    if fmt == "PNG":
        header = _png_header(data)
        if header is not None and header[0] == 16 and header[1] in (2, 4, 6):
            kind = {2: "RGB", 4: "gray + alpha", 6: "RGBA"}[header[1]]
            raise ImageError(
                path,
                f"16-bit {kind} PNG cannot be read without losing precision "
                "(Pillow reduces it to 8 bits); save it as 16-bit TIFF (.tif) instead",
            )
    with iio.imopen(data, "r", plugin="pillow") as f:
        n_frames = f.properties(index=...).n_images or 1
        if n_frames > 1:
            raise ImageError(
                path,
                f"animated or multi-frame image ({n_frames} frames); "
                "regtool reads one 2-D image per file",
            )
        meta = f.metadata(index=0, exclude_applied=False)
        mode = meta.get("mode")
        convert = None
        if mode == "P":
            palette = np.asarray(meta.get("palette", np.zeros((0, 3))))
            has_alpha = "transparency" in meta or (palette.ndim == 2 and palette.shape[1] == 4)
            convert = "RGBA" if has_alpha else "RGB"
        elif mode in _PIL_CONVERT:
            convert = _PIL_CONVERT[mode]
        if convert == "LA" or mode == "LA":
            raise ImageError(
                path,
                "gray + alpha image (2 channels); regtool reads gray, RGB or RGBA: "
                "convert it to RGBA or to plain gray",
            )
        return np.asarray(f.read(index=0, mode=convert))


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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and the ones it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _detail(exc: BaseException) -> str:
    """The decoder's own words: imageio wraps them in messages about its plugins."""
    while "plugin" in str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip()
    if not text or "plugin" in text or "can not" in text or len(text) > 80:
        return "cannot decode it"
    return text.splitlines()[0]


def read_image(path: PathLike) -> np.ndarray:
    """Read one 2-D image (gray, RGB or RGBA) from a file.

    Parameters
    ----------
    path : str or os.PathLike
        PNG, JPEG, TIFF, or another single-image format Pillow reads (BMP, GIF, WebP...). The
        format is recognized from the file's content, not its name.

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
        image, truncated or corrupt, multi-page or animated, a 3-D volume, a channel count
        other than 1, 3 or 4, an unsupported pixel type, or a 16-bit color PNG (which Pillow
        cannot read losslessly).

    Examples
    --------
    >>> from regtool.io import read_image
    >>> image = read_image("sample_images/camera.png")  # doctest: +SKIP
    >>> image.shape, image.dtype                          # doctest: +SKIP
    ((512, 512), dtype('uint8'))
    """
    data = _read_bytes(path)
    if not data:
        raise ImageError(path, "empty file, not an image")
    fmt = _sniff(data[:16])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "TIFF":
                image = _read_tiff(path, data)
            else:
                image = _read_pillow(path, data, fmt)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(path, "image too large to fit in memory") from None
    except Exception as exc:  # decoders raise anything from SyntaxError to struct.error
        if any(isinstance(e, Image.DecompressionBombError) for e in _chain(exc)):
            raise ImageError(
                path, f"image larger than Pillow's safety limit ({Image.MAX_IMAGE_PIXELS} pixels)"
            ) from None
        if fmt is None:
            raise ImageError(path, "not an image file (unrecognized format)") from None
        detail = _detail(exc)
        raise ImageError(path, f"truncated or corrupt {fmt} file ({detail})") from None

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
    path: PathLike, shape: tuple[int, ...] | None = None, image_name: str | None = None
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
    mask = read_image(path)
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
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
        raise ImageError(path, f"cannot write the file ({exc.strerror or exc})") from None


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
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not a file") from None
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except PermissionError:
        raise ImageError(path, "permission denied (cannot read the file)") from None
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

