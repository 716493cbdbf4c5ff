"""Export step, ExecuTorch: the reference decoder -> a ``.pte`` program lowered to XNNPACK.

``forward(tokens (1, T) int64, start_pos (1,) int64) -> logits (1, T, vocab) fp32`` runs both
prefill (T tokens) and decode (T = 1) against a static KV cache held inside the program as
mutable buffers. With ``PteConfig(decode_method=True)`` a second method, ``decode``, is the same
graph exported with T fixed at 1: with static shapes XNNPACK takes the reshapes too, so a layer is
one or two delegate calls instead of nine; both methods read and write one KV cache
(``share_mutable_buffers``) and share the weights. It is off by default: on the 2-core host it
decoded no faster and it doubles the lowering time (docs/export.md).

Export-friendly rewrites are applied to a copy of the model, never to the reference (measured on
2 cores, they make decode 2.8x faster, see docs/export.md):

* cache writes and attention through ExecuTorch's own ``llama::update_cache`` and
  ``llama::custom_sdpa`` kernels (GQA and causal masking from ``start_pos`` inside the kernel);
* RMSNorm's mean of squares as a matmul, which XNNPACK takes, instead of a portable ``mean``;
* RoPE as ``x*C + (x@R)*S`` with a fixed rotation matrix R, instead of slicing and stacking.

Constant methods (``get_max_seq_len``, ``get_vocab_size``, ``use_kv_cache``, ``get_bos_id``,
``get_eos_ids`` ...) describe the program the way ExecuTorch's native LLM runner reads them.

    from edge.export.executorch import PteConfig, export_pte
    res = export_pte(model, "model.pte", PteConfig(quant="8da4w", max_seq=512))
    res.outside_delegate   # {'llama.custom_sdpa.default': 30, ...}: ops left on CPU kernels
    res, hit = export_pte_cached(model, "model.pte", PteConfig())   # the stage cache's lowered program
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edge.cache import StageCache, code_hash, model_code, model_hash, tool_versions
from edge.errors import ConfigError, EdgeError, require_one_of
from edge.export import ToolWarnings
from edge.export.weights import WeightTally, class_of
from edge.model.llama import rope_rotation
from edge.runtime.executorch import load_custom_ops

# recipe name -> (activation, weight bits): what each .pte weight format means. torchao's
# weight-only configs do not lower in ExecuTorch 1.5.1 ("Missing out variants"), so only the
# dynamic-activation ones are offered.
PTE_QUANT: dict[str, tuple[str, int]] = {
    "fp32": ("fp32", 32),
    "8da4w": ("int8 dynamic per token", 4),
    "8da8w": ("int8 dynamic per token", 8),
}
PTE_FORMAT_VERSION = 1  # bump when the forward signature or constant methods change


@dataclass(frozen=True)
class PteConfig:
    """How to export: weight format, context length, group size of the 4-bit weights."""

    quant: str = "fp32"
    max_seq: int = 512
    group_size: int = 32
    decode_method: bool = False  # also export ``decode``: forward with a static T=1 (see the module doc)

    def __post_init__(self) -> None:
        require_one_of("pte quant", self.quant, PTE_QUANT)
        if self.max_seq < 2:
            raise ConfigError(f"pte max_seq must be at least 2, got {self.max_seq}")
        if self.group_size not in (32, 64, 128, 256):
            raise ConfigError(f"pte group_size {self.group_size} not allowed; allowed: 32, 64, 128, 256")


@dataclass
class PteExport:
    path: Path
    config: PteConfig
    seconds: float  # export + lowering + serialisation
    delegated: int  # XNNPACK delegate calls in the program
    outside_delegate: dict[str, int] = field(default_factory=dict)  # op -> count on CPU kernels
    quantized_linears: int = 0
    skipped_linears: tuple[str, ...] = ()  # Linear layers whose input width is not a group multiple
    decode_delegated: int = 0  # the same two figures for the static T=1 ``decode`` method
    decode_outside_delegate: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # what torch.export / ExecuTorch warned about (edge.export.ToolWarnings)
    weights: dict = field(default_factory=dict)  # bytes per tensor class in the program (pte_weights)

    def to_dict(self) -> dict:
        out = {"path": self.path.name, "quant": self.config.quant, "max_seq": self.config.max_seq,
               "group_size": self.config.group_size, "seconds": round(self.seconds, 1),
               "delegated": self.delegated, "outside_delegate": dict(sorted(self.outside_delegate.items())),
               "quantized_linears": self.quantized_linears, "skipped_linears": list(self.skipped_linears),
               "warnings": list(self.warnings), "weights": self.weights}
        if self.config.decode_method:
            out |= {"decode_delegated": self.decode_delegated,
                    "decode_outside_delegate": dict(sorted(self.decode_outside_delegate.items()))}
        return out


# ---- export-friendly module swaps (applied to a copy) ----------------------------------------
class MatmulRMSNorm(nn.Module):
    """RMSNorm with the mean of squares as ``(x*x) @ (1/dim)``: a matmul XNNPACK runs. Gemma's
    ``(offset + w)`` is folded into the weight."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        dim = norm.weight.shape[0]
        self.eps = norm.eps
        self.weight = nn.Parameter(norm.weight.detach().float().clone() + norm.offset, requires_grad=False)
        self.register_buffer("inv_dim", torch.full((dim, 1), 1.0 / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = (x * x) @ self.inv_dim  # (..., 1)
        return x * torch.rsqrt(ms + self.eps) * self.weight


class CustomOpAttention(nn.Module):
    """The reference Attention with ExecuTorch's cache and SDPA kernels; cache (1, S, n_kv, hd).

    ``rope_slot``: which head_dim-wide block of the RoPE tables the layer rotates with (None: NoPE);
    a sliding layer passes ``custom_sdpa`` an additive (T, S) mask hiding keys outside its window."""

    def __init__(self, attn: nn.Module, max_seq: int, rope_slot: int | None, window: int, rope_dim: int):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = attn.n_heads, attn.n_kv, attn.hd
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.qk_norm = attn.qk_norm
        if attn.qk_norm:
            self.q_norm, self.k_norm = MatmulRMSNorm(attn.q_norm), MatmulRMSNorm(attn.k_norm)
        self.scale = attn.scale  # None: the kernel's 1/sqrt(hd)
        self.rope_slot, self.window, self.max_seq = rope_slot, window, max_seq
        self.register_buffer("rot", rope_rotation(self.hd, rope_dim), persistent=False)
        shape = (1, max_seq, self.n_kv, self.hd)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def forward(self, x, cos, sin, start: int):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd)  # (B, T, nh, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd)  # (B, T, nkv, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_slot is not None:
            lo = self.rope_slot * self.hd
            c, s = cos[..., lo : lo + self.hd], sin[..., lo : lo + self.hd]  # (1, T, 1, hd)
            q = q * c + (q @ self.rot) * s
            k = k * c + (k @ self.rot) * s
        torch.ops.llama.update_cache(k, self.k_cache, start)
        torch.ops.llama.update_cache(v, self.v_cache, start)
        if self.window:
            pos = torch.arange(T) + start  # (T,)
            keys = torch.arange(self.max_seq)  # (S,)
            seen = (keys[None, :] <= pos[:, None]) & (keys[None, :] > pos[:, None] - self.window)
            mask = torch.where(seen, 0.0, float("-inf"))  # (T, S)
            y = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start, mask, 0, False, self.scale)
        else:
            y = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start, None, 0, True, self.scale)
        return self.o_proj(y.reshape(B, T, self.n_heads * self.hd))  # y (B, T, nh, hd)


class SigmoidGeluMLP(nn.Module):
    """GeGLU with the tanh-approximate GELU written as ``x * sigmoid(2z)`` (= x * (1 + tanh z) / 2,
    z = sqrt(2/pi) (x + 0.044715 x^3)): XNNPACK's own GELU is a further approximation, 6e-4 off the
    reference's logits on the tiny Gemma 3 model, while its sigmoid matches to 2e-6."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(self, x):
        g = self.gate_proj(x)
        z = (2.0 * math.sqrt(2.0 / math.pi)) * (g + 0.044715 * g * g * g)
        return self.down_proj(g * torch.sigmoid(z) * self.up_proj(x))


class PteDecoder(nn.Module):
    """The reference Transformer's weights behind the .pte forward signature."""

    def __init__(self, model: nn.Module, max_seq: int):
        super().__init__()
        spec = model.spec
        self.max_seq = max_seq
        self.embed_tokens = model.embed_tokens
        self.embed_scale = spec.embed_scale if spec.embed_scale != 1.0 else None
        self.softcap = spec.final_logit_softcap
        self.layers = model.layers
        kinds = model.rope_kinds
        for layer in self.layers:
            for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                         "post_feedforward_layernorm"):
                if hasattr(layer, name):
                    setattr(layer, name, MatmulRMSNorm(getattr(layer, name)))
            if spec.mlp_act == "gelu_tanh":
                layer.mlp = SigmoidGeluMLP(layer.mlp)
            slot = kinds.index(layer.rope_kind) if layer.rope_kind != "none" else None
            layer.self_attn = CustomOpAttention(layer.self_attn, max_seq, slot,
                                                spec.sliding_window if layer.sliding else 0, spec.rope_dim)
        self.norm = MatmulRMSNorm(model.norm)
        self.lm_head = model.lm_head
        # (S, K*hd): LongRoPE picks its factors by the cache length, as the reference with a cache does
        cos, sin = model.rope_table(torch.arange(max_seq), torch.float32, long=model.long_rope(max_seq))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens: torch.Tensor, start_pos: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        start = start_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + T <= self.max_seq)
        cos = self.cos.narrow(0, start, T)[None, :, None, :]  # (1, T, 1, K*hd)
        sin = self.sin.narrow(0, start, T)[None, :, None, :]
        x = self.embed_tokens(tokens)
        if self.embed_scale is not None:
            x = x * self.embed_scale
        for layer in self.layers:
            a = layer.self_attn(layer.input_layernorm(x), cos, sin, start)
            x = layer.mlp_residual(layer.attn_residual(x, a))
        logits = self.lm_head(self.norm(x))
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


def export_copy(model: nn.Module, max_seq: int) -> PteDecoder:
    """A PteDecoder over a deep copy of ``model`` (fp32, no grad): the reference stays untouched."""
    load_custom_ops()
    m = copy.deepcopy(model).float().eval()
    m.drop_cache()
    for p in m.parameters():
        p.requires_grad_(False)  # a static-cache export with grad-enabled params fails to trace
    return PteDecoder(m, max_seq).eval()


def quantize_8da(dec: PteDecoder, bits: int, group_size: int) -> tuple[int, tuple[str, ...]]:
    """torchao 8-bit dynamic activations, ``bits``-bit grouped weights on every Linear whose input
    width is a multiple of the group. Returns (quantized count, skipped names)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    linears = [(n, m) for n, m in dec.named_modules() if isinstance(m, nn.Linear)]
    skipped = tuple(n for n, m in linears if m.in_features % group_size)
    if dec.lm_head.weight is dec.embed_tokens.weight:
        # untie: quantize_ swaps lm_head's weight for a quantized tensor; the embedding stays fp32
        dec.lm_head.weight = nn.Parameter(dec.lm_head.weight.detach().clone(), requires_grad=False)
    cfg = Int8DynamicActivationIntxWeightConfig(
        weight_dtype={4: torch.int4, 8: torch.int8}[bits], weight_granularity=PerGroup(group_size))
    quantize_(dec, cfg, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and m.in_features % group_size == 0)
    return len(linears) - len(skipped), skipped


def pte_weights(dec: PteDecoder, cfg: PteConfig, path: Path) -> dict:
    """Bytes per tensor class as the lowered program stores them (edge.export.weights' record).

    XNNPACK keeps every delegated Linear's weight in the program's named data: fp32, or the torchao
    codes packed to ``bits`` per weight plus one bf16 scale per group (symmetric: no zero points);
    the embedding table is a constant of the (undelegated) gather in fp32, so a head tied to it is
    stored twice; norm weights are fp32 constants. ``file_data_bytes`` is what the written program
    holds in named data and constant buffers (weights, RoPE tables and constants), read back from
    ``path``, against which the record is checked in tests/sim/test_artifact_bytes.py."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    bits = PTE_QUANT[cfg.quant][1]
    t = WeightTally()
    for name, mod in dec.named_modules():
        if isinstance(mod, nn.Linear):
            n = mod.in_features * mod.out_features
            if cfg.quant != "fp32" and mod.in_features % cfg.group_size == 0:
                t.add(class_of(name + ".weight"), f"int{bits} g{cfg.group_size} bf16 scales", n,
                      n * bits // 8 + n // cfg.group_size * 2)
            else:
                t.add(class_of(name + ".weight"), "fp32", n, n * 4)
        elif isinstance(mod, (nn.Embedding, MatmulRMSNorm)):
            t.add(class_of(name + ".weight"), "fp32", mod.weight.numel(), mod.weight.numel() * 4)
    rec = t.to_dict()
    pte = deserialize_pte_binary(path.read_bytes())
    named = pte.named_data
    data = sum(len(named.buffers[e.buffer_index]) for e in named.pte_data.values()) if named is not None else 0
    data += sum(len(b.storage) for b in pte.program.constant_buffer)
    return rec | {"other_bytes": max(data - rec["bytes"], 0), "file_data_bytes": data}


def constant_methods(dec: PteDecoder, bos_id: int | None, eos_ids: list[int]) -> dict:
    """Scalars ExecuTorch's LLM runner reads off a .pte (extension/llm/runner/constants.h)."""
    out = {
        "get_max_seq_len": dec.max_seq,
        "get_max_context_len": dec.max_seq,
        "get_vocab_size": dec.lm_head.out_features,
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": False,
        "enable_dynamic_shape": True,
        "get_n_layers": len(dec.layers),
        "edge_pte_format": PTE_FORMAT_VERSION,
    }
    if bos_id is not None:
        out["get_bos_id"] = bos_id
    if eos_ids:
        out["get_eos_ids"] = list(eos_ids)
    return out


# symbolic-shape bookkeeping on scalars, not tensor work: left out of the "outside" report
SCALAR_BOOKKEEPING = ("aten._assert_scalar", "aten.sym_size", "aten._local_scalar_dense", "aten.sym_constrain")


def op_name(node: torch.fx.Node) -> str:
    """'aten.mul.Tensor', 'llama.update_cache.default', ... for an fx node."""
    t = node.target
    if t is torch.ops.higher_order.auto_functionalized_v2 or getattr(t, "__name__", "") == "auto_functionalized_v2":
        t = node.args[0]  # the functionalised op (e.g. llama.update_cache)
    name = getattr(t, "_name", None) or getattr(t, "__name__", None) or str(t)
    overload = getattr(t, "_overloadname", None)
    if overload and not name.endswith(overload):
        name = f"{name}.{overload}"
    return name.replace("::", ".")


def ops_outside_delegate(gm: torch.fx.GraphModule) -> tuple[int, dict[str, int]]:
    """(delegate calls, {op name: count}) of the lowered graph's call_function nodes."""
    outside: Counter = Counter()
    delegated = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node)
        if "executorch_call_delegate" in name:
            delegated += 1
        elif "." in name and not name.startswith(SCALAR_BOOKKEEPING):
            outside[name] += 1
    return delegated, dict(outside)


def export_pte(model: nn.Module, path: str | Path, cfg: PteConfig = PteConfig(), bos_id: int | None = None,
               eos_ids: list[int] | tuple[int, ...] = ()) -> PteExport:
    """Export ``model`` (the reference Transformer) to a .pte lowered to XNNPACK, written atomically."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from torch.export import Dim

    t0 = time.perf_counter()
    path = Path(path)
    if cfg.max_seq > model.spec.max_seq_len:
        raise ConfigError(f"pte max_seq {cfg.max_seq} exceeds the model's context {model.spec.max_seq_len}")
    dec = export_copy(model, cfg.max_seq)
    n_q, skipped = 0, ()
    if cfg.quant != "fp32":
        n_q, skipped = quantize_8da(dec, PTE_QUANT[cfg.quant][1], cfg.group_size)
    start = torch.tensor([0], dtype=torch.long)
    seq = Dim("seq", min=1, max=cfg.max_seq)
    tw = ToolWarnings()  # ExecuTorch's own FutureWarnings and mutable-buffer notes: kept for the manifest
    with torch.no_grad(), tw.catch():
        try:
            methods = {"forward": torch.export.export(dec, (torch.zeros(1, 2, dtype=torch.long), start),
                                                      dynamic_shapes=({1: seq}, None), strict=False)}
            if cfg.decode_method:
                methods["decode"] = torch.export.export(dec, (torch.zeros(1, 1, dtype=torch.long), start),
                                                        strict=False)
        except Exception as e:
            raise EdgeError(f"torch.export could not trace the model for .pte: {str(e).splitlines()[0]}") from e
        edge = to_edge_transform_and_lower(
            methods, partitioner=[XnnpackPartitioner()],
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=constant_methods(dec, bos_id, list(eos_ids)),
        )
        delegated, outside = ops_outside_delegate(edge.exported_program("forward").graph_module)
        d_delegated, d_outside = (ops_outside_delegate(edge.exported_program("decode").graph_module)
                                  if cfg.decode_method else (0, {}))
        # one KV cache for both methods: every method's mutable buffers planned at the same offsets
        prog = edge.to_executorch(ExecutorchBackendConfig(
            memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=len(methods) > 1)))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        prog.write_to_file(f)
    weights = pte_weights(dec, cfg, tmp)
    tmp.replace(path)
    return PteExport(path, cfg, time.perf_counter() - t0, delegated, outside, n_q, skipped, d_delegated, d_outside,
                     tuple(tw.lines()), weights)


def exporter_key(model: nn.Module) -> dict:
    """What the lowered program depends on besides weights and config: the program format and the
    source of the code it is traced from (this exporter and the modules of ``model``'s layers, e.g.
    edge/model/llama.py, whose MLP, embedding and RoPE tables the exported graph runs)."""
    return {"pte_format": PTE_FORMAT_VERSION, "code": code_hash(__name__, *model_code(model))}


def pte_cache_parts(model: nn.Module, cfg: PteConfig, bos_id: int | None = None,
                    eos_ids: list[int] | tuple[int, ...] = (), model_sha256: str | None = None) -> dict:
    """The stage-cache key parts of a lowered program: weights, spec, config, exporter, tool versions."""
    return {"model": model_sha256 or model_hash(model), "spec": model.spec.to_dict(),
            "config": {"quant": cfg.quant, "max_seq": cfg.max_seq, "group_size": cfg.group_size,
                       "decode_method": cfg.decode_method},
            "bos_id": bos_id, "eos_ids": list(eos_ids), "exporter": exporter_key(model), "tools": tool_versions()}


def export_pte_cached(model: nn.Module, path: str | Path | None, cfg: PteConfig = PteConfig(),
                      bos_id: int | None = None, eos_ids: list[int] | tuple[int, ...] = (), cache=None,
                      model_sha256: str | None = None) -> tuple[PteExport, bool]:
    """``export_pte`` through the stage cache (``edge.cache``, stage ``export-pte``): lowering takes
    minutes, so a program lowered before from the same weights, spec, config, exporter and model
    source and tool versions is copied to ``path`` instead (``path`` None: the cache entry's own file is
    returned). Returns (the export record, whether it was a cache hit); ``seconds`` is this call's."""
    import shutil

    t0 = time.perf_counter()
    cache = cache if cache is not None else StageCache()
    parts = pte_cache_parts(model, cfg, bos_id, eos_ids, model_sha256)

    def lower(d: Path) -> dict:
        return export_pte(model, d / "model.pte", cfg, bos_id, eos_ids).to_dict()

    entry = cache.entry("export-pte", parts, lower)
    src = entry.path / "model.pte"
    if path is None:
        path = src
    else:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.copyfile(src, tmp)  # a copy: a package file edited in place leaves the cache entry whole
        tmp.replace(path)
    m = entry.meta
    res = PteExport(path, cfg, time.perf_counter() - t0, m.get("delegated", 0), m.get("outside_delegate", {}),
                    m.get("quantized_linears", 0), tuple(m.get("skipped_linears", ())),
                    m.get("decode_delegated", 0), m.get("decode_outside_delegate", {}), tuple(m.get("warnings", ())),
                    m.get("weights", {}))
    return res, entry.hit
