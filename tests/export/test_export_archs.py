"""The ONNX and .pte exporters on the newer architectures' features, against our reference model
(itself checked against transformers in tests/model/test_archs.py): Qwen3 (q/k norms) and Gemma 3
(norm offset, post-norms, GeGLU, embedding scale, attention scale, sliding layers with their own
RoPE base, linear RoPE scaling, logit softcap), plus Phi-3's partial rotary and SmolLM3's NoPE
layers on ONNX. Prefill then token-by-token decode, past the 5-token window; tolerances as in
test_export_onnx.py / test_export_pte.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tinymodels import TOKENS, tiny_arch

torch = pytest.importorskip("torch")


def decode_logits(r, n_prompt=3):
    first = r.prefill(TOKENS[:n_prompt])
    return np.concatenate([first] + [r.step(t, n_prompt + i)[None] for i, t in enumerate(TOKENS[n_prompt:])])


@pytest.mark.parametrize("name", ["qwen3", "gemma3", "phi3", "smollm3", "mistral-sliding"])
@pytest.mark.parametrize("dtype,atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_onnx_matches_reference(tmp_path, name, dtype, atol):
    pytest.importorskip("onnxruntime")
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
def test_pte_matches_reference(tmp_path, name):
    pytest.importorskip("executorch")
    from edge.export.executorch import PteConfig, export_pte
    from edge.runtime.eager import TorchRunner
    from edge.runtime.executorch import PteRunner

    m = tiny_arch(name)
    export_pte(m, tmp_path / "m.pte", PteConfig(max_seq=32))
    got = decode_logits(PteRunner(tmp_path / "m.pte"))
    ref = TorchRunner(m).logits(TOKENS)
    print(f"{name} pte: max |logit diff| {np.abs(got - ref).max():.2e}")
    np.testing.assert_allclose(got, ref, atol=1e-4)
