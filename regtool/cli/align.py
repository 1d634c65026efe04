"""``regtool align``: one source, or many, against a target."""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

import click

from .options import (
    DEFAULT_MAX_PIXELS,
    EXIT_INTERRUPTED,
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    Failure,
    StopSignals,
    align_options,
    max_pixels_option,
    registration_options,
    say_error,
    stderr_is_terminal,
)

#: where the outputs of a batch go without -o
DEFAULT_BATCH_FOLDER = "aligned"
#: ``--tolerance``: the mean endpoint distance (px) accepted between the transform found and
#: the one ``--expect`` names. A tenth of a pixel passes rounding differences between
#: machines and library versions and an estimate against the true transform of a clean pair
#: (0.0015 px on the 512x512 sample pair), and fails any error one would see in the aligned
#: image.
DEFAULT_TOLERANCE = 0.1

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
Batches:
  With several sources, a folder or a glob pattern, each source is aligned to
  TARGET in worker processes (-j), and -o names the output folder (created;
  default ./aligned): <stem>_aligned<ext> and .json for each source, and
  results.csv, a row per source as each finishes. A source that fails gets one
  line on stderr and the others go on. Ctrl-C (or SIGTERM) starts no new work,
  lets the running tasks finish, and exits 130 with results.csv matching what is
  on disk; rerun with --skip-existing to do the rest. Exit status: 0 when every
  source converged, 1 when one did not or failed, 2 before any work for bad
  usage or an unusable target.

\b
Checking against an expected transform (CI):
  --expect FILE compares the transform found with the one FILE holds (any
  regtool align JSON, or {"tx": ..., "ty": ..., "theta_deg": ...}) by their
  mean endpoint distance over the target's pixels. Within --tolerance: exit 0;
  beyond it, or not converged: exit 1, both transforms and the distance on
  stderr. The outputs are written either way. One pair only.

\b
Examples:
  regtool align target.png source.png
  regtool align target.png source.png -o out/aligned.png --params out/params.json
  regtool align t.tif s.tif --metric ssd --levels 5 --tol 0.01 --quiet
  regtool align t.png s.png --init=-4.5,10,2.5 --json
  regtool align t.png s.png --init none      # nearly aligned already: no global search
  regtool align t.png s.png --target-mask no_scale_bar.png --source-mask no_scale_bar.png
  regtool align t.png s.png --min-overlap 0.1
  regtool align t.png s.png --qa check.png   # a picture: overlays before/after, difference
  regtool align t.png s.png --log run.csv    # a row per iteration: loss, step, damping
  regtool align t.png s.png --expect expected.json --tolerance 0.05 --quiet   # CI
  regtool align ref.tif frames/ -o out/ -j 4        # every image of frames/
  regtool align ref.tif 'frames/*.tif' --skip-existing  # resume into ./aligned/
  regtool align ref.tif frames/ --scheduler tcp://10.0.0.5:8786  # a Dask cluster
  regtool align ref.tif frames/ -o out/ --qa-dir out/qa/  # a picture per source
  regtool align ref.tif frames/ -o out/ --log-dir out/logs/  # an iteration log per source
"""



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



@click.command(
    "align",
    short_help="Align SOURCE to TARGET; write the aligned image and the parameters.",
    epilog=_ALIGN_EPILOG,
    context_settings={"max_content_width": 100},
)
@click.argument("target", metavar="TARGET")
@click.argument("sources", metavar="SOURCE...", nargs=-1, required=True)
@click.option("-o", "--output", metavar="OUT_IMAGE|DIR",
              help="Aligned image (.png, .tif or .jpg). Default: ./<source stem>_aligned<ext>. "
                   "In a batch: the output folder, created if needed. Default: "
                   f"./{DEFAULT_BATCH_FOLDER}/.")
@click.option("--params", metavar="OUT_JSON",
              help="Parameter file. Default: OUT_IMAGE with the extension .json. One pair "
                   "only.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON document on stdout instead of the summary. One pair only.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), metavar="N",
              help="Worker processes of a batch. Default: the cores this process may use.")
@click.option("--skip-existing", is_flag=True,
              help="In a batch, skip the sources whose outputs are in the output folder "
                   "already, complete (resumes an interrupted batch).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run a batch on the Dask cluster whose scheduler is at ADDRESS (e.g. "
                   "tcp://10.0.0.5:8786; needs regtool[dask] and a filesystem shared with "
                   "the workers) instead of local processes.")
@click.option("--qa", metavar="FILE.png",
              help="Also write a QA picture: the images overlaid before and after alignment "
                   "(target magenta, source green), their difference after, the parameters. "
                   "One pair only.")
@click.option("--qa-dir", metavar="DIR",
              help="In a batch, write each source's QA picture to DIR/<stem>_qa.png "
                   "(created if needed).")
@click.option("--log", "log", metavar="FILE.csv",
              help="Also write the iteration log: a row per iteration of every level (level, "
                   "iteration, loss, step in pixels, damping, accepted, elapsed ms). One pair "
                   "only.")
@click.option("--log-dir", metavar="DIR",
              help="In a batch, write each source's iteration log to DIR/<stem>_log.csv "
                   "(created if needed).")
@click.option("--expect", metavar="PARAMS.json",
              help="Compare the transform found with this one (a regtool align JSON, or tx, "
                   "ty, theta_deg): exit 1 when they are further apart than --tolerance. One "
                   "pair only.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE,
              show_default=True, metavar="PX",
              help="With --expect: the largest mean endpoint distance accepted between the "
                   "two transforms, in pixels over the target.")
@max_pixels_option
@registration_options
@click.option("--target-mask", metavar="FILE",
              help="Image of the target's size: nonzero = use the pixel, 0 = leave it out "
                   "(e.g. a scale bar or a time stamp).")
@click.option("--source-mask", metavar="FILE",
              help="The same for the source, of the source's size.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing but errors (and the JSON document with --json).")
@click.pass_context
def align_command(
    ctx: click.Context,
    target: str,
    sources: tuple[str, ...],
    output: str | None,
    params: str | None,
    as_json: bool,
    jobs: int | None,
    skip_existing: bool,
    scheduler: str | None,
    qa: str | None,
    qa_dir: str | None,
    log: str | None,
    log_dir: str | None,
    expect: str | None,
    tolerance: float,
    max_pixels: int,
    target_mask: str | None,
    source_mask: str | None,
    quiet: bool,
    **registration: Any,
) -> int:
    """Align SOURCE to TARGET with a rigid transform (rotation + translation).

    TARGET is the reference; SOURCE is resampled onto TARGET's grid. Both may be gray, RGB or
    RGBA, 8/16-bit or float, of different sizes. The estimate uses their luminance. Several
    SOURCEs (files, folders, glob patterns) make a batch: see Batches below.
    """
    from regtool import batch

    options = align_options(registration)
    if ctx.get_parameter_source("tolerance") is not click.core.ParameterSource.DEFAULT:
        if expect is None:
            raise click.UsageError("--tolerance goes with --expect PARAMS.json", ctx)
    if not math.isfinite(tolerance):
        raise click.UsageError(f"--tolerance must be a finite number of pixels, not "
                               f"{tolerance}", ctx)
    if batch.is_batch(sources):
        for given, message in ((qa, _PAIR_ONLY["qa"]), (log, _PAIR_ONLY["log"]),
                               (expect, _PAIR_ONLY["expect"])):
            if given is not None:
                raise Failure(message)
        return _align_batch(target, sources, output, params, as_json, jobs, skip_existing,
                            scheduler, target_mask, source_mask, quiet, options, qa_dir,
                            max_pixels, log_dir=log_dir)
    for given, message in ((skip_existing, _BATCH_ONLY["skip_existing"]),
                           (scheduler, _BATCH_ONLY["scheduler"]),
                           (qa_dir, _BATCH_ONLY["qa_dir"]), (log_dir, _BATCH_ONLY["log_dir"])):
        if given:
            raise Failure(message)
    return _align_pair(target, sources[0], output, params, as_json, target_mask, source_mask,
                       quiet, options, qa=qa, expect=expect, tolerance=tolerance,
                       max_pixels=max_pixels, log=log)


_BATCHES = "applies to batches (several sources, a folder or a glob pattern)"
# Options of one pair refused in a batch, and of batches refused for one pair: what to say.
_PAIR_ONLY = {
    "qa": "--qa names the picture of one pair; in a batch, --qa-dir DIR writes one per source "
          "(DIR/<stem>_qa.png)",
    "log": "--log names the iteration log of one pair; in a batch, --log-dir DIR writes one "
           "per source (DIR/<stem>_log.csv)",
    "expect": "--expect checks the transform of one pair; in a batch each source has its own "
              "(see results.csv), so run one regtool align --expect per pair",
}
_BATCH_ONLY = {
    "skip_existing": f"--skip-existing {_BATCHES}, not to one pair",
    "scheduler": f"--scheduler {_BATCHES}, not to one pair",
    "qa_dir": f"--qa-dir {_BATCHES}; for one pair, --qa FILE.png names the picture",
    "log_dir": f"--log-dir {_BATCHES}; for one pair, --log FILE.csv names the iteration log",
}


def _read_expected(expect: str, target: Any, source: Any) -> Any:
    """The transform ``--expect`` names, refused when it was recorded for other images."""
    from regtool import io
    from regtool.params import read_params

    saved = read_params(expect, need_target_shape=False)
    for recorded, loaded, which in ((saved.target_shape, target, "target"),
                                    (saved.source_shape, source, "source")):
        rows, cols = loaded.image.shape[:2]
        if recorded is not None and tuple(recorded) != (rows, cols):
            raise io.ImageError(expect, f"the expected transform was found on a "
                                f"{recorded[1]}x{recorded[0]} {which}, but the {which} "
                                f"{loaded.path} is {cols}x{rows}; is it the file for this pair?")
    return saved


def _transform_text(values: dict[str, Any]) -> str:
    sx, sy = values["shift"]
    return (f"tx {values['tx']:+.4f}, ty {values['ty']:+.4f} px, theta_deg "
            f"{values['theta_deg']:+.4f}, shift {sx:+.4f}, {sy:+.4f} px")


def _comparison_lines(comparison: Any, name: str, note: str = "") -> list[str]:
    """Both transforms and their distance, for stderr when the check does not pass."""
    rows, cols = comparison.shape
    verdict = "within" if comparison.within else "beyond"
    return [f"regtool: the transform found is {comparison.distance:.4g} px from the one "
            f"expected in {name} ({verdict} the tolerance of {comparison.tolerance:g} px; "
            f"mean endpoint distance over the {cols}x{rows} target){note}",
            f"  found     {_transform_text(comparison.found)}",
            f"  expected  {_transform_text(comparison.expected)}"]


def _align_pair(target: str, source: str, output: str | None, params: str | None,
                as_json: bool, target_mask: str | None, source_mask: str | None, quiet: bool,
                options: Any, *, qa: str | None = None, expect: str | None = None,
                tolerance: float = DEFAULT_TOLERANCE,
                max_pixels: int = DEFAULT_MAX_PIXELS, log: str | None = None) -> int:
    """One pair, in this process: the summary (or the document) on stdout."""
    import regtool
    from regtool import io, pipeline

    try:
        loaded_target = pipeline.read_input(target, target_mask, "target",
                                            max_pixels=max_pixels)
        loaded_source = pipeline.read_input(source, source_mask, "source",
                                            max_pixels=max_pixels)
        # a broken expectation is bad input, refused before any work like a broken image
        expected = (None if expect is None
                    else _read_expected(expect, loaded_target, loaded_source))
        inputs = loaded_target.paths() + loaded_source.paths() + (
            [expect] if expect is not None else [])
        out_image, out_params = pipeline.plan_outputs(loaded_source, output, params, inputs,
                                                      fill=options.fill, qa=qa, log=log)
    except io.ImageError as exc:
        raise Failure(str(exc)) from None

    bar = _LevelBar(enabled=not quiet and stderr_is_terminal())
    try:
        outcome = pipeline.run_pair(loaded_target, loaded_source, out_image, out_params,
                                    options, progress=bar, qa=qa, log=log)
    except (io.ImageError, regtool.InputError) as exc:
        raise Failure(str(exc)) from None
    finally:
        bar.close()

    comparison = None
    if expected is not None:
        comparison = pipeline.compare_transforms(outcome.result.matrix, expected.matrix,
                                                 loaded_target.image.shape, tolerance)
    doc = outcome.document
    if as_json:
        click.echo(io.dumps_json(doc), nl=False)
    elif not quiet:
        text = _summary(doc, out_image, out_params)
        if qa is not None:
            text += f"\nqa         {qa}"
        if log is not None:
            text += f"\nlog        {log}"
        if comparison is not None:
            text += (f"\nexpected   {comparison.distance:.4g} px from {expect} (tolerance "
                     f"{comparison.tolerance:g} px): "
                     + ("within" if comparison.within else "BEYOND"))
        click.echo(text)
    if not outcome.converged:
        if not quiet:
            click.echo(f"regtool: registration did not converge: {outcome.reason}; "
                       "outputs written anyway", err=True)
            if comparison is not None:
                click.echo("\n".join(_comparison_lines(comparison, str(expect))), err=True)
        return EXIT_NOT_CONVERGED
    if comparison is not None and not comparison.within:
        # the reason for the exit status, so printed even with --quiet
        click.echo("\n".join(_comparison_lines(comparison, str(expect),
                                               "; outputs written anyway")), err=True)
        return EXIT_NOT_CONVERGED
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


class _FileBar:
    """A tqdm bar over the sources on stderr (when enabled), and the error lines beside it."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="aligning", unit="file", file=sys.stderr,
                            dynamic_ncols=True)

    def update(self, tally: Any) -> None:
        if self.bar is not None:
            problems = tally.failed + tally.not_converged
            if problems:
                self.bar.set_postfix_str(f"{tally.not_converged} not converged, "
                                         f"{tally.failed} failed", refresh=False)
            self.bar.update(1)

    def error(self, message: str) -> None:
        if self.bar is None:
            say_error(message)
        else:
            self.bar.write("regtool: error: " + " ".join(str(message).split()), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _batch_summary(tally: Any, results: str, where: str, seconds: float,
                   qa_dir: str | None = None, log_dir: str | None = None) -> str:
    def listed(items: list[tuple[str, str]], count: int) -> list[str]:
        lines = [f"  {source}: {reason}" if not reason.startswith(source) else f"  {reason}"
                 for source, reason in items]
        if count > len(items):
            lines.append(f"  ... and {count - len(items)} more (see {results})")
        return lines

    lines = [f"sources        {tally.total}, {where}",
             f"done           {tally.done}",
             f"not converged  {tally.not_converged}",
             *listed(tally.not_converging, tally.not_converged),
             f"failed         {tally.failed}",
             *listed(tally.failures, tally.failed)]
    note = " (outputs found complete; counted above by their rows)" if tally.skipped else ""
    lines += [f"skipped        {tally.skipped}{note}",
              f"results        {results}",
              *([f"qa pictures    {os.path.join(qa_dir, '<stem>_qa.png')}"] if qa_dir
                else []),
              *([f"logs           {os.path.join(log_dir, '<stem>_log.csv')}"] if log_dir
                else []),
              f"time           {seconds:.1f} s"]
    left = tally.total - tally.finished
    if left:
        lines.insert(lines.index(f"results        {results}"), f"not started    {left}")
    return "\n".join(lines)


def _align_batch(target: str, sources: tuple[str, ...], output: str | None, params: str | None,
                 as_json: bool, jobs: int | None, skip_existing: bool, scheduler: str | None,
                 target_mask: str | None, source_mask: str | None, quiet: bool,
                 options: Any, qa_dir: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, *, log_dir: str | None = None) -> int:
    """Many sources: workers, results.csv, a bar, a summary; Ctrl-C stops cleanly."""
    from regtool import batch, executors, io

    if params is not None:
        raise Failure("--params names the parameter file of one pair; in a batch each "
                      "source's goes beside its aligned image in the output folder (-o DIR)")
    if as_json:
        raise Failure("--json prints the document of one pair; a batch writes results.csv "
                      "in its output folder (-o DIR)")
    folder = output if output is not None else DEFAULT_BATCH_FOLDER
    if os.path.splitext(folder)[1].lower() in io.WRITE_EXTENSIONS and not os.path.isdir(folder):
        raise Failure(f"{folder}: with several sources -o names the output folder, not an "
                      "image file")
    try:
        plan = batch.plan_batch(target, sources, folder, options, target_mask, source_mask,
                                qa_folder=qa_dir, max_pixels=max_pixels, log_folder=log_dir)
        batch.check_inputs(plan)
    except (batch.BatchError, io.ImageError) as exc:
        raise Failure(str(exc)) from None
    results = plan.results_path  # as given, for the messages
    if scheduler is not None:
        plan = plan.absolute()  # a Dask worker runs in a folder of its own
        where = f"on the Dask cluster at {scheduler}"
    else:
        jobs = jobs if jobs is not None else executors.default_jobs()
        where = f"{jobs} worker process{'es' if jobs > 1 else ''}"

    tally = batch.Tally(total=len(plan.sources))
    aborted = None
    started = time.monotonic()
    with StopSignals() as interrupted:
        try:
            with executors.open_executor(jobs, scheduler) as executor:
                if interrupted():  # while connecting: nothing written yet
                    click.echo("regtool: interrupted", err=True)
                    return EXIT_INTERRUPTED
                try:
                    batch.prepare_folder(plan)
                except io.ImageError as exc:
                    raise Failure(str(exc)) from None
                bar = _FileBar(not quiet and stderr_is_terminal(), tally.total)
                try:
                    for completed in batch.run_batch(plan, executor,
                                                     skip_existing=skip_existing,
                                                     stop=interrupted):
                        tally.add(completed)
                        if completed.status == batch.FAILED:
                            bar.error(completed.row["reason"])
                        bar.update(tally)
                except (batch.BatchAborted, io.ImageError) as exc:  # a broken pool, a full disk
                    aborted = str(exc)
                finally:
                    bar.close()
        except executors.SchedulerError as exc:
            raise Failure(str(exc)) from None

    if not quiet:
        click.echo(_batch_summary(tally, results, where, time.monotonic() - started, qa_dir,
                                  log_dir))
    if interrupted():
        click.echo(f"regtool: interrupted: {tally.finished} of {tally.total} sources finished "
                   f"and listed in {results}; rerun with --skip-existing to do the "
                   "rest", err=True)
        return EXIT_INTERRUPTED
    if aborted is not None:
        say_error(aborted)
        return EXIT_NOT_CONVERGED
    return EXIT_OK if tally.all_converged else EXIT_NOT_CONVERGED
