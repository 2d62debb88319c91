"""Which engine is faster per rank count: the LongCat-Flash decode what-if per-rank, run with
the event engine (engine/core.py) and with the array engine (engine/ranks.py) forced, in turn in
one window (engine.ranks.MIN_RANKS is the crossover this measures). Both give equal timelines.

Run: python benchmarks/ranks_engine.py [--ranks 8 16 32 64 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import simulator.engine.ranks as ranks  # noqa: E402
from scaling import ranks_case, wall  # noqa: E402


def forced(fn, min_ranks: int):
    """fn run with run_ranks' threshold set to min_ranks (1: arrays; huge: events)."""
    def go():
        keep, ranks.MIN_RANKS = ranks.MIN_RANKS, min_ranks
        try:
            fn()
        finally:
            ranks.MIN_RANKS = keep
    return go


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("| ranks | schedule | event engine (s) | array engine (s) |")
    print("|---:|---|---:|---:|")
    for n in args.ranks:
        for schedule in ("tbo", "sbo"):
            fn = ranks_case(n, schedule)
            events = wall(forced(fn, 10 ** 9), args.repeats)
            arrays = wall(forced(fn, 1), args.repeats)
            print(f"| {n} | {schedule} | {events:.3g} | {arrays:.3g} |", flush=True)


if __name__ == "__main__":
    main()
