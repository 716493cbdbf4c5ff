"""The ONNX and .pte exporters on the newer architectures' features, against our reference model
(itself checked against transformers in tests/model/test_archs.py): Qwen3 (q/k norms) and Gemma 3
(norm offset, post-norms, GeGLU, embedding scale, attention scale, sliding layers with their own
RoPE base, linear RoPE scaling, logit softcap), plus Phi-3's partial rotary and SmolLM3's NoPE
layers on ONNX. Prefill then token-by-token decode, past the 5-token window; tolerances as in
test_export_onnx.py / test_export_pte.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tinymodels import TOKENS, tiny_arch


def decode_logits(r, n_prompt=3):
    first = r.prefill(TOKENS[:n_prompt])
    return np.concatenate([first] + [r.step(t, n_prompt + i)[None] for i, t in enumerate(TOKENS[n_prompt:])])


@pytest.mark.parametrize("name", ["qwen3", "gemma3", "phi3", "smollm3", "mistral-sliding", "qwen3-moe", "qwen2-moe"])
@pytest.mark.parametrize("dtype,atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_onnx_matches_reference(tmp_path, name, dtype, atol):
    from edge.export.onnx import OnnxConfig, export_onnx, rope_tables
    from edge.runtime.eager import TorchRunner
    from edge.runtime.onnxruntime import OnnxRunner

    m = tiny_arch(name)
    cfg = OnnxConfig(dtype=dtype, max_seq=32)
    res = export_onnx(m, tmp_path, cfg)
    r = OnnxRunner(tmp_path, res.layout, *rope_tables(m, cfg.max_seq))
    ref = TorchRunner(m).logits(TOKENS)
    got = decode_logits(r)
    print(f"{name} {dtype}: max |logit diff| {np.abs(got - ref).max():.2e}")
    np.testing.assert_allclose(got, ref, atol=atol)


@pytest.mark.parametrize("name", ["qwen3", "gemma3"])
def test_onnx_opset11_fixed_shapes(tmp_path, name):
    """The NPU toolchains' form (opset 11, T fixed at 32, the TorchScript exporter): GeGLU's tanh-GELU,
    the mask channels and RoPE blocks slice and decompose there too (measured 1.7e-6 / 2.3e-6)."""
    import onnx

    from edge.export.onnx import OnnxConfig, export_onnx, rope_tables
    from edge.runtime.eager import TorchRunner
    from edge.runtime.onnxruntime import OnnxRunner

    m = tiny_arch(name)
    res = export_onnx(m, tmp_path, OnnxConfig(max_seq=32, format="onnx-opset11"))
    mp = onnx.load(str(tmp_path / res.files[0]))
    assert max(o.version for o in mp.opset_import if o.domain == "") <= 11
    r = OnnxRunner(tmp_path, res.layout, *rope_tables(m, 32))
    np.testing.assert_allclose(decode_logits(r), TorchRunner(m).logits(TOKENS), atol=1e-4)


@pytest.mark.parametrize("name", ["qwen3", "gemma3", "qwen3-moe", "qwen2-moe"])
def test_pte_matches_reference(tmp_path, name):
    """fp32 .pte against the reference; the MoE ones run every expert on every token (no sparse kernel)."""
    from edge.export.executorch import PteConfig, export_pte
    from edge.runtime.eager import TorchRunner
    from edge.runtime.executorch import PteRunner

    m = tiny_arch(name)
    export_pte(m, tmp_path / "m.pte", PteConfig(max_seq=32))
    got = decode_logits(PteRunner(tmp_path / "m.pte"))
    ref = TorchRunner(m).logits(TOKENS)
    print(f"{name} pte: max |logit diff| {np.abs(got - ref).max():.2e}")
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("name, rewrite", [("qwen3", "rotate"), ("gemma3", "smooth")])
def test_w8a8_rewrites_leave_the_float_model_unchanged(name, rewrite):
    """The residual rotation passes Qwen3's q/k norms (they see the same q and k); SmoothQuant's
    scales fold exactly into Gemma's (1 + w) norms. Before any rounding the logits are the same."""
    import copy

    from edge.quant.w8a8 import rotate_model, smooth_groups

    m = tiny_arch(name)
    r = copy.deepcopy(m)
    if rewrite == "rotate":
        rotate_model(r)
    else:
        smooth_groups(r, np.random.default_rng(0).integers(0, 256, (4, 16)), 0.8, ("qkv", "gate_up", "down"))
        assert not torch.allclose(r.layers[0].input_layernorm.weight, m.layers[0].input_layernorm.weight)
    x = torch.tensor([TOKENS])
    with torch.no_grad():
        assert (r(x) - m(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name, scheme, top1, max_diff", [
    # random weights and calibration tokens; measured top-1 9 / 10 of 12, max |diff| 0.61 / 0.46:
    # bounds 20% off. Gemma's post-norms take SmoothQuant where Qwen3 takes the rotation
    ("qwen3", {"rotate": True, "alpha": 0.8}, 8, 0.73),
    ("gemma3", {"rotate": False, "alpha": 0.8}, 8, 0.55),
])
def test_onnx_qdq_w8a8(tmp_path, name, scheme, top1, max_diff):
    from edge.export.onnx import OnnxConfig, export_onnx, rope_tables
    from edge.runtime.eager import TorchRunner
    from edge.runtime.onnxruntime import OnnxRunner

    m = tiny_arch(name)
    calib = np.random.default_rng(0).integers(0, 256, (8, 32))
    res = export_onnx(m, tmp_path, OnnxConfig(dtype="qdq-w8a8", max_seq=32), calib_tokens=calib)
    assert {k: res.precision["scheme"][k] for k in scheme} == scheme
    got = OnnxRunner(tmp_path, res.layout, *rope_tables(m, 32)).logits(TOKENS)
    ref = TorchRunner(m).logits(TOKENS)
    assert (got.argmax(-1) == ref.argmax(-1)).sum() >= top1 and np.abs(got - ref).max() < max_diff


@pytest.mark.parametrize("name, top1, max_diff", [
    # GPTQ int4/int8 weights and uint16 activations on random weights; measured top-1 9 / 11 of 12,
    # max |diff| 0.59 / 0.53: bounds 20% off
    ("gemma3", 8, 0.71),
    ("qwen3", 9, 0.64),
])
def test_onnx_qdq_w4a16(tmp_path, name, top1, max_diff):
    """The w4a16 writer (GPTQ through the quantizer's layer walk, then ORT's QDQ pass) on q/k norms,
    Gemma's (1 + w) post-norms and its sliding layers."""
    from edge.export.onnx import OnnxConfig, export_onnx, rope_tables
    from edge.runtime.eager import TorchRunner
    from edge.runtime.onnxruntime import OnnxRunner

    m = tiny_arch(name)
    calib = np.random.default_rng(0).integers(0, 256, (8, 32))
    res = export_onnx(m, tmp_path, OnnxConfig(dtype="qdq-w4a16", max_seq=64, format="onnx-qdq"), calib_tokens=calib)
    got = OnnxRunner(tmp_path, res.layout, *rope_tables(m, 64)).logits(TOKENS)
    ref = TorchRunner(m).logits(TOKENS)
    assert (got.argmax(-1) == ref.argmax(-1)).sum() >= top1 and np.abs(got - ref).max() < max_diff
