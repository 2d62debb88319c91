"""The serving event loop: arrivals, a prefill pool, lockstep decode steps, an admission policy.

Request state lives in lists indexed by request id (numpy arrays for the summary); a calendar keyed by decode step holds
who finishes when, so a step costs O(1) plus the requests that start or finish in it.
Preemption (the policy's `evict`): an evicted request is re-queued for prefill of everything it
holds (recompute).
"""
from __future__ import annotations

import heapq
import math
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from simulator.serving.arrivals import Requests
from simulator.serving.mtp import steps_needed
from simulator.serving.pools import (ADMISSION_POLICIES, PREFILL_POOLS, AdmissionPolicy,
                                     PrefillPool)
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
        self.ready: list[tuple[float, int]] = []      # heap (ready time, id) after prefill
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
        arrivals, n, cap = self.arrivals, len(self.arrivals), self.sim.spec.max_queue
        rejected, q = self.rejected, self.prefill_q
        rid = self.next_arrival
        while rid < n and arrivals[rid] <= upto:
            if not rejected[rid]:
                if len(q) >= cap:
                    rejected[rid] = True
                else:
                    q.append(rid)
                    self.in_system += 1
            rid += 1
        self.next_arrival = rid

    def admit(self, rid: int) -> None:
        """Start decoding `rid` at this step; book its finishing step."""
        steps = int(max(self.steps_left[rid], 1))
        step = self.step
        self.steps_left[rid] = steps
        self.admit_step[rid] = step
        ctx = self.input[rid] + 1
        self.ctx_at_admit[rid] = ctx
        rate = max(self.output[rid] - 1, 0) / steps
        self.rate[rid] = rate
        self.calendar.setdefault(step + steps, []).append(rid)
        self.active.append(rid)
        self.in_active[rid] = True
        self.n_active += 1
        self.sum_ctx += ctx
        self.sum_rate += rate

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
        area = 0.0                                   # integral of requests in system
        kv_t: list[float] = []
        kv_u: list[float] = []
        end_limit = max(self.r.duration_s, spec.arrivals.duration_s) + spec.drain_s
        while True:
            pending = (self.next_arrival < n or self.prefill_q or self.ready or self.n_active
                       or self.prefill.busy())
            if not pending or self.t > end_limit:
                break
            self.prefill.before_step(self)
            self.arrive(self.t)
            self.policy.admit(self)
            chunk, prefilled = self.prefill.chunk(self)
            if not self.n_active and chunk == 0:        # idle: jump to the next event
                cands = [arrivals[self.next_arrival]] if self.next_arrival < n else []
                if self.ready:
                    cands.append(self.ready[0][0])
                nxt = self.prefill.next_event_s()
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
            self.policy.evict(self)
            dt = self._decode_step_s() + self.prefill.step_extra_s(self, chunk)
            area += self.in_system * dt
            self.t += dt
            self.step += 1
            for rid in prefilled:             # colocated: first token at the end of this step
                self.first[rid] = self.t
                heapq.heappush(self.ready, (self.t, rid))
            self._finish_step()
            kv_t.append(self.t)
            kv_u.append(self.sum_ctx / self.budget)
        keep = np.unique(np.linspace(0, len(kv_t) - 1, min(len(kv_t), KV_SAMPLES)).astype(int)) \
            if kv_t else np.array([], dtype=int)
        self.first, self.finish = np.array(self.first), np.array(self.finish)
        self.rejected = np.array(self.rejected, dtype=bool)
        return summarize(self, self.t, area, np.array(kv_t)[keep], np.array(kv_u)[keep])

    def _decode_step_s(self) -> float:
        if not self.n_active:
            return 0.0
        return self.sim.decode.step_s(self.n_active / self.dp, self.sum_ctx / self.n_active)

    def _finish_step(self) -> None:
        self.sum_ctx += self.sum_rate
        in_active, admit_step, steps_left = self.in_active, self.admit_step, self.steps_left
        ctx_at_admit, rate, step, t = self.ctx_at_admit, self.rate, self.step, self.t
        for rid in self.calendar.pop(step, ()):
            if not in_active[rid] or admit_step[rid] + steps_left[rid] != step:
                continue
            in_active[rid] = False
            self.n_active -= 1
            self.finish[rid] = t
            self.sum_ctx -= ctx_at_admit[rid] + steps_left[rid] * rate[rid]
            self.sum_rate -= rate[rid]
            self.in_system -= 1
        if len(self.active) > 2 * self.n_active + COMPACT_SLACK:
            self.active = [rid for rid in self.active if self.in_active[rid]]
        if not self.n_active:
            self.sum_ctx, self.sum_rate = 0.0, 0.0     # clear float drift when the pool empties
