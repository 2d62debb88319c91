"""LongCat-Flash pre-training what-ifs: exposed all-to-all with and without ScMoE, and GPUs for
20T tokens in 30 days; DeepSeek-V3 against its published GPU-hours; simulation wall time.

Run: python benchmarks/training_whatif.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.loading import load_workload  # noqa: E402
from simulator.training.run import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / "workloads" / "training"


def main() -> None:
    w = load_workload(str(ROOT / "longcat-flash-pretrain-h800.yaml"))
    print("| LongCat-Flash, 8192 H800 | step s | MFU | exposed all-to-all share | exposed comm share | bubble |")
    print("|---|---:|---:|---:|---:|---:|")
    for sched in ("sequential", "scmoe", "scmoe-chunked", "tbo"):
        t0 = time.perf_counter()
        m = train(w.variant(schedule=sched)).to_json()
        wall = time.perf_counter() - t0
        a2a = m["a2a_exposed_ms_per_step"] / 1e3 / m["step_time_s"]
        print(f"| {sched} (simulated in {wall:.1f} s) | {m['step_time_s']:.2f} | {m['mfu']:.1%} | "
              f"{a2a:.1%} | {m['exposed_comm_fraction']:.1%} | {m['bubble_fraction']:.1%} |")
    print()
    print("| GPUs | micro-batches | step s | MFU | days for 20T | $ M |")
    print("|---:|---:|---:|---:|---:|---:|")
    for gpus in (2048, 4096, 8192, 16384):
        plan = w.plan.variant(gpus=gpus)
        m = train(w.variant(plan=plan)).to_json()
        print(f"| {gpus} | {m['micro_batches']} | {m['step_time_s']:.2f} | {m['mfu']:.1%} | "
              f"{m['days_to_train']:.1f} | {m['cost_usd'] / 1e6:.2f} |")
    print()
    d = load_workload(str(ROOT / "deepseek-v3-pretrain-h800.yaml"))
    m = train(d).to_json()
    print(f"DeepSeek-V3, 2048 H800, 14.8T tokens: {m['days_to_train']:.1f} days, "
          f"{m['days_to_train'] * 24 * 2048 / 1e6:.2f} M GPU-hours, MFU {m['mfu']:.1%}, "
          f"exposed comm {m['exposed_comm_fraction']:.1%}, bubble {m['bubble_fraction']:.1%} "
          f"(published: 2.664 M GPU-hours of pre-training, 3.7 days per trillion tokens)")


if __name__ == "__main__":
    main()
