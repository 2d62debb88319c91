"""Run a forward pass of many identical layers by simulating a few of them.

A plan whose layers lo..hi-1 are copies (the same ops, streams and work in the same order, a
body op's inputs and issue order from at most the next layer) settles into a periodic regime: once layer j+1's ops start and end
exactly `period` after layer j's, every later layer repeats the pattern, because the engine is
deterministic and what it runs next is the same shifted in time. So the engine runs a truncated
plan (the first `KEEP` body layers, then the tail: LM head, MTP layer), checks that its middle
layers are periodic, and fills the full timeline: the first layers as run, the middle ones as
shifted copies of a periodic layer, the last `SUFFIX` layers and the tail as the truncated
run's own last layers shifted by the layers left out. Not periodic (or too few layers to gain):
the whole plan runs. Results equal the full run's up to float rounding of the shifts.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from simulator.engine.streams import StreamPlan

KEEP = 7            # body layers the truncated plan keeps
SUFFIX = 3          # last body layers taken from the truncated run's end (they see the tail)
CHECK = (1, 4)      # body layers [1, 4) of the truncated run must repeat exactly, shifted
RTOL = 1e-9         # ... to this fraction of the step
MIN_BODY = KEEP + 4  # fewer identical layers than this: truncating saves too little, run whole

Runner = Callable[[StreamPlan], tuple[list[list[float]], list[list[float]]]]


def run_layers(plan: StreamPlan, layers: list[int], n_layers: int, run: Runner
               ) -> tuple[list[list[float]], list[list[float]]]:
    """(start, end) [rank][op] of `plan` as `run` would give it, simulating few layers when the
    layers are copies; `layers[i]`: op i's layer (outside 0..n_layers-1: not a body layer)."""
    body = _body(plan, layers, n_layers)
    if body is None:
        return run(plan)
    lo, hi, members, pos = body
    cut = lo + KEEP
    shift_layers = hi - cut
    kept = [i for i, layer in enumerate(layers) if layer < cut or layer >= hi]
    new_of = {i: k for k, i in enumerate(kept)}

    def twin(i: int, layer: int) -> int:          # op i's copy in another body layer
        return members[layer][pos[i]]

    # the truncated plan's last SUFFIX layers meet the tail as the full plan's last ones do:
    # they take the inputs (and issue priorities) of their counterparts there
    source = [twin(i, layers[i] + shift_layers) if cut - SUFFIX <= layers[i] < cut else i
              for i in kept]

    def small_of(p: int, from_end: bool) -> int | None:
        layer = layers[p]
        if layer >= hi or layer < 0:
            return new_of[p]
        if from_end:
            return new_of.get(twin(p, layer - shift_layers)) if layer - shift_layers >= lo \
                else None
        return new_of[p] if layer < cut else None

    preds = []
    for i, src in zip(kept, source):
        mapped = {small_of(p, src != i or layers[i] >= hi) for p in plan.preds[src]}
        if None in mapped:
            return run(plan)
        preds.append(sorted(mapped))
    small = StreamPlan(
        names=[plan.names[i] for i in kept], streams=[plan.streams[i] for i in kept],
        priorities=[plan.priorities[s] for s in source], preds=preds,
        compute_s=[plan.compute_s[i] for i in kept], comm=[plan.comm[i] for i in kept],
        rank_compute_s={new_of[i]: v for i, v in plan.rank_compute_s.items() if i in new_of},
        rank_comm={new_of[i]: v for i, v in plan.rank_comm.items() if i in new_of})
    s_start, s_end = run(small)
    st, en = np.array(s_start), np.array(s_end)
    checked = [new_of[i] for j in range(*CHECK) for i in members[lo + j]]
    period = _period(st, en, checked, len(members[lo]))
    if period is None:
        return run(plan)
    ref = cut - SUFFIX - 1                        # the last layer the tail cannot reach
    src = np.empty(len(layers), dtype=np.int64)
    shift = np.zeros(len(layers))
    for i, layer in enumerate(layers):
        if layer >= hi:                           # the tail, after the dropped layers
            src[i], shift[i] = new_of[i], shift_layers
        elif layer < ref:                         # as run (the prefix and the first layers)
            src[i] = new_of[i]
        elif layer >= hi - SUFFIX:                # the last layers, as the truncated run's
            src[i], shift[i] = new_of[twin(i, layer - shift_layers)], shift_layers
        else:                                     # a middle layer: a periodic layer, shifted
            src[i], shift[i] = new_of[twin(i, ref)], layer - ref
    shift *= period
    return (st[:, src] + shift).tolist(), (en[:, src] + shift).tolist()


def _body(plan: StreamPlan, layers: list[int], n_layers: int
          ) -> tuple[int, int, dict[int, list[int]], list[int]] | None:
    """(first, end, ops of each layer in plan order, each op's place in its layer) of the run
    of identical layers that ends the pass, when truncating it gains something; a body op's
    inputs (and issue order) come from at most the next layer."""
    if n_layers < MIN_BODY:
        return None
    members: dict[int, list[int]] = {}
    pos = [0] * len(layers)
    for i, layer in enumerate(layers):
        group = members.setdefault(layer, [])
        pos[i] = len(group)
        group.append(i)
    names = plan.names

    def keys(layer: int) -> list[str]:
        tag = f"L{layer}."
        return [names[i].replace(tag, "L*.", 1) for i in members.get(layer, ())]
    last = keys(n_layers - 1)
    if not last:
        return None
    lo = n_layers - 1
    while lo > 0 and keys(lo - 1) == last:
        lo -= 1
    if n_layers - lo < MIN_BODY:
        return None
    first = members[lo]
    for layer in range(lo, n_layers):              # copies: same stream and work
        for a, b in zip(first, members[layer]):
            if (plan.streams[a], plan.compute_s[a]) != (plan.streams[b], plan.compute_s[b]) \
                    or plan.comm[a] is not plan.comm[b] \
                    or plan.rank_compute_s.get(a) is not plan.rank_compute_s.get(b) \
                    or plan.rank_comm.get(a) is not plan.rank_comm.get(b):
                return None
            if any(layers[p] > layer + 1 for p in plan.preds[b]):
                return None
    return lo, n_layers, members, pos


def _period(start: np.ndarray, end: np.ndarray, ops: list[int], per: int) -> float | None:
    """The common shift between consecutive checked layers (all ranks, all ops, starts and
    ends), or None when they do not repeat."""
    idx = np.array(ops).reshape(-1, per)           # [checked layer, op of the layer]
    span = float(end.max()) if end.size else 0.0
    tol = RTOL * max(span, 1e-30)
    shifts = []
    for a, b in zip(idx[:-1], idx[1:]):
        for arr in (start, end):
            d = arr[:, b] - arr[:, a]
            if float(d.max() - d.min()) > tol:
                return None
            shifts.append(float(d.mean()))
    if max(shifts) - min(shifts) > tol:
        return None
    return float(np.mean(shifts))
