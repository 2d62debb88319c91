"""Run a forward pass of many identical layers by simulating a few of them.

A pass whose layers lo..n_layers-1 are copies (the same ops, streams and work in the same
order, a body op's inputs and issue order from at most the next layer) settles into a periodic
regime: once layer j+1's ops start and end exactly `period` after layer j's, every later layer
repeats the pattern, because the engine is deterministic and what it runs next is the same
shifted in time. So the caller builds the pass truncated to its first `KEEP` body layers, then
its tail (LM head, MTP layer: ops of layer n_layers and up), and `extend` runs that, checks that
its middle layers are periodic, and lays out the whole pass: the first layers as run, the
middle ones as shifted copies of a periodic layer, the last `SUFFIX` layers and the tail as the
truncated run's own last layers shifted by the layers left out (they meet the tail as the whole
pass's last layers do). Not copies, not periodic, or too few layers to gain: None, and the
caller runs the whole pass. Results equal the whole run's up to float rounding of the shifts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from simulator.engine.streams import StreamPlan

KEEP = 7            # body layers the truncated pass keeps
SUFFIX = 3          # last body layers taken from the truncated run's end (they see the tail)
CHECK = (1, 4)      # body layers [1, 4) of the truncated run must repeat exactly, shifted
RTOL = 1e-9         # ... to this fraction of the step
MIN_BODY = KEEP + 4  # fewer identical layers than this: truncating saves too little, run whole

Runner = Callable[[StreamPlan], tuple[list[list[float]], list[list[float]]]]


@dataclass
class Extended:
    """The whole pass laid out from a truncated run: per op of the whole pass, in its order,
    the truncated op it copies, its layer, and its start and end [rank, op]."""

    src: list[int]
    layer: list[int]
    start_s: np.ndarray
    end_s: np.ndarray


def truncated_layers(lo: int, n_layers: int) -> int | None:
    """How many layers to build of a pass whose layers lo..n_layers-1 are copies (None:
    build them all, truncating gains too little)."""
    return lo + KEEP if n_layers - lo >= MIN_BODY else None


def extend(plan: StreamPlan, layers: list[int], lo: int, n_layers: int, run: Runner
           ) -> Extended | None:
    """Run `plan`, a pass truncated to body layers lo..lo+KEEP-1 and its tail (`layers[i]`: op
    i's layer; the tail's are n_layers and up), and lay out the pass of n_layers layers; None
    when its body layers are not copies or do not repeat."""
    cut = lo + KEEP
    members = _members(plan, layers, lo, cut, n_layers)
    if members is None:
        return None
    start, end = run(plan)
    st, en = np.array(start), np.array(end)
    checked = [i for j in range(*CHECK) for i in members[lo + j]]
    period = _period(st, en, checked, len(members[lo]))
    if period is None:
        return None
    drop = n_layers - cut                     # body layers the truncated pass left out
    ref = cut - SUFFIX - 1                    # the last layer the tail cannot reach
    src: list[int] = []
    out_layer: list[int] = []
    shift: list[float] = []
    group: list[int] = []                     # the ops of a run of layer-`ref` ops

    def flush() -> None:                      # the middle layers: copies of the ref layer
        for k in range(1, drop + 1):
            src.extend(group)
            out_layer.extend([ref + k] * len(group))
            shift.extend([float(k)] * len(group))
        group.clear()
    for i, layer in enumerate(layers):
        if group and layer != ref:
            flush()
        if layer == ref:
            group.append(i)
            src.append(i)
            out_layer.append(layer)
            shift.append(0.0)
        elif layer >= n_layers or cut - SUFFIX <= layer < cut:   # the tail, the last layers
            src.append(i)
            out_layer.append(layer if layer >= n_layers else layer + drop)
            shift.append(float(drop))
        else:                                 # as run (the prefix and the first layers)
            src.append(i)
            out_layer.append(layer)
            shift.append(0.0)
    if group:
        flush()
    idx = np.array(src, dtype=np.int64)
    by = np.array(shift) * period
    return Extended(src, out_layer, st[:, idx] + by, en[:, idx] + by)


def _members(plan: StreamPlan, layers: list[int], lo: int, cut: int, n_layers: int
             ) -> dict[int, list[int]] | None:
    """Ops of each body layer lo..cut-1 in plan order, when those layers are copies (same
    names but the layer, streams and work) whose inputs (and issue order) come from at most
    the next layer (the tail, layers n_layers and up, counts as layer `cut`)."""
    members: dict[int, list[int]] = {layer: [] for layer in range(lo, cut)}
    for i, layer in enumerate(layers):
        if lo <= layer < cut:
            members[layer].append(i)
    names = plan.names

    def keys(layer: int) -> list[str]:
        tag = f"L{layer}."
        return [names[i].replace(tag, "L*.", 1) for i in members[layer]]
    first = members[lo]
    if not first:
        return None
    want = keys(lo)
    for layer in range(lo + 1, cut):
        if keys(layer) != want:
            return None
    for layer in range(lo, cut):              # copies: same stream and work
        for a, b in zip(first, members[layer]):
            if (plan.streams[a], plan.compute_s[a]) != (plan.streams[b], plan.compute_s[b]) \
                    or plan.comm[a] is not plan.comm[b] \
                    or plan.rank_compute_s.get(a) is not plan.rank_compute_s.get(b) \
                    or plan.rank_comm.get(a) is not plan.rank_comm.get(b):
                return None
            if any((cut if layers[p] >= n_layers else layers[p]) > layer + 1
                   for p in plan.preds[b]):
                return None
    return members


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
