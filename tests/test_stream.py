"""Streaming GGUF export of checkpoints larger than memory; the whole-graph memory refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random Llama checkpoint in 3 bf16 shards; vocab 320 = the byte tokenizer's 257 + 63."""
    from edge.stream import llama_config, write_random_checkpoint

    d = tmp_path_factory.mktemp("ckpt")
    cfg = llama_config(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab=320, max_seq=256)
    write_random_checkpoint(d, cfg, seed=1, std=0.05, shard_bytes=20e3)
    return d


def byte_tokenizer_gguf(path):
    """A tokenizer-only GGUF: GPT-2 byte-level BPE over the 256 byte symbols and one merge."""
    import gguf
    from tokenizers import pre_tokenizers

    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġt"])
    w.add_token_types([1] * 257)
    w.add_token_merges(["Ġ t"])  # llama.cpp wants a merges key, and no empty arrays are written
    w.add_bos_token_id(10)
    w.add_eos_token_id(11)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tok_gguf(tmp_path_factory):
    return byte_tokenizer_gguf(tmp_path_factory.mktemp("tok") / "bytes.gguf")


def test_lazy_reader_matches_safetensors(ckpt):
    from safetensors.torch import load_file

    from edge.stream import LazyCheckpoint

    assert len(list(ckpt.glob("*.safetensors"))) >= 3
    ck = LazyCheckpoint(ckpt)
    name = "model.layers.1.mlp.down_proj.weight"
    shard = next(f for f in ckpt.glob("*.safetensors") if name in load_file(f))
    want = load_file(shard)[name].float().numpy()
    assert np.array_equal(ck.read(name), want)
    assert np.array_equal(ck.read(name, slice(3, 9)), want[3:9])
    assert np.array_equal(ck.read(name, np.array([7, 0, 7])), want[[7, 0, 7]])


def test_quantize_blocks_is_ggml_q4_0():
    import gguf

    from edge.stream import quantize_blocks

    w = np.random.default_rng(0).standard_normal((70, 96), dtype=np.float32)
    want = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(quantize_blocks(w, "q4_0", chunk_rows=16), want)


def _logits_ref(ckpt, tokens):
    from edge.model.hf import load_hf_checkpoint

    model, _ = load_hf_checkpoint(ckpt)
    with torch.no_grad():
        return model(torch.tensor([tokens]))[0].numpy()


def test_stream_awq_gguf_matches_checkpoint_and_runs_in_llamacpp(ckpt, tok_gguf, tmp_path):
    from edge.model.gguf import load_gguf
    from edge.model.llama_log import load_llama
    from edge.stream import StreamConfig, stream_to_gguf

    tokens = [1, 50, 70, 90, 3, 300, 12, 40]
    ref = _logits_ref(ckpt, tokens)
    tok_src = tok_gguf
    # q8_0 everywhere: small rounding, so a wrong permutation or a mis-folded AWQ scale shows
    q8 = stream_to_gguf(ckpt, tmp_path / "q8.gguf", StreamConfig(weights="q8_0", head="q8_0"),
                        tokenizer_gguf=tok_src, progress=lambda s: None)
    assert q8["padded_tokens"] == 63 and len(q8["layers"]) == 2
    assert {"qkv", "gate_up", "down"} <= set(q8["layers"][0]["awq"])
    model, spec, _ = load_gguf(tmp_path / "q8.gguf")
    with torch.no_grad():
        got = model(torch.tensor([tokens]))[0].numpy()
    assert np.abs(got - ref).max() < 0.017 * np.abs(ref).max()  # measured 0.0139 of the range

    rep = stream_to_gguf(ckpt, tmp_path / "q4.gguf", StreamConfig(), tokenizer_gguf=tok_src,
                         progress=lambda s: None)
    assert all(g["loss_reduction"] >= 0 for layer in rep["layers"] for g in layer["awq"].values())
    llm = load_llama(tmp_path / "q4.gguf", n_ctx=64, n_threads=1, logits_all=True)
    llm.eval(tokens)
    cpp = np.array(llm.scores[: len(tokens)])
    assert cpp.shape == ref.shape and np.isfinite(cpp).all()
    assert np.corrcoef(cpp.ravel(), ref.ravel())[0, 1] > 0.965  # Q4_0 of a random model: measured 0.971
    out = llm.create_completion("Hello", max_tokens=3, temperature=0)
    assert out["usage"]["completion_tokens"] >= 1


def test_rtn_stream_is_bit_exact_with_gguf_py(ckpt, tok_gguf, tmp_path):
    import gguf

    from edge.model.gguf import read_gguf
    from edge.stream import LazyCheckpoint, StreamConfig, _row_perm, stream_to_gguf

    stream_to_gguf(ckpt, tmp_path / "rtn.gguf", StreamConfig(method="rtn"), tokenizer_gguf=tok_gguf,
                   progress=lambda s: None)
    t = {x.name: x for x in read_gguf(tmp_path / "rtn.gguf").tensors}
    q = LazyCheckpoint(ckpt).read("model.layers.0.self_attn.q_proj.weight")
    want = gguf.quants.quantize(q[_row_perm(64, 4)], gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(np.asarray(t["blk.0.attn_q.weight"].data).reshape(want.shape), want)
    assert t["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_bad_checkpoints(tmp_path):
    from edge.errors import ConfigError, ModelLoadError
    from edge.model.load import builtin_path
    from edge.stream import LazyCheckpoint, StreamConfig, stream_to_gguf

    with pytest.raises(ModelLoadError, match="no config.json"):
        stream_to_gguf(tmp_path, tmp_path / "x.gguf", tokenizer_gguf=builtin_path("smollm2-135m"))
    (tmp_path / "a.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ModelLoadError, match="truncated"):
        LazyCheckpoint(tmp_path)
    with pytest.raises(ConfigError, match="allowed: q4_0, q5_0, q8_0"):
        StreamConfig(weights="q4_k")


def test_whole_graph_export_refused_with_figure_and_alternative():
    import json
    import tempfile
    from pathlib import Path

    from edge.model.spec import ModelSpec
    from edge.stream import ExportMemoryError, check_export_memory, export_peak_bytes, llama_config

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.json"
        p.write_text(json.dumps(llama_config(4096, 32, 32, 8, 14336, 128256)))
        spec = ModelSpec.from_config_file(p)
    assert 7.9e9 < spec.param_count() < 8.1e9
    need = export_peak_bytes(spec, "pte", "8da4w")
    assert need > 32 * 2**30  # an 8B never fits a 24 GB build machine as a whole graph
    with pytest.raises(ExportMemoryError, match=r"needs about [\d.]+ GiB .* 24.0 GiB available; write GGUF instead"):
        check_export_memory(spec, "pte", "8da4w", available=24 * 2**30)
    assert check_export_memory(spec, "gguf", "q4_0", available=1) == 0
    small = ModelSpec(arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
                      ffn_dim=1536, tie_embeddings=True)
    assert check_export_memory(small, "onnx", "fp32", available=24 * 2**30) < 24 * 2**30
