"""Formulas the mechanical mutation check (`benchmarks/mutation.py --mechanical`) found pinned
only by the golden JSON, or by nothing: each worked out here by hand on a case where its term
does not vanish."""
import math

import pytest

from simulator.graph.ops import Op
from simulator.loading import load_model, load_profile
from simulator.pricing.cost import cost_per_million_tokens
from simulator.pricing.hardware import comm_demand, compute_time_s, efficiency
from simulator.pricing.measured import (ELEMENT_BYTES, OUTPUT_BYTES, deepep_lookup, gemm_lookup,
                                        select)
from simulator.pricing.peaks import peak_flops
from simulator.schema import ParallelPlan, Precision, RuntimeSpec, Sourced
from tests.conftest import profile, workload


def measured(name: str):
    prof = load_profile(name)
    return prof.with_measured(select(prof, RuntimeSpec(), Precision()))


def test_cost_per_million_tokens_at_a_slow_rate_and_at_none():
    # $3.6 an hour is $0.001 a second; at 0.5 tokens/s a million tokens take 2e6 s: $2000
    assert cost_per_million_tokens(3.6, 0.5) == pytest.approx(3.6 / 3600 / 0.5 * 1e6)
    assert cost_per_million_tokens(3.6, 0.5) == pytest.approx(2000.0)
    assert cost_per_million_tokens(3.6, 0.0) == math.inf


def _with_an_older_sglang():
    """h200-sxm with one more SGLang entry, 0.4.9 (TensorRT-LLM's file), listed first."""
    prof = load_profile("h200-sxm")
    refs = prof.measured_kernels
    trt = next(r for r in refs if r.framework == "trtllm")
    older = trt.model_copy(update={"framework": "sglang", "version": "0.4.9"})
    return prof.model_copy(update={"measured_kernels": [older, *refs]})


def test_the_default_runtime_is_the_newest_sglang_when_a_profile_lists_several():
    ms = select(_with_an_older_sglang(), RuntimeSpec(), Precision())
    assert (ms.kernels.framework, ms.kernels.version) == ("sglang", "0.5.14")


def test_an_empty_gemm_has_no_measured_time():
    prof = measured("h200-sxm")
    assert gemm_lookup(prof, "bf16", 0, ((4096.0, 4096.0),)) is None
    assert gemm_lookup(prof, "bf16", 16, ((4096.0, 4096.0),)) is not None


def test_a_gemm_beyond_its_table_scales_the_edge_by_the_roofline():
    """Outside the measured hull: the edge's measured time times roofline(x) / roofline(edge),
    roofline = max(2 M N K / peak, ((M + N) K bytes + M N output bytes) / HBM rate)."""
    prof = measured("h200-sxm")
    grid = prof.measured.kernels.get("gemm", ("bf16",))
    ms, ns, ks = grid.points
    n, k = float(ns[len(ns) // 2]), float(ks[len(ks) // 2])
    top = float(ms[-1])
    edge = gemm_lookup(prof, "bf16", top, ((n, k),))
    assert edge.source == "measured"
    peak, bw, eb = peak_flops(prof, "bf16"), prof.hbm_bandwidth_Bps.value, ELEMENT_BYTES["bf16"]

    def roof(m):
        return max(2 * m * n * k / peak, ((m + n) * k * eb + m * n * OUTPUT_BYTES) / bw)
    far = gemm_lookup(prof, "bf16", 4 * top, ((n, k),))
    assert far.source == "extrapolated"
    assert far.seconds == pytest.approx(edge.seconds * roof(4 * top) / roof(top))
    # memory-bound: one row against a wider N than measured

    def roof3(m, n_, k_):
        return max(2 * m * n_ * k_ / peak, ((m + n_) * k_ * eb + m * n_ * OUTPUT_BYTES) / bw)
    m0, wide = float(ms[0]), float(ns[-1])
    assert roof3(m0, wide, k) > 2 * m0 * wide * k / peak
    at = gemm_lookup(prof, "bf16", m0, ((wide, k),))
    out = gemm_lookup(prof, "bf16", m0, ((2 * wide, k),))
    assert out.source == "extrapolated"
    assert out.seconds == pytest.approx(at.seconds * roof3(m0, 2 * wide, k) / roof3(m0, wide, k),
                                        rel=1e-9)


def test_deepep_beyond_its_nodes_sends_the_remote_share_over_the_nic():
    """Past the measured node counts, DeepEP scales its edge by tokens x top-k x bytes x
    ((n - 1) / n) / NIC rate; on one node the copies stay on NVLink."""
    prof = measured("h200-sxm")
    d = prof.measured.kernels
    key = next(k for k in d.keys("deepep_normal_dispatch"))
    hidden, top_k, experts = key
    grid = d.get("deepep_normal_dispatch", key)
    nodes, tokens = grid.points
    n_top, t = float(nodes[-1]), float(tokens[len(tokens) // 2])
    per_token = hidden * 1.0
    nvl, nic = prof.nvlink.bandwidth_Bps.value, prof.nic.bandwidth_Bps.value

    def roof(n):
        return t * top_k * per_token * (1 / nvl if n <= 1 else (n - 1) / n / nic)
    edge, _ = deepep_lookup(prof, "normal", int(n_top), hidden, top_k, experts, t, per_token)
    far, _ = deepep_lookup(prof, "normal", int(2 * n_top), hidden, top_k, experts, t, per_token)
    assert far.source == "extrapolated"
    assert far.seconds == pytest.approx(edge.seconds * roof(2 * n_top) / roof(n_top))


def test_an_eager_runtime_adds_its_launches_to_a_measured_kernel():
    prof = measured("h200-sxm")
    eager = prof.model_copy(update={"eager_op_overhead_s": Sourced(value=5e-6, source="test")})
    op = Op("g", "gemm", flops=2 * 64 * 4096 * 4096, bytes=4096 * 4096 * 2.0, m=64,
            gemm_nk=(4096 * 4096,), gemm_dims=((4096.0, 4096.0),), kernels=3)
    assert compute_time_s(op, eager) - compute_time_s(op, prof) == pytest.approx(3 * 5e-6)


def test_attention_pays_its_softmax_at_the_score_rate():
    """A CPU attention core (no attention table) pays scores / rate(scores) beyond its FLOPs."""
    prof = load_profile("cpu-2core-example")
    assert prof.attention_score_rate is not None
    base = Op("a", "attention", flops=1e9, bytes=1e6)
    scored = Op("a", "attention", flops=1e9, bytes=1e6, scores=3e6)
    rate = efficiency(prof.attention_score_rate, 3e6, "attention scores")
    assert compute_time_s(scored, prof) - compute_time_s(base, prof) == \
        pytest.approx(3e6 / rate)


def test_a_tensor_parallel_collective_runs_at_the_efficiency_of_its_bytes_per_peer():
    prof = load_profile("h800")                  # no measured collective tables
    plan = ParallelPlan(gpus=8, tp=4)
    op = Op("ag", "collective", bytes=3e6, collective="all_gather", group="tp")
    d = comm_demand(op, plan, prof)
    eff = efficiency(prof.collective_efficiency, 3e6 / 3, "collective bytes per peer")
    assert d.link_bytes["nvlink"] == pytest.approx(3e6 / eff)


def test_the_memory_refusal_names_each_part_in_gigabytes():
    from simulator.graph.memory import MemoryBreakdown
    m = MemoryBreakdown(weights=60e9, kv_cache=30e9, activations=2e9)
    assert m.total == 92e9
    text = m.describe()
    assert "weights 60.0 GB" in text and "KV cache 30.0 GB" in text and \
        "activations 2.0 GB" in text and "92.0 GB" in text


def stage_shares(w) -> tuple[float, float, int, int]:
    """A rank of the busiest stage: its dense parameters (split tp ways), its experts (split ep
    ways), and the data-parallel ranks holding the same dense parameters and the same experts."""
    from simulator.graph.params import count_params
    model, plan = load_model(w.model), w.plan
    c = count_params(model)
    scale = math.ceil(model.num_layers / plan.pp) / model.num_layers
    return ((c.non_expert + c.embedding) * scale / plan.tp, c.expert_total * scale / plan.ep,
            plan.gpus // (plan.pp * plan.tp), plan.gpus // (plan.pp * plan.ep))


def test_optimizer_time_reads_the_sharded_states_by_zero_stage():
    """Adam on the stage's parameters: without ZeRO every rank updates all of its stage's
    (dense / tp + experts / ep); with ZeRO 1 each its 1 / data-parallel share; each parameter
    reads and writes its optimizer states, reads its gradient and writes two weight copies."""
    from simulator.training.run import train
    from tests.test_training import small
    roomy = profile("h800", idealizations={"enforce_hbm_capacity": False})
    for stage in (0, 1):
        w = small(plan={"gpus": 64, "ep": 8, "pp": 2, "tp": 2})
        w = w.variant(training=w.training.variant(zero_stage=stage, pipeline="1f1b"))
        r = train(w, profile=roomy)
        t = w.training
        rep, exp, d_rep, d_exp = stage_shares(w)
        params = rep + exp if stage == 0 else rep / d_rep + exp / d_exp
        per = 2 * t.optimizer_bytes_per_param + t.grad_bytes + 2 * w.precision.weight_bytes
        rate = roomy.hbm_bandwidth_Bps.value * roomy.hbm_efficiency.value
        assert r.optimizer_s == pytest.approx(params * per / rate)


def test_pipeline_hops_carry_a_micro_batchs_activations_split_over_tp_and_cp():
    """A hop sends micro-batch x sequence / (cp x tp) tokens of hidden-size activations over
    the NIC: in 1F1B the second stage starts the first micro-batch that long after the first
    stage ends it."""
    from simulator.training.run import train
    from tests.test_training import small
    w = small(plan={"gpus": 256, "ep": 8, "pp": 4, "cp": 8, "tp": 2})
    w = w.variant(training=w.training.variant(pipeline="1f1b"))
    prof = profile("h800", idealizations={"enforce_hbm_capacity": False})
    r = train(w, profile=prof)
    model = load_model(w.model)
    act = w.training.micro_batch_sequences * w.context_length / (8 * 2) * model.hidden_size * \
        w.precision.activation_bytes
    hop = prof.nic.latency_s.value + act / prof.nic.bandwidth_Bps.value
    at = {(d, kind, mb): (s, e) for d, kind, mb, _, s, e in r.pipeline_tasks}
    assert at[(1, "F", 0)][0] - at[(0, "F", 0)][1] == pytest.approx(hop)
    assert at[(3, "F", 0)][0] - at[(2, "F", 0)][1] == pytest.approx(hop)


def test_a_second_step_that_shares_its_passes_simulates_nothing(monkeypatch):
    from collections import OrderedDict

    from simulator.training import passes as tr
    from simulator.training.run import train
    calls = []
    real = tr.simulate
    monkeypatch.setattr(tr, "simulate", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(tr, "KEPT_PASSES", OrderedDict())
    w = workload("workloads/validation/training/qwen3-30b-a3b-b200-deepep-16.yaml")
    train(w)
    assert len(calls) == 2                       # forward and backward
    train(w.variant(training=w.training.model_copy(update={"recompute": "full"})))
    assert len(calls) == 2


def test_capacity_prices_the_decode_step_at_its_kv_bound_slots_and_mean_context():
    """Decode-bound capacity: slots = min(dp x max batch, KV budget / (input + output)), the
    step priced at slots / dp sequences per device and the mean context input + output / 2,
    each request taking (output - 1) / (1 + acceptance) steps (a step whose time depends on
    both, so neither argument can go wrong unseen)."""
    from simulator.serving.run import ServingSim
    base = workload("workloads/serving/longcat-flash-h800.yaml")
    spec = {**base.serving.model_dump(), "input_tokens": {"mean": 4500, "dist": "fixed"},
            "output_tokens": {"mean": 1001, "dist": "fixed"},
            "decode": {**base.serving.decode.model_dump(), "max_batch_per_device": 4096}}
    sim = ServingSim(base.variant(serving=spec, runtime={"preset": "none"}))   # no padding
    asked = []
    sim.decode.step_s = lambda b, c: asked.append((b, c)) or 1e-4 * b + 1e-6 * c
    sim.prefill.step_s = lambda b, c: 1e-9
    dp = sim.decode.dp
    slots = sim.kv_budget_tokens / 5501
    assert slots < dp * 4096                       # the KV budget binds
    cap = sim.capacity_rps()
    per_dev, ctx = slots / dp, 4500 + 1001 / 2
    assert asked == [pytest.approx((per_dev, ctx))]
    acc = sim.model.mtp_acceptance
    assert cap == pytest.approx(slots / (1000 / (1 + acc) * (1e-4 * per_dev + 1e-6 * ctx)))


def test_the_prefill_pool_must_hold_its_weights_and_one_full_batch_of_activations():
    from simulator.graph.memory import inference_memory
    from simulator.graph.ops import Shape
    from simulator.errors import MoesimError
    from simulator.serving.run import ServingSim
    w = workload("workloads/serving/longcat-flash-h800.yaml")
    sim = ServingSim(w)
    tokens = w.serving.prefill.max_tokens_per_device
    pmem = inference_memory(sim.model, w.serving.prefill.plan or w.plan, w.precision,
                            Shape("prefill", 1, tokens, 0), False)
    assert pmem.activations > 1e8
    room = pmem.weights + 1.5 * pmem.activations       # one batch fits, twice would not
    ok = profile(w.hardware, hbm_bytes={"value": room, "source": "test"})
    ServingSim(w, profile=ok)
    tight = profile(w.hardware, hbm_bytes={"value": pmem.weights + 0.5 * pmem.activations,
                                           "source": "test"})
    with pytest.raises(MoesimError, match="serving.prefill.plan|serving.decode.plan"):
        ServingSim(w, profile=tight)


def test_a_one_point_table_reads_its_value_at_its_size():
    from simulator.schema.base import RateTable
    table = RateTable(points=[(1e6, 3e9)], source="test")
    assert efficiency(table, 1e6, "x") == 3e9
    assert efficiency(table, 1e3, "x") == efficiency(table, 1e9, "x") == 3e9


def test_attention_without_a_table_is_the_roofline_of_its_flops_and_bytes():
    prof = load_profile("h800")
    assert prof.attention_score_rate is None and prof.eager_op_overhead_s is None
    op = Op("a", "attention", flops=4e12, bytes=1e6)          # compute-bound
    peak = peak_flops(prof, "bf16")
    want = prof.kernel_latency_s.value + 4e12 / (peak * prof.attention_efficiency.value)
    assert compute_time_s(op, prof) == pytest.approx(want)


def test_an_expert_gemm_beyond_its_table_scales_the_edge_by_the_roofline():
    """MoE roofline at (ep, tokens): max(2 rows x 3 h inter / moe_tp / peak, (active experts x
    their weights + rows x 2 h x 2 bytes) / HBM rate), active = min(experts / ep, rows)."""
    prof = measured("h200-sxm")
    ks = prof.measured.kernels
    key = next(k for k in ks.keys("moe") if k[0] == "bf16" and k[1] == "balanced")
    _, _, h, inter, topk, experts, moe_tp = key
    grid = ks.get("moe", key)
    eps, tokens = grid.points
    ep, top = float(eps[-1]), float(tokens[-1])      # few experts a rank, many tokens
    op = Op("e", "grouped_gemm", precision="bf16",
            moe_key=(h, inter, topk, experts, moe_tp, int(ep), 1.0, True))
    from simulator.pricing.measured import moe_lookup
    w_exp = 3 * h * inter / moe_tp
    peak, bw = peak_flops(prof, "bf16"), prof.hbm_bandwidth_Bps.value

    def roof_at(n_ep, t):
        active = min(experts / n_ep, t)
        return max(2 * t * w_exp / peak, (active * w_exp * 2.0 + t * 2 * h * 2.0) / bw)
    edge, far = moe_lookup(prof, op, top), moe_lookup(prof, op, 4 * top)
    assert edge.source == "measured" and far.source == "extrapolated"
    assert roof_at(ep, top) == 2 * top * w_exp / peak          # compute-bound
    assert far.seconds == pytest.approx(edge.seconds * roof_at(ep, 4 * top) / roof_at(ep, top))
    # the group's tokens (tensor-parallel attention): N tokens on EP n give each rank
    # top-k N / n rows, so one EP step beyond the table halves the rows at the same tokens
    wide = float(eps[-1])
    n_tok = float(next(t for t in tokens if t * topk / (2 * wide) >= 2 * experts / wide))

    def roof_group(n_ep):
        return roof_at(n_ep, n_tok * topk / n_ep)
    assert roof_group(2 * wide) > 2 * n_tok * topk / (2 * wide) * w_exp / peak   # memory-bound
    group_edge = moe_lookup(prof, Op("e", "grouped_gemm", precision="bf16", moe_key=(
        h, inter, topk, experts, moe_tp, int(wide), wide / topk, True)),
        n_tok * topk / wide)
    group_beyond = moe_lookup(prof, Op("e", "grouped_gemm", precision="bf16", moe_key=(
        h, inter, topk, experts, moe_tp, int(2 * wide), 2 * wide / topk, True)),
        n_tok * topk / (2 * wide))
    assert group_edge.source == "measured" and group_beyond.source == "extrapolated"
    assert group_beyond.seconds == pytest.approx(
        group_edge.seconds * roof_group(2 * wide) / roof_group(wide), rel=1e-9)
    # a rank's own rows after an all-to-all (EP e, R rows): the EP-1 table at R e / top-k
    # tokens (every expert's rows as here) over e; beyond its tokens, by the EP-1 roofline
    e = 8
    n1 = float(tokens[-2])
    rows = n1 * topk / e
    a2a = Op("e", "grouped_gemm", precision="bf16",
             moe_key=(h, inter, topk, experts, moe_tp, e, 1 / topk, False))
    at = moe_lookup(prof, a2a, rows)
    assert at.seconds == pytest.approx(grid.lookup((1, n1), roof_at).seconds / e)
    past = moe_lookup(prof, a2a, rows * 4 * top / n1)
    assert past.source == "extrapolated"
    assert past.seconds == pytest.approx(
        grid.lookup((1, top), roof_at).seconds / e * roof_at(1, 4 * top * topk) /
        roof_at(1, top * topk), rel=1e-9)


def test_prefill_bound_capacity_counts_only_the_prompt_tokens_computed():
    """A disaggregated prefill pool with half of each prompt in the prefix cache fits twice the
    prompts in its token budget: capacity = prefill GPUs x budget / (input x (1 - hit)) per
    prefill step."""
    from simulator.serving.run import ServingSim
    base = workload("workloads/serving/longcat-flash-h800.yaml")
    spec = {**base.serving.model_dump(), "input_tokens": {"mean": 4000, "dist": "fixed"},
            "output_tokens": {"mean": 101, "dist": "fixed"}}
    sim = ServingSim(base.variant(serving=spec, prefix_hit_rate=0.5))
    assert sim.spec.mode == "disaggregated"
    sim.decode.step_s = lambda b, c: 1e-9
    asked = []
    sim.prefill.step_s = lambda b, c: asked.append((b, c)) or 0.5
    budget = sim.spec.prefill.max_tokens_per_device
    seqs = budget / (4000 * 0.5)
    assert sim.capacity_rps() == pytest.approx(sim.prefill.dp * seqs / 0.5)
    assert asked == [pytest.approx((seqs, 4000))]


def test_a_size_below_a_tables_first_point_takes_the_edge_and_says_so():
    from simulator.notes import collecting
    from simulator.schema.base import RateTable
    table = RateTable(points=[(16.0, 2e9), (256.0, 8e9)], source="test")
    with collecting() as notes:
        assert efficiency(table, 1.0, "rows") == 2e9
    assert any("rows size 1 is outside the calibrated range" in n for n in notes)
    with collecting() as notes:
        assert efficiency(table, 64.0, "rows") == pytest.approx(5e9)   # halfway in log size
    assert not notes


def test_an_attention_core_with_a_table_adds_the_launch_latency():
    prof = load_profile("h800")
    op = Op("a", "attention", flops=1e10, bytes=1e8, kernel="mla_decode", seqs=32, kv_len=4096)
    peak = peak_flops(prof, "bf16")
    from simulator.pricing.hardware import attention_table_time_s
    core = attention_table_time_s(op, peak, prof)
    assert core > 0
    assert compute_time_s(op, prof) == pytest.approx(prof.kernel_latency_s.value + core)
    eager = prof.model_copy(update={"eager_op_overhead_s": Sourced(value=5e-6, source="test")})
    assert compute_time_s(op, eager) == pytest.approx(prof.kernel_latency_s.value + core + 5e-6)


def test_a_prompt_longer_than_the_attention_table_scales_by_the_roofline():
    """Context attention beyond the measured length: the edge's time x roofline(x) /
    roofline(edge), the roofline at (batch, length) the slower of the op's FLOPs per sequence
    x batch x (length / its own length)^2 at the peak and its bytes per sequence x batch x
    (length / its own) at the HBM rate. The op is compute-bound at its own length and
    memory-bound at the table's edge, so both terms count."""
    from simulator.pricing.measured import attention_lookup
    prof = measured("h200-sxm")
    ks = prof.measured.kernels
    key = next(k for k in ks.keys("gqa_context") if k[0] == "bf16" and k[1] == "bf16")
    heads, kv_heads, head_dim = key[2], key[3], key[4]
    grid = ks.get("gqa_context", key)
    batches, lengths = grid.points
    b, edge_len = float(next(x for x in batches if x >= 2)), float(lengths[-1])
    length = 2 * edge_len
    peak, bw = peak_flops(prof, "bf16"), prof.hbm_bandwidth_Bps.value
    per_seq_bytes = 1e6
    per_seq_flops = 1.5 * per_seq_bytes / bw * peak      # compute-bound at its own length
    op = Op("a", "attention", flops=per_seq_flops * b, bytes=per_seq_bytes * b,
            kernel="gqa_prefill", attn_key=(heads, kv_heads, head_dim), seqs=b,
            attn_len=length, m=b * length)

    def roof(n):
        return max(b * per_seq_flops * (n / length) ** 2 / peak,
                   b * per_seq_bytes * (n / length) / bw)
    assert roof(length) == b * per_seq_flops / peak                       # compute-bound
    assert roof(edge_len) == b * per_seq_bytes * 0.5 / bw                 # memory-bound
    at = ks.get("gqa_context", key).lookup((b, edge_len), lambda x: 1.0).seconds
    got = attention_lookup(prof, op)
    assert got.source == "extrapolated"
    assert got.seconds == pytest.approx(at * roof(length) / roof(edge_len))
    # compute-bound at both lengths: causal pairs grow as the square of the length
    heavy = Op("a", "attention", flops=100 * per_seq_flops * b, bytes=per_seq_bytes * b,
               kernel="gqa_prefill", attn_key=(heads, kv_heads, head_dim), seqs=b,
               attn_len=length, m=b * length)
    assert attention_lookup(prof, heavy).seconds == pytest.approx(at * (length / edge_len) ** 2)


def test_an_empty_tensor_parallel_collective_has_no_measured_time():
    from simulator.pricing.measured import comm_lookup
    prof = measured("h200-sxm")
    plan = ParallelPlan(gpus=8, tp=8, attention_tp=8, ep=8)
    full = Op("ar", "collective", bytes=1e6, collective="all_reduce", group="tp")
    empty = Op("ar", "collective", bytes=0.0, collective="all_reduce", group="tp")
    assert comm_lookup(full, plan, prof) is not None
    assert comm_lookup(empty, plan, prof) is None
    two = ParallelPlan(gpus=8, tp=2, attention_tp=2, ep=2)       # two GPUs: measured too
    assert comm_lookup(full, two, prof) is not None
    assert comm_lookup(full, ParallelPlan(gpus=8, ep=8), prof) is None    # one GPU: nothing


def test_weights_that_do_not_fit_the_decode_pool_are_named_in_gigabytes():
    from simulator.errors import MoesimError
    from simulator.graph.memory import inference_memory
    from simulator.graph.ops import Shape
    from simulator.serving.run import ServingSim
    w = workload("workloads/serving/longcat-flash-h800.yaml")
    sim = ServingSim(w)
    mem = inference_memory(sim.model, w.serving.decode.plan or w.plan, w.precision,
                           Shape("decode", w.serving.decode.max_batch_per_device,
                                 1 + sim.mtp_draft, 0), bool(sim.mtp_draft))
    small = profile(w.hardware, hbm_bytes={"value": mem.weights / 2, "source": "test"})
    with pytest.raises(MoesimError) as e:
        ServingSim(w, profile=small)
    text = e.value.render()
    assert f"{mem.weights / 1e9:.1f} GB of weights + {mem.activations / 1e9:.1f} GB of " \
        "activations" in text and mem.activations > 5e7
    assert f"against {mem.weights / 2 / 1e9:.0f} GB" in text


def test_the_kv_budget_leaves_room_for_the_verify_tokens_activations():
    """With MTP each decode sequence carries 1 + draft tokens through the step: the activations
    the KV budget leaves room for are those of max batch x 2 tokens."""
    from simulator.graph.memory import inference_memory
    from simulator.graph.ops import Shape
    from simulator.serving.run import ServingSim
    w = workload("workloads/serving/longcat-flash-h800.yaml")
    sim = ServingSim(w)
    assert sim.mtp_draft == 1
    plan, dec = w.serving.decode.plan or w.plan, w.serving.decode
    mem = inference_memory(sim.model, plan, w.precision, Shape("decode", dec.max_batch_per_device,
                                                               2, 0), True)
    one = inference_memory(sim.model, plan, w.precision, Shape("decode", dec.max_batch_per_device,
                                                               1, 0), True)
    assert mem.activations == 2 * one.activations > 0
    free = sim.profile.hbm_bytes.value - mem.weights - mem.activations
    assert sim.kv_budget_tokens == pytest.approx(free / sim.kv_token_bytes * sim.decode.dp)


def test_the_backward_of_a_micro_batch_is_its_pass_and_its_weight_gradients_once():
    """Without recompute or host bound (torchtitan launches ahead), a micro-batch's backward is
    the simulated backward pass (LM head and loss included): input gradients plus weight
    gradients, each once."""
    from simulator.step.whatif import resolve, simulate
    from simulator.training.run import train
    q = workload("workloads/validation/training/qwen3-30b-a3b-b200-deepep-16.yaml")
    q = q.variant(training=q.training.model_copy(update={"recompute": "none"}))
    assert q.training.framework == "torchtitan" and q.plan.pp == 1
    prof = profile(q.hardware, idealizations={"enforce_hbm_capacity": False})
    r = train(q, profile=prof)
    from simulator.loading import load_training_runtime
    from simulator.training.run import with_kernel_tables
    q = with_kernel_tables(q, load_training_runtime(q.training.framework), prof)   # trtllm's
    bwd = q.variant(phase="train_bwd", batch_per_device=q.training.micro_batch_sequences,
                    training=None)
    b = simulate(bwd, resolved=resolve(bwd, profile=prof, with_head=True))
    assert 0 < r.weight_grad_s_per_microbatch < b.step_time_s
    assert r.backward_s_per_microbatch == pytest.approx(b.step_time_s)


def test_data_parallel_traffic_is_the_shards_each_rank_sends():
    """ZeRO-1: each rank reduce-scatters the gradients of the parameters it does not own (dense:
    (d - 1) / d of its stage's dense share over d data-parallel ranks; experts: likewise over
    the expert-data-parallel ranks) and all-gathers the updated weights (weight bytes)."""
    from simulator.loading import load_training_runtime
    from simulator.training.data_parallel import dp_buckets, dp_exposed_s, dp_transfer_s
    from simulator.training.run import train
    from tests.test_training import small
    slow = profile("h800", idealizations={"enforce_hbm_capacity": False},
                   nic={"bandwidth_Bps": {"value": 2e8, "source": "test"}})
    w = small(plan={"gpus": 64, "ep": 8, "pp": 2, "tp": 2})
    w = w.variant(training=w.training.variant(zero_stage=1, pipeline="1f1b"))
    r = train(w, profile=slow)
    t = w.training
    rep, exp, d_rep, d_exp = stage_shares(w)
    assert (d_rep, d_exp) == (16, 4)
    shard = rep * (d_rep - 1) / d_rep + exp * (d_exp - 1) / d_exp
    rs = dp_transfer_s(slow, shard * t.grad_bytes, d_rep)
    ag = rs * w.precision.weight_bytes / t.grad_bytes
    f_s = r.forward_s_per_microbatch
    b_total = r.backward_s_per_microbatch          # the backward with its recomputed forward
    mc = load_training_runtime(t.framework)
    layers = r.stage_layers
    buckets = sum(math.ceil(p / max(mc.dp_bucket_params.value,
                                    mc.dp_bucket_params_per_rank.value * d_rep))
                  for p in (rep, exp))
    assert buckets == dp_buckets(mc, rep, exp, d_rep, layers) and buckets >= 2
    want = dp_exposed_s(1, r.micro_batches, f_s, b_total, rs, ag, buckets)
    assert want > 0
    assert r.dp_exposed_s == pytest.approx(want, rel=1e-6)


def test_a_shape_table_is_bilinear_in_log_rows_and_log_weights():
    from simulator.pricing.hardware import shape_efficiency
    from simulator.schema.base import ShapeEfficiencyTable
    t = ShapeEfficiencyTable(m=[1.0, 100.0], weights=[1e6, 1e8],
                             efficiency=[[0.1, 0.3], [0.5, 0.9]], source="test")
    assert shape_efficiency(t, 10.0, 1e7) == pytest.approx((0.1 + 0.3 + 0.5 + 0.9) / 4)
    assert shape_efficiency(t, 100.0, 1e7) == pytest.approx((0.5 + 0.9) / 2)
    assert shape_efficiency(t, 10.0, 1e6) == pytest.approx((0.1 + 0.5) / 2)
    assert shape_efficiency(t, 1000.0, 1e9) == pytest.approx(0.9)     # beyond both: the edge
    assert shape_efficiency(t, 0.1, 1e5) == pytest.approx(0.1)
    one = ShapeEfficiencyTable(m=[1.0, 100.0], weights=[1e6], efficiency=[[0.2], [0.6]],
                               source="test")                      # one weight column
    assert shape_efficiency(one, 10.0, 1e6) == pytest.approx(0.4)
    col = ShapeEfficiencyTable(m=[8.0], weights=[1e6, 1e8], efficiency=[[0.2, 0.6]],
                               source="test")                      # one row
    assert shape_efficiency(col, 8.0, 1e7) == pytest.approx(0.4)


def test_a_named_framework_takes_its_newest_version():
    ms = select(_with_an_older_sglang(), RuntimeSpec(framework="sglang"), Precision())
    assert (ms.kernels.framework, ms.kernels.version) == ("sglang", "0.5.14")


def test_four_bit_expert_tables_only_for_weights_under_a_byte():
    prof = load_profile("b200-sxm")
    assert not select(prof, RuntimeSpec(), Precision(weight_bytes=1)).four_bit_weights
    assert select(prof, RuntimeSpec(), Precision(weight_bytes=0.53125)).four_bit_weights


def test_an_all_reduce_beyond_its_table_scales_by_latency_plus_bytes_over_nvlink():
    from simulator.pricing.measured import comm_lookup
    prof = measured("h200-sxm")
    ks = prof.measured.kernels
    grid = ks.get("all_reduce", (8,)) or ks.get("nccl", ("all_reduce", 8))
    (sizes,) = grid.points
    top = float(sizes[-1])
    lat, bw = prof.nvlink.latency_s.value, prof.nvlink.bandwidth_Bps.value
    plan = ParallelPlan(gpus=8, tp=8, attention_tp=8, ep=8)

    def op_for(size):          # the op's bytes are a ring's bytes sent per GPU
        return Op("ar", "collective", bytes=size * 2 * 7 / 8, collective="all_reduce", group="tp")
    edge, far = comm_lookup(op_for(top), plan, prof), comm_lookup(op_for(4 * top), plan, prof)
    assert far.source == "extrapolated"
    assert far.seconds == pytest.approx(edge.seconds * (lat + 4 * top / bw) / (lat + top / bw))


def test_an_fp4_gemm_beyond_its_table_reads_half_a_byte_per_weight():
    prof = measured("b200-sxm")
    grid = prof.measured.kernels.get("gemm", ("fp4",))
    ms, ns, ks = grid.points
    peak, bw, eb = peak_flops(prof, "fp4"), prof.hbm_bandwidth_Bps.value, ELEMENT_BYTES["fp4"]
    assert eb == 0.5
    m0, wide, k = float(ms[0]), float(ns[-1]), float(ks[len(ks) // 2])

    def roof(n):
        return max(2 * m0 * n * k / peak, ((m0 + n) * k * eb + m0 * n * OUTPUT_BYTES) / bw)
    assert roof(wide) > 2 * m0 * wide * k / peak                  # memory-bound
    at = gemm_lookup(prof, "fp4", m0, ((wide, k),))
    out = gemm_lookup(prof, "fp4", m0, ((2 * wide, k),))
    assert out.source == "extrapolated"
    assert out.seconds == pytest.approx(at.seconds * roof(2 * wide) / roof(wide), rel=1e-9)


def test_attention_backward_costs_two_and_a_half_forwards():
    # FlashAttention's backward: five matmuls of the forward's size against its two (FA-2 s3),
    # so 2.5x the FLOPs; where the runtime's tables measure the forward kernel, the backward is
    # that measured time x 2.5 (and says it is extrapolated)
    from simulator.loading import load_workload
    from simulator.pricing.hardware import compute_time_s
    from simulator.pricing.measured import compute_lookup
    from simulator.step.resolve import resolve
    from simulator.step.whatif import build_step_graph
    w = load_workload("workloads/validation/training/qwen3-235b-h100-tp2-ep32-pp8.yaml")
    ops = {}
    for phase in ("train_fwd", "train_bwd"):
        r = resolve(w.variant(phase=phase))
        g = build_step_graph(r, w.schedule, layers=1)
        ops[phase] = next(d["op"] for _, d in g.nodes(data=True) if d["op"].kind == "attention")
    fwd, bwd = ops["train_fwd"], ops["train_bwd"]
    assert bwd.flops == pytest.approx(2.5 * fwd.flops) and bwd.bytes == pytest.approx(2 * fwd.bytes)
    prof = r.profile
    assert compute_lookup(fwd, prof) is not None              # measured tables price it
    assert compute_time_s(bwd, prof) == pytest.approx(2.5 * compute_time_s(fwd, prof))
    assert compute_lookup(bwd, prof).source == "extrapolated"


def test_a_grouped_expert_gemm_never_outruns_the_peak():
    # Qwen3-235B training at EP 32: 2,048 tokens a GPU route 16,384 rows onto its 4 experts,
    # 618 GFLOP, 0.625 ms at the H100's BF16 peak. Read from the EP-1 table (every expert's
    # 512 rows, over 32) it takes longer than that; a lookup whose table point holds a smaller
    # kernel than the op (here the same rows read at 16 group tokens) is floored at FLOPs / peak
    from simulator.loading import load_workload
    from simulator.pricing.measured import compute_lookup, moe_lookup
    from simulator.pricing.peaks import peak_flops
    from simulator.step.resolve import resolve
    from simulator.step.whatif import build_step_graph
    w = load_workload("workloads/validation/training/qwen3-235b-h100-tp2-ep32-pp8.yaml")
    r = resolve(w)
    g = build_step_graph(r, w.schedule, layers=4)
    op = next(d["op"] for _, d in g.nodes(data=True) if d["op"].kind == "grouped_gemm")
    rows = 2048 * 8
    assert op.flops == pytest.approx(2 * rows * 3 * 4096 * 1536)
    floor = op.flops / peak_flops(r.profile, op.precision)
    assert floor == pytest.approx(op.flops / 989.4e12)
    assert compute_lookup(op, r.profile).seconds > floor
    small = Op("e", "grouped_gemm", precision="bf16", flops=op.flops,
               moe_key=(4096, 1536, 8, 128, 1, 32, 16 / rows, True))
    hit = moe_lookup(r.profile, small, rows)
    assert hit.seconds == pytest.approx(floor)
