"""What :func:`regtool.align` returns: the Result, its per-level records, and their JSON;
and the per-iteration records it reports to ``log``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import __version__
from .resample import warp as _warp
from .uncertainty import Uncertainty

__all__ = ["Result", "LevelRecord", "IterationRecord"]


@dataclass
class LevelRecord:
    """What happened at one pyramid level (level 0 is the full-resolution image)."""

    level: int
    shape: tuple[int, int]
    iterations: int
    loss: float
    converged: bool
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "shape": [int(self.shape[0]), int(self.shape[1])],
            "iterations": int(self.iterations),
            "loss": _num(self.loss),
            "converged": bool(self.converged),
            "time_s": round(float(self.time_s), 6),
        }


@dataclass(frozen=True)
class IterationRecord:
    """One iteration of one level's solve, as :func:`regtool.align` reports it to ``log``.

    Attributes
    ----------
    level : int
        The pyramid level (0 is the full-resolution image).
    iteration : int
        1, 2, ... within the level; a level's last is its :attr:`LevelRecord.iterations`.
    loss : float
        The metric's loss at the point the iteration evaluated (as :attr:`Result.loss`); NaN
        when the overlap was lost there.
    step_px : float or None
        The largest displacement of any pixel by the step the iteration took, in pixels of the
        full-resolution image (the level's pixels times ``2**level``); None when it took none.
        A level stops when it falls below its tolerance.
    damping : float
        ``gauss-newton``: the Levenberg-Marquardt lambda of the step (0 is a pure Gauss-Newton
        step; it rises tenfold at each rejected point and falls tenfold at each accepted one);
        ``scaled``: the step length alpha the line search settled on; ``gd``: the fixed rate.
    accepted : bool
        False when the point raised the objective and was rejected (``gauss-newton`` only):
        the step is then retried from the last accepted point, with more damping. The
        objective is ``mean(e**2)`` (:class:`regtool.loss.Residual`): ``loss`` itself for
        ``ssd``, ``2 var(f) (1 - ncc)`` over the overlap for ``ncc``, so there a rejected
        point's loss may be a little lower. False too on a row that ends the level in failure
        (the overlap lost: no loss; ``gd`` diverging).
    elapsed_ms : float
        Milliseconds since :func:`regtool.align` was called.
    """

    level: int
    iteration: int
    loss: float
    step_px: float | None
    damping: float
    accepted: bool
    elapsed_ms: float


def _num(x: float) -> float | None:
    """JSON has no infinity or NaN: those become null."""
    return float(x) if math.isfinite(x) else None


@dataclass
class Result:
    """The outcome of :func:`align`.

    Attributes
    ----------
    matrix : (2, 3) ndarray
        Maps target pixel (x, y) to source pixel (x, y):
        ``aligned[y, x] = source(matrix @ [x, y, 1])``.
    tx, ty, theta : float
        ``matrix = [[cos, -sin, tx], [sin, cos, ty]]``: rotation by ``theta`` radians about the
        origin (the center of the top-left pixel), then translation.
    center : (float, float)
        The target's center ``((W-1)/2, (H-1)/2)``.
    shift : (float, float)
        Translation about ``center``: ``matrix @ [x, y, 1] = R (x - center) + center + shift``.
    metric, optimizer : str
        What was minimized, and how.
    loss : float
        Final value of the metric at the finest level (``ssd``: mean squared difference over the
        overlap, integer images scaled to [0, 1]; ``ncc``: ``1 - ncc``).
    converged : bool
        True when the finest level met the tolerance and nothing failed.
    reason : str or None
        Why not, when ``converged`` is False.
    levels : list of LevelRecord
        Coarsest first.
    time_s : float
        Wall time of the call.
    overlap : float
        Fraction of the target's pixels that ``matrix`` maps inside the source's extent.
    target_shape, source_shape : tuple of int
        ``(rows, cols)`` of the inputs.
    ncc : float
        Zero-mean normalized cross-correlation of target and aligned source over the overlap
        (a regular grid: every other pixel, or about 128 x 128 on larger images; bilinear):
        1 is a perfect match up to gain and offset, near 0 unrelated images.
    residual : float
        Root-mean-square intensity difference over the same pixels (integer images in [0, 1]).
    detail_ncc : float
        The NCC of the two images' detail (difference of Gaussians, sigma 1 and 3 pixels of that
        grid; sigma 3 and 9 when noise swamps the finer band) over the overlap: what decides
        whether the images match at all (at least 0.35, or 0.55 in the coarser band).
    init : dict
        How the start was found: ``method`` (``auto``, ``none`` or ``given``), the starting
        ``tx``, ``ty``, ``theta_deg``, and for ``auto`` the ``level`` searched, the number of
        ``candidates`` and ``time_s``.
    answer_level : int
        The pyramid level the answer comes from: 0 (full resolution), or 1 when on noisy images
        the half-resolution level's answer was expected to be the more accurate (its pixels
        average four and hold most of a smooth image's information).
    uncertainty : Uncertainty or None
        1-sigma error bars of ``shift`` and ``theta_deg`` and the expected mean endpoint
        error, estimated from the data (see :mod:`regtool.uncertainty`); its fields are None,
        with a ``reason``, where they cannot be trusted.
    """

    matrix: np.ndarray
    tx: float
    ty: float
    theta: float
    center: tuple[float, float]
    shift: tuple[float, float]
    metric: str
    optimizer: str
    loss: float
    converged: bool
    reason: str | None
    levels: list[LevelRecord] = field(default_factory=list)
    time_s: float = 0.0
    overlap: float = 0.0
    target_shape: tuple[int, int] = (0, 0)
    source_shape: tuple[int, int] = (0, 0)
    ncc: float = math.nan
    residual: float = math.nan
    detail_ncc: float = math.nan
    init: dict[str, Any] = field(default_factory=dict)
    answer_level: int = 0
    uncertainty: Uncertainty | None = None

    @property
    def theta_deg(self) -> float:
        """Rotation in degrees."""
        return math.degrees(self.theta)

    def warp(self, image: np.ndarray, *, interp: str = "cubic", fill: float = 0.0) -> np.ndarray:
        """Resample ``image`` (the source, or any image on its grid) onto the target's grid.

        Keeps the dtype and channels of ``image``; see :func:`regtool.warp`.
        """
        return _warp(image, self.matrix, self.target_shape, interp=interp, fill=fill)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (without the file names, which only a caller knows)."""
        return {
            "tx": float(self.tx),
            "ty": float(self.ty),
            "theta": float(self.theta),
            "theta_deg": float(self.theta_deg),
            "matrix": [[float(v) for v in row] for row in self.matrix],
            "center": [float(self.center[0]), float(self.center[1])],
            "shift": [float(self.shift[0]), float(self.shift[1])],
            "metric": self.metric,
            "optimizer": self.optimizer,
            "loss": _num(self.loss),
            "converged": bool(self.converged),
            "reason": self.reason,
            "overlap": round(float(self.overlap), 6),
            "ncc": _num(self.ncc),
            "residual": _num(self.residual),
            "detail_ncc": _num(self.detail_ncc),
            "init": {k: (_num(v) if isinstance(v, float) else v) for k, v in self.init.items()},
            "uncertainty": (self.uncertainty.to_dict() if self.uncertainty is not None
                            else Uncertainty.unavailable("not estimated").to_dict()),
            "levels": [r.to_dict() for r in self.levels],
            "answer_level": int(self.answer_level),
            "time_s": round(float(self.time_s), 6),
            "target_shape": [int(v) for v in self.target_shape],
            "source_shape": [int(v) for v in self.source_shape],
            "regtool_version": __version__,
        }
