"""Export step, ONNX QDQ w4a16: 4-bit weights (our calibrated GPTQ codes), 16-bit activations, for
Qualcomm's Hexagon NPU through ONNX Runtime's QNN execution provider (the recipe Qualcomm's own
LLM exports use: activations at 16 bits, weights at 4 or 8).

The graph is the one ``edge.export.onnx_graph`` describes (KV cache as explicit inputs/outputs, mask and
RoPE as inputs, fixed T, split by the target's graph-size limit), at opset 21, then:

- the linear layers' inputs and outputs get uint16 QuantizeLinear/DequantizeLinear pairs with static
  MinMax scales (ONNX Runtime's quantizer with its QNN configuration, on recorded prefills of
  ``calib_tokens``); the residual stream, norms, RoPE and attention stay float, which the HTP runs in
  fp16 (``ACTIVATIONS`` below says why);
- every linear weight is replaced by our own codes, exactly as ``edge.quant`` chose them (not
  re-rounded): int4 in blocks along the input (``DequantizeLinear(axis=0, block_size=64)``, one
  float32 scale per block, opset 21's blocked quantization) or int8 per output channel where the
  recipe keeps a tensor at 8 bits (the tied output head; a mixed w4/w8 recipe);
- with ``ACTIVATIONS = "all"``, every op is quantized and the other constants (norm weights, RoPE's
  rotation, the embedding table) are int16 per tensor.

What the QNN EP (onnxruntime-qnn 2.7.0, HTP v73 emulator) accepts for int4 weights, each run with
CPU fallback disabled on a 16-bit-activation MatMul (docs/export.md): per-channel int4, blocked
int4 with float scales, and LPBQ (blocked int4 whose block scales are a per-channel float times a
4-bit integer: the QNN EP fuses ``DQ(uint8 block scales) -> DQ(int4 weight) -> MatMul``). Blocked
float scales keep our GPTQ scales as they are; LPBQ would round every block scale to 4 bits.

ONNX Runtime's CPU provider fuses ``DequantizeLinear(int4 blocks) -> MatMul`` into MatMulNBits,
whose default accuracy level quantizes the activations to int8 on the fly (measured 0.009 max
error on a toy MatMul where the graph's own arithmetic gives 0): the layout asks runners for
``session.qdq_matmulnbits_accuracy_level = 0`` (fp32), which computes what the graph says.

    from edge.export.qdq16 import export_w4a16
    res = export_w4a16(model, "out/", OnnxConfig(dtype="qdq-w4a16", format="onnx-qdq", max_seq=512), calib_tokens=calib)
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError, EdgeError
from edge.export import ToolWarnings
from edge.export import onnx_graph as ox
from edge.export.onnx_graph import weight_digest
from edge.export.weights import onnx_weights
from edge.quant.configs import load_recipe
from edge.quant.quantize import quantize as quantize_weights
from edge.runtime.onnxruntime import OnnxRunner

OPSET = 21  # blocked and 4-bit DequantizeLinear, 16-bit Q/DQ in the default domain
MASK_MIN_16 = -100.0  # the mask shares the scores' uint16 range: -10000 would leave a 0.15 step for them
SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}  # ORT CPU: MatMulNBits in fp32, see above
# which activations get uint16 Q/DQ: "linears" (the linear MatMuls' inputs and outputs) or "all" (every op).
# SmolLM2's residual stream carries a 23,000-sized activation on the first token from layer 11 on (and
# 5e8 in the norms' x^2): one uint16 scale per tensor leaves a 0.7 step for every other token's ~5-sized
# values ("all" measured top-1 0.02 on the built-in model). With "linears", the rest runs in float
# (fp16 on the HTP).
ACTIVATIONS = "linears"
PROTOBUF_LIMIT = 2e9  # one .onnx with its weights inline
# the activation ranges are gathered one recorded feed (one T-token call) at a time and merged
CALIB_STRIDE = 1
# the norms' per-token scale (DivRMSNorm): at most 8192 keeps the HTP's fp16 reciprocal of it normal
# (> 6.1e-5) with 2x to spare, and y = x / m within +-8 for any fp16 x; the floor only keeps 0 from 0/0
NORM_FLOOR, NORM_CEIL = 1e-4, 8192.0


def _pack4(codes: np.ndarray) -> bytes:
    """int4/uint4 raw data: two values per byte, the first in the low nibble (ONNX's layout)."""
    v = (codes.astype(np.int16).ravel() & 0x0F).astype(np.uint8)
    if v.size % 2:
        v = np.append(v, np.uint8(0))
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8).tobytes()


def weight_tensors(qt, name: str):
    """(codes, scale, zero_point, attrs) initializers for the (in, out) MatMul weight of QTensor ``qt``
    (stored (out, in), groups along ``in``): blocks along axis 0, or per output channel on axis 1."""
    from onnx import TensorProto, numpy_helper

    fmt = qt.fmt
    rows, cols = qt.codes.shape
    codes = qt.codes.T  # (in, out)
    scales = qt.scales.T.astype(np.float32)  # (groups, out)
    zeros = qt.zeros.T
    if fmt.bits <= 4:
        dt = TensorProto.INT4 if fmt.qmin < 0 else TensorProto.UINT4
    elif fmt.bits <= 8:
        dt = TensorProto.INT8 if fmt.qmin < 0 else TensorProto.UINT8
    else:
        raise ConfigError(f"{name}: {fmt.name} has {fmt.bits}-bit codes; the QDQ writer takes 4 or 8")
    if fmt.group:
        attrs = {"axis": 0, "block_size": int(fmt.group)}
    else:
        attrs = {"axis": 1}
        scales, zeros = scales[0], zeros[0]

    def tensor(arr, suffix):
        t = TensorProto()
        t.name, t.data_type = f"{name}{suffix}", dt
        t.dims.extend(arr.shape)
        if dt in (TensorProto.INT4, TensorProto.UINT4):
            t.raw_data = _pack4(arr)
        else:
            t.raw_data = np.ascontiguousarray(arr, dtype=np.int8 if dt == TensorProto.INT8 else np.uint8).tobytes()
        return t

    return tensor(codes, "_q"), numpy_helper.from_array(scales, f"{name}_scale"), tensor(zeros, "_zp"), attrs


class DivRMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * w``, computed as ``y / sqrt(mean(y^2) + eps / m^2) * w`` with
    ``y = x / m``, ``m = clip(max |x|, NORM_FLOOR, NORM_CEIL)`` per token (equal in real arithmetic).
    Changes from edge.export.onnx's norm, each measured on the v73 emulator against ORT CPU on the same
    QDQ graph: QNN's HTP computes a 16-bit Reciprocal wrongly (1.12 where the graph says 9.40), so the
    norm divides instead of multiplying by rsqrt; the mean as a ReduceMean is 4x closer (0.1% vs 0.4%
    of the range) than as a 16-bit matmul; and the HTP runs these float ops in fp16, where SmolLM2's
    first-token ~18,000-23,000 residual squares past 65504 (inf: the norm's output 0), and where a
    division by more than 16384 gives 0 (1/16384 is fp16's smallest normal: the emulator flushes the
    reciprocal), hence the per-token scale and its ceiling (docs/export.md: the built-in model's top-1
    on the emulated HTP 0.031 without, 0.812 with, on 32 tokens)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.eps, self.weight = norm.eps, norm.weight
        if getattr(norm, "offset", 0.0):  # Gemma's (1 + w), folded (onnx_graph.MatmulRMSNorm does the same)
            self.weight = nn.Parameter(norm.weight.detach() + norm.offset, requires_grad=False)

    def forward(self, x):
        m = x.abs().amax(-1, keepdim=True).clamp(NORM_FLOOR, NORM_CEIL)
        y = x / m
        eps = torch.full_like(m, self.eps) / m / m  # a tensor over m: the exporter writes a scalar over m as Reciprocal
        return y / torch.sqrt((y * y).mean(-1, keepdim=True) + eps) * self.weight


def _div_norms(m: nn.Module) -> None:
    for layer in m.layers:
        for name in ox.NORMS:
            if hasattr(layer, name):
                setattr(layer, name, DivRMSNorm(getattr(layer, name)))


def _weight_names(model: nn.Module, q) -> dict[str, str]:
    """sha256 of each quantized linear's (in, out) fp32 weight -> its name in ``q.tensors``: the ONNX
    exporter names its transposed constants freely, the values are exact."""
    out = {}
    for name in q.tensors:
        if name == "embed_tokens.weight" and not model.spec.tie_embeddings:
            continue  # an untied embedding is a Gather table, not a MatMul weight
        key = "lm_head.weight" if name == "embed_tokens.weight" else name  # tied: the head's MatMul
        w = model.get_submodule(key.rsplit(".", 1)[0]).weight  # (named_parameters lists a tied tensor once)
        if w.dim() == 2:
            out[weight_digest(w.detach().float().numpy().T)] = name
    return out


def _match_matmuls(path: Path, by_digest: dict[str, str]) -> dict[str, str]:
    """MatMul node name -> quantized tensor name, for the fp32 graph at ``path``."""
    import onnx
    from onnx import numpy_helper

    mp = onnx.load(str(path))
    inits = {i.name: i for i in mp.graph.initializer}
    out = {}
    for n in mp.graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            name = by_digest.get(weight_digest(numpy_helper.to_array(inits[n.input[1]])))
            if name is not None:
                out[n.name] = name
    return out


def _replace_weights(path: Path, matmuls: dict[str, str], q) -> dict[str, int]:
    """In the QDQ graph at ``path``: every matched MatMul's weight DequantizeLinear takes our codes."""
    import onnx
    from onnx import helper

    mp = onnx.load(str(path))
    g = mp.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    counts: dict[str, int] = {}
    new_inits = []
    for n in g.node:
        if n.op_type != "MatMul" or n.name not in matmuls:
            continue
        dq = producer.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            raise EdgeError(f"{path.name}: MatMul {n.name} has no weight DequantizeLinear after quantization")
        tname = matmuls[n.name]
        qt = q.tensors[tname]
        codes, scale, zp, attrs = weight_tensors(qt, tname.removesuffix(".weight") + ".w")
        del dq.input[:]
        dq.input.extend([codes.name, scale.name, zp.name])
        del dq.attribute[:]
        dq.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        new_inits += [codes, scale, zp]
        counts[qt.fmt.name] = counts.get(qt.fmt.name, 0) + 1
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    onnx.save(mp, str(path))
    return counts


def export_w4a16(model: nn.Module, out_dir: str | Path, cfg, stem: str = "model", calib_tokens=None,
                 recipe="w4a16", progress=None):
    """Quantize a copy of ``model`` with ``recipe`` (GPTQ on ``calib_tokens`` (n, T)), export it
    through ``edge.export.onnx_graph`` at opset 21 and make it a w4a16 QDQ graph. -> OnnxExport."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if calib_tokens is None:
        raise ConfigError("onnx qdq-w4a16 needs calibration tokens (calib_tokens): GPTQ and the activation scales")
    if cfg.max_seq > model.spec.max_seq_len:
        raise ConfigError(f"onnx max_seq {cfg.max_seq} exceeds the model's context {model.spec.max_seq_len}")
    rec = load_recipe(recipe)  # the w4a16 preset keeps k, v, up, down at int8 (edge.recipes.W4A16_INT8_CLASSES)
    fmt = cfg.constraints
    if fmt.opset < OPSET:  # the writer needs opset 21: the profile's format fixes shapes and limits
        fmt16 = f"{cfg.format}-opset{OPSET}"
        ox.ONNX_FORMATS.setdefault(fmt16, type(fmt)(opset=OPSET, max_ir_version=fmt.max_ir_version,
                                                     fixed_seq=fmt.fixed_seq, max_outputs=fmt.max_outputs,
                                                     max_graph_bytes=fmt.max_graph_bytes))
        cfg = type(cfg)(dtype=cfg.dtype, max_seq=cfg.max_seq, format=fmt16, max_graph_bytes=cfg.max_graph_bytes)
        fmt = cfg.constraints

    src = copy.deepcopy(model).float().eval()
    src.drop_cache()
    calib = torch.as_tensor(np.asarray(calib_tokens), dtype=torch.long)
    q = quantize_weights(src, rec, calib)  # src's weights are now exactly the stored codes' values
    if progress:
        progress(f"qdq16: {rec.name} quantized ({q.info.get('seconds', 0):.0f} s)")
    m = ox.prepare(src, torch.float32)
    _div_norms(m)
    if m.lm_head.weight is m.embed_tokens.weight:  # a tied head gets its own (transposed) constant:
        m.lm_head.weight = nn.Parameter(m.lm_head.weight.detach().clone(), requires_grad=False)  # int8 codes
    limit = min(x for x in (cfg.max_graph_bytes, fmt.max_graph_bytes) if x) if (cfg.max_graph_bytes or fmt.max_graph_bytes) else float("inf")
    # 2 bytes per weight bound the QDQ graph (int16 embedding table; int8 and int4 + scales below it);
    # the fp32 graph exported first (4 bytes) must stay under protobuf's 2 GB, hence at most 1 GB here
    parts, reason = ox.plan_parts(m, fmt, min(limit, PROTOBUF_LIMIT / 2), 2)
    files = [f"{stem}.onnx"] if len(parts) == 1 else [f"{stem}.part{i}.onnx" for i in range(len(parts))]
    by_digest = _weight_names(src, q)
    matched = []
    tw = ToolWarnings()  # torch.onnx's and ORT's quantizer's warnings, kept for the manifest
    for f, (lo, hi) in zip(files, parts):
        tmp = out_dir / (f + ".tmp")
        part = ox.OnnxPart(m, lo, hi)
        if part.norm is not None:
            part.norm = DivRMSNorm(part.norm)
        ox.export_part(part, tmp, cfg, m.spec, torch.float32, tw=tw)
        ox.check_format(tmp, fmt)
        matched.append(_match_matmuls(tmp, by_digest))
        tmp.replace(out_dir / f)
    layout = ox.onnx_layout(m, cfg, files, parts)
    layout |= {"mask_min": MASK_MIN_16, "session_config": dict(SESSION_CONFIG)}
    n_found = sum(len(x) for x in matched)
    if n_found != len(by_digest):
        raise EdgeError(f"qdq16: found {n_found} of the {len(by_digest)} quantized linear weights in the exported graph")

    # activations: record each part's feeds on the fp32 graph, then ORT's QNN QDQ configuration
    cos, sin = ox.rope_tables(src, cfg.max_seq)
    runner = OnnxRunner(out_dir, layout, cos, sin)
    runner.record = [[] for _ in layout["parts"]]
    for row in np.asarray(calib_tokens):
        runner.prefill([int(t) for t in row[: cfg.max_seq]])
    recorded = runner.record_done()
    del runner

    class Feeds(CalibrationDataReader):
        """The recorded feeds, served in the ranges ORT's strided MinMax asks for (``set_range``)."""

        def __init__(self, feeds):
            self.feeds = feeds
            self.set_range(0, len(feeds))

        def __len__(self):
            return len(self.feeds)

        def set_range(self, start_index, end_index):
            self.it = iter(self.feeds[start_index:end_index])

        def get_next(self):
            return next(self.it, None)

    counts: dict[str, int] = {}
    for part, feeds, mm in zip(layout["parts"], recorded, matched):
        path = out_dir / part["file"]
        tmp = out_dir / (part["file"] + ".qdq.tmp")
        with tw.catch():
            only = {}
            if ACTIVATIONS == "linears":  # the residual stream, norms, attention stay float (fp16 on the HTP)
                import onnx

                others = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node
                          if n.op_type == "MatMul" and n.name not in mm]
                only = {"op_types_to_quantize": ["MatMul"], "nodes_to_exclude": others}
            qcfg = get_qnn_qdq_config(str(path), Feeds(feeds), activation_type=QuantType.QUInt16,
                                      weight_type=QuantType.QInt16, per_channel=False, **only)
            # MinMax over every feed: CALIB_STRIDE feeds per collect_data call, each call's ranges merged
            # into the running min/max (ORT's CalibStridedMinMax). Not CalibMaxIntermediateOutputs: ORT's
            # MinMaxCalibrater (1.32; microsoft/onnxruntime#18893) clears its buffer unmerged each time it
            # fills, so only the last len(feeds) % k feeds set the scales: on the built-in model the last
            # 3 of 128, without the first token's outliers (top-1 0.274; docs/export.md)
            qcfg.extra_options["CalibStridedMinMax"] = CALIB_STRIDE
            quantize(str(path), str(tmp), qcfg)
        for k, v in _replace_weights(tmp, mm, q).items():
            counts[k] = counts.get(k, 0) + v
        ox.check_format(tmp, fmt)
        tmp.replace(path)
    formats = {}
    for name, qt in sorted(q.tensors.items()):
        formats[name] = qt.fmt.name
    layout |= {"weights": {"recipe": rec.to_dict(), "matmuls": dict(sorted(counts.items())),
                           "formats": formats,
                           "other_constants": "int16 per tensor (norm weights, RoPE rotation, embedding table)",
                           "activations": "uint16 per tensor, MinMax on the calibration prefills"}}

    return ox.OnnxExport(files, layout, time.perf_counter() - t0, sum(counts.values()), reason, warnings=tw.lines(),
                         weights=onnx_weights(out_dir / f for f in files))
