"""Fit Megatron-Core's host time (per layer and per chunk pass) on the published training rows,
with its leave-one-out error.

The two parameters (hardware_profiles/runtimes/training/megatron-core.yaml,
host_s_per_layer_forward and host_s_per_pass) are shared by every model and GPU those rows ran
on. For each pair on a grid the rows whose workload names training.framework megatron-core are
predicted; the fit minimises the mean |ln(moesim / published)|; leave-one-out refits without
each row in turn and predicts it.

    python benchmarks/training_host_fit.py [--layer-ms 1.5:5:0.25] [--pass-ms 0:5:0.5]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.published import TRAINING, load_manifest, training_metric  # noqa: E402
from simulator.loading import load_training_runtime, load_workload  # noqa: E402

FRAMEWORK = "megatron-core"


def rows() -> list:
    """The training rows that ran on Megatron-Core."""
    out = []
    for r in load_manifest():
        if r.metric in TRAINING:
            w = load_workload(str(ROOT / r.workload))
            if w.training and w.training.framework == FRAMEWORK:
                out.append(r)
    return out


def runtime(base, per_layer_s: float, per_pass_s: float):
    """The preset with its two host numbers replaced."""
    per_pass = (base.host_s_per_pass or base.host_s_per_layer_forward).model_copy(
        update={"value": per_pass_s})
    return base.model_copy(update={"host_s_per_layer_forward": base.host_s_per_layer_forward
                                   .model_copy(update={"value": per_layer_s}),
                                   "host_s_per_pass": per_pass})


def errors(rs: list, grid: list[tuple[float, float]]) -> dict[str, list[float]]:
    """ln(moesim / published) of each row at each (per layer, per pass) pair of the grid."""
    base = load_training_runtime(FRAMEWORK)
    out = {r.id: [] for r in rs}
    for i, (a, c) in enumerate(grid):
        rt = runtime(base, a, c)
        for r in rs:
            out[r.id].append(math.log(training_metric(r.metric, str(ROOT / r.workload), rt)
                                      / r.measured))
        print(f"\r{i + 1}/{len(grid)} grid points", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def axis(spec: str) -> list[float]:
    """Seconds from 'lo:hi:step' in milliseconds."""
    lo, hi, step = (float(x) for x in spec.split(":"))
    return [(lo + i * step) / 1e3 for i in range(int(round((hi - lo) / step)) + 1)]


def best(errs: dict[str, list[float]], ids: list[str], grid: list) -> int:
    """Index of the grid point with the least mean |error| over `ids`."""
    return min(range(len(grid)), key=lambda i: statistics.mean(abs(errs[r][i]) for r in ids))


def main() -> None:
    """Print the fitted pair, each row's in-sample error and its leave-one-out error."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer-ms", default="1.5:5:0.25", help="lo:hi:step, ms a layer forward")
    ap.add_argument("--pass-ms", default="0:5:0.5", help="lo:hi:step, ms a chunk pass")
    a = ap.parse_args()
    grid = [(0.0, 0.0)] + [(x, y) for x in axis(a.layer_ms) for y in axis(a.pass_ms)]
    rs = rows()
    errs = errors(rs, grid)
    ids = [r.id for r in rs]
    k = best(errs, ids, grid)
    print(f"fitted host_s_per_layer_forward = {grid[k][0] * 1e3:.2f} ms, host_s_per_pass = "
          f"{grid[k][1] * 1e3:.2f} ms on {len(ids)} rows")
    print("| row | error with no host time | fitted (in sample) | left out (refit) |\n"
          "|---|---:|---:|---:|")
    held = []
    for r in ids:
        j = best(errs, [x for x in ids if x != r], grid)
        held.append(abs(math.expm1(errs[r][j])))
        print(f"| {r} | {math.expm1(errs[r][0]):+.1%} | {math.expm1(errs[r][k]):+.1%} | "
              f"{math.expm1(errs[r][j]):+.1%} (at {grid[j][0] * 1e3:.2f} / "
              f"{grid[j][1] * 1e3:.2f} ms) |")
    print(f"leave-one-out median |error| {statistics.median(held):.1%}, max {max(held):.1%}")


if __name__ == "__main__":
    main()
