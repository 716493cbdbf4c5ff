"""Export step, ONNX: the reference decoder -> one or more .onnx graphs with the KV cache as explicit
inputs and outputs (fp32, fp16, or QDQ int8 W8A8 on the weight MatMuls only).

Every graph ("part") runs a contiguous range of layers. Inputs and outputs, per part::

    input_ids (1, T) int64            first part only     | hidden (1, T, dim)  other parts
    attn_mask (1, 1, T, S+T) float    additive: 0 where a query may look, -10000 elsewhere
    cos, sin  (1, 1, T, head_dim)     RoPE tables at the T positions
    past_key_<i>, past_value_<i> (1, n_kv, S, head_dim)   the cache, S = max_seq slots
    -> logits (1, T, vocab) last part | hidden (1, T, dim) other parts
    -> key_<i>, value_<i> (1, n_kv, T, head_dim)          the T new entries: the caller writes
                                                          them at slots [pos, pos+T)

Mask and RoPE are inputs so that the graph has no data-dependent shapes or position arithmetic:
fixed-shape NPU toolchains (opset 11, batch 1) take it as is. A model whose graph exceeds the
profile's size or output-count limit is split into parts that run in sequence.

    from edge.export.onnx import OnnxConfig, export_onnx
    res = export_onnx(model, "out/", OnnxConfig(dtype="fp16", max_seq=512))
    res.files   # ['model.onnx'] or ['model.part0.onnx', 'model.part1.onnx', ...]
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import ConfigError, EdgeError
from edge.quant.w8a8 import W8A8Config, W8A8Plan

MASK_MIN = -10000.0  # finite: NPU toolchains (QNN HTP) mis-handle -inf in quantized masks
ONNX_DTYPES = ("fp32", "fp16", "qdq-w8a8", "qdq-w4a16")  # qdq-w4a16: edge.export.qdq16
INT16_QDQ_OPSET = 21  # QuantizeLinear/DequantizeLinear take int16 from opset 21


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
        if self.dtype not in ONNX_DTYPES:
            raise ConfigError(f"onnx dtype '{self.dtype}' unknown; allowed: {', '.join(ONNX_DTYPES)}")
        if self.format not in ONNX_FORMATS:
            raise ConfigError(f"onnx format '{self.format}' unknown; allowed: {', '.join(ONNX_FORMATS)}")
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

    def to_dict(self) -> dict:
        d = {"files": self.files, "seconds": round(self.seconds, 1), "quantized_matmuls": self.quantized_matmuls,
             "parts_reason": self.parts_reason, **{k: self.layout[k] for k in ("dtype", "opset", "fixed_seq")}}
        if self.precision is not None:
            d["precision"] = self.precision
        return d


# ---- the graph -------------------------------------------------------------------------------
class MatmulRMSNorm(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        dim = norm.weight.shape[0]
        self.eps = norm.eps
        self.weight = norm.weight
        self.register_buffer("inv_dim", torch.full((dim, 1), 1.0 / dim, dtype=norm.weight.dtype), persistent=False)

    def forward(self, x):
        return x * torch.rsqrt((x * x) @ self.inv_dim + self.eps) * self.weight


class IOAttention(nn.Module):
    """Attention over (past cache ++ new keys); returns the output and the new K, V entries."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        from edge.export.executorch import rotate_half_matrix

        self.n_heads, self.n_kv, self.hd = attn.n_heads, attn.n_kv, attn.hd
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.register_buffer("rot", rotate_half_matrix(self.hd).to(attn.q_proj.weight.dtype), persistent=False)
        self.scale = 1.0 / math.sqrt(self.hd)

    def forward(self, x, mask, cos, sin, past_k, past_v):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q = q * cos + (q @ self.rot) * sin
        k = k * cos + (k @ self.rot) * sin
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

    def forward(self, x, mask, cos, sin, *past):
        if self.first:
            x = self.embed_tokens(x)
        new = []
        for i, layer in enumerate(self.layers):
            h, k, v = layer.self_attn(layer.input_layernorm(x), mask, cos, sin, past[2 * i], past[2 * i + 1])
            x = h + x
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            new += [k, v]
        if self.last:
            x = self.lm_head(self.norm(x))
        return (x, *new)


class RowScaledLinear(nn.Module):
    """``y = (x @ (W / s)^T) * s``, s (out,) the max |W| of each output row.

    Opset 11's DequantizeLinear has no ``axis``: its one int8 scale per tensor, applied to W / s
    (every row's max is 1), gives the same codes as per-output-channel int8 on W; the float Mul
    by s after the MatMul restores the rows. Measured on the built-in model (docs/export.md)."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        w = lin.weight.detach()
        s = w.abs().amax(1).clamp(min=1e-12)  # (out,)
        if getattr(lin, "int8_scale", None) is not None:  # edge.quant.w8a8: W = codes * int8_scale exactly
            s = 127.0 * lin.int8_scale.to(w.dtype)
        self.weight = nn.Parameter(w / s[:, None], requires_grad=False)  # (out, in)
        self.register_buffer("row_scale", s, persistent=False)
        self.bias = lin.bias

    def forward(self, x):
        y = F.linear(x, self.weight) * self.row_scale
        return y if self.bias is None else y + self.bias


def prepare(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A deep copy with norms as matmuls and IO attention; the reference model is untouched."""
    spec = model.spec
    if spec.is_moe:
        raise ConfigError(f"{spec.name or 'model'}: the ONNX exporter handles dense models; "
                          "this one has a mixture-of-experts MLP")
    m = copy.deepcopy(model).eval()
    m.drop_cache()
    if dtype == torch.float16:
        m = m.half()  # RMSNorm of the copy runs in fp16 too (MatmulRMSNorm below)
    else:
        m = m.float()
    for p in m.parameters():
        p.requires_grad_(False)
    for layer in m.layers:
        layer.input_layernorm = MatmulRMSNorm(layer.input_layernorm)
        layer.post_attention_layernorm = MatmulRMSNorm(layer.post_attention_layernorm)
        layer.self_attn = IOAttention(layer.self_attn)
    return m


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
            "rope_cos_sin": "inputs cos/sin (1,1,T,hd) from edge.export.onnx.rope_tables",
            "mask_min": MASK_MIN, "parts": [{"file": f, "layers": [lo, hi]} for f, (lo, hi) in zip(files, parts)]}


def rope_tables(model: nn.Module, max_seq: int) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = model.rope(torch.arange(max_seq), torch.float32)
    return cos.numpy(), sin.numpy()


def root_cause(e: BaseException) -> str:
    """First line of the innermost exception: the exporter wraps the useful message twice."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def _export_part(part: OnnxPart, path: Path, cfg: OnnxConfig, spec, dtype: torch.dtype,
                 fmt: OnnxFormat | None = None) -> None:
    fmt = fmt or cfg.constraints
    T = min(fmt.fixed_seq, cfg.max_seq) if fmt.fixed_seq else 2
    S = cfg.max_seq
    first = (torch.zeros(1, T, dtype=torch.long) if part.first else torch.zeros(1, T, spec.dim, dtype=dtype))
    args = [first, torch.zeros(1, 1, T, S + T, dtype=dtype), torch.ones(1, 1, T, spec.head_dim, dtype=dtype),
            torch.zeros(1, 1, T, spec.head_dim, dtype=dtype)]
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
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
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
    prog.save(str(path), external_data=False)


def export_onnx(model: nn.Module, out_dir: str | Path, cfg: OnnxConfig = OnnxConfig(), stem: str = "model",
                calib_tokens: np.ndarray | None = None) -> OnnxExport:
    """Export ``model`` to ``out_dir/<stem>.onnx`` (or ``<stem>.part<i>.onnx``); QDQ needs ``calib_tokens``
    (n, T) for the activation scales. Returns the files in run order and the layout a runner needs."""
    if cfg.dtype == "qdq-w4a16":  # 4-bit weights, 16-bit activations: its own module
        from edge.export.qdq16 import export_w4a16

        return export_w4a16(model, out_dir, cfg, stem, calib_tokens)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if cfg.max_seq > model.spec.max_seq_len:
        raise ConfigError(f"onnx max_seq {cfg.max_seq} exceeds the model's context {model.spec.max_seq_len}")
    if cfg.dtype == "qdq-w8a8" and calib_tokens is None:
        raise ConfigError("onnx qdq-w8a8 needs calibration tokens for its activation scales (calib_tokens)")
    dtype = torch.float16 if cfg.dtype == "fp16" else torch.float32
    fmt = cfg.constraints
    src, plan = model, None
    if cfg.dtype == "qdq-w8a8":  # rotation/smoothing, int8 weights and the activation scales, in torch
        from edge.quant.w8a8 import groups_of, prepare_w8a8

        src, plan = prepare_w8a8(model, calib_tokens, cfg.w8a8 or W8A8Config())
        if any(a.bits == 16 for a in plan.acts.values()) and fmt.opset < INT16_QDQ_OPSET:
            if fmt.opset < 13:
                raise ConfigError(f"onnx format '{cfg.format}' (opset {fmt.opset}) cannot write int16 activations "
                                  f"(QuantizeLinear takes int16 from opset {INT16_QDQ_OPSET}); keep them in float")
            fmt = dataclasses.replace(fmt, opset=INT16_QDQ_OPSET)
    m = prepare(src, dtype)
    del src
    if cfg.dtype == "qdq-w8a8":  # per-channel weights as a per-tensor scale and a float Mul (any opset)
        for layer in m.layers:
            owners = [layer.self_attn, layer.mlp] + ([layer.mlp.down_proj] if hasattr(layer.mlp.down_proj, "lin") else [])
            for owner in owners:  # the down_proj of edge.quant.w8a8.BlockRotated is its .lin
                for name, child in list(owner.named_children()):
                    if isinstance(child, nn.Linear):
                        setattr(owner, name, RowScaledLinear(child))
    limit = min(x for x in (cfg.max_graph_bytes, fmt.max_graph_bytes) if x) if (cfg.max_graph_bytes or fmt.max_graph_bytes) else float("inf")
    bytes_per = 1 if cfg.dtype == "qdq-w8a8" else (2 if dtype == torch.float16 else 4)
    # the fp32 graph is quantized afterwards, so it must itself stay under protobuf's limit
    parts, reason = plan_parts(m, fmt, limit, bytes_per)
    files = [f"{stem}.onnx"] if len(parts) == 1 else [f"{stem}.part{i}.onnx" for i in range(len(parts))]
    for f, (lo, hi) in zip(files, parts):
        tmp = out_dir / (f + ".tmp")
        _export_part(OnnxPart(m, lo, hi), tmp, cfg, m.spec, dtype, fmt)
        check_format(tmp, fmt)
        tmp.replace(out_dir / f)
    layout = onnx_layout(m, cfg, files, parts)
    layout["opset"] = fmt.opset
    n_q = 0
    if plan is not None:
        n_q = sum(insert_qdq(out_dir / f, m, plan) for f in files)
        want = sum(len(lins) for lins in groups_of(m).values())
        if n_q != want:
            raise EdgeError(f"QDQ: {n_q} of the {want} linears were found in the exported graph")
    return OnnxExport(files, layout, time.perf_counter() - t0, n_q, reason,
                      plan.summary() if plan is not None else None)


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


def layout_json(layout: dict) -> str:
    return json.dumps(layout, indent=2, sort_keys=True)



# ---- QDQ int8 W8A8 ---------------------------------------------------------------------------
def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def insert_qdq(path: Path, model: nn.Module, plan: W8A8Plan) -> int:
    """Rewrite one exported fp32 part in place into its QDQ graph, with exactly the plan's numbers:

    - each linear's weight (a MatMul initializer, ``(W / rowmax)^T`` from RowScaledLinear) becomes
      int8 codes + DequantizeLinear with the one scale 1/127: per-channel int8 at any opset;
    - each group's input gets QuantizeLinear -> DequantizeLinear with its static scale and zero
      point (uint8 asymmetric, int8 or int16 symmetric), shared by the group's linears; a group the
      plan keeps in float gets none (int8 weights, float activations: a CPU node on the device).

    Everything else (norms, RoPE, attention, the lm_head) stays float. The linears are found by
    their weights' bytes, so node names do not matter. Returns the number of MatMuls rewritten."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge.quant.w8a8 import groups_of

    mp = onnx.load(str(path))
    g = mp.graph
    owner = {}  # weight digest (as the graph stores it: (in, out)) -> group
    for grp, lins in groups_of(model).items():
        for lin in lins:
            owner[_digest(lin.weight.detach().T.numpy())] = grp
    inits = {i.name: i for i in g.initializer}
    zp_type = {(8, False): TensorProto.UINT8, (8, True): TensorProto.INT8, (16, True): TensorProto.INT16}
    done_w: dict[str, str] = {}
    done_x: dict[str, str] = {}
    drop, nodes, n = set(), [], 0
    for node in g.node:
        grp = None
        if node.op_type == "MatMul" and node.input[1] in inits:
            arr = numpy_helper.to_array(inits[node.input[1]])
            grp = owner.get(_digest(arr)) if arr.ndim == 2 else None
        if grp is None:
            nodes.append(node)
            continue
        w = node.input[1]
        if w not in done_w:
            codes = np.round(arr.astype(np.float64) * 127.0)
            if np.abs(codes).max() > 127 or np.abs(codes / 127.0 - arr).max() > 1e-5:
                raise EdgeError(f"{path.name}: weight of {grp} is not on the int8 grid of its rows")
            g.initializer.extend([numpy_helper.from_array(codes.astype(np.int8), w + "_q"),
                                  numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), w + "_s"),
                                  numpy_helper.from_array(np.array(0, np.int8), w + "_zp")])
            nodes.append(helper.make_node("DequantizeLinear", [w + "_q", w + "_s", w + "_zp"], [w + "_dq"],
                                          name=f"{w}_DequantizeLinear"))
            done_w[w] = w + "_dq"
            drop.add(w)
        node.input[1] = done_w[w]
        aq = plan.acts[grp]
        x = node.input[0]
        if aq.bits and x not in done_x:
            s, z = f"{grp}.act_scale", f"{grp}.act_zp"
            g.initializer.extend([numpy_helper.from_array(np.array(aq.scale, np.float32), s),
                                  helper.make_tensor(z, zp_type[(aq.bits, aq.signed)], [], [aq.zero_point])])
            xin = x
            if aq.float_channels:  # the outlier channels are zeroed here and computed in float below
                mask = np.ones(arr.shape[0], np.float32)
                mask[list(aq.float_channels)] = 0.0
                g.initializer.append(numpy_helper.from_array(mask, f"{grp}.int8_channels"))
                nodes.append(helper.make_node("Mul", [x, f"{grp}.int8_channels"], [x + "_int8ch"],
                                              name=f"{grp}.int8_channels_Mul"))
                xin = x + "_int8ch"
            nodes += [helper.make_node("QuantizeLinear", [xin, s, z], [x + "_q"], name=f"{grp}.act_QuantizeLinear"),
                      helper.make_node("DequantizeLinear", [x + "_q", s, z], [x + "_dq"],
                                       name=f"{grp}.act_DequantizeLinear")]
            done_x[x] = x + "_dq"
        if aq.bits:
            node.input[0] = done_x[x]
        nodes.append(node)
        if aq.bits and aq.float_channels:  # y = int8 MatMul + x[..., idx] @ W[idx] (float, few channels)
            idx, out = f"{node.name}.float_idx", node.output[0]
            g.initializer.extend([numpy_helper.from_array(np.array(aq.float_channels, np.int64), idx),
                                  numpy_helper.from_array(np.ascontiguousarray(arr[list(aq.float_channels)]),
                                                          f"{node.name}.float_w")])
            node.output[0] = out + "_int8part"
            nodes += [helper.make_node("Gather", [x, idx], [out + "_fch"], axis=-1, name=f"{node.name}.float_Gather"),
                      helper.make_node("MatMul", [out + "_fch", f"{node.name}.float_w"], [out + "_floatpart"],
                                       name=f"{node.name}.float_MatMul"),
                      helper.make_node("Add", [out + "_int8part", out + "_floatpart"], [out],
                                       name=f"{node.name}.split_Add")]
        n += 1
    keep = [i for i in g.initializer if i.name not in drop]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(nodes)
    onnx.save(mp, str(path))
    return n
