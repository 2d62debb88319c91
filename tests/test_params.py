"""Model zoo parameter counts against published totals."""
import pytest

from simulator.loading import load_model
from simulator.params import count_params

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
    no_zero = m.model_copy(update={"moe": m.moe.model_copy(update={"num_zero_experts": 0,
                                                                   "real_experts_per_token": None})})
    # identical but for the router rows of the 256 zero experts
    diff = count_params(m).total - count_params(no_zero).total
    assert diff == m.num_layers * m.hidden_size * 256
