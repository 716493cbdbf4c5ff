"""The `edge` command line. Every command is a few lines calling the public API.

Errors derived from EdgeError print one line (``error: ...``) and exit non-zero; heavy backends
(torch, executorch, onnxruntime, llama.cpp) are imported inside the commands that need them.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from edge.errors import EdgeError


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

    res = generate(model, prompt, max_tokens=max_tokens, chat=chat)
    if as_json:
        return echo_json(res)
    click.echo(res["text"])



# ---- targets and simulation -------------------------------------------------------------------
# (target commands: targets list/show/probe, simulate)


if __name__ == "__main__":
    main()
