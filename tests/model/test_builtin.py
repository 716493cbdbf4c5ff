"""The built-in model rebuilt in torch against llama.cpp on an F32 GGUF of the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from edge.runtime.eager import TorchRunner
from edge.runtime.llamacpp import LlamaCppRunner


@pytest.fixture(scope="module")
def llamacpp(builtin_f32_gguf):
    # f32 KV cache: llama.cpp's default f16 cache alone moves logits by ~3e-2
    return LlamaCppRunner(builtin_f32_gguf, n_ctx=512, n_threads=2, kv_type="f32")


def test_spec_matches_the_published_layout(builtin):
    s = builtin.spec
    assert (s.arch, s.n_layers, s.dim, s.n_heads, s.n_kv_heads, s.ffn_dim, s.vocab_size) == (
        "llama", 30, 576, 9, 3, 1536, 49152)
    assert s.tie_embeddings and s.rope_theta == 1e5
    assert builtin.model.num_params() == s.param_count() == 134_515_008


def test_tokenizer_matches_llamacpp(builtin, llamacpp, heldout_text):
    text = heldout_text[:4000] + " 12345 <|im_start|>user\nHi 3.14!<|im_end|>"
    ours = builtin.tokenizer.encode(text)
    theirs = llamacpp.llm.tokenize(text.encode(), add_bos=False, special=True)
    assert ours == theirs
    assert builtin.tokenizer.decode(ours) == text


def test_logits_match_llamacpp_f32_over_256_tokens(builtin, llamacpp, heldout_text):
    ids = builtin.tokenizer.encode(heldout_text)[:256]
    assert len(ids) == 256
    ours = TorchRunner(builtin.model).logits(ids)
    theirs = llamacpp.logits(ids)
    assert ours.shape == theirs.shape == (256, 49152)
    assert float(np.abs(ours - theirs).max()) <= 1e-3


def test_greedy_continuation_identical_for_32_tokens(builtin, llamacpp, heldout_text):
    prompt = builtin.tokenizer.encode(heldout_text)[:64]
    ours = TorchRunner(builtin.model).generate(prompt, 32)
    theirs = llamacpp.generate(prompt, 32)
    assert len(ours) == 32 and ours == theirs


def test_static_cache_decode_equals_full_forward(builtin, heldout_text):
    import torch

    ids = builtin.tokenizer.encode(heldout_text)[:24]
    full = builtin.model(torch.tensor([ids]))[0]
    m = builtin.model
    m.setup_cache(1, 32)
    try:
        pre = m(torch.tensor([ids[:16]]), torch.arange(16))[0]
        steps = [m(torch.tensor([[t]]), torch.tensor([16 + i]))[0, 0] for i, t in enumerate(ids[16:])]
    finally:
        m.drop_cache()
    got = torch.cat([pre, torch.stack(steps)])
    assert torch.allclose(got, full, atol=1e-4)


def test_chat_template_renders_chatml(builtin):
    out = builtin.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert out.startswith("<|im_start|>") and "user\nHi<|im_end|>" in out
    assert out.endswith("<|im_start|>assistant\n")
