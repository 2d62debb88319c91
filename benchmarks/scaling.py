"""How simulation wall time grows with the size of what is simulated: the exponent k of
time ~ size^k, fitted in log-log space over a range of each size, all in one run (ratios inside
one run are what this noisy machine can measure).

Run: python benchmarks/scaling.py [--repeats 3] [--quick] [--max-ranks 1024]
Sizes (LongCat-Flash decode on H800 unless said): ranks simulated per-rank under tbo and under
sbo (EP = GPUs),
layers of the model, sequences per GPU, simulated seconds of serving, serving arrival rate,
training micro-batches per step. Routing draws are warmed before timing (they are shared by every
shape of one setup, see docs/performance.md), so the figures are the per-shape cost.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.loading import load_workload  # noqa: E402
from step_speed import time_it  # noqa: E402
from simulator.step.whatif import resolve, simulate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DECODE = ROOT / "workloads" / "longcat-flash-decode-h800.yaml"
SERVE = ROOT / "workloads" / "serving" / "longcat-flash-h800.yaml"
TRAIN = ROOT / "workloads" / "training" / "longcat-flash-pretrain-h800.yaml"


def wall(fn, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls (step_speed.time_it), after one untimed."""
    fn()
    return time_it(fn, repeats)


def exponent(sizes: list[float], times: list[float]) -> float:
    """Least-squares slope of log(time) on log(size)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def roomy():
    """The workload's profile with HBM capacity not enforced (small EP or many layers do not
    fit; their speed is still what is measured)."""
    from simulator.loading import load_profile
    prof = load_profile(load_workload(str(DECODE)).hardware)
    return prof.variant(idealizations=prof.idealizations.variant(enforce_hbm_capacity=False))


def ranks_case(n: int, schedule: str = "tbo"):
    from simulator.loading import load_model
    w = load_workload(str(DECODE))
    experts = load_model(w.model).moe.num_experts
    # more ranks than experts (1024 for LongCat-Flash's 512): one redundant copy per extra rank
    routing = w.routing.variant(redundant_experts=max(0, n - experts))
    w = w.variant(plan=w.plan.variant(gpus=n, ep=n), routing=routing)
    r = resolve(w, profile=roomy())
    return lambda: simulate(w, schedule, per_rank=True, resolved=r)


def layers_case(n: int):
    from simulator.loading import load_model
    w = load_workload(str(DECODE))
    model = load_model(w.model).variant(num_layers=n)
    r = resolve(w, model=model, profile=roomy())
    return lambda: simulate(w, "sbo", resolved=r)


def batch_case(n: int):
    w = load_workload(str(DECODE)).variant(batch_per_device=n)
    r = resolve(w, profile=roomy())
    return lambda: simulate(w, "sbo", resolved=r)


def serve_case(seconds: float, rate: float = 200.0):
    from simulator.serving.run import ServingSim
    w = load_workload(str(SERVE))
    ServingSim(w, rate=rate, duration=seconds).run()       # warm routing and step shapes

    def go():
        ServingSim(w, rate=rate, duration=seconds).run()
    return go


def microbatch_case(m: int):
    from simulator.training.run import train
    w = load_workload(str(TRAIN))
    dp = w.plan.gpus // w.plan.pp // w.plan.cp
    w = w.variant(training=w.training.variant(global_batch_sequences=m * dp))
    return lambda: train(w)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller ranges")
    ap.add_argument("--max-ranks", type=int, default=1024,
                    help="largest rank count of the tbo row")
    args = ap.parse_args()
    q = args.quick
    tbo_ranks = [n for n in (8, 16, 32, 64, 128, 256, 512, 1024) if n <= args.max_ranks]
    cases = [
        ("ranks (per-rank, tbo)", [8, 16, 32, 64] if q else tbo_ranks, ranks_case),
        ("ranks (per-rank, sbo)", [8, 16, 32, 64] if q else [8, 16, 32, 64, 128, 256, 512, 1024],
         lambda n: ranks_case(n, "sbo")),
        ("layers (sbo)", [7, 14, 28, 56] if q else [7, 14, 28, 56, 112], layers_case),
        ("sequences per GPU (sbo)", [8, 16, 32, 64] if q else [8, 16, 32, 64, 128], batch_case),
        ("simulated serving seconds", [30, 60, 120] if q else [60, 120, 240, 480], serve_case),
        ("arrival rate (req/s, 60 s)", [50, 100, 200] if q else [50, 100, 200, 400],
         lambda r: serve_case(60.0, r)),
        ("training micro-batches", [4, 8, 16] if q else [4, 8, 16, 32, 64], microbatch_case),
    ]
    print("| size | range | wall (s) at each size | exponent |")
    print("|---|---|---|---:|")
    for name, sizes, make in cases:
        times = [wall(make(s), args.repeats) for s in sizes]
        cells = ", ".join(f"{t:.3g}" for t in times)
        print(f"| {name} | {sizes[0]}..{sizes[-1]} | {cells} | {exponent(sizes, times):.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
