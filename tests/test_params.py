"""Model zoo parameter counts against published totals."""
import pytest

from simulator.loading import load_model
from simulator.graph.params import count_params

B = 1e9


def within(x: float, target: float, tol: float) -> bool:
    return abs(x - target) / target <= tol


def test_longcat_total_and_activated_by_real_experts():
    m = load_model("longcat-flash")
    assert within(count_params(m).total, 560 * B, 0.01)
    for k, target in ((0, 18.6), (8, 27.0), (12, 31.3)):
        assert within(count_params(m, k).activated, target * B, 0.01), k


@pytest.mark.parametrize("name,total,activated", [
    ("deepseek-v3", 671, 37), ("qwen3-235b-a22b", 235, 22), ("mixtral-8x7b", 46.7, 12.9)])
def test_moe_zoo_within_2_percent(name, total, activated):
    c = count_params(load_model(name))
    assert within(c.total, total * B, 0.02)
    assert within(c.activated, activated * B, 0.02)


def test_llama_dense_total():
    c = count_params(load_model("llama-3-70b"))
    assert within(c.total, 70.6 * B, 0.02)
    assert c.expert_total == 0


def test_zero_experts_carry_no_weights():
    m = load_model("longcat-flash")
    no_zero = m.variant(moe=m.moe.variant(num_zero_experts=0, real_experts_per_token=None))
    # identical but for the router rows of the 256 zero experts
    diff = count_params(m).total - count_params(no_zero).total
    assert diff == m.num_layers * m.hidden_size * 256


def _models():
    from simulator.loading import MODELS_DIR, known_names, load_model
    out = [load_model(n) for n in known_names(MODELS_DIR)]
    longcat = load_model("longcat-flash")
    out.append(longcat.variant(first_k_dense=2, name="longcat-flash-fkd2"))
    return out


@pytest.mark.parametrize("model", _models(), ids=lambda m: m.name)
def test_memory_and_training_count_the_same_weights(model):
    # Inference memory (weights at 2 bytes, no MTP) and training's parameters (ZeRO 0, one
    # stage, 2 bytes) are one device's weights; they must agree for every model and layout.
    # Training's tp splits attention too (Megatron's tensor parallelism): inference's
    # tensor-parallel attention holds the same shards.
    from simulator.graph.memory import inference_memory
    from simulator.graph.ops import Shape
    from simulator.schema import ParallelPlan, Precision, TrainingSpec, Workload
    from simulator.training.run import training_memory
    ep = 8 if model.moe else 1
    plan = ParallelPlan(gpus=8, gpus_per_node=8, tp=1 if model.moe else 8, ep=ep)
    prec = Precision(weight_bytes=2)     # inference keeps embeddings and head in BF16
    inf_plan = plan if model.moe else plan.model_copy(update={"attention_tp": 8})
    inf = inference_memory(model, inf_plan, prec, Shape("decode", 1, 1, 1), False)
    t = TrainingSpec(global_batch_sequences=8, zero_stage=0)
    w = Workload(model="x", hardware="h800", plan=plan, batch_per_device=1, context_length=16,
                 precision=prec, training=t)
    tm = training_memory(w, t, model, model.num_layers, 1)
    assert tm.params == pytest.approx(inf.weights, rel=1e-12)


def test_first_k_dense_counts_one_dense_ffn_per_dense_layer():
    # LongCat-Flash with two dense leading layers: those hold one attention block and one dense
    # FFN each, the shortcut layers two of each. Worked out from the config.
    from simulator.loading import load_model
    from simulator.graph.params import dense_ffn_params, ffn_params, attention_blocks
    m = load_model("longcat-flash").variant(first_k_dense=2)
    per = ffn_params(m.hidden_size, m.dense_intermediate)
    assert dense_ffn_params(m) == 2 * per + (m.num_layers - 2) * 2 * per
    assert attention_blocks(m) == 2 + 2 * (m.num_layers - 2)
