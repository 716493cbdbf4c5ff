"""Foundation benchmark: the built-in model's load time, and its perplexity on held-out text with
our torch model vs llama.cpp on an F32 GGUF of the same weights (must agree within 0.5%).

    .venv/bin/python benchmarks/foundation.py [--tokens 8192] [--window 256]

Prints a table and writes benchmarks/results/foundation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from edge.calib import load_text
from edge.eval import perplexity
from edge.model.load import builtin_path, load_model
from edge.runtime.eager import TorchRunner
from edge.runtime.llamacpp import LlamaCppRunner, convert_gguf

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    lm = load_model("smollm2-135m")
    load_s = time.perf_counter() - t0
    toks = lm.tokenizer.encode(load_text("heldout").text)[: args.tokens]

    rows = []
    t0 = time.perf_counter()
    res = perplexity(TorchRunner(lm.model).logits, toks, window=args.window)
    dt = time.perf_counter() - t0
    rows.append({"engine": "edge torch (fp32)", "ppl": res.ppl, "tokens": res.tokens, "seconds": dt,
                 "tok_s": len(toks) / dt, "load_s": load_s})

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        f32 = convert_gguf(builtin_path("smollm2-135m"), Path(tmp) / "f32.gguf", "F32")
        runner = LlamaCppRunner(f32, n_ctx=args.window, n_threads=args.threads, kv_type="f32")
        load_cpp = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = perplexity(runner.logits, toks, window=args.window)
        dt = time.perf_counter() - t0
        rows.append({"engine": "llama.cpp F32 GGUF", "ppl": ref.ppl, "tokens": ref.tokens, "seconds": dt,
                     "tok_s": len(toks) / dt, "load_s": load_cpp})

    diff = rows[0]["ppl"] / rows[1]["ppl"] - 1
    print(f"built-in smollm2-135m, held-out text (calib/heldout), {len(toks)} tokens, windows of {args.window}, "
          f"{args.threads} threads")
    print("| engine | load s | ppl | tokens scored | eval s | tok/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['load_s']:.1f} | {r['ppl']:.4f} | {r['tokens']} | {r['seconds']:.1f} | "
              f"{r['tok_s']:.0f} |")
    print(f"ppl difference torch vs llama.cpp: {diff:+.4%} (limit 0.5%)")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "foundation", "date": time.strftime("%Y-%m-%d"), "host": platform.node(),
           "threads": args.threads, "window": args.window, "tokens": len(toks), "rows": rows,
           "ppl_rel_diff": diff, "torch_vs_llamacpp_eval_speed_ratio": rows[0]["tok_s"] / rows[1]["tok_s"]}
    (RESULTS / "foundation.json").write_text(json.dumps(out, indent=2) + "\n")
    if abs(diff) > 0.005:
        raise SystemExit(f"perplexity disagrees by {diff:+.3%} (> 0.5%)")


if __name__ == "__main__":
    main()
