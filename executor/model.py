"""A small LongCat-style model in torch: MLA (or GQA) attention, SwiGLU FFNs, and a MoE with FFN
experts, zero-computation (identity) experts and a top-k router with bias; shortcut-connected
(ScMoE) or conventional layers. Sizes come from the same ModelSpec the simulator reads.

Ops carry the simulator's names (L{i}.attn0.qkv_proj, L{i}.moe.dispatch, ...) so measured and
predicted timelines compare op by op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simulator.graph.params import is_moe_layer
from simulator.schema import AttentionSpec, ModelSpec


class RMSNorm(nn.Module):
    """Root-mean-square norm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension."""
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding over the last dimension of (B, H, S, D)."""
    d = x.shape[-1] // 2
    pos = torch.arange(x.shape[-2], dtype=x.dtype, device=x.device)[:, None]
    freq = base ** (-torch.arange(d, dtype=x.dtype, device=x.device) / d)
    ang = pos * freq
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., :d], x[..., d:2 * d]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * d:]], dim=-1)


class Attention(nn.Module):
    """MLA (low-rank q and kv, rope split) or GQA; qkv_proj / core / o_proj as separate ops."""

    def __init__(self, a: AttentionSpec, hidden: int) -> None:
        super().__init__()
        self.a = a
        if a.kind == "mla":
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            # q_a and kv_a fused into one GEMM, as serving runtimes run them
            self.qkv_a = nn.Linear(hidden, a.q_lora_rank + a.kv_lora_rank + a.qk_rope_head_dim,
                                   bias=False)
            self.q_norm = RMSNorm(a.q_lora_rank)
            self.q_b = nn.Linear(a.q_lora_rank, a.num_heads * qk, bias=False)
            self.kv_norm = RMSNorm(a.kv_lora_rank)
            self.kv_b = nn.Linear(a.kv_lora_rank, a.num_heads * (a.qk_nope_head_dim + a.v_head_dim),
                                  bias=False)
            self.o = nn.Linear(a.num_heads * a.v_head_dim, hidden, bias=False)
        else:
            self.qkv = nn.Linear(hidden, (a.num_heads + 2 * a.num_kv_heads) * a.head_dim, bias=False)
            self.o = nn.Linear(a.num_heads * a.head_dim, hidden, bias=False)

    def qkv_proj(self, x: torch.Tensor):
        """Projections (B, S, hidden) -> what core() needs."""
        if self.a.kind == "mla":
            q_c, kv = self.qkv_a(x).split([self.a.q_lora_rank,
                                           self.a.kv_lora_rank + self.a.qk_rope_head_dim], dim=-1)
            return self.q_b(self.q_norm(q_c)), kv
        return (self.qkv(x),)

    def core(self, parts, shape) -> torch.Tensor:
        """Attention itself (MLA: kv_b expansion and rope included), causal."""
        a, (b, s) = self.a, shape
        if a.kind == "mla":
            q, kv = parts
            qk = a.qk_nope_head_dim + a.qk_rope_head_dim
            q = q.view(b, s, a.num_heads, qk).transpose(1, 2)
            c, k_rope = kv.split([a.kv_lora_rank, a.qk_rope_head_dim], dim=-1)
            kvb = self.kv_b(self.kv_norm(c)).view(b, s, a.num_heads, a.qk_nope_head_dim + a.v_head_dim)
            k_nope, v = kvb.transpose(1, 2).split([a.qk_nope_head_dim, a.v_head_dim], dim=-1)
            k_rope = rope(k_rope.view(b, 1, s, a.qk_rope_head_dim)).expand(b, a.num_heads, s, -1)
            q = torch.cat([q[..., :a.qk_nope_head_dim], rope(q[..., a.qk_nope_head_dim:])], -1)
            k = torch.cat([k_nope, k_rope], dim=-1)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return out.transpose(1, 2).reshape(b, s, a.num_heads * a.v_head_dim)
        (qkv,) = parts
        hd, h, kvh = a.head_dim, a.num_heads, a.num_kv_heads
        q, k, v = qkv.view(b, s, h + 2 * kvh, hd).transpose(1, 2).split([h, kvh, kvh], dim=1)
        q, k = rope(q), rope(k)
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(h // kvh, 1),
                                             v.repeat_interleave(h // kvh, 1), is_causal=True)
        return out.transpose(1, 2).reshape(b, s, h * hd)


class SwiGLU(nn.Module):
    """Gate, up and down projections."""

    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(hidden, 2 * inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SiLU(gate) * up, projected down."""
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)


class MoE(nn.Module):
    """Router (softmax over FFN + zero experts, top-k on score + bias) and all experts' weights.

    Every rank builds every expert from the same seed, so any subset can serve a rank's share.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        m = spec.moe
        assert m is not None
        self.n_ffn, self.n_zero, self.k = m.num_experts, m.num_zero_experts, m.top_k
        self.router = nn.Linear(spec.hidden_size, self.n_ffn + self.n_zero, bias=False)
        self.register_buffer("bias", torch.zeros(self.n_ffn + self.n_zero))
        self.experts = nn.ModuleList(SwiGLU(spec.hidden_size, m.expert_intermediate)
                                     for _ in range(self.n_ffn))
        self.shared = SwiGLU(spec.hidden_size, m.num_shared_experts * m.expert_intermediate) \
            if m.num_shared_experts else None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert ids, gates) of shape (T, k); gates are the un-biased scores."""
        scores = F.softmax(self.router(x).float(), dim=-1)
        ids = torch.topk(scores + self.bias, self.k, dim=-1).indices
        return ids, scores.gather(1, ids).to(x.dtype)

    def balance(self, x: torch.Tensor, real_per_token: float, steps: int = 300) -> None:
        """Set the router bias as LongCat's bias controller does in training: every FFN expert
        takes an equal share of `real_per_token` copies per token, the zero experts the rest
        (sign updates with a shrinking step, on the router's input `x`)."""
        scores = F.softmax(self.router(x).float(), dim=-1)
        t = scores.shape[0]
        target = torch.empty(self.n_ffn + self.n_zero)
        target[:self.n_ffn] = t * real_per_token / self.n_ffn
        target[self.n_ffn:] = t * (self.k - real_per_token) / max(self.n_zero, 1)
        step = float(scores.std()) or 1e-3
        for _ in range(steps):
            ids = torch.topk(scores + self.bias, self.k, dim=-1).indices
            load = torch.bincount(ids.flatten(), minlength=target.numel()).float()
            self.bias += step * torch.sign(target - load)
            step *= 0.985


class Layer(nn.Module):
    """Shortcut (MLA_0, FFN_0, MLA_1, FFN_1 + MoE on MLA_0's output) or conventional."""

    def __init__(self, spec: ModelSpec, dense: bool) -> None:
        super().__init__()
        h = spec.hidden_size
        self.shortcut = spec.layer_kind == "shortcut" and not dense
        self.dense = dense
        n_blocks = 2 if self.shortcut else 1
        self.attn = nn.ModuleList(Attention(spec.attention, h) for _ in range(n_blocks))
        self.norms = nn.ModuleList(RMSNorm(h) for _ in range(2 * n_blocks + 1))
        n_ffn = n_blocks if (self.shortcut or dense) else 0     # dense SwiGLUs of this layer
        self.ffn = nn.ModuleList(SwiGLU(h, spec.dense_intermediate) for _ in range(n_ffn))
        self.moe = None if dense else MoE(spec)


class TinyModel(nn.Module):
    """The layers of a ModelSpec (no embedding or head: the executor times the layers)."""

    def __init__(self, spec: ModelSpec, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.spec = spec
        self.layers = nn.ModuleList(Layer(spec, not is_moe_layer(spec, i))
                                    for i in range(spec.num_layers))
        with torch.no_grad():
            for layer in self.layers:
                if layer.moe is not None:        # a fixed, non-trivial router bias
                    layer.moe.bias.copy_(0.01 * torch.randn_like(layer.moe.bias))
