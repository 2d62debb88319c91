"""Multi-token prediction in serving: decode steps a request needs for its output tokens."""
from __future__ import annotations

import numpy as np

PASSAGE_SIGMAS = 4     # the binomial jump lands this many sigmas below the mean passage


def steps_needed(out: np.ndarray, draft: int, acc: float, rng: np.random.Generator) -> np.ndarray:
    """Decode steps for each request to emit `out` tokens (the first comes from prefill).

    With one draft token: the first passage of n + Binomial(n, a) past the need, sampled exactly
    (a binomial jump to 4 sigma below the mean passage, then step by step; a jump that reaches
    the need anyway places its accepted drafts uniformly among its steps, as exchangeable draws
    given their count are, and finds the step that reached it); more drafts use the mean gain
    1 + a + a^2 + ...
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
    over = np.nonzero((tokens >= need) & (n > 0))[0]   # rare (about 3e-5 of requests)
    if over.size:
        aside = rng.spawn(1)[0]                        # leaves the main stream as it was
        for i in over:
            n[i] = _passage_within(int(n[i]), int(tokens[i] - n[i]), int(need[i]), aside)
    idx = np.nonzero(tokens < need)[0]                 # still short, in id order
    small = not need.size or int(need.max()) < 2 ** 31   # int32 halves the memory traffic
    deficit = (need[idx] - tokens[idx]).astype(np.int32 if small else np.int64)   # still needed
    taken = 0                                          # steps each has taken since
    while idx.size:                                    # one step each, until past the need
        deficit -= rng.random(idx.size) < acc          # an accepted draft ...
        deficit -= 1                                   # ... and the step's own token
        taken += 1
        short = deficit > 0
        if not short.all():
            n[idx[~short]] += taken
            idx, deficit = idx[short], deficit[short]
    return n


def _passage_within(steps: int, accepted: int, need: int, rng: np.random.Generator) -> int:
    """The step at which `steps` steps holding `accepted` accepted drafts, placed uniformly
    among them, first emit `need` tokens."""
    tokens = np.ones(steps, dtype=np.int64)
    tokens[rng.choice(steps, size=accepted, replace=False)] += 1
    return int(np.argmax(np.cumsum(tokens) >= need)) + 1
