"""The reference Llama-family decoder in plain torch: dense or mixture-of-experts.

RMSNorm, RoPE (with Llama-3 frequency scaling), grouped-query attention with optional q/k/v bias
(Qwen2), SwiGLU MLP, tied or untied embeddings, and an MoE MLP (softmax router, top-k of n
experts, optionally renormalised gates, optional gated shared expert as in Qwen2-MoE).

Module and parameter names follow Hugging Face's Llama/Qwen2-MoE layout so loaders map names
one to one. Two modes:

* no cache: ``model(tokens)`` runs causal attention over the whole sequence (evaluation);
* static KV cache: ``model.setup_cache(max_batch, max_seq)`` then ``model(tokens, input_pos)``
  with fixed-size cache buffers, fit for ``torch.export`` (prefill and one-token decode).

    model = Transformer(spec); logits = model(torch.tensor([[1, 2, 3]]))  # (B, T, vocab)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edge.model.spec import ModelSpec


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def rope_frequencies(spec: ModelSpec) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), with Llama-3 scaling when the spec has it."""
    hd = spec.head_dim
    inv = 1.0 / (spec.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = spec.rope_scaling
    if rs is not None:
        low_wl = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wl = rs.original_max_position_embeddings / rs.high_freq_factor
        wl = 2 * math.pi / inv
        smooth = (rs.original_max_position_embeddings / wl - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor
        )
        scaled = torch.where(wl > low_wl, inv / rs.factor, inv)
        mid = (wl <= low_wl) & (wl >= high_wl)
        scaled = torch.where(mid, (1 - smooth) * inv / rs.factor + smooth * inv, scaled)
        inv = scaled
    return inv.float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache(nn.Module):
    """Fixed-size cache buffers (B, n_kv, max_seq, hd), written at ``input_pos``."""

    def __init__(self, batch: int, n_kv: int, max_seq: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (batch, n_kv, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # k, v: (B, n_kv, T, hd); input_pos: (T,)
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(spec.dim, spec.q_dim, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(spec.dim, spec.kv_dim, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(spec.dim, spec.kv_dim, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(spec.q_dim, spec.dim, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, input_pos):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.cache is not None:
            k, v = self.cache.update(input_pos, k, v)  # (B, nkv, S, hd)
        rep = self.n_heads // self.n_kv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, ffn: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, ffn, bias=False)
        self.up_proj = nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """Top-k of n SwiGLU experts with a softmax router; optional (gated) shared expert.

    Every expert runs on every token and is weighted by its gate (zero when not chosen): no
    data-dependent control flow, so it exports; per-token cost is n/k times a sparse kernel's.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.top_k, self.norm_topk = spec.n_experts_per_tok, spec.norm_topk_prob
        self.gate = nn.Linear(spec.dim, spec.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(spec.dim, spec.moe_ffn_dim) for _ in range(spec.n_experts))
        self.shared_expert = MLP(spec.dim, spec.shared_expert_ffn_dim) if spec.shared_expert_ffn_dim else None
        self.shared_expert_gate = nn.Linear(spec.dim, 1, bias=False) if spec.shared_expert_gate else None

    def routing(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gate weights (..., n_experts), zero outside the top-k, and the chosen indices."""
        probs = F.softmax(self.gate(x).float(), dim=-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        if self.norm_topk:
            top_w = top_w / top_w.sum(-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(-1, top_i, top_w)
        return weights.to(x.dtype), top_i

    def forward(self, x):
        weights, _ = self.routing(x)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + expert(x) * weights[..., e : e + 1]
        if self.shared_expert is not None:
            s = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                s = torch.sigmoid(self.shared_expert_gate(x)) * s
            out = out + s
        return out


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.dim, spec.norm_eps)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.dim, spec.norm_eps)
        self.mlp = MoE(spec) if spec.is_moe_layer(layer) else MLP(spec.dim, spec.ffn_dim)

    def forward(self, x, cos, sin, mask, input_pos):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.dim)
        self.layers = nn.ModuleList(DecoderLayer(spec, i) for i in range(spec.n_layers))
        self.norm = RMSNorm(spec.dim, spec.norm_eps)
        self.lm_head = nn.Linear(spec.dim, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rope_frequencies(spec), persistent=False)
        self.max_cache_len = 0

    # ---- static KV cache -------------------------------------------------------------------
    def setup_cache(self, max_batch: int, max_seq: int, dtype: torch.dtype | None = None) -> None:
        """Give every attention layer a fixed-size cache; forward then needs ``input_pos``."""
        dtype = dtype or self.embed_tokens.weight.dtype
        for layer in self.layers:
            a = layer.self_attn
            a.cache = KVCache(max_batch, a.n_kv, max_seq, a.hd, dtype)
        causal = torch.tril(torch.ones(max_seq, max_seq, dtype=torch.bool))
        self.register_buffer("causal_mask", causal, persistent=False)
        self.max_cache_len = max_seq

    def drop_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.cache = None
        self.max_cache_len = 0

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)  # (T, hd)

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab). With a cache, ``input_pos`` (T,) is required."""
        B, T = tokens.shape
        x = self.embed_tokens(tokens)
        if self.max_cache_len:
            assert input_pos is not None, "a model with a KV cache needs input_pos"
            mask = self.causal_mask[input_pos]  # (T, S): row i sees positions <= input_pos[i]
            positions = input_pos
        else:
            positions = torch.arange(T, device=tokens.device)
            mask = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        cos, sin = self.rope(positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos)
        return self.lm_head(self.norm(x))

    def num_params(self) -> int:
        seen: set[int] = set()
        n = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n
