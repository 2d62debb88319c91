"""Training: pipeline schedules, overlap, memory, determinism, bad input."""
import json

import pytest
from typer.testing import CliRunner

from cli import app
from simulator.errors import MoesimError
from simulator.loading import load_model
from simulator.training.pipeline import simulate_pipeline
from simulator.training.run import parse_tokens, train, training_memory
from tests.conftest import profile, workload

LC = "workloads/training/longcat-flash-pretrain-h800.yaml"


def small(**kw):
    base = dict(plan={"gpus": 256, "ep": 32, "pp": 4, "cp": 8},
                training={"global_batch_sequences": 64, "micro_batch_sequences": 1,
                          "pipeline": "1f1b", "zero_stage": 2, "recompute": True})
    base.update(kw)
    return workload(LC, **base)


@pytest.mark.parametrize("p,m", [(4, 8), (8, 32), (16, 16), (2, 1)])
def test_1f1b_bubble_formula_on_uniform_stages(p, m):
    r = simulate_pipeline(p, m, 1.0, 2.0, 0.0, "1f1b")
    assert r.bubble_fraction == pytest.approx((p - 1) / (m + p - 1), rel=1e-12)
    assert r.makespan_s == pytest.approx((m + p - 1) * 3.0)


def test_interleaved_and_zero_bubble_shrink_the_bubble():
    one = simulate_pipeline(8, 16, 1.0, 1.0, 1.0, "1f1b").bubble_fraction
    inter = simulate_pipeline(8, 16, 1.0, 1.0, 1.0, "interleaved", v=2).bubble_fraction
    zb = simulate_pipeline(8, 16, 1.0, 1.0, 1.0, "zb-v").bubble_fraction
    assert zb < inter < one


def test_train_bubble_matches_formula_with_1f1b():
    m = train(small()).to_json()
    p, n = 4, m["micro_batches"]
    assert m["bubble_fraction"] == pytest.approx((p - 1) / (n + p - 1), rel=0.02)


def test_zero_cost_comm_scmoe_equals_sequential():
    fast = {"value": 1e18}
    free = profile("h800", nvlink={"bandwidth_Bps": fast, "latency_s": {"value": 0}},
                   nic={"bandwidth_Bps": fast, "latency_s": {"value": 0}},
                   ep_kernel_latency_s={"value": 0}, comm_sm_fraction={"value": 0})
    seq = train(small(schedule="sequential"), profile=free).step_time_s
    sc = train(small(schedule="scmoe"), profile=free).step_time_s
    assert sc == pytest.approx(seq, rel=1e-6)
    real_seq = train(small(schedule="sequential")).step_time_s
    real_sc = train(small(schedule="scmoe")).step_time_s
    assert real_sc < real_seq


def test_zero3_more_dp_never_raises_parameter_memory():
    mems = []
    for gpus in (128, 256, 512, 1024):
        w = small(plan={"gpus": gpus, "ep": 32, "pp": 4, "cp": 8},
                  training={"global_batch_sequences": 1024, "zero_stage": 3})
        mems.append(training_memory(w, w.training, load_model(w.model), 7, 4).params)
    assert all(b <= a for a, b in zip(mems, mems[1:]))
    assert mems[-1] < mems[0]


def test_same_seed_same_result():
    assert train(small()) == train(small())


def test_metrics_and_tokens():
    one = train(small())
    steps = 1000                        # exactly 1000 optimizer steps' worth of tokens
    m = train(small(), tokens=steps * one.tokens_per_step).to_json()
    assert 0 < m["mfu"] < 1 and 0 <= m["exposed_comm_fraction"] <= 1
    assert m["days_to_train"] == pytest.approx(steps * one.step_time_s / 86400)
    price = profile("h800").price_per_gpu_hour.value
    assert m["cost_usd"] == pytest.approx(steps * one.step_time_s / 3600 * 256 * price)
    assert parse_tokens("20T") == 20e12 and parse_tokens("800B") == 800e9
    assert parse_tokens("1.5e12") == 1.5e12
    with pytest.raises(MoesimError):
        parse_tokens("lots")


@pytest.mark.parametrize("update,field", [
    ({"plan": {"gpus": 256, "ep": 32, "pp": 3, "cp": 8}}, "pp"),
    ({"plan": {"gpus": 256, "ep": 32, "pp": 4, "cp": 8}, "context_length": 8190}, "plan.cp"),
    ({"training": {"global_batch_sequences": 60}}, "global_batch_sequences"),
])
def test_bad_plans(update, field):
    with pytest.raises(Exception) as e:
        train(small(**update))
    assert field in str(e.value)


def test_ep_not_dividing_experts_and_memory_refusal():
    w = small(model="mixtral-8x7b", plan={"gpus": 96, "ep": 3, "pp": 4, "cp": 8},
              training={"global_batch_sequences": 3})
    with pytest.raises(MoesimError, match="plan.ep"):
        train(w)
    big = small(training={"global_batch_sequences": 64, "zero_stage": 0, "recompute": False})
    with pytest.raises(MoesimError) as e:
        train(big)
    assert "does not fit" in e.value.render() and "optimizer" in e.value.render()


def test_train_cli(tmp_path):
    r = CliRunner().invoke(app, ["train", LC, "--tokens", "20T", "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    for key in ("step_time_s", "mfu", "tokens_per_day", "exposed_comm_fraction",
                "bubble_fraction", "peak_memory_gb", "days_to_train", "cost_usd"):
        assert key in m
    r = CliRunner().invoke(app, ["train", LC, "--tokens", "twenty"])
    assert r.exit_code == 2 and "--tokens" in r.output


def test_data_parallel_exposure_by_zero_stage_by_hand():
    from simulator.training.data_parallel import dp_exposed_s, exposed_after_pass
    # a 2 s backward fills 4 buckets of a 3 s reduce-scatter, bucket j ready at (j + 1) x 0.5 s,
    # each 0.75 s, one at a time: they end at 1.25, 2.0, 2.75, 3.5 s, 1.5 s after the pass
    assert exposed_after_pass(2.0, 3.0, 4) == pytest.approx(1.5)
    # the closed form of that schedule: max(T / n, T - P (n - 1) / n)
    for p_s, t_s, n in ((2.0, 3.0, 4), (2.0, 0.4, 8), (5.0, 1.0, 1), (1.0, 9.0, 3)):
        assert exposed_after_pass(p_s, t_s, n) == pytest.approx(
            max(t_s / n, t_s - p_s * (n - 1) / n))
    # f 1 s, b 2 s per micro-batch; a reduce-scatter of 3 s, an all-gather of 1.5 s, 4 buckets
    assert dp_exposed_s(0, 4, 1.0, 2.0, 3.0, 1.5, 4) == pytest.approx(6.0 - 2.0 * 3 / 4)
    assert dp_exposed_s(1, 4, 1.0, 2.0, 3.0, 1.5, 4) == pytest.approx(1.5 + (1.5 - 0.75))
    # small traffic: all but the last bucket hidden (a 1 s scatter, 0.5 s gather)
    assert dp_exposed_s(2, 4, 1.0, 2.0, 1.0, 0.5, 4) == pytest.approx(0.25 + 0.125)
    # one bucket: nothing overlaps (Megatron without overlapped reduce)
    assert dp_exposed_s(1, 4, 1.0, 2.0, 3.0, 1.5, 1) == pytest.approx(3.0 + 1.5)
    # FSDP: every micro-batch gathers for its forward and its backward, and scatters
    assert dp_exposed_s(3, 4, 1.0, 2.0, 3.0, 1.5, 4) == pytest.approx(
        4 * ((1.5 - 0.75) + (4.5 - 1.5)))


def test_data_parallel_traffic_hides_under_the_backward_and_its_recompute(monkeypatch):
    """The reduce-scatter (and FSDP's backward gather) overlaps the whole backward pass, which
    under recomputation begins by re-running the forward: the window is the backward plus its
    recompute, as the result reports the backward per micro-batch."""
    import simulator.training.run as run_mod
    seen = []
    real = run_mod.dp_exposed_s

    def spy(zero, m, f_s, b_s, rs_s, ag_s, buckets):
        seen.append((f_s, b_s))
        return real(zero, m, f_s, b_s, rs_s, ag_s, buckets)
    monkeypatch.setattr(run_mod, "dp_exposed_s", spy)
    for recompute in ("full", "none"):
        w = small(plan={"gpus": 256, "ep": 32, "pp": 1, "cp": 8},
                  training={"global_batch_sequences": 64, "micro_batch_sequences": 1,
                            "pipeline": "1f1b", "zero_stage": 3, "recompute": recompute})
        r = train(w)
        f_s, b_s = seen[-1]
        assert f_s == pytest.approx(r.forward_s_per_microbatch)
        assert b_s == pytest.approx(r.backward_s_per_microbatch)
        per_mb = r.breakdown_s["recompute"] / r.micro_batches
        assert (per_mb > 0) == (recompute == "full")
    # the full-recompute window is longer by the recomputed forward
    assert seen[0][1] > seen[1][1] + 0.5 * seen[1][0]


def test_data_parallel_buckets_follow_the_runtime():
    from simulator.loading import load_training_runtime
    from simulator.training.data_parallel import dp_buckets
    mc, tt = load_training_runtime("megatron-core"), load_training_runtime("torchtitan")
    # Megatron: max(40M, 1M x dp) parameters a bucket, dense and expert buffers apart
    assert dp_buckets(mc, 100e6, 500e6, 16, 12) == 3 + 13            # 40M buckets
    assert dp_buckets(mc, 100e6, 500e6, 64, 12) == 2 + 8              # 64M buckets
    assert dp_buckets(mc, 100e6, 0.0, 16, 12) == 3
    # FSDP2's unit is a transformer block (a one-layer stage: one bucket)
    assert dp_buckets(tt, 100e6, 500e6, 16, 12) == 12
    assert dp_buckets(tt, 100e6, 500e6, 16, 1) == 1


def test_data_parallel_bandwidth_is_the_nics_achieved_rate_on_large_messages():
    from simulator.training.data_parallel import dp_transfer_s
    prof = profile("h100-sxm")
    bw = prof.nic.bandwidth_Bps.value
    big = 8e9                                 # 8 GB over 16 ranks: far above the table's top
    assert dp_transfer_s(prof, big, 16) == pytest.approx(big / bw)
    # below the table's top the collective-efficiency roll-off applies, relative to its best
    pts = prof.collective_efficiency.points
    size = pts[1][0] * 3                       # bytes per peer at the table's second point
    assert dp_transfer_s(prof, size, 4) == pytest.approx(size / (bw * pts[1][1] / pts[-1][1]))
    # a table whose best point is not its last (the CPU profile's, fitted) never lifts the
    # rate above the NIC's: at its best point the transfer takes exactly bytes / NIC rate
    cpu = profile("cpu-2core-example")
    x, e = max(cpu.collective_efficiency.points, key=lambda p: p[1])
    assert dp_transfer_s(cpu, x, 2) == pytest.approx(x / cpu.nic.bandwidth_Bps.value)
    sizes = [p[0] for p in cpu.collective_efficiency.points]
    assert all(dp_transfer_s(cpu, s, 2) >= s / cpu.nic.bandwidth_Bps.value * (1 - 1e-12)
               for s in sizes)


def test_fp8_casts_and_weight_gradients_are_priced_by_hand():
    from dataclasses import replace
    from simulator.graph.ops import Op
    from simulator.pricing.hardware import compute_time_s, memory_rate
    prof = profile("h800")                    # no measured tables: the roofline path
    op = Op("x", "gemm", flops=2 * 4096 * 4096 * 4096, bytes=3 * 4096 * 4096 * 2.0,
            weight_bytes=4096 * 4096 * 2.0, m=4096, gemm_nk=(4096 * 4096,),
            gemm_dims=((4096, 4096),), precision="fp8")
    cast = 4096 * 4096 * 4.0
    with_cast = compute_time_s(replace(op, cast_bytes=cast), prof)
    assert with_cast - compute_time_s(op, prof) == pytest.approx(
        prof.kernel_latency_s.value + cast / memory_rate(prof, cast), rel=1e-9)
    # a weight gradient over 16 tokens, priced from H100's measured GEMMs (dW[4096, 4096] with
    # inner dimension 16), is bound by its FP32 main-gradient bytes (read + write)
    from simulator.pricing.measured import select
    from simulator.schema import Precision, RuntimeSpec
    h100 = profile("h100-sxm")
    h100 = h100.with_measured(select(h100, RuntimeSpec(), Precision()))
    w = replace(op, flops=2 * 16 * 4096 * 4096, m=16, tags=("wgrad",), precision="bf16",
                bytes=2 * 16 * 4096 * 2 + 4096 * 4096 * 8.0, weight_bytes=4096 * 4096 * 8.0,
                gemm_dims=((4096, 16),), gemm_rows=(4096,))
    assert compute_time_s(w, h100) == pytest.approx(w.bytes / memory_rate(h100, w.bytes))


def host_runtime(per_layer_s: float, per_pass_s: float | None, base: str = "megatron-core"):
    """A training preset with its host numbers set by hand (backward ratio 2)."""
    from simulator.loading import load_training_runtime
    rt = load_training_runtime(base)
    upd = {"host_s_per_layer_forward": rt.host_s_per_layer_forward.model_copy(
        update={"value": per_layer_s}), "backward_host_ratio":
        rt.backward_host_ratio.model_copy(update={"value": 2.0}), "host_s_per_pass": None}
    if per_pass_s is not None:
        upd["host_s_per_pass"] = rt.host_s_per_layer_forward.model_copy(
            update={"value": per_pass_s})
    return rt.model_copy(update=upd)


def test_host_time_bounds_each_pass_by_hand():
    from simulator.training.host import host_bound
    rt = host_runtime(0.001, 0.002)
    # 12 layers in 3 chunks: a 10 ms forward and 20 ms backward (5 ms of it weight gradient) on
    # the GPU; the host takes 12 x 1 + 3 x 2 = 18 ms forward, 12 x 1 x 2 + 3 x 2 = 30 ms back
    f, b, w = host_bound(rt, 12, 3, 0.010, 0.020, 0.005)
    assert (f, b) == (pytest.approx(0.018), pytest.approx(0.030))
    assert w == pytest.approx(0.005 * 30 / 20)          # the weight-gradient share is kept
    # one chunk: 14 ms and 26 ms; no per-pass time: 12 and 24 ms
    assert host_bound(rt, 12, 1, 0.010, 0.020, 0.005)[:2] == (pytest.approx(0.014),
                                                              pytest.approx(0.026))
    assert host_bound(host_runtime(0.001, None), 12, 3, 0.010, 0.020, 0.005)[:2] == (
        pytest.approx(0.012), pytest.approx(0.024))
    # a pass slower than its host time is untouched
    assert host_bound(rt, 1, 1, 1.0, 2.0, 0.5) == (1.0, 2.0, 0.5)


def test_each_chunk_pass_pays_its_host_time_in_a_training_step():
    from simulator.training.pipeline import chunks_per_device
    assert [chunks_per_device(p, 4) for p in ("interleaved", "1f1b", "zb-v", "dualpipe")] == \
        [4, 1, 2, 2]
    # LongCat-Flash interleaved over 2 chunks a device, no recompute, a host of 1 s a chunk pass
    # and nothing a layer: every micro-batch's forward and backward take 2 x 1 s on each device
    w = small(training={"global_batch_sequences": 64, "micro_batch_sequences": 1,
                        "pipeline": "interleaved", "virtual_stages": 2, "zero_stage": 2,
                        "recompute": "none"})
    r = train(w, runtime=host_runtime(0.0, 1.0))
    assert r.forward_s_per_microbatch == pytest.approx(2.0)
    assert r.backward_s_per_microbatch == pytest.approx(2.0)
    assert train(w, runtime=host_runtime(0.0, None)).forward_s_per_microbatch < 1.0


def test_train_json_breaks_the_step_into_parts_that_add_up():
    w = workload("workloads/validation/training/qwen3-235b-h100-tp2-ep32-pp8.yaml")
    d = train(w).to_json()
    parts = d["step_breakdown_s"]
    assert set(parts) == {"forward", "backward", "recompute", "host", "pipeline_bubble",
                          "exposed_dp", "optimizer"}
    assert sum(parts.values()) == pytest.approx(d["step_time_s"], rel=1e-9)
    assert parts["host"] > 0 and parts["recompute"] > 0 and parts["pipeline_bubble"] > 0
    inside = d["within_passes_s"]
    assert d["a2a_exposed_share"] == pytest.approx(inside["exposed_ep"] / d["step_time_s"])
    assert inside["exposed_ep"] <= parts["forward"] + parts["backward"] + parts["recompute"]
    assert d["a2a_exposed_ms_per_step"] == pytest.approx(inside["exposed_ep"] * 1e3)
    # BF16 GEMMs: both MFUs are the same figure
    assert d["gemm_precision"] == "bf16" and d["mfu_at_precision_peak"] == d["mfu"]
    # DualPipe overlaps a forward with a backward chunk: the devices' busy time is less than
    # m x (forward + backward + ...), and the parts scale down to it and still add up
    dual = workload("workloads/validation/training/deepseek-v3-pretrain-h800-fp8.yaml")
    assert dual.training.pipeline == "dualpipe"
    r = train(dual)
    parts = r.to_json()["step_breakdown_s"]
    per_mb = (r.forward_s_per_microbatch + r.backward_s_per_microbatch) * r.micro_batches
    assert sum(parts[k] for k in ("forward", "backward", "recompute", "host")) < per_mb
    assert sum(parts.values()) == pytest.approx(r.step_time_s, rel=1e-9)


def test_mfu_at_the_precision_peak_of_an_fp8_run_by_hand():
    w = workload("workloads/validation/training/deepseek-v3-pretrain-h800-fp8.yaml")
    d = train(w).to_json()
    prof = profile("h800")
    assert d["gemm_precision"] == "fp8"
    assert d["mfu_at_precision_peak"] == pytest.approx(
        d["mfu"] * prof.peak_bf16_flops.value / prof.peak_fp8_flops.value)
    assert d["within_passes_s"]["fp8_casts"] > 0


def test_scmoe_chunked_overlap_cuts_longcats_exposed_all_to_all_share():
    seq = train(workload(LC, schedule="sequential")).to_json()["a2a_exposed_share"]
    chunked = train(workload(LC, schedule="scmoe-chunked")).to_json()["a2a_exposed_share"]
    assert 0 <= chunked < seq <= 1


def test_an_unknown_training_framework_names_the_presets():
    with pytest.raises(MoesimError) as e:
        train(small(training={"global_batch_sequences": 64, "framework": "nemo-x"}))
    assert "megatron-core" in str(e.value) and "torchtitan" in str(e.value)


def test_runtimes_lists_every_training_preset_with_its_source():
    out = CliRunner().invoke(app, ["runtimes"])
    assert out.exit_code == 0, out.output
    for name in ("megatron-core", "torchtitan", "hai-llm"):
        assert name in out.output
    from simulator.loading import load_training_runtime
    ms = load_training_runtime("megatron-core").host_s_per_layer_forward.value * 1e3
    assert "calibration" in out.output and f"{ms:.2f}" in out.output
    assert out.output.count("trtllm") >= 3          # kernel tables of three framework presets


def test_largest_micro_batch_that_fits_by_hand():
    from simulator.training.result import TrainingMemory
    from simulator.training.run import largest_micro_batch
    # 20 GB static, 6 GB of activations for 2 sequences (3 GB each), 80 GB: (80 - 20) / 3 = 20
    mem = TrainingMemory(10e9, 6e9, 4e9, 6e9)
    assert largest_micro_batch(mem, 2, 80e9) == 20
    assert largest_micro_batch(mem, 2, 19e9) == 0
    d = train(workload("workloads/validation/training/qwen3-235b-h100-tp2-ep32-pp8.yaml")).to_json()
    m = d["memory_gb"]
    static = m["parameters"] + m["gradients"] + m["optimizer"]
    assert d["max_micro_batch_sequences"] == int((80 - static) // m["activations"])


def test_pipeline_tasks_and_the_training_trace_hold_every_task_once():
    from simulator.outputs.trace import training_trace
    # 1F1B on 4 devices, 8 micro-batches: each device runs every micro-batch's F and B once,
    # and its tasks' durations add up to its busy time
    r = simulate_pipeline(4, 8, 1.0, 2.0, 0.0, "1f1b")
    for d in range(4):
        mine = [t for t in r.tasks if t[0] == d]
        assert sorted((k, mb) for _, k, mb, *_ in mine) == \
            sorted((k, mb) for k in "FB" for mb in range(8))
        assert sum(e - s for *_, s, e in mine) == pytest.approx(r.busy_s[d])
        starts = sorted((s, e) for *_, s, e in mine)
        assert all(e0 <= s1 + 1e-12 for (_, e0), (s1, _) in zip(starts, starts[1:]))
    res = train(small())
    out = CliRunner().invoke(app, ["train", LC, "--trace", "/dev/null"])
    assert out.exit_code == 0, out.output
    tr = training_trace(res)
    spans = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == len(res.pipeline_tasks) == 4 * res.micro_batches * 2


def test_moe_recompute_keeps_only_the_blocks_input_and_reruns_it_by_hand():
    from simulator.training.run import kept_per_token
    m = load_model("qwen3-235b-a22b")           # MoE layers: 8 experts per token, no shared
    h, i = m.hidden_size, m.moe.expert_intermediate
    none, moe = kept_per_token(m, 5, "none"), kept_per_token(m, 5, "moe")
    assert none - moe == pytest.approx(m.moe.mean_real_experts * (h + 3 * i) - h)
    w = workload("workloads/validation/training/qwen3-235b-h100-16k-cp1-balanced.yaml")
    r = train(w).to_json()
    # the MoE blocks re-run: more backward time than none, less than a whole extra forward
    assert 0 < r["step_breakdown_s"]["recompute"] < r["step_breakdown_s"]["forward"]
    t_none = w.training.model_copy(update={"recompute": "none"})
    mem = training_memory(w, w.training, m, 12, 9)
    assert mem.activations < training_memory(w, t_none, m, 12, 9).activations
    with pytest.raises(MoesimError, match="does not fit"):      # as the run's own plan says
        train(w.variant(training=t_none))


def test_train_fidelity_carries_the_published_training_band():
    import yaml
    from simulator.pricing.fidelity import MIN_SHARE
    bands = yaml.safe_load(open("hardware_profiles/fidelity/training_bands.yaml"))["bands"]
    d = train(workload(LC)).to_json()["fidelity"]
    band = (bands.get("h800") or bands["all"])["training"]
    assert d["expected_error_pct"] == pytest.approx(band / max(d["measured_share"], MIN_SHARE))
    # on a profile with measured tables: the passes' shares weighted by their times
    from simulator.step.whatif import resolve, simulate
    q = workload("workloads/validation/training/qwen3-30b-a3b-b200-deepep-16.yaml")
    share = train(q).to_json()["fidelity"]["measured_share"]
    prof = profile(q.hardware, idealizations={"enforce_hbm_capacity": False})
    from simulator.loading import load_training_runtime
    from simulator.training.run import with_kernel_tables
    q = with_kernel_tables(q, load_training_runtime(q.training.framework), prof)   # trtllm's
    passes = [q.variant(phase=ph, batch_per_device=q.training.micro_batch_sequences,
                        training=None) for ph in ("train_fwd", "train_bwd")]
    runs = [simulate(p, resolved=resolve(p, profile=prof, with_head=True)) for p in passes]
    f, b = (r.to_json(with_ops=False) for r in runs)
    ft, bt = f["step_time_ms"], b["step_time_ms"]
    assert 0 < share < 1 and ft + bt < 2e3                    # both passes within 2 s
    want = (f["fidelity"]["measured_share"] * ft + b["fidelity"]["measured_share"] * bt) / (ft + bt)
    assert share == pytest.approx(want)
    from benchmarks.published import training_bands
    rows = [{"kind": "training", "gpu": g, "error": e, "optimistic": e > 0}
            for g, e in (("x", 0.1), ("x", -0.5), ("y", 0.2))]
    out = training_bands(rows)["bands"]
    assert out["x"] == {"training": 50.0, "rows": 2} and out["all"]["rows"] == 3
    assert out["all"]["training"] == 50.0            # p90 of 10%, 50%, 20%


def test_steps_sharing_their_passes_give_what_a_fresh_run_gives(monkeypatch):
    """Steps that differ only in pipeline schedule or recompute reuse one simulation of the
    micro-batch passes (plan --train prices many); the result, notes included, is what a run
    with nothing kept gives, and another micro-batch is simulated anew."""
    from collections import OrderedDict

    from simulator.training import passes as tr
    w = workload("workloads/validation/training/qwen3-30b-a3b-b200-deepep-16.yaml")
    other = w.variant(training=w.training.model_copy(update={"recompute": "full"}))
    monkeypatch.setattr(tr, "KEPT_PASSES", OrderedDict())
    train(w)
    shared = train(other)
    assert len(tr.KEPT_PASSES) == 1                  # the second step simulated nothing new
    monkeypatch.setattr(tr, "KEPT_PASSES", OrderedDict())
    fresh = train(other)
    assert shared.to_json() == fresh.to_json() and shared.notes == fresh.notes
    bigger = w.variant(training=w.training.model_copy(update={"micro_batch_sequences": 4}))
    train(bigger)
    assert len(tr.KEPT_PASSES) == 2


def test_the_training_blocks_gradient_bytes_reach_the_weight_gradients():
    """grad_bytes sets the main gradient every weight gradient reads and writes, in the
    simulated backward pass as in the memory: the weight gradients of BF16 main gradients
    move fewer bytes than FP32's."""
    from simulator.step.whatif import resolve, simulate
    w = workload("workloads/validation/training/qwen3-30b-a3b-b200-deepep-16.yaml")
    prof = profile(w.hardware, idealizations={"enforce_hbm_capacity": False})

    def wgrad_bytes(grad_bytes):
        t = w.training.model_copy(update={"grad_bytes": grad_bytes})
        p = w.variant(phase="train_bwd", batch_per_device=t.micro_batch_sequences, training=t)
        r = simulate(p, resolved=resolve(p, profile=prof, with_head=False))
        return sum(op.weight_bytes for op in r.timeline.ops if "wgrad" in op.tags)
    assert wgrad_bytes(2.0) == pytest.approx(wgrad_bytes(4.0) / 2)
    from simulator.training import passes as tr

    def step(grad_bytes):
        r = train(w.variant(training=w.training.model_copy(update={"grad_bytes": grad_bytes})),
                  profile=prof)
        runs = next(reversed(tr.KEPT_PASSES.values()))[2]     # the passes this step priced
        return r, sum(op.weight_bytes for op in runs["train_bwd"].timeline.ops
                      if "wgrad" in op.tags)
    (four, b4), (two, b2) = step(4.0), step(2.0)
    assert b2 == pytest.approx(b4 / 2)
    assert two.memory.grads == pytest.approx(four.memory.grads / 2)
    assert two.weight_grad_s_per_microbatch <= four.weight_grad_s_per_microbatch


def test_a_training_framework_prices_with_the_tables_of_the_kernels_it_runs():
    """Megatron-Core's and torchtitan's experts are CUTLASS grouped GEMMs, TensorRT-LLM's MoE
    tables' kernel; SGLang's tables (the default for a workload naming no runtime) measure a
    Triton kernel. A workload that names its runtime keeps it; a profile with no TensorRT-LLM
    tables (the H800's) keeps what it has."""
    from simulator.loading import load_training_runtime, load_workload
    from simulator.training.run import with_kernel_tables
    megatron = load_training_runtime("megatron-core")
    assert megatron.kernel_tables == "trtllm" and "CUTLASS" in megatron.kernel_tables_source
    assert load_training_runtime("hai-llm").kernel_tables is None
    w = load_workload("workloads/validation/training/qwen3-235b-h100-tp2-ep32-pp8.yaml")
    assert w.runtime.framework is None
    assert with_kernel_tables(w, megatron, profile("h100-sxm")).runtime.framework == "trtllm"
    named = w.variant(runtime={"framework": "sglang"})
    assert with_kernel_tables(named, megatron, profile("h100-sxm")).runtime.framework == "sglang"
    assert with_kernel_tables(w, megatron, profile("h800")).runtime.framework is None
    out = train(w).to_json()["fidelity"]["kernel_tables"]
    assert out.startswith("trtllm ")
    # the experts' price moves with the tables: TensorRT-LLM's CUTLASS MoE runs Qwen3-235B's
    # BF16 experts at 2.7x SGLang's Triton rate on H100 (631 against 238 TFLOPS at EP 1)
    slow = train(named)
    assert slow.step_time_s > 1.2 * train(w).step_time_s


def test_combined_1f1b_merges_each_backward_with_the_next_forward_by_hand():
    # one stage, 4 micro-batches, F 1 s, B 2 s, a merged F+B 2.5 s: F0, then B0+F1, B1+F2,
    # B2+F3 merged, then B3 alone: 1 + 3 x 2.5 + 2 = 10.5 s (12 s one after the other)
    r = simulate_pipeline(1, 4, 1.0, 2.0, 0.0, "1f1b", fb_s=2.5)
    assert r.makespan_s == pytest.approx(10.5)
    assert [t[1] for t in r.tasks] == ["F", "FB", "FB", "FB", "B"]
    assert [t[2] for t in r.tasks] == [0, 0, 1, 2, 3]            # an FB names its backward's
    assert simulate_pipeline(1, 4, 1.0, 2.0, 0.0, "1f1b").makespan_s == pytest.approx(12.0)
    # interleaved (8 devices, 4 chunks each, 32 micro-batches): a merge that saves nothing
    # changes nothing; one that hides a second of each pair shortens the step
    plain = simulate_pipeline(8, 32, 1.0, 2.0, 0.0, "interleaved", v=4)
    same = simulate_pipeline(8, 32, 1.0, 2.0, 0.0, "interleaved", v=4, fb_s=3.0)
    assert same.makespan_s == pytest.approx(plain.makespan_s)
    assert simulate_pipeline(8, 32, 1.0, 2.0, 0.0, "interleaved", v=4,
                             fb_s=2.0).makespan_s < plain.makespan_s - 20


@pytest.mark.parametrize("p,m,v", [(4, 8, 2), (8, 32, 4), (8, 128, 4), (4, 12, 3)])
def test_interleaved_1f1b_bubble_is_the_closed_form(p, m, v):
    # Megatron-Core's interleaved order (Narayanan et al. 2021, s2.2): the bubble shrinks by
    # the chunks per device, (p - 1) (f + b) / v over m (f + b) of work
    r = simulate_pipeline(p, m, 1.0, 2.0, 0.0, "interleaved", v=v)
    assert r.makespan_s == pytest.approx(m * 3.0 + (p - 1) * 3.0 / v)
    assert r.bubble_fraction == pytest.approx((p - 1) / v / (m + (p - 1) / v))


def test_combined_1f1b_hides_the_all_to_all_down_to_the_hosts_launches():
    # merged: the GPU's work less the all-to-all it hides, never below either pass nor the
    # host's launches of both (each layer's forward and twice it backward, and each chunk
    # pass each way); torchtitan's preset charges no host time
    from simulator.loading import load_training_runtime
    from simulator.training.host import combined_1f1b_s
    tt = load_training_runtime("torchtitan")
    assert combined_1f1b_s(tt, 12, 2, 0.05, 0.10, 0.03) == pytest.approx(0.12)
    assert combined_1f1b_s(tt, 12, 2, 0.05, 0.10, 0.09) == pytest.approx(0.10)    # b alone
    # 4 ms a layer, 5 ms a chunk pass, 2 chunks: 48 + 10 ms forward, 96 + 10 ms backward
    mc = host_runtime(0.004, 0.005)
    assert combined_1f1b_s(mc, 12, 2, 0.05, 0.10, 0.03) == pytest.approx(0.164)


def longcat_interleaved_with_and_without_ep_overlap():
    """LongCat-Flash with its all-to-all serialized (schedule sequential), pp 4, 2 chunks a
    device, 8 micro-batches: (without, with) training.ep_overlap."""
    w = small(schedule="sequential",
              training={"global_batch_sequences": 64, "micro_batch_sequences": 1,
                        "pipeline": "interleaved", "virtual_stages": 2, "zero_stage": 2,
                        "recompute": True})
    return w, w.variant(training=w.training.model_copy(update={"ep_overlap": True}))


def test_ep_overlap_shortens_the_step_by_the_all_to_all_it_hides():
    # LongCat-Flash with its all-to-all serialized (schedule sequential), pp 4, 2 chunks a
    # device, 8 micro-batches: 16 chunk passes a device; combined 1F1B warms up one more
    # forward than interleaved 1F1B (2 (p - d - 1) + (v - 1) p + 1: 11, 9, 7, 5 on devices 0-3)
    # and merges each remaining forward with a backward: 5, 7, 9, 11 merged pairs
    w, on = longcat_interleaved_with_and_without_ep_overlap()
    a, b = train(w), train(on)
    assert a.micro_batches == 8 and w.plan.pp == 4
    assert [sum(t[0] == d and t[1] == "FB" for t in b.pipeline_tasks) for d in range(4)] == \
        [5, 7, 9, 11]
    assert b.step_time_s < a.step_time_s
    assert 0 <= b.a2a_exposed_s_per_step < a.a2a_exposed_s_per_step
    # the extra warm-up forward keeps one more micro-batch of activations: pp + 2 against
    # interleaved's pp + 1
    assert b.memory.activations == pytest.approx(a.memory.activations * (4 + 2) / (4 + 1))
    for bad, field_fix in ((dict(pipeline="zb-v"), "interleaved"),
                           (dict(pipeline="dualpipe"), "interleaved"),
                           (dict(pipeline="1f1b"), "interleaved")):           # pp 4
        x = on.variant(training=on.training.model_copy(update=bad))
        with pytest.raises(MoesimError) as e:
            train(x)
        assert e.value.field == "training.ep_overlap" and field_fix in e.value.fix
    no_ep = on.variant(plan=on.plan.model_copy(update={"ep": 1}))
    with pytest.raises(MoesimError) as e:
        train(no_ep)
    assert e.value.field == "training.ep_overlap"


def test_a_merged_pair_hides_its_all_to_all_less_the_sms_the_all_to_all_holds():
    # combined 1F1B saves the pair's standalone all-to-all less what the other pass's compute
    # loses to the communication kernels' SMs beside it: with half the SMs held the devices'
    # busy time falls by half as much (LongCat-Flash, all-to-all serialized, as above)
    w, on = longcat_interleaved_with_and_without_ep_overlap()

    def busy_saved(sm):
        p = profile(w.hardware, comm_sm_fraction={"value": sm, "source": "test"})
        a, b = train(w, profile=p), train(on, profile=p)
        return sum(t[5] - t[4] for t in a.pipeline_tasks) - \
            sum(t[5] - t[4] for t in b.pipeline_tasks)
    full = busy_saved(0.0)
    assert full > 0 and busy_saved(0.5) == pytest.approx(full / 2, rel=1e-6)
