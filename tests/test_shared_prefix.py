"""A truncated pass judged at its checked layers, then carried over to the whole pass
(engine/shared_prefix.py), gives what trying it to its end and then running the whole pass
gives: the same verdict, the same extension, the same whole timeline, bit for bit."""
import numpy as np
import pytest

from simulator.engine import periodic, ranks, shared_prefix
from simulator.engine.ranks import MIN_RANKS as RANKS_MIN, RankArrays
from simulator.engine.streams import CommDemand, StreamPlan
from tests.test_periodic import _random_plan

BW, SM, RANKS = {"link": 5e10}, 0.1, 40


def _uneven(plan: StreamPlan, chained: bool) -> StreamPlan:
    """The plan with work and bytes that differ per rank (one list per op for every layer),
    and (`chained`) each op of a layer that had no inputs after the layer's first op (a
    layer's ops wait on the layers before, as a model's do; unchained, a later layer's op
    that waits on nothing may run early in the whole pass: the two runs differ from the
    start, and the whole one runs afresh)."""
    first = {name.split(".")[0]: i for i, name in enumerate(plan.names) if name.endswith(".op0")}
    preds = [ps or ([first[name.split(".")[0]]] if chained and i else [])
             for i, (name, ps) in enumerate(zip(plan.names, plan.preds))]
    plan = StreamPlan(plan.names, plan.streams, plan.priorities, preds, plan.compute_s,
                      plan.comm, dict(plan.rank_compute_s))
    lists: dict[float, list[float]] = {}
    for i, secs in enumerate(plan.compute_s):
        if secs > 2e-6 and i not in plan.rank_compute_s and plan.names[i].count(".op"):
            plan.rank_compute_s[i] = lists.setdefault(secs, [secs * (1 + (r * 3 % 7) / 4)
                                                             for r in range(7)])
    shared: dict[int, list[CommDemand]] = {}
    for i, d in enumerate(plan.comm):
        if d is not None and not plan.names[i].startswith("L20."):     # the tail's keeps one
            per = shared.setdefault(id(d), [CommDemand(d.latency_s, {"link": b * (1 + r % 5)},
                                                       d.sm_fraction)
                                            for r, b in enumerate([d.link_bytes["link"]] * 7)])
            plan.rank_comm[i] = per
    return plan


def _plans(seed: int, shifted: bool | None = None):
    big, big_layers, n = _random_plan(seed)
    small, small_layers, _ = _random_plan(seed, built=periodic.truncated_layers(2, n))
    chained = seed % 4 != 0
    big = _uneven(big, chained)
    if seed % 3 == 2 if shifted is None else shifted:
        # the whole plan's later layers first in priority order: every op below the cut has
        # another key there than in the truncated plan
        cut = 2 + periodic.KEEP
        big.priorities = [p - 1e6 if layer >= cut else p
                          for p, layer in zip(big.priorities, big_layers)]
    return _uneven(small, chained), small_layers, big, big_layers, n


def _reference(small, small_layers, big, n):
    """Try the truncated plan to its end; the whole plan afresh when it would not repeat."""
    ext = periodic.extend(small, small_layers, 2, n,
                          lambda p: RankArrays(p, BW, SM, RANKS).run())
    if isinstance(ext, periodic.NotRepeating) and not ext.settling:
        return RankArrays(big, BW, SM, RANKS).run(), ext
    return ext, ext


def test_random_plans_judged_early_equal_the_try_then_the_whole_run():
    """100 random layered plans on 40 ranks with per-rank work and bytes: extended, settling
    or run whole (carried over, or afresh where the runs could differ), each equals the
    reference bit for bit."""
    kinds = {"extended": 0, "carried": 0, "fresh": 0, "settling": 0}
    real = RankArrays.carried_to

    def spying(self, plan, same):
        out = real(self, plan, same)
        kinds["carried"] += out is not None
        return out
    RankArrays.carried_to = spying
    try:
        for seed in range(100):
            small, small_layers, big, big_layers, n = _plans(seed)
            before = kinds["carried"]
            out = shared_prefix.try_truncated(small, small_layers, 2, n, periodic.KEEP, BW, SM,
                                              RANKS, lambda: (big, big_layers))
            want, verdict = _reference(small, small_layers, big, n)
            if isinstance(out, tuple):
                kinds["fresh"] += kinds["carried"] == before
                assert isinstance(want, tuple), seed
                assert np.array_equal(out[0], want[0]) and np.array_equal(out[1], want[1]), seed
            elif isinstance(out, periodic.Extended):
                kinds["extended"] += 1
                assert isinstance(want, periodic.Extended), seed
                assert out.src == want.src and out.layer == want.layer, seed
                assert np.array_equal(out.start_s, want.start_s), seed
                assert np.array_equal(out.end_s, want.end_s), seed
            else:
                kinds["settling"] += out.settling
                assert out == verdict, seed
    finally:
        RankArrays.carried_to = real
    assert kinds["carried"] >= 3 and kinds["fresh"] >= 10 and kinds["extended"] >= 50, kinds


@pytest.mark.parametrize("path,schedule,kind", [
    ("workloads/longcat-flash-decode-h800.yaml", "tbo", "carried"),
    ("workloads/serving/deepseek-v3-h800.yaml", "tbo", "settling"),
    ("workloads/serving/deepseek-v3-h800.yaml", "sbo", "extended")])
def test_shipped_passes_per_rank_equal_the_try_then_the_whole_run(path, schedule, kind):
    """Per rank on 32 ranks (the array engine): LongCat-Flash's tbo does not repeat and goes
    on as the whole pass from where its try stood; DeepSeek-V3's tbo settles (the longer try
    extends); its sbo repeats. Each timeline equals the event engine's, which tries each
    truncated pass to its end first, bit for bit."""
    from simulator.loading import load_workload
    from simulator.step import whatif
    w = load_workload(path)
    w = w.variant(plan=w.plan.variant(gpus=32, ep=32), batch_per_device=32)
    seen = []
    real_try, real_carry = shared_prefix.try_truncated, RankArrays.carried_to

    def trying(*a):
        out = real_try(*a)
        seen.append("settling" if getattr(out, "settling", False) else
                    "extended" if isinstance(out, periodic.Extended) else "whole")
        return out

    def carrying(self, plan, same):
        out = real_carry(self, plan, same)
        seen.append("carried" if out is not None else "fresh")
        return out
    whatif.try_truncated, RankArrays.carried_to = trying, carrying
    try:
        fast = whatif.simulate(w, schedule, per_rank=True)
    finally:
        whatif.try_truncated, RankArrays.carried_to = real_try, real_carry
    assert kind in seen, seen
    ranks.MIN_RANKS = 10 ** 9       # the event engine: each try to its end, then the whole pass
    try:
        slow = whatif.simulate(w, schedule, per_rank=True)
    finally:
        ranks.MIN_RANKS = RANKS_MIN
    assert np.asarray(fast.timeline.end_s).shape[0] == 32
    assert np.array_equal(fast.timeline.start_s, slow.timeline.start_s)
    assert np.array_equal(fast.timeline.end_s, slow.timeline.end_s)
    assert fast.step_time_s == slow.step_time_s


def test_plans_that_differ_below_the_cut_are_not_carried_over():
    """The correspondence refuses a whole plan whose ops below the cut differ from the
    truncated one's in priority order, work, per-rank work, inputs (from below the cut, or
    from beyond it in one plan only) or name; else maps each truncated op to the whole plan's
    op of its name (the tail to none)."""
    small, small_layers, big, big_layers, n = _plans(1)
    cut = 2 + periodic.KEEP
    same = shared_prefix._alike(small, small_layers, big, big_layers, cut)
    assert same is not None
    for i, j in enumerate(same):
        assert (j < 0) == (small_layers[i] >= cut)
        assert j < 0 or big.names[j] == small.names[i]

    def changed(edit):
        b = StreamPlan(list(big.names), list(big.streams), list(big.priorities),
                       [list(p) for p in big.preds], list(big.compute_s), list(big.comm),
                       dict(big.rank_compute_s), dict(big.rank_comm))
        edit(b)
        return shared_prefix._alike(small, small_layers, StreamPlan(
            b.names, b.streams, b.priorities, b.preds, b.compute_s, b.comm, b.rank_compute_s,
            b.rank_comm), big_layers, cut)
    a, b = big.names.index("L3.op0"), big.names.index("L4.op0")

    def swap(p):
        p.priorities[a], p.priorities[b] = p.priorities[b], p.priorities[a]
    assert changed(swap) is None
    assert changed(lambda p: p.compute_s.__setitem__(a, p.compute_s[a] * 2)) is None
    k = next(i for i in big.rank_compute_s if big_layers[i] < cut)
    assert changed(lambda p: p.rank_compute_s.__setitem__(k, [x * 2 for x in
                                                                p.rank_compute_s[k]])) is None
    assert changed(lambda p: p.preds[b].append(a - 1)) is None
    assert changed(lambda p: p.names.__setitem__(a, "L3.other")) is None
    later = big.names.index(f"L{cut}.op0")        # beyond the cut: free to differ
    assert changed(lambda p: p.compute_s.__setitem__(later, 1.0)) is not None
    assert changed(lambda p: p.preds[a].append(later)) is None   # waits on it in one plan only


def test_an_engine_carried_over_anywhere_below_the_cut_finishes_as_the_whole_run():
    """Stop the truncated plan's engine when an op below the cut has ended everywhere, carry
    it over to the whole plan (ops queued, running, half done; keys that differ where the
    whole plan's later layers come first in priority order): it finishes as the whole plan
    run afresh, bit for bit. Where an op only one plan holds could have started, `_apart`
    says so."""
    carried = queued = apart = 0
    for seed in range(40):
        small, small_layers, big, big_layers, n = _plans(seed, shifted=seed % 4 != 0)
        same = shared_prefix._alike(small, small_layers, big, big_layers, 2 + periodic.KEEP)
        assert same is not None, seed
        fresh = RankArrays(big, BW, SM, RANKS).run()
        for stop in ("L3.op1", "L5.op0", "L6.op2", "L7.join"):
            if stop not in small.names:
                continue
            eng = RankArrays(small, BW, SM, RANKS)
            eng.run(until=np.array([small.names.index(stop)]))
            if shared_prefix._apart(eng, small, big, same):
                apart += 1
                continue
            b = eng.carried_to(big, same)
            carried += 1
            queued += int((b.rqn > 0).any() and not np.array_equal(b.rq, eng.rq))
            out = b.run()
            assert np.array_equal(out[0], fresh[0]) and np.array_equal(out[1], fresh[1]), \
                (seed, stop)
    assert carried >= 60 and queued >= 10 and apart >= 10, (carried, queued, apart)
