"""The serving engine around the kernels, as the serving loop asks it: what a decode batch is
padded to and whether it replays a CUDA graph, how long a step takes once the host's work and
kernel launches are added, how a prefill chunk shares a step with decode, how much KV an
admission reserves, and whether a prompt may start prefill at all. Built from a preset
(hardware_profiles/runtimes/serving/), or `ideal()`: the kernels alone, prefill chunks added to
decode steps, every waiting prompt prefilled, no reservation.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Callable

from simulator.schema import ServingRuntime


@dataclass(frozen=True)
class EnginePolicy:
    """One engine's scheduling numbers, per attention group (data-parallel rank)."""

    name: str
    mixing: str                      # "separate", "mixed", or "added" (no engine)
    chunk_tokens: int                # prompt-token budget of a step
    max_running: int                 # requests decoding at once
    graph_sizes: tuple[int, ...]     # captured decode batches
    padding: bool                    # batches padded up to a captured size
    overlap: bool                    # host work of step n+1 under the GPU work of step n
    reserve: float                   # share of remaining output reserved at admission
    reserve_after: float             # ... right after a retraction
    reserve_decay: float             # fall back per decode step from reserve_after to reserve
    host_s: float                    # host seconds a step
    eager_s: float                   # host seconds to launch a whole step eagerly
    request_s: float                 # seconds before the engine sees a request
    kv_transfer_s: float             # disaggregated: fixed seconds per KV transfer
    wait_steps: int = 0              # delayed batching: steps new prompts may be held ...
    wait_ratio: float = 0.0          # ... until they and decode fill this share of the budget
    recv_every: int = 1              # decode steps between the scheduler's takes of new requests

    @classmethod
    def from_runtime(cls, rt: ServingRuntime, layers: int, chunk_tokens: int | None,
                     max_running: int | None, hbm_bytes: float = 0.0) -> "EnginePolicy":
        """The preset's policy for a model of `layers` layers on GPUs of `hbm_bytes`; a
        workload's own chunk and running cap (when it sets them) win over the preset's."""
        chunk = rt.chunked_prefill_tokens.value
        if rt.large_gpu is not None and hbm_bytes > rt.large_gpu.hbm_gb_above * 1e9:
            chunk = rt.large_gpu.chunked_prefill_tokens.value
        reserve = rt.kv_reserve_output.value
        after = rt.kv_reserve_after_retraction
        steps = rt.kv_reserve_recovery_steps
        decay = (after.value - reserve) / steps.value if after and steps else 0.0
        return cls(name=rt.name, mixing=rt.mixing, chunk_tokens=int(chunk_tokens or chunk),
                   max_running=int(max_running or rt.max_running_requests.value),
                   graph_sizes=tuple(rt.cuda_graph_batch_sizes),
                   padding=rt.cuda_graph_padding, overlap=rt.overlap_scheduler,
                   reserve=reserve, reserve_after=after.value if after else reserve,
                   reserve_decay=decay, host_s=rt.host_s_per_step.value,
                   eager_s=layers * rt.eager_s_per_layer.value,
                   request_s=rt.request_overhead_s.value, kv_transfer_s=rt.kv_transfer_s.value)

    @classmethod
    def ideal(cls, chunk_tokens: int, max_running: int) -> "EnginePolicy":
        """No engine: every batch priced as it is, no host time, chunks added to decode."""
        return cls(name="none", mixing="added", chunk_tokens=chunk_tokens,
                   max_running=max_running, graph_sizes=(), padding=True, overlap=True,
                   reserve=0.0, reserve_after=0.0, reserve_decay=0.0, host_s=0.0, eager_s=0.0,
                   request_s=0.0, kv_transfer_s=0.0)

    # -- decode ---------------------------------------------------------------------------
    def per_group(self, n: int, dp: int) -> float:
        """Sequences the busiest of `dp` attention groups decodes when `n` run: an engine's
        DP controller deals requests round-robin (at most one apart), and the step waits for
        its busiest group; no engine: the mean."""
        return float(-(-n // dp)) if self.graph_sizes else n / dp

    def padded(self, seqs: float) -> float:
        """The batch a decode step of `seqs` sequences per group computes: the next captured
        size when padding applies, else `seqs`."""
        sizes = self.graph_sizes
        if not self.padding or not sizes or seqs > sizes[-1]:
            return seqs
        return float(sizes[bisect.bisect_left(sizes, seqs)])

    def graphed(self, seqs: float) -> bool:
        """Whether a decode batch of `seqs` per group replays a CUDA graph."""
        sizes = self.graph_sizes
        if not sizes:
            return True                  # no engine: nothing launched by the host
        if self.padding:
            return seqs <= sizes[-1]
        b = math.ceil(seqs)
        i = bisect.bisect_left(sizes, b)
        return i < len(sizes) and sizes[i] == b

    def step_s(self, gpu_s: float, graphed: bool) -> float:
        """A step's seconds from its GPU time: an eager step takes at least its launches;
        the host's own work is exposed in full, or (overlap scheduler) beyond the GPU's."""
        busy = gpu_s if graphed else max(gpu_s, self.eager_s)
        host = self.host_s if not self.overlap else max(0.0, self.host_s - busy)
        return busy + host

    def decode_step_s(self, gpu_s: float, seqs: float) -> float:
        """A decode-only step of `seqs` sequences per group."""
        return self.step_s(gpu_s, self.graphed(seqs)) if gpu_s > 0 else 0.0

    def decode_steps(self, dp: int) -> Callable[[float, int], float]:
        """decode_step_s by (GPU seconds, requests decoding over `dp` groups) for the serving
        loop's every step: the group's graph status worked out once per request count, and
        the GPU time itself where a graphed step adds nothing (no host time to expose)."""
        graphed: dict[int, bool] = {}
        plain = self.host_s == 0.0                  # a graphed step is its GPU time

        def step(gpu_s: float, n: int) -> float:
            g = graphed.get(n)
            if g is None:
                g = graphed[n] = self.graphed(self.per_group(n, dp))
            if gpu_s <= 0:
                return 0.0
            return gpu_s if g and plain else self.step_s(gpu_s, g)
        return step

    # -- prefill chunks -------------------------------------------------------------------
    def batch_waits(self, decoding: int, dp: int) -> bool:
        """Whether delayed batching applies to this step's new prompts: set, requests
        decoding, and no attention data parallelism (TensorRT-LLM's PyExecutor._schedule
        calls _waiting_requests only then)."""
        return self.wait_steps > 0 and decoding > 0 and dp == 1

    def holds_prompts(self, held_steps: int, prompt_tokens: float,
                      decode_tokens: float) -> bool:
        """Whether delayed batching holds the waiting prompts once more (TensorRT-LLM's
        _waiting_requests): fewer than wait_steps steps have held them and their tokens with
        the decode tokens stay under wait_ratio of the step's token budget."""
        return held_steps < self.wait_steps and \
            prompt_tokens + decode_tokens < self.wait_ratio * self.chunk_tokens

    @property
    def prefill_first(self) -> bool:
        """Whether a step that takes prompt tokens runs them alone, decode waiting for the
        next step (SGLang: the scheduler runs a prefill batch whenever it can form one)."""
        return self.mixing == "separate"

    @property
    def gates_prefill(self) -> bool:
        """Whether a prompt starts prefill only when the batch has room for it (a running
        slot, and KV for its prompt and reserved output), as every engine's scheduler does;
        no engine: every waiting prompt is prefilled and waits for room after."""
        return self.mixing != "added"

    def chunk_budget(self, decoding_per_group: float) -> float:
        """Prompt tokens one group may take into the next step: the whole chunk (separate
        steps), or what decode tokens leave of the step's budget (mixed)."""
        if self.mixing == "mixed":
            return max(0.0, self.chunk_tokens - decoding_per_group)
        return float(self.chunk_tokens)

    def admits(self, held: float, reserved_out: float, need: float, need_out: float,
               budget: float, reserve: float) -> bool:
        """Whether a request needing `need` KV tokens now and `need_out` more by its end
        fits, beside `held` tokens held and `reserved_out` still to come of those running,
        reserving the share `reserve` of what is to come."""
        r = reserve
        return held + r * reserved_out + need + r * need_out <= budget

    def reserve_next(self, reserve: float, retracted: bool) -> float:
        """The reservation share for the next step: back up to reserve_after when this step
        retracted a request, else falling back toward the preset's share."""
        if retracted:
            return self.reserve_after
        return max(self.reserve, reserve - self.reserve_decay)
