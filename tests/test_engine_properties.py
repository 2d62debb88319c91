"""Properties of the engine over random stream plans (hypothesis): dependencies and streams are
respected, links are work-conserving under processor sharing, every op's duration lies between
what it takes alone and what the slowdowns allow, and exposed + hidden = all communication."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.engine.core import Engine
from simulator.engine.streams import CommDemand, StreamPlan
from simulator.engine.timeline import Timeline
from simulator.graph.ops import Op

BW = 2.0


@st.composite
def plans(draw, latency=True):
    n = draw(st.integers(2, 9))
    streams, preds, compute, comm = [], [], [], []
    for i in range(n):
        is_comm = draw(st.booleans())
        streams.append(draw(st.sampled_from(["comm", "comm2"] if is_comm else
                                            ["compute", "compute2"])))
        preds.append(sorted(set(draw(st.lists(st.integers(0, i - 1), max_size=2)))) if i else [])
        if is_comm:
            lat = draw(st.sampled_from([0.0, 0.1, 0.5])) if latency else 0.0
            comm.append(CommDemand(lat, {"nic": draw(st.sampled_from([0.5, 1.0, 3.0]))},
                                   draw(st.sampled_from([None, 0.0, 0.2]))))
            compute.append(0.0)
        else:
            comm.append(None)
            compute.append(draw(st.sampled_from([0.25, 1.0, 2.0])))
    prio = draw(st.permutations([float(i) for i in range(n)]))
    sm = draw(st.sampled_from([0.0, 0.1, 0.3]))
    return StreamPlan([f"op{i}" for i in range(n)], streams, list(prio), preds, compute,
                      comm), sm


def union_length(spans):
    total, cur = 0.0, None
    for a, b in sorted(spans):
        if cur is None or a > cur[1]:
            if cur:
                total += cur[1] - cur[0]
            cur = [a, b]
        else:
            cur[1] = max(cur[1], b)
    return total + (cur[1] - cur[0] if cur else 0.0)


@settings(max_examples=60, deadline=None)
@given(plans())
def test_dependencies_streams_and_duration_bounds(case):
    p, sm = case
    start, end = Engine(p, {"nic": BW}, sm).run()
    s, e = start[0], end[0]
    tol = 1e-9
    for i, ps in enumerate(p.preds):
        for j in ps:
            assert s[i] >= e[j] - tol                       # no op before its inputs end
    for stream in set(p.streams):                           # one op at a time per stream
        spans = sorted((s[i], e[i]) for i in range(len(s)) if p.streams[i] == stream)
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert b0 >= a1 - tol
    total_bytes = sum(d.link_bytes["nic"] for d in p.comm if d is not None)
    largest_share = max([sm] + [d.sm_fraction for d in p.comm
                                if d is not None and d.sm_fraction is not None])
    for i in range(len(s)):
        took = e[i] - s[i]
        d = p.comm[i]
        if d is None:                 # alone: its duration; slowed at most by the largest share
            assert p.compute_s[i] - tol <= took <= p.compute_s[i] / (1 - largest_share) + tol
        else:                         # alone: latency + bytes / bw; at most every byte on the link
            alone = d.latency_s + d.link_bytes["nic"] / BW
            assert alone - tol <= took <= d.latency_s + total_bytes / BW + tol


@settings(max_examples=60, deadline=None)
@given(plans(latency=False))
def test_the_link_is_work_conserving(case):
    # no latencies: whenever a collective runs, the link moves bytes at its full rate, so the
    # time some collective is running is exactly all bytes / bandwidth
    p, sm = case
    start, end = Engine(p, {"nic": BW}, sm).run()
    comm = [(start[0][i], end[0][i]) for i, d in enumerate(p.comm) if d is not None]
    total = sum(d.link_bytes["nic"] for d in p.comm if d is not None)
    assert union_length(comm) == pytest.approx(total / BW, rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(plans())
def test_exposed_plus_hidden_is_all_communication(case):
    p, sm = case
    start, end = Engine(p, {"nic": BW}, sm).run()
    ops = [Op(n, "collective" if d is not None else "gemm") for n, d in zip(p.names, p.comm)]
    tl = Timeline(ops, p.streams, np.array(start), np.array(end), [0.0] * len(ops))
    exposed, hidden = tl.comm_exposure_s(0)
    comm = [(start[0][i], end[0][i]) for i, o in enumerate(ops) if o.is_comm]
    assert exposed + hidden == pytest.approx(union_length(comm), abs=1e-9)
    assert exposed >= -1e-12 and hidden >= -1e-12
