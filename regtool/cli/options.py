"""What every command shares: the registration options, the one-line failure, exit statuses.

Nothing here loads numpy or scipy, so ``regtool --help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

# The engine's names, repeated here so `regtool --version` and `--help` load neither numpy nor
# scipy; tests/test_cli.py checks they match regtool.register's.
OPTIMIZERS = ("gauss-newton", "scaled", "gd")
DEFAULT_OPTIMIZER = "gauss-newton"
METRICS = ("ssd", "ncc")
DEFAULT_METRIC = "ncc"
INTERPOLATIONS = ("cubic", "linear", "nearest")
INIT_WORDS = ("auto", "none")
DEFAULT_INIT = "auto"
# regtool.io.DEFAULT_MAX_PIXELS (2**28, 16384 x 16384), repeated for the same reason
DEFAULT_MAX_PIXELS = 2**28

EXIT_OK = 0
EXIT_NOT_CONVERGED = 1
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: the keyword names :func:`registration_options` adds to a command
REGISTRATION_KEYS = ("levels", "optimizer", "metric", "max_iter", "tol", "init", "min_overlap",
                     "interp", "fill")


class Failure(click.ClickException):
    """A one-line failure with its exit status: ``regtool: error: <message>``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def say_error(message: str) -> None:
    """Print ``regtool: error: <message>`` on stderr, on one line whatever it holds."""
    line = " ".join(str(message).split())
    click.echo(f"regtool: error: {line}", err=True)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class FrameBar:
    """tqdm bars on stderr over a stack's frames: over the mean pass, then over the frames
    written (``regtool stack``, ``regtool warp --transforms``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            from tqdm import tqdm

            desc = "mean frame" if stage == "mean" else "frames"
            self.bar = tqdm(total=total, desc=desc, unit="frame", file=sys.stderr,
                            leave=False, dynamic_ncols=True)
            self.stage = stage
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopSignals:
    """While active (``with``), SIGINT and SIGTERM are noted instead of stopping the process.

    The run polls it (``stopped``, or call it): it submits no new work, lets the running tasks
    end (their writes are atomic) and the command exits 130. With ``second_stops``, a second
    signal raises KeyboardInterrupt at once (a stack: nothing is kept anyway); without, it is
    noted too (a batch: the finished sources must still reach results.csv). Local workers
    ignore SIGINT themselves: Ctrl-C reaches the whole process group. Outside the main thread
    no handler can be set, and the signals act as usual.
    """

    def __init__(self, second_stops: bool = False) -> None:
        self.received: int | None = None
        self.second_stops = second_stops
        self._saved: dict[int, Any] = {}

    @property
    def stopped(self) -> bool:
        return self.received is not None

    def __call__(self) -> bool:
        return self.stopped

    def _note(self, number: int, frame: Any) -> None:
        if self.second_stops and self.received is not None:
            raise KeyboardInterrupt
        self.received = number

    def __enter__(self) -> StopSignals:
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self._saved[number] = signal.signal(number, self._note)
            except ValueError:  # not the main thread: leave the defaults
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._saved.items():
            signal.signal(number, handler)
        self._saved.clear()


class InitType(click.ParamType):
    """``auto``, ``none`` or ``TX,TY,DEG``: how the descent starts (see :func:`regtool.align`)."""

    name = "auto|none|TX,TY,DEG"

    def convert(self, value: Any, param: Any, ctx: Any) -> str | tuple[float, float, float]:
        if isinstance(value, tuple):
            return value
        word = str(value).strip().lower()
        if word in INIT_WORDS:
            return word
        parts = [p.strip() for p in str(value).split(",")]
        try:
            numbers = tuple(float(p) for p in parts)
        except ValueError:
            numbers = ()
        if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
            self.fail(
                f"{value!r} is neither 'auto', 'none' nor three finite numbers TX,TY,DEG "
                "(e.g. 12.5,-3,7)",
                param,
                ctx,
            )
        return numbers  # type: ignore[return-value]


def registration_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options of :func:`regtool.align` and of the output warp to a command.

    The command receives them under :data:`REGISTRATION_KEYS`; :func:`align_options` turns
    them into a :class:`regtool.pipeline.AlignOptions`.
    """
    decorators = [
        click.option("--levels", type=click.IntRange(min=1), metavar="N",
                     help="Pyramid levels. Default: so the coarsest side is 24 to 47 pixels."),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=DEFAULT_OPTIMIZER,
                     show_default=True, help="Per-level solver."),
        click.option(
            "--metric", type=click.Choice(METRICS), default=DEFAULT_METRIC, show_default=True,
            help="ncc: zero-mean normalized cross-correlation, insensitive to a gain and an "
                 "offset between the images' intensities (exposure, bleaching, another "
                 "camera); ssd: the plain mean squared difference, for images whose "
                 "intensities agree (biased otherwise, and then reported as not converged)."),
        click.option("--max-iter", type=click.IntRange(min=1), metavar="N",
                     help="Iteration cap per level. Default: 50 for gauss-newton, 300 "
                          "otherwise."),
        click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=1e-3,
                     show_default=True, metavar="PX",
                     help="Stop when an update moves no pixel by more than PX pixels."),
        click.option(
            "--init", type=InitType(), default=DEFAULT_INIT, show_default=True,
            metavar="auto|none|TX,TY,DEG",
            help="Where the descent starts. auto: a global search for the rotation (any "
                 "angle) and the shift (even large ones); none: centers matched, no "
                 "rotation (for images known to be nearly aligned); TX,TY,DEG: that "
                 "transform (tx, ty in px, theta in degrees), e.g. a previous result."),
        click.option("--min-overlap", type=click.FloatRange(min=0, max=1, min_open=True),
                     default=0.25, show_default=True, metavar="FRACTION",
                     help="Give up (not converged, exit 1) when less than this fraction of "
                          "the target's usable pixels maps inside the source."),
        click.option("--interp", type=click.Choice(INTERPOLATIONS), default="cubic",
                     show_default=True, help="Interpolation of the aligned image."),
        click.option("--fill", type=float, default=0.0, show_default=True, metavar="VALUE",
                     help="Value of aligned pixels that fall outside the source (clipped to "
                          "the image's type)."),
    ]
    for decorate in reversed(decorators):
        command = decorate(command)
    return command


def max_pixels_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--max-pixels N``: the largest image read (``max_pixels`` of
    :func:`regtool.io.read_image`), refused from its header before it is decoded."""
    return click.option(
        "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS,
        show_default=True, metavar="N",
        help="Refuse an image (or mask, or frame) of more than N pixels, from its header, "
             "before decoding it. The default is 16384 x 16384.")(command)


def align_options(values: dict[str, Any]) -> Any:
    """The :class:`regtool.pipeline.AlignOptions` of a command's :func:`registration_options`.

    Removes those keys from ``values``.
    """
    from regtool.pipeline import AlignOptions

    return AlignOptions(**{key: values.pop(key) for key in REGISTRATION_KEYS})
