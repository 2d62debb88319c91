"""Run one workload: resolve it, build the step graph, schedule it, simulate it, measure it."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from simulator.pricing.cost import cost_per_million_tokens
from simulator.engine.core import Engine
from simulator.errors import MoesimError
from simulator.pricing.hardware import (comm_demand, eager_launches, link_bandwidths,
                                op_time_s, straggler_factor)
from simulator.loading import load_model, load_profile
from simulator.notes import collecting
from simulator.graph.memory import MemoryBreakdown, inference_memory
from simulator.graph.model import Shape, build_backward, build_forward
from simulator.engine.schedule import get_schedule
from simulator.schema import HardwareProfile, ModelSpec, Workload
from simulator.engine.streams import CommDemand
from simulator.engine.timeline import Timeline
from simulator.pricing.traffic import EPTraffic, comm_time_s, ep_traffic, per_rank_times


@dataclass(frozen=True)
class Resolved:
    """A workload with its model and profile loaded and its derived shapes checked: built once
    by `resolve`, read by everything downstream, never edited."""

    workload: Workload
    model: ModelSpec
    profile: HardwareProfile
    real_experts: float
    mtp_on: bool
    acceptance: float
    shape: Shape
    memory: MemoryBreakdown
    notes: tuple[str, ...] = ()
    with_head: bool = True             # the LM head (and MTP) run in this step
    traffic_cache: dict = field(default_factory=dict, compare=False)   # memo: routing by tokens

    @property
    def tokens_per_forward(self) -> float:
        """Output tokens each sequence gains per decode forward (1 without MTP)."""
        if not self.mtp_on:
            return 1.0
        d = self.workload.mtp.draft_tokens
        return 1.0 + sum(self.acceptance ** i for i in range(1, d + 1))


def check_plan(w: Workload, model: ModelSpec) -> None:
    """The plan against the model: EP divides the routed experts, CP divides the sequence."""
    plan = w.plan
    if model.moe is not None and model.moe.num_experts % plan.ep:
        raise MoesimError("plan.ep", f"EP {plan.ep} does not divide the {model.moe.num_experts} "
                          f"routed experts of {model.name}",
                          "choose an ep that divides the expert count (e.g. "
                          f"{_divisors_hint(model.moe.num_experts, plan.gpus)})")
    if w.phase != "decode" and w.context_length % plan.cp:
        raise MoesimError("plan.cp", f"cp {plan.cp} does not divide the sequence length "
                          f"{w.context_length}", "choose a cp that divides context_length")


def resolve(w: Workload, model: ModelSpec | None = None,
            profile: HardwareProfile | None = None, *, with_head: bool = True,
            traffic_cache: dict | None = None) -> Resolved:
    """Load and cross-check everything a workload names; raise MoesimError on bad input.
    `model` / `profile` skip loading what the caller already holds; `traffic_cache` shares
    routing samples between workloads that differ only in shape."""
    model = model or load_model(w.model)
    profile = profile or load_profile(w.hardware)
    plan = w.plan
    notes: list[str] = []
    check_plan(w, model)
    k_real = 0.0
    if model.moe is not None:
        k_real = w.real_experts_per_token or model.moe.mean_real_experts
        if k_real > model.moe.top_k:
            raise MoesimError("real_experts_per_token", f"{k_real} exceeds top_k "
                              f"{model.moe.top_k}", "use a value between 0 and top_k")
    _check_routing(w, model)
    mtp_on = w.mtp.enabled and w.phase == "decode"
    if w.mtp.enabled and model.mtp_layers == 0:
        raise MoesimError("mtp.enabled", f"{model.name} has no MTP layer",
                          "set mtp.enabled: false or pick a model with mtp_layers")
    acceptance = w.mtp.acceptance if w.mtp.acceptance is not None else model.mtp_acceptance
    if w.phase == "decode":
        q = 1 + (w.mtp.draft_tokens if mtp_on and
                 not profile.idealizations.mtp_verification_free else 0)
        shape = Shape("decode", w.batch_per_device, q, w.context_length)
    else:
        shape = Shape(w.phase, w.batch_per_device, w.context_length // w.plan.cp,
                      w.context_length)
    memory = inference_memory(model, plan, w.precision, shape, mtp_on,
                              w.routing.redundant_experts)
    hbm = profile.hbm_bytes.value
    if memory.total > hbm:
        msg = (f"needs {memory.describe()} per GPU, but {profile.gpu} has "
               f"{hbm / 1e9:.0f} GB of HBM")
        if profile.idealizations.enforce_hbm_capacity:
            raise MoesimError("batch_per_device", f"the batch does not fit: {msg}",
                              "lower batch_per_device or context_length, raise ep/tp, or use "
                              "smaller precision.weight_bytes / kv_bytes")
        notes.append(f"memory not enforced by this idealised profile: {msg}")
    return Resolved(w, model, profile, k_real, mtp_on, acceptance, shape, memory, tuple(notes),
                    with_head, traffic_cache if traffic_cache is not None else {})


def _check_routing(w: Workload, model: ModelSpec) -> None:
    rt = w.routing
    if model.moe is None:
        return
    if rt.expert_groups and model.moe.num_experts % rt.expert_groups:
        raise MoesimError("routing.expert_groups", f"{rt.expert_groups} groups do not divide "
                          f"the {model.moe.num_experts} experts", "use a divisor of the expert count")
    if rt.max_groups_per_token and not rt.expert_groups:
        raise MoesimError("routing.max_groups_per_token", "set without routing.expert_groups",
                          "give expert_groups too, or drop max_groups_per_token")
    if rt.expert_groups and rt.max_groups_per_token and rt.max_groups_per_token > rt.expert_groups:
        raise MoesimError("routing.max_groups_per_token", "exceeds routing.expert_groups",
                          "use at most expert_groups")
    most = model.moe.num_experts * (w.plan.ep - 1)
    if rt.redundant_experts > most:
        raise MoesimError("routing.redundant_experts", f"{rt.redundant_experts} copies, but "
                          f"{model.moe.num_experts} experts on EP {w.plan.ep} leave room for at "
                          f"most {most} (one copy of an expert per rank)",
                          f"use at most {most}, typically a few per rank")
    if rt.real_experts_std and model.moe.num_zero_experts == 0:
        raise MoesimError("routing.real_experts_std", f"{model.name} has no zero-computation "
                          "experts, so every token uses exactly top_k experts",
                          "drop real_experts_std for this model")


def _divisors_hint(n: int, gpus: int) -> str:
    return ", ".join(str(d) for d in range(1, min(n, gpus) + 1) if n % d == 0 and gpus % d == 0
                     and d & (d - 1) == 0)


def build_step_graph(r: Resolved, schedule: str) -> nx.DiGraph:
    """The op graph of one step (all layers, head, MTP), split into micro-batches if needed."""
    w = r.workload
    graphs = []
    for mb, shape in enumerate(get_schedule(schedule).split(r.shape)):
        fwd = build_forward(r.model, w.plan, w.precision, shape, r.real_experts,
                            mtp=r.mtp_on, micro_batch=mb, with_head=r.with_head)
        graphs.append(build_backward(fwd) if w.phase == "train_bwd" else fwd)
    return nx.union_all(graphs) if len(graphs) > 1 else graphs[0]


@dataclass
class RunResult:
    """A simulated step and everything measured on it."""

    resolved: Resolved
    schedule: str
    timeline: Timeline
    metrics: dict


def simulate(w: Workload, schedule: str | None = None, per_rank: bool = False,
             resolved: Resolved | None = None) -> RunResult:
    """Simulate one step of a workload under a schedule (default: the workload's)."""
    schedule = schedule or w.schedule
    policy = get_schedule(schedule).policy
    r = resolved or resolve(w)
    return _simulate(w, schedule, policy, r, per_rank)


def _simulate(w: Workload, schedule: str, policy, r: Resolved, per_rank: bool) -> RunResult:
    prof, plan = r.profile, w.plan
    with collecting() as caught:
        g = build_step_graph(r, schedule)
        traffic = _traffic(r, schedule)
        durations: dict[str, float] = {}
        demands = {}
        rank_comm: dict[str, list] = {}
        rank_compute: dict[str, list[float]] = {}
        memo: dict[tuple, tuple] = {}          # identical layers share their per-rank work
        for name, data in g.nodes(data=True):
            op = data["op"]
            t = traffic.get(op.micro_batch)
            if t is not None and op.is_comm and op.group == "ep":
                key = ("comm", op.micro_batch, "combine" in op.name)
                if key not in memo:
                    per = [eager_launches(t.demand(k, key[2]), op, prof) for k in range(plan.ep)]
                    times = [comm_time_s(d, prof) for d in per]
                    memo[key] = (per, int(np.argmax(times)), times)
                per, slow, times = memo[key]
                rank_comm[name], demands[name], durations[name] = per, per[slow], times[slow]
            elif t is not None and op.kind == "grouped_gemm":
                key = ("experts", op.micro_batch, op.flops, op.weight_bytes)
                if key not in memo:
                    memo[key] = (per_rank_times(op, t, r.model, w, prof),)
                times = memo[key][0]
                rank_compute[name], durations[name] = times, max(times)
            else:
                if op.is_comm:
                    demands[name] = comm_demand(op, plan, prof)
                durations[name] = op_time_s(op, plan, prof)
        slow = straggler_factor(prof, plan.ep)      # ranks meet at every EP all-to-all
        if slow != 1.0:
            for name, data in g.nodes(data=True):
                if not data["op"].is_comm:
                    durations[name] *= slow
            rank_compute = {n: [x * slow for x in v] for n, v in rank_compute.items()}
        sp = policy(g, durations, demands)
        if per_rank:          # every rank its own load; collapsed runs the slowest rank's
            index = {n: i for i, n in enumerate(sp.names)}
            sp.rank_comm = {index[n]: v for n, v in rank_comm.items()}
            sp.rank_compute_s = {index[n]: v for n, v in rank_compute.items()}
        n_ranks = plan.gpus // plan.pp if per_rank else 1
        start, end = Engine(sp, link_bandwidths(prof), prof.comm_sm_fraction.value,
                            n_ranks).run()
    ops = [g.nodes[n]["op"] for n in sp.names]
    tl = Timeline(ops, sp.streams, np.array(start), np.array(end),
                  [durations[n] for n in sp.names])
    notes = list(r.notes) + sorted(set(caught))
    metrics = _metrics(r, schedule, tl, notes)
    metrics.update(_ep_metrics(traffic, tl, prof, demands))
    return RunResult(r, schedule, tl, metrics)


def _traffic(r: Resolved, schedule: str) -> dict[int, EPTraffic]:
    """Sampled EP traffic per micro-batch, when the profile models links (memoised)."""
    w, model, prof = r.workload, r.model, r.profile
    if model.moe is None or w.plan.ep <= 1 or prof.idealizations.ep_flat_bandwidth_Bps:
        return {}
    out = {}
    for mb, shape in enumerate(get_schedule(schedule).split(r.shape)):
        tokens = shape.sequences * shape.query_tokens
        key = (tokens, w.seed + mb)
        if key not in r.traffic_cache:
            r.traffic_cache[key] = ep_traffic(model, w, prof, tokens, r.real_experts, w.seed + mb)
        out[mb] = r.traffic_cache[key]
    return out


def _ep_metrics(traffic: dict[int, EPTraffic], tl: Timeline, prof: HardwareProfile,
                demands: dict[str, CommDemand]) -> dict:
    """Routing imbalance and link utilisation of the representative (slowest) rank."""
    bw = link_bandwidths(prof)
    step = tl.span_s or 1.0
    per_class: dict[str, float] = {}
    for op in tl.ops:
        if not op.is_comm:
            continue
        for cls, b in demands[op.name].link_bytes.items():
            per_class[cls] = per_class.get(cls, 0.0) + b
    links = {cls: {"bytes_per_step": b, "utilisation": b / bw[cls] / step}
             for cls, b in sorted(per_class.items())}
    out: dict = {"links": links}
    if traffic:
        t0 = traffic[0]
        out["ep"] = {"kernel": t0.kernel, "imbalance": t0.routing.imbalance,
                     "expert_imbalance": t0.routing.expert_imbalance,
                     "real_experts_mean": t0.routing.real_mean,
                     "real_experts_std": t0.routing.real_std,
                     "tokens_per_rank": t0.routing.tokens_per_rank,
                     "inter_node_bytes_per_rank": float(t0.nic_bytes.mean()),
                     "max_expert_slots": t0.routing.placement.max_slots}
    return out


def representative_layer(model: ModelSpec) -> int:
    """A middle MoE layer (or the middle layer of a dense model)."""
    first = model.first_k_dense if model.moe else 0
    return first + (model.num_layers - first) // 2


def breakdown_us(tl: Timeline, layer: int) -> dict[str, float]:
    """Standalone time of one layer's parts for the whole batch (all micro-batches summed).

    attention_block is the mean over the layer's attention blocks (LongCat has two).
    """
    parts = {"attention_block": 0.0, "dispatch": 0.0, "moe": 0.0, "combine": 0.0,
             "dense_ffn": 0.0, "other": 0.0}
    blocks: set[str] = set()
    for op, t in zip(tl.ops, tl.standalone_s):
        if op.layer != layer:
            continue
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
    return {k: v * 1e6 for k, v in parts.items()}


def _metrics(r: Resolved, schedule: str, tl: Timeline, notes: list[str]) -> dict:
    w, prof = r.workload, r.profile
    step_s = tl.span_s
    exposed, hidden = tl.comm_exposure_s(0)
    layer_t = tl.layer_times_s(0)
    model = r.model
    first = model.first_k_dense if model.moe else 0
    moe_layers = [layer_t[i] for i in range(first, model.num_layers) if i in layer_t]
    layer_s = statistics.median(moe_layers) if moe_layers else 0.0
    price = prof.price_per_gpu_hour.value
    tpot_ms = tokens_per_gpu_s = None
    cost_out = cost_in = None
    if w.phase == "decode":
        tpot = step_s / r.tokens_per_forward
        tpot_ms = tpot * 1e3
        tokens_per_gpu_s = w.batch_per_device / tpot
        cost_out = cost_per_million_tokens(price, tokens_per_gpu_s)
    else:
        tokens_per_gpu_s = r.shape.tokens / step_s if step_s > 0 else 0.0
        if w.phase == "prefill":
            cost_in = cost_per_million_tokens(price, tokens_per_gpu_s)
    rep = representative_layer(model)
    return {
        "workload": w.name, "model": model.name, "hardware": prof.name, "phase": w.phase,
        "schedule": schedule, "ranks_simulated": tl.n_ranks,
        "layer_time_us": layer_s * 1e6, "step_time_ms": step_s * 1e3, "tpot_ms": tpot_ms,
        "tokens_per_gpu_s": tokens_per_gpu_s, "tokens_per_forward": r.tokens_per_forward,
        "exposed_comm_us": exposed * 1e6, "hidden_comm_us": hidden * 1e6,
        "cost_per_million_output_tokens": cost_out, "cost_per_million_input_tokens": cost_in,
        "breakdown_us": breakdown_us(tl, rep), "representative_layer": rep,
        "memory_gb": {"weights": r.memory.weights / 1e9, "kv_cache": r.memory.kv_cache / 1e9,
                      "activations": r.memory.activations / 1e9, "total": r.memory.total / 1e9},
        "notes": notes,
        "ops": [{"name": op.name, "kind": op.kind, "stream": tl.streams[i], "layer": op.layer,
                 "start_us": float(tl.start_s[0, i]) * 1e6,
                 "end_us": float(tl.end_s[0, i]) * 1e6, "flops": op.flops, "bytes": op.bytes}
                for i, op in enumerate(tl.ops)],
    }


__all__ = ["resolve", "simulate", "RunResult", "Resolved"]
