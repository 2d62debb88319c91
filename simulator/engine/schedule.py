"""Schedules as named policies: op graph + standalone durations -> StreamPlan.

- sequential: one stream, everything in series (the dense baseline).
- scmoe: EP collectives on a communication stream; compute in issue order with the expert GEMMs
  at ScMoE's slot K minimising |sum(COMP before K) - T_dispatch| + |sum(COMP after K) - T_combine|.
- sbo: LongCat-Flash's four stages: experts right after the QKV projection of the next attention
  block (stage 2 = FFN_0 + QKV of MLA_1 under dispatch; stage 4 = rest of MLA_1 + FFN_1 under
  combine). Conventional layers fall back to the slot rule.
- scmoe-chunked: scmoe with each routed MoE path cut into two token chunks (the dense part
  whole): a chunk's all-to-all runs under the other chunk's experts, each chunk's expert GEMM
  reads the weights again.
- tbo: two micro-batches, so one micro-batch's communication runs under the other's compute:
  inference graphs of conventional MoE layers in the serving runtimes' stage interleaving
  (engine/tbo_stages.py), other graphs on work-conserving streams, lower micro-batch first.
Adding a schedule means one function and one `@register(name, micro_batches=n,
moe_chunks=c)`; nothing else looks a schedule up by its name.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable

import networkx as nx

from simulator.errors import MoesimError
from simulator.graph.ops import Op, Shape, graph_ops
from simulator.engine.streams import CommDemand, StreamPlan
from simulator.engine.tbo_stages import stage_orders

Durations = dict[str, float]
Policy = Callable[[nx.DiGraph, Durations, dict[str, CommDemand]], StreamPlan]


@dataclass(frozen=True)
class Schedule:
    """A named policy and what it needs of the op graph: how many micro-batches to split into."""

    name: str
    policy: Policy
    micro_batches: int = 1
    moe_chunks: int = 1        # token chunks each routed MoE path is cut into (the op graph's)

    def split(self, shape: Shape) -> list[Shape]:
        """The per-device shape cut into this schedule's micro-batches: whole sequences when
        there are enough, else (prefill, training) token chunks of one sequence."""
        n = self.micro_batches
        if n == 1:
            return [shape]
        if shape.sequences >= n:
            return [replace(shape, sequences=shape.sequences // n +
                            (1 if mb < shape.sequences % n else 0)) for mb in range(n)]
        if shape.phase == "decode" or shape.query_tokens < n:
            raise MoesimError("batch_per_device", f"schedule {self.name} splits the batch into {n} "
                              f"micro-batches but there are {shape.sequences} sequences per device",
                              f"use batch_per_device >= {n} or another schedule")
        return [replace(shape, query_tokens=shape.query_tokens // n +
                        (1 if mb < shape.query_tokens % n else 0)) for mb in range(n)]


SCHEDULES: dict[str, Schedule] = {}


def register(name: str, micro_batches: int = 1,
             moe_chunks: int = 1) -> Callable[[Policy], Policy]:
    """Add a policy to the registry under `name`, splitting the batch into `micro_batches`
    and each routed MoE path into `moe_chunks` token chunks."""
    def deco(fn: Policy) -> Policy:
        SCHEDULES[name] = Schedule(name, fn, micro_batches, moe_chunks)
        return fn
    return deco


def get_schedule(name: str) -> Schedule:
    """Look a schedule up by name, with a clear error listing the known ones."""
    if name not in SCHEDULES:
        raise MoesimError("schedule", f"unknown schedule '{name}'",
                          f"use one of: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def _stream_of(op: Op, single: bool) -> str:
    if single:
        return "compute"
    return "comm" if op.is_comm and op.group == "ep" else "compute"


def _plan(ops: list[Op], g: nx.DiGraph, durations: Durations, demands: dict[str, CommDemand],
          streams: list[str], priorities: list[float], chain_orders: list[list[str]],
          waits: dict[str, list[str]] | None = None) -> StreamPlan:
    """The StreamPlan of ops in topological order: their graph inputs, plus chain edges for a
    strict issue order on a stream, plus `waits` (op -> collectives its stream waits for first)."""
    index = {op.name: i for i, op in enumerate(ops)}
    preds = [[index[p] for p in g.predecessors(op.name)] for op in ops]
    extra = [pair for order in chain_orders for pair in zip(order, order[1:])]  # issue order
    extra += [(w, op) for op, ws in (waits or {}).items() for w in ws]
    for a, b in extra:
        if index[a] not in preds[index[b]]:
            preds[index[b]].append(index[a])
    return StreamPlan(
        names=[o.name for o in ops], streams=streams, priorities=priorities, preds=preds,
        compute_s=[0.0 if o.is_comm and o.name in demands else durations[o.name] for o in ops],
        comm=[demands.get(o.name) if o.is_comm else None for o in ops])


def _reach(g: nx.DiGraph, start: str, within: set[str], forward: bool) -> set[str]:
    """Ops of `within` reachable from `start` (descendants if forward, else ancestors): the
    slot search stays inside one layer, so its cost does not grow with the model's depth."""
    step = g.successors if forward else g.predecessors
    seen: set[str] = set()
    stack = [start]
    while stack:
        for nxt in step(stack.pop()):
            if nxt in within and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _by_layer(ops: list[Op]) -> dict[int, list[Op]]:
    """Ops grouped by layer, layers in the order the (topologically sorted) ops first reach them:
    ascending in a forward pass, descending in a backward pass."""
    layers: dict[int, list[Op]] = defaultdict(list)
    for op in ops:
        layers[op.layer].append(op)
    return dict(layers)


def _slot_rule(window: list[Op], durations: Durations, t_dispatch: float,
               t_combine: float) -> int:
    """ScMoE's slot K over the dense window (ties: the earliest slot)."""
    sums = [0.0]
    for op in window:
        sums.append(sums[-1] + durations[op.name])
    total = sums[-1]
    costs = [abs(sums[k] - t_dispatch) + abs(total - sums[k] - t_combine)
             for k in range(len(window) + 1)]
    return min(range(len(costs)), key=lambda k: (costs[k], k))


def _sbo_slot(window: list[Op]) -> int | None:
    """After the QKV projection of the second attention block, if the layer has one."""
    for k, op in enumerate(window):
        if op.block == "attn1" and op.name.endswith("qkv_proj"):
            return k + 1
    return None


def _overlap_plan(g: nx.DiGraph, durations: Durations, demands: dict[str, CommDemand],
                  sbo: bool) -> StreamPlan:
    ops = graph_ops(g)
    compute_order: list[str] = []
    for layer_ops in _by_layer(ops).values():
        compute = [o for o in layer_ops if _stream_of(o, False) == "compute"]
        experts = [o for o in compute if o.kind == "grouped_gemm"]
        if not experts:
            compute_order += [o.name for o in compute]
            continue
        # the routed expert GEMMs of this pass (every token chunk's), then their weight
        # gradients: a chunk's weight gradient waits on that chunk's all-to-all, so it must not
        # be issued before the other chunks' input gradients
        main = [o.name for o in experts if "wgrad" not in o.tags]
        group = main + [o.name for o in experts if "wgrad" in o.tags]
        in_layer = {o.name for o in layer_ops}
        anc = set().union(*(_reach(g, x, in_layer, False) for x in main)) - set(group)
        desc = set().union(*(_reach(g, x, in_layer, True) for x in main)) - set(group)
        pre = [o for o in compute if o.name in anc]
        post = [o for o in compute if o.name in desc]
        window = [o for o in compute if o.name not in anc and o.name not in desc and
                  o.name not in group]
        names = {o.name for o in layer_ops}
        disp = [o.name for o in layer_ops if o.collective == "all_to_all" and o.name in anc]
        comb = [o.name for o in layer_ops if o.collective == "all_to_all" and o.name in desc]
        t_d = sum(durations[n] for n in disp if n in names)
        t_c = sum(durations[n] for n in comb if n in names)
        k = _sbo_slot(window) if sbo else None
        if k is None:
            k = _slot_rule(window, durations, t_d, t_c)
        compute_order += [o.name for o in pre] + [o.name for o in window[:k]] + group + \
            [o.name for o in window[k:]] + [o.name for o in post]
    comm_order = [o.name for o in ops if _stream_of(o, False) == "comm"]
    rank = {n: i for i, n in enumerate(compute_order + comm_order)}
    return _plan(ops, g, durations, demands, [_stream_of(o, False) for o in ops],
                 [float(rank[o.name]) for o in ops], [compute_order, comm_order])


@register("sequential")
def sequential(g: nx.DiGraph, durations: Durations, demands: dict[str, CommDemand]) -> StreamPlan:
    """Everything in series on one stream: no overlap at all."""
    ops = graph_ops(g)
    order = [o.name for o in ops]
    return _plan(ops, g, durations, demands, ["compute"] * len(ops),
                 [float(i) for i in range(len(ops))], [order])


@register("scmoe")
def scmoe(g: nx.DiGraph, durations: Durations, demands: dict[str, CommDemand]) -> StreamPlan:
    """Shortcut branch's all-to-all on the comm stream, experts at ScMoE's slot K."""
    return _overlap_plan(g, durations, demands, sbo=False)


@register("sbo")
def sbo(g: nx.DiGraph, durations: Durations, demands: dict[str, CommDemand]) -> StreamPlan:
    """LongCat-Flash single-batch overlap: four stages per shortcut layer."""
    return _overlap_plan(g, durations, demands, sbo=True)


@register("scmoe-chunked", moe_chunks=2)
def scmoe_chunked(g: nx.DiGraph, durations: Durations,
                  demands: dict[str, CommDemand]) -> StreamPlan:
    """ScMoE with the routed MoE cut into two token chunks (LongCat-Flash's training overlap):
    chunk 1's dispatch runs under chunk 0's experts, chunk 0's combine under chunk 1's."""
    return _overlap_plan(g, durations, demands, sbo=False)


@register("tbo", micro_batches=2)
def tbo(g: nx.DiGraph, durations: Durations, demands: dict[str, CommDemand]) -> StreamPlan:
    """Two micro-batches (the graph holds both). Inference graphs of conventional MoE layers:
    the serving runtimes' stage interleaving (engine/tbo_stages.py: each micro-batch's layer cut
    at fixed yields, B `delta` stages behind A, strict issue order, receive waits blocking the
    compute stream). Other graphs (shortcut layers, training): work-conserving streams, the
    ready op of either micro-batch, lower micro-batch first."""
    ops = graph_ops(g)
    streams = [_stream_of(o, False) for o in ops]
    orders = stage_orders(ops, g.graph.get("phase", ""), lambda o: _stream_of(o, False) == "comm")
    if orders is not None:
        compute_order, comm_order, waits = orders
        rank = {n: i for i, n in enumerate(compute_order + comm_order)}
        return _plan(ops, g, durations, demands, streams, [float(rank[o.name]) for o in ops],
                     [compute_order, comm_order], waits)
    pos: dict[int, int] = defaultdict(int)
    priorities: list[float] = []
    for o in ops:
        priorities.append(2.0 * pos[o.micro_batch] + o.micro_batch)
        pos[o.micro_batch] += 1
    return _plan(ops, g, durations, demands, streams, priorities, [])
