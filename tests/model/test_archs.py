"""Each newer architecture against transformers' own forward, from a tiny random checkpoint.

Qwen3 (q/k norms), Qwen3-MoE, Gemma 3 text (norm offset, post-norms, GeGLU, embedding scale,
query_pre_attn_scalar, sliding layers with their own RoPE base, linear RoPE scaling on the global
ones, final logit softcap), Phi-3 (fused qkv/gate_up, partial rotary, LongRoPE short and long),
SmolLM3 (NoPE layers) and Mistral with a sliding window shorter than the text: the checkpoint is
written with ``save_pretrained`` (fp32, eager attention), loaded by ``load_hf_checkpoint``, and
the logits of the no-cache forward and of the static-cache prefill + token-by-token decode (past
the window) compared with transformers' within 1e-4. ``edge simulate`` answers for each config.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from edge.cli import main
from edge.errors import ConfigError, ModelLoadError, UnsupportedArchitecture
from edge.model.hf import load_hf_checkpoint
from edge.model.spec import ModelSpec
from tests.tinymodels import assert_matches_transformers
from tests.tinymodels import random_hf_model as make_hf_model

# measured max |logit diff| 1.3e-6 .. 2.8e-6 over the cases (fp32, 2 x 16 tokens); 1e-5 leaves room for
# other BLAS builds and stays 10x under the 1e-4 the loader promises
TOL = 1e-5
SEQ = 16  # tokens of the test text; every sliding window below is shorter
WINDOW = 5
TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, rms_norm_eps=1e-6, pad_token_id=0)


def longrope() -> dict:
    """Phi-3 LongRoPE over rope_dim 8 (head_dim 16, partial_rotary_factor 0.5): 4 factors each."""
    return dict(rope_type="longrope", short_factor=[1.0, 1.3, 2.1, 3.7], long_factor=[1.1, 2.5, 6.0, 13.0],
                rope_theta=10000.0, partial_rotary_factor=0.5)


CONFIGS = {
    "qwen3": lambda: transformers.Qwen3Config(**TINY, intermediate_size=96, head_dim=32, tie_word_embeddings=True),
    "qwen3-sliding": lambda: transformers.Qwen3Config(  # layer 1 slides (i >= max_window_layers)
        **TINY, intermediate_size=96, head_dim=16, tie_word_embeddings=False, use_sliding_window=True,
        sliding_window=WINDOW, max_window_layers=1),
    "qwen2-sliding": lambda: transformers.Qwen2Config(  # layer 1 slides (i >= max_window_layers)
        **TINY, intermediate_size=96, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3_moe": lambda: transformers.Qwen3MoeConfig(
        **TINY, intermediate_size=96, moe_intermediate_size=32, num_experts=6, num_experts_per_tok=2,
        norm_topk_prob=True, mlp_only_layers=[1], head_dim=16, tie_word_embeddings=False),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **{**TINY, "num_hidden_layers": 3}, intermediate_size=96, head_dim=32, query_pre_attn_scalar=24,
        sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        final_logit_softcapping=30.0, tie_word_embeddings=True),
    "phi3": lambda: transformers.Phi3Config(
        **TINY, intermediate_size=96, partial_rotary_factor=0.5, tie_word_embeddings=False),
    "phi3-longrope-short": lambda: transformers.Phi3Config(  # 16 tokens <= 64: short factors
        **TINY, intermediate_size=96, rope_parameters=longrope(), original_max_position_embeddings=64,
        tie_word_embeddings=False),
    "phi3-longrope-long": lambda: transformers.Phi3Config(  # 16 tokens > 8: long factors
        **TINY, intermediate_size=96, rope_parameters=longrope(), original_max_position_embeddings=8,
        tie_word_embeddings=False),
    "smollm3": lambda: transformers.SmolLM3Config(  # layers 1 and 3 skip RoPE
        **{**TINY, "num_hidden_layers": 4}, intermediate_size=96, no_rope_layer_interval=2, tie_word_embeddings=True),
    "mistral-sliding": lambda: transformers.MistralConfig(
        **TINY, intermediate_size=96, sliding_window=WINDOW, tie_word_embeddings=False),
}

# what the spec must say for each case: the features under test are really switched on
EXPECT = {
    "qwen3": dict(arch="qwen3", qk_norm=True, head_dim=32),
    "qwen3-sliding": dict(sliding_window=WINDOW, sliding_layers=(1,)),
    "qwen2-sliding": dict(arch="qwen2", qkv_bias=True, sliding_window=WINDOW, sliding_layers=(1,)),
    "qwen3_moe": dict(arch="qwen3_moe", qk_norm=True, n_experts=6, moe_layers=(0,), shared_expert_ffn_dim=0,
                      norm_topk_prob=True),
    "gemma3": dict(arch="gemma3", norm_offset=1.0, post_norms=True, mlp_act="gelu_tanh", embed_scale=8.0,
                   attn_scale=24**-0.5, sliding_layers=(0, 2), rope_local_theta=1e4, rope_theta=1e6,
                   final_logit_softcap=30.0),
    "phi3": dict(arch="phi3", rope_dim=8),
    "phi3-longrope-short": dict(rope_dim=8),
    "phi3-longrope-long": dict(rope_dim=8),
    "smollm3": dict(arch="smollm3", nope_layers=(1, 3)),
    "mistral-sliding": dict(arch="mistral", sliding_window=WINDOW, sliding_layers=(0, 1)),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    """(case, transformers model, checkpoint dir)."""
    hf = make_hf_model(CONFIGS[request.param]())
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return request.param, hf, path


def tokens(batch: int = 2, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_spec_features(checkpoint):
    case, _, path = checkpoint
    spec = ModelSpec.from_config_file(path / "config.json")
    for field, want in EXPECT[case].items():
        got = getattr(spec, field)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, (field, got, want)


def test_logits_match_transformers(checkpoint):
    case, hf, path = checkpoint
    assert_matches_transformers(hf, path, tokens(), TOL, case)


@torch.no_grad()
def test_static_cache_prefill_and_decode_match_transformers(checkpoint):
    """Prefill 3 tokens, then decode one at a time to 16: past every window (5)."""
    case, hf, path = checkpoint
    model, _ = load_hf_checkpoint(path)
    x = tokens(batch=1)
    want = hf(x).logits
    model.setup_cache(1, 64)
    prefill = 3
    got = [model(x[:, :prefill], torch.arange(prefill))]
    for t in range(prefill, x.shape[1]):
        got.append(model(x[:, t : t + 1], torch.tensor([t])))
    diff = (torch.cat(got, dim=1) - want).abs().max().item()
    print(f"{case}: max |logit diff| static cache {diff:.2e}")
    assert diff <= TOL


@pytest.mark.parametrize("case", ["qwen2-sliding", "qwen3-sliding", "gemma3", "mistral-sliding"])
def test_window_changes_the_logits(case, tmp_path):
    """The sliding window is not a no-op on this text: widening it to the whole text moves the
    logits past the window and nowhere before it."""
    from edge.model.llama import Transformer

    make_hf_model(CONFIGS[case]()).save_pretrained(tmp_path)
    model, spec = load_hf_checkpoint(tmp_path)
    full = Transformer(spec.with_(sliding_window=SEQ))  # same layers, a window covering the whole text
    full.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        x = tokens(batch=1)
        a, b = model(x), full(x)
    assert (a[:, :WINDOW] - b[:, :WINDOW]).abs().max() <= 1e-5  # inside the window: identical
    assert (a[:, WINDOW:] - b[:, WINDOW:]).abs().max() > 1e-2


def test_simulate_answers(checkpoint):
    case, _, path = checkpoint
    r = CliRunner().invoke(main, ["simulate", "--model", str(path / "config.json"), "--target", "snapdragon-8gen2",
                                  "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["decode_tok_s"] > 0 and d["memory"]["weights"] > 0


# ---- the spec's byte counts --------------------------------------------------------------------
def test_sliding_layers_cache_only_their_window():
    spec = ModelSpec.from_hf_config(config_dict("gemma3"))
    per_pos = 2 * spec.kv_dim * 2  # K and V, 2 bytes
    # 2 sliding layers hold 5 positions, the global one all 100
    assert spec.kv_cache_bytes(100) == per_pos * (2 * WINDOW + 100)
    assert spec.kv_cache_bytes(3) == per_pos * 3 * 3


def test_gemma_norm_params_counted():
    spec = ModelSpec.from_hf_config(config_dict("gemma3"))
    norms = spec.param_breakdown()["norm"]
    assert norms == 3 * (4 * 64 + 2 * 32)  # four dim-wide norms and q/k norms of head_dim per layer


# ---- bad input ------------------------------------------------------------------------------
def config_dict(case: str, **changes) -> dict:
    """The config.json dict save_pretrained would write for ``case``, with ``changes``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = CONFIGS[case]()
    d = cfg.to_dict()
    d["architectures"] = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg.model_type]]
    d.update(changes)
    return d


def test_unsupported_architecture_lists_the_supported():
    with pytest.raises(UnsupportedArchitecture) as e:
        ModelSpec.from_hf_config(config_dict("qwen3", architectures=["Gemma3ForConditionalGeneration"]))
    msg = str(e.value)
    for name in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM",
                 "SmolLM3ForCausalLM", "MistralForCausalLM"):
        assert name in msg


def test_unimplemented_rope_scaling_is_named():
    d = config_dict("qwen3", rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                                              "original_max_position_embeddings": 32768})
    with pytest.raises(UnsupportedArchitecture) as e:
        ModelSpec.from_hf_config(d)
    assert "'yarn'" in str(e.value) and "longrope" in str(e.value)


def test_longrope_factor_count_checked():
    d = config_dict("phi3-longrope-short")
    d["rope_parameters"] = dict(d["rope_parameters"], short_factor=[1.0, 2.0])
    with pytest.raises(ConfigError) as e:
        ModelSpec.from_hf_config(d)
    assert "short_factor has 2 entries" in str(e.value) and "4" in str(e.value)


def test_gemma_attention_softcap_refused():
    with pytest.raises(UnsupportedArchitecture) as e:
        ModelSpec.from_hf_config(config_dict("gemma3", attn_logit_softcapping=50.0))
    assert "attn_logit_softcapping" in str(e.value)


def test_fused_tensor_shape_mismatch_names_tensor_and_shapes(tmp_path_factory):
    src = tmp_path_factory.mktemp("phi3src")
    make_hf_model(CONFIGS["phi3"]()).save_pretrained(src)
    dst = tmp_path_factory.mktemp("phi3bad") / "m"
    shutil.copytree(src, dst)
    t = load_file(dst / "model.safetensors")
    key = "model.layers.1.self_attn.qkv_proj.weight"
    t[key] = t[key][:100].contiguous()  # 64 q + 32 k + 32 v rows expected
    save_file(t, dst / "model.safetensors")
    with pytest.raises(ModelLoadError) as e:
        load_hf_checkpoint(dst)
    msg = str(e.value)
    assert key in msg and "[100, 64]" in msg and "[128, 64]" in msg and "\n" not in msg


# ---- the published configs in examples/models ----------------------------------------------------
# parameter counts on the model cards (Phi-4-mini's exact count from its safetensors index)
PUBLISHED = {"qwen3-0.6b": 0.6e9, "qwen3-8b": 8.2e9, "qwen3-30b-a3b": 30.5e9, "gemma-3-1b": 1.0e9,
             "phi-4-mini-instruct": 3_836_021_760, "smollm3-3b": 3.08e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_configs_simulate(name):
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[2] / "examples" / "models" / name / "config.json"
    spec = ModelSpec.from_config_file(cfg)
    assert abs(spec.param_count() / PUBLISHED[name] - 1) < 0.01
    r = CliRunner().invoke(main, ["simulate", "--model", str(cfg), "--target", "horizon-j5", "--json"])
    d, end = json.JSONDecoder().raw_decode(r.output)
    assert d["decode_tok_s"] > 0
    # a model that does not fit the J5 is a verdict (exit 1, one line after the JSON), not an error
    assert r.exit_code == (0 if d["fits"] else 1), r.output
    assert ("failed fits" in r.output[end:]) == (not d["fits"])


def test_models_show_lists_the_features():
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[2] / "examples" / "models" / "gemma-3-1b" / "config.json"
    r = CliRunner().invoke(main, ["models", "show", str(cfg)])
    assert r.exit_code == 0, r.output
    line = next(s for s in r.output.splitlines() if "features:" in s)
    for want in ("q/k norm", "(1 + w) norms", "post-norms", "gelu_tanh gated MLP", "embeddings x 33.94",
                 "attention scale 0.0625", "sliding window 512 on 22/26 layers", "sliding layers' RoPE base 10000"):
        assert want in line, (want, line)
