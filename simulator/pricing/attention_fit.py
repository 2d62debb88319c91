"""Attention tables from measured attention-core times: per kernel (mla_decode, gqa_decode,
mla_prefill, gqa_prefill), the fraction of the roofline on a grid of sequences by KV length,
each with its k-fold held-out error.

The roofline of a call is the slower of its FLOPs at the compute peak of the precision measured
(BF16) and its bytes at the HBM datasheet rate (`pricing.hardware.attention_roofline_s`), so
one table serves head layouts of different arithmetic intensity: the files of every head
layout measured for a kernel are pooled, median per cell.
"""
from __future__ import annotations

from collections import defaultdict

from simulator.pricing.fits import Row, ShapeGrid, folds, held_out_quality, median_grid
from simulator.pricing.hardware import bilinear_log


def _roofline(r: Row, peak: float, hbm: float) -> float:
    return max(r.flops / peak, r.bytes / hbm)


def attention_grid(rows: list[Row], peak: float, hbm: float, lat: float) -> ShapeGrid:
    """(batch values, KV lengths, efficiency grid): roofline / (measured - kernel latency),
    median per (batch, KV length) cell over every head layout."""
    cells: dict[tuple[float, float], list[float]] = defaultdict(list)
    for r in rows:
        cells[(float(r.params["batch"]), float(r.params["kv_len"]))].append(
            _roofline(r, peak, hbm) / max(r.median_s - lat, 1e-9))
    return median_grid(cells)


def predict_s(r: Row, grid: ShapeGrid, peak: float, hbm: float, lat: float) -> float:
    """A call's time as the simulator prices it: latency + roofline / table efficiency."""
    eff = bilinear_log(*grid, float(r.params["batch"]), float(r.params["kv_len"]))
    return lat + _roofline(r, peak, hbm) / eff


def fit_attention(rows: dict[str, list[Row]], peak: float, hbm: float,
                  lat: float) -> tuple[dict[str, ShapeGrid], dict[str, dict]]:
    """A grid per attention kernel present in `rows`, and each grid's held-out error (a held-out
    row is priced from a grid fitted without it, i.e. interpolated from its neighbours)."""
    grids, quality = {}, {}
    for kernel in sorted(k for k in rows if "_decode" in k or "_prefill" in k):
        found = rows[kernel]
        if not found:
            continue
        grids[kernel] = attention_grid(found, peak, hbm, lat)
        pred, meas = [], []
        for hold in folds(len(found)):
            held = set(hold.tolist())
            train = [r for i, r in enumerate(found) if i not in held]
            grid = attention_grid(train, peak, hbm, lat)
            for i in hold:
                pred.append(predict_s(found[i], grid, peak, hbm, lat))
                meas.append(found[i].median_s)
        quality[f"attention_{kernel}"] = held_out_quality(pred, meas)
    return grids, quality
