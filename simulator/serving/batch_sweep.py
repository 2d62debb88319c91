"""Throughput-interactivity curve: decode at a fixed batch per device, schedule by schedule."""
from __future__ import annotations

from simulator.schema import Workload
from simulator.errors import MoesimError
from simulator.step.whatif import resolve, simulate


def batch_sweep(w: Workload, batches: list[int], schedules: list[str]) -> list[dict]:
    """One point per (schedule, batch): tokens/s per user, tokens/GPU/s, TPOT and $ per M."""
    points = []
    for schedule in schedules:
        for b in batches:
            wb = w.variant(batch_per_device=b, phase="decode", serving=None, schedule=schedule)
            point = {"schedule": schedule, "batch_per_device": b, "tokens_per_s_per_user": None,
                     "tokens_per_gpu_s": None, "tpot_ms": None,
                     "cost_per_million_output_tokens": None, "note": None}
            try:
                m = simulate(wb, resolved=resolve(wb)).metrics
            except MoesimError as exc:
                if exc.field not in ("batch_per_device",):
                    raise
                point["note"] = exc.problem.split(":")[0]
                points.append(point)
                continue
            point.update(tokens_per_s_per_user=1e3 / m["tpot_ms"],
                         tokens_per_gpu_s=m["tokens_per_gpu_s"], tpot_ms=m["tpot_ms"],
                         cost_per_million_output_tokens=m["cost_per_million_output_tokens"])
            points.append(point)
    return points
