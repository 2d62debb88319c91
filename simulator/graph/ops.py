"""The op vocabulary every later stage reads: an Op (one kernel), a pass's per-device Shape,
the op classes that carry a compute precision, and a graph's ops in a deterministic topological
order. graph/model.py builds op graphs of these; pricing, schedules and the engine consume them.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Literal

import networkx as nx

from simulator.errors import MoesimError
from simulator.schema import Phase

OpKind = Literal["gemm", "grouped_gemm", "attention", "elementwise", "collective"]
COMPUTE_KINDS = ("gemm", "grouped_gemm", "attention", "elementwise")


@dataclass
class Op:
    """One kernel: what it computes and moves. Durations come from hardware.py."""

    name: str
    kind: OpKind
    flops: float = 0.0
    bytes: float = 0.0              # HBM bytes (compute) or payload bytes sent (collective)
    layer: int = -1
    block: str = ""                 # attn0, ffn0, moe, head, mtp ...
    weight_bytes: float = 0.0       # weight reads inside `bytes` (GEMM floor)
    m: float = 0.0                  # GEMM rows, tokens per expert (grouped GEMMs), or tokens
    #   per rank (an EP dispatch or combine)
    collective: str = ""            # all_to_all | all_gather | reduce_scatter
    group: str = ""                 # ep | tp
    micro_batch: int = 0
    scores: float = 0.0             # attention: query x key scores (softmax work)
    kernels: int = 1                # launches in an eager runtime (simulator/unfused.py)
    aux_bytes: float = 0.0          # unfused elementwise bytes an eager runtime adds
    gather_bytes: float = 0.0       # of bytes + aux_bytes: indexed row copies (eager pricing)
    gemm_nk: tuple[float, ...] = ()  # N x K weight elements of each GEMM (per expert if grouped)
    share: float = 1.0              # MoE token chunk: its share of the micro-batch's routed copies
    precision: str = "bf16"         # compute precision (GEMMs, attention core): bf16 | fp8
    kernel: str = ""                # attention core: mla_decode | gqa_decode | mla_prefill ...;
    #   EP dispatch / combine, and the experts between them: low_latency | normal
    seqs: float = 0.0               # attention core: sequences in the batch
    kv_len: float = 0.0             # attention core: KV length each query attends to
    gemm_dims: tuple[tuple[float, float], ...] = ()   # (N, K) of each GEMM, as gemm_nk lists
    #   them (an MLA core: its kv_b expansion in prefill); the measured GEMM tables' shape
    moe_key: tuple = ()             # grouped GEMM: (hidden, expert width, top_k, experts,
    #   moe_tp, ep, tokens per routed row, group): the measured MoE tables' key, and how their
    #   token axis counts this op's routed rows (group: the tokens every rank holds, a rank's
    #   rows x ep / top-k; otherwise the rank's own tokens, its rows / top-k)
    attn_key: tuple = ()            # attention core: GQA (heads, kv_heads, head_dim) per GPU,
    #   MLA (heads per GPU,): the measured attention tables' key
    attn_len: float = 0.0           # attention core: the measured tables' length axis (decode:
    #   the KV length; prefill: the prompt length with this pass's causal pairs, sqrt(2 pairs))
    gemm_rows: tuple[float, ...] = ()   # M of each GEMM of gemm_dims where it is not `m` (a
    #   weight gradient: dW[N, K] = dY^T X has M = N and the tokens as its inner dimension)
    cast_bytes: float = 0.0         # training FP8: HBM bytes of the quantise passes its inputs
    #   need before the GEMM (separate memory-bound kernels, graph/backward.fp8_cast_bytes)
    tags: tuple[str, ...] = field(default_factory=tuple)

    def copy(self) -> Op:
        """A shallow copy (every field holds an immutable value), cheaper than copy.copy."""
        c = object.__new__(Op)
        c.__dict__.update(self.__dict__)
        return c

    def in_layer(self, layer: int) -> Op:
        """This op as its copy in another layer: its name's layer tag and its index changed
        (itself when the layer is its own)."""
        if self.layer == layer:
            return self
        out = self.copy()
        out.name, out.layer = self.name.replace(f"L{self.layer}.", f"L{layer}.", 1), layer
        return out

    @property
    def is_comm(self) -> bool:
        """True for collectives (they run on links, not SMs)."""
        return self.kind == "collective"


def active_experts(local: float, n_experts: int, k: float, tokens: float) -> float:
    """Expected local experts that receive at least one of `tokens` tokens under uniform
    routing (each token picks k of n_experts): local x (1 - (1 - k / n)^tokens). A grouped
    GEMM reads the weights of those experts only (an expert with no rows is skipped)."""
    return local * (1.0 - (1.0 - min(k / n_experts, 1.0)) ** tokens)


@dataclass(frozen=True)
class Shape:
    """Per-device shapes of one forward (or backward) pass."""

    phase: Phase
    sequences: int          # sequences on this device
    query_tokens: int       # new tokens per sequence in this pass (decode: 1 + drafts)
    context: int            # tokens already in the KV cache (decode) or prompt length
    cached: int = 0         # prefill: prompt tokens found in the prefix cache (not computed)

    def causal_pairs(self) -> float:
        """Query-key pairs per sequence of a prefill pass: its query_tokens are a share of the
        prompt's computed tokens (context - cached), each attending to the cached prefix and
        causally to the computed tokens before it."""
        return self.query_tokens * (self.cached + (self.context - self.cached + 1) / 2)

    @property
    def tokens(self) -> int:
        """Tokens through each layer on this device."""
        return self.sequences * self.query_tokens


def compute_class(op: Op) -> str | None:
    """The op class whose compute precision prices `op` (None: the router, memory ops)."""
    if op.kind == "attention":
        return "attention"
    if op.kind == "grouped_gemm" or op.name.endswith("moe.shared"):
        return "expert_gemm"
    if op.kind == "gemm":
        if op.name.endswith("lm_head"):
            return "lm_head"
        return None if op.name.endswith("moe.router") else "dense_gemm"
    return None


def graph_ops(g: nx.DiGraph) -> list[Op]:
    """Ops of a graph in a deterministic topological order: of the ops whose inputs are all
    placed, the one added to the graph first (networkx's lexicographical topological sort keyed
    by insertion order, done on integer indices: the schedules call it on every step)."""
    names = list(g.nodes)
    index = {n: i for i, n in enumerate(names)}
    waiting = [0] * len(names)
    succ = [[index[s] for s in g.successors(n)] for n in names]
    for outs in succ:
        for j in outs:
            waiting[j] += 1
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in succ[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(names):
        raise MoesimError("schedule", "the op graph has a dependency cycle",
                          "report this as a bug with the workload")
    ops = nx.get_node_attributes(g, "op")
    return [ops[names[i]] for i in order]
