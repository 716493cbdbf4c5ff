"""The ONNX runner computes int8 QDQ graphs exactly, whatever the host's instruction set: on x86-64
with AVX2 and no VNNI, ONNX Runtime's fused uint8 x int8 kernels saturate adjacent-pair sums at int16
(VPMADDUBSW), so a package's accuracy would depend on the machine that measured it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edge.runtime.onnxruntime import session_options

K, N = 64, 8


def qdq_matmul(x_type: int) -> tuple[bytes, np.ndarray]:
    """x -> QuantizeLinear/DequantizeLinear (scale 1, zero point 0) -> MatMul by int8 weights
    (DequantizeLinear, scale 1): the shape the W8A8 writer gives every linear."""
    w = np.random.default_rng(0).integers(100, 128, (K, N)).astype(np.int8)
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
         helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
         helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"]),
         helper.make_node("MatMul", ["xd", "wd"], ["y"])], "qdq_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, N])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "xs"), helper.make_tensor("xz", x_type, [], [0]),
         numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.array(1.0, np.float32), "ws"),
         numpy_helper.from_array(np.array(0, np.int8), "wz")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString(), w


def test_w8a8_sessions_compute_int8_matmuls_exactly():
    """Codes 255 x (100..127): every adjacent pair of products passes int16 (2 x 255 x 127 = 64770);
    the exact int32 sums (up to 2.07e6) are integers a float32 holds exactly, so the bound is 0."""
    mb, w = qdq_matmul(TensorProto.UINT8)
    x = np.full((4, K), 255.0, np.float32)
    exact = x.astype(np.int64) @ w.astype(np.int64)
    sess = ort.InferenceSession(mb, session_options(ort, {"dtype": "qdq-w8a8"}), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    assert np.array_equal(y, exact.astype(np.float32)), np.abs(y - exact).max()


def entry(opts, key: str) -> str | None:
    try:
        return opts.get_session_config_entry(key)
    except RuntimeError:  # ONNX Runtime: "SessionOptions does not have configuration with key"
        return None


def test_fused_kernels_only_when_asked():
    """fused_qdq keeps ONNX Runtime's fused int8 kernels (host speed benchmarks); graphs that are not
    int8 QDQ get no entry, and the graph's own entries are kept either way."""
    layout = {"dtype": "qdq-w8a8", "session_config": {"session.qdq_matmulnbits_accuracy_level": "0"}}
    ref, fused = session_options(ort, layout), session_options(ort, layout, fused_qdq=True)
    assert entry(ref, "session.disable_quant_qdq") == "1" and entry(fused, "session.disable_quant_qdq") is None
    assert entry(ref, "session.qdq_matmulnbits_accuracy_level") == entry(fused, "session.qdq_matmulnbits_accuracy_level") == "0"
    for dtype in ("fp32", "qdq-w4a16"):
        assert entry(session_options(ort, {"dtype": dtype}), "session.disable_quant_qdq") is None
