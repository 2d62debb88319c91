"""EP traffic of one micro-batch: routing -> topology -> per-rank collective demands and loads.

Used when the profile models links (not a flat idealised EP bandwidth). The slowest rank sets
the collapsed representative's expert GEMM and all-to-all; per-rank runs use every rank's own.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simulator.schema import HardwareProfile, ModelSpec, RoutingSpec, Workload
from simulator.graph.params import expert_params
from simulator.pricing.batched import gemm_times_s
from simulator.pricing.hardware import link_bandwidths
from simulator.pricing.measured import deepep_lookup, nodes_of
from simulator.engine.streams import CommDemand
from simulator.graph.ops import Op
from simulator.pricing.routing import RoutingResult, route
from simulator.pricing.topology import Cluster, rank_loads


@dataclass(frozen=True)
class EPTraffic:
    """Routing and link demands of one micro-batch's all-to-all, per EP rank."""

    routing: RoutingResult
    kernel: str
    nvlink_bytes: np.ndarray     # per rank, dispatch, on the engine's nvlink class
    nic_bytes: np.ndarray        # per rank, dispatch, on the engine's nic class
    latency_s: float
    combine_ratio: float         # combine bytes / dispatch bytes
    sm_fraction: float | None = None   # SMs the kernel takes from compute (None: the profile's)
    combine_latency_s: float | None = None   # the combine's, where it differs (measured)
    _made: dict = field(default_factory=dict, compare=False, repr=False)   # demands() lists

    def demands(self, combine: bool, share: float = 1.0,
                latency_s: float | None = None) -> list[CommDemand]:
        """What each rank's part of the dispatch (or combine) needs, by rank; `share`: a token
        chunk's fraction of the micro-batch; `latency_s`: its start-up latency (default the
        kernel's; an eager runtime's op pays one per launch). One list per arguments, made
        once: callers share it and do not change it."""
        key = (combine, share, latency_s)
        if key not in self._made:
            self._made[key] = [self.demand(r, combine, share, latency_s)
                               for r in range(self.nvlink_bytes.size)]
        return self._made[key]

    def demand(self, rank: int, combine: bool, share: float = 1.0,
               latency_s: float | None = None) -> CommDemand:
        """What one rank's part of the dispatch (or combine) needs (as demands())."""
        f = self._factor(combine, share)
        nvl, nic = float(self.nvlink_bytes[rank]) * f, float(self.nic_bytes[rank]) * f
        d = {k: v for k, v in (("nvlink", nvl), ("nic", nic)) if v > 0}
        return CommDemand(self.latency(combine) if latency_s is None else latency_s, d,
                          self.sm_fraction)

    def latency(self, combine: bool) -> float:
        """The start-up latency of the dispatch (or the combine)."""
        return self.combine_latency_s if combine and self.combine_latency_s is not None \
            else self.latency_s

    def _factor(self, combine: bool, share: float) -> float:
        """A rank's bytes are its dispatch bytes times this (the combine's bytes per element,
        a token chunk's share)."""
        return (self.combine_ratio if combine else 1.0) * share

    def times_s(self, combine: bool, share: float, latency_s: float,
                bandwidth_Bps: dict[str, float]) -> np.ndarray:
        """Each rank's demand() with its links to itself, in seconds: the latency and the
        slower link (the links run in parallel)."""
        f = self._factor(combine, share)
        return latency_s + np.maximum(self.nvlink_bytes * f / bandwidth_Bps["nvlink"],
                                      self.nic_bytes * f / bandwidth_Bps["nic"])


def kernel_for(w: Workload) -> str:
    """The all-to-all kernel a workload uses (auto: low-latency for decode)."""
    k = w.routing.ep_kernel
    return ("low_latency" if w.phase == "decode" else "normal") if k == "auto" else k


def ep_traffic(model: ModelSpec, w: Workload, prof: HardwareProfile, tokens_per_rank: int,
               real_experts: float, seed: int, micro_batch: int = 0) -> EPTraffic:
    """Route micro-batch `micro_batch`'s `tokens_per_rank` tokens on each EP rank (routing.route)
    and map the traffic onto the cluster."""
    assert model.moe is not None
    plan = w.plan
    r = route(w.routing, n_experts=model.moe.num_experts, top_k=model.moe.top_k,
              has_zero_experts=model.moe.num_zero_experts > 0, real_mean=real_experts,
              ep=plan.ep, gpus_per_node=plan.gpus_per_node, tokens_per_rank=tokens_per_rank,
              seed=seed, micro_batch=micro_batch)
    kernel = kernel_for(w)
    per_copy = model.hidden_size * w.precision.dispatch_bytes
    cluster = Cluster.from_profile(prof, plan.ep, plan.gpus_per_node)
    bw = link_bandwidths(prof)
    nvl, nic, mean_s = rank_demands(cluster, plan.ep, r, per_copy, kernel, bw)
    remote = plan.ep > plan.gpus_per_node
    latency = prof.ep_kernel_latency_s.value + (prof.nic.latency_s.value if remote
                                                else prof.nvlink.latency_s.value)
    ratio = w.precision.combine_bytes / w.precision.dispatch_bytes
    combine_latency = None

    def measured(tokens: float):
        return deepep_lookup(prof, kernel, nodes_of(plan.ep, plan.gpus_per_node),
                             model.hidden_size, model.moe.top_k, model.moe.num_experts, tokens,
                             per_copy)
    hit = measured(tokens_per_rank)
    if hit is not None:      # the mean rank takes DeepEP's measured time; the rest is imbalance
        scale = table_routing_scale(model, w, cluster, kernel, tokens_per_rank, per_copy,
                                    real_experts, seed, micro_batch, mean_s, bw)
        hit = measured(tokens_per_rank * scale) if scale != 1.0 else hit
        latency = max(hit[0].seconds - mean_s, 0.0)
        combine_latency = max(hit[1].seconds - mean_s * ratio, 0.0)
    return EPTraffic(r, kernel, nvl, nic, latency, ratio, comm_sm_fraction(prof, kernel),
                     combine_latency)


def rank_demands(cluster: Cluster, ep: int, r: RoutingResult, per_copy: float, kernel: str,
                 bw: dict[str, float]) -> tuple[np.ndarray, np.ndarray, float]:
    """A routing's dispatch bytes per rank on NVLink and on the NIC, and the mean rank's link
    time (the slower of its two links)."""
    loads = rank_loads(cluster, ep, r.t_expert * per_copy, r.t_gpu * per_copy,
                       r.t_node * per_copy, kernel)
    nvl, nic = loads.demand(cluster)
    return nvl, nic, float(np.mean(np.maximum(nvl / bw["nvlink"], nic / bw["nic"])))


def table_routing_scale(model: ModelSpec, w: Workload, cluster: Cluster, kernel: str,
                        tokens_per_rank: int, per_copy: float, real_experts: float, seed: int,
                        micro_batch: int, mean_s: float, bw: dict[str, float]) -> float:
    """How many of the measured tables' tokens move what this workload's tokens move: DeepEP's
    benchmark (and the collectors built on it) draws each token's top-k experts uniformly from
    all experts, with no zero experts, node or group limit or replica. The low-latency kernel
    sends one copy per real expert (real_experts / top_k of the table's); the normal kernel
    one per destination rank and node, so a routing that reaches fewer of them per token
    (torchtitan's consecutive experts, group-limited routing) moves fewer bytes: the mean
    rank's link time over that of the table's routing, sampled on the same tokens."""
    assert model.moe is not None
    if kernel == "low_latency":
        return real_experts / model.moe.top_k
    if w.routing == RoutingSpec() and model.moe.num_zero_experts == 0:
        return 1.0                                 # the workload routes as the tables did
    plan = w.plan
    ref = route(RoutingSpec(), n_experts=model.moe.num_experts, top_k=model.moe.top_k,
                has_zero_experts=False, real_mean=float(model.moe.top_k), ep=plan.ep,
                gpus_per_node=plan.gpus_per_node, tokens_per_rank=tokens_per_rank, seed=seed,
                micro_batch=micro_batch)
    ref_s = rank_demands(cluster, plan.ep, ref, per_copy, kernel, bw)[2]
    return mean_s / ref_s if ref_s > 0 and mean_s > 0 else 1.0


def comm_sm_fraction(prof: HardwareProfile, kernel: str) -> float:
    """The share of compute an EP all-to-all kernel takes while it runs: the low-latency
    (hook-based) kernels their own profile figure, every other kernel comm_sm_fraction."""
    if kernel == "low_latency" and prof.low_latency_comm_sm_fraction is not None:
        return prof.low_latency_comm_sm_fraction.value
    return prof.comm_sm_fraction.value


def expert_op_for_rank(op: Op, t: EPTraffic, rank: int, model: ModelSpec, w: Workload) -> Op:
    """The expert GEMM of one rank: its routed rows and the weights of its expert copies that
    receive any row (a grouped GEMM skips an expert with none)."""
    return _expert_op(op, float(t.routing.rank_rows[rank]), int(t.routing.active_slots[rank]),
                      model, w)


def _expert_op(op: Op, routed, slots, model: ModelSpec, w: Workload) -> Op:
    """`op` with `routed` rows over `slots` active expert copies (numbers, or arrays: one
    element per rank)."""
    assert model.moe is not None
    h, wb, ab = model.hidden_size, w.precision.weight_bytes, w.precision.activation_bytes
    w_exp = expert_params(model)
    rows = routed * op.share
    out = op.copy()                    # every other field as the op's
    out.flops, out.m = 2 * rows * w_exp, rows / np.maximum(slots, 1)
    out.weight_bytes = slots * w_exp * wb
    out.bytes = slots * w_exp * wb + rows * 2 * h * ab
    return out


def per_rank_times(op: Op, t: EPTraffic, model: ModelSpec, w: Workload,
                   prof: HardwareProfile) -> list[float]:
    """Standalone duration of an expert op on every EP rank, all ranks priced at once
    (pricing/batched.py: each rank as compute_time_s prices its own op)."""
    e = _expert_op(op, t.routing.rank_rows, t.routing.active_slots.astype(np.int64), model, w)
    return gemm_times_s(op, prof, e.flops, e.m, e.bytes, e.weight_bytes).tolist()
