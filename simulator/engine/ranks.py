"""The engine's rules (engine/core.py) run over every rank at once, as numpy arrays.

Ranks meet only where a collective closes (on its slowest rank's part); between closes each
rank runs on its own. So every round advances, by one event each, all ranks whose next event
comes before the earliest instant any open collective could close (each unfinished part ends at
its rank's next event or later), and an instant at which a collective may close is taken whole:
every rank's own completions at it first, then the closes, then each rank's dispatch (the rule
core.Engine follows too). Per rank it does what core.Engine does, in the same float operations,
so the timelines are equal bit for bit (tests/test_engine_ranks.py); what it pays is per round
(some hundred numpy calls over the ranks), not per rank x op. Worth it from a few dozen ranks
up (benchmarks/scaling.py); `run_ranks` chooses.
"""
from __future__ import annotations

import numpy as np

from simulator.engine.core import (INF, MAX_STALLS, TIME_ATOL, TIME_RTOL, Engine, check_inputs,
                                   stall_error, stuck_error)
from simulator.engine.rank_inputs import rank_inputs
from simulator.engine.streams import StreamPlan

MIN_RANKS = 32          # fewer ranks: core.Engine (per-event Python beats per-round numpy)
BIG = np.iinfo(np.int64).max


def uses_arrays(n_ranks: int) -> bool:
    """Whether `n_ranks` ranks run on the array engine (from MIN_RANKS up)."""
    return n_ranks >= MIN_RANKS


def run_ranks(plan: StreamPlan, bandwidth_Bps: dict[str, float], comm_sm_fraction: float,
              n_ranks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Run `plan` on `n_ranks` ranks with whichever engine is faster at that size; (start,
    end) indexed [rank, op]. Both apply the same rules in the same float operations."""
    if uses_arrays(n_ranks):
        return RankArrays(plan, bandwidth_Bps, comm_sm_fraction, n_ranks).run()
    start, end = Engine(plan, bandwidth_Bps, comm_sm_fraction, n_ranks).run()
    return np.array(start), np.array(end)


class RankArrays:
    """core.Engine's state for all ranks as arrays, ranks last (numpy works row by row over
    the few streams and links): per (stream, rank) whether it is free and its ready queue; a
    compute slot per (stream that runs compute, rank) and a collective slot per (stream that
    runs collectives, rank), each holding the op it runs; per (rank, op) start, end and inputs
    left. Pairs are indexed flat, row * R + rank (numpy gathers from one flat index ~4x faster
    than from two)."""

    def __init__(self, plan: StreamPlan, bandwidth_Bps: dict[str, float],
                 comm_sm_fraction: float, n_ranks: int) -> None:
        self.p = plan
        self.bw_in, self.sm_in = bandwidth_Bps, comm_sm_fraction
        n, R = len(plan.names), n_ranks
        self.n, self.R = n, R
        self.stream_names = names = list(dict.fromkeys(plan.streams))
        self.S = S = len(names)
        self.stream = np.array([names.index(s) for s in plan.streams], dtype=np.int64)
        self.stream_R = self.stream * R                       # an op's stream's first pair
        self.is_comm = np.array([d is not None for d in plan.comm], dtype=bool)
        x = rank_inputs(plan, bandwidth_Bps, comm_sm_fraction, R)
        check_inputs(plan, bandwidth_Bps, comm_sm_fraction, sound=x.sound())
        self.links, self.K, self.bw, self.ci = x.links, len(x.links), x.bw, x.ci
        self.work_f = x.work.reshape(-1)                      # op * R + rank
        self.lat_f, self.cm_sm_f = x.lat.reshape(-1), x.share.reshape(-1)    # c * R + rank
        self.nbytes_f = x.nbytes.reshape(self.K, x.lat.size)
        # a stream's row among the compute slots and among the collective slots (-1: none)
        comp_streams = np.unique(self.stream[~self.is_comm]).tolist()
        comm_streams = np.unique(self.stream[self.is_comm]).tolist()
        self.Sc, self.Sm = max(1, len(comp_streams)), max(1, len(comm_streams))
        self.crow = np.full(S, -1, dtype=np.int64)
        self.crow[comp_streams] = np.arange(len(comp_streams))
        self.mrow = np.full(S, -1, dtype=np.int64)
        self.mrow[comm_streams] = np.arange(len(comm_streams))
        self.c_stream = np.array(comp_streams or [0], dtype=np.int64)   # row -> stream
        self.m_stream = np.array(comm_streams or [0], dtype=np.int64)
        # ready queues hold keys: an op's place in (priority, op) order, the engine's heap order
        order = sorted(range(n), key=lambda i: (plan.priorities[i], i))
        self.key = np.empty(n, dtype=np.int64)
        self.key[order] = np.arange(n)
        self.op_of_key = np.array(order, dtype=np.int64)
        # successors padded to the widest fan-out with a dummy op n that is never ready
        width = max(1, max(len(ss) for ss in plan.succs))
        self.succ = np.full((n, width), n, dtype=np.int64)
        for i, ss in enumerate(plan.succs):
            self.succ[i, :len(ss)] = ss
        # one compute completion per rank at a time (collectives complete on their own, at a
        # close) and each op's successors distinct: no (rank, successor) pair repeats in one
        # completion; and none of the ops completing `crowded` (successors sharing a stream):
        # no (stream, rank) queue gains two ops
        self.plain = len(comp_streams) <= 1 and all(len(set(ss)) == len(ss) for ss in plan.succs)
        self.crowded = np.array([len({plan.streams[x] for x in ss}) < len(ss)
                                 for ss in plan.succs], dtype=bool)
        self._state()

    def _state(self) -> None:
        """Everything idle, nothing started; [rows, R] arrays with flat views (`_f`)."""
        n, R, S, K = self.n, self.R, self.S, self.K
        self.start = np.full((R, n), -1.0)
        self.end = np.full((R, n), -1.0)
        self.start_f, self.end_f = self.start.reshape(-1), self.end.reshape(-1)
        inputs = [len(p) for p in self.p.preds] + [1 << 62]    # the dummy op: never ready
        self.waiting = np.tile(np.array(inputs, dtype=np.int64), R)      # rank * (n + 1) + op
        self.stamp = np.zeros(R * max(n + 1, S), dtype=np.int64)  # scratch: one of each repeat
        self.C = 4
        self.rq = np.full((self.C, S * R), BIG, dtype=np.int64)  # ready keys, unordered
        self.rqn = np.zeros((S, R), dtype=np.int64)           # how many, per (stream, rank)
        self.free = np.ones((S, R), dtype=bool)               # stream runs nothing
        Sc, Sm = self.Sc, self.Sm
        self.cop = np.full((Sc, R), -1, dtype=np.int64)       # compute op running, -1 none
        self.rem = np.zeros((Sc, R))                          # its work left
        self.rate = np.zeros((Sc, R))                         # its rate
        self.mop = np.full((Sm, R), -1, dtype=np.int64)       # collective running, -1 none
        self.lat_end = np.zeros((Sm, R))                      # its latency over at
        self.smv = np.zeros((Sm, R))                          # the SM share it takes
        self.left = np.zeros((K, Sm, R))                      # its bytes left per link
        self.lrate = np.zeros((K, Sm, R))                     # its rate per link
        self.no_rates = np.zeros((K, Sm, R))                  # no collective moving bytes
        self.last_t = np.zeros(R)
        self.next_t = np.full(R, INF)
        self.part_done = np.zeros((n, R), dtype=bool)         # a collective's part finished
        # flat views (the arrays above are only ever written in place)
        self.free_f, self.rqn_f = self.free.reshape(-1), self.rqn.reshape(-1)
        self.cop_f, self.rem_f = self.cop.reshape(-1), self.rem.reshape(-1)
        self.mop_f, self.lat_end_f = self.mop.reshape(-1), self.lat_end.reshape(-1)
        self.smv_f, self.left_f = self.smv.reshape(-1), self.left.reshape(K, Sm * R)
        self.part_done_f = self.part_done.reshape(-1)
        self.open = np.zeros(n, dtype=bool)     # collectives started, not closed (one start
                                                # per rank: a closed one never reopens)
        self.ranks = np.arange(R)
        self.begun = False                                    # roots queued, first dispatch
        self.watch = np.zeros(n, dtype=bool)                  # ops `run` waits for
        self.watch_left = -1

    # -- public -----------------------------------------------------------------------------
    def run(self, until: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Simulate to completion, or only until the ops `until` have ended on every rank (a
        later call goes on from there); returns (start, end) indexed [rank, op], -1 where an
        op has not started or ended yet."""
        self.watch[:] = False
        self.watch_left = -1                       # (rank, watched op) pairs yet to end
        if until is not None:
            self.watch[until] = True
            self.watch_left = int(np.count_nonzero(self.end[:, self.watch] < 0))
            if not self.watch_left:
                return self.start, self.end
        everyone, zero = np.ones(self.R, dtype=bool), np.zeros(self.R)
        with np.errstate(divide="ignore", invalid="ignore"):   # x/0 only where masked out
            if not self.begun:
                self.begun = True
                roots = np.flatnonzero(self.waiting[:self.n] == 0)
                self._make_ready(np.repeat(self.ranks, len(roots)), np.tile(roots, self.R))
                self._dispatch(everyone, zero)
                self._reschedule(everyone, zero, np.full(self.R, TIME_ATOL))
            self._loop(everyone)
        if until is None and (self.end[0] < 0).any():
            missing = [self.p.names[i] for i in np.flatnonzero(self.end[0] < 0)]
            running = np.concatenate([self.cop.ravel(), self.mop.ravel()])
            raise stuck_error(missing, sorted({self.p.names[i] for i in running if i >= 0}))
        return self.start, self.end

    def carried_to(self, plan: StreamPlan, same: np.ndarray) -> RankArrays | None:
        """An engine for `plan` standing where this one stands, `same[i]` being op i's op in
        `plan` (-1: none); for a plan whose ops so far ran alike (engine/shared_prefix.py).
        None when the two lay out their streams or links apart (then run `plan` afresh)."""
        b = RankArrays(plan, self.bw_in, self.sm_in, self.R)
        if (b.stream_names, b.links, b.Sc, b.Sm) != (self.stream_names, self.links, self.Sc,
                                                     self.Sm) \
                or not (np.array_equal(b.crow, self.crow) and np.array_equal(b.mrow, self.mrow)):
            return None
        mine = np.flatnonzero(same >= 0)
        theirs = same[mine]
        b.start[:, theirs] = self.start[:, mine]
        b.end[:, theirs] = self.end[:, mine]
        b.part_done[theirs] = self.part_done[mine]
        width = max(1, max(len(ps) for ps in plan.preds))     # inputs not ended, per rank
        preds = np.full((b.n, width), b.n, dtype=np.int64)   # padded: column n, ended
        for i, ps in enumerate(plan.preds):
            preds[i, :len(ps)] = ps
        ended = np.concatenate([b.end >= 0, np.ones((b.R, 1), dtype=bool)], axis=1)
        b.waiting.reshape(b.R, b.n + 1)[:, :b.n] = (~ended[:, preds]).sum(axis=2)
        key = np.full(self.n + 1, BIG, dtype=np.int64)      # this engine's keys -> b's
        key[:self.n] = np.where(same[self.op_of_key] >= 0,
                                b.key[np.maximum(same[self.op_of_key], 0)], BIG)
        b.rq = np.where(self.rq == BIG, BIG, key[np.minimum(self.rq, self.n)])
        b.C = self.C
        for mine_a, theirs_a in ((self.cop, b.cop), (self.mop, b.mop)):
            theirs_a[...] = np.where(mine_a >= 0, same[mine_a], -1)
        for name in ("rqn", "free", "rem", "rate", "lat_end", "smv", "left", "lrate",
                     "last_t", "next_t"):
            getattr(b, name)[...] = getattr(self, name)
        b.open[same[self.open]] = True
        b.begun = True
        return b

    def _loop(self, everyone: np.ndarray) -> None:
        """Rounds until nothing is left to run (or the watched ops have all ended)."""
        stall_t, stalls = -1.0, 0
        while True:
            h = self._horizon()
            mask = self.next_t < h
            whole = not mask.any()
            if whole:                           # the instant h, at which a collective may close
                if h == INF:
                    break
                mask = self.next_t == h
            t = np.where(mask, self.next_t, self.last_t)     # the others stay where they are
            tol = np.maximum(TIME_ATOL, TIME_RTOL * t)      # time_tol(t), per rank
            finished = self._wake(mask, t, tol)
            closed = self._close(h) if whole else False
            if closed:
                mask, t = everyone, np.full(self.R, h)
                tol = np.maximum(TIME_ATOL, TIME_RTOL * t)
                self._advance(t)
            self._dispatch(mask, t)
            self._reschedule(mask, t, tol)
            if not self.watch_left:
                return
            if finished or closed or h != stall_t:
                stall_t, stalls = h, 0
            else:
                stalls += 1
                if stalls > MAX_STALLS:
                    raise stall_error(h)

    # -- when ranks may run on their own ------------------------------------------------------
    def _horizon(self) -> float:
        """The earliest instant an open collective could close: each one's latest unfinished
        part ends at its rank's next event or later (none open: the last rank's next event)."""
        opens = self.open.nonzero()[0]
        if not opens.size:
            return float(self.next_t.max())
        return min(float(np.where(self.part_done[c], -INF, self.next_t).max())
                   for c in opens.tolist())

    # -- what each rank does at its event (masked: the other ranks' state is left as it is) ----
    def _advance(self, t: np.ndarray) -> None:
        """Do the work of [last_t, t] at the rates set by the last reschedule (core._advance);
        a rank with t == last_t is left as it is (x - 0.0 is x)."""
        t0 = self.last_t
        self.last_t = t
        self.rem -= (t - t0) * self.rate
        moving = t - np.maximum(t0, self.lat_end)
        np.maximum(moving, 0.0, out=moving)            # bytes move once latency is over
        self.left -= moving * self.lrate

    def _wake(self, mask: np.ndarray, t: np.ndarray, tol: np.ndarray) -> bool:
        """Each rank in `mask` at its next event t (`tol`: time_tol(t)): advance, and finish
        what is done (core._wake); the caller reschedules them."""
        R = self.R
        self._advance(t)
        done_c = (self.cop >= 0) & mask & (self.rem <= self.rate * tol)
        done_m = (self.mop >= 0) & mask & (self.lat_end - t <= tol)
        for k in range(self.K):
            done_m &= self.left[k] <= self.bw[k] * tol
        pc = done_c.reshape(-1).nonzero()[0]
        pm = done_m.reshape(-1).nonzero()[0]
        if not (pc.size or pm.size):
            return False
        if pc.size:
            ops = self.cop_f[pc]
            self.cop_f[pc] = -1
            r = pc % R
            self.free_f[self._stream_of(self.c_stream, pc) * R + r] = True
            self._complete(r, ops, t[r])
        if pm.size:
            r = pm % R
            self.part_done_f[self.mop_f[pm] * R + r] = True
            self.mop_f[pm] = -1
            self.smv_f[pm] = 0.0
            self.free_f[self._stream_of(self.m_stream, pm) * R + r] = True
        return True

    def _stream_of(self, streams: np.ndarray, at: np.ndarray) -> np.ndarray | int:
        """The stream of each slot `at` (row * R + rank) among rows of `streams`."""
        return int(streams[0]) if streams.size == 1 else streams[at // self.R]

    def _close(self, h: float) -> bool:
        """Close every open collective whose parts are all finished, at instant h: it ends on
        every rank, and its successors there lose an input."""
        shut = [c for c in self.open.nonzero()[0].tolist() if self.part_done[c].all()]
        for c in shut:
            self.open[c] = False
            self.end[:, c] = h
            self._complete(self.ranks, np.full(self.R, c), None)
        return bool(shut)

    def _once(self, flat: np.ndarray) -> np.ndarray:
        """Mask keeping one of each repeated value in `flat` (values < len(self.stamp))."""
        idx = np.arange(flat.size)
        self.stamp[flat] = idx
        return self.stamp[flat] == idx

    def _complete(self, ranks: np.ndarray, ops: np.ndarray, t: np.ndarray | None) -> None:
        """Op ops[j] ended on rank ranks[j] at t[j] (None: end already set): its successors
        there lose an input."""
        if t is not None:
            self.end_f[ranks * self.n + ops] = t
        if self.watch_left > 0:
            self.watch_left -= int(np.count_nonzero(self.watch[ops]))
        n1 = self.n + 1
        flat = (self.succ.take(ops, axis=0) + (ranks * n1)[:, None]).reshape(-1)  # take: ~3x []
        w = self.waiting
        if self.plain:
            left = w[flat] - 1
            w[flat] = left
        else:
            np.subtract.at(w, flat, 1)
            left = w[flat]
        now_ready = flat[left == 0]
        if now_ready.size:
            if not self.plain:
                now_ready = now_ready[self._once(now_ready)]   # two inputs ending together
            self._make_ready(now_ready // n1, now_ready % n1,
                             self.plain and not np.count_nonzero(self.crowded[ops]))

    def _make_ready(self, ranks: np.ndarray, ops: np.ndarray, distinct: bool = False) -> None:
        """Queue op ops[j] on its stream of rank ranks[j] (`distinct`: no (stream, rank) pair
        twice)."""
        if not ops.size:
            return
        pair = self.stream_R[ops] + ranks
        keys = self.key[ops]
        rqn = self.rqn_f
        while True:                        # a queue gaining two ops: one per pass
            one = True if distinct else self._once(pair)
            every = distinct or bool(one.all())
            p, k = (pair, keys) if every else (pair[one], keys[one])
            pos = rqn[p]
            if int(pos.max()) >= self.C:
                self.rq = np.concatenate([self.rq, np.full_like(self.rq, BIG)])
                self.C *= 2
            self.rq.reshape(-1)[pos * (self.S * self.R) + p] = k
            rqn[p] = pos + 1
            if every:
                return
            pair, keys = pair[~one], keys[~one]

    def _dispatch(self, mask: np.ndarray, t: np.ndarray) -> None:
        """Each free stream of each rank in `mask` starts its lowest-priority ready op."""
        R, SR = self.R, self.S * self.R
        p = (self.free & (self.rqn > 0) & mask).reshape(-1).nonzero()[0]
        if not p.size:
            return
        count = self.rqn_f[p]
        rq = self.rq.reshape(-1)
        deepest = int(count.max())
        if deepest == 1:
            at = p
        elif deepest == 2:                 # the smaller of two keys (argmin: ~3x slower)
            two = self.rq[:2].take(p, axis=1)
            at = (two[1] < two[0]) * SR + p
        else:
            at = self.rq[:deepest].take(p, axis=1).argmin(axis=0) * SR + p
        ops = self.op_of_key[rq[at]]
        last = (count - 1) * SR + p
        rq[at] = rq[last]
        rq[last] = BIG
        self.rqn_f[p] = count - 1
        self.free_f[p] = False
        r = p % R
        now = t[r]
        self.start_f[r * self.n + ops] = now
        comm = self.is_comm[ops]
        n_comm = int(np.count_nonzero(comm))
        if n_comm < ops.size:
            c = ~comm
            sel = (p, r, ops) if n_comm == 0 else (p[c], r[c], ops[c])
            self._start_compute(*sel)
        if n_comm:
            sel = (p, r, ops, now) if n_comm == ops.size else (p[comm], r[comm], ops[comm],
                                                                now[comm])
            self._start_comm(*sel)

    def _start_compute(self, p: np.ndarray, r: np.ndarray, ops: np.ndarray) -> None:
        """Compute ops `ops` take their stream's compute slot on ranks r (pairs p)."""
        at = r if self.Sc == 1 else self.crow[p // self.R] * self.R + r
        self.cop_f[at] = ops
        self.rem_f[at] = self.work_f[ops * self.R + r]

    def _start_comm(self, p: np.ndarray, r: np.ndarray, ops: np.ndarray,
                    now: np.ndarray) -> None:
        """Collectives `ops` take their stream's collective slot on ranks r (pairs p)."""
        R = self.R
        at = r if self.Sm == 1 else self.mrow[p // R] * R + r
        d = self.ci[ops] * R + r
        self.mop_f[at] = ops
        self.lat_end_f[at] = now + self.lat_f[d]
        for row, nbytes in zip(self.left_f, self.nbytes_f):    # per link: 1-d, ~3x [:, at]
            row[at] = nbytes[d]
        self.smv_f[at] = self.cm_sm_f[d]
        self.open[ops] = True

    def _reschedule(self, mask: np.ndarray, t: np.ndarray, tol: np.ndarray) -> None:
        """Rates of what each rank in `mask` runs at t (`tol`: time_tol(t)), and its next
        event (core._reschedule)."""
        comp = self.cop >= 0
        comm = self.mop >= 0
        taken = _rows(self.smv, np.max)       # 0 but where a collective runs
        lat_left = self.lat_end - t
        moving = comm & (lat_left <= tol)
        h = np.where(comm, lat_left, INF)
        if moving.any():
            bw = self.bw[:, None, None]                                   # [K, 1, 1]
            flowing = moving & (self.left > bw * tol)                     # [K, Sm, R]
            flows = flowing if self.Sm == 1 else flowing.sum(axis=1, keepdims=True)
            v = bw / flows                                                # sharing the link
            lrate = np.where(flowing, v, 0.0)
            slow = np.where(flowing, self.left / v, 0.0)   # >= 0: the slowest link's time
            np.copyto(h, np.maximum(slow[0], slow[1]) if self.K == 2 else
                      slow.max(axis=0, initial=0.0), where=moving)
        else:
            lrate = self.no_rates
        compute_rate = 1.0 - taken
        horizon = np.minimum(_rows(h, np.min),
                             _rows(np.where(comp, self.rem / compute_rate, INF), np.min))
        np.maximum(horizon, 0.0, out=horizon)
        np.copyto(self.rate, compute_rate, where=comp & mask)
        np.copyto(self.lrate, lrate, where=mask)
        np.copyto(self.next_t, t + horizon, where=mask)        # nothing to run: INF


def _rows(a: np.ndarray, reduce) -> np.ndarray:
    """`reduce` over the rows of `a` (one row: the row itself, as numpy's reduce gives)."""
    return a[0] if a.shape[0] == 1 else reduce(a, axis=0)
