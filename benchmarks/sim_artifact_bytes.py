"""The seed packages' simulated figures, costed by preset (what manifests said) and as written.

A package's verdict used to cost the preset's nominal storage types; it now costs the bytes per tensor
class the writer records (``edge.export.weights``, ``edge.sim.recipes.as_written``). For the built-in
model (SmolLM2-135M) and the seed targets/recipes, this prints both, with the decode speed and fit
each gives, and writes benchmarks/results/sim_artifact_bytes.json::

    python benchmarks/sim_artifact_bytes.py               # writers run on a 2-layer slice (minutes)
    python benchmarks/sim_artifact_bytes.py --full q4_0 8da4w   # also the full model for these seeds

The writers' records come from ``edge.build.build_package`` on a slice of SmolLM2: its first
``--layers`` decoder layers at full width, with the full embedding and head. Every seed recipe stores
each tensor class in one format whatever the layer (no per-layer mixes), so the slice's bits per
weight per class are the full model's and the record is costed on the full 30-layer spec. ``--full``
builds the whole model for the seeds named and reports its record next to the slice's, which checks
that step (a full w4a16 build takes ~30 min on a 2-core host). The W8A8 seeds' CPU share (the float
groups an int8 NPU leaves to the CPU) is the full seed packages' (benchmarks/results/w8a8_packages.json),
in both columns; the slice's own would describe 2 layers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.build import BuildConfig, build_package, cpu_linear_fraction, simulated  # noqa: E402
from edge.targets import load_target  # noqa: E402

MODEL = "smollm2-135m"
# (target, recipe): the seed packages, each on the target's default runtime for the recipe
SEEDS = [("snapdragon-8gen2", "q4_0"), ("snapdragon-8gen2", "8da4w"), ("snapdragon-8gen2", "w4a16"),
         ("horizon-j5", "w8a8"), ("rv1126", "w8a8")]
CFG = BuildConfig(max_seq=512, calib_samples=8, calib_seq=128, eval_window=32, eval_windows=1)


def sliced(lm, n_layers: int):
    """``lm`` with its first ``n_layers`` decoder layers (the same tensors, full width)."""
    import copy

    from edge.model.llama import Transformer

    spec = lm.spec.with_(n_layers=n_layers)
    m = Transformer(spec).eval()
    sd = {k: v for k, v in lm.model.state_dict().items()
          if not k.startswith("layers.") or int(k.split(".")[1]) < n_layers}
    m.load_state_dict(sd)
    out = copy.copy(lm)
    out.model, out.spec = m, spec
    return out


def seed_fraction(target: str) -> float:
    """The W8A8 seed package's CPU share of the linear MACs (0 for the others)."""
    pk = json.loads((ROOT / "benchmarks/results/w8a8_packages.json").read_text())["packages"]
    return cpu_linear_fraction({"export": {"precision": pk[target]["precision"]}}) if target in pk else 0.0


def figures(sim: dict) -> dict:
    keep = ("weight_bytes", "decode_tok_s", "prefill_tok_s", "peak_memory_bytes", "fits", "ok")
    return {k: sim[k] for k in keep} | {"budgets": {b["name"]: b["ok"] for b in sim["budgets"]}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--full", nargs="*", default=[], help="recipes also built on the full model")
    args = ap.parse_args()

    from edge.model.load import load_model
    from edge.quant.configs import load_recipe as load_quant_recipe

    lm = load_model(MODEL)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for target, recipe in SEEDS:
            tp = load_target(target)
            rt_name = next(k for k, v in tp.runtimes.items() if v is tp.runtime_for(recipe, None))
            frac = seed_fraction(target)
            kv = load_quant_recipe(recipe).kv_cache  # what build_package hands the simulator
            before = simulated(lm.spec, tp, recipe, rt_name, kv, frac)
            row = {"target": target, "recipe": recipe, "runtime": rt_name,
                   "cpu_linear_fraction": frac, "by_preset": figures(before)}
            for what, model in [(f"slice_{args.layers}_layers", sliced(lm, args.layers))] + (
                    [("full", lm)] if recipe in args.full else []):
                t0 = time.perf_counter()
                pkg = build_package(model, target, recipe, Path(tmp) / f"{target}-{recipe}-{what}", cfg=CFG,
                                    progress=lambda s: None)
                art = json.loads((pkg / "manifest.json").read_text())["artifacts"][0]
                after = simulated(lm.spec, tp, recipe, rt_name, kv, frac, art["weights"])
                row[what] = {"seconds": round(time.perf_counter() - t0, 1), "files_bytes": sum(
                    (pkg / f).stat().st_size for f in art["files"]), "weights": art["weights"],
                    "as_written": figures(after)}
            rows.append(row)
            a = row[f"slice_{args.layers}_layers"]["as_written"]
            print(f"{target:17} {recipe:6} weights {before['weight_bytes'] / 1e6:7.1f} -> {a['weight_bytes'] / 1e6:7.1f} MB"
                  f"  decode {before['decode_tok_s']:8.1f} -> {a['decode_tok_s']:8.1f} tok/s  fits {before['fits']}"
                  f" -> {a['fits']}  ok {before['ok']} -> {a['ok']}"
                  + (f"  (full build: {row['full']['as_written']['weight_bytes'] / 1e6:.1f} MB)" if "full" in row else ""),
                  flush=True)
    out = ROOT / "benchmarks/results/sim_artifact_bytes.json"
    out.write_text(json.dumps({"model": MODEL, "what": __doc__.split("\n\n")[0], "layers": args.layers,
                               "rows": rows}, indent=1) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
