"""Executor vs simulator on this machine over a grid of tiny ScMoE workloads.

Run: python benchmarks/validate_grid.py [--profile cpu-2core-example] [--ranks 2] [--repeats 5]
Targets (docs/accuracy.md): per-layer MAPE <= 15% (goal 10%), scmoe-vs-sequential speedup error
<= 5 percentage points, the sign of the speedup right in every case.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from executor.validate import validate  # noqa: E402
from simulator.loading import load_workload  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GRID = [  # name, batch (sequences x tokens), hidden, experts, top_k, real experts
    ("base", 4, 128, 512, 16, 4, 3),
    ("small-batch", 2, 64, 512, 16, 4, 3),
    ("large-batch", 8, 128, 512, 16, 4, 3),
    ("more-experts", 4, 128, 512, 32, 4, 3),
    ("top-2", 4, 128, 512, 16, 2, 2),
    ("hidden-256", 4, 128, 256, 16, 4, 3),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu-2core-example")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    base_model = yaml.safe_load((ROOT / "workloads" / "models" / "tiny-scmoe.yaml").read_text())
    base_w = yaml.safe_load((ROOT / "workloads" / "tiny-scmoe.yaml").read_text())
    print("| workload | per-layer MAPE | speedup measured | speedup predicted | error (pp) | sign |")
    print("|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as d:
        for name, b, s, h, e, k, real in GRID:
            m = dict(base_model, name=f"tiny-{name}", hidden_size=h)
            m["moe"] = dict(m["moe"], num_experts=e, top_k=k, real_experts_per_token=real)
            mp_ = Path(d) / f"{name}-model.yaml"
            mp_.write_text(yaml.safe_dump(m))
            w = dict(base_w, name=name, model=str(mp_), batch_per_device=b, context_length=s)
            wp = Path(d) / f"{name}.yaml"
            wp.write_text(yaml.safe_dump(w))
            v = validate(load_workload(str(wp)), args.profile, args.ranks, args.repeats)
            sm, sp = v["speedup_measured"], v["speedup_predicted"]
            sign = (sm > 1) == (sp > 1)
            print(f"| {name} (b={b}x{s}, h={h}, E={e}, k={k}) | {v['mape']:.1%} | {sm:.3f} | "
                  f"{sp:.3f} | {100 * (sp - sm):+.1f} | {'right' if sign else 'WRONG'} |",
                  flush=True)


if __name__ == "__main__":
    main()
