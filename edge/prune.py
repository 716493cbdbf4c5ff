"""Prune: make the model smaller by removing whole structures, scored on calibration activations.

Step: ``load_model -> prune -> quantize(calib) -> export``. What can go:

* MLP intermediate channels (``ffn_dim``), the same count in every layer;
* attention heads, respecting grouped-query attention: either whole KV groups (a K/V head with
  all its query heads) or the same number of query heads in every group, so ``n_heads`` stays a
  multiple of ``n_kv_heads``;
* whole layers (depth);
* MoE experts (by routing frequency or output contribution; the router loses their rows), with an
  optional lower top-k;
* 2:4 semi-structured sparsity (a mask: 2 of every 4 consecutive input weights are zeroed; the
  tensor keeps its shape, the spec records it so the simulator counts a speed-up only on targets
  with sparse units).

Shapes stay uniform across layers (which channels go differs per layer), so config.json, GGUF and
every exporter express the result. Importance is either plain weight magnitude (the baseline) or
activation-weighted: the energy each structure contributes to its layer's output on calibration
text (Wanda's |W| * ||x|| at the granularity of a channel, a head, a group; block influence for
layers). Recovery refits ``o_proj`` and ``down_proj`` of every pruned layer by least squares so
that the pruned layer reproduces the unpruned model's residual stream on calibration activations.

    lm = load_model("smollm2-135m")
    calib = token_batches(lm.tokenizer, CalibConfig.from_spec("general:1", n_samples=32, seq_len=256))
    res = prune(lm.model, PruneConfig(ratio=0.2), calib)      # res.model, res.spec, res.report
    save_model(res.model, res.spec, lm.tokenizer, "smollm2-pruned")
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.calib import CalibConfig, dataset_hash, token_batches
from edge.errors import ConfigError
from edge.eval import kl_divergence
from edge.model.load import load_model, load_spec
from edge.model.save import save_model
from edge.model.spec import ModelSpec
from edge.quant.configs import PRESETS
from edge.recipes import kv_cache, preset

KINDS = ("auto", "mlp", "attn", "mlp+attn", "depth", "experts")
IMPORTANCE = ("activation", "magnitude")
RECOVERY = ("lstsq", "lstsq-stream", "none")
EXPERT_SCORES = ("contribution", "frequency")
SPARSITY = ("", "2:4")
# kinds `auto` tries, in order, for a dense and for an MoE model
AUTO_KINDS = {"dense": ("mlp", "mlp+attn", "depth"), "moe": ("experts", "attn", "depth")}
LSTSQ_DAMP = 1e-2  # ridge term, a fraction of the mean diagonal of X^T X (as GPTQ's percdamp)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"PruneConfig.{name}={value!r} is not one of: {', '.join(repr(a) for a in allowed)}"
        )


@dataclass(frozen=True)
class PruneConfig:
    """What to remove. Either a budget (``ratio`` of all parameters, or a target ``params`` count,
    spent on ``kind``) or explicit shapes to keep (``ffn_dim``, ``n_heads``/``n_kv_heads``,
    ``n_layers``, ``n_experts``); plus optional 2:4 ``sparsity``."""

    ratio: float | None = None  # fraction of all parameters to remove, in (0, 1)
    params: int | None = None  # or: parameter count to keep
    kind: str = "auto"  # which structures the budget removes; auto: try each, keep the lowest calib KL
    ffn_dim: int = 0  # explicit shapes to keep (0: unchanged)
    n_heads: int = 0
    n_kv_heads: int = 0
    n_layers: int = 0
    n_experts: int = 0  # experts kept per MoE layer
    n_experts_per_tok: int = 0  # lower top-k (0: unchanged, clipped to n_experts)
    expert_score: str = "contribution"
    sparsity: str = ""  # "2:4": mask 2 of every 4 consecutive input weights in attention and MLP linears
    importance: str = "activation"
    recovery: str = "none"  # benchmarks/prune.py: lstsq costs a little at 10%, helps from 20% (pass it)
    multiple_of: int = 32  # kept ffn_dim is a multiple of this (block size of Q4_0 / int4 group 32)

    def __post_init__(self) -> None:
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ConfigError(
                f"PruneConfig.ratio must be in (0, 1) (fraction of parameters removed), got {self.ratio}"
            )
        if self.params is not None and self.params <= 0:
            raise ConfigError(f"PruneConfig.params must be a positive parameter count, got {self.params}")
        if self.ratio is not None and self.params is not None:
            raise ConfigError("PruneConfig: give ratio or params, not both")
        for f in ("ffn_dim", "n_heads", "n_kv_heads", "n_layers", "n_experts", "n_experts_per_tok"):
            if getattr(self, f) < 0:
                raise ConfigError(
                    f"PruneConfig.{f} must be >= 0 (0 keeps it unchanged), got {getattr(self, f)}"
                )
        if self.multiple_of < 1:
            raise ConfigError(f"PruneConfig.multiple_of must be >= 1, got {self.multiple_of}")
        _choice("kind", self.kind, KINDS)
        _choice("importance", self.importance, IMPORTANCE)
        _choice("recovery", self.recovery, RECOVERY)
        _choice("expert_score", self.expert_score, EXPERT_SCORES)
        _choice("sparsity", self.sparsity, SPARSITY)
        explicit = [f for f in ("ffn_dim", "n_heads", "n_kv_heads", "n_layers") if getattr(self, f)]
        if self.has_budget and explicit:
            raise ConfigError(
                f"PruneConfig: a budget (ratio/params) and explicit shapes ({', '.join(explicit)}) conflict; give one"
            )
        if not (self.has_budget or explicit or self.n_experts or self.n_experts_per_tok or self.sparsity):
            raise ConfigError(
                "PruneConfig: nothing to prune; give ratio or params, shapes to keep (ffn_dim, n_heads, "
                "n_kv_heads, n_layers), n_experts / n_experts_per_tok, or sparsity='2:4'"
            )

    @property
    def has_budget(self) -> bool:
        return self.ratio is not None or self.params is not None

    @property
    def expert_options(self) -> list[str]:
        opts = [f for f in ("n_experts", "n_experts_per_tok") if getattr(self, f)]
        return opts + (["kind='experts'"] if self.kind == "experts" else [])

    @classmethod
    def from_dict(cls, d: dict) -> PruneConfig:
        """From a recipe's ``prune:`` section (YAML/JSON mapping); unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"prune recipe: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        for k, v in d.items():
            want = {"ratio": (int, float)}.get(k, int if isinstance(getattr(cls, k, None), int) or k == "params"
                                               else str)
            if isinstance(v, bool) or not isinstance(v, want):
                hint = ' (write it quoted: "2:4"; YAML reads 2:4 unquoted as the number 124)' if k == "sparsity" else ""
                raise ConfigError(f"prune recipe: {k}: expected a {'string' if want is str else 'number'}, "
                                  f"got {v!r}{hint}")
        return cls(**d)


# ---- the plan: target shapes, torch-free ----------------------------------------------------------
@dataclass(frozen=True)
class Shapes:
    """Kept shapes; every layer has the same."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    n_experts: int
    n_experts_per_tok: int

    @classmethod
    def of(cls, spec: ModelSpec) -> Shapes:
        return cls(
            spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.ffn_dim, spec.n_experts, spec.n_experts_per_tok
        )


def planned_layers(spec: ModelSpec, n_layers: int) -> list[int]:
    """The layers a plan of ``n_layers`` counts with, before importance picks the real ones: the first
    ones, keeping an MoE model's MoE/dense mix proportional (exact for all-MoE and all-dense models)."""
    if not spec.is_moe or n_layers >= spec.n_layers:
        return list(range(min(n_layers, spec.n_layers)))
    n_moe = round(len(spec.moe_layers) / spec.n_layers * n_layers)
    kept = [j for j in range(spec.n_layers) if j in spec.moe_layers][:n_moe]
    kept += [j for j in range(spec.n_layers) if j not in spec.moe_layers][: n_layers - n_moe]
    return sorted(kept)


def shaped_spec(spec: ModelSpec, s: Shapes, kept_layers: list[int] | None = None) -> ModelSpec:
    """``spec`` with the kept shapes. When layers go, the per-layer lists (``moe_layers``,
    ``sliding_layers``, ``nope_layers``) are renumbered to the kept layers' new positions
    (``kept_layers``: original indices; None: ``planned_layers``); a model left with no MoE layer is
    dense, one left with no sliding-window layer has no window."""
    if kept_layers is None:
        kept_layers = planned_layers(spec, s.n_layers)

    def renumber(layers: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(i for i, j in enumerate(kept_layers) if j in layers)

    per_layer: dict = {"nope_layers": renumber(spec.nope_layers)}
    if spec.sliding_window:
        sliding = renumber(spec.sliding_layers)
        per_layer |= {"sliding_layers": sliding} if sliding else {"sliding_layers": (), "sliding_window": 0}
    if spec.is_moe:
        moe_layers = renumber(spec.moe_layers)
        per_layer |= {"moe_layers": moe_layers, "n_experts": s.n_experts, "n_experts_per_tok": s.n_experts_per_tok}
        if not moe_layers:  # only dense layers kept (ModelSpec reads an empty moe_layers as "every layer")
            per_layer |= {"n_experts": 0, "n_experts_per_tok": 0, "moe_ffn_dim": 0,
                          "shared_expert_ffn_dim": 0, "shared_expert_gate": False}
    return spec.with_(
        n_layers=s.n_layers, n_heads=s.n_heads, n_kv_heads=s.n_kv_heads, ffn_dim=s.ffn_dim,
        head_dim=spec.head_dim, **per_layer,
    )  # fmt: skip


def shape_params(spec: ModelSpec, s: Shapes) -> int:
    """Parameter count of ``spec`` pruned to ``s`` (``planned_layers``: counts do not depend on which)."""
    return shaped_spec(spec, s).param_count()


def check_shapes(spec: ModelSpec, s: Shapes) -> None:
    """Kept shapes must be positive, no larger than now, and keep KV grouping."""
    rep = spec.n_heads // spec.n_kv_heads
    for name, new, old in (
        ("n_layers", s.n_layers, spec.n_layers), ("n_heads", s.n_heads, spec.n_heads),
        ("n_kv_heads", s.n_kv_heads, spec.n_kv_heads), ("ffn_dim", s.ffn_dim, spec.ffn_dim),
    ):  # fmt: skip
        if new <= 0:
            raise ConfigError(
                f"pruning would leave {name}={new} in every layer; at least 1 must remain (the model has {old})"
            )
        if new > old:
            raise ConfigError(f"pruning cannot grow {name} from {old} to {new}")
    if s.n_heads % s.n_kv_heads or s.n_heads // s.n_kv_heads > rep:
        allowed = ", ".join(str(s.n_kv_heads * k) for k in range(1, rep + 1))
        raise ConfigError(
            f"n_heads={s.n_heads} breaks grouped-query attention with n_kv_heads={s.n_kv_heads}: each KV head "
            f"serves the same number (1..{rep}) of query heads; allowed n_heads: {allowed}"
        )
    if spec.is_moe:
        if s.n_experts <= 0:
            raise ConfigError(f"pruning would leave 0 experts per MoE layer (the model has {spec.n_experts})")
        if s.n_experts > spec.n_experts:
            raise ConfigError(f"pruning cannot grow n_experts from {spec.n_experts} to {s.n_experts}")
        if not 0 < s.n_experts_per_tok <= s.n_experts:
            raise ConfigError(
                f"n_experts_per_tok={s.n_experts_per_tok} must be in 1..{s.n_experts} (the experts kept)"
            )


def head_options(spec: ModelSpec) -> list[tuple[int, int]]:
    """Every (n_kv_heads, n_heads) reachable by removing KV groups and/or query heads per group."""
    rep = spec.n_heads // spec.n_kv_heads
    return [(kv, kv * r) for kv in range(1, spec.n_kv_heads + 1) for r in range(1, rep + 1)]


def budget_shapes(spec: ModelSpec, cfg: PruneConfig, kind: str) -> Shapes:
    """Kept shapes that spend the budget (cfg.ratio or cfg.params) on one kind of structure."""
    total = spec.param_count()
    target = cfg.params if cfg.params is not None else round(total * (1 - cfg.ratio))
    if target >= total:
        raise ConfigError(f"PruneConfig.params={target:,} is not below the model's {total:,} parameters")
    remove = total - target
    now = Shapes.of(spec)
    what = f"ratio={cfg.ratio}" if cfg.ratio is not None else f"params={cfg.params:,}"

    def too_much(limit_shapes: Shapes, structure: str) -> ConfigError:
        most = total - shape_params(spec, limit_shapes)
        return ConfigError(
            f"{what} asks to remove {remove:,} of {total:,} parameters, but removing {structure} can take at "
            f"most {most:,} ({most / total:.1%}) before a layer is left with none; lower the ratio or use "
            f"another kind (one of: {', '.join(KINDS)})"
        )

    if kind in ("mlp", "mlp+attn"):
        if spec.is_moe:
            raise ConfigError(
                f"kind={kind!r} prunes dense MLP channels; {spec.name or spec.arch} is a mixture of experts: use "
                "kind='experts', 'attn' or 'depth'"
            )
        per_channel = shape_params(spec, now) - shape_params(
            spec, Shapes(**{**now.__dict__, "ffn_dim": spec.ffn_dim - 1})
        )
        s = now
        if kind == "mlp+attn":  # the same fraction of attention as of the MLP, to the nearest head shape
            layer = spec.attention_params() + spec.mlp_params(spec.ffn_dim)
            frac = remove / (spec.n_layers * layer)
            want_attn = spec.attention_params() * (1 - frac)
            kv, nh = min(
                head_options(spec),
                key=lambda o: abs(
                    spec.with_(n_kv_heads=o[0], n_heads=o[1], head_dim=spec.head_dim).attention_params()
                    - want_attn
                ),
            )
            s = Shapes(**{**now.__dict__, "n_kv_heads": kv, "n_heads": nh})
        rest = remove - (total - shape_params(spec, s))
        ffn = spec.ffn_dim - rest / per_channel
        ffn = int(round(ffn / cfg.multiple_of) * cfg.multiple_of)
        if ffn <= 0:
            raise too_much(Shapes(**{**s.__dict__, "ffn_dim": cfg.multiple_of}), "MLP channels")
        return Shapes(**{**s.__dict__, "ffn_dim": min(ffn, spec.ffn_dim)})
    if kind == "attn":
        best = min(
            head_options(spec),
            key=lambda o: abs(
                total
                - shape_params(spec, Shapes(**{**now.__dict__, "n_kv_heads": o[0], "n_heads": o[1]}))
                - remove
            ),
        )
        s = Shapes(**{**now.__dict__, "n_kv_heads": best[0], "n_heads": best[1]})
        smallest = Shapes(**{**now.__dict__, "n_kv_heads": 1, "n_heads": 1})
        if remove > 1.5 * (total - shape_params(spec, smallest)):
            raise too_much(smallest, "attention heads")
        return s
    if kind == "depth":
        per_layer = total - shape_params(spec, Shapes(**{**now.__dict__, "n_layers": spec.n_layers - 1}))
        n = spec.n_layers - round(remove / per_layer)
        if n <= 0:
            raise too_much(Shapes(**{**now.__dict__, "n_layers": 1}), "layers")
        return Shapes(**{**now.__dict__, "n_layers": min(n, spec.n_layers - 1)})
    if kind == "experts":
        per_expert = total - shape_params(spec, Shapes(**{**now.__dict__, "n_experts": spec.n_experts - 1}))
        n = spec.n_experts - round(remove / per_expert)
        if n < now.n_experts_per_tok and not cfg.n_experts_per_tok:
            raise too_much(
                Shapes(**{**now.__dict__, "n_experts": now.n_experts_per_tok}), "experts (keeping top-k)"
            )
        if n <= 0:
            raise too_much(Shapes(**{**now.__dict__, "n_experts": 1}), "experts")
        return Shapes(**{**now.__dict__, "n_experts": n})
    raise AssertionError(kind)


def plan_shapes(spec: ModelSpec, cfg: PruneConfig, kind: str | None = None) -> Shapes:
    """The kept shapes for ``cfg`` on ``spec`` (``kind`` resolves 'auto'); raises ConfigError if infeasible."""
    if not spec.is_moe and (cfg.expert_options):
        raise ConfigError(
            f"expert pruning ({', '.join(cfg.expert_options)}) needs a mixture-of-experts model; "
            f"{spec.name or spec.arch} is dense (n_experts=0); use kind 'mlp', 'attn', 'mlp+attn' or 'depth'"
        )
    kind = kind or cfg.kind
    if cfg.has_budget:
        assert kind != "auto", "resolve 'auto' to a concrete kind first"
        s = budget_shapes(spec, cfg, kind)
    else:
        s = Shapes(
            n_layers=cfg.n_layers or spec.n_layers,
            n_heads=cfg.n_heads
            or (spec.n_heads if not cfg.n_kv_heads else cfg.n_kv_heads * (spec.n_heads // spec.n_kv_heads)),
            n_kv_heads=cfg.n_kv_heads or spec.n_kv_heads,
            ffn_dim=cfg.ffn_dim or spec.ffn_dim,
            n_experts=cfg.n_experts or spec.n_experts,
            n_experts_per_tok=spec.n_experts_per_tok,
        )
    if spec.is_moe:
        if cfg.n_experts:
            s = Shapes(**{**s.__dict__, "n_experts": cfg.n_experts})
        k = cfg.n_experts_per_tok or min(spec.n_experts_per_tok, s.n_experts)
        s = Shapes(**{**s.__dict__, "n_experts_per_tok": k})
    check_shapes(spec, s)
    return s


# ---- calibration statistics ----------------------------------------------------------------------
@dataclass
class LayerStats:
    """Second moments of the inputs of every linear in one layer, over calibration tokens."""

    attn_in: Any = None  # (dim,) sum of squares of the normed attention input
    head_cov: Any = None  # (n_heads, hd, hd) sum of z_h^T z_h, z = attention output before o_proj
    mlp_in: Any = None  # (dim,)
    mlp_hidden: Any = None  # (ffn,) sum of squares of silu(gate) * up (dense MLP)
    influence: float = 0.0  # sum over tokens of 1 - cos(x_in, x_out)
    expert_count: Any = None  # (n_experts,) tokens routed to each expert
    expert_contrib: Any = None  # (n_experts,) sum over tokens of ||gate_e * expert_e(x)||
    expert_hidden: Any = None  # (n_experts, moe_ffn) sums of squares
    tokens: int = 0


def collect_stats(model, calib: np.ndarray, batch: int = 4) -> list[LayerStats]:
    """One forward pass over the calibration tokens (n, seq) with hooks recording per-layer statistics."""
    import torch

    spec = model.spec
    stats = [LayerStats() for _ in range(spec.n_layers)]
    handles = []

    def acc(st: LayerStats, name: str, value):
        cur = getattr(st, name)
        setattr(st, name, value if cur is None else cur + value)

    def sq(x):  # (..., C) -> (C,) float64 sum of squares
        return x.reshape(-1, x.shape[-1]).double().pow(2).sum(0)

    for i, layer in enumerate(model.layers):
        st = stats[i]
        attn = layer.self_attn
        handles.append(
            attn.q_proj.register_forward_pre_hook(lambda m, a, st=st: acc(st, "attn_in", sq(a[0])))
        )

        def o_hook(m, a, st=st, nh=attn.n_heads, hd=attn.hd):
            z = a[0].reshape(-1, nh, hd).double().transpose(0, 1)  # (nh, N, hd)
            acc(st, "head_cov", z.transpose(1, 2) @ z)

        handles.append(attn.o_proj.register_forward_pre_hook(o_hook))

        def layer_hook(m, a, out, st=st):
            x = a[0]
            cos = torch.nn.functional.cosine_similarity(x.double(), out.double(), dim=-1)
            st.influence += float((1 - cos).sum())
            st.tokens += x.shape[0] * x.shape[1]

        handles.append(layer.register_forward_hook(layer_hook))
        mlp = layer.mlp
        if hasattr(mlp, "experts"):
            handles.append(mlp.register_forward_pre_hook(lambda m, a, st=st: moe_pre(m, a[0], st)))
            for e, expert in enumerate(mlp.experts):
                handles.append(
                    expert.register_forward_hook(lambda m, a, out, st=st, e=e: expert_out(out, st, e))
                )
                handles.append(
                    expert.down_proj.register_forward_pre_hook(
                        lambda m, a, st=st, e=e: expert_hidden(a[0], st, e)
                    )
                )
        else:
            handles.append(mlp.register_forward_pre_hook(lambda m, a, st=st: acc(st, "mlp_in", sq(a[0]))))
            handles.append(
                mlp.down_proj.register_forward_pre_hook(lambda m, a, st=st: acc(st, "mlp_hidden", sq(a[0])))
            )

    routing: dict[int, Any] = {}

    def moe_pre(m, x, st):
        acc(st, "mlp_in", sq(x))
        w, top_i = m.routing(x)  # (..., E), (..., k)
        routing[id(st)] = w
        counts = torch.zeros(w.shape[-1], dtype=torch.float64)
        counts.scatter_add_(0, top_i.reshape(-1), torch.ones(top_i.numel(), dtype=torch.float64))
        acc(st, "expert_count", counts)

    def expert_out(out, st, e):
        w = routing[id(st)][..., e]  # (B, T)
        contrib = torch.zeros(len(st.expert_count), dtype=torch.float64)
        contrib[e] = float((out.double().norm(dim=-1) * w.double()).sum())
        acc(st, "expert_contrib", contrib)

    def expert_hidden(h, st, e):
        full = torch.zeros(len(st.expert_count), h.shape[-1], dtype=torch.float64)
        full[e] = sq(h)
        acc(st, "expert_hidden", full)

    try:
        with torch.no_grad():
            t = torch.as_tensor(np.asarray(calib), dtype=torch.long)
            for b in range(0, len(t), batch):
                model(t[b : b + batch])
    finally:
        for h in handles:
            h.remove()
    return stats


# ---- importance scores ---------------------------------------------------------------------------
def channel_scores(layer, st: LayerStats | None, importance: str):
    """(ffn,) importance of each MLP channel: its output energy (activation) or its weights' norm."""
    m = layer.mlp
    down_norm = m.down_proj.weight.double().norm(dim=0)  # (ffn,)
    if importance == "magnitude":
        g, u = m.gate_proj.weight.double(), m.up_proj.weight.double()
        return (g.pow(2).sum(1) + u.pow(2).sum(1) + down_norm.pow(2)).sqrt()
    return down_norm * st.mlp_hidden.sqrt()


def head_scores(layer, st: LayerStats | None, importance: str):
    """(n_heads,) importance of each query head: output energy through o_proj, or weight norm."""
    a = layer.self_attn
    nh, hd = a.n_heads, a.hd
    wo = a.o_proj.weight.double().reshape(-1, nh, hd).transpose(0, 1)  # (nh, dim, hd)
    if importance == "magnitude":
        wq = a.q_proj.weight.double().reshape(nh, hd, -1)
        return (wq.pow(2).sum((1, 2)) + wo.pow(2).sum((1, 2))).sqrt()
    # E||W_h z_h||^2 = trace(W_h C_h W_h^T)
    return (wo @ st.head_cov).mul(wo).sum((1, 2)).clamp_min(0).sqrt()


def kv_group_scores(layer, st: LayerStats | None, importance: str):
    """(n_kv,) importance of each KV group: its query heads' scores (+ K/V weights for magnitude)."""
    a = layer.self_attn
    rep = a.n_heads // a.n_kv
    s = head_scores(layer, st, importance).pow(2).reshape(a.n_kv, rep).sum(1)
    if importance == "magnitude":
        s = s + a.k_proj.weight.double().reshape(a.n_kv, -1).pow(2).sum(1)
        s = s + a.v_proj.weight.double().reshape(a.n_kv, -1).pow(2).sum(1)
    return s.sqrt()


def layer_scores(model, stats: list[LayerStats] | None, importance: str) -> list[float]:
    """Importance of each layer: block influence (mean 1 - cos(in, out)), or its weights' norm."""
    if importance == "magnitude":
        return [
            math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in layer.parameters()))
            for layer in model.layers
        ]
    return [st.influence / max(st.tokens, 1) for st in stats]


def expert_scores(layer, st: LayerStats, how: str):
    return st.expert_count.clone() if how == "frequency" else st.expert_contrib.clone()


def top(scores, k: int) -> list[int]:
    """Indices of the k highest scores, in ascending index order (ties: lower index first)."""
    import torch

    order = torch.argsort(-torch.as_tensor(scores, dtype=torch.float64), stable=True)
    return sorted(int(i) for i in order[:k])


# ---- the pruned model ----------------------------------------------------------------------------
@dataclass
class Selection:
    """What each kept layer keeps, by original index."""

    layers: list[int]
    kv_groups: dict[int, list[int]] = field(default_factory=dict)  # layer -> kept KV heads
    heads: dict[int, list[int]] = field(default_factory=dict)  # layer -> kept query heads (group-major)
    channels: dict[int, list[int]] = field(default_factory=dict)  # layer -> kept MLP channels
    experts: dict[int, list[int]] = field(default_factory=dict)  # layer -> kept experts


def select(model, s: Shapes, stats: list[LayerStats] | None, cfg: PruneConfig) -> Selection:
    """Choose which layers, heads, channels and experts stay, by importance."""
    spec = model.spec
    imp = cfg.importance
    layers = list(range(spec.n_layers))
    if s.n_layers < spec.n_layers:
        layers = top(layer_scores(model, stats, imp), s.n_layers)
    sel = Selection(layers)
    rep_old = spec.n_heads // spec.n_kv_heads
    rep = s.n_heads // s.n_kv_heads
    for j in layers:
        layer, st = model.layers[j], (stats[j] if stats else None)
        if (s.n_heads, s.n_kv_heads) != (spec.n_heads, spec.n_kv_heads):
            groups = top(kv_group_scores(layer, st, imp), s.n_kv_heads)
            hs = head_scores(layer, st, imp)
            heads: list[int] = []
            for g in groups:
                within = top(hs[g * rep_old : (g + 1) * rep_old], rep)
                heads += [g * rep_old + h for h in within]
            sel.kv_groups[j], sel.heads[j] = groups, heads
        if not spec.is_moe_layer(j) and s.ffn_dim < spec.ffn_dim:
            sel.channels[j] = top(channel_scores(layer, st, imp), s.ffn_dim)
        if spec.is_moe_layer(j) and s.n_experts < spec.n_experts:
            sel.experts[j] = top(expert_scores(layer, st, cfg.expert_score), s.n_experts)
    return sel


def build(model, spec: ModelSpec, sel: Selection):
    """A new Transformer with ``spec``'s shapes holding the selected slices of ``model``'s weights."""
    import torch

    from edge.model.llama import Transformer, rope_frequencies

    old = model.state_dict()
    hd = model.spec.head_dim
    state: dict[str, Any] = {}
    for name in ("embed_tokens.weight", "norm.weight", "lm_head.weight"):
        state[name] = old[name]

    def rows(idx: list[int], size: int):  # head indices -> row indices
        return torch.tensor([h * size + r for h in idx for r in range(size)], dtype=torch.long)

    for i, j in enumerate(sel.layers):
        src, dst = f"layers.{j}.", f"layers.{i}."
        for name, t in old.items():
            if not name.startswith(src):
                continue
            rest = name[len(src) :]
            if j in sel.heads:
                q_rows, kv_rows = rows(sel.heads[j], hd), rows(sel.kv_groups[j], hd)
                if rest.startswith("self_attn.q_proj."):
                    t = t.index_select(0, q_rows)
                elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                    t = t.index_select(0, kv_rows)
                elif rest == "self_attn.o_proj.weight":
                    t = t.index_select(1, q_rows)
            if j in sel.channels:
                ch = torch.tensor(sel.channels[j], dtype=torch.long)
                if rest in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                    t = t.index_select(0, ch)
                elif rest == "mlp.down_proj.weight":
                    t = t.index_select(1, ch)
            if j in sel.experts:
                keep = sel.experts[j]
                if rest == "mlp.gate.weight":  # router (n_experts, dim): its rows go with the experts
                    t = t.index_select(0, torch.tensor(keep, dtype=torch.long))
                elif rest.startswith("mlp.experts."):
                    e = int(rest.split(".")[2])
                    if e not in keep:
                        continue
                    rest = f"mlp.experts.{keep.index(e)}." + rest.split(".", 3)[3]
            state[dst + rest] = t.clone()
    with torch.device("meta"):
        new = Transformer(spec)
    if spec.tie_embeddings:
        del state["lm_head.weight"]
        state["lm_head.weight"] = state["embed_tokens.weight"]
    new.load_state_dict(state, strict=True, assign=True)
    if spec.tie_embeddings:
        new.lm_head.weight = new.embed_tokens.weight
    new.inv_freq = rope_frequencies(spec)
    return new.eval().requires_grad_(False)


# ---- recovery: least-squares refit of o_proj and down_proj ---------------------------------------
def solve_ridge(xtx, xty, w0, damp: float | None = None):
    """argmin_W ||X W^T - Y||^2 + lam ||W - w0||^2 from X^T X (k, k), X^T Y (k, out) and w0 (out, k).

    lam = damp * mean(diag(X^T X)). The ridge pulls towards the weights before the refit, not towards
    zero: a few channels carry most of the activation energy (massive activations), so a lam sized by
    them would crush every other channel's weights if it pulled towards zero."""
    import torch

    k = xtx.shape[0]
    damp = LSTSQ_DAMP if damp is None else damp
    lam = damp * float(xtx.diagonal().mean()) + 1e-12
    rhs = xty + lam * w0.double().T
    return torch.linalg.solve(xtx + lam * torch.eye(k, dtype=xtx.dtype), rhs).T  # (out, k)


def dense_stream(dense, calib: np.ndarray, batch: int = 8) -> list:
    """The unpruned model's residual stream on the calibration tokens: for every layer, its input and
    its state after attention, each (n, T, dim), plus the final output (the targets of ``recover``)."""
    import torch

    t = torch.as_tensor(np.asarray(calib), dtype=torch.long)
    n, T = t.shape
    chunks = [slice(b, min(b + batch, n)) for b in range(0, n, batch)]
    per_layer = dense.no_cache_inputs(T, dense.embed_tokens.weight.dtype)  # (cos, sin, mask) per layer
    out = []
    with torch.no_grad():
        x = dense.embed(t)
        for layer, (cos, sin, mask) in zip(dense.layers, per_layer):
            h = torch.cat(
                [layer.attn_residual(x[c], layer.self_attn(layer.input_layernorm(x[c]), cos, sin, mask, None))
                 for c in chunks]
            )
            out.append((x, h))
            x = torch.cat([layer.mlp_residual(h[c]) for c in chunks])
    out.append((x, x))
    return out


def recover(
    dense,
    pruned,
    sel: Selection,
    calib: np.ndarray,
    stream: list | None = None,
    batch: int = 8,
    target: str = "layer",
) -> None:
    """Refit every kept layer's o_proj and down_proj, in order, by ridge least squares on the inputs
    the pruned model itself feeds them (shapes (n, T, dim)). Two targets:

    * ``layer``: what the unpruned layer computes on the same input. Kept channels and heads see the
      same values as before, so the refit folds the removed channels' contribution into the kept
      ones (W' = W_kept + W_removed * regression of removed on kept activations); a layer before a
      removed one also absorbs the removed layers' residual update.
    * ``stream``: the unpruned model's residual stream (``dense_stream``), which also asks each
      refit to undo the drift left by earlier layers. Fits calibration text harder, generalises worse
      (benchmarks/prune.py).
    """
    import torch

    post = dense.spec.post_norms
    if target == "stream" and post:
        raise ConfigError(f"{dense.spec.name or dense.spec.arch}: recovery target 'stream' fits o_proj and "
                          "down_proj to residual updates, which post-norms (Gemma 3) pass through an RMSNorm "
                          "first; use target 'layer'")
    if target == "stream" and stream is None:
        stream = dense_stream(dense, calib, batch)
    t = torch.as_tensor(np.asarray(calib), dtype=torch.long)
    n, T = t.shape
    chunks = [slice(b, min(b + batch, n)) for b in range(0, n, batch)]
    dtype = pruned.embed_tokens.weight.dtype
    p_inputs, d_inputs = pruned.no_cache_inputs(T, dtype), dense.no_cache_inputs(T, dtype)  # (cos, sin, mask)
    with torch.no_grad():
        x_p = pruned.embed(t)  # (n, T, dim): the pruned model's residual stream
        for i, j in enumerate(sel.layers):
            P, D = pruned.layers[i], dense.layers[j]
            p_in, d_in = (*p_inputs[i], None), (*d_inputs[j], None)
            removed_after = range(
                j + 1, sel.layers[i + 1] if i + 1 < len(sel.layers) else dense.spec.n_layers
            )
            # attention half: o_proj's inputs z (B, T, q_dim); with post-norms the target is the
            # attention output before its norm (o_proj's own output)
            if target == "stream" or j in sel.heads:
                with inputs_of(P.self_attn.o_proj) as z:
                    for c in chunks:
                        P.self_attn(P.input_layernorm(x_p[c]), *p_in)
                if target == "stream":
                    tgt = [stream[j][1][c] - x_p[c] for c in chunks]
                else:
                    tgt = [D.self_attn(D.input_layernorm(x_p[c]), *d_in) for c in chunks]
                refit(P.self_attn.o_proj, z, tgt)
                h_p = torch.cat([P.attn_residual(x_p[c], P.self_attn.o_proj(zc)) for c, zc in zip(chunks, z)])
            else:  # heads untouched: the layer-target refit would return the same weights
                h_p = torch.cat(
                    [P.attn_residual(x_p[c], P.self_attn(P.input_layernorm(x_p[c]), *p_in)) for c in chunks]
                )
            # MLP half: down_proj's inputs (B, T, ffn). Removed layers' updates fold into this MLP
            # only without post-norms (with them the MLP's output passes a norm before the residual)
            mlp_changed = j in sel.channels or (len(removed_after) > 0 and not post)
            if not hasattr(P.mlp, "down_proj") or (target == "layer" and not mlp_changed):
                x_p = torch.cat([P.mlp_residual(h_p[c]) for c in chunks])
                continue
            with inputs_of(P.mlp.down_proj) as u:
                for c in chunks:
                    P.mlp(P.mlp_norm(h_p[c]))
            if target == "stream":
                x_next = stream[sel.layers[i + 1] if i + 1 < len(sel.layers) else len(stream) - 1][0]
                tgt = [x_next[c] - h_p[c] for c in chunks]
            elif post:
                tgt = [D.mlp(D.mlp_norm(h_p[c])) for c in chunks]  # before post_feedforward_layernorm
            else:
                tgt = []
                for c in chunks:
                    y = D.mlp_residual(h_p[c])
                    for r in removed_after:  # fold the removed layers' update into this MLP
                        y = dense.layers[r](y, *d_inputs[r], None)
                    tgt.append(y - h_p[c])
            refit(P.mlp.down_proj, u, tgt)
            x_p = h_p + torch.cat([P.post_feedforward_layernorm(P.mlp.down_proj(uc)) if post
                                   else P.mlp.down_proj(uc) for uc in u])


@contextmanager
def inputs_of(linear):
    """Collect the inputs ``linear`` sees inside the block, one tensor per call."""
    seen: list = []
    h = linear.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        yield seen
    finally:
        h.remove()


def refit(linear, inputs: list, targets: list) -> None:
    """Least-squares refit of ``linear.weight`` (out, k) so that ``inputs[i]`` (B, T, k) map to
    ``targets[i]`` (B, T, out)."""
    xtx = xty = 0
    for x, y in zip(inputs, targets, strict=True):
        x = x.reshape(-1, linear.in_features).float()  # (B*T, k)
        y = y.reshape(-1, linear.out_features).float()  # (B*T, out)
        # products in fp32 (a chunk is a few thousand rows), sums over chunks in fp64
        xtx = xtx + (x.T @ x).double()
        xty = xty + (x.T @ y).double()
    linear.weight.copy_(solve_ridge(xtx, xty, linear.weight).to(linear.weight.dtype))


# ---- 2:4 sparsity --------------------------------------------------------------------------------
SPARSE_TENSORS = ("attn", "mlp")  # which linears a 2:4 mask covers (embedding and lm_head stay dense)


def nm_mask(w, score, n: int = 2, m: int = 4):
    """Keep the n highest-scoring of every m consecutive input weights of each row. w, score: (out, in)."""
    import torch

    out, cols = w.shape
    if cols % m:
        raise ConfigError(f"{n}:{m} sparsity needs rows whose length is a multiple of {m}; got {cols}")
    s = score.reshape(out, cols // m, m)
    keep = torch.zeros_like(s, dtype=torch.bool).scatter(-1, s.topk(n, dim=-1).indices, True)
    return keep.reshape(out, cols)


def sparsify(model, stats: list[LayerStats] | None, importance: str) -> None:
    """Zero 2 of every 4 consecutive input weights of every attention and MLP linear, in place.
    Score: |W| (magnitude) or |W| * ||x_in|| per input channel (activation, Wanda)."""
    for i, layer in enumerate(model.layers):
        st = stats[i] if stats else None
        a = layer.self_attn
        hd = a.hd
        z_norm = None
        if st is not None:
            z_norm = st.head_cov.diagonal(dim1=1, dim2=2).reshape(-1).sqrt()  # (nh*hd,)
        linears = [(a.q_proj, "attn_in"), (a.k_proj, "attn_in"), (a.v_proj, "attn_in"), (a.o_proj, z_norm)]
        mlps = list(layer.mlp.experts) if hasattr(layer.mlp, "experts") else [layer.mlp]
        if getattr(layer.mlp, "shared_expert", None) is not None:
            mlps.append(layer.mlp.shared_expert)
        for e, m in enumerate(mlps):
            hidden = None
            if st is not None:
                if hasattr(layer.mlp, "experts") and e < len(layer.mlp.experts):
                    hidden = st.expert_hidden[e].sqrt()
                elif not hasattr(layer.mlp, "experts"):
                    hidden = st.mlp_hidden.sqrt()
            linears += [(m.gate_proj, "mlp_in"), (m.up_proj, "mlp_in"), (m.down_proj, hidden)]
        assert hd > 0
        for lin, x in linears:
            w = lin.weight
            score = w.detach().abs().double()
            if importance == "activation" and x is not None:
                xn = getattr(st, x).sqrt() if isinstance(x, str) else x
                score = score * xn[None, :]
            w.mul_(nm_mask(w, score).to(w.dtype))


# ---- the stage -----------------------------------------------------------------------------------
@dataclass
class PruneResult:
    model: Any  # edge.model.llama.Transformer with the pruned shapes; model.spec == spec
    spec: ModelSpec
    report: dict  # what was removed, scores, kinds tried: written as pruning.json next to the model


def calib_kl(ref, model, calib: np.ndarray, n: int = 8) -> float:
    """Mean KL(ref || model) per token on the first n calibration sequences (nats)."""
    import torch

    t = torch.as_tensor(np.asarray(calib[:n]), dtype=torch.long)
    with torch.no_grad():
        total = 0.0
        for b in range(0, len(t), 4):
            total += float(kl_divergence(ref(t[b : b + 4]).double(), model(t[b : b + 4]).double()).sum())
    return total / t.numel()


def needs_calib(cfg: PruneConfig, spec: ModelSpec) -> str:
    """Why this config needs calibration tokens ('' if it does not)."""
    if cfg.importance == "activation":
        return "importance='activation'"
    if cfg.recovery != "none":
        return f"recovery={cfg.recovery!r}"
    if cfg.kind == "auto" and cfg.has_budget:
        return "kind='auto' (it measures each kind's KL on calibration text)"
    if spec.is_moe and (cfg.n_experts or cfg.kind == "experts"):
        return f"expert pruning (expert_score={cfg.expert_score!r})"
    return ""


def prune(model, cfg: PruneConfig, calib: np.ndarray | None = None, cache: dict | None = None) -> PruneResult:
    """Prune ``model`` (our Transformer; not modified) as ``cfg`` says, scoring on ``calib`` tokens (n, seq).

    Returns a new model whose spec records what was removed (``spec.pruning``). ``cache``: an empty
    dict to keep the unpruned model's calibration statistics and residual stream in, reused by later
    calls with the same model and calibration tokens (the benchmark prunes one model many ways)."""
    cache = {} if cache is None else cache
    spec = model.spec
    if not spec.is_moe and cfg.expert_options:
        plan_shapes(spec, cfg)  # raises the dense-model error
    why = needs_calib(cfg, spec)
    if why and calib is None:
        raise ConfigError(
            f"pruning with {why} needs calibration tokens; pass calib= (edge.calib.token_batches) or use "
            "importance='magnitude', recovery='none' and an explicit kind"
        )
    if calib is not None:
        calib = np.asarray(calib)
        if calib.ndim != 2 or calib.shape[1] < 2:
            raise ConfigError(
                f"calibration tokens must be an (n_samples, seq_len >= 2) array, got shape {calib.shape}"
            )
    structural = cfg.has_budget or any(
        getattr(cfg, f)
        for f in ("ffn_dim", "n_heads", "n_kv_heads", "n_layers", "n_experts", "n_experts_per_tok")
    )
    kinds = [cfg.kind]
    if cfg.has_budget and cfg.kind == "auto":
        kinds = list(AUTO_KINDS["moe" if spec.is_moe else "dense"])
    plans: dict[str, Shapes] = {}
    errors: dict[str, str] = {}
    for k in kinds:
        try:
            plans[k] = plan_shapes(spec, cfg, k if cfg.has_budget else None)
        except ConfigError as e:
            if len(kinds) == 1:
                raise
            errors[k] = str(e)
    if not plans:
        raise ConfigError(f"no kind of structured pruning reaches this budget: {'; '.join(errors.values())}")
    stats = cache.get("stats")
    if stats is None and calib is not None and (cfg.importance == "activation" or spec.is_moe):
        stats = cache["stats"] = collect_stats(model, calib)
    report: dict = {"config": {k: v for k, v in cfg.__dict__.items()}, "params_before": spec.param_count()}
    tried: dict[str, dict] = {}
    new, sel, kind = model, Selection(list(range(spec.n_layers))), "none"
    if structural:
        for k, s in plans.items():
            sel_k = select(model, s, stats, cfg)
            new_spec = shaped_spec(spec, s, sel_k.layers)
            cand = build(model, new_spec, sel_k)
            entry = {"shapes": s.__dict__, "params": new_spec.param_count()}
            if len(plans) > 1:
                entry["calib_kl"] = calib_kl(model, cand, calib)
            tried[k] = entry
            if len(plans) == 1 or entry["calib_kl"] <= min(
                v.get("calib_kl", math.inf) for v in tried.values()
            ):
                new, sel, kind = cand, sel_k, k
        report["kinds_tried"] = tried
        report["kinds_infeasible"] = errors
        if cfg.recovery != "none":
            target = "stream" if cfg.recovery == "lstsq-stream" else "layer"
            if target == "stream" and "stream" not in cache:
                cache["stream"] = dense_stream(model, calib)
            recover(model, new, sel, calib, cache.get("stream"), target=target)
    else:
        new = build(model, spec, sel)  # a copy: the caller's model stays as it was
    if cfg.sparsity:
        st2 = None
        if cfg.importance == "activation" and calib is not None:  # unpruned model: its stats still hold
            st2 = stats if stats is not None and not structural else collect_stats(new, calib)
        sparsify(new, st2, cfg.importance)
    pruning = pruning_metadata(spec, new.spec, cfg, kind, sel, calib)
    final = new.spec.with_(pruning=pruning)
    new.spec = final
    report.update(
        kind=kind, params_after=final.param_count(), selection=sel.__dict__,
        scores=score_report(model, stats, cfg, sel) if structural else {},
    )  # fmt: skip
    return PruneResult(new, final, report)


def pruning_metadata(
    old: ModelSpec, new: ModelSpec, cfg: PruneConfig, kind: str, sel: Selection, calib
) -> tuple:
    """(key, value) strings for ModelSpec.pruning: enough for the simulator, exporters and manifest."""
    meta = list(old.pruning) + [
        ("method", "structured" if kind != "none" else "none"),
        ("kind", kind),
        ("importance", cfg.importance),
        ("recovery", cfg.recovery if kind != "none" else "none"),
        ("params_before", str(old.param_count())),
        ("params_after", str(new.param_count())),
        ("calib_tokens", str(int(np.asarray(calib).size)) if calib is not None else "0"),
    ]
    if len(sel.layers) < old.n_layers:
        meta.append(("layers_removed", json.dumps([j for j in range(old.n_layers) if j not in sel.layers])))
    if sel.heads:
        meta.append(("heads_kept", json.dumps({str(j): h for j, h in sel.heads.items()})))
    if sel.channels:
        meta.append(("ffn_dim_before", str(old.ffn_dim)))
    if sel.experts:
        meta.append(("experts_kept", json.dumps({str(j): e for j, e in sel.experts.items()})))
        meta.append(("expert_score", cfg.expert_score))
    if new.n_experts_per_tok != old.n_experts_per_tok:
        meta.append(("n_experts_per_tok_before", str(old.n_experts_per_tok)))
    if cfg.sparsity:
        meta += [("sparsity", cfg.sparsity), ("sparse_tensors", ",".join(SPARSE_TENSORS))]
    return tuple(meta)


def score_report(model, stats, cfg: PruneConfig, sel: Selection) -> dict:
    """Per-layer importance scores (rounded) of the structures that were candidates for removal."""
    spec = model.spec
    out: dict = {}
    if len(sel.layers) < spec.n_layers:
        out["layers"] = [round(float(x), 6) for x in layer_scores(model, stats, cfg.importance)]
    for j in sel.heads:
        st = stats[j] if stats else None
        out.setdefault("heads", {})[j] = [
            round(float(x), 5) for x in head_scores(model.layers[j], st, cfg.importance)
        ]
    for j in sel.experts:
        out.setdefault("experts", {})[j] = [
            round(float(x), 5) for x in expert_scores(model.layers[j], stats[j], cfg.expert_score)
        ]
    return out


# ---- recipes and the model-directory entry point (used by `edge prune`) ---------------------------
# Named recipes: data, each a PruneConfig. The benchmark (benchmarks/prune.py) backs the defaults.
PRUNE_PRESETS: dict[str, PruneConfig] = {
    "mlp-10": PruneConfig(ratio=0.1, kind="mlp"),
    "mlp-20": PruneConfig(ratio=0.2, kind="mlp"),
    "width-20": PruneConfig(ratio=0.2, kind="mlp+attn"),
    "depth-20": PruneConfig(ratio=0.2, kind="depth"),
    "2:4": PruneConfig(sparsity="2:4", recovery="none"),
}
CALIB_KEYS = {
    "calib": str,
    "calib_samples": int,
    "seq_len": int,
    "seed": int,
}  # recipe keys that are not PruneConfig's


def load_prune_recipe(name_or_path: str) -> tuple[PruneConfig, dict]:
    """A preset name, or a YAML/JSON file whose ``prune:`` section holds PruneConfig fields (plus
    ``calib``, ``calib_samples``, ``seq_len``, ``seed``). Returns (config, calibration options)."""
    from pathlib import Path

    if name_or_path in PRUNE_PRESETS:
        return PRUNE_PRESETS[name_or_path], {}
    p = Path(name_or_path)
    if not p.is_file():
        raise ConfigError(
            f"prune recipe {name_or_path!r}: not a preset and no such file; presets: {', '.join(PRUNE_PRESETS)}"
        )
    import yaml

    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML/JSON ({e})") from e
    section = doc.get("prune") if isinstance(doc, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{p}: needs a 'prune:' mapping of PruneConfig fields")
    calib = {k: CALIB_KEYS[k](section.pop(k)) for k in list(section) if k in CALIB_KEYS}
    return PruneConfig.from_dict(section), calib


def prune_to_dir(
    model: str,
    cfg: PruneConfig,
    out,
    calib: str = "general:1",
    calib_samples: int = 32,
    seq_len: int = 256,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Load ``model``, prune it with calibration text ``calib`` (a mix spec of edge.calib), and write a
    model directory at ``out`` (config.json, model.safetensors, tokenizer, edge_spec.json, pruning.json),
    atomically. Returns a summary dict."""
    from pathlib import Path

    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists; choose a new directory or pass --force")
    spec = load_spec(model)  # shape checks before loading any weights
    if not spec.is_moe and cfg.expert_options:
        plan_shapes(spec, cfg)  # raises: expert options on a dense model
    if not (cfg.has_budget and cfg.kind == "auto"):
        plan_shapes(spec, cfg)

    lm = load_model(model)
    tokens = None
    calib_info: dict = {}
    if needs_calib(cfg, lm.spec) or cfg.sparsity:
        ccfg = CalibConfig.from_spec(calib, n_samples=calib_samples, seq_len=seq_len, seed=seed)
        tokens = token_batches(lm.tokenizer, ccfg)
        calib_info = {"calib": calib, "n_samples": calib_samples, "seq_len": seq_len, "seed": seed,
                      "dataset_hash": dataset_hash(ccfg)}  # fmt: skip
    res = prune(lm.model, cfg, tokens)
    report = {**res.report, "model": model, "calibration": calib_info}
    extra = {"pruning.json": json.dumps(report, indent=2, default=_jsonable)}
    save_model(res.model, res.spec, lm.tokenizer, out, overwrite=force, extra_files=extra)
    return {"model": model, "out": str(out), "kind": report["kind"], "params_before": report["params_before"],
            "params_after": report["params_after"], "spec": res.spec.to_dict(),
            "kinds_tried": report.get("kinds_tried", {})}  # fmt: skip


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# ---- the prune: section of edge build recipes -----------------------------------------------------
# a build recipe: a quantization preset, the KV cache type and runtime to build for, pruning
BUILD_RECIPE_KEYS = ("base", "kv_cache", "runtime", "prune", "name", "note")


@dataclass(frozen=True)
class BuildRecipe:
    """What ``edge build --recipe FILE`` does: prune (optional), then quantize with preset ``quant``
    ('' = the target's default recipe), then export. ``calib``: the pruning calibration options."""

    quant: str
    prune: PruneConfig | None = None
    calib: dict = field(default_factory=dict)
    source: str = ""
    kv_cache: str = ""  # '' = the preset's; else edge.recipes.KV_CACHE
    runtime: str = ""  # '' = the target's default for the preset

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        if self.quant:  # a preset of the one table (edge.recipes), or one error listing them
            preset(self.quant, f"{where}base" if self.source else "recipe")
        if self.kv_cache:
            object.__setattr__(self, "kv_cache", kv_cache(self.kv_cache, f"{where}kv_cache"))


def read_build_recipe(name_or_path: str) -> BuildRecipe:
    """A quantization preset name (no pruning), or a YAML/JSON file::

        base: q4_0          # the quantization preset (optional: the target's default)
        kv_cache: int8      # optional: fp32 | fp16 | bf16 | int8, llama.cpp's f32/f16 read too (default: the preset's)
        runtime: llama.cpp  # optional: one of the target's runtimes (default: the target's for the preset)
        prune:              # PruneConfig fields, plus calib, calib_samples, seq_len, seed
          ratio: 0.2
          kind: mlp
    """
    from pathlib import Path

    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml", ".json") or not p.is_file():
        if p.suffix in (".yaml", ".yml", ".json"):
            raise ConfigError(f"build recipe {name_or_path}: no such file")
        return BuildRecipe(quant=str(name_or_path))
    import yaml

    try:
        doc = yaml.safe_load(p.read_text())  # JSON is YAML
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML/JSON ({str(e).splitlines()[0]})") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping with keys {', '.join(BUILD_RECIPE_KEYS)}")

    bad = [k for k in doc if k not in BUILD_RECIPE_KEYS]
    if bad:
        what = "a quantization override, which edge build does not apply (edge quantize does); " if bad[0] in (
            "weights", "method", "layers", "tensors", "activations", "smoothquant", "gptq", "awq"
        ) else ""
        raise ConfigError(f"{p}: {bad[0]}: {what}unknown key in a build recipe; allowed: {', '.join(BUILD_RECIPE_KEYS)}")
    quant = doc.get("base") or ""
    kv = str(doc.get("kv_cache") or "")
    runtime = str(doc.get("runtime") or "")
    section = doc.get("prune")
    if section is None:
        return BuildRecipe(quant=quant, source=str(p), kv_cache=kv, runtime=runtime)
    if not isinstance(section, dict):
        raise ConfigError(f"{p}: prune: expected a mapping of PruneConfig fields, got {type(section).__name__}")
    section = dict(section)
    try:
        calib = {k: CALIB_KEYS[k](section.pop(k)) for k in list(section) if k in CALIB_KEYS}
        cfg = PruneConfig.from_dict(section)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{p}: prune: {e}") from e
    except ConfigError as e:
        raise ConfigError(f"{p}: prune: {e}") from e
    return BuildRecipe(quant=quant, prune=cfg, calib=calib, source=str(p), kv_cache=kv, runtime=runtime)


def check_block_sizes(spec: ModelSpec, quant: str, where: str = "") -> None:
    """The pruned row lengths (o_proj: n_heads * head_dim, down_proj: ffn_dim) must be multiples of
    the quantization preset's block/group size; name the tensor otherwise."""
    rec = PRESETS.get(quant)
    if rec is None:
        return
    from edge.quant.primitives import get_format

    for cls, module, cols in (("attn_o", "self_attn.o_proj", spec.q_dim), ("ffn_down", "mlp.down_proj", spec.ffn_dim),
                              ("ffn_down", "mlp.experts.N.down_proj", spec.moe_ffn_dim if spec.is_moe else 0)):
        for i in range(spec.n_layers):
            fmt = get_format(rec.format_for(cls, i))
            if cols and not fmt.is_float and fmt.group and cols % fmt.group:
                raise ConfigError(
                    f"{where}the pruned tensor 'layers.{i}.{module}.weight' has rows of {cols} ({cls}), not a "
                    f"multiple of the {fmt.name} block size {fmt.group} (recipe {quant}): keep a multiple of {fmt.group} "
                    f"(prune: multiple_of: {fmt.group}, or an ffn_dim/n_heads that gives one)"
                )


def prune_loaded(lm, br: BuildRecipe, progress=print):
    """The prune stage of ``edge build``: ``lm`` (a LoadedModel) pruned as ``br.prune`` says, with
    its calibration options; returns a LoadedModel with the pruned model and spec (same tokenizer
    and source)."""
    import dataclasses

    cfg = br.prune
    spec = lm.spec
    if not (cfg.has_budget and cfg.kind == "auto"):
        check_block_sizes(shaped_spec(spec, plan_shapes(spec, cfg)), br.quant, f"{br.source}: ")
    tokens = None
    if needs_calib(cfg, spec) or cfg.sparsity:
        opts = {"calib": "general:1", "calib_samples": 32, "seq_len": 256, "seed": 0} | br.calib
        ccfg = CalibConfig.from_spec(opts["calib"], n_samples=opts["calib_samples"], seq_len=opts["seq_len"],
                                     seed=opts["seed"])
        tokens = np.clip(token_batches(lm.tokenizer, ccfg), 0, spec.vocab_size - 1)
    res = prune(lm.model, cfg, tokens)
    check_block_sizes(res.spec, br.quant, f"{br.source}: ")
    progress(f"build: pruned ({res.report['kind']}) {res.report['params_before']:,} -> "
             f"{res.report['params_after']:,} parameters")
    return dataclasses.replace(lm, model=res.model, spec=res.spec)
