"""AWQ (Lin et al., 2023): activation-aware per-input-channel scaling searched on calibration data.

Channels that see large activations matter more; scaling their weight columns up by
``s = mean|x|^alpha`` (and the activations down by s, folded into the producer) makes their
rounding error relatively smaller. alpha is searched on a grid to minimise the layer-output error
``tr(dW H dW^T)`` with H = X^T X of the calibration inputs (all tokens, no re-run of the model).

    s = awq_search(linears, H, mean_abs, fmt, AWQConfig())
    fold_input_scale(prev, linears, s)
"""

from __future__ import annotations

import torch
from torch import nn

from edge.quant.configs import AWQConfig
from edge.quant.primitives import Format, default_params, quantize_codes


def _fake_quant(w: torch.Tensor, fmt: Format) -> torch.Tensor:
    rows, cols = w.shape
    g = fmt.group_size(cols)
    d, z = default_params(w, fmt)
    wg = w.reshape(rows, cols // g, g)
    return (d[..., None] * (quantize_codes(wg, d, z, fmt) - z[..., None])).reshape(rows, cols)


@torch.no_grad()
def awq_search(linears: list[nn.Linear], h: torch.Tensor, mean_abs: torch.Tensor, fmts: list[Format],
               cfg: AWQConfig) -> tuple[torch.Tensor, float, float]:
    """Best scales (cols,) for linears sharing one input; returns (s, alpha, relative loss gain)."""
    hf = h.float()
    ws = [m.weight.detach().float() for m in linears]
    best = (None, 0.0, float("inf"))
    base = None
    for k in range(cfg.grid + 1):
        alpha = k / cfg.grid
        s = mean_abs.float().clamp(min=1e-6).pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        loss = 0.0
        for w, fmt in zip(ws, fmts):
            dw = _fake_quant(w * s[None, :], fmt) / s[None, :] - w  # (rows, cols)
            loss += float(((dw @ hf) * dw).sum())
        if k == 0:
            base = loss
        if loss < best[2]:
            best = (s, alpha, loss)
    s, alpha, loss = best
    return s, alpha, (1 - loss / base) if base else 0.0
