"""regtool: rigid image registration (rotation + translation), coarse-to-fine and sub-pixel.

>>> import regtool
>>> result = regtool.align(target, source)          # doctest: +SKIP
>>> result.tx, result.ty, result.theta_deg          # doctest: +SKIP
>>> aligned = result.warp(source)                    # doctest: +SKIP

``result.matrix`` maps target pixel (x, y) to source pixel (x, y); see the README.
"""

from __future__ import annotations

from ._version import __version__
from .errors import InputError, RegtoolError
from .register import LevelRecord, Result, align
from .resample import warp

__all__ = ["align", "warp", "Result", "LevelRecord", "InputError", "RegtoolError", "__version__"]
