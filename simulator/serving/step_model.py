"""Step durations for serving, from the engine's timelines, memoised by shape.

A decode step is one forward of the decode pool at (sequences per device, context bucket); a
prefill step one forward at (sequences per device, prompt bucket). Shapes are rounded up to a
grid, so a long serving run simulates each distinct shape once.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Callable

from simulator.schema import HardwareProfile, ModelSpec, ParallelPlan, Workload
from simulator.engine.schedule import get_schedule
from simulator.step.result import StepResult
from simulator.step.whatif import Resolved, resolve, simulate

EDGE_RTOL = 1e-12        # context_interval's margin: far above log2's rounding, far below a step
BATCH_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512,
              640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096, 6144, 8192)


def _grid_step(tokens: float) -> int:
    """k of the context grid point 256 * 2^(k/2) that `tokens` (> 256) rounds up to."""
    return math.ceil(2 * math.log2(tokens / 256))


def context_bucket(tokens: float) -> int:
    """Round a context length up to the next grid point (256 * 2^(k/2))."""
    if tokens <= 256:
        return 256
    return int(round(256 * 2 ** (_grid_step(tokens) / 2)))


def context_interval(tokens: float) -> tuple[float, float]:
    """(lo, hi]: contexts inside it share `tokens`' bucket (a hair narrower than the exact
    edges, so a context at an edge is always bucketed by context_bucket itself)."""
    if tokens <= 256:
        return -math.inf, 256.0
    k = _grid_step(tokens)
    return 256 * 2 ** ((k - 1) / 2) * (1 + EDGE_RTOL), 256 * 2 ** (k / 2) * (1 - EDGE_RTOL)


def batch_bucket(b: float, cap: int, grid: tuple[int, ...] = BATCH_GRID) -> int:
    """Round sequences per device up to the batch grid (never above the pool's cap)."""
    if b >= cap:
        return cap
    i = bisect.bisect_left(grid, b)
    return min(grid[i] if i < len(grid) else cap, cap)


def batch_grid(graph_sizes: tuple[int, ...], padding: bool) -> tuple[int, ...]:
    """The batches a pool's steps are priced at: the engine's captured sizes where it pads up
    to them (a padded batch computes that size), the default grid elsewhere."""
    if not padding or not graph_sizes:
        return BATCH_GRID
    return tuple(sorted(set(BATCH_GRID) | set(graph_sizes)))


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
    grid: tuple[int, ...] = BATCH_GRID
    cache: dict = field(default_factory=dict)
    shares: dict = field(default_factory=dict)     # attention's share of each cached step
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
        key = self._key(sequences, context)
        if key not in self.cache:
            self.cache[key] = self._simulate(*key)
        return self.cache[key]

    def attention_share(self, sequences: float, context: float) -> float:
        """The share of that forward's representative layer spent in its attention block."""
        key = self._key(sequences, context)
        if key not in self.shares:
            self.step_s(sequences, context)
        return self.shares[key]

    def _key(self, sequences: float, context: float) -> tuple[int, int]:
        return batch_bucket(max(sequences, 1), self.cap, self.grid), context_bucket(context)

    def step_s_bounds(self, sequences: float, context: float) -> tuple[float, float, float,
                                                                      float, float]:
        """step_s, and the (lo, hi] ranges of sequences and of context that share its bucket."""
        if sequences >= self.cap:
            b_lo, b_hi = math.nextafter(self.cap, -math.inf), math.inf
        else:
            grid = self.grid
            i = bisect.bisect_left(grid, sequences)
            b_lo = grid[i - 1] if i else -math.inf
            b_hi = min(grid[i] if i < len(grid) else math.inf,
                       math.nextafter(self.cap, -math.inf))
        return (self.step_s(sequences, context), b_lo, b_hi, *context_interval(context))

    def _simulate(self, b: int, c: int) -> float:
        r = self.result(b, c)
        parts = r.breakdown_s
        total = sum(parts.values())
        self.shares[(b, c)] = parts.get("attention_block", 0.0) / total if total > 0 else 0.0
        return r.step_time_s

    def result(self, b: int, c: int) -> StepResult:
        """The whole step result of one forward at `b` sequences per device and `c` tokens."""
        n_mb = get_schedule(self.schedule).micro_batches
        if b < n_mb:          # split the prompt's tokens between the micro-batches instead
            b, c = n_mb, max(1, c // n_mb)
        w = self.base.variant(plan=self.plan, schedule=self.schedule, phase=self.phase,
                              batch_per_device=b, context_length=c, serving=None)
        r: Resolved = resolve(w, model=self.model, profile=self.profile,
                              traffic_cache=self.traffic)   # routing depends on tokens only
        return simulate(w, resolved=r)


class DecodeSteps:
    """Decode step GPU seconds by (requests decoding, KV tokens held), at the batch the engine
    pads them to, remembering the last shape bucket so that consecutive steps in one bucket
    skip the lookup."""

    def __init__(self, model: StepModel, dp: int,
                 group: Callable[[int], float] | None = None) -> None:
        self.model, self.dp = model, dp
        self.group = group or (lambda n: n / dp)     # sequences a group computes for n
        self.bounds = (0.0, -1.0, -1.0, -1.0, -1.0)   # seconds, (lo, hi] of sequences, of context
        self.seqs: dict[int, float] = {}               # sequences a group computes, by n

    def __call__(self, n_active: int, sum_ctx: float) -> float:
        """Seconds of the next decode step of `n_active` requests holding `sum_ctx` tokens."""
        if not n_active:
            return 0.0
        seqs = self.seqs.get(n_active)
        if seqs is None:
            seqs = self.seqs[n_active] = self.group(n_active)
        ctx = sum_ctx / n_active
        s, b_lo, b_hi, c_lo, c_hi = self.bounds
        if b_lo < seqs <= b_hi and c_lo < ctx <= c_hi:
            return s
        self.bounds = self.model.step_s_bounds(seqs, ctx)
        return self.bounds[0]
