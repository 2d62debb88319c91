"""Token -> expert routing: popularity skew, zero-computation experts, node limits, placement.

Sampled from a seeded numpy Generator: same workload, same routing, bit for bit. The output is
what the engine needs: per-rank expert loads (the slowest rank sets the expert GEMM) and the
dispatch traffic between EP ranks, both per expert copy and deduplicated per GPU and per node.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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
    if spec.popularity in ("uniform", "balanced"):
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


def _limit(keys: np.ndarray, blocks: int, keep_n: int) -> np.ndarray:
    """Keep only each token's `keep_n` best contiguous expert blocks (nodes or groups), a block
    ranking as its best (smallest-key) expert; the others' keys become +inf, in place."""
    n, e = keys.shape
    by_block = keys.reshape(n, blocks, e // blocks)
    keep = np.argpartition(by_block.min(axis=2), keep_n - 1, axis=1)[:, :keep_n]
    dropped = np.ones((n, blocks), dtype=bool)
    np.put_along_axis(dropped, keep, False, axis=1)
    by_block[dropped] = np.inf
    return keys


def race_keys(inv_p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Keys of n tokens whose k smallest are a popularity-weighted sample of k distinct experts
    (sequential sampling without replacement, Plackett-Luce): an exponential race, E_e / p_e
    with E_e ~ Exp(1), in the order of Gumbel-perturbed log p_e (log p_e - log E_e is Gumbel)
    at a third of the cost (float32; `inv_p` is 1 / popularity)."""
    keys = rng.standard_exponential((n, inv_p.size), dtype=np.float32)
    keys *= inv_p
    return keys


def _sampled(keys: np.ndarray, spec: RoutingSpec, nodes: int, kmax: int) -> np.ndarray:
    """Each token's kmax first experts of the race (first first) after node and group limits
    (`keys` is overwritten)."""
    if spec.max_nodes_per_token and spec.max_nodes_per_token < nodes:
        keys = _limit(keys, nodes, spec.max_nodes_per_token)
    if spec.expert_groups and spec.max_groups_per_token and \
            spec.max_groups_per_token < spec.expert_groups:
        keys = _limit(keys, spec.expert_groups, spec.max_groups_per_token)
    top = np.argpartition(keys, kmax - 1, axis=1)[:, :kmax]
    order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def _balanced(valid: np.ndarray, before: int, n_experts: int,
              ep: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact balance: the i-th token copy of the whole batch (counting only real ones) goes to
    the (i mod n_experts)-th expert of an order that walks the EP ranks first (every rank's
    first expert, then every rank's second, ...), so consecutive copies, and a token's experts,
    sit on distinct ranks and every expert and rank receives the same count, +-1. Returns
    (experts, how many times each expert was picked before)."""
    owner = primary_owner(n_experts, ep)
    local = np.arange(n_experts) - np.searchsorted(owner, owner)   # index within its rank
    order = np.lexsort((owner, local))            # every rank's first expert, then second ...
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
        self.has_zero, self.real_mean = has_zero_experts, real_mean
        self.rng = np.random.default_rng(seed)
        p = popularity(spec, n_experts, self.rng)
        self.placement = place_experts(n_experts, ep, spec.redundant_experts, p)
        self.inv_p = (1.0 / p).astype(np.float32)
        self.kmax = min(top_k, n_experts)
        self.nodes = max(1, ep // min(gpus_per_node, ep))
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []   # k, chosen, pick
        self.copies_before = 0

    def upto(self, tokens: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(k, chosen, pick) of every chunk covering the first `tokens` tokens."""
        while len(self.chunks) * CHUNK_TOKENS < tokens:
            self.chunks.append(self._draw(len(self.chunks) * CHUNK_TOKENS))
        return self.chunks[:-(-tokens // CHUNK_TOKENS)]

    def _draw(self, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, spec, kmax = CHUNK_TOKENS, self.spec, self.kmax
        if self.has_zero:
            k = np.clip(np.rint(self.rng.normal(self.real_mean, spec.real_experts_std, n)), 0,
                        kmax).astype(int)
        else:
            k = np.full(n, kmax)
        valid = np.arange(kmax)[None, :] < k[:, None]
        if spec.popularity == "balanced":     # the q-th pick of an expert uses copy q mod copies
            chosen, pick = _balanced(valid, self.copies_before, self.n_experts, self.ep)
            self.copies_before += int(valid.sum())
        else:
            chosen = _sampled(race_keys(self.inv_p, n, self.rng), spec, self.nodes, kmax)
            pick = np.arange(start, start + n)[:, None] + np.arange(kmax)[None, :]
        return k, chosen, pick


@lru_cache(maxsize=16)
def token_draws(spec: RoutingSpec, n_experts: int, top_k: int, has_zero_experts: bool,
                real_mean: float, ep: int, gpus_per_node: int, seed: int) -> _TokenDraws:
    """The shared per-token draws of one routing setup (memoised per process)."""
    return _TokenDraws(spec, n_experts, top_k, has_zero_experts, real_mean, ep, gpus_per_node,
                       seed)


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

    t_expert = np.zeros((ep, ep))
    t_gpu = np.zeros((ep, ep))
    t_node = np.zeros((ep, nodes))
    expert_load = np.zeros(n_experts)
    copy_load = np.zeros(copy_table.shape)
    real_sum = real_sq = 0.0
    total = ep * tokens_per_rank
    sampled = min(total, MAX_SAMPLED_TOKENS)
    exact = sampled == total
    tok0 = draws_of(micro_batch, tokens_per_rank, ep) * total   # this micro-batch's first token
    for c, (k, chosen, pick) in enumerate(draws.upto(tok0 + sampled)):
        start = c * CHUNK_TOKENS
        lo, hi = max(start, tok0), min(start + CHUNK_TOKENS, tok0 + sampled)
        if lo >= hi:
            continue
        k, chosen, pick = k[lo - start:hi - start], chosen[lo - start:hi - start], \
            pick[lo - start:hi - start]
        tok = np.arange(lo, hi) - tok0
        src = tok // tokens_per_rank if exact else tok % ep
        real_sum += k.sum()
        real_sq += (k.astype(float) ** 2).sum()
        valid = np.arange(draws.kmax)[None, :] < k[:, None]
        copy_idx = pick % n_copies[chosen]
        dst = copy_table[chosen, copy_idx]                               # [n, kmax] EP rank
        s = np.broadcast_to(src[:, None], dst.shape)
        np.add.at(t_expert, (s[valid], dst[valid]), 1.0)
        np.add.at(expert_load, chosen[valid], 1.0)
        np.add.at(copy_load, (chosen[valid], copy_idx[valid]), 1.0)
        # deduplicate per destination GPU and per destination node
        dsts = np.where(valid, dst, -1)
        dsts.sort(axis=1)
        first = np.ones_like(dsts, dtype=bool)
        first[:, 1:] = dsts[:, 1:] != dsts[:, :-1]
        m = first & (dsts >= 0)
        np.add.at(t_gpu, (s[m], dsts[m]), 1.0)
        dn = np.where(dsts >= 0, dsts // g, -1)
        dn.sort(axis=1)
        first_n = np.ones_like(dn, dtype=bool)
        first_n[:, 1:] = dn[:, 1:] != dn[:, :-1]
        mn = first_n & (dn >= 0)
        np.add.at(t_node, (s[mn], dn[mn]), 1.0)
    if not exact:
        # destinations do not depend on the source rank: pool the sample into per-token
        # expectations and give every source rank its tokens_per_rank tokens' worth
        per_token = tokens_per_rank / sampled
        t_expert = np.repeat(t_expert.sum(axis=0, keepdims=True) * per_token, ep, axis=0)
        t_gpu = np.repeat(t_gpu.sum(axis=0, keepdims=True) * per_token, ep, axis=0)
        t_node = np.repeat(t_node.sum(axis=0, keepdims=True) * per_token, ep, axis=0)
        expert_load = expert_load * (total / sampled)
    mean = real_sum / sampled
    std = float(np.sqrt(max(real_sq / sampled - mean ** 2, 0.0)))
    used = (copy_load > 0) & (copy_table >= 0)
    active = np.bincount(copy_table[used], minlength=ep).astype(float)
    return RoutingResult(tokens_per_rank=tokens_per_rank, rank_rows=t_expert.sum(axis=0),
                         expert_load=expert_load, t_expert=t_expert, t_gpu=t_gpu,
                         t_node=t_node, real_mean=float(mean), real_std=std,
                         placement=placement, active_slots=active)
