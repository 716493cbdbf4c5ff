"""Our block quantizers against gguf-py's reference quantizers (themselves bit-exact with libggml)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from edge.errors import ConfigError
from edge.quant.primitives import (
    FORMATS,
    check_shape,
    pack_gguf,
    quantize_with_params,
    rtn,
    search_params,
    unpack_gguf,
)

GGML = {"q4_0": gguf.GGMLQuantizationType.Q4_0, "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "q5_0": gguf.GGMLQuantizationType.Q5_0}


def weights(seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((48, 128)) * 0.05).astype(np.float32)
    w[0, :32] = 0  # an all-zero block (d = 0)
    w[1, 5] = 0.4  # an outlier
    w[2, :32] = np.linspace(-1, 1, 32)  # exact ties with the grid
    w[3, :32] = -w[3, :32].max()  # a constant block
    return w


@pytest.mark.parametrize("name", list(GGML))
def test_rtn_bit_exact_with_gguf_py(name):
    w = weights()
    ours = rtn(w, FORMATS[name])
    ref = gguf.quants.quantize(w, GGML[name])
    assert np.array_equal(ours.gguf_bytes(), ref)
    assert np.array_equal(ours.dequantize(), gguf.quants.dequantize(ref, GGML[name]))
    back = unpack_gguf(ref, FORMATS[name], w.shape)
    assert np.array_equal(back.codes, ours.codes) and np.array_equal(back.scales, ours.scales)


@pytest.mark.parametrize("name", list(GGML))
def test_searched_scales_pack_to_what_ggml_dequantizes(name):
    w = torch.from_numpy(weights(1))
    d, z = search_params(w, FORMATS[name])
    qt = quantize_with_params(w, d, z, FORMATS[name])
    assert np.array_equal(gguf.quants.dequantize(pack_gguf(qt), GGML[name]), qt.dequantize())
    err = ((qt.dequantize() - w.numpy()) ** 2).sum()
    assert err <= ((rtn(w.numpy(), FORMATS[name]).dequantize() - w.numpy()) ** 2).sum()


def test_int4_symmetric_and_8da4w_layout():
    w = torch.from_numpy(weights())
    qt = rtn(w, FORMATS["int4_g32"])
    q, s, z = qt.to_8da4w()
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7 and s.shape == (48, 4) and not z.any()
    assert np.abs(qt.dequantize() - w.numpy()).max() <= s.max() / 2 + 1e-6
    asym = rtn(w, FORMATS["int4_g64_asym"])
    assert asym.codes.min() >= 0 and asym.codes.max() <= 15


def test_group_size_must_divide_rows():
    with pytest.raises(ConfigError, match=r"'layers.0.mlp.down_proj.weight' has shape \(64, 96\).*int4_g64"):
        check_shape("layers.0.mlp.down_proj.weight", (64, 96), FORMATS["int4_g64"])
