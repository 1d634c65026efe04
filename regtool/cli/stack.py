"""``regtool stack``: align the frames of a time-lapse stack to a reference."""

from __future__ import annotations

import os
from typing import Any

import click

from .options import (
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    Failure,
    FrameBar,
    StopSignals,
    align_options,
    max_pixels_option,
    registration_options,
    stderr_is_terminal,
)

REFERENCE_WORDS = ("first", "previous", "mean")
#: held frames listed one per line in the summary before "... and N more"
SHOWN_HELD = 10

_STACK_EPILOG = """\b
Input:
  A multi-page TIFF (plain, BigTIFF, ImageJ hyperstack with T, Z and C axes), a
  folder of frames (.png, .tif, .jpg...; natural order: f2 before f10), or a
  quoted glob such as 'run1/t*.png'.

\b
Outputs:
  The aligned stack: a TIFF input gives a TIFF of the same axes, dtype, ImageJ
  metadata and pixel size, by default ./<stem>_aligned.tif; a folder or glob
  gives a folder of frames with the same names, by default ./<name>_aligned/
  (or a multi-page TIFF with -o OUT.tif). The transforms table goes beside it
  as <OUT stem>_transforms.csv and .json unless --table says otherwise: per
  frame its index, status (reference, ok, held), converged, reason, the matrix
  to the reference, tx, ty, theta_deg, the shift about the center, ncc and the
  expected error (px). Written atomically: an interrupted or failed run leaves
  nothing.

\b
References (frames and channels are numbered from 0, as in the table):
  first     every frame to frame 0
  N         every frame to frame N
  mean      every frame to the mean frame (one extra pass over the stack)
  previous  each frame to its predecessor, the pairs in parallel, composed in
            order; the same result as a serial run, exactly

\b
Failures:
  A frame that cannot be registered (blank...) or does not converge is held:
  resampled with the transform of the last good frame before it, reported in
  the table and on stderr, and never used by other frames (under 'previous' the
  next frame is registered to the last good frame).

\b
QA:
  --qa FILE.png draws the drift after the run: shift x, shift y and theta per
  frame, their 1-sigma error bars as a band, held frames marked in red. It
  needs matplotlib (pip install 'regtool[plot]'), checked before any work.

\b
Exit status: 0 every frame converged, 1 a frame was held (outputs written)
or a worker process died (nothing written), 2 bad input or an output that
cannot be written (nothing written), 130 interrupted (Ctrl-C or SIGTERM: no
new work starts, nothing is left).

\b
Examples:
  regtool stack movie.tif
  regtool stack movie.tif --reference previous -j 4
  regtool stack hyperstack.tif --channel 1 -o out/aligned.tif
  regtool stack frames/ --reference mean
  regtool stack 'run1/t*.png' -o run1_aligned.tif --table run1.csv
  regtool stack movie.tif --qa drift.png
"""


class ReferenceType(click.ParamType):
    """``first``, ``previous``, ``mean`` or a frame index N (from 0)."""

    name = "first|previous|mean|N"

    def convert(self, value: Any, param: Any, ctx: Any) -> str | int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in REFERENCE_WORDS:
            return word
        try:
            index = int(word)
        except ValueError:
            index = -1
        if index < 0:
            self.fail(f"{value!r} is neither first, previous, mean nor a frame index (0, 1, "
                      "2...)", param, ctx)
        return index


def _summary(outcome: Any, plan: Any) -> str:
    rows = outcome.rows
    ok = sum(1 for r in rows if r["converged"])
    channel = "" if plan.channel is None else f", channel {plan.channel}"
    lines = [f"frames     {len(rows)} (reference {plan.reference}{channel}), {ok} converged"]
    held = [r for r in rows if r["status"] == "held"]
    for r in held[:SHOWN_HELD]:
        source = ("identity" if r["held_from"] is None
                  else f"transform of frame {r['held_from']}")
        lines.append(f"held       frame {r['index']}: {r['reason']} ({source})")
    if len(held) > SHOWN_HELD:
        lines.append(f"held       ... and {len(held) - SHOWN_HELD} more (see the table)")
    shifts = [abs(v) for r in rows for v in r["shift"]]
    turns = [abs(r["theta_deg"]) for r in rows]
    lines += [
        f"motion     up to {max(shifts):.3f} px shift and {max(turns):.4f} deg rotation "
        "about the center",
        f"aligned    {outcome.output}",
        f"table      {outcome.table_csv}, {outcome.table_json}",
    ]
    return "\n".join(lines)


def _check_plotting() -> None:
    """Refuse ``--qa`` at once, before any work, when matplotlib cannot be imported."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
    except ImportError:
        from regtool.qa import PLOT_INSTALL

        raise Failure(f"--qa: the drift plot of a stack needs matplotlib: {PLOT_INSTALL}"
                      ) from None


def _check_qa_output(qa: str, plan: Any) -> None:
    """The drift plot can be written at ``qa`` and overwrites neither an input nor an output."""
    import numpy as np

    from regtool import io

    io.check_output_path(qa, plan.stack.input_paths(), dtype=np.dtype(np.uint8), channels=3)
    for other, what in ((plan.output, "the aligned stack"), (plan.table_csv, "the table"),
                        (plan.table_json, "the table")):
        if os.path.realpath(qa) == os.path.realpath(other):
            raise io.ImageError(qa, f"the drift plot would overwrite {what}; give it another "
                                "name")


def _write_drift_plot(qa: str, outcome: Any, name: str, reference: str | int) -> None:
    """Draw the drift from the table's rows and write it (after the stack: its own file)."""
    from regtool import io
    from regtool.qa import drift_plot

    # the rows hold the shift about the center as a pair; the plot reads it by axis, as the
    # CSV table names it
    rows = [{**r, "shift_x": r["shift"][0], "shift_y": r["shift"][1]} for r in outcome.rows]
    held = len(outcome.held)
    title = (f"{os.path.basename(os.path.normpath(name))} (reference {reference}): drift over "
             f"{len(rows)} frames" + (f", {held} failed (held)" if held else ""))
    try:
        io.write_image(qa, drift_plot(rows, title=title))
    except io.ImageError as exc:
        raise Failure(f"{exc}; the aligned stack and its table were written") from None


@click.command(
    "stack",
    short_help="Align the frames of a stack (TIFF, folder or glob) to a reference.",
    epilog=_STACK_EPILOG,
    context_settings={"max_content_width": 100},
)
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--output", metavar="OUT",
              help="Aligned stack. Default: ./<stem>_aligned.tif for a TIFF, ./<name>_aligned/ "
                   "(a folder of frames) for a folder or glob.")
@click.option("--table", metavar="OUT.csv",
              help="Transforms table (.csv; the .json is written beside it). Default: "
                   "<OUT stem>_transforms.csv.")
@click.option("--reference", type=ReferenceType(), default="first", show_default=True,
              metavar="first|previous|mean|N",
              help="What every frame is registered to: first, previous, mean, or frame N.")
@click.option("--channel", type=click.IntRange(min=0), metavar="C",
              help="Register on this channel (from 0; for RGB frames a color sample) and "
                   "apply the transform to every channel. Default: channel 0, or the "
                   "luminance of RGB frames.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), metavar="N",
              help="Worker processes. Default: the cores available.")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run the registrations on this Dask scheduler (e.g. tcp://host:8786); the "
                   "files must be on a file system its workers share.")
@click.option("--qa", metavar="FILE.png",
              help="Also draw the drift: shift and rotation per frame with their error bars, "
                   "held frames marked (needs matplotlib: pip install 'regtool[plot]').")
@max_pixels_option
@registration_options
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def stack_command(input_path: str, output: str | None, table: str | None,
                  reference: str | int, channel: int | None, jobs: int | None,
                  scheduler: str | None, qa: str | None, max_pixels: int, quiet: bool,
                  **registration: Any) -> int:
    """Align every frame of the stack INPUT to a reference frame (rigid: rotation + shift).

    Drift, bleaching and changing exposure are handled by default (the ncc metric).
    """
    from regtool import io
    from regtool import stack as stacks
    from regtool.errors import InputError
    from regtool.executors import SchedulerError

    options = align_options(registration)
    if qa is not None:
        _check_plotting()
    try:
        plan = stacks.plan_stack(input_path, output, table, reference=reference,
                                 channel=channel, options=options, max_pixels=max_pixels)
    except io.ImageError as exc:
        raise Failure(str(exc)) from None

    bar = FrameBar(enabled=not quiet and stderr_is_terminal())
    signals = StopSignals(second_stops=True)
    try:
        with plan, signals:
            if qa is not None:
                _check_qa_output(qa, plan)
            outcome = stacks.run_stack(plan, jobs=jobs, scheduler=scheduler, progress=bar,
                                       stop=signals)
    except stacks.Interrupted:
        raise KeyboardInterrupt from None
    except stacks.WorkerLost as exc:
        if signals.stopped:  # the workers killed by the same SIGTERM (a process group's)
            raise KeyboardInterrupt from None
        raise Failure(str(exc), exit_code=EXIT_NOT_CONVERGED) from None  # 1, as a batch's
    except (io.ImageError, InputError, SchedulerError) as exc:
        raise Failure(str(exc)) from None
    except Exception:
        if signals.stopped:  # e.g. the workers killed by the same SIGTERM (a process group's)
            raise KeyboardInterrupt from None
        raise
    finally:
        bar.close()

    if qa is not None:
        _write_drift_plot(qa, outcome, input_path, plan.reference)
    if not quiet:
        click.echo(_summary(outcome, plan) + ("" if qa is None else f"\nqa         {qa}"))
    if not outcome.converged:
        held = outcome.held
        listed = ", ".join(map(str, held[:SHOWN_HELD])) + (", ..." if len(held) > SHOWN_HELD
                                                           else "")
        click.echo(f"regtool: {len(held)} of {len(outcome.rows)} frames did not converge "
                   f"(held: {listed}); outputs written anyway", err=True)
        return EXIT_NOT_CONVERGED
    return EXIT_OK
