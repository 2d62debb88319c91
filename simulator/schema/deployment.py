"""Schemas of a deployment: parallel plan, MTP, precision, routing."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from simulator.schema.base import Sourced, Strict
from simulator.schema.model import ComputePrecision

Phase = Literal["prefill", "decode", "train_fwd", "train_bwd"]
TRAINING_PHASES = ("train_fwd", "train_bwd")


class ParallelPlan(Strict):
    """How the model is laid over GPUs. dp_attention defaults to gpus / (pp * tp)."""

    gpus: int = Field(gt=0)
    gpus_per_node: int = Field(8, gt=0)
    tp: int = Field(1, gt=0, description="tensor parallel degree of dense FFNs (within a node)")
    ep: int = Field(1, gt=0, description="expert parallel degree")
    dp_attention: Optional[int] = Field(None, gt=0, description="data-parallel attention groups")
    pp: int = Field(1, gt=0, description="pipeline stages")
    cp: int = Field(1, gt=0, description="context parallel degree for attention (training)")
    attention_tp: int = Field(
        1, gt=0, description="tensor-parallel attention: heads split over this many GPUs of a "
        "node that hold the same sequences (a runtime's --tp without DP attention); > 1 needs "
        "tp equal to it: the dense FFNs split the same way, and each block ends in an "
        "all-reduce instead of all-gather / reduce-scatter")
    moe_tp: int = Field(1, gt=0, description="tensor parallel degree inside each routed expert "
                        "(its intermediate split); with attention_tp, ep x moe_tp = attention_tp")

    @model_validator(mode="after")
    def _fits(self) -> "ParallelPlan":
        if self.gpus % self.gpus_per_node and self.gpus > self.gpus_per_node:
            raise ValueError(f"gpus ({self.gpus}) must be a multiple of gpus_per_node "
                             f"({self.gpus_per_node})")
        if self.gpus % self.pp:
            raise ValueError(f"pp ({self.pp}) must divide gpus ({self.gpus})")
        if self.ep > self.gpus // self.pp:
            raise ValueError(f"ep ({self.ep}) is larger than the GPUs of one pipeline stage "
                             f"({self.gpus // self.pp})")
        if self.tp > self.gpus_per_node:
            raise ValueError(f"tp ({self.tp}) must fit in one node ({self.gpus_per_node} GPUs)")
        if (self.gpus // self.pp) % self.tp:
            raise ValueError(f"tp ({self.tp}) must divide the GPUs per stage")
        if (self.gpus // self.pp) % (self.tp * self.cp):
            raise ValueError(f"tp x cp ({self.tp} x {self.cp}) must divide the GPUs per stage "
                             f"({self.gpus // self.pp})")
        if (self.gpus // self.pp) % self.ep:
            raise ValueError(f"ep ({self.ep}) must divide the GPUs per stage ({self.gpus // self.pp})")
        if self.attention_tp > 1 and self.tp != self.attention_tp:
            raise ValueError(f"attention_tp ({self.attention_tp}) needs tp equal to it (got tp "
                             f"{self.tp}): tensor-parallel attention splits the dense FFNs too")
        if self.attention_tp > 1 and self.cp > 1:
            raise ValueError("attention_tp > 1 with cp > 1 is not modelled: use one of them")
        if self.moe_tp > 1 and self.attention_tp == 1:
            raise ValueError(f"moe_tp ({self.moe_tp}) is modelled under tensor-parallel "
                             "attention only: set attention_tp (= ep x moe_tp)")
        if self.attention_tp > 1 and (self.ep > 1 or self.moe_tp > 1) and \
                self.ep * self.moe_tp != self.attention_tp:
            raise ValueError(f"ep x moe_tp ({self.ep} x {self.moe_tp}) must equal attention_tp "
                             f"({self.attention_tp}): the experts are spread over the GPUs "
                             "that share the tokens")
        return self

    @property
    def attention_dp(self) -> int:
        """Data-parallel attention groups per pipeline stage."""
        return self.dp_attention or self.gpus // (self.pp * self.tp * self.cp)


class MTPConfig(Strict):
    """Multi-token prediction: speculative decoding in a decode step; in a training step,
    the model's MTP layers trained beside it (their forward, loss and backward)."""

    enabled: bool = False
    draft_tokens: int = Field(1, ge=1)
    acceptance: Optional[float] = Field(None, ge=0, le=1, description="default: the model's")


MAX_ELEMENT_BYTES = 16     # no tensor element is wider (fp64 is 8)


class Precision(Strict):
    """Bytes per element of each tensor class."""

    weight_bytes: float = Field(2.0, gt=0, le=MAX_ELEMENT_BYTES)
    activation_bytes: float = Field(2.0, gt=0, le=MAX_ELEMENT_BYTES)
    kv_bytes: float = Field(2.0, gt=0, le=MAX_ELEMENT_BYTES)
    dispatch_bytes: float = Field(2.0, gt=0, le=MAX_ELEMENT_BYTES, description="all-to-all dispatch payload per element")
    combine_bytes: float = Field(2.0, gt=0, le=MAX_ELEMENT_BYTES, description="all-to-all combine payload per element")
    fp8_scaling: Literal["block", "tensor"] = Field(
        "block", description="how FP8 GEMMs are scaled, choosing their measured tables: block "
        "(128 x 128 blocks: DeepSeek-V3 and Qwen3 FP8 checkpoints) or tensor (one scale per "
        "tensor)")
    compute: ComputePrecision = Field(
        ComputePrecision(), description="compute precision per op class (expert_gemm, "
        "dense_gemm, attention, lm_head: bf16 or fp8); unset: the model's serving_recipe for "
        "inference, bf16 for training. Each is priced at that precision's peak")


class RoutingSpec(Strict):
    """How tokens pick experts: popularity skew, spread of real experts, node limit, replicas."""

    popularity: Literal["uniform", "zipf", "lognormal", "balanced", "round_robin"] = Field(
        "uniform", description="expert popularity: uniform (sampled), zipf or lognormal skew, "
        "balanced: exact balance as profiling runs force it (every expert and every EP rank "
        "gets the same token copies, +-1; a token's experts on distinct ranks), or "
        "round_robin: torchtitan's forced balance (copy i of the batch to expert i mod experts, "
        "so a token's experts are consecutive and share ranks)")
    zipf_s: float = Field(1.0, ge=0, description="Zipf exponent (skew) when popularity: zipf")
    lognormal_sigma: float = Field(1.0, ge=0, description="log-normal sigma when lognormal")
    real_experts_std: float = Field(
        0.0, ge=0, description="std of real (FFN) experts per token, zero-expert models only")
    max_nodes_per_token: Optional[int] = Field(
        None, gt=0, description="node-limited routing: a token reaches at most M nodes")
    expert_groups: Optional[int] = Field(
        None, gt=0, description="group-limited routing (DeepSeek): contiguous expert groups")
    max_groups_per_token: Optional[int] = Field(None, gt=0, description="groups a token may use")
    redundant_experts: int = Field(0, ge=0, description="extra copies of the hottest experts")
    ep_kernel: Literal["auto", "normal", "low_latency"] = Field(
        "auto", description="all-to-all kernel: normal (node-deduplicated, NVLink forwarding) "
        "or low_latency (one copy per expert); auto = low_latency for decode")


class RuntimeSpec(Strict):
    """The engine that runs the model: which of the profile's measured kernel tables price it
    (framework and version), and fixed costs beyond its kernels, each sourced (a runtime
    measurement, e.g. an Nsight Systems trace of your engine): host time per forward step that
    the GPU waits for, and kernels the op graph leaves out. Unset costs: not priced."""

    framework: Optional[Literal["sglang", "trtllm", "vllm"]] = Field(
        None, description="the serving engine whose measured kernel tables price this "
        "workload (the profile's measured_kernels); unset: the newest SGLang the profile has, "
        "else its first")
    version: Optional[str] = Field(
        None, min_length=1, description="that engine's version; unset: the newest the profile "
        "has")

    preset: Optional[str] = Field(
        None, min_length=1, description="the engine's scheduling preset for `serve` "
        "(hardware_profiles/runtimes/serving/NAME.yaml or a path; `moesim runtimes` lists "
        "them): chunked prefill, caps, CUDA graphs, KV reservation, host time; unset: the "
        "preset of `framework` and `version` (SGLang's when unset); none: the kernels alone")
    step_overhead_s: Optional[Sourced] = Field(
        None, description="per forward step: scheduling, batch preparation, sampling, MTP "
        "bookkeeping not hidden under GPU work (seconds)")
    extra_kernels_per_layer: Optional[Sourced] = Field(
        None, description="kernels a layer runs that moesim's op graph folds away (norms, rope, "
        "activation quantisation, split-KV combine, router top-k ...), each paying the "
        "profile's kernel_latency_s")

    @model_validator(mode="after")
    def _non_negative(self) -> "RuntimeSpec":
        for key in ("step_overhead_s", "extra_kernels_per_layer"):
            v = getattr(self, key)
            if v is not None and not v.value >= 0:
                raise ValueError(f"{key} must be a number >= 0 (got {v.value})")
        return self
