"""One pair of files from paths to outputs: read, check the outputs, align, warp, write.

Every caller that registers files goes through here: the ``align`` command for one pair, a batch
worker for each of its sources, a Dask task. Nothing here prints or exits; every problem with a
file is an :class:`regtool.io.ImageError` whose one-line message names the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import io
from .errors import InputError
from .register import DEFAULT_METRIC, DEFAULT_OPTIMIZER
from .resample import fill_problem

__all__ = ["AlignOptions", "Loaded", "PairOutcome", "Comparison", "LOG_COLUMNS", "read_input",
           "plan_outputs", "run_pair", "log_text", "compare_transforms"]

#: the columns of an iteration log (``--log``), one row per :class:`regtool.IterationRecord`
LOG_COLUMNS = ("level", "iteration", "loss", "step_px", "damping", "accepted", "elapsed_ms")


@dataclass(frozen=True)
class AlignOptions:
    """What :func:`regtool.align` and the output warp are asked to do, for every pair alike.

    The fields are :func:`regtool.align`'s keyword arguments of the same names, and the
    interpolation and fill value of :meth:`regtool.Result.warp`.
    """

    levels: int | None = None
    optimizer: str = DEFAULT_OPTIMIZER
    metric: str = DEFAULT_METRIC
    max_iter: int | None = None
    tol: float = 1e-3
    init: str | tuple[float, float, float] = "auto"
    min_overlap: float = 0.25
    interp: str = "cubic"
    fill: float = 0.0

    def align_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`regtool.align`."""
        return {"levels": self.levels, "optimizer": self.optimizer, "metric": self.metric,
                "max_iter": self.max_iter, "tol": self.tol, "init": self.init,
                "min_overlap": self.min_overlap}


@dataclass
class Loaded:
    """An input image read from its file, with its mask (None: every pixel counts)."""

    path: str
    image: np.ndarray
    mask_path: str | None = None
    mask: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return 1 if self.image.ndim == 2 else int(self.image.shape[-1])

    def paths(self) -> list[str]:
        return [p for p in (self.path, self.mask_path) if p is not None]


@dataclass
class PairOutcome:
    """What one pair gave: the document written beside the aligned image, and where."""

    document: dict[str, Any]
    out_image: str
    out_params: str
    converged: bool
    reason: str | None
    result: Any = field(default=None, repr=False)  # the regtool.Result
    out_qa: str | None = None  # the QA picture, when one was asked for
    out_log: str | None = None  # the iteration log, when one was asked for


def read_input(path: str, mask_path: str | None, which: str, *,
               max_pixels: int = io.DEFAULT_MAX_PIXELS) -> Loaded:
    """Read an image and its optional mask.

    Parameters
    ----------
    path : str
        The image file.
    mask_path : str or None
        An image of the same size: nonzero = use the pixel (see :func:`regtool.io.read_mask`).
    which : {"target", "source"}
        Which input this is, for the messages.
    max_pixels : int
        Refuse an image (or mask) declaring more pixels than this, before decoding it
        (``--max-pixels``; see :func:`regtool.io.read_image`).

    Raises
    ------
    regtool.io.ImageError
        The image or the mask cannot be read, is larger than ``max_pixels``, or the mask's
        size differs.
    """
    image = io.read_image(path, max_pixels=max_pixels)
    mask = None
    if mask_path is not None:
        mask = io.read_mask(mask_path, image.shape[:2], f"the {which} {path}",
                            max_pixels=max_pixels)
    return Loaded(os.fspath(path), image, mask_path, mask)


def plan_outputs(source: Loaded, output: str | None, params: str | None,
                 inputs: Iterable[str], folder: str = ".",
                 fill: float = 0.0, qa: str | None = None,
                 log: str | None = None) -> tuple[str, str]:
    """Choose and check the outputs of one pair before any work is done.

    Parameters
    ----------
    source : Loaded
        The source (its dtype and channels decide the default format).
    output, params : str or None
        The aligned image and the parameter file; by default ``<folder>/<stem>_aligned<ext>``
        (:func:`regtool.io.default_output_path`) and the image's path with ``.json``.
    inputs : iterable of str
        Files that must not be overwritten.
    folder : str
        Where default outputs go.
    fill : float
        The value of aligned pixels outside the source: it must fit the source's dtype.
    qa : str, optional
        The QA picture (:func:`regtool.qa.pair_panel`, an RGB image: ``.png``, ``.tif`` or
        ``.jpg``), checked like the other two.
    log : str, optional
        The iteration log (:func:`log_text`, a CSV table), checked like the others.

    Returns
    -------
    (out_image, out_params) : (str, str)

    Raises
    ------
    regtool.io.ImageError
        An output cannot be written there, would overwrite an input or another output, or
        the fill value cannot be stored in the source's type.
    """
    image = source.image
    problem = fill_problem(image.dtype, fill)
    if problem is not None:
        raise io.ImageError(source.path, problem)
    out_image = output if output is not None else os.fspath(
        io.default_output_path(source.path, image.dtype, source.channels, folder))
    out_params = params if params is not None else os.fspath(Path(out_image).with_suffix(".json"))
    inputs = list(inputs)
    io.check_output_path(out_image, inputs, dtype=image.dtype, channels=source.channels)
    io.check_output_path(out_params, inputs)
    if os.path.realpath(out_image) == os.path.realpath(out_params):
        raise io.ImageError(out_params, "the parameter file would overwrite the aligned image; "
                            "give the parameters another name")
    if qa is not None:
        io.check_output_path(qa, inputs, dtype=np.dtype(np.uint8), channels=3)
        for other, what in ((out_image, "the aligned image"), (out_params, "the parameter file")):
            if os.path.realpath(qa) == os.path.realpath(other):
                raise io.ImageError(qa, f"the QA picture would overwrite {what}; give it "
                                    "another name")
    if log is not None:
        io.check_output_path(log, inputs)
        for other, what in ((out_image, "the aligned image"), (out_params, "the parameter file"),
                            (qa, "the QA picture")):
            if other is not None and os.path.realpath(log) == os.path.realpath(other):
                raise io.ImageError(log, f"the iteration log would overwrite {what}; give it "
                                    "another name")
    return out_image, out_params


def _log_cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return format(value, spec)


def log_text(records: Iterable[Any]) -> str:
    """The iteration log as CSV text: the header :data:`LOG_COLUMNS`, then a row per record.

    Parameters
    ----------
    records : iterable of regtool.IterationRecord
        In the order :func:`regtool.align` reported them (coarsest level first).

    Returns
    -------
    str
        Newline-terminated lines. ``loss`` has 9 significant digits, ``step_px`` and
        ``damping`` 4, ``elapsed_ms`` is rounded to 0.001 ms; ``accepted`` is ``true`` or
        ``false``; no value (a step not taken, a loss where the overlap was lost) is empty.
    """
    lines = [",".join(LOG_COLUMNS)]
    for r in records:
        lines.append(",".join((str(int(r.level)), str(int(r.iteration)), _log_cell(r.loss, ".9g"),
                               _log_cell(r.step_px, ".4g"), _log_cell(r.damping, ".4g"),
                               _log_cell(r.accepted, ""), _log_cell(r.elapsed_ms, ".3f"))))
    return "\n".join(lines) + "\n"


def _input_error(exc: InputError, target: Loaded, source: Loaded) -> Exception:
    """An :class:`InputError` of :func:`regtool.align` as a problem of the file at fault."""
    side = {"target": target, "source": source}.get(exc.which or "")
    if side is None:
        return exc  # neither file in particular
    path = side.path
    if str(exc).startswith("the mask") and side.mask_path is not None:
        path = side.mask_path  # e.g. "the mask leaves only 12 usable pixels"
    return io.ImageError(path, str(exc))


def run_pair(target: Loaded, source: Loaded, out_image: str, out_params: str,
             options: AlignOptions,
             progress: Callable[[Any, int, int], None] | None = None,
             qa: str | None = None, log: str | None = None) -> PairOutcome:
    """Align ``source`` to ``target``, then write the aligned image and its parameters.

    The outputs are written atomically and as a unit (:class:`regtool.io.OutputSet`): a
    failure or an interruption leaves none of them. A registration that runs but does not
    converge still writes them, with ``"converged": false`` and the reason.

    Parameters
    ----------
    target, source : Loaded
        The inputs, read by :func:`read_input`.
    out_image, out_params : str
        The outputs, checked by :func:`plan_outputs`.
    options : AlignOptions
    progress : callable, optional
        Passed on to :func:`regtool.align`.
    qa : str, optional
        Also draw the QA picture (:func:`regtool.qa.pair_panel`) from the arrays at hand and
        write it there, checked by :func:`plan_outputs`. It is written before the parameter
        file, which names it (``"qa"``): a parameter file on disk vouches for its picture.
    log : str, optional
        Also write the iteration log there (:func:`log_text`: a row per iteration of every
        level), checked by :func:`plan_outputs`; like the picture, before the parameter file,
        which names it (``"log"``).

    Returns
    -------
    PairOutcome

    Raises
    ------
    regtool.io.ImageError
        An input cannot be registered (the message names it) or an output cannot be written.
    regtool.InputError
        The pair cannot be registered and neither file in particular is at fault.
    """
    import regtool  # looked up at call time, so a caller (or a test) sees one align

    records: list[Any] = []
    try:
        result = regtool.align(target.image, source.image, target_mask=target.mask,
                               source_mask=source.mask, progress=progress,
                               log=None if log is None else records.append,
                               **options.align_kwargs())
    except InputError as exc:
        raise _input_error(exc, target, source) from None
    aligned = result.warp(source.image, interp=options.interp, fill=options.fill)
    panel = None
    if qa is not None:
        from .qa import pair_panel  # Pillow drawing: loaded only when a picture is asked for

        panel = pair_panel(target.image, source.image, result, target_mask=target.mask,
                           source_mask=source.mask)
    doc: dict[str, Any] = {"target": target.path, "source": source.path, "output": out_image,
                           "qa": qa, "log": log, "target_mask": target.mask_path,
                           "source_mask": source.mask_path}
    doc.update(result.to_dict())
    with io.OutputSet() as outputs:
        outputs.write_image(out_image, aligned)
        if panel is not None:
            outputs.write_image(qa, panel)
        if log is not None:
            outputs.write_text(log, log_text(records))
        outputs.write_json(out_params, doc)
    return PairOutcome(doc, out_image, out_params, bool(result.converged), result.reason, result,
                       qa, log)


@dataclass(frozen=True)
class Comparison:
    """A transform found against an expected one (``regtool align --expect``).

    Attributes
    ----------
    distance : float
        Their mean endpoint distance over the target's pixels, in pixels
        (:func:`regtool.transform.mean_endpoint_distance`).
    tolerance : float
        The largest distance accepted, in pixels.
    found, expected : dict
        ``tx``, ``ty``, ``theta_deg`` (public convention) and ``shift`` ``[x, y]`` about the
        target's center, of each transform: what a report shows side by side.
    shape : (int, int)
        The target's ``(rows, cols)``, the grid the distance is taken over.
    """

    distance: float
    tolerance: float
    found: dict[str, Any]
    expected: dict[str, Any]
    shape: tuple[int, int]

    @property
    def within(self) -> bool:
        """The distance is at most the tolerance."""
        return self.distance <= self.tolerance


def _describe(matrix: np.ndarray, shape: tuple[int, int]) -> dict[str, Any]:
    from .transform import center_params, image_center, rigid_params

    tx, ty, theta = rigid_params(matrix)
    sx, sy, _ = center_params(matrix, image_center(shape))
    return {"tx": tx, "ty": ty, "theta_deg": math.degrees(theta), "shift": [sx, sy]}


def compare_transforms(found: np.ndarray, expected: np.ndarray, shape: tuple[int, ...],
                       tolerance: float) -> Comparison:
    """Compare a transform found with an expected one by how far apart they move the pixels.

    Parameters
    ----------
    found, expected : array_like
        2x3 or 3x3 target->source matrices (``Result.matrix``; a
        :class:`regtool.params.SavedTransform`'s ``matrix``).
    shape : tuple of int
        The target's ``(rows, cols, ...)``: the distance is the mean over its pixels.
    tolerance : float
        Pixels.

    Returns
    -------
    Comparison
    """
    from .transform import mean_endpoint_distance

    grid = (int(shape[0]), int(shape[1]))
    return Comparison(mean_endpoint_distance(found, expected, grid), float(tolerance),
                      _describe(np.asarray(found, dtype=float), grid),
                      _describe(np.asarray(expected, dtype=float), grid), grid)
