"""How close to the Cramer-Rao bound an estimating equation with linear weights can come.

The bound (bound.py, GUIDE section 5) takes the noise-free image's gradients as known. A
registration knows only the noisy images: every gradient-based method (Gauss-Newton on SSD or
NCC, OpenCV's ECC, regtool's blurred weightings of the error bars' step) solves

    sum_x J_w(x) (g(Psi(x)) - f(x)) = 0,   J_w = [w_x, w_y, -(y - c_y) w_x + (x - c_x) w_y],

with weights ``w`` made from the data. For weights that are a linear filter ``H`` of the target
(``w = H * grad f``, noise included), to first order the answer's covariance is

    C_w = S^-1 V S^-T,   S = sum J_w0 J0^T,   V = 2 s^2 sum J_w0 J_w0^T + s^2 E sum J_n J_n^T,

``J0`` from the noise-free gradients, ``J_w0`` from the filtered noise-free gradients, ``J_n``
from the filtered noise, ``s`` the noise's standard deviation on either image (the benchmark's
cases have the same on both). The residual carries both images' noise (``2 s^2``), but the
weights' noise meets only the source's: for a derivative filter (odd), the target's noise in
the weights and in the residuals forms ``n^T K n`` with ``K`` antisymmetric, which is zero. For
the same reason weights from the target averaged with the aligned source gain nothing to first
order. Per frequency the filter that minimizes ``C_w`` is the exact derivative times
``P / (P + s^2 / 2)``, ``P`` the noise-free image's power: the Wiener filter at half the noise
power (applied to the values, then the exact derivative). With ``P``
taken from the noise-free crop itself (an oracle no
registration has), its mean endpoint error over the bound's is this script's "linear limit":
no estimator with linear weights does better to first order. The script also gives the same
figure for regtool's two weightings on every pixel ("plain": the target spline's derivative, as
the solver's, though the solver keeps only its level's most textured points; "blur": central
differences of a Gaussian blur, as the error bars' step), which checks the formula against
measured errors, and (``--draws``) regtool's root-mean-square error over that many noise draws
of each case through ``regtool.align``.

The filters are applied by FFT over the crop's even extension and the sums run over the
overlap; the figures are first-order estimates: on the 512x512 medium retina crop the formula gave
1.26-1.32 per parameter for the 1.5-px blur where 40 draws measured 1.02-1.25.

Run ``.venv/bin/python benchmarks/linear_limit.py --sizes 512 --tiers medium,hard``
(markdown on stdout).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bound as B  # noqa: E402
import cases as C  # noqa: E402

SIZES = {"251x301": (301, 251), "512": (512, 512), "1024": (1024, 1024)}
SUCCESS_PX = 0.5  # as bench.py: a draw this far off is a failure, left out of the figures


def _frequencies(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return (2 * np.pi * np.fft.fftfreq(h)[:, None], 2 * np.pi * np.fft.fftfreq(w)[None, :])


def _covariance(case: C.Case, transfer: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """First-order covariance of the weighting ``transfer`` (the x and y filters applied to the
    noisy target, from values to weights), or the oracle Wiener weighting when None."""
    f, fx, fy = B.spline_grid(case.scene.spline, case.offset, case.target.shape)
    h, w = fx.shape
    mask = B.overlap_mask(case.matrix, case.target.shape, case.source.shape).astype(float)
    s2 = float(case.noise) ** 2
    # filtered on the crop's even extension (2h x 2w, continuous across its borders): a
    # periodic crop's jumps at the borders would pass for signal at every frequency
    even = np.concatenate([f, f[::-1]], axis=0)
    even = np.concatenate([even, even[:, ::-1]], axis=1)
    wy, wx = _frequencies(2 * h, 2 * w)
    # the exact derivative of the interpolating spline through the samples (the gradient the
    # bound uses): the spline's (-1, 0, 1) / 2 over its (1, 4, 1) / 6 along the axis
    exact = (6j * np.sin(wx) / (4 + 2 * np.cos(wx)), 6j * np.sin(wy) / (4 + 2 * np.cos(wy)))
    spectrum = np.fft.fft2(even)
    # the Wiener gain at half the noise power (white noise of s^2 per pixel is s^2 per
    # frequency of the transform normalized by the pixel count)
    power = np.abs(spectrum) ** 2 / spectrum.size
    gain = power / (power + 0.5 * s2)
    if transfer is not None:
        transfer = tuple(np.broadcast_to(t, spectrum.shape) for t in transfer)
    weights, noise = [], []
    for axis in (0, 1):
        t = exact[axis] * gain if transfer is None else transfer[axis]
        weights.append(np.real(np.fft.ifft2(t * spectrum))[:h, :w])
        noise.append(s2 * float(np.mean(np.abs(t) ** 2)))
    xs = np.arange(w)[None, :] - (w - 1) / 2.0
    ys = np.arange(h)[:, None] - (h - 1) / 2.0

    def jac(ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
        return np.stack([(ax * mask).ravel(), (ay * mask).ravel(),
                         ((xs * ay - ys * ax) * mask).ravel()])

    j0, jw = jac(fx, fy), jac(*weights)
    sens = jw @ j0.T
    vx, vy = noise
    x = np.broadcast_to(xs, (h, w)) * mask
    y = np.broadcast_to(ys, (h, w)) * mask
    n = mask.sum()
    vn = np.array([[vx * n, 0.0, -vx * y.sum()],
                   [0.0, vy * n, vy * x.sum()],
                   [-vx * y.sum(), vy * x.sum(), vx * (y * y).sum() + vy * (x * x).sum()]])
    v = 2 * s2 * (jw @ jw.T) + s2 * vn
    inv = np.linalg.inv(sens)
    cov = inv @ v @ inv.T
    return 0.5 * (cov + cov.T)


def weightings(shape: tuple[int, int], blur: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """regtool's two weightings' transfer functions on a crop of ``shape``."""
    wy, wx = _frequencies(2 * shape[0], 2 * shape[1])  # the crop's even extension
    gauss = np.exp(-0.5 * blur**2 * (wx**2 + wy**2))
    return {
        "plain": (1j * np.sin(wx) * (4 + 2 * np.cos(wy)) / 6,
                   1j * np.sin(wy) * (4 + 2 * np.cos(wx)) / 6),
        f"blur {blur:g}": (gauss * 1j * np.sin(wx), gauss * 1j * np.sin(wy)),
    }


def ratios(case: C.Case, blur: float = 1.5, bnd: B.Bound | None = None) -> dict[str, float]:
    """Mean endpoint error over the bound's (``bnd``, made when not given), per weighting and
    for the linear limit."""
    bnd = B.case_bound(case) if bnd is None else bnd
    out = {"linear limit": B.mean_endpoint(_covariance(case, None), case.target.shape)}
    for name, transfer in weightings(case.target.shape, blur).items():
        out[name] = B.mean_endpoint(_covariance(case, transfer), case.target.shape)
    return {k: v / bnd.endpoint_px for k, v in out.items()}


def measured(case: C.Case, bnd: B.Bound, draws: int, seed: int) -> float:
    """Root mean square of regtool's endpoint error over the bound's (``bnd``), over the
    successful (error < SUCCESS_PX) of ``draws`` noise draws (nan when none succeeded)."""
    import regtool

    rng = np.random.default_rng([seed, 31])
    errors = []
    for k in range(draws):
        again = C.redraw(case, rng, k + 1)
        res = regtool.align(again.target, again.source)
        found = np.vstack([np.asarray(res.matrix, dtype=float), [0.0, 0.0, 1.0]])
        error = C.endpoint_error(again.matrix, found, again.target.shape)
        if error < SUCCESS_PX:
            errors.append(error)
    if not errors:
        return math.nan
    return math.sqrt(float(np.mean(np.square(errors))) / bnd.ms_px2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="512", help="comma-separated: 251x301, 512, 1024")
    p.add_argument("--tiers", default="medium,hard", help="comma-separated noisy tiers")
    p.add_argument("--cases", type=int, default=8, help="cases per tier (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blur", type=float, default=1.5, help="the blurred weighting's sigma")
    p.add_argument("--draws", type=int, default=0,
                   help="also measure regtool's RMS error over this many noise draws")
    args = p.parse_args(argv)
    photos = C.load_photos()
    header = ["case", "photo", "linear limit", "plain", f"blur {args.blur:g}"]
    if args.draws:
        header.append(f"regtool RMS ({args.draws} draws)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    tiers: dict[tuple[str, str], list[tuple[float, list[float]]]] = {}
    for size in args.sizes.split(","):
        for tier in args.tiers.split(","):
            for case in C.make_cases(photos, SIZES[size], tier, args.cases, seed=args.seed):
                bnd = B.case_bound(case)
                if bnd is None:
                    continue
                r = ratios(case, args.blur, bnd)
                values = [r[k] for k in header[2:5]]
                if args.draws:
                    values.append(measured(case, bnd, args.draws, args.seed))
                tiers.setdefault((tier, size), []).append((bnd.ms_px2, values))
                row = [case.name, case.scene.name] + [f"{v:.2f}" for v in values]
                print("| " + " | ".join(row) + " |", flush=True)
    # per tier and size as the bench's mean-square ratio: mean(ratio^2 x the bound's mean
    # square) / mean(the bound's mean square), the cases with the largest bounds dominating
    print()
    print("| tier | size | " + " | ".join(f"{k}: mean square" for k in header[2:]) + " |")
    print("|---|---|" + "---|" * (len(header) - 2))
    for (tier, size), rows in tiers.items():
        weight = np.array([ms for ms, _ in rows])
        table = np.array([v for _, v in rows])
        ok = np.isfinite(table)  # a case whose every draw failed: left out of its column
        ms = (np.where(ok, table, 0.0) ** 2 * weight[:, None]).sum(axis=0) / (
            (ok * weight[:, None]).sum(axis=0))
        print(f"| {tier} | {size} | " + " | ".join(f"{v:.2f}" for v in ms) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
