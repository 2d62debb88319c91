"""ModelSpec + phase + shapes -> per-layer op graphs (networkx.DiGraph of graph.ops.Op).

One builder serves the conventional layer (attention -> MoE or dense FFN) and LongCat's
shortcut layer (MLA_0, FFN_0, MLA_1, FFN_1, with the MoE branch fed from MLA_0's output).
Work is per device: attention is data-parallel over sequences, dense FFNs are tensor-parallel
inside a node (all-gather before, reduce-scatter after when tp > 1), experts are expert-parallel.
With tensor-parallel attention (plan.attention_tp > 1) the GPUs of a TP group hold the same
tokens: each computes its share of the heads, of the dense FFN and of the experts (its EP
rank's experts, each split moe_tp ways), and every block ends in an all-reduce.
"""
from __future__ import annotations

import math

import networkx as nx

from simulator.graph import unfused
from simulator.graph.backward import fp8_cast_bytes, gemm_shapes
from simulator.graph.ops import Op, Shape, active_experts, compute_class
from simulator.graph.params import (blocks_per_layer, expert_params, head_weight_bytes,
                                    is_moe_layer, kv_elements_per_block, local_kv_heads)
from simulator.schema import (TRAINING_PHASES, AttentionSpec, ModelSpec, ParallelPlan,
                              Precision)

ROUTER_WEIGHT_BYTES = 4     # routers are kept in fp32 whatever the weight precision (DeepSeek-V3 s3.3)


class _Builder:
    """Accumulates ops and edges for a step."""

    def __init__(self, model: ModelSpec, plan: ParallelPlan, prec: Precision, shape: Shape,
                 real_experts: float, micro_batch: int = 0,
                 compute: dict[str, str] | None = None, moe_chunks: int = 1,
                 into: nx.DiGraph | None = None, ep_kernel: str = "") -> None:
        self.m, self.plan, self.p, self.s = model, plan, prec, shape
        self.ep_kernel = ep_kernel
        self.moe_chunks = moe_chunks
        self.compute = compute or {}
        self.k_real = real_experts
        self.mb = micro_batch
        self.g = nx.DiGraph() if into is None else into
        self.prefix = f"mb{micro_batch}." if micro_batch else ""
        self.recorded: list[tuple[Op, tuple[str, ...]]] | None = None

    def add(self, op: Op, *inputs: str, extra: unfused.Extra | None = None) -> str:
        op.name = self.prefix + op.name
        if extra is not None:
            op.kernels += extra.kernels
            op.aux_bytes = extra.elems * self.p.activation_bytes
            op.gather_bytes = extra.gathers * self.p.activation_bytes
        op.micro_batch = self.mb
        cls = compute_class(op)
        if cls is not None:
            op.precision = self.compute.get(cls, "bf16")
        if self.s.phase in TRAINING_PHASES and op.kind in ("gemm", "grouped_gemm"):
            rows, dims = gemm_shapes(op)             # its input X, cast for fprop and wgrad
            op.cast_bytes = fp8_cast_bytes(op, self.p.fp8_scaling, rows * sum(k for _, k in dims))
        self.g.add_node(op.name, op=op)
        for src in inputs:
            if src:
                self.g.add_edge(src, op.name)
        if self.recorded is not None:
            self.recorded.append((op, inputs))
        return op.name

    def recorded_layer(self, i: int, after: str) -> tuple[int, str, list, str]:
        """Build layer i (after a non-empty `after`) and keep its ops as a template."""
        self.recorded = []
        last = self.layer(i, after)
        template, self.recorded = self.recorded, None
        return i, after, template, last

    def copy_layer(self, template: tuple[int, str, list, str], i: int, after: str) -> str:
        """Layer i as a copy of a recorded layer of the same kind (same ops, shapes and edges;
        names and layer index its own); returns its last op."""
        ti, t_after, ops, t_last = template
        old, new = f"{self.prefix}L{ti}.", f"{self.prefix}L{i}."
        names = {t_after: after}
        g = self.g
        for op, inputs in ops:
            c = op.copy()
            c.name, c.layer = new + op.name[len(old):], i
            names[op.name] = c.name
            g.add_node(c.name, op=c)
            for src in inputs:
                if src:
                    g.add_edge(names[src], c.name)
        return names[t_last]

    # -- blocks ---------------------------------------------------------------------------
    def attention(self, layer: int, block: str, after: str) -> str:
        """qkv projection -> core attention -> output projection; returns the last op."""
        a, h, s, p = self.m.attention, self.m.hidden_size, self.s, self.p
        t = s.tokens
        tags: tuple[str, ...] = ()
        atp = self.plan.attention_tp
        heads = a.num_heads // atp            # this GPU's heads (check_plan: atp divides them)
        keys, pairs = window_keys(a, s.context), window_pairs(a, s)
        if a.kind == "mla":
            qk_head = a.qk_nope_head_dim + a.qk_rope_head_dim
            gemms = 2
            core_extra = unfused.mla_core(t, heads, a.kv_lora_rank, a.qk_nope_head_dim,
                                          a.qk_rope_head_dim, a.v_head_dim)
            kv_a = a.kv_lora_rank + a.qk_rope_head_dim
            # with a low-rank q, q_a and kv_a both read the hidden state: runtimes run them as
            # one GEMM (SGLang's and vLLM's fused_qkv_a_proj_with_mqa), then q_b; under
            # tensor-parallel attention every GPU runs the low-rank ones whole (the latent is
            # not split) and its heads' share of the rest
            proj_dims = ((a.q_lora_rank + kv_a, h), (heads * qk_head, a.q_lora_rank)) \
                if a.q_lora_rank else ((heads * qk_head, h), (kv_a, h))
            proj_nk = tuple(n * k for n, k in proj_dims)
            core_dims = ((heads * (a.qk_nope_head_dim + a.v_head_dim), a.kv_lora_rank),)
            attn_key: tuple = (heads,)
            kv_b_w = a.kv_lora_rank * heads * (a.qk_nope_head_dim + a.v_head_dim)
            o_w = heads * a.v_head_dim * h
            kv_elems = kv_elements_per_block(a)
            if s.phase == "decode":   # absorbed MLA: attend over the latent cache
                per_key = 2 * heads * (kv_elems + a.kv_lora_rank)
                core_flops = t * keys * per_key + 2 * t * kv_b_w
                kv_read = s.sequences * keys * kv_elems * p.kv_bytes
                io = t * heads * (kv_elems + a.kv_lora_rank)
            else:                     # expanded MLA: causal attention over the prompt
                per_key = 2 * heads * (qk_head + a.v_head_dim)
                core_flops = s.sequences * per_key * pairs + 2 * t * kv_b_w
                kv_read = (t + s.sequences * s.cached) * kv_elems * p.kv_bytes
                io = t * heads * (qk_head + a.v_head_dim)
                tags = ("mla",) if qk_head != a.v_head_dim else ()
        else:
            hd = a.head_dim
            gemms = 1
            kv_heads = local_kv_heads(a, atp)
            core_extra = unfused.gqa_core(t, heads, kv_heads, hd)
            proj_dims = (((heads + 2 * kv_heads) * hd, h),)
            proj_nk = tuple(n * k for n, k in proj_dims)
            core_dims = ()
            attn_key = (heads, kv_heads, hd)
            kv_b_w = 0
            o_w = heads * hd * h
            kv_elems = 2 * kv_heads * hd
            per_key = 2 * heads * hd * 2
            io = 2 * t * heads * hd
            if s.phase == "decode":
                core_flops = t * keys * per_key
                kv_read = s.sequences * keys * kv_elems * p.kv_bytes
            else:
                core_flops = s.sequences * per_key * pairs
                kv_read = (t + s.sequences * s.cached) * kv_elems * p.kv_bytes
        wb, ab = p.weight_bytes, p.activation_bytes
        proj_w = sum(proj_nk)
        sp = self.sequence_parallel()
        if sp > 1:      # gather the sequence's other shards before the head-split GEMMs
            after = self.add(Op(f"L{layer}.{block}.sp_all_gather", "collective",
                                bytes=t * h * ab * (sp - 1), collective="all_gather",
                                group="tp", layer=layer, block=block), after)
        qkv = self.add(Op(f"L{layer}.{block}.qkv_proj", "gemm", flops=2 * t * proj_w,
                          bytes=proj_w * wb + t * h * ab, weight_bytes=proj_w * wb, m=t,
                          layer=layer, block=block, gemm_nk=proj_nk, gemm_dims=proj_dims),
                       after,
                       extra=unfused.qkv_proj(t, h, a.q_lora_rank if a.kind == "mla" else 0,
                                              gemms))
        cp = self.plan.cp
        if cp > 1 and s.phase != "decode":      # ring / all-gather of the other chunks' KV
            qkv = self.add(Op(f"L{layer}.{block}.cp_kv_gather", "collective",
                              bytes=t * kv_elems * p.kv_bytes * (cp - 1), collective="all_gather",
                              group="cp", layer=layer, block=block), qkv)
        scores = s.sequences * heads * s.query_tokens * keys  # a materialised matrix
        core = self.add(Op(f"L{layer}.{block}.core", "attention", flops=core_flops,
                           bytes=kv_read + kv_b_w * wb + io * ab, scores=float(scores),
                           weight_bytes=kv_b_w * wb, m=t, layer=layer, block=block,
                           tags=tags, seqs=float(s.sequences), kv_len=float(keys),
                           gemm_dims=core_dims if s.phase != "decode" else (),
                           attn_key=attn_key, attn_len=float(keys) if s.phase == "decode"
                           else math.sqrt(2 * pairs),
                           kernel=f"{'mla' if a.kind == 'mla' else 'gqa'}_"
                                  f"{'decode' if s.phase == 'decode' else 'prefill'}"),
                        qkv, extra=core_extra)
        out = self.add(Op(f"L{layer}.{block}.o_proj", "gemm", flops=2 * t * o_w,
                          bytes=o_w * wb + t * h * ab, weight_bytes=o_w * wb, m=t,
                          layer=layer, block=block, gemm_nk=(o_w,),
                          gemm_dims=((h, o_w // h),)), core,
                       extra=unfused.residual_after(t, h))
        if sp > 1:      # and scatter the summed output back to the sequence's shards
            out = self.add(Op(f"L{layer}.{block}.sp_reduce_scatter", "collective",
                              bytes=t * h * ab * (sp - 1), collective="reduce_scatter",
                              group="tp", layer=layer, block=block), out)
        return self.all_reduce(layer, block, out)

    def sequence_parallel(self) -> int:
        """GPUs that split attention's heads in training (Megatron's tp with sequence
        parallelism: each holds 1/tp of the tokens outside the GEMMs, so attention is
        all-gathered before and reduce-scattered after; its GEMMs are priced at this GPU's
        tokens over all heads, the same FLOPs as all tokens over 1/tp of the heads); 1 else."""
        train = self.s.phase in TRAINING_PHASES and self.plan.attention_tp == 1
        return self.plan.tp if train else 1

    def all_reduce(self, layer: int, block: str, after: str) -> str:
        """The all-reduce that ends a block under tensor-parallel attention (a ring's bytes
        sent per GPU: 2 (n - 1) / n of the block's output); `after` itself otherwise."""
        n = self.plan.attention_tp
        if n == 1:
            return after
        size = self.s.tokens * self.m.hidden_size * self.p.activation_bytes
        return self.add(Op(f"L{layer}.{block}.all_reduce", "collective",
                           bytes=2 * (n - 1) / n * size, collective="all_reduce", group="tp",
                           layer=layer, block=block), after)

    def dense_ffn(self, layer: int, block: str, after: str, inter: int, pre_norm: bool = True,
                  residual: bool = True) -> str:
        """SwiGLU FFN, tensor-parallel with all-gather / reduce-scatter when tp > 1. `pre_norm`
        and `residual`: whether its own norm and residual add belong to it (eager pricing)."""
        h, t, tp = self.m.hidden_size, self.s.tokens, self.plan.tp
        wb, ab = self.p.weight_bytes, self.p.activation_bytes
        prev = after
        replicated = self.plan.attention_tp > 1      # every GPU of the group holds the tokens
        if tp > 1 and not replicated:
            prev = self.add(Op(f"L{layer}.{block}.all_gather", "collective",
                               bytes=t * h * ab * (tp - 1), collective="all_gather", group="tp",
                               layer=layer, block=block), prev)
        w = 3 * h * inter // tp
        rows = t if replicated else t * tp
        prev = self.add(Op(f"L{layer}.{block}.ffn", "gemm", flops=2 * rows * w,
                           bytes=w * wb + rows * (2 * h + 3 * inter // tp) * ab,
                           weight_bytes=w * wb, m=rows, layer=layer, block=block,
                           gemm_nk=(2 * h * inter / tp, h * inter / tp),
                           gemm_dims=((2 * inter / tp, h), (h, inter / tp))), prev,
                        extra=unfused.swiglu(rows, h, inter / tp, pre_norm, residual))
        if replicated:
            return self.all_reduce(layer, block, prev)
        if tp > 1:
            prev = self.add(Op(f"L{layer}.{block}.reduce_scatter", "collective",
                               bytes=t * h * ab * (tp - 1), collective="reduce_scatter",
                               group="tp", layer=layer, block=block), prev)
        return prev

    def moe(self, layer: int, after: str) -> tuple[str, str]:
        """Router -> permute -> dispatch -> experts -> combine -> unpermute (+ shared expert).

        Returns (last op of the routed branch, shared-expert op or '').
        Zero-computation experts cost no GEMM and no all-to-all bytes: only `k_real` counts.
        """
        moe, h, t = self.m.moe, self.m.hidden_size, self.s.tokens
        assert moe is not None
        wb, ab, k = self.p.weight_bytes, self.p.activation_bytes, self.k_real
        n_all = moe.num_experts + moe.num_zero_experts
        router = self.add(Op(f"L{layer}.moe.router", "gemm", flops=2 * t * h * n_all,
                             bytes=h * n_all * ROUTER_WEIGHT_BYTES + t * h * ab,
                             weight_bytes=h * n_all * ROUTER_WEIGHT_BYTES,
                             m=t, layer=layer, block="moe", gemm_nk=(h * n_all,),
                             gemm_dims=((n_all, h),)), after,
                          extra=unfused.router(t, h, n_all))
        routed = t * k / self.plan.ep if self.plan.attention_tp > 1 else t * k   # rows here
        permute = self.add(Op(f"L{layer}.moe.permute", "elementwise",
                              bytes=2 * routed * h * ab, layer=layer, block="moe"), router,
                           extra=unfused.permute(routed, h))
        combines = self._routed(layer, permute)
        unpermute = self.add(Op(f"L{layer}.moe.unpermute", "elementwise",
                                bytes=(routed + t) * h * ab, layer=layer, block="moe"), *combines,
                             extra=unfused.unpermute(t, routed, h))
        shared = ""
        if moe.num_shared_experts:       # split like the dense FFNs under TP attention
            w_sh = moe.num_shared_experts * expert_params(self.m) / self.plan.attention_tp
            shared = self.add(Op(f"L{layer}.moe.shared", "gemm", flops=2 * t * w_sh,
                                 bytes=w_sh * wb + t * 2 * h * ab, weight_bytes=w_sh * wb, m=t,
                                 layer=layer, block="moe", tags=("shared_expert",),
                                 gemm_nk=(2 * w_sh / 3, w_sh / 3),
                                 gemm_dims=((2 * w_sh / (3 * h), h), (h, w_sh / (3 * h)))),
                              after,
                              extra=unfused.swiglu(t, h, w_sh / (3 * h), False, False))
        return unpermute, shared

    def _routed(self, layer: int, after: str) -> list[str]:
        """Dispatch -> experts -> combine of the routed tokens, as moe_chunks token chunks (one
        unless the schedule cuts the MoE: each chunk then carries its share of the tokens and
        reads every local expert's weights again). Built stage by stage, so a stream's issue
        order is every chunk's dispatch, then experts, then combines. Returns the combines."""
        moe, h, n = self.m.moe, self.m.hidden_size, self.moe_chunks
        assert moe is not None
        if self.plan.attention_tp > 1:
            return self._routed_replicated(layer, after)
        wb, ab = self.p.weight_bytes, self.p.activation_bytes
        routed = self.s.tokens * self.k_real / n
        names = [f"L{layer}.moe" + (f".c{c}" if n > 1 else "") for c in range(n)]
        dispatches = [self.add(Op(f"{nm}.dispatch", "collective",
                                  bytes=routed * h * self.p.dispatch_bytes,
                                  collective="all_to_all", group="ep", layer=layer, block="moe",
                                  share=1 / n, m=self.s.tokens, moe_key=self.moe_key(1),
                                  kernel=self.ep_kernel), after,
                              extra=unfused.split_exchange())
                      for nm in names]
        local_experts = moe.num_experts / self.plan.ep
        active = active_experts(local_experts, moe.num_experts, self.k_real,
                                self.s.tokens / n * self.plan.ep)
        w_exp = expert_params(self.m)
        experts = [self.add(Op(f"{nm}.experts", "grouped_gemm", flops=2 * routed * w_exp,
                               bytes=active * w_exp * wb + routed * 2 * h * ab,
                               weight_bytes=active * w_exp * wb,
                               m=routed / active if active > 0 else 0.0, layer=layer,
                               block="moe", share=1 / n,
                               gemm_nk=(2 * h * moe.expert_intermediate,
                                        h * moe.expert_intermediate),
                               moe_key=self.moe_key(1), kernel=self.ep_kernel), d,
                            extra=unfused.experts(routed, h, moe.expert_intermediate,
                                                  local_experts))
                   for nm, d in zip(names, dispatches)]
        return [self.add(Op(f"{nm}.combine", "collective",
                            bytes=routed * h * self.p.combine_bytes, collective="all_to_all",
                            group="ep", layer=layer, block="moe", share=1 / n,
                            m=self.s.tokens, moe_key=self.moe_key(1), kernel=self.ep_kernel),
                            e)
                for nm, e in zip(names, experts)]

    def _routed_replicated(self, layer: int, after: str) -> list[str]:
        """Experts under tensor-parallel attention: every GPU of the group holds every token,
        so no all-to-all; it runs its EP rank's experts (each a 1 / moe_tp slice) on the rows
        routed to them, and one all-reduce sums the group's partial outputs."""
        moe, h, plan = self.m.moe, self.m.hidden_size, self.plan
        assert moe is not None and self.moe_chunks == 1
        wb, ab = self.p.weight_bytes, self.p.activation_bytes
        routed = self.s.tokens * self.k_real / plan.ep
        local_experts = moe.num_experts / plan.ep
        active = active_experts(local_experts, moe.num_experts, self.k_real, self.s.tokens)
        inter = moe.expert_intermediate / plan.moe_tp
        w_exp = 3 * h * inter
        experts = self.add(Op(f"L{layer}.moe.experts", "grouped_gemm", flops=2 * routed * w_exp,
                              bytes=active * w_exp * wb + routed * 2 * h * ab,
                              weight_bytes=active * w_exp * wb,
                              m=routed / active if active > 0 else 0.0, layer=layer,
                              block="moe", gemm_nk=(2 * h * inter, h * inter),
                              moe_key=self.moe_key(plan.moe_tp, replicated=True)), after,
                           extra=unfused.experts(routed, h, inter, local_experts))
        return [self.all_reduce(layer, "moe", experts)]

    def moe_key(self, moe_tp: int, replicated: bool = False) -> tuple:
        """The measured MoE tables' key of this model's routed experts (Op.moe_key): read at
        the group's tokens where every rank holds them all (tensor-parallel attention), at the
        rank's own tokens where an all-to-all brings each rank only its rows."""
        moe = self.m.moe
        assert moe is not None
        k = max(self.k_real, 1e-9)
        if replicated:                  # every rank holds the group's tokens, as the tables do
            return (self.m.hidden_size, moe.expert_intermediate, moe.top_k, moe.num_experts,
                    moe_tp, self.plan.ep, self.plan.ep / k, True)
        return (self.m.hidden_size, moe.expert_intermediate, moe.top_k, moe.num_experts,
                moe_tp, self.plan.ep, 1 / k, False)

    def join(self, layer: int, *inputs: str) -> str:
        """Residual add that closes a layer (waits on every branch)."""
        t, h, ab = self.s.tokens, self.m.hidden_size, self.p.activation_bytes
        extra = unfused.join(t, h) if self.m.moe is not None and len(inputs) > 1 else None
        return self.add(Op(f"L{layer}.residual", "elementwise", bytes=3 * t * h * ab,
                           layer=layer, block="residual"), *inputs, extra=extra)

    # -- layers ---------------------------------------------------------------------------
    def layer(self, i: int, after: str) -> str:
        """One transformer layer; returns its last op."""
        m = self.m
        dense = not is_moe_layer(m, i)
        if blocks_per_layer(m, moe_layer=not dense) == 2:
            a0 = self.attention(i, "attn0", after)
            moe_out, _ = self.moe(i, a0)
            f0 = self.dense_ffn(i, "ffn0", a0, m.dense_intermediate, pre_norm=False)
            a1 = self.attention(i, "attn1", f0)
            f1 = self.dense_ffn(i, "ffn1", a1, m.dense_intermediate)
            return self.join(i, f1, moe_out)
        a = self.attention(i, "attn", after)
        if dense:
            return self.join(i, self.dense_ffn(i, "ffn", a, m.dense_intermediate,
                                               residual=False))
        moe_out, shared = self.moe(i, a)
        return self.join(i, moe_out, shared)

    def head(self, layer: int, after: str, block: str = "head") -> str:
        """Final norm + LM head over the tokens of this pass. Its weights are BF16 whatever the
        checkpoint quantises (unless the head itself computes in FP8). Under tensor-parallel
        attention the head is vocabulary-parallel, as every engine runs it: each GPU of the
        group multiplies by 1/n of the vocabulary and the logits are all-gathered. In training
        it ends in the loss: with sequence parallelism (Megatron's tp) the tokens are gathered
        first, each GPU multiplies all of them by 1/tp of the vocabulary, and the
        vocabulary-parallel cross-entropy reads its logits shard (its backward writes their
        gradient) and reduces a max and a sum per token instead of gathering the logits."""
        h, t, ab = self.m.hidden_size, self.s.tokens, self.p.activation_bytes
        train = self.s.phase in TRAINING_PHASES
        sp = self.sequence_parallel()
        if sp > 1:
            after = self.add(Op(f"L{layer}.{block}.sp_all_gather", "collective",
                                bytes=t * h * ab * (sp - 1), collective="all_gather",
                                group="tp", layer=layer, block=block), after)
        n = self.plan.attention_tp * sp
        rows, v = t * sp, self.m.vocab_size / n
        wb = head_weight_bytes(self.p, self.compute.get("lm_head", "bf16"))
        out = self.add(Op(f"L{layer}.{block}.lm_head", "gemm", flops=2 * rows * h * v,
                          bytes=h * v * wb + rows * (h + v) * ab, weight_bytes=h * v * wb,
                          m=rows, layer=layer, block=block, gemm_nk=(h * v,),
                          gemm_dims=((v, h),)), after)
        if train:
            return self.add(Op(f"L{layer}.{block}.cross_entropy", "elementwise",
                               bytes=rows * v * ab, layer=layer, block=block), out)
        if n == 1:
            return out
        return self.add(Op(f"L{layer}.{block}.logits_all_gather", "collective",
                           bytes=t * v * (n - 1) * ab, collective="all_gather", group="tp",
                           layer=layer, block=block), out)

    def mtp(self, layer: int, after: str) -> str:
        """One dense MTP layer (projection, attention, FFN) and its draft logits."""
        h, t = self.m.hidden_size, self.s.tokens
        wb, ab = self.p.weight_bytes, self.p.activation_bytes
        proj = self.add(Op(f"L{layer}.mtp.proj", "gemm", flops=2 * t * 2 * h * h,
                           bytes=2 * h * h * wb + 3 * t * h * ab, weight_bytes=2 * h * h * wb,
                           m=t, layer=layer, block="mtp", gemm_nk=(2 * h * h,),
                           gemm_dims=((h, 2 * h),)), after)
        a = self.attention(layer, "mtp_attn", proj)
        inter = self.m.dense_intermediate or (self.m.moe.expert_intermediate if self.m.moe else 0)
        f = self.dense_ffn(layer, "mtp_ffn", a, inter)
        return self.head(layer, f, block="mtp_head")


def window_keys(a: AttentionSpec, context: float) -> float:
    """Keys a decode query attends to, the mean over attention blocks (windowed blocks read at
    most sliding_window of them)."""
    if not a.sliding_window:
        return context
    return a.sliding_window_share * min(context, a.sliding_window) + \
        (1 - a.sliding_window_share) * context


def window_pairs(a: AttentionSpec, s: Shape) -> float:
    """Query-key pairs per sequence of a prefill pass, the mean over attention blocks (a
    windowed block's queries attend to at most sliding_window keys each)."""
    full = s.causal_pairs()
    if not a.sliding_window:
        return full
    return a.sliding_window_share * min(full, s.query_tokens * a.sliding_window) + \
        (1 - a.sliding_window_share) * full


def copies_from(model: ModelSpec) -> int:
    """The first of the layers that end the pass as copies of one another (build_forward builds
    layers of one kind, MoE or dense, as copies)."""
    n = model.num_layers
    lo = n - 1
    while lo > 0 and is_moe_layer(model, lo - 1) == is_moe_layer(model, n - 1):
        lo -= 1
    return max(lo, 0)


def build_forward(model: ModelSpec, plan: ParallelPlan, prec: Precision, shape: Shape,
                  real_experts: float, *, layers: int | None = None, with_head: bool = True,
                  mtp: bool = False, micro_batch: int = 0,
                  compute: dict[str, str] | None = None, moe_chunks: int = 1,
                  into: nx.DiGraph | None = None, tail_at: int | None = None,
                  ep_kernel: str = "") -> nx.DiGraph:
    """A forward pass as one op graph: `layers` layers (default all), LM head, MTP layer (named
    and indexed as layer `tail_at`, default the layer after the last built: a pass truncated
    to its first layers keeps the whole pass's tail);
    `compute` maps op classes (schema.COMPUTE_CLASSES) to their precision (default bf16);
    `moe_chunks` cuts each routed MoE path into that many token chunks; `into`: add the ops
    to this graph (another micro-batch's) instead of a new one; `ep_kernel`: the all-to-all
    kernel (low_latency | normal) the EP dispatch and combine ops name. Layers of one kind (MoE or
    dense: all `_Builder.layer` reads of the index) are copies of the first recorded one; a
    layer that depends on its index otherwise needs that in the `templates` key."""
    b = _Builder(model, plan, prec, shape, real_experts, micro_batch, compute, moe_chunks,
                 into, ep_kernel)
    n = model.num_layers if layers is None else layers
    last = ""
    templates: dict[bool, tuple] = {}      # layers differ only in being MoE or dense
    for i in range(n):
        kind = is_moe_layer(model, i)
        if kind in templates:
            last = b.copy_layer(templates[kind], i, last)
        elif last:
            templates[kind] = b.recorded_layer(i, last)
            last = templates[kind][3]
        else:
            last = b.layer(i, last)
    if with_head:
        tail = n if tail_at is None else tail_at
        last = b.head(tail, last)
        if mtp:
            b.mtp(tail, last)
    return b.g
