"""Peak memory of the whole-graph exporters (.pte, ONNX) per byte of fp32 weights: the k of
edge.stream.WHOLE_GRAPH_PEAK, measured on the built-in model.

Each case runs in its own process; peak RSS is the kernel's ru_maxrss. k = (peak - RSS after the
imports) / fp32 weight bytes, so the fixed cost of the Python + torch + exporter imports is kept
apart (``base_bytes``) and the rest scales with the model.

    .venv/bin/python benchmarks/export_peak_memory.py            # both cases, ~10 min on 2 cores
    .venv/bin/python benchmarks/export_peak_memory.py --case onnx:fp32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASES = ("onnx:fp32", "pte:8da4w")
OUT = Path(__file__).parent / "results" / "bigmodel_export_peak.json"


def rss_now() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def one(case: str, max_seq: int) -> dict:
    import resource
    import tempfile

    import torch  # noqa: F401  (counted in the base)

    writer, option = case.split(":")
    if writer == "pte":
        from edge.export.executorch import PteConfig, export_pte
    else:
        from edge.export.onnx import OnnxConfig, export_onnx
    from edge.model.load import load_model

    base = rss_now()
    lm = load_model("smollm2-135m")
    weights = sum(p.numel() for p in lm.model.parameters()) * 4
    loaded = rss_now()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        if writer == "pte":
            export_pte(lm.model, Path(d) / "model.pte", PteConfig(quant=option, max_seq=max_seq))
        else:
            export_onnx(lm.model, d, OnnxConfig(dtype=option, max_seq=max_seq))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"case": case, "max_seq": max_seq, "fp32_weight_bytes": weights, "base_bytes": base,
            "loaded_bytes": loaded, "peak_bytes": peak, "k": round((peak - base) / weights, 3),
            "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", help=f"writer:option, of {CASES}")
    ap.add_argument("--max-seq", type=int, default=128)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inner:
        print(json.dumps(one(a.case[0], a.max_seq)), flush=True)
        return
    rows = json.loads(OUT.read_text())["cases"] if OUT.exists() else []
    for case in a.case or CASES:
        r = subprocess.run([sys.executable, __file__, "--inner", "--case", case, "--max-seq", str(a.max_seq)],
                           capture_output=True, text=True)
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{case}: exit {r.returncode}")
        row = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{case}: peak {row['peak_bytes'] / 2**20:.0f} MiB (after imports {row['base_bytes'] / 2**20:.0f} MiB), "
              f"fp32 weights {row['fp32_weight_bytes'] / 2**20:.0f} MiB -> k = {row['k']}, {row['seconds']} s")
        rows = [x for x in rows if x["case"] != case] + [row]
        OUT.write_text(json.dumps({"model": "smollm2-135m", "cases": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
