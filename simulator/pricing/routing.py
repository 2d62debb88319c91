"""Token -> expert routing: popularity skew, zero-computation experts, node limits, placement.

Sampled from a seeded numpy Generator: same workload, same routing, bit for bit. The output is
what the engine needs: per-rank expert loads (the slowest rank sets the expert GEMM) and the
dispatch traffic between EP ranks, both per expert copy and deduplicated per GPU and per node.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from simulator.errors import MoesimError
from simulator.schema import RoutingSpec

CHUNK_TOKENS = 4096
MAX_SAMPLED_TOKENS = 131072   # above this, per-token expectations from a pooled sample


@dataclass(frozen=True)
class Placement:
    """Where expert copies live: copies[e] lists the EP ranks holding expert e."""

    copies: list[np.ndarray]
    slots_per_rank: np.ndarray

    @property
    def max_slots(self) -> int:
        """Most expert copies on one rank (sets its weight reads)."""
        return int(self.slots_per_rank.max())


@dataclass(frozen=True)
class RoutingResult:
    """Routing of one batch: tokens per source rank, loads and traffic between EP ranks."""

    tokens_per_rank: int
    rank_rows: np.ndarray        # [ep] token-expert rows each rank's experts compute
    expert_load: np.ndarray      # [experts] routed copies per logical expert
    t_expert: np.ndarray         # [ep, ep] token copies per (source, destination), one per expert
    t_gpu: np.ndarray            # [ep, ep] deduplicated per destination GPU
    t_node: np.ndarray           # [ep, nodes] deduplicated per destination node
    real_mean: float             # real (FFN) experts per token, measured
    real_std: float
    placement: Placement
    active_slots: np.ndarray     # [ep] expert copies on each rank that receive any row

    @property
    def imbalance(self) -> float:
        """max / mean of the expert rows per rank (1.0 = perfectly balanced)."""
        mean = float(self.rank_rows.mean())
        return float(self.rank_rows.max()) / mean if mean > 0 else 1.0

    @property
    def expert_imbalance(self) -> float:
        """max / mean of per-expert load."""
        mean = float(self.expert_load.mean())
        return float(self.expert_load.max()) / mean if mean > 0 else 1.0


def popularity(spec: RoutingSpec, n_experts: int, rng: np.random.Generator) -> np.ndarray:
    """Probability of each FFN expert being chosen (sums to 1)."""
    if spec.popularity in ("uniform", "balanced", "round_robin"):
        p = np.ones(n_experts)
    elif spec.popularity == "zipf":
        p = 1.0 / np.arange(1, n_experts + 1) ** spec.zipf_s
        p = p[rng.permutation(n_experts)]          # hot experts land anywhere
    else:
        p = np.exp(spec.lognormal_sigma * rng.standard_normal(n_experts))
    return p / p.sum()


def place_experts(n_experts: int, ep: int, redundant: int, p: np.ndarray) -> Placement:
    """Contiguous blocks of experts per rank (as even as the counts allow), plus `redundant`
    extra copies: each goes to the expert with the highest load per copy, on a rank not yet
    holding it with the fewest expert slots (every rank hosts the same number, +-1, as
    deployments do), the least-loaded first."""
    owner = primary_owner(n_experts, ep)
    copies = [[int(owner[e])] for e in range(n_experts)]
    slots = np.bincount(owner, minlength=ep)
    load = np.bincount(owner, weights=p, minlength=ep).astype(float)
    for _ in range(redundant):
        per_copy = np.array([p[e] / len(copies[e]) for e in range(n_experts)])
        for e in np.argsort(-per_copy, kind="stable"):
            free = [r for r in np.lexsort((load, slots)) if r not in copies[e]]
            if free:
                break
        else:
            break
        target = int(free[0])
        before, after = p[e] / len(copies[e]), p[e] / (len(copies[e]) + 1)
        for r in copies[e]:
            load[r] -= before - after
        load[target] += after
        copies[e].append(target)
        slots[target] += 1
    return Placement([np.array(c) for c in copies], slots)


SEQ_DRAWS_PER_PICK = 2     # draws per token and round: this many per expert it needs
MAX_ROUNDS = 64            # rounds of draws before a token short of experts is an input error


def ep_nodes(ep: int, gpus_per_node: int) -> int:
    """Nodes an EP group spans (the blocks a node limit counts)."""
    return max(1, ep // min(gpus_per_node, ep))


def _limits(spec: RoutingSpec, n_experts: int, nodes: int) -> list[tuple[int, int]]:
    """(block size, blocks kept) of each limit, in the order they apply: nodes, then groups."""
    out = []
    if spec.max_nodes_per_token and spec.max_nodes_per_token < nodes:
        out.append((n_experts // nodes, spec.max_nodes_per_token))
    if spec.expert_groups and spec.max_groups_per_token and \
            spec.max_groups_per_token < spec.expert_groups:
        out.append((n_experts // spec.expert_groups, spec.max_groups_per_token))
    return out


class AliasTable:
    """Walker's alias method: draws from a discrete distribution at O(1) per draw (an index
    uniform over the experts, then the index itself with probability `keep`, else its
    `alias`), exact up to float rounding."""

    def __init__(self, p: np.ndarray) -> None:
        e = p.size
        scaled = np.asarray(p, dtype=float) * (e / p.sum())
        self.keep = np.ones(e)
        self.alias = np.arange(e)
        small = [i for i in range(e) if scaled[i] < 1.0]
        large = [i for i in range(e) if scaled[i] >= 1.0]
        while small and large:                  # Vose: pair each light cell with a heavy one
            s, g = small.pop(), large.pop()
            self.keep[s], self.alias[s] = scaled[s], g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        self.uniform = bool((self.keep >= 1.0).all())

    def draw(self, u: np.ndarray, out: np.ndarray) -> np.ndarray:
        """One index per uniform in [0, 1), written into the integer array `out` (returned; `u`
        is overwritten): its integer part picks the cell, the rest decides."""
        v = np.multiply(u, self.keep.size, out=u)
        if self.uniform:                        # every cell keeps its own index: the integer
            out[...] = v                        # part, as the assignment casts it
        else:
            cell = v.astype(np.int32)
            out[...] = np.where(v - cell < self.keep[cell], cell, self.alias[cell])
        return out


def _sampled(table: AliasTable, gens: list[np.random.Generator], per_gen: int, spec: RoutingSpec,
             nodes: int, kmax: int) -> np.ndarray:
    """kmax experts, first pick first, for each of len(gens) x per_gen tokens (generator g
    draws for tokens [g x per_gen, (g + 1) x per_gen)): a popularity-weighted sample without
    replacement (Plackett-Luce), drawn as experts with replacement in sequence, keeping each
    one's first appearance (the next distinct expert of such a sequence follows p restricted to
    the experts not yet picked). Node and group limits keep the blocks a token reaches first
    (a block ranks by its first-drawn expert, as in the exponential race of Gumbel top-k) and
    skip draws outside them. `table`: the popularity's alias table."""
    e, n = table.keep.size, len(gens) * per_gen
    limits = _limits(spec, e, nodes)
    reach = float(np.prod([keep_n * size / e for size, keep_n in limits]))
    per_round = int(np.ceil(SEQ_DRAWS_PER_PICK * kmax / reach))
    small_int = np.int16 if e <= np.iinfo(np.int16).max else np.int64   # less to compare
    out = np.full((n, kmax), -1, dtype=np.int64)
    got = np.zeros(n, dtype=small_int)
    kept = [np.zeros((n, e // size), dtype=bool) for size, _ in limits]   # blocks reached,
    reached = [np.zeros(n, dtype=small_int) for _ in limits]             # up to keep_n
    rows = np.arange(n)
    for _ in range(MAX_ROUNDS):
        if rows.size == 0:
            return out
        owner = rows // per_gen               # rows ascend, so each generator's rows are a run
        bounds = np.searchsorted(owner, np.arange(len(gens) + 1)).tolist()
        draws = np.empty((per_round, rows.size), dtype=small_int)     # [draw, row]
        for i, gen in enumerate(gens):        # a generator's block at a time (stays in cache)
            table.draw(gen.random((per_round, bounds[i + 1] - bounds[i])),
                       draws[:, bounds[i]:bounds[i + 1]])
        live = rows                           # this round's rows still short, shrinking
        o, g = out[live].T.astype(small_int, order="C"), got[live]  # o: [kmax, rows], picks
        kp, rc = [a[live] for a in kept], [a[live] for a in reached]
        had = int(g.max())                    # picks a row already holds from earlier rounds
        ar = np.arange(live.size)
        starts = [ar * a.shape[1] for a in kp]    # each row's first cell in a limit's blocks
        for j in range(per_round):
            short = g < kmax
            if 2 * int(short.sum()) < live.size:   # write the finished back, go on with the rest
                done = ~short
                out[live[done]], got[live[done]] = o[:, done].T, kmax
                keep = short
                live, o, g = live[keep], o[:, keep], g[keep]
                draws = draws[-(per_round - j):, keep]    # the draws still to come
                kp, rc = [a[keep] for a in kp], [a[keep] for a in rc]
                short = short[keep]
                if not live.size:
                    break
                ar = np.arange(live.size)
                starts = [ar * a.shape[1] for a in kp]
            x = draws[j - per_round]
            ok = short
            for li, (size, keep_n) in enumerate(limits):
                flat = starts[li] + x // size
                hit = kp[li].reshape(-1)[flat]
                new = ok & ~hit & (rc[li] < keep_n)   # a block not reached before, kept if room
                kp[li].reshape(-1)[flat[new]] = True
                rc[li] += new
                ok = ok & (hit | new)
            differs = np.empty_like(ok)
            for c in range(min(had + j, kmax)):   # not a repeat of an expert already picked
                ok &= np.not_equal(o[c], x, out=differs)
            i = ar[ok]
            o[g[i], i] = x[i]
            g[i] += 1
        out[live], got[live] = o.T, g
        for whole, part in ((kept, kp), (reached, rc)):
            for li in range(len(limits)):
                whole[li][live] = part[li]
        rows = rows[got[rows] < kmax]
    raise MoesimError("routing", f"tokens found fewer than {kmax} experts in the nodes and "
                      "groups their limits keep", "raise routing.max_nodes_per_token or "
                      "routing.max_groups_per_token so the kept experts number top_k or more")


def _balanced(valid: np.ndarray, before: int, n_experts: int, ep: int,
              rank_first: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact balance: the i-th token copy of the whole batch (counting only real ones) goes to
    the (i mod n_experts)-th expert of an order that walks the EP ranks first (every rank's
    first expert, then every rank's second, ...), so consecutive copies, and a token's experts,
    sit on distinct ranks and every expert and rank receives the same count, +-1. With
    `rank_first` False the order is the experts' own (torchtitan's round-robin forced balance,
    its router's `_debug_force_load_balance`): a token's consecutive experts share a rank.
    Returns (experts, how many times each expert was picked before)."""
    owner = primary_owner(n_experts, ep)
    local = np.arange(n_experts) - np.searchsorted(owner, owner)   # index within its rank
    order = np.lexsort((owner, local)) if rank_first else np.arange(n_experts)
    slot = before + np.cumsum(valid.ravel()).reshape(valid.shape) - 1   # index of each real copy
    return np.where(valid, order[slot % n_experts], 0), slot // n_experts


def primary_owner(n_experts: int, ep: int) -> np.ndarray:
    """The EP rank of each expert's first copy: contiguous blocks, as even as the counts allow
    (n_experts / ep each when ep divides the experts, else floor or ceil)."""
    return (np.arange(n_experts) * ep) // n_experts


class _TokenDraws:
    """Per-token routing draws of one (routing spec, model, EP layout, seed), made in whole
    chunks of CHUNK_TOKENS in token order and kept: token i's experts do not depend on how many
    tokens a step has, so every step shape and micro-batch reuses the same draws (a shape with
    more tokens only draws the chunks it lacks)."""

    def __init__(self, spec: RoutingSpec, n_experts: int, top_k: int, has_zero_experts: bool,
                 real_mean: float, ep: int, gpus_per_node: int, seed: int) -> None:
        self.spec, self.n_experts, self.ep = spec, n_experts, ep
        self.has_zero, self.real_mean, self.seed = has_zero_experts, real_mean, seed
        p = popularity(spec, n_experts, np.random.default_rng(seed))
        self.placement = place_experts(n_experts, ep, spec.redundant_experts, p)
        self.table = AliasTable(p)
        self.kmax = min(top_k, n_experts)
        self.nodes = ep_nodes(ep, gpus_per_node)
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # k, chosen, pick
        self.copies_before = 0

    def upto(self, tokens: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(k, chosen, pick) of every chunk covering the first `tokens` tokens."""
        need = -(-tokens // CHUNK_TOKENS)
        if len(self.chunks) < need:
            self.chunks += self._draw(len(self.chunks), need)
        return self.chunks[:need]

    def _draw(self, first: int, last: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Chunks [first, last), each from its own generator (seeded by the setup's seed and
        the chunk's index), so that drawing them together or one at a time gives the same."""
        n, spec, kmax = CHUNK_TOKENS, self.spec, self.kmax
        gens = [np.random.default_rng([self.seed, c]) for c in range(first, last)]
        ks = [np.clip(np.rint(g.normal(self.real_mean, spec.real_experts_std, n)), 0,
                      kmax).astype(int) if self.has_zero else np.full(n, kmax) for g in gens]
        if spec.popularity in ("balanced", "round_robin"):  # pick q of an expert: copy q mod copies
            out = []
            for k in ks:
                valid = np.arange(kmax)[None, :] < k[:, None]
                chosen, pick = _balanced(valid, self.copies_before, self.n_experts, self.ep,
                                         rank_first=spec.popularity == "balanced")
                self.copies_before += int(valid.sum())
                out.append((k, chosen, pick))
            return out
        chosen = _sampled(self.table, gens, n, spec, self.nodes, kmax)
        return [(k, chosen[i * n:(i + 1) * n],
                 np.arange((first + i) * n, (first + i + 1) * n)[:, None] +
                 np.arange(kmax)[None, :]) for i, k in enumerate(ks)]


@lru_cache(maxsize=16)
def token_draws(spec: RoutingSpec, n_experts: int, top_k: int, has_zero_experts: bool,
                real_mean: float, ep: int, gpus_per_node: int, seed: int) -> _TokenDraws:
    """The shared per-token draws of one routing setup (memoised per process)."""
    return _TokenDraws(spec, n_experts, top_k, has_zero_experts, real_mean, ep, gpus_per_node,
                       seed)


def _counts(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """How many times each cell of an array of `shape` appears in `flat` (row-major indices)."""
    return np.bincount(flat, minlength=int(np.prod(shape))).reshape(shape).astype(float)


def _tokens(chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]], lo: int, hi: int
            ) -> tuple[np.ndarray, ...]:
    """(k, chosen, pick) of tokens [lo, hi) from chunks of CHUNK_TOKENS in token order."""
    cols: tuple[list[np.ndarray], ...] = ([], [], [])
    for c, part in enumerate(chunks):
        at = c * CHUNK_TOKENS
        if at < hi and at + CHUNK_TOKENS > lo:
            for col, a in zip(cols, part):
                col.append(a[max(lo - at, 0):hi - at])
    return tuple(np.concatenate(col) for col in cols)


def draws_of(micro_batch: int, tokens_per_rank: int, ep: int) -> int:
    """Whose tokens of the shared draws a micro-batch routes: its own while a micro-batch's
    tokens are sampled exactly, micro-batch 0's pooled sample above MAX_SAMPLED_TOKENS."""
    return micro_batch if ep * tokens_per_rank <= MAX_SAMPLED_TOKENS else 0


@lru_cache(maxsize=64)
def route(spec: RoutingSpec, *, n_experts: int, top_k: int, has_zero_experts: bool,
          real_mean: float, ep: int, gpus_per_node: int, tokens_per_rank: int,
          seed: int, micro_batch: int = 0) -> RoutingResult:
    """The routing of `tokens_per_rank` tokens on each of `ep` ranks, aggregated per source and
    destination rank: micro-batch m takes tokens [m x total, (m + 1) x total) of the setup's
    shared draws (token_draws), so micro-batches route different tokens of one sample; above
    MAX_SAMPLED_TOKENS every micro-batch shares the pooled sample of the first tokens (its
    expectations do not depend on which tokens). Memoised per process: the same arguments give
    the same, shared, read-only result."""
    draws = token_draws(spec, n_experts, top_k, has_zero_experts, real_mean, ep, gpus_per_node,
                        seed)
    placement = draws.placement
    n_copies = np.array([len(c) for c in placement.copies])
    copy_table = np.full((n_experts, int(n_copies.max())), -1)
    for e, c in enumerate(placement.copies):
        copy_table[e, :len(c)] = c
    g = min(gpus_per_node, ep)
    nodes = draws.nodes

    total = ep * tokens_per_rank
    sampled = min(total, MAX_SAMPLED_TOKENS)
    exact = sampled == total
    tok0 = draws_of(micro_batch, tokens_per_rank, ep) * total   # this micro-batch's first token
    k, chosen, pick = _tokens(draws.upto(tok0 + sampled), tok0, tok0 + sampled)
    real_sum = k.sum()
    real_sq = (k.astype(float) ** 2).sum()
    valid = np.arange(draws.kmax)[None, :] < k[:, None]
    every = bool(valid.all())

    def picked(a: np.ndarray) -> np.ndarray:
        """The entries of real picks (every token's first k), flat."""
        return a.ravel() if every else a[valid]
    expert_load = _counts(picked(chosen), (n_experts,))
    if copy_table.shape[1] == 1:                  # one copy each: its load is the expert's
        dst, copy_load = copy_table[:, 0][chosen], expert_load[:, None].copy()
    else:
        copy_idx = pick % n_copies[chosen]
        dst = copy_table[chosen, copy_idx]                               # [n, kmax] EP rank
        copy_load = _counts(picked(chosen * copy_table.shape[1] + copy_idx), copy_table.shape)
    # deduplicate per destination GPU and per destination node (-1: no pick), each row sorted
    dsts = np.where(valid, dst, -1).astype(np.int32)
    dsts.sort(axis=1)
    first = np.ones_like(dsts, dtype=bool)
    first[:, 1:] = dsts[:, 1:] != dsts[:, :-1]
    m = first & (dsts >= 0)
    dn = np.where(dsts >= 0, dsts // g, -1)          # still sorted: a GPU's node grows with it
    first_n = np.ones_like(dn, dtype=bool)
    first_n[:, 1:] = dn[:, 1:] != dn[:, :-1]
    mn = first_n & (dn >= 0)
    if exact:
        src = (np.arange(sampled) // tokens_per_rank)[:, None]           # each token's rank
        t_expert = _counts(picked(src * ep + dst), (ep, ep))
        t_gpu = _counts((src * ep + dsts)[m], (ep, ep))
        t_node = _counts((src * nodes + dn)[mn], (ep, nodes))
    else:
        # destinations do not depend on the source rank: pool the sample into per-token
        # expectations and give every source rank its tokens_per_rank tokens' worth
        per_token = tokens_per_rank / sampled
        t_expert = np.repeat(_counts(picked(dst), (1, ep)) * per_token, ep, axis=0)
        t_gpu = np.repeat(_counts(dsts[m], (1, ep)) * per_token, ep, axis=0)
        t_node = np.repeat(_counts(dn[mn], (1, nodes)) * per_token, ep, axis=0)
        expert_load = expert_load * (total / sampled)
    mean = real_sum / sampled
    std = float(np.sqrt(max(real_sq / sampled - mean ** 2, 0.0)))
    used = (copy_load > 0) & (copy_table >= 0)
    active = np.bincount(copy_table[used], minlength=ep).astype(float)
    return RoutingResult(tokens_per_rank=tokens_per_rank, rank_rows=t_expert.sum(axis=0),
                         expert_load=expert_load, t_expert=t_expert, t_gpu=t_gpu,
                         t_node=t_node, real_mean=float(mean), real_std=std,
                         placement=placement, active_slots=active)
