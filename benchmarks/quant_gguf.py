"""Calibrated quantization vs llama.cpp's own quantizer, scored by llama.cpp (issue 4).

One run, one table. Reference: an F32 GGUF of the built-in model's weights. Every file is
scored by llama-cpp-python (f32 KV cache, 2 threads) on held-out text that is never calibrated
on: perplexity, mean KL divergence to the reference, top-1 agreement. Each of our quantizations
runs in its own process, so its time and peak RSS are its own.

    .venv/bin/python benchmarks/quant_gguf.py                 # ~30 CPU-minutes: 1-2 h on a busy 2-core host
    .venv/bin/python benchmarks/quant_gguf.py --score-only    # score what a cut-short run left in --work
    .venv/bin/python benchmarks/quant_gguf.py --quick         # fewer calibration samples

Writes benchmarks/results/quant_gguf.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "smollm2-135m"
CALIB = "general:1"  # narrative prose, as the held-out text (docs/quantization.md, third round)

# variant -> (recipe preset, method); "mixed" is built from the sensitivity analysis
# (Q8_0 by round-to-nearest: it is already within ~0.005 KLD and GPTQ would double the run on a
# shared 2-core host; the preset's default is GPTQ.)
# (a third element: recipe overrides). The mixed recipe takes the q4_0 preset's GPTQ settings.
OURS = {
    "ours RTN Q4_0": ("q4_0", "rtn"),
    "ours GPTQ+asym Q4_0": ("q4_0", "gptq", {"gptq": {"asym": True}}),
    "ours AWQ Q4_0": ("q4_0", "awq", {"awq": {"grid": 5}}),  # alpha step 0.2: AWQ was the slowest row
    "ours RTN Q8_0": ("q8_0", "rtn"),
    "ours mixed (Q4_0 size)": ("mixed", "gptq"),
    "ours GPTQ+asym Q4_0, half the layers": ("q4_0", "gptq", {"gptq": {"asym": True}}),
}
LLAMACPP = {"llama.cpp Q8_0": "Q8_0", "llama.cpp Q4_0": "Q4_0", "llama.cpp Q4_K_M": "Q4_K_M"}


def memo_logits(fn):
    """``fn(tokens) -> logits`` computed once per token window (the reference is scored against every row)."""
    cache: dict = {}

    def logits(t):
        key = tuple(t)
        if key not in cache:
            cache[key] = fn(t)
        return cache[key]

    return logits


def peak_rss_mb() -> float:
    """Peak RSS since the last reset_peak_rss() (Linux VmHWM), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the quantize call's own peak is measured
    (the GGUF loader's peak, ~3.8 GB, would otherwise hide it)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def worker(args) -> None:
    """Quantize one variant and write its GGUF; print a JSON line with time and peak RSS."""
    import torch

    from edge.calib import CalibConfig, dataset_hash, token_batches
    from edge.export.gguf import export_gguf
    from edge.model.load import builtin_path, load_model
    from edge.quant.configs import load_recipe, recipe_from_dict
    from edge.quant.quantize import quantize

    torch.set_num_threads(2)
    lm = load_model(args.f32)
    rss_loaded = peak_rss_mb()
    preset, method, *over = OURS[args.worker]
    if args.worker.endswith("half the layers"):
        spec = lm.spec.with_(n_layers=lm.spec.n_layers // 2)
        lm.model.layers = lm.model.layers[: spec.n_layers]
        lm.model.spec = spec
    ccfg = CalibConfig.from_spec(CALIB, n_samples=args.n_samples, seq_len=args.seq_len, seed=0)
    calib = token_batches(lm.tokenizer, ccfg)
    info: dict = {}
    if preset == "mixed":
        doc = json.loads(Path(args.mixed_recipe).read_text())["recipe"]
        doc.pop("gptq", None)  # the preset's GPTQ settings as of now (what --recipe q4_0 uses)
        recipe = recipe_from_dict(doc, "mixed")
    elif over:
        recipe = recipe_from_dict({"base": preset, "method": method, **over[0]}, f"{preset}_{method}")
    else:
        recipe = load_recipe(preset, method=method)
    info["recipe"] = recipe.to_dict()
    reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    q = quantize(lm.model, recipe, calib)
    info["quant_s"] = time.perf_counter() - t0
    info["quant_cpu_s"] = time.process_time() - c0  # all threads; less sensitive to the host's load
    info["peak_rss_mb"] = peak_rss_mb()
    info["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # load included
    info["rss_after_load_mb"] = rss_loaded
    info["n_layers"] = lm.model.spec.n_layers
    info["rescale"] = q.info.get("rescale", [])[:3]
    if not args.worker.endswith("half the layers"):
        export_gguf(lm.model, q, args.out, tokenizer_gguf=builtin_path(MODEL),
                    provenance={"calibration": dataset_hash(ccfg), "calib_spec": ccfg.to_spec(),
                                "source": MODEL, "benchmark": "benchmarks/quant_gguf.py"})
    args.out.with_suffix(".result.json").write_text(json.dumps(info))  # for --score-only
    print("RESULT " + json.dumps(info), flush=True)


def run_worker(name: str, out: Path, args, extra=()) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--out", str(out), "--f32", str(args.f32),
           "--n-samples", str(args.n_samples), "--seq-len", str(args.seq_len), *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{name} failed:\n{res.stderr[-3000:]}")
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
    info = json.loads(line[7:])
    info["process_s"] = time.perf_counter() - t0
    return info


def tensor_bytes(path: Path) -> tuple[int, int]:
    import gguf

    r = gguf.GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in r.tensors), sum(int(t.n_elements) for t in r.tensors)


def sensitivity_recipe(args, budget_file_bytes: int, overhead_bytes: int) -> dict:
    """Sensitivity of each layer and the output head, then the mixed recipe that fits the budget."""
    import torch

    from edge.calib import CalibConfig, token_batches
    from edge.model.load import load_model
    from edge.quant.configs import load_recipe
    from edge.quant.sensitivity import assign_mixed, sensitivity

    torch.set_num_threads(2)
    lm = load_model(args.f32)
    toks = token_batches(lm.tokenizer, CalibConfig.from_spec(CALIB, n_samples=2, seq_len=256, seed=1))
    t0, c0 = time.perf_counter(), time.process_time()
    sens = sensitivity(lm.model, toks, formats=("q4_0", "q5_0", "q8_0"), layer_formats=("q4_0", "q5_0", "q8_0"),
                       kl_stride=2)
    norms = sum(p.numel() * 4 for n, p in lm.model.named_parameters() if n.endswith("norm.weight"))
    recipe, est = assign_mixed(sens, load_recipe("q4_0"), budget_bytes=budget_file_bytes - overhead_bytes,
                               fixed_bytes=norms, name="mixed_q4_0_size")
    return {"recipe": recipe.to_dict(), "estimate": est, "sensitivity": sens.to_dict(),
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--f32", type=Path, default=None)
    ap.add_argument("--mixed-recipe", default=None)
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edge_quant_bench"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--score-only", action="store_true",
                    help="score the GGUFs and worker results already in --work (a run cut short), no quantization")
    ap.add_argument("--skip-w8a8", action="store_true",
                    help="keep the W8A8 line of the existing JSON (marked as carried over) instead of re-running it")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/quant_gguf.json")
    args = ap.parse_args()
    if args.worker == "sensitivity":
        res = sensitivity_recipe(args, *json.loads(args.mixed_recipe))
        return args.out.write_text(json.dumps(res))
    if args.worker:
        return worker(args)
    if args.quick:
        args.n_samples = 8

    from edge.calib import load_text
    from edge.eval import compare
    from edge.model.load import builtin_path, load_model
    from edge.runtime.llamacpp import LlamaCppRunner, convert_gguf

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    args.f32 = convert_gguf(builtin_path(MODEL), work / "f32.gguf", "F32")
    lm = load_model(args.f32)
    toks = lm.tokenizer.encode(load_text("heldout").text)[: args.tokens]
    del lm
    ref_logits = memo_logits(LlamaCppRunner(args.f32, n_ctx=args.window, n_threads=2, kv_type="f32").logits)

    rows: list[dict] = []

    def score(name: str, tool: str, path: Path, quant_s: float, extra: dict | None = None) -> None:
        run = LlamaCppRunner(path, n_ctx=args.window, n_threads=2, kv_type="f32")
        c = compare(ref_logits, run.logits, toks, window=args.window)
        tb, n = tensor_bytes(path)
        row = {"variant": name, "tool": tool, "file": path.name, "size_mb": path.stat().st_size / 1e6,
               "bpw": 8 * tb / n, "ppl": c.ppl, "ref_ppl": c.ref_ppl, "ppl_change": c.ppl_change,
               "kld": c.kld_mean, "kld_p99": c.kld_p99, "top1": c.top1_agreement, "quant_s": quant_s,
               **(extra or {})}
        rows.append(row)
        print(f"{name:<34} {row['size_mb']:7.2f} MB {row['bpw']:5.2f} bpw  ppl {c.ppl:7.3f} ({c.ppl_change:+.1%})  "
              f"KLD {c.kld_mean:.4f}  top1 {c.top1_agreement:.3f}  {quant_s:6.1f} s", flush=True)

    score("F32 reference", "llama.cpp", args.f32, 0.0)
    for name, ftype in LLAMACPP.items():
        p = work / f"llamacpp_{ftype}.gguf"
        t0 = time.perf_counter()
        convert_gguf(args.f32, p, ftype)
        score(name, "llama.cpp", p, time.perf_counter() - t0)

    # Our quantizations run as subprocesses, two at a time (a shared 2-core host): the sensitivity
    # analysis then the mixed recipe on one side, the fixed recipes on the other.
    ll_q4 = (work / "llamacpp_Q4_0.gguf").stat().st_size
    results: dict[str, dict] = {}

    def fixed_chain():
        for k, (name, (preset, method, *_)) in enumerate(OURS.items()):
            if preset == "mixed" or name.endswith("half the layers"):
                continue
            p = work / f"ours_{k}_{preset}_{method.replace('+', '_')}.gguf"
            results[name] = {"path": p, **run_worker(name, p, args)}

    def mixed_chain():
        # budget = llama.cpp Q4_0's file size minus our file's non-weight bytes (metadata, measured
        # on a file written without calibration: an RTN Q4_0 of the same model, + slack for the recipe)
        p = work / "ours_q4_0_rtn_probe.gguf"
        run_worker("ours RTN Q4_0", p, args)
        tb, _ = tensor_bytes(p)
        overhead = p.stat().st_size - tb + 4096
        sens_path = work / "mixed_recipe.json"
        cmd = [sys.executable, __file__, "--worker", "sensitivity", "--out", str(sens_path), "--f32", str(args.f32),
               "--mixed-recipe", json.dumps([ll_q4, overhead])]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"sensitivity failed:\n{res.stderr[-3000:]}")
        mixed = json.loads(sens_path.read_text())
        name = "ours mixed (Q4_0 size)"
        p = work / "ours_mixed.gguf"
        results[name] = {"path": p, **run_worker(name, p, args, ["--mixed-recipe", str(sens_path)])}
        results["_mixed"] = mixed
        name = "ours GPTQ+asym Q4_0, half the layers"
        results[name] = {"path": None, **run_worker(name, work / "unused.gguf", args)}

    import threading

    if args.score_only:
        for k, (name, (preset, method, *_)) in enumerate(OURS.items()):
            p = {"ours mixed (Q4_0 size)": work / "ours_mixed.gguf",
                 "ours GPTQ+asym Q4_0, half the layers": work / "unused.gguf"}.get(
                name, work / f"ours_{k}_{preset}_{method.replace('+', '_')}.gguf")
            if p.with_suffix(".result.json").exists():
                results[name] = {"path": p, **json.loads(p.with_suffix(".result.json").read_text())}
            elif p.exists() and not name.endswith("half the layers"):  # written by a worker before results were saved
                results[name] = {"path": p, "quant_s": float("nan"), "quant_cpu_s": float("nan"),
                                 "note": "quantize time and peak RSS not recorded (the run was cut short)"}
        if (work / "mixed_recipe.json").exists():
            results["_mixed"] = json.loads((work / "mixed_recipe.json").read_text())
    else:
        threads = [threading.Thread(target=fixed_chain), threading.Thread(target=mixed_chain)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    missing = [n for n in OURS if n not in results]
    if missing and not args.score_only:
        raise SystemExit(f"quantization failed for {', '.join(missing)} (see the messages above)")
    mixed = results.pop("_mixed", {"seconds": 0, "cpu_seconds": 0, "recipe": None, "estimate": None,
                                   "sensitivity": None})
    for name in OURS:
        if name.endswith("half the layers") or name in missing:
            continue
        info = {k: v for k, v in results[name].items() if k != "path"}
        quant_s = info["quant_s"]
        if name == "ours mixed (Q4_0 size)":
            info["sensitivity_s"], info["sensitivity_cpu_s"] = mixed["seconds"], mixed["cpu_seconds"]
            quant_s += mixed["seconds"]
        score(name, "edge", results[name]["path"], quant_s, info)

    half = results.get("ours GPTQ+asym Q4_0, half the layers")
    full = next((r for r in rows if r["variant"] == "ours GPTQ+asym Q4_0"), None)
    scaling = {"not_measured": "the run was cut short"} if half is None or full is None else {"full_layers": full["n_layers"], "full_s": full["quant_s"], "full_cpu_s": full["quant_cpu_s"],
               "full_peak_rss_mb": full["peak_rss_mb"],
               "half_layers": half["n_layers"], "half_s": half["quant_s"], "half_cpu_s": half["quant_cpu_s"],
               "half_peak_rss_mb": half["peak_rss_mb"], "time_ratio": full["quant_s"] / half["quant_s"],
               "cpu_time_ratio": full["quant_cpu_s"] / half["quant_cpu_s"]}
    if args.skip_w8a8 and args.json.exists():
        w8a8 = {**json.loads(args.json.read_text()).get("w8a8", {}), "carried_over": "from the previous run's JSON"}
    else:
        w8a8 = torch_w8a8(args, toks)

    print()
    print_table(rows)
    if "not_measured" not in scaling:
        print(f"\nlinear time: GPTQ+asym Q4_0 {scaling['full_layers']} layers {scaling['full_s']:.1f} s wall, "
              f"{scaling['full_cpu_s']:.1f} s CPU (peak RSS {scaling['full_peak_rss_mb']:.0f} MB), "
              f"{scaling['half_layers']} layers {scaling['half_s']:.1f} s wall, {scaling['half_cpu_s']:.1f} s CPU "
              f"(peak RSS {scaling['half_peak_rss_mb']:.0f} MB): ratio {scaling['time_ratio']:.2f} wall, "
              f"{scaling['cpu_time_ratio']:.2f} CPU")
    for w in w8a8.get("schemes", []):
        print(f"W8A8 (torch fake-quant), {w['scheme']}: ppl {w['ppl']:.3f} vs F32 {w['ref_ppl']:.3f} "
              f"({w['ppl_change']:+.2%}), KLD {w['kld']:.4f}, top-1 {w['top1']:.3f}, "
              f"{w['layer_macs_not_int8']:.1%} of decoder MACs not int8, {w['quant_s']:.0f} s"
              + (" (carried over)" if "carried_over" in w8a8 else ""))
    out = {"model": MODEL, "calibration": CALIB, "not_measured": missing, "n_samples": args.n_samples, "seq_len": args.seq_len,
           "eval": {"text": "heldout", "tokens": len(toks), "window": args.window, "runtime": "llama-cpp-python",
                    "kv_type": "f32", "threads": 2},
           "rows": rows, "scaling": scaling, "w8a8": w8a8,
           "mixed": {"recipe": mixed["recipe"], "estimate": mixed["estimate"]},
           "sensitivity": mixed["sensitivity"], "total_s": time.perf_counter() - t_start}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {args.json}")


def torch_w8a8(args, toks) -> dict:
    """W8A8 scored with the torch fake-quant model (llama.cpp has no W8A8): ppl vs the float model.

    Two schemes of edge.quant.w8a8 (docs/quantization.md, benchmarks/w8a8.py has the full ladder):
    every activation int8 (SmoothQuant 0.8, the best all-int8 found), and the `w8a8` recipe's default
    for a unit with int16 (rotation, GPTQ int8 weights, MSE clipping, down inputs and the 6 worst
    groups at int16 activations)."""
    import torch

    from edge.calib import CalibConfig, token_batches
    from edge.eval import compare
    from edge.model.load import load_model
    from edge.quant.w8a8 import W8A8Config, attach_fake_quant, for_unit, prepare_w8a8
    from edge.runtime.eager import TorchRunner

    torch.set_num_threads(2)
    lm = load_model(args.f32)
    ref_logits = memo_logits(TorchRunner(lm.model).logits)

    calib = token_batches(lm.tokenizer, CalibConfig(n_samples=32, seq_len=128, seed=0))
    out: dict = {"calibration": "general 32 x 128 (as benchmarks/w8a8.py)", "schemes": []}
    for label, cfg in (("all activations int8 (SmoothQuant 0.8, RTN weights)", W8A8Config(rotate=False, alpha=0.8)),
                       ("w8a8 recipe default, int16 unit (rotation, GPTQ int8, MSE scales, down + 6 groups int16)",
                        for_unit(("int8", "int16")))):
        t0 = time.perf_counter()
        qm, plan = prepare_w8a8(lm.model, calib, cfg)
        quant_s = time.perf_counter() - t0
        hooks = attach_fake_quant(qm, plan)
        c = compare(ref_logits, TorchRunner(qm).logits, toks, window=args.window)
        for h in hooks:
            h.remove()
        s = plan.summary()
        out["schemes"].append({"scheme": label, "ref_ppl": c.ref_ppl, "ppl": c.ppl, "ppl_change": c.ppl / c.ref_ppl - 1,
                               "kld": c.kld_mean, "top1": c.top1_agreement, "quant_s": quant_s,
                               "layer_macs_not_int8": s["layer_macs_not_int8"], "groups": s["groups"]})
    return out


def print_table(rows: list[dict]) -> None:
    print("| variant | size MB | bpw | ppl | ppl change | KLD | top-1 | quant s (wall) | quant CPU s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        rss = f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else ""
        cpu = f"{r['quant_cpu_s'] + r.get('sensitivity_cpu_s', 0):.1f}" if "quant_cpu_s" in r else ""
        print(f"| {r['variant']} | {r['size_mb']:.2f} | {r['bpw']:.3f} | {r['ppl']:.3f} | {r['ppl_change']:+.2%} | "
              f"{r['kld']:.4f} | {r['top1']:.3f} | {r['quant_s']:.1f} | {cpu} | {rss} |")


if __name__ == "__main__":
    main()
