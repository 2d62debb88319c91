"""Deployments written down as they ran (issue: balanced routing, redundant experts with EP over
every GPU, prefix-cache hits, ...): what each field changes, worked out by hand."""
import pytest
from typer.testing import CliRunner

from cli import app
from simulator.errors import MoesimError
from simulator.graph.params import expert_params, layer_counts
from simulator.loading import load_model
from simulator.pricing.routing import route
from simulator.schema import RoutingSpec
from simulator.step.whatif import resolve, simulate
from tests.conftest import profile, workload

DS_DECODE = "workloads/deployments/deepseek-v3-decode-ep144-balanced.yaml"
DS_PREFILL = "workloads/deployments/deepseek-v3-prefill-prefix-hits.yaml"


def test_balanced_routing_has_imbalance_one():
    # 128 tokens x 8 experts on each of 128 ranks over 256 experts: 131072 copies, 1024 per rank
    # and 512 per expert exactly; a token's 8 experts on 8 distinct ranks
    r = route(RoutingSpec(popularity="balanced"), n_experts=256, top_k=8, has_zero_experts=False,
              real_mean=8.0, ep=128, gpus_per_node=8, tokens_per_rank=128, seed=0)
    assert r.imbalance == 1.0 and r.expert_imbalance == 1.0
    assert (r.rank_rows == 1024).all()
    assert r.t_gpu.sum() == r.t_expert.sum()            # no two experts of a token share a GPU
    sampled = route(RoutingSpec(), n_experts=256, top_k=8, has_zero_experts=False,
                    real_mean=8.0, ep=128, gpus_per_node=8, tokens_per_rank=128, seed=0)
    assert sampled.imbalance > 1.02                    # what sampling gives instead


def test_balanced_routing_shortens_the_expert_gemm_by_the_imbalance():
    w = workload("workloads/longcat-flash-decode-h800.yaml")
    bal = w.variant(routing=w.routing.variant(popularity="balanced"))
    a, b = simulate(w), simulate(bal)
    assert b.metrics["ep"]["imbalance"] == pytest.approx(1.0, abs=2e-3)
    assert a.metrics["ep"]["imbalance"] > 1.03
    assert b.step_time_s < a.step_time_s


def test_redundant_experts_make_ep_over_every_gpu_possible():
    # 256 routed + 32 redundant on EP 144: 288 = 2 x 144 slots, every rank holds 2 experts;
    # without the copies EP 144 does not divide 256, and the error says what would
    w = workload(DS_DECODE)
    assert w.plan.ep == 144 and w.routing.redundant_experts == 32
    assert simulate(w).metrics["ep"]["max_expert_slots"] == 2
    no_copies = w.variant(routing=w.routing.variant(redundant_experts=0))
    with pytest.raises(MoesimError) as e:
        resolve(no_copies)
    assert e.value.field == "plan.ep" and "redundant_experts" in e.value.fix


def test_redundant_copies_are_charged_in_hbm_by_the_fullest_rank():
    # EP 144: 256 experts + 32 copies fill 2 slots a rank; + 176 copies fill 3 (432 = 3 x 144):
    # one more expert's weights on every rank. 16 copies (272) would fill ranks unevenly:
    # refused
    w = workload(DS_DECODE)
    model = load_model(w.model)
    _, moe_layers = layer_counts(model)
    e = expert_params(model) * moe_layers * w.precision.weight_bytes
    r32 = resolve(w)
    r176 = resolve(w.variant(routing=w.routing.variant(redundant_experts=176)))   # 432 = 3 x 144
    assert r176.memory.weights - r32.memory.weights == pytest.approx(e)
    with pytest.raises(MoesimError):
        resolve(w.variant(routing=w.routing.variant(redundant_experts=16)))


def test_redundant_experts_that_do_not_fit_hbm_are_refused():
    # 256 + 4064 copies = 30 slots per rank of 58 layers x 44M-parameter experts: ~77 GB of
    # expert weights alone on an 80 GB H800
    w = workload(DS_DECODE)
    big = w.variant(routing=w.routing.variant(redundant_experts=4064))
    with pytest.raises(MoesimError) as e:
        resolve(big)
    assert e.value.field == "routing.redundant_experts" and "fewer copies" in e.value.fix


def test_a_prefix_hit_rate_halves_the_computed_tokens_at_the_full_context():
    # 50% hits of a 4096-token prompt: 2048 tokens computed, each attending to the 2048 cached
    # ones plus causally the computed before it: 2048 x (2048 + 2049 / 2) pairs against
    # 4096 x 4097 / 2 without hits (0.75x); the GEMMs carry half the tokens
    w = workload(DS_PREFILL, prefix_hit_rate=0.5)
    r = resolve(w)
    assert r.shape.query_tokens == 2048 and r.shape.context == 4096 and r.shape.cached == 2048
    assert r.shape.causal_pairs() == pytest.approx(2048 * (2048 + 2049 / 2))
    none = w.variant(prefix_hit_rate=0.0)
    a, b = simulate(none), simulate(w)
    fa = {op.name: op.flops for op in a.timeline.ops}
    fb = {op.name: op.flops for op in b.timeline.ops}
    assert fb["L5.attn.qkv_proj"] == pytest.approx(fa["L5.attn.qkv_proj"] / 2)
    assert b.step_time_s < a.step_time_s


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_a_hit_rate_outside_0_1_is_one_clear_error(tmp_path, rate):
    import yaml
    from pathlib import Path
    data = yaml.safe_load(Path(DS_PREFILL).read_text())
    data["prefix_hit_rate"] = rate
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(data))
    r = CliRunner().invoke(app, ["simulate", str(p)])
    assert r.exit_code == 2 and "prefix_hit_rate" in r.output and "Traceback" not in r.output


def test_balanced_routing_refuses_node_limits():
    w = workload(DS_DECODE, routing={"popularity": "balanced", "max_nodes_per_token": 4,
                                     "redundant_experts": 32})
    with pytest.raises(MoesimError) as e:
        resolve(w)
    assert e.value.field == "routing.popularity"
