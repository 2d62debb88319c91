"""Schema of a serving engine's scheduling preset (hardware_profiles/runtimes/serving/NAME.yaml):
how the engine batches prefill with decode, its caps, its CUDA graphs, its KV reservation, and
the costs around its kernels, each number with its source."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from simulator.schema.base import Sourced, Strict


class LargeGpuDefaults(Strict):
    """Defaults an engine picks on GPUs above a memory size."""

    hbm_gb_above: float = Field(gt=0, description="GPU memory (GB) above which these apply")
    chunked_prefill_tokens: Sourced


class ServingRuntime(Strict):
    """One engine and version line as it schedules requests. Numbers an engine's documentation
    or source states are cited; the few it does not state (host time, kernels the op graph
    folds away, per-request overhead) are named calibrations with their command."""

    name: str
    description: str = ""
    engine: Literal["sglang", "vllm", "trtllm"]
    versions: str = Field(min_length=1, description="the version line this preset describes")
    mixing: Literal["separate", "mixed"] = Field(
        description="separate: a step with prompt tokens runs them alone (decode waits a "
        "step); mixed: one forward carries the decode tokens and a prefill chunk, the chunk "
        "filling what the token budget leaves")
    mixing_source: str = Field(min_length=3)
    chunked_prefill_tokens: Sourced = Field(
        description="prompt tokens one attention group takes into a step (the token budget)")
    large_gpu: Optional[LargeGpuDefaults] = Field(None, description="the engine's defaults on "
                                                  "GPUs with more memory (e.g. B200)")
    max_running_requests: Sourced = Field(description="requests decoding at once, per "
                                          "attention group")
    cuda_graph_batch_sizes: list[int] = Field(min_length=1, description="decode batches "
                                              "captured as CUDA graphs (per attention group)")
    cuda_graph_padding: bool = Field(description="a decode batch is padded up to the next "
                                     "captured size (true), or runs eagerly unless its size "
                                     "was captured (false); above the largest it runs eagerly")
    cuda_graph_source: str = Field(min_length=3)
    overlap_scheduler: bool = Field(description="the host prepares step n+1 while the GPU "
                                    "runs step n (host time hidden up to the GPU's)")
    overlap_source: str = Field(min_length=3)
    kv_reserve_output: Sourced = Field(description="share of a request's remaining output "
                                       "tokens its admission reserves in the KV cache (1: never "
                                       "evicts; 0: admits on the prompt alone and evicts by "
                                       "recompute when the cache runs out)")
    kv_reserve_after_retraction: Optional[Sourced] = Field(
        None, description="the reservation share right after a retraction, falling back to "
        "kv_reserve_output over kv_reserve_recovery_steps (unset: it stays kv_reserve_output)")
    kv_reserve_recovery_steps: Optional[Sourced] = Field(
        None, description="decode steps the reservation takes to fall back after a retraction")
    host_s_per_step: Sourced = Field(description="host seconds a step's scheduling, sampling "
                                     "and output processing take")
    eager_s_per_layer: Sourced = Field(description="host seconds to launch one layer's kernels "
                                       "outside a CUDA graph (a step is at least its launches)")
    extra_kernels_per_layer: Sourced = Field(
        description="kernels a layer runs that the op graph folds away (norms, rope, "
        "activation quantisation, router top-k, permutes ...), each at the profile's "
        "kernel_latency_s")
    request_overhead_s: Sourced = Field(description="seconds between a client sending a "
                                        "request and the engine queueing it (HTTP, "
                                        "tokenisation), counted in its TTFT")
    kv_transfer_s: Sourced = Field(description="disaggregated: fixed seconds per KV transfer "
                                   "from a prefill to a decode worker beyond its bytes")

    @model_validator(mode="after")
    def _ranges(self) -> "ServingRuntime":
        chunks = [("chunked_prefill_tokens", self.chunked_prefill_tokens.value)]
        if self.large_gpu is not None:
            chunks.append(("large_gpu.chunked_prefill_tokens",
                           self.large_gpu.chunked_prefill_tokens.value))
        for key, v in chunks + [("max_running_requests", self.max_running_requests.value)]:
            if not (v >= 1 and v == int(v)):
                raise ValueError(f"{key} must be a whole number >= 1 (got {v})")
        for key in ("host_s_per_step", "eager_s_per_layer", "extra_kernels_per_layer",
                    "request_overhead_s", "kv_transfer_s"):
            if not getattr(self, key).value >= 0:
                raise ValueError(f"{key} must be >= 0 (got {getattr(self, key).value})")
        after = self.kv_reserve_after_retraction
        if after is not None and not self.kv_reserve_output.value <= after.value <= 1:
            raise ValueError("kv_reserve_after_retraction must lie in [kv_reserve_output, 1]")
        if (after is None) != (self.kv_reserve_recovery_steps is None) or (
                self.kv_reserve_recovery_steps is not None and
                not self.kv_reserve_recovery_steps.value >= 1):
            raise ValueError("kv_reserve_after_retraction and kv_reserve_recovery_steps (>= 1) "
                             "come together")
        if not 0 <= self.kv_reserve_output.value <= 1:
            raise ValueError(f"kv_reserve_output must lie in [0, 1] (got "
                             f"{self.kv_reserve_output.value})")
        sizes = self.cuda_graph_batch_sizes
        if any(b < 1 for b in sizes) or sizes != sorted(set(sizes)):
            raise ValueError("cuda_graph_batch_sizes must be increasing whole numbers >= 1")
        return self
