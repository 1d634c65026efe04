"""The ``regtool`` command line: a thin shell over :func:`regtool.align` and :mod:`regtool.io`.

It parses options, reads the images, calls the library, writes the outputs and prints. It never
computes. Exit statuses:

* 0 -- registered and converged; the aligned image and the JSON parameters are written.
* 1 -- the registration ran but did not converge or found no match (unrelated images, too
  little overlap; the outputs are still written, with ``"converged": false`` and the
  ``"reason"``), or regtool stopped on an unexpected internal error (one line on stderr,
  nothing written).
* 2 -- bad usage or bad input, or an output that cannot be written: one line
  ``regtool: error: <file>: <problem>`` on stderr, nothing written.
* 130 -- interrupted (Ctrl-C); nothing written.

Set ``REGTOOL_DEBUG=1`` to get a traceback instead of the one-line internal error.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ._version import __version__

# The engine's names, repeated here so `regtool --version` and `--help` load neither numpy nor
# scipy; tests/test_cli.py checks they match regtool.register's.
OPTIMIZERS = ("gauss-newton", "scaled", "gd")
DEFAULT_OPTIMIZER = "gauss-newton"
METRICS = ("ssd", "ncc")
DEFAULT_METRIC = "ncc"

__all__ = ["cli", "main"]

INTERPOLATIONS = ("cubic", "linear", "nearest")
INIT_WORDS = ("auto", "none")
DEFAULT_INIT = "auto"

EXIT_OK = 0
EXIT_NOT_CONVERGED = 1
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_GROUP_EPILOG = """\b
Examples:
  regtool align fixed.png moving.png
      writes moving_aligned.png and moving_aligned.json here
  regtool align fixed.tif moving.tif -o out/aligned.tif --params out/p.json
  regtool align a.png b.png --json > params.json
  regtool align a.png b.png --init 12.5,-3,7 --optimizer scaled
  regtool align a.tif b.tif --target-mask a_bar.png --source-mask b_bar.png
      leaves out what the masks paint black (e.g. a scale bar)

Run 'regtool align --help' for every option. Exit status: 0 converged, 1 did not
converge or the images do not match (outputs written anyway) or internal error,
2 bad usage or input, 130 interrupted.
"""

_ALIGN_EPILOG = """\b
Outputs:
  By default the aligned image goes to ./<stem>_aligned<ext> and the parameters to
  ./<stem>_aligned.json, where <stem> and <ext> are the SOURCE's. When the source's
  format cannot hold the aligned image (or regtool cannot write it, e.g. .gif), the
  extension becomes .png, or .tif when PNG cannot hold it either. With -o, the
  parameters go beside OUT_IMAGE with the extension .json unless --params says
  otherwise. Outputs are written atomically, both or neither.

\b
Masks:
  --target-mask and --source-mask name images of the target's and the source's
  size (any type regtool reads) that say which pixels to use: nonzero (white) =
  use, 0 (black) = leave out, e.g. a scale bar, a time stamp, a black border or
  a saturated area. A color mask uses a pixel when any of R, G, B is nonzero; a
  fully transparent pixel is never used; a JPEG mask uses values above 127
  (JPEG's black is seldom exactly 0).

\b
Conventions:
  Pixel (x, y) is image[y, x], (0, 0) the center of the top-left pixel. The
  matrix maps TARGET pixels to SOURCE pixels: aligned[y, x] = source(M [x, y, 1]),
  M = [[cos t, -sin t, tx], [sin t, cos t, ty]].

\b
Examples:
  regtool align target.png source.png
  regtool align target.png source.png -o out/aligned.png --params out/params.json
  regtool align t.tif s.tif --metric ssd --levels 5 --tol 0.01 --quiet
  regtool align t.png s.png --init=-4.5,10,2.5 --json
  regtool align t.png s.png --init none      # nearly aligned already: no global search
  regtool align t.png s.png --target-mask no_scale_bar.png --source-mask no_scale_bar.png
  regtool align t.png s.png --min-overlap 0.1
"""


class _Failure(click.ClickException):
    """A one-line failure with its exit status: ``regtool: error: <message>``."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _say_error(message: str) -> None:
    # One line, whatever the message holds.
    line = " ".join(str(message).split())
    click.echo(f"regtool: error: {line}", err=True)


class _RegtoolGroup(click.Group):
    """A group whose every failure is one line on stderr and an exit status, never a traceback.

    Overriding ``main`` (rather than wrapping it) makes click's test runner see exactly what the
    console script does.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if prog_name is None:
            prog_name = "regtool"
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx is not None else "")
            code = EXIT_OK
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" (try '{exc.ctx.command_path} --help')"
            _say_error(exc.format_message() + hint)
            code = EXIT_USAGE
        except click.ClickException as exc:
            _say_error(exc.format_message())
            code = exc.exit_code
        except (click.Abort, KeyboardInterrupt):
            click.echo("regtool: interrupted", err=True)
            code = EXIT_INTERRUPTED
        except Exception as exc:
            if os.environ.get("REGTOOL_DEBUG"):
                raise
            detail = str(exc).strip() or "(no message)"
            click.echo(
                " ".join(f"regtool: internal error: {type(exc).__name__}: {detail} "
                         "(set REGTOOL_DEBUG=1 for a traceback; please report it)".split()),
                err=True,
            )
            code = EXIT_INTERNAL
        if not isinstance(code, int):
            code = EXIT_OK
        if standalone_mode:
            sys.exit(code)
        return code


class _InitType(click.ParamType):
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


@click.group(
    cls=_RegtoolGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_GROUP_EPILOG,
)
@click.version_option(__version__, "--version", prog_name="regtool", message="%(prog)s %(version)s")
def cli() -> None:
    """Rigid image registration: rotation + translation, coarse-to-fine, sub-pixel.

    Aligns a SOURCE image to a TARGET image and writes the aligned image (the source resampled
    on the target's grid) and the transform as JSON.
    """


def _input_path(which: str | None, target: str, source: str) -> str | None:
    return {"target": target, "source": source}.get(which or "")


def _read_mask(path: str | None, image: Any, which: str, image_path: str) -> Any:
    """The mask at ``path`` as a bool (H, W) array of ``image``'s size, or None."""
    from regtool import io

    if path is None:
        return None
    try:
        return io.read_mask(path, image.shape[:2], f"the {which} {image_path}")
    except io.ImageError as exc:
        raise _Failure(str(exc)) from None


def _channels(image: Any) -> int:
    return 1 if image.ndim == 2 else int(image.shape[-1])


class _LevelBar:
    """A tqdm bar over pyramid levels on stderr, created at the first report."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, record: Any, index: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="levels", unit="level", file=sys.stderr,
                            leave=False, dynamic_ncols=True)
        self.bar.set_postfix_str(
            f"level {record.level} {record.shape[1]}x{record.shape[0]}: "
            f"{record.iterations} it, loss {record.loss:.3g}",
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _number(value: Any, spec: str) -> str:
    return "n/a" if not isinstance(value, int | float) else format(value, spec)


def _percent(value: Any) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{100 * value:.1f} %"


def _init_text(init: dict[str, Any]) -> str:
    method = init.get("method", "?")
    where = (f"{_number(init.get('tx'), '+.2f')}, {_number(init.get('ty'), '+.2f')} px, "
             f"{_number(init.get('theta_deg'), '+.2f')} deg")
    if method == "auto":
        extra = []
        if isinstance(init.get("candidates"), int):
            extra.append(f"{init['candidates']} candidates")
        if isinstance(init.get("time_s"), int | float):
            extra.append(f"{init['time_s']:.2f} s")
        more = f" ({', '.join(extra)})" if extra else ""
        return f"global search{more}: {where}"
    if method == "given":
        return f"given: {where}"
    if method == "none":
        return f"centers matched: {where}"
    return f"{method}: {where}"


def _summary(doc: dict[str, Any], out_image: str, out_params: str) -> str:
    loss = doc.get("loss")
    loss_text = "n/a" if loss is None else f"{loss:.6g}"
    cx, cy = doc["center"]
    sx, sy = doc["shift"]
    n_levels = len(doc.get("levels", []))
    if doc["converged"]:
        status = "yes"
    else:
        status = f"NO: {doc.get('reason') or 'unknown reason'}"
    bars = doc.get("uncertainty") or {}
    sig_t, sig_s = bars.get("theta_deg"), bars.get("shift")
    theta_pm = f" ± {sig_t:.4f}" if isinstance(sig_t, int | float) else ""
    shift_pm = (f" (± {sig_s[0]:.4f}, ± {sig_s[1]:.4f})"
                if isinstance(sig_s, list) and len(sig_s) == 2 else "")
    lines = [
        f"theta      {doc['theta_deg']:+.4f}{theta_pm} deg ({doc['theta']:+.6f} rad)",
        f"tx, ty     {doc['tx']:+.4f}, {doc['ty']:+.4f} px (rotation about pixel (0, 0))",
        f"shift      {sx:+.4f}, {sy:+.4f}{shift_pm} px (rotation about the center "
        f"{cx:g}, {cy:g})",
        f"loss       {loss_text} ({doc['metric']}), overlap {_percent(doc.get('overlap'))}",
    ]
    match = []
    if "ncc" in doc:
        match.append(f"ncc {_number(doc['ncc'], '.4f')}")
    if "detail_ncc" in doc:
        match.append(f"detail ncc {_number(doc['detail_ncc'], '.4f')}")
    if "residual" in doc:
        match.append(f"residual {_number(doc['residual'], '.4g')} (RMS)")
    if match:
        lines.append(f"match      {', '.join(match)} over the overlap")
    if isinstance(bars.get("endpoint_px"), int | float):
        lines.append(f"error      {bars['endpoint_px']:.4f} px expected (mean endpoint error over "
                     "the target; ± are 1-sigma standard errors)")
    elif bars:
        lines.append(f"error      no error bars: {bars.get('reason') or 'not estimated'}")
    init = doc.get("init")
    if isinstance(init, dict):
        lines.append(f"start      {_init_text(init)}")
    lines += [
        f"converged  {status}",
        f"time       {doc['time_s']:.2f} s ({doc['optimizer']}, {n_levels} levels)",
        f"aligned    {out_image}",
        f"params     {out_params}",
    ]
    return "\n".join(lines)


@cli.command(
    "align",
    short_help="Align SOURCE to TARGET; write the aligned image and the parameters.",
    epilog=_ALIGN_EPILOG,
    context_settings={"max_content_width": 100},
)
@click.argument("target", metavar="TARGET")
@click.argument("source", metavar="SOURCE")
@click.option("-o", "--output", metavar="OUT_IMAGE",
              help="Aligned image (.png, .tif or .jpg). Default: ./<source stem>_aligned<ext>.")
@click.option("--params", metavar="OUT_JSON",
              help="Parameter file. Default: OUT_IMAGE with the extension .json.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON document on stdout instead of the summary.")
@click.option("--levels", type=click.IntRange(min=1), metavar="N",
              help="Pyramid levels. Default: so the coarsest side is 24 to 47 pixels.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=DEFAULT_OPTIMIZER,
              show_default=True, help="Per-level solver.")
@click.option("--metric", type=click.Choice(METRICS), default=DEFAULT_METRIC, show_default=True,
              help="ncc: zero-mean normalized cross-correlation, insensitive to a gain and an "
                   "offset between the images' intensities (exposure, bleaching, another "
                   "camera); ssd: the plain mean squared difference, for images whose "
                   "intensities agree (biased otherwise, and then reported as not converged).")
@click.option("--max-iter", type=click.IntRange(min=1), metavar="N",
              help="Iteration cap per level. Default: 50 for gauss-newton, 300 otherwise.")
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), default=1e-3,
              show_default=True, metavar="PX",
              help="Stop when an update moves no pixel by more than PX pixels.")
@click.option("--init", type=_InitType(), default=DEFAULT_INIT, show_default=True,
              metavar="auto|none|TX,TY,DEG",
              help="Where the descent starts. auto: a global search for the rotation (any "
                   "angle) and the shift (even large ones); none: centers matched, no "
                   "rotation (for images known to be nearly aligned); TX,TY,DEG: that "
                   "transform (tx, ty in px, theta in degrees), e.g. a previous result.")
@click.option("--target-mask", metavar="FILE",
              help="Image of the target's size: nonzero = use the pixel, 0 = leave it out "
                   "(e.g. a scale bar or a time stamp).")
@click.option("--source-mask", metavar="FILE",
              help="The same for the source, of the source's size.")
@click.option("--min-overlap", type=click.FloatRange(min=0, max=1, min_open=True),
              default=0.25, show_default=True, metavar="FRACTION",
              help="Give up (not converged, exit 1) when less than this fraction of the "
                   "target's usable pixels maps inside the source.")
@click.option("--interp", type=click.Choice(INTERPOLATIONS), default="cubic",
              show_default=True, help="Interpolation of the aligned image.")
@click.option("--fill", type=float, default=0.0, show_default=True, metavar="VALUE",
              help="Value of aligned pixels that fall outside the source (clipped to the "
                   "image's type).")
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing but errors (and the JSON document with --json).")
def align_command(
    target: str,
    source: str,
    output: str | None,
    params: str | None,
    as_json: bool,
    levels: int | None,
    optimizer: str,
    metric: str,
    max_iter: int | None,
    tol: float,
    init: str | tuple[float, float, float],
    target_mask: str | None,
    source_mask: str | None,
    min_overlap: float,
    interp: str,
    fill: float,
    quiet: bool,
) -> int:
    """Align SOURCE to TARGET with a rigid transform (rotation + translation).

    TARGET is the reference; SOURCE is resampled onto TARGET's grid. Both may be gray, RGB or
    RGBA, 8/16-bit or float, of different sizes. The estimate uses their luminance.
    """
    import regtool
    from regtool import io

    try:
        target_image = io.read_image(target)
        source_image = io.read_image(source)
    except io.ImageError as exc:
        raise _Failure(str(exc)) from None
    target_used = _read_mask(target_mask, target_image, "target", target)
    source_used = _read_mask(source_mask, source_image, "source", source)
    inputs = [p for p in (target, source, target_mask, source_mask) if p is not None]

    channels = _channels(source_image)
    if not math.isfinite(fill) and source_image.dtype.kind != "f":
        raise _Failure(f"--fill {fill} cannot be stored in a {source_image.dtype.name} image; "
                       "give a finite value")
    out_image = output if output is not None else os.fspath(
        io.default_output_path(source, source_image.dtype, channels))
    out_params = params if params is not None else os.fspath(Path(out_image).with_suffix(".json"))
    try:
        io.check_output_path(out_image, inputs, dtype=source_image.dtype, channels=channels)
        io.check_output_path(out_params, inputs)
    except io.ImageError as exc:
        raise _Failure(str(exc)) from None
    if os.path.realpath(out_image) == os.path.realpath(out_params):
        raise _Failure(f"{out_params}: the parameter file would overwrite the aligned image; "
                       "give --params another name")

    bar = _LevelBar(enabled=not quiet and _stderr_is_terminal())
    try:
        result = regtool.align(
            target_image, source_image, levels=levels, optimizer=optimizer, metric=metric,
            max_iter=max_iter, tol=tol, init=init, min_overlap=min_overlap,
            target_mask=target_used, source_mask=source_used, progress=bar,
        )
    except regtool.InputError as exc:
        path = _input_path(exc.which, target, source)
        if str(exc).startswith("the mask"):
            # e.g. "the mask leaves only 12 usable pixels": the mask file is at fault.
            path = _input_path(exc.which, target_mask or target, source_mask or source)
        raise _Failure(f"{path}: {exc}" if path else str(exc)) from None
    finally:
        bar.close()

    aligned = result.warp(source_image, interp=interp, fill=fill)
    doc: dict[str, Any] = {"target": target, "source": source, "output": out_image,
                           "target_mask": target_mask, "source_mask": source_mask}
    doc.update(result.to_dict())

    try:
        with io.OutputSet() as outputs:
            outputs.write_image(out_image, aligned)
            outputs.write_json(out_params, doc)
    except io.ImageError as exc:
        raise _Failure(str(exc)) from None

    if as_json:
        click.echo(io.dumps_json(doc), nl=False)
    elif not quiet:
        click.echo(_summary(doc, out_image, out_params))
    if not result.converged:
        if not quiet:
            click.echo(f"regtool: registration did not converge: {result.reason}; "
                       "outputs written anyway", err=True)
        return EXIT_NOT_CONVERGED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (the ``regtool`` console script and ``python -m regtool``).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; by default ``sys.argv[1:]``.

    Returns
    -------
    int
        Does not return when run as a script: exits with the status described in this
        module's docstring.
    """
    return cli.main(args=list(argv) if argv is not None else None, prog_name="regtool")
