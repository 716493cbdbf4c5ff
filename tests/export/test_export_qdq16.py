"""w4a16 QDQ ONNX (edge.export.qdq16) on a tiny random model: the graph's form, ONNX Runtime's CPU run,
and the same graph on Qualcomm's emulated HTP (onnxruntime-qnn) with the CPU fallback disabled."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.tinymodels import tiny_model

CALIB = np.random.default_rng(0).integers(0, 256, (8, 32))  # 8 prefills of one 32-token call each


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edge.export.onnx import OnnxConfig, export_onnx, rope_tables

    out = tmp_path_factory.mktemp("w4a16")
    m = tiny_model()
    res = export_onnx(m, out, OnnxConfig(dtype="qdq-w4a16", max_seq=64, format="onnx-qdq"), calib_tokens=CALIB)
    cos, sin = rope_tables(m, 64)
    return m, out, res, cos, sin


def test_graph_has_int4_blocked_weights_and_uint16_activations(exported):
    from onnx import TensorProto, numpy_helper

    m, out, res, _, _ = exported
    assert res.files == ["model.onnx"] and res.layout["opset"] == 21 and res.layout["fixed_seq"] == 32
    mp = onnx.load(str(out / "model.onnx"))
    inits = {i.name: i for i in mp.graph.initializer}
    producer = {o: n for n in mp.graph.node for o in n.output}
    weight_dq = [producer[n.input[1]] for n in mp.graph.node
                 if n.op_type == "MatMul" and n.input[1] in producer and producer[n.input[1]].input[0] in inits]
    int4 = [d for d in weight_dq if inits[d.input[0]].data_type == TensorProto.INT4]
    # q, o, gate at int4 (GPTQ g64 codes); k, v, up, down and the tied lm_head at int8 per channel
    assert len(int4) == 6 and res.quantized_matmuls == 15
    assert res.layout["weights"]["matmuls"] == {"int4_g64": 6, "int8": 9}
    assert res.layout["weights"]["recipe"]["weights"]["ffn_down"] == "int8"
    for d in int4:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in d.attribute}
        assert attrs == {"axis": 0, "block_size": 64}
        k, n = inits[d.input[0]].dims
        assert numpy_helper.to_array(inits[d.input[1]]).shape == (k // 64, n)
    # every activation quantized to 16 bits: no 8-bit activation Q/DQ anywhere
    act_q = [n for n in mp.graph.node if n.op_type == "QuantizeLinear"]
    assert act_q and all(inits[n.input[2]].data_type == TensorProto.UINT16 for n in act_q)
    assert not any(n.op_type == "Reciprocal" for n in mp.graph.node)  # the HTP's 16-bit Reciprocal is wrong


def test_cpu_run_tracks_the_float_model(exported):
    from edge.runtime.eager import TorchRunner
    from edge.runtime.onnxruntime import OnnxRunner

    m, out, res, cos, sin = exported
    toks = [int(t) for t in np.random.default_rng(1).integers(0, 256, 40)]
    cpu = OnnxRunner(out, res.layout, cos, sin).logits(toks)
    ref = TorchRunner(m).logits(toks)
    # int4 weights on a random model with one group per 64-wide row: coarse, but the same distribution
    assert np.corrcoef(cpu.ravel(), ref.ravel())[0, 1] > 0.969  # measured 0.974; 20% on 1 - corr


def test_activation_ranges_cover_every_calibration_prefill(exported, tmp_path):
    """MinMax means the min and max over all the calibration prefills: each uint16 QuantizeLinear's range
    holds what its tensor takes on every one of them (run in float: the same graph with the activation
    Q/DQ pairs made Identity, weights still dequantized). ORT's CalibMaxIntermediateOutputs dropped the
    buffered feeds unmerged, so only the last few set the scales: on the built-in model they missed the
    first token's outliers (ORT CPU top-1 0.274; 0.891 with every prefill; docs/export.md)."""
    from onnx import numpy_helper

    from edge.runtime.onnxruntime import OnnxRunner

    m, out, res, cos, sin = exported
    mp = onnx.load(str(out / "model.onnx"))
    g = mp.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    qout = {n.output[0] for n in g.node if n.op_type == "QuantizeLinear"}
    ranges = {}  # tensor -> (lowest, highest, step) its uint16 Q/DQ pair represents
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            s, z = float(inits[n.input[1]]), int(inits[n.input[2]])
            ranges[n.input[0]] = (s * (0 - z), s * (65535 - z), s)
        if n.op_type == "QuantizeLinear" or (n.op_type == "DequantizeLinear" and n.input[0] in qout):
            n.op_type = "Identity"
            del n.input[1:], n.attribute[:]
    assert len(ranges) >= 14  # the linears' inputs and outputs of 2 layers and the head
    del g.value_info[:]
    g.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in ranges)
    onnx.save(mp, str(tmp_path / "model.onnx"))
    run = OnnxRunner(tmp_path, res.layout, cos, sin)
    sess = run.sessions[0][0]
    names = [o.name for o in sess.get_outputs()]
    seen: dict[str, tuple[float, float]] = {}

    class Watch:
        def run(self, want, feeds):
            outs = sess.run(want, feeds)
            for k, v in zip(names, outs):
                if k in ranges:
                    lo, hi = seen.get(k, (np.inf, -np.inf))
                    seen[k] = (min(lo, float(v.min())), max(hi, float(v.max())))
            return outs

    run.sessions = [(Watch(), run.sessions[0][1])]
    for row in CALIB:  # each prefill from an empty cache, as the exporter recorded them
        run.cache = [np.zeros_like(c) for c in run.cache]
        run.prefill([int(t) for t in row])
    missed = {}
    for t, (lo, hi, step) in ranges.items():
        a, b = seen[t]
        tol = step + 1e-5 * max(abs(a), abs(b))  # one step (zero point rounding) and float summation order
        if a < lo - tol or b > hi + tol:
            missed[t] = ((round(lo, 4), round(hi, 4)), (round(a, 4), round(b, 4)))
    assert not missed, f"calibrated range vs the tensor's range on the calibration prefills: {missed}"


def test_runs_on_the_emulated_htp_and_agrees_with_onnxruntime_cpu(exported):
    """Both run the same quantized graph; they differ only by the HTP's fixed-point arithmetic inside
    ops: 0.1-0.6% of a tensor's range per quantized op (measured op by op on this model with every op
    at 16 bits; the 16-bit attention matmuls were the largest), compounding to 2.1% of the logits' range
    after 2 layers then; with only the linears quantized (the default) 0.4-0.6%. Bounds: 20% above what
    this test measures, against the range and against the quantization error itself (the CPU run's
    distance from the float model)."""
    pytest.importorskip("onnxruntime_qnn")  # optional: wheels for Linux x86-64 and Windows only
    from edge.runtime.eager import TorchRunner
    from edge.runtime.onnxruntime import OnnxRunner
    from edge.runtime.qnn import QnnHtpRunner

    m, out, res, cos, sin = exported
    toks = [int(t) for t in np.random.default_rng(1).integers(0, 256, 40)]
    # raises if any node would need the CPU. soc_model matters: without it (QNN's default SoC) this graph
    # failed to finalize (QNN_COMMON_ERROR_MEM_ALLOC); with SM8550's it runs
    htp = QnnHtpRunner(out, res.layout, cos, sin, htp_arch="73", soc_model="43")
    sess = htp.sessions[0][0]
    assert sess.get_providers()[0] == "QNNExecutionProvider"
    assert sess.get_session_options().get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    h = htp.logits(toks)
    cpu = OnnxRunner(out, res.layout, cos, sin).logits(toks)
    ref = TorchRunner(m).logits(toks)
    diff = float(np.abs(h - cpu).max())
    # measured on these 40 tokens: 0.56% of the logits' range, 2.0% of the quantization error, the same
    # top-1 everywhere, the decode step 0.50 x the prefill's difference; bounds 20% above
    assert diff <= 0.0067 * float(np.abs(cpu).max())
    assert diff <= 0.024 * float(np.abs(cpu - ref).max())
    assert (h.argmax(-1) == cpu.argmax(-1)).all()
    # decode continues from the prefilled cache on the HTP too
    assert np.abs(htp.step(7, len(toks)) - OnnxRunner(out, res.layout, cos, sin).logits(toks + [7])[-1]).max() <= diff * 0.6


def test_norm_keeps_a_first_token_outlier_on_the_emulated_htp(tmp_path):
    """The HTP runs the norms in fp16: SmolLM2's first token carries ~18,000-23,000 in the residual from
    layer 11 on, whose square is past fp16's 65504 and whose reciprocal is below its smallest normal.
    Computed on x itself the norm's output for that token was 0 on the emulated HTP (top-1 0.008 on the
    built-in model); DivRMSNorm scales each token by its clipped max |x| first."""
    pytest.importorskip("onnxruntime_qnn")  # optional: wheels for Linux x86-64 and Windows only
    import onnxruntime as ort
    import onnxruntime_qnn
    import torch

    from edge.export.qdq16 import DivRMSNorm
    from edge.runtime import qnn

    norm = torch.nn.RMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 64))
    m = DivRMSNorm(norm).eval()
    x = torch.from_numpy(np.random.default_rng(2).normal(0, 2, (1, 4, 64)).astype(np.float32))
    x[0, 0, 3] = 20000.0  # the first token's outlier
    x[0, 2] *= 1e-3  # a quiet token
    path = tmp_path / "norm.onnx"
    with torch.no_grad():
        ep = torch.export.export(m, (x,), strict=False)
        torch.onnx.export(ep, (x,), None, input_names=["x"], output_names=["y"], opset_version=21,
                          dynamo=True, external_data=False).save(str(path))
    assert not any(n.op_type == "Reciprocal" for n in onnx.load(str(path)).graph.node)
    qnn._register(ort)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.add_provider_for_devices([d for d in ort.get_ep_devices() if d.ep_name == qnn.EP],
                                {"backend_path": onnxruntime_qnn.get_qnn_htp_path(), "htp_arch": "73", "soc_model": "43"})
    htp = ort.InferenceSession(str(path), so).run(None, {"x": x.numpy()})[0]
    xd = x.double().numpy()
    ref = xd / np.sqrt((xd * xd).mean(-1, keepdims=True) + 1e-5) * norm.weight.double().detach().numpy()
    err = np.abs(htp - ref).max(-1) / np.abs(ref).max(-1)  # per token, of its own range
    assert err.max() < 0.01, err  # fp16: ~1e-3; the outlier token was all 0 (err 1.0)


def test_qnn_options_come_from_the_target_profile():
    from edge.errors import ConfigError
    from edge.runtime.qnn import qnn_options
    from edge.targets import load_target

    assert qnn_options(load_target("snapdragon-8gen2")) == {"htp_arch": "73", "soc_model": "43"}
    with pytest.raises(ConfigError, match="htp_arch"):
        qnn_options(load_target("horizon-j5"))


def test_snapdragon_default_build_validates_on_cpu_and_emulated_htp(tmp_path):
    """`edge build --target snapdragon-8gen2` (no recipe: w4a16) gives the QDQ package; validate runs it on
    ORT CPU and on the emulated HTP, and compares the two."""
    pytest.importorskip("onnxruntime_qnn")  # optional: wheels for Linux x86-64 and Windows only
    from edge.build import BuildConfig, build_package
    from edge.package import read_manifest
    from edge.runtime.eager import TorchRunner
    from edge.validate import validate
    from tests.tinymodels import tiny_loaded

    lm = tiny_loaded()
    cfg = BuildConfig(max_seq=64, calib_samples=8, calib_seq=32, eval_window=32, eval_windows=2)
    pkg = build_package(lm, "snapdragon-8gen2", None, tmp_path / "pkg", cfg=cfg, progress=lambda s: None)
    m = read_manifest(pkg)
    art = m["artifacts"][0]
    assert (m["recipe"], art["option"], art["device_runtime"]) == ("w4a16", "qdq-w4a16", "qnn-htp")
    assert art["layout"]["weights"]["recipe"]["weights"]["attn_q"] == "int4_g64"  # the recipe is recorded
    rep = validate(pkg, reference=TorchRunner(lm.model).logits)
    checks = {c.name: c for c in rep.checks}
    htp = "model.onnx (qnn-htp, emulated)"
    assert checks[f"{htp}: every node on the HTP (CPU fallback disabled)"].ok
    assert checks[f"{htp}: top1 vs onnxruntime CPU"].ok
    assert f"{htp} vs model.onnx (onnxruntime)" in rep.accuracy
    assert rep.accuracy[htp]["tokens"] == rep.accuracy["model.onnx (onnxruntime)"]["tokens"] == 64
