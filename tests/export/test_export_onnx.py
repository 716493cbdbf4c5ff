"""The ONNX exporter against torch: fp32/fp16 prefill + decode, opset 11 fixed shapes split into
parts, QDQ W8A8 on the weight MatMuls only, and the graph-size error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tinymodels import TOKENS, tiny_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


def run(model, out, cfg, **kw):
    from edge.export.onnx import export_onnx, rope_tables
    from edge.runtime.onnxruntime import OnnxRunner

    res = export_onnx(model, out, cfg, **kw)
    cos, sin = rope_tables(model, cfg.max_seq)
    return res, OnnxRunner(out, res.layout, cos, sin)


def decode_logits(r, n_prompt=5):
    first = r.prefill(TOKENS[:n_prompt])
    return np.concatenate([first] + [r.step(t, n_prompt + i)[None] for i, t in enumerate(TOKENS[n_prompt:])])


@pytest.mark.parametrize("dtype,atol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_prefill_and_decode_match_torch(tiny, tmp_path, dtype, atol):
    from edge.export.onnx import OnnxConfig
    from edge.runtime.eager import TorchRunner

    res, r = run(tiny, tmp_path, OnnxConfig(dtype=dtype, max_seq=32))
    assert res.files == ["model.onnx"]
    ref = TorchRunner(tiny).logits(TOKENS)
    np.testing.assert_allclose(decode_logits(r), ref, atol=atol)
    assert r.generate(TOKENS[:4], 6) == TorchRunner(tiny).generate(TOKENS[:4], 6)
    assert len(r.generate(TOKENS[:4], 100)) == 32 - 4 + 1  # until the 32-slot cache is full, then the last pick


def test_graph_names_no_file_of_the_exporting_machine(tiny, tmp_path):
    """torch.onnx stores Python stack traces (this checkout's paths) in node metadata; the writer drops
    them so the same model gives the same bytes from any checkout."""
    import onnx

    import edge
    from edge.export.onnx import OnnxConfig

    run(tiny, tmp_path, OnnxConfig(max_seq=32))
    data = (tmp_path / "model.onnx").read_bytes()
    assert str(Path(edge.__file__).parent).encode() not in data and str(Path(torch.__file__).parent).encode() not in data
    mp = onnx.load(str(tmp_path / "model.onnx"))
    assert any(p.key == "namespace" for n in mp.graph.node for p in n.metadata_props)  # module scopes stay


def test_opset11_fixed_shapes_split_by_size(tiny, tmp_path):
    import onnx

    from edge.export.onnx import OnnxConfig
    from edge.runtime.eager import TorchRunner

    # ~215 KB for the embedding + one layer: a 300 KB limit forces one part per layer
    res, r = run(tiny, tmp_path, OnnxConfig(max_seq=32, format="onnx-opset11", max_graph_bytes=300_000))
    assert res.files == ["model.part0.onnx", "model.part1.onnx"] and "split into 2 parts" in res.parts_reason
    for f in res.files:
        mp = onnx.load(str(tmp_path / f))
        assert mp.ir_version <= 7 and max(o.version for o in mp.opset_import if o.domain == "") <= 11
        assert all(d.dim_value for i in mp.graph.input for d in i.type.tensor_type.shape.dim)  # static
    np.testing.assert_allclose(decode_logits(r, 7), TorchRunner(tiny).logits(TOKENS), atol=1e-4)


def test_graph_over_the_size_limit_names_the_layer(tiny, tmp_path):
    from edge.errors import EdgeError
    from edge.export.onnx import OnnxConfig, export_onnx

    with pytest.raises(EdgeError, match=r"layer 0 alone needs [\d,]+ bytes, over the graph limit of 1,000"):
        export_onnx(tiny, tmp_path, OnnxConfig(max_seq=32, max_graph_bytes=1000))
    assert not list(tmp_path.iterdir())


def test_qdq_w8a8_quantizes_only_weight_matmuls(tiny, tmp_path):
    import onnx

    from edge.export.onnx import OnnxConfig
    from edge.runtime.eager import TorchRunner

    calib = np.random.default_rng(0).integers(0, 256, (8, 16))
    res, r = run(tiny, tmp_path, OnnxConfig(dtype="qdq-w8a8", max_seq=32), calib_tokens=calib)
    assert res.quantized_matmuls == 14  # 7 linears x 2 layers; the tied lm_head reads a Transpose, stays float
    ops = [n.op_type for n in onnx.load(str(tmp_path / "model.onnx")).graph.node]
    assert ops.count("DequantizeLinear") == 14 + 8 and ops.count("QuantizeLinear") == 8 and "Softmax" in ops
    got, ref = r.logits(TOKENS), TorchRunner(tiny).logits(TOKENS)
    # random weights and random calibration tokens; measured top-1 10 of 12, max |diff| 1.03 (of logits up
    # to 2.78): bound 20% above. Built-in figures: docs/export.md
    assert (got.argmax(-1) == ref.argmax(-1)).sum() >= 10 and np.abs(got - ref).max() < 1.25


def test_qdq_needs_calibration(tiny, tmp_path):
    from edge.errors import ConfigError
    from edge.export.onnx import OnnxConfig, export_onnx

    with pytest.raises(ConfigError, match="calibration tokens"):
        export_onnx(tiny, tmp_path, OnnxConfig(dtype="qdq-w8a8", max_seq=32))


def test_smoothing_and_row_scaling_leave_the_float_model_unchanged(tiny):
    """SmoothQuant folded into the norms / up_proj rows and the per-row weight scaling that stands in
    for opset 11's missing per-channel axis are exact rewrites before any rounding."""
    import copy

    from edge.export.onnx import RowScaledLinear
    from edge.quant.w8a8 import smooth_groups

    m = copy.deepcopy(tiny)
    before = m.layers[0].mlp.up_proj.weight.clone()
    smooth_groups(m, np.random.default_rng(0).integers(0, 256, (4, 16)), 0.8, ("qkv", "gate_up", "down"))
    assert not torch.allclose(before, m.layers[0].mlp.up_proj.weight)
    mlp = m.layers[0].mlp
    row = RowScaledLinear(mlp.down_proj)
    assert torch.allclose(row.weight.abs().amax(1), torch.ones(64))  # every row's max is 1: one int8 scale fits all
    mlp.down_proj = row
    x = torch.tensor([TOKENS])
    with torch.no_grad():
        assert torch.allclose(m(x), tiny(x), atol=1e-4)


def test_exporter_warnings_are_recorded_not_dropped(tmp_path):
    """A warning raised while the graph is traced reaches the export record (the manifest's artifact
    entry), once per distinct message with its count, instead of being filtered out."""
    import warnings

    from edge.export.onnx import OnnxConfig, export_onnx

    m = tiny_model()
    def warn(mod, args):
        warnings.warn("edge test: layer 1 traced", UserWarning, stacklevel=2)

    m.layers[1].mlp.register_forward_pre_hook(warn)
    res = export_onnx(m, tmp_path, OnnxConfig(max_seq=32))
    got = [w for w in res.to_dict()["warnings"] if "edge test" in w]
    assert len(got) == 1 and got[0].startswith("UserWarning: edge test: layer 1 traced"), res.warnings
