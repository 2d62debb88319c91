"""Attention tables from measured attention-core times: per kernel (mla_decode, gqa_decode,
mla_prefill, gqa_prefill), the achieved fraction of the HBM datasheet rate (memory side) and of
the compute peak (compute side) on a grid of sequences by KV length, with k-fold held-out error.

A measured call is memory-bound when its bytes at the HBM datasheet rate take longer than its
FLOPs at the peak, else compute-bound; it measures its own side only. Every head layout measured
for a kernel is pooled (median per cell and side): a many-head GQA layout (64-128 query heads
per KV head) is compute-bound and reaches about half the peak, a few-head one memory-bound at
70-95% of the HBM rate, and each side keeps its own figure. A side a cell did not measure is
filled from its row (log-interpolated), else from the kernel's median for that side, raised if
needed so that it never binds the cell's own measured calls (they ran on the other side). A side
no call of the kernel measured at all takes the base profile's figure for it (`defaults`: its
attention_efficiency for the compute side, its hbm_efficiency for the memory side), with their
sources: e.g. H800's MLA decode files are all memory-bound with one query token a sequence,
while an MTP draft doubles the queries per KV byte and makes the call compute-bound.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from simulator.pricing.fits import Row, folds, held_out_quality, interp_log
from simulator.pricing.hardware import bilinear_log

Grid = tuple[list[float], list[float], list[list[float]], list[list[float]]]
FLOOR = 1e-4


def _sides(r: Row, peak: float, hbm: float, lat: float) -> tuple[bool, float]:
    """(memory-bound?, the achieved fraction of that side's datasheet rate)."""
    t = max(r.median_s - lat, 1e-9)
    t_m, t_c = r.bytes / hbm, r.flops / peak
    return (t_m >= t_c), (t_m if t_m >= t_c else t_c) / t


def _fill(cells: dict[tuple[float, float], list[float]], bs: list[float], ks: list[float],
          fallback: float) -> list[list[float]]:
    """Median per measured cell; a cell without one takes its row's log-interpolation, a row
    without any the fallback."""
    grid = []
    for b in bs:
        known = [(k, float(np.median(cells[(b, k)]))) for k in ks if (b, k) in cells]
        grid.append([float(np.median(cells[(b, k)])) if (b, k) in cells
                     else interp_log(known, k) if known else fallback for k in ks])
    return grid


def attention_grid(rows: list[Row], peak: float, hbm: float, lat: float,
                   defaults: tuple[float, float] = (1.0, 1.0)) -> Grid:
    """(batch values, KV lengths, memory-side grid, compute-side grid), each side the median of
    the calls it bound, per cell; a side no call of a cell measured never binds that cell; a side
    no call measured at all starts from `defaults` (memory, compute)."""
    mem: dict[tuple[float, float], list[float]] = defaultdict(list)
    comp: dict[tuple[float, float], list[float]] = defaultdict(list)
    need: dict[tuple[float, float, bool], float] = defaultdict(float)  # least non-binding value
    for r in rows:
        key = (float(r.params["batch"]), float(r.params["kv_len"]))
        is_mem, eff = _sides(r, peak, hbm, lat)
        (mem if is_mem else comp)[key].append(eff)
        t = max(r.median_s - lat, 1e-9)
        other = (r.flops / peak) / t if is_mem else (r.bytes / hbm) / t
        need[(*key, not is_mem)] = max(need[(*key, not is_mem)], other)
    bs = sorted({b for b, _ in (*mem, *comp)})
    ks = sorted({k for _, k in (*mem, *comp)})
    med_m = float(np.median([e for v in mem.values() for e in v])) if mem else defaults[0]
    med_c = float(np.median([e for v in comp.values() for e in v])) if comp else defaults[1]
    g_m, g_c = _fill(mem, bs, ks, med_m), _fill(comp, bs, ks, med_c)
    for i, b in enumerate(bs):
        for j, k in enumerate(ks):
            if (b, k) not in mem:
                g_m[i][j] = max(g_m[i][j], need[(b, k, True)])
            if (b, k) not in comp:
                g_c[i][j] = max(g_c[i][j], need[(b, k, False)])
    clamp = lambda g: [[min(max(e, FLOOR), 1.0) for e in row] for row in g]  # noqa: E731
    return bs, ks, clamp(g_m), clamp(g_c)


def predict_s(r: Row, grid: Grid, peak: float, hbm: float, lat: float) -> float:
    """A call's time as the simulator prices it (pricing.hardware.attention_table_time_s)."""
    bs, ks, g_m, g_c = grid
    b, k = float(r.params["batch"]), float(r.params["kv_len"])
    return lat + max(r.flops / (peak * bilinear_log(bs, ks, g_c, b, k)),
                     r.bytes / (hbm * bilinear_log(bs, ks, g_m, b, k)))


def fit_attention(rows: dict[str, list[Row]], peak: float, hbm: float, lat: float,
                  defaults: tuple[float, float] = (1.0, 1.0)
                  ) -> tuple[dict[str, Grid], dict[str, dict]]:
    """A grid per attention kernel present in `rows`, and each grid's held-out error (a held-out
    row is priced from a grid fitted without it, i.e. interpolated from its neighbours);
    `defaults` (memory, compute) for a side no call of a kernel measured."""
    grids, quality = {}, {}
    for kernel in sorted(k for k in rows if "_decode" in k or "_prefill" in k):
        found = rows[kernel]
        if not found:
            continue
        grids[kernel] = attention_grid(found, peak, hbm, lat, defaults)
        pred, meas = [], []
        for hold in folds(len(found)):
            held = set(hold.tolist())
            train = [r for i, r in enumerate(found) if i not in held]
            grid = attention_grid(train, peak, hbm, lat, defaults)
            for i in hold:
                pred.append(predict_s(found[i], grid, peak, hbm, lat))
                meas.append(found[i].median_s)
        quality[f"attention_{kernel}"] = held_out_quality(pred, meas)
    return grids, quality
