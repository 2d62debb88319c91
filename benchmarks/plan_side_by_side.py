"""moesim plan on the two questions docs/accuracy.md section 13 puts to NVIDIA's
AIConfigurator: DeepSeek-V3 on 16 H200 and Qwen3-235B-A22B on 8 H100, SGLang kernels, TTFT 2 s,
TPOT 50 ms, at 4096 (or --isl) input and 1024 output tokens.

    python benchmarks/plan_side_by_side.py [--workers 2] [--isl 4096 --osl 1024]

Prints, per question and serving mode, the best point meeting the SLO two ways: over the whole
search, and without MTP and with BF16 KV (what AIConfigurator models by default).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.outputs.plan import Question, search  # noqa: E402

QUESTIONS = {           # model, hardware, GPUs
    "DeepSeek-V3 on 16 H200": ("deepseek-v3", "h200-sxm", 16),
    "Qwen3-235B-A22B on 8 H100": ("qwen3-235b-a22b", "h100-sxm", 8),
}


def line(label: str, p: dict | None) -> str:
    """One point: its configuration and figures."""
    if p is None:
        return f"  {label}: none meets the SLO"
    return (f"  {label}: {p['config']}: {p['tokens_per_gpu_s']:.0f} tok/s/GPU, "
            f"{p['tokens_per_s_per_user']:.1f} tok/s/user, TPOT {p['tpot_ms']:.1f} ms, "
            f"TTFT {p['ttft_ms']:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--isl", type=int, default=4096)
    ap.add_argument("--osl", type=int, default=1024)
    args = ap.parse_args()
    for title, (model, hw, gpus) in QUESTIONS.items():
        res = search(Question(model=model, hardware=(hw,), gpus=(gpus,), isl=args.isl, osl=args.osl,
                              ttft_ms=2000, tpot_ms=50, runtime="sglang"), args.workers)
        ok = [p for p in res["points"] if p["meets_slo"]]
        print(f"{title}: {res['candidates']}")
        for mode in ("aggregated", "disaggregated"):
            mine = [p for p in ok if p["mode"] == mode]
            best = max(mine, key=lambda p: p["tokens_per_gpu_s"], default=None)
            plain = max((p for p in mine if not p["mtp"] and p["kv_bytes"] == 2.0),
                        key=lambda p: p["tokens_per_gpu_s"], default=None)
            print(line(f"{mode}, best", best))
            print(line(f"{mode}, no MTP, BF16 KV", plain))


if __name__ == "__main__":
    main()
