"""Op durations from a hardware profile: roofline with calibrated efficiency tables.

Compute ops get a standalone duration (the GPU to themselves). Collectives get a latency and the
bytes each link class of a rank must carry; the engine shares link bandwidth between flows.
"""
from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

from simulator.schema import (EfficiencyTable, HardwareProfile, ParallelPlan, RateTable,
                              ShapeEfficiencyTable)
from simulator.graph.ops import Op
from simulator.notes import note
from simulator.kernels.interp import log_position, note_mixed_precision
from simulator.engine.streams import CommDemand
from simulator.pricing.measured import comm_lookup, compute_lookup, measured_demand
from simulator.pricing.peaks import peak_flops


def efficiency(table: EfficiencyTable | RateTable, size: float, what: str) -> float:
    """Table value (fraction of peak, or a rate) at `size`, linear in log(size) between points;
    clamped to the edge with a warning outside the table."""
    pts = table.points
    if size <= 0:
        return pts[0][1]
    if size < pts[0][0] or size > pts[-1][0]:
        if len(pts) > 1:
            note(f"{what} size {size:.4g} is outside the calibrated range "
                 f"[{pts[0][0]:.4g}, {pts[-1][0]:.4g}]; using the edge value")
        return pts[0][1] if size < pts[0][0] else pts[-1][1]
    for (x0, e0), (x1, e1) in zip(pts, pts[1:]):
        if x0 <= size <= x1:
            if x1 == x0:
                return e1
            f = (math.log(size) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return e0 + f * (e1 - e0)
    return pts[-1][1]


def compute_time_s(op: Op, prof: HardwareProfile) -> float:
    """Standalone duration of a compute op: its measured kernel time where the runtime's
    tables hold it (pricing/measured.py), else latency + max(compute, memory) roofline."""
    hit = compute_lookup(op, prof)
    if hit is not None:
        t = hit.seconds
        if "wgrad" in op.tags:        # no slower than its main-gradient accumulation's bytes
            t = max(t, op.bytes / memory_rate(prof, op.bytes))
        return t + cast_time_s(op, prof) + eager_extra_s(op, prof)
    floor = prof.idealizations.gemm_weight_floor
    peak = peak_flops(prof, op.precision)
    mem_bytes = op.bytes if floor else op.bytes - op.weight_bytes
    bw = memory_rate(prof, mem_bytes)
    latency = prof.kernel_latency_s.value
    if op.kind in ("gemm", "grouped_gemm"):
        # one launch per GEMM the op holds (MLA's fused q_a+kv_a and q_b, an FFN's up and down): the
        # tables were fitted per kernel with one kernel_latency_s taken off each
        latency *= max(1, len(op.gemm_nk))
        t_c = op.flops / (peak * gemm_efficiency(op, prof))
    elif op.kind == "attention" and op.kernel in prof.attention_tables:
        return latency + attention_table_time_s(op, peak, prof) + eager_extra_s(op, prof)
    elif op.kind == "attention":
        t_c = op.flops / (peak * prof.attention_efficiency.value)
        rate = prof.mla_attention_score_rate if "mla" in op.tags else None
        rate = rate or prof.attention_score_rate
        if rate is not None and op.scores > 0:         # softmax between the two matmuls
            latency += op.scores / efficiency(rate, op.scores, "attention scores")
    elif op.kind == "elementwise":
        t_c = 0.0
    else:
        raise ValueError(f"{op.name} is not a compute op")
    return latency + max(t_c, mem_bytes / bw) + cast_time_s(op, prof) + eager_extra_s(op, prof)


def cast_time_s(op: Op, prof: HardwareProfile) -> float:
    """Training FP8's quantise passes over a GEMM's inputs (Op.cast_bytes): one memory-bound
    kernel per GEMM the op holds, at the memory rate of their bytes."""
    if op.cast_bytes <= 0:
        return 0.0
    kernels = max(1, len(op.gemm_nk))
    return kernels * prof.kernel_latency_s.value + op.cast_bytes / memory_rate(prof,
                                                                                op.cast_bytes)


def attention_table_time_s(op: Op, peak: float, prof: HardwareProfile) -> float:
    """An attention core priced by its kernel's table at (sequences, KV length): the slower of
    its FLOPs at the table's fraction of `peak` and its bytes at the table's fraction of the
    HBM datasheet rate; edge values outside the grid, with a note."""
    table = prof.attention_tables[op.kernel]
    note_mixed_precision(table.precision, op.precision, f"{op.kernel} attention")
    for what, xs, x in (("sequences", table.batch, op.seqs), ("KV length", table.kv_len,
                                                              op.kv_len)):
        if len(xs) > 1 and x > 0 and not xs[0] <= x <= xs[-1]:
            note(f"{op.kernel} attention {what} {x:.4g} is outside the measured range "
                 f"[{xs[0]:.4g}, {xs[-1]:.4g}]; using the edge value")
    e_m = bilinear_log(table.batch, table.kv_len, table.memory_efficiency, op.seqs, op.kv_len)
    e_c = bilinear_log(table.batch, table.kv_len, table.compute_efficiency, op.seqs, op.kv_len)
    return max(op.flops / (peak * e_c), op.bytes / (prof.hbm_bandwidth_Bps.value * e_m))


def gemm_efficiency(op: Op, prof: HardwareProfile) -> float:
    """Fraction of the op's precision's peak of a (grouped) GEMM op: by M and each GEMM's N x K
    where the profile has a shape table and the op lists its GEMMs (their FLOPs share is their
    N x K, all at the same M), else by M alone. A table measured at another precision is used
    as the same fraction of this precision's peak, with a note saying so."""
    table = prof.gemm_shape_efficiency
    if table is not None and op.gemm_nk:
        note_mixed_precision(table.precision, op.precision, "GEMM shape")
        slow = sum(nk / shape_efficiency(table, op.m, nk) for nk in op.gemm_nk)
        return sum(op.gemm_nk) / slow
    if op.kind == "grouped_gemm":
        note_mixed_precision(prof.grouped_gemm_efficiency.precision, op.precision, "grouped GEMM")
        return efficiency(prof.grouped_gemm_efficiency, op.m, "grouped GEMM tokens per expert")
    note_mixed_precision(prof.gemm_efficiency.precision, op.precision, "GEMM")
    return efficiency(prof.gemm_efficiency, op.m, "GEMM M")


def bilinear_log(ms: list[float], ws: list[float], grid: list[list[float]], m: float,
                 w: float) -> float:
    """grid[i][j] (at ms[i], ws[j]) at (m, w), bilinear in log m and log w, edges clamped."""
    i, fm = log_position(ms, max(m, 1e-9))
    j, fw = log_position(ws, max(w, 1e-9))
    i1, j1 = min(i + 1, len(ms) - 1), min(j + 1, len(ws) - 1)
    low = grid[i][j] + fw * (grid[i][j1] - grid[i][j])
    high = grid[i1][j] + fw * (grid[i1][j1] - grid[i1][j])
    return low + fm * (high - low)


def shape_efficiency(table: ShapeEfficiencyTable, m: float, nk: float) -> float:
    """Table value at (m, nk); edge values outside the grid, with a warning."""
    for what, xs, x in (("GEMM M", table.m, m), ("GEMM weight elements", table.weights, nk)):
        if len(xs) > 1 and x > 0 and not xs[0] <= x <= xs[-1]:
            note(f"{what} {x:.4g} is outside the calibrated range "
                 f"[{xs[0]:.4g}, {xs[-1]:.4g}]; using the edge value")
    return bilinear_log(table.m, table.weights, table.efficiency, m, nk)


def eager_extra_s(op: Op, prof: HardwareProfile) -> float:
    """An eager runtime's cost beyond the fused kernel: a dispatch per extra kernel, the
    unfused elementwise passes at the memory rate of one pass's size, and indexed row copies at
    the gather rate instead of the streaming one (simulator/unfused.py)."""
    if prof.eager_op_overhead_s is None:
        return 0.0
    t = op.kernels * prof.eager_op_overhead_s.value
    if op.aux_bytes > 0:
        t += op.aux_bytes / memory_rate(prof, op.aux_bytes / max(op.kernels - 1, 1))
    if prof.gather_rate is not None and op.gather_bytes > 0:   # priced above as streaming
        g = op.gather_bytes
        t += max(g / efficiency(prof.gather_rate, g, "gathered bytes") - g / memory_rate(prof, g),
                 0.0)
    return t


def memory_rate(prof: HardwareProfile, nbytes: float) -> float:
    """Bytes/s of a streaming memory-bound op (or pass) that moves `nbytes`."""
    eff = efficiency(prof.memory_efficiency, nbytes, "bytes moved") \
        if prof.memory_efficiency is not None else prof.hbm_efficiency.value
    return prof.hbm_bandwidth_Bps.value * eff


def expected_max_normal(n: int) -> float:
    """Expected largest of n standard normal draws (Blom's approximation; 0 for n = 1)."""
    return 0.0 if n <= 1 else NormalDist().inv_cdf((n - 0.375) / (n + 0.25))


def straggler_factor(prof: HardwareProfile, ranks: int) -> float:
    """How much longer the slowest of `ranks` jittery ranks computes than one rank's median."""
    if prof.rank_jitter is None:
        return 1.0
    return 1.0 + prof.rank_jitter.value * expected_max_normal(ranks)


# Link classes a rank owns; the engine shares each between the flows on it.
LINKS = ("nvlink", "nic", "ep_flat")


def link_bandwidths(prof: HardwareProfile) -> dict[str, float]:
    """Bandwidth per direction of each link class of one GPU, in bytes/s."""
    flat = prof.idealizations.ep_flat_bandwidth_Bps
    return {"nvlink": prof.nvlink.bandwidth_Bps.value, "nic": prof.nic.bandwidth_Bps.value,
            "ep_flat": flat.value if flat else 1.0}


def comm_demand(op: Op, plan: ParallelPlan, prof: HardwareProfile) -> CommDemand:
    """Per-rank bytes on each link for a collective; a rank's local share never leaves HBM.
    A tensor-parallel collective the runtime's tables measured takes its measured time."""
    hit = comm_lookup(op, plan, prof)
    if hit is not None:
        return eager_launches(measured_demand(op, hit.seconds, prof), op, prof)
    return eager_launches(_link_demand(op, plan, prof), op, prof)


def eager_launches(d: CommDemand, op: Op, prof: HardwareProfile) -> CommDemand:
    """In an eager runtime a collective op of several launches (dispatch's split-size exchange,
    then the rows) pays the start-up latency once per launch."""
    latency = launch_latency_s(d.latency_s, op, prof)
    return d if latency == d.latency_s else replace(d, latency_s=latency)


def launch_latency_s(latency_s: float, op: Op, prof: HardwareProfile) -> float:
    """A collective's start-up latency: once per launch of its op in an eager runtime."""
    if prof.eager_op_overhead_s is None or op.kernels <= 1:
        return latency_s
    return latency_s * op.kernels


def _link_demand(op: Op, plan: ParallelPlan, prof: HardwareProfile) -> CommDemand:
    if op.group in ("tp", "cp"):
        size = plan.tp if op.group == "tp" else plan.cp
        peers = max(size - 1, 1)
        eff = efficiency(prof.collective_efficiency, op.bytes / peers, "collective bytes per peer")
        if op.group == "cp" and plan.tp * plan.cp > plan.gpus_per_node:   # spans nodes
            return CommDemand(prof.nic.latency_s.value, {"nic": op.bytes / eff})
        return CommDemand(prof.nvlink.latency_s.value, {"nvlink": op.bytes / eff})
    ep = plan.ep
    if ep <= 1:
        return CommDemand(0.0, {})
    flat = prof.idealizations.ep_flat_bandwidth_Bps
    remote_share = (ep - 1) / ep
    if flat is not None:
        return CommDemand(prof.nic.latency_s.value, {"ep_flat": op.bytes * remote_share})
    in_node = min(plan.gpus_per_node, ep)
    local = op.bytes * (in_node - 1) / ep
    remote = op.bytes * (ep - in_node) / ep
    demand = {k: v for k, v in (("nvlink", local), ("nic", remote)) if v > 0}
    latency = prof.nic.latency_s.value if remote > 0 else prof.nvlink.latency_s.value
    return CommDemand(latency, demand)


def standalone_comm_time_s(op: Op, plan: ParallelPlan, prof: HardwareProfile) -> float:
    """Duration of a collective with its links to itself (the links run in parallel)."""
    d = comm_demand(op, plan, prof)
    bw = link_bandwidths(prof)
    return d.latency_s + max((b / bw[k] for k, b in d.link_bytes.items()), default=0.0)


def op_time_s(op: Op, plan: ParallelPlan, prof: HardwareProfile) -> float:
    """Standalone duration of any op."""
    return standalone_comm_time_s(op, plan, prof) if op.is_comm else compute_time_s(op, prof)
