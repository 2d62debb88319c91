"""Schemas of a model: attention block, routed experts, the whole LLM."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from simulator.schema.base import Strict


class AttentionSpec(Strict):
    """One attention block. MLA (DeepSeek/LongCat) or GQA (Llama/Qwen/Mixtral)."""

    kind: Literal["mla", "gqa"]
    num_heads: int = Field(gt=0)
    # GQA
    num_kv_heads: int = Field(0, ge=0, description="GQA key/value heads")
    head_dim: int = Field(0, ge=0, description="GQA head dimension")
    # MLA
    q_lora_rank: int = Field(0, ge=0, description="MLA query low rank (0 = full-rank query)")
    kv_lora_rank: int = Field(0, ge=0)
    qk_nope_head_dim: int = Field(0, ge=0)
    qk_rope_head_dim: int = Field(0, ge=0)
    v_head_dim: int = Field(0, ge=0)
    # sliding-window attention (gpt-oss, Mistral): windowed blocks attend to the last keys only
    sliding_window: int = Field(0, ge=0, description="keys a query of a windowed block "
                                "attends to at most (0: no window)")
    sliding_window_share: float = Field(
        1.0, ge=0, le=1, description="share of the attention blocks that are windowed (gpt-oss: "
        "0.5, every other layer); the attention core is priced at the blocks' mean keys per "
        "query")

    @model_validator(mode="after")
    def _dims_present(self) -> "AttentionSpec":
        if self.kind == "gqa" and (self.num_kv_heads <= 0 or self.head_dim <= 0):
            raise ValueError("GQA attention needs num_kv_heads > 0 and head_dim > 0")
        if self.kind == "mla" and min(self.kv_lora_rank, self.qk_nope_head_dim,
                                      self.qk_rope_head_dim, self.v_head_dim) <= 0:
            raise ValueError("MLA attention needs kv_lora_rank, qk_nope_head_dim, "
                             "qk_rope_head_dim and v_head_dim > 0")
        if self.kind == "gqa" and self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


class MoESpec(Strict):
    """Routed experts of an MoE layer, including zero-computation (identity) experts."""

    num_experts: int = Field(gt=0, description="routed FFN experts")
    num_zero_experts: int = Field(0, ge=0, description="zero-computation (identity) experts")
    top_k: int = Field(gt=0)
    expert_intermediate: int = Field(gt=0)
    num_shared_experts: int = Field(0, ge=0)
    real_experts_per_token: Optional[float] = Field(
        None, gt=0, description="mean FFN (non-zero) experts per token; default top_k")
    router_scoring: Literal["softmax", "sigmoid"] = "softmax"

    @model_validator(mode="after")
    def _k_fits(self) -> "MoESpec":
        if self.top_k > self.num_experts + self.num_zero_experts:
            raise ValueError("top_k exceeds the number of experts")
        if self.real_experts_per_token is not None and self.real_experts_per_token > self.top_k:
            raise ValueError("real_experts_per_token cannot exceed top_k")
        if self.num_zero_experts == 0 and self.real_experts_per_token not in (None, self.top_k):
            raise ValueError("without zero-computation experts real_experts_per_token is top_k")
        return self

    @property
    def mean_real_experts(self) -> float:
        """Mean routed FFN experts a token is sent to."""
        return float(self.top_k if self.real_experts_per_token is None
                     else self.real_experts_per_token)


ComputeDtype = Literal["bf16", "fp8", "fp4"]
COMPUTE_CLASSES = ("expert_gemm", "dense_gemm", "attention", "lm_head")


class ComputePrecision(Strict):
    """Precision the GEMMs and attention cores of each op class compute in: bf16, fp8, or fp4
    (NVFP4 tensor cores: Blackwell); None: not set here."""

    expert_gemm: Optional[ComputeDtype] = Field(None, description="routed and shared experts")
    dense_gemm: Optional[ComputeDtype] = Field(
        None, description="attention projections, dense FFNs, MTP projection")
    attention: Optional[ComputeDtype] = Field(None, description="attention core")
    lm_head: Optional[ComputeDtype] = Field(None, description="LM head")


class ModelSpec(Strict):
    """A transformer LLM, dense or MoE, conventional or shortcut-connected (ScMoE)."""

    name: str = Field(min_length=1)
    family: str = Field("custom", description="longcat_flash, deepseek_v3, qwen3_moe, mixtral, llama")
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    attention: AttentionSpec
    layer_kind: Literal["conventional", "shortcut"] = Field(
        "conventional", description="shortcut: MLA_0, FFN_0, MLA_1, FFN_1 + MoE on the shortcut")
    dense_intermediate: int = Field(0, ge=0, description="dense SwiGLU FFN width (0 = none)")
    first_k_dense: int = Field(0, ge=0, description="leading layers with a dense FFN, not MoE")
    moe_layer_interval: int = Field(
        1, ge=1, description="after first_k_dense, every n-th layer is MoE and the others dense "
        "(2: MoE every second block, as GShard and the ScMoE paper; HF decoder_sparse_step)")
    moe: Optional[MoESpec] = None
    mtp_layers: int = Field(0, ge=0, description="multi-token-prediction layers (dense)")
    mtp_acceptance: float = Field(0.0, ge=0, le=1, description="draft acceptance reported")
    tied_embeddings: bool = False
    serving_recipe: ComputePrecision = Field(
        ComputePrecision(), description="compute precision per op class of the model's "
        "published serving recipe (inference default; unset classes: bf16)")

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        if self.layer_kind == "shortcut" and (self.moe is None or self.dense_intermediate <= 0):
            raise ValueError("a shortcut layer needs both moe and dense_intermediate")
        if self.moe is None and self.dense_intermediate <= 0:
            raise ValueError("a dense model needs dense_intermediate > 0")
        if self.first_k_dense > self.num_layers:
            raise ValueError("first_k_dense exceeds num_layers")
        if self.first_k_dense and self.dense_intermediate <= 0:
            raise ValueError("first_k_dense layers need dense_intermediate > 0")
        if self.moe_layer_interval > 1 and self.dense_intermediate <= 0:
            raise ValueError("moe_layer_interval > 1 leaves dense layers: they need "
                             "dense_intermediate > 0")
        if self.moe is not None and self.moe_layer_interval > self.num_layers - self.first_k_dense:
            raise ValueError("moe_layer_interval leaves no MoE layer: make it at most "
                             "num_layers - first_k_dense")
        return self
