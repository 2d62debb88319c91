"""The typed result of one simulated step, and the one place its stable JSON keys are written."""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Optional

import numpy as np

from simulator.engine.streams import CommDemand
from simulator.engine.timeline import LaidOutOps, Timeline
from simulator.graph.memory import MemoryBreakdown
from simulator.graph.params import layer_counts
from simulator.pricing.cost import cost_per_million_tokens
from simulator.pricing.fidelity import (MAX_LISTED, expected_error_pct, measured_share,
                                        op_source_name)
from simulator.pricing.hardware import link_bandwidths
from simulator.pricing.traffic import EPTraffic
from simulator.schema import HardwareProfile, ModelSpec
from simulator.step.resolve import Resolved


@dataclass(frozen=True)
class StepResult:
    """A simulated step: what ran (timeline) and what it measures, in SI units."""

    resolved: Resolved
    schedule: str
    timeline: Timeline
    layer_time_s: float            # median over MoE layers of the time each adds
    step_time_s: float
    tpot_s: Optional[float]        # decode only
    tokens_per_gpu_s: float
    exposed_comm_s: float          # rank 0, communication with no compute beside it
    hidden_comm_s: float
    cost_per_million_output_tokens: Optional[float]
    cost_per_million_input_tokens: Optional[float]
    breakdown_s: dict[str, float]  # standalone parts of the representative layer
    representative_layer: int
    links: dict[str, dict[str, float]]
    ep: Optional[dict[str, Any]]
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)   # caller-added keys (e.g. validate)

    @property
    def memory(self) -> MemoryBreakdown:
        """HBM per GPU of this workload."""
        return self.resolved.memory

    def to_json(self, with_ops: bool = True) -> dict[str, Any]:
        """The stable JSON keys of `simulate --json` (docs/architecture.md), in us / ms / GB."""
        r, tl, w = self.resolved, self.timeline, self.resolved.workload
        out: dict[str, Any] = {
            "workload": w.name, "model": r.model.name, "hardware": r.profile.name,
            "phase": w.phase, "schedule": self.schedule, "ranks_simulated": tl.n_ranks,
            "layer_time_us": self.layer_time_s * 1e6, "step_time_ms": self.step_time_s * 1e3,
            "tpot_ms": None if self.tpot_s is None else self.tpot_s * 1e3,
            "tokens_per_gpu_s": self.tokens_per_gpu_s, "tokens_per_forward": r.tokens_per_forward,
            "exposed_comm_us": self.exposed_comm_s * 1e6, "hidden_comm_us": self.hidden_comm_s * 1e6,
            "cost_per_million_output_tokens": self.cost_per_million_output_tokens,
            "cost_per_million_input_tokens": self.cost_per_million_input_tokens,
            "breakdown_us": {k: v * 1e6 for k, v in self.breakdown_s.items()},
            "representative_layer": self.representative_layer,
            "memory_gb": {"weights": self.memory.weights / 1e9,
                          "kv_cache": self.memory.kv_cache / 1e9,
                          "activations": self.memory.activations / 1e9,
                          "total": self.memory.total / 1e9},
            "notes": list(self.notes),
            "links": self.links,
        }
        if self.ep is not None:
            out["ep"] = self.ep
        out["fidelity"] = self.fidelity
        if with_ops:
            source = self.op_sources
            out["ops"] = [{"name": op.name, "kind": op.kind, "stream": tl.streams[i],
                           "layer": op.layer, "start_us": float(tl.start_s[0, i]) * 1e6,
                           "end_us": float(tl.end_s[0, i]) * 1e6, "flops": op.flops,
                           "bytes": op.bytes, "source": source[i]}
                          for i, op in enumerate(tl.ops)]
        out.update(self.extra)
        return out

    @cached_property
    def op_sources(self) -> list[str]:
        """Where each laid-out op's price comes from: measured | interpolated | extrapolated |
        roofline (pricing/fidelity.op_source_name), priced once per distinct op."""
        r, tl = self.resolved, self.timeline
        ops, src = tl.ops.sources() if isinstance(tl.ops, LaidOutOps) else \
            (list(tl.ops), np.arange(len(tl.ops)))
        names = [op_source_name(op, r.workload.plan, r.profile) for op in ops]
        return [names[i] for i in src]

    @cached_property
    def fidelity(self) -> dict[str, Any]:
        """How much of rank 0's op time was priced inside measured tables, what was
        extrapolated, and the error band of such a case (pricing/fidelity.py)."""
        r, tl = self.resolved, self.timeline
        ops, src = tl.ops.sources() if isinstance(tl.ops, LaidOutOps) else \
            (list(tl.ops), np.arange(len(tl.ops)))
        secs = np.bincount(src, weights=tl.end_s[0] - tl.start_s[0], minlength=len(ops))
        share, outside = measured_share(list(zip(ops, secs.tolist())), r.workload.plan,
                                        r.profile)
        ms = r.profile.measured
        return {"measured_share": share, "extrapolated": outside[:MAX_LISTED],
                "kernel_tables": None if ms is None else
                f"{ms.kernels.framework} {ms.kernels.version} ({ms.kernels.system})",
                "expected_error_pct": expected_error_pct(r.profile.name, r.workload.phase,
                                                         share)}

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """to_json() with ops, computed once (read-only use)."""
        return self.to_json()


def runtime_overhead_s(r: Resolved) -> float:
    """The workload's runtime costs of one forward step: its step overhead, and its extra
    kernels per layer (over every layer, MTP layers included) at the profile's kernel
    latency."""
    rt = r.workload.runtime
    layers = r.model.num_layers + (r.model.mtp_layers if r.workload.mtp.enabled else 0)
    extra = rt.extra_kernels_per_layer.value if rt.extra_kernels_per_layer else 0.0
    step = rt.step_overhead_s.value if rt.step_overhead_s else 0.0
    return step + layers * extra * r.profile.kernel_latency_s.value


def measure(r: Resolved, schedule: str, tl: Timeline, notes: list[str],
            traffic: dict[int, EPTraffic], demands: Sequence[CommDemand | None]) -> StepResult:
    """Everything a step's timeline measures: times, throughput, cost, breakdown, links, EP."""
    w, prof, model = r.workload, r.profile, r.model
    runtime_s = runtime_overhead_s(r)
    step_s = tl.span_s + runtime_s
    exposed, hidden = tl.comm_exposure_s(0)
    layer_t = tl.layer_times_s(0)
    first = layer_counts(model)[0]
    moe_layers = [layer_t[i] for i in range(first, model.num_layers) if i in layer_t]
    layer_s = statistics.median(moe_layers) if moe_layers else 0.0
    price = prof.price_per_gpu_hour.value
    tpot = cost_out = cost_in = None
    if w.phase == "decode":
        tpot = step_s / r.tokens_per_forward
        tokens_per_gpu_s = w.batch_per_device / tpot / w.plan.attention_tp
        cost_out = cost_per_million_tokens(price, tokens_per_gpu_s)
    else:
        tokens_per_gpu_s = r.shape.tokens / w.plan.attention_tp / step_s if step_s > 0 else 0.0
        if w.phase == "prefill":
            cost_in = cost_per_million_tokens(price, tokens_per_gpu_s)
    rep = representative_layer(model)
    links, ep = _ep_metrics(traffic, tl, prof, demands)
    return StepResult(r, schedule, tl, layer_s, step_s, tpot, tokens_per_gpu_s, exposed, hidden,
                      cost_out, cost_in, breakdown_s(tl, rep), rep, links, ep, tuple(notes),
                      extra={"runtime_overhead_us": runtime_s * 1e6})


def _ep_metrics(traffic: dict[int, EPTraffic], tl: Timeline, prof: HardwareProfile,
                demands: Sequence[CommDemand | None]) -> tuple[dict, dict | None]:
    """Routing imbalance and link utilisation of the representative (slowest) rank
    (`demands`: per op of the timeline, its collective's demand)."""
    bw = link_bandwidths(prof)
    step = tl.span_s or 1.0
    per_class: dict[str, float] = {}
    for i in np.nonzero(tl.is_comm)[0].tolist():
        for cls, b in demands[i].link_bytes.items():
            per_class[cls] = per_class.get(cls, 0.0) + b
    links = {cls: {"bytes_per_step": b, "utilisation": b / bw[cls] / step}
             for cls, b in sorted(per_class.items())}
    if not traffic:
        return links, None
    t0 = traffic[0]
    return links, {"kernel": t0.kernel, "imbalance": t0.routing.imbalance,
                     "expert_imbalance": t0.routing.expert_imbalance,
                     "real_experts_mean": t0.routing.real_mean,
                     "real_experts_std": t0.routing.real_std,
                     "tokens_per_rank": t0.routing.tokens_per_rank,
                     "inter_node_bytes_per_rank": float(t0.nic_bytes.mean()),
                     "max_expert_slots": t0.routing.placement.max_slots}


def representative_layer(model: ModelSpec) -> int:
    """A middle MoE layer (or the middle layer of a dense model)."""
    first = layer_counts(model)[0]
    return first + (model.num_layers - first) // 2


def breakdown_s(tl: Timeline, layer: int) -> dict[str, float]:
    """Standalone time of one layer's parts for the whole batch (all micro-batches summed).

    attention_block is the mean over the layer's attention blocks (LongCat has two).
    """
    parts = {"attention_block": 0.0, "dispatch": 0.0, "moe": 0.0, "combine": 0.0,
             "dense_ffn": 0.0, "other": 0.0}
    blocks: set[str] = set()
    for i in np.nonzero(tl.layers == layer)[0].tolist():
        op, t = tl.ops[i], tl.standalone_s[i]
        if op.block.startswith("attn"):
            parts["attention_block"] += t      # summed over micro-batches: the whole batch
            blocks.add(op.block)
        elif op.name.endswith("dispatch") or op.name.endswith("dispatch.bwd"):
            parts["dispatch"] += t
        elif op.name.endswith("combine") or op.name.endswith("combine.bwd"):
            parts["combine"] += t
        elif op.kind == "grouped_gemm" or "shared_expert" in op.tags:
            parts["moe"] += t
        elif op.block.startswith("ffn"):
            parts["dense_ffn"] += t
        else:
            parts["other"] += t
    parts["attention_block"] /= max(1, len(blocks))
    return parts
