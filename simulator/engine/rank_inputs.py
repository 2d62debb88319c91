"""What every rank runs, as arrays: a StreamPlan's per-rank work and collective demands laid out
[op, rank] for the array engine (engine/ranks.py), and checked at once."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.engine.core import MAX_OP_S
from simulator.engine.streams import StreamPlan


@dataclass
class RankInputs:
    """Per (op, rank) compute seconds; per (collective, rank) latency, SM share and bytes per
    link; the links (sorted) and their bandwidths (NaN: a link with none)."""

    links: list[str]
    bw: np.ndarray           # [link]
    work: np.ndarray         # [op, rank]
    ci: np.ndarray           # op -> its row among the collectives (-1: compute)
    lat: np.ndarray          # [collective, rank]
    share: np.ndarray        # [collective, rank]
    nbytes: np.ndarray       # [link, collective, rank]

    def sound(self) -> bool:
        """Every duration, byte count and SM share the ranks run finite, non-negative and
        bounded (core.check_inputs's test, on the arrays: it names the op when not)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            secs = [self.work, self.lat, self.nbytes / self.bw[:, None, None]]
        share = self.share
        return all(bool(np.isfinite(x).all() and (x >= 0).all() and (x <= MAX_OP_S).all())
                   for x in secs) and bool(np.isfinite(share).all() and (share >= 0).all()
                                           and (share < 1).all())


def rank_inputs(plan: StreamPlan, bw: dict[str, float], sm: float, n_ranks: int) -> RankInputs:
    """`plan`'s work and demands on `n_ranks` ranks (rank r takes entry r % len of a per-rank
    list; `sm`: the SM share of a demand that names none)."""
    n, R = len(plan.names), n_ranks
    demands = [d for d in plan.comm if d is not None]
    for v in {id(v): v for v in plan.rank_comm.values()}.values():   # layers share lists
        demands += v
    links = sorted({k for d in demands for k in d.link_bytes})
    K = len(links)
    work = np.repeat(np.asarray(plan.compute_s, dtype=float)[:, None], R, axis=1)
    by_rank = np.arange(R)
    for i, v in plan.rank_compute_s.items():
        work[i] = np.asarray(v, dtype=float)[by_rank % len(v)]
    comm_ops = [i for i, d in enumerate(plan.comm) if d is not None]
    ci = np.full(n, -1, dtype=np.int64)
    ci[comm_ops] = np.arange(len(comm_ops))
    nc = len(comm_ops)
    lat, share, nbytes = np.zeros((nc, R)), np.zeros((nc, R)), np.zeros((K, nc, R))
    memo: dict[tuple, tuple] = {}

    def rows(ds: list) -> tuple:
        lat = np.array([d.latency_s for d in ds], dtype=float)
        share = np.array([sm if d.sm_fraction is None else d.sm_fraction for d in ds],
                         dtype=float)
        b = np.array([[d.link_bytes.get(k, 0.0) for d in ds] for k in links],
                     dtype=float).reshape(K, len(ds))
        return lat, share, b
    for c, i in enumerate(comm_ops):
        per = plan.rank_comm.get(i)           # the plan holds what these ids name
        key = ("ranks", id(per)) if per is not None else ("one", id(plan.comm[i]))
        if key not in memo:
            memo[key] = rows(per if per is not None else [plan.comm[i]])
        lat_c, share_c, b = memo[key]
        pick = by_rank % len(lat_c)
        lat[c], share[c], nbytes[:, c] = lat_c[pick], share_c[pick], b[:, pick]
    return RankInputs(links, np.array([bw.get(k, np.nan) for k in links], dtype=float), work,
                      ci, lat, share, nbytes)
