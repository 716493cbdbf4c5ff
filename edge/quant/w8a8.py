"""Static W8A8 for NPUs: int8 per-channel weights, static per-tensor activation scales, computed in
torch from calibration data; the ONNX QDQ writer (edge.export.onnx) writes exactly these numbers.

Each decoder layer has four quantized activations ("groups"), each the input of its linears:

    layers.i.qkv      RMSNorm output        -> q_proj, k_proj, v_proj
    layers.i.o        attention output      -> o_proj
    layers.i.gate_up  RMSNorm output        -> gate_proj, up_proj
    layers.i.down     silu(gate) * up       -> down_proj

The lm_head (and the embedding lookup) stay in float. The scheme (``W8A8Config``):

- ``rotate``: an exact rewrite of the float model before quantizing (QuaRot-style, no online
  transform): the RMSNorm weights are folded into the linears that read them, the residual
  stream is multiplied by an orthogonal (randomised Hadamard) matrix Q (embedding ``E Q``,
  readers ``W Q``, writers ``Q^T W``; RMSNorm commutes with Q), and each attention head's values
  by a Hadamard matrix (v_proj rows, o_proj columns). Outlier channels of qkv/gate_up/o inputs are
  spread over all channels, which is what per-tensor scales need.
- ``alpha``: SmoothQuant migration strength for the groups the rotation does not reach (down,
  folded into up_proj's rows); with ``rotate`` off, for qkv, gate_up and down as in the paper.
- ``scales``: "minmax" (the calibrated range) or "mse" (the clip ratio of the range that minimises
  the linear outputs' squared error on calibration rows).
- ``act``: "asym" (uint8 with a zero point, ONNX Runtime's default) or "sym" (int8, zero point 0).
- ``keep``: groups left at higher precision: "int16" (activations at 16 bits, weights int8;
  NPUs that list int16) or "float" (activations in float: the node runs on the CPU).

    qm, plan = prepare_w8a8(model, calib_tokens, W8A8Config())
    attach_fake_quant(qm, plan)          # torch emulation of the QDQ graph
    plan.summary()                       # int8 / int16 / float groups, fraction of MACs not int8
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edge.errors import ConfigError, require_one_of
from edge.quant.configs import GPTQConfig

GROUPS = ("qkv", "o", "gate_up", "down")
ACT_MODES = ("asym", "sym")
SCALE_METHODS = ("minmax", "mse")
KEEP_PRECISIONS = ("int16", "float")


@dataclass(frozen=True)
class W8A8Config:
    rotate: bool = True
    alpha: float = 0.8
    scales: str = "minmax"
    act: str = "asym"
    keep: tuple[tuple[str, str], ...] = ()  # ((group, "int16" | "float"), ...)
    split: int = 0  # down inputs: this many outlier channels (largest calibrated |x|) computed in float
    weights: str = "rtn"  # int8 per-channel weights: "rtn" or "gptq" (layer by layer on the calibration data)
    hybrid: int = 0  # this many more groups, those with the largest int8 output error, kept at hybrid_precision
    hybrid_precision: str = "int16"  # "int16" (the unit runs 16-bit activations) or "float" (CPU)
    down_rotate: int = 0  # online block-Hadamard rotation of the down inputs, block size (0: off)
    keep_down: bool = False  # every down_proj input at hybrid_precision (silu(gate)*up: heavy-tailed everywhere)
    seed: int = 0

    def __post_init__(self) -> None:
        require_one_of("w8a8 act", self.act, ACT_MODES)
        require_one_of("w8a8 scales", self.scales, SCALE_METHODS)
        require_one_of("w8a8 weights", self.weights, ("rtn", "gptq"))
        require_one_of("w8a8 hybrid_precision", self.hybrid_precision, KEEP_PRECISIONS)
        if self.split < 0 or self.hybrid < 0:
            raise ConfigError(f"w8a8 split and hybrid must be >= 0, got {self.split}, {self.hybrid}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"w8a8 smoothquant alpha must be in [0, 1], got {self.alpha}")
        for g, p in self.keep:
            if p not in KEEP_PRECISIONS:
                raise ConfigError(f"w8a8 keep: '{g}' at '{p}'; allowed: {', '.join(KEEP_PRECISIONS)}")


@dataclass(frozen=True)
class ActQuant:
    """One activation's static quantization: ``x ~ (q - zero_point) * scale``; bits 0 = float."""

    bits: int
    scale: float = 1.0
    zero_point: int = 0
    signed: bool = True
    float_channels: tuple[int, ...] = ()  # input channels that bypass the quantizer (split into a float MatMul)

    @property
    def qrange(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize as ONNX QuantizeLinear/DequantizeLinear do (round half to even, saturate)."""
        if not self.bits:
            return x
        lo, hi = self.qrange
        s = torch.tensor(self.scale, dtype=torch.float32)
        xf = x.float()
        if self.float_channels:
            keep = torch.zeros(x.shape[-1], dtype=torch.bool)
            keep[list(self.float_channels)] = True
            xq = torch.where(keep, torch.zeros((), dtype=xf.dtype), xf)
        else:
            xq = xf
        q = torch.clamp(torch.round(xq / s) + self.zero_point, lo, hi)
        y = (q - self.zero_point) * s
        if self.float_channels:
            y = torch.where(keep, xf, y)
        return y.to(x.dtype)


def act_params(lo: float, hi: float, bits: int, act: str) -> ActQuant:
    """Scale and zero point for the range [lo, hi] (0 always inside), as ONNX Runtime computes them."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if bits == 8 and act == "asym":
        scale = max(hi - lo, 1e-8) / 255.0
        zp = int(np.clip(round(-lo / scale), 0, 255))
        return ActQuant(8, scale, zp, signed=False)
    qmax = (1 << (bits - 1)) - 1
    return ActQuant(bits, max(max(-lo, hi), 1e-8) / qmax, 0, signed=True)


@dataclass
class W8A8Plan:
    """What the scheme chose: each group's activation quantization and its MACs per token."""

    config: W8A8Config
    acts: dict[str, ActQuant]
    macs: dict[str, int]  # group -> multiply-accumulates per token of its linears
    in_dims: dict[str, int]  # group -> input channels
    head_macs: int  # lm_head, always float
    info: dict = field(default_factory=dict)

    def precision(self, group: str) -> str:
        b = self.acts[group].bits
        return "float" if b == 0 else f"int{b}"

    def summary(self) -> dict:
        """Groups by activation precision and the MACs per token that are not int8 x int8."""
        by: dict[str, list[str]] = {"int8": [], "int16": [], "float": []}
        macs = {"int8": 0, "int16": 0, "float": 0}
        split = 0
        for g, aq in self.acts.items():
            p = self.precision(g)
            by[p].append(g)
            f = self.macs[g] * len(aq.float_channels) // self.in_dims[g]  # the split-off channels' MatMul
            macs[p] += self.macs[g] - f
            macs["float"] += f
            split += f
        # the online down rotations: float MatMuls by a (b, b) block over each down input
        rot = sum(self.in_dims[g] * self.config.down_rotate for g in self.acts if g.endswith(".down"))
        macs["float"] += rot
        layer_macs = sum(self.macs.values()) + rot
        total = layer_macs + self.head_macs
        c = self.config
        return {"scheme": {"rotate": c.rotate, "alpha": c.alpha, "scales": c.scales, "act": c.act,
                           "weights": c.weights, "down_rotate": c.down_rotate, "split": c.split,
                           "hybrid": c.hybrid, "hybrid_precision": c.hybrid_precision},
                "groups": {k: len(v) for k, v in by.items()}, "int16": by["int16"], "float": by["float"],
                "split_channels": {g: list(a.float_channels) for g, a in self.acts.items() if a.float_channels},
                "macs_per_token": {"int8": macs["int8"], "int16": macs["int16"], "float_layers": macs["float"],
                                   "float_split_channels": split, "float_down_rotation": rot,
                                   "float_lm_head": self.head_macs},
                "layer_macs_not_int8": round((macs["int16"] + macs["float"]) / layer_macs, 5),
                "macs_not_int8": round((macs["int16"] + macs["float"] + self.head_macs) / total, 5)}


# ---- the groups ------------------------------------------------------------------------------
class BlockRotated(nn.Module):
    """``lin(x @ blockdiag(h, h, ...))``: an online block-Hadamard rotation of the input (in the
    graph: Reshape -> MatMul by the (b, b) constant -> Reshape, float), with the inverse folded into
    ``lin``'s columns, so the output is unchanged and the quantized input is the rotated one."""

    def __init__(self, lin: nn.Linear, h: torch.Tensor):
        super().__init__()
        self.lin = lin
        self.register_buffer("h", h.to(lin.weight.dtype), persistent=False)

    def forward(self, x):
        b = self.h.shape[0]
        xr = (x.reshape(*x.shape[:-1], x.shape[-1] // b, b) @ self.h).reshape(x.shape)
        return self.lin(xr)


def group_linears(layer: nn.Module) -> dict[str, list[nn.Linear]]:
    a, f = layer.self_attn, layer.mlp
    down = f.down_proj.lin if isinstance(f.down_proj, BlockRotated) else f.down_proj
    return {"qkv": [a.q_proj, a.k_proj, a.v_proj], "o": [a.o_proj], "gate_up": [f.gate_proj, f.up_proj],
            "down": [down]}


@torch.no_grad()
def rotate_down_inputs(model: nn.Module, block: int, seed: int = 0) -> None:
    """Each down_proj reads its input rotated by a block-diagonal Hadamard (blocks of ``block``)."""
    h = orthogonal(block, seed + 2)
    for i, layer in enumerate(model.layers):
        lin = layer.mlp.down_proj
        if lin.weight.shape[1] % block:
            raise ConfigError(f"w8a8 down_rotate: block {block} does not divide layer {i}'s ffn width "
                              f"{lin.weight.shape[1]}")
        w = lin.weight.view(lin.weight.shape[0], -1, block)
        w.copy_(w @ h)  # W' = W blockdiag(h): x W^T = (x blockdiag(h)) W'^T
        layer.mlp.down_proj = BlockRotated(lin, h)


def groups_of(model: nn.Module) -> dict[str, list[nn.Linear]]:
    out = {}
    for i, layer in enumerate(model.layers):
        if not hasattr(layer.mlp, "gate_proj"):
            raise ConfigError(f"w8a8: layer {i} has a mixture-of-experts MLP; static W8A8 handles dense models")
        for g, lins in group_linears(layer).items():
            out[f"layers.{i}.{g}"] = lins
    return out


# ---- exact rewrites of the float model -------------------------------------------------------
def hadamard(n: int) -> np.ndarray | None:
    """A Hadamard matrix of order n = 2^a * 12^b (Sylvester and Paley), entries +-1; None otherwise."""
    h = np.ones((1, 1))
    b, rest = 0, n
    while rest % 12 == 0:  # 12 = 4 * 3: take the 12s out first
        rest //= 12
        b += 1
    if rest < 1 or rest & (rest - 1):  # not a power of two after the 12s
        return None
    h12 = _paley12()
    for _ in range(b):
        h = np.kron(h, h12)
    s = np.array([[1.0]])
    while s.shape[0] < rest:
        s = np.block([[s, s], [s, -s]])
    return np.kron(s, h)


def _paley12() -> np.ndarray:
    q = 11
    residues = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if k in residues else -1 for k in range(1, q)])
    jac = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)], dtype=np.float64)
    s = np.zeros((q + 1, q + 1))
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jac
    return np.eye(q + 1) + s


def orthogonal(n: int, seed: int) -> torch.Tensor:
    """Randomised Hadamard ``diag(+-1) H / sqrt(n)`` (seeded signs: the same on every machine);
    a seeded random orthogonal matrix where no Hadamard of order n is built here."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=n)
    h = hadamard(n)
    if h is None:
        qm, r = np.linalg.qr(rng.standard_normal((n, n)))
        h = qm * np.sign(np.diag(r))[None, :] * math.sqrt(n)
    return torch.from_numpy(signs[:, None] * h / math.sqrt(n)).float()


@torch.no_grad()
def rotate_model(model: nn.Module, seed: int = 0) -> None:
    """In place, float model unchanged up to rounding: fold norms, rotate the residual stream by Q,
    rotate each head's values by a Hadamard matrix (see the module docstring)."""
    spec = model.spec
    if spec.tie_embeddings:  # the head reads the residual with the final norm folded in: untie
        model.lm_head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone(), requires_grad=False)
    q = orthogonal(spec.dim, seed)
    hh = orthogonal(spec.head_dim, seed + 1)

    def fold(norm, linears):
        g = norm.weight.detach().float() + norm.offset  # Gemma's norms scale by (1 + weight)
        for lin in linears:
            lin.weight.mul_(g[None, :])
        norm.weight.fill_(1.0 - norm.offset)

    model.embed_tokens.weight.copy_(model.embed_tokens.weight.float() @ q)
    for layer in model.layers:
        lins = group_linears(layer)
        fold(layer.input_layernorm, lins["qkv"])
        fold(layer.mlp_norm, lins["gate_up"])
        for lin in lins["qkv"] + lins["gate_up"]:
            lin.weight.copy_(lin.weight @ q)
        for lin in lins["o"] + lins["down"]:
            lin.weight.copy_(q.T @ lin.weight)
        a = layer.self_attn
        hd = a.hd
        wv = a.v_proj.weight.view(a.n_kv, hd, -1)
        wv.copy_(torch.einsum("dk,hdi->hki", hh, wv))  # rows of each kv head: Hh^T W_v
        if a.v_proj.bias is not None:
            a.v_proj.bias.copy_((a.v_proj.bias.view(a.n_kv, hd) @ hh).reshape(-1))
        wo = a.o_proj.weight.view(spec.dim, a.n_heads, hd)
        wo.copy_(wo @ hh)  # columns of each head: W_o Hh
    fold(model.norm, [model.lm_head])
    model.lm_head.weight.copy_(model.lm_head.weight @ q)


@torch.no_grad()
def run_with_inputs(model: nn.Module, tokens: np.ndarray, groups, see) -> None:
    """Run the rows of ``tokens`` (n, T) through ``model``, calling ``see(group, x)`` with each listed
    group's input (its first linear's)."""
    lin = groups_of(model)
    hooks = [lin[g][0].register_forward_pre_hook(lambda module, args, g=g: see(g, args[0])) for g in groups]
    try:
        for row in np.asarray(tokens):
            model(torch.as_tensor(row[None], dtype=torch.long))
    finally:
        for h in hooks:
            h.remove()


def input_absmax(model: nn.Module, tokens: np.ndarray, groups: list[str]) -> dict[str, torch.Tensor]:
    """Per-channel max |x| of each group's input over ``tokens`` (n, T) (float forward)."""
    out: dict[str, torch.Tensor] = {}

    def record(g, x):
        am = x.detach().abs().reshape(-1, x.shape[-1]).amax(0).float()
        out[g] = am if g not in out else torch.maximum(out[g], am)

    run_with_inputs(model, tokens, groups, record)
    return out


@torch.no_grad()
def smooth_groups(model: nn.Module, tokens: np.ndarray, alpha: float, groups: tuple[str, ...]) -> None:
    """SmoothQuant on the named group kinds ("qkv", "gate_up", "down"), folded into the producers."""
    from edge.quant.smoothquant import fold_input_scale, smooth_scales

    lin = groups_of(model)
    names = [f"layers.{i}.{g}" for i in range(len(model.layers)) for g in groups]
    absmax = input_absmax(model, tokens, names)
    for name in names:
        i, g = int(name.split(".")[1]), name.split(".")[2]
        layer = model.layers[i]
        prev = {"qkv": layer.input_layernorm, "gate_up": layer.mlp_norm, "down": layer.mlp.up_proj}[g]
        fold_input_scale(prev, lin[name], smooth_scales(absmax[name], lin[name], alpha))


@torch.no_grad()
def quantize_weights_int8(model: nn.Module) -> None:
    """Every group linear's weight -> its per-output-channel symmetric int8 codes, dequantized
    (codes in [-127, 127], scale = row max / 127). The scale per row is kept on the module as
    ``int8_scale`` (rows,): the exporter writes W / (127 * int8_scale), which is codes / 127."""
    for lins in groups_of(model).values():
        for lin in lins:
            w = lin.weight.float()
            s = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.0
            lin.weight.copy_((torch.round(w / s).clamp(-127, 127) * s).to(lin.weight.dtype))
            lin.int8_scale = s[:, 0].clone()


@torch.no_grad()
def gptq_weights_int8(model: nn.Module, tokens: np.ndarray, chunk: int = 4) -> None:
    """GPTQ int8 per output channel, layer by layer: each layer's Hessians come from the calibration
    activations of the model with the layers before it already quantized."""
    from edge.quant.gptq import gptq_quantize, hessian_accumulate
    from edge.quant.primitives import FORMATS

    calib = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    x = model.embed(calib).float()
    per_layer = model.no_cache_inputs(x.shape[1], x.dtype)  # (cos, sin, mask) of each layer
    fmt, gcfg = FORMATS["int8"], GPTQConfig(scale_search=False)
    for i, layer in enumerate(model.layers):
        lins = group_linears(layer)
        hs: dict[str, torch.Tensor | None] = dict.fromkeys(lins)

        def acc(g, hs=hs):
            def hook(module, args):
                hs[g] = hessian_accumulate(hs[g], args[0])
            return hook

        hooks = [lins[g][0].register_forward_pre_hook(acc(g)) for g in lins]
        for k in range(0, x.shape[0], chunk):
            layer(x[k : k + chunk], *per_layer[i], None)
        for h in hooks:
            h.remove()
        for g, group in lins.items():
            for lin in group:
                qt, _ = gptq_quantize(lin.weight.float(), hs[g], fmt, gcfg, name=f"layers.{i} {g}")
                lin.weight.copy_(torch.from_numpy(qt.dequantize()).to(lin.weight.dtype))
                lin.int8_scale = torch.from_numpy(qt.scales[:, 0].astype(np.float32))
        x = torch.cat([layer(x[k : k + chunk], *per_layer[i], None) for k in range(0, x.shape[0], chunk)])


# ---- calibration of the activation scales ----------------------------------------------------
class _Range:
    """Min/max of one activation plus a sample of rows (for the MSE clip search)."""

    def __init__(self, keep_rows: int, seed: int):
        self.lo, self.hi = math.inf, -math.inf
        self.cmin: torch.Tensor | None = None
        self.cmax: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.keep = keep_rows
        self.gen = torch.Generator().manual_seed(seed)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        self.lo, self.hi = min(self.lo, float(x2.min())), max(self.hi, float(x2.max()))
        mn, mx = x2.amin(0), x2.amax(0)
        self.cmin = mn if self.cmin is None else torch.minimum(self.cmin, mn)
        self.cmax = mx if self.cmax is None else torch.maximum(self.cmax, mx)
        if self.keep:
            k = max(1, self.keep // 16)
            idx = torch.randperm(x2.shape[0], generator=self.gen)[:k]
            self.rows.append(x2[idx].clone())
            self.n += 1


def _mse_clip(rows: torch.Tensor, lo: float, hi: float, col_w: torch.Tensor, act: str) -> tuple[float, float]:
    """Clip ratio of [lo, hi] minimising sum_c ||W_:c||^2 (x_c - q(x_c))^2 over the sampled rows."""
    best, best_r = math.inf, 1.0
    for r in np.linspace(1.0, 0.3, 15):
        aq = act_params(lo * r, hi * r, 8, act)
        err = ((aq.fake(rows) - rows) ** 2 * col_w).sum().item()
        if err < best:
            best, best_r = err, float(r)
    return lo * best_r, hi * best_r


@torch.no_grad()
def calibrate(model: nn.Module, tokens: np.ndarray, cfg: W8A8Config, ranges_out: dict | None = None) -> dict[str, ActQuant]:
    """Static scales of every group's input on ``tokens`` (n, T), read from the model as given
    (weights already int8, activations in float). ``ranges_out`` receives each group's (min, max)."""
    lin = groups_of(model)
    keep = 2048 if cfg.scales == "mse" else 0  # rows sampled per group and call (/16) for the clip search
    ranges = {g: _Range(keep, cfg.seed + k) for k, g in enumerate(lin)}

    run_with_inputs(model, tokens, list(lin), lambda g, x: ranges[g].add(x))
    keep_prec = dict(cfg.keep)
    acts = {}
    if ranges_out is not None:
        ranges_out.update({g: (r.lo, r.hi) for g, r in ranges.items()})
    for g, r in ranges.items():
        if not math.isfinite(r.lo) or not math.isfinite(r.hi):
            raise ConfigError(f"w8a8: the input of {g} holds NaN or Inf on the calibration data")
        p = keep_prec.get(g)
        chans: tuple[int, ...] = ()
        if cfg.split and g.endswith(".down") and p is None:
            amax = torch.maximum(r.cmax.abs(), r.cmin.abs())
            chans = tuple(sorted(int(c) for c in torch.topk(amax, min(cfg.split, amax.numel())).indices))
            rest = torch.ones_like(amax, dtype=torch.bool)
            rest[list(chans)] = False
            r.lo, r.hi = float(r.cmin[rest].min()), float(r.cmax[rest].max())
            if r.rows:
                r.rows = [t * rest for t in r.rows]
        if p == "float":
            acts[g] = ActQuant(0)
        elif p == "int16":
            acts[g] = act_params(r.lo, r.hi, 16, "sym")
        elif cfg.scales == "mse":
            col_w = torch.stack([(m.weight.float() ** 2).sum(0) for m in lin[g]]).sum(0)
            lo, hi = _mse_clip(torch.cat(r.rows), r.lo, r.hi, col_w, cfg.act)
            acts[g] = act_params(lo, hi, 8, cfg.act)
        else:
            acts[g] = act_params(r.lo, r.hi, 8, cfg.act)
        if chans:
            acts[g] = dataclasses.replace(acts[g], float_channels=chans)
    return acts


@torch.no_grad()
def output_error(model: nn.Module, tokens: np.ndarray, acts: dict[str, ActQuant]) -> dict[str, float]:
    """Each group's int8 noise-to-signal ratio at its linears' outputs on ``tokens``:
    sum ||(q(x) - x) W^T||^2 / sum ||x W^T||^2 (the model runs in float meanwhile)."""
    lin = groups_of(model)
    num = dict.fromkeys(acts, 0.0)
    den = dict.fromkeys(acts, 0.0)

    def record(g, x):
        x = x.detach().reshape(-1, x.shape[-1]).float()
        dx = acts[g].fake(x) - x
        for m in lin[g]:
            w = m.weight.float()
            num[g] += float(((dx @ w.T) ** 2).sum())
            den[g] += float(((x @ w.T) ** 2).sum())

    run_with_inputs(model, tokens, [g for g in acts if acts[g].bits], record)
    return {g: num[g] / max(den[g], 1e-30) for g in acts if acts[g].bits}


def group_macs(model: nn.Module) -> dict[str, int]:
    return {g: sum(m.weight.numel() for m in lins) for g, lins in groups_of(model).items()}


@torch.no_grad()
def prepare_w8a8(model: nn.Module, calib_tokens: np.ndarray, cfg: W8A8Config = W8A8Config()) -> tuple[nn.Module, W8A8Plan]:
    """A float32 copy of ``model`` rewritten (rotation, smoothing) with int8 weights, and the plan
    of activation scales. The copy has no fake quantization attached (see ``attach_fake_quant``)."""
    if model.spec.is_moe:
        raise ConfigError(f"{model.spec.name or 'model'}: static W8A8 handles dense models; this one is MoE")
    tokens = np.asarray(calib_tokens)
    if tokens.ndim != 2 or tokens.size == 0:
        raise ConfigError(f"w8a8 calibration must be token ids of shape (n, T), got {tokens.shape}")
    names = set(groups_of(model))
    bad = [g for g, _ in cfg.keep if g not in names]
    if bad:
        raise ConfigError(f"w8a8 keep names unknown groups {bad}; groups are layers.<i>.{{{','.join(GROUPS)}}}")
    if cfg.rotate and model.spec.post_norms:
        # Gemma 3 norms each block's output with a per-channel weight just before the residual add,
        # which no rotation of the residual stream passes through: SmoothQuant takes its place (the
        # plan's summary records the scheme that ran, rotate False)
        cfg = dataclasses.replace(cfg, rotate=False, alpha=cfg.alpha or POST_NORM_ALPHA)
    m = copy.deepcopy(model).float().eval()
    m.drop_cache()
    for p in m.parameters():
        p.requires_grad_(False)
    if cfg.rotate:
        rotate_model(m, cfg.seed)
    if cfg.down_rotate:
        rotate_down_inputs(m, cfg.down_rotate, cfg.seed)
    if cfg.alpha > 0:
        kinds = () if cfg.rotate else ("qkv", "gate_up")
        if not cfg.split and not cfg.down_rotate:
            kinds += ("down",)
        if kinds:
            smooth_groups(m, tokens, cfg.alpha, kinds)
    if cfg.weights == "gptq":
        gptq_weights_int8(m, tokens)
    else:
        quantize_weights_int8(m)
    return m, plan_acts(m, tokens, cfg)


def plan_acts(m: nn.Module, tokens: np.ndarray, cfg: W8A8Config) -> W8A8Plan:
    """The activation side of ``cfg`` on a model ``prepare_w8a8`` already rewrote and quantized
    (same rotation, smoothing and weights): static scales, split channels, hybrid groups."""
    ranges: dict[str, tuple[float, float]] = {}
    acts = calibrate(m, tokens, cfg, ranges)
    info = {}

    def keep(g):
        acts[g] = ActQuant(0) if cfg.hybrid_precision == "float" else act_params(*ranges[g], 16, "sym")

    if cfg.keep_down:
        for g in acts:
            if g.endswith(".down") and acts[g].bits == 8:
                keep(g)
    if cfg.hybrid:  # the groups whose int8 input hurts their outputs most: higher precision
        err = output_error(m, tokens, acts)
        worst = sorted(err, key=lambda g: -err[g])[: cfg.hybrid]
        info["int8_output_nsr"] = {g: round(v, 6) for g, v in sorted(err.items(), key=lambda kv: -kv[1])}
        for g in worst:
            keep(g)
    head = m.lm_head.weight.numel()
    return W8A8Plan(cfg, acts, group_macs(m), {g: lins[0].weight.shape[1] for g, lins in groups_of(m).items()},
                    head, info)


def attach_fake_quant(model: nn.Module, plan: W8A8Plan) -> list:
    """Forward pre-hooks that fake-quantize each group's input as the QDQ graph does; returns the
    handles (``h.remove()`` to detach)."""
    lin = groups_of(model)
    handles = []
    for g, aq in plan.acts.items():
        if aq.bits:
            for m in lin[g]:
                handles.append(m.register_forward_pre_hook(lambda mod, args, aq=aq: (aq.fake(args[0]),) + args[1:]))
    return handles


# SmoothQuant's alpha where the rotation cannot run (post-norms): the class default
POST_NORM_ALPHA = W8A8Config.alpha
# The scheme `edge build` uses for w8a8 (measured on the built-in model: benchmarks/w8a8.py,
# docs/export.md). hybrid_precision is set per target by for_unit.
DEFAULT = W8A8Config(rotate=True, alpha=0.0, weights="gptq", scales="mse", keep_down=True, hybrid=6)


def for_unit(dtypes) -> W8A8Config:
    """The default scheme for a compute unit that runs ``dtypes``: the groups kept above int8 run
    with int16 activations where the unit lists int16, else in float (on the CPU)."""
    return dataclasses.replace(DEFAULT, hybrid_precision="int16" if "int16" in dtypes else "float")
