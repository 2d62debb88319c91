"""GEMM pricing of many sizes at once: each EP rank's expert GEMM of a step priced in one numpy
pass instead of one hardware.compute_time_s call per rank.

Numpy twins of hardware.py's table lookups and GEMM roofline, the same arithmetic in the same
order element by element (tests/test_physics.py checks every shipped profile: equal to the
scalar pricing bit for bit, with the same notes). A change to how hardware.py prices a GEMM is
made in both.
"""
from __future__ import annotations

import numpy as np

from simulator.graph.ops import Op
from simulator.notes import note
from simulator.kernels.interp import log_position, note_mixed_precision
from simulator.pricing.hardware import eager_extra_s
from simulator.pricing.measured import moe_lookup
from simulator.pricing.peaks import peak_flops
from simulator.schema import EfficiencyTable, HardwareProfile, RateTable, ShapeEfficiencyTable


def gemm_times_s(op: Op, prof: HardwareProfile, flops: np.ndarray, m: np.ndarray,
                 nbytes: np.ndarray, weight_bytes: np.ndarray) -> np.ndarray:
    """hardware.compute_time_s of the GEMM `op` with each element's flops, m, bytes and
    weight_bytes in place of its own (its measured time where the runtime's tables hold it,
    else latency + max(compute, memory) roofline)."""
    cast = cast_times_s(op, prof, flops)
    if op.kind == "grouped_gemm" and moe_lookup(prof, op, 1.0) is not None:
        rows = flops / (2 * sum(op.gemm_nk))          # measured.routed_rows of each rank
        hits = np.array([h.seconds for h in (moe_lookup(prof, op, float(r)) for r in rows)
                         if h is not None])
        if "wgrad" in op.tags:     # no slower than its main-gradient accumulation's bytes
            hits = np.maximum(hits, nbytes / memory_rates(prof, nbytes))
        return hits + cast + eager_extra_s(op, prof)
    mem_bytes = nbytes if prof.idealizations.gemm_weight_floor else nbytes - weight_bytes
    bw = memory_rates(prof, mem_bytes)
    latency = prof.kernel_latency_s.value * max(1, len(op.gemm_nk))
    t_c = flops / (peak_flops(prof, op.precision) * gemm_efficiencies(op, prof, m))
    return latency + np.maximum(t_c, mem_bytes / bw) + cast + eager_extra_s(op, prof)


def memory_rates(prof: HardwareProfile, nbytes: np.ndarray) -> np.ndarray:
    """hardware.memory_rate of each element's bytes."""
    return prof.hbm_bandwidth_Bps.value * (
        efficiencies(prof.memory_efficiency, nbytes, "bytes moved")
        if prof.memory_efficiency is not None else prof.hbm_efficiency.value)


def cast_times_s(op: Op, prof: HardwareProfile, flops: np.ndarray) -> np.ndarray | float:
    """hardware.cast_time_s of the op with each element's share of its rows (its FLOPs)."""
    if op.cast_bytes <= 0 or op.flops <= 0:
        return 0.0
    nbytes = op.cast_bytes * flops / op.flops
    return max(1, len(op.gemm_nk)) * prof.kernel_latency_s.value + \
        nbytes / memory_rates(prof, np.maximum(nbytes, 1.0))


def gemm_efficiencies(op: Op, prof: HardwareProfile, m: np.ndarray) -> np.ndarray:
    """hardware.gemm_efficiency of `op` at each M of `m`."""
    table = prof.gemm_shape_efficiency
    if table is not None and op.gemm_nk:
        note_mixed_precision(table.precision, op.precision, "GEMM shape")
        slow = sum(nk / shape_efficiencies(table, m, nk) for nk in op.gemm_nk)
        return sum(op.gemm_nk) / slow
    if op.kind == "grouped_gemm":
        note_mixed_precision(prof.grouped_gemm_efficiency.precision, op.precision, "grouped GEMM")
        return efficiencies(prof.grouped_gemm_efficiency, m, "grouped GEMM tokens per expert")
    note_mixed_precision(prof.gemm_efficiency.precision, op.precision, "GEMM")
    return efficiencies(prof.gemm_efficiency, m, "GEMM M")


def shape_efficiencies(table: ShapeEfficiencyTable, m: np.ndarray, nk: float) -> np.ndarray:
    """hardware.shape_efficiency at each M of `m` and one N x K (the same notes)."""
    if len(table.m) > 1:
        for v in _outside(table.m, m):
            note(f"GEMM M {v:.4g} is outside the calibrated range "
                 f"[{table.m[0]:.4g}, {table.m[-1]:.4g}]; using the edge value")
    if len(table.weights) > 1 and nk > 0 and not table.weights[0] <= nk <= table.weights[-1]:
        note(f"GEMM weight elements {nk:.4g} is outside the calibrated range "
             f"[{table.weights[0]:.4g}, {table.weights[-1]:.4g}]; using the edge value")
    i, fm = _log_positions(table.m, np.maximum(m, 1e-9))
    j, fw = log_position(table.weights, max(nk, 1e-9))
    i1, j1 = np.minimum(i + 1, len(table.m) - 1), min(j + 1, len(table.weights) - 1)
    g = np.asarray(table.efficiency, dtype=float)
    low = g[i, j] + fw * (g[i, j1] - g[i, j])
    high = g[i1, j] + fw * (g[i1, j1] - g[i1, j])
    return low + fm * (high - low)


def efficiencies(table: EfficiencyTable | RateTable, sizes: np.ndarray, what: str) -> np.ndarray:
    """hardware.efficiency at each size: linear in log size on the first segment holding it,
    the edge value (with a note) outside the table, the first value at a size <= 0."""
    xs = np.array([p[0] for p in table.points])
    ys = np.array([p[1] for p in table.points])
    s = np.asarray(sizes, dtype=float)
    if len(xs) > 1:
        for v in _outside(xs, s):
            note(f"{what} size {v:.4g} is outside the calibrated range "
                 f"[{xs[0]:.4g}, {xs[-1]:.4g}]; using the edge value")
    if len(xs) == 1:
        return np.full(s.shape, ys[0])
    k = np.clip(np.searchsorted(xs, s) - 1, 0, len(xs) - 2)   # first segment: x0 <= s <= x1
    x0, x1, e0, e1 = xs[k], xs[k + 1], ys[k], ys[k + 1]
    inside = np.clip(s, xs[0], xs[-1])                       # no log of what is clamped
    with np.errstate(divide="ignore", invalid="ignore"):     # a zero-width segment: e1 below
        f = (np.log(inside) - np.log(x0)) / (np.log(x1) - np.log(x0))
    out = np.where(x1 == x0, e1, e0 + f * (e1 - e0))
    return np.where(s < xs[0], ys[0], np.where(s > xs[-1], ys[-1], out))


def _log_positions(xs: list[float], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """kernels.interp.log_position of each x: (i, f), x a fraction f of the way from xs[i] to
    xs[i + 1] in log space, clamped (xs strictly increasing)."""
    if len(xs) == 1:
        return np.zeros(x.shape, dtype=np.intp), np.zeros(x.shape)
    a = np.asarray(xs, dtype=float)
    i = np.clip(np.searchsorted(a, x) - 1, 0, len(xs) - 2)  # first i: xs[i] <= x <= xs[i + 1]
    x = np.clip(x, a[0], a[-1])          # below the axis f = 0, above it f = 1 exactly
    return i, (np.log(x) - np.log(a[i])) / (np.log(a[i + 1]) - np.log(a[i]))


def _outside(xs, x: np.ndarray) -> list[float]:
    """The values of x above 0 and outside [xs[0], xs[-1]], in order."""
    return x[(x > 0) & ((x < xs[0]) | (x > xs[-1]))].tolist()
