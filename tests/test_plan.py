"""moesim plan: counts add up, the front is the Pareto front by arithmetic, the best meets the
SLO, every front point's YAML reproduces its figures, an impossible SLO says why."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from simulator.loading import load_profile, load_workload
from simulator.outputs.plan import Question, search, write_points
from simulator.step.whatif import simulate

ROOT = Path(__file__).resolve().parent.parent
Q = Question(model="qwen3-30b-a3b", hardware=("h200-sxm", "h100-sxm"), gpus=(4, 8), isl=2048,
             osl=512, ttft_ms=500, tpot_ms=30)


@pytest.fixture(scope="module")
def res():
    return search(Q, workers=1)


def test_counts_add_up_and_every_candidate_is_priced_or_pruned(res):
    c = res["candidates"]
    assert c["tried"] == c["priced"] + c["pruned"]
    assert len(res["points"]) == 2 * c["priced"]          # served aggregated and disaggregated
    assert c["priced"] > 50


def test_serving_with_prefill_follows_the_gpu_seconds_per_request(res):
    for p in res["points"][:40]:
        group = p["plan"].get("attention_tp", 1)
        c_p = p["ttft_ms"] / 1e3 * group                   # prefill GPU-seconds per request
        c_d = Q.osl / p["decode_tokens_per_gpu_s"]          # decode GPU-seconds per request
        assert p["tokens_per_gpu_s"] == pytest.approx(Q.osl / (c_p + c_d), rel=1e-12)
        assert p["prefill_to_decode_gpus"] == pytest.approx(c_p / c_d, rel=1e-12)
        assert p["prefill_share"] == pytest.approx(c_p / (c_p + c_d), rel=1e-12)
        assert p["tokens_per_s_per_user"] == pytest.approx(1e3 / p["tpot_ms"])
        price = load_profile(p["hardware"]).price_per_gpu_hour.value
        assert p["cost_per_million_output_tokens"] == \
            pytest.approx(price / 3600 / p["tokens_per_gpu_s"] * 1e6)
        stall = 1 - c_p / (c_p + c_d)
        want = p["decode_tpot_ms"] / stall if p["mode"] == "aggregated" else p["decode_tpot_ms"]
        assert p["tpot_ms"] == pytest.approx(want, rel=1e-12)
        assert p["tokens_per_gpu_s"] < p["decode_tokens_per_gpu_s"]


def test_the_front_is_exactly_the_undominated_points(res):
    pts = res["points"]

    def dominated(p):
        return any(o["tokens_per_gpu_s"] >= p["tokens_per_gpu_s"] and
                   o["tokens_per_s_per_user"] >= p["tokens_per_s_per_user"] and
                   (o["tokens_per_gpu_s"] > p["tokens_per_gpu_s"] or
                    o["tokens_per_s_per_user"] > p["tokens_per_s_per_user"]) for o in pts)
    pair = lambda p: (p["tokens_per_gpu_s"], p["tokens_per_s_per_user"])   # noqa: E731
    assert {pair(p) for p in res["front"]} == {pair(p) for p in pts if not dominated(p)}
    assert len(res["front"]) == len({pair(p) for p in res["front"]})   # ties listed once


def test_the_best_meets_the_slo_and_no_other_that_does_beats_it(res):
    for hw, best in res["best"].items():
        ok = [p for p in res["points"] if p["hardware"] == hw and p["meets_slo"]]
        assert best is not None and best["meets_slo"]
        assert best["tpot_ms"] <= Q.tpot_ms and best["ttft_ms"] <= Q.ttft_ms
        assert best["tokens_per_gpu_s"] == max(p["tokens_per_gpu_s"] for p in ok)
        assert best["slo_margin"]["tpot_ms"] == pytest.approx(Q.tpot_ms - best["tpot_ms"])
        assert best["slo_margin"]["ttft_ms"] == pytest.approx(Q.ttft_ms - best["ttft_ms"])
        for mode in ("aggregated", "disaggregated"):
            of_mode = [p for p in ok if p["mode"] == mode]
            got = res["best_by_mode"][hw][mode]
            assert got["tokens_per_gpu_s"] == max(p["tokens_per_gpu_s"] for p in of_mode)
            assert got["mode"] == mode and got["meets_slo"]


def test_every_front_point_written_as_a_workload_reproduces_its_figures(res, tmp_path):
    paths = write_points(res["front"], tmp_path)
    assert len(paths) == len(res["front"])
    for path, p in zip(paths, res["front"]):
        r = simulate(load_workload(str(path))).to_json(with_ops=False)
        assert r["tpot_ms"] == pytest.approx(p["decode_tpot_ms"], rel=0.01)
        assert r["tokens_per_gpu_s"] == pytest.approx(p["decode_tokens_per_gpu_s"], rel=0.01)


def test_an_impossible_slo_says_which_constraint_and_by_how_much(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "plan", "qwen3-30b-a3b",
                          "--gpus", "8", "--hardware", "h200-sxm", "--tpot-ms", "0.01",
                          "--workers", "1", "--report", str(tmp_path / "p.html")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "nothing meets the SLO" in text and "against 0.01 ms" in text
    assert "Traceback" not in out.stderr and (tmp_path / "p.html").is_file()
    js = subprocess.run([sys.executable, str(ROOT / "cli.py"), "plan", "qwen3-30b-a3b",
                         "--gpus", "8", "--hardware", "h200-sxm", "--tpot-ms", "0.01",
                         "--workers", "1", "--json"], capture_output=True, text=True,
                        timeout=300)
    d = json.loads(js.stdout)
    assert d["best"]["h200-sxm"] is None and "fastest TPOT" in d["unmet"]["h200-sxm"]
    assert set(d["candidates"]) == {"tried", "pruned", "priced"}


def test_bad_questions_are_refused():
    for args in (["--gpus", "0"], ["--isl", "0"], ["--tpot-ms", "nan"],
                 ["--hardware", "tpu-v9"]):
        out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "plan", "qwen3-30b-a3b",
                              *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)


SMALL = Question(model="qwen3-30b-a3b", hardware=("h200-sxm",), gpus=(8,), isl=1024, osl=256,
                 ttft_ms=500, tpot_ms=30)


def test_an_interrupted_plan_resumes_and_prices_only_what_is_left(tmp_path):
    """Ctrl-C after some what-ifs keeps them in the results file and says so; the rerun reads
    them back (its first progress report counts them done) and ends as a fresh search does."""
    from simulator.outputs.pool import SweepInterrupted
    db = tmp_path / "plan.sqlite"
    seen = []

    def stop_after_five(done, total):
        seen.append(done)
        if done >= 5:
            raise KeyboardInterrupt
    with pytest.raises(SweepInterrupted) as e:
        search(SMALL, workers=1, progress=stop_after_five, results=db)
    assert "5 of" in e.value.render() and "resume" in e.value.render()
    again = []
    resumed = search(SMALL, workers=1, progress=lambda d, t: again.append((d, t)), results=db)
    assert again[0][0] == 5 and again[-1][0] == again[-1][1]
    fresh = search(SMALL, workers=1)
    assert resumed["front"] == fresh["front"] and resumed["candidates"] == fresh["candidates"]
    cached = []
    search(SMALL, workers=1, progress=lambda d, t: cached.append(d), results=db)
    assert cached == [again[-1][1]]                 # everything read back, nothing priced


def test_mtp_is_searched_where_the_model_has_it():
    from simulator.outputs.plan import candidates, mtp_settings
    assert mtp_settings(SMALL) == [None]            # Qwen3 has no MTP layers
    dsv3 = Question(model="deepseek-v3", hardware=("h200-sxm",), gpus=(8,), isl=1024, osl=256,
                    ttft_ms=500, tpot_ms=30)
    on = [w for _, w, _, _ in candidates(dsv3) if w.get("mtp")]
    off = [w for _, w, _, _ in candidates(dsv3) if not w.get("mtp")]
    assert len(on) == len(off) > 0 and all(w["mtp"]["enabled"] for w in on)
    w = next(w for w in on if w["batch_per_device"] == 16 and w["schedule"] == "sequential")
    r = simulate(load_workload_dict(w)).to_json(with_ops=False)
    assert r["tokens_per_forward"] > 1              # a verify step yields more than one token


def load_workload_dict(w: dict):
    from simulator.schema import Workload
    return Workload.model_validate(w)


def test_consecutive_points_of_a_group_run_as_one_task():
    from simulator.outputs.pool import Point, batches
    pts = [Point(k, {}, {}, g) for k, g in (("a", "x"), ("b", "x"), ("c", ""), ("d", ""),
                                              ("e", "y"), ("f", "x"))]
    assert [[p.key for p in t] for t in batches(pts)] == [["a", "b"], ["c"], ["d"], ["e"],
                                                          ["f"]]


def test_plan_on_a_real_local_ray_cluster_matches_the_local_pool(ray_cluster, tmp_path):
    local = search(SMALL, workers=2)
    remote = search(SMALL, backend="ray", address=ray_cluster, results=tmp_path / "r.sqlite")
    assert remote["front"] == local["front"] and remote["best"] == local["best"]


def test_replicas_of_whole_nodes_serve_as_one_replica_does():
    """On 16 GPUs the experts may span all 16 or two replicas of 8: a replica's per-GPU figures
    are the 8-GPU deployment's, and its point counts all 16 GPUs."""
    from simulator.outputs.plan import layouts
    q16 = Question(model="qwen3-30b-a3b", hardware=("h200-sxm",), gpus=(16,), isl=1024,
                   osl=256, ttft_ms=500, tpot_ms=30)
    names = [n for n, _ in layouts(q16, 16, 8)]
    assert "DP attention, EP8 x 2 replicas" in names and "DP attention, EP16" in names
    r16 = search(q16, workers=1)
    r8 = search(Question(**{**q16.__dict__, "gpus": (8,)}), workers=1)
    rep = [p for p in r16["points"] if p["replicas"] == 2]
    assert rep and all(p["gpus"] == 16 == 2 * p["plan"]["gpus"] for p in rep)
    one = {(p["schedule"], p["batch_per_device"], p["kv_bytes"], p["mode"]): p
           for p in r8["points"] if p["plan"].get("attention_tp", 1) == 1}
    for p in rep:
        twin = one[(p["schedule"], p["batch_per_device"], p["kv_bytes"], p["mode"])]
        assert p["tokens_per_gpu_s"] == twin["tokens_per_gpu_s"]
        assert p["tpot_ms"] == twin["tpot_ms"] and twin["replicas"] == 1


def test_a_chunked_prefill_is_its_chunks_one_after_another():
    """A 4,096-token prompt in chunks of 2,048: TTFT is the first chunk's prefill plus the
    second's, which attends to the first as a cached prefix; the decode step is the same."""
    from simulator.outputs.plan import chunk_sizes
    from simulator.schema import Workload
    q = Question(model="qwen3-30b-a3b", hardware=("h200-sxm",), gpus=(8,), isl=4096, osl=256,
                 ttft_ms=5000, tpot_ms=60)
    assert chunk_sizes(q) == [None, 2048]
    res = search(q, workers=1)
    chunked = [p for p in res["points"] if p["prefill_chunk"] == 2048]
    whole = {(p["config"].replace(", prefill chunk 2048", ""), p["mode"]): p
             for p in res["points"] if p["prefill_chunk"] is None}
    assert chunked and len(chunked) == len(whole)
    p = chunked[0]
    pre = {**p["workload"], "phase": "prefill", "batch_per_device": 1, "schedule": "sequential"}
    first = simulate(Workload.model_validate({**pre, "context_length": 2048}))
    second = simulate(Workload.model_validate({**pre, "context_length": 4096,
                                               "prefix_hit_rate": 0.5}))
    assert p["ttft_ms"] == pytest.approx(first.step_time_s * 1e3 + second.step_time_s * 1e3)
    twin = whole[(p["config"].replace(", prefill chunk 2048", ""), p["mode"])]
    assert p["decode_tpot_ms"] == twin["decode_tpot_ms"] and p["ttft_ms"] != twin["ttft_ms"]
