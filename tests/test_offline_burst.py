"""Offline serving: every request queued at t = 0 (`process: burst`, or a trace all at t = 0) and
run to completion: conservation, makespan and throughput by arithmetic, and the CLI's answer."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulator.serving.run import ServingSim
from tests.conftest import with_arrivals, workload

ROOT = Path(__file__).resolve().parent.parent


def _burst(requests: int, mode: str = "colocated", cap: int = 64):
    w = workload("workloads/serving/deepseek-v3-h800.yaml", serving={
        "mode": mode, "arrivals": {"process": "burst", "requests": requests},
        "input_tokens": {"mean": 500}, "output_tokens": {"mean": 40},
        "decode": {"max_batch_per_device": cap}})
    return ServingSim(w).run()


@pytest.mark.parametrize("mode", ["colocated", "disaggregated"])
def test_every_request_of_a_burst_finishes_once_and_throughput_is_tokens_over_makespan(mode):
    res = _burst(300, mode)
    m = res.metrics
    assert m["requests"] == {"arrived": 300, "finished": 300, "rejected": 0, "unfinished": 0,
                             "preempted": 0}
    th = m["throughput"]
    # every request arrived at 0, so the makespan is the latest end-to-end time
    assert th["makespan_s"] == pytest.approx(res.e2e_s.max(), rel=1e-9)
    assert th["output_tokens_per_s"] == pytest.approx(300 * 40 / th["makespan_s"], rel=1e-9)
    assert th["requests_per_s"] == pytest.approx(300 / th["makespan_s"], rel=1e-9)
    # nobody waits to arrive: Little's law over the run holds as for the closed loop
    assert m["little"]["lambda_times_w"] == pytest.approx(m["little"]["mean_in_system"],
                                                         rel=1e-6)


def test_a_burst_is_never_refused_as_unstable_and_queues_beyond_the_running_cap():
    w = workload("workloads/serving/deepseek-v3-h800.yaml", serving={"mode": "colocated"})
    slots = ServingSim(w).decode.dp                 # one running request per device
    small, big = _burst(slots, cap=1), _burst(10 * slots, cap=1)
    # ten rounds of requests through a pool that runs one per device: it takes longer, and
    # the later rounds wait for their first token behind the earlier ones
    assert big.metrics["throughput"]["makespan_s"] > 5 * small.metrics["throughput"]["makespan_s"]
    assert np.percentile(big.ttft_s, 90) > 5 * np.percentile(small.ttft_s, 90)


def test_a_trace_with_every_arrival_at_zero_runs_offline(tmp_path):
    rows = "".join("0.0,500,40\n" for _ in range(50))
    (tmp_path / "t.csv").write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    w = workload("workloads/serving/deepseek-v3-h800.yaml", serving={
        "mode": "colocated", "arrivals": {"process": "trace", "trace": str(tmp_path / "t.csv")},
        "decode": {"max_batch_per_device": 64}})
    res = ServingSim(w).run()                        # no "unstable" refusal
    assert res.metrics["requests"]["finished"] == 50


def test_a_burst_needs_its_request_count():
    with pytest.raises(ValueError, match="requests"):
        workload("workloads/serving/deepseek-v3-h800.yaml",
                 serving={"arrivals": {"process": "burst"}})


def test_serve_prints_the_makespan_and_output_tokens_per_second(tmp_path):
    (tmp_path / "b.yaml").write_text(with_arrivals(
        ROOT / "workloads" / "serving" / "deepseek-v3-h800.yaml", "process: burst, requests: 200"))
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", str(tmp_path / "b.yaml")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "makespan" in out.stdout and "tokens/s" in out.stdout
    js = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve",
                         str(tmp_path / "b.yaml"), "--json"], capture_output=True, text=True,
                        timeout=300)
    th = json.loads(js.stdout)["throughput"]
    assert th["output_tokens_per_s_per_gpu"] > 0 and th["makespan_s"] > 0


def test_the_shipped_kv_pressure_workload_preempts_and_still_serves_everyone_once():
    from simulator.loading import load_workload
    w = load_workload(str(ROOT / "workloads" / "serving" / "deepseek-v3-h200-kv-pressure.yaml"))
    res = ServingSim(w).run()
    m = res.metrics
    n = w.serving.arrivals.requests
    assert m["requests"]["finished"] == n and m["requests"]["unfinished"] == 0
    assert m["requests"]["preempted"] > 0                     # the KV cache really fills
    assert 0.99 < m["kv_utilisation"]["max"] <= 1 + 1e-9     # full, never over
    assert np.isfinite(res.ttft_s).all() and (res.ttft_s >= 0).all()
    th = m["throughput"]
    assert th["output_tokens_per_s"] == pytest.approx(n * 4000 / th["makespan_s"], rel=1e-9)
    assert m["little"]["lambda_times_w"] == pytest.approx(m["little"]["mean_in_system"],
                                                         rel=1e-6)
    # the same requests without memory pressure (a quarter of the output) never preempt
    light = ServingSim(w.variant(serving=w.serving.variant(
        output_tokens=w.serving.output_tokens.variant(mean=1000)))).run()
    assert light.metrics["requests"]["preempted"] == 0


def test_latency_grows_with_load_and_every_run_conserves_requests(tmp_path):
    w = ROOT / "workloads" / "serving" / "deepseek-v3-h200-offline.yaml"
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", str(w),
                          "--sweep-concurrency", "1,16,128", "--json", "--report",
                          str(tmp_path / "load.html")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    pts = json.loads(out.stdout)
    assert [p["concurrency"] for p in pts] == [1, 16, 128]
    for p in pts:                       # 4 requests per client, every one served once
        assert p["requests"]["finished"] == 4 * p["concurrency"]
        assert p["requests"]["unfinished"] == 0
    tpot = [p["tpot_ms"]["p50"] for p in pts]
    ttft = [p["ttft_ms"]["p50"] for p in pts]
    assert tpot[0] < tpot[1] < tpot[2] and ttft[0] < ttft[2]
    assert pts[2]["output_tokens_per_s_per_gpu"] > pts[0]["output_tokens_per_s_per_gpu"]
    assert "Latency against load" in (tmp_path / "load.html").read_text()
    rate = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", str(w),
                           "--sweep-rate", "0.5,2", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert rate.returncode == 0, rate.stderr
    assert [p["rate"] for p in json.loads(rate.stdout)] == [0.5, 2.0]
    bad = subprocess.run([sys.executable, str(ROOT / "cli.py"), "serve", str(w),
                          "--sweep-rate", "x"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
