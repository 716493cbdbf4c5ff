"""The quantize stage on a tiny random model, and its GGUF read back by llama.cpp and by gguf-py."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from edge.errors import ConfigError, EdgeError
from edge.quant.configs import load_recipe, recipe_from_dict
from edge.quant.quantize import quantize
from tests.tinymodels import tiny_model

VOCAB = 256
GGUF_VOCAB = 49152  # the built-in tokenizer's, so llama.cpp accepts the copied tokenizer metadata


def model(seed=0, **over):
    return tiny_model(seed, max_seq_len=128, **over)


def calib(n=4, T=64, seed=0):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(n, T))


@pytest.fixture(scope="module")
def source_gguf():
    from edge.model.load import builtin_path

    return builtin_path("smollm2-135m")


def test_rtn_weights_are_the_stored_codes():
    m = model()
    q = quantize(m, load_recipe("q4_0", method="rtn"))
    qt = q.tensors["layers.1.mlp.down_proj.weight"]
    assert np.array_equal(m.layers[1].mlp.down_proj.weight.detach().numpy(), qt.dequantize())
    assert q.tensors["embed_tokens.weight"].fmt.name == "q8_0"  # tied: the output's format
    assert m.lm_head.weight is m.embed_tokens.weight


@pytest.mark.parametrize("method", ["gptq", "awq", "awq+gptq"])
def test_calibrated_methods_beat_rtn_on_layer_output(method):
    tokens = torch.as_tensor(calib(seed=1))
    ref = model()
    with torch.no_grad():
        want = ref(tokens)
    errs = {}
    for meth in ("rtn", method):
        m = model()
        quantize(m, load_recipe("q4_0", method=meth), calib())
        with torch.no_grad():
            errs[meth] = float(((m(tokens) - want) ** 2).mean())
    assert errs[method] < errs["rtn"]


def test_w8a8_smoothquant_records_static_scales():
    # the stage's static-int8 path as the w8a8 preset was before it became edge.quant.w8a8's scheme
    m = model()
    q = quantize(m, recipe_from_dict({"base": "w8a8", "method": "rtn", "smoothquant": 0.5}, "w8a8_sq"), calib())
    assert [r["qkv"] for r in q.info["rescale"]] == [{"alpha": 0.5}] * 2
    assert len(q.act_scales) == 2 * 7 and all(s > 0 for s in q.act_scales.values())
    with torch.no_grad():
        assert torch.isfinite(m(torch.as_tensor(calib(1, 16)))).all()


def test_gguf_export_loads_in_llamacpp_and_matches(tmp_path, source_gguf):
    from edge.export.gguf import _row_perm, export_gguf
    from edge.runtime.llamacpp import LlamaCppRunner

    # GPTQ Q4_0 linears; the 49152-row tied head in f16 keeps the test fast (and covers f16)
    recipe = recipe_from_dict({"base": "q4_0", "weights": {"output": "f16"}}, "t")
    m = model(vocab_size=GGUF_VOCAB)
    q = quantize(m, recipe, calib())
    path = export_gguf(m, q, tmp_path / "tiny.gguf", tokenizer_gguf=source_gguf, provenance={"test": 1})
    # gguf-py reads back exactly our blocks; our loader gets exactly the quantized weights
    r = gguf.GGUFReader(str(path))
    t = {x.name: x for x in r.tensors}
    assert t["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert np.array_equal(np.asarray(t["blk.0.ffn_up.weight"].data).reshape(-1),
                          q.tensors["layers.0.mlp.up_proj.weight"].gguf_bytes().reshape(-1))
    codes = q.tensors["layers.1.self_attn.k_proj.weight"]
    perm = _row_perm(codes.shape[0], 2)  # llama.cpp's interleaved-RoPE row order
    assert np.array_equal(gguf.quants.dequantize(t["blk.1.attn_k.weight"].data, gguf.GGMLQuantizationType.Q4_0)
                          .reshape(codes.shape), codes.dequantize()[perm])
    assert "gptq" in r.fields["edge.recipe"].contents()
    assert t["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert len(r.fields["tokenizer.ggml.tokens"].data) == GGUF_VOCAB
    assert r.fields["tokenizer.chat_template"].contents().startswith("{%")
    # llama.cpp runs it; its logits follow the torch model of the same weights (llama.cpp rounds
    # activations to 8 bits inside Q4_0 dot products, so not exactly)
    toks = [1, 504, 2000, 33, 1207, 9, 77, 401]
    got = LlamaCppRunner(path, n_ctx=64, n_threads=1, kv_type="f32").logits(toks)
    with torch.no_grad():
        want = m(torch.tensor([toks]))[0].numpy()
    cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cos.min() > 0.99966  # measured 0.99972; 20% on 1 - cos
    # deterministic bytes
    m2 = model(vocab_size=GGUF_VOCAB)
    q2 = quantize(m2, recipe, calib())
    path2 = export_gguf(m2, q2, tmp_path / "again.gguf", tokenizer_gguf=source_gguf, provenance={"test": 1})
    assert path.read_bytes() == path2.read_bytes()


def test_f32_export_matches_torch(tmp_path, source_gguf):
    from edge.export.gguf import export_gguf
    from edge.runtime.llamacpp import LlamaCppRunner

    m = model(seed=3, vocab_size=GGUF_VOCAB)
    path = export_gguf(m, None, tmp_path / "f32.gguf", tokenizer_gguf=source_gguf)
    toks = [1, 5, 900, 33, 12]
    got = LlamaCppRunner(path, n_ctx=64, n_threads=1, kv_type="f32").logits(toks)
    with torch.no_grad():
        want = m(torch.tensor([toks]))[0].numpy()
    assert np.abs(got - want).max() < 1e-3


# ---- bad input: one line, a subclass of EdgeError ------------------------------------------------

def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


def test_group_size_not_dividing_names_tensor(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("base: w4a16\nweights: {linear: int4_g128}\n")
    with pytest.raises(ConfigError) as e:
        quantize(model(), load_recipe(p), calib())
    assert "layers.0.self_attn.q_proj.weight' has shape (64, 64)" in _one_line(e)


@pytest.mark.parametrize("bad,match", [(None, "no calibration data"), (np.zeros((0, 8), dtype=np.int64), "shape"),
                                       (np.full((2, 8), VOCAB + 5), "token ids must be in")])
def test_missing_or_empty_calibration(bad, match):
    with pytest.raises(ConfigError, match=match) as e:
        quantize(model(), "q4_0", bad)
    _one_line(e)


def test_nan_weight_and_nan_activation_name_the_layer():
    m = model()
    with torch.no_grad():
        m.layers[1].mlp.up_proj.weight[3, 4] = float("nan")
    with pytest.raises(EdgeError, match=r"layers.1.mlp.up_proj.weight") as e:
        quantize(m, "q4_0", calib())
    _one_line(e)
    m = model()
    with torch.no_grad():
        m.layers[0].post_attention_layernorm.weight[0] = float("inf")
    with pytest.raises(EdgeError, match=r"MLP input of layer 0.*NaN or Inf") as e:
        quantize(m, "q4_0", calib())
    _one_line(e)
