"""SimPy engine: ops on streams, bytes over links, processor sharing. Knows nothing of MoE.

Each rank has streams (one op at a time each, the ready op with the lowest priority first) and
link classes. A running compute op slows to (1 - comm_sm_fraction) while a collective runs on
the same rank; flows on one link share its bandwidth equally. Whenever the set of running tasks
on a rank changes, every remaining time on that rank is recomputed.

A collective is one task per rank; its outputs are ready when every rank's part is done.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import simpy

from simulator.hardware import CommDemand

EPS = 1e-15
INF = float("inf")


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


@dataclass
class _Task:
    op: int
    rank: int
    remaining: float = 0.0                      # compute: seconds of standalone work
    latency: float = 0.0                        # comm: start-up time left
    link_left: dict[str, float] = field(default_factory=dict)   # comm: bytes left per link
    rate: float = 1.0
    is_comm: bool = False
    rate_per_link: dict[str, float] = field(default_factory=dict)


class Engine:
    """Runs a StreamPlan on `n_ranks` identical ranks and returns per-(rank, op) start/end."""

    def __init__(self, plan: StreamPlan, bandwidth_Bps: dict[str, float],
                 comm_sm_fraction: float, n_ranks: int = 1) -> None:
        self.p = plan
        self.bw = bandwidth_Bps
        self.sm = comm_sm_fraction
        self.n_ranks = n_ranks
        n = len(plan.names)
        self.env = simpy.Environment()
        self.start = [[-1.0] * n for _ in range(n_ranks)]
        self.end = [[-1.0] * n for _ in range(n_ranks)]
        self.waiting = [[len(ps) for ps in plan.preds] for _ in range(n_ranks)]
        self.ready: list[dict[str, list]] = [dict() for _ in range(n_ranks)]
        self.busy: list[dict[str, bool]] = [dict() for _ in range(n_ranks)]
        self.running: list[list[_Task]] = [[] for _ in range(n_ranks)]
        self.last_t = [0.0] * n_ranks
        self.version = [0] * n_ranks
        self.wake_at = [-1.0] * n_ranks
        self.group_done = [0] * n

    # -- public -----------------------------------------------------------------------------
    def run(self) -> tuple[list[list[float]], list[list[float]]]:
        """Simulate to completion; returns (start, end) indexed [rank][op]."""
        for r in range(self.n_ranks):
            for i, w in enumerate(self.waiting[r]):
                if w == 0:
                    self._make_ready(r, i)
            self._dispatch_streams(r)
            self._reschedule(r)
        self.env.run()
        missing = [self.p.names[i] for i, e in enumerate(self.end[0]) if e < 0]
        if missing:
            raise RuntimeError(f"deadlock: ops never ran: {missing[:5]}")
        return self.start, self.end

    # -- streams ----------------------------------------------------------------------------
    def _make_ready(self, r: int, i: int) -> None:
        heapq.heappush(self.ready[r].setdefault(self.p.streams[i], []),
                       (self.p.priorities[i], i))

    def _dispatch_streams(self, r: int) -> None:
        busy = self.busy[r]
        for stream, heap in self.ready[r].items():
            if heap and not busy.get(stream):
                _, i = heapq.heappop(heap)
                self._start(r, i)

    def _start(self, r: int, i: int) -> None:
        """Put op i on its stream; the caller recomputes rates once for the whole batch."""
        now = self.env.now
        self._advance(r, now)
        self.busy[r][self.p.streams[i]] = True
        self.start[r][i] = now
        demand = self.p.comm[i]
        per_rank = self.p.rank_comm.get(i)
        if per_rank is not None:
            demand = per_rank[r % len(per_rank)]
        if demand is None:
            own = self.p.rank_compute_s.get(i)
            base = own[r % len(own)] if own is not None else self.p.compute_s[i]
            task = _Task(i, r, remaining=base)
        else:
            task = _Task(i, r, latency=demand.latency_s, is_comm=True,
                         link_left={k: v for k, v in demand.link_bytes.items() if v > 0})
        self.running[r].append(task)

    # -- fluid sharing ----------------------------------------------------------------------
    def _advance(self, r: int, now: float) -> None:
        dt = now - self.last_t[r]
        self.last_t[r] = now
        if dt <= 0:
            return
        for t in self.running[r]:
            if not t.is_comm:
                t.remaining -= dt * t.rate
            elif t.latency > 0:
                t.latency -= dt
            else:
                rates = t.rate_per_link
                for k in t.link_left:
                    t.link_left[k] -= dt * rates[k]

    def _reschedule(self, r: int) -> None:
        tasks = self.running[r]
        comm_active = False
        flows: dict[str, int] = {}
        for t in tasks:
            if t.is_comm:
                comm_active = True
                if t.latency <= EPS:
                    for k, left in t.link_left.items():
                        if left > EPS:
                            flows[k] = flows.get(k, 0) + 1
        horizon = INF
        compute_rate = (1.0 - self.sm) if comm_active else 1.0
        bw = self.bw
        for t in tasks:
            if not t.is_comm:
                t.rate = compute_rate
                h = t.remaining / compute_rate
            elif t.latency > EPS:
                h = t.latency
            else:
                rates = {}
                h = 0.0
                for k, left in t.link_left.items():
                    if left > EPS:
                        v = bw[k] / flows[k]
                        rates[k] = v
                        if left / v > h:
                            h = left / v
                    else:
                        rates[k] = 0.0
                t.rate_per_link = rates
            if h < horizon:
                horizon = h
        if horizon == INF:
            self.version[r] += 1
            return
        when = self.env.now + max(horizon, 0.0)
        if when == self.wake_at[r]:        # the pending wake-up still holds
            return
        self.version[r] += 1
        self.wake_at[r] = when
        ver = self.version[r]
        ev = self.env.timeout(max(horizon, 0.0))
        ev.callbacks.append(lambda _e, r=r, ver=ver: self._wake(r, ver))

    def _wake(self, r: int, ver: int) -> None:
        if ver != self.version[r]:
            return
        self.wake_at[r] = -1.0
        now = self.env.now
        self._advance(r, now)
        done, still = [], []
        for t in self.running[r]:
            if self._finished(t):
                done.append(t)
            else:
                still.append(t)
        self.running[r] = still
        for t in done:
            self.busy[r][self.p.streams[t.op]] = False
            self._finish_local(r, t.op, now)
        self._dispatch_streams(r)
        self._reschedule(r)

    @staticmethod
    def _finished(t: _Task) -> bool:
        if not t.is_comm:
            return t.remaining <= 1e-13
        if t.latency > 1e-15:
            return False
        # done within a milli-byte, or within a picosecond at its current rate (float noise of
        # very fast links must not keep a finished flow alive)
        rates = t.rate_per_link
        return all(v <= 1e-3 or (rates.get(k, 0.0) > 0 and v / rates[k] <= 1e-12)
                   for k, v in t.link_left.items())

    # -- completion -------------------------------------------------------------------------
    def _finish_local(self, r: int, i: int, now: float) -> None:
        if self.p.comm[i] is None or self.n_ranks == 1:
            self._complete(r, i, now)
            return
        self.group_done[i] += 1
        if self.group_done[i] == self.n_ranks:       # the slowest rank closes the collective
            for rr in range(self.n_ranks):
                self._complete(rr, i, now)
                if rr != r:
                    self._advance(rr, now)
                    self._dispatch_streams(rr)
                    self._reschedule(rr)

    def _complete(self, r: int, i: int, now: float) -> None:
        self.end[r][i] = now
        for s in self.p.succs[i]:
            self.waiting[r][s] -= 1
            if self.waiting[r][s] == 0:
                self._make_ready(r, s)
