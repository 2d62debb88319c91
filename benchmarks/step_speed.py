"""Wall time to simulate one LongCat-Flash decode step (28 layers) per schedule.

Run: python benchmarks/step_speed.py [--repeats 5]
Goals on the 2-core dev machine: collapsed ranks < 50 ms, all 128 ranks < 2 s (docs/performance.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.loading import load_workload  # noqa: E402
from simulator.step.whatif import resolve, simulate  # noqa: E402

WORKLOAD = Path(__file__).resolve().parent.parent / "workloads" / "longcat-flash-decode-h800.yaml"


def time_it(fn, repeats: int) -> float:
    """Median wall seconds over `repeats` calls."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    w = load_workload(str(WORKLOAD))
    r = resolve(w)
    print(f"| schedule | collapsed (ms) | {w.plan.gpus} ranks (s) |")
    print("|---|---:|---:|")
    for s in ("sequential", "scmoe", "sbo", "tbo"):
        one = time_it(lambda: simulate(w, s, resolved=r), args.repeats)
        full = time_it(lambda: simulate(w, s, per_rank=True, resolved=r), max(1, args.repeats // 2))
        print(f"| {s} | {one * 1e3:.1f} | {full:.2f} |")


if __name__ == "__main__":
    main()
