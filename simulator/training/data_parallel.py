"""Data-parallel traffic of a training step and what of it the passes do not hide: the
gradient reduce-scatter and parameter all-gather by ZeRO stage, sent bucket by bucket on the
NIC as the backward fills and the forward needs them (the bucket from the framework preset)."""
from __future__ import annotations

import math

from simulator.pricing.hardware import efficiency
from simulator.schema import HardwareProfile, TrainingRuntime


def dp_transfer_s(prof: HardwareProfile, nbytes: float, ranks: int) -> float:
    """Seconds to send `nbytes` per GPU of a data-parallel ring collective over the NIC.
    The profile's NIC bandwidth is already the best rate collectives achieve (nccl-tests bus
    bandwidth on large messages), so the collective-efficiency table only scales it by its
    roll-off relative to its own best point, not twice (and never above the NIC's rate)."""
    table = prof.collective_efficiency
    best = max(e for _, e in table.points)
    eff = efficiency(table, nbytes / max(ranks - 1, 1), "DP bytes per peer") / best
    return nbytes / (prof.nic.bandwidth_Bps.value * eff)


def exposed_after_pass(pass_s: float, transfer_s: float, buckets: int) -> float:
    """Seconds a link still sends after a pass of pass_s ends, when a buffer that takes
    transfer_s goes out in `buckets` equal buckets, bucket j ready (j + 1) / buckets of the
    way through the pass and sent one at a time in that order (the overlapped gradient
    reduce-scatter). Reversed in time it is the wait of a pass on an all-gather started with
    it, bucket j needed j / buckets of the way in. One bucket: nothing overlaps."""
    n = max(1, buckets)
    d, end = transfer_s / n, 0.0
    for j in range(n):
        end = max(end, (j + 1) / n * pass_s) + d
    return max(0.0, end - pass_s)


def dp_exposed_s(zero_stage: int, m: int, f_s: float, b_s: float, rs_s: float,
                 ag_s: float, buckets: int) -> float:
    """Data-parallel time not hidden under compute in one step of m micro-batches (forward
    f_s, backward b_s each), for a gradient reduce-scatter of rs_s and a parameter all-gather
    of ag_s sent in `buckets` buckets (exposed_after_pass). ZeRO-0 all-reduces the gradients
    (twice a reduce-scatter's bytes) under the last backward; ZeRO-1/2 reduce-scatter under the
    last backward and all-gather the updated parameters under the next step's first forward
    (Megatron's distributed optimizer with overlapped gather); ZeRO-3 (FSDP) gathers the
    parameters for every forward and every backward and reduce-scatters every backward's
    gradients, each under that pass."""
    if zero_stage == 0:
        return exposed_after_pass(b_s, 2 * rs_s, buckets)
    if zero_stage < 3:
        return exposed_after_pass(b_s, rs_s, buckets) + exposed_after_pass(f_s, ag_s, buckets)
    return m * (exposed_after_pass(f_s, ag_s, buckets) +
                exposed_after_pass(b_s, ag_s + rs_s, buckets))


def dp_buckets(rt: TrainingRuntime, dense: float, experts: float, d_rep: int,
               layers: int) -> int:
    """Buckets a device's data-parallel traffic goes out in: the runtime's bucket of
    parameters (at least its per-rank share times the data-parallel degree), dense and expert
    parameters in buffers of their own; a runtime without one: a bucket per layer."""
    if rt.dp_bucket_params is None:
        return max(1, layers)
    per_rank = rt.dp_bucket_params_per_rank.value if rt.dp_bucket_params_per_rank else 0.0
    size = max(rt.dp_bucket_params.value, per_rank * d_rep)
    return sum(math.ceil(p / size) for p in (dense, experts) if p > 0) or 1
