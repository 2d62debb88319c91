"""Paper Table 7 (LongCat-Flash report) against moesim, as a markdown table.

Run: python benchmarks/table7.py [--profile h800]   (default: the paper-theoretical profile)
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.errors import MoesimError  # noqa: E402
from simulator.loading import load_profile, load_workload  # noqa: E402
from simulator.step.whatif import resolve, simulate  # noqa: E402

PAPER = {  # column: (attention, dispatch, moe, combine, tpot_ms, $/M, schedule)
    "longcat-flash": (264, 236, 60, 472, 16.0, 0.09, "sbo"),
    "deepseek-v3": (471, 275, 77, 551, 30.0, 0.17, "tbo"),
    "qwen3-235b": (314, 157, 29, 315, 26.2, 0.15, "tbo"),
}
ROWS = ("attention", "dispatch", "moe", "combine", "tpot_ms", "cost")
TOLERANCE = {"attention": 0.20, "dispatch": 0.05, "moe": 0.05, "combine": 0.05,
             "tpot_ms": 0.10, "cost": 0.10}
ROOT = Path(__file__).resolve().parent.parent


def predict(column: str, profile: str | None = None) -> dict[str, float]:
    """Our figures for one Table 7 column (per-layer rows standalone, TPOT under its schedule)."""
    w = load_workload(str(ROOT / "workloads" / "paper" / f"table7-{column}.yaml"))
    r = resolve(w, profile=load_profile(profile) if profile else None)
    m = simulate(w, resolved=r).metrics
    b = m["breakdown_us"]
    return {"attention": b["attention_block"], "dispatch": b["dispatch"], "moe": b["moe"],
            "combine": b["combine"], "tpot_ms": m["tpot_ms"],
            "cost": m["cost_per_million_output_tokens"]}


def rows(profile: str | None = None) -> list[tuple[str, str, float, float, float]]:
    """(column, row, paper, predicted, relative error) for every cell."""
    out = []
    for col, paper in PAPER.items():
        try:
            pred = predict(col, profile)
        except MoesimError as exc:
            print(f"<!-- {col}: {exc.render()} -->")
            pred = {row: float("nan") for row in ROWS}
        for i, row in enumerate(ROWS):
            out.append((col, row, float(paper[i]), pred[row], pred[row] / paper[i] - 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    print("| column | row | paper | moesim | error |")
    print("|---|---|---:|---:|---:|")
    for col, row, paper, pred, e in rows(args.profile):
        nd = 3 if row == "cost" else (2 if row == "tpot_ms" else 0)
        if math.isnan(pred):                   # the column was refused (see the comment line)
            print(f"| {col} | {row} | {paper:g} | refused | - |")
            continue
        print(f"| {col} | {row} | {paper:g} | {pred:.{nd}f} | {e:+.1%} |")


if __name__ == "__main__":
    main()
