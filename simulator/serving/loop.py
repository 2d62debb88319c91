"""The serving event loop: arrivals, a prefill pool, lockstep decode steps, an admission policy.

Request state lives in lists indexed by request id (numpy arrays for the summary); a calendar keyed by decode step holds
who finishes when, so a step costs O(1) plus the requests that start or finish in it.
Preemption (the policy's `evict`): an evicted request is re-queued for prefill of everything it
holds (recompute).
"""
from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from itertools import accumulate
from typing import TYPE_CHECKING

import numpy as np

from simulator.serving.arrivals import Requests
from simulator.serving.mtp import steps_needed
from simulator.serving.pools import (ADMISSION_POLICIES, PREFILL_POOLS, AdmissionPolicy,
                                     PrefillPool)
from simulator.serving.ready import ReadyQueue
from simulator.serving.result import KV_SAMPLES, ServeResult, summarize

if TYPE_CHECKING:
    from simulator.serving.run import ServingSim

IDLE_NUDGE_S = 1e-9     # an idle loop with nothing scheduled later moves time on by this much
COMPACT_SLACK = 64      # rebuild the admission-order list once it holds this many stale ids


class Loop:
    """State of one simulation (arrays indexed by request id) and its decode steps."""

    def __init__(self, sim: ServingSim, reqs: Requests) -> None:
        self.sim, self.r = sim, reqs
        spec = sim.spec
        n = len(reqs)
        # per-request state as Python lists while the loop runs (a list element is a plain
        # int or float: several times cheaper to read and combine than a numpy scalar);
        # go() hands numpy arrays to summarize
        self.input = reqs.input_tokens.tolist()
        self.output = reqs.output_tokens.tolist()
        self.first = [math.nan] * n
        self.finish = [math.nan] * n
        self.rejected = [False] * n
        self.ctx_at_admit = [0.0] * n
        self.rate = [0.0] * n                 # context tokens gained per step while decoding
        self.epoch = [0] * n
        self.steps_left = steps_needed(reqs.output_tokens, sim.mtp_draft, sim.acc,
                                       sim.rng).tolist()
        self.admit_step = [0] * n
        self.preemptions = 0
        self.prefill_tokens = 0
        # the decode pool
        self.dp = sim.decode.dp
        self.slots = self.dp * spec.decode.max_batch_per_device
        self.budget = sim.kv_budget_tokens
        self.arrivals = reqs.arrival_s.tolist()
        self.prefill_q: deque[int] = deque()          # waiting for prefill
        self.ready = ReadyQueue()                      # done with prefill, by (time, id)
        self.active: list[int] = []                   # decoding, in admission order (lazy)
        self.in_active = [False] * n
        self.n_active = 0
        self.calendar: dict[int, list[int]] = {}      # decode step -> requests finishing then
        self.sum_ctx = 0.0
        self.sum_rate = 0.0
        self.t = 0.0
        self.step = 0
        self.next_arrival = 0
        self.in_system = 0
        self.prefill: PrefillPool = PREFILL_POOLS[spec.mode](self)
        self.policy: AdmissionPolicy = ADMISSION_POLICIES[spec.admission]()

    # -- what pools and policies call ------------------------------------------------------
    def arrive(self, upto: float) -> None:
        """Queue every arrival up to `upto` for prefill (reject beyond max_queue)."""
        arrivals, cap = self.arrivals, self.sim.spec.max_queue
        rejected, q = self.rejected, self.prefill_q
        rid = self.next_arrival
        n = bisect_right(arrivals, upto, rid)          # arrivals are sorted
        if n == rid:
            return
        if len(q) + n - rid <= cap and self.too_big_before[n] == self.too_big_before[rid]:
            q.extend(range(rid, n))                    # all fit, none rejected up front
            self.in_system += n - rid
            self.next_arrival = n
            return
        while rid < n:
            if not rejected[rid]:
                if len(q) >= cap:
                    rejected[rid] = True
                else:
                    q.append(rid)
                    self.in_system += 1
            rid += 1
        self.next_arrival = rid

    def admit(self, rids: list[int]) -> None:
        """Start decoding `rids` (in this order) at this step; book their finishing steps."""
        step, steps_left, admit_step, inputs = self.step, self.steps_left, self.admit_step, \
            self.input
        ctx_at_admit, output, rate_of, in_active = self.ctx_at_admit, self.output, self.rate, \
            self.in_active
        book = self.calendar.setdefault
        sum_ctx, sum_rate = self.sum_ctx, self.sum_rate
        for rid in rids:
            steps = steps_left[rid]
            if steps < 1:
                steps = steps_left[rid] = 1
            admit_step[rid] = step
            ctx = inputs[rid] + 1
            ctx_at_admit[rid] = ctx
            o = output[rid] - 1
            rate = rate_of[rid] = (o if o > 0 else 0) / steps
            book(step + steps, []).append(rid)
            in_active[rid] = True
            sum_ctx += ctx
            sum_rate += rate
        self.active.extend(rids)
        self.n_active += len(rids)
        self.sum_ctx, self.sum_rate = sum_ctx, sum_rate

    def preempt(self, rid: int) -> None:
        """Evict a decoding request: it goes back to the head of the prefill queue."""
        self.in_active[rid] = False
        self.n_active -= 1
        done = self.step - self.admit_step[rid]
        held = self.ctx_at_admit[rid] + done * self.rate[rid]
        self.sum_ctx -= held
        self.sum_rate -= self.rate[rid]
        self.epoch[rid] += 1
        self.input[rid] = int(held)
        self.steps_left[rid] = max(1, self.steps_left[rid] - done)
        self.output[rid] = max(2, self.output[rid] - int(done * self.rate[rid]))
        self.prefill_q.appendleft(rid)
        self.preemptions += 1

    # -- the loop --------------------------------------------------------------------------
    def go(self) -> ServeResult:
        """Run until every request finished, was rejected, or the drain time ran out."""
        sim, spec = self.sim, self.sim.spec
        arrivals, n = self.r.arrival_s.tolist(), len(self.r)
        too_big = (self.r.input_tokens + self.r.output_tokens) > self.budget / self.dp
        self.rejected = too_big.tolist()                                        # > 1 device
        self.too_big_before = [0, *accumulate(self.rejected)]
        area = 0.0                                   # integral of requests in system
        kv_t: list[float] = []
        kv_u: list[float] = []
        end_limit = max(self.r.duration_s, spec.arrivals.duration_s) + spec.drain_s
        prefill, policy, ready = self.prefill, self.policy, self.ready
        before_step, arrive, admit, take_chunk = prefill.before_step, self.arrive, \
            policy.admit, prefill.chunk
        decode_step_s, extra_s, finish_step = sim.decode.step_s, prefill.step_extra_s, \
            self._finish_step
        dp, budget = self.dp, self.budget
        while True:
            if not (self.next_arrival < n or self.prefill_q or ready or self.n_active
                    or prefill.busy()) or self.t > end_limit:
                break
            before_step(self)
            arrive(self.t)
            admit(self)
            chunk, prefilled = take_chunk(self)
            if not self.n_active and chunk == 0:        # idle: jump to the next event
                cands = [arrivals[self.next_arrival]] if self.next_arrival < n else []
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
            policy.evict(self)
            n_active = self.n_active
            dt = (decode_step_s(n_active / dp, self.sum_ctx / n_active) if n_active else 0.0) \
                + extra_s(self, chunk)
            area += self.in_system * dt
            self.t = t = self.t + dt
            self.step += 1
            if prefilled:                     # colocated: first token at the end of this step
                for rid in prefilled:
                    self.first[rid] = t
                ready.push(t, prefilled)
            finish_step()
            kv_t.append(t)
            kv_u.append(self.sum_ctx / budget)
        keep = np.unique(np.linspace(0, len(kv_t) - 1, min(len(kv_t), KV_SAMPLES)).astype(int)) \
            if kv_t else np.array([], dtype=int)
        self.first, self.finish = np.array(self.first), np.array(self.finish)
        self.rejected = np.array(self.rejected, dtype=bool)
        return summarize(self, self.t, area, np.array(kv_t)[keep], np.array(kv_u)[keep])

    def _finish_step(self) -> None:
        sum_ctx, sum_rate = self.sum_ctx + self.sum_rate, self.sum_rate
        done = self.calendar.pop(self.step, None)
        if done:
            in_active, admit_step, steps_left = self.in_active, self.admit_step, self.steps_left
            ctx_at_admit, rate, step, t = self.ctx_at_admit, self.rate, self.step, self.t
            finish, left = self.finish, 0
            for rid in done:
                if not in_active[rid] or admit_step[rid] + steps_left[rid] != step:
                    continue                    # preempted since it was booked
                in_active[rid] = False
                finish[rid] = t
                r = rate[rid]
                sum_ctx -= ctx_at_admit[rid] + steps_left[rid] * r
                sum_rate -= r
                left += 1
            self.n_active -= left
            self.in_system -= left
            if len(self.active) > 2 * self.n_active + COMPACT_SLACK:
                self.active = [rid for rid in self.active if in_active[rid]]
        if not self.n_active:
            sum_ctx, sum_rate = 0.0, 0.0     # clear float drift when the pool empties
        self.sum_ctx, self.sum_rate = sum_ctx, sum_rate
