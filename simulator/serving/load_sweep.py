"""Latency against load: one serving run per offered load, closed-loop concurrency (N clients,
as benchmark clients with --max-concurrency) or Poisson rate, each point the run's latency
percentiles and throughput."""
from __future__ import annotations

from typing import Callable

from simulator.schema import Workload
from simulator.serving.run import ServingSim


def load_sweep(w: Workload, kind: str, loads: list[float],
               progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One point per load (`kind`: concurrency or rate): TTFT, TPOT, E2E percentiles, output
    tokens/s per GPU and per user, requests finished and preempted."""
    assert w.serving is not None and kind in ("concurrency", "rate")
    points = []
    for i, load in enumerate(loads):
        arrivals = {"process": "closed", "concurrency": int(load)} if kind == "concurrency" \
            else {"process": "poisson", "rate_per_s": float(load),
                  "duration_s": w.serving.arrivals.duration_s}
        wl = w.variant(serving=w.serving.variant(arrivals=arrivals))
        m = ServingSim(wl).run(check_stability=False).metrics
        points.append({kind: load, "runtime_preset": m["runtime_preset"],
                       "ttft_ms": m["ttft_ms"], "tpot_ms": m["tpot_ms"],
                       "e2e_ms": m["e2e_ms"],
                       "output_tokens_per_s_per_gpu": m["throughput"]["output_tokens_per_s_per_gpu"],
                       "tokens_per_s_per_user": m["tokens_per_s_per_user"],
                       "requests": m["requests"]})
        if progress:
            progress(i + 1, len(loads))
    return points
