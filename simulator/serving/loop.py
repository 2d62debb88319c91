"""The serving event loop: arrivals, a prefill pool, lockstep decode steps, an admission policy.

Request state lives in lists indexed by request id (numpy arrays for the summary). A calendar
indexed by decode step sums what the requests finishing at that step hold (count, context,
context gained per step), so a step costs O(1) plus the requests that start in it; a request's
finishing time is read from the step times at the end. Preemption (the policy's `evict`): an
evicted request leaves its calendar entry and is re-queued for prefill of everything it holds
(recompute).
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from itertools import accumulate
from typing import Callable

import numpy as np

from simulator.errors import MoesimError
from simulator.serving.arrivals import Requests
from simulator.serving.mtp import steps_needed
from simulator.serving.pools import (ADMISSION_POLICIES, PREFILL_POOLS, AdmissionPolicy,
                                     PrefillPool)
from simulator.serving.ready import ReadyQueue
from simulator.serving.result import KV_SAMPLES, ServeResult, summarize
from simulator.serving.state import Deployment
from simulator.serving.step_model import DecodeSteps


IDLE_NUDGE_S = 1e-9     # an idle loop with nothing scheduled later moves time on by this much
ARRIVAL_PROBE = 64      # arrive() searches this many arrivals ahead before the whole rest
COMPACT_SLACK = 64      # rebuild the admission-order list once it holds this many stale ids
PROGRESS_STEPS = 4096   # decode steps between progress reports (an hour has ~2e5)


class Loop:
    """State of one simulation (arrays indexed by request id) and its decode steps."""

    def __init__(self, sim: Deployment, reqs: Requests) -> None:
        self.sim, self.r = sim, reqs
        spec = sim.spec
        n = len(reqs)
        # per-request state as Python lists while the loop runs (a list element is a plain
        # int or float: several times cheaper to read and combine than a numpy scalar);
        # go() hands numpy arrays to summarize
        self.input = reqs.input_tokens.tolist()
        self.output = reqs.output_tokens.tolist()
        self.first = [math.nan] * n
        self.rejected = [False] * n
        self.steps_left = np.maximum(steps_needed(reqs.output_tokens, sim.mtp_draft, sim.acc,
                                                  sim.rng), 1)
        # what a request adds when admitted: context (prompt + first token), context gained per
        # step, and its context at its last step; preempt() recomputes them for its request
        ctx0 = reqs.input_tokens + 1
        rate0 = np.maximum(reqs.output_tokens - 1, 0) / self.steps_left
        self.ctx0, self.rate0 = ctx0.tolist(), rate0.tolist()
        self.fin0 = (ctx0 + self.steps_left * rate0).tolist()
        self.steps_left = self.steps_left.tolist()
        self.steps0 = np.array(self.steps_left)       # decode steps (streamed chunks) each
        self.book = [-1] * n                  # the step a decoding request finishes at, else -1
        self.preemptions = 0
        self.prefill_tokens = 0
        # the decode pool
        self.dp = sim.decode.dp
        self.engine = sim.engine
        self.reserve = self.engine.reserve        # KV reservation share now (rises on retraction)
        self.slots = self.dp * self.engine.max_running
        self.budget = sim.kv_budget_tokens
        self.lag = self.engine.request_s             # client -> engine (HTTP, tokenisation)
        self.arrivals = (reqs.arrival_s + self.lag).tolist()      # as the engine sees them
        self.prefill_q: deque[int] = deque()          # waiting for prefill
        self.ready = ReadyQueue()                      # done with prefill, by (time, id)
        self.active: list[int] = []                   # decoding, in admission order (lazy)
        self.n_active = 0
        # the calendar, indexed by decode step: requests finishing then, their context at their
        # last step and their context gained per step (preempt() takes its request out)
        self.cal_n: list[int] = []
        self.cal_ctx: list[float] = []
        self.cal_rate: list[float] = []
        self.max_steps = max(self.steps_left, default=1)
        self.step_t = [0.0]                            # when each decode step ended
        self.step_ctx = [0.0]                          # KV tokens held after it
        self.sum_ctx = 0.0
        self.sum_rate = 0.0
        self.sum_fin = 0.0         # decoding requests' context at their last step, summed
        self.t = 0.0
        self.step = 0
        self.next_arrival = 0
        self.in_system = 0
        self.unseen_s = 0.0     # request-seconds between an arrival and the step that sees it
        # closed loops and bursts run to completion (a closed loop's finish releases the next
        # arrival; a burst, or a trace all at t = 0, has every arrival in hand)
        self.closed = spec.arrivals.runs_to_completion or bool(len(reqs) and
                                                              not reqs.arrival_s.any())
        self.next_release = int(np.isfinite(reqs.arrival_s).sum()) if self.closed else n
        self.prefill: PrefillPool = PREFILL_POOLS[spec.mode](self)
        self.policy: AdmissionPolicy = ADMISSION_POLICIES[spec.admission]()

    # -- what pools and policies call ------------------------------------------------------
    def arrive(self, upto: float) -> None:
        """Queue every arrival up to `upto` for prefill (reject beyond max_queue)."""
        arrivals, cap = self.arrivals, self.sim.spec.max_queue
        rejected, q = self.rejected, self.prefill_q
        rid = self.next_arrival
        if rid >= len(arrivals) or arrivals[rid] > upto:
            return
        hi = min(rid + ARRIVAL_PROBE, len(arrivals))     # arrivals are sorted; few per call
        n = bisect_right(arrivals, upto, rid, hi)
        if n == hi:
            n = bisect_right(arrivals, upto, hi)
        if len(q) + n - rid <= cap and self.too_big_before[n] == self.too_big_before[rid]:
            q.extend(range(rid, n))                    # all fit, none rejected up front
            self.in_system += n - rid
            self.unseen_s += (n - rid) * (upto + self.lag) - sum(arrivals[rid:n])
            self.next_arrival = n
            return
        while rid < n:
            if not rejected[rid]:
                if len(q) >= cap:
                    rejected[rid] = True
                else:
                    q.append(rid)
                    self.in_system += 1
                    self.unseen_s += upto + self.lag - arrivals[rid]
            rid += 1
        self.next_arrival = rid

    def admit(self, rids: list[int]) -> None:
        """Start decoding `rids` (in this order) at this step; book their finishing steps."""
        step, steps_left, book = self.step, self.steps_left, self.book
        ctx0, rate0, fin0 = self.ctx0, self.rate0, self.fin0
        cal_n, cal_ctx, cal_rate = self.cal_n, self.cal_ctx, self.cal_rate
        if step + self.max_steps >= len(cal_n):
            grow = max(len(cal_n), step + self.max_steps + 1 - len(cal_n))
            cal_n.extend([0] * grow)
            cal_ctx.extend([0.0] * grow)
            cal_rate.extend([0.0] * grow)
        for rid in rids:
            fs = book[rid] = step + steps_left[rid]
            cal_n[fs] += 1
            cal_ctx[fs] += fin0[rid]
            cal_rate[fs] += rate0[rid]
        # sum() with a start adds in the same order as a loop would (one C loop)
        self.sum_ctx = sum(map(ctx0.__getitem__, rids), self.sum_ctx)
        self.sum_rate = sum(map(rate0.__getitem__, rids), self.sum_rate)
        self.sum_fin = sum(map(fin0.__getitem__, rids), self.sum_fin)
        self.active.extend(rids)
        self.n_active += len(rids)

    def decoding(self, rid: int) -> bool:
        """Whether `rid` is in the decode batch now."""
        return self.book[rid] > self.step

    def preempt(self, rid: int) -> None:
        """Evict a decoding request: it goes back to the head of the prefill queue."""
        fs, steps = self.book[rid], self.steps_left[rid]
        self.book[rid] = -1
        self.cal_n[fs] -= 1
        self.cal_ctx[fs] -= self.fin0[rid]
        self.cal_rate[fs] -= self.rate0[rid]
        self.n_active -= 1
        done = self.step - (fs - steps)
        held = self.ctx0[rid] + done * self.rate0[rid]
        self.sum_ctx -= held
        self.sum_rate -= self.rate0[rid]
        self.sum_fin -= self.fin0[rid]
        self.input[rid] = int(held)
        self.output[rid] = out = max(2, self.output[rid] - int(done * self.rate0[rid]))
        self.steps_left[rid] = steps = max(1, steps - done)
        self.ctx0[rid] = ctx = self.input[rid] + 1
        self.rate0[rid] = rate = (out - 1) / steps
        self.fin0[rid] = ctx + steps * rate
        self.prefill_q.appendleft(rid)
        self.preemptions += 1

    # -- the loop --------------------------------------------------------------------------
    def go(self, progress: Callable[[float, float], None] | None = None) -> ServeResult:
        """Run until every request finished, was rejected, or the drain time ran out;
        `progress(t, horizon)`: told the simulated time every PROGRESS_STEPS decode steps."""
        sim, spec = self.sim, self.sim.spec
        arrivals, n = self.arrivals, len(self.r)
        too_big = (self.r.input_tokens + self.r.output_tokens) > self.budget / self.dp
        if self.closed and too_big.any():
            raise MoesimError("serving.input_tokens", f"a request of "
                              f"{int(self.r.input_tokens[too_big][0] + self.r.output_tokens[too_big][0])}"
                              f" tokens does not fit one device's KV budget "
                              f"({self.budget / self.dp:.0f} tokens): a closed-loop client "
                              "would wait for it forever", "shorten the requests, or give the "
                              "decode pool more GPUs or HBM")
        self.rejected = too_big.tolist()                                        # > 1 device
        self.too_big_before = [0, *accumulate(self.rejected)]
        area = 0.0                                   # integral of requests in system
        horizon = 0.0 if self.closed else max(self.r.duration_s, spec.arrivals.duration_s)
        end_limit = math.inf if self.closed else horizon + spec.drain_s
        prefill, policy, ready = self.prefill, self.policy, self.ready
        before_step, arrive, admit, take_chunk = prefill.before_step, self.arrive, \
            policy.admit, prefill.chunk
        chunk_step_s, finish_step = prefill.chunk_step_s, self._finish_step
        step_t, step_ctx = self.step_t, self.step_ctx
        engine, dp = self.engine, self.dp
        decode_s = DecodeSteps(sim.decode, dp, lambda n: engine.padded(engine.per_group(n, dp)))
        step_of = engine.decode_steps(dp)          # a decode-only step's seconds from its GPU's
        retracts = engine.reserve_decay > 0        # the reservation moves with retractions
        prefill_first = engine.prefill_first         # (only colocated pools take chunks)
        per_seq, budget = 1 + sim.mtp_draft, self.budget
        recv_every = recv_count = engine.recv_every   # the scheduler takes in new requests
        while True:                                   # every recv_every decode steps
            if not (self.next_arrival < n or self.prefill_q or ready or self.n_active
                    or prefill.busy()) or self.t > end_limit:
                break
            before_step(self)
            if recv_count >= recv_every or not self.n_active:    # due, or idle
                arrive(self.t)
                recv_count = 0
            admit(self)
            chunk, prefilled = take_chunk(self)
            if not self.n_active and chunk == 0:        # idle: jump to the next event
                cands = [arrivals[self.next_arrival]] if self.next_arrival < n and \
                    arrivals[self.next_arrival] < math.inf else []   # closed: not yet sent
                if ready:
                    cands.append(ready.first_time())
                nxt = prefill.next_event_s()
                if nxt is not None:
                    cands.append(nxt)
                if not cands:
                    if not self.prefill_q:
                        break
                    cands.append(self.t)
                t_next = max(min(cands), self.t)
                area += self.in_system * (t_next - self.t)
                self.t = t_next if t_next > self.t else self.t + IDLE_NUDGE_S
                continue
            recv_count = recv_every if chunk else recv_count + 1   # a prefill: take in next
            if chunk and prefill_first:         # the engine runs the prompts alone; decode
                dt = chunk_step_s(self, chunk, 0.0)[1]          # waits for the next step
                area += self.in_system * dt
                self.t += dt
                if prefilled:
                    for rid in prefilled:
                        self.first[rid] = self.t
                    ready.push(self.t, prefilled)
                continue
            evicted = self.preemptions
            if self.sum_ctx + self.n_active * per_seq > budget:    # the next step's KV
                policy.evict(self)
            if retracts:
                self.reserve = engine.reserve_next(self.reserve, self.preemptions > evicted)
            gpu_s = decode_s(self.n_active, self.sum_ctx)
            if chunk:
                dt, first_dt = chunk_step_s(self, chunk, gpu_s)
            else:
                dt = first_dt = step_of(gpu_s, self.n_active)
            area += self.in_system * dt
            t0 = self.t
            self.t = t = t0 + dt
            self.step += 1
            if prefilled:                     # colocated: first token when its chunk ends
                first = t0 + first_dt
                for rid in prefilled:
                    self.first[rid] = first
                ready.push(t, prefilled)
            finish_step()
            step_t.append(t)
            step_ctx.append(self.sum_ctx)
            if progress is not None and not self.step % PROGRESS_STEPS:
                progress(t, horizon)
        if self.closed:                     # the arrival times the clients' finishes set
            self.r = Requests(np.array(arrivals) - self.lag, self.r.input_tokens,
                              self.r.output_tokens)
        kv_t, kv_u = np.array(step_t[1:]), np.array(step_ctx[1:]) / self.budget
        keep = np.unique(np.linspace(0, len(kv_t) - 1, min(len(kv_t), KV_SAMPLES)).astype(int)) \
            if len(kv_t) else np.array([], dtype=int)
        book = np.array(self.book, dtype=np.int64)
        done = (book >= 0) & (book <= self.step)
        self.finish = np.where(done, np.array(step_t)[np.where(done, book, 0)], np.nan)
        self.first = np.array(self.first)
        self.rejected = np.array(self.rejected, dtype=bool)
        return summarize(self, self.t, area + self.unseen_s, kv_t[keep], kv_u[keep])

    def _finish_step(self) -> None:
        """Grow every decoding request's context by a step; retire those finishing now."""
        step = self.step
        sum_ctx, sum_rate = self.sum_ctx + self.sum_rate, self.sum_rate
        left = self.cal_n[step] if step < len(self.cal_n) else 0
        if left:
            sum_ctx -= self.cal_ctx[step]
            sum_rate -= self.cal_rate[step]
            self.sum_fin -= self.cal_ctx[step]
            self.n_active -= left
            self.in_system -= left
            if len(self.active) > 2 * self.n_active + COMPACT_SLACK:
                book = self.book
                self.active = [rid for rid in self.active if book[rid] > step]
            if self.closed:
                self._release(left)
        if not self.n_active:
            sum_ctx, sum_rate = 0.0, 0.0     # clear float drift when the pool empties
            self.sum_fin = 0.0
        self.sum_ctx, self.sum_rate = sum_ctx, sum_rate

    def _release(self, k: int) -> None:
        """Closed loop: `k` clients just got their answers; each sends its next request now."""
        arrivals, j = self.arrivals, self.next_release
        stop = min(j + k, len(arrivals))
        t = self.t + self.lag
        for rid in range(j, stop):
            arrivals[rid] = t
        self.next_release = stop
