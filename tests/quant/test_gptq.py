"""GPTQ variants on small tensors and a tiny random model: asymmetric calibration, dynamic groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.quant.configs import GPTQConfig, recipe_from_dict
from edge.quant.gptq import asym_target, gptq_quantize, hessian_accumulate
from edge.quant.primitives import FORMATS, rtn
from edge.quant.quantize import quantize
from tests.tinymodels import tiny_model


def _layer_err(w, w_hat, x):
    return float(((x @ (w - w_hat).T) ** 2).sum())


def test_asym_target_is_w_when_inputs_agree_and_fits_float_output_otherwise():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    xq = torch.randn(512, 64, generator=g)
    h = hessian_accumulate(None, xq)
    assert torch.allclose(asym_target(w, h, h, 1e-6), w, atol=1e-3)
    xf = xq + 0.1 * torch.randn(512, 64, generator=g)  # the float model's inputs differ
    wt = asym_target(w, h, (xf.T @ xq).double(), 1e-6)
    want = xf @ w.T
    assert ((xq @ wt.T - want) ** 2).sum() < ((xq @ w.T - want) ** 2).sum()


@pytest.mark.parametrize("cfg", [GPTQConfig(), GPTQConfig(act_order=False, static_groups=False),
                                 GPTQConfig(act_order=False)])
def test_gptq_variants_beat_rtn_on_layer_output(cfg):
    g = torch.Generator().manual_seed(1)
    mix = torch.eye(128) + 0.5 * torch.randn(128, 128, generator=g) / 128 ** 0.5  # correlated channels,
    x = (torch.randn(1024, 128, generator=g) @ mix) * torch.linspace(0.2, 3, 128)  # uneven scales
    w = torch.randn(32, 128, generator=g)
    h = hessian_accumulate(None, x)
    fmt = FORMATS["q4_0"]
    qt, w_hat = gptq_quantize(w, h, fmt, cfg)
    assert np.array_equal(qt.dequantize(), w_hat.numpy())  # the returned weights are the stored codes
    assert qt.codes.min() >= fmt.qmin and qt.codes.max() <= fmt.qmax
    assert _layer_err(w, w_hat, x) < 0.9 * _layer_err(w, torch.from_numpy(rtn(w, fmt).dequantize()), x)


def test_asym_gptq_beats_plain_gptq_on_model_output():
    vocab = 256
    calib = np.random.default_rng(0).integers(0, vocab, size=(32, 64))  # asym needs tokens >> dims
    tokens = torch.as_tensor(np.random.default_rng(1).integers(0, vocab, size=(2, 64)))
    with torch.no_grad():
        want = tiny_model(0, max_seq_len=128)(tokens)
    errs = {}
    for name, doc in {"rtn": {"base": "q4_0", "method": "rtn"}, "gptq": {"base": "q4_0", "gptq": {"asym": False}},
                      "asym": {"base": "q4_0", "gptq": {"asym": True}}}.items():
        m = tiny_model(0, max_seq_len=128)
        quantize(m, recipe_from_dict(doc, name), calib)
        with torch.no_grad():
            errs[name] = float(((m(tokens) - want) ** 2).mean())
    assert errs["asym"] < errs["gptq"] < errs["rtn"]
