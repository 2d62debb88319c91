"""Parameter counts computed from a ModelSpec: total, activated, and per block."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.config import AttentionSpec, ModelSpec


def attention_params(att: AttentionSpec, hidden: int) -> int:
    """Weights of one attention block (projections and their norms)."""
    if att.kind == "gqa":
        q = hidden * att.num_heads * att.head_dim
        kv = 2 * hidden * att.num_kv_heads * att.head_dim
        o = att.num_heads * att.head_dim * hidden
        return q + kv + o
    qk_head = att.qk_nope_head_dim + att.qk_rope_head_dim
    if att.q_lora_rank:
        q = hidden * att.q_lora_rank + att.q_lora_rank + att.q_lora_rank * att.num_heads * qk_head
    else:
        q = hidden * att.num_heads * qk_head
    kv_a = hidden * (att.kv_lora_rank + att.qk_rope_head_dim) + att.kv_lora_rank
    kv_b = att.kv_lora_rank * att.num_heads * (att.qk_nope_head_dim + att.v_head_dim)
    o = att.num_heads * att.v_head_dim * hidden
    return q + kv_a + kv_b + o


def ffn_params(hidden: int, intermediate: int) -> int:
    """A SwiGLU FFN: gate, up and down matrices."""
    return 3 * hidden * intermediate


@dataclass(frozen=True)
class ParamCounts:
    """Totals in parameters (not bytes)."""

    total: int
    activated: int
    embedding: int
    expert_total: int
    non_expert: int   # everything a device holds whatever the EP degree (excl. embeddings)
    mtp: int


def count_params(model: ModelSpec, real_experts: float | None = None) -> ParamCounts:
    """Total and activated parameters; activated counts the LM head but not the input lookup.

    `real_experts` is the number of routed FFN experts a token uses (default: the model's mean);
    zero-computation experts carry no weights. MTP layers are excluded, as in published totals.
    """
    h = model.hidden_size
    att = attention_params(model.attention, h)
    norms_per_block = h
    blocks = 2 if model.layer_kind == "shortcut" else 1
    embedding = model.vocab_size * h
    head = 0 if model.tied_embeddings else model.vocab_size * h

    dense_layers = model.first_k_dense if model.moe else model.num_layers
    moe_layers = model.num_layers - dense_layers
    per_dense_layer = att + ffn_params(h, model.dense_intermediate) + 2 * norms_per_block

    total = activated = 0
    expert_total = 0
    non_expert = dense_layers * per_dense_layer
    total += dense_layers * per_dense_layer
    activated += dense_layers * per_dense_layer
    if model.moe and moe_layers:
        moe = model.moe
        k = moe.mean_real_experts if real_experts is None else real_experts
        expert = ffn_params(h, moe.expert_intermediate)
        router = h * (moe.num_experts + moe.num_zero_experts)
        shared = moe.num_shared_experts * expert
        dense_ffns = blocks * ffn_params(h, model.dense_intermediate) \
            if model.layer_kind == "shortcut" else 0
        fixed = blocks * (att + 2 * norms_per_block) + dense_ffns + router + shared
        non_expert += moe_layers * fixed
        expert_total = moe_layers * moe.num_experts * expert
        total += moe_layers * fixed + expert_total
        activated += int(moe_layers * (fixed + k * expert))
    total += embedding + head + h  # final norm
    activated += head + h
    mtp = model.mtp_layers * (att + ffn_params(h, model.dense_intermediate or
                                               (model.moe.expert_intermediate if model.moe else 0))
                              + 2 * h * h + 3 * h)
    return ParamCounts(total=total, activated=activated, embedding=embedding + head,
                       expert_total=expert_total, non_expert=non_expert, mtp=mtp)
