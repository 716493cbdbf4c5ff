"""Host prefill/decode tokens/s of each artifact in device packages, next to llama.cpp's own Q4_0 of
the built-in model and the simulator's prediction for the package's target.

    .venv/bin/python benchmarks/export_speed.py PKG [PKG ...] [--threads 2] [--prompt 128] [--decode 64]

Prints a markdown table and writes benchmarks/results/export_speed.json. Build packages first:
``edge build --model smollm2-135m --target snapdragon-8gen2 --recipe 8da4w --out pkg-8da4w``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def time_runner(runner, prompt: list[int], n_decode: int) -> tuple[float, float]:
    """(prefill tok/s, decode tok/s): one prefill of ``prompt``, then ``n_decode`` single-token steps."""
    runner.prefill(prompt[:8])  # warm-up: first-call allocations and kernel selection
    t0 = time.perf_counter()
    last = runner.prefill(prompt)[-1]
    t1 = time.perf_counter()
    pos = len(prompt)
    for i in range(n_decode):
        last = runner.step(int(np.argmax(last)), pos + i)
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), n_decode / (t2 - t1)


def time_llamacpp(path: Path, prompt: list[int], n_decode: int, threads: int) -> tuple[float, float]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=threads, verbose=False)
    llm.eval(prompt[:8])
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), n_decode / (t2 - t1)


# package runtime -> the host profile's runtime of the same engine (targets/host-x86-2core.yaml)
HOST_RUNTIME = {"executorch": "executorch-xnnpack", "onnxruntime": "onnxruntime", "llama.cpp": "llama.cpp"}


def host_prediction(spec, recipe: str, runtime: str, prompt: int, decode: int) -> tuple[float | None, float | None]:
    """The simulator's (prefill, decode) tok/s for this host, or (None, None) where it has no figures."""
    from edge.errors import ConfigError
    from edge.sim import simulate
    from edge.sim.simulate import Workload

    try:
        r = simulate(spec, recipe, "host-x86-2core", runtime=HOST_RUNTIME[runtime],
                     workload=Workload(prompt_len=prompt, gen_len=decode), budgets=[])
    except ConfigError:
        return None, None
    return r.prefill_tok_s, r.decode_tok_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("packages", nargs="*")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_speed.json"))
    a = ap.parse_args()

    import torch

    from edge.calib import load_text
    from edge.model.load import builtin_path, load_model
    from edge.package import read_manifest
    from edge.runtime.llamacpp import convert_gguf
    from edge.runtime.session import artifact_runner

    torch.set_num_threads(a.threads)
    lm = load_model("smollm2-135m")
    prompt = lm.tokenizer.encode(load_text("heldout").text)[: a.prompt]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        q4 = convert_gguf(builtin_path("smollm2-135m"), Path(d) / "q4_0.gguf", "Q4_0")
        p, dd = time_llamacpp(q4, prompt, a.decode, a.threads)
        sp, sd = host_prediction(lm.spec, "q4_0", "llama.cpp", len(prompt), a.decode)
        rows.append({"artifact": "llama.cpp Q4_0 (reference, llama.cpp's own quantizer)",
                     "size_mb": q4.stat().st_size / 1e6, "prefill_tok_s": p, "decode_tok_s": dd,
                     "sim_host_prefill_tok_s": sp, "sim_host_decode_tok_s": sd})
    for pkg in map(Path, a.packages):
        m = read_manifest(pkg)
        for art in m["artifacts"]:
            if art["runtime"] == "llama.cpp":  # llama.cpp's runner has no step(): time the file itself
                p, dd = time_llamacpp(pkg / art["files"][0], prompt, a.decode, a.threads)
            else:
                p, dd = time_runner(artifact_runner(pkg, art, threads=a.threads), prompt, a.decode)
            size = sum((pkg / f).stat().st_size for f in art["files"]) / 1e6
            sim = m.get("simulated", {})
            sp, sd = host_prediction(lm.spec, m["recipe"], art["runtime"], len(prompt), a.decode)
            rows.append({"artifact": f"{pkg.name}: {art['format']} {art['option']} ({art['runtime']})",
                         "size_mb": size, "prefill_tok_s": p, "decode_tok_s": dd,
                         "sim_host_prefill_tok_s": sp, "sim_host_decode_tok_s": sd,
                         "sim_target": m["target"], "sim_decode_tok_s": sim.get("decode_tok_s"),
                         "sim_prefill_tok_s": sim.get("prefill_tok_s")})
    print(f"host: {a.threads} threads, prompt {len(prompt)} tokens, {a.decode} decode steps")
    print("| artifact | MB | prefill tok/s | decode tok/s | simulated here (prefill / decode) "
          "| simulated on the package's target (prefill / decode) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        here = (f"{r['sim_host_prefill_tok_s']:.0f} / {r['sim_host_decode_tok_s']:.1f}"
                if r.get("sim_host_decode_tok_s") else "no host figures")
        there = (f"{r['sim_target']}: {r['sim_prefill_tok_s']:.0f} / {r['sim_decode_tok_s']:.1f}"
                 if r.get("sim_decode_tok_s") else "")
        print(f"| {r['artifact']} | {r['size_mb']:.0f} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} "
              f"| {here} | {there} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    import os

    load = os.getloadavg()[0]  # llama.cpp's spinning threads are 10-50x slower on an oversubscribed host
    print(f"host load average {load:.1f}")
    Path(a.out).write_text(json.dumps({"threads": a.threads, "prompt": len(prompt), "decode": a.decode,
                                       "load_average": round(load, 1), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
