"""Time-lapse stacks: frames read lazily, a reference, composed transforms, a streaming writer.

A stack is a multi-page TIFF (plain, BigTIFF, an ImageJ hyperstack with T, Z and C axes, a
tifffile-shaped or an OME series), a folder of single-image frames, or a glob of them. Every
frame is registered to a reference and resampled on the reference's grid; the aligned stack is
written in the input's layout and dtype, frame after frame, and a transforms table (CSV and
JSON) says what was done to each frame.

References
----------
``first`` (frame 0) or a frame index ``N`` (0-based, as the table's ``index``): every frame is
registered to that frame. ``mean``: to the mean of the frames (of the registration channel),
computed in one streaming pass before the registrations. ``previous``: frame k to its raw
predecessor k-1, the pairs independently (in parallel), then composed in order:

    A_k maps frame k-1's pixels to frame k's (the pair's target->source matrix), and
    M_k = A_k @ M_{k-1}, M_0 = identity,

so that ``aligned_k[y, x] = frame_k(M_k @ [x, y, 1])`` lies on frame 0's grid. The composition
depends on the pairs' results only, never on the order they finished in: a parallel run equals
a serial one exactly.

Failures
--------
A frame whose registration fails (an unusable frame: blank, mostly NaN) or does not converge
is *held*: it is resampled with the transform of the last good frame before it (the reference's,
identity, when there is none) and reported with ``status = "held"``, ``converged = false``, the
reason, and ``held_from``. It never enters the transforms of other frames: under ``previous``
the frame after it is registered to the last good frame instead of to it (``registered_to``
says which), so the chain goes on past it. A frame that cannot be read at all stops the run
(:class:`regtool.io.ImageError`), since the output could not hold it.

Memory
------
Workers read the frames they register, and then the pages they resample, from the file
themselves (tasks carry paths and matrices, not arrays; an open file is kept per worker
thread). The parent keeps a bounded window of registrations in flight
(:func:`regtool.executors.bounded`) and another of resampled pages, which it writes in order
as they come back; it holds the table's rows (about 1.5 KB a frame) and a window of pages,
so peak memory does not grow with the stack. Resampling in the workers, not the parent,
lets the run scale with them: a 512 x 512 page takes about as long to resample (18 ms) as to
register (22 ms), and a parent doing it would set the pace whatever the number of workers.

Outputs
-------
A TIFF input gives a TIFF with the same series shape, axes, dtype, ImageJ metadata (axes, unit,
spacing, frame interval, ranges, LUTs, labels...) and resolution; BigTIFF when the input is one
or the data pass 4 GB (an ImageJ file is then written as ImageJ writes large files: contiguous
data after one IFD). A folder or glob input gives a folder of frames of the same names and
formats (a format regtool cannot write becomes ``.png``, or ``.tif`` when PNG cannot hold the
frame), or, when the output path ends in ``.tif``/``.tiff``, a multi-page TIFF. Outputs are
written under a temporary name in the destination folder and renamed into place at the end:
an interrupted or failed run leaves nothing.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io as _textio
import json
import math
import os
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import io
from .errors import InputError, RegtoolError
from .executors import bounded, default_jobs, open_executor
from .pipeline import AlignOptions
from .prepare import luminance
from .register import _check_options, align
from .resample import INTERP_ORDERS, fill_problem, warp
from .transform import center_params, image_center, rigid_params

__all__ = [
    "Stack",
    "open_stack",
    "FrameRef",
    "StackPlan",
    "StackOutcome",
    "Interrupted",
    "WorkerLost",
    "plan_stack",
    "run_stack",
    "register_stack",
    "register_task",
    "warp_task",
    "compose_previous",
    "apply_table",
    "read_table",
    "TABLE_COLUMNS",
    "CONVENTION",
    "FAILURE_POLICY",
]

#: file extensions taken as frames in a folder (hidden files are skipped)
FRAME_SUFFIXES = frozenset((".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp",
                            ".ppm", ".pgm", ".pbm", ".pnm"))
TIFF_SUFFIXES = (".tif", ".tiff")
#: a stack's data size from which a non-ImageJ TIFF is written as BigTIFF (4 GB less room
#: for the IFDs and tags)
BIGTIFF_BYTES = 2**32 - 2**25
#: the columns of the CSV transforms table, in order
TABLE_COLUMNS = ("index", "file", "status", "converged", "reason", "registered_to", "held_from",
                 "m00", "m01", "m02", "m10", "m11", "m12", "tx", "ty", "theta_deg",
                 "shift_x", "shift_y", "ncc", "sigma_shift_x", "sigma_shift_y",
                 "sigma_theta_deg", "endpoint_px", "width", "height")
#: the error-bar fields of a row (1-sigma standard errors of shift and theta, the expected mean
#: endpoint error in pixels), as in a batch's results.csv
SIGMA_KEYS = ("sigma_shift_x", "sigma_shift_y", "sigma_theta_deg", "endpoint_px")
CONVENTION = ("matrix maps reference pixel (x, y) to this frame's pixel: "
              "aligned[y, x] = frame(matrix @ [x, y, 1]); pixel (x, y) is image[y, x], (0, 0) "
              "the center of the top-left pixel; matrix = [[cos t, -sin t, tx], "
              "[sin t, cos t, ty]]; shift is the translation about the frame's center")
FAILURE_POLICY = ("a frame that fails or does not converge is held: resampled with the "
                  "transform of the last good frame before it (identity when there is none) and "
                  "never used by other frames; under 'previous' the next frame is registered to "
                  "the last good frame instead")
# ImageJ description entries tifffile computes itself from the shape it writes
_IJ_COMPUTED = frozenset(("ImageJ", "images", "channels", "slices", "frames", "hyperstack"))
_IDENTITY = np.eye(3)


class Interrupted(RegtoolError):
    """The run's ``stop`` callable asked it to stop: no output was written."""


class WorkerLost(RegtoolError):
    """A local worker process died (out of memory, or killed): the run stopped, no output was
    written. ``str(error)`` is one line naming the stack."""


# --------------------------------------------------------------------------------------------
# Reading: frames and pages
# --------------------------------------------------------------------------------------------


class FrameRef(NamedTuple):
    """Where a worker finds an image to register: a path it reads itself (tasks carry paths).

    The path is absolute: a worker's current folder need not be the caller's.

    ``kind`` is ``"stack"`` (page ``index`` of a TIFF stack's frame; channel chosen by the
    task), ``"image"`` (a single-image file) or ``"array"`` (a ``.npy`` file: the mean frame,
    ready to register). ``max_pixels`` is the largest single-image file the worker reads
    (``--max-pixels``; :func:`regtool.io.read_image`).
    """

    path: str
    index: int | None
    kind: str
    max_pixels: int = io.DEFAULT_MAX_PIXELS


def _natural_key(text: str) -> tuple[Any, ...]:
    """Sort ``frame2`` before ``frame10``."""
    return tuple(int(part) if part.isdigit() else part.lower()
                 for part in re.split(r"(\d+)", text))


def _is_tiff(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _native(array: np.ndarray) -> np.ndarray:
    if array.dtype.byteorder not in ("=", "|"):
        return array.astype(array.dtype.newbyteorder("="))
    return array


class Stack:
    """Frames read one at a time from a TIFF stack or a list of image files.

    A frame holds ``channels`` planes (one per ``C``); a *page* is one plane, ``(H, W)``,
    ``(H, W, S)`` or ``(S, H, W)`` for color samples, and is the unit read, resampled and
    written. Use :func:`open_stack` to make one; close it when done (or use ``with``).

    Attributes
    ----------
    path : str
        As given.
    kind : {"tiff", "folder"}
        ``"folder"`` also for a glob.
    n_frames, n_pages, channels, samples : int
        ``channels`` is the size of the ``C`` axis (1 without one), ``samples`` the color
        samples of a pixel (1 gray, 3 RGB, 4 RGBA).
    shape : (int, int)
        Rows and columns of a frame.
    dtype : numpy.dtype
    page_axes : str
        ``"YX"``, ``"YXS"`` or ``"SYX"``.
    files : list of str or None
        The frames' files (folders and globs).
    max_pixels : int
        The largest frame read, in pixels (``--max-pixels``).
    """

    kind = "tiff"

    def __init__(self) -> None:
        self.max_pixels = io.DEFAULT_MAX_PIXELS
        self.path = ""
        self.n_frames = 0
        self.n_pages = 0
        self.channels = 1
        self.shape: tuple[int, int] = (0, 0)
        self.dtype = np.dtype(np.uint8)
        self.page_axes = "YX"
        self.samples = 1
        self.files: list[str] | None = None

    @property
    def page_shape(self) -> tuple[int, ...]:
        """The array shape of a page."""
        h, w = self.shape
        return {"YX": (h, w), "YXS": (h, w, self.samples),
                "SYX": (self.samples, h, w)}[self.page_axes]

    def page_of(self, frame: int, channel: int = 0) -> int:
        """The page holding ``channel`` of ``frame``."""
        return frame

    def frame_of(self, page: int) -> tuple[int, int]:
        """``(frame, channel)`` of a page."""
        return page, 0

    def name(self, frame: int) -> str:
        """How a message names a frame."""
        return f"frame {frame}"

    def frame_ref(self, frame: int, channel: int = 0) -> FrameRef:
        """A picklable reference a worker reads the frame's registration page from."""
        return self.page_ref(self.page_of(frame, channel))

    def page_ref(self, index: int) -> FrameRef:
        """A picklable reference a worker reads page ``index`` from."""
        raise NotImplementedError

    def page(self, index: int) -> np.ndarray:
        """Read one page in native byte order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def input_paths(self) -> list[str]:
        """The files an output must not overwrite."""
        return list(self.files) if self.files is not None else [self.path]

    def as_given(self, path: str) -> str:
        """A file of the stack as the user named it (workers are handed absolute paths)."""
        for given in self.input_paths():
            if os.path.abspath(given) == path:
                return given
        return path


class _TiffStack(Stack):
    """The first series of a TIFF file, its pages read one at a time."""

    def __init__(self, path: str) -> None:
        super().__init__()
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error...
            detail = " ".join(str(exc).split())[:80] or type(exc).__name__
            raise io.ImageError(path, f"truncated or corrupt TIFF file ({detail})") from None
        try:
            self._layout(path)
        except io.ImageError:
            self._tif.close()
            raise
        except Exception as exc:  # a TIFF whose series tifffile cannot make sense of
            self._tif.close()
            detail = " ".join(str(exc).split())[:80] or type(exc).__name__
            raise io.ImageError(path, f"cannot read its image series ({detail})") from None
        except BaseException:
            self._tif.close()
            raise

    def _layout(self, path: str) -> None:
        tif = self._tif
        series = tif.series[0]
        key = series.keyframe
        page_axes, page_shape = key.axes, tuple(key.shape)
        if len(tif.series) > 1:
            # Pages written one by one (each its own series): a stack when they all agree.
            if not all(len(s.pages) == 1 and tuple(s.shape) == page_shape and s.dtype == key.dtype
                       for s in tif.series):
                raise io.ImageError(path, f"holds {len(tif.series)} image series of different "
                                          "sizes or types; regtool stack reads one series")
            self._pages: Any = [s.pages[0] for s in tif.series]
            lead_axes, lead_shape = "I", (len(tif.series),)
        else:
            axes, shape = series.axes, tuple(series.shape)
            if not axes.endswith(page_axes) or shape[len(axes) - len(page_axes):] != page_shape:
                raise io.ImageError(path, f"unsupported TIFF layout (axes {axes}, pages "
                                          f"{page_axes}); regtool stack reads series of 2-D pages")
            lead_axes = axes[: len(axes) - len(page_axes)]
            lead_shape = shape[: len(lead_axes)]
            self._pages = series.pages
        if page_axes not in ("YX", "YXS", "SYX") or (
                "S" in page_axes and page_shape[page_axes.index("S")] not in (3, 4)):
            raise io.ImageError(path, f"pages of axes {page_axes} and shape {page_shape}; "
                                      "regtool stack reads gray, RGB or RGBA pages")
        n_pages = int(np.prod(lead_shape, dtype=np.int64))
        self._offset = None
        if len(self._pages) != n_pages:
            # An ImageJ file over 4 GB keeps one IFD and its data contiguous after it.
            if series.dataoffset is None:
                raise io.ImageError(path, f"the series has {len(self._pages)} of its {n_pages} "
                                          "pages; cannot read its frames")
            self._offset = int(series.dataoffset)
        self._series = series
        self._file_dtype = np.dtype(key.parent.byteorder + key.dtype.char)
        self._lead_axes, self._lead_shape = lead_axes, lead_shape
        self._c_pos = lead_axes.find("C") if "C" in lead_axes else None
        self._frame_shape = tuple(n for a, n in zip(lead_axes, lead_shape, strict=True)
                                  if a != "C")
        self.channels = int(lead_shape[self._c_pos]) if self._c_pos is not None else 1
        self.n_pages = n_pages
        self.n_frames = n_pages // self.channels
        self.page_axes = page_axes
        self.dtype = np.dtype(key.dtype).newbyteorder("=")
        y = page_axes.index("Y")
        self.shape = (int(page_shape[y]), int(page_shape[y + 1]))
        self.samples = int(page_shape[page_axes.index("S")]) if "S" in page_axes else 1
        self.is_imagej = bool(tif.is_imagej)
        self.is_bigtiff = bool(tif.is_bigtiff)
        self.series_axes = lead_axes + page_axes
        self.series_shape = tuple(int(n) for n in lead_shape + page_shape)
        self.imagej_metadata = dict(tif.imagej_metadata or {}) if self.is_imagej else {}
        tags = key.tags
        self.resolution = None
        if "XResolution" in tags and "YResolution" in tags:
            self.resolution = (tags["XResolution"].value, tags["YResolution"].value)
        self.resolutionunit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
        self.extrasamples = tags["ExtraSamples"].value if "ExtraSamples" in tags else None
        if isinstance(self.extrasamples, int):
            self.extrasamples = (self.extrasamples,)

    def page_of(self, frame: int, channel: int = 0) -> int:
        index = list(np.unravel_index(frame, self._frame_shape)) if self._frame_shape else []
        if self._c_pos is not None:
            index.insert(self._c_pos, channel)
        return int(np.ravel_multi_index(index, self._lead_shape)) if index else 0

    def frame_of(self, page: int) -> tuple[int, int]:
        index = list(np.unravel_index(page, self._lead_shape))
        channel = int(index.pop(self._c_pos)) if self._c_pos is not None else 0
        frame = int(np.ravel_multi_index(index, self._frame_shape)) if index else 0
        return frame, channel

    def page_ref(self, index: int) -> FrameRef:
        return FrameRef(os.path.abspath(self.path), index, "stack", self.max_pixels)

    def page(self, index: int) -> np.ndarray:
        try:
            if self._offset is None:
                data = self._pages[index].asarray()
            else:
                count = int(np.prod(self.page_shape))
                offset = self._offset + index * count * self._file_dtype.itemsize
                data = self._tif.filehandle.read_array(self._file_dtype, count, offset)
                data = data.reshape(self.page_shape)
        except Exception as exc:
            detail = " ".join(str(exc).split())[:80] or type(exc).__name__
            frame, _ = self.frame_of(index)
            raise io.ImageError(self.path, f"cannot read frame {frame} (page {index}: "
                                           f"{detail})") from None
        return _native(np.asarray(data).reshape(self.page_shape))

    def close(self) -> None:
        self._tif.close()


class _FolderStack(Stack):
    """Single-image files, one frame each, read with :func:`regtool.io.read_image`."""

    kind = "folder"

    def __init__(self, path: str, files: list[str],
                 max_pixels: int = io.DEFAULT_MAX_PIXELS) -> None:
        super().__init__()
        self.path = path
        self.files = files
        self.max_pixels = max_pixels
        first = io.read_image(files[0], max_pixels=max_pixels)
        self.n_frames = self.n_pages = len(files)
        self.shape = (int(first.shape[0]), int(first.shape[1]))
        self.dtype = first.dtype
        self.page_axes = "YX" if first.ndim == 2 else "YXS"
        self.samples = 1 if first.ndim == 2 else int(first.shape[2])

    def name(self, frame: int) -> str:
        assert self.files is not None
        return self.files[frame]

    def page_ref(self, index: int) -> FrameRef:
        assert self.files is not None
        return FrameRef(os.path.abspath(self.files[index]), None, "image", self.max_pixels)

    def page(self, index: int) -> np.ndarray:
        assert self.files is not None
        return _read_frame_file(self.files[index], self.page_shape, self.dtype, self.files[0],
                                self.max_pixels)


def _read_frame_file(path: str, shape: tuple[int, ...], dtype: np.dtype | str,
                     first: str, max_pixels: int = io.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A folder's frame, which must have the size and type of the first one."""
    image = io.read_image(path, max_pixels=max_pixels)
    if image.shape != tuple(shape) or image.dtype != np.dtype(dtype):
        raise io.ImageError(path, f"frame of {_what(image.shape, image.dtype)} in a stack of "
                                  f"{_what(tuple(shape), np.dtype(dtype))} (frame 0, {first}); "
                                  "every frame must have the size and type of the first")
    return image


def _what(shape: tuple[int, ...], dtype: np.dtype) -> str:
    kind = {2: "gray"}.get(len(shape), {3: "RGB", 4: "RGBA"}.get(shape[-1], "color"))
    return f"{shape[1]}x{shape[0]} {np.dtype(dtype).name} {kind}"


def _frame_files(path: str) -> list[str] | None:
    """The frames of a folder or a glob, in natural order; None when ``path`` is neither."""
    p = Path(path)
    if p.is_dir():
        try:
            names = sorted((e.name for e in os.scandir(p) if e.is_file()
                            and not e.name.startswith(".")
                            and Path(e.name).suffix.lower() in FRAME_SUFFIXES), key=_natural_key)
        except OSError as exc:
            raise io.ImageError(path, f"cannot list the folder ({exc.strerror or exc})") from None
        if not names:
            raise io.ImageError(path, "folder holds no image files (.png, .tif, .jpg...)")
        return [os.path.join(path, n) for n in names]
    if not p.exists() and glob.has_magic(path):
        files = sorted((f for f in glob.glob(path) if os.path.isfile(f)), key=_natural_key)
        if not files:
            raise io.ImageError(path, "no files match the pattern")
        return files
    return None


def open_stack(path: str | os.PathLike, *, max_pixels: int = io.DEFAULT_MAX_PIXELS) -> Stack:
    """Open a stack without reading its frames.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file (multi-page, BigTIFF, ImageJ hyperstack...), a folder of single-image frames
        (``.png``, ``.tif``, ``.jpg``... in natural order: ``f2`` before ``f10``; hidden files
        and other files are skipped), or a glob such as ``"run1/t*.png"``.
    max_pixels : int
        Refuse frames of more pixels than this (``--max-pixels``): a TIFF stack's from its
        header, a folder's files as :func:`regtool.io.read_image` refuses them.

    Returns
    -------
    Stack

    Raises
    ------
    regtool.io.ImageError
        Missing, unreadable, not a TIFF, a series that is not a stack of 2-D pages, fewer than
        two frames, frames larger than ``max_pixels``, or (folders) a first frame that cannot
        be read.
    """
    path = os.fspath(path)
    files = _frame_files(path)
    if files is not None:
        stack: Stack = _FolderStack(path, files, max_pixels)
    else:
        p = Path(path)
        if not p.exists():
            raise io.ImageError(path, "no such file or folder")
        if not p.is_file():
            raise io.ImageError(path, "not a regular file")
        if not os.access(p, os.R_OK):
            raise io.ImageError(path, "permission denied (cannot read the file)")
        if not _is_tiff(path):
            raise io.ImageError(path, "not a TIFF stack; regtool stack reads a multi-page TIFF, "
                                      "a folder of frames or a glob of them")
        stack = _TiffStack(path)
        stack.max_pixels = max_pixels
        rows, cols = stack.shape
        if rows * cols > max_pixels:  # pages are read whole: refuse before the first one
            stack.close()
            raise io.ImageError(path, f"frames of {cols}x{rows} pixels, more than the limit of "
                                      f"{max_pixels} (--max-pixels)")
    if stack.n_frames < 2:
        stack.close()
        raise io.ImageError(path, f"holds {stack.n_frames} frame; a stack needs at least 2")
    return stack


def _select(page: np.ndarray, page_axes: str, channel: int | None) -> np.ndarray:
    """The image a page registers with: ``(H, W)``, or ``(H, W, S)`` for its luminance."""
    if page_axes == "SYX":
        page = np.moveaxis(page, 0, -1)
    if page.ndim == 3 and channel is not None:
        return page[..., channel]
    return page


def _check_channel(stack: Stack, channel: int | None) -> None:
    if channel is None:
        return
    count = stack.channels if stack.channels > 1 else stack.samples
    if not 0 <= channel < count:
        which = "channels (C)" if stack.channels > 1 else (
            "color samples" if count > 1 else "channel")
        raise io.ImageError(stack.path, f"has no channel {channel}: its frames have {count} "
                                        f"{which}, numbered from 0")


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------

# One open stack (and one mean image) per worker thread: opening a 1000-page plain TIFF parses
# its IFDs (~12 ms), which every task would otherwise pay again. Per thread, not per process:
# a Dask worker may run tasks in several threads, and an open TiffFile's seek-and-read is not
# safe to share.
_OPEN = threading.local()


def _cached(path: str, opener: Callable[[str], Any]) -> Any:
    st = os.stat(path)
    key = (st.st_mtime_ns, st.st_size)
    cache: dict[str, tuple[tuple[int, int], Any]] = _OPEN.__dict__.setdefault("files", {})
    hit = cache.get(path)
    if hit is not None and hit[0] == key:
        return hit[1]
    if hit is not None:  # the file changed since it was opened
        cache.pop(path)
        if isinstance(hit[1], Stack):
            hit[1].close()
    if len(cache) >= 2:
        for old in list(cache):
            value = cache.pop(old)[1]
            if isinstance(value, Stack):
                value.close()
    value = opener(path)
    cache[path] = (key, value)
    return value


def _read_ref(ref: FrameRef, sample: int | None) -> np.ndarray:
    if ref.kind == "array":
        return _cached(ref.path, np.load)
    if ref.kind == "image":
        image = io.read_image(ref.path, max_pixels=ref.max_pixels)
        return _select(image, "YXS" if image.ndim == 3 else "YX", sample)
    stack = _cached(ref.path, _TiffStack)
    assert ref.index is not None
    return _select(stack.page(ref.index), stack.page_axes, sample)


def register_task(source: FrameRef, target: FrameRef, sample: int | None,
                  options: AlignOptions) -> dict[str, Any]:
    """Register one frame to its reference, reading both from their files (a worker's task).

    Parameters
    ----------
    source, target : FrameRef
        The frame and what it is registered to (another frame, or the mean image).
    sample : int or None
        The color sample of a color page to register on; None: the page as it is (gray, or
        the luminance of RGB/RGBA). A channel of a ``C`` axis is chosen by the page instead.
    options : regtool.pipeline.AlignOptions

    Returns
    -------
    dict
        Small and picklable: ``ok`` (registered), ``converged``, ``reason``, ``matrix`` (2x3 as
        lists: the pair's target->source matrix), ``ncc``, ``uncertainty`` (the values of
        :data:`SIGMA_KEYS`: 1-sigma errors of shift x, y and theta in degrees and the expected
        mean endpoint error in pixels; or None), ``time_s``; ``which`` (``"source"`` or
        ``"target"``) when ``ok`` is false; ``fatal`` = ``[path, problem]`` when a file could
        not be read (an :class:`regtool.io.ImageError`, returned rather than raised: its
        two-argument constructor does not survive pickling).
    """
    try:
        moving = _read_ref(source, sample)
        fixed = _read_ref(target, sample)
    except io.ImageError as exc:
        return {"ok": False, "fatal": [exc.path, exc.problem]}
    try:
        result = align(fixed, moving, **options.align_kwargs())
    except InputError as exc:
        return {"ok": False, "converged": False, "reason": str(exc), "which": exc.which}
    doc = result.to_dict()
    return {"ok": True, "converged": bool(result.converged), "reason": result.reason,
            "matrix": doc["matrix"], "ncc": doc["ncc"],
            "uncertainty": _sigmas(doc["uncertainty"]), "time_s": doc["time_s"]}


def _sigmas(bars: dict[str, Any]) -> tuple[float, ...] | None:
    """:data:`SIGMA_KEYS` of a result's ``uncertainty``, or None when it has no error bars."""
    shift, theta, endpoint = bars.get("shift"), bars.get("theta_deg"), bars.get("endpoint_px")
    if shift is None or theta is None or endpoint is None:
        return None
    return (float(shift[0]), float(shift[1]), float(theta), float(endpoint))


def warp_task(page: FrameRef, matrix: list[list[float]], interp: str, fill: float,
              like: tuple[tuple[int, ...], str, str] | None = None) -> dict[str, Any]:
    """Read one page and resample it with its frame's matrix (a worker's task).

    Parameters
    ----------
    page : FrameRef
        A page of a TIFF stack, or a folder's frame file.
    matrix : list of lists
        The frame's reference->frame matrix (2x3 or 3x3).
    interp, fill
        As for :func:`regtool.warp`.
    like : (shape, dtype, first file), optional
        For a folder's frame: what it must be (that of the first frame, named in the message).

    Returns
    -------
    dict
        ``page``: the aligned page, of the page's shape and dtype; or ``fatal`` =
        ``[path, problem]`` when the file could not be read.
    """
    try:
        if page.kind == "image":
            assert like is not None
            image = _read_frame_file(page.path, *like, page.max_pixels)
            axes = "YX" if image.ndim == 2 else "YXS"
        else:
            stack = _cached(page.path, _TiffStack)
            assert page.index is not None
            image, axes = stack.page(page.index), stack.page_axes
    except io.ImageError as exc:
        return {"fatal": [exc.path, exc.problem]}
    return {"page": _warp_page(image, axes, np.asarray(matrix, dtype=float), interp, fill)}


# --------------------------------------------------------------------------------------------
# Rows of the transforms table
# --------------------------------------------------------------------------------------------


def _as3(matrix: Any) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    return np.vstack([m[:2], [0.0, 0.0, 1.0]])


def compose_previous(links: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """Compose the pairs of a ``previous`` chain into each frame's matrix to frame 0.

    Parameters
    ----------
    links : sequence of (2, 3) or (3, 3) arrays or None
        ``links[k]`` maps frame k-1's pixels to frame k's (the target->source matrix of frame k
        registered to frame k-1); ``links[0]`` is ignored. None: a held frame (its matrix is
        the previous one's). Chaining past a held frame (registering the next one to the last
        good frame) is :func:`run_stack`'s; this is the plain product.

    Returns
    -------
    list of (3, 3) ndarray
        ``M_0 = I``, ``M_k = links[k] @ M_{k-1}``: maps frame 0's pixels to frame k's, so
        ``aligned_k[y, x] = frame_k(M_k @ [x, y, 1])`` lies on frame 0's grid.
    """
    out = [_IDENTITY.copy()]
    for link in links[1:]:
        out.append(out[-1].copy() if link is None else _as3(link) @ out[-1])
    return out


def _row(index: int, matrix: np.ndarray, shape: tuple[int, int], *, status: str,
         converged: bool, reason: str | None = None, registered_to: int | str | None = None,
         held_from: int | None = None, ncc: float | None = None,
         uncertainty: tuple[float, ...] | None = None, link: Any = None, time_s: float = 0.0,
         file: str | None = None) -> dict[str, Any]:
    tx, ty, theta = rigid_params(matrix)
    sx, sy, _ = center_params(matrix, image_center(shape))
    return {
        "index": index, "file": file, "status": status, "converged": converged,
        "reason": reason, "registered_to": registered_to, "held_from": held_from,
        "matrix": [[float(v) for v in r] for r in np.asarray(matrix)[:2]],
        "tx": tx, "ty": ty, "theta_deg": math.degrees(theta), "shift": [sx, sy],
        "ncc": ncc,
        **dict(zip(SIGMA_KEYS, uncertainty if uncertainty is not None else (None,) * 4,
                   strict=True)),
        "link_matrix": None if link is None else [[float(v) for v in r] for r in link[:2]],
        "time_s": round(float(time_s), 6),
    }


class _Registrations:
    """The table's rows, finalized in frame order as the writer asks for them.

    Registrations run on the executor in a bounded window, in submission order; row k is
    final once its own result (and, under ``previous``, every row before it) is in.
    """

    def __init__(self, plan: StackPlan, executor: Executor, window: int,
                 stop: Callable[[], bool], mean_ref: FrameRef | None) -> None:
        self.plan, self.executor, self.stop = plan, executor, stop
        stack = plan.stack
        self.mean_ref = mean_ref
        self.ref_index = plan.reference_index
        self.rows: list[dict[str, Any]] = []
        self.results: dict[int, dict[str, Any]] = {}
        # index, M, its error bars (SIGMA_KEYS)
        self.good: tuple[int, np.ndarray, tuple[float, ...] | None] | None = None
        if self.ref_index is not None:
            self.good = (self.ref_index, _IDENTITY.copy(), (0.0,) * 4)
        tasks = ((k, (plan.frame_ref(k), self._target(k), plan.sample, plan.options))
                 for k in range(stack.n_frames) if k != self.ref_index)
        self.stream = bounded(executor, register_task, tasks, window, stop)

    def _target(self, k: int, to: int | None = None) -> FrameRef:
        if self.mean_ref is not None:
            return self.mean_ref
        if to is None:
            to = k - 1 if self.plan.reference == "previous" else self.ref_index
        assert to is not None
        return self.plan.frame_ref(to)

    def _result(self, k: int) -> dict[str, Any]:
        while k not in self.results:
            if self.stop():
                raise Interrupted("stopped")
            key, future = next(self.stream)
            self.results[key] = future.result()
        return _checked(self.results.pop(k), self.plan.stack)

    def row(self, k: int) -> dict[str, Any]:
        """Row ``k``, finalizing the rows before it first."""
        while len(self.rows) <= k:
            self.rows.append(self._finalize(len(self.rows)))
        return self.rows[k]

    def _finalize(self, k: int) -> dict[str, Any]:
        stack, shape = self.plan.stack, self.plan.stack.shape
        file = os.path.basename(stack.files[k]) if stack.files is not None else None
        if k == self.ref_index:
            return _row(k, _IDENTITY, shape, status="reference", converged=True, ncc=1.0,
                        uncertainty=(0.0,) * 4, file=file)
        result = self._result(k)
        to: int | str | None = "mean" if self.mean_ref is not None else self.ref_index
        if self.plan.reference == "previous":
            assert self.good is not None
            to = k - 1
            if self.good[0] != k - 1:
                # the predecessor is held: register to the last good frame instead
                if self.stop():
                    raise Interrupted("stopped")
                to = self.good[0]
                future = self.executor.submit(register_task, self.plan.frame_ref(k),
                                              self._target(k, to), self.plan.sample,
                                              self.plan.options)
                result = _checked(future.result(), stack)
        if result["ok"] and result["converged"]:
            link = _as3(result["matrix"])
            unc = result["uncertainty"]
            if self.plan.reference == "previous":
                assert self.good is not None
                matrix = link @ self.good[1]
                # independent links: their errors add in quadrature (the shifts about the
                # center add, to first order in the small angles between frames)
                prior = self.good[2]
                unc = None if unc is None or prior is None else tuple(
                    math.hypot(a, b) for a, b in zip(prior, unc, strict=True))
            else:
                matrix = link
            self.good = (k, matrix, unc)
            return _row(k, matrix, shape, status="ok", converged=True, registered_to=to,
                        ncc=result["ncc"], uncertainty=unc, link=link, time_s=result["time_s"],
                        file=file)
        reason = result.get("reason") or "unknown reason"
        if not result["ok"]:
            whose = "this frame" if result.get("which") != "target" else (
                "the mean frame" if to == "mean" else f"frame {to}")
            reason = f"cannot register {whose}: {reason}"
        else:
            reason = f"did not converge: {reason}"
        held, held_from = (_IDENTITY, None) if self.good is None else (self.good[1], self.good[0])
        return _row(k, held, shape, status="held", converged=False, reason=reason,
                    registered_to=to, held_from=held_from, time_s=result.get("time_s", 0.0),
                    file=file)


def _checked(result: dict[str, Any], stack: Stack) -> dict[str, Any]:
    """A worker's result, or the :class:`regtool.io.ImageError` it reported, raised here."""
    if result.get("fatal"):
        path, problem = result["fatal"]
        raise io.ImageError(stack.as_given(path), problem)
    return result


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _warp_page(page: np.ndarray, page_axes: str, matrix: np.ndarray, interp: str,
               fill: float) -> np.ndarray:
    if page_axes == "SYX":
        moved = warp(np.moveaxis(page, 0, -1), matrix, page.shape[1:], interp=interp, fill=fill)
        return np.ascontiguousarray(np.moveaxis(moved, -1, 0))
    return warp(page, matrix, page.shape[:2], interp=interp, fill=fill)


def _frame_name(path: str, dtype: np.dtype, samples: int) -> str:
    """The output name of a folder frame: its own, or ``.png``/``.tif`` when regtool cannot
    write its format or the format cannot hold it."""
    p = Path(path)
    for ext in (p.suffix, ".png", ".tif"):
        if ext and io.format_problem(Path("x" + ext), dtype, samples) is None:
            return p.stem + ext
    return p.stem + ".tif"


def _temp_beside(path: str, suffix: str, directory: bool = False) -> str:
    p = Path(path)
    if directory:
        return tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.", suffix=suffix)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=suffix)
    os.close(fd)
    return tmp


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


class _Writer:
    """The aligned stack, written page by page to a temporary file (or folder) beside its
    destination, moved there by :meth:`commit`; :meth:`abort` removes it."""

    def __init__(self, stack: Stack, output: str, kind: str,
                 names: list[str] | None = None) -> None:
        self.stack, self.output, self.kind, self.names = stack, output, kind, names
        try:
            self.tmp = _temp_beside(output, ".part", directory=kind == "folder")
        except OSError as exc:
            raise io.ImageError(output, f"cannot write the file ({exc.strerror or exc})"
                                ) from None

    def write(self, pages: Iterator[np.ndarray]) -> None:
        try:
            if self.kind == "folder":
                assert self.names is not None
                for name, page in zip(self.names, pages, strict=True):
                    image = np.moveaxis(page, 0, -1) if self.stack.page_axes == "SYX" else page
                    try:
                        io.write_image(os.path.join(self.tmp, name), image)
                    except io.ImageError as exc:  # named where it goes, not in the temporary
                        raise io.ImageError(os.path.join(self.output, name), exc.problem
                                            ) from None
            else:
                self._write_tiff(pages)
        except OSError as exc:
            raise io.ImageError(self.output, "cannot write the file "
                                f"({io.write_problem(exc, self.tmp)})") from None

    def _write_tiff(self, pages: Iterator[np.ndarray]) -> None:
        import tifffile

        s = self.stack
        if isinstance(s, _TiffStack):
            shape, axes, imagej = s.series_shape, s.series_axes, s.is_imagej
            bigtiff = s.is_bigtiff
            resolution, unit, extra = s.resolution, s.resolutionunit, s.extrasamples
            kept = {k: v for k, v in s.imagej_metadata.items() if k not in _IJ_COMPUTED}
        else:
            shape = (s.n_frames, *s.page_shape)
            axes, imagej, bigtiff = "I" + s.page_axes, False, False
            resolution, unit, extra, kept = None, None, None, {}
        size = int(np.prod(shape, dtype=np.int64)) * s.dtype.itemsize
        truncate = imagej and size > BIGTIFF_BYTES  # what ImageJ itself does past 4 GB
        bigtiff = bigtiff or (size > BIGTIFF_BYTES and not imagej)
        kwargs: dict[str, Any] = {"shape": shape, "dtype": s.dtype, "truncate": truncate,
                                  "photometric": "rgb" if s.samples in (3, 4) else "minisblack",
                                  "metadata": {**kept, "axes": axes}}
        if s.page_axes == "SYX":
            kwargs["planarconfig"] = "separate"
        if s.samples == 4:
            kwargs["extrasamples"] = extra or ("unassalpha",)
        if resolution is not None:
            kwargs["resolution"] = resolution
            if unit is not None:
                kwargs["resolutionunit"] = unit
        tw = tifffile.TiffWriter(self.tmp, bigtiff=bigtiff, imagej=imagej)
        try:
            tw.write(pages, **kwargs)
        except BaseException:
            # Not tw.close(): it would first write IFDs for the pages never written.
            with contextlib.suppress(Exception):
                tw.filehandle.close()
            raise
        tw.close()

    def commit(self) -> None:
        os.chmod(self.tmp, io.file_mode(0o777 if self.kind == "folder" else 0o666))
        os.replace(self.tmp, self.output)

    def abort(self) -> None:
        _remove(self.tmp)


def _write_text(path: str, text: str) -> None:
    try:
        with io._atomic(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    except OSError as exc:
        raise io.ImageError(path, f"cannot write the file ({exc.strerror or exc})") from None


def _csv_text(rows: list[dict[str, Any]], shape: tuple[int, int]) -> str:
    def cell(value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return repr(value) if math.isfinite(value) else ""
        return value

    buffer = _textio.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for r in rows:
        m = r["matrix"]
        values = {**r, "m00": m[0][0], "m01": m[0][1], "m02": m[0][2], "m10": m[1][0],
                  "m11": m[1][1], "m12": m[1][2], "shift_x": r["shift"][0],
                  "shift_y": r["shift"][1], "width": shape[1], "height": shape[0]}
        writer.writerow([cell(values[c]) for c in TABLE_COLUMNS])
    return buffer.getvalue()


def _commit(writer: _Writer, tables: list[tuple[str, str]]) -> None:
    """Write the tables, then move the stack into place; on any failure leave none of them."""
    written: list[str] = []
    try:
        for path, text in tables:
            _write_text(path, text)
            written.append(path)
        writer.commit()
    except BaseException:
        for path in written:
            _remove(path)
        raise


# --------------------------------------------------------------------------------------------
# Planning and running
# --------------------------------------------------------------------------------------------


@dataclass
class StackPlan:
    """A stack opened and checked, with its outputs chosen: nothing is computed yet.

    Make one with :func:`plan_stack`, run it with :func:`run_stack`, close it after.
    """

    stack: Stack
    output: str
    output_kind: str  # "tiff" or "folder"
    table_csv: str
    table_json: str
    reference: str | int
    channel: int | None
    options: AlignOptions
    frame_names: list[str] | None = None

    @property
    def page_channel(self) -> int:
        """The channel of the ``C`` axis registered on (0 without one)."""
        return (self.channel or 0) if self.stack.channels > 1 else 0

    @property
    def sample(self) -> int | None:
        """The color sample registered on (None: the luminance, or a gray page)."""
        return self.channel if self.stack.channels == 1 else None

    def frame_ref(self, frame: int) -> FrameRef:
        """Where a worker reads the registration page of ``frame``."""
        return self.stack.frame_ref(frame, self.page_channel)

    def registration_image(self, frame: int) -> np.ndarray:
        """The image ``frame`` is registered with, read here."""
        stack = self.stack
        return _select(stack.page(stack.page_of(frame, self.page_channel)), stack.page_axes,
                       self.sample)

    @property
    def reference_index(self) -> int | None:
        """The reference frame, or None for ``mean``."""
        if self.reference in ("first", "previous"):
            return 0
        return None if self.reference == "mean" else int(self.reference)

    def close(self) -> None:
        """Close the stack's file."""
        self.stack.close()

    def __enter__(self) -> StackPlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class StackOutcome:
    """What a run gave: the table's rows (index order) and where everything went."""

    rows: list[dict[str, Any]]
    output: str
    table_csv: str
    table_json: str
    document: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def held(self) -> list[int]:
        """Frames that failed or did not converge (resampled with a held transform)."""
        return [r["index"] for r in self.rows if r["status"] == "held"]

    @property
    def converged(self) -> bool:
        """Every frame registered and converged."""
        return all(r["converged"] for r in self.rows)


def _parse_reference(reference: str | int, n_frames: int, path: str) -> str | int:
    if isinstance(reference, str) and reference in ("first", "previous", "mean"):
        return reference
    try:
        index = int(reference)
    except (TypeError, ValueError):
        raise ValueError(f"reference must be 'first', 'previous', 'mean' or a frame index, not "
                         f"{reference!r}") from None
    if not 0 <= index < n_frames:
        raise io.ImageError(path, f"has no frame {index} to be the reference: its frames are "
                                  f"0 to {n_frames - 1}")
    return index


def _planned_output(stack: Stack, out: str, inputs: list[str], fill: float
                    ) -> tuple[str, list[str] | None]:
    """Check where a resampled stack goes, before any work: ``("tiff", None)`` or
    ``("folder", the frames' output names)``.

    Raises
    ------
    regtool.io.ImageError
        The fill value does not fit the stack's type, the output cannot be written there or
        would overwrite an input, a TIFF stack is asked for as a folder, or two frames would
        get the same name.
    """
    problem = fill_problem(stack.dtype, fill)
    if problem is not None:
        raise io.ImageError(stack.path, problem)
    if Path(out).suffix.lower() in TIFF_SUFFIXES:
        io.check_output_path(out, inputs)
        return "tiff", None
    if stack.kind == "tiff":
        raise io.ImageError(out, "a TIFF stack is written as a TIFF: name the output .tif or "
                                 ".tiff")
    _check_folder_output(out)
    assert stack.files is not None
    names = [_frame_name(f, stack.dtype, stack.samples) for f in stack.files]
    if len(set(names)) != len(names):
        raise io.ImageError(out, "two frames would get the same output name (e.g. a.gif and "
                                 "a.png); name a .tif output instead")
    return "folder", names


def _default_output(stack: Stack, folder: str, tag: str = "aligned") -> str:
    if stack.kind == "tiff":
        p = Path(stack.path)
        ext = p.suffix if p.suffix.lower() in TIFF_SUFFIXES else ".tif"
        return os.fspath(Path(folder) / f"{p.stem}_{tag}{ext}")
    assert stack.files is not None
    base = Path(stack.path) if os.path.isdir(stack.path) else Path(stack.files[0]).parent
    return os.fspath(Path(folder) / f"{base.resolve().name or 'frames'}_{tag}")


def default_output(stack_path: str | os.PathLike, folder: str = ".", tag: str = "aligned",
                   max_pixels: int = io.DEFAULT_MAX_PIXELS) -> str:
    """Where a stack's output goes by default: ``<folder>/<stem>_<tag>.tif`` for a TIFF,
    ``<folder>/<name>_<tag>`` (a folder of frames) for a folder or a glob.

    ``max_pixels`` is :func:`open_stack`'s.

    Raises
    ------
    regtool.io.ImageError
        The stack cannot be opened.
    """
    with open_stack(stack_path, max_pixels=max_pixels) as stack:
        return _default_output(stack, folder, tag)


def _table_paths(output: str, table: str | None) -> tuple[str, str]:
    if table is None:
        p = Path(output)
        stem = p.with_suffix("") if p.suffix.lower() in TIFF_SUFFIXES else p
        stem_s = os.fspath(stem).rstrip("/\\") or "stack"
        return f"{stem_s}_transforms.csv", f"{stem_s}_transforms.json"
    t = Path(table)
    if t.suffix.lower() not in (".csv", ".json"):
        raise io.ImageError(table, "the transforms table must be named .csv or .json (both "
                                   "are written, side by side)")
    return os.fspath(t.with_suffix(".csv")), os.fspath(t.with_suffix(".json"))


def _check_folder_output(output: str) -> None:
    """A folder of frames can be made at ``output`` (absent or empty, its parent writable)."""
    p = Path(output)
    if p.exists() and not p.is_dir():
        raise io.ImageError(output, "exists and is not a folder; a folder of frames is written "
                                    "here (name a .tif file to get a TIFF stack)")
    if p.is_dir() and any(os.scandir(p)):
        raise io.ImageError(output, "output folder exists and is not empty; remove it or "
                                    "choose another name")
    parent = p.parent
    if not parent.is_dir():
        raise io.ImageError(output, f"output folder {os.fspath(parent)} does not exist")
    try:
        _remove(_temp_beside(output, ".probe", directory=True))
    except OSError as exc:
        raise io.ImageError(output, f"cannot write in output folder {os.fspath(parent)} "
                                    f"({exc.strerror or exc})") from None


def plan_stack(path: str | os.PathLike, output: str | None = None, table: str | None = None,
               *, reference: str | int = "first", channel: int | None = None,
               options: AlignOptions | None = None, folder: str = ".",
               max_pixels: int = io.DEFAULT_MAX_PIXELS) -> StackPlan:
    """Open a stack, check it and its outputs, and choose them, before any work is done.

    Parameters
    ----------
    path : str or os.PathLike
        See :func:`open_stack`.
    output : str, optional
        The aligned stack. Default: ``<folder>/<stem>_aligned.tif`` (``.tiff`` for a ``.tiff``
        input) for a TIFF, ``<folder>/<name>_aligned`` (a folder of frames) for a folder or a
        glob. A path ending in ``.tif``/``.tiff`` is a TIFF, anything else a folder (for
        folder and glob inputs only).
    table : str, optional
        The CSV table, or the JSON one (both are written, with the extensions ``.csv`` and
        ``.json``). Default: ``<output without .tif>_transforms.csv`` and ``.json``.
    reference : {"first", "previous", "mean"} or int
        See the module docstring; an int is a 0-based frame index.
    channel : int, optional
        The channel (``C`` axis) to register on, 0-based, or for frames without one the color
        sample (0 = red). Default: channel 0 of a multi-channel stack, the luminance of RGB.
        Every channel is resampled either way.
    options : regtool.pipeline.AlignOptions, optional
    folder : str
        Where default outputs go.
    max_pixels : int
        The largest frame read, in pixels (see :func:`open_stack`).

    Returns
    -------
    StackPlan
        Holds the open stack: close it (or use ``with``).

    Raises
    ------
    regtool.io.ImageError
        The stack cannot be read, has no such channel or frame, its reference frame cannot be
        registered (blank...), the fill value does not fit its dtype, or an output cannot be
        written there or would overwrite an input.
    ValueError
        An option is out of range.
    """
    options = options or AlignOptions()
    _check_options(options.optimizer, options.metric, options.tol, options.max_iter,
                   options.min_overlap, options.init)
    if options.interp not in INTERP_ORDERS:
        raise ValueError(f"interp must be one of {sorted(INTERP_ORDERS)}, not "
                         f"{options.interp!r}")
    stack = open_stack(path, max_pixels=max_pixels)
    try:
        ref = _parse_reference(reference, stack.n_frames, stack.path)
        _check_channel(stack, channel)
        out = output if output is not None else _default_output(stack, folder)
        inputs = stack.input_paths()
        kind, names = _planned_output(stack, out, inputs, options.fill)
        csv_path, json_path = _table_paths(out, table)
        for p in (csv_path, json_path):
            io.check_output_path(p, inputs)
            if os.path.realpath(p) == os.path.realpath(out):
                raise io.ImageError(p, "the table would overwrite the aligned stack")
        plan = StackPlan(stack, os.fspath(out), kind, csv_path, json_path, ref, channel,
                         options, names)
        index = plan.reference_index
        if index is not None:
            # a blank or unusable reference would fail every frame: say so before the work
            try:
                luminance(plan.registration_image(index), "target")
            except InputError as exc:
                raise io.ImageError(stack.path, f"the reference {stack.name(index)} cannot be "
                                                f"registered: {exc}") from None
        return plan
    except BaseException:
        stack.close()
        raise


def _mean_image(plan: StackPlan, progress: Callable[[str, int, int], None] | None,
                stop: Callable[[], bool]) -> np.ndarray:
    """The mean of the registration images, one frame at a time, in float64.

    Integer frames are scaled to [0, 1] first, as :func:`regtool.align` scales them, so the
    mean compares with the frames under ``ssd`` too.
    """
    stack = plan.stack
    total: np.ndarray | None = None
    scale = 1.0 / np.iinfo(stack.dtype).max if stack.dtype.kind in "ui" else 1.0
    for k in range(stack.n_frames):
        if stop():
            raise Interrupted("stopped")
        image = plan.registration_image(k)
        if total is None:
            total = np.zeros(image.shape, dtype=np.float64)
        total += image
        if progress is not None:
            progress("mean", k + 1, stack.n_frames)
    assert total is not None
    total *= scale / stack.n_frames
    return total


def _document(plan: StackPlan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    from ._version import __version__

    stack = plan.stack
    opts = plan.options
    return {
        "convention": CONVENTION,
        "failure_policy": FAILURE_POLICY,
        "input": stack.path,
        "output": plan.output,
        "reference": plan.reference,
        "reference_index": plan.reference_index,
        "channel": plan.channel,
        "frames": stack.n_frames,
        "channels": stack.channels,
        "axes": getattr(stack, "series_axes", "I" + stack.page_axes),
        "frame_shape": [stack.shape[0], stack.shape[1]],
        "center": list(image_center(stack.shape)),
        "dtype": stack.dtype.name,
        "options": {"levels": opts.levels, "optimizer": opts.optimizer, "metric": opts.metric,
                    "max_iter": opts.max_iter, "tol": opts.tol,
                    "init": list(opts.init) if isinstance(opts.init, tuple) else opts.init,
                    "min_overlap": opts.min_overlap, "interp": opts.interp, "fill": opts.fill},
        "held": [r["index"] for r in rows if r["status"] == "held"],
        "regtool_version": __version__,
        "rows": rows,
    }


def _in_order(executor: Executor, fn: Callable[..., dict[str, Any]], tasks: Iterator[tuple],
              window: int, stop: Callable[[], bool]) -> Iterator[dict[str, Any]]:
    """``fn(*args)`` for each task on the executor, at most ``window`` in flight, the results
    handed on in the tasks' order (the writer's): the oldest is always waited for first."""
    pending: deque[Any] = deque()
    exhausted = False
    while True:
        while not exhausted and len(pending) < max(1, window):
            if stop():
                raise Interrupted("stopped")
            args = next(tasks, None)
            if args is None:
                exhausted = True
            else:
                pending.append(executor.submit(fn, *args))
        if not pending:
            return
        yield pending.popleft().result()


def _aligned_pages(stack: Stack, matrix_of: Callable[[int], np.ndarray], interp: str,
                   fill: float, progress: Callable[[str, int, int], None] | None,
                   stop: Callable[[], bool], executor: Executor | None = None,
                   window: int = 1) -> Iterator[np.ndarray]:
    """Every page in file order, read, resampled with its frame's matrix and handed on.

    With an executor the pages are resampled by its workers, ``window`` at a time (see the
    module docstring); without one, here.
    """
    if executor is None:
        pages: Iterator[np.ndarray] = (
            _warp_page(stack.page(i), stack.page_axes, matrix_of(stack.frame_of(i)[0]),
                       interp, fill) for i in range(stack.n_pages))
    else:
        like = None
        if stack.files is not None:
            like = (stack.page_shape, stack.dtype.str, stack.files[0])
        tasks = ((stack.page_ref(i), matrix_of(stack.frame_of(i)[0]).tolist(), interp, fill,
                  like) for i in range(stack.n_pages))
        pages = (_checked(result, stack)["page"]
                 for result in _in_order(executor, warp_task, tasks, window, stop))
    frames_done = 0
    for index, page in enumerate(pages):
        if stop():
            raise Interrupted("stopped")
        yield page
        done = (index + 1) * stack.n_frames // stack.n_pages
        if progress is not None and done > frames_done:
            frames_done = done
            progress("frames", done, stack.n_frames)


def run_stack(plan: StackPlan, *, jobs: int | None = None, scheduler: str | None = None,
              executor: Executor | None = None, window: int | None = None,
              progress: Callable[[str, int, int], None] | None = None,
              stop: Callable[[], bool] | None = None) -> StackOutcome:
    """Register every frame of a planned stack, write the aligned stack and the tables.

    Parameters
    ----------
    plan : StackPlan
        From :func:`plan_stack`.
    jobs : int, optional
        Local worker processes (default: the cores available). A run on one worker gives the
        same numbers as one on many.
    scheduler : str, optional
        A Dask scheduler's address; the stack and the outputs' folder must be on a file system
        its workers share.
    executor : concurrent.futures.Executor, optional
        Run on this one (e.g. a pool shared by several runs) instead of opening one.
    window : int, optional
        Registrations in flight at most (default twice ``jobs``).
    progress : callable, optional
        ``progress(stage, done, total)``: stage ``"mean"`` while the mean frame is computed,
        ``"frames"`` as aligned frames are written.
    stop : callable, optional
        Polled between frames and tasks; when it returns True no new work starts, and the
        run raises :class:`Interrupted` once the running tasks end, leaving no output.

    Returns
    -------
    StackOutcome

    Raises
    ------
    regtool.io.ImageError
        A frame cannot be read or does not match the first, or an output cannot be written.
        Nothing is left behind.
    regtool.executors.SchedulerError
        The Dask scheduler cannot be reached.
    Interrupted
        ``stop`` returned True.
    WorkerLost
        A local worker process died (out of memory, or killed). Nothing is left behind.
    """
    stop_fn: Callable[[], bool] = stop if stop is not None else (lambda: False)
    stack = plan.stack
    opts = plan.options
    with contextlib.ExitStack() as resources:
        if executor is None:
            executor = resources.enter_context(open_executor(jobs, scheduler))
        width = window if window is not None else 2 * max(1, jobs or default_jobs())
        mean_ref = None
        if plan.reference == "mean":
            mean = _mean_image(plan, progress, stop_fn)
            try:
                luminance(mean, "target")
            except InputError as exc:
                raise io.ImageError(stack.path, f"the mean frame cannot be registered: {exc}"
                                    ) from None
            mean_path = _temp_beside(plan.output, ".mean.npy")
            resources.callback(_remove, mean_path)
            with open(mean_path, "wb") as fh:
                np.save(fh, mean)
            del mean
            mean_ref = FrameRef(os.path.abspath(mean_path), None, "array")
        registrations = _Registrations(plan, executor, width, stop_fn, mean_ref)

        def matrix_of(frame: int) -> np.ndarray:
            return _as3(registrations.row(frame)["matrix"])

        writer = _Writer(stack, plan.output, plan.output_kind, plan.frame_names)
        try:
            writer.write(_aligned_pages(stack, matrix_of, opts.interp, opts.fill, progress,
                                        stop_fn, executor, width))
            rows = [registrations.row(k) for k in range(stack.n_frames)]
            document = _document(plan, rows)
            _commit(writer, [(plan.table_csv, _csv_text(rows, stack.shape)),
                             (plan.table_json, io.dumps_json(document))])
        except BrokenExecutor:  # the pool is shut down on leaving the with
            writer.abort()
            raise WorkerLost(f"{stack.path}: a worker process died (out of memory, or "
                             "killed?) and the run stopped; nothing was written") from None
        except BaseException:
            writer.abort()
            raise
    return StackOutcome(rows, plan.output, plan.table_csv, plan.table_json, document)


def register_stack(path: str | os.PathLike, output: str | None = None,
                   table: str | None = None, *, reference: str | int = "first",
                   channel: int | None = None, options: AlignOptions | None = None,
                   folder: str = ".", max_pixels: int = io.DEFAULT_MAX_PIXELS,
                   **run: Any) -> StackOutcome:
    """Register a stack's frames to a reference and write the aligned stack and its table.

    :func:`plan_stack` (which takes ``max_pixels``) then :func:`run_stack`; the keyword
    arguments ``run`` (``jobs``, ``scheduler``, ``executor``, ``window``, ``progress``,
    ``stop``) go to the latter.

    Examples
    --------
    >>> from regtool.stack import register_stack
    >>> out = register_stack("drift.tif", reference="previous", jobs=2)  # doctest: +SKIP
    >>> out.output, out.table_csv, out.held                              # doctest: +SKIP
    ('./drift_aligned.tif', './drift_aligned_transforms.csv', [])
    """
    with plan_stack(path, output, table, reference=reference, channel=channel,
                    options=options, folder=folder, max_pixels=max_pixels) as plan:
        return run_stack(plan, **run)


# --------------------------------------------------------------------------------------------
# A saved table applied to another stack
# --------------------------------------------------------------------------------------------


def _table_error(path: str, problem: str) -> io.ImageError:
    return io.ImageError(path, f"not a regtool transforms table ({problem})")


def read_table(path: str | os.PathLike) -> tuple[list[np.ndarray], tuple[int, int] | None]:
    """Read a transforms table written by :func:`run_stack` (its CSV or its JSON).

    Parameters
    ----------
    path : str or os.PathLike
        ``.json`` is read as JSON, anything else as CSV.

    Returns
    -------
    (matrices, shape)
        One 3x3 matrix per frame, in index order, and the ``(rows, cols)`` of the frames it
        was made for (None if the table does not say).

    Raises
    ------
    regtool.io.ImageError
        Missing, unreadable, or not such a table (missing columns, rows not numbered 0, 1, 2...,
        a matrix that is not finite).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise io.ImageError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        detail = getattr(exc, "strerror", None) or exc
        raise io.ImageError(path, f"cannot read the table ({detail})") from None
    shape: tuple[int, int] | None = None
    entries: list[tuple[int, list[list[float]]]] = []
    try:
        if Path(path).suffix.lower() == ".json":
            doc = json.loads(text)
            if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
                raise _table_error(path, "no list of rows")
            if isinstance(doc.get("frame_shape"), list) and len(doc["frame_shape"]) == 2:
                shape = (int(doc["frame_shape"][0]), int(doc["frame_shape"][1]))
            entries = [(int(r["index"]), r["matrix"]) for r in doc["rows"]]
        else:
            reader = csv.DictReader(_textio.StringIO(text))
            missing = {"index", "m00", "m01", "m02", "m10", "m11", "m12"} - set(
                reader.fieldnames or ())
            if missing:
                raise _table_error(path, f"no column {', '.join(sorted(missing))}")
            for r in reader:
                entries.append((int(r["index"]), [[float(r["m00"]), float(r["m01"]),
                                                   float(r["m02"])],
                                                  [float(r["m10"]), float(r["m11"]),
                                                   float(r["m12"])]]))
                if r.get("width") and r.get("height"):
                    shape = (int(r["height"]), int(r["width"]))
    except io.ImageError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise _table_error(path, f"{type(exc).__name__}: {exc}") from None
    if not entries:
        raise _table_error(path, "no rows")
    if [i for i, _ in entries] != list(range(len(entries))):
        raise _table_error(path, "rows are not frames 0, 1, 2... in order")
    matrices = []
    for i, m in entries:
        arr = np.asarray(m, dtype=float)
        if arr.shape != (2, 3) or not np.isfinite(arr).all():
            raise _table_error(path, f"frame {i}'s matrix is not 2x3 finite numbers")
        matrices.append(_as3(arr))
    return matrices, shape


def apply_table(stack_path: str | os.PathLike, table_path: str | os.PathLike,
                output_path: str | os.PathLike, interp: str = "cubic", fill: float = 0.0,
                progress: Callable[[str, int, int], None] | None = None,
                stop: Callable[[], bool] | None = None,
                max_pixels: int = io.DEFAULT_MAX_PIXELS) -> str:
    """Resample another stack's frames with a saved transforms table, streaming.

    E.g. the transforms found on one channel saved as its own file, applied to the others, or
    those of a denoised copy applied to the raw data. Every channel of every frame is
    resampled: ``aligned_k[y, x] = frame_k(M_k @ [x, y, 1])``.

    Parameters
    ----------
    stack_path : str or os.PathLike
        See :func:`open_stack`.
    table_path : str or os.PathLike
        The ``.csv`` or ``.json`` table of :func:`run_stack`.
    output_path : str or os.PathLike
        A ``.tif``/``.tiff`` (in the input's layout and dtype, as :func:`run_stack` writes),
        or, for a folder input, a folder of frames.
    interp : {"cubic", "linear", "nearest"}
    fill : float
        Value of pixels that map outside the frame.
    progress : callable, optional
        ``progress("frames", done, total)``.
    stop : callable, optional
        As for :func:`run_stack`.
    max_pixels : int
        The largest frame read, in pixels (see :func:`open_stack`).

    Returns
    -------
    str
        ``output_path``.

    Raises
    ------
    regtool.io.ImageError
        The stack or the table cannot be read, their frame counts or frame sizes differ, or
        the output cannot be written there (nothing is left behind).
    Interrupted
        ``stop`` returned True.
    """
    if interp not in INTERP_ORDERS:
        raise ValueError(f"interp must be one of {sorted(INTERP_ORDERS)}, not {interp!r}")
    stop_fn: Callable[[], bool] = stop if stop is not None else (lambda: False)
    table_path, output = os.fspath(table_path), os.fspath(output_path)
    matrices, shape = read_table(table_path)
    with open_stack(stack_path, max_pixels=max_pixels) as stack:
        if len(matrices) != stack.n_frames:
            raise io.ImageError(table_path, f"the table has {len(matrices)} frames but "
                                            f"{stack.path} has {stack.n_frames}")
        if shape is not None and tuple(shape) != stack.shape:
            raise io.ImageError(table_path, f"the table is for frames of {shape[1]}x{shape[0]} "
                                            f"pixels but {stack.path}'s are "
                                            f"{stack.shape[1]}x{stack.shape[0]}")
        kind, names = _planned_output(stack, output, stack.input_paths() + [table_path], fill)
        writer = _Writer(stack, output, kind, names)
        try:
            writer.write(_aligned_pages(stack, matrices.__getitem__, interp, fill, progress,
                                        stop_fn))
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    return output
