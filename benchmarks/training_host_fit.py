"""Fit Megatron-Core's host time per layer on the published training rows, with its
leave-one-out error.

The one parameter (hardware_profiles/runtimes/training/megatron-core.yaml,
host_s_per_layer_forward) is shared by every model and GPU those rows ran on. For each value on
a grid the rows whose workload names training.framework megatron-core are predicted; the fit
minimises the mean |ln(moesim / published)|; leave-one-out refits without each row in turn and
predicts it.

    python benchmarks/training_host_fit.py [--step-ms 0.25] [--max-ms 8]
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


def errors(rs: list, grid: list[float]) -> dict[str, list[float]]:
    """ln(moesim / published) of each row at each host value of the grid."""
    base = load_training_runtime(FRAMEWORK)
    out = {r.id: [] for r in rs}
    for h in grid:
        rt = base.model_copy(update={"host_s_per_layer_forward":
                                     base.host_s_per_layer_forward.model_copy(update={"value": h})})
        for r in rs:
            out[r.id].append(math.log(training_metric(r.metric, str(ROOT / r.workload), rt)
                                      / r.measured))
    return out


def best(errs: dict[str, list[float]], ids: list[str], grid: list[float]) -> int:
    """Index of the grid value with the least mean |error| over `ids`."""
    return min(range(len(grid)), key=lambda i: statistics.mean(abs(errs[r][i]) for r in ids))


def main() -> None:
    """Print the fitted value, each row's in-sample error and its leave-one-out error."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--step-ms", type=float, default=0.25)
    ap.add_argument("--max-ms", type=float, default=8.0)
    a = ap.parse_args()
    grid = [i * a.step_ms / 1e3 for i in range(int(a.max_ms / a.step_ms) + 1)]
    rs = rows()
    errs = errors(rs, grid)
    ids = [r.id for r in rs]
    k = best(errs, ids, grid)
    print(f"fitted host_s_per_layer_forward = {grid[k] * 1e3:.2f} ms on {len(ids)} rows")
    print("| row | error at 0 | fitted (in sample) | left out (refit) |\n|---|---:|---:|---:|")
    held = []
    for r in ids:
        j = best(errs, [x for x in ids if x != r], grid)
        held.append(abs(math.expm1(errs[r][j])))
        print(f"| {r} | {math.expm1(errs[r][0]):+.1%} | {math.expm1(errs[r][k]):+.1%} | "
              f"{math.expm1(errs[r][j]):+.1%} (at {grid[j] * 1e3:.2f} ms) |")
    print(f"leave-one-out median |error| {statistics.median(held):.1%}, max {max(held):.1%}")


if __name__ == "__main__":
    main()
