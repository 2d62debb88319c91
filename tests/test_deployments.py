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


def test_round_robin_routing_balances_experts_on_one_rank_per_token():
    # torchtitan's forced balance: copy i of the batch to expert i mod 128. Qwen3-30B-A3B's 128
    # experts, top 8, EP 8 (16 experts a rank): token t picks experts 8t .. 8t + 7 (mod 128),
    # a block of 8 inside one rank's 16. 64 tokens on each of 8 ranks: 4096 copies, 32 per
    # expert and 512 per rank exactly, and each token sent to one rank only (8 copies, one GPU)
    kw = dict(n_experts=128, top_k=8, has_zero_experts=False, real_mean=8.0, ep=8,
              gpus_per_node=8, tokens_per_rank=64, seed=0)
    r = route(RoutingSpec(popularity="round_robin"), **kw)
    assert (r.expert_load == 32).all() and (r.rank_rows == 512).all()
    assert r.t_expert.sum() == 4096 and r.t_gpu.sum() == 512      # 512 tokens, one GPU each
    b = route(RoutingSpec(popularity="balanced"), **kw)          # a token's experts on 8 ranks
    assert (b.rank_rows == 512).all() and b.t_gpu.sum() == 4096


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


def test_computed_tokens_read_the_cached_prefix_kv():
    # 4096-token prompt with 2048 cached vs a 2048-token prompt without: the same 2048 computed
    # tokens, but the core also reads the cached KV: 2048 x (512 + 64) MLA elements x 2 bytes
    hits = workload(DS_PREFILL, prefix_hit_rate=0.5, schedule="sequential")
    fresh = workload(DS_PREFILL, prefix_hit_rate=0.0, context_length=2048, schedule="sequential")
    a = {op.name: op for op in simulate(hits).timeline.ops}
    b = {op.name: op for op in simulate(fresh).timeline.ops}
    assert a["L5.attn.core"].bytes - b["L5.attn.core"].bytes == pytest.approx(2048 * 576 * 2)


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


def test_moe_every_second_block():
    # 24 blocks, MoE interval 2: blocks 1, 3, ..., 23 route (12), the others run a dense FFN
    from simulator.graph.params import is_moe_layer
    model = load_model("gpt-moe-top2")
    assert [i for i in range(24) if is_moe_layer(model, i)] == list(range(1, 24, 2))
    assert layer_counts(model) == (12, 12)
    res = simulate(workload("workloads/deployments/scmoe-paper-top2-a30.yaml"))
    names = {op.name for op in res.timeline.ops}
    assert "L0.ffn.ffn" in names and "L0.moe.experts" not in names
    assert "L1.moe.experts" in names and "L1.ffn.ffn" not in names
    # weights: 12 dense FFNs + 12 x 8 experts of 3 x 1024 x 4096 (SwiGLU), each
    from simulator.graph.params import count_params
    c = count_params(model)
    assert c.expert_total == 12 * 8 * 3 * 1024 * 4096


def test_moe_interval_follows_hf_decoder_sparse_step(tmp_path):
    import json
    from pathlib import Path
    from simulator.hf_import import import_hf_config
    cfg = json.loads(Path("tests/data/hf/qwen3_moe.json").read_text())
    cfg.update(decoder_sparse_step=2, intermediate_size=12288)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    spec = import_hf_config(p)
    assert spec.moe_layer_interval == 2 and spec.dense_intermediate == 12288


def test_a_moe_interval_without_dense_ffns_is_refused(tmp_path):
    import yaml
    from pathlib import Path
    m = yaml.safe_load(Path("workloads/models/gpt-moe-top2.yaml").read_text())
    m.pop("dense_intermediate")
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(m))
    w = yaml.safe_load(Path("workloads/deployments/scmoe-paper-top2-a30.yaml").read_text())
    w["model"] = str(p)
    q = tmp_path / "w.yaml"
    q.write_text(yaml.safe_dump(w))
    r = CliRunner().invoke(app, ["simulate", str(q)])
    assert r.exit_code == 2 and "dense_intermediate" in r.output


def test_a30_and_a800_profiles_are_listed_and_differ_where_their_datasheets_do():
    r = CliRunner().invoke(app, ["profiles"])
    assert r.exit_code == 0 and "a30-pcie" in r.output and "a800-80gb-sxm" in r.output
    a30, a800, a100 = profile("a30-pcie"), profile("a800-80gb-sxm"), profile("a100-80gb-sxm")
    assert a800.peak_bf16_flops.value == a100.peak_bf16_flops.value == 2 * 156e12
    assert a800.nvlink.spec_bandwidth_Bps.value == 200e9          # 400 GB/s bidirectional
    assert a30.peak_bf16_flops.value == 165e12 and a30.hbm_bytes.value == 24e9
    assert a30.nvlink.spec_bandwidth_Bps.value == pytest.approx(16 * 16e9 * 128 / 130 / 8,
                                                                rel=0.02)   # PCIe Gen4 x16


def test_scmoe_beats_the_top2_baseline_more_on_pcie_than_on_nvlink():
    # the paper's direction (Cai et al.: communication is 60% of MoE time on A30 PCIe, 15% on
    # A800 NVLink, so ScMoE gains more on PCIe)
    def speedup(short):
        base = simulate(workload(f"workloads/deployments/scmoe-paper-top2-{short}.yaml"))
        sc = simulate(workload(f"workloads/deployments/scmoe-paper-scmoe-{short}.yaml"))
        return base.step_time_s / sc.step_time_s
    assert speedup("a30") > speedup("a800") > 1.0


def test_moe_chunks_hide_between_scmoe_and_tbo_on_longcat_training():
    # communication-bound training forward: chunking the MoE hides the experts under the other
    # chunk's all-to-all (more than scmoe), but not the attention a second micro-batch would
    # (less than tbo)
    w = workload("workloads/deployments/longcat-flash-pretrain-chunked.yaml", phase="train_fwd",
                 batch_per_device=1, training=None)
    r = resolve(w)
    hid = {s: simulate(w, s, resolved=r).hidden_comm_s for s in ("scmoe", "scmoe-chunked", "tbo")}
    assert hid["scmoe"] < 0.95 * hid["scmoe-chunked"]
    # tbo hides at least as much; here both hide nearly all they can (0.4% apart, below the
    # routing sample's noise between seeds), so the order of those two is checked to 1%
    assert hid["scmoe-chunked"] < 1.01 * hid["tbo"]


def test_moe_chunks_that_do_not_divide_the_tokens_are_refused():
    w = workload("workloads/longcat-flash-decode-h800.yaml", schedule="scmoe-chunked",
                 batch_per_device=3, mtp={"enabled": False})
    with pytest.raises(MoesimError) as e:
        simulate(w)
    assert e.value.field == "schedule" and "divide by 2" in e.value.fix


def test_chunked_backward_issues_expert_weight_gradients_after_every_chunks_input_gradient():
    # a chunk's weight gradient waits on that chunk's combine gradient, which the comm stream
    # sends after the other chunk's: issued before the other chunk's input gradient it would
    # deadlock the two streams
    w = workload("workloads/deployments/longcat-flash-pretrain-chunked.yaml", phase="train_bwd",
                 batch_per_device=1, training=None)
    res = simulate(w, resolved=resolve(w, with_head=False))
    at = {op.name: i for i, op in enumerate(res.timeline.ops)}
    start, end = res.timeline.start_s[0], res.timeline.end_s[0]
    for layer in (0, 27):
        last_dgrad = max(end[at[f"L{layer}.moe.c{c}.experts.dgrad"]] for c in (0, 1))
        for c in (0, 1):
            assert start[at[f"L{layer}.moe.c{c}.experts.wgrad"]] >= last_dgrad - 1e-12


def test_prefill_pool_budget_counts_computed_tokens_only(tmp_path):
    # 8 devices x 8192 = 65536 computed tokens a batch: with half the prompt cached, two
    # 60000-token prompts (30000 computed each) share one batch; without hits they take two
    from tests.test_physics import stubbed_sim
    miss = stubbed_sim(tmp_path, [(0.0, 60000, 2)] * 2, budget=1e9)
    hits = stubbed_sim(tmp_path, [(0.0, 60000, 2)] * 2, budget=1e9)
    hits.w = hits.w.variant(prefix_hit_rate=0.5)
    batches = [sum(1 for kind, *_ in s.asked if kind == "prefill")
               for s in (miss, hits) if s.run(check_stability=False)]
    assert batches == [2, 1]


def test_selective_recomputation_costs_between_none_and_full():
    # none keeps every activation (Korthikanti et al.), selective drops norm inputs and
    # activation outputs, full keeps only the layer input and output: memory falls in that
    # order; backward time rises: none < selective (memory-bound norm and
    # activation passes) < full (a whole extra forward)
    from simulator.training.run import train
    from tests.test_training import small
    roomy = profile("h800", idealizations={"enforce_hbm_capacity": False})
    runs = {}
    for rc in ("none", "selective", "full"):
        w = small()
        runs[rc] = train(w.variant(training=w.training.variant(recompute=rc)), profile=roomy)
    b = {k: r.backward_s_per_microbatch for k, r in runs.items()}
    act = {k: r.memory.activations for k, r in runs.items()}
    assert b["none"] < b["selective"] < b["full"]
    assert b["full"] - b["none"] == pytest.approx(runs["none"].forward_s_per_microbatch)
    assert act["none"] > act["selective"] > act["full"]
    # LongCat-Flash layers (h 6144, two blocks each with a dense SwiGLU FFN of 12288, k real
    # experts of 2048 a token). Per token, in elements: none keeps attention 5.5 h and two norm
    # inputs 2 h per block, each FFN its input h, gate/up output 2 f and activation output f,
    # each expert copy h + 3 i; selective drops the norm inputs and the activation outputs;
    # full keeps the layer input and output.
    m = load_model("longcat-flash")
    h, f, i, k = 6144, 12288, 2048, m.moe.mean_real_experts
    none = 2 * (5.5 + 2) * h + 2 * (h + 3 * f) + k * (h + 3 * i)
    selective = 2 * 5.5 * h + 2 * (h + 2 * f) + k * (h + 2 * i)
    assert act["selective"] / act["none"] == pytest.approx(selective / none)
    assert act["full"] / act["none"] == pytest.approx(2 * h / none)
    # absolute: tokens of a micro-batch per rank (8192 / cp 8) x elements x 2 bytes x the
    # stage's 7 layers x pp = 4 micro-batches in flight under 1F1B
    w = small()
    assert act["full"] == pytest.approx(w.context_length / 8 * 2 * h * 2 * 7 * 4)


def test_recompute_accepts_the_old_booleans():
    from simulator.schema import TrainingSpec
    assert TrainingSpec(global_batch_sequences=8, recompute=True).recompute == "full"
    assert TrainingSpec(global_batch_sequences=8, recompute=False).recompute == "none"
    with pytest.raises(Exception):
        TrainingSpec(global_batch_sequences=8, recompute="partial")


def test_dualpipe_matches_its_published_bubble():
    # DeepSeek-V3 report Table 2: bubble (PP/2 - 1)(F&B + B - 3W). p = 8, m = 16, F = 1, B = 2,
    # W = 1, F&B = 2.5 (0.5 of communication hidden): 16 x (2.5 + 1) + 3 x (2.5 + 2 - 3) = 60.5;
    # 1F1B on the same stages: (m + p - 1)(F + B + W) = 23 x 4 = 92
    from simulator.training.pipeline import dualpipe, simulate_pipeline
    r = dualpipe(8, 16, 1.0, 2.0, 1.0, 2.5)
    assert r.makespan_s == pytest.approx(16 * 3.5 + 3 * 1.5)
    assert r.bubble_fraction == pytest.approx(4.5 / 60.5)
    assert simulate_pipeline(8, 16, 1.0, 2.0, 1.0, "1f1b").makespan_s == pytest.approx(92.0)


def test_dualpipe_training_holds_two_stages_and_overlaps_its_chunks():
    from simulator.training.run import train
    dp = workload("workloads/deployments/deepseek-v3-pretrain-dualpipe.yaml")
    zb = dp.variant(training=dp.training.variant(pipeline="zb-v"))
    a, b = train(dp), train(zb)
    assert a.memory.params == pytest.approx(2 * b.memory.params)      # Table 2: 2x parameters
    # the step: m F&B chunks and W plus the published bubble, F&B no longer than F + B
    m, f, bw, w = a.micro_batches, a.forward_s_per_microbatch, a.backward_s_per_microbatch, \
        a.weight_grad_s_per_microbatch
    b_only = bw - w
    assert a.step_time_s >= m * max(f, b_only) + m * w - 1e-9
    assert a.step_time_s <= m * (f + bw) + (16 // 2 - 1) * (f + 2 * b_only) + \
        a.dp_exposed_s + a.optimizer_s + 1e-9


@pytest.mark.parametrize("plan,batch,why", [
    ({"gpus": 1920, "ep": 64, "pp": 15}, 15360, "even pp"),
    ({"gpus": 2048, "ep": 64, "pp": 16}, 15360 + 128, "even number of micro-batches"),
])
def test_a_dualpipe_plan_it_cannot_run_is_refused(plan, batch, why):
    from simulator.training.run import train
    w = workload("workloads/deployments/deepseek-v3-pretrain-dualpipe.yaml", plan=plan)
    w = w.variant(training=w.training.variant(global_batch_sequences=batch))
    with pytest.raises(MoesimError) as e:
        train(w)
    assert e.value.field == "training.pipeline" and why in e.value.problem


def test_dualpipe_hides_its_all_to_all_less_the_sms_the_all_to_all_holds():
    # a DualPipe F&B chunk saves its standalone all-to-all less what the paired pass's compute
    # loses to the communication kernels' SMs: with the all-to-all serialized inside the passes
    # (schedule sequential) the passes do not depend on that share, and the step grows in
    # proportion to it (by m + p/2 - 1 chunks' worth of the lost compute)
    from simulator.training.run import train
    w = workload("workloads/deployments/deepseek-v3-pretrain-dualpipe.yaml", schedule="sequential")

    def run(sm):
        return train(w, profile=profile(w.hardware, idealizations={"enforce_hbm_capacity": False},
                                        comm_sm_fraction={"value": sm, "source": "test"}))
    r0, r1, r2 = run(0.0), run(0.25), run(0.5)
    assert r2.forward_s_per_microbatch == r0.forward_s_per_microbatch
    assert r2.step_time_s > r1.step_time_s > r0.step_time_s
    assert r2.step_time_s - r0.step_time_s == pytest.approx(2 * (r1.step_time_s - r0.step_time_s))
