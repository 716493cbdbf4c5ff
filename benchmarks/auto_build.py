"""Budget-driven build (issue 7): what the search picks on three targets, against fixed recipes.

For the built-in model on a phone (snapdragon-8gen2), an NPU camera SoC (rv1126b) and an automotive
SoC (horizon-j5): the auto recipe's measured quality proxy (KL divergence of the pruned/quantized
torch model to fp32 on held-out text) and simulated performance, next to the fixed recipes Q8_0,
Q4_0 and W8A8 (unpruned, the target's default runtime for each). Then the 8B scenario (config
only: cost-only search) and the search's own cost. With --build, the phone's finalist is built as
a real package and validated in its runtime.

    .venv/bin/python benchmarks/auto_build.py [--build]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from edge.search import auto_build, search
from edge.targets import load_target

RESULTS = Path(__file__).parent / "results"
CASES = [  # target, budgets (the profile's defaults plus, for the phone, an app memory cap)
    ("snapdragon-8gen2", ["decode_tok_s>=15", "peak_memory_bytes<=250MB"]),
    ("rv1126b", ["latency_s<=0.3"]),
    ("horizon-j5", ["cpu_load<=0.45"]),
]
FIXED = ("q8_0", "q4_0", "w8a8")


def row(c, label):
    return {"recipe": label, "candidate": c.key, "kld": c.kld, "top1": c.top1,
            "decode_tok_s": c.figure("decode_tok_s"), "ttft_ms": c.figure("ttft_s") * 1e3,
            "latency_ms": c.figure("latency_s") * 1e3, "peak_mb": c.figure("peak_memory_bytes") / 1e6,
            "cpu_load": c.figure("cpu_load"), "meets": c.meets_budgets,
            "why_not": "" if c.meets_budgets else c.rejection()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", action="store_true", help="build and validate the phone's finalist for real")
    args = ap.parse_args()
    out: dict = {"benchmark": "auto_build", "date": time.strftime("%Y-%m-%d"), "targets": [], "scenario_8b": []}
    print("| target | recipe | candidate | KLD | top-1 | decode tok/s | TTFT ms | latency ms | peak MB | CPU | budgets |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for target, budgets in CASES:
        t0 = time.perf_counter()
        res = search("smollm2-135m", target, budgets)
        wall = time.perf_counter() - t0
        tp = load_target(target)
        rows = []
        if res.chosen:
            rows.append(row(res.chosen, "auto"))
        for q in FIXED:
            rt = tp.defaults.runtime.get(q) or tp.defaults.runtime.get("*")
            match = [c for c in res.candidates if c.quant == q and not c.prune_ratio and c.kv_cache == "fp16"
                     and c.runtime == rt and c.sim is not None]
            if match:
                rows.append(row(match[0], q))
        # "on or above the frontier the fixed recipes span": no fixed recipe that meets the budgets is
        # more accurate than the auto recipe
        fixed_ok = [r for r in rows[1:] if r["meets"] and r["kld"] is not None]
        on_frontier = bool(res.chosen) and all(res.chosen.kld <= r["kld"] + 1e-12 for r in fixed_ok)
        for r in rows:
            kld = f"{r['kld']:.4f}" if r["kld"] is not None else "-"
            top1 = f"{r['top1']:.3f}" if r["top1"] is not None else "-"
            print(f"| {target} | {r['recipe']} | {r['candidate']} | {kld} | {top1} | {r['decode_tok_s']:.1f} | "
                  f"{r['ttft_ms']:.0f} | {r['latency_ms']:.0f} | {r['peak_mb']:.0f} | {r['cpu_load']:.0%} | "
                  f"{'meets' if r['meets'] else 'fails: ' + r['why_not']} |")
        out["targets"].append({"target": target, "budgets": budgets, "rows": rows, "stats": res.stats,
                               "search_wall_s": wall, "auto_on_or_above_fixed_frontier": on_frontier,
                               "infeasible": "" if res.chosen else res.infeasibility()})
    print()
    print("| target | search wall s | candidates simulated | feasible | quality evaluations (cached) | auto on/above fixed frontier |")
    print("|---|---|---|---|---|---|")
    for t in out["targets"]:
        s = t["stats"]
        print(f"| {t['target']} | {t['search_wall_s']:.1f} | {s['candidates_simulated']} | {s['candidates_feasible']} | "
              f"{s['quality_evaluations']} ({s['quality_cached']}) | {t['auto_on_or_above_fixed_frontier']} |")

    print("\n8B scenario (config only, cost-only search), snapdragon-8gen2, decode_tok_s>=15:")
    for name in ("dense-8b", "moe-8x-top2"):
        t0 = time.perf_counter()
        res = search(f"examples/deepseek-8b/{name}/config.json", "snapdragon-8gen2", ["decode_tok_s>=15"])
        entry = {"model": name, "wall_s": time.perf_counter() - t0, "stats": res.stats,
                 "chosen": res.chosen.to_dict() if res.chosen else None,
                 "infeasible": "" if res.chosen else res.infeasibility()}
        out["scenario_8b"].append(entry)
        if res.chosen:
            c = res.chosen
            print(f"- {name}: {c.key}: {c.spec.param_count() / 1e9:.2f} B params, decode {c.figure('decode_tok_s'):.1f} "
                  f"tok/s, peak {c.figure('peak_memory_bytes') / 1e9:.2f} GB ({res.stats['candidates_simulated']} "
                  f"simulated, {entry['wall_s']:.1f} s)")
        else:
            print(f"- {name}: none: {entry['infeasible']}")

    if args.build:
        tmp = Path(tempfile.mkdtemp())
        t0 = time.perf_counter()
        target, budgets = CASES[0]
        summary = auto_build("smollm2-135m", target, tmp / "auto", budgets, progress=print)
        out["build"] = {"target": target, "wall_s": time.perf_counter() - t0,
                        "built": summary["built"], "chosen": summary["chosen"]}
        print(f"\nbuilt {target}: {json.dumps(summary['chosen'], default=float)} in {out['build']['wall_s']:.0f} s")
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "auto_build.json").write_text(json.dumps(out, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
