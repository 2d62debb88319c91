"""What an eager (unfused, uncaptured) runtime adds to each op: its kernel launches and the
memory passes of the elementwise work a fused runtime folds into neighbouring kernels.

Counts follow a plain eager implementation of each block, one kernel per framework op (the
companion executor, executor/model.py and executor/runner.py, is one): RMSNorm is six kernels
(square, mean, add, rsqrt, two multiplies) that move about seven copies of their input; rotary
embedding is thirteen; SwiGLU's activation is two (SiLU, multiply) over the intermediate.
Sizes are elements; the builder multiplies by the activation width. Only profiles that declare
`eager_op_overhead_s` price any of this (hardware.compute_time_s).
"""
from __future__ import annotations

from dataclasses import dataclass

NORM_KERNELS, NORM_PASSES = 6, 7          # x^2, mean, +eps, rsqrt, x*r, *w
ROPE_KERNELS, ROPE_PASSES = 13, 10        # positions, angles, cos, sin, 4 muls, add/sub, cat
RESIDUAL_PASSES = 3                       # read two, write one


@dataclass(frozen=True)
class Extra:
    """Kernel launches and unfused elementwise elements moved, on top of the main kernel."""

    kernels: int
    elems: float
    gathers: float = 0.0      # elements moved by indexed row copies, of the op's bytes or elems


def norm(n: float) -> Extra:
    """RMSNorm over n elements."""
    return Extra(NORM_KERNELS, NORM_PASSES * n)


def rope(n: float) -> Extra:
    """Rotary embedding over n elements."""
    return Extra(ROPE_KERNELS, ROPE_PASSES * n)


def total(*parts: Extra) -> Extra:
    """Sum of several extras."""
    return Extra(sum(p.kernels for p in parts), sum(p.elems for p in parts),
                 sum(p.gathers for p in parts))


def qkv_proj(t: float, h: int, q_lora: int, gemms: int) -> Extra:
    """Pre-attention norm, the projections' own launches, and the q low-rank norm."""
    parts = [norm(t * h), Extra(gemms - 1, 0.0)]
    if q_lora:
        parts.append(norm(t * q_lora))
    return total(*parts)


def mla_core(t: float, heads: int, kv_lora: int, nope: int, rope_d: int, v: int) -> Extra:
    """kv norm, kv_b, rope on q and the shared k part, the q and k concatenations, SDPA and
    the output reshape (the SDPA's own work is the attention kernel)."""
    qk = nope + rope_d
    return total(norm(t * kv_lora), Extra(1, 0.0), rope(t * rope_d), rope(t * heads * rope_d),
                 Extra(2, 2 * t * heads * qk * 2), Extra(1, 2 * t * heads * v))


def gqa_core(t: float, heads: int, kv_heads: int, hd: int) -> Extra:
    """Rope on q and k, repeating k and v up to the query heads, and the output reshape."""
    return total(rope(t * heads * hd), rope(t * kv_heads * hd),
                 Extra(2, 2 * 2 * t * heads * hd), Extra(1, 2 * t * heads * hd))


def residual_after(t: float, h: int) -> Extra:
    """The residual add that takes a block's output."""
    return Extra(1, RESIDUAL_PASSES * t * h)


def swiglu(t: float, h: int, inter: float, pre_norm: bool, residual: bool) -> Extra:
    """SiLU and multiply over the intermediate and the second GEMM's launch; the block's
    residual add and pre-norm where they belong to it."""
    parts = [Extra(3, 5 * t * inter)]
    if residual:
        parts.append(residual_after(t, h))
    if pre_norm:
        parts.append(norm(t * h))
    return total(*parts)


def router(t: float, h: int, n_experts: int) -> Extra:
    """The MoE pre-norm, then softmax, bias add, top-k and the gate gather."""
    return total(norm(t * h), Extra(4, 5 * t * n_experts))


def permute(routed: float, h: int) -> Extra:
    """Masks, nonzero, argsort, index gathers and the concatenation of the send buffer; the
    row gather x[tok] is the op's own bytes."""
    return Extra(13, 2 * routed * h, gathers=2 * routed * h)


def experts(routed: float, h: int, inter: int, local_experts: float) -> Extra:
    """Per local expert: a mask, nonzero, the row gather, SwiGLU's four kernels and the scatter
    back (the first GEMM is the op itself); gathers and scatters move the routed rows twice."""
    return Extra(1 + 8 * int(round(local_experts)), 4 * routed * h + 5 * routed * inter,
                 gathers=4 * routed * h)


def split_exchange() -> Extra:
    """Dispatch first swaps the row counts per destination: a second, tiny collective."""
    return Extra(1, 0.0)


def unpermute(t: float, routed: float, h: int) -> Extra:
    """Zero-expert mask and gates, the identity experts' scaled copy of the input, the gate
    gather and the routed rows' multiply; the index_add back is the op's own bytes (it copies
    whole rows: streaming, not a gather)."""
    return Extra(6, 2 * t * h + 2 * routed * h)


def join(t: float, h: int) -> Extra:
    """The second add of a layer's closing residual (routed output, then the shared one)."""
    return Extra(1, 2 * t * h)
