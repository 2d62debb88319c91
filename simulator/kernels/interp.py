"""Interpolation helpers shared by every measured table: positions on a log axis, and the note
a table measured at one precision leaves when it prices another."""
from __future__ import annotations

import math
from bisect import bisect_left

from simulator.notes import note


def log_position(xs: list[float], x: float) -> tuple[int, float]:
    """(i, f): x lies a fraction f of the way from xs[i] to xs[i + 1] in log space, clamped
    (xs strictly increasing, as the schema requires of table axes)."""
    if len(xs) == 1 or x <= xs[0]:
        return 0, 0.0
    if x >= xs[-1]:
        return len(xs) - 2, 1.0
    i = bisect_left(xs, x) - 1            # the first i with xs[i] <= x <= xs[i + 1]
    return i, (math.log(x) - math.log(xs[i])) / (math.log(xs[i + 1]) - math.log(xs[i]))


def note_mixed_precision(measured: str, used: str, what: str) -> None:
    """Note that a table measured in `measured` prices `used` kernels as the same fraction of
    the `used` peak (no `used` measurement in the profile)."""
    if measured != used:
        note(f"{what} efficiency measured in {measured} prices {used} kernels as the same "
             f"fraction of the {used} peak (no {used} measurement in the profile)")
