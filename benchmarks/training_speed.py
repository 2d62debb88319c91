"""Wall time of the DeepSeek-V3 training what-if on 2048 GPUs: the first call in a fresh process
(it draws the routing sample every step shape shares) and a warm call after it.

Run: python benchmarks/training_speed.py [--processes 3]
Goal (docs/performance.md, the speed issue): <= 0.5 s on the 2-core machine.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT / "workloads" / "training" / "deepseek-v3-pretrain-h800.yaml"
ONE = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from simulator.loading import load_workload
from simulator.training.run import train
w = load_workload({str(WORKLOAD)!r})
t = time.perf_counter(); train(w); first = time.perf_counter() - t
t = time.perf_counter(); train(w); warm = time.perf_counter() - t
print(first, warm)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=3, help="fresh processes to time")
    args = ap.parse_args()
    runs = [tuple(map(float, subprocess.run([sys.executable, "-c", ONE], check=True,
                                            capture_output=True, text=True).stdout.split()))
            for _ in range(args.processes)]
    first, warm = (statistics.median(r[i] for r in runs) for i in (0, 1))
    print(f"DeepSeek-V3 training what-if, 2048 GPUs: first call {first:.3f} s, warm {warm:.3f} s "
          f"(medians of {args.processes} fresh processes)")


if __name__ == "__main__":
    main()
