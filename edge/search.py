"""Budget-driven build: search pruning x quantization for the most accurate package that meets a
device's budgets.

The question a deployment engineer has is "what is the best model I can ship to this device within
15 tokens/s and 3 GB?". The search answers it in three passes, cheapest first:

1. **cost** (no weights, no torch): every candidate (pruning ratio x quantization preset x KV-cache
   type x runtime the profile offers) is simulated on the target; the budgets it misses and the
   resource that binds are recorded;
2. **quality** (measured proxy): for the (pruning, quantization) pairs that survive, the pruned and
   quantized torch model's KL divergence to the unpruned fp32 model on held-out text. One
   evaluation per pair, whatever the KV type and runtime; results are cached on disk under a key
   from contents (weights, held-out and calibration tokens, the code that scores), so a second
   search is free;
3. **finalists**: the best few are built and validated for real by the caller (``edge build --auto``).

For a model given as a config.json only (no weights), pass 2 is skipped and candidates are ranked
by bits per weight and parameters kept (more is better), and the result says so.

    res = search("smollm2-135m", "snapdragon-8gen2", budgets=["decode_tok_s>=15"])
    res.chosen.describe(); res.frontier("decode_tok_s"); res.to_dict()
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge.build import build_package
from edge.cache import code_hash, model_code, model_hash, stage_key
from edge.calib import CalibConfig, load_text, token_batches
from edge.errors import BudgetFailed, ConfigError, require_one_of
from edge.eval import kl_divergence
from edge.export.check import check
from edge.model.load import LoadedModel, load_model, load_spec, resolve
from edge.model.spec import ModelSpec
from edge.prune import KINDS, PruneConfig, plan_shapes, prune, shaped_spec
from edge.quant import load_recipe as load_quant_recipe
from edge.recipes import KV_CACHE, SEARCHED, preset
from edge.sim import Workload, parse_budget, simulate
from edge.sim.recipes import load_recipe as load_cost_recipe
from edge.targets import TargetProfile, load_target

QUANT_CHOICES = SEARCHED  # the presets the preset table marks as searched
KV_CHOICES = ("fp16", "int8")
PRUNE_RATIOS = (0.0, 0.1, 0.2, 0.3)


@dataclass(frozen=True)
class SearchSpace:
    """The recipes the search walks. Every field is validated; errors list the allowed values."""

    prune_ratios: tuple[float, ...] = PRUNE_RATIOS
    prune_kind: str = "auto"  # auto: MLP channels for a dense model, whole experts for an MoE
    quant: tuple[str, ...] = QUANT_CHOICES
    kv_cache: tuple[str, ...] = KV_CHOICES
    runtimes: tuple[str, ...] = ()  # () = every runtime the target lists for the recipe
    finalists: int = 2

    def __post_init__(self) -> None:
        for r in self.prune_ratios:
            if not 0 <= r < 1:
                raise ConfigError(f"search: prune ratio {r} must be in [0, 1)")
        for q in self.quant:
            preset(q, "search: quantization")
        for k in self.kv_cache:
            require_one_of("search: KV-cache type", k, KV_CACHE)
        require_one_of("search: prune kind", self.prune_kind, KINDS)
        if self.finalists < 1:
            raise ConfigError(f"search: finalists must be >= 1, got {self.finalists}")


@dataclass
class Candidate:
    prune_ratio: float
    quant: str
    kv_cache: str
    runtime: str
    spec: ModelSpec
    sim: object = None  # edge.sim.SimResult
    error: str = ""  # why it could not be simulated (e.g. a toolchain limit)
    kld: float | None = None  # measured proxy: KL divergence to the unpruned fp32 model
    top1: float | None = None

    @property
    def key(self) -> str:
        p = f"p{int(round(self.prune_ratio * 100)):02d}-" if self.prune_ratio else ""
        return f"{p}{self.quant}-kv{self.kv_cache}@{self.runtime}"

    @property
    def quality_key(self) -> tuple[float, str]:
        return (self.prune_ratio, self.quant)

    @property
    def meets_budgets(self) -> bool:
        return self.sim is not None and self.sim.fits and self.sim.ok

    @property
    def failures(self) -> list:
        if self.sim is None:
            return []
        return [b for b in self.sim.budgets if not b.ok]

    @property
    def size_bytes(self) -> float:
        return float(self.sim.memory["weights"]) if self.sim is not None else math.nan

    def figure(self, name: str) -> float:
        if name == "size_bytes":
            return self.size_bytes
        return self.sim.figure(name) if self.sim is not None else math.nan

    def rejection(self) -> str:
        """Why this candidate fails, naming the resource that binds ('' when it passes)."""
        if self.error:
            return self.error
        if not self.sim.fits:
            return f"does not fit: {self.sim.fit_binding}"
        return "; ".join(f"{b.name} {b.value:.4g} vs {b.op}{b.limit:g} (binds: {b.binding})" for b in self.failures)

    def to_dict(self) -> dict:
        return {
            "key": self.key, "prune_ratio": self.prune_ratio, "quant": self.quant, "kv_cache": self.kv_cache,
            "runtime": self.runtime, "params": self.spec.param_count(), "kld": self.kld, "top1": self.top1,
            "meets_budgets": self.meets_budgets, "rejection": "" if self.meets_budgets else self.rejection(),
            "decode_tok_s": self.figure("decode_tok_s"), "prefill_tok_s": self.figure("prefill_tok_s"),
            "ttft_s": self.figure("ttft_s"), "latency_s": self.figure("latency_s"),
            "peak_memory_bytes": self.figure("peak_memory_bytes"), "cpu_load": self.figure("cpu_load"),
            "size_bytes": self.size_bytes,
        }


@dataclass
class SearchResult:
    model: str
    target: str
    budgets: tuple[str, ...]
    candidates: list[Candidate]
    chosen: Candidate | None
    finalists: list[Candidate]
    quality_measured: bool
    stats: dict = field(default_factory=dict)

    def feasible(self) -> list[Candidate]:
        return [c for c in self.candidates if c.meets_budgets]

    def frontier(self, figure: str = "decode_tok_s", higher_is_better: bool = True) -> list[Candidate]:
        """Pareto frontier of quality (lower KLD) against ``figure``, over all simulated candidates."""
        pts = [c for c in self.candidates if c.sim is not None and c.kld is not None]
        sign = 1 if higher_is_better else -1
        front = []
        for c in pts:
            dominated = any(
                (o.kld <= c.kld and sign * o.figure(figure) >= sign * c.figure(figure))
                and (o.kld < c.kld or sign * o.figure(figure) > sign * c.figure(figure))
                for o in pts
            )
            if not dominated:
                front.append(c)
        return sorted(front, key=lambda c: c.figure(figure))

    def infeasibility(self) -> str:
        """Which budgets no candidate meets, by how much, and the closest candidate."""
        simulated = [c for c in self.candidates if c.sim is not None]
        if not simulated:
            return "no candidate could be simulated on this target"
        lines = []
        fitting = [c for c in simulated if c.sim.fits]
        if not fitting:
            best = min(simulated, key=lambda c: c.sim.peak_memory_bytes)
            lines.append(f"no candidate fits in memory: the smallest ({best.key}) needs "
                         f"{best.sim.peak_memory_bytes / 1e9:.2f} GB of {best.sim.memory['available'] / 1e9:.2f} GB")
        for text in self.budgets:
            b = parse_budget(text)
            values = [r.value for c in (fitting or simulated) for r in c.sim.budgets if parse_budget(r.name).name == b.name]
            if not values:
                continue
            best = max(values) if b.op in (">=", ">") else min(values)
            if not b.check(best):
                lines.append(f"{text} is infeasible{' among candidates that fit' if fitting else ''}: the best "
                             f"reaches {best:.4g} ({b.margin(best):+.0%} of the limit)")
        closest = min(simulated, key=_shortfall)
        lines.append(f"closest candidate: {closest.key} ({closest.rejection()})")
        return "; ".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "target": self.target, "budgets": list(self.budgets),
            "quality_measured": self.quality_measured,
            "chosen": self.chosen.to_dict() if self.chosen else None,
            "finalists": [c.key for c in self.finalists],
            "frontier_decode": [c.key for c in self.frontier("decode_tok_s")],
            "frontier_size": [c.key for c in self.frontier("size_bytes", higher_is_better=False)],
            "candidates": [c.to_dict() for c in self.candidates],
            "stats": self.stats,
            "infeasible": "" if self.chosen else self.infeasibility(),
        }


def _shortfall(c: Candidate) -> float:
    """How far a candidate is from meeting every budget (sum of relative misses; 0 = meets all)."""
    miss = sum(max(0.0, -b.margin) for b in c.sim.budgets if not b.ok)
    return miss + (0.0 if c.sim.fits else 10.0)


def pruned_spec(spec: ModelSpec, ratio: float, kind: str) -> ModelSpec:
    """The shape a pruning ratio leaves (torch-free; the same plan edge.prune executes)."""
    if not ratio:
        return spec

    return shaped_spec(spec, plan_shapes(spec, PruneConfig(ratio=ratio, kind=kind), kind))


def resolve_kind(spec: ModelSpec, kind: str) -> str:
    return ("experts" if spec.is_moe else "mlp") if kind == "auto" else kind


def enumerate_candidates(spec: ModelSpec, target: TargetProfile, space: SearchSpace,
                         dropped: list[dict] | None = None) -> list[Candidate]:
    """Every (ratio, quant, runtime, KV) candidate; a ratio that leaves no valid shape for this model is
    left out and recorded in ``dropped`` with the reason, for search.json and the report."""
    out = []
    space = dataclasses.replace(space, prune_kind=resolve_kind(spec, space.prune_kind))
    for ratio in space.prune_ratios:
        try:
            ps = pruned_spec(spec, ratio, space.prune_kind)
        except ConfigError as e:
            if dropped is not None:
                dropped.append({"prune_ratio": ratio, "kind": space.prune_kind, "reason": str(e)})
            continue
        for quant in space.quant:
            runtimes = space.runtimes or tuple(
                name for name, rt in target.runtimes.items() if not rt.recipes or quant in rt.recipes
            )
            for rt in runtimes:
                for kv in space.kv_cache:
                    out.append(Candidate(ratio, quant, kv, rt, ps))
    return out


def cost_pass(cands: list[Candidate], target: TargetProfile, workload: Workload, budgets: Sequence[str]) -> None:
    for c in cands:
        base = load_cost_recipe(c.quant)
        recipe = dataclasses.replace(base, name=f"{c.quant}+kv-{c.kv_cache}", base=c.quant, kv_cache=c.kv_cache)
        try:
            c.sim = simulate(c.spec, recipe, target, runtime=c.runtime, workload=workload, budgets=list(budgets))
        except ConfigError as e:
            c.error = str(e)


# ---- the measured quality proxy -----------------------------------------------------------------
def _cache_dir() -> Path:
    root = Path(os.environ.get("EDGE_CACHE", Path.home() / ".cache" / "edge"))
    return root / "search"


class QualityOracle:
    """KL divergence of pruned/quantized variants of a model to its fp32 self, on held-out tokens.

    Pruning for a ratio happens once; quantization is round-to-nearest fake-quant of the pruned
    model with the recipe's formats (the calibrated algorithms the finalists get only lower the
    error, so the ranking errs on the safe side). Results are cached on disk.
    """

    def __init__(self, model_name: str, n_tokens: int = 512, window: int = 256, calib_samples: int = 16,
                 prune_kind: str = "mlp"):
        import torch

        from edge.runtime.eager import TorchRunner

        self.lm = load_model(model_name)
        self.prune_kind = prune_kind
        self.window = window
        toks = self.lm.tokenizer.encode(load_text("heldout").text)
        # the tail of the held-out text: the head is what final validation scores
        self.tokens = toks[-n_tokens:]
        self.calib = token_batches(self.lm.tokenizer, CalibConfig.from_spec("general:1", n_samples=calib_samples,
                                                                             seq_len=window, seed=0))
        self.ref = [TorchRunner(self.lm.model).logits(self.tokens[i:i + window])
                    for i in range(0, len(self.tokens) - 1, window)]
        self.cache_file = _cache_dir() / f"{stage_key('search-quality', self.cache_parts())[:24]}.json"
        self.cache: dict[str, list[float]] = {}
        if self.cache_file.exists():
            try:
                self.cache = json.loads(self.cache_file.read_text())
            except json.JSONDecodeError:
                self.cache = {}
        self._pruned: dict[float, object] = {}
        self.evaluations = 0
        self.seconds = 0.0
        torch.set_grad_enabled(False)

    def cache_parts(self) -> dict:
        """What every cached KLD depends on, by content: the weights as loaded, the held-out tokens
        scored, the calibration tokens pruning uses, the window, the prune kind and the source of
        the code that prunes, quantizes and scores (this module, edge.prune, edge.quant, the model's)."""
        code = ("edge.search", "edge.prune", "edge.quant", "edge.quant.quantize", "edge.eval", "edge.runtime.eager")
        return {"model": model_hash(self.lm.model),
                "heldout_tokens": hashlib.sha256(json.dumps(self.tokens).encode()).hexdigest(),
                "calib": [list(self.calib.shape), hashlib.sha256(self.calib.tobytes()).hexdigest()],
                "window": self.window, "prune_kind": self.prune_kind,
                "code": code_hash(*code, *model_code(self.lm.model))}

    def _pruned_model(self, ratio: float):
        if ratio not in self._pruned:
            if not ratio:
                self._pruned[ratio] = self.lm.model
            else:
                self._pruned[ratio] = prune(self.lm.model, PruneConfig(ratio=ratio, kind=self.prune_kind),
                                            self.calib).model
        return self._pruned[ratio]

    def kld(self, ratio: float, quant: str) -> tuple[float, float]:
        key = f"{ratio:.3f}/{quant}"
        if key in self.cache:
            return tuple(self.cache[key])
        import copy

        import numpy as np
        import torch

        from edge.quant.quantize import quantize
        from edge.runtime.eager import TorchRunner

        t0 = time.perf_counter()
        model = copy.deepcopy(self._pruned_model(ratio))
        if quant not in ("fp32",):
            rec = load_quant_recipe(quant, method="rtn")
            # w8a8's proxy: RTN int8 weights with SmoothQuant 0.5 (seconds), not the rotation + GPTQ the
            # finalists get, which only lowers the error (the ranking errs on the safe side)
            if quant == "w8a8":
                rec = dataclasses.replace(rec, smoothquant=0.5)
            quantize(model, rec, torch.as_tensor(self.calib[:4]))
        run = TorchRunner(model)
        klds, agree, n = [], 0, 0
        for i, ref in zip(range(0, len(self.tokens) - 1, self.window), self.ref):
            got = run.logits(self.tokens[i:i + self.window])
            klds.append(kl_divergence(ref, got))
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            n += len(ref)
        val = (float(np.concatenate(klds).mean()), agree / n)
        self.cache[key] = list(val)
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.cache, indent=1, sort_keys=True))
        tmp.replace(self.cache_file)
        self.evaluations += 1
        self.seconds += time.perf_counter() - t0
        return val


def quality_pairs(feasible: list[Candidate], space: SearchSpace) -> list[tuple[float, str]]:
    """The (pruning ratio, quantization) pairs whose quality is measured.

    Every unpruned preset is measured (the anchors of the frontier). A pruned pair is measured only
    when its preset is infeasible unpruned, and then only at the smallest ratio that meets the
    budgets: pruning does not improve a model's agreement with its unpruned self, so a larger ratio
    of the same preset cannot win. This bounds the expensive part (pruning with calibration and
    recovery) to the ratios the budgets force.
    """
    pairs = {(0.0, q) for q in space.quant}
    feasible_keys = {c.quality_key for c in feasible}
    for q in space.quant:
        if (0.0, q) in feasible_keys:
            continue
        ratios = sorted(r for r, qq in feasible_keys if qq == q)
        if ratios:
            pairs.add((ratios[0], q))
    return sorted(pairs)


def _cost_only_rank(c: Candidate) -> tuple:
    """Without weights: prefer less pruning, then more bits per weight, then speed."""
    bits = load_cost_recipe(c.quant).nominal_bits()
    return (c.prune_ratio, -bits, -c.figure("decode_tok_s"))


def search(model: str, target: str | TargetProfile, budgets: Sequence[str] | None = None,
           space: SearchSpace | None = None, workload: Workload | None = None,
           measure_quality: bool | None = None, progress=None) -> SearchResult:
    """Walk the recipe space for ``model`` on ``target``; returns the ranked result (does not build).

    ``budgets`` None takes the target's defaults. ``measure_quality`` None: measure when the
    model has weights.
    """
    t0 = time.perf_counter()
    space = space or SearchSpace()
    tp = target if isinstance(target, TargetProfile) else load_target(target)
    budgets = tuple(budgets) if budgets is not None else tuple(tp.defaults.budgets)
    for b in budgets:
        parse_budget(b)  # a malformed budget fails before any work
    wl = workload or Workload(**tp.defaults.workload)
    spec = load_spec(model)
    if measure_quality is None:
        measure_quality = resolve(model).kind != "config"

    dropped: list[dict] = []
    cands = enumerate_candidates(spec, tp, space, dropped)
    if not cands:
        raise ConfigError(f"search: no candidate recipe for {model} on {tp.name}; widen the search space")
    cost_pass(cands, tp, wl, budgets)
    t_cost = time.perf_counter() - t0
    feasible = [c for c in cands if c.meets_budgets]

    oracle = None
    if measure_quality:
        pairs = quality_pairs(feasible, space)
        oracle = QualityOracle(model, prune_kind=resolve_kind(spec, space.prune_kind))
        for i, (ratio, quant) in enumerate(pairs):
            kld, top1 = oracle.kld(ratio, quant)
            for c in cands:
                if c.quality_key == (ratio, quant):
                    c.kld, c.top1 = kld, top1
            if progress:
                progress(i + 1, len(pairs))
        ranked = sorted((c for c in feasible if c.kld is not None), key=lambda c: (c.kld, -c.figure("decode_tok_s")))
    else:
        ranked = sorted(feasible, key=_cost_only_rank)
    # one finalist per (pruning, quantization) pair: KV type and runtime are picked by speed
    finalists, seen = [], set()
    for c in ranked:
        if c.quality_key not in seen:
            seen.add(c.quality_key)
            finalists.append(c)
        if len(finalists) == space.finalists:
            break
    stats = {
        "candidates_simulated": sum(c.sim is not None for c in cands),
        "candidates_rejected_by_toolchain": sum(bool(c.error) for c in cands),
        "candidates_feasible": len(feasible),
        "quality_evaluations": oracle.evaluations if oracle else 0,
        "quality_cached": (len(oracle.cache) - oracle.evaluations) if oracle else 0,
        "quality_seconds": oracle.seconds if oracle else 0.0,
        "prune_ratios_dropped": dropped,
        "cost_seconds": t_cost,
        "wall_seconds": time.perf_counter() - t0,
    }
    return SearchResult(model, tp.name, budgets, cands, finalists[0] if finalists else None, finalists,
                        bool(measure_quality), stats)


def require_feasible(res: SearchResult) -> Candidate:
    if res.chosen is None:
        raise BudgetFailed(f"no recipe for {res.model} on {res.target} meets {', '.join(res.budgets)}: "
                           f"{res.infeasibility()}")
    return res.chosen


# ---- outputs: recipe file, report, plot --------------------------------------------------------------
def recipe_doc(c: Candidate, space: SearchSpace) -> dict:
    """The chosen candidate as a build recipe file users can re-run (edge build --recipe FILE)."""
    doc: dict = {"base": c.quant, "kv_cache": c.kv_cache, "runtime": c.runtime}
    if c.prune_ratio:
        doc["prune"] = {"ratio": c.prune_ratio, "kind": resolve_kind(c.spec, space.prune_kind)}
    return doc


def plot_frontier(res: SearchResult, path: str | Path) -> Path:
    """Quality (KLD, log scale) vs decode tok/s and vs size, budget lines, the frontier marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [c for c in res.candidates if c.sim is not None and (c.kld is not None or not res.quality_measured)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, fig_name, label, hib in ((axes[0], "decode_tok_s", "decode tokens/s (simulated)", True),
                                     (axes[1], "size_bytes", "weights MB", False)):
        def y(c):
            return c.kld if res.quality_measured else load_cost_recipe(c.quant).nominal_bits()

        scale = 1e-6 if fig_name == "size_bytes" else 1.0
        ok = [c for c in pts if c.meets_budgets]
        bad = [c for c in pts if not c.meets_budgets]
        ax.scatter([c.figure(fig_name) * scale for c in bad], [y(c) for c in bad], c="lightgray", s=18,
                   label="misses a budget")
        ax.scatter([c.figure(fig_name) * scale for c in ok], [y(c) for c in ok], c="tab:blue", s=22,
                   label="meets budgets")
        if res.quality_measured:
            front = res.frontier(fig_name, higher_is_better=hib)
            ax.plot([c.figure(fig_name) * scale for c in front], [y(c) for c in front], "-", c="tab:orange",
                    label="Pareto frontier")
            ax.set_yscale("log")
        if res.chosen is not None:
            ax.scatter([res.chosen.figure(fig_name) * scale], [y(res.chosen)], marker="*", s=220, c="tab:red",
                       label=f"chosen: {res.chosen.key}", zorder=5)
        for text in res.budgets:
            b = parse_budget(text)
            if b.name == "decode_tok_s" and fig_name == "decode_tok_s":
                ax.axvline(b.limit, ls="--", c="k", lw=1)
                ax.text(b.limit, ax.get_ylim()[1], f" {text}", va="top", fontsize=8)
            if b.name == "peak_memory_bytes" and fig_name == "size_bytes":
                ax.axvline(b.limit * scale, ls="--", c="k", lw=1)
        ax.set_xlabel(label)
        ax.set_ylabel("KL divergence to fp32 (measured proxy)" if res.quality_measured
                      else "bits per weight (cost-only: no weights)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{res.model} on {res.target}: budgets {', '.join(res.budgets) or 'none'}")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_markdown(res: SearchResult) -> str:
    lines = [f"# Budget-driven search: {res.model} on {res.target}", "",
             f"Budgets: {', '.join(res.budgets) or 'none'}. "
             + ("Quality is measured (KL divergence of the pruned/quantized torch model to fp32 on held-out "
                "text, round-to-nearest proxy)." if res.quality_measured else
                "**Cost only**: the model has no weights, so candidates are ranked by pruning (less is better) "
                "and bits per weight (more is better), not by measured quality."), ""]
    s = res.stats
    lines.append(f"Search cost: {s['candidates_simulated']} candidates simulated "
                 f"({s['candidates_feasible']} meet the budgets), {s['quality_evaluations']} quality evaluations "
                 f"({s['quality_cached']} from cache), {s['wall_seconds']:.1f} s.")
    lines.append("")
    if res.chosen:
        c = res.chosen
        lines.append(f"**Chosen: `{c.key}`**: decode {c.figure('decode_tok_s'):.1f} tok/s, TTFT "
                     f"{c.figure('ttft_s') * 1e3:.0f} ms, peak memory {c.figure('peak_memory_bytes') / 1e6:.0f} MB"
                     + (f", KLD {c.kld:.4f}, top-1 {c.top1:.3f}" if c.kld is not None else ""))
    else:
        lines.append(f"**No candidate meets the budgets.** {res.infeasibility()}")
    lines += ["", "| candidate | params | KLD | top-1 | decode tok/s | TTFT ms | peak MB | CPU load | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    shown = sorted((c for c in res.candidates if c.sim is not None),
                   key=lambda c: (not c.meets_budgets, c.kld if c.kld is not None else 9, c.key))
    for c in shown:
        kld = f"{c.kld:.4f}" if c.kld is not None else "-"
        top1 = f"{c.top1:.3f}" if c.top1 is not None else "-"
        lines.append(f"| {c.key} | {c.spec.param_count() / 1e6:.1f}M | {kld} | {top1} | "
                     f"{c.figure('decode_tok_s'):.1f} | {c.figure('ttft_s') * 1e3:.0f} | "
                     f"{c.figure('peak_memory_bytes') / 1e6:.0f} | {c.figure('cpu_load'):.0%} | "
                     f"{'meets budgets' if c.meets_budgets else c.rejection()} |")
    for d in s.get("prune_ratios_dropped", []):
        lines.append(f"- prune ratio {d['prune_ratio']:g} ({d['kind']}) left out of the search: {d['reason']}")
    rejected = [c for c in res.candidates if c.error]
    if rejected:
        lines += ["", "Rejected before simulation (toolchain or profile rules):", ""]
        for c in rejected[:20]:
            lines.append(f"- {c.key}: {c.error}")
    return "\n".join(lines) + "\n"


# ---- edge build --auto: search, build the finalists for real, keep the best -------------------------
def _finalist_model(lm, c: Candidate, kind: str, calib_samples: int = 16, seq_len: int = 256):
    """The LoadedModel a finalist builds from: pruned when its recipe prunes."""
    if not c.prune_ratio:
        return lm

    calib = token_batches(lm.tokenizer, CalibConfig.from_spec("general:1", n_samples=calib_samples,
                                                              seq_len=seq_len, seed=0))
    res = prune(lm.model, PruneConfig(ratio=c.prune_ratio, kind=kind), calib)
    return LoadedModel(res.model, res.spec, lm.tokenizer, lm.source)


def auto_build(model: str, target: str, out: str | Path, budgets: Sequence[str] | None = None,
               space: SearchSpace | None = None, build_finalists: int = 1, progress=print) -> dict:
    """Search, write recipe/report/plot, build and validate the best ``build_finalists`` finalists, and
    keep the most accurate one that meets the budgets as ``out/package``. Raises BudgetFailed (after
    writing the report) when no candidate meets the budgets."""
    import shutil

    import yaml

    space = space or SearchSpace()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = search(model, target, budgets, space,
                 progress=lambda i, n: progress(f"auto: quality proxy {i}/{n}") if progress else None)
    (out / "search.json").write_text(json.dumps(res.to_dict(), indent=1, default=float) + "\n")
    plot_frontier(res, out / "frontier.png")
    summary: dict = {"search": res.stats, "chosen": None, "built": []}
    if res.chosen is None:
        (out / "report.md").write_text(report_markdown(res))
        require_feasible(res)

    tp = load_target(target)
    built = []
    if res.quality_measured:
        lm = load_model(model)
        ranked = [c for c in res.finalists]
        # fill up with further feasible candidates a host writer can produce
        for c in sorted((c for c in res.feasible() if c.kld is not None),
                        key=lambda c: (c.kld, -c.figure("decode_tok_s"))):
            if len(ranked) >= build_finalists + 4:
                break
            if c not in ranked:
                ranked.append(c)
        for c in ranked:
            if len(built) >= build_finalists:
                break
            try:
                check(c.spec, tp, c.quant, c.runtime)
            except Exception as e:  # noqa: BLE001 - a finalist edge cannot write is skipped, with the reason
                summary["built"].append({"key": c.key, "skipped": str(e)})
                continue
            progress(f"auto: building finalist {c.key}")
            t0 = time.perf_counter()
            rfile = out / "finalists" / f"{c.key}.yaml"  # the candidate's quantization, KV cache and runtime
            rfile.parent.mkdir(parents=True, exist_ok=True)
            rfile.write_text(yaml.safe_dump({k: v for k, v in recipe_doc(c, space).items() if k != "prune"},
                                            sort_keys=True))
            pkg = build_package(_finalist_model(lm, c, resolve_kind(lm.spec, space.prune_kind)), tp.name, str(rfile),
                                out / "finalists" / c.key, runtime=c.runtime, progress=progress)
            manifest = json.loads((pkg / "manifest.json").read_text())
            acc = manifest["artifacts"][0].get("accuracy", {})
            built.append((c, pkg, acc))
            summary["built"].append({"key": c.key, "package": str(pkg), "seconds": time.perf_counter() - t0,
                                     "measured": acc, "proxy_kld": c.kld})
        if built:
            best, pkg, acc = min(built, key=lambda b: b[2].get("kld_mean", math.inf))
            if (out / "package").exists():
                shutil.rmtree(out / "package")
            shutil.copytree(pkg, out / "package")
            res.chosen = best
            summary["chosen"] = {"key": best.key, "measured": acc}
    if summary["chosen"] is None:
        summary["chosen"] = {"key": res.chosen.key, "measured": None,
                             "note": "cost-only search: nothing built" if not res.quality_measured
                             else "no finalist could be built on this host"}
    (out / "recipe.yaml").write_text(yaml.safe_dump(recipe_doc(res.chosen, space), sort_keys=True))
    report = report_markdown(res)
    if summary["built"]:
        report += "\n## Finalists built and validated\n\n| candidate | proxy KLD | measured KLD | top-1 | ppl change |\n|---|---|---|---|---|\n"
        for b in summary["built"]:
            if "skipped" in b:
                report += f"| {b['key']} | - | skipped: {b['skipped']} | | |\n"
            else:
                m = b["measured"]
                report += (f"| {b['key']} | {b['proxy_kld']:.4f} | {m.get('kld_mean', math.nan):.4f} | "
                           f"{m.get('top1_agreement', math.nan):.3f} | {m.get('ppl_change', math.nan):+.2%} |\n")
    (out / "report.md").write_text(report)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary | {"result": res}
