"""DeepEP's published H800 numbers against the h800 profile: one profile, one model, no per-row fit.

Run: python benchmarks/deepep.py
Each row is simulated the way DeepEP's test scripts measure it (deepseek-ai/DeepEP README, 2025-04
and 2025-06; tests/test_intranode.py, test_internode.py, test_low_latency.py):
- normal kernels: 4096 tokens per rank, hidden 7168, 256 experts, top-8 within the top-4 of 8
  groups, FP8 dispatch (7168 B + one fp32 scale per 128 = 7392 B per copy), BF16 combine; the
  reported "bottleneck bandwidth" is bytes received per rank (EP 8, NVLink) or bytes sent over
  RDMA deduplicated per node, the local node included (EP >= 16), divided by the kernel time;
- low-latency kernels: 128 tokens per rank, top-8 of 256 uniformly, one copy per expert;
  reported as the kernel time.
The kernel time of a rank is the profile's latency plus the largest bytes / bandwidth over its
links (topology.rank_loads); the row is the mean over ranks.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.schema import RoutingSpec  # noqa: E402
from simulator.loading import load_profile  # noqa: E402
from simulator.pricing.routing import route  # noqa: E402
from simulator.pricing.topology import Cluster, rank_loads  # noqa: E402

HIDDEN = 7168
FP8_COPY = HIDDEN + HIDDEN // 128 * 4
BF16_COPY = HIDDEN * 2
NORMAL = {8: (153, 158), 16: (43, 43), 32: (58, 57), 64: (51, 50)}          # GB/s
LOW_LATENCY = {8: (77, 114), 16: (118, 195), 32: (155, 273), 64: (173, 314),
               128: (192, 369), 256: (194, 360)}                             # us


@dataclass(frozen=True)
class Row:
    """One published DeepEP figure and ours."""

    kernel: str
    op: str
    ep: int
    unit: str
    published: float
    predicted: float

    @property
    def error(self) -> float:
        """predicted / published - 1."""
        return self.predicted / self.published - 1

    @property
    def key(self) -> str:
        """Stable row id, e.g. normal-dispatch-ep16."""
        return f"{self.kernel}-{self.op}-ep{self.ep}"


def _kernel_times(profile: str, ep: int, tokens: int, routing: RoutingSpec, kernel: str,
                  copy_bytes: float, seed: int = 0):
    prof = load_profile(profile)
    r = route(routing, n_experts=256, top_k=8, has_zero_experts=False, real_mean=8, ep=ep,
              gpus_per_node=8, tokens_per_rank=tokens, seed=seed)
    cluster = Cluster.from_profile(prof, ep, 8)
    loads = rank_loads(cluster, ep, r.t_expert * copy_bytes, r.t_gpu * copy_bytes,
                       r.t_node * copy_bytes, kernel)
    nvl, nic = loads.demand(cluster)
    remote = ep > 8
    latency = prof.ep_kernel_latency_s.value + (prof.nic.latency_s.value if remote
                                                else prof.nvlink.latency_s.value)
    times = latency + np.maximum(nvl / prof.nvlink.bandwidth_Bps.value,
                                 nic / prof.nic.bandwidth_Bps.value)
    return r, times


def rows(profile: str = "h800") -> list[Row]:
    """Every DeepEP row, published and predicted."""
    out = []
    groups = RoutingSpec(expert_groups=8, max_groups_per_token=4)
    for ep, pub in NORMAL.items():
        for op, copy, p in (("dispatch", FP8_COPY, pub[0]), ("combine", BF16_COPY, pub[1])):
            r, times = _kernel_times(profile, ep, 4096, groups, "normal", copy)
            if ep <= 8:
                counted = r.t_gpu.sum(axis=0) * copy          # bytes received per rank
            else:
                counted = r.t_node.sum(axis=1) * copy         # RDMA "sent", per node, local incl.
            out.append(Row("normal", op, ep, "GB/s", p, float(np.mean(counted / times)) / 1e9))
    for ep, pub in LOW_LATENCY.items():
        for op, copy, p in (("dispatch", FP8_COPY, pub[0]), ("combine", BF16_COPY, pub[1])):
            _, times = _kernel_times(profile, ep, 128, RoutingSpec(), "low_latency", copy)
            out.append(Row("low_latency", op, ep, "us", p, float(np.mean(times)) * 1e6))
    return out


def main() -> None:
    print("| row | published | moesim | error |")
    print("|---|---:|---:|---:|")
    for r in rows():
        print(f"| {r.key} | {r.published:g} {r.unit} | {r.predicted:.1f} {r.unit} | {r.error:+.1%} |")


if __name__ == "__main__":
    main()
