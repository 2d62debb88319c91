"""Op prices from the runtime's measured kernel tables (simulator/kernels), wherever a table holds
the op's class and key; the caller falls back to the roofline and efficiency tables otherwise.

What each op class reads (the tables' axes and keys are aiconfigurator-core's, see
kernels/aiconfigurator.py):
- a GEMM op: each of its GEMMs at (M, N, K) in its dtype (BF16; FP8 block-scaled or per-tensor as
  the workload's precision.fp8_scaling says), summed. The FP8 and FP4 tables time the engine's
  linear module on a BF16 input, its activation quantise kernel included (aiconfigurator's
  collectors: TensorRT-LLM's Linear.forward, vLLM's RowParallelLinear, SGLang's per-token or
  per-group quantise before its scaled GEMM), so nothing is added for it. TensorRT-LLM's
  per-tensor FP8 tables quantised dynamically, where it serves static-scaled checkpoints: its
  measured dynamic-minus-static quantisation (the dynamic_scale table) is taken off;
- a grouped expert GEMM: the whole MoE kernel at (hidden, width, top-k, experts, MoE TP, EP),
  balanced tokens. The tables' token axis counts the tokens every rank of the EP group holds
  (a rank with 1/EP of the experts computes top-k x tokens / EP rows of them). Under
  tensor-parallel attention a rank does hold them all, and the lookup is at the batch's tokens
  (its routed rows x EP / real experts per token), lowered to the tokens that reach as many
  experts as random routing does. Where an all-to-all brings a rank only its rows: the kernel
  the runtime runs there where measured (SGLang's DeepGEMM behind DeepEP, by EP and the group's
  tokens), else the EP-1 table at the tokens that give every expert the rank's rows per expert,
  over EP. A MoE TP without a table of its own reads the TP-1 table at EP x TP. Never faster
  than its FLOPs at the peak;
- an attention core: GQA or MLA, context or generation, by (sequences, length) at its heads,
  KV-head count, head size and KV dtype; MLA decode adds its two absorbed BMMs, MLA prefill its
  kv_b expansion GEMM;
- a tensor-parallel all-reduce: the runtime's custom all-reduce (NCCL's where absent), all-gather
  and reduce-scatter: NCCL's, by bytes and GPUs;
- an EP dispatch or combine: DeepEP's low-latency or normal kernel by tokens per rank and nodes
  (pricing/traffic.py).
Every answer says whether it was measured, interpolated or extrapolated (kernels/grid.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.engine.streams import CommDemand
from simulator.errors import MoesimError
from simulator.graph.ops import Op
from simulator.kernels import store
from simulator.graph.backward import ATTENTION_BACKWARD_FLOPS
from simulator.kernels.grid import EXTRAPOLATED, INTERPOLATED, MEASURED, KernelGrid, Lookup
from simulator.kernels.store import KernelSet, version_key
from simulator.loading import PROFILES_DIR
from simulator.pricing.peaks import peak_flops
from simulator.schema import HardwareProfile, ParallelPlan, Precision, RuntimeSpec

RANK = {MEASURED: 0, INTERPOLATED: 1, EXTRAPOLATED: 2}
OUTPUT_BYTES = 2.0               # GEMM outputs are BF16


@dataclass(frozen=True)
class MeasuredPricing:
    """A runtime's measured tables and the workload choices that pick inside them."""

    kernels: KernelSet
    fp8_gemm: str                # fp8_block | fp8: the GEMM tables FP8 GEMMs read
    kv_dtype: str                # bf16 | fp8: the attention tables' KV-cache dtype
    four_bit_weights: bool       # 4-bit expert weights: the w4a16 MoE tables


def runtimes(prof: HardwareProfile) -> list[str]:
    """'framework version' of each runtime the profile has measured tables for."""
    return [f"{m.framework} {m.version}" for m in prof.measured_kernels]


def select(prof: HardwareProfile, runtime: RuntimeSpec, precision: Precision) -> \
        MeasuredPricing | None:
    """The measured tables the workload's runtime picks on this profile (None: the profile has
    none and the workload names no runtime); an error naming the runtimes that have tables
    when the named one has none."""
    refs = prof.measured_kernels
    fw, ver = runtime.framework, runtime.version
    if not refs and fw is None and ver is None:
        return None
    pick = sorted((r for r in refs if (fw is None or r.framework == fw)
                   and (ver is None or r.version == ver)), key=lambda r: version_key(r.version))
    if fw is None and ver is None:
        pick = [r for r in pick if r.framework == "sglang"][-1:] or refs[:1]
    elif ver is None:
        pick = pick[-1:]
    if not pick:
        named = " ".join(v for v in (fw, ver) if v)
        have = ", ".join(runtimes(prof)) or "none"
        field = "runtime.version" if ver and any(r.framework == fw or fw is None
                                                 for r in refs) else "runtime.framework"
        raise MoesimError(field,
                          f"profile {prof.name} has no measured kernel tables for {named}",
                          f"choose one it has ({have}), or leave runtime.framework and "
                          "runtime.version unset")
    ref = pick[0]
    folder = prof.folder or PROFILES_DIR
    ks = store.load(folder / ref.file)
    return MeasuredPricing(ks, "fp8_block" if precision.fp8_scaling == "block" else "fp8",
                           "fp8" if precision.kv_bytes <= 1 else "bf16",
                           precision.weight_bytes < 1)


def worst(parts: list[Lookup]) -> Lookup:
    """The sum of `parts`' seconds, labelled with the least measured part's source."""
    src = max((p.source for p in parts), key=RANK.__getitem__)
    outside = "; ".join(p.outside for p in parts if p.outside)
    return Lookup(sum(p.seconds for p in parts), src, outside)


# -- GEMMs ------------------------------------------------------------------------------------
ELEMENT_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5}


def _gemm_grid(ms: MeasuredPricing, precision: str) -> KernelGrid | None:
    if precision == "fp4":
        return ms.kernels.get("gemm", ("fp4",))
    if precision == "fp8":
        return ms.kernels.get("gemm", (ms.fp8_gemm,)) or ms.kernels.get("gemm", ("fp8",))
    return ms.kernels.get("gemm", ("bf16",))


def gemm_lookup(prof: HardwareProfile, precision: str, m: float,
                dims: tuple[tuple[float, float], ...], rows: tuple[float, ...] = ()
                ) -> Lookup | None:
    """The measured time of GEMMs of M rows (or each its own `rows`) and these (N, K), run one
    after another (each with its input's quantisation, which the tables hold)."""
    ms = prof.measured
    grid = _gemm_grid(ms, precision) if ms is not None and dims and m > 0 else None
    if grid is None:
        return None
    ms_rows = rows or (m,) * len(dims)
    peak = peak_flops(prof, precision)
    eb = ELEMENT_BYTES[precision]
    bw = prof.hbm_bandwidth_Bps.value

    def roofline(x: tuple[float, ...]) -> float:
        mm, n, k = x
        return max(2 * mm * n * k / peak, ((mm + n) * k * eb + mm * n * OUTPUT_BYTES) / bw)
    parts = [grid.lookup((mm, n, k), roofline) for mm, (n, k) in zip(ms_rows, dims)]
    dyn = ms.kernels.get("dynamic_scale", ("fp8",)) \
        if precision == "fp8" and ms.fp8_gemm == "fp8" else None
    if dyn is not None:        # TensorRT-LLM's tables quantised dynamically; it serves static
        def none(x: tuple[float, ...]) -> float:
            return 0.0
        parts = [static_part(p, dyn.lookup((mm, k), none), roofline((mm, n, k)))
                 for p, mm, (n, k) in zip(parts, ms_rows, dims)]
    return worst(parts)


def static_part(gemm: Lookup, dynamic: Lookup, floor: float) -> Lookup:
    """A GEMM measured with dynamic quantisation, less that quantisation's measured extra
    cost over static (never below the roofline); labelled with the less measured of the two."""
    return worst([Lookup(max(gemm.seconds - dynamic.seconds, floor), gemm.source,
                         gemm.outside), Lookup(0.0, dynamic.source, dynamic.outside)])


# -- grouped expert GEMMs ---------------------------------------------------------------------
def _moe_grid(ms: MeasuredPricing, op: Op, moe_tp: int) -> KernelGrid | None:
    h, inter, topk, experts = op.moe_key[:4]
    if op.precision == "fp4":
        dtypes = ["fp4"]
    elif ms.four_bit_weights:
        dtypes = ["w4a16_mxfp4", "int4_wo"]
    else:
        dtypes = [ms.fp8_gemm, "fp8", "fp8_block"] if op.precision == "fp8" else ["bf16"]
    for d in dtypes:
        grid = ms.kernels.get("moe", (d, "balanced", h, inter, topk, experts, moe_tp))
        if grid is not None:
            return grid
    return None


def moe_lookup(prof: HardwareProfile, op: Op, rows: float) -> Lookup | None:
    """The measured time of the grouped expert GEMM `op` with `rows` routed rows here."""
    ms = prof.measured
    if ms is None or not op.moe_key:
        return None
    h, inter, topk, experts, moe_tp, ep, per_row, group = op.moe_key
    grid, read_ep, note = _moe_grid(ms, op, moe_tp), ep, ""
    if grid is None and moe_tp > 1:
        # MoE TP t over EP e has each rank hold every expert of its EP share at 1/t of its
        # width; EP t e at TP 1 has it hold 1/t of those experts whole: the same FLOPs and
        # weight bytes per rank for the same tokens, so the TP-1 table is read at EP t e
        grid, read_ep = _moe_grid(ms, op, 1), ep * moe_tp
        note = f"MoE TP {moe_tp} x EP {ep} read as EP {read_ep}"
    if grid is None:
        return None
    if rows <= 0:                                  # no routed row here: no expert work
        return Lookup(0.0, MEASURED)
    w_exp = 3 * h * inter / moe_tp
    peak, bw = peak_flops(prof, op.precision), prof.hbm_bandwidth_Bps.value
    byte_w = 0.5 if ms.four_bit_weights else ELEMENT_BYTES[op.precision]
    split = moe_tp if note else 1                # the table's expert: whole, split x our width

    def cost(r: float, n_ep: float, w: float) -> float:
        """A rank's r rows over its experts / n_ep experts of w weights each, at the roofline."""
        busy = min(experts / n_ep, r)
        return max(2 * r * w / peak, (busy * w * byte_w + r * 2 * h * 2.0) / bw)

    def roofline(x: tuple[float, ...]) -> float:
        n_ep, tokens = x                         # group tokens N: a rank's rows k N / EP
        r = tokens * ep / (per_row * n_ep) if group else tokens / per_row / split
        return cost(r, n_ep, w_exp * split)
    tokens = rows * per_row
    if group and op.m > 0:
        # the tables route balanced: N tokens' picks reach min(local experts, k N / EP)
        # experts, as many as N tokens can; the model routes at random and reaches fewer
        # (ops.active_experts), whose weights are what a small batch reads: the table is read
        # at the tokens that reach as many as the model's
        reached = min(experts / read_ep, tokens * topk / read_ep)
        active = routed_rows(op) / op.m / split
        if reached > active > 0:
            tokens *= active / reached
    behind = _deepep_grid(ms, op) if not group and not note else None
    if behind is not None:
        # SGLang's experts behind DeepEP, measured by (EP, the group's tokens) at uniform
        # random routing: the group's tokens are a rank's rows x EP / top-k
        hit = behind.lookup((ep, tokens * ep),
                            lambda x: cost(x[1] / (per_row * x[0]), x[0], w_exp))
    elif group:
        hit = grid.lookup((read_ep, tokens), roofline)
    else:
        one = grid.lookup((1, tokens * read_ep), roofline)
        hit = Lookup(one.seconds / read_ep, one.source, one.outside)
    if note:                                     # not the measured key: never 'measured'
        hit = Lookup(hit.seconds, EXTRAPOLATED, "; ".join(x for x in (hit.outside, note) if x))
    floor = 2 * rows * w_exp / peak              # no kernel outruns the datasheet peak
    return hit if hit.seconds >= floor else Lookup(floor, hit.source, hit.outside)


def _deepep_grid(ms: MeasuredPricing, op: Op) -> KernelGrid | None:
    """The table of the experts' kernel behind DeepEP (SGLang's DeepGEMM: context after the
    normal dispatch, generation after the low-latency one), where the runtime measured it."""
    phase = {"normal": "context", "low_latency": "generation"}.get(op.kernel)
    if phase is None:
        return None
    h, inter, topk, experts, moe_tp = op.moe_key[:5]
    dtypes = [ms.fp8_gemm, "fp8_block", "fp8"] if op.precision == "fp8" else ["bf16"]
    for d in dtypes:
        grid = ms.kernels.get(f"moe_deepep_{phase}", (d, "uniform", h, inter, topk, experts,
                                                      moe_tp))
        if grid is not None:
            return grid
    return None


def routed_rows(op: Op) -> float:
    """A grouped expert GEMM's routed rows on this rank, from its FLOPs."""
    return op.flops / (2 * sum(op.gemm_nk)) if op.gemm_nk else 0.0


# -- attention --------------------------------------------------------------------------------
def attention_lookup(prof: HardwareProfile, op: Op) -> Lookup | None:
    """The measured time of an attention core (with MLA's absorbed BMMs or kv_b expansion)."""
    ms = prof.measured
    if ms is None or not op.attn_key or op.seqs <= 0 or op.attn_len <= 0:
        return None
    mla = op.kernel.startswith("mla")
    decode = op.kernel.endswith("decode")
    phase = "generation" if decode else "context"
    q = op.m / op.seqs if decode else 1.0          # MTP: each draft token a query row
    batch, length = op.seqs * max(q, 1.0), op.attn_len
    if mla:
        grid = ms.kernels.get(f"mla_{phase}", (ms.kv_dtype,) + op.attn_key)
    else:
        grid = None
        for dt in dict.fromkeys((op.precision, "bf16")):
            grid = grid or ms.kernels.get(f"gqa_{phase}", (dt, ms.kv_dtype) + op.attn_key +
                                          (0,))
    if grid is None:
        return None
    peak, bw = peak_flops(prof, op.precision), prof.hbm_bandwidth_Bps.value
    per_seq_flops = op.flops / op.seqs
    per_seq_bytes = op.bytes / op.seqs

    def roofline(x: tuple[float, ...]) -> float:
        b, n = x
        grow = n / length if decode else (n / length) ** 2
        return max(b * per_seq_flops * grow / peak, b * per_seq_bytes * (n / length) / bw)
    parts = [grid.lookup((batch, length), roofline)]
    if mla and decode:
        dt = "fp8" if op.precision in ("fp8", "fp4") else "bf16"
        for which in ("mla_gen_pre", "mla_gen_post"):
            bmm = ms.kernels.get("mla_bmm", (which, dt, op.attn_key[0])) or \
                ms.kernels.get("mla_bmm", (which, "bf16", op.attn_key[0]))
            if bmm is None:
                return None
            parts.append(bmm.lookup((op.m,), lambda x: x[0]))
    elif mla and op.gemm_dims:
        kv = gemm_lookup(prof, op.precision, op.seqs * op.kv_len, op.gemm_dims)
        if kv is None:
            return None
        parts.append(kv)
    return worst(parts)


def compute_lookup(op: Op, prof: HardwareProfile) -> Lookup | None:
    """A compute op's measured time, or None where no table holds its class and key."""
    if prof.measured is None:
        return None
    if op.kind == "gemm":
        return gemm_lookup(prof, op.precision, op.m, op.gemm_dims, op.gemm_rows)
    if op.kind == "grouped_gemm":
        return moe_lookup(prof, op, routed_rows(op))
    if op.kind == "attention":
        hit = attention_lookup(prof, op)
        if hit is not None and "bwd" in op.tags:    # the tables measure the forward kernel
            return Lookup(hit.seconds * ATTENTION_BACKWARD_FLOPS, EXTRAPOLATED,
                          f"attention backward: the measured forward x "
                          f"{ATTENTION_BACKWARD_FLOPS:g} (its FLOPs)")
        return hit
    return None


# -- collectives ------------------------------------------------------------------------------
def comm_lookup(op: Op, plan: ParallelPlan, prof: HardwareProfile) -> Lookup | None:
    """A tensor-parallel collective's measured time (all-reduce, all-gather, reduce-scatter)
    by its message size and GPUs, inside one node; None elsewhere."""
    ms = prof.measured
    if ms is None or op.group != "tp" or op.bytes <= 0:
        return None
    n = plan.attention_tp if op.collective == "all_reduce" else plan.tp
    if n < 2:
        return None
    if op.collective == "all_reduce":
        size = op.bytes * n / (2 * (n - 1))        # op.bytes: a ring's bytes sent per GPU
        grid = ms.kernels.get("all_reduce", (n,)) or ms.kernels.get("nccl", ("all_reduce", n))
    else:
        size = op.bytes * n / (n - 1)              # the gathered (or scattered) whole
        grid = ms.kernels.get("nccl", (op.collective, n))
    if grid is None:
        return None
    bw, lat = prof.nvlink.bandwidth_Bps.value, prof.nvlink.latency_s.value
    return grid.lookup((size,), lambda x: lat + x[0] / bw)


def measured_demand(op: Op, seconds: float, prof: HardwareProfile) -> CommDemand:
    """The CommDemand that takes `seconds` on NVLink with the link to itself: the op's bytes
    at the link's rate after a latency of the rest (or, when the measurement beats the link's
    rate, those bytes at the measured rate)."""
    bw = prof.nvlink.bandwidth_Bps.value
    transfer = op.bytes / bw
    if seconds >= transfer:
        return CommDemand(seconds - transfer, {"nvlink": op.bytes})
    return CommDemand(0.0, {"nvlink": seconds * bw})


def deepep_lookup(prof: HardwareProfile, kernel: str, nodes: int, hidden: int, top_k: int,
                  experts: int, tokens: float, bytes_per_token: float) -> \
        tuple[Lookup, Lookup] | None:
    """DeepEP's measured (dispatch, combine) time at `tokens` per rank, or None."""
    ms = prof.measured
    if ms is None or tokens <= 0:
        return None
    kind = "ll" if kernel == "low_latency" else "normal"
    key = (hidden, top_k, experts)
    d = ms.kernels.get(f"deepep_{kind}_dispatch", key)
    c = ms.kernels.get(f"deepep_{kind}_combine", key)
    if d is None or c is None:
        return None
    nvl, nic = prof.nvlink.bandwidth_Bps.value, prof.nic.bandwidth_Bps.value

    def roofline(x: tuple[float, ...]) -> float:     # the remote share leaves by the NIC
        n, t = x
        return t * top_k * bytes_per_token * (1 / nvl if n <= 1 else (n - 1) / n / nic)
    return d.lookup((nodes, tokens), roofline), c.lookup((nodes, tokens), roofline)


def nodes_of(ep: int, gpus_per_node: int) -> int:
    """Nodes an EP group spans."""
    return max(1, math.ceil(ep / gpus_per_node))
