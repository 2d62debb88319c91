"""Schedule invariants that could fail: overlap outcomes, exposure, dependencies."""
import pytest

from simulator.engine.schedule import SCHEDULES
from simulator.step.whatif import build_step_graph, resolve, simulate
from tests.conftest import profile, workload

LONGCAT = "workloads/paper/table7-longcat-flash.yaml"
WORKLOADS = [LONGCAT, "workloads/paper/table7-deepseek-v3.yaml",
             "workloads/paper/table7-qwen3-235b.yaml", "workloads/longcat-flash-decode-h800.yaml"]


def run(w, prof, schedule, per_rank=False):
    return simulate(w, schedule, per_rank=per_rank, resolved=resolve(w, profile=prof))


def small(path=LONGCAT, **kw):
    kw.setdefault("batch_per_device", 32)
    kw.setdefault("context_length", 2048)
    return workload(path, **kw)


def _exposure_by_segments(tl, rank=0):
    """(exposed, busy) communication seconds, counted segment by segment between every op
    boundary: a segment is busy if a collective covers it, exposed if no compute op does."""
    spans = [(tl.start_s[rank, i], tl.end_s[rank, i], op.is_comm) for i, op in enumerate(tl.ops)]
    cuts = sorted({t for a, b, _ in spans for t in (a, b)})
    exposed = busy = 0.0
    for a, b in zip(cuts, cuts[1:]):
        mid = (a + b) / 2
        comm = any(s <= mid < e for s, e, c in spans if c)
        comp = any(s <= mid < e for s, e, c in spans if not c)
        busy += (b - a) * comm
        exposed += (b - a) * (comm and not comp)
    return exposed, busy


def test_zero_cost_comm_gives_sequential_layer_time():
    w = small(plan={"gpus": 8, "ep": 1})              # EP 1: the all-to-all moves nothing
    prof = profile("h800", idealizations={"enforce_hbm_capacity": False})
    seq = run(w, prof, "sequential").metrics
    for s in ("scmoe", "sbo"):
        m = run(w, prof, s).metrics
        assert m["layer_time_us"] == pytest.approx(seq["layer_time_us"], rel=1e-9)
        assert m["step_time_ms"] == pytest.approx(seq["step_time_ms"], rel=1e-9)


def test_huge_comm_hides_exactly_the_window():
    slow = {"value": 1e8, "source": "test: a very slow all-to-all"}
    prof = profile("h800-paper-theoretical", idealizations={"ep_flat_bandwidth_Bps": slow})
    w = small()
    seq, sc = run(w, prof, "sequential"), run(w, prof, "scmoe")
    layer = seq.metrics["representative_layer"]
    window = sum(t for op, t in zip(seq.timeline.ops, seq.timeline.standalone_s)
                 if op.layer == layer and op.block in ("ffn0", "attn1", "ffn1"))
    comm = sum(t for op, t in zip(seq.timeline.ops, seq.timeline.standalone_s)
               if op.layer == layer and op.is_comm)
    assert comm > 50 * window
    assert sc.metrics["layer_time_us"] == pytest.approx(seq.metrics["layer_time_us"] - window * 1e6,
                                                        rel=1e-9)


@pytest.mark.parametrize("path", WORKLOADS)
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_no_op_before_its_inputs_and_exposure_non_negative(path, schedule):
    w = small(path)
    r = resolve(w)
    res = simulate(w, schedule, resolved=r)
    tl = res.timeline
    g = build_step_graph(r, schedule)
    index = {op.name: i for i, op in enumerate(tl.ops)}
    assert set(index) == set(g.nodes)
    for src, dst in g.edges():
        assert tl.start_s[0, index[dst]] >= tl.end_s[0, index[src]] - 1e-12, (src, dst)
    # streams never run two ops at once
    for stream in set(tl.streams):
        spans = sorted((tl.start_s[0, i], tl.end_s[0, i]) for i in range(len(tl.ops))
                       if tl.streams[i] == stream)
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert b0 >= a1 - 1e-12
    m = res.metrics
    exposed, busy = _exposure_by_segments(tl)
    assert m["exposed_comm_us"] + m["hidden_comm_us"] == pytest.approx(busy * 1e6, rel=1e-9)
    assert m["exposed_comm_us"] == pytest.approx(exposed * 1e6, rel=1e-9, abs=1e-6)
    if schedule == "sequential":
        assert m["hidden_comm_us"] == pytest.approx(0.0, abs=1e-6)


def test_overlap_schedules_beat_sequential_on_longcat():
    w = small()
    seq = simulate(w, "sequential").metrics["step_time_ms"]
    for s in ("scmoe", "sbo", "tbo"):
        assert simulate(w, s).metrics["step_time_ms"] < seq


def test_per_rank_matches_collapsed_for_symmetric_ranks():
    w = small(plan={"gpus": 16, "ep": 16})
    for s in ("sequential", "sbo", "tbo"):
        a = simulate(w, s).metrics
        b = simulate(w, s, per_rank=True).metrics
        assert b["ranks_simulated"] == 16
        assert b["step_time_ms"] == pytest.approx(a["step_time_ms"], rel=1e-9)


def test_comm_kernels_take_sms_from_overlapped_compute():
    # normal kernels take comm_sm_fraction; low-latency (decode) ones their own share
    w = small().variant(routing=small().routing.variant(ep_kernel="normal"))
    base = run(w, profile("h800", comm_sm_fraction={"value": 0.0}), "sbo").metrics
    taxed = run(w, profile("h800", comm_sm_fraction={"value": 0.5}), "sbo").metrics
    assert taxed["step_time_ms"] > base["step_time_ms"]
    low = small()
    free = run(low, profile("h800", comm_sm_fraction={"value": 0.5}), "sbo").metrics
    held = run(low, profile("h800", low_latency_comm_sm_fraction={"value": 0.5,
                                                                 "source": "test"}), "sbo").metrics
    assert held["step_time_ms"] > free["step_time_ms"]
    assert free["step_time_ms"] == pytest.approx(
        run(low, profile("h800", comm_sm_fraction={"value": 0.0}), "sbo").metrics["step_time_ms"],
        rel=1e-12)
    seq0 = run(w, profile("h800", comm_sm_fraction={"value": 0.0}), "sequential").metrics
    seq5 = run(w, profile("h800", comm_sm_fraction={"value": 0.5}), "sequential").metrics
    assert seq5["step_time_ms"] == pytest.approx(seq0["step_time_ms"], rel=1e-12)


def test_same_input_same_output():
    w = small()
    a, b = simulate(w, "tbo").metrics, simulate(w, "tbo").metrics
    assert a == b


@pytest.mark.parametrize("phase", ["prefill", "train_fwd", "train_bwd"])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_every_phase_runs_every_schedule_in_dependency_order(phase, schedule):
    w = small(phase=phase, batch_per_device=2, context_length=512,
              plan={"gpus": 16, "ep": 16}, mtp={"enabled": False})
    r = resolve(w)
    res = simulate(w, schedule, resolved=r)
    tl = res.timeline
    index = {op.name: i for i, op in enumerate(tl.ops)}
    for src, dst in build_step_graph(r, schedule).edges():
        assert tl.start_s[0, index[dst]] >= tl.end_s[0, index[src]] - 1e-12
    assert res.metrics["tpot_ms"] is None and res.metrics["tokens_per_gpu_s"] > 0


def test_backward_doubles_gemm_time_and_keeps_comm_bytes():
    kw = dict(batch_per_device=2, context_length=512, mtp={"enabled": False})
    fwd = simulate(small(phase="train_fwd", **kw), "sequential").metrics
    bwd = simulate(small(phase="train_bwd", **kw), "sequential").metrics
    f, b = fwd["breakdown_us"], bwd["breakdown_us"]
    assert b["moe"] == pytest.approx(2 * f["moe"]) and b["dense_ffn"] == pytest.approx(2 * f["dense_ffn"])
    assert b["dispatch"] == pytest.approx(f["dispatch"]) and b["combine"] == pytest.approx(f["combine"])
    assert bwd["step_time_ms"] > fwd["step_time_ms"]


def test_out_of_calibrated_range_is_answered_with_a_warning():
    w = small(phase="prefill", batch_per_device=2, context_length=8192, mtp={"enabled": False},
              hardware="h800")
    notes = simulate(w, "sequential").metrics["notes"]
    assert any("outside the calibrated range" in n for n in notes)


def test_a_schedule_registered_from_a_test_runs_end_to_end():
    # A new schedule is one function and one registration: here a three-batch overlap made from
    # tbo's policy, registered by the test alone (no other module knows its name).
    from simulator.engine import schedule as sched
    from simulator.step.whatif import simulate as run
    from tests.conftest import workload
    sched.register("test-three-batch", micro_batches=3)(sched.tbo)
    try:
        w = workload("workloads/longcat-flash-decode-h800.yaml", batch_per_device=64)
        res = run(w, "test-three-batch")
        mbs = {op.micro_batch for op in res.timeline.ops}
        assert mbs == {0, 1, 2}
        # 64 sequences split 22 / 21 / 21: the attention cores see those batches
        firsts = sorted({op.name.split(".")[0] for op in res.timeline.ops if op.micro_batch})
        assert firsts == ["mb1", "mb2"]
        seq = run(w, "sequential")
        # each micro-batch reads every weight again: three times the expert weight bytes
        def expert_weights(r):
            return sum(op.weight_bytes for op in r.timeline.ops if op.kind == "grouped_gemm")
        assert expert_weights(res) == pytest.approx(3 * expert_weights(seq))
        assert res.metrics["hidden_comm_us"] > 0 == seq.metrics["hidden_comm_us"]
    finally:
        sched.SCHEDULES.pop("test-three-batch")
    from simulator.errors import MoesimError
    with pytest.raises(MoesimError, match="unknown schedule"):
        run(w, "test-three-batch")


def test_split_cuts_sequences_then_tokens():
    from simulator.graph.ops import Shape
    from simulator.engine.schedule import get_schedule
    tbo = get_schedule("tbo")
    assert [s.sequences for s in tbo.split(Shape("decode", 5, 2, 100))] == [3, 2]
    assert [s.query_tokens for s in tbo.split(Shape("prefill", 1, 4097, 4097))] == [2049, 2048]
    from simulator.errors import MoesimError
    with pytest.raises(MoesimError, match="batch_per_device"):
        tbo.split(Shape("decode", 1, 1, 100))
    assert get_schedule("sbo").split(Shape("decode", 5, 2, 100)) == [Shape("decode", 5, 2, 100)]


DEEPSEEK_DECODE = "workloads/deployments/deepseek-v3-decode-ep144-balanced.yaml"


def _issue_order(w, stream="compute"):
    """(micro-batch, layer, role) of a stream's ops in the order they started."""
    from simulator.engine.tbo_stages import role
    res = simulate(w, "tbo", resolved=resolve(w))
    tl = res.timeline
    idx = sorted((i for i in range(len(tl.ops)) if tl.streams[i] == stream),
                 key=lambda i: (tl.start_s[0, i], i))
    return [(tl.ops[i].micro_batch, tl.ops[i].layer, role(tl.ops[i])) for i in idx], res


def test_tbo_decode_interleaves_the_runtimes_stages():
    """SGLang's DeepSeek decode strategy, written out here from its published op list: per MoE
    layer the stages [qkv] [core, o_proj, router] [permute, shared] [experts] [combine wait]
    [unpermute, residual + next qkv]; micro-batch 1 runs two stages behind micro-batch 0 and the
    two alternate stage by stage on the compute stream."""
    w = workload(DEEPSEEK_DECODE)
    order, _ = _issue_order(w)
    first_moe = 3                                     # DeepSeek-V3: layers 0-2 are dense
    def stage(layer, s):          # the last stage of a layer is the first of the next
        if s == 0:
            return [(layer - 1, "moe.unpermute"), (layer - 1, "residual"),
                    (layer, "attn.qkv_proj")]
        return [[], [(layer, "attn.core"), (layer, "attn.o_proj"), (layer, "moe.router")],
                [(layer, "moe.permute"), (layer, "moe.shared")], [(layer, "moe.experts")],
                []][s]
    L = 10                                            # a middle layer, mb0 at stage s, mb1 at s-2
    expected = []
    for s in range(2, 6):
        expected += [(0, *x) for x in (stage(L + 1, 0) if s == 5 else stage(L, s))]
        expected += [(1, *x) for x in stage(L, s - 2)]
    start = order.index((0, L, "moe.permute"))
    assert order[start:start + len(expected)] == expected
    # dense layers carry no yields: micro-batch 0 runs them and its first MoE layer's first two
    # stages before micro-batch 1 starts
    assert order.index((1, 0, "attn.qkv_proj")) > order.index((0, first_moe, "attn.core"))


def test_tbo_decode_waits_for_the_combine_before_the_other_batch_dispatches():
    # combine_b (micro-batch 0) is issued on the compute stream before micro-batch 1's
    # dispatch stage: micro-batch 1's permute cannot start before micro-batch 0's combine ends
    w = workload(DEEPSEEK_DECODE)
    _, res = _issue_order(w)
    tl = res.timeline
    at = {op.name: i for i, op in enumerate(tl.ops)}
    for layer in (5, 20, 40):
        comb, perm = at[f"L{layer}.moe.combine"], at[f"mb1.L{layer}.moe.permute"]
        assert tl.start_s[0, perm] >= tl.end_s[0, comb] - 1e-12
        # and micro-batch 1's attention core ran under micro-batch 0's combine
        core = at[f"mb1.L{layer}.attn.core"]
        assert tl.start_s[0, comb] <= tl.start_s[0, core] < tl.end_s[0, comb]


def test_tbo_prefill_alternates_with_no_lag():
    w = workload("workloads/deployments/deepseek-v3-prefill-prefix-hits.yaml")
    order, _ = _issue_order(w)
    L = 10
    i = order.index((0, L, "moe.experts"))
    # [experts] of mb0, then mb1's [experts], then mb0's [shared, unpermute, residual + next]
    assert order[i:i + 5] == [(0, L, "moe.experts"), (1, L, "moe.experts"), (0, L, "moe.shared"),
                              (0, L, "moe.unpermute"), (0, L, "residual")]


def test_tbo_without_a_published_stage_plan_stays_work_conserving():
    from simulator.engine.tbo_stages import stage_orders
    from simulator.graph.ops import graph_ops
    from simulator.step.whatif import build_step_graph
    shortcut = workload("workloads/longcat-flash-decode-h800.yaml", schedule="tbo")
    g = build_step_graph(resolve(shortcut), "tbo")
    assert stage_orders(graph_ops(g), "decode", lambda o: o.is_comm) is None
    train = workload(DEEPSEEK_DECODE, phase="train_fwd", mtp={"enabled": False},
                     batch_per_device=2, context_length=1024)
    g = build_step_graph(resolve(train), "tbo")
    assert g.graph["phase"] == "train_fwd"
    assert stage_orders(graph_ops(g), "train_fwd", lambda o: o.is_comm) is None
