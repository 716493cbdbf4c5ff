"""Save our Transformer as a Hugging Face checkpoint directory that ``load_model`` (and transformers)
reads back: ``config.json`` + ``model.safetensors`` + ``tokenizer.json``/``tokenizer_config.json``,
plus ``edge_spec.json`` carrying the full ModelSpec (with its pruning metadata).

The directory is written to a temporary sibling and renamed into place, so a failure leaves
nothing half-written::

    lm = load_model("smollm2-135m")
    save_model(lm.model, lm.spec, lm.tokenizer, "out/smollm2")   # then load_model("out/smollm2")

Tensor names are the ones ``edge.model.hf`` reads: ``model.`` + our name, Mixtral experts as
``block_sparse_moe.experts.E.w1/w2/w3`` (one tensor per expert, as the published checkpoints).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from edge.errors import ConfigError
from edge.model.spec import ModelSpec

# our arch -> (HF architectures[0], model_type). One visible table; the inverse of spec.HF_ARCHITECTURES.
HF_ARCH_NAMES: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "mixtral": ("MixtralForCausalLM", "mixtral"),
    "qwen2_moe": ("Qwen2MoeForCausalLM", "qwen2_moe"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "qwen3_moe"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "smollm3": ("SmolLM3ForCausalLM", "smollm3"),
}
# our gate activation -> config.json's spelling
HF_ACT_NAMES = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}
# Phi-3 stores these projections fused (rows in this order); save_model fuses them back
FUSE_ON_SAVE: dict[str, dict[str, tuple[str, ...]]] = {
    "phi3": {"self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                           "self_attn.v_proj.weight"),
             "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight")},
}

# our name -> checkpoint name, per arch: re.sub rules applied in order (inverse of hf.HF_TENSOR_RENAMES).
SAVE_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "mixtral": (
        (r"\.mlp\.gate\.", ".block_sparse_moe.gate."),
        (r"\.mlp\.experts\.(\d+)\.gate_proj\.", r".block_sparse_moe.experts.\1.w1."),
        (r"\.mlp\.experts\.(\d+)\.up_proj\.", r".block_sparse_moe.experts.\1.w3."),
        (r"\.mlp\.experts\.(\d+)\.down_proj\.", r".block_sparse_moe.experts.\1.w2."),
    ),
}

EDGE_SPEC_FILE = "edge_spec.json"


def hf_config(spec: ModelSpec, bos_id: int | None = None, eos_id: int | None = None) -> dict:
    """The ``config.json`` dict that ``ModelSpec.from_hf_config`` (and transformers) read back as ``spec``."""
    if spec.arch not in HF_ARCH_NAMES:
        raise ConfigError(
            f"cannot save arch {spec.arch!r} as a checkpoint; supported: {', '.join(HF_ARCH_NAMES)}"
        )
    hf_arch, model_type = HF_ARCH_NAMES[spec.arch]
    cfg: dict = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.dim,
        "intermediate_size": spec.ffn_dim,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": HF_ACT_NAMES[spec.mlp_act],
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "max_position_embeddings": spec.max_seq_len,
        "tie_word_embeddings": spec.tie_embeddings,
        "torch_dtype": "float32",
        # null, not the config class's default (Phi-3: 32000, SmolLM3: 128004), which may lie past a
        # small vocabulary; inference never reads it
        "pad_token_id": None,
        "_name_or_path": spec.name,
    }
    if bos_id is not None:
        cfg["bos_token_id"] = bos_id
    if eos_id is not None:
        cfg["eos_token_id"] = eos_id
    rs = spec.rope_scaling
    if rs is not None and rs.rope_type == "llama3":
        cfg["rope_scaling"] = {
            "rope_type": "llama3", "rope_theta": spec.rope_theta, "factor": rs.factor,
            "low_freq_factor": rs.low_freq_factor, "high_freq_factor": rs.high_freq_factor,
            "original_max_position_embeddings": rs.original_max_position_embeddings,
        }  # fmt: skip
    elif rs is not None and rs.rope_type == "linear":
        cfg["rope_scaling"] = {"rope_type": "linear", "factor": rs.factor}
    elif rs is not None:  # longrope (Phi-3 keeps original_max_position_embeddings at the top level)
        cfg["rope_scaling"] = {"rope_type": "longrope", "short_factor": list(rs.short_factor),
                               "long_factor": list(rs.long_factor), "attention_factor": rs.attention_factor,
                               "rope_theta": spec.rope_theta, "partial_rotary_factor": spec.rope_dim / spec.head_dim}
        cfg["original_max_position_embeddings"] = rs.original_max_position_embeddings
    if spec.arch == "phi3" and spec.head_dim * spec.n_heads != spec.dim:
        raise ConfigError(
            f"cannot save a phi3 checkpoint with head_dim {spec.head_dim} and {spec.n_heads} heads: transformers' "
            f"Phi-3 derives head_dim as hidden_size / num_attention_heads ({spec.dim // spec.n_heads}); prune "
            "Phi-3 by MLP channels or layers (kind 'mlp' or 'depth'), not heads")
    if spec.rope_dim != spec.head_dim:
        if spec.arch != "phi3":
            raise ConfigError(f"cannot save a partial rotary dimension ({spec.rope_dim} of {spec.head_dim}) "
                              f"for arch {spec.arch!r}; supported: phi3")
        cfg["partial_rotary_factor"] = spec.rope_dim / spec.head_dim
    window = spec.sliding_window or None
    layer_types = ["sliding_attention" if spec.is_sliding_layer(i) else "full_attention" for i in range(spec.n_layers)]
    every_layer = window is not None and len(spec.sliding_layers) == spec.n_layers
    if spec.arch in ("mistral", "phi3", "mixtral", "qwen2_moe", "qwen3_moe", "llama") and window and not every_layer:
        raise ConfigError(f"cannot save a sliding window on some layers only for arch {spec.arch!r}; "
                          "its config slides every layer or none")
    if spec.arch == "llama":
        if window:
            raise ConfigError("cannot save a sliding window for arch 'llama'; supported: mistral, phi3, qwen3, gemma3")
        cfg.update(attention_bias=False, mlp_bias=False)
    if spec.arch in ("mistral", "phi3"):
        cfg["sliding_window"] = window
    if spec.arch == "qwen2":  # its q/k/v bias is built in: no attention_bias key
        cfg.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=spec.n_layers,
                   layer_types=layer_types)
    if spec.arch in ("qwen3", "qwen3_moe", "smollm3"):
        cfg.update(attention_bias=False, use_sliding_window=window is not None, sliding_window=window,
                   max_window_layers=spec.n_layers, layer_types=layer_types)
    if spec.arch == "smollm3":
        cfg.update(mlp_bias=False, no_rope_layers=[int(i not in spec.nope_layers) for i in range(spec.n_layers)])
        if window and tuple(spec.sliding_layers) != tuple(spec.nope_layers):
            raise ConfigError("smollm3 checkpoints slide exactly the NoPE layers; this spec slides others")
    elif spec.nope_layers:
        raise ConfigError(f"cannot save NoPE layers for arch {spec.arch!r}; supported: smollm3")
    if spec.arch == "gemma3":
        if abs(spec.embed_scale - spec.dim**0.5) > 1e-6 * spec.embed_scale:
            raise ConfigError(f"gemma3 checkpoints scale embeddings by sqrt(hidden_size); spec has {spec.embed_scale}")
        del cfg["hidden_act"]
        scalar = spec.attn_scale**-2  # transformers' config takes an int (256 in the releases)
        scalar = round(scalar) if abs(scalar - round(scalar)) < 1e-6 * scalar else scalar
        cfg.update(hidden_activation=HF_ACT_NAMES[spec.mlp_act], query_pre_attn_scalar=scalar,
                   sliding_window=window or spec.max_seq_len, layer_types=layer_types,
                   rope_local_base_freq=spec.rope_local_theta or spec.rope_theta,
                   final_logit_softcapping=spec.final_logit_softcap or None, attn_logit_softcapping=None,
                   attention_bias=False)
    if spec.arch == "mixtral":
        cfg.update(
            intermediate_size=spec.moe_ffn_dim, num_local_experts=spec.n_experts,
            num_experts_per_tok=spec.n_experts_per_tok, sliding_window=window,
        )  # fmt: skip
    if spec.arch == "qwen3_moe":
        cfg.update(
            num_experts=spec.n_experts, num_experts_per_tok=spec.n_experts_per_tok,
            moe_intermediate_size=spec.moe_ffn_dim, norm_topk_prob=spec.norm_topk_prob, decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(spec.n_layers) if i not in spec.moe_layers],
        )  # fmt: skip
    if spec.arch == "qwen2_moe":
        cfg.update(
            num_experts=spec.n_experts, num_experts_per_tok=spec.n_experts_per_tok,
            moe_intermediate_size=spec.moe_ffn_dim, norm_topk_prob=spec.norm_topk_prob,
            shared_expert_intermediate_size=spec.shared_expert_ffn_dim, decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(spec.n_layers) if i not in spec.moe_layers],
            qkv_bias=spec.qkv_bias, use_sliding_window=window is not None, sliding_window=window,
        )  # fmt: skip
        if spec.shared_expert_ffn_dim and not spec.shared_expert_gate:
            raise ConfigError(
                "qwen2_moe checkpoints always gate their shared expert; spec has shared_expert_gate=False"
            )
    return cfg


def fused_state(spec: ModelSpec, state: dict) -> dict:
    """``state`` with the projections the arch stores fused (Phi-3) concatenated row-wise."""
    import torch

    fuse = FUSE_ON_SAVE.get(spec.arch)
    if not fuse:
        return state
    out = dict(state)
    for i in range(spec.n_layers):
        for fused, parts in fuse.items():
            names = [f"layers.{i}.{p}" for p in parts]
            out[f"layers.{i}.{fused}"] = torch.cat([out.pop(n) for n in names], 0)
    return out


def checkpoint_name(arch: str, name: str) -> str:
    if name == "lm_head.weight":
        return name
    for pattern, repl in SAVE_RENAMES.get(arch, ()):
        name = re.sub(pattern, repl, name)
    return "model." + name


def save_tokenizer(tokenizer, path: Path) -> None:
    """``tokenizer.json`` + ``tokenizer_config.json`` that ``Tokenizer.from_hf_dir`` reads back identically."""
    if tokenizer.kind != "tokenizers":
        raise ConfigError(
            f"cannot save a {tokenizer.kind!r}-backed tokenizer as tokenizer.json; supported: 'tokenizers' "
            "(BPE GGUF vocabularies and Hugging Face tokenizer.json)"
        )
    tokenizer.backend.save(str(path / "tokenizer.json"))
    cfg: dict = {"add_bos_token": tokenizer.add_bos, "tokenizer_class": "PreTrainedTokenizerFast"}
    for key, tid in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id)):
        if tid is not None:
            cfg[key] = tokenizer.backend.id_to_token(tid)
    if tokenizer.chat_template:
        cfg["chat_template"] = tokenizer.chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def save_model(
    model,
    spec: ModelSpec,
    tokenizer,
    out: str | Path,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write ``model`` (our Transformer with shapes ``spec``) as a checkpoint directory at ``out``,
    with ``extra_files`` (name -> text, e.g. a stage's report) inside it."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists; choose a new directory or pass overwrite=True (--force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(spec, tokenizer.bos_id if tokenizer else None, tokenizer.eos_id if tokenizer else None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {}
        for name, t in fused_state(spec, model.state_dict()).items():
            if spec.tie_embeddings and name == "lm_head.weight":
                continue  # tied: the head is the embedding
            state[checkpoint_name(spec.arch, name)] = t.detach().contiguous().clone()
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / EDGE_SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2))
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if out.exists():  # overwrite: move the old one aside first so a failure keeps one of the two
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
