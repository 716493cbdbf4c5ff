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
