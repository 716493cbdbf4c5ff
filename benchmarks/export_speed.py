"""Host prefill/decode tokens/s of every artifact we export for the built-in model, next to
llama.cpp's own F32 and Q4_0 of the same weights, and the simulator's prediction for each.

Two steps: build the artifacts (CPU-heavy, minutes: run it niced), then measure on a quiet host::

    nice -n 19 .venv/bin/python benchmarks/export_speed.py --build          # lowers what is missing
    bash benchmarks/quiet.sh .venv/bin/python benchmarks/export_speed.py    # measures, writes results

The artifacts live in the stage cache under ~/.cache/edge/bench (``--cache``): keyed on the model's
weights, the export config, the exporter's source and the tool versions, so a rerun reuses them
and a changed exporter rebuilds. Measurement: one warm-up, then ``--reps`` repetitions of a
``--prompt``-token prefill followed by ``--decode`` greedy single-token steps; medians are reported.
Prints a markdown table and writes benchmarks/results/export_speed.json and .md.

``--package PATH`` (repeatable) adds one row per ONNX artifact of a built device package (``edge
build`` output: the QDQ int8 W8A8 graphs of horizon-j5 / rv1126, the QDQ w4a16 graph of
snapdragon-8gen2), run on the host through ONNX Runtime's CPU provider with the package's own runner
(``edge.runtime.session.artifact_runner``: checksums verified first, 2 intra-op threads like the other
rows; QDQ int8 W8A8 graphs with ONNX Runtime's fused int8 kernels, ``fused_qdq``, labelled in the
row: the runner's default, the exact path its accuracy figures use, is 1.26-1.65x slower here, see
benchmarks/qdq_reference_speed.py) and the same prompt, decode length, warm-up and medians. These graphs take a fixed T tokens per
call (``layout.fixed_seq``, 32) with the KV cache as explicit inputs/outputs: prefill runs the prompt
in ceil(prompt / T) calls (the last one padded), and each decode step is one full T-token call holding
1 real token and T-1 padding tokens (every split part in turn), so decode costs about one T-token
prefill call. MB counts the artifact's files (parts + rope.npy). The simulated column uses the
host-x86-2core profile's onnxruntime row for the package's recipe, "n/a" where the profile has none
(it runs fp32 and w8a8 on onnxruntime; no w4a16): see the notes under the table. Every row in one run::

    bash benchmarks/quiet.sh .venv/bin/python benchmarks/export_speed.py \\
        --package /tmp/pkg-j5 --package /tmp/pkg-rv1126 --package /tmp/w4/pkg-8g2

(``--only`` with no names and ``--package``: package rows only; a package that is missing, being
rebuilt or fails its checksums gets a "not measured" row with the reason.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
THREADS = 2
MAX_SEQ = 512

# name -> (what it is, host runtime, simulator recipe, simulator runtime on host-x86-2core)
ARTIFACTS = {
    "pte-fp32": (".pte fp32 (XNNPACK)", "executorch", "fp32", "executorch-xnnpack"),
    "pte-8da4w": (".pte 8da4w g32 (XNNPACK)", "executorch", "8da4w", "executorch-xnnpack"),
    "onnx-fp32": ("ONNX fp32", "onnxruntime", "fp32", "onnxruntime"),
    "gguf-q4_0": ("our GGUF Q4_0 (GPTQ, Q8_0 output)", "llama.cpp", "q4_0", "llama.cpp"),
    "llamacpp-F32": ("llama.cpp's own F32 (reference)", "llama.cpp", "fp32", "llama.cpp"),
    "llamacpp-Q4_0": ("llama.cpp's own Q4_0 (reference)", "llama.cpp", "q4_0", "llama.cpp"),
}


# ---- build ------------------------------------------------------------------------------------
def model_parts(lm) -> dict:
    from edge.cache import model_hash, tool_versions

    return {"model": model_hash(lm.model), "spec": lm.spec.to_dict(), "tools": tool_versions()}


def source_hash(*files: str) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update((ROOT / f).read_bytes())
    return h.hexdigest()


def artifact(name: str, lm, cache, build: bool, base: dict | None = None):
    """(path or dir, meta) of one artifact, building it when ``build``; None when absent."""
    import copy

    from edge.export.executorch import PteConfig, export_pte_cached

    if name.startswith("llamacpp-"):
        path = cache.root / f"smollm2-135m-{name.split('-')[1]}.gguf"  # the file sim_vs_llamacpp.py makes
        if not path.exists() and build:
            from edge.model.load import builtin_path
            from edge.runtime.llamacpp import convert_gguf

            convert_gguf(builtin_path("smollm2-135m"), path, name.split("-")[1])
        return (path, {}) if path.exists() else None
    if name.startswith("pte-"):
        cfg = PteConfig(quant=name.split("-")[1], max_seq=MAX_SEQ)
        if not build:
            from edge.export.executorch import pte_cache_parts

            found = find_entry(cache, "export-pte", pte_cache_parts(lm.model, cfg, lm.tokenizer.bos_id, eos(lm),
                                                                    base["model"]))
            return (found[0] / "model.pte", found[1]) if found else None
        res, _ = export_pte_cached(lm.model, None, cfg, lm.tokenizer.bos_id, eos(lm), cache=cache,
                                   model_sha256=base["model"])
        return res.path, res.to_dict()
    if name == "onnx-fp32":
        from edge.export.onnx import OnnxConfig, export_onnx, rope_tables

        parts = base | {"config": {"dtype": "fp32", "max_seq": MAX_SEQ}, "exporter": source_hash("edge/export/onnx.py")}

        def fn(d: Path) -> dict:
            res = export_onnx(lm.model, d, OnnxConfig(dtype="fp32", max_seq=MAX_SEQ))
            np.save(d / "rope.npy", np.stack(rope_tables(lm.model, MAX_SEQ)))
            return res.to_dict() | {"layout": res.layout}
    elif name == "gguf-q4_0":
        from edge.calib import CalibConfig, dataset_hash, token_batches

        ccfg = CalibConfig(n_samples=32, seq_len=128, seed=0)
        parts = base | {"recipe": "q4_0", "calib": dataset_hash(ccfg),
                        "exporter": source_hash("edge/export/gguf.py", "edge/quant/quantize.py")}

        def fn(d: Path) -> dict:
            import torch

            from edge.export.gguf import export_gguf
            from edge.model.load import builtin_path
            from edge.quant.quantize import quantize

            torch.manual_seed(0)
            calib = np.clip(token_batches(lm.tokenizer, ccfg), 0, lm.spec.vocab_size - 1)
            m = copy.deepcopy(lm.model)
            q = quantize(m, "q4_0", torch.from_numpy(calib))
            export_gguf(m, q, d / "model.gguf", tokenizer_gguf=builtin_path("smollm2-135m"),
                        provenance={"calib": dataset_hash(ccfg), "recipe": "q4_0"})
            return {"recipe": "q4_0"}
    else:
        raise SystemExit(f"unknown artifact {name}; known: {', '.join(ARTIFACTS)}")
    stage = f"bench-{name}"
    if build:
        e = cache.entry(stage, parts, fn)
        return e.path, e.meta
    return find_entry(cache, stage, parts)


def find_entry(cache, stage: str, parts: dict) -> tuple[Path, dict] | None:
    """The entry for ``parts``; else the newest complete entry that differs only in the exporter's
    source (others edit the exporters while a build runs), its meta marked ``exporter_changed``."""
    hit = cache.lookup(stage, parts)
    if hit:
        return hit, json.loads((hit / ".edge-entry.json").read_text())["meta"]

    def rest(p: dict) -> dict:
        return {k: v for k, v in p.items() if k != "exporter"}

    same = []
    for marker in (cache.root / "v1" / stage).glob("*/.edge-entry.json"):
        m = json.loads(marker.read_text())
        if rest(m["parts"]) == rest(parts) and cache.lookup(stage, m["parts"]) is not None:  # complete, intact
            same.append((marker.stat().st_mtime, marker.parent, m["meta"]))
    if not same:
        return None
    _, where, meta = max(same, key=lambda t: t[0])
    return where, meta | {"exporter_changed": True}


def eos(lm) -> list[int]:
    return [lm.tokenizer.eos_id] if lm.tokenizer.eos_id is not None else []


# ---- measure ----------------------------------------------------------------------------------
def runner_for(name: str, where: Path, meta: dict):
    kind = ARTIFACTS[name][1]
    if kind == "executorch":
        from edge.runtime.executorch import PteRunner

        return PteRunner(where)
    if kind == "onnxruntime":
        from edge.runtime.onnxruntime import OnnxRunner

        cos, sin = np.load(where / "rope.npy")
        return OnnxRunner(where, meta["layout"], cos, sin, threads=THREADS)
    return LlamaCppTimer(where / "model.gguf" if where.is_dir() else where)


class LlamaCppTimer:
    """llama-cpp-python with the same prefill/step calls as our runners (logits of the last token)."""

    def __init__(self, path: Path):
        from edge.model.llama_log import load_llama

        self.llm = load_llama(path, n_ctx=MAX_SEQ, n_batch=MAX_SEQ, n_threads=THREADS, n_threads_batch=THREADS)

    def prefill(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(tokens))
        return np.asarray(self.llm.scores[self.llm.n_tokens - 1])[None]

    def step(self, token: int, pos: int) -> np.ndarray:
        assert pos == self.llm.n_tokens
        self.llm.eval([token])
        return np.asarray(self.llm.scores[self.llm.n_tokens - 1])


def time_runner(runner, prompt: list[int], n_decode: int, reps: int) -> dict:
    """Medians over ``reps`` of (prefill tok/s, decode tok/s); one warm-up run first."""
    runner.prefill(prompt[:16])
    runner.step(1, 16)
    pre, dec = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        last = runner.prefill(prompt)[-1]
        t1 = time.perf_counter()
        for i in range(n_decode):
            last = runner.step(int(np.argmax(last)), len(prompt) + i)
        t2 = time.perf_counter()
        pre.append(len(prompt) / (t1 - t0))
        dec.append(n_decode / (t2 - t1))
    return {"prefill_tok_s": statistics.median(pre), "decode_tok_s": statistics.median(dec),
            "prefill_runs": [round(x, 1) for x in pre], "decode_runs": [round(x, 2) for x in dec]}


def host_prediction(spec, recipe: str, runtime: str, prompt: int, decode: int) -> tuple[float | None, float | None]:
    """The simulator's (prefill, decode) tok/s on host-x86-2core, or (None, None) where it has no figures."""
    from edge.errors import ConfigError
    from edge.sim import simulate
    from edge.sim.simulate import Workload

    try:
        r = simulate(spec, recipe, "host-x86-2core", runtime=runtime,
                     workload=Workload(prompt_len=prompt, gen_len=decode), budgets=[])
    except ConfigError:
        return None, None
    return r.prefill_tok_s, r.decode_tok_s


def sim_fitted_to(recipe: str, runtime: str) -> str:
    """What the host profile's efficiency row for (runtime, recipe) was fitted to ("" when none)."""
    from edge.errors import ConfigError
    from edge.targets import load_target

    try:
        e = load_target("host-x86-2core").efficiency_for(runtime, recipe)
    except ConfigError:
        return ""
    return " ".join(e.fitted_to).split(":")[0] if e.fitted_to else (e.source or e.estimate)


def package_rows(pkg: Path, lm, base: dict, prompt: list[int], n_decode: int, reps: int) -> list[dict]:
    """One measured row per ONNX artifact of the device package at ``pkg`` (see the module docstring)."""
    import re

    from edge.errors import EdgeError
    from edge.model.spec import ModelSpec
    from edge.package import read_manifest, verify
    from edge.runtime.onnxruntime import REFERENCE_QDQ
    from edge.runtime.session import artifact_runner

    row0 = {"name": f"package:{pkg}", "package": str(pkg), "runtime": "onnxruntime"}
    try:
        m = read_manifest(pkg)
        verify(m, pkg)  # refuses a package being rebuilt or modified
    except EdgeError as e:
        return [row0 | {"artifact": f"package {pkg}", "missing": True, "note": f"not measured: {e}"}]
    target, recipe = m.get("target", "?"), m.get("recipe", "?")
    model = m.get("model", {})
    if model.get("name") != lm.spec.name:
        return [row0 | {"artifact": f"{target} package {recipe}", "missing": True,
                        "note": f"not measured: built from {model.get('name')}, the prompt is {lm.spec.name}'s"}]
    arts = [a for a in m["artifacts"] if a["runtime"] == "onnxruntime"]
    if not arts:
        return [row0 | {"artifact": f"{target} package {recipe}", "missing": True,
                        "note": "no onnxruntime artifact: " + ", ".join(a["runtime"] for a in m["artifacts"])}]
    spec = ModelSpec.from_dict(model["spec"]) if model.get("spec") else lm.spec
    rows = []
    for i, art in enumerate(arts):
        lay = art["layout"]
        T, parts = int(lay.get("fixed_seq") or 0), len(lay["parts"])
        art_recipe = art.get("recipe", recipe)
        # QDQ int8 rows time ONNX Runtime's fused int8 kernels (what a host user of the graph gets);
        # the package's accuracy figures come from the exact path (edge.runtime.onnxruntime), slower
        # by 1.26-1.65x on the built-in model here (benchmarks/results/qdq_reference_speed_*.json)
        fused = lay["dtype"] in REFERENCE_QDQ
        label = (f"{target} package: ONNX {lay['dtype']}" + (f", T={T}" if T else "")
                 + (", ORT fused int8 kernels" if fused else ""))
        row = row0 | {"name": f"package:{pkg}" + (f"#{i}" if len(arts) > 1 else ""), "artifact": label,
                      "target": target, "recipe": art_recipe, "dtype": lay["dtype"], "fixed_seq": T,
                      "parts": parts, "device_runtime": art.get("device_runtime")}
        try:
            runner = artifact_runner(pkg, art, threads=THREADS, fused_qdq=fused)
        except EdgeError as e:
            rows.append(row | {"missing": True, "note": f"not measured: {e}"})
            continue
        row["size_mb"] = round(sum((pkg / f).stat().st_size for f in art["files"]) / 1e6, 1)
        row |= time_runner(runner, prompt, n_decode, reps)
        del runner
        sp, sd = host_prediction(spec, art_recipe, "onnxruntime", len(prompt), n_decode)
        row |= {"sim_runtime": "onnxruntime", "sim_recipe": art_recipe, "sim_prefill_tok_s": sp, "sim_decode_tok_s": sd}
        split = f" ({parts} ONNX parts run in turn per call)" if parts > 1 else ""
        if T:
            note = (f"prefill: {-(-len(prompt) // T)} call(s) of T={T} tokens{split}; decode step: one T={T} call "
                    f"with 1 real token + {T - 1} padding tokens")
        else:
            note = f"prefill: one call{split}; decode step: one 1-token call"
        if sd is None:
            note += (f"; simulated n/a: host-x86-2core has no onnxruntime efficiency row for {art_recipe} "
                     "(none invented)")
        else:
            fit = re.sub(r"\s+", " ", sim_fitted_to(art_recipe, "onnxruntime"))
            note += (f"; simulated: the onnxruntime/{art_recipe} row fitted to {fit}" if fit else "")
            note += "; the simulator does not model the fixed-T padding" if T else ""
        if model.get("sha256") and model["sha256"] != base["model"]:
            note += "; the package's weights differ from the built-in model's (pruned or modified)"
        row["note"] = note
        rows.append(row)
    return rows


def size_mb(where: Path) -> float:
    files = [where] if where.is_file() else [f for f in where.iterdir() if f.is_file() and not f.name.startswith(".")]
    return sum(f.stat().st_size for f in files) / 1e6


def table(res: dict) -> str:
    lines = [f"host: {res['threads']} threads, prompt {res['prompt']} tokens, {res['decode']} decode steps, "
             f"median of {res['reps']}; load average {res['load_before']} before, {res['load_after']} after", "",
             "| artifact | runtime | MB | prefill tok/s | decode tok/s | decode vs llama.cpp same precision "
             "| simulated prefill / decode |", "|---|---|---|---|---|---|---|"]
    notes = []
    for r in res["rows"]:
        mark = ""
        if r.get("package"):  # package rows carry a numbered note under the table
            notes.append(f"[{len(notes) + 1}] {r['artifact']} ({r['package']}): {r.get('note', '')}")
            mark = f" [{len(notes)}]"
        if r.get("missing"):
            lines.append(f"| {r['artifact']}{mark} | {r['runtime']} | | "
                         f"{'not measured' if mark else 'not built'} | | | |")
            continue
        sim = (f"{r['sim_prefill_tok_s']:.0f} / {r['sim_decode_tok_s']:.1f}" if r["sim_decode_tok_s"]
               else "n/a" if mark else "no host figures")
        rel = f"{r['decode_vs_llamacpp']:.2f}x" if r.get("decode_vs_llamacpp") else ""
        lines.append(f"| {r['artifact']}{mark} | {r['runtime']} | {r['size_mb']:.0f} | {r['prefill_tok_s']:.0f} "
                     f"| {r['decode_tok_s']:.1f} | {rel} | {sim} |")
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", action="store_true", help="build the missing artifacts (run it niced), no timing")
    ap.add_argument("--only", nargs="*", default=list(ARTIFACTS), help=f"artifacts (default all: {', '.join(ARTIFACTS)})")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "edge" / "bench"))
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_speed.json"))
    ap.add_argument("--package", action="append", default=[], metavar="PATH",
                    help="a built device package: adds a row per ONNX artifact (repeatable; see the docstring)")
    a = ap.parse_args()

    import torch

    from edge.cache import StageCache
    from edge.calib import load_text
    from edge.model.load import load_model

    torch.set_num_threads(THREADS)
    lm = load_model("smollm2-135m")
    cache = StageCache(a.cache)
    base = model_parts(lm)
    if a.build:
        for name in a.only:
            t0 = time.time()
            where, _ = artifact(name, lm, cache, True, base)
            print(f"{name}: {where} ({time.time() - t0:.0f} s)", flush=True)
        if a.package:
            print("--package: nothing to build (packages come from `edge build`)", flush=True)
        return

    # ExecuTorch's threadpool is left at its default (one thread per core: 2 here); resetting it, or
    # changing torch's thread count around the calls, made the .pte slower (docs/export.md)
    prompt = lm.tokenizer.encode(load_text("heldout").text)[: a.prompt]
    res = {"threads": THREADS, "prompt": len(prompt), "decode": a.decode, "reps": a.reps, "max_seq": MAX_SEQ,
           "load_before": round(os.getloadavg()[0], 1), "rows": []}
    for name in a.only:
        label, kind, recipe, sim_rt = ARTIFACTS[name]
        row = {"name": name, "artifact": label, "runtime": kind}
        found = artifact(name, lm, cache, False, base)
        if found is None:
            res["rows"].append(row | {"missing": True})
            print(f"{name}: not built (run with --build)", flush=True)
            continue
        where, meta = found
        runner = runner_for(name, where, meta)
        row |= {"size_mb": round(size_mb(where), 1)} | time_runner(runner, prompt, a.decode, a.reps)
        if meta.get("exporter_changed"):
            row["note"] = "built before the exporter's latest source edit"
        del runner
        sp, sd = host_prediction(lm.spec, recipe, sim_rt, len(prompt), a.decode)
        row |= {"sim_runtime": sim_rt, "sim_recipe": recipe, "sim_prefill_tok_s": sp, "sim_decode_tok_s": sd}
        if meta.get("outside_delegate") is not None and name.startswith("pte"):
            row["export"] = {k: meta.get(k) for k in ("delegated", "decode_delegated", "seconds")}
        res["rows"].append(row)
        print(f"{name}: prefill {row['prefill_tok_s']:.0f} tok/s, decode {row['decode_tok_s']:.1f} tok/s", flush=True)
    for pkg in a.package:
        for row in package_rows(Path(pkg), lm, base, prompt, a.decode, a.reps):
            res["rows"].append(row)
            if row.get("missing"):
                print(f"{pkg}: {row['note']}", flush=True)
            else:
                print(f"{row['name']}: prefill {row['prefill_tok_s']:.0f} tok/s, decode {row['decode_tok_s']:.1f} tok/s",
                      flush=True)
    ref = {r["sim_recipe"]: r["decode_tok_s"] for r in res["rows"] if r["name"].startswith("llamacpp") and "decode_tok_s" in r}
    for r in res["rows"]:
        if "decode_tok_s" in r and not r["name"].startswith("llamacpp") and ref.get(r.get("sim_recipe")):
            r["decode_vs_llamacpp"] = r["decode_tok_s"] / ref[r["sim_recipe"]]
    res["load_after"] = round(os.getloadavg()[0], 1)
    md = table(res)
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
