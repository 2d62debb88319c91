"""The result of a serving run: per-request outcomes and the stable JSON keys of `serve --json`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulator.pricing.cost import cost_per_million_tokens
from simulator.serving.state import LoopState


KV_SAMPLES = 2000       # KV-utilisation points kept for the report


@dataclass
class ServeResult:
    """Per-request outcomes (seconds), the KV-utilisation trace and the summary metrics."""

    metrics: dict
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray
    kv_t: np.ndarray
    kv_util: np.ndarray
    notes: list[str] = field(default_factory=list)
    request_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    arrival_s: np.ndarray = field(default_factory=lambda: np.zeros(0))
    input_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    output_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    def to_json(self) -> dict[str, Any]:
        """The stable JSON keys of `serve --json` (docs/architecture.md)."""
        return self.metrics

    def requests_csv(self) -> str:
        """Every finished request, by arrival: id, arrival, lengths, TTFT, TPOT, end-to-end (ms),
        as a benchmark client logs them (`serve --requests-csv`)."""
        rows = ["request,arrival_s,input_tokens,output_tokens,ttft_ms,tpot_ms,e2e_ms"]
        for i in np.argsort(self.arrival_s, kind="stable"):
            rows.append(f"{int(self.request_ids[i])},{self.arrival_s[i]:.6f},"
                        f"{int(self.input_tokens[i])},{int(self.output_tokens[i])},"
                        f"{self.ttft_s[i] * 1e3:.6f},{self.tpot_s[i] * 1e3:.6f},"
                        f"{self.e2e_s[i] * 1e3:.6f}")
        return "\n".join(rows) + "\n"


def summarize(run: LoopState, t_end: float, area: float, kv_t: np.ndarray,
              kv_u: np.ndarray) -> ServeResult:
    """Percentiles, throughput, cost, request counts and Little's-law terms of a finished run."""
    sim, spec = run.sim, run.sim.spec
    done = ~np.isnan(run.finish)
    arrived = len(run.r)
    rejected = int(run.rejected.sum())
    unfinished = arrived - rejected - int(done.sum())
    arr = run.r.arrival_s
    ttft = (run.first - arr)[done]
    e2e = (run.finish - arr)[done]
    out = run.r.output_tokens[done]
    tpot = np.where(out > 1, (run.finish - run.first)[done] / np.maximum(out - 1, 1), 0.0)
    itl = np.where(out > 1, (run.finish - run.first)[done] / run.steps0[done], 0.0)
    makespan = max(t_end, 1e-9)
    price = sim.profile.price_per_gpu_hour.value
    dec_gpus = (spec.decode.plan or sim.w.plan).gpus
    pre_gpus = 0 if spec.mode == "colocated" else (spec.prefill.plan or sim.w.plan).gpus
    out_tokens = float(run.r.output_tokens[done].sum())
    in_tokens = float(run.r.input_tokens[done].sum())
    dec_rate = out_tokens / (dec_gpus * makespan)
    pre_rate = in_tokens / (max(pre_gpus, dec_gpus if spec.mode == "colocated" else 1) * makespan)
    slo = spec.slo
    good = int(((ttft <= slo.ttft_ms / 1e3) & (tpot <= slo.tpot_ms / 1e3)).sum())
    horizon = makespan if run.closed else max(run.r.duration_s, spec.arrivals.duration_s)

    def pct(x: np.ndarray) -> dict:
        if x.size == 0:
            return {"mean": None, "p50": None, "p90": None, "p99": None}
        p = np.percentile(x * 1e3, [50, 90, 99])
        return {"mean": float(x.mean() * 1e3), "p50": float(p[0]), "p90": float(p[1]),
                "p99": float(p[2])}

    mean_in_system = area / makespan
    lam = (arrived - rejected) / makespan
    metrics = {
        "workload": sim.w.name, "mode": spec.mode,
        "runtime_preset": sim.engine.name,
        "ttft_ms": pct(ttft), "tpot_ms": pct(tpot), "itl_ms": pct(itl), "e2e_ms": pct(e2e),
        "tokens_per_s_per_user": float(np.mean(1.0 / tpot[tpot > 0])) if (tpot > 0).any() else None,
        "decode_tokens_per_gpu_s": dec_rate, "prefill_tokens_per_gpu_s": pre_rate,
        "cost_per_million_output_tokens": cost_per_million_tokens(price, dec_rate) if dec_rate else None,
        "cost_per_million_input_tokens": (cost_per_million_tokens(price, pre_rate)
                                          if pre_gpus and pre_rate else None),
        "cost_per_million_output_tokens_all_gpus": (
            cost_per_million_tokens(price, out_tokens / ((dec_gpus + pre_gpus) * makespan))
            if out_tokens else None),
        "requests": {"arrived": arrived, "finished": int(done.sum()), "rejected": rejected,
                     "unfinished": unfinished, "preempted": run.preemptions},
        "goodput_rps": good / max(horizon, 1e-9), "slo": spec.slo.model_dump(),
        "kv_utilisation": {"mean": float(kv_u.mean()) if kv_u.size else 0.0,
                           "max": float(kv_u.max()) if kv_u.size else 0.0},
        "kv_budget_tokens": sim.kv_budget_tokens,
        "little": {"mean_in_system": mean_in_system,
                   "lambda_times_w": lam * float(e2e.mean()) if e2e.size else 0.0},
        "throughput": {
            "makespan_s": makespan, "requests_per_s": float(done.sum()) / makespan,
            "output_tokens_per_s": out_tokens / makespan,
            "output_tokens_per_s_per_gpu": out_tokens / ((dec_gpus + pre_gpus) * makespan),
            "output_tokens_per_s_per_node": out_tokens / makespan / max(
                1.0, (dec_gpus + pre_gpus) / sim.w.plan.gpus_per_node)},
        "simulated_s": makespan, "decode_steps": run.step,
        "step_shapes_simulated": len(sim.decode.cache) + len(sim.prefill.cache),
    }
    return ServeResult(metrics, ttft, tpot, e2e, kv_t, kv_u, request_ids=np.nonzero(done)[0],
                       arrival_s=arr[done], input_tokens=run.r.input_tokens[done],
                       output_tokens=out)
