"""Cost recipes: what a quantization recipe costs in bytes per weight, per tensor class.

A recipe says, for each class of weight tensor, which storage type it uses (the tables below),
plus the activation and KV-cache data types and any sparsity. The simulator needs nothing else
from quantization::

    from edge.sim.recipes import load_recipe, QUANT_TYPES
    r = load_recipe("q4_k_m")
    r.type_for("attn_v", layer=0, n_layers=30, cols=576)   # 'q8_0' (q6_k falls back: 576 % 256)
    QUANT_TYPES["q4_0"].bits_per_weight                    # 4.5

A recipe file (YAML or JSON) starts from a preset and overrides::

    base: q4_0
    weights: {output: q8_0}
    kv_cache: int8

A built artifact is costed as written, not as its preset describes: ``as_written`` takes the
per-class bytes and parameter counts its writer records in the manifest (``weights``) and costs
every tensor class at the bits per weight the file actually stores::

    r = as_written("w4a16", manifest["artifacts"][0]["weights"])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from edge.errors import ConfigError
from edge.errors import did_you_mean as _hint  # the one did-you-mean, under the name this file calls
from edge.recipes import KV_ALIASES
from edge.recipes import PRESETS as PRESET_ROWS
from edge.sim.sparsity import parse_nm


@dataclass(frozen=True)
class QuantType:
    """A storage type: ``block`` weights take ``block_bytes`` (scales included).

    ``block == 0`` means one block per row: ``bits`` per weight plus ``row_bytes`` of scale per row.
    ``super_block`` > 1: the row length must be a multiple of it, else ``fallback`` is used
    (llama.cpp's k-quants need rows that are multiples of 256).
    """

    name: str
    block: int
    block_bytes: float = 0.0
    bits: float = 0.0
    row_bytes: float = 0.0
    super_block: int = 1
    fallback: str = ""
    source: str = ""

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.block_bytes / self.block if self.block else self.bits

    def row_size(self, cols: int) -> float:
        if self.block:
            return math.ceil(cols / self.block) * self.block_bytes
        return cols * self.bits / 8 + self.row_bytes


_GGML = "ggml block layouts (ggml-common.h; gguf-py constants.py GGML_QUANT_SIZES)"
_LLAMA_QUANT = "llama.cpp src/llama-quant.cpp: k-quants on rows not a multiple of 256 fall back"
_TORCHAO = "torchao Int8DynActInt4WeightQuantizer: int4 symmetric per group of 32, fp32 scale per group"

# storage type -> layout. One visible table; bits_per_weight is derived from it.
QUANT_TYPES: dict[str, QuantType] = {q.name: q for q in (
    QuantType("f32", 1, 4, source="IEEE fp32"),
    QuantType("f16", 1, 2, source="IEEE fp16"),
    QuantType("bf16", 1, 2, source="bfloat16"),
    QuantType("q8_0", 32, 34, source=_GGML + ": 32 int8 + fp16 scale"),                  # 8.5 bpw
    QuantType("q5_0", 32, 22, source=_GGML + ": 32x5 bit + fp16 scale"),                 # 5.5 bpw
    QuantType("q5_1", 32, 24, source=_GGML + ": 32x5 bit + fp16 scale and min"),         # 6.0 bpw
    QuantType("q4_0", 32, 18, source=_GGML + ": 32x4 bit + fp16 scale"),                 # 4.5 bpw
    QuantType("q4_1", 32, 20, source=_GGML + ": 32x4 bit + fp16 scale and min"),         # 5.0 bpw
    QuantType("q4_k", 256, 144, super_block=256, fallback="q5_0", source=_GGML + "; " + _LLAMA_QUANT),  # 4.5
    QuantType("q5_k", 256, 176, super_block=256, fallback="q5_1", source=_GGML + "; " + _LLAMA_QUANT),  # 5.5
    QuantType("q6_k", 256, 210, super_block=256, fallback="q8_0", source=_GGML + "; " + _LLAMA_QUANT),  # 6.5625
    QuantType("int8_channel", 0, bits=8, row_bytes=4, source="int8 per output channel, fp32 scale per row"),
    QuantType("int4_g32", 32, 18, source="int4 per group of 32, fp16 scale (symmetric)"),         # 4.5
    QuantType("int4_g32_f32s", 32, 20, source=_TORCHAO),                                          # 5.0
    QuantType("int4_g64", 64, 34, source="int4 per group of 64, fp16 scale (Qualcomm LPBQ-style)"),  # 4.25
    QuantType("int4_g128", 128, 66, source="int4 per group of 128, fp16 scale"),                  # 4.125
)}

# KV-cache / activation data type -> bytes per element
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int16": 2, "int8": 1, "int4": 0.5,
}

# weight tensor classes, as edge.sim.model enumerates them
TENSOR_CLASSES = (
    "embedding", "output", "attn_q", "attn_k", "attn_v", "attn_o",
    "ffn_gate", "ffn_up", "ffn_down", "router", "norm",
)
_LINEAR = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_gate", "ffn_up", "ffn_down")


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's rule for which layers get the larger type in *_K_M mixes (llama-quant.cpp)."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


@dataclass(frozen=True)
class Recipe:
    """Bits per weight per tensor class, activation and KV data types, sparsity."""

    name: str
    weights: Mapping[str, str]  # tensor class -> QUANT_TYPES key
    activations: str  # data type the matmuls take their inputs in
    kv_cache: str  # data type of the KV cache
    more_bits: Mapping[str, str] = field(default_factory=dict)  # class -> type in use_more_bits layers
    sparsity: float = 0.0  # fraction of linear weights removed (stored compressed)
    sparsity_index_bits: float = 0.0  # bits per kept weight to index it (0: structured)
    note: str = ""
    nm_sparsity: str = ""  # "2:4": N:M semi-structured; edge.sim.sparsity counts it where the unit runs it
    base: str = ""  # the preset a recipe file started from; runtimes are matched on it
    # hybrid quantization: the fraction of the decoder's linear MACs an accelerator leaves to the CPU
    # in float (nodes its toolchain does not quantize, e.g. W8A8 groups kept in float on an int8 NPU)
    cpu_linear_fraction: float = 0.0
    # an artifact as written (as_written): class -> bits per weight measured from the file, replacing
    # the storage type's; and whether it stores the embedding table apart from the head although the
    # model ties them (an ONNX Gather table next to the head's MatMul weight, a .pte's untied head)
    stored_bits: Mapping[str, float] = field(default_factory=dict)
    separate_embedding: bool = False
    # experts an MoE artifact computes per token; 0: the model's top-k (llama.cpp's mul_mat_id). Graphs
    # without a sparse expert kernel (our ONNX and .pte) run every expert, weighted by a gate that is
    # zero outside the top-k, so they do n_experts / top_k times the expert work and read every expert.
    experts_per_token: int = 0

    @property
    def preset(self) -> str:
        return self.base or self.name

    def __post_init__(self) -> None:
        for cls, t in {**self.weights, **self.more_bits}.items():
            if cls not in TENSOR_CLASSES:
                raise ConfigError(f"recipe {self.name}: unknown tensor class '{cls}'{_hint(cls, TENSOR_CLASSES)}; "
                                  f"allowed: {', '.join(TENSOR_CLASSES)}")
            if t not in QUANT_TYPES:
                raise ConfigError(f"recipe {self.name}: unknown storage type '{t}' for {cls}{_hint(t, QUANT_TYPES)}; "
                                  f"allowed: {', '.join(QUANT_TYPES)}")
        for cls, bits in self.stored_bits.items():
            if cls not in TENSOR_CLASSES or not bits > 0:
                raise ConfigError(f"recipe {self.name}: stored bits {bits!r} for '{cls}': needs a tensor class "
                                  f"({', '.join(TENSOR_CLASSES)}) and a positive number")
        missing = [c for c in TENSOR_CLASSES if c not in self.weights]
        if missing:
            raise ConfigError(f"recipe {self.name}: no storage type for {', '.join(missing)}")
        if not 0.0 <= self.cpu_linear_fraction <= 1.0:
            raise ConfigError(f"recipe {self.name}: cpu_linear_fraction {self.cpu_linear_fraction} is not in [0, 1]")
        for what, dt in (("activations", self.activations), ("kv_cache", self.kv_cache)):
            if dt not in DTYPE_BYTES:
                raise ConfigError(f"recipe {self.name}: {what} '{dt}' is not a data type{_hint(dt, DTYPE_BYTES)}; "
                                  f"allowed: {', '.join(DTYPE_BYTES)}")
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"recipe {self.name}: sparsity must be a fraction in [0, 1) or a quoted \"N:M\" "
                              f"pattern (YAML reads 2:4 unquoted as 124), got {self.sparsity}")
        if self.nm_sparsity:
            try:
                parse_nm(self.nm_sparsity)
            except ConfigError as e:
                raise ConfigError(f"recipe {self.name}: {e}") from e

    def dense_fraction(self, cls: str) -> float:
        """Fraction of a tensor's multiply-adds executed: 1 - sparsity for the sparse linears."""
        return 1 - self.sparsity if cls in _LINEAR else 1.0

    def type_for(self, cls: str, layer: int = 0, n_layers: int = 1, cols: int = 256) -> QuantType:
        """The storage type of one tensor, after the k-quant row-length fallback."""
        name = self.weights[cls]
        if cls in self.more_bits and use_more_bits(layer, n_layers):
            name = self.more_bits[cls]
        q = QUANT_TYPES[name]
        while q.super_block > 1 and cols % q.super_block:
            q = QUANT_TYPES[q.fallback]
        return q

    def tensor_bytes(self, cls: str, rows: int, cols: int, layer: int = 0, n_layers: int = 1) -> float:
        if cls in self.stored_bits:
            bits = self.stored_bits[cls]
            b = rows * cols * bits / 8
        else:
            bits = self.type_for(cls, layer, n_layers, cols).bits_per_weight
            b = rows * self.type_for(cls, layer, n_layers, cols).row_size(cols)
        if self.sparsity and cls in _LINEAR:
            kept = 1 - self.sparsity
            b *= kept * (1 + self.sparsity_index_bits / bits)
        return b

    @property
    def kv_bytes(self) -> float:
        return DTYPE_BYTES[self.kv_cache]

    @property
    def act_bytes(self) -> float:
        return DTYPE_BYTES[self.activations]

    def nominal_bits(self) -> float:
        """Bits per weight of the linear layers, as a recipe is usually quoted."""
        return self.stored_bits.get("ffn_up") or QUANT_TYPES[self.weights["ffn_up"]].bits_per_weight


def _all(linear: str, *, embedding: str, output: str, norm: str = "f32", router: str = "") -> dict[str, str]:
    d = {c: linear for c in _LINEAR}
    d.update(embedding=embedding, output=output, norm=norm, router=router or linear)
    return d


# preset name -> Recipe, built from the one preset table (edge.recipes.PRESETS: the cost model of each
# row; edge.sim.recipes.preset_table() prints it). Norms are f32 unless a row says otherwise.
PRESETS: dict[str, Recipe] = {p.name: Recipe(p.name, {"norm": "f32", **p.cost}, p.activations, p.kv_cache,
                                             more_bits=p.more_bits, note=p.cost_note)
                              for p in PRESET_ROWS.values()}


# llama.cpp's own mixes (llama-quantize), for GGUF files llama.cpp made (published benchmarks in
# benchmarks/sim_vs_published.py); runtimes and efficiency rows match them by ``base``. The presets
# above cost what edge writes, which differs in the embedding and head (and in q4_k_m's linears).
LLAMACPP_MIXES: dict[str, Recipe] = {r.base: r for r in (
    Recipe("llama.cpp-q4_0", _all("q4_0", embedding="q4_0", output="q6_k"), "int8", "fp16", base="q4_0",
           note="4.5 bpw; llama.cpp MOSTLY_Q4_0: output (or tied embedding) q6_k, q8_0 when rows % 256"),
    Recipe("llama.cpp-q4_k_m", _all("q4_k", embedding="q4_k", output="q6_k"), "int8", "fp16",
           more_bits={"attn_v": "q6_k", "ffn_down": "q6_k"}, base="q4_k_m",
           note="~4.85 bpw; llama.cpp MOSTLY_Q4_K_M: attn_v/ffn_down q6_k in use_more_bits layers"),
)}


def as_written(base: str | Path | Recipe, weights: Mapping) -> Recipe:
    """``base``'s cost recipe (data types, KV cache, runtime match) with the weights as an artifact
    stores them: ``weights`` is a writer's record (``edge.export.weights``), ``{"classes": {class:
    {"params": n, "bytes": b, ...}}}``. Each class costs 8 * bytes / params bits per weight, so the
    simulated weight bytes are the file's. One of embedding/output recorded: one table serves both."""
    r = load_recipe(base)
    classes = (weights or {}).get("classes") if isinstance(weights, Mapping) else None
    if not classes:
        raise ConfigError(f"recipe {r.name}: the artifact's weight record has no 'classes' (bytes per tensor "
                          "class); rebuild the package with this edge to record them")
    unknown = [c for c in classes if c not in TENSOR_CLASSES]
    if unknown:
        raise ConfigError(f"recipe {r.name}: the artifact stores tensors of class '{unknown[0]}', which the "
                          f"simulator does not cost; classes: {', '.join(TENSOR_CLASSES)}")
    bits = {c: 8 * v["bytes"] / v["params"] for c, v in classes.items() if v.get("params")}
    separate = "embedding" in bits and "output" in bits
    if not separate:  # one table: the embedding gather and the head read the same bytes
        shared = bits.get("output", bits.get("embedding"))
        if shared is not None:
            bits["embedding"] = bits["output"] = shared
    return replace(r, stored_bits=bits, separate_embedding=separate, base=r.preset,
                   experts_per_token=int(weights.get("experts_per_token", 0)),
                   note=f"{r.note}; bits per weight as written: "
                   + ", ".join(f"{c} {b:.3g}" for c, b in sorted(bits.items())))


def preset_table() -> list[dict]:
    """One row per preset: linear-layer type and bits per weight, embedding, output, act, KV."""
    rows = []
    for r in PRESETS.values():
        rows.append({
            "preset": r.name,
            "linear": r.weights["ffn_up"],
            "bpw": round(r.nominal_bits(), 4),
            "embedding": r.weights["embedding"],
            "output": r.weights["output"],
            "more_bits": ", ".join(f"{k}={v}" for k, v in r.more_bits.items()),
            "activations": r.activations,
            "kv_cache": r.kv_cache,
            "note": r.note,
        })
    return rows


_RECIPE_KEYS = ("name", "base", "weights", "more_bits", "activations", "kv_cache", "sparsity",
                "sparsity_index_bits", "note")


def load_recipe(name_or_path: str | Path | Recipe) -> Recipe:
    """A preset by name, or a YAML/JSON file that starts from ``base:`` and overrides."""
    if isinstance(name_or_path, Recipe):
        return name_or_path
    s = str(name_or_path)
    if s in PRESETS:
        return PRESETS[s]
    p = Path(s)
    if not p.exists():
        raise ConfigError(f"no recipe '{s}'{_hint(s, PRESETS)}; presets: {', '.join(PRESETS)} (or a .yaml/.json file)")
    text = p.read_text()
    try:
        if p.suffix == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - both parsers' errors become one line
        raise ConfigError(f"{p}: not valid {p.suffix.lstrip('.') or 'YAML'} ({str(e).splitlines()[0]})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping with keys {', '.join(_RECIPE_KEYS)}")
    for k in doc:
        if k not in _RECIPE_KEYS:
            raise ConfigError(f"{p}: {k}: unknown key{_hint(k, _RECIPE_KEYS)}; allowed: {', '.join(_RECIPE_KEYS)}")
    base_name = doc.get("base", "fp32")
    if base_name not in PRESETS:
        raise ConfigError(f"{p}: base: no preset '{base_name}'{_hint(base_name, PRESETS)}; presets: {', '.join(PRESETS)}")
    base = PRESETS[base_name]
    weights = dict(base.weights)
    if "linear" in (doc.get("weights") or {}):
        lin = doc["weights"].pop("linear")
        weights.update({c: lin for c in _LINEAR})
    weights.update(doc.get("weights") or {})
    try:
        return replace(
            base,
            name=doc.get("name", p.stem),
            base=base_name,
            weights=weights,
            more_bits=doc.get("more_bits", base.more_bits),
            activations=doc.get("activations", base.activations),
            kv_cache=KV_ALIASES.get(kv := str(doc.get("kv_cache", base.kv_cache)), kv),  # llama.cpp's f16 too
            sparsity=float(sp) if not isinstance(sp := doc.get("sparsity", base.sparsity), str) else 0.0,
            nm_sparsity=sp if isinstance(sp, str) else base.nm_sparsity,
            sparsity_index_bits=float(doc.get("sparsity_index_bits", base.sparsity_index_bits)),
            note=doc.get("note", f"from {p}"),
        )
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from e
