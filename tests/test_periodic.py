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


def _both(w, schedule, per_rank=False, resolved=None):
    """(the step as simulated, the same with the whole pass run, sizes of truncated plans that
    extended to the whole pass)."""
    sizes = []
    real = whatif.extend

    def spying(sp, *args):
        out = real(sp, *args)
        if isinstance(out, periodic.Extended):
            sizes.append(len(sp.names))
        return out
    whatif.extend = spying
    try:
        fast = whatif.simulate(w, schedule, per_rank=per_rank, resolved=resolved)
    finally:
        whatif.extend = real
    whole = whatif.truncated_layers
    whatif.truncated_layers = lambda *a: None
    try:
        full = whatif.simulate(w, schedule, per_rank=per_rank, resolved=resolved)
    finally:
        whatif.truncated_layers = whole
    return fast, full, sizes


def _same(fast, full):
    span = float(np.max(full.timeline.end_s))
    for a, b in ((fast.timeline.start_s, full.timeline.start_s),
                 (fast.timeline.end_s, full.timeline.end_s)):
        assert np.asarray(a).shape == np.asarray(b).shape
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-9 * span
    assert fast.step_time_s == pytest.approx(full.step_time_s, rel=1e-9)
    # the same ops, named and ordered as the whole pass's, with the same work and streams
    assert [(o.name, o.layer, o.kind, o.flops, o.bytes) for o in fast.timeline.ops] == \
        [(o.name, o.layer, o.kind, o.flops, o.bytes) for o in full.timeline.ops]
    assert fast.timeline.streams == full.timeline.streams
    assert fast.timeline.standalone_s == full.timeline.standalone_s
    assert fast.links == full.links or all(
        fast.links[k]["bytes_per_step"] == pytest.approx(v["bytes_per_step"], rel=1e-12)
        for k, v in full.links.items())


@pytest.mark.parametrize("path,schedule", CASES)
def test_few_layers_extended_equal_the_full_run(path, schedule):
    fast, full, sizes = _both(load_workload(path), schedule)
    _same(fast, full)
    assert sizes and sizes[0] < len(full.timeline.ops) // 2     # it did run a truncated plan


@pytest.mark.parametrize("path,schedule,kept", [
    ("workloads/serving/deepseek-v3-h800.yaml", "sbo", [periodic.KEEPS[0]]),
    ("workloads/serving/deepseek-v3-h800.yaml", "tbo", list(periodic.KEEPS)),
    ("workloads/longcat-flash-decode-h800.yaml", "tbo", [periodic.KEEPS[0]])])
def test_per_rank_timelines_too(path, schedule, kept):
    """Per-rank runs on 16 unequal ranks: sbo repeats within the first truncated pass;
    DeepSeek-V3's tbo settles (its layers' deviations shrink, then vanish by the tenth layer),
    so the longer pass extends; LongCat-Flash's work-conserving tbo keeps changing the order
    in which a rank picks its ready ops, does not settle, and runs whole after one try. Each
    equals the whole run."""
    w = load_workload(path)
    w = w.variant(plan=w.plan.variant(gpus=16, ep=16), batch_per_device=32)
    tried = []
    real = periodic.extend

    def counting(sp, layers, lo, n, run, keep):
        tried.append(keep)
        return real(sp, layers, lo, n, run, keep)
    whatif.extend = counting
    try:
        fast, full, sizes = _both(w, schedule, per_rank=True)
    finally:
        whatif.extend = real
    assert np.asarray(full.timeline.end_s).shape[0] == 16
    _same(fast, full)
    assert tried == kept
    extends = not (path.startswith("workloads/longcat") and schedule == "tbo")
    assert bool(sizes) == extends
    if extends:
        assert sizes[0] < len(full.timeline.ops) // 2


def test_a_layer_that_differs_runs_the_whole_plan():
    """Layers whose work differs are not copies: nothing is run or extended."""
    w = load_workload("workloads/longcat-flash-decode-h800.yaml")
    r = whatif.resolve(w)
    keep = periodic.truncated_layers(0, r.model.num_layers)
    g = whatif.build_step_graph(r, "sequential", keep)
    sp = whatif.get_schedule("sequential").policy(g, {n: 1e-5 for n in g}, {})
    layers = [g.nodes[n]["op"].layer for n in sp.names]
    runs = []

    def run(p):
        runs.append(len(p.names))
        ends = [1e-5 * (i + 1) for i in range(len(p.names))]
        return [[e - 1e-6 for e in ends]], [ends]
    assert isinstance(periodic.extend(sp, layers, 0, r.model.num_layers, run), periodic.Extended)
    odd = next(i for i, n in enumerate(sp.names) if n.startswith("L5."))
    sp.compute_s[odd] *= 3
    assert periodic.extend(sp, layers, 0, r.model.num_layers, run) == periodic.NotRepeating()
    assert runs == [len(sp.names)]


def _random_plan(seed: int, built: int | None = None):
    """A plan of two prefix layers, `n` copies of one random layer and a two-op tail: random
    streams, work and in-layer edges, the first op after the previous layer's last, sometimes
    an op waiting on the previous layer's middle, comm ops sharing a link and SMs."""
    import random
    from simulator.engine.streams import CommDemand, StreamPlan
    rng = random.Random(seed)
    n = 20
    per = rng.randint(3, 7)
    kinds = [rng.choice(["compute", "comm"]) for _ in range(per)]
    work = [rng.uniform(1e-5, 5e-5) for _ in range(per)]
    demands = [CommDemand(rng.uniform(1e-6, 5e-6), {"link": rng.uniform(1e5, 1e6)},
                          rng.choice([None, 0.0, 0.2])) for _ in range(per)]
    inner = [(a, b) for b in range(1, per) for a in range(b) if rng.random() < 0.4]
    cross = rng.random() < 0.5
    names, streams, preds, compute_s, comm, layers = [], [], [], [], [], []
    rank_work = [rng.uniform(1e-5, 6e-5) for _ in range(3)]

    def add(name, stream, ps, secs, demand, layer):
        names.append(name)
        streams.append(stream)
        preds.append(ps)
        compute_s.append(secs)
        comm.append(demand)
        layers.append(layer)
        return len(names) - 1
    last = None
    for layer in range(2):                               # two dense layers
        last = add(f"L{layer}.dense", "compute", [] if last is None else [last], 3e-5, None,
                   layer)
    prev_first = None
    for layer in range(2, n if built is None else built):   # the body (truncated: `built`)
        idx = []
        for j in range(per):
            ps = [idx[a] for a, b in inner if b == j]
            if j == 0:
                ps.append(last)
                if cross and prev_first is not None:
                    ps.append(prev_first)
            is_comm = kinds[j] == "comm"
            idx.append(add(f"L{layer}.op{j}", kinds[j], ps, 0.0 if is_comm else work[j],
                           demands[j] if is_comm else None, layer))
        prev_first = idx[0]
        last = add(f"L{layer}.join", "compute", idx[:], 1e-6, None, layer)
    head = add(f"L{n}.head", "compute", [last], 4e-5, None, n)
    add(f"L{n}.mtp", "comm", [head], 0.0, demands[0], n)
    plan = StreamPlan(names, streams, [float(i) for i in range(len(names))], preds, compute_s,
                      comm)
    experts = [i for i, nm in enumerate(names) if nm.endswith(".op0") and streams[i] == "compute"]
    for i in experts:                                      # per-rank work, one list for all
        plan.rank_compute_s[i] = rank_work
    return plan, layers, n


def test_random_layered_plans_equal_the_full_run():
    """40 random layered plans on 3 ranks (comm sharing a link, SM shares, per-rank work): the
    truncated plan extended equals the whole plan's run (its ops, order and timeline), and
    most plans extend."""
    from simulator.engine.core import Engine
    extended = 0
    for seed in range(40):
        plan, layers, n = _random_plan(seed)
        small, small_layers, _ = _random_plan(seed, built=periodic.truncated_layers(2, n))
        assert len(small.names) < len(plan.names) // 2
        ext = periodic.extend(small, small_layers, 2, n,
                              lambda p: Engine(p, {"link": 5e10}, 0.1, n_ranks=3).run())
        if isinstance(ext, periodic.NotRepeating):
            continue
        extended += 1
        names = [small.names[i].replace(f"L{small_layers[i]}.", f"L{layer}.", 1)
                 for i, layer in zip(ext.src, ext.layer)]
        assert names == plan.names, seed
        f_start, f_end = Engine(plan, {"link": 5e10}, 0.1, n_ranks=3).run()
        span = max(max(r) for r in f_end)
        assert np.abs(ext.start_s - np.array(f_start)).max() <= 1e-9 * span, seed
        assert np.abs(ext.end_s - np.array(f_end)).max() <= 1e-9 * span, seed
    assert extended >= 8          # 11 of these 40 repeat layer to layer; the rest run whole


@pytest.mark.parametrize("layers,schedule", [(11, "sbo"), (11, "tbo"), (12, "sequential"),
                                             (10, "sbo")])
def test_bodies_at_the_edge_of_truncating(layers, schedule):
    """The fewest identical layers that truncate (periodic.MIN_BODY = 11), one more, and one
    fewer (the whole pass runs): each equals the whole run, ops and order included."""
    from simulator.loading import load_model
    w = load_workload("workloads/longcat-flash-decode-h800.yaml")
    model = load_model(w.model).variant(num_layers=layers)
    fast, full, sizes = _both(w, schedule, resolved=whatif.resolve(w, model=model))
    _same(fast, full)
    assert bool(sizes) == (layers >= periodic.MIN_BODY)


def test_laid_out_ops_make_each_copy_on_first_read_and_match_the_copies():
    # a pass laid out from a shorter run: position k is ops[src[k]] in layer layers[k]; its
    # per-op collective flags and layers come without making copies, and equal the copies'
    from simulator.engine.timeline import LaidOutOps, Timeline
    from simulator.graph.ops import Op
    ops = [Op("L1.attn", "attention", layer=1), Op("L1.moe.dispatch", "collective", layer=1),
           Op("head", "gemm", layer=3)]
    src, layers = [0, 1, 0, 1, 0, 1, 2], [1, 1, 2, 2, 5, 5, 3]
    laid = LaidOutOps(ops, src, layers)
    assert len(laid) == 7 and laid._made == [None] * 7
    assert [op.name for op in laid] == ["L1.attn", "L1.moe.dispatch", "L2.attn",
                                        "L2.moe.dispatch", "L5.attn", "L5.moe.dispatch", "head"]
    assert laid[0] is ops[0] and laid[6] is ops[2]        # its own layer: the op itself
    assert laid[-3] is laid[4] and laid[2:4] == [laid[2], laid[3]]
    assert laid[3].layer == 2 and ops[1].name == "L1.moe.dispatch"     # sources untouched
    fresh = LaidOutOps(ops, src, layers)
    tl = Timeline(fresh, ["s"] * 7, np.zeros((1, 7)), np.ones((1, 7)), [1.0] * 7)
    assert tl.is_comm.tolist() == [op.is_comm for op in laid]
    assert tl.layers.tolist() == [op.layer for op in laid]
    assert fresh._made == [None] * 7                       # measured without copies
