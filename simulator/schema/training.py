"""Schema of a training run: batch, pipeline schedule, memory options."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from simulator.schema.base import Sourced, Strict


class TrainingRuntime(Strict):
    """A training framework's host side: the CPU time it spends launching one transformer
    layer's kernels, and each chunk pass's own. A pass of a stage takes at least its host
    time (the GPU cannot run ahead of the launches; MoE layers sync the host at every
    dispatch, so it cannot queue far ahead either). A preset under
    hardware_profiles/runtimes/training/."""

    name: str
    description: str = ""
    host_s_per_layer_forward: Sourced = Field(
        description="host seconds to launch one layer's forward kernels")
    backward_host_ratio: Sourced = Field(
        description="a layer's backward host time over its forward's")
    host_s_per_pass: Sourced | None = Field(
        None, description="host seconds each pass of one micro-batch through one model chunk "
        "costs beyond its layers' launches (the pipeline schedule's step: posting and waiting "
        "on its point-to-point sends, the forward_step / backward_step call, the autograd "
        "call); an interleaved stage runs one per virtual stage; unset: none")
    dp_bucket_params: Sourced | None = Field(
        None, description="parameters per data-parallel bucket: a bucket's gradient "
        "reduce-scatter starts once the backward has produced all its gradients, its parameter "
        "all-gather before the forward needs them; unset: one bucket per transformer layer "
        "(FSDP's unit)")
    dp_bucket_params_per_rank: Sourced | None = Field(
        None, description="bucket parameters per data-parallel rank: the bucket is the larger "
        "of dp_bucket_params and this times the data-parallel degree")
    kernel_tables: Literal["sglang", "trtllm", "vllm"] | None = Field(
        None, description="the serving engine whose measured kernel tables run the kernels "
        "this framework runs (its GEMM and grouped-GEMM libraries), where the profile has "
        "them and the workload's runtime names none; unset: the workload's runtime alone")
    kernel_tables_source: str = Field(
        "", description="why those tables: the kernel libraries both call")


class TrainingSpec(Strict):
    """Global batch, micro-batching, pipeline schedule, ZeRO and recomputation."""

    global_batch_sequences: int = Field(gt=0, description="sequences per optimizer step")
    micro_batch_sequences: int = Field(1, gt=0, description="sequences per micro-batch per rank")
    pipeline: Literal["1f1b", "interleaved", "zb-v", "dualpipe"] = Field(
        "1f1b", description="pipeline schedule: 1f1b, interleaved 1F1B, zero-bubble V, or "
        "dualpipe (DeepSeek-V3: bidirectional, forward and backward chunks overlapped; even pp "
        "and micro-batches; two stages' parameters per device)")
    virtual_stages: int = Field(2, gt=0, description="chunks per device for interleaved 1F1B")
    ep_overlap: bool = Field(
        False, description="Megatron-Core's combined 1F1B (--overlap-moe-expert-parallel-comm): "
        "in the steady state a micro-batch's forward runs merged with another's backward, "
        "each one's EP all-to-all hidden under the other's compute; pipeline 1f1b or "
        "interleaved")
    recompute: Literal["none", "selective", "moe", "full"] = Field(
        "none", description="activation recomputation in backward: none; selective (norms and "
        "FFN activation functions re-run, their outputs not kept); moe (the MoE block re-run: "
        "router, dispatch, experts, combine; only its input kept, as Megatron's "
        "--recompute-modules moe); full (the whole forward re-run, only each layer's input "
        "kept). true / false read as full / none")

    @field_validator("recompute", mode="before")
    @classmethod
    def _bool_recompute(cls, v: object) -> object:
        return {True: "full", False: "none"}.get(v, v) if isinstance(v, bool) else v
    zero_stage: Literal[0, 1, 2, 3] = 1
    uneven_stages: bool = Field(False, description="allow layers not divisible by pp")
    grad_bytes: float = Field(4.0, gt=0, description="bytes per gradient element")
    optimizer_bytes_per_param: float = Field(12.0, gt=0, description="fp32 master + 2 moments")
    tokens_to_train: float = Field(20e12, gt=0, description="for days and $ (CLI --tokens)")
    framework: str = Field("megatron-core", description="training framework whose host time "
                           "per layer bounds each pass (`moesim runtimes`; presets in "
                           "hardware_profiles/runtimes/training/)")
