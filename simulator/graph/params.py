"""Model structure in one home: attention blocks per layer, dense and MoE layers, KV elements per
token, and parameter counts (total, activated, per block, per device)."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.schema import AttentionSpec, ModelSpec, Precision


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


def blocks_per_layer(model: ModelSpec, moe_layer: bool = True) -> int:
    """Attention blocks (and dense FFNs) of a layer: two in a shortcut MoE layer, else one."""
    return 2 if model.layer_kind == "shortcut" and moe_layer else 1


def is_moe_layer(model: ModelSpec, i: int) -> bool:
    """Layer i routes to experts: past the first_k_dense dense layers, every
    moe_layer_interval-th layer (layers first_k_dense + n - 1, + 2n - 1, ...)."""
    if model.moe is None or i < model.first_k_dense:
        return False
    return (i - model.first_k_dense + 1) % model.moe_layer_interval == 0


def layer_counts(model: ModelSpec) -> tuple[int, int]:
    """(dense layers, MoE layers) of the model (is_moe_layer)."""
    moe = sum(is_moe_layer(model, i) for i in range(model.num_layers))
    return model.num_layers - moe, moe


def attention_blocks(model: ModelSpec) -> int:
    """Attention blocks in the whole model (MTP excluded)."""
    dense, moe = layer_counts(model)
    return dense + moe * blocks_per_layer(model)


def kv_elements_per_block(a: AttentionSpec) -> int:
    """KV-cache elements one token stores in one attention block: MLA's latent and rope key,
    or GQA's keys and values."""
    return (a.kv_lora_rank + a.qk_rope_head_dim) if a.kind == "mla" \
        else 2 * a.num_kv_heads * a.head_dim


def local_kv_heads(a: AttentionSpec, attention_tp: int) -> int:
    """GQA key/value heads one GPU holds when `attention_tp` GPUs split the heads (a KV head
    is copied when there are fewer of them than GPUs)."""
    return max(1, a.num_kv_heads // attention_tp)


def kv_elements_per_token(model: ModelSpec, attention_tp: int = 1) -> int:
    """KV-cache elements one token stores across all attention blocks (MTP excluded), on each
    GPU of an attention group of `attention_tp` GPUs (MLA's latent is not split)."""
    a = model.attention
    per_block = kv_elements_per_block(a) if a.kind == "mla" or attention_tp == 1 \
        else 2 * local_kv_heads(a, attention_tp) * a.head_dim
    return attention_blocks(model) * per_block


def dense_ffn_params(model: ModelSpec) -> int:
    """Weights of every dense FFN (the tensor-parallel part): one per dense layer, and the
    shortcut layers' own dense FFNs (two per layer)."""
    dense, moe = layer_counts(model)
    per = ffn_params(model.hidden_size, model.dense_intermediate)
    return dense * per + (moe * blocks_per_layer(model) * per
                          if model.layer_kind == "shortcut" else 0)


def expert_params(model: ModelSpec) -> int:
    """Weights of one routed expert (0 for a dense model)."""
    return ffn_params(model.hidden_size, model.moe.expert_intermediate) if model.moe else 0


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
    blocks = blocks_per_layer(model)
    embedding = model.vocab_size * h
    head = 0 if model.tied_embeddings else model.vocab_size * h

    dense_layers, moe_layers = layer_counts(model)
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


def replicated_params(model: ModelSpec, tp: int, c: ParamCounts | None = None,
                      attention_tp: int = 1) -> float:
    """Non-expert weights one device holds (embeddings excluded): everything but the dense
    FFNs whole, the dense FFNs split by tp; under tensor-parallel attention the attention
    blocks and shared experts are split too (`attention_tp` ways)."""
    c = c or count_params(model)
    dense = dense_ffn_params(model)
    rest = c.non_expert - dense
    if attention_tp > 1:
        _, moe_layers = layer_counts(model)
        shared = moe_layers * model.moe.num_shared_experts * expert_params(model) \
            if model.moe else 0
        split = attention_blocks(model) * attention_params(model.attention,
                                                           model.hidden_size) + shared
        rest = rest - split + split / attention_tp
    return rest + dense / tp


def head_weight_bytes(prec: Precision, dtype: str) -> float:
    """Bytes per LM-head (and embedding) weight: FP8 and FP4 checkpoints keep them in BF16
    (ModelOpt's default exclusions, DeepSeek's and Qwen's FP8 releases), so at least 2 unless
    the head computes in FP8."""
    return 1.0 if dtype == "fp8" else max(prec.weight_bytes, 2.0)
