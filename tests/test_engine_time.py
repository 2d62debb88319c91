"""Engine time arithmetic: relative tolerances, no lost transfer time, no spinning.

A collective alone on its links must take exactly latency + bytes / bandwidth, whatever compute
ops start and stop beside it, and at any simulated time (an absolute epsilon breaks once the float
spacing of `now` grows past it, ~8 s).
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.engine.core import MAX_STALLS, Engine, time_tol
from simulator.engine.streams import CommDemand, StreamPlan
from simulator.errors import MoesimError

BW = {"nic": 40e9, "nvlink": 160e9}


def collective_among_compute(offset_s, latency_s, nbytes, chops, sm=0.0):
    """op0 (compute, `offset_s`) then a collective on the comm stream, beside a chain of compute
    ops of durations `chops` that start with it and wake the rank at awkward instants."""
    names = ["lead", "a2a"] + [f"c{i}" for i in range(len(chops))]
    streams = ["compute", "comm"] + ["compute"] * len(chops)
    preds = [[], [0], [0]] + [[2 + i] for i in range(len(chops) - 1)]
    preds = preds[:len(names)]
    compute = [offset_s, 0.0] + list(chops)
    comm = [None, CommDemand(latency_s, {"nic": nbytes}), *([None] * len(chops))]
    plan = StreamPlan(names, streams, [float(i) for i in range(len(names))], preds, compute, comm)
    start, end = Engine(plan, BW, sm).run()
    return start[0], end[0]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(offset=st.sampled_from([0.0, 1e-3, 0.3, 7.9, 10.0, 3600.0, 86400.0]),
       latency=st.floats(1e-7, 1e-3), nbytes=st.floats(1e3, 1e8),
       chops=st.lists(st.floats(1e-7, 1e-3), min_size=1, max_size=12))
def test_lone_collective_takes_latency_plus_bytes_over_bandwidth(offset, latency, nbytes, chops):
    start, end = collective_among_compute(offset, latency, nbytes, chops)
    expected = latency + nbytes / BW["nic"]
    # float rounding of `now` (relative 1e-16 per event) is all the slack there is
    assert end[1] - start[1] == pytest.approx(expected, rel=1e-6, abs=64 * time_tol(offset))


def test_latency_residue_does_not_swallow_the_next_interval():
    # The regression of the old absolute-epsilon engine: after the latency timer fired, a float
    # residue of the latency was left, and the next whole interval (here a 50 us compute chop)
    # was spent counting it down instead of moving bytes. Worked by hand: 10 us latency, then
    # 4 MB at 40 GB/s = 100 us, so the collective ends at 110 us after it starts.
    offset = 0.1
    start, end = collective_among_compute(offset, 1e-5 + 1e-12 / 3, 4e6, [3e-6] * 3 + [5e-5] * 4)
    assert end[1] - start[1] == pytest.approx(1e-5 + 1e-4, rel=1e-9)


def test_compute_slows_during_the_latency_phase_too():
    # The collective occupies SMs from its start, latency phase included: 10 us of compute
    # beside a 4 us latency + 4 us transfer at 50% SM share runs 8 us at half speed (4 us of
    # work), then 6 us alone: ends at 14 us.
    names = ["gemm", "a2a"]
    plan = StreamPlan(names, ["compute", "comm"], [0.0, 1.0], [[], []], [1e-5, 0.0],
                      [None, CommDemand(4e-6, {"nic": 4e-6 * BW["nic"]})])
    _, end = Engine(plan, BW, 0.5).run()
    assert end[0][1] == pytest.approx(8e-6, rel=1e-9)
    assert end[0][0] == pytest.approx(14e-6, rel=1e-9)


def test_hours_of_simulated_time_do_not_spin():
    # one op per simulated second for two hours: every remainder is far below 1e-15 * now
    n = 7200
    plan = StreamPlan([f"op{i}" for i in range(n)], ["compute"] * n, [float(i) for i in range(n)],
                      [[]] + [[i] for i in range(n - 1)], [1.0 + 1e-13] * n, [None] * n)
    _, end = Engine(plan, BW, 0.0).run()
    assert end[0][-1] == pytest.approx(n * (1.0 + 1e-13), rel=1e-12)


def test_collective_late_in_a_long_run_still_moves_its_bytes():
    start, end = collective_among_compute(3 * 3600.0, 2e-6, 1e5, [1e-6] * 8)
    assert end[1] - start[1] == pytest.approx(2e-6 + 1e5 / BW["nic"], rel=1e-6)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_durations_are_refused(bad):
    plan = StreamPlan(["x"], ["compute"], [0.0], [[]], [bad], [None])
    with pytest.raises(MoesimError, match="op 'x'"):
        Engine(plan, BW, 0.0)


@pytest.mark.parametrize("bw", [float("nan"), 0.0, float("inf")])
def test_bad_bandwidth_is_refused_not_dropped(bw):
    plan = StreamPlan(["a2a"], ["comm"], [0.0], [[]], [0.0], [CommDemand(0.0, {"nic": 1e6})])
    with pytest.raises(MoesimError, match="nic"):
        Engine(plan, {"nic": bw}, 0.0)


def test_sm_fraction_of_one_is_refused():
    plan = StreamPlan(["x"], ["compute"], [0.0], [[]], [1.0], [None])
    with pytest.raises(MoesimError, match="comm_sm_fraction"):
        Engine(plan, BW, 1.0)


def test_a_dependency_cycle_is_a_clear_error():
    plan = StreamPlan(["a", "b"], ["compute"] * 2, [0.0, 1.0], [[1], [0]], [1.0, 1.0], [None] * 2)
    with pytest.raises(MoesimError, match="never ran"):
        Engine(plan, BW, 0.0).run()


def test_stall_guard_names_the_time():
    eng = Engine(StreamPlan(["x"], ["compute"], [0.0], [[]], [1.0], [None]), BW, 0.0)
    with pytest.raises(MoesimError, match="no progress"):
        for _ in range(MAX_STALLS + 2):
            eng._guard_progress(5.0, False)


def test_tiny_scmoe_with_a_4096_token_prompt_finishes(tmp_path):
    # hung forever on the absolute-epsilon engine (simulated time past ~8 s)
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    text = (root / "workloads" / "tiny-scmoe.yaml").read_text()
    assert "context_length: 128" in text
    w = tmp_path / "long.yaml"
    w.write_text(text.replace("context_length: 128", "context_length: 4096"))
    out = subprocess.run([sys.executable, str(root / "cli.py"), "simulate", str(w), "--json"],
                         capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stderr
    import json
    step = json.loads(out.stdout)["step_time_ms"]
    assert step > 1000          # a 4096-token prefill on 2 CPU cores is seconds, not ms


def test_an_op_of_centuries_is_refused_before_it_overflows():
    from simulator.engine.core import MAX_OP_S
    plan = StreamPlan(["x"], ["compute"], [0.0], [[]], [MAX_OP_S * 10], [None])
    with pytest.raises(MoesimError, match="would take"):
        Engine(plan, BW, 0.0)
    plan = StreamPlan(["a2a"], ["comm"], [0.0], [[]], [0.0], [CommDemand(0.0, {"nic": 1e300})])
    with pytest.raises(MoesimError, match="would take"):
        Engine(plan, BW, 0.0)
