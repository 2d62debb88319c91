"""memory_gb of simulate --json worked out by hand on a configuration where every term is
non-zero and distinct (KV bytes unlike activation bytes, top-k x hidden the widest buffer)."""
import pytest

from simulator.loading import load_model
from simulator.schema import Workload
from simulator.step.whatif import simulate


def _qwen3_30b_memory(batch: int, context: int, weight: float, activation: float, kv: float,
                      dispatch: float) -> dict:
    """memory_gb of a Qwen3-30B-A3B decode step on 8 H200 (EP 8) at these byte widths."""
    w = Workload.model_validate(dict(
        model="qwen3-30b-a3b", hardware="h200-sxm", phase="decode", batch_per_device=batch,
        context_length=context, plan={"gpus": 8, "ep": 8},
        precision={"weight_bytes": weight, "activation_bytes": activation, "kv_bytes": kv,
                   "dispatch_bytes": dispatch, "combine_bytes": 2}))
    return simulate(w).to_json()["memory_gb"]


def test_kv_cache_and_activations_of_qwen3_30b_by_hand():
    m = load_model("qwen3-30b-a3b")           # GQA: 48 layers, 4 KV heads of 128; hidden 2048
    mem = _qwen3_30b_memory(24, 3000, weight=1, activation=2, kv=1, dispatch=1)
    assert (m.num_layers, m.attention.num_kv_heads, m.attention.head_dim, m.hidden_size) == \
        (48, 4, 128, 2048)
    kv_elements = 48 * 2 * 4 * 128                   # keys and values, every layer
    kv = 24 * (3000 + 1) * kv_elements * 1            # sequences x (context + this token) x 1 B
    assert mem["kv_cache"] == pytest.approx(kv / 1e9, rel=1e-12)
    widest = max(2048, m.dense_intermediate, m.moe.top_k * 2048)    # top-8 x 2048 = 16384
    assert widest == 8 * 2048
    act = 4 * 24 * widest * 2                         # 4 live buffers x tokens x width x 2 B
    assert mem["activations"] == pytest.approx(act / 1e9, rel=1e-12)
    assert mem["total"] == pytest.approx(mem["weights"] + mem["kv_cache"] + mem["activations"],
                                         rel=1e-12)


def test_weights_kv_and_activations_at_two_bytes_each_and_four_for_activations():
    """Every byte width different from 1, so a factor applied the wrong way shows: Qwen3-30B's
    weights on one of 8 GPUs (all dense and attention parameters and the embeddings, 16 of the
    128 experts of each of its 48 MoE layers, 3 x 2048 x 768 each) at 2 bytes."""
    from simulator.graph.params import count_params
    m = load_model("qwen3-30b-a3b")
    mem = _qwen3_30b_memory(8, 1000, weight=2, activation=4, kv=2, dispatch=2)
    c = count_params(m)
    assert (m.moe.num_experts, m.moe.expert_intermediate) == (128, 768)
    experts = 128 // 8 * 48 * 3 * 2048 * 768
    assert c.expert_total == 128 * 48 * 3 * 2048 * 768
    weights = (c.non_expert + c.embedding + experts) * 2
    assert mem["weights"] == pytest.approx(weights / 1e9, rel=1e-12)
    assert mem["kv_cache"] == pytest.approx(8 * 1001 * 48 * 2 * 4 * 128 * 2 / 1e9, rel=1e-12)
    assert mem["activations"] == pytest.approx(4 * 8 * 8 * 2048 * 4 / 1e9, rel=1e-12)
