"""Faults: a read-only output folder, a full disk, a source deleted or truncated while a batch
runs, a worker process killed in the middle of a batch or of a stack.

Each test runs the real command (click's runner in this process, or ``python -m regtool`` in a
process of its own where processes and signals matter) and checks what a user sees and keeps:
the exit status; exactly one line on stderr per failure, ``regtool: error: <file>: <problem>``,
and no traceback; no temporary (``.<name>.XXXX.part``, ``.probe``, ``.mean.npy``) and no
half-written output anywhere in the output folder; the other sources' outputs present and
right; ``results.csv`` agreeing with the disk, a row for every source that ran with its status
and reason; and that a rerun with ``--skip-existing`` completes the batch.

How the faults are made
-----------------------
* A read-only folder: ``chmod 0o555`` when the tests do not run as root (root ignores
  permissions); as root, a real tmpfs mounted read-only where ``mount`` works (root with
  CAP_SYS_ADMIN: here, and in a container run as root with that capability); otherwise
  simulated: creating a file or a folder in it fails with EROFS (see ``HOOK``).
* A full disk: a real tmpfs mounted with ``size=`` where ``mount`` works, holding a ballast
  file that leaves a few pages free; otherwise simulated page by page as tmpfs counts them: a
  write past the free pages writes what fits, then fails with ENOSPC, as tmpfs does. Set
  ``REGTOOL_TEST_FS=simulate`` to run the simulation where mounting works.
* A deleted or truncated source: really deleted or truncated between two tasks of a ``-j 1``
  batch (the loop over finished tasks is wrapped: the next source is submitted only once the
  wrapper returns).
* A killed worker: a real SIGKILL to a real worker process of ``python -m regtool``. Where it
  dies is arranged by ``HOOK`` as the subprocess's ``sitecustomize``: the worker that opens a
  file of a given name says its pid and waits there to be killed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tifffile
from clitools import run
from test_batch import assert_recovered, write_sources, write_target
from test_stack import make_frames

from regtool import batch, io

CHECKOUT = Path(__file__).resolve().parent.parent
PAGE = 4096  # tmpfs counts its size in pages
SLOW_S = 60  # a deadline for a subprocess to reach a point, or to end
N_SOURCES = 6  # of a batch

# The fault hooks of the simulations and of the killed workers, written as the `sitecustomize`
# of a subprocess (and loaded in this process for the simulations the runner needs). Test-only:
# regtool itself has no fault seam; every regtool code path runs as it would on a real disk.
HOOK = r'''
"""Fault hooks for regtool's tests/test_faults.py (generated; a test-only sitecustomize).

REGTOOL_TEST_FAULTS holds a JSON object with any of:
  "pause": [PATTERN, DIR]  a worker process (one with a multiprocessing parent) that opens a
                           file whose name matches the fnmatch PATTERN (with os.open: once it
                           is open), or moves a file there with os.replace (once it is moved),
                           writes DIR/<pid>, then sleeps there, to be killed;
  "readonly": DIR          creating a file or a folder under DIR, or opening one there to
                           write, fails with EROFS, as on a read-only mount;
  "full": [DIR, BYTES]     the files under DIR hold BYTES at most, counted in 4096-byte pages
                           as tmpfs counts them: a write that needs a page more writes what fits
                           in the pages the file has, then fails with ENOSPC.
"""
import builtins
import errno
import fcntl
import fnmatch
import io
import json
import os
import time

PAGE = 4096
_REAL = {"open": builtins.open, "os_open": os.open, "write": os.write, "mkdir": os.mkdir,
         "replace": os.replace}
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_STATE = {"pause": None, "readonly": None, "full": None}
_FDS = {}  # fd opened under the full folder -> (st_dev, st_ino), to tell a reused number


def _under(path, folder):
    if folder is None or isinstance(path, int):
        return False
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        return False
    full = os.path.abspath(path)
    return full == folder or full.startswith(folder + os.sep)


def _pages(size):
    return -(-size // PAGE)


def _room(fd, n):
    """How many of n bytes written at fd fit on the full disk (None: not one of its files)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if _FDS.get(fd) != (st.st_dev, st.st_ino):
        return None
    folder, capacity = _STATE["full"]
    used = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                used += _pages(os.lstat(os.path.join(root, name)).st_size) * PAGE
            except OSError:
                pass
    appending = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    pos = st.st_size if appending else os.lseek(fd, 0, os.SEEK_CUR)
    largest = (_pages(st.st_size) + max(0, capacity - used) // PAGE) * PAGE
    return max(0, min(n, largest - pos))


def _no_space():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Raw(io.RawIOBase):
    """A file of the full disk: writes go through _room, so buffered or not they fill it."""

    def __init__(self, raw):
        self._raw = raw
        self.name = raw.name
        self.mode = raw.mode

    def readable(self):
        return self._raw.readable()

    def writable(self):
        return self._raw.writable()

    def seekable(self):
        return self._raw.seekable()

    def readinto(self, b):
        return self._raw.readinto(b)

    def write(self, b):
        data = memoryview(b).cast("B")
        fits = _room(self._raw.fileno(), len(data))
        if fits is None:
            fits = len(data)
        if data and not fits:
            raise _no_space()
        return self._raw.write(data[:fits])

    def seek(self, pos, whence=0):
        return self._raw.seek(pos, whence)

    def tell(self):
        return self._raw.tell()

    def truncate(self, size=None):
        return self._raw.truncate(size)

    def fileno(self):  # numpy and Pillow would write to the descriptor itself
        raise io.UnsupportedOperation("fileno")

    def close(self):
        if not self.closed:
            _FDS.pop(self._raw.fileno(), None)
            self._raw.close()
        super().close()


def _pause_here(path):
    import multiprocessing

    pause = _STATE["pause"]
    if pause is None or isinstance(path, int) or multiprocessing.parent_process() is None:
        return
    try:
        name = os.path.basename(os.fsdecode(os.fspath(path)))
    except TypeError:
        return
    if fnmatch.fnmatch(name, pause[0]):
        marker = os.path.join(pause[1], str(os.getpid()))
        with _REAL["open"](marker + ".tmp", "w") as fh:
            fh.write(name)
        os.replace(marker + ".tmp", marker)
        time.sleep(600)


def _open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
          closefd=True, opener=None):
    _pause_here(file)
    writing = any(c in mode for c in "wax+")
    if writing and _under(file, _STATE["readonly"]):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(file))
    ours = writing and _STATE["full"] is not None and (
        _under(file, _STATE["full"][0]) or (isinstance(file, int) and file in _FDS))
    if not ours:
        return _REAL["open"](file, mode, buffering, encoding, errors, newline, closefd, opener)
    raw = _Raw(io.FileIO(file, mode.replace("b", "").replace("t", ""), closefd, opener))
    st = os.fstat(raw._raw.fileno())
    _FDS[raw._raw.fileno()] = (st.st_dev, st.st_ino)
    binary = "b" in mode
    if buffering == 0 and binary:
        return raw
    size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
    kind = io.BufferedRandom if "+" in mode else io.BufferedWriter
    buffered = kind(raw, size)
    if binary:
        return buffered
    return io.TextIOWrapper(buffered, encoding or "utf-8", errors, newline,
                            line_buffering=buffering == 1)


def _os_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & _WRITING and _under(path, _STATE["readonly"]):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
    fd = _REAL["os_open"](path, flags, mode, dir_fd=dir_fd)
    if _STATE["full"] is not None and _under(path, _STATE["full"][0]):
        st = os.fstat(fd)
        _FDS[fd] = (st.st_dev, st.st_ino)
    _pause_here(path)  # once the file exists (a temporary made by mkstemp)
    return fd


def _os_write(fd, data):
    if _STATE["full"] is not None:
        fits = _room(fd, len(memoryview(data).cast("B")))
        if fits is not None:
            if data and not fits:
                raise _no_space()
            data = memoryview(data).cast("B")[:fits]
    return _REAL["write"](fd, data)


def _replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
    _REAL["replace"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
    _pause_here(dst)  # once the file is in place


def _mkdir(path, mode=0o777, *, dir_fd=None):
    if _under(path, _STATE["readonly"]):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
    return _REAL["mkdir"](path, mode, dir_fd=dir_fd)


def install(config):
    """Install the hooks that ``config`` asks for; return a function that removes them."""
    _STATE["pause"] = config.get("pause")
    _STATE["readonly"] = os.path.abspath(config["readonly"]) if "readonly" in config else None
    full = config.get("full")
    _STATE["full"] = None if full is None else (os.path.abspath(full[0]), int(full[1]))
    builtins.open = io.open = _open
    os.open, os.write, os.mkdir, os.replace = _os_open, _os_write, _mkdir, _replace

    def uninstall():
        builtins.open = io.open = _REAL["open"]
        os.open, os.write, os.mkdir = _REAL["os_open"], _REAL["write"], _REAL["mkdir"]
        os.replace = _REAL["replace"]
        _STATE.update(pause=None, readonly=None, full=None)
        _FDS.clear()

    return uninstall


if os.environ.get("REGTOOL_TEST_FAULTS"):
    install(json.loads(os.environ["REGTOOL_TEST_FAULTS"]))
'''


# --------------------------------------------------------------------------------------------
# Making the faults
# --------------------------------------------------------------------------------------------

_MOUNTS: dict[str, bool] = {}


def _mount(folder: Path, options: str) -> bool:
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", os.fspath(folder)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", os.fspath(folder)], capture_output=True, timeout=20)


def can_mount(scratch: Path) -> bool:
    """Whether a tmpfs can be mounted here (root with CAP_SYS_ADMIN), asked once."""
    if os.environ.get("REGTOOL_TEST_FS") == "simulate":
        return False
    if "tmpfs" not in _MOUNTS:
        probe = scratch / "mount-probe"
        probe.mkdir()
        _MOUNTS["tmpfs"] = _mount(probe, f"size={PAGE}")
        if _MOUNTS["tmpfs"]:
            _umount(probe)
        probe.rmdir()
    return _MOUNTS["tmpfs"]


@pytest.fixture
def hook_file(tmp_path: Path) -> Path:
    """A folder holding HOOK as sitecustomize.py (for a subprocess's PYTHONPATH)."""
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOOK)
    return folder


@pytest.fixture
def hooks(hook_file: Path) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Install HOOK's simulations in this process: ``hooks(config)``; removed after the test."""
    spec = importlib.util.spec_from_file_location("regtool_test_faults_hook",
                                                  hook_file / "sitecustomize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    undo: list[Callable[[], None]] = []
    yield lambda config: undo.append(module.install(config))
    for step in undo:
        step()


class Disk:
    """A folder ``root`` on a disk of ``size`` bytes of which ``free`` are free, and the output
    folder ``root/out`` on it: a real tmpfs (``real``) or the simulation ``config``."""

    def __init__(self, root: Path, size: int, free: int, real: bool) -> None:
        self.root, self.size, self.real = root, size, real
        self.out = root / "out"
        self.out.mkdir()
        with open(root / "ballast", "wb") as fh:  # leaves `free` bytes, in whole pages
            fh.write(b"\0" * (size - free))

    @property
    def config(self) -> dict[str, Any]:
        return {} if self.real else {"full": [os.fspath(self.root), self.size]}

    def grow(self, size: int) -> None:
        """Make the disk larger (the rerun after the user freed space)."""
        if self.real:
            assert subprocess.run(["mount", "-o", f"remount,size={size}", os.fspath(self.root)],
                                  capture_output=True, timeout=20).returncode == 0
        self.size = size


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int, int], Disk]]:
    """``small_disk(size, free)``: a :class:`Disk`, on a real tmpfs where one can be mounted."""
    mounted: list[Path] = []

    def make(size: int, free: int) -> Disk:
        root = tmp_path / "disk"
        root.mkdir()
        real = can_mount(tmp_path) and _mount(root, f"size={size}")
        if real:
            mounted.append(root)
        return Disk(root, size, free, real)

    yield make
    for root in mounted:
        _umount(root)


@pytest.fixture
def read_only(tmp_path: Path, hooks: Callable[[dict[str, Any]], None]
              ) -> Iterator[tuple[Path, str]]:
    """A folder ``ro`` nothing can be written in, and how it was made."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        how = "chmod"
    elif can_mount(tmp_path) and _mount(folder, f"ro,size={PAGE}"):
        how = "mount"
    else:
        hooks({"readonly": os.fspath(folder)})
        how = "simulated"
    yield folder, how
    if how == "chmod":
        folder.chmod(0o755)
    elif how == "mount":
        _umount(folder)


# --------------------------------------------------------------------------------------------
# What is checked
# --------------------------------------------------------------------------------------------




def error_lines(stderr: str) -> list[str]:
    """The lines of stderr, every one a one-line error; no traceback."""
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    lines = stderr.splitlines()
    assert all(line.startswith("regtool: error: ") for line in lines), stderr
    return [line.removeprefix("regtool: error: ") for line in lines]


def hidden_files(folder: Path) -> list[str]:
    """Temporaries (regtool's are hidden: ``.<name>.XXXX.part``...) anywhere under ``folder``."""
    return [os.path.join(root, name) for root, dirs, names in os.walk(folder)
            for name in names + dirs if name.startswith(".")]


def rows_agree_with_disk(folder: Path, n_sources: int) -> dict[str, dict[str, str]]:
    """Read ``results.csv``: whole rows, one per source at most, each one's outputs on disk
    (complete) or none; no output without its row; no temporary. The batch ran in the
    current folder."""
    assert not hidden_files(folder), hidden_files(folder)
    data = (folder / "results.csv").read_bytes()
    assert data.endswith(b"\r\n"), data[-200:]  # no half row
    rows = batch.read_results(os.fspath(folder / "results.csv"))
    assert all(len(row) == len(batch.COLUMNS) and None not in row.values() for row in rows)
    by_source = {row["source"]: row for row in rows}
    assert len(by_source) == len(rows) <= n_sources
    outputs = set()
    for row in rows:
        assert row["status"] in (batch.DONE, batch.NOT_CONVERGED, batch.FAILED), row
        if row["status"] == batch.FAILED:
            # the reason names the file at fault (the tests check which)
            assert row["output"] == "" and ": " in row["reason"], row
            assert not list(folder.glob(f"{Path(row['source']).stem}_aligned*")), row
            continue
        image = Path(row["output"])
        doc = json.loads(image.with_suffix(".json").read_text())
        assert doc["source"] == row["source"] and doc["output"] == row["output"]
        assert io.read_image(image).shape == (64, 64)
        outputs |= {image.name, image.with_suffix(".json").name}
    assert set(os.listdir(folder)) - {"results.csv"} == outputs
    return by_source


def subprocess_env(hook_dir: Path | None = None, **faults: Any) -> dict[str, str]:
    """The environment of ``python -m regtool``: this checkout, and the hooks asked for."""
    paths = [os.fspath(hook_dir) if hook_dir else None, os.fspath(CHECKOUT),
             os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    env.pop("REGTOOL_TEST_FAULTS", None)
    if faults:
        env["REGTOOL_TEST_FAULTS"] = json.dumps(faults)
    return env


def regtool(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "regtool", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def paused_worker(marks: Path, proc: subprocess.Popen) -> int:
    """The pid of the worker that reached the pause (HOOK), once one has."""
    deadline = time.monotonic() + SLOW_S
    while not (found := [p for p in os.listdir(marks) if p.isdigit()]):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no worker reached the pause"
        time.sleep(0.01)
    return int(found[0])


@pytest.fixture
def batch_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """target.png and frames/s000.png ... s005.png (64x64, known motions), in the current
    directory."""
    write_target(tmp_path / "target.png")
    write_sources(tmp_path / "frames", N_SOURCES)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def says_read_only(line: str, folder: str) -> bool:
    """The one line names the folder and says it cannot be written, in one of the ways the
    system says it (permissions, a read-only mount)."""
    return folder in line and any(words in line for words in (
        "not writable", "Read-only file system", "Permission denied"))


# --------------------------------------------------------------------------------------------
# A read-only output folder: refused before any work, nothing written
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outputs, named", [
    (["-o", "ro/a.png"], "ro/a.png"),
    (["-o", "a.png", "--params", "ro/a.json"], "ro/a.json"),
])
def test_align_into_a_read_only_folder(batch_inputs, read_only, outputs, named):
    result = run("align", "target.png", "frames/s000.png", *outputs)
    assert result.exit_code == 2, (read_only, result.output)
    [line] = error_lines(result.stderr)
    assert line.startswith(f"{named}: ") and says_read_only(line, "ro"), (read_only, line)
    assert result.stdout == ""
    assert os.listdir("ro") == [] and not os.path.exists("a.png")


@pytest.mark.parametrize("out, named", [("ro", "ro/results.csv"), ("ro/sub", "ro/sub")])
def test_batch_into_a_read_only_folder(batch_inputs, read_only, out, named):
    result = run("align", "target.png", "frames", "-o", out, "-j", "1")
    assert result.exit_code == 2, (read_only, result.output)
    [line] = error_lines(result.stderr)
    assert line.startswith(f"{named}: ") and says_read_only(line, "ro"), (read_only, line)
    assert result.stdout == "" and os.listdir("ro") == []


@pytest.mark.parametrize("args, named", [
    (["m.tif", "-o", "ro/m_aligned.tif"], "ro/m_aligned.tif"),
    (["m.tif", "--table", "ro/m.csv"], "ro/m.csv"),
    (["frames", "-o", "ro/frames_aligned"], "ro/frames_aligned"),
])
def test_stack_into_a_read_only_folder(batch_inputs, read_only, args, named):
    tifffile.imwrite("m.tif", make_frames(n=4), photometric="minisblack")
    result = run("stack", *args, "-j", "1")
    assert result.exit_code == 2, (read_only, result.output)
    [line] = error_lines(result.stderr)
    assert line.startswith(f"{named}: ") and says_read_only(line, "ro"), (read_only, line)
    assert result.stdout == "" and os.listdir("ro") == []
    assert sorted(os.listdir(".")) == ["frames", "hook", "m.tif", "ro", "target.png"]


# --------------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------------

NO_SPACE = "cannot write the file (No space left on device)"


@pytest.mark.parametrize("free_pages, failing", [(0, "a.png"), (1, "a.json"), (1, "a.tif")])
def test_align_on_a_full_disk(batch_inputs, small_disk, hooks, free_pages, failing):
    # an aligned 64x64 PNG and its parameters take a page each: the image does not fit, or
    # it does and its parameters do not (then the image is removed: both or neither); a TIFF
    # takes two pages (tifffile's short write has no errno: the disk is asked why)
    disk = small_disk(4 * PAGE, free_pages * PAGE)
    if not disk.real:
        hooks(disk.config)
    image = "a.tif" if failing == "a.tif" else "a.png"
    result = run("align", "target.png", "frames/s000.png", "-o", f"disk/out/{image}")
    assert result.exit_code == 2, result.output
    assert error_lines(result.stderr) == [f"disk/out/{failing}: {NO_SPACE}"]
    assert result.stdout == "" and os.listdir(disk.out) == []


@pytest.mark.parametrize("args, free_pages, failing", [
    (["m.tif", "-o", "disk/out/m_aligned.tif"], 4, "m_aligned.tif"),  # 9 pages
    (["m.tif", "-o", "disk/out/m_aligned.tif"], 10, "m_aligned_transforms.json"),  # 2 pages
    (["frames", "-o", "disk/out/frames_aligned"], 5, "frames_aligned/s005.png"),  # 1 each
])
def test_stack_on_a_full_disk(batch_inputs, small_disk, hooks, args, free_pages, failing):
    tifffile.imwrite("m.tif", make_frames(n=4), photometric="minisblack")
    disk = small_disk(16 * PAGE, free_pages * PAGE)
    if not disk.real:
        hooks(disk.config)
    result = run("stack", *args, "-j", "1")
    assert result.exit_code == 2, result.output
    assert error_lines(result.stderr) == [f"disk/out/{failing}: {NO_SPACE}"]
    assert result.stdout == "" and os.listdir(disk.out) == []


def test_batch_on_a_disk_full_from_the_start(batch_inputs, small_disk, hooks):
    # the folder's check writes an empty probe (no page); the table's header needs a page
    disk = small_disk(4 * PAGE, 0)
    if not disk.real:
        hooks(disk.config)
    result = run("align", "target.png", "frames", "-o", "disk/out", "-j", "1", "-q")
    assert result.exit_code == 1, result.output
    assert error_lines(result.stderr) == [f"disk/out/results.csv: {NO_SPACE}"]
    assert result.stdout == "" and os.listdir(disk.out) == []


def test_batch_on_a_full_disk_then_rerun(tmp_path, small_disk, hook_file, monkeypatch):
    # Long names make long rows: results.csv outgrows its page a few sources after the disk
    # is full. The disk holds the table's page and two sources' (an image, its parameters).
    n = 12
    monkeypatch.chdir(tmp_path)
    write_target(tmp_path / "target.png")
    names = write_sources(tmp_path / "frames", n, prefix="a_long_name_" + "x" * 140 + "_")
    sources = [f"frames/{name}" for name in names]
    disk = small_disk(16 * PAGE, 5 * PAGE)
    env = subprocess_env(None if disk.real else hook_file, **disk.config)
    proc = regtool(["align", "target.png", "frames", "-o", "disk/out", "-j", "1"], tmp_path, env)
    stdout, stderr = proc.communicate(timeout=SLOW_S)
    assert proc.returncode == 1, (stdout, stderr)
    lines = error_lines(stderr)
    rows = rows_agree_with_disk(disk.out, n)
    # the first two landed, every later one failed on the full disk, with its one line ...
    assert [rows[s]["status"] for s in sources[:2]] == ["done", "done"]
    failed = sources[2:len(rows)]
    assert failed and list(rows) == sources[:len(rows)]
    for source in failed:
        stem = Path(source).stem
        assert rows[source]["reason"] == f"disk/out/{stem}_aligned.png: {NO_SPACE}"
    # ... until results.csv itself could not be written: its one line last, the batch stopped
    # there, the rest not started (counted with them: the source whose row could not be
    # written, which has no output either: the disk was full)
    assert lines == [rows[s]["reason"] for s in failed] + [f"disk/out/results.csv: {NO_SPACE}"]
    assert len(rows) < n - 1 and f"not started    {n - len(rows)}\n" in stdout

    # space freed: a rerun with --skip-existing keeps the two and does the rest
    os.unlink(disk.root / "ballast")
    disk.grow(64 * PAGE)
    result = run("align", "target.png", "frames", "-o", "disk/out", "-j", "2", "--skip-existing")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and "skipped        2 " in result.stdout
    after = rows_agree_with_disk(disk.out, n)
    assert {s: after[s] for s in sources[:2]} == {s: rows[s] for s in sources[:2]}
    for i, source in enumerate(sources):
        assert_recovered(after[source], i)


# --------------------------------------------------------------------------------------------
# Sources deleted or truncated while a batch runs
# --------------------------------------------------------------------------------------------


def between_tasks(monkeypatch: pytest.MonkeyPatch, after: int, damage: Callable[[], None]
                  ) -> None:
    """Run ``damage()`` once ``after`` sources of the batch have finished, before the next one
    is submitted (``-j 1``: one task in flight)."""
    real = batch.run_batch

    def run_batch(*args: Any, **kwargs: Any) -> Iterator[batch.Completed]:
        for n, completed in enumerate(real(*args, **kwargs), start=1):
            yield completed
            if n == after:
                damage()

    monkeypatch.setattr(batch, "run_batch", run_batch)


def test_sources_deleted_or_truncated_while_a_batch_runs(batch_inputs, monkeypatch):
    def damage() -> None:
        os.unlink("frames/s002.png")
        data = Path("frames/s003.png").read_bytes()
        Path("frames/s003.png").write_bytes(data[: len(data) // 2])
        Path("frames/s004.png").write_bytes(b"")

    between_tasks(monkeypatch, 1, damage)
    result = run("align", "target.png", "frames", "-o", "out", "-j", "1")
    assert result.exit_code == 1, result.output
    lines = error_lines(result.stderr)
    rows = rows_agree_with_disk(Path("out"), N_SOURCES)
    assert len(rows) == N_SOURCES
    failed = {s: r["reason"] for s, r in rows.items() if r["status"] == "failed"}
    assert failed == {
        "frames/s002.png": "frames/s002.png: no such file",
        "frames/s003.png": "frames/s003.png: truncated or corrupt PNG file (image file is "
                           "truncated)",
        "frames/s004.png": "frames/s004.png: empty file, not an image",
    }
    assert lines == list(failed.values())  # one line each, as they failed
    for i in (0, 1, 5):
        assert_recovered(rows[f"frames/s{i:03d}.png"], i)


def test_target_deleted_while_a_batch_runs(batch_inputs, monkeypatch):
    between_tasks(monkeypatch, 2, lambda: os.unlink("target.png"))
    result = run("align", "target.png", "frames", "-o", "out", "-j", "1")
    assert result.exit_code == 1, result.output
    rows = rows_agree_with_disk(Path("out"), N_SOURCES)
    assert [r["status"] for r in rows.values()] == ["done"] * 2 + ["failed"] * (N_SOURCES - 2)
    reasons = [r["reason"] for r in rows.values()][2:]
    assert error_lines(result.stderr) == reasons == ["target.png: no such file"] * 4


# --------------------------------------------------------------------------------------------
# A worker process killed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pause, status", [
    (".s003_aligned.png.*.part", "failed"),  # in the middle of writing its aligned image
    (".s003_aligned.json.*.part", "failed"),  # the image written, not its parameters
    ("s003_aligned.json", "done"),  # both written, the row not yet returned
])
def test_worker_killed_mid_batch_then_rerun(batch_inputs, hook_file, pause, status):
    marks = batch_inputs / "marks"
    marks.mkdir()
    # the worker aligning s003 stops there (HOOK), to be killed
    env = subprocess_env(hook_file, pause=[pause, os.fspath(marks)])
    proc = regtool(["align", "target.png", "frames", "-o", "out", "-j", "2"], batch_inputs, env)
    try:
        os.kill(paused_worker(marks, proc), signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=SLOW_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, (stdout, stderr)
    lines = error_lines(stderr)
    # the temporary and a half-written pair are gone; a whole pair has its row
    rows = rows_agree_with_disk(Path("out"), N_SOURCES)
    assert rows["frames/s003.png"]["status"] == status
    lost = [s for s, r in rows.items() if r["status"] == "failed"]
    assert len(lost) <= 2  # the task the other worker had is ended by the pool, if not done
    for source in lost:
        assert rows[source]["reason"] == (
            f"{source}: the task was lost: a worker process died (out of memory, or killed?), "
            "which ends every task in flight")
    left = N_SOURCES - len(rows)  # the other worker may have gone on with them, for a while
    stopped = ("a worker process died (out of memory, or killed?) and the batch stopped: "
               f"{left} source{'s' if left != 1 else ''} not started; rerun with "
               "--skip-existing to do them and the lost ones") if left else (
               "a worker process died (out of memory, or killed?); rerun with --skip-existing "
               "to do the lost sources")
    assert lines == [rows[s]["reason"] for s in lost] + [stopped]
    done = {s: r for s, r in rows.items() if r["status"] == "done"}
    assert len(done) + len(lost) == len(rows) and len(done) >= 2  # s000, s001 at least
    for source, row in done.items():
        assert_recovered(row, int(source[-7:-4]))

    result = run("align", "target.png", "frames", "-o", "out", "-j", "2", "--skip-existing")
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and f"skipped        {len(done)} " in result.stdout
    after = rows_agree_with_disk(Path("out"), N_SOURCES)
    assert len(after) == N_SOURCES and {s: after[s] for s in done} == done
    for i in range(N_SOURCES):
        assert_recovered(after[f"frames/s{i:03d}.png"], i)


def test_worker_killed_during_a_stack(tmp_path, hook_file):
    tifffile.imwrite(tmp_path / "m.tif", make_frames(n=8), photometric="minisblack")
    marks = tmp_path / "marks"
    marks.mkdir()
    # the first worker to open the stack (to read a frame) stops there
    env = subprocess_env(hook_file, pause=["m.tif", os.fspath(marks)])
    # the mean reference: the mean frame is a temporary file beside the output, read by the
    # workers; it goes too
    proc = regtool(["stack", "m.tif", "-j", "2", "--reference", "mean"], tmp_path, env)
    try:
        os.kill(paused_worker(marks, proc), signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=SLOW_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, (stdout, stderr)
    assert error_lines(stderr) == ["m.tif: a worker process died (out of memory, or killed?) "
                                   "and the run stopped; nothing was written"]
    assert stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["hook", "m.tif", "marks"]  # no output, no .part
