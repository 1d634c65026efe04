"""The ``regtool`` command group, its exit statuses and its one error wrapper.

Every command parses options, reads, calls the library, writes and prints; none computes. Exit
statuses:

* 0 -- registered and converged (every source of a batch, every frame of a stack); the outputs
  are written.
* 1 -- a registration ran but did not converge or found no match (unrelated images, too
  little overlap; the outputs are still written, with ``"converged": false`` and the
  ``"reason"``), with ``--expect`` the transform found lies beyond ``--tolerance`` of the
  expected one (outputs written too), a source of a batch failed (the others went on), a
  warped transform was recorded as not converged, or regtool stopped on an unexpected
  internal error (one line on stderr, nothing written).
* 2 -- bad usage or bad input, or an output that cannot be written, found before any work:
  one line ``regtool: error: <file>: <problem>`` on stderr, nothing written.
* 130 -- interrupted (Ctrl-C or SIGTERM): no new work starts; a single pair or a stack writes
  nothing, a batch keeps the sources it finished (``results.csv`` says which).

Set ``REGTOOL_DEBUG=1`` to get a traceback instead of the one-line internal error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from .._version import __version__
from ..resample import default_threads
from .align import align_command
from .options import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, say_error
from .stack import stack_command
from .warp import warp_command

__all__ = ["cli", "main"]

_GROUP_EPILOG = """\b
Examples:
  regtool align fixed.png moving.png
      writes moving_aligned.png and moving_aligned.json here
  regtool align fixed.tif moving.tif -o out/aligned.tif --params out/p.json
  regtool align a.png b.png --json > params.json
  regtool align a.png b.png --init 12.5,-3,7 --optimizer scaled
  regtool align a.tif b.tif --target-mask a_bar.png --source-mask b_bar.png
      leaves out what the masks paint black (e.g. a scale bar)
  regtool align a.png b.png --qa check.png
      also a picture: the overlays before and after, the difference, the numbers
  regtool align a.png b.png --expect expected.json --tolerance 0.05
      a CI check: exit 1 when the transform is further than 0.05 px from expected
  regtool align fixed.png frames/ -o aligned/ -j 4
      a batch: every image of frames/, results.csv in aligned/
  regtool stack movie.tif --reference previous
      a time-lapse's drift: movie_aligned.tif and its transforms table
  regtool warp red.png --params moving_aligned.json -o red_aligned.png
      the same transform applied to another channel

Run 'regtool COMMAND --help' for every option. Exit status: 0 converged, 1 did
not converge or the images do not match (outputs written anyway), not the
--expect'ed transform, a batch's source failed, or internal error; 2 bad usage
or input; 130 interrupted.
"""


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
            say_error(exc.format_message() + hint)
            code = EXIT_USAGE
        except click.ClickException as exc:
            say_error(exc.format_message())
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



@click.group(
    cls=_RegtoolGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_GROUP_EPILOG,
)
@click.version_option(__version__, "--version", prog_name="regtool", message="%(prog)s %(version)s")
def cli() -> None:
    """Rigid image registration: rotation + translation, coarse-to-fine, sub-pixel.

    Aligns a SOURCE image to a TARGET image and writes the aligned image (the source resampled
    on the target's grid) and the transform as JSON; many sources at once (a batch), the
    frames of a stack, or a saved transform applied to other images.
    """
    # REGTOOL_THREADS is read deep in the engine (large images) and the warp: a bad value is
    # bad usage, said before any work and any output
    try:
        default_threads()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None



cli.add_command(align_command)
cli.add_command(stack_command)
cli.add_command(warp_command)


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
