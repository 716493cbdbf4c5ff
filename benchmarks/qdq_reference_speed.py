"""Host speed and logits of one W8A8 QDQ ONNX graph under ONNX Runtime's two CPU paths, in one run:

* reference (``OnnxRunner``'s default for ``qdq-w8a8``: ``session.disable_quant_qdq=1``): exact int8
  QuantizeLinear rounding and saturation, weights dequantized once, float MatMuls; what an NPU that
  accumulates in int32 computes, on any host;
* fused (``fused_qdq=True``): ONNX Runtime's fused int8 kernels, whose result depends on the host's
  instruction set (uint8 x int8 pair sums saturate at int16 on AVX2 without VNNI).

The graph is the built-in model's (smollm2-135m) ``onnx-qdq`` export (opset 18, fixed T=32, max_seq
64) with ``W8A8Config(rotate=False, alpha=0.0)`` (RTN weights, min/max activation ranges: the
cheapest plan to prepare; the MatMuls, and so the kernels timed, are those of every W8A8 plan without
float groups), calibrated on 8 x 128 tokens. Measurement: one warm-up, then ``--reps`` rounds, each
timing a 32-token prefill and ``--decode`` single-token steps on both runners in turn (so both see
the same host load); medians. Logits of the prompt: each path against the torch emulation of the
same plan (``attach_fake_quant``) and against the fp32 model (top-1 agreement).

    nice .venv/bin/python benchmarks/qdq_reference_speed.py            # ~5 min on the shared 2 cores
    nice .venv/bin/python benchmarks/qdq_reference_speed.py --tiny     # the 2-layer test model, seconds

Prints a markdown table and writes benchmarks/results/qdq_reference_speed_<plan>.json
(``--tiny``: qdq_reference_speed_tiny.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
THREADS = 2
PLANS = {"rotated": dict(rotate=True, alpha=0.0, keep_down=True, hybrid_precision="float"),
         "rtn": dict(rotate=False, alpha=0.0)}
MAX_SEQ = 64  # the test model's context; the prompt (32) and the decode steps fit


def cpu_flags() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    return {"model": model, **{f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the 2-layer test model (smoke run)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--decode", type=int, default=8)
    ap.add_argument("--plan", choices=list(PLANS), default="rotated")
    a = ap.parse_args()
    import onnxruntime
    import torch

    from edge.export.onnx import OnnxConfig, export_onnx, rope_tables
    from edge.quant.w8a8 import W8A8Config, attach_fake_quant, prepare_w8a8
    from edge.runtime.eager import TorchRunner
    from edge.runtime.onnxruntime import OnnxRunner

    torch.set_num_threads(THREADS)
    if a.tiny:
        from tests.tinymodels import tiny_model

        model, name = tiny_model(), "tiny 2-layer dim-64 test model"
        calib = np.random.default_rng(0).integers(0, 256, (8, 32))
        prompt = [int(t) for t in np.random.default_rng(1).integers(0, 256, 32)]
    else:
        from edge.calib import CalibConfig, load_text, token_batches
        from edge.model.load import load_model

        lm = load_model("smollm2-135m")
        model, name, V = lm.model, "smollm2-135m (built-in)", lm.spec.vocab_size
        calib = np.clip(token_batches(lm.tokenizer, CalibConfig(n_samples=8, seq_len=128, seed=0)), 0, V - 1)
        prompt = [t for t in lm.tokenizer.encode(load_text("heldout").text) if t < V][:32]
    w8 = W8A8Config(**PLANS[a.plan])
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        res = export_onnx(model, d, OnnxConfig(dtype="qdq-w8a8", max_seq=MAX_SEQ, format="onnx-qdq", w8a8=w8),
                          calib_tokens=calib)
        export_s = time.perf_counter() - t0
        cos, sin = rope_tables(model, MAX_SEQ)
        runners = {}
        for path, fused in (("reference", False), ("fused", True)):
            t0 = time.perf_counter()
            runners[path] = OnnxRunner(d, res.layout, cos, sin, threads=THREADS, fused_qdq=fused)
            runners[path].session_s = time.perf_counter() - t0
        logits = {k: r.prefill(prompt) for k, r in runners.items()}  # also the warm-up
        times: dict[str, dict[str, list[float]]] = {k: {"prefill": [], "decode": []} for k in runners}
        for _ in range(a.reps):
            for k, r in runners.items():
                t0 = time.perf_counter()
                r.prefill(prompt)
                times[k]["prefill"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for i in range(a.decode):
                    r.step(prompt[i], len(prompt) + i)
                times[k]["decode"].append((time.perf_counter() - t0) / a.decode)
    qm, plan = prepare_w8a8(model, calib, w8)
    attach_fake_quant(qm, plan)
    emu = TorchRunner(qm).logits(prompt)
    ref = TorchRunner(model).logits(prompt)
    rows = {}
    for k in runners:
        pre, dec = statistics.median(times[k]["prefill"]), statistics.median(times[k]["decode"])
        rows[k] = {"session_s": round(runners[k].session_s, 2), "prefill_32_s": round(pre, 4),
                   "prefill_tok_s": round(len(prompt) / pre, 1), "decode_call_s": round(dec, 4),
                   "decode_tok_s": round(1 / dec, 2),
                   "max_abs_logit_diff_vs_emulation": round(float(np.abs(logits[k] - emu).max()), 6),
                   "top1_vs_emulation": round(float((logits[k].argmax(-1) == emu.argmax(-1)).mean()), 4),
                   "top1_vs_fp32": round(float((logits[k].argmax(-1) == ref.argmax(-1)).mean()), 4)}
    out = {"model": name, "graph": f"onnx-qdq (opset {res.layout['opset']}, fixed T={res.layout['fixed_seq']}), "
                                    f"{res.quantized_matmuls} int8-weight MatMuls", "plan": a.plan, "w8a8": PLANS[a.plan],
           "precision": res.precision,
           "threads": THREADS, "reps": a.reps, "decode_steps": a.decode, "prompt_tokens": len(prompt),
           "export_s": round(export_s, 1), "host": cpu_flags() | {"machine": platform.machine()},
           "tools": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}, "runs": rows,
           "slowdown_reference_vs_fused": {m: round(rows["reference"][m] / rows["fused"][m], 3)
                                           for m in ("prefill_32_s", "decode_call_s")}}
    print(f"{name}, plan {a.plan}; host {out['host'].get('model', '?')} (avx512_vnni {out['host'].get('avx512_vnni')}, "
          f"avx_vnni {out['host'].get('avx_vnni')}); ORT {onnxruntime.__version__}, {THREADS} threads\n")
    print("| ORT CPU path | 32-token prefill s | decode call s (T=32) | max |logit - emulation| | top-1 vs emulation | top-1 vs fp32 |")
    print("|---|---|---|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v['prefill_32_s']} | {v['decode_call_s']} | {v['max_abs_logit_diff_vs_emulation']} | "
              f"{v['top1_vs_emulation']} | {v['top1_vs_fp32']} |")
    dest = ROOT / "benchmarks/results" / ("qdq_reference_speed_tiny.json" if a.tiny else f"qdq_reference_speed_{a.plan}.json")
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
