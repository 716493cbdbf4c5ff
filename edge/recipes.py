"""The preset table: what each recipe name means to every stage, in one place. Torch-free.

A row says, for one preset, how the simulator costs it (a storage type per tensor class, the
activations' and the KV cache's data types), how ``edge.quant`` quantizes it (a format per tensor
class, the algorithm), which option each writer takes for it (.pte, ONNX, GGUF), and the flags the
search and ``edge validate`` read. ``edge.sim.recipes`` and ``edge.quant.configs`` build their
objects from these rows, ``edge.export.check`` reads the writer options; a new preset is a new row::

    from edge.recipes import preset, kv_cache
    preset("q4_0").writers["gguf"]     # 'q4_0'
    preset("q4_1")                     # ConfigError: preset 'q4_1' unknown (did you mean 'q4_0'?); allowed: ...
    kv_cache("f16")                    # 'fp16': one spelling of the KV cache types, llama.cpp's accepted

Tensor classes are the simulator's: embedding, output (the head; a tied embedding is costed once,
as output), attn_q/k/v/o, ffn_gate/up/down, router, norm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge.errors import ConfigError, did_you_mean

LINEAR = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_gate", "ffn_up", "ffn_down")

# KV cache data types, one spelling (the profiles' and the simulator's data type names); llama.cpp's
# spellings are accepted where a user writes one and translated here, once
KV_CACHE = ("fp32", "fp16", "bf16", "int8")
KV_ALIASES = {"f32": "fp32", "f16": "fp16"}

# the writers (edge.export.check.FORMAT_WRITERS) a row can name an option for
WRITERS = ("pte", "onnx", "gguf")


def kv_cache(name: str, where: str = "kv_cache") -> str:
    """The KV cache type ``name`` in the one vocabulary (``KV_CACHE``); 'f16' -> 'fp16'."""
    name = KV_ALIASES.get(str(name), str(name))
    if name not in KV_CACHE:
        raise ConfigError(f"{where}: '{name}' is not a KV cache type{did_you_mean(name, KV_CACHE)}; "
                          f"one of {', '.join(KV_CACHE)} (llama.cpp's f32, f16 also read)")
    return name


def _classes(linear: str, *, embedding: str, output: str, router: str = "", norm: str = "") -> dict[str, str]:
    d = dict.fromkeys(LINEAR, linear)
    d.update(embedding=embedding, output=output, router=router or linear)
    if norm:
        d["norm"] = norm
    return d


@dataclass(frozen=True)
class Preset:
    """One row: the cost model, the quantization recipe and the writers' options of a preset."""

    name: str
    cost: Mapping[str, str]  # tensor class -> edge.sim.recipes.QUANT_TYPES key
    activations: str  # data type the matmuls take their inputs in (simulator)
    kv_cache: str  # KV_CACHE
    quant: Mapping[str, str] | None  # tensor class -> edge.quant format (FORMAT_BPW key); None: not quantized by edge
    writers: Mapping[str, str] = field(default_factory=dict)  # writer -> its option for this preset
    method: str = "rtn"  # edge.quant's algorithm
    quant_activations: str = "none"  # none | int8_static | int8_dynamic
    more_bits: Mapping[str, str] = field(default_factory=dict)  # cost: class -> type in llama.cpp's use_more_bits layers
    four_bit: bool = False  # 4-bit weights: edge validate's top-1 floor is lower for these
    searched: bool = False  # in the search space of `edge build --auto`
    cost_note: str = ""
    quant_note: str = ""

    def __post_init__(self) -> None:
        kv_cache(self.kv_cache, f"preset {self.name}: kv_cache")
        for w in self.writers:
            if w not in WRITERS:
                raise ConfigError(f"preset {self.name}: writer '{w}' unknown{did_you_mean(w, WRITERS)}; "
                                  f"allowed: {', '.join(WRITERS)}")
        for k in ("cost", "quant", "writers", "more_bits"):
            if getattr(self, k) is not None:
                object.__setattr__(self, k, MappingProxyType(dict(getattr(self, k))))


# Tensor classes edge's w4a16 keeps at 8 bits (int8 per output channel); the other linears are GPTQ int4
# in blocks of 64. Chosen on the built-in model (weights only, fp32 reference, docs/export.md): KL
# divergence when one class at a time is left unquantized ranks down, up, v, gate, o, k, q (v and k give
# the most per byte); all int4: top-1 0.793; k, v, down at int8: 0.854; k, v, up, down: 0.899. The last
# clears the 0.85 top-1 that edge validate asks of 4-bit packages, with room for the 16-bit activations'
# own error. The same recipe under `edge quantize` and `edge build` (the QDQ writer takes it as it is).
W4A16_INT8_CLASSES = ("attn_k", "attn_v", "ffn_up", "ffn_down")
_LLAMACPP_OUT = "llama.cpp gives output (or a tied embedding) q6_k, which falls back to q8_0 when rows % 256"

# preset name -> row. What each preset costs, quantizes to and is written as, side by side.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("fp32", _classes("f32", embedding="f32", output="f32"), "fp32", "fp32",
           _classes("f32", embedding="f32", output="f32", router="f32"),
           writers={"pte": "fp32", "onnx": "fp32", "gguf": "fp32"},
           cost_note="32 bpw; llama.cpp ALL_F32 (its KV cache stays f16 unless asked)", quant_note="no quantization"),
    Preset("fp16", _classes("f16", embedding="f16", output="f16"), "fp16", "fp16",
           _classes("f16", embedding="f16", output="f16", router="f16"),
           writers={"onnx": "fp16", "gguf": "fp16"}, searched=True, cost_note="16 bpw", quant_note="fp16 weights"),
    Preset("bf16", _classes("bf16", embedding="bf16", output="bf16", norm="bf16"), "bf16", "bf16", None,
           cost_note="16 bpw; torch bf16 end to end (no edge writer: torch-cuda runs the checkpoint)"),
    Preset("q8_0", _classes("q8_0", embedding="q8_0", output="q8_0"), "int8", "fp16",
           _classes("q8_0", embedding="q8_0", output="q8_0", router="q8_0"),
           writers={"gguf": "q8_0"}, method="gptq", searched=True,
           cost_note="8.5 bpw; llama.cpp MOSTLY_Q8_0, activations quantized to q8 inside the dot products",
           quant_note="8.5 bpw GGUF Q8_0 everywhere"),
    Preset("q4_k_m", _classes("q5_0", embedding="q8_0", output="q8_0", router="q8_0"), "int8", "fp16",
           _classes("q5_0", embedding="q8_0", output="q8_0", router="q8_0"),
           writers={"gguf": "q4_k_m"}, method="gptq", four_bit=True, searched=True,
           cost_note="5.5 bpw; what edge writes for q4_k_m: q5_0 linears, q8_0 output and embedding (no k-quant "
           "packing yet); llama.cpp's own mix is edge.sim.recipes.LLAMACPP_MIXES['q4_k_m']",
           quant_note="what llama.cpp's Q4_K_M becomes on 576-wide rows (q4_k -> q5_0 fallback); k-quant packing "
           "itself is not implemented, ffn_down is q5_0 instead of q4_k/q6_k"),
    Preset("q4_0", _classes("q4_0", embedding="q8_0", output="q8_0", router="q8_0"), "int8", "fp16",
           _classes("q4_0", embedding="q8_0", output="q8_0", router="q8_0"),
           writers={"gguf": "q4_0"}, method="gptq", four_bit=True, searched=True,
           cost_note="4.5 bpw; what edge writes for q4_0: q4_0 linears, q8_0 output and embedding; llama.cpp's "
           "own mix is edge.sim.recipes.LLAMACPP_MIXES['q4_0']",
           quant_note="4.5 bpw GGUF Q4_0 linears, q8_0 output/tied embedding (as llama.cpp: " + _LLAMACPP_OUT + ")"),
    Preset("w8a8", _classes("int8_channel", embedding="int8_channel", output="int8_channel"), "int8", "int8",
           _classes("int8", embedding="int8", output="int8", router="q8_0"),
           writers={"pte": "8da8w", "onnx": "qdq-w8a8"}, method="gptq", quant_activations="int8_static", searched=True,
           cost_note="8 bpw; int8 per-channel weights, int8 activations and KV (NPU style)",
           quant_note="edge.quant.w8a8's static W8A8 (edge build's ONNX QDQ scheme): rotation, GPTQ int8 per-channel "
           "linears, MSE-clipped static per-tensor activation scales, every down_proj input and the 6 groups "
           "with the largest int8 error at int16 (float on a unit without int16), embedding/lm_head float. "
           "--method rtn/awq or a recipe file with smoothquant: SmoothQuant instead (int8 "
           "weights, absmax static scales, SmoothQuant alpha as given)"),
    Preset("w4a16", _classes("int4_g64", embedding="int8_channel", output="int8_channel", router="int8_channel"),
           "int16", "fp16",
           _classes("int4_g64", embedding="int8", output="int8", router="q8_0") | dict.fromkeys(W4A16_INT8_CLASSES, "int8"),
           writers={"onnx": "qdq-w4a16"}, method="gptq", four_bit=True, searched=True,
           cost_note="4.25 bpw; Qualcomm-style 4-bit block weights, 16-bit activations",
           quant_note=f"int4 g64 GPTQ weights, {', '.join(W4A16_INT8_CLASSES)} and the output head int8 per channel "
           "(mixed w4/w8), 16-bit activations (QNN HTP)"),
    Preset("8da4w", _classes("int4_g32_f32s", embedding="int4_g32_f32s", output="int4_g32_f32s",
                             router="int8_channel"), "int8", "fp32",
           _classes("int4_g32", embedding="int4_g32", output="int4_g32", router="int8"),
           writers={"pte": "8da4w"}, method="gptq", quant_activations="int8_dynamic", four_bit=True, searched=True,
           cost_note="5.0 bpw; ExecuTorch/torchao 8-bit dynamic activations, int4 g32 weights",
           quant_note="ExecuTorch/torchao 8-bit dynamic activations, int4 g32 symmetric weights"),
)}


def preset(name: str, where: str = "") -> Preset:
    """The row of preset ``name``; one ConfigError naming the known presets otherwise."""
    if name not in PRESETS:
        raise ConfigError(f"{where + ': ' if where else ''}preset '{name}' unknown{did_you_mean(name, PRESETS)}; "
                          f"allowed: {', '.join(PRESETS)}")
    return PRESETS[name]


def writer_options(writer: str) -> dict[str, str]:
    """preset -> ``writer``'s option, for the presets that writer can write."""
    return {p.name: p.writers[writer] for p in PRESETS.values() if writer in p.writers}


SEARCHED = tuple(p.name for p in PRESETS.values() if p.searched)
FOUR_BIT = tuple(p.name for p in PRESETS.values() if p.four_bit)
