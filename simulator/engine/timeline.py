"""The one result type: a Timeline of (op, stream, rank, layer, start, end), and its measures."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.engine.core import time_tol
from simulator.graph.ops import Op


@dataclass
class Timeline:
    """Start and end of every op on every simulated rank, in seconds."""

    ops: list[Op]
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

    def comm_exposure_s(self, rank: int = 0) -> tuple[float, float]:
        """(exposed, hidden) communication on a rank: comm time with / without compute beside it."""
        keep = range(len(self.ops))
        busy = sum(b - a for a, b in _union([(self.start_s[rank, i], self.end_s[rank, i])
                                             for i in keep if self.ops[i].is_comm]))
        exposed = sum(b - a for a, b in self.exposed_intervals(rank, keep))
        return exposed, busy - exposed

    def exposed_intervals(self, rank: int, keep) -> list[tuple[float, float]]:
        """Intervals (among ops `keep`) where a collective runs and no compute op does."""
        comm = _union([(self.start_s[rank, i], self.end_s[rank, i]) for i in keep
                       if self.ops[i].is_comm])
        comp = _union([(self.start_s[rank, i], self.end_s[rank, i]) for i in keep
                       if not self.ops[i].is_comm])
        out, j = [], 0                      # both lists sorted and disjoint: one sweep
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
        return [(a, b) for a, b in out if b - a > time_tol(b)]   # not float noise of an instant

    def layer_times_s(self, rank: int = 0) -> dict[int, float]:
        """Time each layer adds: its last end minus the previous layer's last end."""
        ends: dict[int, float] = {}
        for i, op in enumerate(self.ops):
            ends[op.layer] = max(ends.get(op.layer, 0.0), float(self.end_s[rank, i]))
        out, prev = {}, float(self.start_s[rank].min())
        for layer in sorted(ends):
            out[layer] = ends[layer] - prev
            prev = ends[layer]
        return out


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(intervals):
        if b <= a:
            continue
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
