"""Step durations for serving, from the engine's timelines, memoised by shape.

A decode step is one forward of the decode pool at (sequences per device, context bucket); a
prefill step one forward at (sequences per device, prompt bucket). Shapes are rounded up to a
grid, so a long serving run simulates each distinct shape once.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from simulator.schema import HardwareProfile, ModelSpec, ParallelPlan, Workload
from simulator.engine.schedule import get_schedule
from simulator.step.whatif import Resolved, resolve, simulate

BATCH_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512)


def context_bucket(tokens: float) -> int:
    """Round a context length up to the next grid point (256 * 2^(k/2))."""
    if tokens <= 256:
        return 256
    k = math.ceil(2 * math.log2(tokens / 256))
    return int(round(256 * 2 ** (k / 2)))


def batch_bucket(b: float, cap: int) -> int:
    """Round sequences per device up to the batch grid (never above the pool's cap)."""
    if b >= cap:
        return cap
    i = bisect.bisect_left(BATCH_GRID, b)
    return min(BATCH_GRID[i] if i < len(BATCH_GRID) else cap, cap)


@dataclass
class StepModel:
    """Memoised engine-backed step times of one pool."""

    base: Workload
    plan: ParallelPlan
    schedule: str
    phase: str
    cap: int
    model: ModelSpec                   # loaded once by the deployment
    base_profile: HardwareProfile
    profile: HardwareProfile = field(init=False)
    cache: dict = field(default_factory=dict)
    traffic: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ideal = self.base_profile.idealizations.variant(enforce_hbm_capacity=False)
        self.profile = self.base_profile.variant(idealizations=ideal)

    @property
    def dp(self) -> int:
        """Data-parallel attention groups (devices that each hold their own sequences)."""
        return self.plan.attention_dp

    def step_s(self, sequences: float, context: float) -> float:
        """Seconds of one forward with `sequences` per device at `context` tokens."""
        b = batch_bucket(max(sequences, 1), self.cap)
        c = context_bucket(context)
        key = (b, c)
        if key not in self.cache:
            self.cache[key] = self._simulate(b, c)
        return self.cache[key]

    def _simulate(self, b: int, c: int) -> float:
        n_mb = get_schedule(self.schedule).micro_batches
        if b < n_mb:          # split the prompt's tokens between the micro-batches instead
            b, c = n_mb, max(1, c // n_mb)
        w = self.base.variant(plan=self.plan, schedule=self.schedule, phase=self.phase,
                              batch_per_device=b, context_length=c, serving=None)
        r: Resolved = resolve(w, model=self.model, profile=self.profile,
                              traffic_cache=self.traffic)   # routing depends on tokens only
        return simulate(w, resolved=r).metrics["step_time_ms"] / 1e3
