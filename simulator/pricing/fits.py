"""Fit a hardware profile to microbenchmark rows (numpy only; the measuring is in executor/).

Efficiency tables are medians per size, interpolated in log space; collectives are
latency-bandwidth least-squares fits; every fit reports its error on held-out points (k-fold),
and a held-out MAPE above 10% is flagged.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from simulator.pricing.hardware import bilinear_log, expected_max_normal

FOLDS = 4
FLAG_MAPE = 0.10


@dataclass(frozen=True)
class Row:
    """One measurement (from the CSV the benchmarks write)."""

    bench: str
    median_s: float
    flops: float
    bytes: float
    params: dict


def rows_from_dicts(dicts: list[dict]) -> list[Row]:
    """CSV dicts -> Rows (params are the p_* columns)."""
    out = []
    for d in dicts:
        params = {k[2:]: _num(v) for k, v in d.items() if k.startswith("p_") and v not in ("", None)}
        out.append(Row(d["bench"], float(d["median_s"]), float(d.get("flops") or 0),
                       float(d.get("bytes") or 0), params))
    return out


def _num(v):
    try:
        f = float(v)
        return int(f) if f.is_integer() else f
    except (TypeError, ValueError):
        return v


def interp_log(points: list[tuple[float, float]], x: float) -> float:
    """Linear in log(x) between sorted points; edge values outside."""
    if x <= points[0][0]:
        return points[0][1]
    if x >= points[-1][0]:
        return points[-1][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            f = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) if x1 > x0 else 1
            return y0 + f * (y1 - y0)
    return points[-1][1]


def folds(n: int) -> list[np.ndarray]:
    idx = np.arange(n)
    return [idx[i::FOLDS] for i in range(min(FOLDS, n))] if n >= 2 else []


def _mape(pred: list[float], meas: list[float]) -> float:
    if not meas:
        return 0.0
    return float(np.mean([abs(p - m) / m for p, m in zip(pred, meas)]))


def held_out_quality(pred: list[float], meas: list[float]) -> dict:
    """Held-out MAPE of a fit, its point count and whether it is above the flag line."""
    m = _mape(pred, meas)
    return {"mape": m, "points": len(meas), "flagged": bool(m > FLAG_MAPE)}


@dataclass(frozen=True)
class Fitted:
    """Everything a profile needs, plus the held-out quality of each fit."""

    peak_flops: float
    bandwidth_Bps: float
    latency_s: float
    mem_table: list[tuple[float, float]]
    gemm_table: list[tuple[float, float]]
    grouped_table: list[tuple[float, float]]
    shape_table: tuple[list[float], list[float], list[list[float]]] | None
    attention_eff: float
    score_rate: list[tuple[float, float]]
    mla_score_rate: list[tuple[float, float]]
    gather_rate: list[tuple[float, float]]
    eager_op_s: float
    rank_jitter: float
    a2a_latency_s: float
    a2a_Bps: float
    coll_latency_s: float
    coll_table: list[tuple[float, float]]
    comm_fraction: float
    quality: dict[str, dict]


def _eff_table(rows: list[Row], size, peak: float, lat: float) -> list[tuple[float, float]]:
    by: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        t = max(r.median_s - lat, 1e-9)
        by[size(r)].append(min(max(r.flops / (peak * t), 1e-4), 1.0))
    return sorted((x, float(np.median(v))) for x, v in by.items())


ShapeGrid = tuple[list[float], list[float], list[list[float]]]


def median_grid(cells: dict[tuple[float, float], list[float]]) -> ShapeGrid:
    """(rows, columns, grid) of the median per measured cell, each clamped to [1e-4, 1]; a
    cell nothing measured takes the log-interpolated value of its row."""
    ms = sorted({m for m, _ in cells})
    ws = sorted({w for _, w in cells})
    grid = []
    for m in ms:
        known = [(w, float(np.median(cells[(m, w)]))) for w in ws if (m, w) in cells]
        grid.append([float(np.median(cells[(m, w)])) if (m, w) in cells
                     else interp_log(known, w) for w in ws])
    return ms, ws, [[min(max(e, 1e-4), 1.0) for e in row] for row in grid]


def _shape_table(rows: list[Row], peak: float, lat: float) -> ShapeGrid:
    """GEMM efficiency on the grid of M by N x K: median per cell; a cell no shape measured
    takes the log-interpolated value of its M row."""
    by: dict[tuple[float, float], list[float]] = defaultdict(list)
    for r in rows:
        m, nk = float(r.params["m"]), float(r.params["n"]) * float(r.params["k"])
        by[(m, nk)].append(r.flops / (peak * max(r.median_s - lat, 1e-9)))
    return median_grid(by)


def _shape_quality(rows: list[Row], peak: float, bw: float, lat: float) -> dict:
    pred, meas = [], []
    for hold in folds(len(rows)):
        table = _shape_table([r for i, r in enumerate(rows) if i not in set(hold)], peak, lat)
        for i in hold:
            r = rows[i]
            nk = float(r.params["n"]) * float(r.params["k"])
            eff = bilinear_log(*table, float(r.params["m"]), nk)
            pred.append(lat + max(r.flops / (peak * eff), r.bytes / bw))
            meas.append(r.median_s)
    return held_out_quality(pred, meas)


def _grouped_by_shape(rows: list[Row], table: ShapeGrid, peak: float, bw: float,
                      lat: float) -> dict:
    """Error of the shape table on the balanced grouped GEMMs (a benchmark it never saw), each
    expert's GEMM priced at M = its tokens."""
    pred, meas = [], []
    for r in rows:
        if int(r.params.get("skew", 0)) == 0 and "hidden" in r.params:
            nk = float(r.params["hidden"]) * float(r.params["inter"])
            eff = bilinear_log(*table, float(r.params["tokens_per_expert"]), nk)
            pred.append(lat + max(r.flops / (peak * eff), r.bytes / bw))
            meas.append(r.median_s)
    return held_out_quality(pred, meas)


def _predict_compute(r: Row, table, size, peak, bw, lat) -> float:
    return lat + max(r.flops / (peak * interp_log(table, size(r))), r.bytes / bw)


def _table_quality(rows: list[Row], size, peak, bw, lat) -> dict:
    pred, meas = [], []
    for hold in folds(len(rows)):
        train = [r for i, r in enumerate(rows) if i not in set(hold)]
        if not train:
            continue
        table = _eff_table(train, size, peak, lat)
        for i in hold:
            pred.append(_predict_compute(rows[i], table, size, peak, bw, lat))
            meas.append(rows[i].median_s)
    return held_out_quality(pred, meas)


def _linear_fit(xs: np.ndarray, ts: np.ndarray) -> tuple[float, float]:
    """t = a + x / b, least squares in relative error, a >= 0."""
    w = 1.0 / ts
    A = np.stack([np.ones_like(xs), xs], axis=1) * w[:, None]
    (a, s), *_ = np.linalg.lstsq(A, ts * w, rcond=None)
    if a < 0:
        a = 0.0
        s = float(np.sum(xs * ts * w * w) / np.sum(xs * xs * w * w))
    return float(a), float(1.0 / max(s, 1e-18))


def _lb_quality(xs: np.ndarray, ts: np.ndarray) -> dict:
    pred, meas = [], []
    for hold in folds(len(xs)):
        keep = np.setdiff1d(np.arange(len(xs)), hold)
        if len(keep) < 2:
            continue
        a, b = _linear_fit(xs[keep], ts[keep])
        pred += list(a + xs[hold] / b)
        meas += list(ts[hold])
    return held_out_quality([float(p) for p in pred], [float(t) for t in meas])


def _mem_table(rows: list[Row], lat: float, bw: float) -> list[tuple[float, float]]:
    by: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        by[r.bytes].append(min(r.bytes / max(r.median_s - lat, 1e-12) / bw, 1.0))
    return sorted((x, float(np.median(v))) for x, v in by.items())


def _gather_table(rows: list[Row], lat: float) -> list[tuple[float, float]]:
    """Bytes/s of indexed row copies, median per bytes moved."""
    by: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        by[r.bytes].append(r.bytes / max(r.median_s - lat, 1e-12))
    return sorted((x, float(np.median(v))) for x, v in by.items())


def _gather_quality(rows: list[Row], lat: float) -> dict:
    pred, meas = [], []
    for hold in folds(len(rows)):
        table = _gather_table([r for i, r in enumerate(rows) if i not in set(hold)], lat)
        for i in hold:
            pred.append(lat + rows[i].bytes / interp_log(table, rows[i].bytes))
            meas.append(rows[i].median_s)
    return held_out_quality(pred, meas)


def _mem_quality(rows: list[Row], lat: float, bw: float) -> dict:
    pred, meas = [], []
    for hold in folds(len(rows)):
        train = [r for i, r in enumerate(rows) if i not in set(hold)]
        table = _mem_table(train, lat, bw)
        for i in hold:
            r = rows[i]
            pred.append(lat + r.bytes / (bw * interp_log(table, r.bytes)))
            meas.append(r.median_s)
    return held_out_quality(pred, meas)


def fit(rows: list[Row]) -> Fitted:
    """Fit every profile parameter the rows allow."""
    by = defaultdict(list)
    for r in rows:
        by[r.bench].append(r)
    quality: dict[str, dict] = {}
    # memory: the smallest copy sets the latency floor; the best rate sets the bandwidth; a
    # table by bytes moved carries the cache hierarchy (CPUs) or small-transfer inefficiency
    mem = sorted(by["copy"] + by["elementwise"], key=lambda r: r.bytes)
    lat = min(r.median_s for r in mem) * 0.5
    bw = max(r.bytes / max(r.median_s - lat, 1e-12) for r in mem)
    mem_table = _mem_table(mem, lat, bw)
    quality["memory"] = _mem_quality(mem, lat, bw)
    gather_rate = _gather_table(by["gather"], lat)
    if by["gather"]:
        quality["gather"] = _gather_quality(by["gather"], lat)
    gemm = by["gemm"]
    peak = max(r.flops / r.median_s for r in gemm)
    m_of = lambda r: float(r.params["m"])
    quality["gemm"] = _table_quality(gemm, m_of, peak, bw, lat)
    gemm_table = _eff_table(gemm, m_of, peak, lat)
    shape_table = None
    if gemm and all("n" in r.params and "k" in r.params for r in gemm):
        shape_table = _shape_table(gemm, peak, lat)
        quality["gemm_by_shape"] = _shape_quality(gemm, peak, bw, lat)
    grouped = by["grouped_gemm"]
    tpe = lambda r: float(r.params["tokens_per_expert"])
    quality["grouped_gemm"] = _table_quality(grouped, tpe, peak, bw, lat)
    grouped_table = _eff_table(grouped, tpe, peak, lat)
    if shape_table is not None and grouped:
        quality["grouped_gemm_by_shape"] = _grouped_by_shape(grouped, shape_table, peak, bw, lat)
    # per-score work (mask + softmax between the matmuls): fitted on the prefill attention
    # itself, net of its matmul FLOPs at the GEMM peak, as a rate by score count (caches);
    # MLA's shape separately
    score_rate = _score_table(by["attention_prefill"], lat, peak)
    mla_rate = _score_table(by["attention_prefill_mla"], lat, peak)
    for key in ("attention_prefill", "attention_prefill_mla"):
        if by[key]:
            quality[key] = _score_quality(by[key], lat, peak)
    attn_eff = 1.0
    if not score_rate and by["attention_prefill"]:
        attn_eff = float(np.median([min(r.flops / (peak * max(r.median_s - lat, 1e-9)), 1.0)
                                    for r in by["attention_prefill"]]))
    dec = by["attention_decode"]
    if dec and score_rate:
        quality["attention_decode_vs_fit"] = held_out_quality(
            [lat + r.flops / peak + float(r.params["scores"]) /
             interp_log(score_rate, float(r.params["scores"])) for r in dec],
            [r.median_s for r in dec])
    eager = by["eager_op"]
    eager_s = float(np.median([r.median_s / float(r.params["ops"]) for r in eager])) \
        if eager else 0.0
    a2a = by["all_to_all"]
    xa = np.array([r.bytes for r in a2a])
    ta = np.array([r.median_s for r in a2a])
    a2a_lat, a2a_bw = _linear_fit(xa, ta) if len(a2a) >= 2 else (0.0, bw)
    quality["all_to_all"] = _lb_quality(xa, ta)
    coll = by["all_gather"] + by["reduce_scatter"]
    xc = np.array([r.bytes for r in coll])
    tc = np.array([r.median_s for r in coll])
    c_lat, _ = _linear_fit(xc, tc) if len(coll) >= 2 else (a2a_lat, a2a_bw)
    quality["all_gather_reduce_scatter"] = _lb_quality(xc, tc)
    peers = max(int(coll[0].params.get("ranks", 2)) - 1, 1) if coll else 1
    effs: dict[float, list[float]] = defaultdict(list)
    for r in coll:
        effs[r.bytes / peers].append(min(max(r.bytes / a2a_bw / max(r.median_s - c_lat, 1e-9),
                                             1e-3), 1.0))
    coll_table = sorted((x, float(np.median(v))) for x, v in effs.items()) or [(1.0, 1.0)]
    inter = by["interference"]
    frac = 0.0
    if inter:
        frac = float(min(max(float(inter[0].params["fraction"]), 0.0), 0.95))
    strag = by["straggling"]
    jitter = 0.0
    if strag and int(strag[0].params.get("ranks", 1)) > 1:
        r = strag[0]
        jitter = float(r.params["excess"]) / expected_max_normal(int(r.params["ranks"]))
    return Fitted(peak, bw, lat, mem_table, gemm_table, grouped_table, shape_table, attn_eff,
                  score_rate, mla_rate, gather_rate, eager_s, jitter, a2a_lat, a2a_bw, c_lat,
                  coll_table, frac, quality)


def fit_gpu_kernels(rows: dict[str, list[Row]], peak: float, bw: float,
                    lat: float) -> tuple[ShapeGrid | None, list[tuple[float, float]] | None,
                                         dict[str, dict]]:
    """GEMM efficiency by M and N x K, grouped GEMM efficiency by tokens per expert, as
    fractions of `peak` (the precision measured at), each with its k-fold held-out error; the
    profile's memory rate `bw` and kernel latency `lat` price every held-out point."""
    quality: dict[str, dict] = {}
    shape = grouped = None
    gemm = rows.get("gemm", [])
    if gemm:
        shape = _shape_table(gemm, peak, lat)
        quality["gemm_by_shape"] = _shape_quality(gemm, peak, bw, lat)
    group = rows.get("grouped_gemm", [])
    if group:
        tpe = lambda r: float(r.params["tokens_per_expert"])   # noqa: E731
        grouped = _eff_table(group, tpe, peak, lat)
        quality["grouped_gemm"] = _table_quality(group, tpe, peak, bw, lat)
        if shape is not None:
            quality["grouped_gemm_by_shape"] = _grouped_by_shape(group, shape, peak, bw, lat)
    return shape, grouped, quality


def _score_table(rows: list[Row], lat: float, peak: float) -> list[tuple[float, float]]:
    """Scores per second of attention time beyond its matmul FLOPs, median per score count."""
    by: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if r.params.get("scores"):
            sc = float(r.params["scores"])
            by[sc].append(sc / max(r.median_s - lat - r.flops / peak, 1e-9))
    return sorted((x, float(np.median(v))) for x, v in by.items())


def _score_quality(rows: list[Row], lat: float, peak: float) -> dict:
    """Held-out error of the score-rate table on these rows."""
    pred, meas = [], []
    for hold in folds(len(rows)):
        table = _score_table([r for i, r in enumerate(rows) if i not in set(hold)], lat, peak)
        for i in hold:
            r = rows[i]
            sc = float(r.params["scores"])
            pred.append(lat + r.flops / peak + sc / interp_log(table, sc))
            meas.append(r.median_s)
    return held_out_quality(pred, meas)


def profile_dict(f: Fitted, *, name: str, identity: dict, ranks: int, price: float,
                 csv_name: str) -> dict:
    """A HardwareProfile mapping (every number with its source) from the fits."""
    src = f"moesim calibrate on {identity['device_name']} ({identity['date']}), {csv_name}"

    def s(v: float, what: str) -> dict:
        return {"value": float(v), "source": f"{src}: {what}"}

    def rates(points, what):
        return {"points": [[float(x), float(r)] for x, r in points], "source": f"{src}: {what}"}

    def table(points, what):
        return {"points": [[float(x), float(min(max(e, 1e-4), 1.0))] for x, e in points],
                "source": f"{src}: {what}"}
    link = {"spec_bandwidth_Bps": s(f.a2a_Bps, "no datasheet: the fitted all_to_all bandwidth"),
            "bandwidth_Bps": s(f.a2a_Bps, "all_to_all_single latency-bandwidth fit"),
            "latency_s": s(f.coll_latency_s, "all_gather/reduce_scatter latency fit")}
    return {
        "name": name,
        "description": f"Measured on {identity['device_name']} with {ranks} ranks "
                       f"({identity['mode']} calibration).",
        "gpu": identity["device_name"],
        "peak_bf16_flops": s(f.peak_flops, f"highest measured {identity['dtype']} GEMM rate "
                                           "(the executor's compute dtype)"),
        "hbm_bytes": s(identity["memory_bytes"], "device memory reported by the system"),
        "hbm_bandwidth_Bps": s(f.bandwidth_Bps, "best measured copy/add rate"),
        "hbm_efficiency": s(1.0, "the bandwidth above is measured; nothing to derate"),
        "memory_efficiency": table(f.mem_table, "copy/add rate by bytes moved over the best"),
        "gemm_efficiency": table(f.gemm_table, "GEMM efficiency by M (median over N, K)"),
        "grouped_gemm_efficiency": table(f.grouped_table, "grouped GEMM by tokens per expert"),
        **({"gemm_shape_efficiency": {
            "m": f.shape_table[0], "weights": f.shape_table[1],
            "efficiency": [[float(min(max(e, 1e-4), 1.0)) for e in row]
                           for row in f.shape_table[2]],
            "source": f"{src}: GEMM efficiency by M and N x K (median per cell, each shape "
                      "timed once per round, round-robin)"}} if f.shape_table else {}),
        "attention_efficiency": s(min(max(f.attention_eff, 1e-4), 1.0),
                                  "attention matmuls at the GEMM peak; the per-score work is "
                                  "attention_score_rate" if f.score_rate else
                                  "prefill attention FLOP/s over the GEMM peak"),
        **({"attention_score_rate": rates(f.score_rate, "scores/s by score count: prefill "
                                                        "attention time net of its matmul FLOPs")}
           if f.score_rate else {}),
        **({"mla_attention_score_rate": rates(f.mla_score_rate, "scores/s by score count: "
                                                                "MLA-shaped prefill attention "
                                                                "(value heads 2/3 of query/key "
                                                                "heads) net of its matmul FLOPs")}
           if f.mla_score_rate else {}),
        **({"gather_rate": rates(f.gather_rate, "bytes/s by bytes moved: x[idx] row gathers "
                                                "and out[idx] = y scatters, 512 wide")}
           if f.gather_rate else {}),
        "kernel_latency_s": s(f.latency_s, "half the smallest copy's time"),
        **({"eager_op_overhead_s": s(f.eager_op_s, "median time per op of a chain of in-place "
                                                   "adds on 16 elements (eager dispatch)")}
           if f.eager_op_s else {}),
        **({"rank_jitter": s(f.rank_jitter, "median excess of the slowest rank over the ranks' "
                                            "mean on a GEMM segment run by all at once, over "
                                            "the expected largest of that many normal draws")}
           if f.rank_jitter > 0 else {}),
        "nvlink": link, "nic": dict(link),
        "gpus_per_node": s(ranks, "ranks on this host"),
        "network": {"scale_up": "switch", "nodes_per_leaf": s(1, "a single host"),
                    "oversubscription": s(1.0, "a single host")},
        "ep_kernel_latency_s": s(max(f.a2a_latency_s - f.coll_latency_s, 0.0),
                                 "all_to_all latency beyond the collective latency"),
        "collective_efficiency": table(f.coll_table, "all_gather/reduce_scatter efficiency "
                                                     "by bytes per peer"),
        "comm_sm_fraction": s(f.comm_fraction, "extra time of GEMMs and all_to_alls run together "
                                               "over the all_to_alls' own time"),
        "price_per_gpu_hour": s(price, "user input (moesim calibrate --price)"),
        "calibration": {**{k: identity[k] for k in ("device", "device_name", "cores", "driver",
                                                     "torch_version", "date", "mode", "dtype")},
                        "ranks": ranks, "threads_per_rank": identity["threads_per_rank"],
                        "fits": f.quality},
    }
