"""The serving engine around the kernels (serving/engine_policy.py and its presets under
hardware_profiles/runtimes/serving/): graph padding, host time and overlap, a mixed chunk, KV
reservation and retraction, each worked out by hand; conservation and Little's law under every
preset."""
import math

import numpy as np

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from simulator.serving.step_model import Cell
from simulator.loading import (SERVING_RUNTIMES_DIR, known_names, load_serving_runtime,
                               serving_runtime_for)
from simulator.serving.engine_policy import EnginePolicy
from simulator.serving.run import ServingSim
from tests.test_serving import small

PRESETS = known_names(SERVING_RUNTIMES_DIR)


def policy(name: str, **change) -> EnginePolicy:
    """A preset's policy for a 10-layer model, fields replaced."""
    p = EnginePolicy.from_runtime(load_serving_runtime(name), 10, None, None)
    return EnginePolicy(**{**p.__dict__, **change})


def test_the_presets_are_the_engines_documented_defaults():
    sg, vl, tr = (load_serving_runtime(n) for n in ("sglang-0.5", "vllm-v1", "trtllm-pytorch"))
    # SGLang: [1, 2, 4, 8, 12] + 16..256 step 8 + 272..496 step 16 + 512 (server_args)
    assert sg.cuda_graph_batch_sizes[:7] == [1, 2, 4, 8, 12, 16, 24]
    assert len(sg.cuda_graph_batch_sizes) == 5 + 31 + 15 + 1
    assert sg.mixing == "separate" and sg.overlap_scheduler and sg.cuda_graph_padding
    assert sg.kv_reserve_output.value == pytest.approx(0.7 * 0.14)
    # vLLM V1: one 8192-token budget, 1024 sequences, graphs [1, 2, 4] + 8..248 + 256..512
    assert vl.mixing == "mixed" and not vl.overlap_scheduler and vl.kv_reserve_output.value == 0
    assert (vl.chunked_prefill_tokens.value, vl.max_running_requests.value) == (8192, 1024)
    assert len(vl.cuda_graph_batch_sizes) == 3 + 31 + 17
    # TensorRT-LLM: graphs 1..31, 32, 64, 128 without padding; never evicts
    assert tr.cuda_graph_batch_sizes == list(range(1, 32)) + [32, 64, 128]
    assert not tr.cuda_graph_padding and tr.kv_reserve_output.value == 1.0
    for name in PRESETS:                      # every number carries where it came from
        rt = load_serving_runtime(name)
        for key, v in rt:
            if hasattr(v, "source"):
                assert len(v.source) > 20, (name, key)


def test_sglang_takes_a_larger_chunk_on_gpus_above_160_gb():
    rt = load_serving_runtime("sglang-0.5")
    chunk = [EnginePolicy.from_runtime(rt, 61, None, None, gb * 1e9).chunk_tokens
             for gb in (80, 141, 160, 180)]
    assert chunk == [8192, 8192, 8192, 16384]
    assert EnginePolicy.from_runtime(rt, 61, 4096, None, 180e9).chunk_tokens == 4096   # its own
    b200 = ServingSim(small(mode="colocated").variant(hardware="b200-sxm"))
    assert b200.engine.chunk_tokens == 16384


def test_a_workload_takes_its_engines_preset():
    assert serving_runtime_for(None, None) == "sglang-0.5"
    assert serving_runtime_for("sglang", "0.4.9") == "sglang-0.4"
    assert serving_runtime_for("vllm", "0.11.0") == "vllm-v1"
    assert serving_runtime_for("trtllm", "1.2.0rc6") == "trtllm-pytorch"


def test_the_busiest_data_parallel_group_sets_the_batch():
    # 9 requests dealt round-robin over 8 groups: one group decodes 2, and the lockstep waits
    assert policy("sglang-0.5").per_group(9, 8) == 2 and policy("vllm-v1").per_group(16, 8) == 2
    assert EnginePolicy.ideal(2048, 96).per_group(9, 8) == pytest.approx(9 / 8)


def test_graph_padding_and_eager_batches_by_hand():
    sg = policy("sglang-0.5")
    assert [sg.padded(b) for b in (1, 3, 9, 13, 17, 257, 511, 600)] == \
        [1, 4, 12, 16, 24, 272, 512, 600]
    assert sg.graphed(512) and not sg.graphed(513)
    tr = policy("trtllm-pytorch")
    assert tr.padded(40) == 40                        # no padding: its own size
    assert [tr.graphed(b) for b in (31, 32, 33, 40, 64, 65, 128, 129)] == \
        [True, True, False, False, True, False, True, False]


def test_host_time_is_hidden_only_by_an_overlap_scheduler():
    ms = 1e-3
    over = policy("sglang-0.5", host_s=3 * ms, eager_s=6 * ms)
    assert over.step_s(10 * ms, True) == pytest.approx(10 * ms)        # hidden under the GPU
    assert over.step_s(2 * ms, True) == pytest.approx(3 * ms)          # the host is longer
    assert over.step_s(2 * ms, False) == pytest.approx(6 * ms)         # eager: the launches
    plain = policy("vllm-v1", host_s=3 * ms, eager_s=6 * ms)
    assert plain.step_s(10 * ms, True) == pytest.approx(13 * ms)       # exposed in full
    assert plain.step_s(2 * ms, False) == pytest.approx(9 * ms)        # launches, then host
    assert plain.decode_step_s(0.0, 0) == 0.0                           # nothing to decode


def test_chunk_budget_and_kv_reservation_by_hand():
    assert policy("vllm-v1").chunk_budget(100) == 8192 - 100           # decode tokens first
    assert policy("vllm-v1").chunk_budget(9000) == 0
    assert policy("sglang-0.5").chunk_budget(100) == 8192              # a step of its own
    tr, vl = policy("trtllm-pytorch"), policy("vllm-v1")
    # 6000 held, 3000 still to come of those running; a 1000-token prompt with 900 to come
    assert tr.admits(6000, 3000, 1000, 900, 10900, tr.reserve)
    assert not tr.admits(6000, 3000, 1000, 900, 10899, tr.reserve)
    assert vl.admits(6000, 3000, 1000, 900, 7000, vl.reserve)
    assert not vl.admits(6000, 3000, 1000, 900, 6999, vl.reserve)
    assert vl.admits(6000, 3000, 1000, 900, 6000 + 1500 + 1000 + 450, 0.5)
    assert not vl.admits(6000, 3000, 1000, 900, 6000 + 1500 + 1000 + 449, 0.5)


def test_sglang_reserves_more_after_a_retraction_then_falls_back():
    sg = policy("sglang-0.5")
    # 0.7 right after it, then (0.7 - 0.098) / 600 less a step, down to 0.098
    assert sg.reserve_next(sg.reserve, True) == pytest.approx(0.7)
    r = 0.7
    for _ in range(300):
        r = sg.reserve_next(r, False)
    assert r == pytest.approx(0.7 - 300 * (0.7 - 0.098) / 600)
    for _ in range(301):
        r = sg.reserve_next(r, False)
    assert r == pytest.approx(0.098)
    vl = policy("vllm-v1")                       # no such rule: 0 before and after
    assert vl.reserve_next(0.0, True) == 0.0 and vl.reserve_next(0.0, False) == 0.0


def _sim(tmp_path, preset: str, rows, budget=None, plan=None, **serving):
    """SMALL (8 DP groups, or `plan`) under `preset`, fed `rows`, every forward priced by a
    stub that records what it was asked."""
    csv = tmp_path / "trace.csv"
    csv.write_text("arrival_s,input_tokens,output_tokens\n" +
                   "".join(f"{a},{i},{o}\n" for a, i, o in rows))
    w = small(arrivals={"process": "trace", "trace": str(csv)}, **serving)
    w = w.variant(plan=plan) if plan else w
    sim = ServingSim(w.variant(runtime={"preset": preset}))
    sim.asked = []
    sim.decode.step_s = lambda b, c: sim.asked.append(("decode", b, c)) or 0.010
    sim.decode.cell = lambda b, c: Cell.point(sim.decode.step_s(b, c), b, c)
    sim.decode.attention_share = lambda b, c: 0.25
    sim.prefill.step_s = lambda b, c: sim.asked.append(("prefill", b, c)) or 1e-6 * b * c
    if budget is not None:
        sim.kv_budget_tokens = budget
    return sim


ONE_GROUP = {"gpus": 8, "gpus_per_node": 8, "tp": 8, "attention_tp": 8, "moe_tp": 8, "ep": 1}


@pytest.mark.parametrize("plan", ["one group", "eight groups"])
def test_delayed_batching_holds_a_prompt_for_its_steps_or_until_its_tokens(tmp_path, plan):
    # TensorRT-LLM, one request decoding (10 ms steps) when 1,000-token prompts arrive at
    # 50 and 300 ms: delayed batching (5 steps, 0.9 of the 8,192-token budget: 7,373 tokens)
    # holds each five steps, 50 ms, as 1,000 + 1 decode token stays under the threshold (the
    # count starts again after each release); 8,000-token prompts reach it and are taken at
    # once; a prompt arriving with nothing decoding is never held; and under attention data
    # parallelism (eight groups) nothing is held
    wait = {"steps": 5, "tokens_ratio": 0.9}
    ttft = {}
    for prompt in (1000, 8000):
        for name, extra in (("plain", {}), ("wait", {"batch_wait": wait})):
            rows = [(0.0, 100, 60), (0.05, prompt, 2), (0.3, prompt, 2), (1.5, 500, 2)]
            sim = _sim(tmp_path, "trtllm-pytorch", rows, mode="colocated", **extra,
                       plan=ONE_GROUP if plan == "one group" else None)
            assert sim.decode.dp == (1 if plan == "one group" else 8)
            res = sim.run(check_stability=False)
            ttft[prompt, name] = res.ttft_s[np.argsort(res.request_ids)]
    held = 0.050 if plan == "one group" else 0.0
    assert ttft[1000, "wait"][1:3] == pytest.approx(ttft[1000, "plain"][1:3] + held)
    assert ttft[8000, "wait"][1:3] == pytest.approx(ttft[8000, "plain"][1:3])
    for prompt in (1000, 8000):                 # the first and the last find nothing decoding
        assert ttft[prompt, "wait"][[0, 3]] == pytest.approx(ttft[prompt, "plain"][[0, 3]])


def test_a_scheduler_that_takes_requests_every_n_steps_leaves_them_waiting(tmp_path):
    # TensorRT-LLM's stubs: one request decoding in 10 ms steps after its first (eager) step
    # of p0; a request arriving mid-step at 55.5 ms is taken in at the next step start
    # (p0 + 60 ms) every step, but only at every fourth with recv_interval 4 (after the
    # prefill step, then p0 + 40, p0 + 80 ms): its TTFT grows by the difference; one arriving
    # at 83.7 ms, during that request's own (mixed, a few ms) step, is taken in right after
    # it, as a step that prefilled makes the scheduler look again; the first request (an
    # idle engine) and one arriving after everything finished are taken at once
    ttft = {}
    for every in (1, 4):
        rows = [(0.0, 100, 30), (0.0555, 100, 2), (0.0837, 100, 2), (2.0, 100, 2)]
        sim = _sim(tmp_path, "trtllm-pytorch", rows, mode="colocated", recv_interval=every)
        assert sim.engine.recv_every == every and sim.engine.request_s == 0.0
        res = sim.run(check_stability=False)
        ttft[every] = res.ttft_s[np.argsort(res.request_ids)]
        p0 = res.ttft_s[np.argsort(res.request_ids)][0]        # the first request's step
    ms = 1e-3

    def seen(period):
        return p0 + math.ceil((0.0555 - p0) / period - 1e-9) * period
    assert ttft[4][1] == pytest.approx(ttft[1][1] + seen(40 * ms) - seen(10 * ms))
    assert seen(40 * ms) - seen(10 * ms) == pytest.approx(20 * ms)
    assert p0 + 80 * ms < 0.0837 < ttft[4][1] + 0.0555      # during the second's step
    assert ttft[4][2] < 10 * ms                  # less than a decode step: no wait for a poll
    assert ttft[4][[0, 3]] == pytest.approx(ttft[1][[0, 3]])


def test_decode_steps_are_priced_at_the_padded_batch(tmp_path):
    # 24 requests over 8 groups decode 3 a group: SGLang pads to 4; TensorRT-LLM runs 3
    rows = [(0.0, 100, 5)] * 24
    for preset, want in (("sglang-0.5", 4), ("trtllm-pytorch", 3)):
        sim = _sim(tmp_path, preset, rows, mode="colocated", decode={"max_batch_per_device": 8})
        sim.run(check_stability=False)
        asked = {b for kind, b, _ in sim.asked if kind == "decode"}
        assert asked == {want}, preset


def test_a_mixed_step_carries_decode_tokens_and_the_chunk_in_one_forward(tmp_path):
    # vLLM: 8 requests decode (one per group) when a 4000-token prompt arrives; its chunk is
    # what the step's 8 x 8192 budget leaves (all of it), one forward of 4000 + 8 tokens plus
    # decode's attention share (0.25 x 10 ms); SGLang runs the prompt alone, then the decode
    rows = [(0.0, 100, 50)] * 8 + [(0.05, 4000, 2)]
    for preset in ("vllm-v1", "sglang-0.5"):
        sim = _sim(tmp_path, preset, rows, mode="colocated", decode={"max_batch_per_device": 8})
        res = sim.run(check_stability=False)
        seqs, ctx = max(((b, c) for kind, b, c in sim.asked if kind == "prefill"),
                        key=lambda bc: bc[0] * bc[1])            # the big prompt's step
        tokens = seqs * ctx * 8                              # over the 8 groups
        assert tokens == pytest.approx(4000 + 8 if preset == "vllm-v1" else 4000)
        assert res.metrics["requests"]["finished"] == 9


def test_a_chunk_steps_price_by_hand():
    from types import SimpleNamespace as NS
    from simulator.serving.pools import ColocatedPrefill
    ms = 1e-3
    sim = NS(prefill=NS(step_s=lambda b, c: 1e-6 * b * c),
             decode=NS(attention_share=lambda b, c: 0.25),
             spec=NS(input_tokens=NS(mean=4000.0)))
    pool = ColocatedPrefill.__new__(ColocatedPrefill)
    for preset in ("vllm-v1", "sglang-0.5"):
        eng = policy(preset, host_s=0.5 * ms, eager_s=1 * ms)
        run = NS(engine=eng, sim=sim, dp=2, n_active=6, sum_ctx=6 * 500.0)
        dt, first = pool.chunk_step_s(run, 4000.0, 10 * ms)
        if preset == "vllm-v1":       # one forward of 4006 tokens (2003 a group) + 2.5 ms of
            gpu = 1e-6 * 2003 + 0.25 * 10 * ms            # decode attention; host exposed
            assert (dt, first) == (pytest.approx(gpu + 0.5 * ms), pytest.approx(gpu + 0.5 * ms))
        else:                         # the prompt's own eager step alone: decode waits for
            pre = max(1e-6 * 2000, 1 * ms)                   # the next step
            assert first == pytest.approx(pre)
            assert dt == pytest.approx(pre)
    # no engine: the chunk added to the decode step, its first token when its part ends
    run = NS(engine=EnginePolicy.ideal(8192, 96), sim=sim, dp=2, n_active=6, sum_ctx=3000.0)
    dt, first = pool.chunk_step_s(run, 4000.0, 10 * ms)
    assert (dt, first) == (pytest.approx(1e-6 * 2000 + 10 * ms), pytest.approx(1e-6 * 2000))


def test_reservation_decides_retraction(tmp_path):
    # twelve 1000-token prompts, 900 outputs each, 64,000 KV tokens over the pool: all twelve
    # fit on their prompts (12,012) but not to their ends (22,800 > 64,000 / 8 groups x ...):
    # vLLM admits on the prompt and retracts when the cache runs out; TensorRT-LLM reserves
    # every output token and never does
    rows = [(0.0, 1000, 900)] * 12
    out = {}
    for preset in ("vllm-v1", "trtllm-pytorch"):
        sim = _sim(tmp_path, preset, rows, budget=16000.0, mode="disaggregated")
        res = sim.run(check_stability=False)
        r = res.metrics["requests"]
        assert r["finished"] == 12 and r["unfinished"] == 0          # everyone, once
        out[preset] = r["preempted"]
    assert out["vllm-v1"] > 0 and out["trtllm-pytorch"] == 0


@pytest.mark.parametrize("preset", PRESETS)
def test_offline_and_closed_loops_conserve_requests_under_every_preset(preset):
    for arrivals in ({"process": "burst", "requests": 60},
                     {"process": "closed", "concurrency": 12, "requests": 48}):
        w = small(arrivals=arrivals, mode="colocated")
        res = ServingSim(w.variant(runtime={"preset": preset})).run(check_stability=False)
        r, m = res.metrics["requests"], res.metrics
        assert r["finished"] == r["arrived"] == arrivals["requests"] and r["rejected"] == 0
        assert len(set(res.request_ids.tolist())) == r["finished"]
        assert m["runtime_preset"] == preset
        little = m["little"]
        assert little["mean_in_system"] == pytest.approx(little["lambda_times_w"], rel=0.02)


def test_request_overhead_counts_in_ttft_and_littles_law(tmp_path):
    data = yaml.safe_load((SERVING_RUNTIMES_DIR / "vllm-v1.yaml").read_text())
    runs = {}
    for name, overhead in (("none", 0.0), ("slow", 0.25)):
        data["request_overhead_s"] = {"value": overhead, "source": "a test's overhead"}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
        w = small(arrivals={"process": "closed", "concurrency": 6, "requests": 24},
                  mode="colocated").variant(runtime={"preset": str(tmp_path / f"{name}.yaml")})
        runs[name] = ServingSim(w).run(check_stability=False)
    base, slow = runs["none"], runs["slow"]
    assert slow.ttft_s.min() >= 0.25
    assert slow.metrics["ttft_ms"]["p50"] == pytest.approx(base.metrics["ttft_ms"]["p50"] + 250,
                                                           rel=0.05)
    little = slow.metrics["little"]
    assert little["mean_in_system"] == pytest.approx(little["lambda_times_w"], rel=0.02)


def test_itl_is_the_decode_step_and_tpot_its_share_per_token(tmp_path):
    # every decode step DECODE_S: a request's chunks stream one step apart (ITL = DECODE_S);
    # without MTP a step is a token (TPOT = ITL); with MTP a step carries 1 + accepted tokens
    from tests.test_physics import DECODE_S, stubbed_sim
    rows = [(0.0, 500, 41), (0.0, 700, 61)]
    plain = stubbed_sim(tmp_path, rows).run(check_stability=False)
    assert plain.metrics["itl_ms"]["mean"] == pytest.approx(DECODE_S * 1e3)
    assert plain.metrics["tpot_ms"]["mean"] == pytest.approx(DECODE_S * 1e3)
    sim = stubbed_sim(tmp_path, rows)
    sim.mtp_draft, sim.acc = 1, 0.8
    mtp = sim.run(check_stability=False)
    assert mtp.metrics["itl_ms"]["p50"] == pytest.approx(DECODE_S * 1e3)
    assert mtp.metrics["tpot_ms"]["mean"] < 0.75 * DECODE_S * 1e3    # ~1.8 tokens a step


def test_serve_runtime_flag_and_runtimes_listing(tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["runtimes"])
    assert out.exit_code == 0
    for name in PRESETS:
        assert name in out.output
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(small(arrivals={"process": "burst", "requests": 20},
                                         mode="colocated").model_dump(mode="json")))
    ok = runner.invoke(app, ["serve", str(path), "--runtime", "trtllm-pytorch", "--json"])
    assert ok.exit_code == 0 and '"runtime_preset": "trtllm-pytorch"' in ok.output
    bad = runner.invoke(app, ["serve", str(path), "--runtime", "tgi"])
    assert bad.exit_code == 2 and "sglang-0.5" in bad.output and "Traceback" not in bad.output


def test_runtimes_lists_each_presets_calibrated_costs():
    out = CliRunner().invoke(app, ["runtimes"])
    assert out.exit_code == 0
    for name in PRESETS:
        rt = load_serving_runtime(name)
        row = next(line for line in out.output.splitlines() if f" {name} " in line)
        want = (f"+{rt.extra_kernels_per_layer.value:g}/layer "
                f"{rt.request_overhead_s.value * 1e3:g} ms")        # e.g. "+2.5/layer 88 ms"
        assert want in row, name


def test_a_broken_preset_is_refused_by_field(tmp_path):
    data = yaml.safe_load((SERVING_RUNTIMES_DIR / "sglang-0.5.yaml").read_text())
    data["cuda_graph_batch_sizes"] = [1, 8, 4]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    from simulator.errors import MoesimError
    with pytest.raises(MoesimError, match="cuda_graph_batch_sizes"):
        load_serving_runtime(str(path))
    assert math.isfinite(load_serving_runtime("sglang-0.5").host_s_per_step.value)


def test_a_finished_request_returns_its_reservation(tmp_path):
    # TensorRT-LLM reserves every output token. 8 short (10 more tokens) and 8 long (100 more)
    # requests fill the 2,600-token pool (8 x (101 + 10) + 8 x (101 + 100) + a token a step
    # each = 2,512); 8 more short ones wait. When the short ones finish (step 10) the long ones
    # hold 8 x 111 and still need 8 x 90: 888 + 16 + 720 + 8 x 111 = 2,512 fits, so the waiting
    # ones decode from then, done by step ~20 (0.2 s at 10 ms a step), not after the long ones
    rows = [(0.0, 100, 11)] * 8 + [(0.0, 100, 101)] * 8 + [(0.0, 100, 11)] * 8
    sim = _sim(tmp_path, "trtllm-pytorch", rows, budget=2600.0, mode="disaggregated")
    res = sim.run(check_stability=False)
    assert res.metrics["requests"]["finished"] == 24 and res.metrics["requests"]["preempted"] == 0
    late = res.e2e_s[res.request_ids >= 16]
    assert late.max() < 0.3 and late.min() > 0.15       # after the first short ones, only


def test_an_open_loop_request_waits_out_its_overhead(tmp_path):
    data = yaml.safe_load((SERVING_RUNTIMES_DIR / "vllm-v1.yaml").read_text())
    ttft = {}
    for name, overhead in (("none", 0.0), ("slow", 0.25)):
        data["request_overhead_s"] = {"value": overhead, "source": "a test's overhead"}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
        sim = _sim(tmp_path, str(tmp_path / f"{name}.yaml"), [(1.0, 800, 5)], mode="colocated")
        ttft[name] = sim.run(check_stability=False).ttft_s[0]
    assert ttft["slow"] - ttft["none"] == pytest.approx(0.25, abs=0.011)   # a step's slack


def test_a_load_sweep_runs_each_named_runtime(tmp_path):
    import json
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(small(mode="colocated").model_dump(mode="json")))
    out = CliRunner().invoke(app, ["serve", str(path), "--sweep-concurrency", "2,6", "--runtime",
                                   "sglang-0.5,vllm-v1", "--json"])
    assert out.exit_code == 0, out.output
    points = json.loads(out.output)
    assert [(p["runtime_preset"], p["concurrency"]) for p in points] == \
        [("sglang-0.5", 2), ("sglang-0.5", 6), ("vllm-v1", 2), ("vllm-v1", 6)]
    one = CliRunner().invoke(app, ["serve", str(path), "--runtime", "sglang-0.5,vllm-v1"])
    assert one.exit_code == 2 and "--sweep-concurrency" in one.output


def test_windowed_blocks_hold_only_their_window_of_kv(tmp_path):
    # half the blocks windowed to 128 keys; requests of 1000 in, 200 out hold 1100 tokens on
    # average: a token's KV is (0.5 x 128 + 0.5 x 1100) / 1100 of its full size
    from simulator.loading import MODELS_DIR
    model = yaml.safe_load((MODELS_DIR / "mixtral-8x7b.yaml").read_text())
    model["attention"].update(sliding_window=128, sliding_window_share=0.5)
    path = tmp_path / "windowed.yaml"
    path.write_text(yaml.safe_dump(model))
    w = small(input_tokens={"mean": 1000, "dist": "fixed"},
              output_tokens={"mean": 200, "dist": "fixed"})
    full = ServingSim(w).kv_token_bytes
    windowed = ServingSim(w.variant(model=str(path)))
    assert windowed.kv_token_bytes == pytest.approx(full * (0.5 * 128 + 0.5 * 1100) / 1100)
    assert windowed.kv_budget_tokens == pytest.approx(ServingSim(w).kv_budget_tokens * 1100 /
                                                      (0.5 * 128 + 0.5 * 1100))


def test_a_retraction_makes_sglang_admit_fewer_until_it_recovers(tmp_path):
    # twenty-four 1000-token prompts with 900 outputs into 16,000 KV tokens: SGLang's decayed
    # reservation (0.098) admits more than fit, retracts, then reserves 0.7 and retracts less
    # than a copy of the preset without the rise
    data = yaml.safe_load((SERVING_RUNTIMES_DIR / "sglang-0.5.yaml").read_text())
    for key in ("kv_reserve_after_retraction", "kv_reserve_recovery_steps"):
        data.pop(key)
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump(data))
    rows = [(0.0, 1000, 900)] * 24
    preempted = {}
    for preset in ("sglang-0.5", str(flat)):
        sim = _sim(tmp_path, preset, rows, budget=16000.0, mode="disaggregated")
        r = sim.run(check_stability=False).metrics["requests"]
        assert r["finished"] == 24
        preempted[preset] = r["preempted"]
    assert 0 < preempted["sglang-0.5"] < preempted[str(flat)]


def test_the_loop_exposes_host_time_as_each_engine_does(tmp_path):
    # one request decoding alone, every decode step 10 ms on the GPU (a captured graph): with
    # 2 ms of host time a step, vLLM (no overlap) takes 12 ms a token, SGLang (overlap) 10 ms;
    # with 15 ms of host time SGLang's step is the host's 15 ms
    def tpot(preset: str, host_s: float) -> float:
        data = yaml.safe_load((SERVING_RUNTIMES_DIR / f"{preset}.yaml").read_text())
        data["host_s_per_step"] = {"value": host_s, "source": "a test's host time"}
        path = tmp_path / f"{preset}-{host_s}.yaml"
        path.write_text(yaml.safe_dump(data))
        sim = _sim(tmp_path, str(path), [(0.0, 100, 21)], mode="disaggregated")
        return float(sim.run(check_stability=False).tpot_s[0])
    assert tpot("vllm-v1", 0.002) == pytest.approx(0.012)
    assert tpot("sglang-0.5", 0.002) == pytest.approx(0.010)
    assert tpot("sglang-0.5", 0.015) == pytest.approx(0.015)


def test_sglang_runs_waiting_prompts_back_to_back_before_decoding(tmp_path):
    # sixteen 8000-token prompts at t = 0, a budget of 8000 prompt tokens a group (8 groups:
    # 64,000 a step, eight prompts): SGLang's scheduler runs a prefill batch whenever it can
    # form one, so both prefill steps come first and every request decodes in one lockstep
    # batch: the first eight get their first token after one prefill step p, the rest after
    # 2p, and all finish together, two 10 ms decode steps (outputs of 3) after 2p
    rows = [(0.0, 8000, 3)] * 16
    sim = _sim(tmp_path, "sglang-0.5", rows, mode="colocated", chunk_tokens_per_device=8000,
               decode={"max_batch_per_device": 8})
    res = sim.run(check_stability=False)
    p = max(1e-6 * 8000, sim.engine.eager_s)               # one prompt a group, eager
    lag = sim.engine.request_s                              # the request's own overhead
    order = np.argsort(res.request_ids)
    ttft, e2e = res.ttft_s[order], res.e2e_s[order]
    assert ttft[:8] == pytest.approx([lag + p] * 8)
    assert ttft[8:] == pytest.approx([lag + 2 * p] * 8)
    assert e2e == pytest.approx([lag + 2 * p + 2 * 0.010] * 16)
    kinds = [kind for kind, _, _ in sim.asked]
    assert kinds.index("decode") > 1 and kinds[:2] == ["prefill", "prefill"]
    # vLLM mixes: the second chunk's forward already carries the first eight's decode tokens,
    # so the first eight finish before the rest
    sim = _sim(tmp_path, "vllm-v1", rows, mode="colocated", chunk_tokens_per_device=8000,
               decode={"max_batch_per_device": 8})
    res = sim.run(check_stability=False)
    order = np.argsort(res.request_ids)
    assert res.e2e_s[order][:8].max() < res.e2e_s[order][8:].min()


@pytest.mark.parametrize("preset", ["sglang-0.5", "vllm-v1", "trtllm-pytorch"])
def test_a_prompt_starts_prefill_only_when_the_batch_has_room(tmp_path, preset):
    # one running slot a group (8 groups), 16 prompts at t = 0: an engine prefills a prompt
    # only for a free slot, so the second eight start prefill when the first eight finish:
    # nobody ever waits between its first token and its first decode step, and the second
    # eight's TTFT covers the first eight's whole run
    rows = [(0.0, 100, 4)] * 16
    sim = _sim(tmp_path, preset, rows, mode="colocated", decode={"max_batch_per_device": 1})
    res = sim.run(check_stability=False)
    order = np.argsort(res.request_ids)
    ttft, e2e = res.ttft_s[order], res.e2e_s[order]
    assert e2e[:8].max() <= ttft[8:].min() + 1e-12
    # no engine ("none"): every waiting prompt is prefilled at once and waits for room after
    sim = _sim(tmp_path, "none", rows, mode="colocated", decode={"max_batch_per_device": 1})
    res = sim.run(check_stability=False)
    order = np.argsort(res.request_ids)
    assert res.ttft_s[order][8:].max() < res.e2e_s[order][:8].min()


def test_a_request_that_fills_the_kv_budget_alone_runs_and_the_loop_ends():
    # prompt + output = the whole budget of one group (1,000 + 100 = 1,100 tokens): it is not
    # rejected on arrival, so an empty batch must take it (TensorRT-LLM reserves its whole
    # output; counting the next step's token too it would never fit, and the loop would wait
    # forever); run in a child process so that a hang fails the test instead of the suite
    import subprocess
    import sys
    code = """
import sys, tempfile, pathlib
sys.path.insert(0, ".")
from tests.test_serving import small
from simulator.serving.run import ServingSim
csv = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
csv.write_text("arrival_s,input_tokens,output_tokens\\n" + "0.0,1000,100\\n" * 2)
w = small(arrivals={"process": "trace", "trace": str(csv)}, mode="colocated")
w = w.variant(plan={"gpus": 8, "gpus_per_node": 8, "tp": 8, "attention_tp": 8, "moe_tp": 8,
                    "ep": 1}, runtime={"preset": "trtllm-pytorch"})
sim = ServingSim(w)
sim.kv_budget_tokens = 1100.0
print(sim.run(check_stability=False).metrics["requests"]["finished"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "2"


def test_a_prompt_that_finds_no_kv_waits_before_its_prefill(tmp_path):
    # a KV budget of 8 x 3 x 1,103 tokens: a running request holds its 1,001 tokens and
    # TensorRT-LLM reserves its 99 to come (1,100), plus a token a step each: 24 fit
    # (26,424), a 25th does not (27,525), so the 25th..32nd prompts start prefill only once
    # the first requests finish, and nobody is evicted
    rows = [(0.0, 1000, 100)] * 32
    sim = _sim(tmp_path, "trtllm-pytorch", rows, budget=8 * 3 * 1103, mode="colocated",
               decode={"max_batch_per_device": 64})
    res = sim.run(check_stability=False)
    order = np.argsort(res.request_ids)
    ttft, e2e = res.ttft_s[order], res.e2e_s[order]
    assert e2e[:24].min() <= ttft[24:].min() + 1e-12
    assert res.metrics["requests"]["finished"] == 32
    assert res.metrics["requests"]["preempted"] == 0
