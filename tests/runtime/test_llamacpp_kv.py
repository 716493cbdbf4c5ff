"""llama.cpp's KV cache types: a recipe's int8 cache (q8_0) really quantizes the cache, and stays close."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import ModelLoadError
from edge.runtime.llamacpp import LlamaCppRunner


def test_int8_kv_cache_is_quantized_and_close(builtin_f32_gguf, heldout_text):
    f32 = LlamaCppRunner(builtin_f32_gguf, n_ctx=128, n_threads=2, kv_type="f32")
    toks = f32.llm.tokenize(heldout_text.encode())[:96]
    ref = f32.logits(toks)
    q8 = LlamaCppRunner(builtin_f32_gguf, n_ctx=128, n_threads=2, kv_type="int8").logits(toks)
    diff = np.abs(q8 - ref).max()
    # measured on these 96 held-out tokens: max |diff| 0.509, KLD 2.48e-4, the same top-1 on all 96;
    # bounds 20% from each
    assert diff > 0.4  # the cache really is 8-bit: not the f32 numbers
    lp = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    lq = q8 - np.logaddexp.reduce(q8, axis=-1, keepdims=True)
    kld = float((np.exp(lp) * (lp - lq)).sum(-1).mean())
    assert kld < 3e-4 and (ref.argmax(-1) == q8.argmax(-1)).all()


def test_unknown_kv_type_is_one_line(builtin_f32_gguf):
    with pytest.raises(ModelLoadError, match="KV cache type 'int4' unknown; llama.cpp takes fp32, fp16, int8"):
        LlamaCppRunner(builtin_f32_gguf, n_ctx=64, kv_type="int4")
