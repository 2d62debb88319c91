"""Reference probes timed inside a validate run, between the executor's rounds: how fast this
machine is *now* against what the profile says, so a busy machine's slowdown is measured rather
than mistaken for a modelling error.

Three probes per round on every rank: a GEMM of the model's FFN shape (compute), an elementwise
add over an activation-sized tensor (memory), and a chain of in-place adds on a 16-element tensor
(launch overhead: what `moesim calibrate` times for eager_op_overhead_s). Each
measured median over its profile prediction scales the matching profile numbers.
"""
from __future__ import annotations

import statistics
import time

from simulator.graph.model import Op
from simulator.pricing.hardware import compute_time_s
from simulator.schema import HardwareProfile, Sourced

LAUNCH_REPEATS = 64          # tiny ops per launch probe (their mean is one launch)
FP32 = 4


def shapes(tokens: int, hidden: int, inter: int) -> dict[str, Op]:
    """The GEMM and memory probes as ops the profile can price: (tokens x hidden) @
    (hidden x 2 inter), and an add of two (tokens x hidden) tensors into a new one."""
    nk = hidden * 2 * inter
    gemm = Op("probe.gemm", "gemm", flops=2.0 * tokens * nk, m=tokens, gemm_nk=(nk,),
              bytes=FP32 * (tokens * hidden + nk + tokens * 2 * inter), weight_bytes=FP32 * nk)
    memory = Op("probe.memory", "elementwise", bytes=3.0 * FP32 * tokens * hidden)
    return {"gemm": gemm, "memory": memory}


def run_probes(tokens: int, hidden: int, inter: int) -> dict[str, float]:
    """Seconds each probe takes on this rank now (torch, float32, the rank's threads)."""
    import torch
    x = torch.randn(tokens, hidden)
    w = torch.randn(hidden, 2 * inter)
    y = torch.randn(tokens, hidden)
    tiny = torch.zeros(16)
    out = {}
    t = time.perf_counter()
    x @ w
    out["gemm"] = time.perf_counter() - t
    t = time.perf_counter()
    x + y
    out["memory"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(LAUNCH_REPEATS):
        tiny.add_(1.0)
    out["launch"] = (time.perf_counter() - t) / LAUNCH_REPEATS
    return out


def speed_ratios(prof: HardwareProfile, measured: list[dict[str, float]], tokens: int,
                 hidden: int, inter: int) -> dict[str, float]:
    """Measured / predicted time of each probe (median over rounds and ranks): 1.0 means the
    machine runs as the profile says, 2.0 twice as slow."""
    ops = shapes(tokens, hidden, inter)
    out = {k: statistics.median(m[k] for m in measured) / compute_time_s(op, prof)
           for k, op in ops.items()}
    # the launch probe is the calibration's own eager-op chain: per op against that figure
    per_op = prof.eager_op_overhead_s or prof.kernel_latency_s
    out["launch"] = statistics.median(m["launch"] for m in measured) / per_op.value
    return out


def scaled_profile(prof: HardwareProfile, ratios: dict[str, float]) -> HardwareProfile:
    """The profile slowed (or sped up) by what the probes measured in this run: peak FLOP/s by
    the GEMM probe, memory bandwidth by the memory probe, per-op overheads by the launch probe.
    Link numbers are left as profiled."""
    def scale(s: Sourced, by: float, what: str) -> Sourced:
        return Sourced(value=s.value * by, source=f"{s.source}; x{by:.3f}: {what} measured by "
                       "in-run probes (executor/probes.py)")
    upd = {"peak_bf16_flops": scale(prof.peak_bf16_flops, 1 / ratios["gemm"], "GEMM speed"),
           "hbm_bandwidth_Bps": scale(prof.hbm_bandwidth_Bps, 1 / ratios["memory"],
                                      "memory speed"),
           "kernel_latency_s": scale(prof.kernel_latency_s, ratios["launch"], "launch overhead")}
    if prof.eager_op_overhead_s is not None:
        upd["eager_op_overhead_s"] = scale(prof.eager_op_overhead_s, ratios["launch"],
                                           "launch overhead")
    return prof.variant(**upd)
