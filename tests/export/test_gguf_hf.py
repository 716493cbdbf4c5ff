"""Hugging Face checkpoint directory -> GGUF, with the tokenizer converted from tokenizer.json.

Tiny random checkpoints of each architecture llama.cpp runs are written with transformers'
``save_pretrained`` next to a tokenizer of the kind that family ships (tests/hftokenizers.py). The
references are someone else's: llama.cpp (llama-cpp-python) loads the GGUF we write and must give
our logits within 1e-3 at F32, and must split a mixed text (code, accents, Chinese, emoji, digits,
whitespace runs, a special token) into exactly the ids ``tokenizers`` gives.
"""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
import transformers

from edge.errors import ModelLoadError
from tests.hftokenizers import MIXED, byte_level_bpe, gemma_spm

VOCAB = 512  # the BPE tokenizers have 480 tokens: the GGUF pads the rest, as Qwen's real files need
WINDOW = 16  # Gemma 3's sliding layers see 16 positions of a ~260-token text
TINY = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10000.0, pad_token_id=0)
LONGROPE = dict(rope_type="longrope", short_factor=[1.0, 1.3, 2.1, 3.7], long_factor=[1.1, 2.5, 6.0, 13.0],
                rope_theta=10000.0, partial_rotary_factor=0.5)  # rope_dim 8 of head_dim 16: 4 factors each
# case -> (transformers class, config class, config over TINY, tokenizer style); dims are multiples
# of 32 so Q4_0 blocks fit
ARCHS = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=True), "llama3"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=False), "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=32, tie_word_embeddings=True), "qwen2"),
    "qwen3_moe": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig", dict(
        head_dim=16, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
        tie_word_embeddings=False), "qwen2"),
    # Qwen1.5/Qwen2-MoE: q/k/v bias, a sigmoid-gated shared expert, un-renormalised top-k
    "qwen2_moe": ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(
        moe_intermediate_size=32, shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=False, tie_word_embeddings=True), "qwen2"),
    # llama.cpp's gemma3 scales q.k by 1/sqrt(head_dim): query_pre_attn_scalar = head_dim, as in Gemma 3 1B-12B
    "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(
        vocab_size=1024, num_hidden_layers=3, head_dim=32, query_pre_attn_scalar=32, sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        final_logit_softcapping=30.0, tie_word_embeddings=True), "gemma"),
    "phi3": ("Phi3ForCausalLM", "Phi3Config", dict(
        vocab_size=1024, partial_rotary_factor=0.5, tie_word_embeddings=False), "phi3"),
    # Llama-3.1/3.2's band-wise RoPE scaling (rope_freqs); original context 64 puts head_dim 16's
    # wavelengths in all three bands
    "llama-rope3": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=True, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=64)), "llama3"),
    # Phi-3.5 / Phi-4-mini's LongRoPE: llama.cpp takes the long factors when its context (512) exceeds
    # original_max_position_embeddings, as we do for a sequence longer than it
    "phi3-longrope-long": ("Phi3ForCausalLM", "Phi3Config", dict(
        vocab_size=1024, rope_parameters=dict(LONGROPE), original_max_position_embeddings=64,
        tie_word_embeddings=False), "phi3"),
    "phi3-longrope-short": ("Phi3ForCausalLM", "Phi3Config", dict(
        vocab_size=1024, rope_parameters=dict(LONGROPE), original_max_position_embeddings=512,
        tie_word_embeddings=False), "phi3"),
    # llama.cpp's smollm3 skips RoPE on every 4th layer, as SmolLM3-3B does
    "smollm3": ("SmolLM3ForCausalLM", "SmolLM3Config", dict(
        num_hidden_layers=4, no_rope_layer_interval=4, tie_word_embeddings=True), "llama3"),
}
# measured max |logit diff| at F32 on ~260 tokens: 3e-7..5e-7, and 3.1e-4 for gemma3, whose GeGLU llama.cpp
# computes with its own tanh-GELU; the bounds sit ~20% above (the bar is 1e-3)
LOGIT_TOL = {"gemma3": 4e-4}


def tiny_checkpoint(path, arch: str, seed: int = 0, tokenizer_dir=None, embed_std: float | None = None):
    """A random ``arch`` checkpoint with its family's kind of tokenizer, as save_pretrained writes it.

    ``embed_std``: the token embeddings' spread. A random model's next-token choice is a coin toss that
    4-bit rounding flips; embeddings larger than what the layers add (Gemma's post-norms add O(1) per
    layer whatever the weights) make the tied head favour the last token by a clear margin, as a trained
    model's confident predictions do, so the default accuracy budgets of edge validate apply."""
    cls, cfg_cls, extra, style = ARCHS[arch]
    gemma = cfg_cls == "Gemma3TextConfig"
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_cls)(**(TINY | extra))
    model = getattr(transformers, cls)(cfg).eval()
    with torch.no_grad():  # every weight matters: HF starts biases at 0 and norms at 1 (Gemma's at 0)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif "norm" in name:
                p.normal_(0.0 if gemma else 1.0, 0.1)
            elif embed_std is not None and "embed_tokens" in name:
                p.normal_(0, embed_std)
    model.save_pretrained(path)
    if tokenizer_dir is None and style in ("gemma", "phi3"):
        gemma_spm(path, path / "spm-work", style=style)
    elif tokenizer_dir is None:
        byte_level_bpe(path, style)
    else:
        for f in tokenizer_dir.glob("*"):
            if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
                (path / f.name).write_bytes(f.read_bytes())
    return path


@pytest.fixture(scope="module", params=sorted(ARCHS))
def checkpoint(request, tmp_path_factory):
    return request.param, tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


def _vocab_only(path):
    from edge.model.llama_log import load_llama

    return load_llama(path, "read the tokenizer", vocab_only=True)


def test_hf_checkpoint_gguf_matches_ours_in_llamacpp(checkpoint, tmp_path):
    from edge.export.gguf import export_gguf
    from edge.model.gguf import GGUF_ARCHS, load_gguf, read_gguf
    from edge.model.load import load_model
    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner

    arch, ckpt = checkpoint
    lm = load_model(ckpt)
    path = export_gguf(lm.model, None, tmp_path / "f32.gguf", tokenizer_dir=ckpt)
    meta = read_gguf(path).metadata
    assert meta["general.architecture"] == GGUF_ARCHS[lm.spec.arch].name

    tokens = lm.tokenizer.encode(MIXED, add_bos=False)
    hf = lm.tokenizer.backend.encode(MIXED, add_special_tokens=False).ids
    assert tokens == hf and len(tokens) > 150
    assert _vocab_only(path).tokenize(MIXED.encode(), add_bos=False, special=True) == tokens

    got = LlamaCppRunner(path, n_ctx=512, kv_type="f32").logits(tokens)
    ref = TorchRunner(lm.model).logits(tokens)
    err = float(np.abs(got - ref).max())
    print(f"{arch}: {len(tokens)} tokens, max |logit diff| llama.cpp F32 vs ours {err:.2e}")
    assert got.shape == ref.shape == (len(tokens), lm.spec.vocab_size) and err < LOGIT_TOL.get(arch, 6e-7), err

    back, spec, _ = load_gguf(path)  # our loader reads back what we wrote: same weights, same logits
    assert spec.arch == lm.spec.arch and spec.tie_embeddings == lm.spec.tie_embeddings
    print(f"{arch}: read back, max |logit diff| {np.abs(TorchRunner(back).logits(tokens) - ref).max():.2e}")
    assert np.abs(TorchRunner(back).logits(tokens) - ref).max() < 1e-6  # measured 0 for every case


@pytest.mark.parametrize("style", ["qwen2", "llama3", "gpt4o", "gemma", "phi3", "metaspace", "smollm2"])
def test_tokenizer_json_converts_to_what_llamacpp_splits_alike(style, tmp_path):
    """Tokenizer-only GGUFs of each kind: llama.cpp's ids equal tokenizers' on MIXED, with and without
    the BOS the checkpoint's tokenizer adds; the chat template and the specials come along."""
    from tokenizers import Tokenizer as HFTokenizer

    from edge.export.gguf import tokenizer_fields

    d = tmp_path / style
    if style in ("gemma", "phi3", "metaspace"):
        gemma_spm(d, tmp_path / "spm", style=style)
        want_model, want_pre = "llama", "default"
    elif style == "smollm2":  # the built-in model's tokenizer, as edge writes it into packages
        from edge.build import write_tokenizer
        from edge.model.gguf import read_gguf
        from edge.model.load import builtin_path
        from edge.model.tokenizer import Tokenizer

        d.mkdir()
        src = builtin_path("smollm2-135m")
        write_tokenizer(Tokenizer.from_gguf_fields(read_gguf(src).metadata, src), d)
        want_model, want_pre = "gpt2", "smollm"
    else:
        byte_level_bpe(d, style)
        want_model, want_pre = "gpt2", {"qwen2": "qwen2", "llama3": "llama-bpe", "gpt4o": "gpt-4o"}[style]
    hf = HFTokenizer.from_file(str(d / "tokenizer.json"))
    n_vocab = hf.get_vocab_size(with_added_tokens=True) + 7  # padded, as a bigger embedding needs
    fields, meta, padded = tokenizer_fields(n_vocab, tokenizer_dir=d)
    assert padded == 7 and len(meta["tokenizer.ggml.tokens"]) == n_vocab
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == (want_model, want_pre)
    assert meta.get("tokenizer.ggml.add_space_prefix") == {"gemma": False, "phi3": True, "metaspace": True}.get(style)
    w = gguf.GGUFWriter(str(tmp_path / "vocab.gguf"), arch="llama")
    for key, val, vtype, sub in fields:
        w.add_key_value(key, val, vtype, sub_type=sub)
    w.add_key_value("llama.vocab_size", n_vocab, gguf.GGUFValueType.UINT32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    llm = _vocab_only(tmp_path / "vocab.gguf")

    ids = hf.encode(MIXED, add_special_tokens=False).ids
    assert llm.tokenize(MIXED.encode(), add_bos=False, special=True) == ids
    # and back: edge's tokenizer rebuilt from the GGUF's fields (how edge loads a GGUF) splits alike too
    from edge.model.tokenizer import Tokenizer

    assert Tokenizer.from_gguf_fields(meta, tmp_path / "vocab.gguf").encode(MIXED, add_bos=False) == ids
    with_specials = hf.encode(MIXED).ids  # the post-processor's BOS, where the family adds one
    assert llm.tokenize(MIXED.encode(), add_bos=meta["tokenizer.ggml.add_bos_token"], special=True) == with_specials
    text = llm.detokenize(ids, special=True).decode("utf-8")
    if meta.get("tokenizer.ggml.add_space_prefix"):  # llama.cpp drops the prefix space only with remove_special
        text = text.removeprefix(" ")
    assert text == hf.decode(ids, skip_special_tokens=False)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    eos = cfg.get("eos_token")
    assert llm.token_eos() == hf.token_to_id(eos["content"] if isinstance(eos, dict) else eos)
    if style != "smollm2":
        assert meta["tokenizer.chat_template"] == (cfg.get("chat_template")
                                                    or (d / "chat_template.jinja").read_text())


def _write_tokenizer_json(d, model: dict, pre=None, normalizer=None):
    d.mkdir(exist_ok=True)
    (d / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "added_tokens": [], "normalizer": normalizer, "pre_tokenizer": pre,
        "post_processor": None, "decoder": None, "model": model}))
    return d


@pytest.mark.parametrize("kind,model,pre,needle", [
    ("unigram", {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]}, None, "Unigram"),
    ("wordpiece", {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {"[UNK]": 0, "a": 1}}, None, "WordPiece"),
    ("split", {"type": "BPE", "vocab": {"a": 0}, "merges": []},
     {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\p{L}+"}, "behavior": "Isolated",
                                             "invert": False}, {"type": "ByteLevel", "use_regex": False}]},
     "\\p{L}+"),
])
def test_unconvertible_tokenizer_is_one_line_naming_it(kind, model, pre, needle, tmp_path):
    from edge.model.tokenizer import gguf_vocab_from_hf

    d = _write_tokenizer_json(tmp_path / kind, model, pre)
    with pytest.raises(ModelLoadError) as e:
        gguf_vocab_from_hf(d)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and "ONNX and .pte" in msg and str(d / "tokenizer.json") in msg


@pytest.mark.parametrize("arch", ["qwen3", "gemma3"])
@pytest.mark.parametrize("recipe", ["q4_0", "q8_0"])
def test_edge_build_run_validate_from_checkpoint_dir(arch, recipe, tmp_path, monkeypatch):
    """The command line a user types on a checkpoint directory: build a Raspberry Pi 5 (llama.cpp)
    package, stream text from it, validate it against the checkpoint with the default budgets."""
    from click.testing import CliRunner

    from edge.cli import main

    ckpt = tiny_checkpoint(tmp_path / f"tiny-{arch}", arch, embed_std=1.0)
    cli = CliRunner()
    monkeypatch.chdir(tmp_path)
    r = cli.invoke(main, ["build", "--model", ckpt.name, "--target", "raspberry-pi-5", "--recipe", recipe,
                          "--out", "pkg", "--max-seq", "256"])
    # edge validate reloads the reference from the checkpoint path the manifest records, from any directory
    monkeypatch.chdir(ckpt)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    (art,) = m["artifacts"]
    assert art["files"] == ["model.gguf"] and art["runtime"] == "llama.cpp" and m["model"]["spec"]["arch"] == arch
    ftype = gguf.GGUFReader(str(tmp_path / "pkg" / "model.gguf")).fields["general.file_type"]
    assert int(ftype.parts[ftype.data[0]][0]) == {"q4_0": 2, "q8_0": 7}[recipe]

    assert m["model"]["path"] == str(ckpt.resolve())
    r = cli.invoke(main, ["run", str(tmp_path / "pkg"), "--prompt", "The café is", "--max-tokens", "12", "--raw"])
    assert r.exit_code == 0 and r.output.strip(), r.output
    r = cli.invoke(main, ["validate", str(tmp_path / "pkg")])
    print(arch, recipe, r.output)
    assert r.exit_code == 0 and "validate: passed" in r.output, r.output


@pytest.mark.parametrize("over,needle", [
    (dict(arch="mistral", sliding_window=16), "sliding window is 16 positions of 512"),
    (dict(arch="qwen3", qk_norm=True, sliding_window=16, sliding_layers=(1,)), "sliding window is 16"),
    (dict(arch="gemma3", qk_norm=True, post_norms=True, norm_offset=1.0, mlp_act="gelu_tanh", embed_scale=8.0,
          attn_scale=24**-0.5), "query_pre_attn_scalar = 16"),
    (dict(arch="smollm3", nope_layers=(1, 3)), "skips RoPE on layers [3]"),
    (dict(arch="qwen3", qk_norm=False), "needs the per-head q/k RMSNorm"),
    (dict(arch="qwen3_moe", qk_norm=True, n_experts=4, n_experts_per_tok=2, moe_ffn_dim=32, norm_topk_prob=False),
     "always renormalises the top-k expert weights"),
])
def test_what_llamacpp_cannot_compute_is_refused_in_one_line(over, needle):
    """A feature llama.cpp's graph for the architecture would compute differently: one line naming it."""
    from edge.errors import ConfigError
    from edge.export.gguf import gguf_arch
    from edge.model.spec import ModelSpec

    spec = ModelSpec(**(dict(vocab_size=512, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=128,
                             max_seq_len=512) | over))
    with pytest.raises(ConfigError) as e:
        gguf_arch(spec)
    assert needle in str(e.value) and "\n" not in str(e.value) and "ONNX and .pte" in str(e.value), str(e.value)


def test_edge_quantize_writes_gguf_from_checkpoint_dir(tmp_path):
    """edge quantize on a checkpoint directory: the q8_0 result is a GGUF (tokenizer from tokenizer.json)
    that llama.cpp runs close to the checkpoint (Q8_0 noise only)."""
    from edge.model.load import load_model
    from edge.quantize_dir import quantize_to_dir
    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner

    ckpt = tiny_checkpoint(tmp_path / "tiny-qwen3", "qwen3")
    quantize_to_dir(str(ckpt), "q8_0", tmp_path / "q", n_samples=4, seq_len=32, progress=lambda *a: None)
    assert (tmp_path / "q" / "model.gguf").exists()
    lm = load_model(ckpt)
    tokens = lm.tokenizer.encode(MIXED)[:64]
    got = LlamaCppRunner(tmp_path / "q" / "model.gguf", n_ctx=128, kv_type="f32").logits(tokens)
    ref = TorchRunner(lm.model).logits(tokens)
    corr = float(np.corrcoef(got.ravel(), ref.ravel())[0, 1])
    print(f"q8_0 from a checkpoint dir: corr {corr:.5f}, max |diff| {np.abs(got - ref).max():.3f}")
    assert 1 - corr < 2e-4 and np.abs(got - ref).max() < 0.016  # measured 1.3e-4, 0.013


@pytest.mark.parametrize("arch", ["qwen3", "gemma3", "smollm3", "llama-rope3"])
def test_edge_stream_writes_these_architectures_layer_by_layer(arch, tmp_path):
    """edge stream (round to nearest, q8_0) on checkpoints of the architectures it streams: llama.cpp runs
    the file close to the checkpoint, Q8_0 noise only; the tokenizer converted from tokenizer.json."""
    from edge.model.gguf import read_gguf
    from edge.model.load import load_model
    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner
    from edge.stream import StreamConfig, stream_to_gguf

    ckpt = tiny_checkpoint(tmp_path / f"tiny-{arch}", arch)
    out = tmp_path / "s.gguf"
    stream_to_gguf(ckpt, out, StreamConfig(weights="q8_0", head="q8_0", method="rtn"), progress=lambda s: None)
    lm = load_model(ckpt)
    assert read_gguf(out).metadata["tokenizer.ggml.tokens"][:100] == [
        lm.tokenizer.backend.id_to_token(i) for i in range(100)]
    tokens = lm.tokenizer.encode(MIXED)[:96]
    got = LlamaCppRunner(out, n_ctx=128, kv_type="f32").logits(tokens)
    ref = TorchRunner(lm.model).logits(tokens)
    corr = float(np.corrcoef(got.ravel(), ref.ravel())[0, 1])
    print(f"stream {arch} q8_0 rtn: corr {corr:.6f}, max |diff| {np.abs(got - ref).max():.4f}")
    assert 1 - corr < {"gemma3": 6e-4}.get(arch, 1.4e-4)  # measured 4.5e-4 (gemma3), 0.5e-4..1.1e-4


def test_edge_stream_awq_on_other_layers_is_one_line(tmp_path):
    from edge.errors import ConfigError
    from edge.stream import StreamConfig, stream_to_gguf

    ckpt = tiny_checkpoint(tmp_path / "tiny-qwen3", "qwen3")
    with pytest.raises(ConfigError, match="use method rtn"):
        stream_to_gguf(ckpt, tmp_path / "s.gguf", StreamConfig(method="awq"), progress=lambda s: None)
    assert not list(tmp_path.glob("s.gguf*"))


def test_loader_reads_llamacpps_fused_qkv(tmp_path):
    """llama.cpp's own converter writes Phi-3's q/k/v as one attn_qkv tensor: our loader splits it back."""
    from edge.export.gguf import _source_fields, export_gguf
    from edge.model.gguf import load_gguf, read_gguf
    from edge.model.load import load_model
    from edge.runtime.eager import TorchRunner

    ckpt = tiny_checkpoint(tmp_path / "tiny-phi3", "phi3")
    lm = load_model(ckpt)
    ours = export_gguf(lm.model, None, tmp_path / "split.gguf", tokenizer_dir=ckpt)
    src = read_gguf(ours)
    w = gguf.GGUFWriter(str(tmp_path / "fused.gguf"), arch="phi3")
    for key, val, vtype, sub in _source_fields(ours):  # the tokenizer, as written
        w.add_key_value(key, val, vtype, sub_type=sub)
    for key, val in src.metadata.items():
        if key.startswith("phi3."):
            w.add_key_value(key, val, gguf.GGUFValueType.FLOAT32 if isinstance(val, float) else gguf.GGUFValueType.UINT32)
    by_name = {t.name: np.asarray(t.data) for t in src.tensors}
    for name, arr in by_name.items():
        if ".attn_k." in name or ".attn_v." in name:
            continue
        if ".attn_q." in name:
            k, v = by_name[name.replace("attn_q", "attn_k")], by_name[name.replace("attn_q", "attn_v")]
            w.add_tensor(name.replace("attn_q", "attn_qkv"), np.concatenate([arr, k, v]))
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert any(t.name.endswith("attn_qkv.weight") for t in read_gguf(tmp_path / "fused.gguf").tensors)
    model, spec, _ = load_gguf(tmp_path / "fused.gguf")
    tokens = lm.tokenizer.encode(MIXED)[:48]
    assert np.array_equal(TorchRunner(model).logits(tokens), TorchRunner(lm.model).logits(tokens))


def test_edge_build_with_an_unconvertible_tokenizer_is_one_line(tmp_path):
    """A checkpoint whose tokenizer.json is a Unigram model (T5-style): the GGUF build stops in one line
    naming it and pointing at ONNX / .pte, exit code non-zero, no package left behind."""
    from click.testing import CliRunner
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    from edge.cli import main
    from tests.hftokenizers import EXTRA

    ckpt = tiny_checkpoint(tmp_path / "tiny-qwen3", "qwen3")
    tk = HFTokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.train_from_iterator(EXTRA + MIXED.split("\n") * 20, trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<unk>"], unk_token="<unk>", show_progress=False))
    tk.save(str(ckpt / "tokenizer.json"))
    r = CliRunner().invoke(main, ["build", "--model", str(ckpt), "--target", "raspberry-pi-5", "--recipe", "q4_0",
                                  "--out", str(tmp_path / "pkg")])
    assert r.exit_code != 0 and r.output.count("\n") == 1, r.output
    assert "the tokenizer model is Unigram" in r.output and "ONNX and .pte" in r.output, r.output
    assert not (tmp_path / "pkg").exists()
