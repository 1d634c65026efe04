"""Saved transforms: a parameter document read back as a matrix and the grid it warps onto.

A parameter document is what ``regtool align`` writes (to its ``.json`` file, or to stdout with
``--json``): among other fields the 2x3 target->source ``matrix`` and the ``target_shape``
``[rows, cols]`` of the grid the aligned image lives on. :func:`parse_params` accepts

* any ``regtool align`` document (``matrix`` and ``target_shape``; ``source_shape``, when
  present, is the size an image must have to be warped with it);
* a hand-written document without ``matrix``: ``tx``, ``ty`` and ``theta`` (radians) or
  ``theta_deg``, in the public convention (rotation about the top-left pixel center), with
  ``target_shape``;
* a mapping of the same fields, e.g. one row of a results table.

Where a document holds both ``matrix`` and ``tx``, ``ty``, ``theta``, they must agree: a
document edited by hand in one place but not the other is refused rather than silently read one
way. Every problem is an :class:`regtool.io.ImageError` whose one-line message names the document
(its path, or ``<stdin>``). Reading a file or stdin is the caller's job; :func:`read_params`
reads a file for convenience.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .io import ImageError, read_text
from .resample import fill_problem
from .transform import map_points, rigid_matrix, rigid_params

__all__ = ["SavedTransform", "parse_params", "read_params"]

# How closely ``matrix`` and ``tx, ty, theta`` must agree when a document has both. regtool
# writes the matrix from the three numbers (cos and sin rounded once), so anything beyond
# round-off means one of them was changed.
_AGREE_PX = 1e-6
_AGREE_RAD = 1e-9
# Below this |det| the 2x2 block is taken as singular: no warp of a real image has it.
_MIN_DET = 1e-12


@dataclass(frozen=True)
class SavedTransform:
    """A transform read from a parameter document.

    Attributes
    ----------
    matrix : (3, 3) ndarray
        Target->source: ``aligned[y, x] = source(matrix @ [x, y, 1])``.
    target_shape : (int, int) or None
        ``(rows, cols)`` of the grid to warp onto; None when the document has none (enough to
        map points).
    source_shape : (int, int) or None
        ``(rows, cols)`` of the image the transform was found on, when recorded: the size an
        image must have to be warped with it.
    converged : bool or None
        The document's ``converged``, None when it has none.
    reason : str or None
        Why it did not converge, when it says.
    name : str
        The document's path, or ``<stdin>``: what messages name.
    """

    matrix: np.ndarray
    target_shape: tuple[int, int] | None
    source_shape: tuple[int, int] | None
    converged: bool | None
    reason: str | None
    name: str

    def check_image(self, path: str | os.PathLike, image: np.ndarray, fill: float = 0.0) -> None:
        """Refuse an image this transform cannot warp, before any work is done.

        Parameters
        ----------
        path : str or os.PathLike
            The image's file, for the message.
        image : ndarray
            The image (as :func:`regtool.io.read_image` returns it).
        fill : float
            The value of output pixels outside the image: it must fit the image's dtype.

        Raises
        ------
        regtool.io.ImageError
            The document has no ``target_shape``; the image's size differs from the recorded
            ``source_shape``; or ``fill`` is not finite and the image holds integers.
        """
        if self.target_shape is None:
            raise ImageError(self.name, _NO_TARGET_SHAPE)
        rows, cols = image.shape[:2]
        if self.source_shape is not None and (rows, cols) != self.source_shape:
            sr, sc = self.source_shape
            raise ImageError(
                path,
                f"image is {cols}x{rows} pixels but the transform in {self.name} was found on "
                f"a {sc}x{sr} source; warp an image of the source's size (another channel, "
                "a label image of the source)")
        problem = fill_problem(image.dtype, fill)
        if problem is not None:
            raise ImageError(path, problem)

    def warp(self, image: np.ndarray, *, interp: str = "cubic", fill: float = 0.0,
             threads: int | None = None) -> np.ndarray:
        """Resample ``image`` onto the target's grid, as ``regtool align`` resampled its source.

        Parameters
        ----------
        image : ndarray
            An image on the source's grid, ``(H, W)`` or ``(H, W, C)``, any dtype.
        interp : {"cubic", "linear", "nearest"}
            ``nearest`` for label images (it makes no new label values).
        fill : float
            Value of output pixels that map outside the image.
        threads : int, optional
            See :func:`regtool.warp`; the result does not depend on it.

        Returns
        -------
        ndarray
            ``target_shape`` (plus the channels), in the dtype of ``image``: byte for byte
            what :meth:`regtool.Result.warp` gives with the same arguments.

        Raises
        ------
        regtool.io.ImageError
            The document has no ``target_shape``.
        """
        from .resample import warp

        if self.target_shape is None:
            raise ImageError(self.name, _NO_TARGET_SHAPE)
        return warp(image, self.matrix, self.target_shape, interp=interp, fill=fill,
                    threads=threads)

    def map_points(self, xy: np.ndarray, *, inverse: bool = False) -> np.ndarray:
        """Map ``(N, 2)`` x, y points source -> target, or target -> source with ``inverse``.

        See :func:`regtool.transform.map_points`.
        """
        return map_points(self.matrix, xy, inverse=inverse)


_NO_TARGET_SHAPE = ('no "target_shape" [rows, cols]: the grid to warp onto, which regtool '
                    'align writes')


def _is_number(value: Any) -> bool:
    """A finite JSON number (an integer of 400 digits is not one a float can hold)."""
    # JSON's true and false arrive as bool, which Python counts as int.
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _decode(document: str | bytes, name: str) -> Any:
    if isinstance(document, bytes):
        try:
            document = document.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ImageError(name, "not a JSON parameter document (not UTF-8 text)") from None
    document = document.removeprefix("\ufeff")  # a byte-order mark, as some editors write
    if not document.strip():
        raise ImageError(name, "empty, not a JSON parameter document")

    def no_constant(word: str) -> Any:
        raise ValueError(word)

    try:
        return json.loads(document, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise ImageError(name, f"not valid JSON ({exc.msg} at line {exc.lineno} column "
                         f"{exc.colno})") from None
    except ValueError as exc:  # NaN, Infinity: not JSON, and never a usable number
        raise ImageError(name, f"not valid JSON ({exc} is not a JSON number)") from None
    except RecursionError:
        raise ImageError(name, "not valid JSON (nested too deeply)") from None


def _shape(doc: Mapping[str, Any], key: str, name: str) -> tuple[int, int] | None:
    value = doc.get(key)
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                       for v in value)):
        raise ImageError(name, f'"{key}" must be [rows, cols], two positive integers, '
                         f"not {_short(value)}")
    return int(value[0]), int(value[1])


def _matrix(value: Any, name: str) -> np.ndarray:
    rows_ok = (isinstance(value, list) and len(value) in (2, 3)
               and all(isinstance(r, list) and len(r) == 3 and all(_is_number(v) for v in r)
                       for r in value))
    if not rows_ok:
        raise ImageError(name, '"matrix" must be 2x3 finite numbers [[a, b, tx], '
                         f"[c, d, ty]], not {_short(value)}")
    m = np.array(value, dtype=float)
    if m.shape == (3, 3) and not np.array_equal(m[2], [0.0, 0.0, 1.0]):
        raise ImageError(name, f'"matrix" third row must be [0, 0, 1], not {_short(value[2])}')
    if abs(np.linalg.det(m[:2, :2])) < _MIN_DET:
        raise ImageError(name, '"matrix" is singular (it squashes the image to a line)')
    return np.vstack([m[:2], [0.0, 0.0, 1.0]])


def _rigid(doc: Mapping[str, Any], name: str) -> tuple[float, float, float] | None:
    """``(tx, ty, theta)`` from the document, None if it has none of them."""
    keys = ("tx", "ty", "theta", "theta_deg")
    present = [k for k in keys if doc.get(k) is not None]
    if not present:
        return None
    for key in present:
        if not _is_number(doc[key]):
            raise ImageError(name, f'"{key}" must be a number, not {_short(doc[key])}')
    missing = [k for k in ("tx", "ty") if k not in present]
    if "theta" not in present and "theta_deg" not in present:
        missing.append("theta")
    if missing:
        have = ", ".join(f'"{k}"' for k in present)
        raise ImageError(name, f'has {have} but no "{missing[0]}": a transform needs "tx", '
                         '"ty" and "theta" (radians) or "theta_deg"')
    theta = float(doc["theta"]) if "theta" in present else math.radians(doc["theta_deg"])
    if ("theta" in present and "theta_deg" in present
            and abs(math.radians(doc["theta_deg"]) - theta) > _AGREE_RAD):
        raise ImageError(name, f'"theta" ({doc["theta"]} rad) and "theta_deg" '
                         f'({doc["theta_deg"]} deg) disagree; remove one or make them agree')
    return float(doc["tx"]), float(doc["ty"]), theta


def parse_params(document: str | bytes | Mapping[str, Any], name: str, *,
                 need_target_shape: bool = True) -> SavedTransform:
    """Read a transform from a parameter document.

    Parameters
    ----------
    document : str, bytes or mapping
        The JSON text (as ``regtool align`` writes it), or the decoded object.
    name : str
        What messages call the document: its path, or ``<stdin>``.
    need_target_shape : bool
        Refuse a document without ``target_shape`` (needed to warp an image, not to map
        points).

    Returns
    -------
    SavedTransform

    Raises
    ------
    regtool.io.ImageError
        One line naming the document: empty, not JSON, not an object, no ``matrix`` (nor
        ``tx``, ``ty``, ``theta``), a matrix that is not 2x3 finite numbers or is singular,
        ``matrix`` and ``tx``/``ty``/``theta`` that disagree, a missing or malformed
        ``target_shape``, a malformed ``source_shape``.

    Examples
    --------
    >>> saved = parse_params('{"tx": 5, "ty": -2, "theta_deg": 0, "target_shape": [4, 6]}',
    ...                      "p.json")
    >>> saved.matrix[:2, 2]
    array([ 5., -2.])
    >>> saved.target_shape
    (4, 6)
    """
    doc = document if isinstance(document, Mapping) else _decode(document, name)
    if not isinstance(doc, Mapping):
        raise ImageError(name, f"not a regtool parameter document ({_kind(doc)}; expected an "
                         'object with "matrix" and "target_shape", as regtool align writes)')
    rigid = _rigid(doc, name)
    if doc.get("matrix") is not None:
        matrix = _matrix(doc["matrix"], name)
        if rigid is not None:
            expected = rigid_matrix(*rigid)
            _, _, theta = rigid_params(matrix)
            if (not np.allclose(matrix[:2], expected[:2], rtol=0.0, atol=_AGREE_PX)
                    or abs(math.remainder(theta - rigid[2], 2 * math.pi)) > _AGREE_RAD):
                raise ImageError(name, '"matrix" and "tx", "ty", "theta" disagree (edited by '
                                 'hand?); remove one or make them agree')
    elif rigid is not None:
        matrix = rigid_matrix(*rigid)
    else:
        raise ImageError(name, 'not a regtool parameter document: no "matrix" (nor "tx", '
                         '"ty", "theta"), the transform regtool align writes')
    target_shape = _shape(doc, "target_shape", name)
    if target_shape is None and need_target_shape:
        raise ImageError(name, _NO_TARGET_SHAPE)
    source_shape = _shape(doc, "source_shape", name)
    converged = doc.get("converged")
    reason = doc.get("reason")
    return SavedTransform(
        matrix=matrix, target_shape=target_shape, source_shape=source_shape,
        converged=converged if isinstance(converged, bool) else None,
        reason=reason if isinstance(reason, str) else None, name=name)


def read_params(path: str | os.PathLike, *, need_target_shape: bool = True) -> SavedTransform:
    """Read a parameter document from a file (see :func:`parse_params`).

    Raises
    ------
    regtool.io.ImageError
        The file cannot be read, or its document is refused (see :func:`parse_params`).
    """
    return parse_params(read_text(path), os.fspath(path), need_target_shape=need_target_shape)
