"""The quantize stage: ``quantize(model, recipe, calib) -> QuantizedModel``.

Runs layer by layer on calibration activations, so memory stays about one layer's activations
plus the layer inputs (n_samples, seq_len, dim), never the whole model's:

    x = embed(calib)                                    # (n, T, dim)
    for each layer:
        [SmoothQuant / AWQ]  scale input channels, folded into the norms / producer rows
        a = norm1(x)          -> H_qkv  -> quantize q, k, v       (GPTQ or RTN, in the format's blocks)
        y = attention(a)      -> H_o    -> quantize o             (with q, k, v already quantized)
        b = norm2(x + o(y))   -> H_gu   -> quantize gate, up
        m = silu(gate b)*up b -> H_down -> quantize down
        x = x + o(y) + down(m)          (the next layer sees the quantized layer's output)
    final norm(x)             -> H_out  -> quantize lm_head (= the tied embedding)

The model's weights are replaced, in place, by exactly what the stored codes dequantize to, and
``QuantizedModel.tensors`` holds those codes and scales, so exporters write them without
re-rounding (GGUF blocks, 8da4w, QDQ int8).

    from edge.model.load import load_model
    from edge.calib import CalibConfig, token_batches
    lm = load_model("smollm2-135m")
    calib = token_batches(lm.tokenizer, CalibConfig.from_spec("general", n_samples=32, seq_len=512))
    q = quantize(lm.model, "q4_0", calib)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError
from edge.quant.awq import awq_search
from edge.quant.configs import CLASS_MODULES, QuantRecipe, load_recipe
from edge.quant.gptq import NumericalError, gptq_quantize, hessian_accumulate, torch_threads
from edge.quant.primitives import (
    QTensor,
    check_shape,
    fake_quant_act,
    get_format,
    int8_static_scale,
    quantize_with_params,
    rtn,
    search_params,
)
from edge.quant.smoothquant import fold_input_scale, smooth_scales


@dataclass
class QuantizedModel:
    """The quantized model (weights = dequantized codes), the codes themselves, and what was done.

    tensors: parameter name (edge.model.llama names) -> QTensor; with tied embeddings the one
    tensor is under "embed_tokens.weight". act_scales: module name -> static int8 input scale.
    """

    model: nn.Module
    recipe: QuantRecipe
    tensors: dict[str, QTensor]
    act_scales: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def spec(self):
        return self.model.spec

    def weight_bytes(self) -> int:
        """Bytes of the stored weights: quantized tensors as packed, the rest (norms, f32/f16) as is."""
        n = sum(t.nbytes() for t in self.tensors.values())
        seen = set(self.tensors)
        if self.model.spec.tie_embeddings:
            seen.add("lm_head.weight")
        for name, p in self.model.named_parameters():
            if name not in seen:
                n += p.numel() * (2 if self.float_format(name) == "f16" else 4)
        return n

    def float_format(self, name: str) -> str:
        return self.info.get("float_tensors", {}).get(name, "f32")


def _layer_modules(layer: nn.Module) -> dict[str, nn.Module]:
    return dict(layer.named_modules())


def _check_calib(calib, vocab: int) -> torch.Tensor:
    if calib is None:
        raise ConfigError("this recipe calibrates (GPTQ/AWQ/SmoothQuant/static activations) but no calibration "
                          "data was given; pass token batches (edge.calib.token_batches) or use method 'rtn'")
    arr = np.asarray(calib)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0 or arr.shape[1] < 2:
        raise ConfigError(f"calibration data must be token ids of shape (n_samples, seq_len>=2), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ConfigError(f"calibration data must be integer token ids, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() >= vocab:
        raise ConfigError(f"calibration token ids must be in [0, {vocab}), got [{arr.min()}, {arr.max()}]; "
                          "was it tokenized with this model's tokenizer?")
    return torch.as_tensor(arr, dtype=torch.long)


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise NumericalError(f"{what} holds NaN or Inf; check the checkpoint (or the layers before it)")


def _plan(model, recipe: QuantRecipe) -> dict[str, str]:
    """parameter name -> format name, validated against shapes (group size divides the rows)."""
    spec = model.spec
    plan: dict[str, str] = {}

    for i, layer in enumerate(model.layers):
        for cls, mod in CLASS_MODULES.items():
            for prefix in _expert_prefixes(layer, mod):
                plan[f"layers.{i}.{prefix}.weight"] = recipe.format_for(cls, i)
    if spec.tie_embeddings:
        plan["embed_tokens.weight"] = recipe.weights["output"]
    else:
        plan["embed_tokens.weight"] = recipe.weights["embedding"]
        plan["lm_head.weight"] = recipe.weights["output"]
    params = dict(model.named_parameters())
    for name, fmt in plan.items():
        p = params[name]
        _check_finite(p.detach(), f"weight '{name}' {tuple(p.shape)}")
        check_shape(name, tuple(p.shape), get_format(fmt))
    return plan


def _expert_prefixes(layer, mod: str) -> list[str]:
    """'mlp.gate_proj' in a dense layer; 'mlp.experts.E.gate_proj' (and shared expert) in an MoE layer."""
    mods = _layer_modules(layer)
    if mod in mods and isinstance(mods[mod], nn.Linear):
        return [mod]
    if mod.startswith("mlp.") and "mlp.experts" in mods:
        leaf = mod.split(".", 1)[1]
        out = [f"mlp.experts.{e}.{leaf}" for e in range(len(mods["mlp.experts"]))]
        if f"mlp.shared_expert.{leaf}" in mods:
            out.append(f"mlp.shared_expert.{leaf}")
        return out
    return []


class _Stage:
    """Quantizes one linear with the recipe's method, sets its weight to the dequantized codes."""

    def __init__(self, recipe: QuantRecipe, plan: dict[str, str], out: QuantizedModel):
        self.recipe, self.plan, self.out = recipe, plan, out
        self.use_gptq = "gptq" in recipe.method
        self.search = recipe.method != "rtn"
        self.tokens = 0  # calibration tokens (GPTQ asym needs many per input feature)

    @torch.no_grad()
    def linear(self, name: str, m: nn.Linear, h: torch.Tensor | None, cross: torch.Tensor | None = None) -> None:
        fmt = get_format(self.plan[name])
        if fmt.is_float:
            if fmt.name == "f16":
                m.weight.copy_(m.weight.half().float())
            self.out.info.setdefault("float_tensors", {})[name] = fmt.name
            return
        w = m.weight.detach().float()
        exact = rtn(w, fmt)
        if np.array_equal(exact.dequantize(), w.numpy()):
            h = None  # already on this grid (e.g. a Q8_0 source tensor kept at q8_0): nothing to calibrate
        if h is None:
            qt = exact
        elif self.use_gptq:
            if cross is not None and self.tokens < self.recipe.gptq.asym_min_tokens * w.shape[1]:
                cross = None  # too few tokens for the asymmetric target: it would overfit them
            qt, _ = gptq_quantize(w, h, fmt, self.recipe.gptq, name=name, cross=cross)
        elif self.search and h is not None:
            with torch_threads(1):
                d, z = search_params(w, fmt, torch.diag(h).float())
            qt = quantize_with_params(w, d, z, fmt)
        else:
            qt = exact
        qt.meta["method"] = self.recipe.method if h is not None else "rtn"
        m.weight.copy_(torch.from_numpy(qt.dequantize()).to(m.weight.dtype))
        self.out.tensors[name] = qt


def _act_hook(mode: str, scale: float | None):
    def hook(module, args):
        return (fake_quant_act(args[0], mode, scale),) + tuple(args[1:])

    return hook


def _attach_act_quant(m: nn.Linear, name: str, mode: str, absmax: float | None, out: QuantizedModel) -> None:
    scale = int8_static_scale(absmax) if mode == "int8_static" else None
    if scale is not None:
        out.act_scales[name] = scale
    m.register_forward_pre_hook(_act_hook(mode, scale))


def _chunks(n: int, size: int):
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


@torch.no_grad()
def quantize(model: nn.Module, recipe: QuantRecipe | str | Path, calib=None, *, chunk: int = 4,
             progress=None) -> QuantizedModel:
    """Quantize ``model`` in place with ``recipe`` on calibration token batches ``calib`` (n, T).

    Raises ConfigError for a bad recipe/calibration, NumericalError naming the layer for NaN/Inf.
    """
    t0 = time.perf_counter()
    recipe = load_recipe(recipe) if not isinstance(recipe, QuantRecipe) else recipe
    spec = model.spec
    plan = _plan(model, recipe)
    out = QuantizedModel(model, recipe, {}, {}, {"plan": dict(plan)})
    stage = _Stage(recipe, plan, out)
    needs_calib = recipe.calibrated
    if not needs_calib:
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and f"{name}.weight" in plan and name != "lm_head":
                stage.linear(f"{name}.weight", m, None)
        _quantize_embedding(model, stage, None)
        if recipe.activations == "int8_dynamic":
            for name, m in model.named_modules():
                if isinstance(m, nn.Linear) and name != "lm_head":
                    _attach_act_quant(m, name, "int8_dynamic", None, out)
        out.info["seconds"] = time.perf_counter() - t0
        return out

    tokens = _check_calib(calib, spec.vocab_size)
    n, T = tokens.shape
    out.info["calib_tokens"] = stage.tokens = int(n * T)
    x = model.embed(tokens).float()  # (n, T, dim)
    per_layer = model.no_cache_inputs(T, x.dtype)  # (cos, sin, mask): RoPE table and window per layer
    awq_log = []
    x_fp = x.clone() if "gptq" in recipe.method and recipe.gptq.asym else None
    for i, layer in enumerate(model.layers):
        cos, sin, mask = per_layer[i]
        _check_finite(x, f"the activations entering layer {i}")
        if recipe.smoothquant > 0 or "awq" in recipe.method:
            awq_log.append(_rescale_layer(layer, x, cos, sin, mask, recipe, plan, i, chunk))
        fp = _float_pass(layer, x_fp, cos, sin, mask, chunk) if x_fp is not None else None
        x = _quantize_layer(layer, i, x, cos, sin, mask, stage, recipe, out, chunk, fp)
        x_fp = fp["out"] if fp is not None else None
        if progress is not None:
            progress(i + 1, spec.n_layers)
    _check_finite(x, "the output of the last layer")
    h_out = None
    for sl in _chunks(n, chunk):
        h_out = hessian_accumulate(h_out, model.norm(x[sl]))
    _quantize_embedding(model, stage, h_out)
    if awq_log:
        out.info["rescale"] = awq_log
    out.info["seconds"] = time.perf_counter() - t0
    return out


def _quantize_embedding(model, stage: _Stage, h_out) -> None:
    spec = model.spec
    if spec.tie_embeddings:
        stage.linear("embed_tokens.weight", model.lm_head, h_out)  # same Parameter as embed_tokens
    else:
        stage.linear("lm_head.weight", model.lm_head, h_out)
        stage.linear("embed_tokens.weight", model.embed_tokens, None)


def _attn_core(attn, a, cos, sin, mask) -> torch.Tensor:
    """Attention without o_proj: a (B, T, dim) -> (B, T, n_heads*hd)."""
    return attn.core(a, cos, sin, mask, None)


class _Stats:
    """Running statistics of one activation: H = X^T X, max |x| and mean |x| per channel."""

    def __init__(self, want_h: bool):
        self.want_h, self.h, self.absmax, self.abssum, self.count = want_h, None, None, None, 0
        self.cross = None  # X_f^T X_q when the float model's activation is given (GPTQ asym)

    def add(self, t: torch.Tensor, t_fp: torch.Tensor | None = None) -> None:
        t2 = t.reshape(-1, t.shape[-1]).float()
        if t_fp is not None and self.want_h:
            c = (t_fp.reshape(-1, t_fp.shape[-1]).float().T @ t2).double()
            self.cross = c if self.cross is None else self.cross + c
        am, s = t2.abs().amax(0), t2.abs().sum(0)
        self.absmax = am if self.absmax is None else torch.maximum(self.absmax, am)
        self.abssum = s if self.abssum is None else self.abssum + s
        self.count += t2.shape[0]
        if self.want_h:
            self.h = hessian_accumulate(self.h, t2)

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abssum / max(self.count, 1)


def _is_dense(layer) -> bool:
    return hasattr(layer.mlp, "gate_proj")


def _rescale_layer(layer, x, cos, sin, mask, recipe, plan, i, chunk) -> dict:
    """SmoothQuant or AWQ: per-channel scales for q/k/v, gate/up and down, folded into producers."""
    attn, mlp = layer.self_attn, layer.mlp
    dense = _is_dense(layer)
    want_h = "awq" in recipe.method
    sa, sb, sm = _Stats(want_h), _Stats(want_h), _Stats(want_h)
    for sl in _chunks(x.shape[0], chunk):
        xc = x[sl]
        a = layer.input_layernorm(xc)
        sa.add(a)
        h = layer.attn_residual(xc, attn.o_proj(_attn_core(attn, a, cos, sin, mask)))
        b = layer.mlp_norm(h)
        sb.add(b)
        if dense:
            sm.add(mlp.hidden(b))
    groups = [("qkv", layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], sa,
               ["attn_q", "attn_k", "attn_v"])]
    if dense:
        groups += [("gate_up", layer.mlp_norm, [mlp.gate_proj, mlp.up_proj], sb,
                    ["ffn_gate", "ffn_up"]),
                   ("down", mlp.up_proj, [mlp.down_proj], sm, ["ffn_down"])]
    log = {"layer": i}
    for gname, prev, linears, st, classes in groups:
        fmts = [get_format(recipe.format_for(c, i)) for c in classes]
        if any(f.is_float for f in fmts):
            continue
        if recipe.smoothquant > 0:
            s = smooth_scales(st.absmax, linears, recipe.smoothquant)
            log[gname] = {"alpha": recipe.smoothquant}
        else:
            s, alpha, gain = awq_search(linears, st.h, st.mean_abs, fmts, recipe.awq)
            log[gname] = {"alpha": alpha, "loss_reduction": round(gain, 4)}
        fold_input_scale(prev, linears, s)
    return log


def _float_pass(layer, x_fp, cos, sin, mask, chunk) -> dict:
    """The float layer's linear inputs and output on the float model's residual stream (GPTQ asym)."""
    attn, mlp = layer.self_attn, layer.mlp
    dense = _is_dense(layer)  # an MoE layer's experts are quantized without it (router-weighted Hessians)
    fp: dict[str, list] = {"a": [], "y": [], "b": [], "m": [], "out": []}
    for sl in _chunks(x_fp.shape[0], chunk):
        xc = x_fp[sl]
        a = layer.input_layernorm(xc)
        y = _attn_core(attn, a, cos, sin, mask)
        h = layer.attn_residual(xc, attn.o_proj(y))
        b = layer.mlp_norm(h)
        m = mlp.hidden(b) if dense else None
        for k, v in zip(("a", "y", "b", "m", "out"), (a, y, b, m, h + layer.mlp_out(b))):
            if v is not None:
                fp[k].append(v)
    return {k: torch.cat(v) for k, v in fp.items() if v}


def _quantize_layer(layer, i, x, cos, sin, mask, stage: _Stage, recipe, out, chunk, fp=None) -> torch.Tensor:
    """Quantize one decoder layer in order q/k/v -> o -> gate/up -> down; return its output (n, T, dim).

    ``fp`` (from _float_pass): the float model's inputs of each linear, to quantize towards its outputs."""
    attn, mlp = layer.self_attn, layer.mlp
    n = x.shape[0]
    fpv = (lambda k, sl: fp[k][sl]) if fp is not None else (lambda k, sl: None)
    p = f"layers.{i}."
    act = recipe.activations
    want_h = recipe.method != "rtn"

    def hess(tensors, key):
        st = _Stats(want_h)
        for sl in _chunks(n, chunk):
            st.add(tensors[sl], fpv(key, sl))
        return st

    # q, k, v
    a_st = _Stats(want_h)
    for sl in _chunks(n, chunk):
        a = layer.input_layernorm(x[sl])
        _check_finite(a, f"the attention input of layer {i}")
        a_st.add(a, fpv("a", sl))
    for cls, m in (("q_proj", attn.q_proj), ("k_proj", attn.k_proj), ("v_proj", attn.v_proj)):
        stage.linear(f"{p}self_attn.{cls}.weight", m, a_st.h, a_st.cross)
        if act != "none":
            _attach_act_quant(m, f"{p}self_attn.{cls}", act, float(a_st.absmax.max()), out)
    # o
    y = torch.cat([_attn_core(attn, layer.input_layernorm(x[sl]), cos, sin, mask) for sl in _chunks(n, chunk)])
    _check_finite(y, f"the attention output of layer {i}")
    y_st = hess(y, "y")
    stage.linear(f"{p}self_attn.o_proj.weight", attn.o_proj, y_st.h, y_st.cross)
    if act != "none":
        _attach_act_quant(attn.o_proj, f"{p}self_attn.o_proj", act, float(y_st.absmax.max()), out)
    h = torch.cat([layer.attn_residual(x[sl], attn.o_proj(y[sl])) for sl in _chunks(n, chunk)])
    del y
    # mlp
    b = torch.cat([layer.mlp_norm(h[sl]) for sl in _chunks(n, chunk)])
    _check_finite(b, f"the MLP input of layer {i}")
    if _is_dense(layer):
        b_st = hess(b, "b")
        for cls, m in (("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj)):
            stage.linear(f"{p}mlp.{cls}.weight", m, b_st.h, b_st.cross)
            if act != "none":
                _attach_act_quant(m, f"{p}mlp.{cls}", act, float(b_st.absmax.max()), out)
        m_st = _Stats(want_h)
        for sl in _chunks(n, chunk):
            m_st.add(mlp.hidden(b[sl]), fpv("m", sl))
        stage.linear(f"{p}mlp.down_proj.weight", mlp.down_proj, m_st.h, m_st.cross)
        if act != "none":
            _attach_act_quant(mlp.down_proj, f"{p}mlp.down_proj", act, float(m_st.absmax.max()), out)
    else:
        _quantize_moe(layer, i, b, stage, chunk, want_h)
    out_x = h + torch.cat([layer.mlp_out(b[sl]) for sl in _chunks(n, chunk)])
    return out_x


def _quantize_moe(layer, i, b, stage: _Stage, chunk, want_h) -> None:
    """MoE MLP: router by RTN; each expert's Hessians weight tokens by that expert's gate."""
    mlp, n = layer.mlp, b.shape[0]
    p = f"layers.{i}.mlp."
    weights = torch.cat([mlp.routing(b[sl])[0] for sl in _chunks(n, chunk)])  # (n, T, E)
    stage.linear(f"{p}gate.weight", mlp.gate, None)
    experts = [(f"experts.{e}.", ex, weights[..., e : e + 1]) for e, ex in enumerate(mlp.experts)]
    if mlp.shared_expert is not None:
        experts.append(("shared_expert.", mlp.shared_expert, torch.ones_like(weights[..., :1])))
    for prefix, ex, g in experts:
        st = _Stats(want_h)
        for sl in _chunks(n, chunk):
            st.add(b[sl] * g[sl].sqrt())
        stage.linear(f"{p}{prefix}gate_proj.weight", ex.gate_proj, st.h)
        stage.linear(f"{p}{prefix}up_proj.weight", ex.up_proj, st.h)
        st2 = _Stats(want_h)
        for sl in _chunks(n, chunk):
            st2.add(ex.hidden(b[sl]) * g[sl].sqrt())
        stage.linear(f"{p}{prefix}down_proj.weight", ex.down_proj, st2.h)
