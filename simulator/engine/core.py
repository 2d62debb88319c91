"""SimPy engine: ops on streams, bytes over links, processor sharing. Knows nothing of MoE.

Each rank has streams (one op at a time each, the ready op with the lowest priority first) and
link classes. At an instant, every rank first finishes what is done at it (and the collectives
all of whose parts are then done close), and only then do streams pick their next ops: which
event SimPy happens to process first at one instant changes nothing, and identical ranks run
identically. A running compute op slows to (1 - the largest SM share of the collectives running
on its rank: each collective's own, or comm_sm_fraction); flows on one link share its bandwidth
equally. Whenever the set of running tasks
on a rank changes, every remaining time on that rank is recomputed.

A collective is one task per rank; its outputs are ready when every rank's part is done.
"""
from __future__ import annotations

import heapq
import math

import numpy as np
import simpy

from simulator.errors import MoesimError
from simulator.engine.streams import StreamPlan

INF = float("inf")

# Tolerances, relative to the magnitudes they compare (an absolute epsilon on times breaks once
# simulated time grows: the float spacing of `now` passes 1e-15 s at ~8 s).
TIME_RTOL = 1e-12        # two instants closer than this fraction of `now` are the same instant
TIME_ATOL = 1e-15        # ... and closer than this many seconds near t = 0
MAX_STALLS = 10_000      # wake-ups in a row that neither finish an op nor move time: a bug, stop
MAX_OP_S = 1e9           # one op of over ~30 years is an input error, not a prediction


def time_tol(now: float) -> float:
    """The smallest duration the engine distinguishes at simulated time `now`."""
    return max(TIME_ATOL, TIME_RTOL * abs(now))


NO_LINKS: dict[str, float] = {}   # a compute task's links (never written: comm tasks get their own)


class _Task:
    """One op running on one rank (slots: the engine touches these fields on every event)."""

    __slots__ = ("op", "rank", "remaining", "latency_end", "link_left", "rate", "is_comm",
                 "rate_per_link", "sm")

    def __init__(self, op: int, rank: int, remaining: float = 0.0, latency_end: float = 0.0,
                 link_left: dict[str, float] = NO_LINKS, is_comm: bool = False,
                 sm: float = 0.0) -> None:
        self.op, self.rank = op, rank
        self.remaining = remaining              # compute: seconds of standalone work
        self.latency_end = latency_end          # comm: when the start-up latency is over
        self.link_left = link_left              # comm: bytes left per link
        self.rate = 1.0
        self.is_comm = is_comm
        self.rate_per_link: dict[str, float] = NO_LINKS
        self.sm = sm                            # comm: share of compute it takes while running


class Engine:
    """Runs a StreamPlan on `n_ranks` identical ranks and returns per-(rank, op) start/end."""

    def __init__(self, plan: StreamPlan, bandwidth_Bps: dict[str, float],
                 comm_sm_fraction: float, n_ranks: int = 1) -> None:
        check_inputs(plan, bandwidth_Bps, comm_sm_fraction)
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
        self.dirty: set[int] = set()       # ranks to dispatch and reschedule at this instant
        self.settle_queued = False
        self._stall_t = -1.0
        self._stalls = 0

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
            raise stuck_error(missing, sorted({self.p.names[t.op] for ts in self.running
                                               for t in ts}))
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
        if now > self.last_t[r]:
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
            task = _Task(i, r, latency_end=now + demand.latency_s, is_comm=True,
                         link_left={k: v for k, v in demand.link_bytes.items() if v > 0},
                         sm=self.sm if demand.sm_fraction is None else demand.sm_fraction)
        self.running[r].append(task)

    # -- fluid sharing ----------------------------------------------------------------------
    def _advance(self, r: int, now: float) -> None:
        """Do the work of [last_t, now] at the rates set by the last reschedule."""
        t0 = self.last_t[r]
        self.last_t[r] = now
        if now <= t0:
            return
        dt = now - t0
        for t in self.running[r]:
            if not t.is_comm:
                t.remaining -= dt * t.rate
                continue
            moving = now - max(t0, t.latency_end)      # bytes move only once latency is over
            if moving > 0:
                rates = t.rate_per_link
                for k in t.link_left:
                    t.link_left[k] -= moving * rates.get(k, 0.0)

    def _link_done(self, k: str, left: float, tol: float) -> bool:
        """Bytes left on link k take no distinguishable time even at the link's full rate."""
        return left <= self.bw[k] * tol

    def _reschedule(self, r: int) -> None:
        now = self.env.now
        tol = TIME_RTOL * now                     # time_tol(now), inline: run on every event
        if tol < TIME_ATOL:
            tol = TIME_ATOL
        tasks = self.running[r]
        bw = self.bw
        taken = 0.0                   # the largest SM share of the collectives running
        flows: dict[str, int] = {}
        for t in tasks:
            if t.is_comm:
                if t.sm > taken:
                    taken = t.sm
                if t.latency_end - now <= tol:
                    for k, left in t.link_left.items():
                        if left > bw[k] * tol:          # not _link_done
                            flows[k] = flows.get(k, 0) + 1
        horizon = INF
        compute_rate = 1.0 - taken
        for t in tasks:
            if not t.is_comm:
                t.rate = compute_rate
                h = t.remaining / compute_rate
            elif t.latency_end - now > tol:
                t.rate_per_link = NO_LINKS
                h = t.latency_end - now
            else:
                rates = {}
                h = 0.0
                for k, left in t.link_left.items():
                    if left > bw[k] * tol:
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
        if horizon < 0.0:
            horizon = 0.0
        when = now + horizon
        if when == self.wake_at[r]:        # the pending wake-up still holds
            return
        self.version[r] += 1
        self.wake_at[r] = when
        ver = self.version[r]
        ev = self.env.timeout(horizon)
        ev.callbacks.append(lambda _e, r=r, ver=ver: self._wake(r, ver))

    def _wake(self, r: int, ver: int) -> None:
        if ver != self.version[r]:
            return
        self.wake_at[r] = -1.0
        now = self.env.now
        self._advance(r, now)
        tol = TIME_RTOL * now                     # time_tol(now), inline
        if tol < TIME_ATOL:
            tol = TIME_ATOL
        done, still = [], []
        for t in self.running[r]:
            # done when what is left would take no distinguishable time at `now`
            if self._comm_done(t, now, tol) if t.is_comm else t.remaining <= t.rate * tol:
                done.append(t)
            else:
                still.append(t)
        self._guard_progress(now, bool(done))
        self.running[r] = still
        for t in done:
            self.busy[r][self.p.streams[t.op]] = False
            self._finish_local(r, t.op, now)
        if self.n_ranks == 1:              # no other rank can finish at this instant
            self._dispatch_streams(r)
            self._reschedule(r)
            return
        self.dirty.add(r)
        self._settle_when_instant_ends()

    def _settle_when_instant_ends(self) -> None:
        """Let the touched ranks pick their next ops once nothing else happens at this instant:
        now, when no other event is due at it (the common case: one wake-up per instant),
        else in an event queued behind those due (they were all scheduled before it)."""
        if self.env.peek() > self.env.now:
            self._settle(None)
        elif not self.settle_queued:
            self.settle_queued = True
            self.env.timeout(0).callbacks.append(self._settle)

    def _settle(self, _event: object) -> None:
        """The end of an instant: every rank touched at it dispatches and reschedules."""
        self.settle_queued = False
        now = self.env.now
        ranks, self.dirty = sorted(self.dirty), set()
        for r in ranks:
            self._advance(r, now)
            self._dispatch_streams(r)
            self._reschedule(r)

    def _comm_done(self, t: _Task, now: float, tol: float) -> bool:
        """A collective's part is done: latency over, and its bytes left take no
        distinguishable time at `now` on any link."""
        if t.latency_end - now > tol:
            return False
        return all(self._link_done(k, v, tol) for k, v in t.link_left.items())

    def _guard_progress(self, now: float, finished_any: bool) -> None:
        """Refuse to spin: wake-ups that finish nothing at one instant, again and again."""
        if finished_any or now != self._stall_t:
            self._stall_t, self._stalls = now, 0
            return
        self._stalls += 1
        if self._stalls > MAX_STALLS:
            raise stall_error(now)

    # -- completion -------------------------------------------------------------------------
    def _finish_local(self, r: int, i: int, now: float) -> None:
        if self.p.comm[i] is None or self.n_ranks == 1:
            self._complete(r, i, now)
            return
        self.group_done[i] += 1
        if self.group_done[i] == self.n_ranks:       # the slowest rank closes the collective
            for rr in range(self.n_ranks):
                self._complete(rr, i, now)
                self.dirty.add(rr)

    def _complete(self, r: int, i: int, now: float) -> None:
        self.end[r][i] = now
        for s in self.p.succs[i]:
            self.waiting[r][s] -= 1
            if self.waiting[r][s] == 0:
                self._make_ready(r, s)


def stuck_error(missing: list[str], stuck: list[str]) -> MoesimError:
    """Ops that never ran when nothing could move any more."""
    return MoesimError(
        "engine", f"ops never ran: {missing[:5]} (still running when nothing could move: "
        f"{stuck[:5]}; a dependency cycle, or a link or op with zero rate)",
        "check the hardware profile's bandwidths and the schedule's dependencies")


def stall_error(now: float) -> MoesimError:
    """Wake-ups that finish nothing at one instant, again and again."""
    return MoesimError(
        "engine", f"no progress at simulated time {now:.6g} s after {MAX_STALLS} "
        "wake-ups (an op's remaining time is below what floats can resolve at this time)",
        "report this as a bug with the workload; as a workaround shorten the simulated "
        "duration")


def _all_sound(plan: StreamPlan, bandwidth_Bps: dict[str, float]) -> bool:
    """Every duration, byte count and SM share sound, checked at once (the per-op check below
    then only runs to name the op that is not)."""
    times = list(plan.compute_s)
    for v in {id(v): v for v in plan.rank_compute_s.values()}.values():   # layers share lists
        times += v
    demands = {id(d): d for d in plan.comm if d is not None}
    for v in {id(v): v for v in plan.rank_comm.values()}.values():
        demands.update((id(d), d) for d in v)
    shares = []
    for d in demands.values():
        times.append(d.latency_s)
        if d.sm_fraction is not None:
            shares.append(d.sm_fraction)
        for k, b in d.link_bytes.items():
            if k not in bandwidth_Bps or not math.isfinite(b) or b < 0:
                return False
            times.append(b / bandwidth_Bps[k])
    t, f = np.array(times, dtype=float), np.array(shares, dtype=float)
    return bool(np.isfinite(t).all() and (t >= 0).all() and (t <= MAX_OP_S).all()
                and np.isfinite(f).all() and (f >= 0).all() and (f < 1).all())


def check_inputs(plan: StreamPlan, bandwidth_Bps: dict[str, float], sm: float,
                 sound: bool | None = None) -> None:
    """Every duration, byte count and rate finite and non-negative; compute keeps some rate
    (`sound`: the plan's own numbers already checked at once, by the caller)."""
    def bad(x: float) -> bool:
        return not math.isfinite(x) or x < 0

    if bad(sm) or sm >= 1:
        raise MoesimError("comm_sm_fraction", f"{sm} leaves compute no rate while a collective "
                          "runs", "use a fraction in [0, 1)")
    for k, v in bandwidth_Bps.items():
        if bad(v) or v == 0:
            raise MoesimError(f"bandwidth of link '{k}'", f"{v} B/s is not a positive finite "
                              "rate", "give the profile a positive, finite bandwidth")
    if sound if sound is not None else _all_sound(plan, bandwidth_Bps):
        return
    for i, name in enumerate(plan.names):
        times = [plan.compute_s[i], *plan.rank_compute_s.get(i, [])]
        demands = [d for d in [plan.comm[i], *plan.rank_comm.get(i, [])] if d is not None]
        times += [d.latency_s for d in demands]
        nbytes = [v for d in demands for v in d.link_bytes.values()]
        for x in times + nbytes:
            if bad(x):
                raise MoesimError(f"op '{name}'", f"a duration or byte count of {x} is not a "
                                  "finite, non-negative number", "check the hardware profile "
                                  "(peaks, bandwidths, latencies) and the workload's sizes")
        for d in demands:
            if d.sm_fraction is not None and (bad(d.sm_fraction) or d.sm_fraction >= 1):
                raise MoesimError(f"op '{name}'", f"SM fraction {d.sm_fraction} is outside "
                                  "[0, 1)", "check the profile's comm SM fractions")
            for k in d.link_bytes:
                if k not in bandwidth_Bps:
                    raise MoesimError(f"op '{name}'", f"uses link '{k}' that has no bandwidth",
                                      "give the profile a bandwidth for that link")
        longest = max(times + [v / bandwidth_Bps[k] for d in demands
                               for k, v in d.link_bytes.items()], default=0.0)
        if longest > MAX_OP_S:
            raise MoesimError(f"op '{name}'", f"would take {longest:.3g} s (more than "
                              f"{MAX_OP_S:.0e} s)", "check the hardware profile (peaks, "
                              "bandwidths, latencies) and the workload's sizes for a typo")
