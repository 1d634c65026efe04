"""Peer registration methods, each returning a matrix in regtool's convention.

Every peer is a function ``(target, source) -> 3x3 ndarray`` (float32 2-D inputs) whose result
maps TARGET pixel (x, y) to SOURCE pixel (x, y), pixel centers at integers: the same contract as
``regtool.Result.matrix``. A peer raises :class:`PeerFailure` (or any exception) when it fails.

Directions, as read from each library's documentation and then verified on a synthesized pair
with a known matrix by :func:`direction_check` (the bench prints it at start-up):

* OpenCV ``findTransformECC(template, input, warp)`` maximises the correlation of
  ``template(x)`` with ``input(warp @ x)``: with template = target and input = source the warp
  already is our matrix. OpenCV puts pixel centers at integers, as we do.
* SimpleITK's registration transform maps FIXED physical points to MOVING physical points.
  With fixed = target, moving = source, origin 0 and spacing 1, physical = (column, row) index =
  our (x, y), so the transform's affine form is our matrix.
* pystackreg's ``StackReg.register(ref, mov)`` returns a 3x3 matrix that maps REF (x, y) to MOV
  (x, y) (``transform`` samples ``mov`` at ``tmat @ x``): with ref = target and mov = source it
  is our matrix unchanged.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

__all__ = [
    "PeerFailure",
    "PEERS",
    "available_peers",
    "configure_threads",
    "peer_versions",
    "ecc",
    "ecc_pyramid",
    "sitk_rigid",
    "stackreg_rigid",
    "ECC_CRITERIA",
    "ECC_GAUSS_FILT_SIZE",
    "ECC_COARSEST",
    "cpu_model",
]

#: Termination criteria of every ECC call: 100 iterations or a correlation increment < 1e-6.
ECC_CRITERIA = (100, 1e-6)
#: ``gaussFiltSize`` of findTransformECC (OpenCV's default: a 5x5 Gaussian on both images).
ECC_GAUSS_FILT_SIZE = 5
#: ``ecc-pyr`` halves with cv2.pyrDown while the smaller side exceeds this (coarsest ~64 px).
ECC_COARSEST = 96


class PeerFailure(RuntimeError):
    """A peer did not produce a transform (no convergence, exception, NaN)."""


Peer = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _as3(m2x3: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2] = np.asarray(m2x3, dtype=float)[:2]
    if not np.all(np.isfinite(out)):
        raise PeerFailure("non-finite matrix")
    return out


# --------------------------------------------------------------------------- OpenCV ECC


def _ecc_call(template: np.ndarray, inp: np.ndarray, warp: np.ndarray) -> np.ndarray:
    import cv2

    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, ECC_CRITERIA[0],
                ECC_CRITERIA[1])
    try:
        _, out = cv2.findTransformECC(template, inp, warp.astype(np.float32),
                                      cv2.MOTION_EUCLIDEAN, criteria, None,
                                      ECC_GAUSS_FILT_SIZE)
    except cv2.error as exc:  # raised when ECC diverges ("stopped before its convergence")
        text = str(exc)
        short = re.search(r"error: \((-?\d+:[^)]*)\)", text)
        raise PeerFailure(f"findTransformECC: {short.group(1) if short else text.strip()}"
                          ) from exc
    return out


def ecc(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """OpenCV ECC, MOTION_EUCLIDEAN, on the full-resolution images from the identity."""
    return _as3(_ecc_call(target, source, np.eye(2, 3, dtype=np.float32)))


def ecc_pyramid(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """OpenCV ECC, coarse to fine on a cv2.pyrDown pyramid (coarsest side ~64 px).

    ``cv2.pyrDown`` blurs with a 5x5 Gaussian and keeps the EVEN rows and columns: output pixel
    ``i`` is centred on input pixel ``2 i``, so ``x_k = x_0 / 2**k`` exactly (unlike 2x2 block
    averaging, which moves centers by half a pixel). A warp therefore moves from level k+1 to
    level k as ``S^-1 W S`` with ``S = diag(1/2, 1/2, 1)``: the rotation block is unchanged and
    the translation doubles -- what ECC users do by hand.
    """
    import cv2

    targets, sources = [target], [source]
    while min(targets[-1].shape) > ECC_COARSEST:
        targets.append(cv2.pyrDown(targets[-1]))
        sources.append(cv2.pyrDown(sources[-1]))
    warp = np.eye(2, 3, dtype=np.float32)
    for level in range(len(targets) - 1, -1, -1):
        warp = _ecc_call(targets[level], sources[level], warp)
        if level:
            warp = warp.copy()
            warp[:, 2] *= 2.0
    return _as3(warp)


# --------------------------------------------------------------------------- SimpleITK

#: Settings of the SimpleITK peer (also written to the README).
SITK_SETTINGS = {
    "metric": "MeanSquares (all pixels)",
    "optimizer": "RegularStepGradientDescent(learningRate=1.0, minStep=1e-4, "
                 "numberOfIterations=200, relaxationFactor=0.5)",
    "scales": "SetOptimizerScalesFromPhysicalShift()",
    "pyramid": "shrink 4/2/1, smoothing sigmas 2/1/0 (physical units = px)",
    "interpolator": "sitkLinear",
}


def sitk_rigid(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """SimpleITK rigid registration (Euler2DTransform about the image center)."""
    import SimpleITK as sitk

    fixed = sitk.GetImageFromArray(np.ascontiguousarray(target, dtype=np.float32))
    moving = sitk.GetImageFromArray(np.ascontiguousarray(source, dtype=np.float32))
    h, w = target.shape
    transform = sitk.Euler2DTransform()
    transform.SetCenter(((w - 1) / 2.0, (h - 1) / 2.0))
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=200, relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SetInitialTransform(transform, inPlace=True)
    try:
        reg.Execute(fixed, moving)
    except RuntimeError as exc:
        raise PeerFailure(f"SimpleITK: {str(exc).strip().splitlines()[-1]}") from exc
    # Euler2D: p -> R (p - c) + c + t, fixed -> moving.
    rot = np.array(transform.GetMatrix(), dtype=float).reshape(2, 2)
    center = np.array(transform.GetCenter(), dtype=float)
    trans = np.array(transform.GetTranslation(), dtype=float)
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = center + trans - rot @ center
    return _as3(m)


# --------------------------------------------------------------------------- pystackreg


def stackreg_rigid(target: np.ndarray, source: np.ndarray) -> np.ndarray:
    """pystackreg (TurboReg port), StackReg.RIGID_BODY, ``register(ref=target, mov=source)``.

    Quirk: pystackreg drops the last row and column of both images before registering
    (``ref[:-1, :-1]``); coordinates of the other pixels are unchanged.
    """
    from pystackreg import StackReg

    sr = StackReg(StackReg.RIGID_BODY)
    m = sr.register(target.astype(np.float64), source.astype(np.float64))
    return _as3(np.asarray(m, dtype=float))


# --------------------------------------------------------------------------- registry

PEERS: dict[str, tuple[str, Peer]] = {
    "ecc": ("cv2", ecc),
    "ecc-pyr": ("cv2", ecc_pyramid),
    "sitk": ("SimpleITK", sitk_rigid),
    "stackreg": ("pystackreg", stackreg_rigid),
}


def available_peers() -> dict[str, Peer]:
    """The peers whose library imports, by name."""
    import importlib

    found: dict[str, Peer] = {}
    for name, (module, fn) in PEERS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        found[name] = fn
    return found


def configure_threads(n: int) -> dict[str, str]:
    """Give every peer library ``n`` threads; return what was set, for the report."""
    done: dict[str, str] = {}
    try:
        import cv2

        cv2.setNumThreads(n)
        done["cv2.setNumThreads"] = str(cv2.getNumThreads())
    except ImportError:
        pass
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
        done["SimpleITK global default threads"] = str(
            sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())
    except ImportError:
        pass
    return done


def peer_versions() -> dict[str, str]:
    """Versions of the installed peer libraries."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in ("opencv-python-headless", "SimpleITK", "pystackreg"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def direction_check(peers: dict[str, Peer], case_target: np.ndarray, case_source: np.ndarray,
                    true: np.ndarray, error: Callable[[np.ndarray, np.ndarray], float],
                    tol: float = 0.1) -> list[tuple[str, bool, str]]:
    """Run each peer on a known pair; compare the matrix and its inverse with the truth.

    Returns ``(name, ok, message)``: ok when the error of the returned matrix is below ``tol``
    px; the message also gives the error of the inverse, which must be large (the check case
    has a rotation and a shift, so a wrong direction or a half-pixel origin shift shows).
    """
    results: list[tuple[str, bool, str]] = []
    for name, fn in peers.items():
        try:
            m = fn(case_target, case_source)
        except Exception as exc:  # any failure is reported, not raised
            results.append((name, False, f"failed: {exc}"))
            continue
        err = error(true, m)
        err_inv = error(true, np.linalg.inv(m))
        ok = err < tol
        results.append((name, ok, f"err {err:.3f} px (inverse would be {err_inv:.1f} px)"))
    return results


def degrees(matrix: np.ndarray) -> float:
    """Rotation of a rigid matrix, in degrees."""
    return math.degrees(math.atan2(matrix[1, 0] - matrix[0, 1], matrix[0, 0] + matrix[1, 1]))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's answer where that is missing)."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
