"""ModelSpec: the architecture of a Llama-family decoder (dense or mixture-of-experts).

One frozen description covers every supported family (Llama, Mistral, Qwen2/3, Qwen2/3-MoE,
Mixtral, Gemma 3 text, Phi-3, SmolLM3): what differs between them is a field (q/k norms, norm
offset, post-norms, activation, sliding window, per-layer RoPE), never a subclass.

Pure Python, no torch: the simulator and the exporters read it, and it can be built from a
Hugging Face ``config.json`` alone, without downloading weights::

    spec = ModelSpec.from_hf_config(json.load(open("config.json")))
    spec.param_count(), spec.active_param_count()
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from edge.errors import ConfigError, ModelLoadError, UnsupportedArchitecture

# Hugging Face `architectures[0]` -> our arch name. One visible table; loaders dispatch on it.
HF_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
    "SmolLM3ForCausalLM": "smollm3",
}

# RoPE frequency scalings we implement ("rope_type" in config.json); "default" means none.
ROPE_TYPES = ("default", "llama3", "linear", "longrope")
# gate activations of the gated MLP: ModelSpec.mlp_act -> Hugging Face "hidden_act" spellings
MLP_ACTS: dict[str, tuple[str, ...]] = {
    "silu": ("silu", "swish"),
    "gelu_tanh": ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new"),
}


@dataclass(frozen=True)
class RopeScaling:
    """Frequency scaling of RoPE, one of ``rope_type``:

    * ``llama3``: Llama-3.1 band-wise scaling (``factor``, ``low_freq_factor``, ``high_freq_factor``,
      ``original_max_position_embeddings``);
    * ``linear``: every frequency divided by ``factor`` (Gemma 3 4B+ global layers);
    * ``longrope``: Phi-3 / Phi-4 LongRoPE: frequency ``i`` divided by ``short_factor[i]``, or by
      ``long_factor[i]`` when the model runs over more than ``original_max_position_embeddings``
      positions (the sequence without a cache, the cache length with one, as llama.cpp picks by
      its context size); cos and sin are multiplied by ``attention_factor``.
    """

    factor: float
    low_freq_factor: float = 0.0
    high_freq_factor: float = 0.0
    original_max_position_embeddings: int = 0
    rope_type: str = "llama3"
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES[1:]:
            raise ConfigError(f"RopeScaling.rope_type {self.rope_type!r} is not implemented; "
                              f"implemented: {', '.join(ROPE_TYPES[1:])}")
        object.__setattr__(self, "short_factor", tuple(float(f) for f in self.short_factor))
        object.__setattr__(self, "long_factor", tuple(float(f) for f in self.long_factor))


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a Llama-family decoder. Every stage reads shapes from here.

    MoE fields are zero for a dense model. ``moe_layers`` lists the layers whose MLP is a
    mixture of experts (empty with n_experts > 0 means every layer).

    Architecture features (defaults are Llama's; ``from_hf_config`` sets them per family):

    * ``qk_norm``: an RMSNorm over ``head_dim`` on every query and key head, after the projection
      and before RoPE (Qwen3, Qwen3-MoE, Gemma 3); weights ``self_attn.q_norm`` / ``k_norm`` (head_dim,).
    * ``norm_offset``: every RMSNorm (q/k norms included) scales by ``norm_offset + weight``:
      1.0 for Gemma, whose stored norm weights are centred on 0.
    * ``post_norms``: Gemma's four norms per layer: ``input_layernorm`` before attention,
      ``post_attention_layernorm`` on the attention output before its residual add,
      ``pre_feedforward_layernorm`` before the MLP, ``post_feedforward_layernorm`` on its output.
      Without it ``post_attention_layernorm`` is the norm before the MLP (Llama's two norms).
    * ``mlp_act``: the gate activation of the gated MLP (experts included): ``silu`` (SwiGLU) or
      ``gelu_tanh`` (GeGLU with the tanh-approximate GELU, Gemma).
    * ``embed_scale``: token embeddings are multiplied by it (Gemma: sqrt(dim), rounded to the
      weights' dtype as transformers does).
    * ``attn_scale``: the softmax scale of q.k; 0 means 1/sqrt(head_dim) (Gemma:
      ``query_pre_attn_scalar ** -0.5``).
    * ``final_logit_softcap``: logits become ``c * tanh(logits / c)`` when c > 0 (0: off).
    * ``sliding_window``: a sliding layer's query at position p attends to positions
      ``p - sliding_window < j <= p`` (the last ``sliding_window`` positions, itself included),
      and its KV cache needs only that many; 0 means no sliding window.
    * ``sliding_layers``: the layers that use the window; empty with ``sliding_window > 0`` means
      every layer (Mistral, Phi-3). Gemma 3: five of every six.
    * ``rope_local_theta``: RoPE base of the sliding layers, which then take no frequency
      scaling (Gemma 3's local layers: 10000 against 1e6 globally); 0 means the sliding layers use
      ``rope_theta`` and ``rope_scaling`` like the others.
    * ``rope_dim``: how many leading dimensions of each head RoPE rotates, the rest pass through
      (Phi-3: ``head_dim * partial_rotary_factor``); 0 means ``head_dim``.
    * ``nope_layers``: layers that apply no RoPE at all (SmolLM3: every 4th layer).
    """

    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    head_dim: int = 0  # 0 -> dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    qkv_bias: bool = False
    # mixture of experts
    n_experts: int = 0
    n_experts_per_tok: int = 0
    moe_ffn_dim: int = 0
    norm_topk_prob: bool = True
    shared_expert_ffn_dim: int = 0
    shared_expert_gate: bool = False
    moe_layers: tuple[int, ...] = ()
    # architecture features (see the class docstring)
    qk_norm: bool = False
    norm_offset: float = 0.0
    post_norms: bool = False
    mlp_act: str = "silu"
    embed_scale: float = 1.0
    attn_scale: float = 0.0
    final_logit_softcap: float = 0.0
    sliding_window: int = 0
    sliding_layers: tuple[int, ...] = ()
    rope_local_theta: float = 0.0
    rope_dim: int = 0
    nope_layers: tuple[int, ...] = ()
    name: str = ""
    # what pruning removed, recorded so the simulator, exporters and manifest see it
    pruning: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.dim // max(self.n_heads, 1))
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "max_seq_len"):
            if getattr(self, f) <= 0:
                raise ConfigError(f"ModelSpec.{f} must be positive, got {getattr(self, f)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"ModelSpec: n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.n_experts:
            if not 0 < self.n_experts_per_tok <= self.n_experts:
                raise ConfigError(
                    f"ModelSpec: n_experts_per_tok must be in 1..{self.n_experts}, got {self.n_experts_per_tok}"
                )
            if self.moe_ffn_dim <= 0:
                raise ConfigError("ModelSpec: an MoE model needs moe_ffn_dim > 0")
            if not self.moe_layers:
                object.__setattr__(self, "moe_layers", tuple(range(self.n_layers)))
        elif self.moe_layers:
            raise ConfigError("ModelSpec: moe_layers given but n_experts is 0")
        if self.mlp_act not in MLP_ACTS:
            raise ConfigError(f"ModelSpec.mlp_act {self.mlp_act!r} is not supported; supported: {', '.join(MLP_ACTS)}")
        if self.rope_dim == 0:
            object.__setattr__(self, "rope_dim", self.head_dim)
        if not (0 < self.rope_dim <= self.head_dim and self.rope_dim % 2 == 0):
            raise ConfigError(f"ModelSpec.rope_dim must be even and in 2..head_dim ({self.head_dim}), got {self.rope_dim}")
        if self.sliding_window < 0:
            raise ConfigError(f"ModelSpec.sliding_window must be >= 0 (0: none), got {self.sliding_window}")
        if self.sliding_window and not self.sliding_layers:
            object.__setattr__(self, "sliding_layers", tuple(range(self.n_layers)))
        elif self.sliding_layers and not self.sliding_window:
            raise ConfigError("ModelSpec: sliding_layers given but sliding_window is 0")
        for f in ("moe_layers", "sliding_layers", "nope_layers"):
            bad = [i for i in getattr(self, f) if not 0 <= i < self.n_layers]
            if bad:
                raise ConfigError(f"ModelSpec.{f}: layers {bad} outside 0..{self.n_layers - 1}")
            object.__setattr__(self, f, tuple(sorted(set(getattr(self, f)))))

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def is_moe_layer(self, layer: int) -> bool:
        return self.n_experts > 0 and layer in self.moe_layers

    def is_sliding_layer(self, layer: int) -> bool:
        return self.sliding_window > 0 and layer in self.sliding_layers

    def rope_kind(self, layer: int) -> str:
        """Which RoPE table a layer uses: "global", "local" (sliding layers with their own base) or "none"."""
        if layer in self.nope_layers:
            return "none"
        if self.rope_local_theta and self.is_sliding_layer(layer):
            return "local"
        return "global"

    def kv_positions(self, layer: int, context: int) -> int:
        """Positions a layer's KV cache holds at ``context``: a sliding layer keeps only its window."""
        return min(context, self.sliding_window) if self.is_sliding_layer(layer) else context

    def features(self) -> list[str]:
        """What sets this architecture apart from plain Llama, one phrase per feature (for people)."""
        out = []
        if self.qkv_bias:
            out.append("q/k/v bias")
        if self.qk_norm:
            out.append("q/k norm")
        if self.norm_offset:
            out.append(f"({self.norm_offset:g} + w) norms")
        if self.post_norms:
            out.append("post-norms")
        if self.mlp_act != "silu":
            out.append(f"{self.mlp_act} gated MLP")
        if self.embed_scale != 1.0:
            out.append(f"embeddings x {self.embed_scale:.4g}")
        if self.attn_scale:
            out.append(f"attention scale {self.attn_scale:.4g}")
        if self.final_logit_softcap:
            out.append(f"logit softcap {self.final_logit_softcap:g}")
        if self.sliding_window:
            out.append(f"sliding window {self.sliding_window} on {len(self.sliding_layers)}/{self.n_layers} layers")
        if self.rope_local_theta:
            out.append(f"sliding layers' RoPE base {self.rope_local_theta:g}")
        if self.rope_dim != self.head_dim:
            out.append(f"RoPE on {self.rope_dim}/{self.head_dim} dims")
        if self.rope_scaling is not None:
            out.append(f"{self.rope_scaling.rope_type} RoPE scaling x{self.rope_scaling.factor:g}")
        if self.nope_layers:
            out.append(f"no RoPE on {len(self.nope_layers)}/{self.n_layers} layers")
        return out

    @property
    def norms_per_layer(self) -> int:
        """Full-width (dim) RMSNorms in one layer: 2, or 4 with Gemma's post-norms."""
        return 4 if self.post_norms else 2

    def attention_params(self) -> int:
        d, q, kv = self.dim, self.q_dim, self.kv_dim
        p = d * q + 2 * d * kv + q * d
        if self.qkv_bias:
            p += q + 2 * kv
        return p

    def mlp_params(self, ffn: int) -> int:
        return 3 * self.dim * ffn

    def layer_params(self, layer: int, active_only: bool = False) -> dict[str, int]:
        """Parameters of one layer by tensor class: attn, mlp, experts, router, shared, norm."""
        out = {"attn": self.attention_params(),
               "norm": self.norms_per_layer * self.dim + (2 * self.head_dim if self.qk_norm else 0)}
        if self.is_moe_layer(layer):
            n = self.n_experts_per_tok if active_only else self.n_experts
            out["experts"] = n * self.mlp_params(self.moe_ffn_dim)
            out["router"] = self.dim * self.n_experts
            if self.shared_expert_ffn_dim:
                out["shared"] = self.mlp_params(self.shared_expert_ffn_dim) + (
                    self.dim if self.shared_expert_gate else 0
                )
        else:
            out["mlp"] = self.mlp_params(self.ffn_dim)
        return out

    def param_breakdown(self, active_only: bool = False) -> dict[str, int]:
        """Parameters by tensor class over the whole model (embedding, head, attn, mlp, ...)."""
        out: dict[str, int] = {"embedding": self.vocab_size * self.dim}
        out["output"] = 0 if self.tie_embeddings else self.vocab_size * self.dim
        out["final_norm"] = self.dim
        for i in range(self.n_layers):
            for k, v in self.layer_params(i, active_only).items():
                out[k] = out.get(k, 0) + v
        return out

    def param_count(self) -> int:
        return sum(self.param_breakdown().values())

    def active_param_count(self) -> int:
        """Parameters touched per token (top-k experts only; the embedding row lookup counts 0)."""
        b = self.param_breakdown(active_only=True)
        b["embedding"] = 0 if not self.tie_embeddings else b["embedding"]
        return sum(b.values())

    def kv_cache_bytes(self, context: int, bytes_per_elem: float = 2.0, batch: int = 1) -> float:
        """K and V of every layer at ``context`` positions; a sliding layer holds its window only."""
        positions = sum(self.kv_positions(i, context) for i in range(self.n_layers))
        return 2 * self.kv_dim * positions * batch * bytes_per_elem

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        for f in ("moe_layers", "sliding_layers", "nope_layers"):
            d[f] = list(getattr(self, f))
        if self.rope_scaling is not None:
            for f in ("short_factor", "long_factor"):
                d["rope_scaling"][f] = list(d["rope_scaling"][f])
        d["pruning"] = [list(p) for p in self.pruning]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"ModelSpec: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if d.get("rope_scaling"):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        for f in ("moe_layers", "sliding_layers", "nope_layers"):
            d[f] = tuple(d.get(f, ()))
        d["pruning"] = tuple(tuple(p) for p in d.get("pruning", ()))
        return cls(**d)

    def with_(self, **changes) -> ModelSpec:
        return replace(self, **changes)

    @classmethod
    def from_hf_config(cls, cfg: dict, name: str = "") -> ModelSpec:
        """Build a spec from a Hugging Face ``config.json`` dict (no weights needed).

        Reads both the published configs (``rope_theta``, ``rope_scaling``, ``rope_local_base_freq``,
        ``sliding_window_pattern``) and those transformers 5 writes (``rope_parameters``, per layer
        type for Gemma 3, and ``layer_types``)."""
        archs = cfg.get("architectures") or []
        hf_arch = archs[0] if archs else None
        if hf_arch not in HF_ARCHITECTURES:
            raise UnsupportedArchitecture(
                f"config.json: architecture {hf_arch!r} is not supported; supported: "
                f"{', '.join(HF_ARCHITECTURES)}"
            )
        arch = HF_ARCHITECTURES[hf_arch]
        try:
            return cls(**hf_config_fields(cfg, arch, hf_arch), name=name or cfg.get("_name_or_path", ""))
        except KeyError as e:
            raise ModelLoadError(f"config.json: missing key {e.args[0]!r} required for {hf_arch}") from e

    @classmethod
    def from_config_file(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        try:
            cfg = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ModelLoadError(f"{path}: no such file") from e
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
        return cls.from_hf_config(cfg, name=path.parent.name)


# Defaults of transformers' config classes for keys a config.json may leave out, per arch.
HF_DEFAULTS: dict[str, dict] = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "mistral": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "mixtral": {"rms_norm_eps": 1e-5, "rope_theta": 1e6, "tie_word_embeddings": False},
    "qwen2_moe": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "qwen3": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "head_dim": 128},
    "qwen3_moe": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "gemma3": {"rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_local_base_freq": 10000.0,
               "tie_word_embeddings": True, "head_dim": 256, "query_pre_attn_scalar": 256,
               "sliding_window": 4096, "sliding_window_pattern": 6, "hidden_activation": "gelu_pytorch_tanh"},
    "phi3": {"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False},
    "smollm3": {"rms_norm_eps": 1e-6, "rope_theta": 2e6, "tie_word_embeddings": True, "no_rope_layer_interval": 4},
}
# archs whose modeling code reads attention_bias / mlp_bias (Mistral, Phi-3, Mixtral have no biases;
# Qwen2's q/k/v bias is built in)
BIAS_SWITCHED = ("llama", "qwen3", "qwen3_moe", "gemma3", "smollm3")
# archs whose sliding window is on only with "use_sliding_window": true
SLIDING_WINDOW_SWITCHED = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "smollm3")
# archs whose modeling code reads "layer_types" for the sliding layers (the others slide every layer)
SLIDING_BY_LAYER_TYPES = ("qwen2", "qwen3", "gemma3", "smollm3")


def rope_dicts(cfg: dict, arch: str) -> tuple[dict, dict | None]:
    """(RoPE parameters of the global layers, of Gemma 3's sliding layers or None), each with
    ``rope_type`` and ``rope_theta``, from either config spelling."""
    d = HF_DEFAULTS[arch]
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and ("full_attention" in rp or "sliding_attention" in rp):
        glob, loc = dict(rp.get("full_attention") or {}), dict(rp.get("sliding_attention") or {})
    else:
        glob, loc = dict(cfg.get("rope_scaling") or rp or {}), {}
    glob.setdefault("rope_theta", cfg.get("rope_theta") or d["rope_theta"])
    glob["rope_type"] = glob.get("rope_type") or glob.get("type") or "default"
    if arch != "gemma3":
        return glob, None
    loc.setdefault("rope_theta", cfg.get("rope_local_base_freq") or d["rope_local_base_freq"])
    loc["rope_type"] = loc.get("rope_type") or loc.get("type") or "default"
    return glob, loc


def rope_scaling_of(p: dict, cfg: dict, arch: str, rope_dim: int) -> RopeScaling | None:
    """The RopeScaling of one RoPE parameter dict; an unimplemented type is named."""
    kind = p["rope_type"]
    if arch == "phi3" and kind == "su":  # Phi-3's first releases' name for LongRoPE
        kind = "longrope"
    if kind == "default":
        return None
    if kind not in ROPE_TYPES:
        raise UnsupportedArchitecture(
            f"config.json: rope scaling {kind!r} is not implemented; implemented: {', '.join(ROPE_TYPES)}")
    if kind == "llama3":
        return RopeScaling(
            factor=float(p["factor"]), low_freq_factor=float(p["low_freq_factor"]),
            high_freq_factor=float(p["high_freq_factor"]),
            original_max_position_embeddings=int(p["original_max_position_embeddings"]))
    if kind == "linear":
        return RopeScaling(factor=float(p["factor"]), rope_type="linear")
    # longrope: transformers prefers the top-level original_max_position_embeddings (Phi-3 keeps it there)
    orig = int(cfg.get("original_max_position_embeddings") or p["original_max_position_embeddings"])
    factor = float(p.get("factor") or cfg["max_position_embeddings"] / orig)
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
    short, long = tuple(p["short_factor"]), tuple(p["long_factor"])
    for label, f in (("short_factor", short), ("long_factor", long)):
        if len(f) != rope_dim // 2:
            raise ConfigError(f"config.json: rope_scaling.{label} has {len(f)} entries; LongRoPE needs one per "
                              f"rotated frequency, rope_dim / 2 = {rope_dim // 2}")
    return RopeScaling(factor=factor, original_max_position_embeddings=orig, rope_type="longrope",
                       short_factor=short, long_factor=long, attention_factor=float(attention_factor))


def hf_config_fields(cfg: dict, arch: str, hf_arch: str) -> dict:
    """ModelSpec fields (all but ``name``) from a config.json dict of a supported architecture."""
    d = HF_DEFAULTS[arch]

    def get(key: str):
        v = cfg.get(key)
        return d[key] if v is None else v

    n_layers, n_heads, dim = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or d.get("head_dim") or dim // n_heads
    if arch in BIAS_SWITCHED and (cfg.get("mlp_bias") or cfg.get("attention_bias")):
        # attention_bias also puts a bias on o_proj, which our decoder lacks
        raise UnsupportedArchitecture(
            f"config.json: {hf_arch} with attention_bias or mlp_bias is not supported; "
            "supported: no biases, or Qwen2's q/k/v bias")
    act_name = (cfg.get("hidden_activation") or get("hidden_activation")) if arch == "gemma3" else (
        cfg.get("hidden_act") or "silu")
    mlp_act = next((k for k, names in MLP_ACTS.items() if act_name in names), None)
    if mlp_act is None:
        known = ", ".join(n for names in MLP_ACTS.values() for n in names)
        raise UnsupportedArchitecture(f"config.json: hidden activation {act_name!r} is not supported; supported: {known}")

    glob, loc = rope_dicts(cfg, arch)
    partial = glob.get("partial_rotary_factor", cfg.get("partial_rotary_factor")) or 1.0
    rope_dim = int(head_dim * float(partial))
    max_pos = int(cfg.get("max_position_embeddings", 2048))
    kw: dict = dict(
        arch=arch, vocab_size=cfg["vocab_size"], dim=dim, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads, ffn_dim=cfg.get("intermediate_size") or 0,
        head_dim=head_dim, norm_eps=float(get("rms_norm_eps")), rope_theta=float(glob["rope_theta"]),
        rope_scaling=rope_scaling_of(glob, cfg, arch, rope_dim), max_seq_len=max_pos,
        tie_embeddings=bool(get("tie_word_embeddings")),
        # Qwen2 always has q/k/v bias; Qwen2-MoE has it unless "qkv_bias": false
        qkv_bias=arch == "qwen2" or (arch == "qwen2_moe" and bool(cfg.get("qkv_bias", True))),
        mlp_act=mlp_act, rope_dim=rope_dim, qk_norm=arch in ("qwen3", "qwen3_moe", "gemma3"),
    )

    # RoPE skipped on some layers (SmolLM3: no_rope_layers[i] == 0, by default every 4th layer)
    if arch == "smollm3":
        flags = cfg.get("no_rope_layers")
        if flags is None:
            every = int(get("no_rope_layer_interval"))
            flags = [int((i + 1) % every != 0) for i in range(n_layers)]
        if len(flags) != n_layers:
            raise ConfigError(f"config.json: no_rope_layers has {len(flags)} entries for {n_layers} layers")
        kw["nope_layers"] = tuple(i for i, use_rope in enumerate(flags) if not use_rope)

    # sliding window: which layers, and only when it is shorter than the context
    window = int(get("sliding_window") or 0) if arch == "gemma3" else int(cfg.get("sliding_window") or 0)
    if arch in SLIDING_WINDOW_SWITCHED and not cfg.get("use_sliding_window", False):
        window = 0
    if window and cfg.get("use_bidirectional_attention"):
        raise UnsupportedArchitecture("config.json: use_bidirectional_attention is not supported; "
                                      "supported: causal attention")
    sliding: tuple[int, ...] = ()
    if window:
        types = cfg.get("layer_types")
        if arch in SLIDING_BY_LAYER_TYPES and types:
            if len(types) != n_layers:
                raise ConfigError(f"config.json: layer_types has {len(types)} entries for {n_layers} layers")
            sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
        elif arch == "gemma3":
            every = int(get("sliding_window_pattern"))
            sliding = tuple(i for i in range(n_layers) if (i + 1) % every)
        elif arch in ("qwen2", "qwen3"):
            sliding = tuple(i for i in range(n_layers) if i >= int(cfg.get("max_window_layers", 28)))
        elif arch == "smollm3":
            sliding = kw["nope_layers"]
        else:
            sliding = tuple(range(n_layers))
    if sliding and window < max_pos:  # a window as long as the context never slides (Phi-4-mini: 262144)
        kw.update(sliding_window=window, sliding_layers=sliding)

    if arch == "gemma3":
        if cfg.get("attn_logit_softcapping") is not None:
            raise UnsupportedArchitecture(
                "config.json: attn_logit_softcapping is not supported for Gemma3ForCausalLM (Gemma 3 releases set "
                "it to null, and transformers' Gemma 3 attention does not apply it); set it to null")
        if loc["rope_type"] != "default":
            raise UnsupportedArchitecture(
                f"config.json: rope scaling {loc['rope_type']!r} on Gemma 3's sliding layers is not implemented; "
                "implemented there: default")
        kw.update(
            norm_offset=1.0, post_norms=True, embed_scale=dim**0.5,
            attn_scale=float(get("query_pre_attn_scalar")) ** -0.5,
            final_logit_softcap=float(cfg.get("final_logit_softcapping") or 0.0),
        )
        if kw.get("sliding_window"):
            kw["rope_local_theta"] = float(loc["rope_theta"])
    if arch == "mixtral":
        kw.update(n_experts=cfg["num_local_experts"], n_experts_per_tok=cfg["num_experts_per_tok"],
                  moe_ffn_dim=cfg["intermediate_size"], norm_topk_prob=True)
    elif arch in ("qwen2_moe", "qwen3_moe"):
        step = cfg.get("decoder_sparse_step", 1) or 1
        dense = set(cfg.get("mlp_only_layers") or [])
        # the published configs say num_experts; transformers 5 writes num_local_experts
        n_exp = cfg["num_experts"] if "num_experts" in cfg else cfg["num_local_experts"]
        shared = (cfg.get("shared_expert_intermediate_size") or 0) if arch == "qwen2_moe" else 0
        kw.update(
            n_experts=n_exp, n_experts_per_tok=cfg["num_experts_per_tok"], moe_ffn_dim=cfg["moe_intermediate_size"],
            norm_topk_prob=bool(cfg.get("norm_topk_prob", False)), shared_expert_ffn_dim=shared,
            shared_expert_gate=bool(shared),
            moe_layers=tuple(i for i in range(n_layers) if i not in dense and n_exp > 0 and (i + 1) % step == 0),
        )
    return kw


def parse_nm(pattern: str) -> tuple[int, int]:
    """'2:4' -> (2, 4): an N:M semi-structured sparsity pattern, N kept of every M consecutive weights,
    0 < N < M. A pruned model records it (``pruning``: ("sparsity", "2:4")), a recipe may ask for it and a
    target's unit lists the patterns it runs (``units.*.sparsity``)."""
    m = re.match(r"^\s*(\d+)\s*:\s*(\d+)\s*$", str(pattern))
    if not m or not 0 < int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"sparsity pattern {pattern!r} is not N:M with 0 < N < M (e.g. \"2:4\")")
    return int(m.group(1)), int(m.group(2))
