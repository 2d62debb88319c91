"""What the engine runs, built below it: a StreamPlan of ops on streams and each collective's
CommDemand (pricing builds demands, schedules build plans, the engine runs them)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CommDemand:
    """What one rank's part of a collective needs: a start-up latency and bytes per link."""

    latency_s: float
    link_bytes: dict[str, float]
    sm_fraction: float | None = None     # SMs it takes from compute; None: the engine default


@dataclass
class StreamPlan:
    """What to run: per op (for one rank) its stream, priority, inputs and work."""

    names: list[str]
    streams: list[str]
    priorities: list[float]
    preds: list[list[int]]
    compute_s: list[float]               # standalone duration; 0 for collectives
    comm: list[CommDemand | None]        # None for compute ops
    rank_compute_s: dict[int, list[float]] = field(default_factory=dict)   # op -> per rank
    rank_comm: dict[int, list[CommDemand]] = field(default_factory=dict)   # op -> per rank

    def __post_init__(self) -> None:
        n = len(self.names)
        self.succs: list[list[int]] = [[] for _ in range(n)]
        for i, ps in enumerate(self.preds):
            for p in ps:
                self.succs[p].append(i)
