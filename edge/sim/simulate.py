"""The simulator: how fast a model runs on a target, and whether it fits, before a device is touched.

A roofline per stage. Prefill (the prompt, many tokens per weight read) is usually compute-bound;
decode (one token per weight read) is usually bandwidth-bound. Each stage's time is::

    max(flops / (peak[dtype] * compute_eff), bytes / (bandwidth * bandwidth_eff))
        + n_layers * overhead_per_layer + time of the parts left on the CPU
        + attention flops / (float peak * attention_eff)     (rows that measure attention apart)

with the efficiencies read from the target's measured table, never constants in code::

    from edge.sim import simulate, Workload
    r = simulate(spec, "q4_0", "snapdragon-8gen2", workload=Workload(prompt_len=128, gen_len=64))
    r.decode_tok_s, r.ttft_s, r.peak_memory_bytes, r.fits, r.decode.binding
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from edge.budgets import Budget, parse_budget
from edge.errors import ConfigError
from edge.model.spec import ModelSpec
from edge.sim.model import (
    ForwardCost,
    average_bits,
    forward_cost,
    kv_cache_bytes,
    weight_bytes,
    weight_tensors,
)
from edge.sim.recipes import Recipe, load_recipe
from edge.sim.sparsity import apply_sparsity
from edge.targets import TargetProfile, load_target

_MAX_STEPS = 32  # decode steps evaluated one by one; longer generations are sampled evenly (cost is linear in position)


@dataclass(frozen=True)
class Workload:
    prompt_len: int = 128
    gen_len: int = 64
    context: int = 0  # KV cache length allocated; 0 -> prompt_len + gen_len
    batch: int = 1

    def __post_init__(self) -> None:
        for k in ("prompt_len", "gen_len", "batch"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"workload: {k} must be positive, got {getattr(self, k)}")
        if self.context < 0:
            raise ConfigError(f"workload: context must be >= 0, got {self.context}")
        if self.context and self.context < self.prompt_len + self.gen_len:
            raise ConfigError(
                f"workload: context {self.context} is shorter than prompt_len + gen_len = "
                f"{self.prompt_len + self.gen_len}; raise --context or shorten the workload"
            )

    @property
    def ctx(self) -> int:
        return self.context or self.prompt_len + self.gen_len


@dataclass(frozen=True)
class Stage:
    """Time of one stage and what bounds it. Times in seconds (decode: per step, averaged)."""

    tokens: int
    seconds: float
    tok_s: float
    flops: float
    bytes: float
    times: dict  # resource -> seconds it needs: compute, bandwidth, overhead, cpu_fallback
    binding: str
    headroom: float  # how much the binding resource could improve before the next one binds


@dataclass(frozen=True)
class BudgetResult:
    name: str
    limit: float
    value: float
    ok: bool
    binding: str
    op: str
    margin: float


@dataclass(frozen=True)
class SimResult:
    model: str
    target: str
    runtime: str
    recipe: str
    workload: Workload
    prefill: Stage
    decode: Stage
    ttft_s: float
    latency_s: float
    memory: dict  # weights, kv_cache, activations, runtime, available (bytes)
    peak_memory_bytes: float
    fits: bool
    fit_binding: str  # what limits the fit: memory capacity or a graph-size limit
    largest_context: int
    largest_params: float  # parameters that would fit at this recipe's bits, this context
    cpu_load: float
    placement: dict  # part -> unit
    graph_splits: int
    moe: dict
    budgets: tuple[BudgetResult, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill.tok_s

    @property
    def decode_tok_s(self) -> float:
        return self.decode.tok_s

    @property
    def decode_latency_s(self) -> float:
        return self.decode.seconds

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.budgets)

    def figure(self, name: str) -> float:
        return float(getattr(self, name))

    def to_dict(self) -> dict:
        """The ``--json`` contract: flat headline figures, then the detail."""
        return {
            "model": self.model, "target": self.target, "runtime": self.runtime, "recipe": self.recipe,
            "workload": asdict(self.workload) | {"context": self.workload.ctx},
            "prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s,
            "decode_latency_s": self.decode_latency_s, "ttft_s": self.ttft_s, "latency_s": self.latency_s,
            "peak_memory_bytes": self.peak_memory_bytes, "fits": self.fits, "fit_binding": self.fit_binding,
            "cpu_load": self.cpu_load, "largest_context": self.largest_context,
            "largest_params": self.largest_params, "memory": self.memory, "placement": self.placement,
            "graph_splits": self.graph_splits, "moe": self.moe,
            "prefill": asdict(self.prefill), "decode": asdict(self.decode),
            "budgets": [asdict(b) for b in self.budgets], "ok": self.ok, "notes": list(self.notes),
        }


def _binding(times: dict) -> tuple[str, float]:
    ranked = sorted(times.items(), key=lambda kv: -kv[1])
    top = ranked[0]
    second = ranked[1][1] if len(ranked) > 1 else 0.0
    return top[0], (1 - second / top[1]) if top[1] > 0 else 0.0


class _Machine:
    """The target, runtime and efficiency row resolved once; turns a ForwardCost into seconds."""

    def __init__(self, spec: ModelSpec, recipe: Recipe, target: TargetProfile, runtime: str | None):
        self.spec, self.recipe, self.target = spec, recipe, target
        self.rt = target.runtime_for(recipe.preset, runtime)
        self.eff = target.efficiency_for(self.rt.name, recipe.preset)
        self.unit = target.units[self.rt.unit]
        self.cpu = target.units["cpu"]
        mem = target.memory
        self.bandwidth = mem.measured_bandwidth if self.eff.bandwidth_of == "measured" else mem.peak_bandwidth
        self.peak = self.unit.peak[self.eff.compute_dtype]
        # attention's rate: the row's own peak when it computes in a float type, else the unit's float peak
        fl = ("fp32", "fp16", "bf16")
        self.float_peak = self.peak if self.eff.compute_dtype in fl else next(
            (self.unit.peak[d] for d in fl if d in self.unit.peak), self.peak)
        self.off_cpu = self.unit.kind != "cpu"
        self.cpu_ops = self.rt.cpu_ops if self.off_cpu else ()

    def times(self, c: ForwardCost, stage: str) -> dict:
        e = self.eff
        cpu_flops = sum(c.cpu_flops[o] for o in self.cpu_ops)
        cpu_bytes = sum(c.cpu_bytes[o] for o in self.cpu_ops)
        # matmul-like parts moved to the CPU leave the unit; elementwise ones are counted apart
        moved = sum(c.cpu_flops[o] for o in self.cpu_ops if o in ("attention", "lm_head", "moe_router"))
        moved_bytes = sum(c.cpu_bytes[o] for o in self.cpu_ops if o in ("attention", "lm_head"))
        hyb = self.recipe.cpu_linear_fraction if self.off_cpu else 0.0
        if hyb:  # decoder linears the accelerator leaves to the CPU, in float, with their weights
            lin = c.flops - c.cpu_flops["attention"] - c.cpu_flops["lm_head"] - c.cpu_flops["moe_router"]
            lin_bytes = c.weight_bytes - c.cpu_bytes["lm_head"]
            moved, moved_bytes = moved + hyb * lin, moved_bytes + hyb * lin_bytes
            cpu_flops, cpu_bytes = cpu_flops + hyb * lin, cpu_bytes + hyb * lin_bytes
        frac = e.prefill_compute if stage == "prefill" else e.decode_compute
        att_frac = e.prefill_attention_compute if stage == "prefill" else e.attention_compute
        att = 0.0 if "attention" in self.cpu_ops or att_frac < 0 else c.cpu_flops["attention"]
        t = {
            "compute": (c.flops - moved - att) / (self.peak * frac),
            "bandwidth": max(c.bytes - moved_bytes, 0.0) / (self.bandwidth * e.decode_bandwidth),
            "overhead": self.spec.n_layers * (e.prefill_overhead_per_layer if stage == "prefill"
                                              and e.prefill_overhead_per_layer >= 0 else e.overhead_per_layer),
        }
        if att:  # in float, after the matmuls (not overlapped with the weight stream)
            t["attention"] = att / (self.float_peak * att_frac)
        if self.cpu_ops or hyb:
            if e.fallback_compute <= 0:
                raise ConfigError(f"target {self.target.name}: runtime '{e.runtime}' leaves work to the CPU; its "
                                  "efficiency row needs 'fallback_compute' (fraction of the CPU's fp32 peak)")
            cpu_peak = self.cpu.peak.get("fp32") or max(self.cpu.peak.values())
            t["cpu_fallback"] = max(cpu_flops / (cpu_peak * e.fallback_compute),
                                    cpu_bytes / (self.bandwidth * e.decode_bandwidth))
        return t

    @staticmethod
    def seconds(t: dict) -> float:
        return (max(t["compute"], t["bandwidth"]) + t["overhead"] + t.get("cpu_fallback", 0.0)
                + t.get("attention", 0.0))


def _stage(tokens: int, steps: list[tuple[ForwardCost, dict]], m: _Machine, weight: float = 1.0) -> Stage:
    """Combine one or more forward passes (each with its resource times) into a stage."""
    secs = sum(m.seconds(t) for _, t in steps) * weight
    times: dict = {}
    for _, t in steps:
        for k, v in t.items():
            times[k] = times.get(k, 0.0) + v * weight
    n_steps = len(steps) * weight
    per = {k: v / n_steps for k, v in times.items()}
    binding, headroom = _binding(times)
    flops = sum(c.flops for c, _ in steps) * weight / n_steps
    byts = sum(c.bytes for c, _ in steps) * weight / n_steps
    batch = steps[0][0].batch
    per_step = secs / n_steps
    return Stage(tokens, per_step, tokens * batch / per_step if per_step else math.inf, flops, byts, per,
                 binding, headroom)


def simulate(
    spec: ModelSpec,
    recipe: str | Recipe,
    target: str | TargetProfile,
    runtime: str | None = None,
    workload: Workload | None = None,
    budgets: list[str] | tuple[str, ...] | None = None,
) -> SimResult:
    """Predict speed, memory and fit of ``spec`` under ``recipe`` on ``target``.

    ``budgets`` None uses the target's default budgets; [] checks none.
    """
    recipe = load_recipe(recipe)
    target = target if isinstance(target, TargetProfile) else load_target(target)
    wl = workload if workload is not None else Workload(**target.defaults.workload)
    m = _Machine(spec, recipe, target, runtime)
    rt, eff, notes = m.rt, m.eff, []
    recipe = m.recipe = apply_sparsity(spec, recipe, m.unit, rt, notes)  # N:M: only where unit and runtime run it
    P, G, B, ctx = wl.prompt_len, wl.gen_len, wl.batch, wl.ctx

    # ---- prefill: the prompt in one pass, first token out at its end
    # a static KV cache attends over the whole allocated context (masked), also in prefill
    pc = forward_cost(spec, recipe, P, ctx if rt.static_kv else P, B, start=0, attend_full_context=rt.static_kv)
    prefill = _stage(P, [(pc, m.times(pc, "prefill"))], m)

    # ---- decode: G - 1 more steps (the first token came from prefill), each at its own context
    n_steps = max(G - 1, 1)
    positions = list(range(P, P + n_steps))
    if len(positions) > _MAX_STEPS:
        stride = len(positions) / _MAX_STEPS
        positions = [P + int(i * stride) for i in range(_MAX_STEPS)]
    steps = []
    for p in positions:
        c = forward_cost(spec, recipe, 1, ctx if rt.static_kv else p + 1, B, start=p,
                         attend_full_context=rt.static_kv)
        steps.append((c, m.times(c, "decode")))
    decode = _stage(1, steps, m, weight=n_steps / len(positions))
    ttft = prefill.seconds
    latency = ttft + (G - 1) * decode.seconds

    # ---- memory
    wb = weight_bytes(spec, recipe)
    weights = sum(wb.values())
    # a runtime with a window-sized cache keeps only the window on sliding layers; a static one keeps all
    windowed = not rt.static_kv
    kv = kv_cache_bytes(spec, recipe, ctx, B, windowed)
    # bytes per further position: layers whose cache grows with the context (all, or the full-attention ones)
    growing = spec.n_layers if not windowed else sum(not spec.is_sliding_layer(i) for i in range(spec.n_layers))
    kv_per_pos = 2 * growing * spec.kv_dim * recipe.kv_bytes * B
    kv_window = kv_cache_bytes(spec, recipe, spec.sliding_window, B, windowed) - kv_per_pos * spec.sliding_window
    act_elem = 4 if m.unit.kind == "cpu" else recipe.act_bytes
    chunk = min(P, 512)  # llama.cpp and most runtimes run the prompt in chunks of at most 512
    ffn = max(spec.ffn_dim, spec.moe_ffn_dim)
    act_fixed = B * act_elem * (chunk * (2 * spec.dim + spec.q_dim + 2 * spec.kv_dim + 2 * ffn) + spec.vocab_size)
    scores_per_ctx = B * 4 * spec.n_heads * chunk
    act = act_fixed + scores_per_ctx * ctx
    peak = weights + kv + act + rt.overhead
    avail = target.memory.available
    fits, fit_binding = peak <= avail, "memory capacity"
    splits = 1
    if rt.max_graph_bytes:
        splits = math.ceil(weights / rt.max_graph_bytes)
        biggest = max(t.copies * recipe.tensor_bytes(t.cls, t.rows, t.cols, max(t.layer, 0), spec.n_layers)
                      for t in weight_tensors(spec, recipe.separate_embedding))
        if biggest > rt.max_graph_bytes:
            fits, fit_binding = False, "graph-size limit"
            notes.append(f"one tensor ({biggest / 1e9:.2f} GB) exceeds {rt.name}'s graph limit "
                         f"({rt.max_graph_bytes / 1e9:.1f} GB)")
        elif splits > 1:
            notes.append(f"{rt.name}: weights split into {splits} graphs of at most "
                         f"{rt.max_graph_bytes / 1e9:.1f} GB")
    largest_context = int(max(avail - weights - act_fixed - kv_window - rt.overhead, 0) // (kv_per_pos + scores_per_ctx))
    room = max(avail - kv - act - rt.overhead, 0.0)
    largest_params = room * 8 / average_bits(spec, recipe)
    if not fits and fit_binding == "memory capacity":
        notes.append(f"needs {peak / 1e9:.2f} GB, {avail / 1e9:.2f} GB available to an app on {target.name}")

    # ---- where each part runs, and how busy the CPU is
    placement = {"decoder": m.unit.name}
    placement.update({op: "cpu" for op in m.cpu_ops})
    cores = target.cpu.cores
    if m.off_cpu:
        cpu_secs = prefill.times.get("cpu_fallback", 0.0) + (G - 1) * decode.times.get("cpu_fallback", 0.0)
        core_seconds = rt.host_core_share * latency + rt.threads * cpu_secs
        cpu_load = min(core_seconds / (latency * cores), 1.0)
    else:
        cpu_load = min(rt.threads / cores, 1.0)
    if recipe.activations not in m.unit.dtypes and eff.compute_dtype not in m.unit.dtypes:
        notes.append(f"unit {m.unit.name} does not list {recipe.activations} among its fast data types")

    moe = {}
    if spec.is_moe:
        moe = {
            "n_experts": spec.n_experts, "top_k": spec.n_experts_per_tok,
            "total_params": spec.param_count(), "active_params": spec.active_param_count(),
            "expert_bytes": wb.get("experts", 0.0),
            "distinct_experts_per_decode_step": steps[0][0].distinct_experts,
            "distinct_experts_in_prefill": pc.distinct_experts,
            "weight_bytes_per_decode_step": steps[0][0].weight_bytes,
        }

    result = SimResult(
        model=spec.name or spec.arch, target=target.name, runtime=rt.name, recipe=recipe.name, workload=wl,
        prefill=prefill, decode=decode, ttft_s=ttft, latency_s=latency,
        memory={"weights": weights, "kv_cache": kv, "activations": act, "runtime": rt.overhead,
                "available": avail, "weights_by_class": wb},
        peak_memory_bytes=peak, fits=fits, fit_binding=fit_binding, largest_context=largest_context,
        largest_params=largest_params, cpu_load=cpu_load, placement=placement, graph_splits=splits, moe=moe,
        notes=tuple(notes),
    )
    checks = target.defaults.budgets if budgets is None else budgets
    return _with_budgets(result, [parse_budget(b) if isinstance(b, str) else b for b in checks], m)


def _budget_binding(r: SimResult, b: Budget, m: _Machine) -> str:
    if b.name in ("decode_tok_s", "decode_latency_s"):
        return f"decode: {r.decode.binding}"
    if b.name in ("prefill_tok_s", "ttft_s"):
        return f"prefill: {r.prefill.binding}"
    if b.name == "latency_s":
        dec = r.latency_s - r.ttft_s
        return f"decode: {r.decode.binding}" if dec > r.ttft_s else f"prefill: {r.prefill.binding}"
    if b.name == "cpu_load":
        if not m.off_cpu:
            return f"cpu threads ({m.rt.threads} of {m.target.cpu.cores} cores run {m.rt.name})"
        return f"cpu fallback ({', '.join(m.cpu_ops) or 'none'}) + driver thread"
    biggest = max(("weights", "kv_cache", "activations", "runtime"), key=lambda k: r.memory[k])
    return f"memory capacity ({biggest} largest)"


def _with_budgets(r: SimResult, budgets: list[Budget], m: _Machine) -> SimResult:
    from dataclasses import replace

    out = []
    for b in budgets:
        v = r.figure(b.name)
        out.append(BudgetResult(b.text, b.limit, v, b.check(v), _budget_binding(r, b, m), b.op, b.margin(v)))
    return replace(r, budgets=tuple(out))
