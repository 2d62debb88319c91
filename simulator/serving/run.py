"""Request-level serving simulation: arrivals, prefill and decode pools, KV cache, MTP.

Decode runs in lockstep steps of the whole pool (the EP all-to-all synchronises its ranks); each
step's time comes from the engine (step_model.py) at the pool's (sequences per device, context)
bucket. Request state lives in numpy arrays; a calendar keyed by decode step holds who finishes
when, so a step costs O(1) plus the requests that start or finish in it.

MTP: a request needing L output tokens with d drafts at acceptance a finishes after N steps, with
N drawn at admission as the first n where n + Binomial(n, a) >= L (d = 1; d > 1 uses the mean gain).
Preemption: when the next step would overflow the KV budget, the newest requests are evicted and
re-queued for prefill of everything they hold (recompute).
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from simulator.serving.arrivals import Requests, generate, load_trace
from simulator.schema import HardwareProfile, Workload
from simulator.pricing.cost import cost_per_million_tokens
from simulator.errors import MoesimError
from simulator.loading import load_model, load_profile
from simulator.graph.memory import inference_memory
from simulator.graph.params import kv_elements_per_token
from simulator.graph.model import Shape
from simulator.schema import ServingSpec
from simulator.serving.step_model import StepModel

KV_SAMPLES = 2000


@dataclass
class ServeResult:
    """Per-request outcomes, pool counters and the metrics dict."""

    metrics: dict
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2e_s: np.ndarray
    kv_t: np.ndarray
    kv_util: np.ndarray
    notes: list[str] = field(default_factory=list)


class _Calendar:
    """Decode steps at which admitted requests finish."""

    def __init__(self) -> None:
        self.by_step: dict[int, list[int]] = {}

    def add(self, step: int, rid: int) -> None:
        self.by_step.setdefault(step, []).append(rid)

    def pop(self, step: int) -> list[int]:
        return self.by_step.pop(step, [])


def _steps_needed(out: np.ndarray, draft: int, acc: float, rng: np.random.Generator) -> np.ndarray:
    """Decode steps for each request to emit `out` tokens (the first comes from prefill).

    With one draft token: the first passage of n + Binomial(n, a) past the need, sampled exactly
    (a binomial jump to 4 sigma below the mean passage, then step by step); more drafts use the
    mean gain 1 + a + a^2 + ...
    """
    need = np.maximum(out - 1, 0).astype(np.int64)
    if draft == 0 or acc <= 0:
        return need
    gain = 1 + sum(acc ** i for i in range(1, draft + 1))
    if draft > 1 or acc >= 1:
        return np.maximum(np.ceil(need / gain).astype(np.int64), (need > 0).astype(np.int64))
    est = need / gain
    n = np.maximum(np.floor(est - 4 * np.sqrt(est * acc * (1 - acc) + 1) - 1), 0).astype(np.int64)
    tokens = n + rng.binomial(n, acc)
    short = tokens < need
    while short.any():
        idx = np.nonzero(short)[0]
        tokens[idx] += 1 + (rng.random(idx.size) < acc)
        n[idx] += 1
        short[idx] = tokens[idx] < need[idx]
    return n


def chunk_shape(chunk_tokens: float, dp: int, mean_prompt: float) -> tuple[float, float]:
    """(sequences, context) per device that price a colocated prefill chunk on the tokens that
    exist: `chunk_tokens` spread over `dp` ranks, whole prompts while a rank's share holds one,
    else one partial prompt of the share's length (the MoE and all-to-all then carry exactly
    the chunk's tokens; attention of a rank holding more of one prompt is priced at the share)."""
    per_dev = chunk_tokens / dp
    ctx = min(max(mean_prompt, 1.0), per_dev)
    return per_dev / ctx, ctx


class ServingSim:
    """One serving deployment under one arrival stream."""

    def __init__(self, w: Workload, rate: float | None = None, duration: float | None = None,
                 profile: "HardwareProfile | None" = None):
        if w.serving is None:
            raise MoesimError("serving", "the workload has no serving block",
                              "add `serving:` (see workloads/serving/) or use `moesim simulate`")
        spec: ServingSpec = w.serving
        arr = spec.arrivals
        if rate is not None or duration is not None:    # CLI overrides, validated like YAML
            arr = arr.variant(**{k: v for k, v in (("rate_per_s", rate),
                                                   ("duration_s", duration)) if v is not None})
        self.spec = spec.variant(arrivals=arr)
        self.w = w
        self.model = load_model(w.model)
        self.profile = profile or load_profile(w.hardware)
        self.rng = np.random.default_rng(w.seed)
        dec, pre = self.spec.decode, self.spec.prefill
        self.decode = StepModel(w, dec.plan or w.plan, dec.schedule or w.schedule, "decode",
                                dec.max_batch_per_device, self.profile)
        self.prefill = StepModel(w, pre.plan or w.plan, pre.schedule or w.schedule, "prefill",
                                 max(1, pre.max_tokens_per_device), self.profile)
        self.mtp_draft = w.mtp.draft_tokens if (w.mtp.enabled and self.model.mtp_layers) else 0
        self.acc = (w.mtp.acceptance if w.mtp.acceptance is not None
                    else self.model.mtp_acceptance) if self.mtp_draft else 0.0
        self.kv_token_bytes = kv_elements_per_token(self.model) * w.precision.kv_bytes
        self.kv_budget_tokens = self._kv_budget()

    # -- capacity ---------------------------------------------------------------------------
    def _kv_budget(self) -> float:
        """KV tokens the decode pool can hold: (HBM - weights - activations) / KV bytes."""
        dec = self.spec.decode
        plan = dec.plan or self.w.plan
        shape = Shape("decode", dec.max_batch_per_device, 1 + self.mtp_draft, 0)
        mem = inference_memory(self.model, plan, self.w.precision, shape, bool(self.mtp_draft),
                               self.w.routing.redundant_experts)
        free = self.profile.hbm_bytes.value - mem.weights - mem.activations
        if free <= 0:
            raise MoesimError("serving.decode.plan", f"the weights do not fit the decode pool: "
                              f"{mem.weights / 1e9:.1f} GB of weights + {mem.activations / 1e9:.1f}"
                              f" GB of activations per GPU against {self.profile.hbm_bytes.value / 1e9:.0f} GB",
                              "raise ep (or tp), use precision.weight_bytes: 1, or a larger GPU")
        if self.spec.mode == "disaggregated":
            pplan = self.spec.prefill.plan or self.w.plan
            pshape = Shape("prefill", 1, self.spec.prefill.max_tokens_per_device, 0)
            pmem = inference_memory(self.model, pplan, self.w.precision, pshape, False,
                                    self.w.routing.redundant_experts)
            if pmem.weights + pmem.activations > self.profile.hbm_bytes.value:
                raise MoesimError("serving.prefill.plan", "the weights do not fit the prefill "
                                  f"pool: {pmem.describe()} per GPU",
                                  "raise the prefill pool's ep, or lower max_tokens_per_device")
        return free / self.kv_token_bytes * self.decode.dp

    def capacity_rps(self) -> float:
        """Highest sustainable arrival rate (requests/s) of the deployment."""
        s = self.spec
        mean_in, mean_out = s.input_tokens.mean, s.output_tokens.mean
        gain = 1 + (self.acc if self.mtp_draft else 0)
        ctx = mean_in + mean_out / 2
        slots = min(self.decode.dp * s.decode.max_batch_per_device,
                    self.kv_budget_tokens / (mean_in + mean_out))
        per_dev = max(1.0, slots / self.decode.dp)
        step = self.decode.step_s(per_dev, ctx)
        decode_rps = slots / (max(mean_out - 1, 1) / gain * step)
        tok = s.prefill.max_tokens_per_device if s.mode == "disaggregated" else \
            s.chunk_tokens_per_device
        seqs = max(1.0, tok / mean_in)
        pstep = self.prefill.step_s(seqs, mean_in)
        pdp = self.prefill.dp if s.mode == "disaggregated" else self.decode.dp
        prefill_rps = pdp * seqs / pstep
        if s.mode == "colocated":       # both share the same steps
            return 1.0 / (1.0 / decode_rps + 1.0 / prefill_rps)
        return min(decode_rps, prefill_rps)

    # -- run --------------------------------------------------------------------------------
    def requests(self) -> Requests:
        """The arrival stream of this run."""
        a = self.spec.arrivals
        if a.process == "trace":
            return load_trace(a.trace)
        return generate(a, self.spec.input_tokens, self.spec.output_tokens, self.rng)

    def run(self, check_stability: bool = True) -> ServeResult:
        """Simulate every request to completion (or rejection)."""
        reqs = self.requests()
        n = len(reqs)
        horizon = max(reqs.duration_s, self.spec.arrivals.duration_s)
        if check_stability and n:
            cap = self.capacity_rps()
            offered = n / max(horizon, 1e-9)
            if offered > cap:
                raise MoesimError("serving.arrivals.rate_per_s", f"the system is unstable: "
                                  f"{offered:.2f} requests/s offered, but the deployment serves at "
                                  f"most {cap:.2f} requests/s (highest sustainable rate)",
                                  f"use --rate {0.9 * cap:.2f} or less, or add GPUs")
        return _Run(self, reqs).go()


class _Run:
    """State of one simulation (arrays indexed by request id)."""

    def __init__(self, sim: ServingSim, reqs: Requests) -> None:
        self.sim, self.r = sim, reqs
        n = len(reqs)
        self.input = reqs.input_tokens.copy()
        self.output = reqs.output_tokens.copy()
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.rejected = np.zeros(n, dtype=bool)
        self.ctx_at_admit = np.zeros(n)
        self.rate = np.zeros(n)               # context tokens gained per step while decoding
        self.epoch = np.zeros(n, dtype=np.int64)
        self.steps_left = _steps_needed(self.output, sim.mtp_draft, sim.acc, sim.rng)
        self.admit_step = np.zeros(n, dtype=np.int64)
        self.preemptions = 0
        self.prefill_tokens = 0

    def go(self) -> ServeResult:
        sim, spec = self.sim, self.sim.spec
        arrivals = self.r.arrival_s
        n = len(self.r)
        dp = sim.decode.dp
        slots = dp * spec.decode.max_batch_per_device
        budget = sim.kv_budget_tokens
        colocated = spec.mode == "colocated"
        max_ctx = budget / dp                       # one device's whole KV budget
        too_big = (self.input + self.output) > max_ctx
        self.rejected[too_big] = True
        prefill_q: deque[int] = deque()             # waiting for prefill
        ready: list[tuple[float, int]] = []         # heap (ready time, id) after prefill
        active: list[int] = []                      # decoding, in admission order (lazy)
        in_active = np.zeros(n, dtype=bool)
        n_active = 0
        cal = _Calendar()
        sum_ctx = 0.0
        sum_rate = 0.0
        t = 0.0
        step = 0
        nxt = 0                                      # next arrival index
        prefill_busy_until = 0.0
        prefill_batch: list[int] = []
        chunk_left: dict[int, float] = {}
        area = 0.0                                   # integral of requests in system
        in_system = 0
        kv_t: list[float] = []
        kv_u: list[float] = []
        end_limit = max(self.r.duration_s, spec.arrivals.duration_s) + spec.drain_s
        pre_dp = sim.prefill.dp if not colocated else dp
        pre_budget = spec.prefill.max_tokens_per_device * pre_dp
        chunk_budget = spec.chunk_tokens_per_device * dp
        nic = sim.profile.nic.bandwidth_Bps.value
        n_layers = sim.model.num_layers

        def arrive(upto: float) -> None:
            nonlocal nxt, in_system
            while nxt < n and arrivals[nxt] <= upto:
                if not self.rejected[nxt]:
                    if len(prefill_q) >= spec.max_queue:
                        self.rejected[nxt] = True
                    else:
                        prefill_q.append(nxt)
                        in_system += 1
                nxt += 1

        while True:
            pending = nxt < n or prefill_q or ready or n_active or prefill_batch
            if not pending or t > end_limit:
                break
            if not colocated:
                # prefill pool: finish the running batch, start the next one
                if prefill_batch and prefill_busy_until <= t + 1e-12:
                    for rid in prefill_batch:
                        heapq.heappush(ready, (self.first[rid], rid))
                    prefill_batch = []
                if not prefill_batch and prefill_q:
                    start = max(t, prefill_busy_until)
                    arrive(start)
                    batch, tokens = [], 0
                    while prefill_q and (not batch or tokens + self.input[prefill_q[0]] <= pre_budget):
                        rid = prefill_q.popleft()
                        batch.append(rid)
                        tokens += int(self.input[rid])
                    per_dev = tokens / pre_dp
                    seqs = max(1.0, len(batch) / pre_dp)
                    dt = sim.prefill.step_s(seqs, per_dev / seqs)
                    kv_bytes = tokens * sim.kv_token_bytes / pre_dp
                    exposed = max(kv_bytes / nic - dt * (n_layers - 1) / n_layers,
                                  kv_bytes / nic / n_layers)
                    prefill_busy_until = start + dt
                    for rid in batch:
                        self.first[rid] = start + dt + exposed
                    self.prefill_tokens += tokens
                    prefill_batch = batch
            # decode step boundary: admit ready requests while slots and KV allow
            arrive(t)
            while ready and ready[0][0] <= t and n_active < slots:
                rid = ready[0][1]
                need = self.input[rid] + 1
                if sum_ctx + need + (n_active + 1) * (1 + sim.mtp_draft) > budget:
                    break
                heapq.heappop(ready)
                self._admit(rid, step, cal)
                active.append(rid)
                in_active[rid] = True
                n_active += 1
                sum_ctx += self.input[rid] + 1
                sum_rate += self.rate[rid]
            chunk, prefilled = 0.0, []
            if colocated:
                chunk, prefilled = self._colocated_prefill(prefill_q, chunk_left, chunk_budget)
            if not n_active and chunk == 0:
                # idle: jump to the next event
                cands = [arrivals[nxt]] if nxt < n else []
                if ready:
                    cands.append(ready[0][0])
                if prefill_batch:
                    cands.append(prefill_busy_until)
                if not cands:
                    if not prefill_q:
                        break
                    cands.append(t)
                t_next = max(min(cands), t)
                area += in_system * (t_next - t)
                t = t_next if t_next > t else t + 1e-9
                continue
            # preempt newest requests if this step would overflow the KV budget
            growth = n_active * (1 + sim.mtp_draft)
            while n_active and sum_ctx + growth > budget:
                rid = active.pop()
                if not in_active[rid]:
                    continue
                in_active[rid] = False
                n_active -= 1
                done = step - self.admit_step[rid]
                held = self.ctx_at_admit[rid] + done * self.rate[rid]
                sum_ctx -= held
                sum_rate -= self.rate[rid]
                self.epoch[rid] += 1
                self.input[rid] = int(held)
                self.steps_left[rid] = max(1, self.steps_left[rid] - done)
                self.output[rid] = max(2, self.output[rid] - int(done * self.rate[rid]))
                prefill_q.appendleft(rid)
                self.preemptions += 1
                growth = n_active * (1 + sim.mtp_draft)
            per_dev = n_active / dp
            ctx = sum_ctx / n_active if n_active else 0.0
            dt = (sim.decode.step_s(per_dev, ctx) if n_active else 0.0)
            if colocated and chunk:
                dt += sim.prefill.step_s(*chunk_shape(chunk, dp, spec.input_tokens.mean))
            area += in_system * dt
            t += dt
            step += 1
            for rid in prefilled:             # colocated: first token at the end of this step
                self.first[rid] = t
                heapq.heappush(ready, (t, rid))
            sum_ctx += sum_rate
            for rid in cal.pop(step):
                if not in_active[rid] or self.admit_step[rid] + self.steps_left[rid] != step:
                    continue
                in_active[rid] = False
                n_active -= 1
                self.finish[rid] = t
                sum_ctx -= self.ctx_at_admit[rid] + self.steps_left[rid] * self.rate[rid]
                sum_rate -= self.rate[rid]
                in_system -= 1
            if len(active) > 2 * n_active + 64:
                active = [rid for rid in active if in_active[rid]]
            if not n_active:
                sum_ctx, sum_rate = 0.0, 0.0     # clear float drift when the pool empties
            kv_t.append(t)
            kv_u.append(sum_ctx / budget)
        keep = np.unique(np.linspace(0, len(kv_t) - 1, min(len(kv_t), KV_SAMPLES)).astype(int)) \
            if kv_t else np.array([], dtype=int)
        self.steps = step
        return self._result(t, area, np.array(kv_t)[keep], np.array(kv_u)[keep])

    def _admit(self, rid: int, step: int, cal: _Calendar) -> None:
        steps = int(max(self.steps_left[rid], 1))
        self.steps_left[rid] = steps
        self.admit_step[rid] = step
        self.ctx_at_admit[rid] = self.input[rid] + 1
        self.rate[rid] = max(self.output[rid] - 1, 0) / steps
        cal.add(step + steps, rid)

    def _colocated_prefill(self, q: deque, left: dict, budget: float) -> tuple[float, list[int]]:
        """Chunked prefill inside a colocated step: tokens processed, requests completed."""
        used = 0.0
        completed: list[int] = []
        while q and used < budget:
            rid = q[0]
            rem = left.get(rid, float(self.input[rid]))
            take = min(rem, budget - used)
            used += take
            rem -= take
            self.prefill_tokens += int(take)
            if rem <= 0:
                q.popleft()
                left.pop(rid, None)
                completed.append(rid)
            else:
                left[rid] = rem
                break
        return used, completed

    def _result(self, t_end: float, area: float, kv_t: np.ndarray, kv_u: np.ndarray) -> ServeResult:
        sim, spec = self.sim, self.sim.spec
        done = ~np.isnan(self.finish)
        arrived = len(self.r)
        rejected = int(self.rejected.sum())
        unfinished = arrived - rejected - int(done.sum())
        arr = self.r.arrival_s
        ttft = (self.first - arr)[done]
        e2e = (self.finish - arr)[done]
        out = self.r.output_tokens[done]
        tpot = np.where(out > 1, (self.finish - self.first)[done] / np.maximum(out - 1, 1), 0.0)
        makespan = max(t_end, 1e-9)
        price = sim.profile.price_per_gpu_hour.value
        dec_gpus = (spec.decode.plan or self.sim.w.plan).gpus
        pre_gpus = 0 if spec.mode == "colocated" else (spec.prefill.plan or self.sim.w.plan).gpus
        out_tokens = float(self.r.output_tokens[done].sum())
        in_tokens = float(self.r.input_tokens[done].sum())
        dec_rate = out_tokens / (dec_gpus * makespan)
        pre_rate = in_tokens / (max(pre_gpus, dec_gpus if spec.mode == "colocated" else 1) * makespan)
        slo = spec.slo
        good = int(((ttft <= slo.ttft_ms / 1e3) & (tpot <= slo.tpot_ms / 1e3)).sum())
        horizon = max(self.r.duration_s, spec.arrivals.duration_s)

        def pct(x: np.ndarray) -> dict:
            if x.size == 0:
                return {"p50": None, "p90": None, "p99": None}
            p = np.percentile(x * 1e3, [50, 90, 99])
            return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}

        mean_in_system = area / makespan
        lam = (arrived - rejected) / makespan
        metrics = {
            "workload": sim.w.name, "mode": spec.mode,
            "ttft_ms": pct(ttft), "tpot_ms": pct(tpot), "e2e_ms": pct(e2e),
            "tokens_per_s_per_user": float(np.mean(1.0 / tpot[tpot > 0])) if (tpot > 0).any() else None,
            "decode_tokens_per_gpu_s": dec_rate, "prefill_tokens_per_gpu_s": pre_rate,
            "cost_per_million_output_tokens": cost_per_million_tokens(price, dec_rate) if dec_rate else None,
            "cost_per_million_input_tokens": (cost_per_million_tokens(price, pre_rate)
                                              if pre_gpus and pre_rate else None),
            "cost_per_million_output_tokens_all_gpus": (
                cost_per_million_tokens(price, out_tokens / ((dec_gpus + pre_gpus) * makespan))
                if out_tokens else None),
            "requests": {"arrived": arrived, "finished": int(done.sum()), "rejected": rejected,
                         "unfinished": unfinished, "preempted": self.preemptions},
            "goodput_rps": good / max(horizon, 1e-9), "slo": spec.slo.model_dump(),
            "kv_utilisation": {"mean": float(kv_u.mean()) if kv_u.size else 0.0,
                               "max": float(kv_u.max()) if kv_u.size else 0.0},
            "kv_budget_tokens": sim.kv_budget_tokens,
            "little": {"mean_in_system": mean_in_system,
                       "lambda_times_w": lam * float(e2e.mean()) if e2e.size else 0.0},
            "simulated_s": makespan, "decode_steps": self.steps,
            "step_shapes_simulated": len(sim.decode.cache) + len(sim.prefill.cache),
        }
        return ServeResult(metrics, ttft, tpot, e2e, kv_t, kv_u)
