"""How well a table's interpolation predicts measurements it did not see: k-fold along each
axis, every k-th interior grid value of that axis held out and predicted from the rest with the
table's own rule (log-log linear between the nearest kept neighbours). Holding points out doubles
the gap between neighbours, so this overstates the error at the table's real spacing."""
from __future__ import annotations

import numpy as np

from simulator.kernels.grid import KernelGrid

FOLDS = 5


def kfold_errors(grid: KernelGrid, folds: int = FOLDS) -> np.ndarray:
    """|predicted / measured - 1| of every held-out measured point (all axes, all folds)."""
    out = []
    logv = np.log(np.where(grid.seconds > 0, grid.seconds, np.nan))
    for d, axis in enumerate(grid.points):
        n = len(axis)
        if n < 3:
            continue
        x = np.log(axis)
        v = np.moveaxis(logv, d, 0)                     # axis d first
        for f in range(folds):
            held = [i for i in range(1, n - 1) if i % folds == f]
            if not held:
                continue
            kept = np.array([i for i in range(n) if i not in held])
            for i in held:
                lo = kept[kept < i].max()
                hi = kept[kept > i].min()
                w = (x[i] - x[lo]) / (x[hi] - x[lo])
                pred = v[lo] + w * (v[hi] - v[lo])
                ok = np.isfinite(pred) & np.isfinite(v[i])
                out.append(np.abs(np.exp(pred[ok] - v[i][ok]) - 1.0))
    return np.concatenate(out) if out else np.zeros(0)
