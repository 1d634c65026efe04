"""Many sources against one target: the sources, their outputs, the tasks, the results table.

A batch is a list of independent pairs (the target and one source each) run on any
:class:`concurrent.futures.Executor` (:mod:`regtool.executors`: a local process pool or a Dask
cluster). Each task is :func:`align_source`, a module-level function of paths that reads its
files, goes through :func:`regtool.pipeline.run_pair` like the ``align`` command, and returns a
small row of the results table -- never the arrays. The parent writes ``results.csv`` a row at
a time as tasks end, so the table always agrees with the outputs on disk, and
``skip_existing`` resumes an interrupted batch from what is there.

Nothing here prints or exits; a problem that stops a batch before any work is a
:class:`BatchError` or a :class:`regtool.io.ImageError` whose one-line message names the files.

Examples
--------
>>> from regtool import batch, executors                        # doctest: +SKIP
>>> plan = batch.plan_batch("t.png", ["frames/"], "aligned")      # doctest: +SKIP
>>> batch.check_inputs(plan)                                     # doctest: +SKIP
>>> batch.prepare_folder(plan)                                   # doctest: +SKIP
>>> with executors.open_executor(jobs=2) as pool:                # doctest: +SKIP
...     for done in batch.run_batch(plan, pool):
...         print(done.row["source"], done.row["status"])
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io as _textio
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import executors, io, pipeline
from .errors import InputError, RegtoolError
from .pipeline import AlignOptions

__all__ = [
    "BatchError", "BatchAborted", "Batch", "Completed", "Tally", "ResultsTable", "COLUMNS",
    "IMAGE_EXTENSIONS", "RESULTS_NAME", "QA_SUFFIX", "LOG_SUFFIX", "is_batch", "expand_sources",
    "plan_batch", "check_inputs", "prepare_folder", "align_source", "finished_row",
    "row_from_document", "read_results", "run_batch",
]

#: extensions (lower case) of the files a folder given as a source contributes
IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm",
                    ".pgm", ".pbm", ".pnm")
#: the results table, in the output folder
RESULTS_NAME = "results.csv"
#: what follows a source's stem in the name of its QA picture, in the QA folder
QA_SUFFIX = "_qa.png"
#: what follows a source's stem in the name of its iteration log, in the log folder
LOG_SUFFIX = "_log.csv"
#: its columns, in order; the four ``sigma_``/``endpoint`` ones hold the error bars (empty
#: when there are none)
COLUMNS = ("source", "output", "status", "converged", "reason", "tx", "ty", "theta_deg",
           "shift_x", "shift_y", "ncc", "detail_ncc", "sigma_shift_x", "sigma_shift_y",
           "sigma_theta_deg", "endpoint_px", "time_s")
#: the values of the ``status`` column
DONE, NOT_CONVERGED, FAILED = "done", "not converged", "failed"


class BatchError(RegtoolError, ValueError):
    """A batch cannot start: no sources, or two of them would write the same outputs.

    ``str(error)`` is one line, ready to be printed after ``"regtool: error: "``.
    """


class BatchAborted(RegtoolError):
    """A batch stopped before its end because its executor broke (a worker process died).

    Raised by :func:`run_batch` after the table holds every row of what finished; the sources
    not started are left for a rerun with ``skip_existing``. ``str(error)`` is one line.
    """


# --------------------------------------------------------------------------------------------
# Sources and outputs
# --------------------------------------------------------------------------------------------


def _is_pattern(spec: str) -> bool:
    """A glob the shell did not expand (quoted, or it matched nothing there)."""
    return glob.has_magic(spec) and not os.path.lexists(spec)


def is_batch(specs: Iterable[str]) -> bool:
    """Whether sources given on the command line make a batch rather than one pair.

    More than one, or a folder, or a glob pattern that names no file as it is.

    Parameters
    ----------
    specs : iterable of str
        The sources as given.
    """
    specs = list(specs)
    return len(specs) > 1 or any(os.path.isdir(s) or _is_pattern(s) for s in specs)


def _folder_images(folder: str) -> list[str]:
    """The image files of a folder (not its subfolders), by extension, sorted by name.

    Hidden files are left out: among them the ``.name.XXXX.part`` temporaries of
    :mod:`regtool.io` and the ``._name`` files macOS leaves on shared drives.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise io.ImageError(folder, f"cannot list the folder ({exc.strerror or exc})") from None
    names = sorted(e.name for e in entries
                   if not e.name.startswith(".") and e.is_file()
                   and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    return [os.path.join(folder, name) for name in names]


def expand_sources(specs: Iterable[str]) -> list[str]:
    """The source files that sources given as files, folders and glob patterns name.

    A folder gives its image files (by extension, :data:`IMAGE_EXTENSIONS`; not its
    subfolders), sorted by name; a pattern the shell did not expand (``"frames/*.tif"``,
    ``**`` for any depth) gives the files it matches, sorted; anything else is taken as a file,
    to be read (and to fail, if it is not one) by its task. A file named twice is kept once,
    where it first appears.

    Parameters
    ----------
    specs : iterable of str

    Returns
    -------
    list of str
        The paths, as given or as joined to the folder given.

    Raises
    ------
    BatchError
        No sources, a folder without images, or a pattern that matches no file.
    regtool.io.ImageError
        A folder cannot be listed.
    """
    sources: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            found = _folder_images(spec)
            if not found:
                raise BatchError(f"{spec}: the folder holds no image files "
                                 f"({', '.join(IMAGE_EXTENSIONS[:5])}...)")
        elif _is_pattern(spec):
            found = []
            for match in sorted(glob.glob(spec, recursive=True)):
                found += _folder_images(match) if os.path.isdir(match) else [match]
            if not found:
                raise BatchError(f"{spec}: no file matches the pattern")
        else:
            found = [spec]
        for path in found:
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                sources.append(path)
    if not sources:
        raise BatchError("no source given")
    return sources


@dataclass(frozen=True)
class Batch:
    """One target, its sources and where their outputs go: what :func:`plan_batch` checked.

    Attributes
    ----------
    target : str
    sources : tuple of str
        Files, in the order they are submitted.
    folder : str
        The output folder: ``<folder>/<stem>_aligned<ext>`` and ``.json`` for each source
        (:func:`regtool.io.default_output_path`), and ``<folder>/results.csv``.
    options : AlignOptions
    target_mask, source_mask : str or None
        The target's mask, and one mask for every source (of the sources' size).
    qa_folder : str or None
        Where each source's QA picture goes, ``<qa_folder>/<stem>_qa.png``
        (:func:`regtool.qa.pair_panel`); None: no pictures.
    max_pixels : int
        The largest image (and mask) read, in pixels (:func:`regtool.io.read_image`).
    log_folder : str or None
        Where each source's iteration log goes, ``<log_folder>/<stem>_log.csv``
        (:func:`regtool.pipeline.log_text`); None: no logs.
    """

    target: str
    sources: tuple[str, ...]
    folder: str
    options: AlignOptions = field(default_factory=AlignOptions)
    target_mask: str | None = None
    source_mask: str | None = None
    qa_folder: str | None = None
    max_pixels: int = io.DEFAULT_MAX_PIXELS
    log_folder: str | None = None

    @property
    def results_path(self) -> str:
        """``<folder>/results.csv``."""
        return os.path.join(self.folder, RESULTS_NAME)

    def params_path(self, source: str) -> str:
        """The parameter file of ``source``: ``<folder>/<stem>_aligned.json``.

        Known before the source is read, unlike the image's extension (which depends on the
        source's pixel type), so resuming a batch needs to read no source.
        """
        return os.path.join(self.folder, f"{Path(source).stem}_aligned.json")

    def qa_path(self, source: str) -> str | None:
        """The QA picture of ``source``, ``<qa_folder>/<stem>_qa.png``; None without pictures."""
        if self.qa_folder is None:
            return None
        return os.path.join(self.qa_folder, f"{Path(source).stem}{QA_SUFFIX}")

    def log_path(self, source: str) -> str | None:
        """The iteration log of ``source``, ``<log_folder>/<stem>_log.csv``; None without."""
        return _log_path(source, self.log_folder)

    def absolute(self) -> Batch:
        """The same batch with absolute paths, for workers whose current folder is not ours.

        A Dask worker runs wherever it was started; the shared filesystem is assumed to have
        the same paths on every machine.
        """
        def full(path: str | None) -> str | None:
            return None if path is None else os.path.abspath(path)

        return replace(self, target=full(self.target), folder=full(self.folder),
                       sources=tuple(os.path.abspath(s) for s in self.sources),
                       target_mask=full(self.target_mask), source_mask=full(self.source_mask),
                       qa_folder=full(self.qa_folder), log_folder=full(self.log_folder))


def _log_path(source: str, log_folder: str | None) -> str | None:
    if log_folder is None:
        return None
    return os.path.join(log_folder, f"{Path(source).stem}{LOG_SUFFIX}")


def _output_candidates(source: str, folder: str, qa_folder: str | None = None,
                       log_folder: str | None = None) -> list[str]:
    """Every name the outputs of ``source`` may get (the extension depends on its pixels)."""
    stem, ext = Path(source).stem, Path(source).suffix
    names = [f"{stem}_aligned{e}" for e in dict.fromkeys((ext, ".png", ".tif")) if e]
    paths = [os.path.join(folder, name) for name in [*names, f"{stem}_aligned.json"]]
    if qa_folder is not None:
        paths.append(os.path.join(qa_folder, f"{stem}{QA_SUFFIX}"))
    if log_folder is not None:
        paths.append(os.path.join(log_folder, f"{stem}{LOG_SUFFIX}"))
    return paths


def plan_batch(target: str, specs: Iterable[str], folder: str,
               options: AlignOptions | None = None, target_mask: str | None = None,
               source_mask: str | None = None, *, qa_folder: str | None = None,
               max_pixels: int = io.DEFAULT_MAX_PIXELS, log_folder: str | None = None) -> Batch:
    """Expand the sources and check that no output overwrites another, or an input.

    Reads no image: this is about names only.

    Parameters
    ----------
    target : str
    specs : iterable of str
        Files, folders and glob patterns (:func:`expand_sources`).
    folder : str
        The output folder (it need not exist yet).
    options : AlignOptions, optional
    target_mask, source_mask : str, optional
    qa_folder : str, optional
        Draw a QA picture of each source there (it need not exist yet).
    max_pixels : int
        The largest image read (see :class:`Batch`).
    log_folder : str, optional
        Write the iteration log of each source there (it need not exist yet).

    Returns
    -------
    Batch

    Raises
    ------
    BatchError
        No sources; two sources with the same stem (their outputs would have the same names);
        or an output of a source would overwrite an input (e.g. the outputs of a previous
        batch in the folder of its sources, taken as sources).
    """
    sources = expand_sources(specs)
    by_stem: dict[str, str] = {}
    for source in sources:
        stem = Path(source).stem
        if stem in by_stem:
            raise BatchError(
                f"{by_stem[stem]} and {source} would both be written as "
                f"{os.path.join(folder, stem)}_aligned.*; rename one, or align them in "
                "separate batches")
        by_stem[stem] = source
    inputs = {os.path.realpath(p): p for p in (target, target_mask, source_mask, *sources)
              if p is not None}
    results = os.path.realpath(os.path.join(folder, RESULTS_NAME))
    if results in inputs:
        raise BatchError(f"{inputs[results]}: the results table would overwrite an input; "
                         "choose another output folder (-o)")
    for source in sources:
        for candidate in _output_candidates(source, folder, qa_folder, log_folder):
            hit = inputs.get(os.path.realpath(candidate))
            if hit is not None:
                raise BatchError(
                    f"{hit}: an output of {source} would overwrite this input; choose another "
                    "output folder (-o), or leave the outputs of an earlier batch out of the "
                    "sources")
    return Batch(os.fspath(target), tuple(sources), os.fspath(folder),
                 options if options is not None else AlignOptions(), target_mask, source_mask,
                 None if qa_folder is None else os.fspath(qa_folder), max_pixels,
                 None if log_folder is None else os.fspath(log_folder))


def _as_file_error(exc: InputError, loaded: pipeline.Loaded) -> io.ImageError:
    """An :class:`InputError` about an input as a problem of its file, or of its mask's."""
    path = loaded.path
    if str(exc).startswith("the mask") and loaded.mask_path is not None:
        path = loaded.mask_path
    return io.ImageError(path, str(exc))


def check_inputs(batch: Batch) -> None:
    """Read the target and the masks and check that they can be registered, before any work.

    An unusable target would fail every task; it is better refused once, at once.

    Raises
    ------
    regtool.io.ImageError
        The target (or its mask) cannot be read or registered (constant, too small...), or
        the source mask cannot be read.
    """
    from .prepare import luminance

    loaded = pipeline.read_input(batch.target, batch.target_mask, "target",
                                 max_pixels=batch.max_pixels)
    try:
        luminance(loaded.image, "target", loaded.mask)
    except InputError as exc:
        raise _as_file_error(exc, loaded) from None
    if batch.source_mask is not None:
        # its size is checked against each source
        io.read_mask(batch.source_mask, max_pixels=batch.max_pixels)


def _make_folder(folder: str, what: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise io.ImageError(folder, f"is a file; the {what} of a batch must be a "
                            "folder") from None
    except OSError as exc:
        raise io.ImageError(folder, f"cannot create the {what} "
                            f"({exc.strerror or exc})") from None


def prepare_folder(batch: Batch) -> None:
    """Create the output folder (and its parents), and the QA and log folders, and check that
    they can be written.

    Raises
    ------
    regtool.io.ImageError
        A folder cannot be created, or written in.
    """
    _make_folder(batch.folder, "output folder")
    io.check_output_path(batch.results_path)
    if batch.qa_folder is not None:
        _make_folder(batch.qa_folder, "QA folder")
        for source in batch.sources[:1]:  # one probe tells whether the folder takes files
            io.check_output_path(os.fspath(batch.qa_path(source)))
    if batch.log_folder is not None:
        _make_folder(batch.log_folder, "log folder")
        for source in batch.sources[:1]:
            io.check_output_path(os.fspath(batch.log_path(source)))


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------

# What a worker has read, by file identity: a task of the same batch finds its target here
# instead of reading it again. One entry per kind, so memory stays that of one target.
_CACHE: dict[str, tuple[tuple, Any]] = {}


def _identity(*paths: str | None) -> tuple:
    """Path, modification time and size of each file: a changed file is read again."""
    key: list[Any] = []
    for path in paths:
        if path is None:
            key.append(None)
            continue
        st = os.stat(path)
        key.append((os.path.realpath(path), st.st_mtime_ns, st.st_size))
    return tuple(key)


def _cached(kind: str, paths: tuple[str | None, ...], extra: tuple, load: Callable[[], Any]
            ) -> Any:
    try:
        key = (*_identity(*paths), *extra)
    except OSError:
        return load()  # it raises the one-line error of the missing file
    hit = _CACHE.get(kind)
    if hit is not None and hit[0] == key:
        return hit[1]
    _CACHE.pop(kind, None)  # let the old one go before the new one is read
    value = load()
    _CACHE[kind] = (key, value)
    return value


def _read_source(source: str, source_mask: str | None, max_pixels: int) -> pipeline.Loaded:
    image = io.read_image(source, max_pixels=max_pixels)
    mask = None
    if source_mask is not None:
        mask = _cached("source_mask", (source_mask,), (image.shape[:2], max_pixels),
                       lambda: io.read_mask(source_mask, image.shape[:2],
                                            f"the source {source}", max_pixels=max_pixels))
    return pipeline.Loaded(os.fspath(source), image, source_mask, mask)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def row_from_document(document: dict[str, Any]) -> dict[str, Any]:
    """The results-table row of a pair's JSON document (as written, or as read back).

    Parameters
    ----------
    document : dict
        What :func:`regtool.pipeline.run_pair` writes beside the aligned image.

    Returns
    -------
    dict
        Keys :data:`COLUMNS`; ``status`` is ``"done"`` or ``"not converged"``; numbers are
        floats or None.
    """
    def pair(value: Any) -> tuple[float | None, float | None]:
        if isinstance(value, list | tuple) and len(value) == 2:
            return _number(value[0]), _number(value[1])
        return None, None

    bars = document.get("uncertainty") or {}
    shift_x, shift_y = pair(document.get("shift"))
    sigma_x, sigma_y = pair(bars.get("shift"))
    converged = bool(document.get("converged"))
    return {
        "source": document.get("source"), "output": document.get("output"),
        "status": DONE if converged else NOT_CONVERGED, "converged": converged,
        "reason": document.get("reason"),
        "tx": _number(document.get("tx")), "ty": _number(document.get("ty")),
        "theta_deg": _number(document.get("theta_deg")), "shift_x": shift_x, "shift_y": shift_y,
        "ncc": _number(document.get("ncc")), "detail_ncc": _number(document.get("detail_ncc")),
        "sigma_shift_x": sigma_x, "sigma_shift_y": sigma_y,
        "sigma_theta_deg": _number(bars.get("theta_deg")),
        "endpoint_px": _number(bars.get("endpoint_px")),
        "time_s": _number(document.get("time_s")),
    }


def _failed_row(source: str, reason: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(source=source, status=FAILED, reason=" ".join(reason.split()))
    return row


def align_source(target: str, target_mask: str | None, source: str, source_mask: str | None,
                 folder: str, options: AlignOptions, qa_folder: str | None = None,
                 max_pixels: int = io.DEFAULT_MAX_PIXELS,
                 log_folder: str | None = None) -> dict[str, Any]:
    """Align one source of a batch and write its outputs: the task a worker runs.

    Takes paths only and returns a small row (never the arrays), so it pickles cheaply to a
    process pool or a Dask cluster. The target is read once per worker process, not once per
    source: it is kept, keyed by its path, modification time and size.

    Parameters
    ----------
    target, target_mask : str, str or None
    source, source_mask : str, str or None
    folder : str
        The output folder; it exists.
    options : AlignOptions
    qa_folder : str, optional
        Also draw the source's QA picture there, ``<qa_folder>/<stem>_qa.png``, from the
        arrays the task has in memory (it exists).
    max_pixels : int
        The largest image (and mask) read.
    log_folder : str, optional
        Also write the source's iteration log there, ``<log_folder>/<stem>_log.csv`` (it
        exists).

    Returns
    -------
    dict
        A row of :data:`COLUMNS`. A source that cannot be registered, or whose outputs cannot
        be written, gives a ``"failed"`` row whose ``reason`` is the one-line message naming
        the file (its outputs are not written); an unexpected error in the engine too, as
        ``"<source>: internal error: <type>: <message>"``, so one bad file never stops a batch.
    """
    try:
        loaded_target = _cached(
            "target", (target, target_mask), (max_pixels,),
            lambda: pipeline.read_input(target, target_mask, "target", max_pixels=max_pixels))
        loaded_source = _read_source(source, source_mask, max_pixels)
        qa = (None if qa_folder is None
              else os.path.join(qa_folder, f"{Path(source).stem}{QA_SUFFIX}"))
        log = _log_path(source, log_folder)
        out_image, out_params = pipeline.plan_outputs(
            loaded_source, None, None, loaded_target.paths() + loaded_source.paths(),
            folder=folder, fill=options.fill, qa=qa, log=log)
        outcome = pipeline.run_pair(loaded_target, loaded_source, out_image, out_params, options,
                                    qa=qa, log=log)
    except io.ImageError as exc:
        return _failed_row(source, str(exc))
    except InputError as exc:
        return _failed_row(source, f"{source}: {exc}")
    except Exception as exc:  # a bug must not stop the other sources; the row says what it was
        return _failed_row(source, f"{source}: internal error: {type(exc).__name__}: {exc}")
    return row_from_document(outcome.document)


# --------------------------------------------------------------------------------------------
# The results table
# --------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return str(value)


class ResultsTable:
    """``results.csv``, a row at a time: it always lists exactly the outputs on disk.

    Opening replaces any previous table atomically by one holding the header alone; each
    :meth:`add` appends a row, after the row's outputs were written (atomically, by the
    worker), with one unbuffered write to the operating system. A row that cannot be written
    whole (a full disk takes the part that fits) is cut off again, so an interrupted, killed or
    failed batch leaves a table whose rows are whole and all point at complete outputs. Rows
    are not fsync'ed one by one: the outputs themselves are not either, and a written row
    survives anything but a power cut.

    Parameters
    ----------
    path : str

    Attributes
    ----------
    opened_ns : int
        The table's modification time once its header is written (``st_mtime_ns``): a file
        of the folder modified since was written by this batch.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.opened_ns = 0
        self._fd: int | None = None
        self._size = 0

    def __enter__(self) -> ResultsTable:
        try:
            self._start()
        except OSError as exc:
            raise self._error(exc) from None
        return self

    def _error(self, exc: OSError) -> io.ImageError:
        return io.ImageError(self.path, f"cannot write the file ({exc.strerror or exc})")

    def _start(self) -> None:
        folder = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(self.path)}.",
                                   suffix=".part")
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerow(COLUMNS)
            os.chmod(tmp, io.file_mode())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        st = os.fstat(self._fd)
        self._size, self.opened_ns = st.st_size, st.st_mtime_ns

    def add(self, row: dict[str, Any], flush: bool = True) -> None:
        """Append ``row`` (keys :data:`COLUMNS`; missing ones are empty).

        ``flush`` is accepted for compatibility: every row goes to the operating system at
        once.

        Raises
        ------
        regtool.io.ImageError
            The table cannot be written (disk full...); the part of the row that was written,
            if any, is cut off.
        """
        assert self._fd is not None
        try:
            line = _textio.StringIO()
            csv.writer(line).writerow([_cell(row.get(name)) for name in COLUMNS])
            text = line.getvalue().encode("utf-8")
            data = memoryview(text)
            while data:
                data = data[os.write(self._fd, data):]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)  # no half row
            raise self._error(exc) from None
        self._size += len(text)

    def flush(self) -> None:
        """Kept for compatibility: :meth:`add` hands each row to the operating system."""

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def read_results(path: str) -> list[dict[str, str]]:
    """Read a ``results.csv`` back: one dict per row, the cells as strings (empty: none).

    Parameters
    ----------
    path : str
    """
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------
# Running, and resuming
# --------------------------------------------------------------------------------------------


def _same_file(a: Any, b: str) -> bool:
    return isinstance(a, str) and os.path.realpath(a) == os.path.realpath(b)


def finished_row(batch: Batch, source: str) -> dict[str, Any] | None:
    """The row of a source whose outputs are on disk already, complete; else None.

    Complete: its parameter file parses, names this source and this target, and the aligned
    image it names exists; when the batch draws QA pictures, the parameter file also names
    this source's picture (``"qa"``) and it exists, and when it writes iteration logs, names
    this source's log (``"log"``) and it exists. The outputs are written atomically and as
    a set, the parameter file last, so they are whole or absent; a JSON without its image (a
    crash between the renames) is not complete, nor is one written by a run without pictures
    (or logs). The row is rebuilt from the JSON, so it is the row the earlier run wrote.

    Parameters
    ----------
    batch : Batch
    source : str
    """
    try:
        with open(batch.params_path(source), encoding="utf-8") as fh:
            document = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    output = document.get("output")
    if not (_same_file(document.get("source"), source)
            and _same_file(document.get("target"), batch.target)
            and isinstance(output, str) and os.path.isfile(output)):
        return None
    qa = batch.qa_path(source)
    if qa is not None and not (_same_file(document.get("qa"), qa) and os.path.isfile(qa)):
        return None
    log = batch.log_path(source)
    if log is not None and not (_same_file(document.get("log"), log) and os.path.isfile(log)):
        return None
    return row_from_document(document)


@dataclass
class Completed:
    """A source of a batch that has finished, or was found finished (``skipped``)."""

    row: dict[str, Any]
    skipped: bool = False

    @property
    def status(self) -> str:
        """``"done"``, ``"not converged"`` or ``"failed"``."""
        return str(self.row["status"])


@dataclass
class Tally:
    """What a batch did, counted as its sources finish; keeps a few reasons, not every row.

    Attributes
    ----------
    done, not_converged, failed, skipped : int
        ``skipped`` counts the sources found finished; they are also counted in ``done`` or
        ``not_converged`` by the row they kept.
    failures, not_converging : list of (source, reason)
        The first :attr:`keep` of each.
    """

    total: int = 0
    done: int = 0
    not_converged: int = 0
    failed: int = 0
    skipped: int = 0
    keep: int = 20
    failures: list[tuple[str, str]] = field(default_factory=list)
    not_converging: list[tuple[str, str]] = field(default_factory=list)

    def add(self, completed: Completed) -> None:
        """Count one finished source."""
        row = completed.row
        self.skipped += completed.skipped
        if completed.status == FAILED:
            self.failed += 1
            if len(self.failures) < self.keep:
                self.failures.append((str(row["source"]), str(row["reason"])))
        elif completed.status == NOT_CONVERGED:
            self.not_converged += 1
            if len(self.not_converging) < self.keep:
                self.not_converging.append((str(row["source"]), str(row["reason"] or "")))
        else:
            self.done += 1

    @property
    def finished(self) -> int:
        """Sources with a row in the table."""
        return self.done + self.not_converged + self.failed

    @property
    def all_converged(self) -> bool:
        """True when every source finished and converged (skipped ones included)."""
        return self.done == self.total


def run_batch(batch: Batch, executor: Any, *, skip_existing: bool = False,
              window: int | Callable[[], int] | None = None,
              stop: Callable[[], bool] = lambda: False) -> Iterator[Completed]:
    """Run a batch on an executor, writing ``results.csv`` as its sources finish.

    Sources whose outputs are complete are skipped first when ``skip_existing`` (their rows
    go first in the table); the others are submitted :func:`align_source` tasks, at most
    ``window`` at a time, in order. Once ``stop()`` is true, no new task is submitted; those
    submitted still finish and are recorded, so the table agrees with the disk.

    Parameters
    ----------
    batch : Batch
        Planned, checked (:func:`check_inputs`) and with its folder made
        (:func:`prepare_folder`).
    executor : concurrent.futures.Executor
    skip_existing : bool
        Resume: skip the sources that :func:`finished_row` finds finished.
    window : int or callable, optional
        Tasks in flight at most; by default :func:`regtool.executors.capacity`, so every
        submitted task runs at once and none waits in a queue to start after a stop.
    stop : callable
        Polled before each submission (e.g. set by a signal handler).

    Yields
    ------
    Completed
        One per source that finished (or was skipped), in the order they finish.

    Raises
    ------
    BatchAborted
        The executor broke (a local worker process died); raised once the tasks in flight
        are recorded. A broken local pool is shut down first: then no worker runs, and each
        task it lost has either its whole outputs and their row, or no output and a
        ``"failed"`` row.
    regtool.io.ImageError
        ``results.csv`` cannot be written (disk full...). Raised at once: the tasks in flight
        may still finish, without their rows (``skip_existing`` finds them).
    """
    if window is None:
        def window() -> int:
            return executors.capacity(executor)
    todo: Iterable[str] = batch.sources
    with ResultsTable(batch.results_path) as table:
        if skip_existing:
            remaining = []
            for source in batch.sources:
                row = finished_row(batch, source)
                if row is None:
                    remaining.append(source)
                    continue
                table.add(row, flush=False)
                yield Completed(row, skipped=True)
            table.flush()
            todo = remaining
        tasks = ((source, (batch.target, batch.target_mask, source, batch.source_mask,
                           batch.folder, batch.options, batch.qa_folder, batch.max_pixels,
                           batch.log_folder))
                 for source in todo)
        broken: list[BaseException] = []  # a list, so the stop below sees it change
        lost: list[str] = []  # tasks a broken pool took with it
        recorded = 0  # rows of the tasks run
        for source, future in executors.bounded(executor, align_source, tasks, window,
                                                stop=lambda: bool(broken) or stop()):
            error = future.exception()
            if isinstance(error, BrokenExecutor):
                # A local worker process died (memory?). The broken pool fails every task in
                # flight and terminates its other workers, perhaps in the middle of a write:
                # these tasks are settled below, once every worker is gone.
                broken.append(error)
                lost.append(source)
                continue
            if error is None:
                row = future.result()
            else:
                # The task never returned: the cluster lost it (a Dask worker died...).
                detail = " ".join(str(error).split()) or "no message"
                row = _failed_row(source, f"{source}: the task was lost "
                                          f"({type(error).__name__}: {detail})")
            table.add(row)
            recorded += 1
            yield Completed(row)
        if broken:
            executor.shutdown(wait=True)  # returns once every worker process has ended
            for source in lost:
                row = _settle_lost(batch, source, table.opened_ns)
                table.add(row)
                recorded += 1
                yield Completed(row)
    if broken:
        left = len(list(todo)) - recorded
        if not left:
            raise BatchAborted("a worker process died (out of memory, or killed?); rerun with "
                               "--skip-existing to do the lost sources")
        raise BatchAborted(f"a worker process died (out of memory, or killed?) and the batch "
                           f"stopped: {left} source{'s' if left != 1 else ''} not started; "
                           "rerun with --skip-existing to do them and the lost ones")


def _settle_lost(batch: Batch, source: str, since_ns: int) -> dict[str, Any]:
    """The row of a task that a broken pool lost, once no worker runs: a whole or no output.

    The worker may have died (or been terminated by the pool) anywhere in the task: before its
    writes, in the middle of one (a temporary ``.<name>.XXXXXXXX.part`` is left), between the
    aligned image and the parameter file, or after both (only its result was lost). Outputs
    that this batch wrote whole (the parameter file is newer than the table) are kept and get
    their row; otherwise the temporaries and every output of the source are removed (the batch
    was to replace them) and the row says the task was lost.
    """
    candidates = _output_candidates(source, batch.folder, batch.qa_folder, batch.log_folder)
    for path in candidates:
        folder, name = os.path.split(path)
        pattern = os.path.join(glob.escape(folder or "."), glob.escape(f".{name}.") + "*.part")
        for tmp in glob.glob(pattern):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    row = finished_row(batch, source)
    if row is not None:
        with contextlib.suppress(OSError):
            if os.stat(batch.params_path(source)).st_mtime_ns >= since_ns:
                return row
    for path in candidates:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return _failed_row(source, f"{source}: the task was lost: a worker process died (out of "
                               "memory, or killed?), which ends every task in flight")
