"""Tensor-parallel attention and experts (plan.attention_tp, plan.moe_tp), closed-loop serving
and the fidelity fields, each against arithmetic worked out here."""
import math
from pathlib import Path

import numpy as np
import pytest

from simulator.errors import MoesimError
from simulator.graph.model import build_forward
from simulator.graph.ops import Shape
from simulator.loading import load_model
from simulator.schema import ParallelPlan, Precision, Workload
from tests.conftest import workload

QWEN = load_model("qwen3-235b-a22b")      # 64 heads, 4 KV heads of 128, hidden 4096, 128 x 8


def _ops(plan, model=QWEN, seqs=16, ctx=1000):
    g = build_forward(model, plan, Precision(), Shape("decode", seqs, 1, ctx),
                      model.moe.top_k if model.moe else 0, layers=1, with_head=False)
    return {n.split(".", 1)[1]: d["op"] for n, d in g.nodes(data=True)}


def test_attention_heads_and_its_all_reduce_split_over_the_group():
    h, t, hd = 4096, 16, 128
    one = _ops(ParallelPlan(gpus=1))
    tp = _ops(ParallelPlan(gpus=8, tp=8, attention_tp=8, ep=8))
    # 64 / 8 = 8 query heads, max(1, 4 // 8) = 1 KV head per GPU
    assert tp["attn.qkv_proj"].gemm_nk == (h * (8 + 2 * 1) * hd,)
    assert one["attn.qkv_proj"].gemm_nk == (h * (64 + 2 * 4) * hd,)
    assert tp["attn.o_proj"].flops == 2 * t * 8 * hd * h
    assert tp["attn.core"].flops == pytest.approx(one["attn.core"].flops / 8)
    ar = tp["attn.all_reduce"]
    assert ar.collective == "all_reduce" and ar.group == "tp"
    assert ar.bytes == pytest.approx(2 * 7 / 8 * t * h * 2)       # ring: 2 (n-1)/n of 16 x 4096 bf16
    assert "attn.all_reduce" not in one


def test_experts_under_tensor_parallel_attention():
    h, t, k, inter = 4096, 16, 8, 1536
    ops = _ops(ParallelPlan(gpus=8, tp=8, attention_tp=8, ep=4, moe_tp=2))
    e = ops["moe.experts"]
    rows = t * k / 4                                   # the group's tokens, a quarter's experts
    assert e.flops == pytest.approx(2 * rows * 3 * h * inter / 2)
    assert e.gemm_nk == (2 * h * inter / 2, h * inter / 2)
    assert "moe.dispatch" not in ops and ops["moe.all_reduce"].bytes == \
        pytest.approx(2 * 7 / 8 * t * h * 2)


def test_dense_ffn_rows_are_not_gathered_under_tensor_parallel_attention():
    llama = load_model("llama-3-70b")
    ops = _ops(ParallelPlan(gpus=4, tp=4, attention_tp=4), model=llama, seqs=8)
    ffn = ops["ffn.ffn"]
    assert ffn.m == 8                                   # 8 tokens, not 8 x tp
    assert ffn.flops == pytest.approx(2 * 8 * 3 * 8192 * llama.dense_intermediate / 4)
    assert "ffn.all_gather" not in ops and "ffn.all_reduce" in ops


def test_plans_that_do_not_add_up_are_refused():
    for bad in (dict(gpus=8, tp=4, attention_tp=8), dict(gpus=8, tp=8, attention_tp=8, ep=2),
                dict(gpus=8, ep=8, moe_tp=2)):
        with pytest.raises(ValueError):
            ParallelPlan(**bad)


def test_tokens_per_gpu_count_the_group_once():
    base = dict(model="qwen3-235b-a22b", hardware="h200-sxm", phase="decode",
                batch_per_device=16, context_length=1000)
    from simulator.step.whatif import simulate
    r = simulate(Workload.model_validate(
        {**base, "plan": {"gpus": 8, "tp": 8, "attention_tp": 8, "ep": 8}})).to_json()
    assert r["tokens_per_gpu_s"] == pytest.approx(16 / (r["tpot_ms"] / 1e3) / 8)


def _closed(concurrency, requests, mode="colocated"):
    from simulator.serving.run import ServingSim
    w = workload("workloads/serving/deepseek-v3-h800.yaml", serving={
        "mode": mode, "arrivals": {"process": "closed", "concurrency": concurrency,
                                   "requests": requests},
        "input_tokens": {"mean": 500}, "output_tokens": {"mean": 40},
        "decode": {"max_batch_per_device": 64}})
    sim = ServingSim(w)
    return sim, sim.run()


@pytest.mark.parametrize("mode", ["colocated", "disaggregated"])
def test_closed_loop_conservation_and_littles_law(mode):
    sim, res = _closed(concurrency=24, requests=96, mode=mode)
    m = res.metrics
    assert m["requests"] == {"arrived": 96, "finished": 96, "rejected": 0, "unfinished": 0,
                             "preempted": 0}
    # 24 clients always hold a request (each sends the next the instant one ends) until the
    # last 24 are out: the mean in system is below 24 and far above 12
    assert 12 < m["little"]["mean_in_system"] <= 24 + 1e-9
    assert m["little"]["lambda_times_w"] == pytest.approx(m["little"]["mean_in_system"],
                                                         rel=1e-6)
    assert np.isfinite(res.ttft_s).all() and math.isfinite(m["simulated_s"])


def test_closed_loop_of_one_client_runs_requests_back_to_back():
    sim, res = _closed(concurrency=1, requests=5)
    # one client: no request waits for another, so makespan = the sum of the end-to-end times
    assert res.metrics["simulated_s"] == pytest.approx(res.e2e_s.sum(), rel=1e-9)


def test_closed_loop_needs_its_concurrency():
    with pytest.raises(ValueError, match="concurrency"):
        workload("workloads/serving/deepseek-v3-h800.yaml",
                 serving={"arrivals": {"process": "closed"}})


def test_fidelity_is_lower_and_wider_far_outside_measured_shapes():
    from simulator.step.whatif import simulate
    ok = simulate(workload("workloads/validation/deepseek-v3-h100-sglang-decode.yaml")).to_json()
    far = simulate(workload("workloads/validation/deepseek-v3-h100-sglang-decode.yaml",
                            batch_per_device=2048, context_length=300)).to_json()
    for r in (ok, far):
        assert 0 <= r["fidelity"]["measured_share"] <= 1
        assert r["fidelity"]["expected_error_pct"] > 0
    assert far["fidelity"]["measured_share"] < ok["fidelity"]["measured_share"]
    assert far["fidelity"]["expected_error_pct"] > ok["fidelity"]["expected_error_pct"]
    assert far["fidelity"]["extrapolated"]


def test_a_moe_chunked_schedule_is_refused_under_tensor_parallel_attention():
    from simulator.step.whatif import simulate
    w = Workload.model_validate(dict(model="deepseek-v3", hardware="h200-sxm", phase="prefill",
                                     batch_per_device=1, context_length=4096,
                                     schedule="scmoe-chunked",
                                     plan={"gpus": 8, "tp": 8, "attention_tp": 8, "ep": 8}))
    with pytest.raises(MoesimError):
        simulate(w)


def test_sliding_window_attention_reads_the_window_on_its_share_of_blocks():
    from simulator.graph.model import window_keys, window_pairs
    from simulator.schema import AttentionSpec
    a = AttentionSpec(kind="gqa", num_heads=64, num_kv_heads=8, head_dim=64,
                      sliding_window=128, sliding_window_share=0.5)
    # decode at 1000 keys: half the blocks read 128, half 1000
    assert window_keys(a, 1000) == pytest.approx(0.5 * 128 + 0.5 * 1000)
    assert window_keys(a, 100) == pytest.approx(100)                 # inside the window
    s = Shape("prefill", 1, 1000, 1000)
    full = 1000 * (0 + (1000 + 1) / 2)                                # causal pairs
    assert window_pairs(a, s) == pytest.approx(0.5 * 1000 * 128 + 0.5 * full)


def test_kv_per_gpu_under_tensor_parallel_attention():
    from simulator.graph.params import attention_blocks, kv_elements_per_token
    blocks = attention_blocks(QWEN)
    assert kv_elements_per_token(QWEN) == blocks * 2 * 4 * 128
    assert kv_elements_per_token(QWEN, 2) == blocks * 2 * 2 * 128    # 4 KV heads over 2 GPUs
    assert kv_elements_per_token(QWEN, 8) == blocks * 2 * 1 * 128    # one copied head each
    dsv3 = load_model("deepseek-v3")                                  # MLA latent: not split
    assert kv_elements_per_token(dsv3, 8) == kv_elements_per_token(dsv3)


def test_gpt_oss_and_dense_qwen3_import_from_their_own_fields(tmp_path):
    from simulator.hf_import import import_hf_config
    root = Path(__file__).resolve().parent / "data"
    m = import_hf_config(root / "hf" / "gpt_oss_small.json")
    a = m.attention
    assert (a.sliding_window, a.sliding_window_share) == (128, 3 / 4)     # 3 of 4 layer types
    assert (m.moe.num_experts, m.moe.top_k, m.moe.expert_intermediate) == (16, 4, 256)
    q = import_hf_config(root / "silicon" / "model_configs" / "acme--TinyDense_config.json")
    assert q.moe is None and q.dense_intermediate == 1024 and q.attention.head_dim == 64
    with pytest.raises(MoesimError, match="sparse attention"):
        import_hf_config(root / "silicon" / "model_configs" / "acme--TinySparse_config.json")


def test_the_lm_head_is_vocabulary_parallel_and_bf16_under_tensor_parallel_attention():
    # Llama-3-70B: hidden 8192, vocabulary 128,256; an FP8 checkpoint (1-byte weights) keeps
    # its head in BF16. Under TP 4 each GPU multiplies by 128,256 / 4 columns and the logits
    # are all-gathered (ring: 3 chunks of 8 tokens x 32,064 x 2 bytes sent per GPU).
    from simulator.graph.memory import inference_memory
    from simulator.graph.params import count_params
    llama = load_model("llama-3-70b")
    h, v, t = 8192, 128256, 8
    fp8 = Precision(weight_bytes=1)

    def head(plan, compute=None):
        g = build_forward(llama, plan, fp8, Shape("decode", t, 1, 1000), 0, layers=1,
                          compute=compute)
        return {n.split(".", 1)[1]: d["op"] for n, d in g.nodes(data=True)
                if ".head." in n}
    tp = head(ParallelPlan(gpus=4, tp=4, attention_tp=4))
    lm = tp["head.lm_head"]
    assert lm.flops == pytest.approx(2 * t * h * v / 4)
    assert lm.weight_bytes == pytest.approx(h * v / 4 * 2)
    assert lm.gemm_dims == ((v / 4, h),)
    ag = tp["head.logits_all_gather"]
    assert ag.collective == "all_gather" and ag.group == "tp"
    assert ag.bytes == pytest.approx(t * v / 4 * 3 * 2)
    one = head(ParallelPlan(gpus=1))
    assert one["head.lm_head"].weight_bytes == pytest.approx(h * v * 2)
    assert "head.logits_all_gather" not in one
    # a head computing in FP8 reads FP8 weights
    assert head(ParallelPlan(gpus=1), {"lm_head": "fp8"})["head.lm_head"].weight_bytes == \
        pytest.approx(h * v * 1)
    # memory: embedding and head, BF16, a quarter of them per GPU
    emb = count_params(llama).embedding
    shape = Shape("decode", 1, 1, 1)
    m4 = inference_memory(llama, ParallelPlan(gpus=4, tp=4, attention_tp=4), fp8, shape, False)
    m4_bf16 = inference_memory(llama, ParallelPlan(gpus=4, tp=4, attention_tp=4),
                               Precision(weight_bytes=2), shape, False)
    # everything but the embeddings doubles from 1 to 2 bytes; the embeddings do not
    assert m4_bf16.weights - m4.weights == pytest.approx(m4.weights - emb / 4 * 2)


def test_a_training_step_ends_in_a_vocabulary_parallel_head_and_its_loss():
    # Megatron's tp 4 with sequence parallelism, Llama-3-70B, 2 sequences of 512 tokens: a GPU
    # holds 1,024 / 4 = 256 tokens, gathers the other 768 (x 8192 x 2 bytes), multiplies all
    # 1,024 by 128,256 / 4 columns, and its cross-entropy reads that logits shard (1,024 x
    # 32,064 x 2 bytes); no logits are gathered. The backward mirrors it: dgrad and wgrad of the
    # head, the loss's gradient written over the same shard.
    from simulator.graph.backward import build_backward
    llama = load_model("llama-3-70b")
    h, v, t, tp = 8192, 128256, 256, 4
    plan = ParallelPlan(gpus=4, tp=tp)
    fwd = build_forward(llama, plan, Precision(), Shape("train_fwd", 2, 512 // tp, 512), 0,
                        layers=1)
    ops = {n.split(".", 1)[1]: d["op"] for n, d in fwd.nodes(data=True) if ".head." in n}
    assert ops["head.sp_all_gather"].bytes == pytest.approx(t * h * 2 * (tp - 1))
    lm = ops["head.lm_head"]
    assert lm.m == t * tp and lm.gemm_dims == ((v / tp, h),)
    assert lm.flops == pytest.approx(2 * t * tp * h * v / tp)
    assert ops["head.cross_entropy"].bytes == pytest.approx(t * tp * v / tp * 2)
    assert "head.logits_all_gather" not in ops
    bwd = build_backward(fwd, Precision())
    assert {"head.lm_head.dgrad", "head.lm_head.wgrad", "head.cross_entropy.bwd"} <= \
        {n.split(".", 1)[1] for n in bwd.nodes}


def test_a_training_step_with_mtp_trains_the_mtp_layer():
    # DeepSeek-V3's MTP module (mtp.enabled in a training workload): its projection (2h -> h),
    # layer and shared head run in the step's forward and backward, and cost time; a decode
    # step's tokens per forward is unchanged by a training workload's MTP
    from simulator.step.whatif import resolve, simulate
    from simulator.training.run import train
    w = workload("workloads/deployments/deepseek-v3-pretrain-dualpipe.yaml")
    assert w.mtp.enabled
    fwd = w.variant(batch_per_device=1, training=None)
    run = simulate(fwd).timeline.ops        # two-batch overlap: two micro-batches of 2,048
    ops, h = [op.name for op in run], 7168
    proj = [op for op in run if op.name.endswith("mtp.proj")]
    assert len(proj) == 2 and sum(op.flops for op in proj) == pytest.approx(2 * 4096 * 2 * h * h)
    assert any(n.endswith("mtp_head.lm_head") for n in ops)
    assert resolve(fwd).tokens_per_forward == 1.0
    without = w.variant(mtp=w.mtp.variant(enabled=False))
    assert train(w).step_time_s > train(without).step_time_s
