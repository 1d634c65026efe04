"""Where `regtool align` spends its time and memory, stage by stage, on the command-line path.

Run ``.venv/bin/python benchmarks/profile_stages.py`` (default sizes 512 and 4096; the pairs
are scaling.py's, made once). For each size:

* **whole process**: wall time of ``regtool align T S -o OUT --params JSON --quiet`` in a
  subprocess (interpreter start-up, imports and exit included), median of a few runs; and the
  bare interpreter (``python -c pass``) for comparison;
* **stages**: a fresh process runs the same command line in-process (``regtool.cli.main``) with
  light wrappers around the functions of each stage (``regtool.io.read_image``,
  ``regtool.register.luminance``, ``regtool.pyramid.build``, ``regtool.init.search``,
  ``regtool.loss.prepare_level``, the Gauss-Newton solver, ``regtool.quality.assess``,
  ``regtool.uncertainty.estimate``,
  ``Result.warp``, ``regtool.io.write_image``/``write_json`` ...): time, and the peak
  resident-set growth during the stage (VmHWM reset at each stage's start); the per-level and
  init times also come from the JSON the command writes (``levels[i].time_s``,
  ``init.time_s``, ``time_s``);
* **cProfile**: another fresh process runs the command under cProfile: cumulative times of the
  same functions (a cross-check of the wrappers, with cProfile's overhead) and the functions
  with the most own time.

Threads are pinned to 1 (as in bench.py and scaling.py). The output is markdown on stdout
(``--out FILE`` to also write it to a file).
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        os.environ[_var] = "1"

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
# scaling.py (pairs, engine commit) is imported only by the driver: it loads numpy, and a child
# must import numpy inside its measured "imports" stage, as the command does.

SIZES = (512, 4096)
#: Fresh-process runs per size: (whole command, timed stages). cProfile runs once.
RUNS = {512: (5, 3), 1024: (5, 3), 2048: (3, 2), 4096: (3, 2)}
RUNS_LARGE = (1, 1)


# --------------------------------------------------------------------------- child: stages


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return 1024 * int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """VmHWM := VmRSS (Linux >= 4.0); as in scaling.reset_peak."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _rss() -> int:
    return _status_bytes("VmRSS")


def _hwm() -> int:
    return _status_bytes("VmHWM")


class StageTimer:
    """Wrap functions; record each call's time and peak RSS growth, nesting included.

    A stage's peak is the highest resident set seen while it ran (its own VmHWM, or a nested
    stage's peak), minus the resident set at its start. VmHWM is reset when a stage starts, so
    each stage sees only its own peak; the enclosing stage gets it back through the nesting.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._stack: list[list[int]] = []  # per open stage: [rss at start, peak so far]

    def _enter(self) -> tuple[int, float]:
        hwm = _hwm()
        if self._stack:
            self._stack[-1][1] = max(self._stack[-1][1], hwm)
        _reset_peak()
        rss = _rss()
        self._stack.append([rss, rss])
        return rss, time.perf_counter()

    def _exit(self, name: str, label: str, rss: int, t0: float) -> None:
        dt = time.perf_counter() - t0
        frame = self._stack.pop()
        peak = max(frame[1], _hwm())
        if self._stack:
            self._stack[-1][1] = max(self._stack[-1][1], peak)
        self.calls.append({"name": name, "label": label, "time_s": dt, "rss": rss,
                           "peak": peak, "growth": peak - rss, "depth": len(self._stack)})

    def wrap(self, owner: Any, attr: str, name: str, label_of: Any = None) -> None:
        fn = owner[attr] if isinstance(owner, dict) else getattr(owner, attr)
        timer = self

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            rss, t0 = timer._enter()
            try:
                return fn(*args, **kwargs)
            finally:
                label = ""
                if label_of is not None:
                    try:
                        label = label_of(*args, **kwargs)
                    except Exception:  # a label is a nicety
                        label = ""
                timer._exit(name, label, rss, t0)

        wrapped.__wrapped__ = fn  # type: ignore[attr-defined]
        if isinstance(owner, dict):
            owner[attr] = wrapped
        else:
            setattr(owner, attr, wrapped)


def _shape(a: Any) -> str:
    s = getattr(a, "shape", None)
    return f"{s[1]}x{s[0]}" if s is not None and len(s) >= 2 else ""


def child_stages(target: str, source: str, workdir: str) -> dict[str, Any]:
    """Run the command line in this process with stage wrappers; return the records."""
    t_all = time.perf_counter()
    _reset_peak()
    rss0 = _rss()
    import regtool.cli
    import regtool.init
    import regtool.io
    import regtool.loss
    import regtool.optimize
    import regtool.pyramid
    import regtool.quality
    import regtool.register
    import regtool.resample
    import regtool.uncertainty  # noqa: F401
    t_import = time.perf_counter() - t_all
    import_peak = _hwm() - rss0

    st = StageTimer()
    io, reg = regtool.io, regtool.register
    st.wrap(io, "read_image", "read", lambda p: Path(p).name)
    st.wrap(io, "check_output_path", "output checks")
    st.wrap(reg, "luminance", "luminance", lambda img, which, *a, **k: which)
    st.wrap(regtool.pyramid, "build", "pyramid build", lambda img, n: f"{_shape(img)}, {n}")
    st.wrap(regtool.pyramid, "build_mask", "pyramid build (masks)")
    st.wrap(regtool.init, "search", "init search")
    st.wrap(regtool.loss, "prepare_level", "prepare level",
            lambda t, *a, **k: _shape(t))
    st.wrap(regtool.optimize.SOLVERS, "gauss-newton", "solve level",
            lambda level, *a, **k: f"{level.shape[1]}x{level.shape[0]}")
    st.wrap(regtool.quality, "assess", "quality check")
    st.wrap(regtool.uncertainty, "estimate", "uncertainty")
    st.wrap(reg, "align", "align (total)")
    st.wrap(reg.Result, "warp", "warp output (cubic)")
    st.wrap(reg.Result, "to_dict", "JSON document")
    st.wrap(io, "write_image", "write image")
    st.wrap(io, "write_json", "write JSON")
    # regtool.align is looked up on the package, which cached the original at first use
    regtool.__dict__.pop("align", None)

    out_img, out_json = Path(workdir, "aligned.png"), Path(workdir, "aligned.json")
    argv = ["align", target, source, "-o", str(out_img), "--params", str(out_json), "--quiet"]
    rss_cli, t_cli = st._enter()
    try:
        regtool.cli.main(argv)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    st._exit("cli.main (total)", "", rss_cli, t_cli)
    doc = json.loads(out_json.read_text()) if out_json.exists() else {}
    return {"calls": st.calls, "import_s": t_import, "import_growth": import_peak,
            "status": status, "doc": {k: doc.get(k) for k in ("init", "levels", "time_s",
                                                              "converged", "reason")},
            "total_s": time.perf_counter() - t_all, "peak_rss": _hwm()}


def child_cprofile(target: str, source: str, workdir: str) -> dict[str, Any]:
    """Run the command line under cProfile; cumulative times of the stage functions, hot spots."""
    import cProfile
    import pstats

    import regtool.cli
    import regtool.init
    import regtool.io
    import regtool.register
    import regtool.resample  # noqa: F401  (the modules' imports are not what is profiled)

    out_img, out_json = Path(workdir, "aligned.png"), Path(workdir, "aligned.json")
    argv = ["align", target, source, "-o", str(out_img), "--params", str(out_json), "--quiet"]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        regtool.cli.main(argv)
    except SystemExit:
        pass
    prof.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    wanted = {
        ("io.py", "read_image"), ("prepare.py", "luminance"), ("pyramid.py", "build"),
        ("init.py", "search"), ("loss.py", "prepare_level"), ("optimize.py", "gauss_newton"),
        ("quality.py", "assess"), ("uncertainty.py", "estimate"), ("register.py", "align"),
        ("resample.py", "warp"),
        ("io.py", "write_image"), ("io.py", "write_json"), ("loss.py", "spline_coefficients"),
        ("loss.py", "image_gradient"), ("loss.py", "residual"), ("loss.py", "gram"),
        ("init.py", "candidates"), ("cli.py", "align_command"),
    }
    named: list[list[Any]] = []
    rows: list[list[Any]] = []
    root = str(ROOT / "regtool")
    for (path, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = Path(path).name
        where = f"{short}:{line}({func})" if path != "~" else func
        if path.startswith(root) and (short, func) in wanted:
            named.append([f"regtool/{short}:{line}", func, nc, tt, ct])
        rows.append([where, nc, tt, ct])
    named.sort(key=lambda r: -r[4])
    rows.sort(key=lambda r: -r[2])
    return {"total_s": total, "named": named, "top_tottime": rows[:15]}


# --------------------------------------------------------------------------- driver


def _child(mode: str, meta: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
               "--target", meta["target"], "--source", meta["source"], "--workdir", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    err = (proc.stderr or proc.stdout).strip().splitlines()
    raise RuntimeError(f"{mode} child exited {proc.returncode}: {err[-1] if err else ''}")


def whole_process(meta: dict[str, Any], runs: int) -> tuple[list[float], int]:
    """Wall times of the regtool command in a subprocess."""
    exe = Path(sys.executable).parent / "regtool"
    times: list[float] = []
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(exe), "align", meta["target"], meta["source"], "-o",
               str(Path(tmp, "aligned.png")), "--params", str(Path(tmp, "aligned.json")),
               "--quiet"]
        for _ in range(runs):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - t0)
            status = proc.returncode
    return times, status


def interpreter_start(runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_calls(runs: list[dict[str, Any]], name: str, label: str | None = None
                  ) -> tuple[float, float, int]:
    """Median over runs of the summed time of the matching calls; max growth; call count."""
    sums, growth, count = [], 0.0, 0
    for r in runs:
        calls = [c for c in r["calls"] if c["name"] == name
                 and (label is None or c["label"] == label)]
        sums.append(sum(c["time_s"] for c in calls))
        growth = max([growth] + [c["growth"] for c in calls])
        count = len(calls)
    return statistics.median(sums), growth, count


def stage_rows(runs: list[dict[str, Any]], whole: float
               ) -> list[tuple[str, float, float | None, str]]:
    """(stage, seconds, peak growth bytes or None, note) in command-line order."""
    rows: list[tuple[str, float, float | None, str]] = []
    first = runs[0]

    def add(title: str, name: str) -> float:
        t, g, n = _median_calls(runs, name)
        if n:
            rows.append((title, t, g, ""))
        return t

    def nth(r: dict[str, Any], name: str, i: int) -> dict[str, Any]:
        return [c for c in r["calls"] if c["name"] == name][i]

    rows.append(("start-up, exit and noise (whole process - in-process total)",
                 whole - statistics.median(r["total_s"] for r in runs), None, ""))
    rows.append(("imports (regtool.cli, io, register: numpy, scipy, imageio, click)",
                 statistics.median(r["import_s"] for r in runs),
                 max(r["import_growth"] for r in runs), ""))
    inside = add("read target + source (io.read_image x2)", "read")
    inside += add("output path checks", "output checks")
    t_align, g_align, _ = _median_calls(runs, "align (total)")
    part = add("align: luminance x2", "luminance")
    part += add("align: pyramid build (target, source)", "pyramid build")
    part += add("align: pyramid build (masks)", "pyramid build (masks)")
    levels = first["doc"].get("levels") or []
    init = first["doc"].get("init") or {}
    n_prep = len([c for c in first["calls"] if c["name"] == "prepare level"])
    if any(c["name"] == "init search" for c in first["calls"]):
        # the search level is prepared first, then searched; the levels follow
        t_prep = statistics.median(nth(r, "prepare level", 0)["time_s"] for r in runs)
        t_search, g_search, _ = _median_calls(runs, "init search")
        label = nth(first, "prepare level", 0)["label"]
        rows.append((f"align: init, global search at a coarse level ({label} here), its "
                     "preparation included", t_prep + t_search,
                     max(g_search, max(nth(r, "prepare level", 0)["growth"] for r in runs)),
                     f"{init.get('candidates', '?')} cand."))
        part += t_prep + t_search
    # levels, coarse to fine: the last len(levels) prepare calls and the solve calls
    coarse_t, coarse_g, coarse_n = 0.0, 0.0, 0
    fine_rows: list[tuple[str, float, float | None, str]] = []
    for i, lev in enumerate(levels):
        j = n_prep - len(levels) + i
        tp = statistics.median(nth(r, "prepare level", j)["time_s"] for r in runs)
        ts = statistics.median(nth(r, "solve level", i)["time_s"] for r in runs)
        gp = max(nth(r, "prepare level", j)["growth"] for r in runs)
        gs = max(nth(r, "solve level", i)["growth"] for r in runs)
        part += tp + ts
        k = lev["level"]
        if k >= 2:
            coarse_t, coarse_g, coarse_n = coarse_t + tp + ts, max(coarse_g, gp, gs), coarse_n + 1
            continue
        what = "full size" if k == 0 else "half size"
        fine_rows.append((f"align: level {k} ({what}), prepare (gradients, spline, selection)",
                          tp, gp, ""))
        fine_rows.append((f"align: level {k} ({what}), solve", ts, gs,
                          f"{lev['iterations']} it"))
    if coarse_n:
        rows.append(("align: levels 2 and coarser, prepare + solve", coarse_t, coarse_g,
                     f"{coarse_n} levels"))
    rows += fine_rows  # levels come coarse to fine: level 1, then level 0
    part += add("align: quality check (quality.assess)", "quality check")
    part += add("align: error bars (uncertainty.estimate)", "uncertainty")
    rows.append(("align: rest (checks, transforms, Result)", max(t_align - part, 0.0), None, ""))
    rows.append(("= align total (its own time_s)",
                 statistics.median(r["doc"].get("time_s") or 0.0 for r in runs), g_align, ""))
    inside += t_align
    inside += add("warp of the output (Result.warp, cubic)", "warp output (cubic)")
    inside += add("JSON document (Result.to_dict)", "JSON document")
    inside += add("write aligned image (io.write_image)", "write image")
    inside += add("write parameters (io.write_json)", "write JSON")
    t_cli, _, _ = _median_calls(runs, "cli.main (total)")
    rows.append(("command line rest (click, summary)", max(t_cli - inside, 0.0), None, ""))
    rows.append(("**whole process (wall, subprocess)**", whole, None, ""))
    return rows


def profile_size(n: int, meta: dict[str, Any], log: Any = print) -> dict[str, Any]:
    n_whole, n_timed = RUNS.get(n, RUNS_LARGE)
    times, status = whole_process(meta, n_whole)
    log(f"{n}: whole process {1000 * statistics.median(times):.0f} ms "
        f"(x{n_whole}, exit {status})")
    runs = [_child("stages", meta) for _ in range(n_timed)]
    log(f"{n}: stages done ({n_timed} fresh processes)")
    prof = _child("cprofile", meta)
    log(f"{n}: cProfile done ({1000 * prof['total_s']:.0f} ms under the profiler)")
    return {"n": n, "whole": times, "status": status, "runs": runs, "cprofile": prof}


def _process_peak(run: dict[str, Any]) -> int:
    """Highest resident set of a stages child (the wrappers reset VmHWM as they go)."""
    return max([run["peak_rss"]] + [c["peak"] for c in run["calls"]])


def markdown(results: list[dict[str, Any]], interp: float, engine: str) -> str:
    sizes = [r["n"] for r in results]
    per = {r["n"]: stage_rows(r["runs"], statistics.median(r["whole"])) for r in results}
    titles: list[str] = []
    for n in sizes:
        for row in per[n]:
            if row[0] not in titles:
                titles.append(row[0])
    header = ["stage"]
    for n in sizes:
        header += [f"{n}^2 ms", "%", "peak +MB"]
    lines = ["| " + " | ".join(header) + " |",
             "|---|" + "|".join("---:" for _ in header[1:]) + "|"]
    for title in titles:
        row = [title]
        for n in sizes:
            whole = statistics.median(next(r for r in results if r["n"] == n)["whole"])
            got = next((x for x in per[n] if x[0] == title), None)
            if got is None:
                row += ["", "", ""]
                continue
            _, t, g, note = got
            ms = f"{1000 * t:.0f}" if abs(t) >= 0.0095 else f"{1000 * t:.1f}"
            row += [ms + (f" ({note})" if note else ""),
                    f"{100 * t / whole:.0f}" if whole else "",
                    "" if g is None else f"{g / 2**20:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    out = [f"Engine (regtool/) at commit {engine}; "
           f"{_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; 1 thread; "
           "pairs from scaling.py (8-bit gray PNG).", "", "\n".join(lines), ""]
    for r in results:
        n = r["n"]
        peak = max(_process_peak(x) for x in r["runs"])
        out.append(f"- {n}x{n}: whole process median {1000 * statistics.median(r['whole']):.0f}"
                   f" ms over {len(r['whole'])} runs (min {1000 * min(r['whole']):.0f}), exit "
                   f"{r['status']}; stages: median of {len(r['runs'])} fresh processes; peak "
                   f"resident set of the process {peak / 2**20:.0f} MB "
                   f"({peak / (n * n):.0f} B per target pixel)")
    out += [f"- a bare interpreter (`python -c pass`) takes {1000 * interp:.0f} ms", ""]
    for r in results:
        n, prof = r["n"], r["cprofile"]
        out += [f"cProfile at {n}x{n} ({1000 * prof['total_s']:.0f} ms under the profiler): "
                "cumulative time of the stage functions", "",
                "| function | calls | own ms | cumulative ms |", "|---|---:|---:|---:|"]
        out += [f"| `{m} {f}` | {nc} | {1000 * tt:.1f} | {1000 * ct:.1f} |"
                for m, f, nc, tt, ct in prof["named"]]
        out += ["", f"Most own time at {n}x{n}:", "",
                "| function | calls | own ms | cumulative ms |", "|---|---:|---:|---:|"]
        out += [f"| `{w}` | {nc} | {1000 * tt:.1f} | {1000 * ct:.1f} |"
                for w, nc, tt, ct in prof["top_tottime"]]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                   help="square sides (default %(default)s)")
    p.add_argument("--pairs", type=Path, default=None,
                   help="folder of scaling.py's pairs (made if missing; default: scaling.py's)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    p.add_argument("--json", type=Path, default=None, help="also write the raw records here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--target", default=None, help=argparse.SUPPRESS)
    p.add_argument("--source", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        fn = child_stages if args.child == "stages" else child_cprofile
        print("RESULT " + json.dumps(fn(args.target, args.source, args.workdir)), flush=True)
        return 0
    import scaling

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    pairs = scaling.ensure_pairs(sizes, args.pairs or scaling.DEFAULT_PAIRS,
                                 log=lambda s: print(s, flush=True))
    interp = interpreter_start()
    results = [profile_size(n, pairs[n], log=lambda s: print(s, flush=True)) for n in sizes]
    text = markdown(results, interp, scaling.engine_state())
    print()
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
