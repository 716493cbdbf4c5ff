"""The `edge` command line. Every command is a few lines calling the public API.

Errors derived from EdgeError print one line (``error: ...``) and exit non-zero; heavy backends
(torch, executorch, onnxruntime, llama.cpp) are imported inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from edge.errors import ConfigError, EdgeError
from edge.recipes import PRESETS


def friendly(fn):
    """Turn EdgeError (and missing files) into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)

    return wrapper


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


@click.group()
@click.version_option(package_name="edge")
def main() -> None:
    """edge: compile a language model for an edge device and predict how it will run there."""


# ---- models ---------------------------------------------------------------------------------
@main.group()
def models() -> None:
    """Built-in models and what a model file or directory holds."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_list(as_json: bool) -> None:
    """List the built-in models (no download needed)."""
    from edge.model.load import BUILTIN_MODELS, DEFAULT_MODEL

    rows = [{"name": b.name, "default": b.name == DEFAULT_MODEL, "description": b.description,
             "licence": b.licence, "source": b.source} for b in BUILTIN_MODELS.values()]
    if as_json:
        return echo_json(rows)
    for r in rows:
        click.echo(f"{r['name']}{' (default)' if r['default'] else ''}  {r['description']}  [{r['licence']}]")


@models.command("show")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def models_show(model: str, as_json: bool) -> None:
    """Architecture and parameter counts of MODEL (built-in name, .gguf, checkpoint dir or config.json)."""
    from edge.model.load import load_spec, resolve

    src, spec = resolve(model), load_spec(model)
    info = {"model": model, "kind": src.kind, "path": str(src.path), "params": spec.param_count(),
            "active_params": spec.active_param_count(), "param_breakdown": spec.param_breakdown(),
            "spec": spec.to_dict()}
    if as_json:
        return echo_json(info)
    click.echo(f"{model}  ({src.kind}: {src.path})")
    click.echo(f"  arch {spec.arch}: {spec.n_layers} layers, dim {spec.dim}, heads {spec.n_heads}/{spec.n_kv_heads} "
               f"(head_dim {spec.head_dim}), ffn {spec.ffn_dim}, vocab {spec.vocab_size}, "
               f"{'tied' if spec.tie_embeddings else 'untied'} embeddings, rope theta {spec.rope_theta:g}")
    if spec.features():
        click.echo(f"  features: {', '.join(spec.features())}")
    if spec.is_moe:
        click.echo(f"  MoE: {spec.n_experts} experts, top-{spec.n_experts_per_tok}, expert ffn {spec.moe_ffn_dim}, "
                   f"shared ffn {spec.shared_expert_ffn_dim}, {len(spec.moe_layers)} MoE layers")
    click.echo(f"  params {spec.param_count():,} (active per token {spec.active_param_count():,})")
    for k, v in spec.param_breakdown().items():
        if v:
            click.echo(f"    {k:<12} {v:>14,}")


@main.command("eval")
@click.option("--model", "model", default="smollm2-135m", show_default=True, help="Built-in name or path.")
@click.option("--text", "text", type=click.Path(dir_okay=False), required=True, help="UTF-8 text file to score.")
@click.option("--window", default=256, show_default=True, help="Tokens per evaluation window.")
@click.option("--max-windows", type=int, default=None, help="Score only the first N windows.")
@click.option("--reference", default=None, help="Also compare against this model: KL divergence, top-1 agreement.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable contract).")
@friendly
def eval_cmd(model, text, window, max_windows, reference, as_json) -> None:
    """Perplexity of MODEL on a text (and KL divergence against --reference)."""
    from edge.api import evaluate

    res = evaluate(model, text, window=window, max_windows=max_windows, reference=reference,
                   progress=not as_json)
    if as_json:
        return echo_json(res)
    click.echo(f"{res['model']}: ppl {res['ppl']:.4f} over {res['tokens']} tokens "
               f"({res['windows']} windows of {window}), {res['params']:,} params, "
               f"{res['tokens_per_s']:.0f} tok/s")
    if reference:
        c = res["comparison"]
        click.echo(f"  vs {reference}: KLD {c['kld_mean']:.5f} (p99 {c['kld_p99']:.4f}), "
                   f"top-1 agreement {c['top1_agreement']:.2%}, ppl change {c['ppl_change']:+.2%}")


@main.command("generate")
@click.option("--model", "model", default="smollm2-135m", show_default=True, help="Built-in name or path.")
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--max-tokens", default=64, show_default=True)
@click.option("--chat/--raw", default=True, show_default=True, help="Wrap the prompt in the chat template.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def generate_cmd(model, prompt, max_tokens, chat, as_json) -> None:
    """Greedy continuation of PROMPT with the reference torch model."""
    from edge.api import generate

    res = generate(model, prompt, max_tokens=max_tokens, chat=chat, progress=not as_json)
    if as_json:
        return echo_json(res)
    click.echo(res["text"])


# ---- prune --------------------------------------------------------------------------------------
@main.command("prune")
@click.option("--model", "model", default="smollm2-135m", show_default=True, help="Built-in name or path.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--recipe", default=None, help="Preset (mlp-10, mlp-20, width-20, depth-20, 2:4) or YAML with a prune: section.")
@click.option("--ratio", type=float, default=None, help="Fraction of parameters to remove, in (0, 1).")
@click.option("--params", type=int, default=None, help="Or: parameter count to keep.")
@click.option("--kind", default="auto", show_default=True, help="What a ratio removes: auto, mlp, attn, mlp+attn, depth, experts.")
@click.option("--ffn-dim", type=int, default=0, help="MLP channels to keep per layer.")
@click.option("--n-heads", type=int, default=0, help="Query heads to keep per layer.")
@click.option("--n-kv-heads", type=int, default=0, help="KV heads (groups) to keep per layer.")
@click.option("--n-layers", type=int, default=0, help="Layers to keep.")
@click.option("--experts", type=int, default=0, help="Experts to keep per MoE layer.")
@click.option("--top-k", type=int, default=0, help="Lower the experts used per token.")
@click.option("--expert-score", default="contribution", show_default=True, help="contribution or frequency.")
@click.option("--sparsity", default="", help="2:4 semi-structured sparsity.")
@click.option("--importance", default="activation", show_default=True, help="activation or magnitude.")
@click.option("--recovery", default="none", show_default=True, help="none, lstsq (layer targets) or lstsq-stream.")
@click.option("--calib", default="general:1", show_default=True, help="Calibration text mix (edge.calib).")
@click.option("--calib-samples", default=32, show_default=True)
@click.option("--seq-len", default=256, show_default=True)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def prune_cmd(model, out, recipe, ratio, params, kind, ffn_dim, n_heads, n_kv_heads, n_layers, experts, top_k,
              expert_score, sparsity, importance, recovery, calib, calib_samples, seq_len, force, as_json) -> None:
    """Prune MODEL (heads, MLP channels, layers, experts, 2:4) and write a model directory to --out."""
    from edge.errors import ConfigError
    from edge.prune import PruneConfig, load_prune_recipe, prune_to_dir

    shape_opts = dict(ratio=ratio, params=params, ffn_dim=ffn_dim, n_heads=n_heads, n_kv_heads=n_kv_heads,
                      n_layers=n_layers, n_experts=experts, n_experts_per_tok=top_k, sparsity=sparsity)
    calib_opts = dict(calib=calib, calib_samples=calib_samples, seq_len=seq_len)
    if recipe:
        given = [k for k, v in shape_opts.items() if v]
        if given:
            raise ConfigError(f"--recipe and --{given[0].replace('_', '-')} conflict; give one")
        cfg, from_recipe = load_prune_recipe(recipe)
        calib_opts.update(from_recipe)
    else:
        cfg = PruneConfig(kind=kind, expert_score=expert_score, importance=importance, recovery=recovery,
                          **shape_opts)
    res = prune_to_dir(model, cfg, out, force=force, **calib_opts)
    if as_json:
        return echo_json(res)
    b, a = res["params_before"], res["params_after"]
    click.echo(f"{out}: {res['kind']} pruning, {b:,} -> {a:,} params ({1 - a / b:.1%} removed)")
    for k, v in res["kinds_tried"].items():
        if "calib_kl" in v:
            click.echo(f"  tried {k}: calibration KL {v['calib_kl']:.4f}")


# ---- quantize: calibrated weights (and activation scales) written as tensors + recipe --------------
@main.command("quantize")
@click.option("--model", "model", default="smollm2-135m", show_default=True, help="Built-in name or path.")
@click.option("--recipe", required=True,
              help=f"Preset ({', '.join(p.name for p in PRESETS.values() if p.quant)}) or a recipe file. w8a8 is edge "
                   "build's static "
                   "W8A8 scheme (rotation, GPTQ int8 weights, static activation scales, some groups at int16/float); "
                   "with --method rtn/awq or a recipe file setting smoothquant: SmoothQuant instead (int8 weights, "
                   "absmax static activation scales).")
@click.option("--method", default=None, help="Override the algorithm: rtn, gptq, awq, awq+gptq.")
@click.option("--calib", default="assistant:3,general:7", show_default=True, help="Calibration mix NAME[:WEIGHT],...")
@click.option("--n-samples", default=64, show_default=True)
@click.option("--seq-len", default=512, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory (new or empty).")
@click.option("--target", default=None, help="Check first that this target can run the recipe (w8a8: groups kept "
              "above int8 run at int16 where its unit has int16, else in float; default int16).")
@click.option("--runtime", default=None, help="With --target: the runtime that will run it (default: the profile's).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def quantize_cmd(model, recipe, method, calib, n_samples, seq_len, seed, out, target, runtime, as_json) -> None:
    """Quantize MODEL with RECIPE on calibration data; write model.gguf (or tensors.npz + act_scales.json)
    and a report."""
    from edge.quantize_dir import quantize_to_dir

    w8 = None
    if target:
        from edge.export.check import check_recipe
        from edge.quant.configs import load_recipe
        from edge.quantize_dir import uses_w8a8_scheme
        from edge.targets import load_target

        t = load_target(target)
        rt = check_recipe(t, recipe, runtime)
        if uses_w8a8_scheme(load_recipe(recipe, method=method)):
            from edge.quant.w8a8 import for_unit

            w8 = for_unit(t.units[t.runtimes[rt].unit].dtypes)

    rep = quantize_to_dir(model, recipe, out, calib=calib, n_samples=n_samples, seq_len=seq_len, seed=seed,
                          method=method, w8a8=w8)
    if as_json:
        return echo_json(rep)
    click.echo(f"{rep['recipe']} ({rep['method']}): {rep['weight_bytes'] / 1e6:.1f} MB of weights in "
               f"{rep['seconds']:.1f} s -> {rep['artifact']}")
    if "precision" in rep:
        p = rep["precision"]
        click.echo(f"  edge.quant.w8a8 groups: {p['groups']['int8']} int8, {p['groups']['int16']} int16, "
                   f"{p['groups']['float']} float; {p['macs_not_int8']:.1%} of the MACs per token not int8 "
                   f"({p['layer_macs_not_int8']:.1%} of the decoder's)")


@main.group("quant")
def quant_group() -> None:
    """Quantization analysis."""


@quant_group.command("sensitivity")
@click.option("--model", "model", default="smollm2-135m", show_default=True, help="Built-in name or path.")
@click.option("--calib", default="assistant:3,general:7", show_default=True, help="Calibration mix NAME[:WEIGHT],...")
@click.option("--n-samples", default=4, show_default=True)
@click.option("--seq-len", default=256, show_default=True)
@click.option("--formats", default="q4_0,q5_0,q8_0", show_default=True, help="Comma-separated weight formats.")
@click.option("--units", type=click.Choice(["layers", "classes"]), default="layers", show_default=True)
@click.option("--budget-mb", type=float, default=None, help="Also assign mixed precision within this many MB.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a bar chart (PNG).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def quant_sensitivity_cmd(model, calib, n_samples, seq_len, formats, units, budget_mb, plot, as_json) -> None:
    """KL divergence each layer (or tensor class) causes when quantized alone, per format."""
    from edge.quant.sensitivity import run_sensitivity

    res = run_sensitivity(model, calib=calib, n_samples=n_samples, seq_len=seq_len,
                          formats=tuple(f.strip() for f in formats.split(",")), units=units,
                          budget_mb=budget_mb, plot=plot)
    if as_json:
        return echo_json(res)
    fm = res["formats"]
    click.echo(f"{'unit':<18}{'params':>12}" + "".join(f"{f:>10}" for f in fm))
    for row in res["table"]:
        click.echo(f"{row['unit']:<18}{row['params']:>12,}" + "".join(f"{row[f]:>10.4f}" for f in fm))
    if res.get("assignment"):
        a = res["assignment"]
        click.echo(f"mixed within {budget_mb} MB: {a['bytes'] / 1e6:.2f} MB, est. KL sum {a['kl_sum']:.4f}: "
                   + ", ".join(f"{u}={f}" for u, f in a["choice"].items() if f != fm[0]))
    if plot:
        click.echo(f"plot: {plot}")


# ---- targets and simulation -------------------------------------------------------------------
@main.group()
def targets() -> None:
    """Device profiles (targets/*.yaml): list, show, and probe this machine."""


@targets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def targets_list(as_json: bool) -> None:
    """List the target profiles."""
    from edge.targets import list_targets, load_target

    rows = [load_target(n) for n in list_targets()]
    if as_json:
        return echo_json([{"name": t.name, "class": t.device_class, "description": t.description,
                           "runtimes": list(t.runtimes)} for t in rows])
    for t in rows:
        click.echo(f"{t.name:<18} {t.device_class:<15} {t.description}")


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly
def targets_show(name: str, as_json: bool) -> None:
    """Every figure of target NAME with its source."""
    from dataclasses import asdict

    from edge.targets import format_figure, load_target

    t = load_target(name)
    if as_json:
        return echo_json(asdict(t))
    click.echo(f"{t.name}: {t.description}  [{t.path}]")
    for key, prov in t.provenance.items():
        click.echo(f"  {key:<34} {format_figure(*t.figures[key]):>12}  {prov}")
    click.echo("  runtimes: " + "; ".join(f"{r.name} on {r.unit} ({', '.join(r.recipes)})" for r in t.runtimes.values()))
    click.echo(f"  defaults: runtime {dict(t.defaults.runtime)}, budgets {list(t.defaults.budgets)}")
    for c in t.constraints:
        click.echo(f"  constraint: {c}")


@targets.command("probe")
@click.option("--name", default="host", show_default=True, help="Profile name to write.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write here (default: print).")
@click.option("--repeats", default=5, show_default=True, help="Best of this many runs per measurement.")
@click.option("--rounds", default=1, show_default=True, help="Repeat the probe 20 s apart, keep the best (busy hosts).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw measurements instead.")
@click.option("--results", type=click.Path(dir_okay=False), default=None,
              help="Also write the raw measurements here (e.g. benchmarks/results/probe_NAME.json); the profile's "
                   "probe source names this file, so a reader can check every figure.")
@friendly
def targets_probe(name: str, out: str | None, repeats: int, rounds: int, as_json: bool, results: str | None) -> None:
    """Measure this machine (bandwidth, fp32/int8 matmul, cores, caches) and write a profile."""
    from pathlib import Path

    from edge.probe import probe, profile_yaml

    for opt, path in (("--results", results), ("--out", out)):  # before minutes of measuring, not after
        if path and not Path(path).resolve().parent.is_dir():
            raise ConfigError(f"targets probe {opt} {path}: directory {Path(path).parent} does not exist; "
                              "create it or pick another path")
    m = probe(repeats=repeats, rounds=rounds)
    if as_json:
        return echo_json(m)
    if results:
        import json

        Path(results).write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    text = profile_yaml(m, name=name, results=results)
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text)


@main.command("simulate")
@click.option("--model", "model", default="smollm2-135m", show_default=True,
              help="Built-in name, .gguf, checkpoint dir or config.json.")
@click.option("--target", required=True, help="Target profile name or YAML path.")
@click.option("--recipe", default=None, help="Preset name or recipe file (default: the target's).")
@click.option("--runtime", default=None, help="Runtime (default: the target's default for the recipe).")
@click.option("--prompt-len", type=int, default=None, help="Prompt tokens.")
@click.option("--gen-len", type=int, default=None, help="Generated tokens.")
@click.option("--context", type=int, default=None, help="KV cache length (default prompt + gen).")
@click.option("--batch", type=int, default=None, help="Sequences decoded together.")
@click.option("--budget", "budgets", multiple=True, help="e.g. 'decode_tok_s>=15' (repeatable; default: the target's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable contract).")
@friendly
def simulate_cmd(model, target, recipe, runtime, prompt_len, gen_len, context, batch, budgets, as_json) -> None:
    """Predict tokens/s, latency, memory and CPU load of MODEL on TARGET; exit 1 if a budget fails."""
    from edge.errors import BudgetFailed
    from edge.sim import Workload, simulate
    from edge.sim.report import format_result
    from edge.targets import load_target

    t = load_target(target)
    wl = dict(t.defaults.workload)
    wl.update({k: v for k, v in dict(prompt_len=prompt_len, gen_len=gen_len, context=context, batch=batch).items()
               if v is not None})
    if context is None and wl.get("context", 0) < wl.get("prompt_len", 128) + wl.get("gen_len", 64):
        wl["context"] = 0  # the profile's default context is too short for the asked workload: size it to fit
    from edge.model.load import load_spec  # torch-free; a failing import is a broken install, not a fallback

    res = simulate(load_spec(model), recipe or t.defaults.recipe or "q4_0", t, runtime=runtime,
                   workload=Workload(**wl), budgets=list(budgets) if budgets else None)
    if as_json:
        echo_json(res.to_dict())
    else:
        click.echo(format_result(res))
    if not res.ok or not res.fits:
        failed = [b.name for b in res.budgets if not b.ok] + ([] if res.fits else ["fits"])
        raise BudgetFailed(f"{res.model} on {res.target}: failed {', '.join(failed)}")


# ---- build, inspect, run, validate: the device package and its CI gate ---------------------------
@main.command("build")
@click.option("--model", "model", default="smollm2-135m", show_default=True, help="Built-in name or path.")
@click.option("--target", required=True, help="Target profile name (edge targets list).")
@click.option("--recipe", default=None, help="Quantization preset, or a YAML recipe (base: preset, prune: section: "
              "prune -> quantize -> export); default: the target's preset.")
@click.option("--runtime", default=None, help="Device runtime from the profile; default: the recipe's.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Package directory to write.")
@click.option("--max-seq", default=512, show_default=True, help="KV cache slots of the exported programs.")
@click.option("--auto", is_flag=True, help="Search pruning x quantization for the most accurate package "
              "that meets the budgets (writes recipe.yaml, report.md, frontier.png, package/).")
@click.option("--budget", "budgets", multiple=True, help="With --auto: e.g. 'decode_tok_s>=15' (repeatable); "
              "default: the target's budgets.")
@click.option("--finalists", default=1, show_default=True, help="With --auto: finalists built and validated.")
@friendly
def build_cmd(model, target, recipe, runtime, out, max_seq, auto, budgets, finalists) -> None:
    """Build a device package: artifacts, tokenizer, manifest.json, report.md."""
    from edge.build import BuildConfig, build

    if auto:
        from edge.search import auto_build

        res = auto_build(model, target, out, budgets or None, build_finalists=finalists,
                         progress=lambda m: click.echo(m, err=True))
        click.echo(open(f"{out}/report.md").read())
        click.echo(f"chosen: {res['chosen']['key']}; recipe: {out}/recipe.yaml")
        return
    pkg = build(model, target, recipe, out, runtime, BuildConfig(max_seq=max_seq))
    click.echo((pkg / "report.md").read_text())
    click.echo(f"package: {pkg}")


@main.command("inspect")
@click.argument("package", type=click.Path())
@click.option("--json", "as_json", is_flag=True)
@friendly
def inspect_cmd(package, as_json) -> None:
    """Summarise a package and check its files against the manifest."""
    from edge.package import read_manifest, verify

    m = read_manifest(package)
    verify(m, package)
    if as_json:
        return echo_json(m)
    click.echo(f"{package}: {m['model']['name']} for {m['target']} ({m['recipe']}, runtime {m['runtime']}), "
               f"manifest v{m['manifest_version']}, checksums ok")
    for a in m["artifacts"]:
        acc = a.get("accuracy", {})
        click.echo(f"  {', '.join(a['files'])}: {a['format']} ({a['option']}) on {a['runtime']}; "
                   f"top-1 {acc.get('top1_agreement', 0):.4f}, KLD {acc.get('kld_mean', 0):.5f}")
    for f, info in m["files"].items():
        click.echo(f"  {f:<28} {info['size']:>12,} B  {info['sha256'][:16]}")


@main.command("run")
@click.argument("package", type=click.Path())
@click.option("--prompt", required=True)
@click.option("--max-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--backend", default=None, help="executorch, onnxruntime or llama.cpp (default: the package's first).")
@click.option("--chat/--raw", default=True, show_default=True)
@friendly
def run_cmd(package, prompt, max_tokens, temperature, top_p, backend, chat) -> None:
    """Stream a continuation of PROMPT from a package (checksums verified first)."""
    import edge.runtime

    s = edge.runtime.load(package, backend=backend)
    for piece in s.generate(prompt, max_tokens, temperature, top_p, stream=True, chat=chat):
        click.echo(piece, nl=False)
    click.echo()


@main.command("validate")
@click.argument("package", type=click.Path())
@click.option("--budget", "budgets", multiple=True, help="e.g. top1>=0.9, kld<=0.05, decode_tok_s>=15 (repeat).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Also write a JUnit XML report.")
@click.option("--max-windows", type=int, default=None, help="Score only the first N held-out windows.")
@click.option("--reference", default=None, help="The unquantized model to compare against (built-in name or "
              "path); default: the model the manifest names.")
@click.option("--allow-missing", is_flag=True, help="Pass even if a check could not run on this machine because "
              "an optional runtime is not installed (the emulated HTP needs onnxruntime-qnn); such checks are "
              "still reported as skipped. Without it they fail validation.")
@friendly
def validate_cmd(package, budgets, as_json, junit, max_windows, reference, allow_missing) -> None:
    """Run every artifact against the reference and the budgets; exit 1 on any failure or skipped check."""
    from edge.validate import validate

    ref = None
    if reference:
        from edge.model.load import load_model
        from edge.runtime.eager import TorchRunner

        ref = TorchRunner(load_model(reference).model).logits
    rep = validate(package, budgets, reference=ref, max_windows=max_windows, allow_missing=allow_missing)
    if junit:
        with open(junit, "w") as f:
            f.write(rep.to_junit())
    if as_json:
        echo_json(rep.to_dict())
    else:
        for c in rep.checks:
            if c.skipped:
                click.echo(f"SKIP {c.name}: {c.detail}")
            else:
                click.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name}" + (f": {c.value} ({c.limit})" if c.limit else ""))
        n = len(rep.skipped)
        note = ""
        if n:
            note = (f" ({n} check{'s' * (n > 1)} skipped, allowed by --allow-missing)" if allow_missing else
                    f" ({n} check{'s' * (n > 1)} did not run; install what it names, or pass --allow-missing)")
        click.echo("validate: " + ("passed" if rep.ok else "FAILED") + note)
    if not rep.ok:
        sys.exit(1)


# ---- scale: stage cache, build matrix ---------------------------------------------------------------
@main.group("cache")
def cache_group() -> None:
    """The stage cache ($EDGE_CACHE or ~/.cache/edge): what it holds, and clearing it."""


@cache_group.command("info")
@click.option("--json", "as_json", is_flag=True)
@friendly
def cache_info(as_json: bool) -> None:
    """Entries and bytes per stage."""
    from edge.cache import StageCache

    info = StageCache().info()
    if as_json:
        return echo_json(info)
    click.echo(f"{info['root']}: {info['entries']} entries, {info['bytes'] / 1e6:.1f} MB")
    for name, s in info["stages"].items():
        click.echo(f"  {name:<24} {s['entries']:>5} entries {s['bytes'] / 1e6:>10.1f} MB")


@cache_group.command("clear")
@click.option("--stage", default=None, help="Clear one stage only.")
@friendly
def cache_clear(stage: str | None) -> None:
    """Remove cached stage outputs."""
    from edge.cache import StageCache

    c = StageCache()
    click.echo(f"removed {c.clear(stage)} entries from {c.root}")


@main.command("matrix")
@click.option("--models", default=None, help="Comma-separated model names or paths.")
@click.option("--targets", default=None, help="Comma-separated target profile names.")
@click.option("--recipes", default=None, help="Comma-separated recipes ('default': each target's own).")
@click.option("--file", "matrix_file", type=click.Path(dir_okay=False), default=None,
              help="YAML matrix file (models:, targets:, recipes:, ...) instead of the lists.")
@click.option("--address", default=None, help="Ray cluster address (host:port, ray://host:port, auto); default: a local Ray.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Directory for the packages and summary (default builds/).")
@click.option("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default 2).")
@click.option("--max-seq", type=int, default=None, help="KV cache slots of the exported programs.")
@click.option("--dry-run", is_flag=True, help="Check and simulate every entry; export nothing.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def matrix_cmd(models, targets, recipes, matrix_file, address, out, num_cpus, max_seq, dry_run, as_json) -> None:
    """Build every (model, target, recipe) as a Ray task; summary table + JSON in --out; exit 1 if any failed."""
    from pathlib import Path

    from edge.errors import BudgetFailed, ConfigError
    from edge.matrix import Matrix, load_matrix_file, run_matrix

    opts = {"max_seq": max_seq} if max_seq else {}
    over = dict(address=address, out=Path(out) if out else None, num_cpus=num_cpus,
                builder="plan" if dry_run else None, build_options=opts or None)
    if matrix_file:
        m = load_matrix_file(matrix_file, **over)
    else:
        if not (models and targets):
            raise ConfigError("give --models and --targets (comma-separated), or --file matrix.yaml")
        split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
        m = Matrix(models=split(models), targets=split(targets), recipes=split(recipes or "default"),
                   **{k: v for k, v in over.items() if v is not None})
    s = run_matrix(m, progress=(lambda line: None) if as_json else click.echo)
    if as_json:
        echo_json(s.to_dict())
    else:
        click.echo(s.table())
        click.echo(f"{s.ok}/{len(s.rows)} builds ok in {s.wall_s:.1f} s; summary: {m.out / 'summary.json'}")
    if s.ok < len(s.rows):
        raise BudgetFailed(f"{len(s.rows) - s.ok} of {len(s.rows)} builds failed")


@main.command("stream")
@click.option("--model", "model", required=True, type=click.Path(file_okay=False), help="HF checkpoint directory.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="GGUF file to write.")
@click.option("--tokenizer-gguf", default=None,
              help="GGUF (or built-in model name) to copy tokenizer metadata from; default: the checkpoint's "
                   "tokenizer.json, converted.")
@click.option("--weights", default="q4_0", show_default=True, help="q4_0, q5_0 or q8_0.")
@click.option("--method", default="awq", show_default=True, help="awq (calibrated) or rtn.")
@click.option("--calib", default="general:1", show_default=True, help="Calibration mix NAME[:WEIGHT],...")
@click.option("--json", "as_json", is_flag=True)
@friendly
def stream_cmd(model, out, tokenizer_gguf, weights, method, calib, as_json) -> None:
    """Quantize a checkpoint larger than memory to GGUF, one layer at a time."""
    from edge.model.load import BUILTIN_MODELS, builtin_path
    from edge.stream import StreamConfig, stream_to_gguf

    tok = builtin_path(tokenizer_gguf) if tokenizer_gguf in BUILTIN_MODELS else tokenizer_gguf  # None: tokenizer.json
    rep = stream_to_gguf(model, out, StreamConfig(weights=weights, method=method, calib=calib), tokenizer_gguf=tok,
                         progress=(lambda line: None) if as_json else click.echo)
    if as_json:
        return echo_json(rep)
    click.echo(f"{out}: {rep['bytes'] / 2**30:.2f} GiB in {rep['seconds']:.0f} s, peak RSS "
               f"{rep['peak_rss_bytes'] / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
