"""The engine: streams, processor sharing of SMs and links, collapsed vs per-rank."""
import pytest

from simulator.engine.core import Engine
from simulator.engine.streams import StreamPlan
from simulator.engine.streams import CommDemand


def plan(streams, preds, compute, comm, prio=None):
    n = len(streams)
    return StreamPlan([f"op{i}" for i in range(n)], streams,
                      prio or [float(i) for i in range(n)], preds, compute, comm)


def test_serial_ops_on_one_stream():
    p = plan(["compute"] * 3, [[], [0], [1]], [1.0, 2.0, 3.0], [None] * 3)
    start, end = Engine(p, {"nic": 1.0}, 0.0).run()
    assert end[0] == [1.0, 3.0, 6.0]


def test_compute_slows_while_comm_runs_and_recovers():
    # 10 s of compute beside a 4 s transfer taking 25% of the SMs:
    # 4 s at 0.75 -> 3 s of work done, 7 s left at full rate -> ends at 11 s.
    p = plan(["compute", "comm"], [[], []], [10.0, 0.0],
             [None, CommDemand(0.0, {"nic": 4.0})])
    start, end = Engine(p, {"nic": 1.0}, 0.25).run()
    assert end[0][1] == pytest.approx(4.0)
    assert end[0][0] == pytest.approx(11.0)


def test_flows_share_a_link_and_rates_are_recomputed():
    # two transfers of 2 and 4 bytes on a 1 B/s link, on two streams:
    # both at 0.5 B/s until t=4 (first done), then the second alone: 2 bytes left -> t=6.
    p = plan(["comm", "comm2"], [[], []], [0.0, 0.0],
             [CommDemand(0.0, {"nic": 2.0}), CommDemand(0.0, {"nic": 4.0})])
    _, end = Engine(p, {"nic": 1.0}, 0.0).run()
    assert end[0] == pytest.approx([4.0, 6.0])


def test_latency_then_bytes_and_links_in_parallel():
    p = plan(["comm"], [[]], [0.0], [CommDemand(1.5, {"nic": 2.0, "nvlink": 6.0})])
    _, end = Engine(p, {"nic": 1.0, "nvlink": 2.0}, 0.0).run()
    assert end[0][0] == pytest.approx(1.5 + 3.0)


def test_priority_picks_lowest_ready_op():
    p = plan(["compute"] * 3, [[], [], []], [1.0, 1.0, 1.0], [None] * 3, prio=[2.0, 0.0, 1.0])
    start, _ = Engine(p, {}, 0.0).run()
    assert start[0] == [2.0, 0.0, 1.0]


def test_collective_ends_when_slowest_rank_is_done():
    # rank 1's compute before the collective is 3x slower: everyone's collective output waits.
    p = plan(["compute", "comm", "compute"], [[], [0], [1]], [1.0, 0.0, 1.0],
             [None, CommDemand(0.0, {"nic": 1.0}), None])
    p.rank_compute_s = {0: [1.0, 3.0]}
    start, end = Engine(p, {"nic": 1.0}, 0.0, n_ranks=2).run()
    assert end[0][1] == pytest.approx(4.0) and end[1][1] == pytest.approx(4.0)
    assert start[0][2] == pytest.approx(4.0)


def test_each_collective_takes_its_own_sm_share_and_the_largest_sets_the_pace():
    # 10 s of compute beside two 4 s transfers on separate links taking 25% and 50% of the SMs:
    # 4 s at 0.5 -> 2 s of work, then 8 s alone -> ends at 12 s. A hook-based kernel (share 0)
    # leaves compute at full rate: 10 s.
    p = plan(["compute", "comm", "comm2"], [[], [], []], [10.0, 0.0, 0.0],
             [None, CommDemand(0.0, {"nic": 4.0}, 0.25), CommDemand(0.0, {"nvlink": 4.0}, 0.5)])
    _, end = Engine(p, {"nic": 1.0, "nvlink": 1.0}, 0.18).run()
    assert end[0][0] == pytest.approx(12.0)
    p = plan(["compute", "comm"], [[], []], [10.0, 0.0],
             [None, CommDemand(0.0, {"nic": 4.0}, 0.0)])
    _, end = Engine(p, {"nic": 1.0}, 0.18).run()
    assert end[0][0] == pytest.approx(10.0)


def test_decode_low_latency_kernels_hold_no_sms_normal_ones_take_the_profile_share():
    from simulator.step.whatif import resolve
    from simulator.pricing.traffic import ep_traffic
    from tests.conftest import workload
    w = workload("workloads/longcat-flash-decode-h800.yaml")
    r = resolve(w)
    low = ep_traffic(r.model, w, r.profile, 64, 8.0, 0)
    assert low.kernel == "low_latency" and low.demands(False)[0].sm_fraction == 0.0
    wn = workload("workloads/longcat-flash-decode-h800.yaml", routing={"ep_kernel": "normal"})
    normal = ep_traffic(r.model, wn, r.profile, 64, 8.0, 0)
    assert normal.demands(True)[0].sm_fraction == pytest.approx(0.18)   # DeepEP: 24 of 132 SMs
