"""moesim plan --train: every layout tried is priced or pruned with its reason, recompute is the
lightest that fits, the front of days against GPUs and the fastest and cheapest per hardware
follow by arithmetic, every front point's YAML reproduces its figures."""
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import simulator.outputs.plan_train as pt
from cli import app
from simulator.errors import MoesimError
from simulator.loading import (load_model, load_profile, load_workload, read_yaml_mapping,
                               resolve_paths)
from simulator.schema import Workload
from simulator.training.run import fitting, train

ROOT = Path(__file__).resolve().parent.parent
QWEN = ROOT / "workloads" / "validation" / "training" / "qwen3-30b-a3b-b200-deepep-16.yaml"


def small(monkeypatch):
    """A search small enough for a test, over every dimension: 2 TP x 2 PP x 1 EP x 2
    micro-batches, each pipeline schedule where pp > 1."""
    monkeypatch.setattr(pt, "TP", (1, 2))
    monkeypatch.setattr(pt, "PP", (1, 2))
    monkeypatch.setattr(pt, "EP", (8,))
    monkeypatch.setattr(pt, "MICRO_BATCHES", (4, 16))


def question(**kw) -> pt.TrainQuestion:
    base = resolve_paths(read_yaml_mapping(QWEN), QWEN.resolve().parent)
    return pt.TrainQuestion(base=base, **{"hardware": ("b200-sxm", "h100-sxm"),
                                          "gpus": (8, 16), **kw})


@pytest.fixture(scope="module")
def res():
    mp = pytest.MonkeyPatch()
    small(mp)
    try:
        yield pt.search(question(), workers=1)
    finally:
        mp.undo()


def test_counts_add_up_and_each_layout_is_tried_once(res, monkeypatch):
    small(monkeypatch)
    c = res["candidates"]
    # per hardware, two micro-batch sizes each: on 8 GPUs only pp 1 (pp 2 leaves a stage 4 GPUs,
    # fewer than EP 8), 2 TP x 1F1B = 2 x 2 = 4; on 16 GPUs pp 1 runs 1F1B only and pp 2 four
    # schedules: (2 x 1 + 2 x 4) x 2 = 20
    assert c["tried"] == 2 * (4 + 20) == len(pt.candidates(question()))
    assert c["tried"] == c["pruned"] + c["priced"] and c["priced"] == len(res["points"])
    assert c["pruned"] > 0 and c["priced"] > 0
    for p in res["pruned"]:
        assert "does not fit" in p["reason"] or "split" in p["reason"] or \
            "dualpipe" in p["reason"] or "groups of pp" in p["reason"], p


def test_recompute_is_the_lightest_that_fits(res):
    seen = set()
    for p in res["points"]:
        w = Workload.model_validate(p["workload"])
        model, prof = load_model(w.model), load_profile(w.hardware)
        order = pt.RECOMPUTE.index(p["recompute"])
        seen.add(p["recompute"])
        for lighter in pt.RECOMPUTE[:order]:
            with pytest.raises(MoesimError, match="does not fit"):
                fitting(w.variant(training=w.training.model_copy(update={"recompute": lighter})),
                        model, prof)
    assert {"none", "full"} <= seen          # the H100's 80 GB makes the big micro-batch recompute


def test_the_front_is_exactly_the_points_no_other_beats_on_gpus_and_days(res):
    pts = res["points"]
    undominated = [p for p in pts if not any(
        q["gpus"] <= p["gpus"] and q["days_to_train"] < p["days_to_train"] for q in pts)]
    assert {(p["config"]) for p in res["front"]} == {p["config"] for p in undominated}
    assert [p["gpus"] for p in res["front"]] == sorted(p["gpus"] for p in res["front"])


def test_fastest_and_cheapest_per_hardware_and_what_they_cost(res):
    for hw in ("b200-sxm", "h100-sxm"):
        mine = [p for p in res["points"] if p["hardware"] == hw]
        assert res["fastest"][hw]["days_to_train"] == min(p["days_to_train"] for p in mine)
        assert res["cheapest"][hw]["cost_usd"] == min(p["cost_usd"] for p in mine)
        price = load_profile(hw).price_per_gpu_hour.value
        for p in mine:                       # $ = days x 24 h x GPUs x $/GPU-h
            assert p["cost_usd"] == pytest.approx(p["days_to_train"] * 24 * p["gpus"] * price)
            tokens = p["workload"]["training"]["global_batch_sequences"] * \
                p["workload"]["context_length"]
            assert p["tokens_per_day"] == pytest.approx(tokens / p["step_time_s"] * 86400)


def test_every_front_point_written_as_a_workload_reproduces_its_figures(res, tmp_path):
    paths = pt.write_points(res["front"], tmp_path)
    assert len(paths) == len(res["front"])
    for path, p in zip(paths, res["front"]):
        r = train(load_workload(str(path)))
        assert r.step_time_s == pytest.approx(p["step_time_s"], rel=0.01)
        assert r.days_to_train == pytest.approx(p["days_to_train"], rel=0.01)


def test_context_parallel_only_where_each_rank_keeps_enough_tokens(monkeypatch):
    base = question().base
    short = pt.layouts(question(), 64, 8)
    assert short and {p["cp"] for p in short} == {1}            # 4096 tokens: no CP
    long = pt.layouts(pt.TrainQuestion({**base, "context_length": 32768}, ("b200-sxm",), (64,)),
                      64, 8)
    assert {p["cp"] for p in long} == {1, 2, 4, 8}              # 32768 / 8 = 4096
    for p in long:
        stage = p["gpus"] // p["pp"]
        assert stage % (p["tp"] * p["cp"]) == 0 and stage % p["ep"] == 0 and p["tp"] <= 8


def test_tokens_set_the_days(monkeypatch):
    small(monkeypatch)
    monkeypatch.setattr(pt, "MICRO_BATCHES", (4,))
    monkeypatch.setattr(pt, "PP", (1,))
    a = pt.search(question(hardware=("b200-sxm",), gpus=(8,), tokens=1e12), workers=1)
    b = pt.search(question(hardware=("b200-sxm",), gpus=(8,), tokens=3e12), workers=1)
    assert b["fastest"]["b200-sxm"]["days_to_train"] == \
        pytest.approx(3 * a["fastest"]["b200-sxm"]["days_to_train"])


def test_cli_json_and_refusals(monkeypatch, tmp_path):
    small(monkeypatch)
    monkeypatch.setattr(pt, "MICRO_BATCHES", (4,))
    r = CliRunner().invoke(app, ["plan", "--train", str(QWEN), "--gpus", "8", "--tokens", "2T",
                                 "--workers", "1", "--results", str(tmp_path / "r.sqlite"),
                                 "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert set(d) == {"question", "candidates", "front", "fastest", "cheapest", "pruned"}
    assert d["question"]["tokens_to_train"] == 2e12 and d["question"]["hardware"] == ["b200-sxm"]
    assert d["fastest"]["b200-sxm"]["fidelity"]["expected_error_pct"] is not None
    serving = ROOT / "workloads" / "longcat-flash-decode-h800.yaml"
    for args in (["plan", "--train", str(serving)], ["plan", "--train", "qwen3-30b-a3b"],
                 ["plan", "--train", str(QWEN), "--gpus", "0"],
                 ["plan", "--train", str(QWEN), "--tokens", "lots"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output, (args, r.output)
    assert "not a training workload" in CliRunner().invoke(app, ["plan", "--train",
                                                                 str(serving)]).output
