"""Wall time and peak memory of one simulated hour of a full-load LongCat-Flash decode pool.

Run: python benchmarks/serving_speed.py [--rate 280] [--duration 3600]
Goal (docs/performance.md, the speed issue): one hour at ~1e6 requests, ~2e5 decode steps and
~2.6e3 in flight within 5 s on the 2-core machine (stretch 3 s); the run's wall time includes the
new step shapes' engine runs, setup + capacity is printed apart.
"""
from __future__ import annotations

import argparse
import sys
import time
import resource
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.loading import load_workload  # noqa: E402
from simulator.serving.run import ServingSim  # noqa: E402

WORKLOAD = Path(__file__).resolve().parent.parent / "workloads" / "serving" / "longcat-flash-h800.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=280.0)
    ap.add_argument("--duration", type=float, default=3600.0)
    args = ap.parse_args()
    w = load_workload(str(WORKLOAD))
    t0 = time.perf_counter()
    sim = ServingSim(w, rate=args.rate, duration=args.duration)
    cap = sim.capacity_rps()
    t1 = time.perf_counter()
    res = sim.run()
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB
    m = res.metrics
    shapes = len(sim.decode.cache) + len(sim.prefill.cache)
    print(f"rate {args.rate}/s for {args.duration:.0f} s (capacity {cap:.0f}/s): "
          f"{m['requests']['arrived']} requests, {m['requests']['finished']} finished")
    print(f"mean in system {m['little']['mean_in_system']:.0f}, decode steps {m['decode_steps']}, "
          f"step shapes simulated {shapes}, simulated {m['simulated_s']:.0f} s")
    print(f"wall: setup + capacity {t1 - t0:.1f} s, run {t2 - t1:.1f} s (incl. new step shapes), "
          f"total {t2 - t0:.1f} s; peak RSS {peak / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
