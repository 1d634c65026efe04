"""The ``regtool`` command line: a thin shell over the library (:mod:`regtool.pipeline`).

One small click module per command (:mod:`.align`) over shared options (:mod:`.options`) and
one error and exit-status wrapper (:mod:`.main`). It parses, reads, calls the library, writes and
prints; it never computes.
"""

from .main import cli, main
from .options import (
    DEFAULT_INIT,
    DEFAULT_METRIC,
    DEFAULT_OPTIMIZER,
    INIT_WORDS,
    INTERPOLATIONS,
    METRICS,
    OPTIMIZERS,
)

__all__ = ["cli", "main", "OPTIMIZERS", "METRICS", "DEFAULT_OPTIMIZER", "DEFAULT_METRIC",
           "INTERPOLATIONS", "INIT_WORDS", "DEFAULT_INIT"]
