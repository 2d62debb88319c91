"""Wall time of a 200-point LongCat-Flash decode sweep on 1 and 2 local workers.

Run: python benchmarks/sweep_speed.py
Goals (docs/performance.md): 2 workers within 60 s (goal 20 s); 1 -> 2 workers at least 1.7x.
Each run writes a fresh SQLite file (nothing resumed).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.outputs.sweep import SweepSpec, run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = SweepSpec(name="bench", base=str(ROOT / "workloads" / "longcat-flash-decode-h800.yaml"),
                 grid={"batch_per_device": [8, 16, 32, 64, 96],
                       "schedule": ["sequential", "scmoe", "sbo", "tbo"],
                       "context_length": [1000, 2000, 4000, 6000, 8000],
                       "hardware": ["h800", "h100-sxm"]})


def main() -> None:
    times = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            rows, _ = run_sweep(SPEC, ROOT, workers=workers, results=Path(d) / "r.sqlite")
            times[workers] = time.perf_counter() - t
        ok = sum(1 for r in rows if r["metrics"])
        print(f"{workers} worker(s): {len(rows)} points ({ok} ok) in {times[workers]:.1f} s")
    print(f"speedup 1 -> 2 workers: {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
