"""``regtool warp``: apply a saved transform to another image, or to a table of points."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from .options import (
    DEFAULT_MAX_PIXELS,
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    INTERPOLATIONS,
    Failure,
    max_pixels_option,
    stderr_is_terminal,
)

#: What messages call the parameter document read from ``--params -``.
STDIN_NAME = "<stdin>"

_WARP_EPILOG = """\b
What it does:
  IMAGE is resampled onto the target's grid recorded in PARAMS (its "matrix" and
  "target_shape"), exactly as regtool align resampled its source: with the same
  --interp and --fill, warping align's SOURCE gives align's aligned image byte
  for byte. IMAGE must have the source's size ("source_shape"): another channel,
  another exposure, a label image (use --interp nearest: cubic and linear make
  label values that do not exist). Label images of any integer type are fine.

\b
Points:
  --points IN.csv maps the x, y columns of a table (a header line is required;
  the columns named x and y in any case; comma, tab or semicolon; every other
  column kept as it is). By default a point measured in the SOURCE image goes
  to where it lies in the TARGET's frame, which is the aligned image's: tracks
  followed on the raw frames land on the aligned ones. --inverse maps the other
  way, TARGET (aligned) -> SOURCE. In matrix terms, with M the JSON's "matrix"
  (source = M [x, y, 1]): by default p -> M^-1 p, with --inverse p -> M p.

\b
Parameters:
  Any regtool align JSON (its file, or '-' for stdin), or a hand-written one:
  {"tx": 3.5, "ty": -2, "theta_deg": 1.5, "target_shape": [512, 512]}
  ("target_shape" is not needed for --points). A transform recorded as not
  converged is applied anyway, with a warning and exit status 1.

\b
Stacks:
  --transforms TABLE (instead of --params) applies the table regtool stack wrote
  to another stack of the same frame count and frame size, frame k resampled
  with the table's matrix of frame k; the output keeps the input's layout and
  type (default ./<stem>_warped.tif, or ./<name>_warped/ for a folder).

\b
Outputs:
  By default ./<stem>_warped<ext> (<stem>, <ext> of IMAGE or IN.csv; as in
  regtool align, .png or .tif when IMAGE's format cannot hold the result).
  Written atomically; an input is never overwritten.

\b
Examples:
  regtool align t.png s.png
  regtool warp s_red.png --params s_aligned.json -o red_aligned.png
  regtool warp s_labels.png --params s_aligned.json --interp nearest
  regtool align t.png s.png --json | regtool warp s_red.png --params - -o red_aligned.png
  regtool warp --points tracks.csv --params s_aligned.json -o tracks_aligned.csv
  regtool stack green.tif -o green_aligned.tif
  regtool warp red.tif --transforms green_aligned_transforms.csv -o red_aligned.tif
"""


def _read_params(params: str, need_target_shape: bool) -> Any:
    """The saved transform from a file, or from stdin for ``-``."""
    from regtool import io
    from regtool.params import parse_params, read_params

    if params != "-":
        return read_params(params, need_target_shape=need_target_shape)
    stream = sys.stdin
    if stream is None:
        raise Failure("--params - reads the parameter document from stdin, which is closed")
    if stream.isatty():
        raise Failure("--params - reads the parameter document from stdin, which is a "
                      "terminal; pipe one in (regtool align ... --json | regtool warp ...)")
    # Bytes when there are bytes to read: parse_params decodes them as UTF-8 (with or without
    # a byte-order mark), whatever the locale's encoding.
    raw = getattr(stream, "buffer", None)
    data = raw.read() if raw is not None else stream.read()
    try:
        return parse_params(data, STDIN_NAME, need_target_shape=need_target_shape)
    except io.ImageError as exc:
        if not data.strip():
            raise io.ImageError(STDIN_NAME, f"{exc.problem} (did the command before the "
                                "pipe fail?)") from None
        raise


def _default_points_output(points: str) -> str:
    p = Path(points)
    return f"{p.stem}_warped{p.suffix or '.csv'}"


def _shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[1]}x{shape[0]}"


@click.command(
    "warp",
    short_help="Apply a saved transform to another image, or to x, y points.",
    epilog=_WARP_EPILOG,
    context_settings={"max_content_width": 100},
)
@click.argument("image", metavar="[IMAGE]", required=False)
@click.option("--params", "params", metavar="FILE|-",
              help="The transform: a regtool align JSON, or '-' to read it from stdin.")
@click.option("--transforms", "transforms", metavar="TABLE",
              help="Instead of --params: a transforms table written by regtool stack (.csv or "
                   ".json), applied frame by frame to the stack IMAGE (a TIFF, a folder of "
                   "frames or a glob) of the same frame count and size.")
@click.option("-o", "--output", metavar="OUT",
              help="Warped image (.png, .tif or .jpg), or with --points the mapped table. "
                   "Default: ./<stem>_warped<ext>.")
@click.option("--interp", type=click.Choice(INTERPOLATIONS), default="cubic",
              show_default=True, help="Interpolation; nearest for label images.")
@click.option("--fill", type=float, default=0.0, show_default=True, metavar="VALUE",
              help="Value of pixels that fall outside IMAGE (clipped to its type).")
@click.option("--points", "points", metavar="IN.csv",
              help="Map the x, y columns of this table instead of warping an image.")
@click.option("--inverse", is_flag=True,
              help="With --points: map TARGET (aligned) -> SOURCE instead of SOURCE -> TARGET.")
@max_pixels_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def warp_command(
    ctx: click.Context,
    image: str | None,
    params: str | None,
    transforms: str | None,
    output: str | None,
    interp: str,
    fill: float,
    points: str | None,
    inverse: bool,
    max_pixels: int,
    quiet: bool,
) -> int:
    """Apply the transform saved by regtool align to IMAGE, or to the points of --points.

    IMAGE (an image of the source's size) is resampled onto the target's grid, as align
    resampled the source.
    """
    if (params is None) == (transforms is None):
        raise click.UsageError("give either --params FILE|- or --transforms TABLE (one of "
                               "them)", ctx)
    if transforms is not None:
        if points is not None or inverse or image is None:
            raise click.UsageError("--transforms applies a stack's table to a STACK: give the "
                                   "stack, and neither --points nor --inverse", ctx)
        return _warp_stack(image, transforms, output, interp, fill, quiet, max_pixels)
    assert params is not None
    if (image is None) == (points is None):
        raise click.UsageError("give either IMAGE or --points IN.csv (one of them)", ctx)
    if points is not None:
        for name in ("interp", "fill", "max_pixels"):
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                flag = "--" + name.replace("_", "-")
                raise click.UsageError(f"{flag} applies to images, not to --points", ctx)
        return _warp_points(points, params, output, inverse, quiet)
    if inverse:
        raise click.UsageError("--inverse applies to --points only", ctx)
    assert image is not None
    return _warp_image(image, params, output, interp, fill, quiet, max_pixels)


def _inputs(path: str, params: str) -> list[str]:
    return [path] + ([params] if params != "-" else [])


def _warn_not_converged(saved: Any, quiet: bool) -> int:
    if saved.converged is not False:
        return EXIT_OK
    if not quiet:
        why = f": {saved.reason}" if saved.reason else ""
        click.echo(f"regtool: the transform in {saved.name} did not converge{why}; "
                   "output written anyway", err=True)
    return EXIT_NOT_CONVERGED


def _warp_image(image: str, params: str, output: str | None, interp: str, fill: float,
                quiet: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    from regtool import io

    try:
        saved = _read_params(params, need_target_shape=True)
        data = io.read_image(image, max_pixels=max_pixels)
        saved.check_image(image, data, fill)
        channels = 1 if data.ndim == 2 else int(data.shape[-1])
        out = output if output is not None else os.fspath(
            io.default_output_path(image, data.dtype, channels, tag="warped"))
        io.check_output_path(out, _inputs(image, params), dtype=data.dtype, channels=channels)
        warped = saved.warp(data, interp=interp, fill=fill)
        io.write_image(out, warped)
    except io.ImageError as exc:
        raise Failure(str(exc)) from None
    if not quiet:
        click.echo(f"warped {image} onto the {_shape_text(saved.target_shape)} target grid of "
                   f"{saved.name} ({interp}): {out}")
    return _warn_not_converged(saved, quiet)


def _warp_stack(stack_path: str, table: str, output: str | None, interp: str, fill: float,
                quiet: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    from regtool import io
    from regtool import stack as stacks

    from .options import FrameBar, StopSignals

    bar = FrameBar(enabled=not quiet and stderr_is_terminal())
    signals = StopSignals(second_stops=True)
    try:
        out = output if output is not None else stacks.default_output(
            stack_path, tag="warped", max_pixels=max_pixels)
        with signals:
            stacks.apply_table(stack_path, table, out, interp=interp, fill=fill, progress=bar,
                               stop=signals, max_pixels=max_pixels)
    except stacks.Interrupted:
        raise KeyboardInterrupt from None
    except io.ImageError as exc:
        raise Failure(str(exc)) from None
    finally:
        bar.close()
    if not quiet:
        click.echo(f"warped the frames of {stack_path} with the transforms of {table} "
                   f"({interp}): {out}")
    return EXIT_OK


def _warp_points(points: str, params: str, output: str | None, inverse: bool,
                 quiet: bool) -> int:
    from regtool import io
    from regtool.points import read_points, write_points

    try:
        saved = _read_params(params, need_target_shape=False)
        table = read_points(points)
        out = output if output is not None else _default_points_output(points)
        io.check_output_path(out, _inputs(points, params))
        write_points(out, table.with_xy(saved.map_points(table.xy, inverse=inverse)))
    except io.ImageError as exc:
        raise Failure(str(exc)) from None
    if not quiet:
        way = "target -> source" if inverse else "source -> target"
        count = len(table.rows)
        click.echo(f"mapped {count} point{'s' if count != 1 else ''} of {points} "
                   f"({way}) with {saved.name}: {out}")
    return _warn_not_converged(saved, quiet)
