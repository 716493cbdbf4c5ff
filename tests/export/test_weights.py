"""Tensor classes of the names writers store: our parameter names and llama.cpp's GGUF names."""

from __future__ import annotations

import pytest

from edge.errors import ConfigError
from edge.export.weights import class_of, gguf_class


@pytest.mark.parametrize("name,cls", [
    ("embed_tokens.weight", "embedding"), ("lm_head.weight", "output"), ("norm.weight", "norm"),
    ("layers.3.input_layernorm.weight", "norm"), ("layers.0.self_attn.q_norm.weight", "norm"),
    ("layers.1.self_attn.q_proj.weight", "attn_q"), ("layers.1.self_attn.k_proj.bias", "attn_k"),
    ("layers.2.self_attn.o_proj.weight", "attn_o"), ("layers.2.mlp.down_proj.weight", "ffn_down"),
    ("layers.2.mlp.gate.weight", "router"), ("layers.2.mlp.experts.7.up_proj.weight", "ffn_up"),
    ("layers.2.mlp.shared_expert.gate_proj.weight", "ffn_gate"), ("layers.2.mlp.shared_expert_gate.weight", "router"),
])
def test_class_of_our_names(name, cls):
    assert class_of(name) == cls


@pytest.mark.parametrize("name,cls", [
    ("token_embd.weight", "embedding"), ("output.weight", "output"), ("output_norm.weight", "norm"),
    ("blk.0.attn_q.bias", "attn_q"), ("blk.0.attn_output.weight", "attn_o"), ("blk.4.attn_k_norm.weight", "norm"),
    ("blk.1.ffn_down_exps.weight", "ffn_down"), ("blk.1.ffn_gate_inp.weight", "router"),
    ("blk.1.ffn_up_shexp.weight", "ffn_up"), ("blk.1.ffn_gate_inp_shexp.weight", "router"),
    ("blk.1.post_attention_norm.weight", "norm"),
])
def test_gguf_class(name, cls):
    assert gguf_class(name) == cls


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="rope.freqs.*knows token_embd"):
        gguf_class("rope.freqs")
    with pytest.raises(ConfigError, match="layers.0.self_attn.rot.*no tensor class"):
        class_of("layers.0.self_attn.rot")
