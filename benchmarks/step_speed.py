"""Wall time to simulate one LongCat-Flash decode step (28 layers) per schedule.

Run: python benchmarks/step_speed.py [--repeats 5] [--ranks 512] [--breakdown]
Goals on the 2-core dev machine (docs/performance.md): a collapsed step <= 5 ms (tbo <= 10 ms);
--ranks 512, per-rank under tbo <= 0.5 s.
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


def breakdown(w, r, repeats: int) -> None:
    """Milliseconds per collapsed step in each phase (wrapped timers: graph, expert pricing,
    engine input check, engine run, measuring), and what is left (plan, pricing loop)."""
    import simulator.engine.core as core
    import simulator.step.whatif as whatif
    spent: dict[str, float] = {}

    def timed(mod, name, key):
        f = getattr(mod, name)

        def g(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
        setattr(mod, name, g)
    for mod, name, key in ((whatif, "build_step_graph", "graph"),
                           (whatif, "per_rank_times", "expert pricing"),
                           (core, "check_inputs", "input check"),
                           (core.Engine, "run", "engine"), (whatif, "measure", "measure")):
        timed(mod, name, key)
    print("| schedule | step (ms) | " + " | ".join(("graph", "expert pricing", "input check",
                                                    "engine", "measure", "rest")) + " |")
    print("|---|" + "---:|" * 7)
    for s in ("sequential", "scmoe", "sbo", "tbo"):
        simulate(w, s, resolved=r)
        spent.clear()
        t = time.perf_counter()
        for _ in range(repeats):
            simulate(w, s, resolved=r)
        total = (time.perf_counter() - t) / repeats * 1e3
        parts = [spent.get(k, 0.0) / repeats * 1e3 for k in
                 ("graph", "expert pricing", "input check", "engine", "measure")]
        print(f"| {s} | {total:.1f} | " + " | ".join(f"{x:.1f}" for x in parts) +
              f" | {total - sum(parts):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=None,
                    help="EP ranks (= GPUs) for the per-rank column (default: the workload's)")
    ap.add_argument("--breakdown", action="store_true",
                    help="time each phase of a collapsed step instead (no per-rank runs)")
    args = ap.parse_args()
    w = load_workload(str(WORKLOAD))
    r = resolve(w)
    if args.ranks:                 # HBM capacity not enforced: small EP does not fit, is timed
        from simulator.loading import load_profile
        prof = load_profile(w.hardware)
        prof = prof.variant(idealizations=prof.idealizations.variant(enforce_hbm_capacity=False))
        w = w.variant(plan=w.plan.variant(gpus=args.ranks, ep=args.ranks))
        r = resolve(w, profile=prof)
    if args.breakdown:
        breakdown(w, r, max(args.repeats, 10))
        return
    print(f"| schedule | collapsed (ms) | {w.plan.gpus} ranks (s) |")
    print("|---|---:|---:|")
    for s in ("sequential", "scmoe", "sbo", "tbo"):
        one = time_it(lambda: simulate(w, s, resolved=r), args.repeats)
        full = time_it(lambda: simulate(w, s, per_rank=True, resolved=r), max(1, args.repeats // 2))
        print(f"| {s} | {one * 1e3:.1f} | {full:.2f} |")


if __name__ == "__main__":
    main()
