"""What the command-line tests share: running ``regtool`` in-process and looking at folders."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner

from regtool.cli import cli


def run(*args: Any, input: bytes | str | None = None) -> Any:
    """``regtool ARGS...`` through click's runner: its ``exit_code``, ``output``, ``stderr``."""
    return CliRunner().invoke(cli, [os.fspath(a) if isinstance(a, os.PathLike) else str(a)
                                    for a in args], input=input)


def listing(folder: Path) -> list[str]:
    """The names in ``folder``, sorted (to show that nothing was written)."""
    return sorted(p.name for p in Path(folder).iterdir())


def tree(folder: Path) -> list[str]:
    """Every path below ``folder``, relative to it, sorted."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def as_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as 8-bit, rounded and clipped."""
    return np.clip(image * 255, 0, 255).round().astype(np.uint8)
