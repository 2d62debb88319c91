"""How fast `moesim plan` prices candidates: DeepSeek-V3 on 8, 16, 32 and 64 GPUs of H100, H200
and B200 (1024/1024 tokens, TTFT 2 s, TPOT 50 ms), on the local pool; with --train, `plan
--train` of DeepSeek-V3's pre-training workload on 1024 and 2048 H800.

    python benchmarks/plan_speed.py [--workers 2] [--train]

Prints candidates tried, pruned and priced, the wall time and priced candidates per second
(docs/performance.md). The goal: at least 1,000 priced in under 60 s on this 2-core machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.loading import read_yaml_mapping, resolve_paths  # noqa: E402
from simulator.outputs import plan_train  # noqa: E402
from simulator.outputs.plan import Question, search  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="time plan --train instead")
    args = ap.parse_args()
    if args.train:
        path = ROOT / "workloads" / "training" / "deepseek-v3-pretrain-h800.yaml"
        base = resolve_paths(read_yaml_mapping(path), path.parent)
        t0 = time.perf_counter()
        res = plan_train.search(plan_train.TrainQuestion(base, ("h800",), (1024, 2048)),
                                args.workers)
        report(res["candidates"], time.perf_counter() - t0, args.workers)
        return
    q = Question(model="deepseek-v3", hardware=("h100-sxm", "h200-sxm", "b200-sxm"),
                 gpus=(8, 16, 32, 64), isl=1024, osl=1024, ttft_ms=2000, tpot_ms=50)
    t0 = time.perf_counter()
    res = search(q, args.workers)
    report(res["candidates"], time.perf_counter() - t0, args.workers)


def report(c: dict, wall: float, workers: int) -> None:
    """One line: the counts, the wall time and priced candidates per second."""
    print(f"{c['tried']} tried, {c['pruned']} pruned, {c['priced']} priced in {wall:.1f} s "
          f"({c['priced'] / wall:.0f} priced candidates/s, {workers} workers)")


if __name__ == "__main__":
    main()
