"""Export step, ONNX: the reference decoder -> one or more .onnx graphs with the KV cache as explicit
inputs and outputs (fp32, fp16, or QDQ int8 W8A8 on the weight MatMuls only; QDQ w4a16 is
``edge.export.qdq16``, which ``export_onnx`` hands ``qdq-w4a16`` to). The graphs' inputs, outputs and
parts are described in ``edge.export.onnx_graph``.

    from edge.export.onnx import OnnxConfig, export_onnx
    res = export_onnx(model, "out/", OnnxConfig(dtype="fp16", max_seq=512))
    res.files   # ['model.onnx'] or ['model.part0.onnx', 'model.part1.onnx', ...]
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.errors import ConfigError, EdgeError
from edge.export import ToolWarnings
from edge.export.onnx_graph import (
    ONNX_DTYPES,
    ONNX_FORMATS,
    OnnxConfig,
    OnnxExport,
    OnnxFormat,
    OnnxPart,
    check_format,
    export_part,
    onnx_layout,
    plan_parts,
    prepare,
    rope_tables,
    weight_digest,
)
from edge.export.qdq16 import export_w4a16
from edge.export.weights import onnx_weights
from edge.quant.w8a8 import W8A8Config, W8A8Plan, groups_of, prepare_w8a8

# the configuration and the RoPE tables callers pass to the runner, from the module that defines them
__all__ = ["ONNX_DTYPES", "ONNX_FORMATS", "OnnxConfig", "OnnxExport", "OnnxFormat", "RowScaledLinear",
           "export_onnx", "insert_qdq", "rope_tables"]

INT16_QDQ_OPSET = 21  # QuantizeLinear/DequantizeLinear take int16 from opset 21


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


def export_onnx(model: nn.Module, out_dir: str | Path, cfg: OnnxConfig = OnnxConfig(), stem: str = "model",
                calib_tokens: np.ndarray | None = None) -> OnnxExport:
    """Export ``model`` to ``out_dir/<stem>.onnx`` (or ``<stem>.part<i>.onnx``); QDQ needs ``calib_tokens``
    (n, T) for the activation scales. Returns the files in run order and the layout a runner needs."""
    if cfg.dtype == "qdq-w4a16":  # 4-bit weights, 16-bit activations: its own module
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
    tw = ToolWarnings()
    for f, (lo, hi) in zip(files, parts):
        tmp = out_dir / (f + ".tmp")
        export_part(OnnxPart(m, lo, hi), tmp, cfg, m.spec, dtype, fmt, tw)
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
                      plan.summary() if plan is not None else None, tw.lines(), onnx_weights(out_dir / f for f in files))


# ---- QDQ int8 W8A8 ---------------------------------------------------------------------------
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

    mp = onnx.load(str(path))
    g = mp.graph
    owner = {}  # weight digest (as the graph stores it: (in, out)) -> group
    for grp, lins in groups_of(model).items():
        for lin in lins:
            owner[weight_digest(lin.weight.detach().T.numpy())] = grp
    inits = {i.name: i for i in g.initializer}
    zp_type = {(8, False): TensorProto.UINT8, (8, True): TensorProto.INT8, (16, True): TensorProto.INT16}
    done_w: dict[str, str] = {}
    done_x: dict[str, str] = {}
    drop, nodes, n = set(), [], 0
    for node in g.node:
        grp = None
        if node.op_type == "MatMul" and node.input[1] in inits:
            arr = numpy_helper.to_array(inits[node.input[1]])
            grp = owner.get(weight_digest(arr)) if arr.ndim == 2 else None
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
