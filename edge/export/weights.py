"""What an artifact stores, per tensor class: the bytes and parameters its writer put in the file.

Every writer records this in its export result and the manifest's artifact entry (``weights``), and
the simulator costs a package from it (``edge.sim.recipes.as_written``) rather than from the preset
name, so a verdict describes the bytes the package ships::

    from edge.export.weights import gguf_weights
    rec = gguf_weights("pkg/model.gguf")
    rec["classes"]["attn_q"]   # {'params': 9953280, 'bytes': 5598720, 'formats': {'Q4_0': 30}}
    rec["bytes"]               # all tensor data in the file

Classes are the simulator's (``edge.sim.recipes.TENSOR_CLASSES``): embedding, output, attn_q ...
ffn_down, router, norm. A table the embedding and the head share is stored once and recorded once,
under the class its name says (a GGUF's token_embd: ``embedding``); the simulator reads a record
with one of the two as one shared table, and one with both as two. Constants that are not weights
(RoPE tables, masks, activation scales) are counted apart, in ``other_bytes``. Torch-free.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from pathlib import Path

from edge.errors import ConfigError, ModelLoadError

# a decoder layer's module (edge.model.llama, Hugging Face names) -> class; the rest in class_of()
_LAYER_MODULES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_o", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "mlp.gate": "router", "mlp.shared_expert.gate_proj": "ffn_gate", "mlp.shared_expert.up_proj": "ffn_up",
    "mlp.shared_expert.down_proj": "ffn_down", "mlp.shared_expert_gate": "router",
}
_EXPERT_LEAVES = {"gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


def class_of(name: str) -> str:
    """The tensor class of one of our parameter names ('layers.3.self_attn.q_proj.weight' -> 'attn_q');
    a norm's weight -> 'norm'; a bias goes with its weight. ConfigError for a name not in a decoder."""
    if name.startswith("embed_tokens."):
        return "embedding"
    if name.startswith("lm_head."):
        return "output"
    parts = name.split(".")
    if len(parts) > 1 and "norm" in parts[-2]:  # norm.weight, layers.3.input_layernorm.weight, ...q_norm.weight
        return "norm"
    if parts[0] == "layers" and len(parts) > 3:
        module = ".".join(parts[2:-1])
        if module in _LAYER_MODULES:
            return _LAYER_MODULES[module]
        if module.startswith("mlp.experts.") and parts[-2] in _EXPERT_LEAVES:
            return _EXPERT_LEAVES[parts[-2]]
    raise ConfigError(f"parameter '{name}' has no tensor class (embedding, output, norm, attention/MLP "
                      "linears, router); edge.export.weights.class_of maps the decoder's names")


class WeightTally:
    """Adds up tensors as a writer stores them: ``add(class, format, params, nbytes)``."""

    def __init__(self) -> None:
        self.classes: dict[str, dict] = {}
        self.other_bytes = 0

    def add(self, cls: str, fmt: str, params: int, nbytes: int) -> None:
        c = self.classes.setdefault(cls, {"params": 0, "bytes": 0, "formats": {}})
        c["params"] += int(params)
        c["bytes"] += int(nbytes)
        c["formats"][fmt] = c["formats"].get(fmt, 0) + 1

    def add_other(self, nbytes: int) -> None:
        self.other_bytes += int(nbytes)

    def to_dict(self) -> dict:
        classes = {k: {"params": v["params"], "bytes": v["bytes"], "formats": dict(sorted(v["formats"].items()))}
                   for k, v in sorted(self.classes.items())}
        return {"bytes": sum(v["bytes"] for v in classes.values()),
                "params": sum(v["params"] for v in classes.values()),
                "other_bytes": self.other_bytes, "classes": classes}


def tally(items: Iterable[tuple[str, str, int, int]]) -> dict:
    """The record of (our parameter name, format, params, nbytes) items."""
    t = WeightTally()
    for name, fmt, params, nbytes in items:
        t.add(class_of(name), fmt, params, nbytes)
    return t.to_dict()


# ---- GGUF: the tensor infos in the header ---------------------------------------------------------
# GGUF value type id -> struct format (gguf-py GGUFValueType); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_tensor_infos(path: str | Path) -> list[tuple[str, tuple[int, ...], str, int]]:
    """(name, shape innermost first, GGML type name, bytes) of every tensor in a GGUF file, read from
    its header only (the key/values are skipped, not parsed)."""
    import gguf

    path = Path(path)
    out = []
    with open(path, "rb") as f:

        def read(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def skip(t):
            if t == 8:
                f.seek(read("<Q"), 1)
            elif t == 9:
                sub, n = read("<I"), read("<Q")
                if sub in _SCALARS:
                    f.seek(n * struct.calcsize(_SCALARS[sub]), 1)
                else:
                    for _ in range(n):
                        skip(sub)
            else:
                f.seek(struct.calcsize(_SCALARS[t]), 1)

        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{path}: not a GGUF file (bad magic)")
        read("<I")
        n_tensors, n_kv = read("<Q"), read("<Q")
        for _ in range(n_kv):
            f.seek(read("<Q"), 1)
            skip(read("<I"))
        for _ in range(n_tensors):
            name = f.read(read("<Q")).decode("utf-8")
            shape = tuple(read("<Q") for _ in range(read("<I")))
            ttype = gguf.GGMLQuantizationType(read("<I"))
            read("<Q")  # offset
            block, type_size = gguf.GGML_QUANT_SIZES[ttype]
            n = math.prod(shape)
            out.append((name, shape, ttype.name, n // block * type_size))
    return out


# llama.cpp's tensor names (after "blk.N." and before ".weight"/".bias"; _exps: stacked experts,
# _shexp: a shared expert) -> class; every name with "norm" in it is a norm
_GGUF_CLASSES = {
    "token_embd": "embedding", "output": "output", "attn_q": "attn_q", "attn_k": "attn_k", "attn_v": "attn_v",
    "attn_output": "attn_o", "ffn_gate": "ffn_gate", "ffn_up": "ffn_up", "ffn_down": "ffn_down",
    "ffn_gate_inp": "router",
}


def gguf_class(name: str) -> str:
    """The class of a GGUF tensor name ('blk.3.ffn_down_exps.weight' -> 'ffn_down')."""
    import re

    base = name.rsplit(".", 1)[0]
    if base.startswith("blk."):
        base = base.split(".", 2)[2]
    if "norm" in base:
        return "norm"
    base = re.sub(r"_(exps|shexp)$", "", base)
    if base in _GGUF_CLASSES:
        return _GGUF_CLASSES[base]
    raise ConfigError(f"GGUF tensor '{name}' has no tensor class; edge.export.weights knows "
                      f"{', '.join(_GGUF_CLASSES)} (+ _exps/_shexp) and norms")


def gguf_weights(path: str | Path) -> dict:
    """The weight record of a GGUF file, from its tensor infos (stacked experts: one tensor each)."""
    t = WeightTally()
    for name, shape, ttype, nbytes in gguf_tensor_infos(path):
        t.add(gguf_class(name), ttype, math.prod(shape), nbytes)
    return t.to_dict()


# ---- ONNX: the initializers of every graph, each given to the module that uses it -----------------
_WEIGHT_CONSUMERS = ("MatMul", "Gemm", "Gather", "MatMulNBits")
_PASS_THROUGH = ("DequantizeLinear", "Transpose", "Cast", "Reshape")
# a module's own name (the last part of its path) -> class; norms are matched apart
_LEAF_CLASSES = {
    "embed_tokens": "embedding", "lm_head": "output", "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
    "o_proj": "attn_o", "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down", "gate": "router",
}


def _scope_class(path: str) -> str:
    """The class of the innermost known module in a scope path: torch.onnx's namespace
    ('layers.0.self_attn.q_proj') or a TorchScript-exported node name ('/self_attn/q_proj_1/MatMul',
    with a _N suffix per repeat); '' when none is a weight's module."""
    import re

    for seg in reversed(re.split(r"[/.]", path)):
        seg = re.sub(r"_\d+$", "", seg)
        if seg in _LEAF_CLASSES:
            return _LEAF_CLASSES[seg]
        if seg.endswith("norm"):
            return "norm"
    return ""


def _node_scope(node) -> str:
    for p in node.metadata_props:
        if p.key == "namespace":  # ": Top/layers.0.self_attn: IOAttention/layers.0.self_attn.q_proj: Linear/linear: aten..."
            return "/".join(s.split(":")[0].strip() for s in p.value.split("/")[1:-1])
    return node.name if node.name.startswith("/") else ""  # TorchScript exporter: '/mlp/up_proj/MatMul'


def _tensor_bytes(t) -> int:
    from onnx import TensorProto, helper

    if t.raw_data:
        return len(t.raw_data)
    n = math.prod(t.dims)
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (n + 1) // 2
    return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _consumer(name: str, consumers: dict, depth: int = 0):
    """(the compute node a constant feeds, whether it is that node's weight value); ``consumers``:
    tensor name -> [(node, input index)]."""
    for n, i in consumers.get(name, []):
        if n.op_type in _WEIGHT_CONSUMERS:
            return n, True
        # through a DequantizeLinear from any input (codes, scale, zero point); through a
        # Transpose/Cast/Reshape from its data only (a Reshape's shape is not a weight)
        if n.op_type in _PASS_THROUGH and depth < 4 and (i == 0 or n.op_type == "DequantizeLinear"):
            found, value = _consumer(n.output[0], consumers, depth + 1)
            if found is not None:
                return found, value and i == 0
    return (consumers[name][0][0], False) if consumers.get(name) else (None, False)


def onnx_constants(graph) -> list[tuple[str, object]]:
    """(the name the graph uses, TensorProto) of every constant stored in a graph: initializers and
    the values of Constant nodes (the TorchScript exporter stores small constants as nodes)."""
    out = [(t.name, t) for t in graph.initializer]
    for n in graph.node:
        if n.op_type == "Constant":
            out += [(n.output[0], a.t) for a in n.attribute if a.name == "value"]
    return out


def onnx_weights(paths: Iterable[str | Path]) -> dict:
    """The weight record of ONNX graphs (all parts of one model), from their stored constants.

    A constant's class is that of the module whose node consumes it (through DequantizeLinear,
    Transpose, ...), read off the scope torch.onnx records; failing that, its own name where it
    is one of our parameter names; what neither names (RoPE rotation, activation scales, shape
    constants) is counted in ``other_bytes``. Parameters are counted for weight values (a MatMul /
    Gather operand, a DequantizeLinear's codes, a norm's weight), not for scales and zero points,
    whose bytes go to their weight's class."""
    import onnx

    t = WeightTally()
    for path in paths:
        g = onnx.load(str(path)).graph
        consumers: dict[str, list] = {}
        for n in g.node:
            for i, x in enumerate(n.input):
                consumers.setdefault(x, []).append((n, i))
        by_name = {n.name: n for n in g.node}

        for name, tensor in onnx_constants(g):
            nbytes = _tensor_bytes(tensor)
            node, is_value = _consumer(name, consumers)
            cls = _scope_class(_node_scope(node)) if node is not None else ""
            if not cls and node is not None and "." in node.name:  # a node a QDQ writer added: "<node>.float_MatMul"
                owner = by_name.get(node.name.split(".")[0])
                cls = _scope_class(_node_scope(owner)) if owner is not None else ""
                is_value = False  # (rows of a weight whose codes are counted already)
            if not cls:
                try:
                    cls = class_of(name)
                except ConfigError:
                    t.add_other(nbytes)
                    continue
            fmt = onnx.helper.tensor_dtype_to_string(tensor.data_type).removeprefix("TensorProto.").lower()
            params = math.prod(tensor.dims) if (is_value or cls == "norm") else 0
            t.add(cls, fmt if params else "scales", params, nbytes)
    return t.to_dict()
