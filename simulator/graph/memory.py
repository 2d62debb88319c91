"""HBM per GPU for inference: weights + KV cache + activations, with the breakdown."""
from __future__ import annotations

from dataclasses import dataclass

from simulator.schema import ModelSpec, ParallelPlan, Precision

LIVE_ACTIVATION_BUFFERS = 4   # inference: input, output and two temporaries of the widest op live at once
from simulator.graph.ops import Shape
from simulator.graph.params import (count_params, expert_params, head_weight_bytes,
                                    kv_elements_per_token, layer_counts, replicated_params)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU by category."""

    weights: float
    kv_cache: float
    activations: float

    @property
    def total(self) -> float:
        """Sum of the parts, in bytes."""
        return self.weights + self.kv_cache + self.activations

    def describe(self) -> str:
        """'weights 47.1 GB + KV 31.0 GB + activations 0.1 GB = 78.2 GB'."""
        gb = 1e9
        return (f"weights {self.weights / gb:.1f} GB + KV cache {self.kv_cache / gb:.1f} GB + "
                f"activations {self.activations / gb:.1f} GB = {self.total / gb:.1f} GB")


def inference_memory(model: ModelSpec, plan: ParallelPlan, prec: Precision, shape: Shape,
                     mtp: bool, redundant_experts: int = 0) -> MemoryBreakdown:
    """Per-GPU bytes: attention replicated (DP), dense FFNs split by tp, experts split by ep;
    the fullest rank holds ceil((experts + redundant copies) / ep) expert slots; embeddings
    and LM head in BF16 (head_weight_bytes), vocabulary-parallel under tensor-parallel
    attention."""
    c = count_params(model)
    h = model.hidden_size
    _, moe_layers = layer_counts(model)
    replicated = replicated_params(model, plan.tp, c, plan.attention_tp)
    embeddings = c.embedding / plan.attention_tp * head_weight_bytes(
        prec, prec.compute.lm_head or "bf16")
    n = model.moe.num_experts if model.moe else 0
    experts = -(-(n + redundant_experts) // plan.ep) * moe_layers * expert_params(model) \
        / plan.moe_tp if n else 0.0   # the fullest rank's expert slots, copies included
    weights = (replicated + experts + (c.mtp if mtp else 0)) * prec.weight_bytes + embeddings
    kv = shape.sequences * (shape.context + shape.query_tokens) * \
        kv_elements_per_token(model, plan.attention_tp) * prec.kv_bytes
    widest = max(h, model.dense_intermediate // plan.tp,
                 (model.moe.top_k * h) if model.moe else 0)
    activations = LIVE_ACTIVATION_BUFFERS * shape.tokens * widest * prec.activation_bytes
    return MemoryBreakdown(weights=weights, kv_cache=kv, activations=activations)
