"""Serving pools and policies: small classes with one interface each, so a new prefill pool or a
new admission policy is one class (register it in PREFILL_POOLS / ADMISSION_POLICIES).

The decode pool runs lockstep steps in serving/loop.py (its state seen here as
`state.LoopState`). Around each step:
- a PrefillPool turns queued prompts into requests ready to decode: `before_step` runs the
  pool's own clock (disaggregated), `chunk` takes prompt tokens into this decode step
  (colocated), `chunk_step_s` prices the step that carries them, as the engine
  (engine_policy.py) batches a chunk with decode;
- an AdmissionPolicy moves ready requests (`run.ready`, a ReadyQueue by ready time and id) into
  the decode batch (`admit`, which calls `run.admit(ids)`) and, when the next step would
  overflow the KV budget, picks who is evicted (`evict`).
"""
from __future__ import annotations

from typing import Protocol

from simulator.serving.state import LoopState


BUSY_EPS_S = 1e-12      # a prefill batch ending within this of now has ended
WHOLE_QUEUE_MAX = 256   # a prefill queue up to this long is first tried as one batch
NO_CHUNK: tuple[float, list[int]] = (0.0, [])     # no prompt tokens this step (never mutated)


def chunk_shape(chunk_tokens: float, dp: int, mean_prompt: float) -> tuple[float, float]:
    """(sequences, context) per device that price a colocated prefill chunk on the tokens that
    exist: `chunk_tokens` spread over `dp` ranks, whole prompts while a rank's share holds one,
    else one partial prompt of the share's length (the MoE and all-to-all then carry exactly
    the chunk's tokens; attention of a rank holding more of one prompt is priced at the share)."""
    per_dev = chunk_tokens / dp
    ctx = min(max(mean_prompt, 1.0), per_dev)
    return per_dev / ctx, ctx


class PrefillPool(Protocol):
    """Where prompts are prefilled."""

    def before_step(self, run: LoopState) -> None:
        """Advance the pool's own work up to run.t (finished prompts go to run.ready)."""

    def chunk(self, run: LoopState) -> tuple[float, list[int]]:
        """Prompt tokens taken into this decode step, and the requests they complete."""

    def chunk_step_s(self, run: LoopState, chunk: float, decode_gpu_s: float) -> tuple[float, float]:
        """Seconds of a step carrying `chunk` prompt tokens beside a decode forward of
        `decode_gpu_s` GPU seconds, and when (from its start) its prompts' first tokens come."""

    def busy(self) -> bool:
        """Work in flight that will produce ready requests by itself."""

    def next_event_s(self) -> float | None:
        """When the pool next produces something (None: nothing pending on its own clock)."""


class DisaggregatedPrefill:
    """A separate pool: batches of whole prompts up to its token budget (computed tokens: prefix
    cache hits excluded), on its own clock; the KV cache then crosses the NIC to the decode pool
    (overlapped with all but the last layer)."""

    def __init__(self, run: LoopState) -> None:
        sim, spec = run.sim, run.sim.spec
        self.dp = sim.prefill.dp
        self.budget = spec.prefill.max_tokens_per_device * self.dp
        self.nic = sim.profile.nic.bandwidth_Bps.value
        self.layers = sim.model.num_layers
        self.busy_until = 0.0
        self.first_s = 0.0                  # when the batch in flight reaches the decode pool
        self.batch: list[int] = []

    def before_step(self, run: LoopState) -> None:
        if self.batch and self.busy_until <= run.t + BUSY_EPS_S:
            run.ready.push(self.first_s, self.batch)      # the whole batch at one time
            self.batch = []
        if self.batch or not run.prefill_q:
            return
        start = max(run.t, self.busy_until)
        run.arrive(start)
        miss = 1.0 - run.sim.w.prefix_hit_rate      # the budget counts computed tokens
        q, inputs, budget = run.prefill_q, run.input, self.budget
        # the whole queue fits when its prompt tokens do: an integer sum is exact, and each
        # prefix of computed tokens (miss x size, summed in floats) is at most the prompt tokens
        tokens = sum(map(inputs.__getitem__, q)) if len(q) <= WHOLE_QUEUE_MAX else budget + 1
        if tokens <= budget:
            batch = list(q)
            q.clear()
        else:
            batch, tokens = self._take(q, inputs, miss)
        per_dev = tokens / self.dp
        seqs = max(1.0, len(batch) / self.dp)
        dt = run.engine.step_s(run.sim.prefill.step_s(seqs, per_dev / seqs), False)
        kv_bytes = tokens * run.sim.kv_token_bytes / self.dp
        exposed = max(kv_bytes / self.nic - dt * (self.layers - 1) / self.layers,
                      kv_bytes / self.nic / self.layers)
        self.busy_until = start + dt
        self.first_s = first = start + dt + exposed + run.engine.kv_transfer_s
        firsts = run.first
        for rid in batch:
            firsts[rid] = first
        run.prefill_tokens += tokens
        self.batch = batch

    def _take(self, q, inputs: list[int], miss: float) -> tuple[list[int], int]:
        """The queue's first prompts while their computed tokens fit the budget (at least
        one), and their tokens."""
        pop, budget = q.popleft, self.budget
        rid = pop()
        batch, tokens, computed = [rid], inputs[rid], miss * inputs[rid]
        while q:
            rid = pop()
            size = inputs[rid]
            more = computed + miss * size
            if more > budget:
                q.appendleft(rid)                     # the next batch's first
                break
            batch.append(rid)
            tokens += size
            computed = more
        return batch, tokens

    def chunk(self, run: LoopState) -> tuple[float, list[int]]:
        return NO_CHUNK

    def chunk_step_s(self, run: LoopState, chunk: float, decode_gpu_s: float) -> tuple[float, float]:
        dt = run.engine.decode_step_s(decode_gpu_s, run.engine.per_group(run.n_active, run.dp))
        return dt, dt

    def busy(self) -> bool:
        return bool(self.batch)

    def next_event_s(self) -> float | None:
        return self.busy_until if self.batch else None


class ColocatedPrefill:
    """Chunked prefill inside the decode pool's steps: up to the engine's chunk x dp prompt
    tokens a step (mixed engines: what the step's decode tokens leave of it); a prompt's first
    token when the step (separate engines: the prefill part of it) that completes it ends."""

    def __init__(self, run: LoopState) -> None:
        self.left: dict[int, float] = {}
        self.held = 0                   # steps delayed batching has held new prompts

    def before_step(self, run: LoopState) -> None:
        return None

    def chunk(self, run: LoopState) -> tuple[float, list[int]]:
        used = 0.0
        completed: list[int] = []
        q = run.prefill_q
        eng = run.engine
        budget = eng.chunk_budget(eng.per_group(run.n_active, run.dp)) * run.dp
        if q and q[0] not in self.left and eng.batch_waits(run.n_active, run.dp):
            if eng.holds_prompts(self.held, self._waiting_tokens(run, budget),
                                 run.n_active * (1 + run.sim.mtp_draft)):
                self.held += 1
                return NO_CHUNK
            self.held = 0
        room = _Room(run) if eng.gates_prefill else None
        while q and used < budget:
            rid = q[0]
            rem = self.left.get(rid)
            if rem is None:                    # a new prompt: only where the batch has room
                if room is not None and not room.take(rid):
                    break
                rem = float(run.input[rid])
            take = min(rem, budget - used)
            used += take
            rem -= take
            run.prefill_tokens += int(take)
            if rem <= 0:
                q.popleft()
                self.left.pop(rid, None)
                completed.append(rid)
            else:
                self.left[rid] = rem
                break
        return used, completed

    def _waiting_tokens(self, run: LoopState, budget: float) -> float:
        """The prompt tokens the scheduler would take now: the queue's, up to the budget."""
        tokens, left, inputs = 0.0, self.left, run.input
        for rid in run.prefill_q:
            tokens += left.get(rid, inputs[rid])
            if tokens >= budget:
                return budget
        return tokens

    def chunk_step_s(self, run: LoopState, chunk: float, decode_gpu_s: float) -> tuple[float, float]:
        eng, sim, dp = run.engine, run.sim, run.dp
        seqs = eng.per_group(run.n_active, dp)
        mean = sim.spec.input_tokens.mean
        if eng.mixing == "mixed" and run.n_active:   # one forward: the chunk and the decode
            tokens = chunk + run.n_active              # tokens through the GEMMs, plus the
            gpu = sim.prefill.step_s(*chunk_shape(tokens, dp, mean)) + \
                sim.decode.attention_share(eng.padded(seqs), run.sum_ctx / run.n_active) * \
                decode_gpu_s                           # decode's attention over its KV
            dt = eng.step_s(gpu, False)
            return dt, dt
        pre = eng.step_s(sim.prefill.step_s(*chunk_shape(chunk, dp, mean)), False)
        if eng.prefill_first:                         # decode waits for the next step
            return pre, pre
        return pre + eng.decode_step_s(decode_gpu_s, seqs), pre

    def busy(self) -> bool:
        return False

    def next_event_s(self) -> float | None:
        return None


class _Room:
    """What a gated engine has left for new prompts this step: running slots beside those
    decoding, and KV beside what they hold and reserve; none while a prefilled request still
    waits to join (the batch is full). An empty batch always takes the first prompt (one that
    could never fit was rejected on arrival)."""

    def __init__(self, run: LoopState) -> None:
        self.run = run
        self.n = run.n_active
        self.ctx = run.sum_ctx
        self.out = run.sum_fin - run.sum_ctx
        self.full = len(run.ready) > 0
        self.per_seq = 1 + run.sim.mtp_draft

    def take(self, rid: int) -> bool:
        """Whether prompt `rid` fits; if so, count it in."""
        run = self.run
        if self.full or self.n >= run.slots:
            return False
        need, out = run.ctx0[rid], run.fin0[rid] - run.ctx0[rid]
        if self.n and not run.engine.admits(self.ctx + (self.n + 1) * self.per_seq, self.out,
                                            need, out if run.reserve else 0.0, run.budget,
                                            run.reserve):
            return False
        self.n += 1
        self.ctx += need
        self.out += out
        return True


class AdmissionPolicy(Protocol):
    """Who joins the decode batch, and who leaves it when the KV cache would overflow."""

    def admit(self, run: LoopState) -> None:
        """Move ready requests (run.ready, by ready time) into the batch."""

    def evict(self, run: LoopState) -> None:
        """Evict until the next step's KV growth fits the budget."""


class FcfsAdmission:
    """First come, first served while slots and the KV budget allow (the budget holding what
    each running request holds plus the engine's reservation for its remaining output); evict
    the newest first (recompute: an evicted request is prefilled again with everything it
    holds)."""

    def admit(self, run: LoopState) -> None:
        ready, t, slots, budget, ctx0, fin0 = run.ready, run.t, run.slots, run.budget, \
            run.ctx0, run.fin0
        fits, reserve = run.engine.admits, run.reserve
        per_seq = 1 + run.sim.mtp_draft
        while run.n_active < slots:
            ids = ready.front(t, slots - run.n_active)
            if not ids:
                return
            n = run.n_active + len(ids)
            out = run.sum_fin - run.sum_ctx          # what the running requests still add
            need = sum(map(ctx0.__getitem__, ids))
            # all of them fit? (their output to come only counted where the engine reserves)
            if fits(run.sum_ctx + n * per_seq, out, need,
                    sum(map(fin0.__getitem__, ids)) - need if reserve else 0.0, budget,
                    reserve):
                ready.drop(len(ids))                 # all of them fit (the need grows with each)
                run.admit(ids)
                continue
            ctx, n, k = run.sum_ctx, run.n_active, 0
            for rid in ids:                 # the KV budget, request by request
                n += 1                      # an empty batch takes its first request (one
                if n > 1 and not fits(ctx + n * per_seq, out, ctx0[rid],    # that never fits
                                      fin0[rid] - ctx0[rid], budget, reserve):  # was rejected)
                    break
                ctx += ctx0[rid]
                out += fin0[rid] - ctx0[rid]
                k += 1
            ready.drop(k)
            run.admit(ids[:k] if k < len(ids) else ids)
            if k < len(ids):
                return

    def evict(self, run: LoopState) -> None:
        while run.n_active and run.sum_ctx + run.n_active * (1 + run.sim.mtp_draft) > run.budget:
            rid = run.active.pop()
            if run.decoding(rid):
                run.preempt(rid)


PREFILL_POOLS = {"disaggregated": DisaggregatedPrefill, "colocated": ColocatedPrefill}
ADMISSION_POLICIES = {"fcfs": FcfsAdmission}
