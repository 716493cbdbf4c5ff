"""Tiny random models for exporter, package and runtime tests: 2 layers, dim 64, GQA 4/2 (exports in seconds)."""

from __future__ import annotations

import torch


def tiny_model(seed: int = 0, tie: bool = True, **over):
    from edge.model.llama import Transformer
    from edge.model.spec import ModelSpec

    torch.manual_seed(seed)
    kw = dict(arch="llama", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
              max_seq_len=64, tie_embeddings=tie, name="tiny")
    kw.update(over)
    m = Transformer(ModelSpec(**kw)).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    return m


TOKENS = [1, 5, 9, 200, 3, 77, 12, 40, 8, 100, 250, 31]


def byte_tokenizer():
    """A 256-token byte-level tokenizer (no merges) with <|im_end|>-free ChatML-less template."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from edge.model.tokenizer import Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return Tokenizer(tk, "tokenizers", None, None, False, None, {})


def tiny_loaded(**over):
    """A LoadedModel of the tiny model with the byte tokenizer, as edge.build takes it."""
    from pathlib import Path

    from edge.model.load import LoadedModel, ModelSource

    m = tiny_model(**over)
    return LoadedModel(m, m.spec, byte_tokenizer(), ModelSource("hf", Path("tiny"), "tiny"))


def tiny_arch_spec(name: str):
    """The tiny model's shapes with one newer architecture's features switched on (the features are
    checked against transformers in tests/model/test_archs.py; exporters are checked against this)."""
    from edge.model.spec import ModelSpec, RopeScaling

    base = dict(vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=64,
                tie_embeddings=True, name=f"tiny-{name}")
    feats = {
        "qwen3": dict(arch="qwen3", qk_norm=True, head_dim=32, norm_eps=1e-6),
        "gemma3": dict(arch="gemma3", n_layers=3, head_dim=32, qk_norm=True, norm_offset=1.0, post_norms=True,
                       mlp_act="gelu_tanh", embed_scale=64**0.5, attn_scale=24**-0.5, sliding_window=5,
                       sliding_layers=(0, 2), rope_theta=1e6, rope_local_theta=1e4,
                       rope_scaling=RopeScaling(factor=8.0, rope_type="linear"), final_logit_softcap=30.0),
        "phi3": dict(arch="phi3", rope_dim=8, tie_embeddings=False),
        "smollm3": dict(arch="smollm3", n_layers=4, nope_layers=(1, 3)),
        "mistral-sliding": dict(arch="mistral", sliding_window=5),
        # 4 experts top-2 with normalised top-k (Qwen3-MoE); raw top-k gates, a sigmoid-gated shared
        # expert, q/k/v bias and a dense first layer (Qwen2-MoE)
        "qwen3-moe": dict(arch="qwen3_moe", qk_norm=True, head_dim=32, norm_eps=1e-6, n_experts=4,
                          n_experts_per_tok=2, moe_ffn_dim=32, norm_topk_prob=True),
        "qwen2-moe": dict(arch="qwen2_moe", qkv_bias=True, n_experts=4, n_experts_per_tok=2, moe_ffn_dim=32,
                          norm_topk_prob=False, shared_expert_ffn_dim=64, shared_expert_gate=True,
                          moe_layers=(1,)),
    }
    return ModelSpec(**{**base, **feats[name]})


def tiny_arch(name: str, seed: int = 0):
    """A random Transformer of ``tiny_arch_spec(name)``; every weight, norms included, perturbed."""
    from edge.model.llama import Transformer

    spec = tiny_arch_spec(name)
    torch.manual_seed(seed)
    m = Transformer(spec).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0 if p.dim() > 1 or spec.norm_offset else 1.0, 0.1)
    return m.requires_grad_(False)


def assert_matches_transformers(hf, path, x, tol: float, label: str) -> None:
    """Our model loaded from the checkpoint at ``path`` gives transformers' logits on tokens ``x`` within
    ``tol``, and counts the same parameters (transformers counts a tied weight once)."""
    import torch

    from edge.model.hf import load_hf_checkpoint

    model, spec = load_hf_checkpoint(path)
    with torch.no_grad():
        want, got = hf(x).logits, model(x)
    assert want.std() > 0.3  # logits large enough for the tolerance to mean something
    diff = (got - want).abs().max().item()
    print(f"{label}: max |logit diff| no cache {diff:.2e}")
    assert diff <= tol
    assert spec.param_count() == model.num_params() == sum(p.numel() for p in hf.parameters())


def random_hf_model(config):
    """A random transformers model whose every weight matters (HF zero-inits biases, ones norms):
    N(0, 0.1) weights, norms around 1, Gemma's around 0 (it stores them centred for (1 + w) scaling)."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 0.0 if "norm" not in name or isinstance(config, transformers.Gemma3TextConfig) else 1.0
            p.normal_(centre, 0.1)
    return model.eval()
