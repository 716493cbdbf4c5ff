"""ModelSpec: the architecture numbers of a Llama-family decoder (dense or mixture-of-experts).

Pure Python, no torch: the simulator and the exporters read it, and it can be built from a
Hugging Face ``config.json`` alone, without downloading weights::

    spec = ModelSpec.from_hf_config(json.load(open("config.json")))
    spec.param_count(), spec.active_param_count()
"""

from __future__ import annotations

import json
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
}


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency scaling of RoPE ("rope_type": "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a Llama-family decoder. Every stage reads shapes from here.

    MoE fields are zero for a dense model. ``moe_layers`` lists the layers whose MLP is a
    mixture of experts (empty with n_experts > 0 means every layer).
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
        out = {"attn": self.attention_params(), "norm": 2 * self.dim}
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
        return 2 * self.n_layers * self.kv_dim * context * batch * bytes_per_elem

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["moe_layers"] = list(self.moe_layers)
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
        d["moe_layers"] = tuple(d.get("moe_layers", ()))
        d["pruning"] = tuple(tuple(p) for p in d.get("pruning", ()))
        return cls(**d)

    def with_(self, **changes) -> ModelSpec:
        return replace(self, **changes)

    @classmethod
    def from_hf_config(cls, cfg: dict, name: str = "") -> ModelSpec:
        """Build a spec from a Hugging Face ``config.json`` dict (no weights needed)."""
        archs = cfg.get("architectures") or []
        hf_arch = archs[0] if archs else None
        if hf_arch not in HF_ARCHITECTURES:
            raise UnsupportedArchitecture(
                f"config.json: architecture {hf_arch!r} is not supported; supported: "
                f"{', '.join(HF_ARCHITECTURES)}"
            )
        arch = HF_ARCHITECTURES[hf_arch]
        try:
            n_heads = cfg["num_attention_heads"]
            rs = cfg.get("rope_scaling") or cfg.get("rope_parameters")
            rope_theta = cfg.get("rope_theta") or (rs or {}).get("rope_theta") or 10000.0
            scaling = None
            if rs and (rs.get("rope_type") or rs.get("type")) == "llama3":
                scaling = RopeScaling(
                    factor=float(rs["factor"]),
                    low_freq_factor=float(rs["low_freq_factor"]),
                    high_freq_factor=float(rs["high_freq_factor"]),
                    original_max_position_embeddings=int(rs["original_max_position_embeddings"]),
                )
            elif rs and (rs.get("rope_type") or rs.get("type")) not in (None, "default"):
                raise UnsupportedArchitecture(
                    f"config.json: rope scaling {rs.get('rope_type') or rs.get('type')!r} is not "
                    "supported; supported: default, llama3"
                )
            if arch == "llama" and (cfg.get("attention_bias") or cfg.get("mlp_bias")):
                # Llama's attention_bias also puts a bias on o_proj, which our decoder lacks
                raise UnsupportedArchitecture(
                    "config.json: LlamaForCausalLM with attention_bias or mlp_bias is not supported; "
                    "supported: Llama without biases, Qwen2 (q/k/v bias)"
                )
            kw: dict = dict(
                arch=arch,
                vocab_size=cfg["vocab_size"],
                dim=cfg["hidden_size"],
                n_layers=cfg["num_hidden_layers"],
                n_heads=n_heads,
                n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
                ffn_dim=cfg.get("intermediate_size") or 0,
                head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_heads,
                norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                rope_theta=float(rope_theta),
                rope_scaling=scaling,
                max_seq_len=int(cfg.get("max_position_embeddings", 2048)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                # Qwen2 always has q/k/v bias; Qwen2-MoE has it unless "qkv_bias": false
                qkv_bias=arch == "qwen2" or (arch == "qwen2_moe" and bool(cfg.get("qkv_bias", True))),
                name=name or cfg.get("_name_or_path", ""),
            )
            if arch == "mixtral":
                kw.update(
                    n_experts=cfg["num_local_experts"],
                    n_experts_per_tok=cfg["num_experts_per_tok"],
                    moe_ffn_dim=cfg["intermediate_size"],
                    norm_topk_prob=True,
                )
            elif arch == "qwen2_moe":
                n_layers = cfg["num_hidden_layers"]
                step = cfg.get("decoder_sparse_step", 1) or 1
                dense = set(cfg.get("mlp_only_layers") or [])
                n_exp = cfg["num_experts"]
                moe_layers = tuple(
                    i for i in range(n_layers) if i not in dense and n_exp > 0 and (i + 1) % step == 0
                )
                kw.update(
                    n_experts=n_exp,
                    n_experts_per_tok=cfg["num_experts_per_tok"],
                    moe_ffn_dim=cfg["moe_intermediate_size"],
                    norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
                    shared_expert_ffn_dim=cfg.get("shared_expert_intermediate_size", 0) or 0,
                    shared_expert_gate=bool(cfg.get("shared_expert_intermediate_size", 0)),
                    moe_layers=moe_layers,
                )
        except KeyError as e:
            raise ModelLoadError(f"config.json: missing key {e.args[0]!r} required for {hf_arch}") from e
        return cls(**kw)

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
