"""Two-batch overlap as serving runtimes issue it: each micro-batch's layer cut into stages at
fixed yield points, the two micro-batches' stages interleaved on one compute stream.

Source: SGLang's two-batch overlap (`python/sglang/srt/operations_strategy.py`,
`_compute_moe_deepseek_blog_decode` / `_compute_moe_deepseek_blog_prefill`, and
`operations.execute_overlapped_operations`), its reproduction of DeepSeek's published inference
overlap (DeepSeek "Day 6" inference system overview). Micro-batch A runs `delta` stages ahead,
then A and B alternate one stage each. A stage boundary is a yield; the DeepEP receive hooks
(dispatch_b, combine_b) block the compute stream until the data is in, so work issued after a
wait cannot start before the collective it waits for ends.

Decode (delta 2), per MoE layer: [attention projections] | [attention core, output projection,
router] | [permute + dispatch issue, shared expert] | [experts, combine issue] | [combine wait] |
[unpermute, residual + the next layer's first stage]. Prefill (delta 0): [attention, router,
permute + dispatch issue] | [experts, combine issue] | [shared expert, combine wait, unpermute,
residual + the next layer's first stage]. Dense layers, the LM head and MTP carry no yields.

Only conventional layers (one attention block, then the MoE) have a published stage plan:
`stage_orders` returns None for graphs with other layers (shortcut layers) or other phases
(training), and the caller keeps its work-conserving order.
"""
from __future__ import annotations

from typing import Callable

from simulator.graph.ops import Op

# role of an op in a layer -> (stage within the layer, order inside the stage)
DECODE_STAGES = {"attn.qkv_proj": (0, 0), "attn.core": (1, 0), "attn.o_proj": (1, 1),
                 "moe.router": (1, 2), "moe.permute": (2, 0), "moe.dispatch": (2, 1),
                 "moe.shared": (2, 2), "moe.experts": (3, 0), "moe.combine": (3, 1),
                 "moe.unpermute": (5, 0), "residual": (5, 1)}
DECODE_WAITS = {"moe.combine": (4, 0)}        # combine_b: a stage of its own
PREFILL_STAGES = {"attn.qkv_proj": (0, 0), "attn.core": (0, 1), "attn.o_proj": (0, 2),
                  "moe.router": (0, 3), "moe.permute": (0, 4), "moe.dispatch": (0, 5),
                  "moe.experts": (1, 0), "moe.combine": (1, 1), "moe.shared": (2, 0),
                  "moe.unpermute": (2, 2), "residual": (2, 3)}
PREFILL_WAITS = {"moe.combine": (2, 1)}       # after the shared expert, before the output
PLANS = {"decode": (DECODE_STAGES, DECODE_WAITS, 5, 2),      # stages, waits, stride, delta
         "prefill": (PREFILL_STAGES, PREFILL_WAITS, 2, 0)}


def role(op: Op) -> str:
    """An op's name without its micro-batch prefix and layer: 'moe.dispatch', 'residual' ..."""
    name = op.name.split(".", 1)[1] if op.name.startswith("mb") else op.name
    return name.split(".", 1)[1]


def stage_orders(ops: list[Op], phase: str, is_comm: Callable[[Op], bool]
                 ) -> tuple[list[str], list[str], dict[str, list[str]]] | None:
    """(compute issue order, comm issue order, waits) of a two-micro-batch graph whose ops are in
    topological order; waits maps a compute op to the collectives the stream waits for just
    before issuing it. None when no published stage plan covers the graph."""
    if phase not in PLANS:
        return None
    stages, waits, stride, delta = PLANS[phase]
    moe_layers = {o.layer for o in ops if o.kind == "grouped_gemm"}
    roles = [role(o) if o.layer in moe_layers else "" for o in ops]
    if any(r and r not in stages for r in roles):
        return None                                 # shortcut layers, chunked MoE ...
    first: dict[int, int] = {}                     # each layer's first stage
    stage = 0
    for layer in sorted({o.layer for o in ops}):
        first[layer] = stage
        stage += stride if layer in moe_layers else 0
    keyed = []
    for pos, (o, r) in enumerate(zip(ops, roles)):
        st, k = stages[r] if r else (0, 0)
        lag = delta if o.micro_batch else 0
        keyed.append(((first[o.layer] + st + lag, o.micro_batch, o.layer, k, pos), o, False))
        if r in waits:
            st, k = waits[r]
            keyed.append(((first[o.layer] + st + lag, o.micro_batch, o.layer, k, pos), o, True))
    keyed.sort(key=lambda x: x[0])
    compute, comm, wait_for, pending = [], [], {}, []
    for _, o, is_wait in keyed:
        if is_wait:
            pending.append(o.name)
        elif is_comm(o):
            comm.append(o.name)
        else:
            if pending:
                wait_for[o.name], pending = pending, []
            compute.append(o.name)
    return compute, comm, wait_for
