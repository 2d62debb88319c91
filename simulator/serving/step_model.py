"""Step durations for serving, from the engine's timelines, memoised by shape.

A decode step is one forward of the decode pool at (sequences per device, context); a prefill
step one forward at (sequences per device, prompt tokens). The engine runs the shapes of a grid
(batches of BATCH_GRID, contexts 256 x 2^(k/2)) once each, and a step between grid points is
priced by bilinear interpolation of its cell's four corners in sequences and in context (a
step's time is near linear in both between points a factor sqrt(2) or less apart), so a long
serving run simulates each grid shape once and a prompt of 1.04 sequences x 8,000 tokens costs
what it computes, not the 2 x 8,192 a rounding up would charge.
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
MIN_CONTEXT = 16         # the grid's shortest context (tokens): shorter ones price as it
BATCH_GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512,
              640, 768, 1024, 1280, 1536, 2048, 2560, 3072, 4096, 6144, 8192)


def _grid_step(tokens: float) -> int:
    """k of the context grid point 256 * 2^(k/2) that `tokens` (> MIN_CONTEXT) rounds up to."""
    return math.ceil(2 * math.log2(tokens / 256))


def _grid_point(k: int) -> float:
    """The context grid's k-th point, 256 * 2^(k/2) tokens."""
    return 256 * 2 ** (k / 2)


def context_bucket(tokens: float) -> int:
    """Round a context length up to the next grid point (256 * 2^(k/2), at least MIN_CONTEXT)."""
    if tokens <= MIN_CONTEXT:
        return MIN_CONTEXT
    return int(round(_grid_point(_grid_step(tokens))))


def context_interval(tokens: float) -> tuple[float, float]:
    """(lo, hi]: contexts inside it share `tokens`' bucket (a hair narrower than the exact
    edges, so a context at an edge is always bucketed by context_bucket itself)."""
    if tokens <= MIN_CONTEXT:
        return -math.inf, float(MIN_CONTEXT)
    k = _grid_step(tokens)
    return _grid_point(k - 1) * (1 + EDGE_RTOL), _grid_point(k) * (1 - EDGE_RTOL)


@dataclass(frozen=True)
class Cell:
    """One cell of the shape grid: the sequences (b0, b1] and contexts (c0, c1] it holds, the
    grid points its corners were run at, and their step times (t[i][j]: batch i, context j)."""

    b_lo: float
    b_hi: float
    c_lo: float
    c_hi: float
    b: tuple[float, float]                 # corner batches (equal where the cell is one)
    c: tuple[float, float]                 # corner contexts
    t: tuple[tuple[float, float], tuple[float, float]]

    @classmethod
    def point(cls, s: float, b: float, c: float) -> "Cell":
        """A cell of one shape alone (holds nothing, so every other shape asks again)."""
        return cls(b, b, c, c, (b, b), (c, c), ((s, s), (s, s)))

    def holds(self, b: float, c: float) -> bool:
        """Whether (b, c) lies in this cell."""
        return self.b_lo < b <= self.b_hi and self.c_lo < c <= self.c_hi

    def at(self, b: float, c: float) -> float:
        """The step time at (b, c), bilinear between the corners (flat past a one-point side)."""
        (b0, b1), (c0, c1), ((t00, t01), (t10, t11)) = self.b, self.c, self.t
        wb = min(max((b - b0) / (b1 - b0), 0.0), 1.0) if b1 > b0 else 1.0
        wc = min(max((c - c0) / (c1 - c0), 0.0), 1.0) if c1 > c0 else 1.0
        return (1 - wb) * ((1 - wc) * t00 + wc * t01) + wb * ((1 - wc) * t10 + wc * t11)


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
    last: Cell = field(default_factory=lambda: Cell.point(0.0, -1.0, -1.0))  # step_s's last

    def __post_init__(self) -> None:
        ideal = self.base_profile.idealizations.variant(enforce_hbm_capacity=False)
        self.profile = self.base_profile.variant(idealizations=ideal)

    @property
    def dp(self) -> int:
        """Data-parallel attention groups (devices that each hold their own sequences)."""
        return self.plan.attention_dp

    def step_s(self, sequences: float, context: float) -> float:
        """Seconds of one forward with `sequences` per device at `context` tokens (between
        grid shapes: bilinear in both; the last cell asked is kept, as consecutive steps
        mostly fall in it)."""
        cell = self.last
        if not cell.holds(sequences, context):
            cell = self.last = self.cell(sequences, context)
        return cell.at(max(sequences, 1.0), max(context, MIN_CONTEXT))

    def attention_share(self, sequences: float, context: float) -> float:
        """The share of that forward's representative layer spent in its attention block (at
        the grid shape above it)."""
        key = self._key(sequences, context)
        if key not in self.shares:
            self._run(*key)
        return self.shares[key]

    def _key(self, sequences: float, context: float) -> tuple[int, int]:
        return batch_bucket(max(sequences, 1), self.cap, self.grid), context_bucket(context)

    def _run(self, b: int, c: int) -> float:
        if (b, c) not in self.cache:
            self.cache[(b, c)] = self._simulate(b, c)
        return self.cache[(b, c)]

    def cell(self, sequences: float, context: float) -> Cell:
        """The grid cell holding (sequences, context), its corners run (once each)."""
        b1, c1 = self._key(sequences, context)
        if sequences >= self.cap:
            b_lo, b_hi, b0 = math.nextafter(self.cap, -math.inf), math.inf, b1
        else:
            grid = self.grid
            i = bisect.bisect_left(grid, sequences)
            b_lo = grid[i - 1] if i else -math.inf
            b_hi = min(grid[i] if i < len(grid) else math.inf,
                       math.nextafter(self.cap, -math.inf))
            b0 = grid[i - 1] if i and sequences > 1 else b1
        c_lo, c_hi = context_interval(context)
        c0 = c1 if context <= MIN_CONTEXT else \
            max(int(round(_grid_point(_grid_step(context) - 1))), MIN_CONTEXT)
        t = ((self._run(b0, c0), self._run(b0, c1)), (self._run(b1, c0), self._run(b1, c1)))
        return Cell(b_lo, b_hi, c_lo, c_hi, (float(b0), float(b1)), (float(c0), float(c1)), t)

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
        self.last = Cell.point(0.0, -1.0, -1.0)       # the grid cell of the last step
        self.seqs: dict[int, float] = {}               # sequences a group computes, by n

    def __call__(self, n_active: int, sum_ctx: float) -> float:
        """Seconds of the next decode step of `n_active` requests holding `sum_ctx` tokens."""
        if not n_active:
            return 0.0
        seqs = self.seqs.get(n_active)
        if seqs is None:
            seqs = self.seqs[n_active] = self.group(n_active)
        ctx = sum_ctx / n_active
        if not self.last.holds(seqs, ctx):
            self.last = self.model.cell(seqs, ctx)
        return self.last.at(max(seqs, 1.0), max(ctx, MIN_CONTEXT))
