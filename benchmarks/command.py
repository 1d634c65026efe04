"""Large images, the whole command: `regtool align` against reading and writing alone.

Run ``.venv/bin/python benchmarks/command.py`` (4096^2, prints the section) or
``benchmarks/command.py --results benchmarks/RESULTS.md`` (replaces its section there); see
"Large images: the whole command" in benchmarks/README.md.

On scaling.py's 8-bit PNG pair of each size, every measurement in a FRESH process:

- *command*: ``regtool align T S -o OUT.png --params OUT.json --quiet``, wall time;
- *baseline*: a Python process that imports what the command imports, reads both PNGs with
  :func:`regtool.io.read_image` and writes the source with :func:`regtool.io.write_image` to a
  PNG in the same output folder: what the command cannot avoid (start-up, decoding, encoding);
- the ratio command / baseline (target: at most 2.0), from medians of runs interleaved with
  each other so that both see the same load;
- the breakdown: registration from the JSON's ``time_s``; ``Result.warp`` of the source timed
  in another fresh process (default threads and one thread), with its peak memory.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import scaling  # noqa: E402  (the pairs, the memory probes and the section writer)

HEADING = "Large images: the whole command"
#: The issue's goal: the whole command at most this many times the baseline.
TARGET_RATIO = 2.0
DEFAULT_SIZES = (4096,)
#: Runs of the command, the baseline and the warp process (interleaved), and warp calls (of
#: each kind) in one warp process.
RUNS = 3
WARP_CALLS = 1
#: A subprocess running longer than this is killed.
TIMEOUT_S = 600.0

# The baseline process: the command's imports (click and regtool.cli; the library modules the
# align command loads: regtool.io, the engine with numpy and scipy.ndimage, the resampler),
# then reading both images and writing one PNG exactly as the command does.
BASELINE = """\
import sys
import regtool.cli, regtool.io, regtool.register, regtool.resample
target = regtool.io.read_image(sys.argv[1])
source = regtool.io.read_image(sys.argv[2])
regtool.io.write_image(sys.argv[3], source)
"""

# The warp process: Result.warp of the source, timed alone, after the same registration as the
# command's (regtool.align with every default).
WARP = """\
import json, sys, time
sys.path.insert(0, sys.argv[3])
import scaling
import regtool
from regtool import io, resample
target, source = io.read_image(sys.argv[1]), io.read_image(sys.argv[2])
result = regtool.align(target, source)
out = {"threads_default": resample.default_threads(),
       "threads_used": resample._thread_count(None, target.shape[0] * target.shape[1])}
for label, threads in (("default", None), ("one", 1)):
    times, growths = [], []
    for _ in range(int(sys.argv[4])):
        before = scaling.rss_bytes()
        exact = scaling.reset_peak()
        t0 = time.perf_counter()
        if threads is None:
            aligned = result.warp(source)
        else:
            aligned = resample.warp(source, result.matrix, result.target_shape, threads=1)
        times.append(time.perf_counter() - t0)
        growths.append(scaling.peak_bytes() - before)
        del aligned
    # the first call's growth: later calls may reuse memory the allocator kept
    out[label] = {"times": times, "growth": growths[0], "peak_exact": exact}
print("RESULT " + json.dumps(out), flush=True)
"""


def regtool_command() -> list[str]:
    """The ``regtool`` console script beside this interpreter, or ``python -m regtool``."""
    script = Path(sys.executable).with_name("regtool")
    return [str(script)] if script.exists() else [sys.executable, "-m", "regtool"]


# Runs argv[2:] as a child of this small process and writes the child's peak resident set (KB)
# and CPU time to the file argv[1]. Linux keeps a process's peak across exec, and a child
# forked from a large process (bench.py holds gigabytes of cases) starts with the parent's
# peak: forked from this small interpreter instead, the figure is the command's own.
_TRAMPOLINE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(cmd: list[str], log_path: Path) -> tuple[float, int, int, float]:
    """Run ``cmd``; return its wall time, exit status, peak resident set (bytes) and CPU time.

    The peak and CPU time are the command's own, measured by a small trampoline process
    (:data:`_TRAMPOLINE`) that forks it: a child forked straight from this process would
    report this process's peak if larger. The wall time includes the trampoline's start-up
    (about 20 ms), alike for the command and the baseline.
    """
    stats = log_path.with_suffix(".rusage")
    cmd = [sys.executable, "-c", _TRAMPOLINE, str(stats), *cmd]
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = t0 + TIMEOUT_S
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.002)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    try:
        peak_kb, cpu = stats.read_text().split()
        return wall, proc.returncode, 1024 * int(peak_kb), float(cpu)
    except (OSError, ValueError):  # killed before it could write: the trampoline's own
        return wall, proc.returncode, 1024 * usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def _warp_run(pair: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """One warp process: its RESULT line."""
    cmd = [sys.executable, "-c", WARP, pair["target"], pair["source"], str(HERE),
           str(WARP_CALLS)]
    _, code, _, _ = run(cmd, log_path)
    text = log_path.read_text(errors="replace")
    lines = [x for x in text.splitlines() if x.startswith("RESULT ")]
    if code != 0 or not lines:
        raise RuntimeError(f"warp process exited {code}: {text[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def measure(n: int, pair: dict[str, Any], runs: int, log: Any) -> dict[str, Any]:
    """The command, the baseline and the warp for one pair, interleaved run by run."""
    out_dir = Path(tempfile.mkdtemp(prefix=f"command-{n}-", dir=Path(pair["target"]).parent))
    try:
        out_png, out_json = out_dir / "aligned.png", out_dir / "aligned.json"
        base_png = out_dir / "baseline.png"
        command = regtool_command() + ["align", pair["target"], pair["source"], "-o",
                                       str(out_png), "--params", str(out_json), "--quiet"]
        baseline = [sys.executable, "-c", BASELINE, pair["target"], pair["source"],
                    str(base_png)]
        rows: dict[str, list[tuple[float, int, int, float]]] = {"command": [], "baseline": []}
        align_s: list[float] = []
        warps: list[dict[str, Any]] = []
        for i in range(runs):
            # interleaved, so that all three see the same load on a shared machine
            for name, cmd in (("command", command), ("baseline", baseline)):
                wall, code, peak, cpu = run(cmd, out_dir / f"{name}.log")
                if code not in (0, 1):  # 1: ran, did not converge: still a full command
                    text = (out_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} at {n}x{n} exited {code}: {text}")
                rows[name].append((wall, code, peak, cpu))
            align_s.append(float(json.loads(out_json.read_text())["time_s"]))
            warps.append(_warp_run(pair, out_dir / "warp.log"))
            log(f"  {n}x{n} run {i + 1}/{runs}: command {rows['command'][-1][0]:.2f} s, "
                f"baseline {rows['baseline'][-1][0]:.2f} s, align {align_s[-1]:.2f} s, warp "
                f"{warps[-1]['default']['times'][0]:.2f} s ({warps[-1]['threads_used']} "
                f"threads) / {warps[-1]['one']['times'][0]:.2f} s (1 thread)")
        doc = json.loads(out_json.read_text())
        sizes = {"png": out_png.stat().st_size, "baseline_png": base_png.stat().st_size}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    med = {k: statistics.median(w for w, _, _, _ in v) for k, v in rows.items()}
    return {
        "n": n, "runs": runs, "command": rows["command"], "baseline": rows["baseline"],
        "command_s": med["command"], "baseline_s": med["baseline"],
        "command_cpu_s": statistics.median(c for _, _, _, c in rows["command"]),
        "ratio": med["command"] / med["baseline"], "align_s": statistics.median(align_s),
        "warp_s": statistics.median(t for w in warps for t in w["default"]["times"]),
        "warp1_s": statistics.median(t for w in warps for t in w["one"]["times"]),
        "warp_growth": warps[0]["default"]["growth"], "threads_used": warps[0]["threads_used"],
        "threads_default": warps[0]["threads_default"],
        "converged": doc.get("converged"), "files": sizes,
    }


def _s(x: float) -> str:
    return f"{x:.2f}"


def _runs(result: dict[str, Any], key: str) -> str:
    return " / ".join(_s(run[0]) for run in result[key])


def report(results: list[dict[str, Any]], load_before: str, elapsed: float,
           argv: list[str]) -> str:
    """The section's markdown body (without its heading)."""
    env_threads = os.environ.get("REGTOOL_THREADS")
    lines = [
        f"Written by `{' '.join(['benchmarks/command.py'] + argv)}` in {elapsed / 60:.1f} min; "
        f"engine (regtool/) at commit {scaling.engine_state()}. See benchmarks/README.md, "
        f"\"{HEADING}\", for the method.",
        "",
        f"- date: {_dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {platform.system()} {platform.machine()}, nproc {os.cpu_count()}; "
        f"load average before / after: {load_before} / {scaling._load()} (others' work on a "
        "shared machine slows the threaded warp most)",
        f"- REGTOOL_THREADS: {env_threads if env_threads else 'unset'}",
        f"- each figure in a fresh process; command, baseline and warp process interleaved, "
        f"median of {results[0]['runs'] if results else RUNS} each (the warp process: read, "
        "`regtool.align`, then `Result.warp` timed, then the same warp with one thread)",
        "",
        "| size | whole command (s) | baseline: start, read both, write PNG (s) | ratio "
        f"(target {TARGET_RATIO:.1f}) | align time_s (s) | Result.warp (s) | warp, 1 thread "
        "(s) | rest (s) | command CPU (s) | warp threads | warp peak +MB | command peak RSS "
        "(MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = r["n"]
        rest = r["command_s"] - r["baseline_s"] - r["align_s"] - r["warp_s"]
        peak = max(p for _, _, p, _ in r["command"])
        mark = "" if r["ratio"] <= TARGET_RATIO else " (over)"
        lines.append(
            f"| {n}x{n} | {_s(r['command_s'])} | {_s(r['baseline_s'])} | "
            f"**{r['ratio']:.2f}**{mark} | {_s(r['align_s'])} | {_s(r['warp_s'])} | "
            f"{_s(r['warp1_s'])} | {_s(rest)} | {_s(r['command_cpu_s'])} | "
            f"{r['threads_used']} of {r['threads_default']} | "
            f"{r['warp_growth'] / 2**20:.0f} | {peak / 2**20:.0f} |")
    lines.append("")
    for r in results:
        n = r["n"]
        lines.append(
            f"- {n}x{n}: command runs {_runs(r, 'command')} s (exit "
            f"{'0' if r['converged'] else '1, not converged'}), baseline runs "
            f"{_runs(r, 'baseline')} s; aligned PNG {r['files']['png'] / 2**20:.1f} MB")
    lines.append("- rest = command - baseline - align - warp: the JSON, path checks, click, the "
                 "engine's imports beyond the baseline's, exit, and noise; command CPU = user "
                 "+ system time of the command process (above its wall time when threads ran)")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="square sides, comma-separated (default %(default)s)")
    p.add_argument("--runs", type=int, default=RUNS,
                   help="runs of the command and of the baseline (default %(default)s)")
    p.add_argument("--pairs", type=Path, default=scaling.DEFAULT_PAIRS,
                   help="scaling.py's pair folder, reused (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="pair seed (default 0)")
    p.add_argument("--results", type=Path, default=None,
                   help=f"replace (or add) the '## {HEADING}' section of this markdown file")
    p.add_argument("--out", default="-",
                   help="also write the section to this file ('-', the default: print only)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure every size; print the section, and write it where asked.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments without the program name; by default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success.
    """
    args_list = list(argv) if argv is not None else sys.argv[1:]
    args = parse_args(args_list)
    t_start = time.perf_counter()
    load_before = scaling._load()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    def log(text: str) -> None:
        print(text, flush=True)

    log(f"command: pairs in {args.pairs}")
    pairs = scaling.ensure_pairs(sizes, args.pairs, args.seed, log=log)
    results = [measure(n, pairs[n], args.runs, log) for n in sizes]
    body = report(results, load_before, time.perf_counter() - t_start, args_list)
    print(f"\n## {HEADING}\n\n{body}")
    if args.out != "-":
        Path(args.out).write_text(f"## {HEADING}\n\n{body}")
        log(f"wrote {args.out}")
    if args.results is not None:
        scaling.replace_section(args.results, HEADING, body)
        log(f"wrote the '{HEADING}' section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
