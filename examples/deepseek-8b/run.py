"""The seed scenario: can an "8B DeepSeek" run on a Snapdragon 8 Gen 2, an RV1126 and a Horizon J5?

Runs the simulator (no torch, no weights: config.json shapes only) for the three claims of the
article this project grew from and prints the numbers the README's verdicts quote::

    python examples/deepseek-8b/run.py            # tables
    python examples/deepseek-8b/run.py --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from edge.model.spec import ModelSpec  # noqa: E402
from edge.sim import simulate  # noqa: E402
from edge.targets import load_target  # noqa: E402

DENSE = ModelSpec.from_config_file(HERE / "dense-8b/config.json").with_(name="dense-8b")
MOE = ModelSpec.from_config_file(HERE / "moe-8x-top2/config.json").with_(name="moe-8x-top2")
SMOL = ModelSpec(arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
                 tie_embeddings=True, rope_theta=1e5, name="smollm2-135m")
# small Llama-family shapes for "what does fit the RV1126" (public config.json values)
SMALL = [
    SMOL,
    ModelSpec(arch="llama", vocab_size=49152, dim=960, n_layers=32, n_heads=15, n_kv_heads=5, ffn_dim=2560,
              tie_embeddings=True, name="smollm2-360m"),
    ModelSpec(arch="qwen2", vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_dim=4864,
              tie_embeddings=True, qkv_bias=True, name="qwen2.5-0.5b"),
    ModelSpec(arch="llama", vocab_size=128256, dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
              tie_embeddings=True, name="llama-3.2-1b"),
]


def row(spec, recipe, target, runtime=None, workload=None, budgets=None) -> dict:
    r = simulate(spec, recipe, target, runtime=runtime, workload=workload, budgets=budgets)
    return {
        "model": spec.name, "params_b": spec.param_count() / 1e9, "active_b": spec.active_param_count() / 1e9,
        "target": r.target, "recipe": r.recipe, "runtime": r.runtime, "weights_gb": r.memory["weights"] / 1e9,
        "peak_gb": r.peak_memory_bytes / 1e9, "available_gb": r.memory["available"] / 1e9, "fits": r.fits,
        "prefill_tok_s": r.prefill_tok_s, "ttft_s": r.ttft_s, "decode_tok_s": r.decode_tok_s,
        "latency_s": r.latency_s, "cpu_load": r.cpu_load, "decode_binding": r.decode.binding,
        "graph_splits": r.graph_splits, "largest_params_b": r.largest_params / 1e9,
        "budgets": [{"name": b.name, "value": b.value, "ok": b.ok, "binding": b.binding} for b in r.budgets],
    }


def with_memory(target: str, total_gb: float, available_gb: float):
    """A what-if variant of a profile with another memory size (e.g. the 12 GB Galaxy S23 Ultra)."""
    t = load_target(target)
    mem = dataclasses.replace(t.memory, total=total_gb * 1e9, available=available_gb * 1e9)
    return dataclasses.replace(t, name=f"{t.name} ({total_gb:g} GB)", memory=mem)


def claims() -> dict:
    out: dict = {}
    # 1. "15 tokens/s on a Snapdragon 8 Gen 2 phone at W4A16 (4.2 GB)"
    s23u = with_memory("snapdragon-8gen2", 12, 6)
    out["snapdragon-8gen2"] = [
        row(m, rec, t, runtime=rt)
        for m in (DENSE, MOE)
        for t in ("snapdragon-8gen2", s23u)
        for rec, rt in (("w4a16", "qnn-htp"), ("q4_0", "llama.cpp"))
    ]
    # 2. "local voice interaction under 300 ms on an RV1126" (prompt 32, answer 16 tokens)
    rv = [row(m, "w8a8", "rv1126") for m in (DENSE, MOE, *SMALL)]
    rv += [row(m, "q4_0", "rv1126", runtime="llama.cpp") for m in (DENSE, SMOL)]
    # the deepest SmolLM2-135M-shaped model (layers pruned) that meets the 300 ms turn
    for layers in range(30, 0, -1):
        r = row(SMOL.with_(n_layers=layers, name=f"smollm2-135m-{layers}L"), "w8a8", "rv1126")
        if r["budgets"][0]["ok"]:
            rv.append(r)
            break
    out["rv1126"] = rv
    # 3. "CPU load under 45% on a J5"
    j5 = [row(m, "w8a8", "horizon-j5") for m in (DENSE, MOE, SMALL[3], SMOL)]
    j5 += [row(m, "q4_0", "horizon-j5", runtime="llama.cpp", budgets=["cpu_load<=0.45"]) for m in (DENSE, MOE)]
    out["horizon-j5"] = j5
    return out


def print_tables(res: dict) -> None:
    for target, rows in res.items():
        print(f"\n== {target}")
        print(f"{'model':22} {'target':24} {'recipe':6} {'runtime':12} {'weights':>8} {'peak':>7} {'fits':>5} "
              f"{'TTFT':>8} {'decode':>8} {'latency':>8} {'cpu':>5}  budgets")
        for r in rows:
            b = "; ".join(f"{x['name']} {'ok' if x['ok'] else 'FAIL'} ({x['value']:.3g}, {x['binding']})"
                          for x in r["budgets"])
            print(f"{r['model']:22} {r['target']:24} {r['recipe']:6} {r['runtime']:12} {r['weights_gb']:7.2f}G "
                  f"{r['peak_gb']:6.2f}G {str(r['fits']):>5} {r['ttft_s']:7.3f}s {r['decode_tok_s']:7.1f}/s "
                  f"{r['latency_s']:7.3f}s {r['cpu_load']:5.0%}  {b}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    res = claims()
    print(f"dense-8b: {DENSE.param_count() / 1e9:.2f} B params; moe-8x-top2: {MOE.param_count() / 1e9:.2f} B "
          f"total, {MOE.active_param_count() / 1e9:.2f} B active per token")
    print_tables(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
