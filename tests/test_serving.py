"""Serving simulation: invariants, MTP, preemption, traces, bad input, CLI."""
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from simulator.schema import Workload
from simulator.errors import MoesimError
from simulator.serving.mtp import steps_needed as _steps_needed
from simulator.serving.run import ServingSim
from tests.conftest import profile, workload

SMALL = {
    "name": "mixtral-serving-test", "model": "mixtral-8x7b", "hardware": "h100-sxm",
    "plan": {"gpus": 8, "gpus_per_node": 8, "ep": 8}, "phase": "decode",
    "batch_per_device": 32, "context_length": 2048, "schedule": "sbo",
    "serving": {"mode": "disaggregated", "decode": {"max_batch_per_device": 32},
                "prefill": {"plan": {"gpus": 8, "gpus_per_node": 8, "ep": 8},
                            "max_tokens_per_device": 8192},
                "arrivals": {"process": "poisson", "rate_per_s": 4, "duration_s": 30},
                "input_tokens": {"mean": 1000, "dist": "lognormal", "sigma": 0.5},
                "output_tokens": {"mean": 200, "dist": "exponential"},
                "slo": {"ttft_ms": 2000, "tpot_ms": 50}},
    "seed": 3,
}


def small(**serving) -> Workload:
    data = json.loads(json.dumps(SMALL))
    for k, v in serving.items():
        if isinstance(v, dict) and isinstance(data["serving"].get(k), dict):
            data["serving"][k].update(v)
        else:
            data["serving"][k] = v
    return Workload.model_validate(data)


@pytest.fixture(scope="module")
def base_run():
    sim = ServingSim(small())
    return sim, sim.run()


def test_every_request_finishes_or_is_rejected(base_run):
    _, res = base_run
    r = res.metrics["requests"]
    assert r["arrived"] > 50
    assert r["finished"] + r["rejected"] == r["arrived"] and r["unfinished"] == 0


def test_kv_never_exceeds_budget_and_littles_law(base_run):
    _, res = base_run
    m = res.metrics
    assert 0 < m["kv_utilisation"]["max"] <= 1.0 + 1e-9
    lit = m["little"]
    assert abs(lit["mean_in_system"] - lit["lambda_times_w"]) <= 0.05 * lit["lambda_times_w"]


def test_metrics_are_consistent(base_run):
    _, res = base_run
    m = res.metrics
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert m[key]["p50"] <= m[key]["p90"] <= m[key]["p99"]
    assert m["e2e_ms"]["p50"] > m["ttft_ms"]["p50"]
    assert m["tokens_per_s_per_user"] > 0 and m["decode_tokens_per_gpu_s"] > 0
    assert m["cost_per_million_output_tokens"] > 0 and m["cost_per_million_input_tokens"] > 0
    assert 0 <= m["goodput_rps"] <= m["requests"]["finished"] / 30 + 1e-9


def test_same_seed_same_metrics():
    a = ServingSim(small()).run().metrics
    b = ServingSim(small()).run().metrics
    assert a == b


def test_progress_reports_simulated_time_and_changes_nothing(monkeypatch):
    """run(progress=...) is told the simulated time (rising, up to the run's end) and when
    arrivals end, every PROGRESS_STEPS decode steps; the result is the same as without."""
    from simulator.serving import loop
    monkeypatch.setattr(loop, "PROGRESS_STEPS", 64)
    seen = []
    res = ServingSim(small()).run(progress=lambda t, horizon: seen.append((t, horizon)))
    m = res.metrics
    assert len(seen) == m["decode_steps"] // 64
    times = [t for t, _ in seen]
    assert times == sorted(times) and 0 < times[0] and times[-1] <= m["simulated_s"]
    assert {h for _, h in seen} == {SMALL["serving"]["arrivals"]["duration_s"]}
    assert m == ServingSim(small()).run().metrics


def test_serve_shows_simulated_time_on_a_terminal(monkeypatch, tmp_path):
    import io

    from simulator.commands import common
    from rich.console import Console
    from simulator.serving import loop
    monkeypatch.setattr(loop, "PROGRESS_STEPS", 64)
    tty = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=tty, force_terminal=True))
    path = tmp_path / "w.yaml"
    path.write_text(json.dumps(SMALL))
    r = CliRunner().invoke(app, ["serve", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["requests"]["arrived"] > 0
    assert "s of arrivals" in tty.getvalue()


def test_mtp_steps_follow_acceptance():
    rng = np.random.default_rng(0)
    out = np.full(20000, 501)
    n0 = _steps_needed(out, 0, 0.0, rng)
    n1 = _steps_needed(out, 1, 0.8, rng)
    assert (n0 == 500).all()
    assert abs(n1.mean() - 500 / 1.8) < 3
    # each request's steps emit at least its tokens
    assert (n1 * 2 >= 500).all()


def test_kv_pressure_preempts_but_loses_nothing():
    tight = profile("h100-sxm", hbm_bytes={"value": 18e9})
    w = small(decode={"max_batch_per_device": 256},
              arrivals={"rate_per_s": 12, "duration_s": 20},
              output_tokens={"mean": 2000, "dist": "fixed"})
    sim = ServingSim(w, profile=tight)
    res = sim.run(check_stability=False)
    m = res.metrics
    assert m["requests"]["preempted"] > 0
    assert m["kv_utilisation"]["max"] <= 1.0 + 1e-9
    r = m["requests"]
    assert r["finished"] + r["rejected"] + r["unfinished"] == r["arrived"]
    assert r["unfinished"] == 0


def test_colocated_mode_runs():
    res = ServingSim(small(mode="colocated")).run().metrics
    assert res["requests"]["finished"] == res["requests"]["arrived"] - res["requests"]["rejected"]
    assert res["cost_per_million_input_tokens"] is None


def test_gamma_arrivals_are_burstier():
    from simulator.serving.arrivals import generate
    from simulator.schema import ArrivalSpec, LengthSpec
    rng = np.random.default_rng(0)
    L = LengthSpec(mean=10)
    p = generate(ArrivalSpec(process="poisson", rate_per_s=50, duration_s=200), L, L, rng)
    g = generate(ArrivalSpec(process="gamma", rate_per_s=50, gamma_cv=3, duration_s=200), L, L, rng)
    cv = lambda r: np.diff(r.arrival_s).std() / np.diff(r.arrival_s).mean()
    assert abs(cv(p) - 1) < 0.1 and cv(g) > 2


def test_trace_files(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("arrival_s,input_tokens,output_tokens\n0.5,800,100\n0.1,1200,50\n2.0,300,20\n")
    res = ServingSim(small(arrivals={"process": "trace", "trace": str(csv)})).run().metrics
    assert res["requests"]["arrived"] == 3 and res["requests"]["finished"] == 3
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"arrival_s": 0, "input_tokens": 10, "output_tokens": 5}\n'
                  '{"arrival_s": 1, "input_tokens": 10, "output_tokens": 5}\n')
    assert ServingSim(small(arrivals={"process": "trace", "trace": str(jl)})).run() \
        .metrics["requests"]["finished"] == 2


@pytest.mark.parametrize("body,where", [
    ("arrival_s,input_tokens,output_tokens\n0.5,800,100\n1.0,abc,10\n", "row 3"),
    ("arrival_s,input_tokens,output_tokens\n0.5,800,100\n1.0,-4,10\n", "row 3"),
    ("arrival_s,input_tokens\n0.5,800\n", "header"),
])
def test_malformed_trace_rows_are_named(tmp_path, body, where):
    p = tmp_path / "bad.csv"
    p.write_text(body)
    with pytest.raises(MoesimError) as e:
        ServingSim(small(arrivals={"process": "trace", "trace": str(p)})).run()
    assert where in e.value.render()


def test_unstable_rate_gives_highest_sustainable_rate():
    sim = ServingSim(small(arrivals={"rate_per_s": 5000}))
    with pytest.raises(MoesimError) as e:
        sim.run()
    text = e.value.render()
    assert "unstable" in text and "highest sustainable rate" in text
    cap = sim.capacity_rps()
    assert f"{cap:.2f}" in text


def test_weights_that_do_not_fit():
    w = small()
    data = w.model_dump()
    data["serving"]["decode"]["plan"] = {"gpus": 1, "gpus_per_node": 1, "ep": 1}
    data["model"] = "deepseek-v3"
    data["schedule"] = "sequential"
    with pytest.raises(MoesimError) as e:
        ServingSim(Workload.model_validate(data))
    assert "do not fit" in e.value.render()


def test_serve_cli_json_keys_and_sweep(tmp_path):
    path = tmp_path / "w.yaml"
    import yaml
    path.write_text(yaml.safe_dump(SMALL))
    r = CliRunner().invoke(app, ["serve", str(path), "--json", "--duration", "10"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert set(m[key]) == {"mean", "p50", "p90", "p99"}
    for key in ("tokens_per_s_per_user", "decode_tokens_per_gpu_s", "prefill_tokens_per_gpu_s",
                "cost_per_million_output_tokens", "cost_per_million_input_tokens"):
        assert key in m
    assert set(m["requests"]) >= {"arrived", "finished", "rejected"}
    r = CliRunner().invoke(app, ["serve", str(path), "--sweep-batch", "4,16,64", "--json"])
    assert r.exit_code == 0, r.output
    pts = json.loads(r.output)
    seq = {p["batch_per_device"]: p for p in pts if p["schedule"] == "sequential"}
    sbo = {p["batch_per_device"]: p for p in pts if p["schedule"] == "sbo"}
    assert seq[64]["tokens_per_gpu_s"] > seq[4]["tokens_per_gpu_s"]
    assert seq[64]["tokens_per_s_per_user"] < seq[4]["tokens_per_s_per_user"]
    assert sbo[16]["tokens_per_gpu_s"] >= seq[16]["tokens_per_gpu_s"]
    r = CliRunner().invoke(app, ["serve", str(path), "--sweep-batch", "4,x"])
    assert r.exit_code == 2 and "--sweep-batch" in r.output


def test_a_new_admission_policy_is_one_class(tmp_path):
    # Registered from the test alone: admit at most one request per decode step. Requests that
    # arrive together then wait for each other's admission, so under load (5 requests/s, ~90
    # requests) the slowest finish later; every request still finishes.
    from simulator.serving.pools import ADMISSION_POLICIES, FcfsAdmission

    class OnePerStep(FcfsAdmission):
        def admit(self, run):
            ids = run.ready.front(run.t, 1) if run.n_active < run.slots else []
            if ids and run.sum_ctx + run.input[ids[0]] + 1 + (run.n_active + 1) <= run.budget:
                run.ready.drop(1)
                run.admit(ids)

    ADMISSION_POLICIES["test-one-per-step"] = OnePerStep
    try:
        base = workload("workloads/tiny-scmoe.yaml",
                        serving={"mode": "colocated", "decode": {"max_batch_per_device": 16},
                                 "arrivals": {"process": "poisson", "rate_per_s": 5,
                                              "duration_s": 20},
                                 "input_tokens": {"mean": 64}, "output_tokens": {"mean": 32}})
        fcfs = ServingSim(base).run().metrics
        slow_w = base.variant(serving=base.serving.variant(admission="test-one-per-step"))
        slow = ServingSim(slow_w).run().metrics
    finally:
        ADMISSION_POLICIES.pop("test-one-per-step")
    for m in (fcfs, slow):
        assert m["requests"]["finished"] == m["requests"]["arrived"] > 10
    assert slow["e2e_ms"]["p99"] > fcfs["e2e_ms"]["p99"]
    assert slow["e2e_ms"]["mean"] > fcfs["e2e_ms"]["mean"]
    with pytest.raises(MoesimError, match="serving.admission"):
        ServingSim(slow_w)


def test_ready_queue_yields_what_a_heap_of_time_and_id_yields():
    # The oracle is a heap of (ready time, id): the order FCFS admission has always used.
    import heapq
    from simulator.serving.ready import ReadyQueue
    rng = np.random.default_rng(7)
    for trial in range(40):
        q, heap, next_id, now = ReadyQueue(), [], 0, 0.0
        for _ in range(60):
            if rng.random() < 0.5:           # a batch ready at one time (ties and the past too)
                t = float(rng.choice([now, now + 1.0, now - 0.5, float(rng.integers(0, 9))]))
                ids = [int(i) for i in rng.permutation(np.arange(next_id, next_id + rng.integers(0, 6)))]
                next_id += len(ids)
                q.push(t, ids)
                for i in ids:
                    heapq.heappush(heap, (t, i))
            else:                            # admit up to `limit` of the front group
                now += float(rng.integers(0, 3))
                limit = int(rng.integers(1, 5))
                got = q.front(now, limit)
                want = []
                if heap and heap[0][0] <= now:
                    t0 = heap[0][0]
                    want = [i for t, i in sorted(heap)[:limit] if t == t0]
                assert got == want, trial
                k = int(rng.integers(0, len(got) + 1))
                q.drop(k)
                for _ in range(k):
                    heapq.heappop(heap)
            assert len(q) == len(heap) and bool(q) == bool(heap)
            if heap:
                assert q.first_time() == heap[0][0]


def test_a_step_between_grid_shapes_is_priced_bilinearly_between_its_corners():
    # the engine runs grid shapes only; between them a step is bilinear in (sequences,
    # context), so a time linear in each (b x 1e7 + c, or b x c: the tokens of a prefill) is
    # reproduced exactly off the grid, and a prompt of 1.04 sequences x 8,000 tokens costs its
    # 8,320 tokens, not the 2 x 8,192 of the grid point above it
    import math
    from simulator.serving.step_model import BATCH_GRID, DecodeSteps, StepModel
    w = small()
    sm = StepModel(w, w.plan, "sbo", "decode", 96, None, profile("h100-sxm"))
    sm._simulate = lambda b, c: b * c
    assert sm.step_s(1.04, 8000) == pytest.approx(1.04 * 8000, rel=1e-12)
    assert sm.step_s(2, 8192) == 2 * 8192                     # a grid shape: its own run
    sm = StepModel(w, w.plan, "sbo", "decode", 96, None, profile("h100-sxm"))
    sm._simulate = lambda b, c: b * 1e7 + c
    rng = np.random.default_rng(0)
    edges = [g for g in BATCH_GRID] + [96, 95.5, 97]
    cedges = [256 * 2 ** (k / 2) for k in range(-8, 30)]
    seqs = list(rng.uniform(0.1, 200, 300)) + edges + [math.nextafter(e, 0) for e in edges] + \
        [math.nextafter(e, math.inf) for e in edges]
    ctxs = list(np.exp(rng.uniform(0, 14, 300))) + cedges + \
        [math.nextafter(c, 0) for c in cedges] + [math.nextafter(c, math.inf) for c in cedges]
    for b, c in zip(rng.permutation(seqs * 2)[:600], rng.permutation(ctxs * 2)[:600]):
        want = min(max(b, 1), 96) * 1e7 + max(c, 16)           # flat beyond the cap and floor
        assert sm.step_s(b, c) == pytest.approx(want, rel=1e-6, abs=1.0), (b, c)
        cell = sm.cell(b, c)
        assert cell.holds(b, c) or min(abs(c / e - 1) for e in cedges) < 1e-11
    # between batch points the time is linear, not the point above: b^2 at 1.5 is (1 + 4) / 2
    sm = StepModel(w, w.plan, "sbo", "decode", 96, None, profile("h100-sxm"))
    sm._simulate = lambda b, c: float(b * b)
    assert sm.step_s(1.5, 256) == pytest.approx(2.5)
    assert sm.step_s(6, 256) == pytest.approx((16 + 64) / 2)
    # the decode loop's cached cell holds no shape of another cell: after the pool's cap (96 a
    # group) a smaller batch, after 8 (cell 4..8) a batch of 3.5 (cell 2..4), at one context
    lin = StepModel(w, w.plan, "sbo", "decode", 96, None, profile("h100-sxm"))
    lin._simulate = lambda b, c: b * 1e7 + c
    steps = DecodeSteps(lin, 8)
    for groups in (200, 50, 96, 95, 8, 3.5, 4):
        n = round(8 * groups)
        assert steps(n, n * 900.0) == pytest.approx(1e7 * min(groups, 96) + 900.0, rel=1e-12)
    # a random walk of the decode pool: the cached cell prices every step as asking afresh
    sm._simulate = lambda b, c: b * 1e7 + c * c
    steps, n, ctx = DecodeSteps(sm, 8), 0, 0.0
    for _ in range(3000):
        n = max(0, n + int(rng.integers(-3, 4)))
        ctx = max(0.0, ctx + float(rng.normal(n * 5, 3000)))
        want = sm.step_s(n / 8, ctx / n) if n else 0.0
        assert steps(n, ctx) == pytest.approx(want, rel=1e-12)


def test_uniform_lengths_are_drawn_between_min_and_max_as_benchmark_clients_draw_them():
    # bench_serving --random-range-ratio 0.8 of 1,000 tokens: every length in 800..1000, both
    # ends reached, the mean (800 + 1000) / 2 = 900 within 3 standard errors
    # (sd of a discrete uniform over 201 values: sqrt((201^2 - 1) / 12) = 58.0)
    from simulator.schema.serving import LengthSpec
    from simulator.serving.arrivals import lengths
    spec = LengthSpec(dist="uniform", min=800, max=1000)
    assert spec.mean == 900
    x = lengths(spec, 20000, np.random.default_rng(1))
    assert x.min() == 800 and x.max() == 1000 and x.dtype == np.int64
    assert abs(x.mean() - 900) < 3 * 58.0 / math.sqrt(20000)
    assert set(lengths(LengthSpec(dist="uniform", min=7, max=7), 50, np.random.default_rng(2))) \
        == {7}


class _PerRequestLoop:
    """The decode pool's bookkeeping done request by request (every request's context and
    growth added at admission and taken off when it finishes or is evicted): an oracle for the
    loop's calendar of per-step sums."""

    @staticmethod
    def make(sim, reqs):
        from simulator.serving.loop import Loop

        class Oracle(Loop):
            def __init__(self, sim, reqs):
                super().__init__(sim, reqs)
                self.due: dict[int, list[int]] = {}         # step -> requests booked then
                self.held: dict[int, tuple[float, float, int]] = {}   # ctx, rate, admit step

            def admit(self, rids):
                for rid in rids:
                    steps = self.steps_left[rid]
                    ctx = self.input[rid] + 1
                    rate = max(self.output[rid] - 1, 0) / steps
                    self.held[rid] = (ctx, rate, self.step)
                    self.book[rid] = self.step + steps
                    self.due.setdefault(self.step + steps, []).append(rid)
                    self.sum_ctx += ctx
                    self.sum_rate += rate
                    self.sum_fin += ctx + steps * rate
                self.active.extend(rids)
                self.n_active += len(rids)

            def preempt(self, rid):
                ctx, rate, at = self.held.pop(rid)
                done = self.step - at
                held = ctx + done * rate
                self.sum_fin -= ctx + self.steps_left[rid] * rate
                self.book[rid] = -1
                self.n_active -= 1
                self.sum_ctx -= held
                self.sum_rate -= rate
                self.input[rid] = int(held)
                self.output[rid] = max(2, self.output[rid] - int(done * rate))
                self.steps_left[rid] = max(1, self.steps_left[rid] - done)
                self.ctx0[rid] = self.input[rid] + 1        # what admission reads next time
                self.fin0[rid] = self.ctx0[rid] + self.output[rid] - 1
                self.prefill_q.appendleft(rid)
                self.preemptions += 1

            def _finish_step(self):
                self.sum_ctx += self.sum_rate
                for rid in self.due.pop(self.step, []):
                    if self.book[rid] != self.step or rid not in self.held:
                        continue                            # evicted since it was booked
                    ctx, rate, at = self.held.pop(rid)
                    self.sum_ctx -= ctx + self.steps_left[rid] * rate
                    self.sum_fin -= ctx + self.steps_left[rid] * rate
                    self.sum_rate -= rate
                    self.n_active -= 1
                    self.in_system -= 1
                if not self.n_active:
                    self.sum_ctx = self.sum_rate = self.sum_fin = 0.0
        return Oracle(sim, reqs)


@pytest.mark.parametrize("mode", ["disaggregated", "colocated"])
def test_the_calendar_of_sums_matches_request_by_request_bookkeeping(tmp_path, mode):
    # random traces under a KV budget tight enough to evict; decode steps priced by their exact
    # (sequences, context), so any difference in what the pool holds changes the timings
    from simulator.serving.loop import Loop
    from tests.test_physics import stubbed_sim
    rng = np.random.default_rng(7)
    evicted = 0
    for trial in range(6):
        n = int(rng.integers(20, 120))
        rows = sorted(zip(np.round(rng.uniform(0, 3, n), 4), rng.integers(50, 3000, n),
                          rng.integers(1, 400, n)))
        budget = float(rng.integers(6000, 30000))
        outcomes = []
        for make in (Loop, _PerRequestLoop.make):
            sim = stubbed_sim(tmp_path, rows, budget=budget, mode=mode)
            sim.decode.step_s = lambda b, c: 0.004 + 1e-3 * b + 2e-6 * c
            if trial % 2:
                sim.mtp_draft, sim.acc = 1, 0.6
            sim.rng = np.random.default_rng(trial)
            res = make(sim, sim.requests()).go()
            outcomes.append(res)
        new, ref = outcomes
        evicted += ref.metrics["requests"]["preempted"]
        assert new.metrics["requests"] == ref.metrics["requests"]
        assert new.metrics["decode_steps"] == ref.metrics["decode_steps"]
        for a, b in ((new.ttft_s, ref.ttft_s), (new.e2e_s, ref.e2e_s), (new.tpot_s, ref.tpot_s),
                     (new.kv_util, ref.kv_util)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert evicted > 0                  # the budget did evict


@pytest.mark.parametrize("sigmas", [4, 0, -3])
def test_mtp_steps_follow_the_exact_first_passage_law(monkeypatch, sigmas):
    # a step emits 1 + Bernoulli(a) tokens, so a request needing `need` tokens is done by step m
    # exactly when m + Binomial(m, a) >= need: P(T <= m) = P(Binomial(m, a) >= need - m).
    # sigmas 0 and -3 make the binomial jump overshoot often and almost always, exercising the
    # exact repair of a jump that reached the need
    import math
    import simulator.serving.mtp as mtp
    monkeypatch.setattr(mtp, "PASSAGE_SIGMAS", sigmas)
    a, need, n = 0.8, 60, 50_000
    t = mtp.steps_needed(np.full(n, need + 1), 1, a, np.random.default_rng(11))

    def cdf(m: int) -> float:
        k0 = max(need - m, 0)
        return sum(math.comb(m, k) * a ** k * (1 - a) ** (m - k) for k in range(k0, m + 1))
    ms = np.arange(math.ceil(need / 2), need + 1)           # the whole support
    empirical = np.array([(t <= m).mean() for m in ms])
    exact = np.array([cdf(int(m)) for m in ms])
    assert np.abs(empirical - exact).max() < 0.009        # KS bound at 99.9% is 0.0087
    assert t.min() >= math.ceil(need / 2) and t.max() <= need
