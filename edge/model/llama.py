"""The reference Llama-family decoder in plain torch: dense or mixture-of-experts.

RMSNorm (optionally ``(1 + w)``, Gemma), RoPE (full or partial; Llama-3, linear or LongRoPE
frequency scaling; a second base for sliding layers; none on NoPE layers), grouped-query
attention with optional q/k/v bias (Qwen2), per-head q/k RMSNorm (Qwen3, Gemma 3), a sliding
window on chosen layers (Mistral, Gemma 3), gated MLP with SiLU or tanh-GELU, Gemma's post-norms
and embedding scale, tied or untied embeddings, and an MoE MLP (softmax router, top-k of n
experts, optionally renormalised gates, optional gated shared expert as in Qwen2-MoE). Every
feature is a ModelSpec field (edge/model/spec.py).

Module and parameter names follow Hugging Face's Llama / Qwen3 / Gemma 3 / Qwen2-MoE layouts so
loaders map names one to one. Two modes:

* no cache: ``model(tokens)`` runs causal attention over the whole sequence (evaluation);
* static KV cache: ``model.setup_cache(max_batch, max_seq)`` then ``model(tokens, input_pos)``
  with fixed-size cache buffers, fit for ``torch.export`` (prefill and one-token decode). Sliding
  layers keep a full-length cache and mask everything older than their window.

    model = Transformer(spec); logits = model(torch.tensor([[1, 2, 3]]))  # (B, T, vocab)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edge.model.spec import ModelSpec

# RoPE buffers are built on the CPU explicitly, so a model made under torch.device("meta") (the
# loaders fill its weights afterwards) still has real, non-persistent frequency tables.
ROPE_DEVICE = "cpu"


class RMSNorm(nn.Module):
    """x / rms(x) * (offset + weight); offset 1 for Gemma, whose weights are stored centred on 0."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.eps = eps
        self.offset = offset
        self.weight = nn.Parameter(torch.ones(dim) if offset == 0 else torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float() + self.offset if self.offset else self.weight.float()
        return (xf * w).to(x.dtype)


def rope_frequencies(spec: ModelSpec, kind: str = "global", long: bool = False) -> torch.Tensor:
    """Inverse frequencies (rope_dim/2,) of one RoPE table.

    ``kind`` "global": base ``rope_theta`` with the spec's scaling (Llama-3, linear, or LongRoPE's
    short factors, its long ones with ``long``); "local": base ``rope_local_theta``, unscaled."""
    rd = spec.rope_dim
    base = spec.rope_local_theta if kind == "local" else spec.rope_theta
    inv = 1.0 / (base ** (torch.arange(0, rd, 2, dtype=torch.float64, device=ROPE_DEVICE) / rd))
    rs = spec.rope_scaling if kind == "global" else None
    if rs is None:
        return inv.float()
    if rs.rope_type == "linear":
        return (inv / rs.factor).float()
    if rs.rope_type == "longrope":
        # transformers divides the float32 frequencies by float32 factors: do the same for 1e-7 agreement
        factors = torch.tensor(rs.long_factor if long else rs.short_factor, dtype=torch.float32, device=ROPE_DEVICE)
        base_f = torch.arange(0, rd, 2, dtype=torch.int64, device=ROPE_DEVICE).float() / rd
        return 1.0 / (factors * base ** base_f)
    low_wl = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wl = rs.original_max_position_embeddings / rs.high_freq_factor
    wl = 2 * math.pi / inv
    smooth = (rs.original_max_position_embeddings / wl - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor
    )
    scaled = torch.where(wl > low_wl, inv / rs.factor, inv)
    mid = (wl <= low_wl) & (wl >= high_wl)
    scaled = torch.where(mid, (1 - smooth) * inv / rs.factor + smooth * inv, scaled)
    return scaled.float()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dims of every head of x (..., T, hd); the rest pass (Phi-3)."""
    rd = cos.shape[-1]
    if rd == x.shape[-1]:
        return x * cos + rotate_half(x) * sin
    xr, xp = x[..., :rd], x[..., rd:]
    return torch.cat((xr * cos + rotate_half(xr) * sin, xp), dim=-1)


def rope_rotation(head_dim: int, rope_dim: int) -> torch.Tensor:
    """R (head_dim, head_dim) with ``x @ R == cat(rotate_half(x[..., :rope_dim]), 0)``: exporters
    write RoPE as ``x*C + (x@R)*S`` (one matmul, no slicing) with the full-width tables of
    ``Transformer.rope_table``, whose pass-through columns hold C = 1, S = 0 (partial rotary)."""
    h = rope_dim // 2
    r = torch.zeros(head_dim, head_dim)
    r[torch.arange(h) + h, torch.arange(h)] = -1.0
    r[torch.arange(h), torch.arange(h) + h] = 1.0
    return r


def rotate_half_matrix(hd: int) -> torch.Tensor:
    """R (hd, hd) with ``x @ R == rotate_half(x)``: RoPE as a matmul, for backends that take a matmul
    better than slicing and concatenating (the exporters write ``x*cos + (x@R)*sin``)."""
    return rope_rotation(hd, hd)


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
        if spec.qk_norm:  # one (head_dim,) weight shared by every head
            self.q_norm = RMSNorm(spec.head_dim, spec.norm_eps, spec.norm_offset)
            self.k_norm = RMSNorm(spec.head_dim, spec.norm_eps, spec.norm_offset)
        self.qk_norm = spec.qk_norm
        self.scale = spec.attn_scale or None  # None: SDPA's 1/sqrt(head_dim)
        self.cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, input_pos):
        """x (B, T, dim); cos, sin (T, rope_dim) or None (no RoPE); mask (T, S) bool."""
        return self.o_proj(self.core(x, cos, sin, mask, input_pos))

    def core(self, x, cos, sin, mask, input_pos):
        """Attention up to o_proj's input: (B, T, dim) -> (B, T, n_heads * hd)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd)  # (B, T, nh, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd)  # (B, T, nkv, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, T, hd), (B, nkv, T, hd)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.cache is not None:
            k, v = self.cache.update(input_pos, k, v)  # (B, nkv, S, hd)
        rep = self.n_heads // self.n_kv
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)  # (B, nh, T, hd)
        return y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd)


ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class MLP(nn.Module):
    """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU with act silu, GeGLU with gelu_tanh."""

    def __init__(self, dim: int, ffn: int, act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(dim, ffn, bias=False)
        self.up_proj = nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)
        self.act = act

    def hidden(self, x):
        """down_proj's input (..., ffn)."""
        return ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x)

    def forward(self, x):
        return self.down_proj(self.hidden(x))


class MoE(nn.Module):
    """Top-k of n gated-MLP experts with a softmax router; optional (gated) shared expert.

    Every expert runs on every token and is weighted by its gate (zero when not chosen): no
    data-dependent control flow, so it exports; per-token cost is n/k times a sparse kernel's.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.top_k, self.norm_topk = spec.n_experts_per_tok, spec.norm_topk_prob
        self.gate = nn.Linear(spec.dim, spec.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(spec.dim, spec.moe_ffn_dim, spec.mlp_act) for _ in range(spec.n_experts))
        self.shared_expert = (MLP(spec.dim, spec.shared_expert_ffn_dim, spec.mlp_act)
                              if spec.shared_expert_ffn_dim else None)
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
    """Pre-norm block. With ``spec.post_norms`` (Gemma) the attention and MLP outputs are normed too:
    ``post_attention_layernorm`` then acts on the attention output, ``pre_feedforward_layernorm`` /
    ``post_feedforward_layernorm`` wrap the MLP; without, ``post_attention_layernorm`` is the
    pre-MLP norm (Llama). Callers that run a layer in pieces use ``attn_residual`` / ``mlp_residual``."""

    def __init__(self, spec: ModelSpec, layer: int):
        super().__init__()
        eps, off = spec.norm_eps, spec.norm_offset
        self.input_layernorm = RMSNorm(spec.dim, eps, off)
        self.self_attn = Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.dim, eps, off)
        if spec.post_norms:
            self.pre_feedforward_layernorm = RMSNorm(spec.dim, eps, off)
            self.post_feedforward_layernorm = RMSNorm(spec.dim, eps, off)
        self.post_norms = spec.post_norms
        self.mlp = MoE(spec) if spec.is_moe_layer(layer) else MLP(spec.dim, spec.ffn_dim, spec.mlp_act)
        self.rope_kind = spec.rope_kind(layer)  # which RoPE table: "global", "local" or "none"
        self.sliding = spec.is_sliding_layer(layer)  # which mask: sliding window or full causal

    def attn_residual(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        return x + (self.post_attention_layernorm(attn_out) if self.post_norms else attn_out)

    @property
    def mlp_norm(self) -> RMSNorm:
        """The norm whose output the MLP reads (a quantizer folds input scales into it)."""
        return self.pre_feedforward_layernorm if self.post_norms else self.post_attention_layernorm

    def mlp_out(self, b: torch.Tensor) -> torch.Tensor:
        """What the MLP adds to the residual stream, from its normed input b."""
        y = self.mlp(b)
        return self.post_feedforward_layernorm(y) if self.post_norms else y

    def mlp_residual(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.mlp_out(self.mlp_norm(h))

    def forward(self, x, cos, sin, mask, input_pos):
        a = self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos)
        return self.mlp_residual(self.attn_residual(x, a))


class Transformer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.dim)
        self.layers = nn.ModuleList(DecoderLayer(spec, i) for i in range(spec.n_layers))
        self.norm = RMSNorm(spec.dim, spec.norm_eps, spec.norm_offset)
        self.lm_head = nn.Linear(spec.dim, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rope_frequencies(spec), persistent=False)
        rs = spec.rope_scaling
        if rs is not None and rs.rope_type == "longrope":
            self.register_buffer("inv_freq_long", rope_frequencies(spec, long=True), persistent=False)
        if spec.rope_local_theta:
            self.register_buffer("inv_freq_local", rope_frequencies(spec, "local"), persistent=False)
        if spec.embed_scale != 1.0:  # a buffer, so .to(dtype) rounds it as transformers does (Gemma, bf16)
            self.register_buffer("embed_scale", torch.tensor(spec.embed_scale, device=ROPE_DEVICE), persistent=False)
        self.max_cache_len = 0

    # ---- static KV cache -------------------------------------------------------------------
    def setup_cache(self, max_batch: int, max_seq: int, dtype: torch.dtype | None = None) -> None:
        """Give every attention layer a fixed-size cache; forward then needs ``input_pos``."""
        dtype = dtype or self.embed_tokens.weight.dtype
        for layer in self.layers:
            a = layer.self_attn
            a.cache = KVCache(max_batch, a.n_kv, max_seq, a.hd, dtype)
        self.max_cache_len = max_seq

    def drop_cache(self) -> None:
        for layer in self.layers:
            layer.self_attn.cache = None
        self.max_cache_len = 0

    # ---- pieces a caller running the layers itself needs (pruning, exporters) ---------------
    def long_rope(self, n_positions: int) -> bool:
        """LongRoPE's long factors apply when the model runs over more positions than it was
        pretrained on: the sequence without a cache, the cache length with one (llama.cpp's rule)."""
        rs = self.spec.rope_scaling
        return rs is not None and rs.rope_type == "longrope" and n_positions > rs.original_max_position_embeddings

    def rope(self, positions: torch.Tensor, dtype: torch.dtype, kind: str = "global", long: bool = False):
        """cos, sin (T, rope_dim) of one RoPE table at ``positions`` (T,); (None, None) for kind "none"."""
        if kind == "none":
            return None, None
        inv = self.inv_freq_local if kind == "local" else (self.inv_freq_long if long else self.inv_freq)
        freqs = positions.float()[:, None] * inv[None, :]  # (T, rope_dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        rs = self.spec.rope_scaling
        if kind == "global" and rs is not None and rs.attention_factor != 1.0:
            cos, sin = cos * rs.attention_factor, sin * rs.attention_factor
        return cos.to(dtype), sin.to(dtype)

    @property
    def rope_kinds(self) -> tuple[str, ...]:
        """The RoPE tables the layers use, in the order ``rope_table`` lays them out ("none" has none)."""
        used = {layer.rope_kind for layer in self.layers}
        return tuple(k for k in ("global", "local") if k in used)

    def rope_table(self, positions: torch.Tensor, dtype: torch.dtype, long: bool = False):
        """cos, sin (T, len(rope_kinds) * head_dim) for exporters: each kind's table padded to
        head_dim (cos 1, sin 0 on the dims RoPE leaves alone), the kinds side by side."""
        hd, cs, ss = self.spec.head_dim, [], []
        for kind in self.rope_kinds:
            cos, sin = self.rope(positions, torch.float32, kind, long)
            pad = hd - cos.shape[-1]
            cs.append(F.pad(cos, (0, pad), value=1.0))
            ss.append(F.pad(sin, (0, pad), value=0.0))
        if not cs:  # no layer rotates: one neutral table keeps the exporters' inputs uniform
            cs, ss = [torch.ones(len(positions), hd)], [torch.zeros(len(positions), hd)]
        return torch.cat(cs, -1).to(dtype), torch.cat(ss, -1).to(dtype)

    def attention_mask(self, q_pos: torch.Tensor, k_pos: torch.Tensor, sliding: bool) -> torch.Tensor:
        """(T, S) bool: query at q_pos[i] sees key at k_pos[j] <= q_pos[i], and within the window if sliding."""
        m = k_pos[None, :] <= q_pos[:, None]
        if sliding:
            m = m & (k_pos[None, :] > q_pos[:, None] - self.spec.sliding_window)
        return m

    def layer_inputs(self, positions: torch.Tensor, key_positions: torch.Tensor, n_positions: int,
                     dtype: torch.dtype) -> list[tuple]:
        """(cos, sin, mask) for every layer, each table computed once per kind."""
        long = self.long_rope(n_positions)
        ropes = {k: self.rope(positions, dtype, k, long) for k in {layer.rope_kind for layer in self.layers}}
        masks = {s: self.attention_mask(positions, key_positions, s) for s in {layer.sliding for layer in self.layers}}
        return [(*ropes[layer.rope_kind], masks[layer.sliding]) for layer in self.layers]

    def no_cache_inputs(self, T: int, dtype: torch.dtype) -> list[tuple]:
        """(cos, sin, mask) per layer for a cache-free pass over positions 0..T-1 (calibration)."""
        positions = torch.arange(T)
        return self.layer_inputs(positions, positions, T, dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        return x * self.embed_scale.to(x.dtype) if self.spec.embed_scale != 1.0 else x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(self.norm(x))
        c = self.spec.final_logit_softcap
        return c * torch.tanh(logits / c) if c else logits

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab). With a cache, ``input_pos`` (T,) is required."""
        B, T = tokens.shape
        x = self.embed(tokens)
        if self.max_cache_len:
            assert input_pos is not None, "a model with a KV cache needs input_pos"
            keys = torch.arange(self.max_cache_len, device=tokens.device)
            per_layer = self.layer_inputs(input_pos, keys, self.max_cache_len, x.dtype)
        else:
            positions = torch.arange(T, device=tokens.device)
            per_layer = self.layer_inputs(positions, positions, T, x.dtype)
        for layer, (cos, sin, mask) in zip(self.layers, per_layer):
            x = layer(x, cos, sin, mask, input_pos)
        return self.head(x)

    def num_params(self) -> int:
        seen: set[int] = set()
        n = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n
