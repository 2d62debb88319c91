"""Run one workload: resolve it, build the step graph, schedule it, simulate it, measure it."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

from simulator.engine.ranks import run_ranks, uses_arrays
from simulator.engine.periodic import KEEPS, NotRepeating, extend, truncated_layers
from simulator.engine.shared_prefix import try_truncated
from simulator.engine.streams import CommDemand, StreamPlan
from simulator.errors import MoesimError
from simulator.engine.schedule import get_schedule
from simulator.engine.timeline import LaidOutOps, Timeline
from simulator.graph.backward import MAIN_GRAD_BYTES, build_backward
from simulator.graph.model import build_forward, copies_from
from simulator.graph.ops import Op
from simulator.notes import collecting
from simulator.pricing.hardware import (comm_demand, launch_latency_s, link_bandwidths,
                                        op_time_s, straggler_factor)
from simulator.pricing.routing import draws_of
from simulator.pricing.traffic import EPTraffic, ep_traffic, kernel_for, per_rank_times
from simulator.schema import Workload
from simulator.step.resolve import Resolved, check_plan, resolve
from simulator.step.result import StepResult, measure


def build_step_graph(r: Resolved, schedule: str, layers: int | None = None) -> nx.DiGraph:
    """The op graph of one step (all layers, or the first `layers` of a forward pass with the
    whole pass's head and MTP), split into micro-batches if needed (every micro-batch's ops in
    one graph, micro-batch 0's first)."""
    w = r.workload
    g = nx.DiGraph(phase=w.phase)         # schedules may read the pass (tbo's stage plans)
    sched = get_schedule(schedule)
    for mb, shape in enumerate(sched.split(r.shape)):
        if shape.tokens % sched.moe_chunks:
            raise MoesimError("schedule", f"{schedule} cuts the MoE into {sched.moe_chunks} "
                              f"token chunks, but a device holds {shape.tokens} tokens",
                              f"use a batch whose tokens per device divide by "
                              f"{sched.moe_chunks}, or schedule scmoe")
        backward = w.phase == "train_bwd"
        fwd = build_forward(r.model, w.plan, w.precision, shape, r.real_experts,
                            mtp=r.mtp_on, micro_batch=mb, with_head=r.with_head,
                            compute=r.compute, moe_chunks=sched.moe_chunks,
                            into=None if backward else g, layers=layers,
                            tail_at=r.model.num_layers, ep_kernel=kernel_for(w))
        if backward:
            build_backward(fwd, w.precision, into=g, grad_bytes=w.training.grad_bytes
                           if w.training is not None else MAIN_GRAD_BYTES)
    return g


def simulate(w: Workload, schedule: str | None = None, per_rank: bool = False,
             resolved: Resolved | None = None) -> StepResult:
    """Simulate one step of a workload under a schedule (default: the workload's)."""
    schedule = schedule or w.schedule
    policy = get_schedule(schedule).policy
    r = resolved or resolve(w)
    return _simulate(w, schedule, policy, r, per_rank)


@dataclass
class _Ran:
    """A simulated pass before measuring: its ops in plan order and their timeline."""

    ops: Sequence[Op]
    streams: list[str]
    start: np.ndarray
    end: np.ndarray
    standalone: list[float]
    traffic: dict[int, EPTraffic]
    demands: list[CommDemand | None]     # per op: its collective's demand (None: compute)


def _simulate(w: Workload, schedule: str, policy, r: Resolved, per_rank: bool) -> StepResult:
    n = r.model.num_layers
    lo = copies_from(r.model)
    keeps = [k for k in KEEPS if truncated_layers(lo, n, k) is not None] \
        if w.phase != "train_bwd" else []
    made: list[_Priced] = []

    def whole() -> _Priced:                # the whole pass, priced once
        if not made:
            made.append(_priced(w, schedule, policy, r, per_rank, None))
        return made[0]
    with collecting() as caught:
        ran = None
        for keep in keeps:
            out = _run(_priced(w, schedule, policy, r, per_rank, (lo, keep)), (lo, keep), n,
                       whole)
            if isinstance(out, _Ran):
                ran = out
                break
            if not out.settling:           # a longer truncated pass would not repeat either
                break
        if ran is None:                    # the whole pass
            ran = _run(whole(), None, n, whole)
    tl = Timeline(ran.ops, ran.streams, ran.start, ran.end, ran.standalone)
    notes = list(r.notes) + sorted(set(caught))
    return measure(r, schedule, tl, notes, ran.traffic, ran.demands)


@dataclass
class _Priced:
    """A pass built, priced and scheduled, ready to run: its plan, ops and layers in plan
    order, and what running and measuring it need."""

    plan: StreamPlan
    ops: list[Op]
    layers: list[int]
    durations: dict[str, float]
    demands: dict[str, CommDemand]
    traffic: dict[int, EPTraffic]
    bw: dict[str, float]
    sm: float
    n_ranks: int

    def ran(self, start: np.ndarray, end: np.ndarray) -> _Ran:
        """The pass run whole, with this timeline."""
        names = self.plan.names
        return _Ran(self.ops, self.plan.streams, np.asarray(start), np.asarray(end),
                    [self.durations[n] for n in names], self.traffic,
                    [self.demands.get(n) for n in names])


def _priced(w: Workload, schedule: str, policy, r: Resolved, per_rank: bool,
            truncate: tuple[int, int] | None) -> _Priced:
    """Build, price and schedule the pass (`truncate` = (first body layer, body layers to
    keep): only those body layers, and the tail)."""
    prof, plan = r.profile, w.plan
    g = build_step_graph(r, schedule, sum(truncate) if truncate else None)
    traffic = _traffic(r, schedule)
    durations: dict[str, float] = {}
    demands = {}
    rank_comm: dict[str, list] = {}
    rank_compute: dict[str, list[float]] = {}
    memo: dict[tuple, tuple] = {}          # identical layers share their per-rank work
    bw = link_bandwidths(prof)
    for name, data in g.nodes(data=True):
        op = data["op"]
        t = traffic.get(op.micro_batch)
        if t is not None and op.is_comm and op.group == "ep":
            key = ("comm", op.micro_batch, "combine" in op.name, op.share)
            if key not in memo:
                lat = launch_latency_s(t.latency("combine" in op.name), op, prof)
                times = t.times_s(key[2], op.share, lat, bw)
                slow = int(np.argmax(times))
                memo[key] = (t.demands(key[2], op.share, lat) if per_rank else None,
                             t.demand(slow, key[2], op.share, lat), float(times[slow]))
            per, demands[name], durations[name] = memo[key]
            if per is not None:
                rank_comm[name] = per
        elif t is not None and op.kind == "grouped_gemm":
            key = ("experts", op.micro_batch, op.flops, op.weight_bytes, op.share)
            if key not in memo:
                memo[key] = (per_rank_times(op, t, r.model, w, prof),)
            times = memo[key][0]
            rank_compute[name], durations[name] = times, max(times)
        else:
            key = ("op", _shape_key(op))         # identical layers price identical ops once
            if key not in memo:
                memo[key] = (comm_demand(op, plan, prof) if op.is_comm else None,
                             op_time_s(op, plan, prof))
            demand, durations[name] = memo[key]
            if demand is not None:
                demands[name] = demand
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
    ops = [g.nodes[n]["op"] for n in sp.names]
    return _Priced(sp, ops, [op.layer for op in ops], durations, demands, traffic, bw,
                   prof.comm_sm_fraction.value, n_ranks)


def _run(p: _Priced, truncate: tuple[int, int] | None, n_layers: int,
         whole: Callable[[], _Priced]) -> _Ran | NotRepeating:
    """Run the pass; truncated (`truncate` as for _priced): extend it to the whole pass of
    `n_layers` layers (engine/periodic.py), or say why not (NotRepeating); on the array
    engine, a truncated pass that would not repeat goes on as the whole pass (`whole()`,
    engine/shared_prefix.py)."""
    def run(plan: StreamPlan) -> tuple[np.ndarray, np.ndarray]:
        return run_ranks(plan, p.bw, p.sm, p.n_ranks)
    if truncate is None:
        return p.ran(*run(p.plan))
    lo, keep = truncate
    if uses_arrays(p.n_ranks):
        ext = try_truncated(p.plan, p.layers, lo, n_layers, keep, p.bw, p.sm, p.n_ranks,
                            lambda: (whole().plan, whole().layers))
        if isinstance(ext, tuple):
            return whole().ran(*ext)
    else:
        ext = extend(p.plan, p.layers, lo, n_layers, run, keep)
    if isinstance(ext, NotRepeating):
        return ext
    sp = p.plan
    return _Ran(LaidOutOps(p.ops, ext.src, ext.layer), [sp.streams[i] for i in ext.src],
                ext.start_s, ext.end_s, [p.durations[sp.names[i]] for i in ext.src], p.traffic,
                [p.demands.get(sp.names[i]) for i in ext.src])


def _shape_key(op) -> tuple:
    """Everything pricing reads of an op (not its name, layer or micro-batch)."""
    return (op.kind, op.flops, op.bytes, op.weight_bytes, op.m, op.collective, op.group,
            op.scores, op.kernels, op.aux_bytes, op.gather_bytes, op.gemm_nk, op.precision,
            op.tags, op.share, op.kernel, op.seqs, op.kv_len, op.gemm_dims, op.moe_key,
            op.attn_key, op.attn_len, op.gemm_rows, op.cast_bytes)


def _traffic(r: Resolved, schedule: str) -> dict[int, EPTraffic]:
    """Sampled EP traffic per micro-batch, when the profile models links (memoised)."""
    w, model, prof = r.workload, r.model, r.profile
    if model.moe is None or w.plan.ep <= 1 or prof.idealizations.ep_flat_bandwidth_Bps or \
            w.plan.attention_tp > 1:        # no all-to-all: the group holds every token
        return {}
    out = {}
    for mb, shape in enumerate(get_schedule(schedule).split(r.shape)):
        tokens = shape.sequences * shape.query_tokens
        mb_draws = draws_of(mb, tokens, w.plan.ep)     # pooled: every micro-batch shares one
        key = (tokens, mb_draws)
        if key not in r.traffic_cache:
            r.traffic_cache[key] = ep_traffic(model, w, prof, tokens, r.real_experts, w.seed,
                                              mb_draws)
        out[mb] = r.traffic_cache[key]
    return out


__all__ = ["build_step_graph", "check_plan", "resolve", "simulate", "StepResult", "Resolved"]
