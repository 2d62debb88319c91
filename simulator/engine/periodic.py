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

KEEPS = (7, 15)     # body layers a truncated pass keeps: first try, then a longer one for
                    # a body still settling (converging, not yet exact, in the first)
SUFFIX = 3          # last body layers taken from the truncated run's end (they see the tail)
CHECKED = 3         # body layers, just before those, that must repeat exactly, shifted ...
RTOL = 1e-9         # ... to this fraction of the latest time among them
SPARE = 4           # fewer identical layers than keep + SPARE: truncating saves too little
SETTLING = 0.5      # settling: each checked layer deviates from a common shift by less than
                    # this fraction of the layer before it (a deviation that holds, or shrinks
                    # by float noise, is a pattern that will not vanish in a longer pass)
KEEP, MIN_BODY = KEEPS[0], KEEPS[0] + SPARE

Runner = Callable[[StreamPlan], tuple[np.ndarray, np.ndarray]]   # start, end [rank, op]


@dataclass
class Extended:
    """The whole pass laid out from a truncated run: per op of the whole pass, in its order,
    the truncated op it copies, its layer, and its start and end [rank, op]."""

    src: list[int]
    layer: list[int]
    start_s: np.ndarray
    end_s: np.ndarray


@dataclass
class NotRepeating:
    """A truncated run that did not extend; `settling`: its checked layers' deviations from a
    common shift at least halve layer to layer (a longer truncated pass may find them exact).
    Only which passes are tried depends on it: every extension is checked exact."""

    settling: bool = False


def truncated_layers(lo: int, n_layers: int, keep: int = KEEP) -> int | None:
    """How many layers to build of a pass whose layers lo..n_layers-1 are copies, keeping
    `keep` body layers (None: build them all, truncating gains too little)."""
    return lo + keep if n_layers - lo >= keep + SPARE else None


def extend(plan: StreamPlan, layers: list[int], lo: int, n_layers: int, run: Runner,
           keep: int = KEEP) -> Extended | NotRepeating:
    """Run `plan`, a pass truncated to body layers lo..lo+keep-1 and its tail (`layers[i]`: op
    i's layer; the tail's are n_layers and up), and lay out the pass of n_layers layers; or
    NotRepeating when its body layers are not copies or do not repeat."""
    idx = checked(plan, layers, lo, n_layers, keep)
    if idx is None:
        return NotRepeating()
    start, end = run(plan)
    st, en = np.asarray(start), np.asarray(end)
    period = verdict(st, en, idx)
    if isinstance(period, NotRepeating):
        return period
    return lay_out(layers, lo, n_layers, keep, st, en, period)


def lay_out(layers: list[int], lo: int, n_layers: int, keep: int, st: np.ndarray,
            en: np.ndarray, period: float) -> Extended:
    """The whole pass from a run (start `st`, end `en` [rank, op]) of the pass truncated to
    `keep` body layers from `lo`, whose checked layers repeat every `period` seconds."""
    cut = lo + keep
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


def checked(plan: StreamPlan, layers: list[int], lo: int, n_layers: int, keep: int = KEEP
            ) -> np.ndarray | None:
    """The ops whose repeat decides whether a pass truncated to `keep` body layers extends,
    [checked layer, op of the layer]; None when its body layers are not copies."""
    members = _members(plan, layers, lo, lo + keep, n_layers)
    if members is None:
        return None
    first = keep - SUFFIX - CHECKED               # body layers [first, keep - SUFFIX) checked
    return np.array([members[lo + j] for j in range(first, keep - SUFFIX)])


def verdict(start: np.ndarray, end: np.ndarray, idx: np.ndarray) -> float | NotRepeating:
    """The period of the checked ops `idx` ([layer, op]) in a run's start and end [rank, op],
    or NotRepeating; reads only those ops (a run holding them, ended, judges alike)."""
    period = _period(start, end, idx)
    if period is not None:
        return period
    spread = [max(float(np.ptp(arr[:, b] - arr[:, a])) for arr in (start, end))
              for a, b in zip(idx[:-1], idx[1:])]
    return NotRepeating(all(y < SETTLING * x for x, y in zip(spread, spread[1:])))


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


def _period(start: np.ndarray, end: np.ndarray, idx: np.ndarray) -> float | None:
    """The common shift between consecutive checked layers (`idx`: [layer, op of the layer];
    all ranks, all ops, starts and ends), or None when they do not repeat; to RTOL of the
    latest end among them (the float spacing of the times compared)."""
    span = float(end[:, idx].max()) if idx.size else 0.0
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
