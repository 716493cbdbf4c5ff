"""Quantization recipes: which format each tensor class gets, which algorithm, activations, KV cache.

A recipe is a small frozen dataclass, validated on construction; presets are a data table;
a user writes a recipe file (YAML or JSON) that starts from a preset and overrides::

    base: q4_0
    method: gptq            # rtn | gptq | awq | awq+gptq
    weights: {output: q8_0, attn_v: q5_0}
    layers: {"0": q8_0, "29": q8_0}     # every linear of these layers
    gptq: {damp: 0.01, act_order: true}

    r = load_recipe("q4_0")                  # preset: our best Q4_0 (GPTQ)
    r = load_recipe("my_recipe.yaml")
    r.format_for("attn_q", layer=3)          # 'q4_0'
    r.bits_per_weight(spec)                  # {'embedding': 8.5, 'attn_q': 4.5, ...}

Torch-free: the simulator and the CLI read recipes without loading a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType

from edge.errors import ConfigError, did_you_mean
from edge.recipes import KV_CACHE
from edge.recipes import PRESETS as PRESET_ROWS
from edge.recipes import kv_cache as canonical_kv

# weight tensor classes (the simulator's names, edge.sim.recipes.TENSOR_CLASSES, minus norms)
TENSOR_CLASSES = (
    "embedding", "output", "attn_q", "attn_k", "attn_v", "attn_o", "ffn_gate", "ffn_up", "ffn_down", "router",
)
LINEAR_CLASSES = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_gate", "ffn_up", "ffn_down")
METHODS = ("rtn", "gptq", "awq", "awq+gptq")
ACTIVATIONS = ("none", "int8_static", "int8_dynamic")

# The module name inside a decoder layer for each class (edge.model.llama, Hugging Face names).
CLASS_MODULES: dict[str, str] = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_o": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "router": "mlp.gate",
}


# Format names and bits per weight, without importing torch (primitives imports torch).
FORMAT_BPW: dict[str, float] = {
    "f32": 32.0, "f16": 16.0, "q8_0": 8.5, "q5_0": 5.5, "q4_0": 4.5, "int8": 8.0,
    "int4_g32": 5.0, "int4_g64": 4.5, "int4_g128": 4.25,
    "int4_g32_asym": 5.0, "int4_g64_asym": 4.5, "int4_g128_asym": 4.25,
}


def _check_format(where: str, fmt: str) -> None:
    if fmt not in FORMAT_BPW:
        raise ConfigError(f"{where}: unknown weight format '{fmt}'{did_you_mean(fmt, FORMAT_BPW)}; "
                          f"allowed: {', '.join(FORMAT_BPW)}")


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ (Frantar et al. 2022) settings. damp: fraction of mean(diag H) added to the diagonal."""

    damp: float = 0.01
    act_order: bool = True
    block_size: int = 128
    scale_search: bool = True  # importance-weighted scale search before the sweep (static groups)
    refit_scales: bool = False  # after the sweep, exact least-squares scales for the fixed codes: ~4% lower
    # layer error on SmolLM2 q_proj/gate_proj for ~4x the time, so off by default
    static_groups: bool = True  # scales fixed before the sweep; False (needs act_order False): each group's
    # scale searched when the sweep reaches it, on the GPTQ-updated weights
    asym: bool = True  # target the float model's layer outputs from the quantized model's inputs (GPTAQ);
    # costs one float forward pass per layer; docs/quantization.md has the measurement
    asym_damp: float = 0.5  # ridge on that target's solve, as a fraction of mean(diag H): 0.5 generalised
    # better than 0.1 to held-out text (SmolLM2 Q4_0, 64 x 512 calibration: KLD 0.0569 -> 0.0506, torch proxy)
    asym_min_tokens: float = 4.0  # ... used for a linear only with >= this many calibration tokens per input
    # feature (fewer: plain GPTQ; on a tiny model 4 tokens/feature was already worse than plain)

    def __post_init__(self) -> None:
        if not 0 < self.damp < 1:
            raise ConfigError(f"gptq.damp must be in (0, 1), got {self.damp}")
        if self.block_size < 1:
            raise ConfigError(f"gptq.block_size must be >= 1, got {self.block_size}")
        if not self.asym_damp >= 0:
            raise ConfigError(f"gptq.asym_damp must be >= 0, got {self.asym_damp}")
        if not self.static_groups and self.act_order:
            raise ConfigError("gptq.static_groups: false needs act_order: false (act-order visits a group's "
                              "columns out of order, so its scale must be fixed before the sweep)")


@dataclass(frozen=True)
class AWQConfig:
    """AWQ (Lin et al. 2023): per-input-channel scales s = mean|x|^alpha, alpha searched on a grid."""

    grid: int = 10  # alpha step 0.1 (0.05 cost twice the time; the search was the slowest part)
    max_tokens: int = 4096  # calibration tokens used for the search (subsampled)

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise ConfigError(f"awq.grid must be >= 1, got {self.grid}")
        if self.max_tokens < 16:
            raise ConfigError(f"awq.max_tokens must be >= 16, got {self.max_tokens}")


@dataclass(frozen=True)
class QuantRecipe:
    """How to quantize a model. ``weights`` maps every tensor class to a format name.

    ``layers`` overrides the format of every linear of a layer (e.g. the first and last layers at
    higher precision); ``tensors`` overrides single tensors by "layer.class" (e.g. "3.attn_v"),
    which is what a mixed-precision assignment writes. With tied embeddings the one tensor takes
    the ``output`` format (llama.cpp does the same).
    """

    name: str
    weights: Mapping[str, str]
    method: str = "gptq"
    activations: str = "none"
    kv_cache: str = "fp16"  # edge.recipes.KV_CACHE (llama.cpp's f16/f32 read as fp16/fp32)
    smoothquant: float = 0.0  # SmoothQuant migration strength alpha; 0 = off
    layers: Mapping[int, str] = field(default_factory=dict)
    tensors: Mapping[str, str] = field(default_factory=dict)
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    awq: AWQConfig = field(default_factory=AWQConfig)
    sim_preset: str = ""  # the simulator's cost preset this recipe corresponds to
    base: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        where = f"recipe {self.name}"
        if self.kv_cache in ("f32", "f16"):  # llama.cpp's spelling, read once into the one vocabulary
            object.__setattr__(self, "kv_cache", canonical_kv(self.kv_cache))
        unknown = [c for c in self.weights if c not in TENSOR_CLASSES]
        if unknown:
            raise ConfigError(f"{where}: unknown tensor class '{unknown[0]}'{did_you_mean(unknown[0], TENSOR_CLASSES)}; "
                              f"allowed: {', '.join(TENSOR_CLASSES)}")
        missing = [c for c in TENSOR_CLASSES if c not in self.weights]
        if missing:
            raise ConfigError(f"{where}: no format for tensor class(es) {', '.join(missing)}")
        for c, f in self.weights.items():
            _check_format(f"{where}: weights.{c}", f)
        for choice, value, allowed in (("method", self.method, METHODS), ("activations", self.activations, ACTIVATIONS),
                                       ("kv_cache", self.kv_cache, KV_CACHE)):
            if value not in allowed:
                raise ConfigError(f"{where}: {choice} '{value}'{did_you_mean(value, allowed)} is not one of {', '.join(allowed)}")
        if not 0 <= self.smoothquant <= 1:
            raise ConfigError(f"{where}: smoothquant alpha must be in [0, 1], got {self.smoothquant}")
        layers = {}
        for k, f in self.layers.items():
            try:
                layer = int(k)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{where}: layers key '{k}' is not a layer index") from e
            _check_format(f"{where}: layers.{k}", f)
            layers[layer] = f
        object.__setattr__(self, "layers", MappingProxyType(dict(sorted(layers.items()))))
        for k, f in self.tensors.items():
            layer, _, cls = str(k).partition(".")
            if not layer.isdigit() or cls not in LINEAR_CLASSES + ("router",):
                raise ConfigError(f"{where}: tensors key '{k}' must be LAYER.CLASS, e.g. '3.attn_v'; "
                                  f"classes: {', '.join(LINEAR_CLASSES)}")
            _check_format(f"{where}: tensors.{k}", f)
        object.__setattr__(self, "tensors", MappingProxyType(dict(sorted(self.tensors.items()))))
        object.__setattr__(self, "weights", MappingProxyType({c: self.weights[c] for c in TENSOR_CLASSES}))

    # ---- what each tensor gets -----------------------------------------------------------------------
    def format_for(self, cls: str, layer: int | None = None) -> str:
        if layer is not None:
            if f"{layer}.{cls}" in self.tensors:
                return self.tensors[f"{layer}.{cls}"]
            if layer in self.layers and cls in LINEAR_CLASSES:
                return self.layers[layer]
        return self.weights[cls]

    @property
    def calibrated(self) -> bool:
        return self.method != "rtn" or self.smoothquant > 0 or self.activations == "int8_static"

    def bits_per_weight(self, spec=None) -> dict[str, float]:
        """Bits per weight per tensor class (averaged over layers when a ModelSpec is given).

        The simulator's cost recipes take the same numbers (edge.sim.recipes.QUANT_TYPES).
        """
        if spec is None:
            return {c: FORMAT_BPW[f] for c, f in self.weights.items()}
        out = {}
        for c in TENSOR_CLASSES:
            if c in LINEAR_CLASSES or c == "router":
                vals = [FORMAT_BPW[self.format_for(c, i)] for i in range(spec.n_layers)]
                out[c] = sum(vals) / len(vals)
            else:
                out[c] = FORMAT_BPW[self.weights["output" if c == "embedding" and spec.tie_embeddings else c]]
        return out

    def weight_bytes(self, spec) -> float:
        """Bytes of all weights (norms in f32) under this recipe; with tied embeddings one tensor."""
        d = spec.dim
        total = 0.0
        emb_fmt = self.weights["output"] if spec.tie_embeddings else self.weights["embedding"]
        total += spec.vocab_size * d * FORMAT_BPW[emb_fmt] / 8
        if not spec.tie_embeddings:
            total += spec.vocab_size * d * FORMAT_BPW[self.weights["output"]] / 8
        shapes = {"attn_q": (spec.q_dim, d), "attn_k": (spec.kv_dim, d), "attn_v": (spec.kv_dim, d),
                  "attn_o": (d, spec.q_dim), "ffn_gate": (spec.ffn_dim, d), "ffn_up": (spec.ffn_dim, d),
                  "ffn_down": (d, spec.ffn_dim)}
        for i in range(spec.n_layers):
            for c, (r, k) in shapes.items():
                total += r * k * FORMAT_BPW[self.format_for(c, i)] / 8
            total += 2 * d * 4
        return total + d * 4

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["gptq"], d["awq"] = asdict(self.gptq), asdict(self.awq)
        d["weights"] = dict(self.weights)
        d["layers"] = {str(k): v for k, v in self.layers.items()}
        d["tensors"] = dict(self.tensors)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# preset name -> recipe, built from the one preset table (edge.recipes.PRESETS: the quantization recipe of
# each row). The presets build with our best calibrated algorithm; method "rtn" only when asked (--method rtn).
PRESETS: dict[str, QuantRecipe] = {
    p.name: QuantRecipe(p.name, p.quant, method=p.method, activations=p.quant_activations, kv_cache=p.kv_cache,
                        sim_preset=p.name, note=p.quant_note)
    for p in PRESET_ROWS.values() if p.quant is not None
}

_RECIPE_KEYS = tuple(f.name for f in fields(QuantRecipe))


def load_recipe(name_or_path: str | Path | QuantRecipe, method: str | None = None) -> QuantRecipe:
    """A preset by name, or a YAML/JSON recipe file (``base:`` preset plus overrides).

    ``method`` overrides the algorithm (e.g. "rtn" for the round-to-nearest baseline).
    """
    if isinstance(name_or_path, QuantRecipe):
        r = name_or_path
    elif str(name_or_path) in PRESETS:
        r = PRESETS[str(name_or_path)]
    else:
        r = _from_file(Path(name_or_path))
    if method is not None and method != r.method:
        if method not in METHODS:
            raise ConfigError(f"method '{method}'{did_you_mean(method, METHODS)} is not one of {', '.join(METHODS)}")
        r = replace(r, method=method, name=f"{r.name}_{method.replace('+', '_')}")
    return r


def recipe_from_dict(doc: Mapping, where: str = "recipe") -> QuantRecipe:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(_RECIPE_KEYS)}")
    doc = dict(doc)
    for k in doc:
        if k not in _RECIPE_KEYS:
            raise ConfigError(f"{where}: {k}: unknown key{did_you_mean(k, _RECIPE_KEYS)}; allowed: {', '.join(_RECIPE_KEYS)}")
    base_name = doc.pop("base", None) or None
    if base_name is not None and base_name not in PRESETS:
        raise ConfigError(f"{where}: base: no preset '{base_name}'{did_you_mean(base_name, PRESETS)}; "
                          f"presets: {', '.join(PRESETS)}")
    base = PRESETS[base_name] if base_name else None
    weights = dict(base.weights) if base else {}
    w = dict(doc.pop("weights", None) or {})
    if "linear" in w:
        lin = w.pop("linear")
        weights.update({c: lin for c in LINEAR_CLASSES})
    weights.update(w)
    try:
        sub = {"gptq": GPTQConfig, "awq": AWQConfig}
        for key, cls in sub.items():
            if key in doc and isinstance(doc[key], Mapping):
                allowed = [f.name for f in fields(cls)]
                bad = [k for k in doc[key] if k not in allowed]
                if bad:
                    raise ConfigError(f"{key}.{bad[0]}: unknown key; allowed: {', '.join(allowed)}")
                doc[key] = cls(**doc[key])
        kwargs = {**(asdict_shallow(base) if base else {}), **doc, "weights": weights}
        kwargs.setdefault("name", where)
        kwargs["base"] = base_name or ""
        return QuantRecipe(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def asdict_shallow(r: QuantRecipe) -> dict:
    return {f.name: getattr(r, f.name) for f in fields(r)}


def _from_file(p: Path) -> QuantRecipe:
    if not p.exists():
        raise ConfigError(f"no recipe '{p}'{did_you_mean(str(p), PRESETS)}; presets: {', '.join(PRESETS)} "
                          "(or a .yaml/.json recipe file)")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - both parsers' errors become one line
        raise ConfigError(f"{p}: not valid {p.suffix.lstrip('.') or 'YAML'} ({str(e).splitlines()[0]})") from e
    doc = dict(doc) if isinstance(doc, Mapping) else doc
    if isinstance(doc, dict):
        doc.setdefault("name", p.stem)
    return recipe_from_dict(doc, where=str(p))


def save_recipe(recipe: QuantRecipe, path: str | Path) -> Path:
    """Write a recipe as a file load_recipe reads back (YAML by suffix, else JSON)."""
    path = Path(path)
    d = recipe.to_dict()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(d, sort_keys=True))
    else:
        path.write_text(json.dumps(d, indent=2, sort_keys=True))
    return path
