"""The models people deploy today on the seed's three targets: `edge simulate` from config.json alone.

Reads the published config.json of each model in this folder (no weights, no torch) and runs the
simulator on the Snapdragon 8 Gen 2, the RV1126B and the Horizon J5 with each target's default
recipe and workload, printing one table (the README's) and optionally writing it as JSON::

    python examples/models/simulate.py
    python examples/models/simulate.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from edge.errors import EdgeError  # noqa: E402
from edge.model.spec import ModelSpec  # noqa: E402
from edge.sim import Workload, simulate  # noqa: E402
from edge.targets import load_target  # noqa: E402

MODELS = ("qwen3-0.6b", "gemma-3-1b", "smollm3-3b", "phi-4-mini-instruct", "qwen3-8b", "qwen3-30b-a3b")
TARGETS = ("snapdragon-8gen2", "rv1126b", "horizon-j5")


def run(model: str, target: str) -> dict:
    spec = ModelSpec.from_config_file(HERE / model / "config.json").with_(name=model)
    t = load_target(target)
    recipe = t.defaults.recipe or "q4_0"
    out = {"model": model, "target": target, "recipe": recipe, "params_b": spec.param_count() / 1e9,
           "active_b": spec.active_param_count() / 1e9}
    try:
        r = simulate(spec, recipe, t, workload=Workload(**t.defaults.workload))
    except EdgeError as e:  # a recipe the target cannot run for this model: say why, in the table
        return out | {"error": str(e)}
    return out | {"runtime": r.runtime, "weights_gb": r.memory["weights"] / 1e9, "kv_gb": r.memory["kv_cache"] / 1e9,
                  "peak_gb": r.peak_memory_bytes / 1e9, "available_gb": r.memory["available"] / 1e9,
                  "fits": r.fits, "ttft_s": r.ttft_s, "decode_tok_s": r.decode_tok_s,
                  "binding": r.decode.binding, "context": r.workload.context}


def table(rows: list[dict]) -> str:
    lines = ["| model | params (active) B | target | recipe / runtime | weights GB | KV GB | peak / available GB "
             "| fits | TTFT s | decode tok/s | binds |", "|" + "---|" * 11]
    for r in rows:
        params = f"{r['params_b']:.2f}" + (f" ({r['active_b']:.2f})" if r["active_b"] < 0.99 * r["params_b"] else "")
        if "error" in r:
            lines.append(f"| {r['model']} | {params} | {r['target']} | {r['recipe']} | {r['error']} |||||||")
            continue
        lines.append(
            f"| {r['model']} | {params} | {r['target']} | {r['recipe']} / {r['runtime']} | {r['weights_gb']:.2f} "
            f"| {r['kv_gb']:.3f} | {r['peak_gb']:.2f} / {r['available_gb']:.2f} | {'yes' if r['fits'] else 'no'} "
            f"| {r['ttft_s']:.2f} | {r['decode_tok_s']:.1f} | {r['binding']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    rows = [run(m, t) for m in MODELS for t in TARGETS]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
