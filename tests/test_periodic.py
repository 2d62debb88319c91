"""Simulating a few identical layers and extending the timeline (engine/periodic.py) gives the
full run's timeline: every op's start and end, every rank, to float rounding of the shifts."""
import numpy as np
import pytest

from simulator.engine import periodic
from simulator.loading import load_workload
from simulator.step import whatif

CASES = [("workloads/longcat-flash-decode-h800.yaml", s) for s in ("sequential", "scmoe", "sbo",
                                                                  "tbo")] + \
        [("workloads/serving/deepseek-v3-h800.yaml", s) for s in ("sequential", "sbo", "tbo")] + \
        [("workloads/deployments/deepseek-v3-prefill-prefix-hits.yaml", "tbo"),
         ("workloads/validation/qwen3-30b-a3b-h20-decode.yaml", "sequential")]


def _both(w, schedule, per_rank=False):
    sizes = []
    real = whatif.run_layers

    def spying(sp, layers, n, run):
        return real(sp, layers, n, lambda p: (sizes.append(len(p.names)), run(p))[1])
    whatif.run_layers = spying
    try:
        fast = whatif.simulate(w, schedule, per_rank=per_rank)
    finally:
        whatif.run_layers = real
    whatif.run_layers = lambda sp, layers, n, run: run(sp)
    try:
        full = whatif.simulate(w, schedule, per_rank=per_rank)
    finally:
        whatif.run_layers = real
    return fast, full, sizes


def _same(fast, full):
    span = float(np.max(full.timeline.end_s))
    for a, b in ((fast.timeline.start_s, full.timeline.start_s),
                 (fast.timeline.end_s, full.timeline.end_s)):
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-9 * span
    assert fast.step_time_s == pytest.approx(full.step_time_s, rel=1e-9)


@pytest.mark.parametrize("path,schedule", CASES)
def test_few_layers_extended_equal_the_full_run(path, schedule):
    fast, full, sizes = _both(load_workload(path), schedule)
    _same(fast, full)
    assert sizes and sizes[0] < len(full.timeline.ops) // 2     # it did run a truncated plan


def test_per_rank_timelines_too():
    w = load_workload("workloads/serving/deepseek-v3-h800.yaml")
    w = w.variant(plan=w.plan.variant(gpus=16, ep=16), batch_per_device=32)
    fast, full, sizes = _both(w, "tbo", per_rank=True)
    assert np.asarray(full.timeline.end_s).shape[0] == 16
    _same(fast, full)
    assert sizes[0] < len(full.timeline.ops) // 2


def test_a_layer_that_differs_runs_the_whole_plan():
    """Layers whose work differs are not copies: the whole plan runs."""
    w = load_workload("workloads/longcat-flash-decode-h800.yaml")
    r = whatif.resolve(w)
    g = whatif.build_step_graph(r, "sequential")
    ops = [g.nodes[n]["op"] for n in g]
    sp = whatif.get_schedule("sequential").policy(g, {n: 1e-5 for n in g}, {})
    layers = [g.nodes[n]["op"].layer for n in sp.names]
    odd = next(i for i, n in enumerate(sp.names) if n.startswith("L20."))
    sp.compute_s[odd] *= 3
    runs = []
    periodic.run_layers(sp, layers, r.model.num_layers,
                        lambda p: (runs.append(len(p.names)), ([[0.0] * len(p.names)],
                                                               [[0.0] * len(p.names)]))[1])
    assert runs == [len(ops)]
