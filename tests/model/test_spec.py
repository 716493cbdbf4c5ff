"""ModelSpec from config.json: shapes, parameter counts against the torch model and published totals."""

from __future__ import annotations

import json

import pytest
import torch

from edge.errors import ModelLoadError, UnsupportedArchitecture
from edge.model.llama import Transformer
from edge.model.spec import HF_ARCHITECTURES, ModelSpec

# config.json fields of published checkpoints (from their Hugging Face model pages), with the
# parameter total of their safetensors weights.
LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "max_position_embeddings": 131072, "tie_word_embeddings": False,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
}  # fmt: skip
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 32768, "tie_word_embeddings": False, "sliding_window": 4096,
}  # fmt: skip
QWEN2_5_0_5B = {
    "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936, "hidden_size": 896,
    "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 32768, "tie_word_embeddings": True,
}  # fmt: skip
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
    "max_position_embeddings": 32768, "num_local_experts": 8, "num_experts_per_tok": 2,
    "tie_word_embeddings": False,
}  # fmt: skip
QWEN1_5_MOE_A2_7B = {
    "architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 151936, "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
    "num_key_value_heads": 16, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "max_position_embeddings": 8192, "num_experts": 60, "num_experts_per_tok": 4,
    "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
    "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "tie_word_embeddings": False,
}  # fmt: skip
PUBLISHED = [
    (LLAMA_3_1_8B, 8_030_261_248),
    (MISTRAL_7B, 7_241_732_096),
    (QWEN2_5_0_5B, 494_032_768),
    (MIXTRAL_8X7B, 46_702_792_704),
    (QWEN1_5_MOE_A2_7B, 14_315_784_192),
]


def tiny(cfg: dict, **changes) -> dict:
    """The same architecture shrunk to a size the torch model builds in milliseconds."""
    small = dict(cfg, vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3)
    small["num_attention_heads"] = 4
    small["num_key_value_heads"] = 4 if cfg["num_key_value_heads"] == cfg["num_attention_heads"] else 2
    if "moe_intermediate_size" in cfg:
        small.update(moe_intermediate_size=16, shared_expert_intermediate_size=40, num_experts=6)
    return small | changes


@pytest.mark.parametrize(
    "cfg,total", PUBLISHED, ids=lambda v: v["architectures"][0] if isinstance(v, dict) else ""
)
def test_param_count_matches_published_checkpoint(cfg, total):
    spec = ModelSpec.from_hf_config(cfg)
    assert spec.arch == HF_ARCHITECTURES[cfg["architectures"][0]]
    assert spec.param_count() == total


@pytest.mark.parametrize(
    "cfg",
    [
        tiny(LLAMA_3_1_8B),
        tiny(LLAMA_3_1_8B, tie_word_embeddings=True),
        tiny(MISTRAL_7B),
        tiny(QWEN2_5_0_5B),
        tiny(MIXTRAL_8X7B),
        tiny(QWEN1_5_MOE_A2_7B),
        tiny(QWEN1_5_MOE_A2_7B, mlp_only_layers=[1], norm_topk_prob=True),
        tiny(QWEN1_5_MOE_A2_7B, decoder_sparse_step=2),
    ],
    ids=lambda c: c["architectures"][0],
)
def test_param_count_equals_torch_model(cfg):
    spec = ModelSpec.from_hf_config(cfg)
    with torch.device("meta"):
        model = Transformer(spec)
    distinct = {id(p): p.numel() for p in model.parameters()}  # a tied weight once
    assert spec.param_count() == sum(distinct.values()) == model.num_params()
    if spec.is_moe:
        assert spec.active_param_count() < spec.param_count()


def test_fields_from_config():
    llama = ModelSpec.from_hf_config(LLAMA_3_1_8B)
    assert (llama.head_dim, llama.kv_dim, llama.rope_theta) == (128, 1024, 500000.0)
    assert llama.rope_scaling.factor == 8.0 and not llama.qkv_bias and not llama.is_moe
    qwen = ModelSpec.from_hf_config(QWEN2_5_0_5B)
    assert qwen.qkv_bias and qwen.tie_embeddings and qwen.head_dim == 64
    mixtral = ModelSpec.from_hf_config(MIXTRAL_8X7B)
    assert (mixtral.n_experts, mixtral.n_experts_per_tok, mixtral.moe_ffn_dim) == (8, 2, 14336)
    assert mixtral.norm_topk_prob and mixtral.moe_layers == tuple(range(32))
    moe = ModelSpec.from_hf_config(QWEN1_5_MOE_A2_7B)
    assert (moe.n_experts, moe.n_experts_per_tok, moe.shared_expert_ffn_dim) == (60, 4, 5632)
    assert moe.shared_expert_gate and not moe.norm_topk_prob and moe.qkv_bias
    assert ModelSpec.from_hf_config(tiny(QWEN1_5_MOE_A2_7B, decoder_sparse_step=2)).moe_layers == (1,)
    assert ModelSpec.from_hf_config(tiny(QWEN1_5_MOE_A2_7B, mlp_only_layers=[1])).moe_layers == (0, 2)


def test_active_params_of_mixtral():
    spec = ModelSpec.from_hf_config(MIXTRAL_8X7B)
    expert = 3 * 4096 * 14336
    # 6 of 8 experts idle in each of 32 layers; the embedding lookup reads one row, counted 0
    assert spec.active_param_count() == spec.param_count() - 32 * 6 * expert - 32000 * 4096


def test_spec_round_trips_through_dict():
    spec = ModelSpec.from_hf_config(QWEN1_5_MOE_A2_7B)
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_unsupported_architecture_lists_supported():
    with pytest.raises(UnsupportedArchitecture) as e:
        ModelSpec.from_hf_config(dict(LLAMA_3_1_8B, architectures=["GPT2LMHeadModel"]))
    assert "GPT2LMHeadModel" in str(e.value)
    assert all(name in str(e.value) for name in HF_ARCHITECTURES)


def test_missing_key_is_named():
    cfg = dict(LLAMA_3_1_8B)
    del cfg["hidden_size"]
    with pytest.raises(ModelLoadError, match="hidden_size"):
        ModelSpec.from_hf_config(cfg)


def test_config_file_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        ModelSpec.from_config_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        ModelSpec.from_config_file(tmp_path / "config.json")


def test_transformers_5_rope_parameters():
    """transformers 5 writes rope_theta and the scaling into one "rope_parameters" object."""
    cfg = dict(LLAMA_3_1_8B)
    rope = dict(cfg.pop("rope_scaling"), rope_theta=cfg.pop("rope_theta"))
    spec = ModelSpec.from_hf_config(dict(cfg, rope_parameters=rope))
    assert spec == ModelSpec.from_hf_config(LLAMA_3_1_8B)


def test_biases_per_architecture():
    assert not ModelSpec.from_hf_config(dict(QWEN1_5_MOE_A2_7B, qkv_bias=False)).qkv_bias
    assert not ModelSpec.from_hf_config(dict(MISTRAL_7B, attention_bias=True)).qkv_bias  # Mistral has none
    with pytest.raises(UnsupportedArchitecture, match="attention_bias"):
        ModelSpec.from_hf_config(dict(LLAMA_3_1_8B, attention_bias=True))
