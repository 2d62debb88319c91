"""End-to-end against published deployments (benchmarks/published.py, docs/accuracy.md)."""
import pytest

from benchmarks.published import (load_manifest, optimistic, predict, run, signed_error,
                                  summary)
from simulator.loading import load_model, load_workload
from simulator.step.whatif import simulate

ROWS = {r.id: r for r in load_manifest()}
# Rows that miss the 25% line, with why (docs/accuracy.md); strict, so a fix is noticed.
MISSES = {
    "mixtral-8x7b-int8-a100-decode": "batch-1 int8 weight-only decode: moesim prices the "
    "weight reads at the A100 table's BF16 efficiency and no per-step runtime cost",
    "mixtral-8x7b-int8-a100-prefill": "the published TTFT holds the server's own time around "
    "the forward, which moesim does not price",
}
# Training rows that miss 25% (docs/accuracy.md s5 gives each one's cause).
TRAINING_GAP = "training step model (docs/accuracy.md s5: the causes by row)"
MISSES.update({i: TRAINING_GAP for i in (
    "deepseek-v3-gb200-mxfp8-baseline-train", "qwen3-30b-a3b-b200-deepep-128-train")})
# Request-level rows that miss 25% (docs/accuracy.md, published rows: their causes).
REQUEST_GAP = "request-level serving (docs/accuracy.md s10: the causes by row)"
MISSES.update({i: REQUEST_GAP for i in (
    "deepseek-r1-h200-vllm-c16-ttft", "deepseek-r1-h200-trtllm-c8-tpot",
    "deepseek-r1-h200-trtllm-c64-tpot", "deepseek-r1-mi300x-vllm-c8-tpot",
    "deepseek-r1-mi300x-vllm-c64-tpot")})
MISSES.update({f"qwen3-30b-a3b-b200-deepep-{n}-train": TRAINING_GAP
               for n in ("8", "16", "32", "64", "128-lbs10")})
MISSES.update({f"qwen3-235b-h100-{k}-dropless-train": TRAINING_GAP
               for k in ("16k-cp1", "32k-cp2", "64k-cp4")})


@pytest.fixture(scope="module")
def results():
    return {r["id"]: r for r in run(list(ROWS.values()))}


def test_the_manifest_has_what_the_fidelity_goal_asks_for():
    rows = list(ROWS.values())
    assert len(rows) >= 8
    assert len({r.publisher for r in rows}) >= 8
    training = [r for r in rows if r.kind.startswith("training")]
    # issue "Train MoE models as Megatron runs them": at least 10 training rows, 8 of them MoE,
    # from at least 4 organisations (the part of the publisher before a bracket)
    assert len(training) >= 10 and len({r.publisher.split(" (")[0] for r in training}) >= 4
    moe = [r for r in training if load_model(load_workload(r.workload).model).moe is not None]
    assert len(moe) >= 8 and len(training) - len(moe) >= 2
    for r in rows:            # every workload loads, and says where its deployment comes from
        w = load_workload(r.workload)
        assert w.name == r.id or r.metric in ("speedup", "gpu_hours_per_trillion_tokens") \
            or w.name + "-train" == r.id
    kinds = {r.kind.split(",")[0] for r in rows}
    assert {"decode", "prefill", "training"} <= kinds


def test_metrics_are_read_off_the_simulation_as_defined():
    # decode: tokens per GPU per second = sequences per GPU / step (no MTP), by hand
    r = ROWS["qwen3-30b-a3b-h20-decode"]
    s = simulate(load_workload(r.workload)).to_json()
    assert predict(r) == pytest.approx(100 / (s["step_time_ms"] / 1e3))
    # prefill: 4 prompts of 4096 tokens per forward
    r = ROWS["qwen3-30b-a3b-h20-prefill"]
    s = simulate(load_workload(r.workload)).to_json()
    assert predict(r) == pytest.approx(4 * 4096 / (s["step_time_ms"] / 1e3))
    # a speedup is the baseline's step over the workload's
    r = ROWS["scmoe-a800-nvlink-speedup"]
    base = simulate(load_workload(r.baseline)).to_json()["step_time_ms"]
    sc = simulate(load_workload(r.workload)).to_json()["step_time_ms"]
    assert predict(r) == pytest.approx(base / sc)
    assert signed_error(r, 1.15 * 1.1) == pytest.approx(0.1)
    # optimistic: a shorter time, or a higher rate, than published
    assert optimistic(ROWS["mixtral-8x7b-int8-a100-decode"], 10.0)
    assert optimistic(ROWS["qwen3-235b-h100-tp4-ep8-pp8-train"], 20.0)     # a shorter step
    # training: a step's seconds, and its tokens per GPU-second (8 nodes x 8 H200, 2 x 8192
    # tokens per GPU per step), read off one simulated step
    from simulator.training.run import train
    r = ROWS["llama-3.1-8b-h200-fsdp-fp8-64-train"]
    t = train(load_workload(r.workload))
    assert t.tokens_per_step == 64 * 2 * 8192
    assert predict(r) == pytest.approx(2 * 8192 / t.step_time_s)
    assert not optimistic(ROWS["qwen3-8b-fp8-h20-decode"], 2000.0)


@pytest.mark.parametrize("row", [
    pytest.param(i, marks=pytest.mark.xfail(reason=MISSES[i], strict=True)) if i in MISSES
    else i for i in ROWS])
def test_each_row_within_25_percent(results, row):
    assert abs(results[row]["error"]) <= 0.25, results[row]


def test_median_error_and_no_systematic_sign(results):
    s = summary(list(results.values()))
    # the step-model rows (decode, prefill, speedup) keep the median they had before the
    # request-level and training rows were added (issue "Price every operation ...")
    step = [r for r in results.values() if r["kind"] in ("decode", "prefill", "speedup")]
    assert len(step) == 10 and summary(step)["median_abs_error"] <= 0.10, s
    assert s["decode_errors_both_ways"], s


def test_the_error_figure_has_a_bar_per_row_with_its_error(results):
    from benchmarks.published import error_figure
    rows = list(results.values())
    fig = error_figure(rows)
    bar = fig.data[0]
    assert list(bar.x) == [r["id"] for r in rows]
    assert list(bar.y) == pytest.approx([100 * r["error"] for r in rows])
    assert {round(s.y0) for s in fig.layout.shapes} == {10, -10, 25, -25}


def test_the_table_spans_publishers_gpus_and_moe_families():
    # issue "Measure moesim against thousands of measured deployments": at least 40 rows from
    # 8 publishers (organisations), on 4 GPU types and 4 MoE families
    rows = list(ROWS.values())
    assert len(rows) >= 40
    assert len({r.publisher.split(" (")[0] for r in rows}) >= 8
    workloads = [load_workload(r.workload) for r in rows]
    assert len({w.hardware for w in workloads}) >= 4
    families = {load_model(w.model).family for w in workloads
                if load_model(w.model).moe is not None}
    assert len(families) >= 4, families
    for r in rows:            # every workload says where it comes from in its header
        head = open(r.workload).read().split("\n", 1)[0]
        assert head.startswith("#") and len(r.source) > 20, r.id


def test_summary_by_arithmetic_on_a_hand_made_table():
    rows = [{"id": "a", "kind": "decode", "gpu": "h100", "publisher": "P", "model": "M",
             "error": 0.10, "optimistic": True},
            {"id": "b", "kind": "decode", "gpu": "h200", "publisher": "P", "model": "M",
             "error": -0.30, "optimistic": False},
            {"id": "c", "kind": "training", "gpu": "h100", "publisher": "Q", "model": "N",
             "error": 0.20, "optimistic": True}]
    s = summary(rows)
    assert s["rows"] == 3 and s["publishers"] == 2
    assert s["median_abs_error"] == pytest.approx(0.20)
    assert s["p90_abs_error"] == pytest.approx(0.30) and s["max_abs_error"] == pytest.approx(0.30)
    assert s["share_optimistic"] == pytest.approx(2 / 3)
    assert s["by_kind"]["decode"] == {"rows": 2, "median_abs_error": pytest.approx(0.20),
                                      "p90_abs_error": pytest.approx(0.30),
                                      "share_optimistic": 0.5}
    assert s["by_gpu"]["h100"]["median_abs_error"] == pytest.approx(0.15)
    assert s["decode_errors_both_ways"]
