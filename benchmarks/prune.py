"""Structured pruning of the built-in model: quality vs parameter count, and llama.cpp decode speed.

One run, one table (``--mode quality``): for 10/20/30% of the parameters removed, perplexity and KL
divergence against the unpruned model on held-out text (calib/heldout, never used for calibration), for

* MLP channels: magnitude vs activation importance, each with and without least-squares recovery;
* MLP channels + attention heads: magnitude vs activation, no recovery;
* whole layers (depth): activation importance, with and without recovery;
* 2:4 semi-structured sparsity (no parameters removed; a mask), magnitude vs activation;

plus the calibration KL that ``kind='auto'`` ranks kinds by (which kind ``edge prune --ratio R``
picks at each ratio). The quality mode then writes llama.cpp GGUFs (F32 through edge's exporter,
Q4_0 through llama.cpp's own quantizer) of the unpruned model and of what ``edge prune --ratio R``
gives at each ratio, and checks each F32 GGUF's logits against our torch model.

``--mode speed`` measures the llama.cpp decode tokens/s of those GGUFs (2 threads), all models
interleaved within each repetition, median of the repetitions, and the ratio pruned / unpruned.
It is a speed measurement: run it through benchmarks/quiet.sh. Both modes write
benchmarks/results/prune_smollm2.json (speed merges into what quality wrote) and prune_smollm2.md::

    nice -n 19 .venv/bin/python benchmarks/prune.py --mode quality     # ~1 h on 2 shared cores
    bash benchmarks/quiet.sh .venv/bin/python benchmarks/prune.py --mode speed   # ~3 min
    .venv/bin/python benchmarks/prune.py --mode quality --quick        # smoke run (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
    ("mlp+attn", "magnitude", "none"), ("mlp+attn", "activation", "none"),
    ("depth", "activation", "none"), ("depth", "activation", "lstsq"),
]  # fmt: skip
AUTO_KINDS = ("mlp", "mlp+attn", "depth")  # what kind='auto' compares on a dense model (edge.prune.AUTO_KINDS)
# speed: prompt tokens, generated tokens, repetitions (after one warm-up round)
SPEED_PROMPT, SPEED_GEN, SPEED_REPS = 32, 65, 9
WORK = ROOT / "out" / "prune_bench"  # the GGUFs quality writes and speed reads (not committed)
OUT = ROOT / "benchmarks/results/prune_smollm2.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("quality", "ggufs", "speed", "merge"), required=True,
                    help="ggufs: only (re)write the GGUFs of what quality measured; merge: take ggufs and decode "
                    "from --from (a run of ggufs + speed on the same pruned models) into --out")
    ap.add_argument("--from", dest="src", default=None, help="with --mode merge: the results to take GGUFs/speed from")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one ratio: checks the script runs")
    ap.add_argument("--work", default=str(WORK), help="directory for the GGUFs")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--reps", type=int, default=SPEED_REPS)
    args = ap.parse_args()
    if args.quick and args.out == str(OUT):
        args.out = str(Path(tempfile.gettempdir()) / "prune_quick.json")
    if args.mode == "quality":
        quality(args)
    if args.mode in ("quality", "ggufs"):
        ggufs(args)
    if args.mode == "speed":
        speed(args)
    if args.mode == "merge":
        merge(args)


def merge(args) -> None:
    """GGUFs and decode speed measured on a separate run of --mode ggufs/speed, into the quality
    results; refused unless that run pruned the same kinds at the same ratios as quality's auto picks."""
    res, src = json.loads(Path(args.out).read_text()), json.loads(Path(args.src).read_text())
    picks = {r: a["picks"] for r, a in res["auto"].items()}
    theirs = {r: a["picks"] for r, a in src["auto"].items()}
    if picks != theirs:
        sys.exit(f"error: {args.src} pruned {theirs}, quality picked {picks}: rerun --mode ggufs and speed")
    for g in src["ggufs"]:
        if g["pruned"]:
            (row,) = [r for r in res["rows"] if (r["kind"], r["importance"], r["recovery"], r["target"])
                      == (g["pruned"]["kind"], "activation", "none", g["pruned"]["ratio"])]
            assert row["params"] == g["params"], (row, g)
    res["ggufs"], res["decode"] = src["ggufs"], src["decode"]
    res["decode"]["merged_from"] = f"{Path(args.src).name}: --mode ggufs and speed run beside quality, same picks"
    write(res, args.out)


# ---- quality -----------------------------------------------------------------------------------
def quality(args) -> None:
    import numpy as np
    import torch

    from edge.calib import CalibConfig, dataset_hash, load_text, token_batches
    from edge.eval import compare
    from edge.model.load import load_model
    from edge.prune import PruneConfig, collect_stats, prune
    from edge.runtime.eager import TorchRunner

    torch.set_num_threads(THREADS)
    ratios, rows, calib_kw, n_eval = RATIOS, ROWS, dict(CALIB), EVAL_TOKENS
    if args.quick:
        ratios, rows, n_eval = (0.2,), [ROWS[2], ROWS[3], ROWS[5], ROWS[7]], 512
        calib_kw.update(n_samples=4, seq_len=128)

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
                  ppl=base.ref_ppl, kld=0.0, kld_p99=0.0, top1=1.0, seconds=0.0)]  # fmt: skip
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
        cands = {r["kind"]: r for r in table if r["target"] == ratio and "calib_kl" in r and r["kind"] in AUTO_KINDS}
        pick = min(cands, key=lambda k: cands[k]["calib_kl"])
        best = min((r for r in table if r["target"] == ratio), key=lambda r: r["kld"])
        auto[str(ratio)] = dict(calib_kl={k: v["calib_kl"] for k, v in cands.items()}, picks=pick,
                                best_heldout=f"{best['kind']}/{best['importance']}/{best['recovery']}")

    result = dict(
        model="smollm2-135m", params=params0, host=platform.processor() or platform.machine(), threads=THREADS,
        eval=dict(text="calib/heldout", tokens=len(toks), window=WINDOW),
        calibration=dict(**CALIB, dataset_hash=dataset_hash(ccfg)) if not args.quick else dict(quick=True),
        code=f"benchmarks/prune.py --mode quality{' --quick' if args.quick else ''}",
        stats_seconds=stats_s, rows=table, auto=auto, quality_seconds=time.time() - t_start,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )  # fmt: skip
    write(result, args.out)


def ggufs(args) -> None:
    """GGUFs of the unpruned model and of what `edge prune --ratio R` makes at each ratio quality
    measured (auto's pick, activation importance, no recovery), into the results."""
    import torch

    from edge.calib import CalibConfig, load_text, token_batches
    from edge.model.load import load_model
    from edge.prune import PruneConfig, prune

    torch.set_num_threads(THREADS)
    res = json.loads(Path(args.out).read_text())
    lm = load_model("smollm2-135m")
    cal = dict(CALIB) | ({"n_samples": 4, "seq_len": 128} if args.quick else {})
    calib = token_batches(lm.tokenizer, CalibConfig.from_spec(cal.pop("mix"), **cal))
    toks = lm.tokenizer.encode(load_text("heldout").text)[:WINDOW]
    models = {"unpruned": (lm.model, None)}
    cache: dict = {}
    for ratio, a in res["auto"].items():
        how = dict(ratio=float(ratio), kind=a["picks"], importance="activation", recovery="none")
        models[f"pruned {float(ratio):.0%}"] = (prune(lm.model, PruneConfig(**how), calib, cache=cache).model, how)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    res["ggufs"] = write_ggufs(models, work, lm.source.path, toks)
    write(res, args.out)


def write_ggufs(models: dict, work: Path, tokenizer_gguf, check_tokens) -> list[dict]:
    """F32 GGUF (edge's exporter) and Q4_0 (llama.cpp's quantizer of that F32) of each model; the F32
    file's llama.cpp logits against our torch model on ``check_tokens``."""
    import numpy as np

    from edge.export.gguf import export_gguf
    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner, convert_gguf

    out = []
    for name, (model, how) in models.items():
        stem = name.replace(" ", "-").replace("%", "")
        f32 = export_gguf(model, None, work / f"{stem}-f32.gguf", tokenizer_gguf=tokenizer_gguf)
        q4 = convert_gguf(f32, work / f"{stem}-q4_0.gguf", "Q4_0")
        runner = LlamaCppRunner(f32, n_ctx=512, n_threads=THREADS, kv_type="f32")
        diff = float(np.abs(runner.logits(list(check_tokens)) - TorchRunner(model).logits(list(check_tokens))).max())
        del runner
        for ftype, path in (("F32", f32), ("Q4_0", q4)):
            out.append(dict(model=name, gguf=ftype, file=path.name, params=model.spec.param_count(),
                            file_mb=round(path.stat().st_size / 2**20, 1), pruned=how,
                            max_abs_logit_diff_vs_torch=diff if ftype == "F32" else None))  # fmt: skip
        print(f"  {name}: {f32.name} {out[-2]['file_mb']} MB, {q4.name} {out[-1]['file_mb']} MB; "
              f"F32 logits vs torch max |diff| {diff:.1e}", flush=True)
    return out


# ---- speed -------------------------------------------------------------------------------------
def speed(args) -> None:
    """Decode tok/s of every GGUF quality wrote: one llama.cpp context each, 2 threads; in each
    repetition every file runs once (interleaved, so other load falls on all alike); median."""
    from edge.model.llama_log import load_llama

    res = json.loads(Path(args.out).read_text())
    work = Path(args.work)
    files = {(g["model"], g["gguf"]): work / g["file"] for g in res["ggufs"]}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        sys.exit(f"error: {missing[0]}: missing; run --mode quality first")
    llms = {k: load_llama(p, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=256, n_batch=256, n_ubatch=256)
            for k, p in files.items()}
    prompt = [(i * 7919) % 40000 + 100 for i in range(SPEED_PROMPT)]  # fixed ids, same for every model
    runs: dict = {k: [] for k in files}
    loads = []
    for rep in range(args.reps + 1):
        loads.append(os.getloadavg()[0])
        for k, llm in llms.items():
            llm.reset()
            llm.eval(prompt)
            t0 = time.perf_counter()
            for _ in range(SPEED_GEN - 1):  # the first token comes out of the prompt pass
                llm.eval([1234])
            dt = time.perf_counter() - t0
            if rep:  # round 0 warms caches and thread pools
                runs[k].append((SPEED_GEN - 1) / dt)
            print(f"  {k[0]:>12} {k[1]:>5}: {(SPEED_GEN - 1) / dt:.1f} tok/s{'' if rep else ' (warm-up)'}", flush=True)
        print(f"round {rep}/{args.reps}, load {os.getloadavg()[0]:.2f}", flush=True)
    base = {ft: statistics.median(runs[("unpruned", ft)]) for _, ft in files}
    rows = []
    for g in res["ggufs"]:
        k = (g["model"], g["gguf"])
        med = statistics.median(runs[k])
        pred = predicted(work / g["file"], g)
        rows.append(dict(model=g["model"], gguf=g["gguf"], params=g["params"], file_mb=g["file_mb"],
                         decode_tok_s=round(med, 2), runs=[round(x, 2) for x in runs[k]],
                         vs_unpruned=round(med / base[g["gguf"]], 3), sim_decode_tok_s=round(pred, 2)))  # fmt: skip
    res["decode"] = dict(threads=THREADS, prompt=SPEED_PROMPT, decode_steps=SPEED_GEN - 1, reps=args.reps,
                         statistic="median", interleaved=True, load_avg_1min=loads,
                         how="bash benchmarks/quiet.sh .venv/bin/python benchmarks/prune.py --mode speed",
                         date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), rows=rows)  # fmt: skip
    write(res, args.out)


def predicted(path: Path, g: dict) -> float:
    """The simulator's decode tok/s for this GGUF on the host profile (llama.cpp, 2 threads), from the
    shapes the file itself declares: the simulator sees what pruning removed."""
    from edge.model.load import load_spec
    from edge.sim import Workload, simulate

    spec = load_spec(str(path))
    assert spec.param_count() == g["params"], (spec.param_count(), g["params"])
    wl = Workload(prompt_len=SPEED_PROMPT, gen_len=SPEED_GEN)
    r = simulate(spec, {"F32": "fp32", "Q4_0": "q4_0"}[g["gguf"]], "host-x86-2core", runtime="llama.cpp", workload=wl, budgets=[])
    return r.decode_tok_s


# ---- output ------------------------------------------------------------------------------------
def write(res: dict, out: str) -> None:
    Path(out).write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    Path(out).with_suffix(".md").write_text(md + "\n")
    print()
    print(md)
    print(f"\nwrote {out} and {Path(out).with_suffix('.md').name}")


def fmt_row(r: dict) -> str:
    extra = f" calibKL {r['calib_kl']:.4f}" if "calib_kl" in r else ""
    return (f"{r['kind']:>8} {r['importance']:>10} {r['recovery']:>5} {r['target']:.0%}: {r['params']:,} "
            f"(-{r['removed']:.1%}) ppl {r['ppl']:.2f} KLD {r['kld']:.4f} top1 {r['top1']:.1%} {r['seconds']:.0f}s{extra}")  # fmt: skip


def markdown(res: dict) -> str:
    cal = res["calibration"]
    lines = [
        f"smollm2-135m ({res['params']:,} params); held-out {res['eval']['tokens']} tokens of {res['eval']['text']}, "
        f"window {res['eval']['window']}; calibration {cal.get('mix', 'quick')} {cal.get('n_samples', '')}x"
        f"{cal.get('seq_len', '')} seed {cal.get('seed', '')}; {res.get('date', '')}. KLD: mean KL(unpruned || pruned) "
        "per token (nats); calib KL: what kind='auto' ranks by.",
        "",
        "| kind | importance | recovery | target | params | removed | ppl | KLD | KLD p99 | top-1 | calib KL | prune s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ck = f"{r['calib_kl']:.4f}" if "calib_kl" in r else ""
        lines.append(
            f"| {r['kind']} | {r['importance']} | {r['recovery']} | {r['target']:.0%} | {r['params'] / 1e6:.1f}M "
            f"| {r['removed']:.1%} | {r['ppl']:.2f} | {r['kld']:.4f} | {r.get('kld_p99', 0):.3f} | {r['top1']:.1%} "
            f"| {ck} | {r['seconds']:.0f} |"
        )
    lines += ["", "kind='auto' (activation importance, no recovery; lowest calibration KL) per ratio:"]
    for ratio, a in res["auto"].items():
        kls = ", ".join(f"{k} {v:.4f}" for k, v in a["calib_kl"].items())
        lines.append(f"- {float(ratio):.0%}: {kls} -> picks {a['picks']}; lowest held-out KLD of all rows: "
                     f"{a['best_heldout']}")  # fmt: skip
    dec = res.get("decode")
    lines += [""]
    if dec:
        lines += [f"llama.cpp decode, {dec['threads']} threads, {dec['decode_steps']} steps after a {dec['prompt']}-token "
                  f"prompt, median of {dec['reps']} interleaved repetitions ({dec['date']}, through benchmarks/quiet.sh; "
                  f"1-min load {min(dec['load_avg_1min']):.2f}-{max(dec['load_avg_1min']):.2f}):", "",
                  "| model | pruned as | GGUF | params | file MB | decode tok/s | vs unpruned | simulated tok/s "
                  "(host-x86-2core) | max logit diff vs torch (F32) |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        by = {(g["model"], g["gguf"]): g for g in res["ggufs"]}
        for d in dec["rows"]:
            g = by[(d["model"], d["gguf"])]
            how = g["pruned"]
            how = f"{how['kind']} ({how['importance']})" if how else "-"
            diff = g.get("max_abs_logit_diff_vs_torch")
            lines.append(f"| {d['model']} | {how} | {d['gguf']} | {d['params'] / 1e6:.1f}M | {d['file_mb']} | "
                         f"{d['decode_tok_s']:.1f} | {d['vs_unpruned']:.2f}x | {d.get('sim_decode_tok_s', 0):.1f} | "
                         f"{'' if diff is None else f'{diff:.1e}'} |")  # fmt: skip
    elif res.get("ggufs"):
        lines += ["| model | GGUF | params | file MB | max logit diff vs torch (F32) |", "|---|---|---|---|---|"]
        for g in res["ggufs"]:
            diff = g.get("max_abs_logit_diff_vs_torch")
            lines.append(f"| {g['model']} | {g['gguf']} | {g['params'] / 1e6:.1f}M | {g['file_mb']} | "
                         f"{'' if diff is None else f'{diff:.1e}'} |")  # fmt: skip
        lines += ["", "decode speed: not measured yet (--mode speed)"]
    else:
        lines += ["GGUFs: not written yet (--mode ggufs)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
