"""The ONNX graph form both ONNX writers share (``edge.export.onnx``: fp32, fp16, QDQ W8A8;
``edge.export.qdq16``: QDQ w4a16): the reference decoder as one or more graphs ("parts") with the KV
cache as explicit inputs and outputs, the consumers' format constraints, and the layout a runner reads.

Every part runs a contiguous range of layers. Inputs and outputs, per part::

    input_ids (1, T) int64            first part only     | hidden (1, T, dim)  other parts
    attn_mask (1, M, T, S+T) float    additive: 0 where a query may look, -10000 elsewhere; M = 2 for
                                      a model with sliding-window layers (mask 1 also hides the
                                      positions older than the window), else 1
    cos, sin  (1, 1, T, K*head_dim)   RoPE tables at the T positions, K = 1, or 2 when sliding
                                      layers have their own base (Gemma 3: global then local);
                                      columns RoPE leaves alone (partial rotary) hold cos 1, sin 0
    past_key_<i>, past_value_<i> (1, n_kv, S, head_dim)   the cache, S = max_seq slots
    -> logits (1, T, vocab) last part | hidden (1, T, dim) other parts
    -> key_<i>, value_<i> (1, n_kv, T, head_dim)          the T new entries: the caller writes
                                                          them at slots [pos, pos+T)

Mask and RoPE are inputs so that the graph has no data-dependent shapes or position arithmetic:
fixed-shape NPU toolchains (opset 11, batch 1) take it as is. A model whose graph exceeds the
profile's size or output-count limit is split into parts that run in sequence.

    m = prepare(model, torch.float32)
    parts, reason = plan_parts(m, ONNX_FORMATS["onnx"], 2e9, 4)
    export_part(OnnxPart(m, *parts[0]), Path("model.onnx"), OnnxConfig(), m.spec, torch.float32)
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError, EdgeError, require_one_of
from edge.export import ToolWarnings
from edge.model.llama import rope_rotation
from edge.quant.w8a8 import W8A8Config

MASK_MIN = -10000.0  # finite: NPU toolchains (QNN HTP) mis-handle -inf in quantized masks
ONNX_DTYPES = ("fp32", "fp16", "qdq-w8a8", "qdq-w4a16")  # qdq-w4a16: edge.export.qdq16


@dataclass(frozen=True)
class OnnxFormat:
    """What an ONNX consumer accepts: the constraints a target's toolchain puts on the graph."""

    opset: int = 18
    max_ir_version: int = 0  # 0: any
    fixed_seq: int = 0  # T of every graph when the toolchain needs static shapes (0: dynamic)
    max_outputs: int = 0  # 0: any
    max_graph_bytes: float = 2e9  # protobuf's 2 GB limit when weights are stored inline


# format name in targets/*.yaml -> constraints. One visible table.
ONNX_FORMATS: dict[str, OnnxFormat] = {
    "onnx": OnnxFormat(),
    "onnx-qdq": OnnxFormat(opset=18, fixed_seq=32),  # QNN HTP / RKNN: static shapes
    "onnx-opset11": OnnxFormat(opset=11, max_ir_version=7, fixed_seq=32, max_outputs=32),  # Horizon hb_mapper
}


@dataclass(frozen=True)
class OnnxConfig:
    dtype: str = "fp32"
    max_seq: int = 512  # cache slots S
    format: str = "onnx"
    max_graph_bytes: float = 0.0  # the target runtime's limit (0: the format's own)
    w8a8: W8A8Config | None = None  # qdq-w8a8: the static-int8 scheme (None: W8A8Config())

    def __post_init__(self) -> None:
        require_one_of("onnx dtype", self.dtype, ONNX_DTYPES)
        require_one_of("onnx format", self.format, ONNX_FORMATS)
        if self.max_seq < 2:
            raise ConfigError(f"onnx max_seq must be at least 2, got {self.max_seq}")

    @property
    def constraints(self) -> OnnxFormat:
        return ONNX_FORMATS[self.format]


@dataclass
class OnnxExport:
    files: list[str]  # in run order
    layout: dict  # what the runner needs: see onnx_layout()
    seconds: float
    quantized_matmuls: int = 0
    parts_reason: str = ""
    precision: dict | None = None  # qdq-w8a8: W8A8Plan.summary() (what is not int8, and its MACs)
    warnings: list[str] = field(default_factory=list)  # what the exporter/quantizer warned (ToolWarnings)
    weights: dict | None = None  # bytes per tensor class in the written graphs (edge.export.weights)

    def to_dict(self) -> dict:
        d = {"files": self.files, "seconds": round(self.seconds, 1), "quantized_matmuls": self.quantized_matmuls,
             "parts_reason": self.parts_reason, **{k: self.layout[k] for k in ("dtype", "opset", "fixed_seq")},
             "warnings": self.warnings}
        if self.precision is not None:
            d["precision"] = self.precision
        return d


# ---- the graph -------------------------------------------------------------------------------
class MatmulRMSNorm(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        dim = norm.weight.shape[0]
        self.eps = norm.eps
        # Gemma's (offset + w): the offset folded into a constant weight (the reference's own one is shared)
        self.weight = norm.weight if not norm.offset else nn.Parameter(
            (norm.weight.detach().float() + norm.offset).to(norm.weight.dtype), requires_grad=False)
        self.register_buffer("inv_dim", torch.full((dim, 1), 1.0 / dim, dtype=norm.weight.dtype), persistent=False)

    def forward(self, x):
        return x * torch.rsqrt((x * x) @ self.inv_dim + self.eps) * self.weight


class IOAttention(nn.Module):
    """Attention over (past cache ++ new keys); returns the output and the new K, V entries.

    ``rope_slot``: which head_dim-wide block of the cos/sin inputs this layer rotates with (None:
    a NoPE layer); ``mask_slot``: which of the mask inputs it takes (1: sliding window)."""

    def __init__(self, attn: nn.Module, rope_slot: int | None = 0, mask_slot: int = 0, rope_dim: int = 0):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = attn.n_heads, attn.n_kv, attn.hd
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.qk_norm = attn.qk_norm
        if attn.qk_norm:  # over head_dim, on (B, T, heads, hd)
            self.q_norm, self.k_norm = MatmulRMSNorm(attn.q_norm), MatmulRMSNorm(attn.k_norm)
        rot = rope_rotation(self.hd, rope_dim or self.hd)
        self.register_buffer("rot", rot.to(attn.q_proj.weight.dtype), persistent=False)
        self.scale = attn.scale or 1.0 / math.sqrt(self.hd)
        self.rope_slot, self.mask_slot = rope_slot, mask_slot

    def forward(self, x, mask, cos, sin, past_k, past_v):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd)  # (B, T, nh, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd)  # (B, T, nkv, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, nh, T, hd), (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.rope_slot is not None:
            lo = self.rope_slot * self.hd
            c, s_ = cos[..., lo : lo + self.hd], sin[..., lo : lo + self.hd]  # (1, 1, T, hd)
            q = q * c + (q @ self.rot) * s_
            k = k * c + (k @ self.rot) * s_
        mask = mask[:, self.mask_slot : self.mask_slot + 1]  # (1, 1, T, S+T)
        keys = torch.cat([past_k, k], 2)  # (B, nkv, S+T, hd)
        vals = torch.cat([past_v, v], 2)
        rep = self.n_heads // self.n_kv
        # GQA: group the query heads by their KV head instead of repeating K and V
        qg = q.reshape(B, self.n_kv, rep * T, self.hd)  # (B, nkv, rep*T, hd)
        s = (qg @ keys.transpose(2, 3)) * self.scale  # (B, nkv, rep*T, S+T)
        L = keys.shape[2]
        s = s.reshape(B, self.n_heads, T, L) + mask
        p = torch.softmax(s.float(), -1).to(q.dtype).reshape(B, self.n_kv, rep * T, L)
        y = (p @ vals).reshape(B, self.n_heads, T, self.hd)  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd)), k, v


class OnnxPart(nn.Module):
    """Layers [lo, hi) of the model; the first part embeds, the last applies norm + lm_head."""

    def __init__(self, model: nn.Module, lo: int, hi: int):
        super().__init__()
        self.first, self.last = lo == 0, hi == model.spec.n_layers
        self.embed_tokens = model.embed_tokens if self.first else None
        self.layers = nn.ModuleList(model.layers[lo:hi])
        self.norm = MatmulRMSNorm(model.norm) if self.last else None
        self.lm_head = model.lm_head if self.last else None
        spec = model.spec
        self.embed_scale = (model.embed_scale.to(model.embed_tokens.weight.dtype)
                            if self.first and spec.embed_scale != 1.0 else None)
        self.softcap = spec.final_logit_softcap

    def forward(self, x, mask, cos, sin, *past):
        if self.first:
            x = self.embed_tokens(x)
            if self.embed_scale is not None:
                x = x * self.embed_scale
        new = []
        for i, layer in enumerate(self.layers):
            a, k, v = layer.self_attn(layer.input_layernorm(x), mask, cos, sin, past[2 * i], past[2 * i + 1])
            x = layer.mlp_residual(layer.attn_residual(x, a))
            new += [k, v]
        if self.last:
            x = self.lm_head(self.norm(x))
            if self.softcap:
                x = self.softcap * torch.tanh(x / self.softcap)
        return (x, *new)


def prepare(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy with norms as matmuls and IO attention; the reference model is untouched."""
    spec = model.spec
    m = copy.deepcopy(model).eval()
    m.drop_cache()
    if dtype == torch.float16:
        m = m.half()  # RMSNorm of the copy runs in fp16 too (MatmulRMSNorm below)
    else:
        m = m.float()
    for p in m.parameters():
        p.requires_grad_(False)
    kinds = m.rope_kinds
    for layer in m.layers:
        for name in NORMS:
            if hasattr(layer, name):
                setattr(layer, name, MatmulRMSNorm(getattr(layer, name)))
        slot = kinds.index(layer.rope_kind) if layer.rope_kind != "none" else None
        layer.self_attn = IOAttention(layer.self_attn, slot, int(layer.sliding), spec.rope_dim)
    return m


# the residual-stream norms a layer may have (the last two with Gemma's post-norms)
NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def input_widths(spec) -> tuple[int, int]:
    """(M, K): mask channels (2 with sliding layers) and RoPE tables (2 with a local base)."""
    kinds = {spec.rope_kind(i) for i in range(spec.n_layers)} - {"none"}
    return (2 if spec.sliding_window else 1), max(len(kinds), 1)


def part_bytes(model: nn.Module, lo: int, hi: int, bytes_per: int) -> int:
    """Weight bytes a part's graph stores (embedding in the first, lm_head in the last)."""
    n = sum(p.numel() for layer in model.layers[lo:hi] for p in layer.parameters())
    if lo == 0:
        n += model.embed_tokens.weight.numel()
    if hi == model.spec.n_layers:
        n += model.lm_head.weight.numel() + model.norm.weight.numel()
    return n * bytes_per


def plan_parts(model: nn.Module, fmt: OnnxFormat, max_bytes: float, bytes_per: int) -> tuple[list[tuple[int, int]], str]:
    """Split the layers greedily so that every part meets the size and output-count limits."""
    n = model.spec.n_layers
    max_layers = (fmt.max_outputs - 1) // 2 if fmt.max_outputs else n
    if max_layers < 1:
        raise ConfigError(f"onnx format allows {fmt.max_outputs} outputs; one layer needs 3 (hidden, key, value)")
    parts, lo = [], 0
    while lo < n:
        hi = lo + 1
        if part_bytes(model, lo, hi, bytes_per) > max_bytes:
            raise EdgeError(
                f"layer {lo} alone needs {part_bytes(model, lo, hi, bytes_per):,} bytes, over the graph limit "
                f"of {max_bytes:,.0f} bytes: quantize to fewer bits or pick a target without this limit")
        while hi < n and hi - lo < max_layers and part_bytes(model, lo, hi + 1, bytes_per) <= max_bytes:
            hi += 1
        parts.append((lo, hi))
        lo = hi
    reason = ""
    if len(parts) > 1:
        reason = (f"split into {len(parts)} parts: graph limit {max_bytes:,.0f} bytes, "
                  f"{fmt.max_outputs or 'any'} outputs per graph")
    return parts, reason


def onnx_layout(model: nn.Module, cfg: OnnxConfig, files: list[str], parts: list[tuple[int, int]]) -> dict:
    spec = model.spec
    fixed = min(cfg.constraints.fixed_seq, cfg.max_seq)
    return {"dtype": cfg.dtype, "opset": cfg.constraints.opset, "fixed_seq": fixed,
            "max_seq": cfg.max_seq, "n_layers": spec.n_layers, "n_kv_heads": spec.n_kv_heads,
            "head_dim": spec.head_dim, "dim": spec.dim, "vocab_size": spec.vocab_size,
            "rope_cos_sin": "inputs cos/sin (1,1,T,K*hd) from edge.export.onnx.rope_tables",
            "sliding_window": spec.sliding_window,  # > 0: attn_mask has a second, windowed channel
            "mask_min": MASK_MIN, "parts": [{"file": f, "layers": [lo, hi]} for f, (lo, hi) in zip(files, parts)]}


def rope_tables(model: nn.Module, max_seq: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (max_seq, K*head_dim): the rows the runner feeds (LongRoPE picks its factors by max_seq)."""
    cos, sin = model.rope_table(torch.arange(max_seq), torch.float32, long=model.long_rope(max_seq))
    return cos.numpy(), sin.numpy()


def root_cause(e: BaseException) -> str:
    """First line of the innermost exception: the exporter wraps the useful message twice."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def export_part(part: OnnxPart, path: Path, cfg: OnnxConfig, spec, dtype: torch.dtype,
                fmt: OnnxFormat | None = None, tw: ToolWarnings | None = None) -> None:
    """Export one part to ``path``; torch's warnings go to ``tw`` (the caller records them)."""
    tw = tw if tw is not None else ToolWarnings()
    fmt = fmt or cfg.constraints
    T = min(fmt.fixed_seq, cfg.max_seq) if fmt.fixed_seq else 2
    S = cfg.max_seq
    first = (torch.zeros(1, T, dtype=torch.long) if part.first else torch.zeros(1, T, spec.dim, dtype=dtype))
    M, K = input_widths(spec)
    args = [first, torch.zeros(1, M, T, S + T, dtype=dtype), torch.ones(1, 1, T, K * spec.head_dim, dtype=dtype),
            torch.zeros(1, 1, T, K * spec.head_dim, dtype=dtype)]
    names = ["input_ids" if part.first else "hidden", "attn_mask", "cos", "sin"]
    outs = ["logits" if part.last else "hidden_out"]
    for i in range(len(part.layers)):
        # distinct tensors: export treats one tensor passed twice as aliased inputs (one graph input)
        args += [torch.zeros(1, spec.n_kv_heads, S, spec.head_dim, dtype=dtype) for _ in range(2)]
        names += [f"past_key_{i}", f"past_value_{i}"]
        outs += [f"key_{i}", f"value_{i}"]
    dyn = None
    if not fmt.fixed_seq:
        seq, ctx = torch.export.Dim.DYNAMIC(min=1, max=S), torch.export.Dim.DYNAMIC(min=S + 1, max=2 * S)
        dyn = {"x": {1: seq}, "mask": {2: seq, 3: ctx}, "cos": {2: seq}, "sin": {2: seq},
               "past": tuple(None for _ in args[4:])}
    with torch.no_grad(), tw.catch():
        if fmt.opset < 18:  # the dynamo exporter writes opset 18+; old toolchains get the TorchScript one
            try:
                torch.onnx.export(part, tuple(args), str(path), input_names=names, output_names=outs,
                                  opset_version=fmt.opset, dynamo=False, do_constant_folding=True)
            except Exception as e:
                raise EdgeError(f"ONNX export (opset {fmt.opset}) failed: {root_cause(e)}") from e
            return
        try:
            # torch.export first: torch.onnx turns the varargs' tuple of shapes into a list and rejects it
            ep = torch.export.export(part, tuple(args), dynamic_shapes=dyn, strict=False)
            prog = torch.onnx.export(ep, tuple(args), None, input_names=names, output_names=outs,
                                     opset_version=fmt.opset, dynamo=True, external_data=False,
                                     optimize=True, verbose=False)
        except Exception as e:
            raise EdgeError(f"ONNX export (opset {fmt.opset}) failed: {root_cause(e)}") from e
    strip_host_metadata(prog.model)
    prog.save(str(path), external_data=False)


# node metadata torch.onnx writes that names files on the exporting machine (Python stack traces with
# the checkout's paths and line numbers): the same model and recipe must give the same bytes anywhere
HOST_METADATA = ("pkg.torch.onnx.stack_trace",)


def strip_host_metadata(model) -> None:
    """Drop HOST_METADATA from every node of an onnx_ir model (main graph, subgraphs, functions)."""
    import onnx_ir as ir

    graphs = [model.graph, *model.functions.values()]
    for g in graphs:
        for node in ir.traversal.RecursiveGraphIterator(g):
            for key in HOST_METADATA:
                node.metadata_props.pop(key, None)


def check_format(path: Path, fmt: OnnxFormat) -> None:
    """Refuse a graph the consumer cannot take: opset, IR version, output count; names the rule."""
    import onnx

    mp = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > fmt.opset:
        raise EdgeError(f"{path.name}: opset {opset} exceeds the format's {fmt.opset}")
    if fmt.max_ir_version and mp.ir_version > fmt.max_ir_version:
        mp.ir_version = fmt.max_ir_version  # the exporter writes the newest IR; the graph needs no newer
        onnx.save(mp, str(path))
    if fmt.max_outputs and len(mp.graph.output) > fmt.max_outputs:
        raise EdgeError(f"{path.name}: {len(mp.graph.output)} outputs, the format allows {fmt.max_outputs}")
    domains = {n.domain for n in mp.graph.node} - {"", "ai.onnx"}
    if domains:
        raise EdgeError(f"{path.name}: ops from custom domains {sorted(domains)} that the format cannot take")


def weight_digest(a: np.ndarray) -> str:
    """sha256 of a weight's float32 bytes: how the QDQ writers find a linear's MatMul in the exported graph."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()
