"""The one result type: a Timeline of (op, stream, rank, layer, start, end), and its measures."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.model import Op


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
        comm = [(self.start_s[rank, i], self.end_s[rank, i]) for i, o in enumerate(self.ops)
                if o.is_comm]
        compute = [(self.start_s[rank, i], self.end_s[rank, i]) for i, o in enumerate(self.ops)
                   if not o.is_comm]
        comm_u = _union(comm)
        busy = sum(b - a for a, b in comm_u)
        overlap = _intersection_length(comm_u, _union(compute))
        return busy - overlap, overlap

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


def _intersection_length(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> float:
    i = j = 0
    total = 0.0
    while i < len(x) and j < len(y):
        lo, hi = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if hi > lo:
            total += hi - lo
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return total
