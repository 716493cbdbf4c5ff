"""Tiny random llama GGUFs (dense and MoE) written here with gguf-py: our loader's logits equal
llama.cpp's on the same file. The reference is llama.cpp, which nobody here wrote."""

from __future__ import annotations

import functools

import gguf
import numpy as np
import pytest

from edge.model.gguf import load_gguf, read_gguf_spec, read_metadata
from edge.model.load import builtin_path
from edge.runtime.eager import TorchRunner
from edge.runtime.llamacpp import LlamaCppRunner

DIM, LAYERS, HEADS, KV, FFN = 64, 2, 4, 2, 96


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert's q/k row permutation (rotate-half -> interleaved RoPE)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@functools.lru_cache(maxsize=1)
def builtin_metadata() -> dict:
    return read_metadata(gguf.GGUFReader(str(builtin_path("smollm2-135m"))))


def write_tiny_gguf(path, n_experts: int = 0, top_k: int = 0, seed: int = 0, heads: int = HEADS, kv: int = KV):
    HEADS, KV = heads, kv  # noqa: N806 - the module's shape, overridable
    rng = np.random.default_rng(seed)
    meta = builtin_metadata()
    vocab = len(meta["tokenizer.ggml.tokens"])
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(DIM // HEADS)
    w.add_vocab_size(vocab)
    if n_experts:
        w.add_expert_count(n_experts)
        w.add_expert_used_count(top_k)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    w.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])

    def rnd(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    hd = DIM // HEADS
    w.add_tensor("token_embd.weight", rnd(vocab, DIM, scale=1.0))
    w.add_tensor("output_norm.weight", 1 + rnd(DIM, scale=0.1))
    w.add_tensor("output.weight", rnd(vocab, DIM))
    for i in range(LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", 1 + rnd(DIM, scale=0.1))
        w.add_tensor(p + "attn_q.weight", permute(rnd(HEADS * hd, DIM), HEADS))
        w.add_tensor(p + "attn_k.weight", permute(rnd(KV * hd, DIM), KV))
        w.add_tensor(p + "attn_v.weight", rnd(KV * hd, DIM))
        w.add_tensor(p + "attn_output.weight", rnd(DIM, HEADS * hd))
        w.add_tensor(p + "ffn_norm.weight", 1 + rnd(DIM, scale=0.1))
        if n_experts:
            w.add_tensor(p + "ffn_gate_inp.weight", rnd(n_experts, DIM, scale=1.0))
            w.add_tensor(p + "ffn_gate_exps.weight", rnd(n_experts, FFN, DIM))
            w.add_tensor(p + "ffn_up_exps.weight", rnd(n_experts, FFN, DIM))
            w.add_tensor(p + "ffn_down_exps.weight", rnd(n_experts, DIM, FFN))
        else:
            w.add_tensor(p + "ffn_gate.weight", rnd(FFN, DIM))
            w.add_tensor(p + "ffn_up.weight", rnd(FFN, DIM))
            w.add_tensor(p + "ffn_down.weight", rnd(DIM, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("n_experts,top_k", [(0, 0), (4, 2)], ids=["dense", "moe-4x-top2"])
def test_tiny_gguf_logits_equal_llamacpp(tmp_path, n_experts, top_k):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", n_experts, top_k)
    spec = read_gguf_spec(path)
    assert (spec.dim, spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.n_experts) == (
        DIM, LAYERS, HEADS, KV, n_experts)
    model, spec, tok = load_gguf(path)
    toks = tok.encode("The cat sat on the mat, and then it slept for 12 hours in the warm sun.")
    ours = TorchRunner(model).logits(toks)
    theirs = LlamaCppRunner(path, n_ctx=64, n_threads=2, kv_type="f32").logits(toks)
    assert ours.shape == theirs.shape
    assert float(np.abs(ours - theirs).max()) < 1e-3
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_gguf_missing_tensor_is_named(tmp_path):
    from edge.errors import ModelLoadError

    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    r = gguf.GGUFReader(str(path))
    w = gguf.GGUFWriter(str(tmp_path / "broken.gguf"), "llama")
    for k, v in read_metadata(r).items():
        if k.startswith(("llama.", "tokenizer.")):
            w.add_key_value(k, v, r.fields[k].types[0], sub_type=r.fields[k].types[-1]
                            if r.fields[k].types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        if t.name != "blk.1.ffn_up.weight":
            w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=r"lacks tensor.*layers\.1\.mlp\.up_proj"):
        load_gguf(tmp_path / "broken.gguf")
