"""Quantization: recipes (configs.py), tensor math (primitives.py), GPTQ, AWQ, SmoothQuant,
sensitivity analysis, and the stage ``quantize(model, recipe, calib)`` (quantize.py).

    from edge.quant import load_recipe, quantize
    q = quantize(model, load_recipe("q4_0"), calib_tokens)   # QuantizedModel
"""

from __future__ import annotations

from edge.quant.configs import PRESETS, QuantRecipe, load_recipe

__all__ = ["PRESETS", "QuantRecipe", "load_recipe", "quantize"]


def quantize(*args, **kwargs):
    """edge.quant.quantize.quantize, imported lazily (it needs torch)."""
    from edge.quant.quantize import quantize as _quantize

    return _quantize(*args, **kwargs)
