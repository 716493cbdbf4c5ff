"""Every preset built on a tiny model, and the sha256 of what each writer wrote: run it against two trees
to show a change leaves the artifacts of unchanged presets byte-identical.

    PYTHONPATH=/path/to/before python benchmarks/preset_sha256.py --out before.json
    PYTHONPATH=/path/to/after  python benchmarks/preset_sha256.py --out after.json
    python benchmarks/preset_sha256.py --compare before.json after.json   # -> benchmarks/results/preset_sha256.json

Per artifact file its sha256; for a GGUF also the sha256 of its tensor data and of each metadata value,
so a difference is named (a key) rather than only seen; for an ONNX graph also its sha256 without the
stack traces torch.onnx records, which hold the exporting checkout's file paths and line numbers (so
two checkouts of the same code write different .onnx bytes). The model is the tests' tiny one (2 layers,
dim 64; the GGUF presets on a tiny GGUF with the built-in tokenizer), the build config a test's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (target, preset, runtime): every preset edge build writes, on the writer that writes it
BUILDS = [
    ("snapdragon-8gen2", "fp32", "llama.cpp"), ("snapdragon-8gen2", "fp16", "llama.cpp"),
    ("snapdragon-8gen2", "q8_0", "llama.cpp"), ("snapdragon-8gen2", "q4_0", "llama.cpp"),
    ("snapdragon-8gen2", "q4_k_m", "llama.cpp"),
    ("snapdragon-8gen2", "fp32", "executorch-xnnpack"), ("snapdragon-8gen2", "8da4w", "executorch-xnnpack"),
    ("snapdragon-8gen2", "w8a8", "executorch-xnnpack"),
    ("host-x86-2core", "fp32", "onnxruntime"), ("horizon-j5", "w8a8", None), ("rv1126", "w8a8", None),
    ("snapdragon-8gen2", "w4a16", "qnn-htp"),
]
CFG = dict(max_seq=64, calib_samples=4, calib_seq=32, eval_window=32, eval_windows=2)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digests(pkg: Path, files: list[str]) -> dict:
    out = {}
    for f in files:
        out[f] = sha((pkg / f).read_bytes())
        if f.endswith(".onnx"):  # torch.onnx records stack traces: this checkout's paths and line numbers
            import onnx

            mp = onnx.load(str(pkg / f))
            for n in mp.graph.node:
                keep = [p for p in n.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
                del n.metadata_props[:]
                n.metadata_props.extend(keep)
            out[f + ":without-stack-traces"] = sha(mp.SerializeToString(deterministic=True))
        if f.endswith(".gguf"):
            import gguf

            r = gguf.GGUFReader(str(pkg / f))
            out[f + ":tensors"] = sha(b"".join(bytes(t.data.tobytes()) for t in r.tensors))
            for k, field in r.fields.items():
                out[f + ":" + k] = sha(b"".join(bytes(p.tobytes()) for p in field.parts))
    return out


def run(out: Path, only: list[str]) -> None:
    import edge
    from edge.build import BuildConfig, build_package
    from edge.model.load import load_model

    sys.path.insert(0, str(Path(edge.__file__).resolve().parent.parent))  # that tree's tests/ helpers
    from tests.model.test_gguf import write_tiny_gguf
    from tests.tinymodels import tiny_loaded

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "tiny.gguf"
        write_tiny_gguf(src)
        for target, recipe, runtime in BUILDS:
            key = f"{target}/{recipe}/{runtime or 'default'}"
            if only and not any(o in key for o in only):
                continue
            lm = load_model(str(src)) if runtime == "llama.cpp" else tiny_loaded()
            try:
                pkg = build_package(lm, target, recipe, Path(tmp) / key.replace("/", "-"), runtime,
                                    cfg=BuildConfig(**CFG), progress=lambda s: None)
            except Exception as e:  # noqa: BLE001 - a build that fails in both trees is reported, not hidden
                rows[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                print(key, rows[key], flush=True)
                continue
            art = json.loads((pkg / "manifest.json").read_text())["artifacts"][0]
            rows[key] = digests(pkg, [f for f in art["files"] if f != "rope.npy"])
            print(key, {k: v[:12] for k, v in rows[key].items() if ":" not in k}, flush=True)
    out.write_text(json.dumps({"edge": str(Path(edge.__file__).parent), "builds": rows}, indent=1) + "\n")


def compare(a: Path, b: Path, note: str = "") -> None:
    before, after = json.loads(a.read_text())["builds"], json.loads(b.read_text())["builds"]
    rows = []
    for key in before:
        x, y = before[key], after.get(key, {})
        files = [k for k in x if ":" not in k]
        differ = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
        rows.append({"build": key, "identical": not differ, "files": {f: x[f] for f in files}, "differ": differ})
        print(f"{key:45} {'identical' if not differ else 'DIFFER: ' + ', '.join(differ)}")
    res = ROOT / "benchmarks/results/preset_sha256.json"
    res.write_text(json.dumps({"what": __doc__.split("\n\n")[0], "note": note, "rows": rows}, indent=1) + "\n")
    print("wrote", res)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path)
    ap.add_argument("--only", nargs="*", default=[], help="builds whose key contains one of these")
    ap.add_argument("--note", default="", help="with --compare: what the two trees are, written to the results")
    args = ap.parse_args()
    compare(*args.compare, args.note) if args.compare else run(args.out, args.only)
