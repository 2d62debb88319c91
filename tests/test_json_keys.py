"""The keys of `simulate`, `serve` and `train --json` that follow from other figures, worked out
in the test from the inputs and the run's own op list or per-request times, on configurations
where no term of the formula vanishes (MTP on, tensor-parallel attention, KV wider than the
weights, both serving pools priced, a pipeline with data parallelism and FP8). docs/testing.md
maps every stable key to its test."""
import math
import statistics

import numpy as np
import pytest

from simulator.graph.params import is_moe_layer
from simulator.loading import load_model, load_profile
from simulator.pricing.peaks import peak_flops
from simulator.step.whatif import simulate
from simulator.training.run import train
from tests.conftest import workload

KV_PRESSURE = "workloads/serving/deepseek-v3-h200-kv-pressure.yaml"


def decode(schedule: str = "tbo", **plan):
    """DeepSeek-V3 decode on H200 with MTP on, BF16 KV beside FP8 weights."""
    w = workload(KV_PRESSURE)
    w = w.variant(phase="decode", schedule=schedule, batch_per_device=16,
                  mtp=w.mtp.model_copy(update={"enabled": True}))
    return w.variant(plan=w.plan.variant(**plan)) if plan else w


def union(iv):
    out = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def overlap(u, v) -> float:
    i = j = 0
    total = 0.0
    while i < len(u) and j < len(v):
        a, b = max(u[i][0], v[j][0]), min(u[i][1], v[j][1])
        total += max(b - a, 0.0)
        if u[i][1] < v[j][1]:
            i += 1
        else:
            j += 1
    return total


def test_simulate_keys_follow_from_the_op_list_and_the_inputs():
    w = decode("tbo")
    r = simulate(w).to_json()
    ops = r["ops"]
    model, prof = load_model(w.model), load_profile(w.hardware)
    assert (r["workload"], r["model"], r["hardware"], r["phase"], r["schedule"]) == \
        (w.name, model.name, prof.name, "decode", "tbo")
    assert r["ranks_simulated"] == 1                             # collapsed: one rank stands
    # the step ends with its last op (rank 0's listing covers the whole forward, MTP included)
    assert r["step_time_ms"] == pytest.approx(max(o["end_us"] for o in ops) / 1e3)
    assert max(o["layer"] for o in ops) == model.num_layers      # the MTP layer is listed
    # communication: exposed where no compute runs beside it, hidden where some does
    comm = union([(o["start_us"], o["end_us"]) for o in ops if o["kind"] == "collective"])
    comp = union([(o["start_us"], o["end_us"]) for o in ops if o["kind"] != "collective"])
    hidden = overlap(comm, comp)
    assert hidden > 0 and sum(b - a for a, b in comm) - hidden > 0
    assert r["hidden_comm_us"] == pytest.approx(hidden)
    assert r["exposed_comm_us"] == pytest.approx(sum(b - a for a, b in comm) - hidden)
    # a MoE layer's time is what it adds to the step: the median over MoE layers
    ends = {}
    for o in ops:
        ends[o["layer"]] = max(ends.get(o["layer"], 0.0), o["end_us"])
    adds = [ends[i] - ends[i - 1] for i in range(1, model.num_layers) if is_moe_layer(model, i)]
    assert r["layer_time_us"] == pytest.approx(statistics.median(adds), rel=1e-9)
    assert is_moe_layer(model, r["representative_layer"])
    # an op's FLOPs and bytes: the LM head is a (tokens x hidden) by (hidden x vocab) GEMM;
    # TBO splits the 16 sequences into two micro-batches of 8, and with one MTP draft each
    # sequence verifies 2 tokens
    head = next(o for o in ops if o["name"] == f"L{model.num_layers}.head.lm_head")
    tokens, h, v = 8 * 2, model.hidden_size, model.vocab_size
    assert head["kind"] == "gemm" and head["stream"] == "compute"
    assert head["flops"] == 2 * tokens * h * v
    wb, ab = w.precision.weight_bytes, w.precision.activation_bytes
    assert head["bytes"] >= h * v * wb + tokens * h * ab
    assert {o["stream"] for o in ops if o["kind"] == "collective"} == {"comm"}   # tbo
    assert all(o["end_us"] >= o["start_us"] for o in ops)


def test_decode_tokens_and_cost_with_mtp_and_tensor_parallel_attention():
    """MTP with one draft at acceptance a: 1 + a tokens per forward; a sequence's tokens
    counted once over its 8 attention GPUs; $ at the profile's price."""
    w = decode("tbo", gpus=16, tp=8, attention_tp=8, ep=8)
    assert w.precision.kv_bytes != w.precision.weight_bytes
    r = simulate(w).to_json(with_ops=False)
    model, prof = load_model(w.model), load_profile(w.hardware)
    a = model.mtp_acceptance
    assert 0 < a < 1 and r["tokens_per_forward"] == pytest.approx(1 + a)
    assert r["tpot_ms"] == pytest.approx(r["step_time_ms"] / (1 + a))
    per_gpu = w.batch_per_device / (r["tpot_ms"] / 1e3) / 8      # a sequence spans 8 GPUs
    assert r["tokens_per_gpu_s"] == pytest.approx(per_gpu)
    price = prof.price_per_gpu_hour.value
    assert r["cost_per_million_output_tokens"] == pytest.approx(price / 3600 / per_gpu * 1e6)
    assert r["cost_per_million_input_tokens"] is None


def test_a_prefills_tokens_and_input_cost_by_hand():
    w = decode("sequential", gpus=16, tp=8, attention_tp=8, ep=8).variant(
        phase="prefill", batch_per_device=2, context_length=3000)
    r = simulate(w).to_json(with_ops=False)
    per_gpu = 2 * 3000 / 8 / (r["step_time_ms"] / 1e3)        # 6000 tokens, 8 GPUs a sequence
    assert r["tokens_per_gpu_s"] == pytest.approx(per_gpu)
    price = load_profile(w.hardware).price_per_gpu_hour.value
    assert r["cost_per_million_input_tokens"] == pytest.approx(price / 3600 / per_gpu * 1e6)
    assert r["tpot_ms"] is None and r["cost_per_million_output_tokens"] is None


def test_serve_summary_keys_from_the_per_request_times(tmp_path):
    """Stubbed steps (prefill 0.1 s, decode 10 ms) for five requests of different lengths on
    the disaggregated SMALL deployment (a prefill and a decode pool of 8 GPUs each); every
    summary key follows from the per-request times and the inputs."""
    from tests.test_physics import stubbed_sim
    rows = [(0.0, 1000, 11), (0.0, 400, 3), (0.02, 2000, 31), (0.3, 800, 6), (0.31, 100, 41)]
    sim = stubbed_sim(tmp_path, rows, slo={"ttft_ms": 115, "tpot_ms": 11})
    res = sim.run(check_stability=False)
    m = res.metrics
    assert m["mode"] == "disaggregated" and m["workload"] == sim.w.name
    n = len(rows)
    assert m["requests"] == {"arrived": n, "finished": n, "rejected": 0, "unfinished": 0,
                             "preempted": 0}
    ttft, tpot, e2e = res.ttft_s, res.tpot_s, res.e2e_s
    assert len(set(np.round(ttft, 9))) > 1 and len(set(np.round(e2e, 9))) > 1
    for key, x in (("ttft_ms", ttft), ("tpot_ms", tpot), ("e2e_ms", e2e)):
        xs = sorted(x * 1e3)
        for q, name in ((50, "p50"), (90, "p90"), (99, "p99")):   # linear between ranks
            k = (n - 1) * q / 100
            lo = math.floor(k)
            want = xs[lo] + (xs[min(lo + 1, n - 1)] - xs[lo]) * (k - lo)
            assert m[key][name] == pytest.approx(want)
        assert m[key]["mean"] == pytest.approx(sum(xs) / n)
    assert m["tokens_per_s_per_user"] == pytest.approx(sum(1 / t for t in tpot) / n)
    makespan = m["throughput"]["makespan_s"]
    last = max(a for a, _, _ in rows)
    assert makespan >= last + min(e2e) and makespan == pytest.approx(m["simulated_s"])
    out_tokens = sum(o for _, _, o in rows)
    in_tokens = sum(i for _, i, _ in rows)
    pre_gpus = dec_gpus = 8
    price = sim.profile.price_per_gpu_hour.value
    dec = out_tokens / (dec_gpus * makespan)
    pre = in_tokens / (pre_gpus * makespan)
    assert m["decode_tokens_per_gpu_s"] == pytest.approx(dec)
    assert m["prefill_tokens_per_gpu_s"] == pytest.approx(pre)
    assert m["cost_per_million_output_tokens"] == pytest.approx(price / 3600 / dec * 1e6)
    assert m["cost_per_million_input_tokens"] == pytest.approx(price / 3600 / pre * 1e6)
    every = out_tokens / ((dec_gpus + pre_gpus) * makespan)
    assert m["cost_per_million_output_tokens_all_gpus"] == pytest.approx(price / 3600 / every * 1e6)
    t = m["throughput"]
    assert t["requests_per_s"] == pytest.approx(n / makespan)
    assert t["output_tokens_per_s"] == pytest.approx(out_tokens / makespan)
    assert t["output_tokens_per_s_per_gpu"] == pytest.approx(every)
    assert t["output_tokens_per_s_per_node"] == pytest.approx(out_tokens / makespan / 2)  # 16 GPUs
    # goodput: requests meeting both SLOs over the arrivals' horizon
    good = sum(1 for a, b in zip(ttft, tpot) if a <= 0.115 and b <= 0.011)
    assert 0 < good < n                  # one fails on TTFT only, one on TPOT only
    assert any(a > 0.115 and b <= 0.011 for a, b in zip(ttft, tpot))
    assert any(a <= 0.115 and b > 0.011 for a, b in zip(ttft, tpot))
    horizon = max(sim.w.serving.arrivals.duration_s, last)
    assert m["goodput_rps"] == pytest.approx(good / horizon)
    assert m["slo"] == {"ttft_ms": 115, "tpot_ms": 11}
    # Little's law holds exactly when every request arrives and leaves inside the run
    assert m["little"]["lambda_times_w"] == pytest.approx(n / makespan * e2e.mean())
    assert m["little"]["mean_in_system"] == pytest.approx(e2e.sum() / makespan)


def test_train_keys_that_follow_from_the_step_by_hand():
    """A pipelined FP8 run with tensor and data parallelism: the derived keys from the step,
    the batch and the inputs."""
    w = workload("workloads/validation/training/qwen3-235b-h100-tp2-ep32-pp8.yaml")
    fp8 = w.precision.compute.model_copy(update={"dense_gemm": "fp8", "expert_gemm": "fp8"})
    w = w.variant(precision=w.precision.model_copy(update={"compute": fp8}))
    t, plan = w.training, w.plan
    assert plan.pp > 1 and plan.tp > 1 and plan.gpus // plan.pp // plan.tp > 1
    r = train(w)
    j = r.to_json()
    model, prof = load_model(w.model), load_profile(w.hardware)
    dp = plan.gpus // plan.pp // (plan.tp * plan.cp)
    assert j["dp"] == dp
    assert j["micro_batches"] == t.global_batch_sequences // (t.micro_batch_sequences * dp)
    assert j["stage_layers"] == math.ceil(model.num_layers / plan.pp)
    tokens = t.global_batch_sequences * w.context_length
    assert j["tokens_per_step"] == tokens
    step = j["step_time_s"]
    assert j["tokens_per_day"] == pytest.approx(tokens / step * 86400)
    assert j["days_to_train"] == pytest.approx(j["tokens_to_train"] / j["tokens_per_day"])
    assert j["tokens_to_train"] == t.tokens_to_train
    price = prof.price_per_gpu_hour.value
    assert j["cost_usd"] == pytest.approx(j["days_to_train"] * 24 * plan.gpus * price)
    assert j["a2a_exposed_share"] == pytest.approx(j["a2a_exposed_ms_per_step"] / 1e3 / step)
    assert 0 < j["a2a_exposed_share"] < 1
    assert j["peak_memory_gb"] == pytest.approx(sum(j["memory_gb"].values()))
    bf16, fp8 = prof.peak_bf16_flops.value, peak_flops(prof, j["gemm_precision"])
    assert j["gemm_precision"] == "fp8" and fp8 > bf16
    assert j["model_tflops_per_gpu"] == pytest.approx(j["mfu"] * bf16 / 1e12)
    assert j["mfu_at_precision_peak"] == pytest.approx(j["mfu"] * bf16 / fp8)
    assert j["backward_ms_per_microbatch"] > j["weight_grad_ms_per_microbatch"] > 0
    assert j["pipeline"] == t.pipeline and j["gpus"] == plan.gpus and j["schedule"] == w.schedule


def test_kv_utilisation_follows_the_tokens_held_after_each_step(tmp_path):
    """One 1000-token prompt answered in 11 tokens: the first comes from prefill, then 10 decode
    steps; after decode step k (1..9) it holds 1001 + k tokens of KV, after the 10th it is gone.
    Utilisation is that over the decode pool's KV budget, step by step."""
    from tests.test_physics import stubbed_sim
    sim = stubbed_sim(tmp_path, [(0.0, 1000, 11)], budget=40000)    # 5000 a device
    m = sim.run(check_stability=False).metrics
    held = [1001 + k for k in range(1, 10)] + [0]
    assert m["kv_budget_tokens"] == 40000
    assert m["kv_utilisation"]["mean"] == pytest.approx(sum(held) / 10 / 40000)
    assert m["kv_utilisation"]["max"] == pytest.approx(1010 / 40000)
    assert m["decode_steps"] == 10


def test_step_shapes_simulated_counts_the_engine_runs(monkeypatch):
    """Each distinct step shape is simulated once and remembered: the count is the number of
    times the serving run called the engine."""
    from simulator.serving.run import ServingSim
    from simulator.serving.step_model import StepModel
    from tests.test_serving import small
    calls = []
    real = StepModel._simulate
    monkeypatch.setattr(StepModel, "_simulate",
                        lambda self, b, c: calls.append((id(self), b, c)) or real(self, b, c))
    m = ServingSim(small()).run().metrics
    assert m["step_shapes_simulated"] == len(calls) == len(set(calls)) > 1


def test_a_batch_sweep_point_is_the_decode_step_at_that_batch_and_a_refusal_says_why():
    from simulator.serving.batch_sweep import batch_sweep
    w = workload(KV_PRESSURE)
    pts = batch_sweep(w, [8, 100000], ["sequential", "tbo"])
    assert [(p["schedule"], p["batch_per_device"]) for p in pts] == \
        [("sequential", 8), ("sequential", 100000), ("tbo", 8), ("tbo", 100000)]
    for p in pts[::2]:
        r = simulate(w.variant(phase="decode", serving=None, batch_per_device=8,
                               schedule=p["schedule"])).to_json(with_ops=False)
        assert p["tpot_ms"] == pytest.approx(r["tpot_ms"])
        assert p["tokens_per_s_per_user"] == pytest.approx(1e3 / r["tpot_ms"])
        assert p["tokens_per_gpu_s"] == pytest.approx(8 / (r["tpot_ms"] / 1e3))
        price = load_profile(w.hardware).price_per_gpu_hour.value
        assert p["cost_per_million_output_tokens"] == \
            pytest.approx(price / 3600 / p["tokens_per_gpu_s"] * 1e6)
        assert p["note"] is None
    for p in pts[1::2]:                  # a batch that does not fit: figures null, a reason
        assert p["tpot_ms"] is None and "does not fit" in p["note"]


def test_a_load_sweep_point_is_the_serving_run_at_that_load():
    from simulator.serving.load_sweep import load_sweep
    from simulator.serving.run import ServingSim
    from tests.test_serving import small
    w = small()
    (p,) = load_sweep(w, "concurrency", [3])
    arrivals = {"process": "closed", "concurrency": 3, "requests_per_client": 4}
    spec = w.serving.model_copy(update={"arrivals": w.serving.arrivals.model_copy(
        update=arrivals)})
    m = ServingSim(w.variant(serving=spec)).run().metrics
    assert p["concurrency"] == 3
    for key in ("ttft_ms", "tpot_ms", "e2e_ms", "requests", "tokens_per_s_per_user"):
        assert p[key] == m[key]
    assert p["output_tokens_per_s_per_gpu"] == m["throughput"]["output_tokens_per_s_per_gpu"]
    assert p["requests"]["finished"] == 12                   # 3 clients x 4 requests


def test_the_requests_csv_holds_every_finished_request_as_a_client_logs_it(tmp_path):
    import csv
    import io
    from tests.test_physics import stubbed_sim
    rows = [(0.0, 1000, 11), (0.0, 400, 3), (0.02, 2000, 31), (0.3, 800, 6), (0.31, 100, 41)]
    res = stubbed_sim(tmp_path, rows).run(check_stability=False)
    got = list(csv.DictReader(io.StringIO(res.requests_csv())))
    assert [int(r["request"]) for r in got] == [0, 1, 2, 3, 4]        # by arrival
    for r, (a, i, o) in zip(got, rows):
        assert (float(r["arrival_s"]), int(r["input_tokens"]), int(r["output_tokens"])) == \
            (pytest.approx(a), i, o)
        # end-to-end = first token + (outputs - 1) x TPOT
        assert float(r["e2e_ms"]) == pytest.approx(float(r["ttft_ms"]) +
                                                   (o - 1) * float(r["tpot_ms"]), rel=1e-6)
    m = res.metrics
    assert sum(float(r["ttft_ms"]) for r in got) / 5 == pytest.approx(m["ttft_ms"]["mean"])


def test_serve_writes_the_requests_csv_and_a_sweep_refuses_it(tmp_path):
    import json as js

    from typer.testing import CliRunner

    from cli import app
    from tests.test_serving import SMALL
    w = tmp_path / "w.yaml"
    w.write_text(js.dumps(SMALL))
    out = tmp_path / "requests.csv"
    r = CliRunner().invoke(app, ["serve", str(w), "--duration", "5", "--requests-csv", str(out),
                                 "--json"])
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("request,arrival_s") and \
        len(lines) - 1 == js.loads(r.stdout)["requests"]["finished"]
    r = CliRunner().invoke(app, ["serve", str(w), "--sweep-rate", "1,2", "--requests-csv",
                                 str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "--requests-csv" in r.output
