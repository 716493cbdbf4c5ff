"""The will-it-work check, run before any export: fails fast naming the rule, the part and the fix.

    plan = check(spec, load_target("horizon-j5"), "w8a8")   # -> ExportPlan(runtime, format, writer, option)

Rules, in order: the target's runtime for the recipe writes a format we can produce; the format
takes the recipe's data types; the model has no op the format cannot express; the simulator says
the model fits in the device's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import BudgetFailed, ConfigError
from edge.quant.configs import load_recipe as load_quant_recipe
from edge.recipes import preset, writer_options
from edge.sim import load_recipe as load_cost_recipe

# target format -> (our writer, its variant). "rknn", "hbm" and "qnn-context-binary" are compiled by
# the vendor's tool from the ONNX we write: the package carries that ONNX.
FORMAT_WRITERS: dict[str, tuple[str, str]] = {
    "pte": ("pte", ""),
    "onnx": ("onnx", "onnx"),
    "onnx-qdq": ("onnx", "onnx-qdq"),
    "onnx-opset11": ("onnx", "onnx-opset11"),
    "hbm": ("onnx", "onnx-opset11"),
    "rknn": ("onnx", "onnx-qdq"),
    "qnn-context-binary": ("onnx", "onnx-qdq"),
    "gguf": ("gguf", ""),
}
# writer -> preset -> the writer's own option (weight format / dtype): read off the preset table
RECIPE_OPTIONS: dict[str, dict[str, str]] = {w: writer_options(w) for w in ("pte", "onnx", "gguf")}
RUNTIME_OF_WRITER = {"pte": "executorch", "onnx": "onnxruntime", "gguf": "llama.cpp"}


@dataclass(frozen=True)
class ExportPlan:
    runtime: str  # the target's runtime name (profile key)
    target_format: str  # as the profile spells it
    writer: str  # pte | onnx | gguf
    variant: str  # onnx format variant
    option: str  # the writer's quant/dtype option
    host_runtime: str  # executorch | onnxruntime | llama.cpp: what runs it on the host

    @property
    def written_format(self) -> str:
        """The format of the file edge writes (onnx-qdq for a QDQ ONNX graph), which a manifest records."""
        return self.variant or self.writer

    @property
    def compile_for(self) -> str:
        """The vendor format a toolchain compiles the written file to on the way to the device (rknn,
        hbm, qnn-context-binary); '' when the device runtime loads the written file itself."""
        return "" if self.target_format == self.written_format else self.target_format


def check(spec, target, recipe: str, runtime: str | None = None, context: int | None = None) -> ExportPlan:
    """Raise ConfigError / BudgetFailed when the build cannot work; else the plan."""
    preset(recipe)  # a row of the preset table, or one error listing them
    rt = target.runtime_for(recipe, runtime)
    name = runtime or next(k for k, v in target.runtimes.items() if v is rt)
    fmts = [f for f in rt.formats if f in FORMAT_WRITERS]
    if not fmts:
        raise ConfigError(f"target {target.name}: runtime '{name}' takes {', '.join(rt.formats)}; edge writes "
                          f"{', '.join(FORMAT_WRITERS)}: pick another runtime with --runtime "
                          f"({', '.join(target.runtimes)})")
    fmt = fmts[0]
    writer, variant = FORMAT_WRITERS[fmt]
    option = RECIPE_OPTIONS[writer].get(recipe)
    if option is None:
        raise ConfigError(f"recipe '{recipe}' cannot be written as {fmt} (for runtime '{name}'); "
                          f"{fmt} takes: {', '.join(RECIPE_OPTIONS[writer])}; {target.name} builds "
                          f"{'; '.join(buildable(target)) or 'no recipe edge writes'} (pick with --recipe, "
                          "and --runtime where a recipe runs on several)")
    if spec.is_moe and writer != "gguf" and option not in ("fp32", "fp16"):
        raise ConfigError(f"op 'MoE MLP' (top-{spec.n_experts_per_tok} of {spec.n_experts} experts) has no "
                          f"{fmt} lowering for recipe '{recipe}' ({option}) in edge; it is written as float ONNX "
                          "(fp32, fp16), float .pte (fp32) and GGUF (every recipe): pick one with --recipe / --runtime")
    if spec.qkv_bias and writer == "gguf":
        raise ConfigError("op 'q/k/v bias' is not written by edge's GGUF writer (llama architecture only)")
    try:
        from edge.sim import Workload, simulate

        wl = Workload(prompt_len=min(128, max(1, (context or 256) // 2)), gen_len=max(1, (context or 256) // 4),
                      context=context or 0)
        sim = simulate(spec, recipe, target, runtime=name, workload=wl, budgets=[])
    except ConfigError as e:
        raise ConfigError(f"will-it-work: the simulator cannot judge recipe '{recipe}' on {target.name}: {e}") from e
    if not sim.fits:
        raise BudgetFailed(f"will-it-work: the model does not fit on {target.name} ({sim.fit_binding}): needs "
                           f"{sim.peak_memory_bytes / 2**20:,.0f} MiB of {sim.memory.get('available', 0) / 2**20:,.0f} "
                           "MiB available; quantize to fewer bits, prune, or shorten the context")
    return ExportPlan(name, fmt, writer, variant, option, RUNTIME_OF_WRITER[writer])


def buildable(target) -> list[str]:
    """What edge can write for ``target``, per runtime: "executorch-xnnpack (pte): fp32, 8da4w, w8a8"."""
    out = []
    for name, rt in target.runtimes.items():
        fmts = [f for f in rt.formats if f in FORMAT_WRITERS]
        recipes = [r for r in rt.recipes if fmts and r in RECIPE_OPTIONS[FORMAT_WRITERS[fmts[0]][0]]]
        if recipes:
            out.append(f"{name} ({fmts[0]}): {', '.join(recipes)}")
    return out


def check_recipe(target, recipe, runtime: str | None = None) -> str:
    """Can ``target`` run quantization ``recipe`` at all? The runtime that would run it, or a
    ConfigError naming the unit, the data type it lacks and the recipes it does run.

    ``recipe`` is a preset name, a recipe file or a QuantRecipe; its simulator preset says which
    activation data type its matmuls take (fp16 activations cannot run on an int8-only NPU).
    """
    q = load_quant_recipe(recipe)
    preset = q.sim_preset or q.name
    rt = target.runtime_for(preset, runtime)
    name = runtime or next(k for k, v in target.runtimes.items() if v is rt)
    unit = target.units[rt.unit]
    acts = load_cost_recipe(preset).activations
    if unit.kind != "cpu" and acts not in unit.dtypes:
        runs = [r for r, v in target.runtimes.items() if not v.recipes or preset in v.recipes]
        raise ConfigError(f"recipe '{q.name}' computes with {acts} activations, but {target.name}'s {unit.name} "
                          f"(runtime '{name}') takes {', '.join(unit.dtypes)}; pick a recipe with "
                          f"{'/'.join(unit.dtypes)} activations (it runs: {', '.join(rt.recipes) or 'any'})"
                          + (f" or another runtime ({', '.join(r for r in runs if r != name)})" if len(runs) > 1 else ""))
    return name
