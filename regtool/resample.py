"""Resampling an image on another grid through a target->source matrix.

How :func:`warp` is fast on large images
----------------------------------------
The cubic output is the interpolating cubic B-spline of the source, the one
``scipy.ndimage.affine_transform(order=3, mode="constant")`` samples, computed in two steps:

1. *Prefilter* (once per channel): the spline coefficients of the source, in float32 (float64
   for float64 images and integers wider than 16 bits) instead of scipy's implicit float64
   copy. The column pass runs as the filter's recursion over whole rows with numpy (every step
   one contiguous row: 35 ms at 4096^2, where scipy's column pass, which walks the image with
   a stride, takes 330 ms); the row pass is scipy's ``spline_filter1d`` on row strips in
   threads. The boundary is scipy's: whole-sample mirror (what scipy's prefilter uses under
   ``mode="constant"``), and output pixels that map outside ``[0, W-1] x [0, H-1]`` get
   ``fill``, as before.
2. *Sampling* with ``prefilter=False``, strip by strip of output rows: a strip of rows
   ``r0..r1`` is the same affine map with its offset moved by ``r0`` times the row column of
   the matrix. scipy releases the GIL while it samples, so strips run in a thread pool. Each
   strip is rounded and clipped into the output as soon as it is sampled, so no image-sized
   float array is ever made besides the coefficients.

Threads: ``threads=None`` takes the environment variable ``REGTOOL_THREADS`` if it is set,
else the CPUs this process may run on, at most :data:`MAX_THREADS`, and uses them only when the
output has at least :data:`MIN_PIXELS_PER_THREAD` pixels per thread (smaller images stay on the
calling thread: a pool would cost more than it saves). ``REGTOOL_THREADS=1`` turns threads off,
e.g. in a process pool that already keeps every core busy. An explicit ``threads`` is used as
given, whatever the size.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

__all__ = ["warp", "ndimage_affine", "bilinear_nan", "default_threads", "fill_problem",
           "INTERP_ORDERS", "MAX_THREADS", "MIN_PIXELS_PER_THREAD", "THREADS_ENV"]

INTERP_ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}

#: Environment variable that sets the default thread count of :func:`warp`.
THREADS_ENV = "REGTOOL_THREADS"
#: At most this many threads by default (measured on 2 cores only): the serial column pass
#: bounds the gain of more, and a library should not take every core of a large machine.
MAX_THREADS = 8
#: Threads are used by default only with this many output pixels per thread or more (2 threads
#: from about 362^2). Measured on 2 idle cores: two threads take 1.4x the time of one at 128^2
#: (the pool's start-up), 0.74x at 256^2, 0.65x at 384^2, 0.6x from 512^2; when another
#: process keeps a core busy they gain nothing and cost a few percent, which is why the
#: threshold sits above the idle crossover.
MIN_PIXELS_PER_THREAD = 1 << 16
#: Output pixels per sampling strip: the strip's float buffer (256 KB) stays in cache for the
#: rounding and clipping that follow. Strips of 16K to 64K pixels and 64x256 or 128x128 tiles
#: sampled equally fast at 4096^2 (scipy's cubic sampling is compute-bound, ~57 ns a pixel).
STRIP_PIXELS = 1 << 16
#: The smallest strip when threads share the rows out.
MIN_STRIP_PIXELS = 1 << 14

# Pole of the cubic B-spline's inverse filter, and the gain that goes with it.
_POLE = math.sqrt(3.0) - 2.0
_GAIN = (1.0 - _POLE) * (1.0 - 1.0 / _POLE)  # 6
# Weights of the causal filter's start value below this share of the working precision's
# epsilon are left out: the geometric tail they make is far below the rounding of the result.
_INIT_CUTOFF = 1e-3


def ndimage_affine(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn an (x, y) target->source matrix into scipy.ndimage's (row, col) matrix and offset.

    ``scipy.ndimage.affine_transform`` samples ``input[matrix @ (r, c) + offset]`` at each output
    index (r, c); ours maps (x, y) = (c, r), so the 2x2 block is transposed across the diagonal.
    """
    m = np.asarray(matrix, dtype=float)
    rc = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    return rc, np.array([m[1, 2], m[0, 2]])


def bilinear_nan(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` sampled bilinearly through ``matrix`` on a ``shape`` grid, NaN outside, float32.

    The values of ``scipy.ndimage.affine_transform(image, ..., order=1, mode="constant",
    cval=np.nan, output=np.float32)`` to the bit (the same coordinates, weights and sums in
    float64; outside means beyond ``[0, H-1] x [0, W-1]``), in numpy: 0.15 instead of 0.22 ms
    for a 101 x 101 grid, 0.34 instead of 0.49 ms for 128 x 128 from a 1024^2 image. For the
    small grids of the global search and the match decision (the arrays are grid-sized).
    """
    h, w = image.shape
    if h < 2 or w < 2:
        rc, offset = ndimage_affine(matrix)
        return ndimage.affine_transform(image, rc, offset=offset, output_shape=shape,
                                        output=np.float32, order=1, mode="constant",
                                        cval=np.nan)
    rc, offset = ndimage_affine(matrix)
    rows = np.arange(shape[0], dtype=np.float64)[:, None]
    cols = np.arange(shape[1], dtype=np.float64)[None, :]
    # scipy's order of operations: row * m0 + col * m1, then the offset
    y = rows * rc[0, 0] + cols * rc[0, 1]
    y += offset[0]
    x = rows * rc[1, 0] + cols * rc[1, 1]
    x += offset[1]
    inside = (y >= 0) & (y <= h - 1)
    inside &= x >= 0
    inside &= x <= w - 1
    every = bool(inside.all())
    if not every:
        y[~inside] = 0.0
        x[~inside] = 0.0
    # the last row and column take the cell before theirs, at fraction 1
    fy = np.minimum(np.floor(y), h - 2)
    fx = np.minimum(np.floor(x), w - 2)
    y -= fy
    x -= fx
    first = fy.astype(np.intp)
    first *= w
    first += fx.astype(np.intp)
    flat = image.reshape(-1)
    c00, c01 = np.take(flat, first), np.take(flat, first + 1)
    c10, c11 = np.take(flat, first + w), np.take(flat, first + (w + 1))
    top = c01 - c00.astype(np.float64)
    top *= x
    top += c00
    bottom = c11 - c10.astype(np.float64)
    bottom *= x
    bottom += c10
    bottom -= top
    bottom *= y
    bottom += top
    out = bottom.astype(np.float32)
    if not every:
        out[~inside] = np.nan
    return out


def fill_problem(dtype: np.dtype, fill: float) -> str | None:
    """Why ``fill`` cannot be the value of output pixels of ``dtype``, or None if it can.

    A non-finite fill (NaN, an infinity) fits only a floating-point image; checked before any
    work by every command that warps (a pair, a batch's source, a stack, ``warp``).
    """
    if math.isfinite(fill) or np.dtype(dtype).kind == "f":
        return None
    return (f"a fill value of {fill} cannot be stored in its {np.dtype(dtype).name} pixels; "
            "give a finite one (--fill)")


def default_threads() -> int:
    """The thread count :func:`warp` uses for a large image when ``threads`` is not given.

    Returns
    -------
    int
        ``REGTOOL_THREADS`` if set, else the CPUs this process may run on (its affinity mask,
        which a container or ``taskset`` may restrict), capped at :data:`MAX_THREADS`.

    Raises
    ------
    ValueError
        If ``REGTOOL_THREADS`` is set but is not a positive integer.
    """
    env = os.environ.get(THREADS_ENV, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, not {env!r}")
        return value
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cpus))


def _thread_count(threads: int | None, pixels: int) -> int:
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, not {threads!r}")
        return int(threads)
    return max(1, min(default_threads(), pixels // MIN_PIXELS_PER_THREAD))


def _work_dtype(dtype: np.dtype) -> type[np.floating]:
    """float64 where float32 would lose input precision, float32 everywhere else."""
    # float32 holds integers up to 2**24 exactly: every 8- and 16-bit value.
    if dtype == np.float64 or (np.issubdtype(dtype, np.integer) and dtype.itemsize > 2):
        return np.float64
    return np.float32


def _causal_start_weights(n: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and weights of the causal filter's start value on a whole-sample mirrored axis.

    With the mirrored signal ``x[0], ..., x[n-1], x[n-2], ..., x[1]`` repeated, the causal
    recursion's first value is ``sum_k z^k x_mirror[k] / (1 - z^(2n-2))``: row j gets
    ``z^j + z^(2n-2-j)`` (``z^j`` alone at both ends). The rows whose weight is negligible
    (under ``eps`` times :data:`_INIT_CUTOFF`) are dropped: all but 18 rows of a long axis in
    float32, 33 in float64.
    """
    j = np.arange(n, dtype=float)
    w = _POLE ** j
    w[1:-1] += _POLE ** (2 * n - 2 - j[1:-1])
    w /= 1.0 - _POLE ** (2 * n - 2)
    rows = np.flatnonzero(np.abs(w) >= eps * _INIT_CUTOFF)
    return rows, w[rows]


def _prefilter_rows_recursive(plane: np.ndarray, coeffs: np.ndarray) -> None:
    """Cubic spline prefilter of ``plane`` along axis 0 into ``coeffs`` (same shape).

    The two first-order recursions of the inverse B-spline filter, each step one whole row of
    numpy operations: contiguous memory, where a column-by-column filter strides across the
    image. The start values are scipy's for its mirror boundary.
    """
    n = plane.shape[0]
    np.multiply(plane, coeffs.dtype.type(_GAIN), out=coeffs, casting="unsafe")
    if n == 1:
        coeffs /= coeffs.dtype.type(_GAIN)  # a single sample is its own spline
        return
    z = coeffs.dtype.type(_POLE)
    rows, weights = _causal_start_weights(n, float(np.finfo(coeffs.dtype).eps))
    # The start values in float64 (a weighted sum of 18-33 rows: cheap), so they add no
    # rounding of their own to the recursion.
    start = np.tensordot(weights, coeffs[rows].astype(np.float64), axes=1)
    coeffs[0] = start
    tmp = np.empty_like(coeffs[0])
    for i in range(1, n):
        np.multiply(coeffs[i - 1], z, out=tmp)
        coeffs[i] += tmp
    last, before = coeffs[n - 1].astype(np.float64), coeffs[n - 2].astype(np.float64)
    coeffs[n - 1] = (_POLE * before + last) * (_POLE / (_POLE * _POLE - 1.0))
    for i in range(n - 2, -1, -1):
        np.subtract(coeffs[i + 1], coeffs[i], out=tmp)
        np.multiply(tmp, z, out=coeffs[i])


def _spline_coefficients(plane: np.ndarray, work: type[np.floating],
                         pool: ThreadPoolExecutor | None = None, threads: int = 1) -> np.ndarray:
    """Interpolating cubic B-spline coefficients of a 2-D plane, in ``work`` precision.

    The same coefficients as ``scipy.ndimage.spline_filter(plane, 3, mode="constant")`` (up to
    rounding in ``work``), which is what ``affine_transform(order=3, mode="constant")``
    prefilters with.
    """
    coeffs = np.empty(plane.shape, dtype=work)
    # Serial: its ~4 numpy calls per row hold the GIL for most of their time (two threads over
    # column halves took 1.5x as long as one at 4096^2).
    _prefilter_rows_recursive(plane, coeffs)
    if plane.shape[1] == 1:
        return coeffs

    def rows_pass(r0: int, r1: int) -> None:
        # Along the rows scipy's filter walks contiguous memory already, in place, and
        # releases the GIL: row strips run in parallel (87 -> 46 ms at 4096^2, 2 threads).
        view = coeffs[r0:r1]
        ndimage.spline_filter1d(view, 3, axis=1, output=view, mode="mirror")

    rows = plane.shape[0]
    if pool is None or threads < 2:
        rows_pass(0, rows)
    else:
        step = -(-rows // (2 * threads))
        _run(pool, [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)], rows_pass)
    return coeffs


def _run(pool: ThreadPoolExecutor, tasks: list[tuple[int, int]],
         fn: Callable[[int, int], None]) -> None:
    """Run ``fn(*task)`` for every task on the pool; re-raise the first failure here."""
    for future in [pool.submit(fn, *task) for task in tasks]:
        future.result()


def _store(dtype: np.dtype) -> Callable[[np.ndarray, np.ndarray], None]:
    """A function writing float samples into an output view of ``dtype``.

    Integers are rounded and clipped to the dtype's range (never wrapped), bools thresholded
    at 0.5; the float buffer is used as scratch space.
    """
    if dtype == np.bool_:
        def store_bool(buf: np.ndarray, dest: np.ndarray) -> None:
            np.greater_equal(buf, 0.5, out=dest)
        return store_bool
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        # The largest float of the buffer's type that does not exceed the dtype's maximum
        # (2**63 - 1 rounds up to 2**63 in float64, which would overflow the cast).
        def bound(v: int, toward: float, ftype: type[np.floating]) -> float:
            f = ftype(v)
            return float(np.nextafter(f, ftype(toward))) if abs(int(f)) > abs(v) else float(f)

        def store_int(buf: np.ndarray, dest: np.ndarray) -> None:
            ftype = buf.dtype.type
            np.rint(buf, out=buf)
            np.clip(buf, bound(info.min, 0.0, ftype), bound(info.max, 0.0, ftype), out=buf)
            dest[...] = buf
        return store_int

    def store_float(buf: np.ndarray, dest: np.ndarray) -> None:
        dest[...] = buf
    return store_float


def _strip_rows(rows: int, cols: int, threads: int) -> int:
    """Output rows per sampling strip."""
    pixels = STRIP_PIXELS
    if threads > 1:
        # About four strips per thread, so the strips balance across threads even when
        # another process takes a core for a while, but not so small that scipy's per-call
        # set-up shows (measured: 16K-64K pixels are equally fast, 8K slower).
        pixels = min(STRIP_PIXELS, max(MIN_STRIP_PIXELS, rows * cols // (4 * threads)))
    return max(1, pixels // max(cols, 1))


def _sample_strips(
    values: np.ndarray,
    rc: np.ndarray,
    offset: np.ndarray,
    dest: np.ndarray,
    *,
    order: int,
    fill: float,
    work: type[np.floating],
    pool: ThreadPoolExecutor | None,
    threads: int = 1,
) -> None:
    """Sample ``values`` (already prefiltered for cubic) into the 2-D view ``dest``, by strips."""
    rows, cols = dest.shape
    strip = _strip_rows(rows, cols, threads if pool is not None else 1)
    store = _store(dest.dtype)
    direct = dest.dtype == work and dest.flags.c_contiguous

    def one(r0: int, r1: int) -> None:
        # Output row r samples rc @ (r, c) + offset; for the strip's own row index r - r0 the
        # offset grows by r0 times the matrix's row column.
        shifted = offset + rc[:, 0] * r0
        buf = dest[r0:r1] if direct else np.empty((r1 - r0, cols), dtype=work)
        ndimage.affine_transform(values, rc, offset=shifted, output_shape=(r1 - r0, cols),
                                 output=buf, order=order, mode="constant", cval=fill,
                                 prefilter=False)
        if not direct:
            store(buf, dest[r0:r1])

    tasks = [(r0, min(rows, r0 + strip)) for r0 in range(0, rows, strip)]
    if pool is None:
        for task in tasks:
            one(*task)
    else:
        _run(pool, tasks, one)


# dtypes scipy.ndimage samples as they are; others (bool, float16...) go through `work` first.
_NDIMAGE_NATIVE = frozenset("uint8 uint16 uint32 uint64 int8 int16 int32 int64 "
                            "float32 float64".split())


def warp(
    image: np.ndarray,
    matrix: np.ndarray,
    shape: tuple[int, int],
    *,
    interp: str = "cubic",
    fill: float = 0.0,
    threads: int | None = None,
) -> np.ndarray:
    """Resample ``image`` on a grid of ``shape`` through a target->source matrix.

    ``out[y, x] = image(matrix @ [x, y, 1])``: the convention of :class:`regtool.Result`'s
    ``matrix`` (the same direction as OpenCV's ECC warp and ITK's fixed->moving transform).

    Parameters
    ----------
    image : ndarray
        Source image, ``(H, W)`` or ``(H, W, C)``, of any integer, bool or float dtype.
    matrix : array_like
        2x3 or 3x3 matrix mapping output (target) pixel (x, y) to input (source) pixel (x, y).
    shape : tuple of int
        ``(rows, cols)`` of the output grid.
    interp : {"cubic", "linear", "nearest"}
        Interpolation: the interpolating cubic B-spline (whole-sample mirror boundary, as
        scipy.ndimage's ``mode="constant"``), bilinear, or nearest neighbour.
    fill : float
        Value of output pixels that map outside the source (outside ``[0, W-1] x [0, H-1]``).
    threads : int, optional
        Threads sampling the output, row strip by row strip. By default
        :func:`default_threads` (``REGTOOL_THREADS``, else the CPUs available, at most
        :data:`MAX_THREADS`), used only when the output has at least
        :data:`MIN_PIXELS_PER_THREAD` pixels per thread. The result does not depend on it.

    Returns
    -------
    ndarray
        ``(rows, cols)`` or ``(rows, cols, C)`` with the dtype of ``image``; integer outputs are
        rounded and clipped to the dtype's range, never wrapped. Computed in float32 (float64
        for float64 images and integers wider than 16 bits).

    Examples
    --------
    >>> import numpy as np, regtool
    >>> img = np.arange(20.0).reshape(4, 5)
    >>> shift = [[1, 0, 1.0], [0, 1, 0.0]]  # target x samples source x + 1
    >>> regtool.warp(img, shift, (4, 5), interp="linear")[0]
    array([1., 2., 3., 4., 0.])
    """
    if interp not in INTERP_ORDERS:
        raise ValueError(f"interp must be one of {sorted(INTERP_ORDERS)}, not {interp!r}")
    order = INTERP_ORDERS[interp]
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D or 3-D (H, W, C), got shape {img.shape}")
    m = np.asarray(matrix, dtype=float)
    if m.shape not in ((2, 3), (3, 3)):
        raise ValueError(f"matrix must be 2x3 or 3x3, got {m.shape}")
    rc, offset = ndimage_affine(m)
    out_shape = (int(shape[0]), int(shape[1]))
    n_threads = _thread_count(threads, out_shape[0] * out_shape[1])
    work = _work_dtype(img.dtype)
    out = np.empty(out_shape + img.shape[2:], dtype=img.dtype)
    planes = [(img, out)] if img.ndim == 2 else [
        (img[..., ch], out[..., ch]) for ch in range(img.shape[2])]
    pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
    try:
        for plane, dest in planes:
            if plane.size == 0:  # nothing to sample: every pixel maps outside
                _store(dest.dtype)(np.full(dest.shape, fill, dtype=work), dest)
                continue
            if order > 1:
                values = _spline_coefficients(plane, work, pool, n_threads)
            elif plane.dtype.name in _NDIMAGE_NATIVE:
                values = plane  # linear and nearest read the samples as they are
            else:
                values = plane.astype(work)
            _sample_strips(values, rc, offset, dest, order=order, fill=fill, work=work,
                           pool=pool, threads=n_threads)
            del values  # the next channel's coefficients replace this one's
    finally:
        if pool is not None:
            # On an error or Ctrl-C, strips not yet started are dropped, not run to the end.
            pool.shutdown(cancel_futures=True)
    return out
