"""Structured pruning of the built-in model: quality vs parameter count, and llama.cpp decode speed.

One run, one table: for 10/20/30% of the parameters removed, perplexity and KL divergence against the
unpruned model on held-out text (calib/heldout, never used for calibration), for

* MLP channels: magnitude vs activation importance, each with and without least-squares recovery;
* whole layers (depth): activation importance, +/- recovery; MLP channels + attention heads:
  activation importance, no recovery (what kind='auto' compares);
* 2:4 semi-structured sparsity (no parameters removed; a mask), magnitude vs activation;

plus the calibration KL that ``kind='auto'`` ranks kinds by (which kind it would pick at each ratio),
and the llama.cpp decode tokens/s of the pruned model as F32 and Q4_0 GGUF next to the unpruned one
(2 threads). Writes benchmarks/results/prune_smollm2.json and prints a markdown table::

    .venv/bin/python benchmarks/prune.py            # ~1 h on 2 cores shared with other jobs
    .venv/bin/python benchmarks/prune.py --quick    # smoke run of the script (minutes)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

THREADS = 2
EVAL_TOKENS, WINDOW = 1024, 256
CALIB = dict(mix="general:1", n_samples=16, seq_len=256, seed=0)
KL_SAMPLES = 8  # calibration sequences kind='auto' measures KL on (as edge.prune.calib_kl)
RATIOS = (0.1, 0.2, 0.3)
# (kind, importance, recovery) rows at every ratio
ROWS = [
    ("mlp", "magnitude", "none"), ("mlp", "magnitude", "lstsq"),
    ("mlp", "activation", "none"), ("mlp", "activation", "lstsq"),
    ("mlp+attn", "activation", "none"),
    ("depth", "activation", "none"), ("depth", "activation", "lstsq"),
]  # fmt: skip
DECODE_PROMPT, DECODE_TOKENS = 32, 64


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one ratio: checks the script runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/prune_smollm2.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from edge.calib import CalibConfig, dataset_hash, load_text, token_batches
    from edge.eval import compare
    from edge.model.load import builtin_path, load_model
    from edge.prune import PruneConfig, collect_stats, prune
    from edge.runtime.eager import TorchRunner

    torch.set_num_threads(THREADS)
    ratios, rows, calib_kw, n_eval = RATIOS, ROWS, dict(CALIB), EVAL_TOKENS
    if args.quick:
        ratios, rows, n_eval = (0.2,), ROWS[2:4] + ROWS[6:8], 512
        calib_kw.update(n_samples=4, seq_len=128)
        args.out = str(Path(tempfile.gettempdir()) / "prune_quick.json")

    t_start = time.time()
    lm = load_model("smollm2-135m")
    dense = lm.model
    ccfg = CalibConfig.from_spec(calib_kw.pop("mix"), **calib_kw)
    calib = token_batches(lm.tokenizer, ccfg)
    toks = lm.tokenizer.encode(load_text("heldout").text)[:n_eval]
    ref_cache: dict[tuple, np.ndarray] = {}
    ref_runner = TorchRunner(dense)

    def ref_fn(chunk):
        key = tuple(chunk)
        if key not in ref_cache:
            ref_cache[key] = ref_runner.logits(chunk)
        return ref_cache[key]

    kl_tokens = torch.as_tensor(calib[:KL_SAMPLES], dtype=torch.long)
    with torch.no_grad():
        ref_kl_logp = torch.log_softmax(dense(kl_tokens).double(), -1)

    def calib_kl(model) -> float:  # the measure kind='auto' ranks by (edge.prune.calib_kl), ref cached
        with torch.no_grad():
            lq = torch.log_softmax(model(kl_tokens).double(), -1)
        return float((ref_kl_logp.exp() * (ref_kl_logp - lq)).sum()) / kl_tokens.numel()

    params0 = dense.spec.param_count()
    base = compare(ref_fn, ref_fn, toks, WINDOW)
    t0 = time.time()
    cache = {"stats": collect_stats(dense, calib)}  # reused by every prune() call below
    stats_s = time.time() - t0
    print(f"loaded; unpruned {params0:,} params, held-out ppl {base.ref_ppl:.3f}; stats {stats_s:.0f}s", flush=True)

    table = [dict(kind="none", importance="-", recovery="-", target=0.0, params=params0, removed=0.0,
                  ppl=base.ref_ppl, kld=0.0, top1=1.0, seconds=0.0)]  # fmt: skip
    gguf_models: dict[float, object] = {}
    for ratio in ratios:
        for kind, imp, rec in rows:
            cfg = PruneConfig(ratio=ratio, kind=kind, importance=imp, recovery=rec)
            t0 = time.time()
            res = prune(dense, cfg, calib, cache=cache)
            dt = time.time() - t0
            c = compare(ref_fn, TorchRunner(res.model).logits, toks, WINDOW)
            row = dict(kind=kind, importance=imp, recovery=rec, target=ratio, params=res.spec.param_count(),
                       removed=1 - res.spec.param_count() / params0, ppl=c.ppl, kld=c.kld_mean,
                       kld_p99=c.kld_p99, top1=c.top1_agreement, seconds=dt,
                       shapes=dict(n_layers=res.spec.n_layers, n_heads=res.spec.n_heads,
                                   n_kv_heads=res.spec.n_kv_heads, ffn_dim=res.spec.ffn_dim))  # fmt: skip
            if rec == "none" and imp == "activation":
                row["calib_kl"] = calib_kl(res.model)
            table.append(row)
            print(fmt_row(row), flush=True)
            if (kind, imp, rec) == ("mlp", "activation", "lstsq"):
                gguf_models.setdefault(ratio, res.model)
            del res
    for sp_imp in ("magnitude", "activation"):
        t0 = time.time()
        res = prune(dense, PruneConfig(sparsity="2:4", importance=sp_imp, recovery="none"), calib, cache=cache)
        dt = time.time() - t0
        c = compare(ref_fn, TorchRunner(res.model).logits, toks, WINDOW)
        row = dict(kind="2:4", importance=sp_imp, recovery="none", target=0.5, params=res.spec.param_count(),
                   removed=0.0, ppl=c.ppl, kld=c.kld_mean, kld_p99=c.kld_p99, top1=c.top1_agreement, seconds=dt)
        table.append(row)
        print(fmt_row(row), flush=True)
        del res

    auto = {}
    for ratio in ratios:
        cands = {r["kind"]: r for r in table if r["target"] == ratio and "calib_kl" in r}
        pick = min(cands, key=lambda k: cands[k]["calib_kl"])
        best_rec = min((r for r in table if r["target"] == ratio and r["recovery"] == "lstsq"), key=lambda r: r["kld"])
        auto[str(ratio)] = dict(calib_kl={k: v["calib_kl"] for k, v in cands.items()}, picks=pick,
                                best_heldout_with_recovery=best_rec["kind"] + "/" + best_rec["importance"])

    speed = decode_speed(dense, gguf_models, builtin_path("smollm2-135m"), lm.tokenizer, toks)
    result = dict(
        model="smollm2-135m", params=params0, host=platform.processor() or platform.machine(), threads=THREADS,
        eval=dict(text="calib/heldout", tokens=len(toks), window=WINDOW),
        calibration=dict(**CALIB, dataset_hash=dataset_hash(ccfg)) if not args.quick else dict(quick=True),
        stats_seconds=stats_s, rows=table, auto=auto, decode=speed, seconds=time.time() - t_start,
    )  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))
    print()
    print(markdown(result))
    print(f"\nwrote {args.out} ({result['seconds']:.0f}s)")


def fmt_row(r: dict) -> str:
    extra = f" calibKL {r['calib_kl']:.4f}" if "calib_kl" in r else ""
    return (f"{r['kind']:>8} {r['importance']:>10} {r['recovery']:>5} {r['target']:.0%}: {r['params']:,} "
            f"(-{r['removed']:.1%}) ppl {r['ppl']:.2f} KLD {r['kld']:.4f} top1 {r['top1']:.1%} {r['seconds']:.0f}s{extra}")  # fmt: skip


def decode_speed(dense, pruned: dict, builtin, tokenizer, toks) -> list[dict]:
    """llama.cpp decode tok/s (2 threads) of the unpruned and pruned models as F32 and Q4_0 GGUF;
    also checks the pruned F32 GGUF's logits against our torch model."""
    import numpy as np

    from edge.export.gguf import export_gguf
    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner, convert_gguf

    out = []
    with tempfile.TemporaryDirectory() as d:
        files = {}
        files[("unpruned", "F32")] = convert_gguf(builtin, Path(d) / "base-f32.gguf", "F32")
        files[("unpruned", "Q4_0")] = convert_gguf(files[("unpruned", "F32")], Path(d) / "base-q4_0.gguf", "Q4_0")
        for ratio, model in pruned.items():
            f32 = export_gguf(model, None, Path(d) / f"pruned{ratio}-f32.gguf", tokenizer_gguf=builtin)
            files[(f"pruned {ratio:.0%}", "F32")] = f32
            files[(f"pruned {ratio:.0%}", "Q4_0")] = convert_gguf(f32, Path(d) / f"pruned{ratio}-q4_0.gguf", "Q4_0")
        models = {"unpruned": dense, **{f"pruned {r:.0%}": m for r, m in pruned.items()}}
        prompt = list(toks[:DECODE_PROMPT])
        check = list(toks[:WINDOW])
        for (name, ftype), path in files.items():
            runner = LlamaCppRunner(path, n_ctx=512, n_threads=THREADS, kv_type="f32" if ftype == "F32" else "f16")
            row = dict(model=name, gguf=ftype, params=models[name].spec.param_count(),
                       file_mb=round(path.stat().st_size / 2**20, 1))  # fmt: skip
            if ftype == "F32":  # the exported GGUF computes what our torch model computes
                diff = np.abs(runner.logits(check) - TorchRunner(models[name]).logits(check)).max()
                row["max_abs_logit_diff_vs_torch"] = float(diff)
            best = 0.0
            for _ in range(2):  # best of 2: the host is shared
                runner.generate(prompt, 4)  # warm-up
                t0 = time.perf_counter()
                runner.generate(prompt, DECODE_TOKENS)
                dt = time.perf_counter() - t0
                best = max(best, DECODE_TOKENS / dt)  # includes one prompt pass; same for all rows
            row["decode_tok_s"] = round(best, 1)
            out.append(row)
            print(f"  {name:>12} {ftype:>5}: {row['file_mb']} MB, {row['decode_tok_s']} tok/s", flush=True)
            del runner
    return out


def markdown(res: dict) -> str:
    lines = [
        f"smollm2-135m ({res['params']:,} params), held-out {res['eval']['tokens']} tokens, window {res['eval']['window']}",
        "",
        "| kind | importance | recovery | target | params | removed | ppl | KLD | top-1 | prune s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['kind']} | {r['importance']} | {r['recovery']} | {r['target']:.0%} | {r['params'] / 1e6:.1f}M "
            f"| {r['removed']:.1%} | {r['ppl']:.2f} | {r['kld']:.4f} | {r['top1']:.1%} | {r['seconds']:.0f} |"
        )
    lines += ["", "kind='auto' (calibration KL, no recovery) per ratio:"]
    for ratio, a in res["auto"].items():
        kls = ", ".join(f"{k} {v:.4f}" for k, v in a["calib_kl"].items())
        lines.append(f"- {float(ratio):.0%}: {kls} -> picks {a['picks']}; best held-out with recovery: "
                     f"{a['best_heldout_with_recovery']}")  # fmt: skip
    lines += ["", "| model | GGUF | params | file MB | decode tok/s (2 threads) | max logit diff vs torch |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for d in res["decode"]:
        diff = d.get("max_abs_logit_diff_vs_torch")
        lines.append(f"| {d['model']} | {d['gguf']} | {d['params'] / 1e6:.1f}M | {d['file_mb']} | {d['decode_tok_s']} "
                     f"| {'' if diff is None else f'{diff:.1e}'} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
