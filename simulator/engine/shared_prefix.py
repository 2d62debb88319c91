"""Run a truncated pass, judge it at its checked layers, and go on to the whole pass there.

A pass of many identical layers is first tried truncated (engine/periodic.py): its checked
layers repeat, and it extends; or they do not, and the whole pass runs after it, the try spent
for nothing (a fifth of a 512-rank tbo step). Both plans hold the same ops up to the cut (the
prefix and the body layers the truncated pass keeps), and an engine runs them alike, event for
event, until an op only one plan holds can start. So `try_truncated` runs the truncated plan on
the array engine until its checked layers have ended on every rank and judges there (the
verdict reads only them): repeating, it runs on and extends; settling, it says so (a longer
try follows); neither, it carries the engine's state over to the whole plan and finishes that,
when the ops so far ran alike in both (`_alike`, `_apart`), else runs the whole plan afresh.
The same timelines, bit for bit, as trying the truncated pass to its end and then running the
whole one.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from simulator.engine.periodic import (Extended, NotRepeating, checked, lay_out, verdict)
from simulator.engine.ranks import RankArrays
from simulator.engine.streams import StreamPlan

Whole = tuple[np.ndarray, np.ndarray]      # the whole pass's start and end [rank, op]


def try_truncated(small: StreamPlan, small_layers: list[int], lo: int, n_layers: int, keep: int,
                  bandwidth_Bps: dict[str, float], comm_sm_fraction: float, n_ranks: int,
                  whole: Callable[[], tuple[StreamPlan, list[int]]]
                  ) -> Extended | NotRepeating | Whole:
    """As periodic.extend for `small`, the pass truncated to `keep` body layers from `lo`, on
    `n_ranks` ranks; but where it would not repeat nor settle, the whole pass (`whole()`: its
    plan and layers) run: (start, end)."""
    idx = checked(small, small_layers, lo, n_layers, keep)
    if idx is None:
        return NotRepeating()
    eng = RankArrays(small, bandwidth_Bps, comm_sm_fraction, n_ranks)
    start, end = eng.run(until=idx.ravel())
    if (end[:, idx] < 0).any():
        eng.run()                          # stopped short of them: says which ops never ran
    judged = verdict(start, end, idx)
    if not isinstance(judged, NotRepeating):
        start, end = eng.run()
        return lay_out(small_layers, lo, n_layers, keep, start, end, judged)
    if judged.settling:
        return judged
    big, big_layers = whole()
    same = _alike(small, small_layers, big, big_layers, lo + keep)
    carried = None if same is None or _apart(eng, small, big, same) else \
        eng.carried_to(big, same)
    if carried is None:
        carried = RankArrays(big, bandwidth_Bps, comm_sm_fraction, n_ranks)
    return carried.run()


def _alike(small: StreamPlan, small_layers: list[int], big: StreamPlan, big_layers: list[int],
           cut: int) -> np.ndarray | None:
    """Per op of `small`, its op in `big` (-1: one of `small`'s tail), when the ops below
    layer `cut` run alike in both: the same name, layer, stream and work, inputs among them
    the same (and inputs from beyond them in both or neither), and in the same priority
    order; None when not."""
    index = {name: j for j, name in enumerate(big.names)}
    same = np.full(len(small.names), -1, dtype=np.int64)
    for i, (name, layer) in enumerate(zip(small.names, small_layers)):
        if layer < cut:
            j = index.get(name, -1)
            if j < 0 or big_layers[j] != layer:
                return None
            same[i] = j
    mine = np.flatnonzero(same >= 0)
    theirs = np.zeros(len(big.names), dtype=bool)
    theirs[same[mine]] = True
    lists: dict[tuple[int, int], bool] = {}        # per-rank lists compared once per pair
    for i in mine.tolist():
        j = int(same[i])
        if (small.streams[i], small.compute_s[i], small.comm[i]) != \
                (big.streams[j], big.compute_s[j], big.comm[j]):
            return None
        for a, b in ((small.rank_compute_s.get(i), big.rank_compute_s.get(j)),
                     (small.rank_comm.get(i), big.rank_comm.get(j))):
            if (a is None) != (b is None):
                return None
            if a is not None and (id(a), id(b)) not in lists:
                lists[id(a), id(b)] = a == b
                if not lists[id(a), id(b)]:
                    return None
        ps = small.preds[i]
        qs = big.preds[j]
        if sorted(int(same[p]) for p in ps if same[p] >= 0) != \
                sorted(q for q in qs if theirs[q]):
            return None
        if any(same[p] < 0 for p in ps) != any(not theirs[q] for q in qs):
            return None
    order = sorted(mine.tolist(), key=lambda i: (small.priorities[i], i))
    keys = [(big.priorities[int(same[i])], int(same[i])) for i in order]
    if any(a >= b for a, b in zip(keys, keys[1:])):
        return None
    return same


def _apart(eng: RankArrays, small: StreamPlan, big: StreamPlan, same: np.ndarray) -> bool:
    """Whether, by where `eng` (running `small`) stands, an op only one plan holds could have
    started on some rank: one of `small`'s tail has all its inputs, or one of `big`'s ops
    beyond the cut would (all its inputs ops both hold, ended)."""
    waiting = eng.waiting.reshape(eng.R, eng.n + 1)[:, :eng.n]
    if (waiting[:, same < 0] == 0).any():
        return True
    mine = np.flatnonzero(same >= 0)
    back = np.full(len(big.names), -1, dtype=np.int64)   # big's op -> small's
    back[same[mine]] = mine
    ended = eng.end >= 0
    for j in np.flatnonzero(back < 0).tolist():
        ps = big.preds[j]
        if any(back[p] < 0 for p in ps):        # waits on another op beyond the cut: that first
            continue
        if not ps or ended[:, back[ps]].all(axis=1).any():
            return True
    return False
