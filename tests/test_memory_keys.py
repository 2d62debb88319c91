"""memory_gb of simulate --json worked out by hand on a configuration where every term is
non-zero and distinct (KV bytes unlike activation bytes, top-k x hidden the widest buffer)."""
import pytest

from simulator.loading import load_model
from simulator.schema import Workload
from simulator.step.whatif import simulate


def test_kv_cache_and_activations_of_qwen3_30b_by_hand():
    m = load_model("qwen3-30b-a3b")           # GQA: 48 layers, 4 KV heads of 128; hidden 2048
    w = Workload.model_validate(dict(
        model="qwen3-30b-a3b", hardware="h200-sxm", phase="decode", batch_per_device=24,
        context_length=3000, plan={"gpus": 8, "ep": 8},
        precision={"weight_bytes": 1, "activation_bytes": 2, "kv_bytes": 1,
                   "dispatch_bytes": 1, "combine_bytes": 2}))
    mem = simulate(w).to_json()["memory_gb"]
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
