"""Mixture-of-experts models through the float ONNX and .pte exporters, against our reference model
(itself checked against transformers in tests/model/test_archs.py): Qwen3-MoE (q/k norms, normalised
top-k) and Qwen2-MoE (raw top-k gates, sigmoid-gated shared expert, q/k/v bias, a dense layer among
MoE layers). The router (softmax, topk, scatter) exports as it is: every expert runs on every token.
Prefill then token-by-token decode (the ONNX and .pte cases sit with the other architectures'
in test_export_archs.py); tolerances as in test_export_onnx.py / test_export_pte.py.
Quantized options refuse MoE models by name in the build check."""

from __future__ import annotations

import pytest

from tests.tinymodels import tiny_arch

MOE = ["qwen3-moe", "qwen2-moe"]


@pytest.mark.parametrize("target, recipe, runtime, refused", [
    ("raspberry-pi-5", "fp32", "executorch-xnnpack", False),
    ("raspberry-pi-5", "q4_0", "llama.cpp", False),
    ("raspberry-pi-5", "8da4w", "executorch-xnnpack", True),
    ("raspberry-pi-5", "w8a8", "executorch-xnnpack", True),
    ("snapdragon-8gen2", "w4a16", "qnn-htp", True),
])
def test_check_takes_float_moe_and_refuses_quantized_by_name(target, recipe, runtime, refused):
    from edge.errors import ConfigError
    from edge.export.check import check
    from edge.targets import load_target
    from tests.tinymodels import tiny_arch_spec

    spec, t = tiny_arch_spec("qwen3-moe"), load_target(target)
    if refused:
        with pytest.raises(ConfigError, match=f"op 'MoE MLP' .*recipe '{recipe}'.*float ONNX .*float .pte .*GGUF"):
            check(spec, t, recipe, runtime)
    else:
        assert check(spec, t, recipe, runtime).option == recipe


def test_simulator_costs_every_expert_for_graphs_that_run_them_all(tmp_path):
    """Our ONNX graph computes every expert on every token; the simulated decode of its package must
    cost that work (n_experts / top_k times the expert FLOPs), not llama.cpp's top-k only."""
    from edge.build import DENSE_EXPERT_WRITERS
    from edge.export.onnx import OnnxConfig, export_onnx
    from edge.model.spec import ModelSpec
    from edge.sim import as_written, forward_cost

    m = tiny_arch("qwen3-moe")
    res = export_onnx(m, tmp_path, OnnxConfig(dtype="fp32", max_seq=32))
    assert "onnx" in DENSE_EXPERT_WRITERS and "gguf" not in DENSE_EXPERT_WRITERS
    spec = ModelSpec.from_dict(m.spec.to_dict())
    topk = as_written("fp32", res.weights)
    dense = as_written("fp32", res.weights | {"experts_per_token": spec.n_experts})
    c_top = forward_cost(spec, topk, new_tokens=1, context=16)
    c_dense = forward_cost(spec, dense, new_tokens=1, context=16)
    one = 2 * 3 * spec.dim * spec.moe_ffn_dim * len(spec.moe_layers)  # one expert's FLOPs a token, all layers
    assert c_dense.flops - c_top.flops == pytest.approx(one * (spec.n_experts - spec.n_experts_per_tok))
    assert c_top.distinct_experts == pytest.approx(spec.n_experts_per_tok)
    assert c_dense.distinct_experts == pytest.approx(spec.n_experts)
