"""One measured kernel table: latencies on a grid of numeric shape axes, for one op class and one
choice of its categorical keys (dtype, head counts, GPUs ...), and the rule that reads it.

Inside the measured hull a lookup is multilinear in log(axis) on log(latency): exact at every
measured point, and monotone between points wherever the measurements are. Where a corner of the
surrounding cell was never measured (tables stop where the GPU's memory does, so a cell on that
edge misses its largest corner), a shape that lies in the simplex of a measured corner and its
measured neighbours along each axis is interpolated linearly on that simplex (in the same log
coordinates). Outside the hull, or in a cell whose measured corners do not enclose it, the
latency is extrapolated from the nearest measured shape, scaled by the roofline:
t(x) = t(anchor) x roofline(x) / roofline(anchor),
so the kernel keeps the efficiency it had at the edge of what was measured.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from simulator.kernels.interp import log_position

MEASURED, INTERPOLATED, EXTRAPOLATED = "measured", "interpolated", "extrapolated"

Roofline = Callable[[tuple[float, ...]], float]


@dataclass(frozen=True)
class Lookup:
    """A table's answer: seconds, where they came from, and the shape that lay outside."""

    seconds: float
    source: str                      # measured | interpolated | extrapolated
    outside: str = ""                # the axes and values beyond the measured hull


@dataclass
class KernelGrid:
    """Latencies (seconds; NaN where not measured) at every combination of `points`."""

    op_class: str                    # gemm | moe | gqa_context | mla_generation | all_reduce ...
    key: tuple                       # categorical keys, their meaning fixed per op class
    axes: tuple[str, ...]            # names of the numeric axes
    points: tuple[np.ndarray, ...]   # each axis' measured values, strictly increasing
    seconds: np.ndarray              # shape (len(points[0]), len(points[1]), ...)
    source: str = ""                 # package, system, framework, version, file, rows
    _valid: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        shape = tuple(len(p) for p in self.points)
        if self.seconds.shape != shape or len(self.axes) != len(self.points):
            raise ValueError(f"{self.op_class} {self.key}: values {self.seconds.shape} do not "
                             f"match axes {shape}")
        for name, p in zip(self.axes, self.points):
            if len(p) == 0 or np.any(np.diff(p) <= 0) or p[0] <= 0:
                raise ValueError(f"{self.op_class} {self.key}: axis {name} must be positive "
                                 "and strictly increasing")

    @property
    def rows(self) -> int:
        """Measured points the table holds."""
        return int(np.isfinite(self.seconds).sum())

    def covers(self, x: Sequence[float]) -> bool:
        """Whether `x` lies inside every axis' measured range."""
        return all(p[0] <= v <= p[-1] for p, v in zip(self.points, x))

    def lookup(self, x: Sequence[float], roofline: Roofline) -> Lookup:
        """The latency at shape `x` (see the module's rule), and its source."""
        x = tuple(float(v) for v in x)
        clamped = tuple(min(max(v, p[0]), p[-1]) for p, v in zip(self.points, x))
        t = self._inside(clamped)
        outside = ", ".join(f"{a} {v:.4g}" for a, v, c in zip(self.axes, x, clamped) if v != c)
        if t is None:                    # a corner of the cell was never measured
            anchor = self._nearest(clamped)
            t = float(self.seconds[anchor])
            base = tuple(float(p[i]) for p, i in zip(self.points, anchor))
            outside = outside or "a shape between measured ones with an unmeasured neighbour"
            return Lookup(t * _ratio(roofline, x, base), EXTRAPOLATED, outside)
        seconds, exact = t
        if outside:
            return Lookup(seconds * _ratio(roofline, x, clamped), EXTRAPOLATED, outside)
        return Lookup(seconds, MEASURED if exact else INTERPOLATED)

    def _inside(self, x: tuple[float, ...]) -> tuple[float, bool] | None:
        """(seconds, exactly a measured point) at a shape inside the hull, or None when a
        corner of its cell is not measured."""
        pos = [log_position(list(p), v) for p, v in zip(self.points, x)]
        corners: list[tuple[tuple[int, ...], float]] = [((), 1.0)]
        for (i, f), p in zip(pos, self.points):
            nxt = []
            for idx, w in corners:
                if f == 0.0 or len(p) == 1:
                    nxt.append((idx + (i,), w))
                elif f == 1.0:
                    nxt.append((idx + (i + 1,), w))
                else:
                    nxt += [(idx + (i,), w * (1 - f)), (idx + (i + 1,), w * f)]
            corners = nxt
        if len(corners) == 1:                   # a measured point: its own value
            v = float(self.seconds[corners[0][0]])
            return (v, True) if v > 0 else None
        total = 0.0
        for idx, w in corners:
            v = self.seconds[idx]
            if not v > 0:
                return self._simplex(pos)
            total += w * math.log(v)
        return math.exp(total), False

    def _simplex(self, pos: list[tuple[int, float]]) -> tuple[float, bool] | None:
        """Linear interpolation on the corner simplex nearest the shape whose vertices (a cell
        corner c and c with each fractional axis flipped) are all measured and enclose it: the
        weights are 1 - sum|f - c| at c and |f_j - c_j| at the j-th flipped corner."""
        base = [i + 1 if f == 1.0 else i for i, f in pos]
        frac = [d for d, (_, f) in enumerate(pos) if 0.0 < f < 1.0]
        best: tuple[float, float] | None = None
        for corner in itertools.product((0, 1), repeat=len(frac)):
            dist = [abs(pos[d][1] - c) for d, c in zip(frac, corner)]
            if sum(dist) > 1.0 or (best is not None and sum(dist) >= best[0]):
                continue
            at = list(base)
            for d, c in zip(frac, corner):
                at[d] = pos[d][0] + c
            vertices = [(tuple(at), 1.0 - sum(dist))]
            for j, d in enumerate(frac):
                flip = list(at)
                flip[d] = pos[d][0] + 1 - corner[j]
                vertices.append((tuple(flip), dist[j]))
            values = [(float(self.seconds[idx]), w) for idx, w in vertices if w > 0]
            if all(v > 0 for v, _ in values):
                best = (sum(dist), math.exp(sum(w * math.log(v) for v, w in values)))
        return None if best is None else (best[1], False)

    def _nearest(self, x: tuple[float, ...]) -> tuple[int, ...]:
        """The measured grid point nearest `x` in log distance, axes scaled by their spans."""
        if self._valid is None:
            self._valid = np.argwhere(np.isfinite(self.seconds) & (self.seconds > 0))
        idx = self._valid
        dist = np.zeros(len(idx))
        for d, p in enumerate(self.points):
            span = max(math.log(p[-1]) - math.log(p[0]), 1e-12)
            dist += ((np.log(p[idx[:, d]]) - math.log(x[d])) / span) ** 2
        return tuple(int(v) for v in idx[int(np.argmin(dist))])


def _ratio(roofline: Roofline, x: tuple[float, ...], base: tuple[float, ...]) -> float:
    """roofline(x) / roofline(base), 1 where the roofline gives nothing to scale by."""
    r0 = roofline(base)
    return roofline(x) / r0 if r0 > 0 else 1.0
