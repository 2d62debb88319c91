"""Reference probes timed inside a validate run, between the executor's rounds: how fast this
machine is *now* against what the profile says, so a busy machine's slowdown is measured rather
than mistaken for a modelling error.

Three probes per round on every rank, each the median of a few calls after a warm-up (as the
calibration times kernels; a single call scatters 2-6x): a GEMM of the model's FFN shape
(compute), an elementwise add of two activation-sized tensors (memory), and a chain of in-place adds on a 16-element tensor
(launch overhead: what `moesim calibrate` times for eager_op_overhead_s). Each
measured median over its profile prediction scales the matching profile numbers.
"""
from __future__ import annotations

import statistics
import time

from simulator.graph.ops import Op
from simulator.pricing.hardware import compute_time_s
from simulator.schema import HardwareProfile, ModelSpec, Sourced

LAUNCH_REPEATS = 64          # tiny ops per launch probe (their mean is one launch)
PROBE_REPEATS = 5            # timed calls per probe and round (median), after one warm-up
FP32 = 4


def probe_dims(spec: ModelSpec, batch: int, seq: int) -> tuple[int, int, int]:
    """(tokens, hidden, FFN width) of the probes: one rank's batch through a dense FFN (the
    expert width when the model has no dense FFN)."""
    inter = spec.dense_intermediate or (spec.moe.expert_intermediate if spec.moe else 1)
    return batch * seq, spec.hidden_size, inter


def shapes(tokens: int, hidden: int, inter: int) -> dict[str, Op]:
    """The GEMM and memory probes as ops the profile can price: (tokens x hidden) @
    (hidden x 2 inter), and an add of two (tokens x hidden) tensors into a new one."""
    nk = hidden * 2 * inter
    gemm = Op("probe.gemm", "gemm", flops=2.0 * tokens * nk, m=tokens, gemm_nk=(nk,),
              bytes=FP32 * (tokens * hidden + nk + tokens * 2 * inter), weight_bytes=FP32 * nk)
    memory = Op("probe.memory", "elementwise", bytes=3.0 * FP32 * tokens * hidden)
    return {"gemm": gemm, "memory": memory}


def _mean_time(fn, reps: int = PROBE_REPEATS) -> float:
    """Mean seconds of `reps` calls after one warm-up: a mean, not a median, so that a rank
    sharing its core is seen at its average pace (short calls often run between preemptions)."""
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def run_probes(tokens: int, hidden: int, inter: int) -> dict[str, float]:
    """Seconds each probe takes on this rank now (torch, float32, the rank's threads)."""
    import torch
    x = torch.randn(tokens, hidden)
    w = torch.randn(hidden, 2 * inter)
    y = torch.randn(tokens, hidden)
    tiny = torch.zeros(16)

    def chain() -> None:
        for _ in range(LAUNCH_REPEATS):
            tiny.add_(1.0)
    return {"gemm": _mean_time(lambda: x @ w), "memory": _mean_time(lambda: x + y),
            "launch": _mean_time(chain) / LAUNCH_REPEATS}


def speed_ratios(prof: HardwareProfile, measured: list[list[dict[str, float]]], tokens: int,
                 hidden: int, inter: int) -> dict[str, float]:
    """Measured / predicted time of each probe: per rank the mean over its rounds, then the
    slowest rank (ranks meet at every all-to-all, and the simulator's collapsed rank is the
    slowest). 1.0: the machine runs as the profile says; 2.0: twice as slow."""
    ops = shapes(tokens, hidden, inter)
    per_op = prof.eager_op_overhead_s or prof.kernel_latency_s   # the calibration's own chain
    predicted = {**{k: compute_time_s(op, prof) for k, op in ops.items()},
                 "launch": per_op.value}
    return {k: max(statistics.fmean(r[k] for r in rank) for rank in measured) / p
            for k, p in predicted.items()}


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
