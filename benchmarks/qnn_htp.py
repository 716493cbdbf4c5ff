"""The w4a16 QDQ package on Qualcomm's emulated HTP (onnxruntime-qnn) next to ONNX Runtime's CPU run of
the same graph: session creation, one 32-token prefill call, one decode call (T is fixed at 32, so a
decode step costs a whole call), and how far the two runs' logits are apart on that prefill.

The emulator runs the HTP's arithmetic on x86: its times say what validation in CI costs, not what the
phone does (the simulator predicts that). A speed measurement: run it on a quiet host::

    bash benchmarks/quiet.sh .venv/bin/python benchmarks/qnn_htp.py PKG [--reps 3]

Prints a markdown table and writes benchmarks/results/qnn_htp.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn, reps: int) -> tuple[float, object]:
    out, ts = None, []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def main() -> None:
    from edge.calib import load_text
    from edge.model.tokenizer import Tokenizer
    from edge.package import read_manifest, verify
    from edge.runtime import qnn
    from edge.runtime.onnxruntime import OnnxRunner
    from edge.targets import load_target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/qnn_htp.json"))
    a = ap.parse_args()
    pkg = Path(a.package)
    m = read_manifest(pkg)
    verify(m, pkg)
    art = next(x for x in m["artifacts"] if x.get("device_runtime") == "qnn-htp")
    layout = art["layout"]
    cos, sin = np.load(pkg / "rope.npy")
    tok = Tokenizer.from_hf_dir(pkg)
    toks = tok.encode(load_text("heldout").text)[: layout["fixed_seq"]]
    opts = qnn.qnn_options(load_target(m["target"]))
    rows, logits = {}, {}
    for name, make in (("onnxruntime CPU", lambda: OnnxRunner(pkg, layout, cos, sin, threads=a.threads)),
                       (f"QNN HTP v{opts['htp_arch']} emulated", lambda: qnn.QnnHtpRunner(pkg, layout, cos, sin, threads=a.threads, **opts))):
        t0 = time.perf_counter()
        r = make()
        load_s = time.perf_counter() - t0
        prefill_s, lg = timed(lambda r=r: r.prefill(list(toks)), a.reps)
        decode_s, _ = timed(lambda r=r: r.step(toks[0], len(toks)), a.reps)
        rows[name] = {"session_s": round(load_s, 2), "prefill_32_s": round(prefill_s, 3), "decode_call_s": round(decode_s, 3)}
        logits[name] = lg
        del r
    a_, b_ = logits.values()
    agree = float((a_.argmax(-1) == b_.argmax(-1)).mean())
    res = {"package": str(pkg), "target": m["target"], "recipe": m["recipe"], "threads": a.threads, "reps": a.reps,
           "tokens": len(toks), "runs": rows, "htp_vs_cpu": {"top1": round(agree, 4),
                                                               "max_abs_logit_diff": round(float(np.abs(a_ - b_).max()), 4)},
           "tools": {"onnxruntime": __import__("onnxruntime").__version__,
                     "onnxruntime-qnn": __import__("onnxruntime_qnn").__version__}}
    print("| run | session s | 32-token prefill s | decode call s |\n|---|---|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v['session_s']} | {v['prefill_32_s']} | {v['decode_call_s']} |")
    print(f"HTP vs CPU on the prefill: top-1 {agree:.4f}, max |logit diff| {res['htp_vs_cpu']['max_abs_logit_diff']}")
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
