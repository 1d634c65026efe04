"""Peak memory and wall time of ``regtool stack`` on a long stack, against the stack's size.

    python benchmarks/stack_memory.py [--frames 200] [--size 512] [--jobs 1 2] [--keep DIR]

Writes a uint16 ImageJ stack of a photograph drifting (0.05 px and 0.01 deg a frame) and
bleaching, runs ``python -m regtool stack`` on it for each ``--jobs``, and samples the memory
of the command's whole process tree (the parent, the forkserver, the resource tracker and the
workers) every 20 ms from /proc: the peak of the sum of their RSS (which counts the shared
libraries once per process), of their PSS (each shared page split between the processes that
map it: the memory the run really takes), and the parent's RSS; and the CPU seconds of the
whole tree, which say more than the wall time on a shared machine (the load average is
printed). Linux only.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, os.fspath(ROOT))


def make_stack(path: Path, frames: int, size: int) -> int:
    """Write the stack frame by frame (it never is in memory whole); return its data size."""
    import tifffile

    from regtool.io import read_image
    from regtool.resample import warp
    from regtool.transform import about_center, image_center

    photo = read_image(ROOT / "sample_images" / "camera.png").astype(np.float64) / 255.0
    rng = np.random.default_rng(0)
    scale = photo.shape[0] / (size + 16)
    origin = np.array([[scale, 0, 8 * scale], [0, scale, 8 * scale], [0, 0, 1.0]])
    center = image_center((size, size))

    def pages():
        for k in range(frames):
            move = about_center(0.05 * k, -0.03 * k, math.radians(0.01 * k), center)
            frame = warp(photo, origin @ move, (size, size)) * math.exp(-k / frames) * 0.8
            frame += 0.05 + rng.normal(0, 0.003, frame.shape)
            yield np.clip(np.rint(frame * 65535), 0, 65535).astype(np.uint16)

    with tifffile.TiffWriter(path, imagej=True) as tw:
        tw.write(pages(), shape=(frames, size, size), dtype=np.uint16,
                 metadata={"axes": "TYX"})
    return frames * size * size * 2


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(args: list[str], cwd: Path) -> tuple[float, float, int, int, int, int]:
    """Run a command; return (wall s, CPU s of its whole tree, peak RSS and PSS of the tree,
    the parent's peak RSS, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL)
    peak_rss = peak_pss = peak_parent = 0
    cpu: dict[int, float] = {}  # the last reading of every process seen
    while proc.poll() is None:
        rss = pss = 0
        todo = [proc.pid]
        while todo:
            pid = todo.pop()
            cpu[pid] = max(cpu.get(pid, 0.0), _cpu(pid))
            rss += _kb(f"/proc/{pid}/status", "VmRSS:")
            pss += _kb(f"/proc/{pid}/smaps_rollup", "Pss:")
            todo += _children(pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        peak_parent = max(peak_parent, _kb(f"/proc/{proc.pid}/status", "VmRSS:"))
        time.sleep(0.02)
    # the CPU of the last 20 ms of each process is missed
    return (time.perf_counter() - start, sum(cpu.values()), peak_rss, peak_pss, peak_parent,
            proc.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--reference", default="previous")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep its files")
    opts = parser.parse_args()
    work = opts.keep or Path(tempfile.mkdtemp(prefix="regtool-stack-"))
    work.mkdir(parents=True, exist_ok=True)
    stack = work / "long.tif"
    size = make_stack(stack, opts.frames, opts.size)
    mb = 1024 * 1024
    print(f"stack: {opts.frames} frames of {opts.size}x{opts.size} uint16, {size / mb:.0f} MiB")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| -j | wall s | CPU s, all processes | peak RSS, all processes | "
          "peak PSS, all processes | parent's peak RSS | exit |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for jobs in opts.jobs:
        out = work / f"aligned_j{jobs}.tif"
        wall, cpu, rss, pss, parent, code = measure(
            [sys.executable, "-m", "regtool", "stack", os.fspath(stack), "-o", os.fspath(out),
             "-j", str(jobs), "--reference", opts.reference, "-q"], work)
        print(f"| {jobs} | {wall:.1f} | {cpu:.1f} | {rss / mb:.0f} MiB "
              f"({100 * rss / size:.0f} % of the stack) | {pss / mb:.0f} MiB "
              f"({100 * pss / size:.0f} %) | {parent / mb:.0f} MiB | {code} |")
    if opts.keep is None:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
