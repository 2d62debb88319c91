"""Multi-token prediction in serving: decode steps a request needs for its output tokens."""
from __future__ import annotations

import numpy as np

PASSAGE_SIGMAS = 4     # the binomial jump lands this many sigmas below the mean passage


def steps_needed(out: np.ndarray, draft: int, acc: float, rng: np.random.Generator) -> np.ndarray:
    """Decode steps for each request to emit `out` tokens (the first comes from prefill).

    With one draft token: the first passage of n + Binomial(n, a) past the need, sampled exactly
    (a binomial jump to 4 sigma below the mean passage, then step by step); more drafts use the
    mean gain 1 + a + a^2 + ...
    """
    need = np.maximum(out - 1, 0).astype(np.int64)
    if draft == 0 or acc <= 0:
        return need
    gain = 1 + sum(acc ** i for i in range(1, draft + 1))
    if draft > 1 or acc >= 1:
        return np.maximum(np.ceil(need / gain).astype(np.int64), (need > 0).astype(np.int64))
    est = need / gain
    n = np.maximum(np.floor(est - PASSAGE_SIGMAS * np.sqrt(est * acc * (1 - acc) + 1) - 1),
                   0).astype(np.int64)
    tokens = n + rng.binomial(n, acc)
    short = tokens < need
    while short.any():
        idx = np.nonzero(short)[0]
        tokens[idx] += 1 + (rng.random(idx.size) < acc)
        n[idx] += 1
        short[idx] = tokens[idx] < need[idx]
    return n
