"""Exceptions raised by regtool's library."""

from __future__ import annotations

__all__ = ["RegtoolError", "InputError"]


class RegtoolError(Exception):
    """Base class of regtool's exceptions."""


class InputError(RegtoolError, ValueError):
    """An input image cannot be registered (constant, too small, wrong shape, mostly NaN...).

    Attributes
    ----------
    which : str or None
        ``"target"``, ``"source"`` or None: which input is at fault, so a caller that knows the
        file names can name the file.
    """

    def __init__(self, message: str, which: str | None = None) -> None:
        super().__init__(message)
        self.which = which
