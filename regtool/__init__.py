"""regtool: rigid image registration (rotation + translation), coarse-to-fine and sub-pixel.

>>> import regtool
>>> result = regtool.align(target, source)          # doctest: +SKIP
>>> result.tx, result.ty, result.theta_deg          # doctest: +SKIP
>>> aligned = result.warp(source)                    # doctest: +SKIP
>>> regtool.register_stack("movie.tif", reference="previous")  # doctest: +SKIP

``result.matrix`` maps target pixel (x, y) to source pixel (x, y); see the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .batch import plan_batch, run_batch
    from .errors import InputError, RegtoolError
    from .params import read_params
    from .pipeline import AlignOptions
    from .register import align
    from .resample import warp
    from .result import IterationRecord, LevelRecord, Result
    from .stack import apply_table, register_stack
    from .uncertainty import Uncertainty

__all__ = ["align", "warp", "Result", "LevelRecord", "IterationRecord", "Uncertainty",
           "InputError", "RegtoolError", "AlignOptions", "read_params", "register_stack",
           "apply_table", "plan_batch", "run_batch", "__version__"]

# The public names load on first use, so `regtool --version` and `--help` never pay for
# numpy and scipy.
_WHERE = {
    "align": "register", "Result": "result", "LevelRecord": "result", "warp": "resample",
    "IterationRecord": "result",
    "Uncertainty": "uncertainty",
    "InputError": "errors", "RegtoolError": "errors",
    # many images: batches, stacks, saved transforms
    "AlignOptions": "pipeline", "read_params": "params", "register_stack": "stack",
    "apply_table": "stack", "plan_batch": "batch", "run_batch": "batch",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
