"""SmoothQuant (Xiao et al., 2022): move activation outliers into the weights before W8A8.

For a group of linears reading the same input X (cols channels), per channel j:
``s_j = max|X_j|^alpha / max|W_:j|^(1-alpha)``; X is divided by s (folded into the producer: an
RMSNorm's weight, or the rows of the linear that produced X) and W's columns multiplied by s, so
the float model is unchanged and X's range is flatter for a per-tensor int8 scale.

    s = smooth_scales(act_absmax, [q, k, v], alpha=0.5)
    fold_input_scale(layer.input_layernorm, [q, k, v], s)

``fold_input_scale`` is also how AWQ applies its scales.
"""

from __future__ import annotations

import torch
from torch import nn


def smooth_scales(act_absmax: torch.Tensor, linears: list[nn.Linear], alpha: float) -> torch.Tensor:
    """Per-input-channel scales (cols,) for SmoothQuant migration strength ``alpha``."""
    w_absmax = torch.stack([m.weight.detach().abs().amax(0) for m in linears]).amax(0).float()
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def fold_input_scale(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """Divide the producer's output channels by s and multiply the consumers' input columns by s.

    prev: an RMSNorm (weight (cols,)) or an nn.Linear whose output rows feed the linears.
    """
    s = s.to(prev.weight.dtype)
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s[:, None])
        if prev.bias is not None:
            prev.bias.div_(s)
    else:  # an RMSNorm scaling by (offset + weight): Gemma's offset 1 stays outside the division
        off = getattr(prev, "offset", 0.0)
        prev.weight.copy_((prev.weight + off) / s - off)
    for m in linears:
        m.weight.mul_(s[None, :].to(m.weight.dtype))
