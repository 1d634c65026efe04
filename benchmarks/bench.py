"""Accuracy and speed of regtool's optimizers against peer registration tools.

Run ``make bench`` or ``.venv/bin/python benchmarks/bench.py --help``. See benchmarks/README.md
for what the tiers, peers and error measure are.
"""

from __future__ import annotations

import os
import sys


def _preparse_threads(argv: list[str]) -> int:
    """Read ``--threads N`` before numpy is imported (BLAS reads its thread count at import)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


_THREADS = _preparse_threads(sys.argv[1:])
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = str(_THREADS)

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases as C  # noqa: E402
import peers as P  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Success threshold on the mean endpoint error.
SUCCESS_PX = 0.5
#: regtool's optimizers benchmarked (metric "ssd"), and the default against which time is scaled.
REGTOOL_METHODS = ("gd", "scaled", "gauss-newton")
DEFAULT_METHOD = "gauss-newton"
NCC_METHOD = "gauss-newton+ncc"
PEER_METHODS = tuple(P.PEERS)
ALL_METHODS = REGTOOL_METHODS + (NCC_METHOD,) + PEER_METHODS
SIZES = {"251x301": (301, 251), "512": (512, 512), "1024": (1024, 1024)}

#: A method returns the 3x3 matrix, or (matrix, converged, reason) when it reports convergence.
Method = Callable[[np.ndarray, np.ndarray], "np.ndarray | tuple[np.ndarray, bool, str | None]"]


@dataclass
class Run:
    """One method on one case."""

    method: str
    case: C.Case
    error: float  # mean endpoint error, px; inf on failure
    seconds: float
    failure: str | None = None
    converged: bool | None = None  # what the method claimed, when it says


# --------------------------------------------------------------------------- methods


def regtool_method(optimizer: str, metric: str, max_iter: int | None) -> Method:
    """A regtool.align call as a ``(target, source) -> 3x3`` method."""
    import regtool

    def run(target: np.ndarray, source: np.ndarray) -> tuple[np.ndarray, bool, str | None]:
        res = regtool.align(target, source, optimizer=optimizer, metric=metric,
                            max_iter=max_iter)
        m = np.eye(3)
        m[:2] = np.asarray(res.matrix, dtype=float)[:2]
        return m, bool(res.converged), res.reason

    return run


def build_methods(names: list[str], gd_max_iter: int | None) -> tuple[dict[str, Method], str]:
    """Resolve method names to callables; return them and a note on what is missing."""
    out: dict[str, Method] = {}
    notes: list[str] = []
    wanted_regtool = [n for n in names if n in REGTOOL_METHODS or n == NCC_METHOD]
    if wanted_regtool:
        try:
            import regtool  # noqa: F401
        except Exception as exc:  # the bench still runs the peers
            notes.append(f"regtool not importable ({exc}); its methods skipped")
            wanted_regtool = []
    peers = P.available_peers()
    for name in names:
        if name in wanted_regtool:
            if name == NCC_METHOD:
                out[name] = regtool_method("gauss-newton", "ncc", None)
            else:
                out[name] = regtool_method(name, "ssd", gd_max_iter if name == "gd" else None)
        elif name in peers:
            out[name] = peers[name]
        elif name in P.PEERS:
            notes.append(f"peer {name} not installed; skipped")
        elif name not in ALL_METHODS:
            raise SystemExit(f"unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")
    return out, "; ".join(notes)


def time_call(method: Method, case: C.Case, name: str) -> Run:
    """Run ``method`` on ``case``: time the call alone, then score it."""
    target, source = case.target, case.source
    t0 = time.perf_counter()
    try:
        m = method(target, source)
    except Exception as exc:  # a failing method is a result, not a crash
        dt = time.perf_counter() - t0
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Run(name, case, float("inf"), dt, f"{type(exc).__name__}: {msg}"[:160])
    dt = time.perf_counter() - t0
    converged: bool | None = None
    reason: str | None = None
    if isinstance(m, tuple):
        m, converged, reason = m
    if m is None or not np.all(np.isfinite(m)):
        return Run(name, case, float("inf"), dt, "no matrix", converged)
    err = C.endpoint_error(case.matrix, m, case.target.shape)
    failure = None
    if converged is False:
        failure = f"not converged: {reason}"
    return Run(name, case, err, dt, failure, converged)


# --------------------------------------------------------------------------- checks


def self_checks(photos: list[C.Photo], methods: dict[str, Method]) -> list[str]:
    """Synthesis check and peer direction check; returns report lines (also printed)."""
    lines: list[str] = []
    # 1. source(M x) == target(x): the ground truth is right.
    for label, size in SIZES.items():
        case = next(C.make_cases(photos, size, "small", 1, seed=99))
        rms, rms_off = C.check_synthesis(case)
        ok = rms < 0.1 * rms_off
        lines.append(f"synthesis check {label}: warp(source, M) vs target RMS {rms:.3f} grey "
                     f"levels (0.5 px off: {rms_off:.2f}) {'ok' if ok else 'FAILED'}")
        if not ok:
            raise SystemExit("\n".join(lines) + "\nsynthesis check failed: ground truth is wrong")
    # 2. Each peer's matrix direction, on a noise-free case with rotation and shift.
    case = next(C.make_cases(photos, SIZES["512"], "small", 1, seed=7))
    peer_fns = {n: f for n, f in methods.items() if n in P.PEERS}
    for name, ok, msg in P.direction_check(
            peer_fns, case.target, case.source, case.matrix,
            lambda a, b: C.endpoint_error(a, b, case.target.shape)):
        lines.append(f"direction check: {name} {'ok' if ok else 'WRONG'} ({msg})")
    for name, fn in methods.items():
        if name in P.PEERS:
            continue
        run = time_call(fn, case, name)  # also warms regtool up
        status = "ok" if run.error < SUCCESS_PX else f"FAILED {run.failure or ''}"
        lines.append(f"direction check: regtool {name} {status} (err {run.error:.3f} px)")
    lines.append(f"  check case: {case.describe()}")
    return lines


def cli_timing(photos: list[C.Photo], repeats: int = 3) -> str:
    """Wall time of ``regtool align`` on a 512x512 pair in a subprocess (Python start-up too)."""
    exe = Path(sys.executable).parent / "regtool"
    exe_s = str(exe) if exe.exists() else shutil.which("regtool")
    if not exe_s:
        return "CLI: `regtool` executable not found; skipped"
    case = next(C.make_cases(photos, SIZES["512"], "medium", 1, seed=5))
    import imageio.v3 as iio

    with tempfile.TemporaryDirectory() as tmp:
        tgt, src, out = Path(tmp, "target.png"), Path(tmp, "source.png"), Path(tmp, "aligned.png")
        iio.imwrite(tgt, np.clip(np.rint(case.target), 0, 255).astype(np.uint8))
        iio.imwrite(src, np.clip(np.rint(case.source), 0, 255).astype(np.uint8))
        params = Path(tmp, "aligned.json")
        cmd = [exe_s, "align", str(tgt), str(src), "-o", str(out), "--params", str(params),
               "--quiet"]
        times: list[float] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                err = (proc.stderr or proc.stdout).strip().splitlines()
                return (f"CLI: `regtool align target.png source.png -o aligned.png` exited "
                        f"{proc.returncode}: {err[-1] if err else ''}")
        try:
            doc = json.loads(params.read_text())
            err = C.endpoint_error(case.matrix, np.vstack([doc["matrix"], [0, 0, 1]]),
                                   case.target.shape)
            acc = f"; its matrix is {err:.3f} px from the truth ({case.describe()})"
        except (OSError, KeyError, ValueError) as exc:
            acc = f"; could not read its parameters: {exc}"
    return (f"CLI: `regtool align target.png source.png -o aligned.png --params aligned.json "
            f"--quiet` on a 512x512 uint8 PNG pair: median wall time "
            f"{1000 * statistics.median(times):.0f} ms over {repeats} runs "
            f"(min {1000 * min(times):.0f} ms), Python start-up included{acc}")


# --------------------------------------------------------------------------- tables


def _fmt_err(errors: list[float]) -> str:
    med = statistics.median(errors)
    return "fail" if not np.isfinite(med) else f"{med:.3f}"


def summarize(runs: list[Run], order: list[str]) -> list[list[str]]:
    """Rows: method, success, median error, median time, ratio vs the default optimizer."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.method, []).append(r)
    ref = by.get(DEFAULT_METHOD)
    ref_t = statistics.median(r.seconds for r in ref) if ref else None
    rows: list[list[str]] = []
    for name in order:
        if name not in by:
            continue
        rs = by[name]
        ok = sum(r.error < SUCCESS_PX for r in rs)
        t = statistics.median(r.seconds for r in rs)
        ratio = f"{t / ref_t:.2f}" if ref_t else "-"
        rows.append([name, f"{ok}/{len(rs)}", _fmt_err([r.error for r in rs]),
                     f"{1000 * t:.0f}", ratio])
    return rows


HEADER = ["method", "success", "median err (px)", "median time (ms)", "time / gauss-newton"]


def markdown_table(rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(HEADER) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(rows: list[list[str]]) -> str:
    """A plain aligned table for the terminal."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(HEADER)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(HEADER)] + [line(r) for r in rows])


# --------------------------------------------------------------------------- environment


def machine_info() -> list[str]:
    """Date, CPU, core count and package versions."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vers = {"python": platform.python_version()}
    for dist in ("regtool", "numpy", "scipy"):
        try:
            vers[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            vers[dist] = "not installed"
    vers.update(P.peer_versions())
    return [
        f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {platform.system()} {platform.machine()}, nproc {os.cpu_count()}, "
        f"CPU {cpu}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
    ]


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(SIZES),
                   help=f"comma-separated sizes among {', '.join(SIZES)} (default: all)")
    p.add_argument("--tiers", default=",".join(C.TIERS),
                   help=f"comma-separated tiers among {', '.join(C.TIERS)} (default: all)")
    p.add_argument("--cases", type=int, default=8, help="cases per size and tier (default 8)")
    p.add_argument("--gd-cases", type=int, default=3,
                   help="cases per size and tier for plain gd, the slow one (default 3)")
    p.add_argument("--gd-max-iter", type=int, default=None,
                   help="max_iter passed to regtool's gd (default: regtool's own)")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help=f"comma-separated methods among {', '.join(ALL_METHODS)}")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for BLAS, OpenCV and SimpleITK (default 1)")
    p.add_argument("--seed", type=int, default=0, help="case seed (default 0)")
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md",
                   help="markdown report (default benchmarks/RESULTS.md; '-' for none)")
    p.add_argument("--csv", type=Path, default=None,
                   help="also write one row per (case, method) to this CSV file")
    p.add_argument("--no-cli", action="store_true", help="skip the CLI wall-time measurement")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print tables; write the markdown report."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    for s in sizes:
        if s not in SIZES:
            raise SystemExit(f"unknown size {s!r}; choose from {', '.join(SIZES)}")
    for t in tiers:
        if t not in C.TIERS:
            raise SystemExit(f"unknown tier {t!r}; choose from {', '.join(C.TIERS)}")
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    threads = P.configure_threads(args.threads)
    methods, note = build_methods(names, args.gd_max_iter)
    if note:
        print("note:", note)

    photos = C.load_photos()
    photo_note = ", ".join(f"{p.name} ({p.image.shape[1]}x{p.image.shape[0]})" for p in photos)
    print("photos:", photo_note, flush=True)
    checks = self_checks(photos, methods)
    print("\n".join(checks), flush=True)

    sections: list[str] = []
    all_runs: list[Run] = []
    upsampled: set[str] = set()
    for s in sizes:
        for tier in tiers:
            tier_cases = list(C.make_cases(photos, SIZES[s], tier, args.cases, seed=args.seed))
            upsampled.update(c.photo for c in tier_cases if re.search(r"x\d+$", c.photo))
            runs: list[Run] = []
            for i, case in enumerate(tier_cases):
                for name, fn in methods.items():
                    if name == NCC_METHOD and tier != "gain":
                        continue
                    if name == "gd" and i >= args.gd_cases:
                        continue
                    runs.append(time_call(fn, case, name))
            all_runs += runs
            order = [n for n in ALL_METHODS if n in methods]
            rows = summarize(runs, order)
            h, w = SIZES[s]
            title = f"{w}x{h}, tier {tier} ({len(tier_cases)} cases)"
            print(f"\n== {title}\n{text_table(rows)}", flush=True)
            sections.append(f"### {title}\n\n{markdown_table(rows)}\n")

    cli = "CLI: skipped (--no-cli)" if args.no_cli else cli_timing(photos)
    print("\n" + cli)
    elapsed = time.perf_counter() - t_start
    print(f"total bench time {elapsed / 60:.1f} min")

    if args.csv is not None:
        write_csv(args.csv, all_runs)
        print(f"wrote {args.csv}")
    if str(args.out) != "-":
        write_report(args, sections, checks, cli, elapsed, all_runs, threads, photo_note,
                     sorted(upsampled), note)
        print(f"wrote {args.out}")
    return 0


def write_csv(path: Path, runs: list[Run]) -> None:
    """One row per run: the case's parameters, the method, its error, time and status."""
    import csv

    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["case", "tier", "photo", "theta_deg", "shift_x", "shift_y", "gain", "bias",
                      "method", "error_px", "time_ms", "converged", "failure"])
        for r in runs:
            c = r.case
            out.writerow([c.name, c.tier, c.photo, f"{c.theta_deg:.4f}", f"{c.shift[0]:.4f}",
                          f"{c.shift[1]:.4f}", f"{c.gain:.4f}", f"{c.bias:.3f}", r.method,
                          f"{r.error:.5f}", f"{1000 * r.seconds:.2f}",
                          "" if r.converged is None else int(r.converged), r.failure or ""])


def _discrepancies(runs: list[Run]) -> list[str]:
    """Cases where regtool's default fails but some peer succeeds, and failure reasons."""
    by_case: dict[str, dict[str, Run]] = {}
    for r in runs:
        by_case.setdefault(r.case.name, {})[r.method] = r
    lines: list[str] = []
    for _, rs in by_case.items():
        d = rs.get(DEFAULT_METHOD)
        if d is None or d.error < SUCCESS_PX:
            continue
        good = [n for n, r in rs.items() if n in P.PEERS and r.error < SUCCESS_PX]
        if good:
            why = d.failure or f"err {d.error:.2f} px"
            line = f"- {d.case.describe()}: gauss-newton {why}"
            ncc = rs.get(NCC_METHOD)
            if ncc is not None:
                line += f"; gauss-newton+ncc err {ncc.error:.2f} px"
            lines.append(f"{line}; succeeded: {', '.join(good)}")
    return lines


def write_report(args: argparse.Namespace, sections: list[str], checks: list[str], cli: str,
                 elapsed: float, runs: list[Run], threads: dict[str, str], photo_note: str,
                 upsampled: list[str], note: str) -> None:
    """Write RESULTS.md."""
    failures: dict[str, dict[str, list[Run]]] = {}
    for r in runs:
        if r.failure:
            # Group messages that differ only in numbers.
            key = re.sub(r"-?\d+(\.\d+)?", "#", r.failure[:120])
            failures.setdefault(r.method, {}).setdefault(key, []).append(r)
    cmd = " ".join(["benchmarks/bench.py"] + (sys.argv[1:] if sys.argv[1:] else []))
    parts = [
        "# regtool benchmark results",
        "",
        f"Generated by `{cmd}` in {elapsed / 60:.1f} min. See README.md for the method.",
        "",
        *machine_info(),
        f"- threads: BLAS/OpenMP {args.threads}; "
        + ", ".join(f"{k} = {v}" for k, v in threads.items()),
        f"- photographs: {photo_note}"
        + (f"; enlarged with cubic splines to hold the larger sizes: {', '.join(upsampled)}"
           if upsampled else ""),
        f"- cases: {args.cases} per size and tier (seed {args.seed}); plain gd on the first "
        f"{args.gd_cases} of each"
        + (f", max_iter={args.gd_max_iter}" if args.gd_max_iter else "")
        + "; gauss-newton+ncc on the gain tier only",
        f"- success: mean endpoint error < {SUCCESS_PX} px; a failure (exception) counts as "
        "an infinite error; time is the median per call including failed calls",
    ]
    if note:
        parts.append(f"- note: {note}")
    parts += ["", "## Self-checks", "", "```", *checks, "```", "", "## Command line", "",
              cli, "", "## Accuracy and speed", "", *sections]
    disc = _discrepancies(runs)
    parts += ["## Cases where regtool's default fails but a peer succeeds", ""]
    parts += disc if disc else ["None."]
    silent = [r for r in runs if r.converged is True and not r.error < SUCCESS_PX]
    parts += ["", "## Reported converged but wrong (error >= 0.5 px)", ""]
    parts += [f"- {r.method} on {r.case.describe()}: err {r.error:.2f} px" for r in silent] \
        or ["None."]
    parts += ["", "## Failure and non-convergence reasons (count; # stands for a number)", ""]
    if failures:
        for m, reasons in failures.items():
            for k, rs in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
                fine = sum(r.error < SUCCESS_PX for r in rs)
                parts.append(f"- {m}: {len(rs)} x {k}" + (
                    f" ({fine} of them still within {SUCCESS_PX} px)" if fine else ""))
    else:
        parts.append("None.")
    args.out.write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
