"""Print parameters regtool recovered beside the true ones: used by `make demo`.

    python sample_images/compare.py out/params.json sample_images/true_params.json

The last line is the largest distance, over the target's four corners, between where the
recovered and the true matrix send a pixel: the registration error in pixels.
"""

from __future__ import annotations

import json
import sys


def corner_error(found: list[list[float]], true: list[list[float]], shape: list[int]) -> float:
    h, w = shape
    worst = 0.0
    for x, y in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)):
        dx = sum(a * b for a, b in zip(found[0], (x, y, 1), strict=True)) - sum(
            a * b for a, b in zip(true[0], (x, y, 1), strict=True))
        dy = sum(a * b for a, b in zip(found[1], (x, y, 1), strict=True)) - sum(
            a * b for a, b in zip(true[1], (x, y, 1), strict=True))
        worst = max(worst, (dx * dx + dy * dy) ** 0.5)
    return worst


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        found = json.load(fh)
    with open(argv[1], encoding="utf-8") as fh:
        true = json.load(fh)
    bars = found.get("uncertainty") or {}
    shift_bar = bars.get("shift") or [None, None]
    rows = [
        ("tx (px)", found["tx"], true["tx"], None),
        ("ty (px)", found["ty"], true["ty"], None),
        ("theta (deg)", found["theta_deg"], true["theta_deg"], bars.get("theta_deg")),
        ("shift x (px)", found["shift"][0], true["shift"][0], shift_bar[0]),
        ("shift y (px)", found["shift"][1], true["shift"][1], shift_bar[1]),
    ]
    print(f"{found['source']} -> {found['target']}")
    print(f"  {'':14}{'recovered':>12}{'true':>12}{'error':>12}{'± (1 sigma)':>14}")
    for name, a, b, bar in rows:
        print(f"  {name:14}{a:12.4f}{b:12.4f}{a - b:+12.4f}"
              + (f"{bar:14.4f}" if bar is not None else ""))
    err = corner_error(found["matrix"], true["matrix"], true["target_shape"])
    status = "yes" if found["converged"] else f"NO ({found['reason']})"
    print(f"  converged: {status}; {found['optimizer']}, {found['time_s']:.2f} s; "
          f"largest corner error {err:.4f} px")
    if bars.get("endpoint_px") is not None:
        print(f"  expected mean endpoint error, from the data: {bars['endpoint_px']:.4f} px "
              "(it counts noise, here the 8-bit rounding; bias is left out)")
    elif bars:
        print(f"  no error bars: {bars.get('reason')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
