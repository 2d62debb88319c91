"""The backward pass of a forward op graph, and the FP8 casts a training GEMM's inputs need:
input- and weight-gradient GEMMs with their own shapes and bytes, edges reversed."""
from __future__ import annotations

from dataclasses import replace

import networkx as nx

from simulator.graph.ops import Op
from simulator.schema import Precision

# A weight gradient accumulates into the main gradient (Megatron's gradient-accumulation fusion;
# torch's autograd likewise adds into .grad): it reads and writes its bytes per weight where the
# forward read the weight once; FP32 (4 bytes) unless the training block's grad_bytes says else.
MAIN_GRAD_BYTES = 4.0
# FlashAttention's backward recomputes QK^T and computes dV, dP, dQ and dK: five matmuls of the
# forward's size against the forward's two (Dao, FlashAttention-2, 2023, s3): 2.5x its FLOPs
ATTENTION_BACKWARD_FLOPS = 2.5
# Training FP8 (Transformer Engine, torchao float8): every GEMM input is quantised twice, once
# row-wise for the GEMM that reads it along K and once column-wise (transposed) for the GEMM of
# the other pass that reads it along M: read 2 bytes, write 1 + 1. Per-tensor current scaling
# first reads the tensor once more for its amax.
CAST_BYTES = {"block": 4.0, "tensor": 6.0}


def fp8_cast_bytes(op: Op, scaling: str, inputs: float) -> float:
    """HBM bytes of quantising `inputs` elements of a training FP8 GEMM's activations
    (CAST_BYTES per element for the recipe's scaling); none for other precisions."""
    return inputs * CAST_BYTES[scaling] if op.precision == "fp8" else 0.0


def gemm_shapes(op: Op) -> tuple[float, tuple[tuple[float, float], ...]]:
    """(rows, (N, K) of each GEMM) of a forward GEMM op; a grouped expert GEMM's rows are its
    routed rows on this rank (its up/gate and down GEMMs from the measured key's widths)."""
    if op.kind == "grouped_gemm" and op.moe_key:
        h, inter, _, _, moe_tp = op.moe_key[:5]
        rows = op.flops / (2 * sum(op.gemm_nk)) if op.gemm_nk else 0.0
        return rows, ((2 * inter / moe_tp, h), (h, inter / moe_tp))
    return op.m, op.gemm_dims


def backward_gemms(op: Op, prec: Precision, grad_bytes: float = MAIN_GRAD_BYTES) -> tuple[Op, Op]:
    """The input-gradient and weight-gradient GEMMs of a forward GEMM of M rows and (N, K)
    weights: dX[M, K] = dY W (dims (K, N)), dW[N, K] = dY^T X (M = N, inner dimension the M
    tokens); each the forward's FLOPs. The weight gradient reads the two activations and
    accumulates into the main gradient (read + write, `grad_bytes` an element) instead of
    reading the weight.
    Under FP8 the forward's input X was cast in the forward; the output gradient dY is cast
    for both backward GEMMs (priced on the input gradient)."""
    rows, dims = gemm_shapes(op)
    d_out = rows * sum(n for n, _ in dims)                # elements of dY
    weights = op.weight_bytes / prec.weight_bytes         # weight elements read
    grad = weights * 2 * grad_bytes
    d = replace(op, name=f"{op.name}.dgrad", tags=op.tags + ("dgrad",),
                gemm_dims=tuple((k, n) for n, k in op.gemm_dims),
                cast_bytes=fp8_cast_bytes(op, prec.fp8_scaling, d_out))
    w = replace(op, name=f"{op.name}.wgrad", tags=op.tags + ("wgrad",),
                bytes=op.bytes - op.weight_bytes + grad, weight_bytes=grad,
                gemm_dims=tuple((k, op.m) for _, k in op.gemm_dims),
                gemm_rows=tuple(n for n, _ in op.gemm_dims), cast_bytes=0.0)
    return d, w


def build_backward(forward: nx.DiGraph, prec: Precision, into: nx.DiGraph | None = None,
                   grad_bytes: float = MAIN_GRAD_BYTES) -> nx.DiGraph:
    """The backward pass of a forward graph: edges reversed, GEMMs split into dgrad + wgrad
    with their own shapes (`backward_gemms`; added to `into` when given).

    GEMM FLOPs double (input gradient and weight gradient, each the forward's), attention's
    backward does ATTENTION_BACKWARD_FLOPS times its forward's FLOPs over twice its bytes,
    collectives move the same bytes the other way. Weight
    gradients hang off the critical path, ready for zero-bubble schedules.
    """
    g = nx.DiGraph() if into is None else into
    names: dict[str, str] = {}
    for name, data in forward.nodes(data=True):
        op: Op = data["op"]
        if op.kind in ("gemm", "grouped_gemm"):
            d, w = backward_gemms(op, prec, grad_bytes)
            g.add_node(d.name, op=d)
            g.add_node(w.name, op=w)
            names[name] = d.name
        elif op.kind == "attention":
            b = replace(op, name=f"{op.name}.bwd", flops=ATTENTION_BACKWARD_FLOPS * op.flops,
                        bytes=2 * op.bytes, tags=op.tags + ("bwd",))
            g.add_node(b.name, op=b)
            names[name] = b.name
        else:
            b = replace(op, name=f"{op.name}.bwd")
            g.add_node(b.name, op=b)
            names[name] = b.name
    for src, dst in forward.edges():
        g.add_edge(names[dst], names[src])
        wgrad = f"{src}.wgrad"
        if wgrad in g:  # weight gradient needs the output gradient flowing into src
            g.add_edge(names[dst], wgrad)
    return g
