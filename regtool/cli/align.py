"""``regtool align``: one source, or many, against a target."""

from __future__ import annotations

import sys
from typing import Any

import click

from .options import (
    EXIT_NOT_CONVERGED,
    EXIT_OK,
    Failure,
    align_options,
    registration_options,
    stderr_is_terminal,
)

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
@click.argument("source", metavar="SOURCE")
@click.option("-o", "--output", metavar="OUT_IMAGE",
              help="Aligned image (.png, .tif or .jpg). Default: ./<source stem>_aligned<ext>.")
@click.option("--params", metavar="OUT_JSON",
              help="Parameter file. Default: OUT_IMAGE with the extension .json.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON document on stdout instead of the summary.")
@registration_options
@click.option("--target-mask", metavar="FILE",
              help="Image of the target's size: nonzero = use the pixel, 0 = leave it out "
                   "(e.g. a scale bar or a time stamp).")
@click.option("--source-mask", metavar="FILE",
              help="The same for the source, of the source's size.")
@click.option("-q", "--quiet", is_flag=True,
              help="Print nothing but errors (and the JSON document with --json).")
def align_command(
    target: str,
    source: str,
    output: str | None,
    params: str | None,
    as_json: bool,
    target_mask: str | None,
    source_mask: str | None,
    quiet: bool,
    **registration: Any,
) -> int:
    """Align SOURCE to TARGET with a rigid transform (rotation + translation).

    TARGET is the reference; SOURCE is resampled onto TARGET's grid. Both may be gray, RGB or
    RGBA, 8/16-bit or float, of different sizes. The estimate uses their luminance.
    """
    import regtool
    from regtool import io, pipeline

    options = align_options(registration)
    try:
        loaded_target = pipeline.read_input(target, target_mask, "target")
        loaded_source = pipeline.read_input(source, source_mask, "source")
        inputs = loaded_target.paths() + loaded_source.paths()
        out_image, out_params = pipeline.plan_outputs(loaded_source, output, params, inputs,
                                                      fill=options.fill)
    except io.ImageError as exc:
        raise Failure(str(exc)) from None

    bar = _LevelBar(enabled=not quiet and stderr_is_terminal())
    try:
        outcome = pipeline.run_pair(loaded_target, loaded_source, out_image, out_params,
                                    options, progress=bar)
    except (io.ImageError, regtool.InputError) as exc:
        raise Failure(str(exc)) from None
    finally:
        bar.close()

    doc = outcome.document
    if as_json:
        click.echo(io.dumps_json(doc), nl=False)
    elif not quiet:
        click.echo(_summary(doc, out_image, out_params))
    if not outcome.converged:
        if not quiet:
            click.echo(f"regtool: registration did not converge: {outcome.reason}; "
                       "outputs written anyway", err=True)
        return EXIT_NOT_CONVERGED
    return EXIT_OK
