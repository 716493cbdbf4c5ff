"""Bytes and operations of one forward pass, from a ModelSpec and a Recipe: pure arithmetic.

    from edge.sim.model import weight_tensors, forward_cost
    cost = forward_cost(spec, recipe, new_tokens=1, context=512)   # one decode step
    cost.weight_bytes, cost.flops, cost.kv_read_bytes

Counting conventions: 1 multiply-add = 2 operations; a matmul of (T, cols) by (cols, rows)
costs 2*T*rows*cols. Attention of T new tokens over positions p costs 4*q_dim*p per token
(QK^T and AV). Expert weights are read once per step for every distinct expert touched.
A sliding-window layer attends to, and caches, at most ``sliding_window`` positions when the
runtime keeps a window-sized cache (llama.cpp); a static full-length cache (ExecuTorch, ONNX
exports) holds and scans the whole context on every layer (``windowed=False``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from edge.model.spec import ModelSpec
from edge.sim.recipes import Recipe
from edge.targets import CPU_OPS


@dataclass(frozen=True)
class Tensor:
    cls: str  # tensor class (recipes.TENSOR_CLASSES)
    layer: int  # -1 outside the layers
    rows: int  # output features
    cols: int  # input features (the row length a quantizer blocks)
    copies: int = 1  # experts of this layer
    expert: bool = False


@functools.lru_cache(maxsize=64)
def weight_tensors(spec: ModelSpec, separate_embedding: bool = False) -> tuple[Tensor, ...]:
    """Every weight tensor of the model. A tied embedding appears once, as 'output', unless the
    artifact stores the table twice (``separate_embedding``). (Memoized: the simulator asks once
    per decode step.)"""
    d, q, kv = spec.dim, spec.q_dim, spec.kv_dim
    tied = spec.tie_embeddings and not separate_embedding
    out = [Tensor("output" if tied else "embedding", -1, spec.vocab_size, d)]
    if not tied:
        out.append(Tensor("output", -1, spec.vocab_size, d))
    out.append(Tensor("norm", -1, 1, d))
    for i in range(spec.n_layers):
        out += [
            Tensor("attn_q", i, q, d), Tensor("attn_k", i, kv, d), Tensor("attn_v", i, kv, d),
            Tensor("attn_o", i, d, q), Tensor("norm", i, spec.norms_per_layer, d),
        ]
        if spec.qk_norm:  # one (head_dim,) weight each for q and k, shared by the heads
            out.append(Tensor("norm", i, 2, spec.head_dim))
        if spec.is_moe_layer(i):
            f, e = spec.moe_ffn_dim, spec.n_experts
            out += [
                Tensor("router", i, spec.n_experts, d),
                Tensor("ffn_gate", i, f, d, e, True), Tensor("ffn_up", i, f, d, e, True),
                Tensor("ffn_down", i, d, f, e, True),
            ]
            if spec.shared_expert_ffn_dim:
                s = spec.shared_expert_ffn_dim
                out += [Tensor("ffn_gate", i, s, d), Tensor("ffn_up", i, s, d), Tensor("ffn_down", i, d, s)]
        else:
            f = spec.ffn_dim
            out += [Tensor("ffn_gate", i, f, d), Tensor("ffn_up", i, f, d), Tensor("ffn_down", i, d, f)]
    return tuple(out)


def expected_distinct_experts(n_experts: int, top_k: int, routed_tokens: int) -> float:
    """Expected experts touched when ``routed_tokens`` each pick ``top_k`` of ``n_experts``.

    Uniform, independent routing: an expert is missed by one token with probability 1 - k/E,
    so E * (1 - (1 - k/E)^N) are touched. Real routers are skewed, which touches fewer.
    """
    if routed_tokens <= 0:
        return 0.0
    return n_experts * (1 - (1 - top_k / n_experts) ** routed_tokens)


def weight_bytes(spec: ModelSpec, recipe: Recipe) -> dict[str, float]:
    """Stored bytes by tensor class (all experts)."""
    out: dict[str, float] = {}
    for t in weight_tensors(spec, recipe.separate_embedding):
        b = t.copies * recipe.tensor_bytes(t.cls, t.rows, t.cols, max(t.layer, 0), spec.n_layers)
        key = "experts" if t.expert else t.cls
        out[key] = out.get(key, 0.0) + b
    return out


def norm_elements(spec: ModelSpec) -> int:
    """Elements every token's RMSNorms normalise: the residual stream's norms, plus each q and k
    head under q/k norms (Qwen3, Gemma 3)."""
    per_layer = spec.norms_per_layer * spec.dim + (spec.q_dim + spec.kv_dim if spec.qk_norm else 0)
    return spec.dim + spec.n_layers * per_layer


def attended_positions(spec: ModelSpec, layer: int, start: int, new_tokens: int, windowed: bool = True) -> float:
    """Sum over ``new_tokens`` tokens at positions start.. of the positions each attends to (itself
    included): p + 1 for a full layer, min(p + 1, window) for a sliding one when ``windowed``."""
    full = new_tokens * start + new_tokens * (new_tokens + 1) / 2
    if not (windowed and spec.is_sliding_layer(layer)):
        return full
    w = spec.sliding_window
    # positions p = start .. start+T-1 attend min(p+1, w): the ones below w ramp up, the rest see w
    ramp = max(0, min(start + new_tokens, w) - start)  # tokens with p + 1 <= w
    ramped = ramp * start + ramp * (ramp + 1) / 2
    return ramped + (new_tokens - ramp) * w


def kv_positions(spec: ModelSpec, context: int, windowed: bool = True) -> int:
    """Cached positions summed over the layers at ``context``: a sliding layer keeps its window
    when ``windowed`` (a runtime with a window-sized cache), the whole context otherwise."""
    if not windowed:
        return spec.n_layers * context
    return sum(spec.kv_positions(i, context) for i in range(spec.n_layers))


def kv_cache_bytes(spec: ModelSpec, recipe: Recipe, context: int, batch: int = 1, windowed: bool = True) -> float:
    return 2 * spec.kv_dim * kv_positions(spec, context, windowed) * recipe.kv_bytes * batch


def average_bits(spec: ModelSpec, recipe: Recipe) -> float:
    n = sum(t.rows * t.cols * t.copies for t in weight_tensors(spec, recipe.separate_embedding))
    return 8 * sum(weight_bytes(spec, recipe).values()) / n


@dataclass(frozen=True)
class ForwardCost:
    """One forward pass of ``tokens`` new tokens (times batch) at a given context."""

    tokens: int  # new tokens per sequence
    batch: int
    flops: float  # all matmul + attention operations
    weight_bytes: float  # weight bytes streamed from memory (distinct experts only)
    kv_read_bytes: float
    kv_write_bytes: float
    distinct_experts: float  # per MoE layer, expected (0 for dense)
    cpu_flops: dict  # CPU_OPS part -> operations, for parts a runtime may leave on the CPU
    cpu_bytes: dict  # CPU_OPS part -> bytes those parts read

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes


def forward_cost(spec: ModelSpec, recipe: Recipe, new_tokens: int, context: int, batch: int = 1,
                 start: int | None = None, attend_full_context: bool = False) -> ForwardCost:
    """Cost of one forward pass of ``new_tokens`` per sequence, ending at position ``context``.

    ``start`` is the first new position (default context - new_tokens). With
    ``attend_full_context`` (a static KV cache without a length-aware kernel) every token attends
    over the whole ``context`` on every layer, sliding ones included; otherwise over the positions
    before it (causal), and a sliding layer over its window only.
    """
    start = context - new_tokens if start is None else start
    n = new_tokens * batch  # tokens through the linear layers
    flops = 0.0
    wbytes = 0.0
    distinct = 0.0
    cpu_flops = dict.fromkeys(CPU_OPS, 0.0)
    cpu_bytes = dict.fromkeys(CPU_OPS, 0.0)
    tied = spec.tie_embeddings and not recipe.separate_embedding
    for t in weight_tensors(spec, recipe.separate_embedding):
        tb = recipe.tensor_bytes(t.cls, t.rows, t.cols, max(t.layer, 0), spec.n_layers)
        if t.cls == "norm":  # operations counted below, from the elements normalised
            wbytes += tb
            continue
        if t.cls == "embedding":  # a gather: one row per token
            cpu_bytes["embedding"] += n * tb / t.rows
            wbytes += min(n, t.rows) * tb / t.rows
            continue
        if t.expert:
            k, e = recipe.experts_per_token or spec.n_experts_per_tok, spec.n_experts
            distinct = expected_distinct_experts(e, k, n)
            flops += 2 * t.rows * t.cols * k * n * recipe.dense_fraction(t.cls)
            wbytes += distinct * tb
            continue
        f = 2 * t.rows * t.cols * n * recipe.dense_fraction(t.cls)  # N:M sparse linears: N/M of it
        if t.cls == "output":
            # the head runs on the last token of each sequence only (prefill needs no other logits)
            f = 2 * t.rows * t.cols * batch
            cpu_flops["lm_head"] += f
            cpu_bytes["lm_head"] += tb
            cpu_flops["sampling"] += 5 * t.rows * batch
            if tied:
                cpu_bytes["embedding"] += n * tb / t.rows
        if t.cls == "router":
            cpu_flops["moe_router"] += f
        flops += f
        wbytes += tb
    cpu_flops["norm"] += 4 * norm_elements(spec) * n
    # attention: token at position p attends over p+1 positions (or the whole context), per layer
    windowed = not attend_full_context
    if attend_full_context:
        attended = spec.n_layers * new_tokens * context
    else:
        attended = sum(attended_positions(spec, i, start, new_tokens) for i in range(spec.n_layers))
    att = 4 * spec.q_dim * attended * batch
    flops += att
    cpu_flops["attention"] += att
    cpu_flops["softmax"] += 5 * spec.n_heads * attended * batch
    rope_layers = spec.n_layers - len(spec.nope_layers)
    cpu_flops["rope"] += 6 * (spec.q_dim + spec.kv_dim) * spec.rope_dim / spec.head_dim * n * rope_layers
    kv_elem = 2 * spec.kv_dim * recipe.kv_bytes
    read_ctx = context if attend_full_context else start
    kv_read = kv_elem * kv_positions(spec, read_ctx, windowed) * batch
    kv_write = kv_elem * spec.n_layers * n
    cpu_bytes["attention"] += kv_read + kv_write
    return ForwardCost(new_tokens, batch, flops, wbytes, kv_read, kv_write, distinct, cpu_flops, cpu_bytes)
