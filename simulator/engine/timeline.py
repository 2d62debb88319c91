"""The one result type: a Timeline of (op, stream, rank, layer, start, end), and its measures."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from simulator.engine.core import time_tol
from simulator.graph.ops import Op


class LaidOutOps(Sequence):
    """The ops of a pass laid out from a shorter run (engine/periodic.py): position k is
    ops[src[k]] as its copy in layer layers[k], made on first read (measuring a step reads
    only its collectives and one layer)."""

    def __init__(self, ops: list[Op], src: list[int], layers: list[int]) -> None:
        self._ops, self._src, self._layers = ops, src, layers
        self._made: list[Op | None] = [None] * len(src)

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        op = self._made[k]
        if op is None:
            op = self._made[k] = self._ops[self._src[k]].in_layer(self._layers[k])
        return op

    def __iter__(self) -> Iterator[Op]:
        return (self[k] for k in range(len(self)))

    def is_comm(self) -> np.ndarray:
        """Per op: a collective (without making the copies)."""
        return np.array([op.is_comm for op in self._ops], dtype=bool)[self._src]

    def layer_index(self) -> np.ndarray:
        """Per op: its layer (without making the copies)."""
        return np.array(self._layers, dtype=np.int64)

    def sources(self) -> tuple[list[Op], np.ndarray]:
        """The distinct ops the pass was laid out from, and per position its source's index
        (without making the copies)."""
        return self._ops, np.asarray(self._src, dtype=np.int64)


@dataclass
class Timeline:
    """Start and end of every op on every simulated rank, in seconds."""

    ops: Sequence[Op]          # a list, or LaidOutOps (copies made on first read)
    streams: list[str]
    start_s: np.ndarray        # [rank, op]
    end_s: np.ndarray          # [rank, op]
    standalone_s: list[float]  # each op's duration with the GPU and links to itself

    @property
    def n_ranks(self) -> int:
        """Ranks simulated (1 when symmetric ranks are collapsed)."""
        return int(self.start_s.shape[0])

    @property
    def span_s(self) -> float:
        """From the first start to the last end, over all ranks."""
        return float(self.end_s.max() - self.start_s.min()) if self.ops else 0.0

    def records(self, rank: int | None = None) -> list[dict]:
        """Rows (op, stream, rank, layer, start_s, end_s, kind, flops, bytes)."""
        ranks = range(self.n_ranks) if rank is None else [rank]
        return [{"op": op.name, "stream": self.streams[i], "rank": r, "layer": op.layer,
                 "start_s": float(self.start_s[r, i]), "end_s": float(self.end_s[r, i]),
                 "kind": op.kind, "flops": op.flops, "bytes": op.bytes}
                for r in ranks for i, op in enumerate(self.ops)]

    @cached_property
    def is_comm(self) -> np.ndarray:
        """Per op: a collective (bool array, in op order)."""
        if isinstance(self.ops, LaidOutOps):
            return self.ops.is_comm()
        return np.array([op.is_comm for op in self.ops], dtype=bool)

    @cached_property
    def layers(self) -> np.ndarray:
        """Per op: its layer index (int array, in op order)."""
        if isinstance(self.ops, LaidOutOps):
            return self.ops.layer_index()
        return np.array([op.layer for op in self.ops], dtype=np.int64)

    def comm_exposure_s(self, rank: int = 0) -> tuple[float, float]:
        """(exposed, hidden) communication on a rank: comm time with / without compute beside it."""
        keep = np.arange(len(self.ops))
        comm = self._merged(rank, keep, True)
        busy = sum(b - a for a, b in comm)
        exposed = sum(b - a for a, b in _exposed(comm, self._merged(rank, keep, False)))
        return exposed, busy - exposed

    def exposed_intervals(self, rank: int, keep) -> list[tuple[float, float]]:
        """Intervals (among ops `keep`) where a collective runs and no compute op does."""
        keep = np.asarray(list(keep), dtype=np.int64)
        return _exposed(self._merged(rank, keep, True), self._merged(rank, keep, False))

    def _merged(self, rank: int, keep: np.ndarray, comm: bool) -> list[tuple[float, float]]:
        """The union of the busy intervals of the collectives (or the compute ops) among
        `keep`, as sorted disjoint (start, end) pairs (intervals that touch merge)."""
        idx = keep[self.is_comm[keep] == comm] if keep.size else keep
        a, b = self.start_s[rank, idx], self.end_s[rank, idx]
        live = b > a
        a, b = a[live], b[live]
        if not a.size:
            return []
        order = np.lexsort((b, a))               # by start, then end
        a, b = a[order], b[order]
        reach = np.maximum.accumulate(b)          # the end of the union so far
        new = np.nonzero(a[1:] > reach[:-1])[0] + 1   # an interval past it starts a piece
        first = np.concatenate(([0], new))
        last = np.concatenate((new - 1, [a.size - 1]))
        return list(zip(a[first].tolist(), reach[last].tolist()))

    def layer_times_s(self, rank: int = 0) -> dict[int, float]:
        """Time each layer adds: its last end minus the previous layer's last end."""
        if not self.ops:
            return {}
        layers, pos = np.unique(self.layers, return_inverse=True)
        ends = np.zeros(layers.size)              # each layer's last end (times are >= 0)
        np.maximum.at(ends, pos, self.end_s[rank])
        out, prev = {}, float(self.start_s[rank].min())
        for layer, end in zip(layers.tolist(), ends.tolist()):
            out[layer] = end - prev
            prev = end
        return out


def _exposed(comm: list[tuple[float, float]], comp: list[tuple[float, float]]
             ) -> list[tuple[float, float]]:
    """Pieces of the sorted disjoint intervals `comm` that no interval of `comp` covers
    (both sorted and disjoint: one sweep), leaving out float noise of an instant."""
    out, j = [], 0
    for a, b in comm:
        while j < len(comp) and comp[j][1] <= a:
            j += 1
        cur, k = a, j
        while k < len(comp) and comp[k][0] < b:
            c, d = comp[k]
            if c > cur:
                out.append((cur, c))
            cur = max(cur, d)
            k += 1
        if cur < b:
            out.append((cur, b))
    return [(a, b) for a, b in out if b - a > time_tol(b)]
