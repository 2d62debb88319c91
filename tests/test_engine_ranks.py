"""The array engine (engine/ranks.py) against the event engine (engine/core.py): the same rules,
so on every plan the same start and end of every op on every rank, to the bit.

Plans are drawn to hit what could go wrong in a rewrite over arrays: ranks with their own work
and traffic, several streams (one carrying compute and collectives alike), collectives sharing
links, latency-only and zero-work ops, SM shares, durations on a coarse grid so that events on
different ranks fall on the same instant, and priorities that tie.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.engine.core import Engine
from simulator.engine.ranks import MIN_RANKS, RankArrays, run_ranks
from simulator.engine.streams import CommDemand, StreamPlan
from simulator.errors import MoesimError

BW = {"nic": 2e9, "nvlink": 8e9}
GRID = [0.0, 1e-6, 2e-6, 3e-6, 5e-6]


def _demand(draw) -> CommDemand:
    links = {k: draw(st.sampled_from([0.0, 2e3, 4e3, 1e4])) for k in
             draw(st.lists(st.sampled_from(sorted(BW)), max_size=2, unique=True))}
    share = draw(st.sampled_from([None, 0.0, 0.25, 0.5]))
    return CommDemand(draw(st.sampled_from(GRID)), links, share)


@st.composite
def plans(draw):
    n_ranks = draw(st.integers(2, 6))
    n = draw(st.integers(1, 24))
    streams, prios, preds, compute, comm = [], [], [], [], []
    rank_compute, rank_comm = {}, {}
    for i in range(n):
        kind = draw(st.sampled_from(["compute", "compute", "comm"]))
        stream = draw(st.sampled_from(["compute", "comm", "both"] if kind == "comm"
                                      else ["compute", "both"]))
        streams.append(stream)
        prios.append(float(draw(st.integers(0, n))))     # ties: the op index decides
        preds.append(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [])
        if kind == "comm":
            compute.append(0.0)
            comm.append(_demand(draw))
            if draw(st.booleans()):
                rank_comm[i] = [_demand(draw) for _ in range(draw(st.integers(1, n_ranks)))]
        else:
            compute.append(draw(st.sampled_from(GRID + [7.3e-7])))
            comm.append(None)
            if draw(st.booleans()):
                rank_compute[i] = draw(st.lists(st.sampled_from(GRID), min_size=1,
                                                max_size=n_ranks))
    plan = StreamPlan([f"op{i}" for i in range(n)], streams, prios, preds, compute, comm,
                      rank_compute, rank_comm)
    return plan, n_ranks, draw(st.sampled_from([0.0, 0.1, 0.3]))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(plans())
def test_array_engine_matches_the_event_engine_exactly(case):
    plan, n_ranks, sm = case
    start, end = Engine(plan, BW, sm, n_ranks).run()
    a_start, a_end = RankArrays(plan, BW, sm, n_ranks).run()
    np.testing.assert_array_equal(a_start, np.array(start))
    np.testing.assert_array_equal(a_end, np.array(end))


def test_slowest_rank_closes_the_collective_worked_by_hand():
    # Two ranks; rank 1 computes 3 us before the all-to-all, rank 0 1 us. The all-to-all moves
    # 2 kB at 2 GB/s = 1 us after a 1 us latency, so rank 0's part ends at 3 us, rank 1's at
    # 5 us; the collective closes at 5 us on both, and the 1 us op after it ends at 6 us.
    plan = StreamPlan(["gemm", "a2a", "next"], ["compute", "comm", "compute"], [0.0, 1.0, 2.0],
                      [[], [0], [1]], [0.0, 0.0, 1e-6],
                      [None, CommDemand(1e-6, {"nic": 2e3}), None],
                      rank_compute_s={0: [1e-6, 3e-6]})
    start, end = RankArrays(plan, BW, 0.0, 2).run()
    assert start[:, 1] == pytest.approx([1e-6, 3e-6])
    assert end[:, 1] == pytest.approx([5e-6, 5e-6])
    assert end[:, 2] == pytest.approx([6e-6, 6e-6])


def test_run_ranks_picks_the_array_engine_from_min_ranks():
    plan = StreamPlan(["a"], ["compute"], [0.0], [[]], [1e-6], [None])
    for n in (1, MIN_RANKS - 1, MIN_RANKS):
        start, end = run_ranks(plan, BW, 0.0, n)
        assert start.shape == end.shape == (n, 1) and (end == 1e-6).all()


def test_a_cycle_is_named_not_run_forever():
    plan = StreamPlan(["a", "b"], ["compute", "compute"], [0.0, 1.0], [[1], [0]],
                      [1e-6, 1e-6], [None, None])
    with pytest.raises(MoesimError, match="ops never ran"):
        RankArrays(plan, BW, 0.0, 3).run()


def test_hours_of_simulated_time_do_not_spin_and_match():
    # one op per simulated second for an hour on 2 ranks: every remainder far below 1e-15 * now
    n = 3600
    plan = StreamPlan([f"op{i}" for i in range(n)], ["compute"] * n, [float(i) for i in range(n)],
                      [[]] + [[i] for i in range(n - 1)], [1.0 + 1e-13] * n, [None] * n)
    _, end = RankArrays(plan, BW, 0.0, 2).run()
    assert end[:, -1] == pytest.approx(n * (1.0 + 1e-13), rel=1e-12)
    np.testing.assert_array_equal(end, np.array(Engine(plan, BW, 0.0, 2).run()[1]))


def test_a_rank_that_cannot_finish_trips_the_stall_guard(monkeypatch):
    # with the tolerances at zero, 1e-30 s of work after 1 s never finishes (1.0 + 1e-30 is
    # 1.0): the engine must stop with the guard's error, not spin
    import simulator.engine.ranks as ranks
    monkeypatch.setattr(ranks, "TIME_RTOL", 0.0)
    monkeypatch.setattr(ranks, "TIME_ATOL", 0.0)
    plan = StreamPlan(["a", "b"], ["compute"] * 2, [0.0, 1.0], [[], [0]], [1.0, 1e-30],
                      [None, None])
    with pytest.raises(MoesimError, match="no progress"):
        ranks.RankArrays(plan, BW, 0.0, 2).run()


@pytest.mark.parametrize("engine", ["core", "ranks"])
def test_identical_ranks_run_identically_when_a_collective_closes_at_an_instant(engine):
    # Worked by hand, one stream: a zero-work collective (priority 1) runs first and ends at
    # t = 0 on both ranks, so it closes at 0; then "after" (priority 0, its input the
    # collective) comes before "late" (priority 2), on both ranks: after 0-1 us, late 1-2 us.
    # Picking before the close (the old rule for every rank SimPy woke before the closer)
    # started "late" first on rank 0 only.
    plan = StreamPlan(["a2a", "late", "after"], ["s"] * 3, [1.0, 2.0, 0.0], [[], [], [0]],
                      [0.0, 1e-6, 1e-6], [CommDemand(0.0, {}), None, None])
    if engine == "core":
        start, end = (np.array(x) for x in Engine(plan, BW, 0.0, 2).run())
    else:
        start, end = RankArrays(plan, BW, 0.0, 2).run()
    assert start.tolist() == [[0.0, 1e-6, 0.0]] * 2
    assert end.tolist() == [[0.0, 2e-6, 1e-6]] * 2


@pytest.mark.parametrize("field,bad,match", [
    ("work", float("nan"), "op 'b'.*not a finite"),
    ("work", -1e-6, "op 'b'.*not a finite"),
    ("work", 1e12, "op 'b'.*would take"),
    ("bytes", float("inf"), "op 'c'.*not a finite"),
    ("link", "pcie", "op 'c'.*no bandwidth"),
    ("share", 1.0, "op 'c'.*SM fraction"),
    ("latency", -1.0, "op 'c'.*not a finite")])
def test_bad_numbers_named_as_the_event_engine_names_them(field, bad, match):
    """The array engine checks its arrays at once and, on anything unsound (on one rank's
    work or bytes only), names the op and the fix exactly as core.Engine does."""
    good = CommDemand(1e-6, {"nic": 1e3}, None)
    per = [good] * 3
    work = [1e-6, 2e-6, 3e-6]
    if field == "work":
        work = [1e-6, bad, 3e-6]
    else:
        odd = {"bytes": CommDemand(1e-6, {"nic": bad}, None),
               "link": CommDemand(1e-6, {bad: 1e3}, None),
               "share": CommDemand(1e-6, {"nic": 1e3}, bad),
               "latency": CommDemand(bad, {"nic": 1e3}, None)}[field]
        per = [good, odd, good]
    plan = StreamPlan(["a", "b", "c"], ["compute", "compute", "comm"], [0.0, 1.0, 2.0],
                      [[], [0], [1]], [1e-6, 2e-6, 0.0], [None, None, good],
                      rank_compute_s={1: work}, rank_comm={2: per})
    for make in (lambda: Engine(plan, BW, 0.1, 3), lambda: RankArrays(plan, BW, 0.1, 3)):
        with pytest.raises(MoesimError, match=match):
            make()
