"""Behaviours that set headline numbers, each pinned by arithmetic worked out here by hand (the
plausible bugs of benchmarks/mutants.py that no other test caught). docs/testing.md lists which
test catches which bug."""
import networkx as nx
import pytest

from simulator.engine.core import Engine
from simulator.engine.schedule import SCHEDULES
from simulator.engine.streams import CommDemand, StreamPlan
from simulator.graph.ops import Op
from simulator.serving.step_model import Cell

# -- the engine -----------------------------------------------------------------------------


def _plan(streams, preds, compute, comm):
    n = len(streams)
    return StreamPlan([f"op{i}" for i in range(n)], streams, [float(i) for i in range(n)], preds,
                      compute, comm)


def test_each_rank_moves_its_own_bytes_and_the_largest_closes_the_collective():
    # rank 0 sends 1 byte, rank 1 sends 3 bytes at 1 B/s: the collective ends at 3 s on both,
    # and the compute after it starts at 3 s (with rank 0's bytes for everyone it would be 1 s).
    p = _plan(["comm", "compute"], [[], [0]], [0.0, 1.0],
              [CommDemand(0.0, {"nic": 1.0}), None])
    p.rank_comm = {0: [CommDemand(0.0, {"nic": 1.0}), CommDemand(0.0, {"nic": 3.0})]}
    _, end = Engine(p, {"nic": 1.0}, 0.0, n_ranks=2).run()
    assert end[0] == pytest.approx([3.0, 4.0]) and end[1] == pytest.approx([3.0, 4.0])


def test_sub_microsecond_ops_keep_their_durations():
    # three 100 ns ops in series end at 100, 200 and 300 ns: tolerances are relative, so a
    # short op is never taken as already finished
    p = _plan(["compute"] * 3, [[], [0], [1]], [1e-7] * 3, [None] * 3)
    _, end = Engine(p, {}, 0.0).run()
    assert end[0] == pytest.approx([1e-7, 2e-7, 3e-7], rel=1e-9)
    # a transfer ending 0.5 us before a 1 s compute op wakes the rank: the compute op still has
    # 0.5 us of work and ends at 1 s, not at the transfer's end
    p = _plan(["compute", "comm"], [[], []], [1.0, 0.0], [None, CommDemand(0.0, {"nic": 1 - 5e-7})])
    _, end = Engine(p, {"nic": 1.0}, 0.0).run()
    assert end[0][0] == pytest.approx(1.0, rel=1e-12, abs=0)


# -- ScMoE / SBO slots on a hand-built shortcut layer ----------------------------------------
WINDOW = [("ffn0.ffn", "ffn0"), ("attn1.qkv_proj", "attn1"), ("attn1.core", "attn1"),
          ("attn1.o_proj", "attn1"), ("ffn1.ffn", "ffn1")]


class HandLayer:
    """A hand-built layer-0 op graph, each op's standalone seconds, and the collectives' demands
    (t seconds of bytes at 1 B/s on one link, no latency, no SMs)."""

    def __init__(self) -> None:
        self.g, self.dur, self.dem = nx.DiGraph(), {}, {}

    def add(self, name, kind, block, after, t, link=None, **kw):
        self.g.add_node(f"L0.{name}", op=Op(f"L0.{name}", kind, layer=0, block=block, **kw))
        for a in after:
            self.g.add_edge(f"L0.{a}", f"L0.{name}")
        self.dur[f"L0.{name}"] = t
        if link:
            self.dem[f"L0.{name}"] = CommDemand(0.0, {link: t})

    def window(self, after):
        """The dense window: five 1 s ops in a chain after `after`, the last closing the layer."""
        for k, (name, block) in enumerate(WINDOW):
            self.add(name, "gemm", block, [after if k == 0 else WINDOW[k - 1][0]], 1.0)

    def parts(self):
        return self.g, self.dur, self.dem


def shortcut_layer(t_dispatch: float, t_combine: float, tp_collective: bool = False):
    """attn0 (1 s) -> dispatch -> experts (1 s) -> combine -> residual, beside the dense window of
    five 1 s ops after attn0."""
    h = HandLayer()
    h.add("attn0.core", "attention", "attn0", [], 1.0)
    prev = "attn0.core"
    if tp_collective:
        h.add("attn0.all_reduce", "collective", "attn0", [prev], 1.0, link="nvlink",
              collective="all_reduce", group="tp")
        prev = "attn0.all_reduce"
    h.add("moe.dispatch", "collective", "moe", [prev], t_dispatch, link="nic",
          collective="all_to_all", group="ep")
    h.add("moe.experts", "grouped_gemm", "moe", ["moe.dispatch"], 1.0)
    h.add("moe.combine", "collective", "moe", ["moe.experts"], t_combine, link="nic",
          collective="all_to_all", group="ep")
    h.window(prev)
    h.add("residual", "elementwise", "ffn1", ["moe.combine", "ffn1.ffn"], 0.0)
    return h.parts()


def run_schedule(name, g, dur, dem):
    plan = SCHEDULES[name].policy(g, dur, dem)
    start, end = Engine(plan, {"nic": 1.0, "nvlink": 1.0}, 0.0).run()
    at = {n: (start[0][i], end[0][i]) for i, n in enumerate(plan.names)}
    return plan, at


def window_ops_before_experts(at):
    t = at["L0.moe.experts"][0]
    return [n for n, _ in WINDOW if at[f"L0.{n}"][1] <= t + 1e-12]


def test_scmoe_slot_balances_dispatch_and_combine_hand_worked():
    # window of five 1 s ops, dispatch 2 s, combine 3 s: K minimising |K - 2| + |5 - K - 3| is 2
    # (cost 0). attn0 0-1; dispatch 1-3 under ffn0 1-2 and qkv 2-3; experts 3-4; combine 4-7
    # under core 4-5, o 5-6, ffn1 6-7: the layer ends at 7 s (sequential: 1 + 2 + 1 + 3 + 5 = 12).
    g, dur, dem = shortcut_layer(2.0, 3.0)
    _, at = run_schedule("scmoe", g, dur, dem)
    assert window_ops_before_experts(at) == ["ffn0.ffn", "attn1.qkv_proj"]
    assert at["L0.moe.experts"] == pytest.approx((3.0, 4.0))
    assert at["L0.residual"][1] == pytest.approx(7.0)
    _, seq = run_schedule("sequential", g, dur, dem)
    assert seq["L0.residual"][1] == pytest.approx(12.0)


def test_scmoe_slot_weighs_the_combine_side_too():
    # dispatch 3 s, combine 4 s: |K - 3| + |1 - K| is 2 for K in 1..3, the earliest is K = 1
    # (the dispatch side alone would pick K = 3).
    g, dur, dem = shortcut_layer(3.0, 4.0)
    _, at = run_schedule("scmoe", g, dur, dem)
    assert window_ops_before_experts(at) == ["ffn0.ffn"]
    # dispatch 1-4, ffn0 1-2, experts 4-5, combine 5-9 under the four other window ops 5-9
    assert at["L0.moe.experts"] == pytest.approx((4.0, 5.0))
    assert at["L0.residual"][1] == pytest.approx(9.0)


def test_scmoe_slot_ties_go_to_the_earliest_slot():
    # dispatch = combine = 2.5 s: K = 2 and K = 3 both cost 1; the earliest (2) is taken, so the
    # experts start when the dispatch ends at 3.5 s (after K = 3 they would start at 4 s).
    g, dur, dem = shortcut_layer(2.5, 2.5)
    _, at = run_schedule("scmoe", g, dur, dem)
    assert window_ops_before_experts(at) == ["ffn0.ffn", "attn1.qkv_proj"]
    assert at["L0.moe.experts"][0] == pytest.approx(3.5)


def test_sbo_puts_the_experts_right_after_the_second_qkv_projection():
    # dispatch 4 s, combine 1 s: the slot rule would take K = 4; SBO takes K = 2 (after
    # attn1.qkv_proj). dispatch 1-5; ffn0 1-2, qkv 2-3; experts 5-6; combine 6-7; core 6-7,
    # o 7-8, ffn1 8-9: the layer ends at 9 s.
    g, dur, dem = shortcut_layer(4.0, 1.0)
    _, sc = run_schedule("scmoe", g, dur, dem)
    assert len(window_ops_before_experts(sc)) == 4
    _, at = run_schedule("sbo", g, dur, dem)
    assert window_ops_before_experts(at) == ["ffn0.ffn", "attn1.qkv_proj"]
    assert at["L0.moe.experts"] == pytest.approx((5.0, 6.0))
    assert at["L0.residual"][1] == pytest.approx(9.0)


def test_only_ep_collectives_leave_the_compute_stream():
    # a TP all-reduce stays on the compute stream (it needs the GPU's SMs in the same order as
    # the compute): it runs 1-2 s between attn0 and the window, which then starts at 2 s.
    g, dur, dem = shortcut_layer(2.0, 3.0, tp_collective=True)
    plan, at = run_schedule("scmoe", g, dur, dem)
    stream = dict(zip(plan.names, plan.streams))
    assert stream["L0.attn0.all_reduce"] == "compute"
    assert stream["L0.moe.dispatch"] == stream["L0.moe.combine"] == "comm"
    assert at["L0.attn0.all_reduce"] == pytest.approx((1.0, 2.0))
    assert at["L0.ffn0.ffn"][0] == pytest.approx(2.0)


# -- TBO: two micro-batches, interleaved, the lower first -----------------------------------
def tbo_graph():
    """Micro-batch 0: X0 then (independently) Y0; micro-batch 1: X1. All 1 s of compute."""
    g = nx.DiGraph()
    for name, mb in (("X0", 0), ("Y0", 0), ("X1", 1)):
        g.add_node(name, op=Op(name, "gemm", layer=0, micro_batch=mb))
    return g, {"X0": 1.0, "Y0": 1.0, "X1": 1.0}


def test_tbo_alternates_micro_batches_lower_first():
    # all three ready at 0 on one compute stream: the k-th op of micro-batch 0 goes before the
    # k-th of micro-batch 1, which goes before the (k+1)-th of micro-batch 0: X0, X1, Y0.
    g, dur = tbo_graph()
    plan = SCHEDULES["tbo"].policy(g, dur, {})
    start, _ = Engine(plan, {}, 0.0).run()
    at = dict(zip(plan.names, start[0]))
    assert (at["X0"], at["X1"], at["Y0"]) == pytest.approx((0.0, 1.0, 2.0))


# -- exposure measures ----------------------------------------------------------------------
def test_nested_collectives_count_once_and_compute_hides_its_overlap():
    # collectives over 0-4 s and 1-2 s (nested), compute over 3-5 s: communication is busy 4 s,
    # of which 3-4 has compute beside it: exposed 3 s, hidden 1 s.
    import numpy as np
    from simulator.engine.timeline import Timeline
    ops = [Op("a", "collective"), Op("b", "collective"), Op("c", "gemm")]
    tl = Timeline(ops, ["comm", "comm2", "compute"], np.array([[0.0, 1.0, 3.0]]),
                  np.array([[4.0, 2.0, 5.0]]), [4.0, 1.0, 2.0])
    assert tl.comm_exposure_s(0) == pytest.approx((3.0, 1.0))


# -- routing, placement and EP traffic ------------------------------------------------------
def test_popularity_is_a_distribution():
    import numpy as np
    from simulator.pricing.routing import popularity
    from simulator.schema import RoutingSpec
    for pop in ("uniform", "zipf", "lognormal"):
        p = popularity(RoutingSpec(popularity=pop), 64, np.random.default_rng(0))
        assert p.sum() == pytest.approx(1.0) and (p > 0).all()


def test_zipf_hot_experts_land_on_many_ranks():
    # 64 experts in contiguous blocks of 8 on 8 ranks: unshuffled, the 8 hottest zipf experts
    # would all sit on rank 0; shuffled, all 8 on one rank has probability 8 / C(64, 8) ~ 1e-9.
    import numpy as np
    from simulator.pricing.routing import popularity
    from simulator.schema import RoutingSpec
    p = popularity(RoutingSpec(popularity="zipf", zipf_s=1.2), 64, np.random.default_rng(3))
    hot = np.argsort(-p)[:8]
    assert len(set(hot // 8)) >= 3


def _traffic(ep, gpus_per_node, dispatch_bytes=1.0, combine_bytes=2.0, redundant=0):
    from simulator.pricing.traffic import ep_traffic
    from tests.conftest import profile, workload
    w = workload("workloads/longcat-flash-decode-h800.yaml",
                 plan={"gpus": ep, "ep": ep, "gpus_per_node": gpus_per_node},
                 precision={"dispatch_bytes": dispatch_bytes, "combine_bytes": combine_bytes},
                 routing={"redundant_experts": redundant})
    from simulator.loading import load_model
    prof = profile("h800")
    model = load_model(w.model)
    return ep_traffic(model, w, prof, 4, model.moe.mean_real_experts, 0), prof, model, w


def test_ep_latency_is_the_kernel_plus_the_slowest_link_class():
    t, prof, _, _ = _traffic(16, 8)                     # two nodes: the NIC's latency
    assert t.latency_s == pytest.approx(prof.ep_kernel_latency_s.value + prof.nic.latency_s.value)
    t, prof, _, _ = _traffic(8, 8)                      # one node: NVLink's
    assert t.latency_s == pytest.approx(prof.ep_kernel_latency_s.value +
                                        prof.nvlink.latency_s.value)


def test_combine_carries_its_own_bytes_per_element():
    # fp8 dispatch (1 byte) and bf16 combine (2 bytes): the combine moves twice the bytes
    t, *_ = _traffic(16, 8, dispatch_bytes=1.0, combine_bytes=2.0)
    for r in (0, 5):
        d, c = t.demands(combine=False)[r], t.demands(combine=True)[r]
        assert set(d.link_bytes) == set(c.link_bytes)
        for k in d.link_bytes:
            assert c.link_bytes[k] == pytest.approx(2.0 * d.link_bytes[k])


def test_each_ranks_all_to_all_time_is_its_latency_plus_its_slower_link():
    from simulator.graph.ops import Op
    from simulator.pricing.hardware import launch_latency_s, link_bandwidths
    from tests.conftest import profile
    t, prof, _, _ = _traffic(16, 8)                     # two nodes: NVLink and NIC bytes
    bw = link_bandwidths(prof)
    for combine in (False, True):
        times = t.times_s(combine, 0.5, 7e-6, bw)
        demands = t.demands(combine, 0.5, 7e-6)
        assert len(times) == len(demands) == 16
        for r, d in enumerate(demands):
            assert d.latency_s == 7e-6 and set(d.link_bytes) == {"nvlink", "nic"}
            assert d.link_bytes["nic"] == pytest.approx(
                float(t.nic_bytes[r]) * 0.5 * (2.0 if combine else 1.0))
            slower = max(d.link_bytes["nvlink"] / bw["nvlink"], d.link_bytes["nic"] / bw["nic"])
            assert times[r] == pytest.approx(7e-6 + slower, rel=1e-12)
        assert len(set(times.tolist())) > 1               # unequal ranks
    # an eager runtime pays the start-up latency once per launch of the op; a fused one once
    op = Op("L0.moe.dispatch", "collective", kernels=3)
    assert launch_latency_s(1e-5, op, profile("cpu-2core-example")) == pytest.approx(3e-5)
    assert launch_latency_s(1e-5, op, prof) == 1e-5


def test_the_collapsed_step_runs_the_slowest_ranks_all_to_all():
    # collapsed, the step's representative rank takes every rank's slowest part: its dispatch
    # and combine last as long as the slowest rank's (not rank 0's, not the mean)
    from simulator.pricing.hardware import link_bandwidths
    from simulator.step.whatif import _traffic, resolve, simulate
    from tests.conftest import workload
    w = workload("workloads/longcat-flash-decode-h800.yaml", batch_per_device=8,
                 plan={"gpus": 16, "ep": 16, "gpus_per_node": 8})
    r = resolve(w)
    t = _traffic(r, "sequential")[0]
    res = simulate(w, "sequential", resolved=r)
    tl = res.timeline
    for combine, suffix in ((False, "moe.dispatch"), (True, "moe.combine")):
        times = t.times_s(combine, 1.0, t.latency_s, link_bandwidths(r.profile))
        assert times.max() > times[0] and times.max() > times.mean()
        got = [tl.standalone_s[i] for i, op in enumerate(tl.ops) if op.name.endswith(suffix)]
        assert got and all(x == pytest.approx(times.max(), rel=1e-12) for x in got)


def test_a_rank_reads_the_weights_of_every_expert_copy_that_gets_a_row():
    import numpy as np
    from simulator.graph.params import expert_params
    from simulator.pricing.traffic import expert_op_for_rank
    t, _, model, w = _traffic(16, 8, redundant=16)
    assert t.routing.placement.slots_per_rank.sum() == model.moe.num_experts + 16
    # 4 tokens a rank x 16 ranks, ~8 real experts each: at most 512 rows over 528 copies, so
    # some copies get none and their weights are not read; count them from the rows themselves
    op = Op("L0.moe.experts", "grouped_gemm")
    active = t.routing.active_slots
    assert 0 < active.sum() < t.routing.placement.slots_per_rank.sum()
    assert active.sum() <= int(np.count_nonzero(t.routing.expert_load)) + 16
    assert np.all(active <= t.routing.placement.slots_per_rank)
    for r in range(16):
        got = expert_op_for_rank(op, t, r, model, w)
        assert got.weight_bytes == pytest.approx(active[r] * expert_params(model) *
                                                 w.precision.weight_bytes)
    # the step prices every rank at once (ranks of equal load share one pricing): the same
    from simulator.pricing.hardware import compute_time_s
    from simulator.pricing.traffic import per_rank_times
    prof = _traffic(16, 8, redundant=16)[1]
    assert per_rank_times(op, t, model, w, prof) == \
        [compute_time_s(expert_op_for_rank(op, t, r, model, w), prof) for r in range(16)]


def test_ranks_priced_together_match_each_rank_priced_alone_with_its_notes():
    # per_rank_times prices the distinct loads as arrays through the shape table (M x N*K);
    # each rank must get exactly what its own op priced alone gets, and the same notes: 4
    # tokens a rank put M (rows per active expert copy, ~1-2) below the table's 16
    from simulator.notes import collecting
    from simulator.pricing.hardware import compute_time_s
    from simulator.pricing.traffic import expert_op_for_rank, per_rank_times
    t, prof, model, w = _traffic(16, 8, redundant=16)
    op = Op("L0.moe.experts", "grouped_gemm", gemm_nk=(25165824, 12582912), precision="fp8")
    with collecting() as together:
        got = per_rank_times(op, t, model, w, prof)
    with collecting() as alone:
        want = [compute_time_s(expert_op_for_rank(op, t, r, model, w), prof) for r in range(16)]
    assert got == want and all(type(x) is float for x in got)
    assert sorted(together) == sorted(alone)
    assert any(n.startswith("GEMM M ") for n in alone)
    assert len(set(got)) > 1                       # unequal ranks, not one price repeated


def test_a_grouped_gemm_reads_only_the_experts_its_tokens_pick():
    # one token, top-2 of 8 experts on one GPU (no EP traffic): exactly 2 experts' weights,
    # the closed form 8 x (1 - (1 - 2/8)^1) = 2; 64 tokens touch all 8 but for (3/4)^64
    from simulator.graph.ops import active_experts
    from simulator.graph.params import expert_params
    from simulator.step.whatif import build_step_graph, resolve
    from tests.conftest import workload
    assert active_experts(8, 8, 2, 1) == pytest.approx(2.0)
    assert active_experts(8, 8, 2, 64) == pytest.approx(8 * (1 - 0.75 ** 64))
    assert active_experts(4, 8, 2, 3) == pytest.approx(4 * (1 - 0.75 ** 3))
    w = workload("workloads/validation/mixtral-8x7b-int8-a100-decode.yaml")
    assert (w.batch_per_device, w.plan.ep, w.precision.weight_bytes) == (1, 1, 1)
    r = resolve(w)
    g = build_step_graph(r, "sequential")
    op = g.nodes["L0.moe.experts"]["op"]
    assert op.weight_bytes == pytest.approx(2 * expert_params(r.model) * 1)
    assert op.m == pytest.approx(1.0)                # 2 rows over 2 active experts


# -- hardware pricing -----------------------------------------------------------------------
def test_efficiency_is_linear_in_log_size():
    from simulator.pricing.hardware import efficiency
    from simulator.schema import EfficiencyTable
    table = EfficiencyTable(points=[[1.0, 0.1], [100.0, 0.5]], source="test")
    assert efficiency(table, 10.0, "x") == pytest.approx(0.3)        # log10: half-way
    assert efficiency(table, 1000.0, "x") == pytest.approx(0.5)      # clamped at the edge


def test_grouped_gemms_use_the_grouped_table():
    from simulator.pricing.hardware import efficiency, gemm_efficiency
    from tests.conftest import profile
    prof = profile("h200-sxm")      # a profile without a shape table
    assert prof.gemm_shape_efficiency is None
    op = Op("e", "grouped_gemm", m=16.0)
    dense = efficiency(prof.gemm_efficiency, 16.0, "m")
    grouped = efficiency(prof.grouped_gemm_efficiency, 16.0, "m")
    assert grouped != pytest.approx(dense)              # the two tables differ at this M
    assert gemm_efficiency(op, prof) == pytest.approx(grouped)


def test_ep_all_to_all_keeps_the_local_share_off_the_links():
    # EP 16 over 2 nodes of 8: of a rank's B bytes, 1/16 stays local, 7/16 cross NVLink,
    # 8/16 cross the NIC
    from simulator.pricing.hardware import comm_demand
    from simulator.schema import ParallelPlan
    from tests.conftest import profile
    plan = ParallelPlan(gpus=16, ep=16, gpus_per_node=8)
    d = comm_demand(Op("a2a", "collective", bytes=1600.0, collective="all_to_all", group="ep"),
                    plan, profile("h800"))
    assert d.link_bytes == pytest.approx({"nvlink": 700.0, "nic": 800.0})
    # the idealised flat EP network (Table 7's profile) carries all but the local 1/16
    d = comm_demand(Op("a2a", "collective", bytes=1600.0, collective="all_to_all", group="ep"),
                    plan, profile("h800-paper-theoretical"))
    assert d.link_bytes == pytest.approx({"ep_flat": 1500.0})


def test_straggler_factor_follows_the_expected_maximum_of_normals():
    # E[max of n standard normals]: 1/sqrt(pi) = 0.5642 for n = 2, 3.2414 for n = 1000
    # (tabulated; Blom's approximation is within 5% and 1% of them)
    import math
    from simulator.pricing.hardware import straggler_factor
    from tests.conftest import profile
    prof = profile("h800", rank_jitter={"value": 0.1, "source": "test"})
    assert straggler_factor(prof, 1) == 1.0
    assert straggler_factor(prof, 2) == pytest.approx(1 + 0.1 / math.sqrt(math.pi), rel=5e-3)
    assert straggler_factor(prof, 1000) == pytest.approx(1 + 0.1 * 3.2414, rel=3e-3)


# -- pipeline schedules ---------------------------------------------------------------------
def test_one_micro_batch_crosses_every_stage_both_ways():
    # m = 1 on p = 4 stages, p2p c between neighbours: p f + (p-1) c forward, p (b + w) + (p-1) c
    # backward: 4 + 1.5 + 4 * 3 + 1.5 = 19 s
    from simulator.training.pipeline import simulate_pipeline
    r = simulate_pipeline(4, 1, 1.0, 2.0, 1.0, "1f1b", p2p_s=0.5)
    assert r.makespan_s == pytest.approx(4 * 1.0 + 3 * 0.5 + 4 * 3.0 + 3 * 0.5)


def test_1f1b_with_weight_gradients_matches_the_bubble_formula():
    # uniform stages, no p2p: makespan (m + p - 1)(f + b + w), bubble (p - 1) / (m + p - 1)
    from simulator.training.pipeline import simulate_pipeline
    r = simulate_pipeline(4, 8, 1.0, 1.0, 1.0, "1f1b")
    assert r.makespan_s == pytest.approx(11 * 3.0)
    assert r.bubble_fraction == pytest.approx(3 / 11)


def test_1f1b_steady_state_is_bound_by_the_p_micro_batch_round_trip():
    # at most p - d micro-batches in flight on device d: device 0 starts micro-batch k + p only
    # after k's backward returns, a round trip of p (f + b) + 2 (p - 1) c for p micro-batches, so
    # each extra micro-batch adds f + b + 2 (p - 1) c / p = 3.75 s (p = 4, f = 1, b = 2, c = 0.5)
    from simulator.training.pipeline import simulate_pipeline
    a = simulate_pipeline(4, 40, 1.0, 2.0, 0.0, "1f1b", p2p_s=0.5).makespan_s
    b = simulate_pipeline(4, 80, 1.0, 2.0, 0.0, "1f1b", p2p_s=0.5).makespan_s
    assert (b - a) / 40 == pytest.approx(1.0 + 2.0 + 2 * 3 * 0.5 / 4)


def test_zero_bubble_v_turns_on_the_last_device():
    # V placement: chunks p-1 and p share the last device, so one micro-batch pays 2 (p - 1)
    # hops each way (round-robin would pay 2p - 1): p f + p b + 4 (p - 1) c, plus device 0's last
    # weight-gradient half w / 2 after its final input-gradient: 4 + 8 + 6 + 0.5 = 18.5 s
    from simulator.training.pipeline import simulate_pipeline
    r = simulate_pipeline(4, 1, 1.0, 2.0, 1.0, "zb-v", p2p_s=0.5)
    assert r.makespan_s == pytest.approx(4 * 1.0 + 4 * 2.0 + 4 * 3 * 0.5 + 0.5)


# -- serving, with step times fixed by hand ---------------------------------------------------
# Mixtral on 8 H100 (tests/test_serving.py's SMALL): 32 layers x 8 KV heads x 128 x (K and V) x
# 2 bytes = 131072 KV bytes per token; attention data-parallel over the 8 GPUs.
KV_TOKEN_BYTES = 32 * 8 * 128 * 2 * 2
DECODE_S, PREFILL_S = 0.01, 0.1


def stubbed_sim(tmp_path, rows, budget=None, **serving):
    """A serving sim of SMALL fed `rows` (arrival, input, output), every decode step DECODE_S
    and every prefill batch PREFILL_S (recording the shapes asked for)."""
    from simulator.serving.run import ServingSim
    from tests.test_serving import small
    csv = tmp_path / "trace.csv"
    csv.write_text("arrival_s,input_tokens,output_tokens\n" +
                   "".join(f"{a},{i},{o}\n" for a, i, o in rows))
    w = small(arrivals={"process": "trace", "trace": str(csv)}, **serving)
    sim = ServingSim(w.variant(runtime={"preset": "none"}))    # the kernels alone, by hand
    sim.asked = []
    sim.decode.step_s = lambda b, c: sim.asked.append(("decode", b, c)) or DECODE_S
    sim.prefill.step_s = lambda b, c: sim.asked.append(("prefill", b, c)) or PREFILL_S
    # no shape bucket is shared, so every decode step asks (and is recorded)
    sim.decode.cell = lambda b, c: Cell.point(sim.decode.step_s(b, c), b, c)
    if budget is not None:
        sim.kv_budget_tokens = budget
    return sim


def kv_exposed_s(sim, tokens):
    """The last layer's share of a prompt's KV transfer to the decode pool (NIC, per device)."""
    return tokens * KV_TOKEN_BYTES / sim.prefill.dp / sim.profile.nic.bandwidth_Bps.value / 32


def test_the_kv_budget_is_what_weights_and_activations_leave():
    from simulator.graph.memory import inference_memory
    from simulator.graph.ops import Shape
    from simulator.serving.run import ServingSim
    from tests.test_serving import small
    sim = ServingSim(small())
    assert sim.kv_token_bytes == KV_TOKEN_BYTES and sim.decode.dp == 8
    mem = inference_memory(sim.model, sim.w.plan, sim.w.precision, Shape("decode", 32, 1, 0),
                           False, 0)
    assert mem.activations > 0
    per_gpu = sim.profile.hbm_bytes.value - mem.weights - mem.activations
    assert sim.kv_budget_tokens == pytest.approx(8 * per_gpu / KV_TOKEN_BYTES)


def test_a_finished_request_frees_its_kv_for_the_rest(tmp_path):
    # two prompts prefilled together, decoded from the same step: A (1000 tokens, 3 outputs)
    # decodes 2 steps, B (2000, 6) 5 steps; a step's context is the mean over those decoding:
    # steps 1-2 (1001 + 2001) / 2 + 0, + 1; steps 3-5 B alone at 2003..2005 - A's context is gone
    sim = stubbed_sim(tmp_path, [(0.0, 1000, 3), (0.0, 2000, 6)])
    m = sim.run(check_stability=False).metrics
    contexts = [c for kind, _, c in sim.asked if kind == "decode"]
    assert contexts == pytest.approx([1501, 1502, 2003, 2004, 2005])
    sequences = [b for kind, b, _ in sim.asked if kind == "decode"]
    assert sequences == pytest.approx([2 / 8, 2 / 8, 1 / 8, 1 / 8, 1 / 8])     # 8 devices
    assert m["requests"]["finished"] == 2


def test_one_request_hand_worked(tmp_path):
    # 1000-token prompt, 11 output tokens: TTFT = prefill 0.1 s + the last layer's KV transfer;
    # then 10 decode steps of 10 ms at contexts 1001..1010 (it grows a token a step); TPOT is
    # over the 10 tokens after the first: 10 ms
    sim = stubbed_sim(tmp_path, [(0.0, 1000, 11)])
    m = sim.run(check_stability=False).metrics
    ttft = PREFILL_S + kv_exposed_s(sim, 1000)
    assert m["ttft_ms"]["p50"] == pytest.approx(ttft * 1e3)
    assert m["tpot_ms"]["p50"] == pytest.approx(DECODE_S * 1e3)
    assert m["e2e_ms"]["p50"] == pytest.approx((ttft + 10 * DECODE_S) * 1e3)
    contexts = [c for kind, _, c in sim.asked if kind == "decode"]
    assert contexts == pytest.approx([1001 + i for i in range(10)])
    # output tokens per decode GPU-second, priced per GPU: 11 tokens on 8 GPUs over the run
    per_gpu = 11 / (8 * m["simulated_s"])
    assert m["decode_tokens_per_gpu_s"] == pytest.approx(per_gpu)
    price = sim.profile.price_per_gpu_hour.value
    assert m["cost_per_million_output_tokens"] == pytest.approx(price / 3600 / per_gpu * 1e6)


def test_goodput_needs_both_slos(tmp_path):
    # TTFT ~0.1 s passes a 2 s SLO, TPOT 10 ms fails a 5 ms SLO: no request is good
    sim = stubbed_sim(tmp_path, [(0.0, 1000, 11)], slo={"ttft_ms": 2000, "tpot_ms": 5})
    assert sim.run(check_stability=False).metrics["goodput_rps"] == 0


def test_prefill_batches_stay_within_their_token_budget(tmp_path):
    # 8 devices x 8192 tokens = 65536 per batch: three 40000-token prompts go one per batch,
    # first tokens at 0.1, 0.2 and 0.3 s (plus each one's KV transfer)
    sim = stubbed_sim(tmp_path, [(0.0, 40000, 2)] * 3, budget=1e9)
    res = sim.run(check_stability=False)
    exp = [k * PREFILL_S + kv_exposed_s(sim, 40000) for k in (1, 2, 3)]
    assert sorted(res.ttft_s) == pytest.approx(exp)


def test_admission_waits_for_kv_room_instead_of_evicting(tmp_path):
    # budget 8100 tokens (1012 per device, so a 1011-token request fits one): 8 requests take
    # 8 x 1001 + 8 = 8016 <= 8100; the 9th would need 9018 and waits. The first 8 finish after
    # 10 steps (contexts reach 8 x 1011 = 8088 <= 8100: no eviction), the 9th 10 steps later.
    sim = stubbed_sim(tmp_path, [(0.0, 1000, 11)] * 9, budget=8100)
    res = sim.run(check_stability=False)
    assert res.metrics["requests"]["preempted"] == 0
    ready = PREFILL_S + kv_exposed_s(sim, 9000)
    e2e = sorted(res.e2e_s)
    assert e2e[:8] == pytest.approx([ready + 10 * DECODE_S] * 8)
    assert e2e[8] == pytest.approx(ready + 20 * DECODE_S)


def test_capacity_closed_forms(tmp_path):
    # decode-bound: slots / ((out - 1) / gain x step), gain = 1 + acceptance with one MTP draft
    from simulator.serving.run import ServingSim
    from tests.conftest import workload
    w = workload("workloads/serving/longcat-flash-h800.yaml",
                 serving={**workload("workloads/serving/longcat-flash-h800.yaml").serving
                          .model_dump(), "input_tokens": {"mean": 4500, "dist": "fixed"},
                          "output_tokens": {"mean": 1001, "dist": "fixed"}})
    sim = ServingSim(w)
    sim.decode.step_s = lambda b, c: 0.02
    sim.prefill.step_s = lambda b, c: 1e-9
    acc = sim.model.mtp_acceptance
    assert sim.mtp_draft == 1 and 0 < acc < 1
    slots = min(128 * 64, sim.kv_budget_tokens / 5501)
    assert sim.capacity_rps() == pytest.approx(slots / (1000 / (1 + acc) * 0.02))
    # colocated: decode and prefill share the steps: 1 / (1 / decode + 1 / prefill)
    col = w.variant(serving=w.serving.variant(mode="colocated", chunk_tokens_per_device=9000))
    sim = ServingSim(col)
    sim.decode.step_s = lambda b, c: 0.02
    sim.prefill.step_s = lambda b, c: 0.5
    slots = min(128 * 64, sim.kv_budget_tokens / 5501)
    dec = slots / (1000 / (1 + acc) * 0.02)
    pre = 128 * (9000 / 4500) / 0.5
    assert sim.capacity_rps() == pytest.approx(1 / (1 / dec + 1 / pre))


def test_colocated_chunks_are_priced_on_the_tokens_they_hold():
    # 1000 chunk tokens over 4 ranks of 4000-token prompts: each rank holds 250 tokens of one
    # prompt -> (1 sequence, 250 context); 40000 tokens -> 10000 per rank = 2.5 prompts of 4000
    from simulator.serving.pools import chunk_shape
    assert chunk_shape(1000, 4, 4000) == pytest.approx((1.0, 250.0))
    assert chunk_shape(40000, 4, 4000) == pytest.approx((2.5, 4000.0))


def test_step_shapes_round_up_to_the_grid():
    from simulator.serving.step_model import batch_bucket, context_bucket
    assert [batch_bucket(b, 64) for b in (1, 5, 8, 9, 100)] == [1, 8, 8, 12, 64]
    # 256 x 2^(k/2), at least 16: 300 -> 362, 256 -> 256, 512 -> 512, 513 -> 724, 100 -> 128
    # (2^(-1) x 256), 10 -> 16
    assert [context_bucket(c) for c in (100, 256, 300, 512, 513, 10)] == \
        [128, 256, 362, 512, 724, 16]


def test_mtp_decode_steps_hand_worked():
    import numpy as np
    from simulator.serving.mtp import steps_needed
    rng = np.random.default_rng(0)
    out = np.array([1, 2, 11, 101])
    # the first token comes from prefill: out - 1 steps without MTP
    assert list(steps_needed(out, 0, 0.0, rng)) == [0, 1, 10, 100]
    # two drafts at acceptance 0.5: 1 + 0.5 + 0.25 = 1.75 tokens a step, ceil(need / 1.75)
    assert list(steps_needed(out, 2, 0.5, rng)) == [0, 1, 6, 58]


# -- training -------------------------------------------------------------------------------
def _train_small(**kw):
    from tests.test_training import small
    return small(**kw)


def test_full_recomputation_costs_exactly_one_more_forward():
    from simulator.training.run import train
    from tests.conftest import profile
    roomy = profile("h800", idealizations={"enforce_hbm_capacity": False})
    base = _train_small()
    keep = base.variant(training=base.training.variant(recompute=False))
    rc, no = train(base, profile=roomy), train(keep, profile=roomy)
    assert rc.forward_s_per_microbatch == pytest.approx(no.forward_s_per_microbatch)
    assert rc.backward_s_per_microbatch - no.backward_s_per_microbatch == \
        pytest.approx(no.forward_s_per_microbatch)
    assert rc.memory.activations < no.memory.activations


def test_mfu_counts_forward_and_backward_model_flops():
    # 6 N D: LongCat-Flash activates ~27B parameters a token on average (LongCat-Flash report,
    # 18.6-31.3B); at a 4096-token context attention adds a few percent, so MFU x peak x GPUs x
    # step time / tokens lands within 20% of 6 x 27e9 (2 x that, forward only, would not)
    from simulator.training.run import train
    r = train(_train_small())
    from tests.conftest import profile
    peak = profile("h800").peak_bf16_flops.value
    flops_per_token = r.mfu * peak * r.gpus * r.step_time_s / r.tokens_per_step
    assert flops_per_token == pytest.approx(6 * 27e9, rel=0.2)


def test_1f1b_first_stage_activations_do_not_depend_on_pp():
    # 1F1B keeps p micro-batches in flight on the first stage, each with L / p layers: L layers'
    # activations whatever p (Narayanan et al. 2021)
    from simulator.training.run import train
    from tests.conftest import profile
    roomy = profile("h800", idealizations={"enforce_hbm_capacity": False})
    acts = [train(_train_small(plan={"gpus": 256, "ep": 32, "pp": pp, "cp": 8}),
                  profile=roomy).memory.activations for pp in (2, 4)]
    assert acts[0] == pytest.approx(acts[1])


def test_mtp_verification_kv_must_fit_or_the_newest_is_evicted(tmp_path):
    # one draft token (acceptance 0: no gain, but every step writes KV for 1 + 1 tokens a
    # request). Budget 8090: 8 requests of 1000 + 11 fit per device (1011 <= 8090 / 8) and are
    # admitted (8008 + 8 x 2 <= 8090); before step 9 the contexts hold 8 x 1010 = 8080 and the
    # step needs 16 more: 8096 > 8090, so the newest is evicted and prefilled again with all it
    # holds (1001 + 9 tokens; per device of the 8-way prefill pool: 1010 / 8).
    sim = stubbed_sim(tmp_path, [(0.0, 1000, 11)] * 8, budget=8090)
    sim.mtp_draft, sim.acc = 1, 0.0
    res = sim.run(check_stability=False)
    assert res.metrics["requests"]["preempted"] == 1
    prefills = [c for kind, _, c in sim.asked if kind == "prefill"]
    assert prefills[-1] == pytest.approx(1010 / 8)
    assert res.metrics["requests"]["finished"] == 8


def test_pipeline_hops_pay_the_nic_latency_both_ways():
    # 4 stages: the first micro-batch crosses 3 stage boundaries forward and 3 back, so 10 ms
    # more NIC latency lengthens the step by at least 2 x 3 x 10 ms (EP stays inside a node)
    from simulator.training.run import train
    from tests.conftest import profile
    w = _train_small(plan={"gpus": 256, "ep": 8, "pp": 4, "cp": 8})
    base = profile("h800", idealizations={"enforce_hbm_capacity": False})
    lat = base.nic.latency_s.value
    slow = profile("h800", idealizations={"enforce_hbm_capacity": False},
                   nic={"latency_s": {"value": lat + 0.01, "source": "test"}})
    assert train(w, profile=slow).step_time_s - train(w, profile=base).step_time_s >= 0.06


def test_gradient_reduce_scatter_beyond_the_backward_is_exposed():
    # at 0.1 GB/s the data-parallel gradient traffic takes far longer than a micro-batch's
    # backward: what is left after it shows in the step
    from simulator.training.run import train
    from tests.conftest import profile
    w = _train_small(plan={"gpus": 256, "ep": 8, "pp": 4, "cp": 8})
    w = w.variant(training=w.training.variant(zero_stage=0))    # no parameter all-gather
    slow = profile("h800", idealizations={"enforce_hbm_capacity": False},
                   nic={"bandwidth_Bps": {"value": 1e8, "source": "test"}})
    r = train(w, profile=slow)
    assert r.dp_exposed_s > r.backward_s_per_microbatch
    assert r.step_time_s >= r.dp_exposed_s


def chunked_layer(t_dispatch: float, t_combine: float):
    """shortcut_layer with the routed MoE cut into two token chunks (as the graph builder does
    for scmoe-chunked): each chunk's dispatch, experts and combine take half the time."""
    h = HandLayer()
    h.add("attn0.core", "attention", "attn0", [], 1.0)
    for c in (0, 1):
        h.add(f"moe.c{c}.dispatch", "collective", "moe", ["attn0.core"], t_dispatch / 2,
              link="nic", collective="all_to_all", group="ep", share=0.5)
    for c in (0, 1):
        h.add(f"moe.c{c}.experts", "grouped_gemm", "moe", [f"moe.c{c}.dispatch"], 0.5, share=0.5)
    for c in (0, 1):
        h.add(f"moe.c{c}.combine", "collective", "moe", [f"moe.c{c}.experts"], t_combine / 2,
              link="nic", collective="all_to_all", group="ep", share=0.5)
    h.window("attn0.core")
    h.add("residual", "elementwise", "ffn1", ["moe.c0.combine", "moe.c1.combine", "ffn1.ffn"],
          0.0)
    return h.parts()


def test_moe_chunks_hide_the_experts_under_the_other_chunks_all_to_all():
    # comm-bound: dispatch 4 s, combine 4 s, experts 1 s, window 5 x 1 s. Slot K = 1 either way
    # (|K - 4| + |1 - K| = 3 for K in 1..4). scmoe: dispatch 1-5 under ffn0 1-2; experts 5-6;
    # combine 6-10 under the 4 other window ops: hidden 1 + 4 = 5 s, layer ends at 10 s.
    # chunked: dispatches 1-3, 3-5; experts c0 3-3.5 (under c1's dispatch), c1 5-5.5; combines
    # 5-7 (under c1's experts and the window), 7-9; window 5.5-9.5: hidden 1 + 0.5 + 4 = 5.5 s,
    # the layer ends at 9.5 s.
    from simulator.engine.timeline import Timeline
    import numpy as np

    def run(name, g, dur, dem):
        plan = SCHEDULES[name].policy(g, dur, dem)
        start, end = Engine(plan, {"nic": 1.0}, 0.0).run()
        ops = [g.nodes[n]["op"] for n in plan.names]
        tl = Timeline(ops, plan.streams, np.array(start), np.array(end), [0.0] * len(ops))
        return dict(zip(plan.names, end[0])), tl.comm_exposure_s(0)
    end, (exposed, hidden) = run("scmoe", *shortcut_layer(4.0, 4.0))
    assert end["L0.residual"] == pytest.approx(10.0) and hidden == pytest.approx(5.0)
    assert SCHEDULES["scmoe-chunked"].moe_chunks == 2
    end, (exposed, hidden) = run("scmoe-chunked", *chunked_layer(4.0, 4.0))
    assert end["L0.moe.c0.experts"] == pytest.approx(3.5)
    assert end["L0.residual"] == pytest.approx(9.5) and hidden == pytest.approx(5.5)


def test_runtime_costs_add_to_every_step_by_hand():
    # a runtime with 1.5 ms of host time per step and 6 kernels a layer the op graph folds away:
    # the step grows by 1.5 ms + 32 layers x 6 x the profile's kernel latency, and nothing else
    from simulator.loading import load_profile
    from simulator.step.whatif import simulate
    from tests.conftest import workload
    path = "workloads/validation/mixtral-8x7b-int8-a100-decode.yaml"
    base = simulate(workload(path)).to_json()
    rt = {"step_overhead_s": {"value": 1.5e-3, "source": "test"},
          "extra_kernels_per_layer": {"value": 6, "source": "test"}}
    got = simulate(workload(path, runtime=rt)).to_json()
    lat = load_profile("a100-80gb-sxm").kernel_latency_s.value
    added = 1.5e-3 + 32 * 6 * lat
    assert got["runtime_overhead_us"] == pytest.approx(added * 1e6)
    assert got["step_time_ms"] == pytest.approx(base["step_time_ms"] + added * 1e3)
    assert got["tpot_ms"] == pytest.approx(got["step_time_ms"])          # batch 1, no MTP
    assert base["runtime_overhead_us"] == 0.0
    with pytest.raises(Exception, match="step_overhead_s"):
        workload(path, runtime={"step_overhead_s": {"value": -1, "source": "test"}})


def test_breakdown_and_link_totals_of_a_hand_built_timeline():
    """breakdown_s reads only the representative layer (attention averaged over its blocks);
    link totals sum every collective's bytes per link class, utilisation over the step."""
    import numpy as np
    from simulator.engine.streams import CommDemand
    from simulator.engine.timeline import Timeline
    from simulator.pricing.hardware import link_bandwidths
    from simulator.step.result import _ep_metrics, breakdown_s
    from tests.conftest import profile
    spec = [("L0.attn0.qkv_proj", "gemm", 0, "attn0", 2.0),
            ("L0.moe.dispatch", "collective", 0, "moe", 3.0),
            ("L1.attn0.qkv_proj", "gemm", 1, "attn0", 5.0),
            ("L1.attn1.core", "attention", 1, "attn1", 7.0),
            ("L1.moe.dispatch", "collective", 1, "moe", 11.0),
            ("L1.moe.experts", "grouped_gemm", 1, "moe", 13.0),
            ("L1.moe.combine", "collective", 1, "moe", 17.0),
            ("L1.ffn0.ffn", "gemm", 1, "ffn0", 19.0),
            ("L2.head.lm_head", "gemm", 2, "head", 23.0)]
    ops = [Op(n, k, layer=layer, block=b) for n, k, layer, b, _ in spec]
    start = np.array([[float(i) for i in range(len(ops))]])
    tl = Timeline(ops, ["compute"] * len(ops), start, start + 1.0, [t for *_, t in spec])
    assert breakdown_s(tl, 1) == {"attention_block": (5.0 + 7.0) / 2, "dispatch": 11.0,
                                  "moe": 13.0, "combine": 17.0, "dense_ffn": 19.0, "other": 0.0}
    assert breakdown_s(tl, 2)["other"] == 23.0 and breakdown_s(tl, 0)["dispatch"] == 3.0
    by_name = {"L0.moe.dispatch": CommDemand(0.0, {"nic": 100.0, "nvlink": 10.0}),
               "L1.moe.dispatch": CommDemand(0.0, {"nic": 200.0}),
               "L1.moe.combine": CommDemand(0.0, {"nvlink": 30.0})}
    demands = [by_name.get(op.name) for op in ops]          # per op of the timeline
    prof = profile("h800")
    bw = link_bandwidths(prof)
    links, ep = _ep_metrics({}, tl, prof, demands)
    span = float(len(ops))                        # first start 0, last end len(ops)
    assert ep is None
    assert links == {"nic": {"bytes_per_step": 300.0, "utilisation": 300.0 / bw["nic"] / span},
                     "nvlink": {"bytes_per_step": 40.0,
                                "utilisation": 40.0 / bw["nvlink"] / span}}
