"""Sensitivity analysis and mixed precision under a size budget.

``sensitivity`` measures the KL divergence (to the float model, on calibration tokens) that each
unit causes when it alone is quantized (round-to-nearest) to each candidate format. A unit is a
decoder layer (its 7 linears), a tensor class across all layers, or the output head (= tied
embedding). ``assign_mixed`` then picks one format per unit that fits a byte budget with the least
summed KL (greedy on KL saved per extra byte; KL of separate units is taken as additive, which
holds well for small perturbations).

    rep = sensitivity(model, calib[:4, :256], formats=("q4_0", "q5_0", "q8_0"))
    recipe = assign_mixed(rep, base=load_recipe("q4_0"), budget_bytes=91.7e6 - meta_bytes)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from edge.calib import CalibConfig, token_batches
from edge.errors import ConfigError
from edge.eval import kl_divergence
from edge.model.load import load_model
from edge.quant.configs import CLASS_MODULES, FORMAT_BPW, LINEAR_CLASSES, QuantRecipe, load_recipe
from edge.quant.primitives import check_shape, get_format, rtn


@dataclass
class Sensitivity:
    """kl[unit][format] = mean KL (nats/token) with only that unit quantized; params[unit] = weights."""

    kl: dict[str, dict[str, float]]
    params: dict[str, int]
    formats: tuple[str, ...]
    tokens: int
    base_kl: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"kl": self.kl, "params": self.params, "formats": list(self.formats), "tokens": self.tokens}

    def table(self) -> list[dict]:
        return [{"unit": u, "params": self.params[u], **{f: self.kl[u].get(f, float("nan")) for f in self.formats}}
                for u in self.kl]


def _unit_params(model, unit: str) -> list[tuple[str, nn.Parameter]]:
    params = dict(model.named_parameters())
    if unit == "output":
        return [("lm_head.weight", model.lm_head.weight)]  # the embedding too when tied
    kind, _, rest = unit.partition(".")
    if kind == "layer":
        i = int(rest)
        return [(f"layers.{i}.{CLASS_MODULES[c]}.weight", params[f"layers.{i}.{CLASS_MODULES[c]}.weight"])
                for c in LINEAR_CLASSES if f"layers.{i}.{CLASS_MODULES[c]}.weight" in params]
    if kind == "class":
        return [(f"layers.{i}.{CLASS_MODULES[rest]}.weight", params[f"layers.{i}.{CLASS_MODULES[rest]}.weight"])
                for i in range(model.spec.n_layers)]
    raise ConfigError(f"sensitivity unit '{unit}' is not layer.N, class.NAME or output")


@torch.no_grad()
def sensitivity(model, tokens, formats=("q4_0", "q5_0", "q8_0"), units: str = "layers",
                progress=None, layer_formats: tuple[str, ...] | None = None, kl_stride: int = 1) -> Sensitivity:
    """KL per unit per format. units: "layers" (each decoder layer + output) or "classes".

    ``layer_formats`` restricts the formats tried on layer/class units (the output head gets all
    of ``formats``): each try is a partial forward pass, so fewer tries is proportionally faster.
    ``kl_stride`` scores every k-th position only (the vocabulary projection of a small model costs
    as much as several layers; the layers still run on every position).
    """
    if model.spec.is_moe:
        raise ConfigError("sensitivity analysis of MoE models is not implemented; use a dense model")
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ConfigError(f"sensitivity needs token ids of shape (n, T), got {tuple(tokens.shape)}")
    spec = model.spec
    names = ([f"layer.{i}" for i in range(spec.n_layers)] if units == "layers"
             else [f"class.{c}" for c in LINEAR_CLASSES]) + ["output"]
    for f in formats:
        get_format(f)
    # inputs of every layer, from the float model, so quantizing layer i reruns only layers >= i
    T = tokens.shape[1]
    per_layer = model.no_cache_inputs(T, torch.float32)  # (cos, sin, mask) of each layer
    hs = [model.embed(tokens).float()]
    for layer, inputs in zip(model.layers, per_layer):
        hs.append(layer(hs[-1], *inputs, None))
    ref = model.head(hs[-1][:, ::kl_stride]).float()

    def run_from(start: int) -> torch.Tensor:
        x = model.embed(tokens).float() if start == 0 else hs[start]
        for layer, inputs in zip(model.layers[start:], per_layer[start:]):
            x = layer(x, *inputs, None)
        return model.head(x[:, ::kl_stride])

    kl: dict[str, dict[str, float]] = {}
    params: dict[str, int] = {}
    for k, unit in enumerate(names):
        ps = _unit_params(model, unit)
        params[unit] = sum(p.numel() for _, p in ps)
        if unit.startswith("layer."):
            start = int(unit.split(".")[1])
        else:  # a class spans all layers; a tied head is also the embedding every layer reads
            start = spec.n_layers if unit == "output" and not spec.tie_embeddings else 0
        kl[unit] = {}
        saved = [p.detach().clone() for _, p in ps]
        for f in (formats if unit == "output" or layer_formats is None else layer_formats):
            fmt = get_format(f)
            for (name, p), w in zip(ps, saved):
                check_shape(name, tuple(p.shape), fmt)
                p.copy_(torch.from_numpy(rtn(w.numpy(), fmt).dequantize()))
            kl[unit][f] = float(kl_divergence(ref, run_from(start).float()).mean())
            for (_, p), w in zip(ps, saved):
                p.copy_(w)
        if progress is not None:
            progress(k + 1, len(names))
    return Sensitivity(kl, params, tuple(formats), int(tokens.numel()))


def assign_mixed(sens: Sensitivity, base: QuantRecipe, budget_bytes: float, fixed_bytes: float = 0.0,
                 name: str = "mixed") -> tuple[QuantRecipe, dict]:
    """Cheapest-first greedy: start every unit at its smallest format, then buy the upgrade with
    the most KL saved per extra byte while the weights (+ fixed_bytes) fit in budget_bytes."""
    fmts = sorted(sens.formats, key=lambda f: FORMAT_BPW[f])
    choice = {u: fmts[0] for u in sens.kl}

    def size(u, f):
        return sens.params[u] * FORMAT_BPW[f] / 8

    total = fixed_bytes + sum(size(u, choice[u]) for u in choice)
    if total > budget_bytes:
        raise ConfigError(f"budget {budget_bytes / 1e6:.2f} MB is below the smallest assignment "
                          f"({total / 1e6:.2f} MB with everything {fmts[0]})")
    while True:
        best = None
        for u, f in choice.items():
            for g in fmts[fmts.index(f) + 1:]:
                if g not in sens.kl[u]:
                    continue
                extra = size(u, g) - size(u, f)
                gain = sens.kl[u][f] - sens.kl[u][g]
                if extra <= 0 or gain <= 0 or total + extra > budget_bytes:
                    continue
                score = gain / extra
                if best is None or score > best[0]:
                    best = (score, u, g, extra)
        if best is None:
            break
        _, u, g, extra = best
        choice[u] = g
        total += extra
    layers = {int(u.split(".")[1]): f for u, f in choice.items() if u.startswith("layer.")}
    weights = dict(base.weights)
    if "output" in choice:
        weights["output"] = weights["embedding"] = choice["output"]
    for u, f in choice.items():
        if u.startswith("class."):
            weights[u.split(".", 1)[1]] = f
    recipe = replace(base, name=name, weights=weights, layers=layers,
                     note=f"mixed precision from sensitivity analysis, budget {budget_bytes / 1e6:.2f} MB")
    est = {"bytes": total, "kl_sum": sum(sens.kl[u][choice[u]] for u in choice), "choice": choice}
    return recipe, est


def run_sensitivity(model: str, *, calib: str, n_samples: int, seq_len: int, formats: tuple[str, ...],
                    units: str = "layers", budget_mb: float | None = None, plot: str | None = None) -> dict:
    """`edge quant sensitivity`: load, measure, optionally assign and plot; JSON-ready result."""
    ccfg = CalibConfig.from_spec(calib, n_samples=n_samples, seq_len=seq_len, seed=1)
    lm = load_model(model)
    sens = sensitivity(lm.model, token_batches(lm.tokenizer, ccfg), formats=formats, units=units)
    res = {"model": model, "formats": list(formats), "tokens": sens.tokens, "table": sens.table()}
    if budget_mb is not None:
        norms = sum(p.numel() * 4 for n, p in lm.model.named_parameters() if n.endswith("norm.weight"))
        recipe, est = assign_mixed(sens, load_recipe("q4_0"), budget_mb * 1e6, fixed_bytes=norms)
        res["assignment"] = est
        res["recipe"] = recipe.to_dict()
    if plot:
        _plot(sens, plot)
    return res


def _plot(sens: Sensitivity, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = list(sens.kl)
    fig, ax = plt.subplots(figsize=(max(6, len(units) * 0.3), 3.5))
    width = 0.8 / len(sens.formats)
    for k, f in enumerate(sens.formats):
        ax.bar([i + k * width for i in range(len(units))], [sens.kl[u][f] for u in units], width, label=f)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(units))], units, rotation=90, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("KL to float (nats/token)")
    ax.set_title("KL when only this unit is quantized (RTN)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
