"""The Hugging Face loader and our Transformer against transformers' own forward.

Tiny random checkpoints of each supported architecture are written with ``save_pretrained``
(transformers is a test-only dependency), loaded with ``load_hf_checkpoint``, and the logits
compared with transformers' within 1e-4 in fp32. Then bad checkpoints, one error each.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from edge.errors import ModelLoadError, UnsupportedArchitecture
from edge.model.hf import load_hf_checkpoint
from tests.tinymodels import assert_matches_transformers
from tests.tinymodels import random_hf_model as make_hf_model

TOL = 1e-4
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)
LLAMA3_ROPE = dict(  # original context 64 puts head_dim 16's wavelengths in all three bands
    rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=64,
)  # fmt: skip

QWEN2_MOE = dict(
    TINY, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=80, num_experts=6,
    tie_word_embeddings=False,
)  # fmt: skip

CONFIGS = {
    "llama-tied": lambda: transformers.LlamaConfig(**TINY, intermediate_size=96, tie_word_embeddings=True),
    "llama3-untied": lambda: transformers.LlamaConfig(
        **TINY, intermediate_size=96, tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE
    ),
    "mistral": lambda: transformers.MistralConfig(
        **TINY, intermediate_size=96, tie_word_embeddings=False, sliding_window=None
    ),
    "qwen2-tied": lambda: transformers.Qwen2Config(**TINY, intermediate_size=96, tie_word_embeddings=True),
    "mixtral": lambda: transformers.MixtralConfig(
        **TINY, intermediate_size=48, num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False
    ),
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **QWEN2_MOE, num_experts_per_tok=2, norm_topk_prob=False
    ),
    "qwen2_moe-norm-dense0": lambda: transformers.Qwen2MoeConfig(
        **QWEN2_MOE, num_experts_per_tok=3, norm_topk_prob=True, mlp_only_layers=[0]
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    """(transformers model, checkpoint dir) for each architecture case."""
    hf = make_hf_model(CONFIGS[request.param]())
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, path


def tokens(batch: int = 2, seq: int = 16) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(1))


def test_logits_match_transformers(checkpoint):
    hf, path = checkpoint
    assert_matches_transformers(hf, path, tokens(), TOL, path.name)


@torch.no_grad()
def test_static_kv_cache_matches_full_forward(checkpoint):
    _, path = checkpoint
    model, _ = load_hf_checkpoint(path)
    x = tokens(batch=1)
    want = model(x)
    model.setup_cache(1, 64)
    prefill = 6
    got = [model(x[:, :prefill], torch.arange(prefill))]
    for t in range(prefill, x.shape[1]):
        got.append(model(x[:, t : t + 1], torch.tensor([t])))
    diff = (torch.cat(got, dim=1) - want).abs().max().item()
    assert diff <= TOL


def test_sharded_checkpoint_and_bf16(tmp_path):
    hf = make_hf_model(CONFIGS["mixtral"]())
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model, _ = load_hf_checkpoint(tmp_path)
    x = tokens()
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= TOL
    half, _ = load_hf_checkpoint(tmp_path, dtype=torch.bfloat16)
    assert half.embed_tokens.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("case", ["mixtral", "qwen2_moe"])
def test_fused_expert_layout_loads(tmp_path, case):
    """transformers 5 holds experts fused, gate_up_proj (E, 2F, D) and down_proj (E, D, F); its
    save_pretrained splits them back per expert, but a raw state_dict dump keeps them fused."""
    hf = make_hf_model(CONFIGS[case]())
    save(hf, tmp_path / "saved")
    fused = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any(k.endswith("mlp.experts.gate_up_proj") for k in fused)
    (tmp_path / "fused").mkdir()
    shutil.copy(tmp_path / "saved" / "config.json", tmp_path / "fused")
    save_file(fused, tmp_path / "fused" / "model.safetensors")
    model, _ = load_hf_checkpoint(tmp_path / "fused")
    x = tokens()
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max().item() <= TOL


def save(hf, path):
    hf.save_pretrained(path)
    return path


# ---- bad input --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save(make_hf_model(CONFIGS["llama3-untied"]()), tmp_path_factory.mktemp("llama"))


def edited_copy(src, dst, edit):
    """Copy checkpoint ``src`` to ``dst`` with ``edit(tensors)`` applied to its weights."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


def load_error(path) -> str:
    with pytest.raises(ModelLoadError) as e:
        load_hf_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_path_does_not_exist(tmp_path):
    assert str(tmp_path / "nope") in load_error(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    assert "no config.json" in load_error(tmp_path)


def test_unsupported_architecture(tmp_path, llama_dir):
    shutil.copytree(llama_dir, tmp_path / "gpt2")
    cfg = json.loads((llama_dir / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitecture) as e:
        load_hf_checkpoint(tmp_path / "gpt2")
    assert "GPT2LMHeadModel" in str(e.value) and "LlamaForCausalLM" in str(e.value)


def test_missing_tensor(tmp_path, llama_dir):
    path = edited_copy(llama_dir, tmp_path / "m", lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    assert "layers.1.self_attn.k_proj.weight" in load_error(path)


def test_wrong_shape(tmp_path, llama_dir):
    def shrink(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:90].contiguous()

    msg = load_error(edited_copy(llama_dir, tmp_path / "s", shrink))
    assert "model.layers.0.mlp.up_proj.weight" in msg and "[90, 64]" in msg and "[96, 64]" in msg


def test_unexpected_tensor(tmp_path, llama_dir):
    def add(t):
        t["model.layers.0.mlp.extra.weight"] = torch.zeros(3)

    assert "model.layers.0.mlp.extra.weight" in load_error(edited_copy(llama_dir, tmp_path / "x", add))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors(tmp_path, llama_dir, damage):
    path = shutil.copytree(llama_dir, tmp_path / damage)
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07garbage" * 100)
    msg = load_error(path)
    assert "model.safetensors" in msg and "corrupt or truncated" in msg


def test_missing_shard(tmp_path):
    hf = make_hf_model(CONFIGS["llama-tied"]())
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    shard = sorted(tmp_path.glob("*.safetensors"))[-1]
    shard.unlink()
    assert shard.name in load_error(tmp_path)


def test_no_weights(tmp_path, llama_dir):
    shutil.copy(llama_dir / "config.json", tmp_path)
    assert "no *.safetensors" in load_error(tmp_path)
