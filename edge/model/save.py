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
        "hidden_act": "silu",
        "rms_norm_eps": spec.norm_eps,
        "rope_theta": spec.rope_theta,
        "max_position_embeddings": spec.max_seq_len,
        "tie_word_embeddings": spec.tie_embeddings,
        "torch_dtype": "float32",
        "_name_or_path": spec.name,
    }
    if bos_id is not None:
        cfg["bos_token_id"] = bos_id
    if eos_id is not None:
        cfg["eos_token_id"] = eos_id
    if spec.rope_scaling is not None:
        rs = spec.rope_scaling
        cfg["rope_scaling"] = {
            "rope_type": "llama3", "rope_theta": spec.rope_theta, "factor": rs.factor,
            "low_freq_factor": rs.low_freq_factor, "high_freq_factor": rs.high_freq_factor,
            "original_max_position_embeddings": rs.original_max_position_embeddings,
        }  # fmt: skip
    if spec.arch == "llama":
        cfg.update(attention_bias=False, mlp_bias=False)
    if spec.arch == "mistral":
        cfg["sliding_window"] = None
    if spec.arch == "mixtral":
        cfg.update(
            intermediate_size=spec.moe_ffn_dim, num_local_experts=spec.n_experts,
            num_experts_per_tok=spec.n_experts_per_tok, sliding_window=None,
        )  # fmt: skip
    if spec.arch == "qwen2_moe":
        cfg.update(
            num_experts=spec.n_experts, num_experts_per_tok=spec.n_experts_per_tok,
            moe_intermediate_size=spec.moe_ffn_dim, norm_topk_prob=spec.norm_topk_prob,
            shared_expert_intermediate_size=spec.shared_expert_ffn_dim, decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(spec.n_layers) if i not in spec.moe_layers],
            qkv_bias=spec.qkv_bias, use_sliding_window=False,
        )  # fmt: skip
        if spec.shared_expert_ffn_dim and not spec.shared_expert_gate:
            raise ConfigError(
                "qwen2_moe checkpoints always gate their shared expert; spec has shared_expert_gate=False"
            )
    return cfg


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
        for name, t in model.state_dict().items():
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
