"""An 8B model on a 24 GB machine: random-weight Llama-3-8B checkpoint (bf16 safetensors, sharded)
-> calibrated (AWQ) Q4_0 GGUF, layer by layer -> llama.cpp loads it and generates.

Each phase runs in its own process so the kernel's peak RSS (ru_maxrss) is the phase's own:
writing the checkpoint, streaming it to GGUF, and llama.cpp's load + generation. The goal is a
quantization peak under 25% of the bf16 checkpoint's size. The big files go under --work
(default /work/bigtmp, never the repository) and are deleted afterwards unless --keep.

    nohup .venv/bin/python benchmarks/bigmodel_gguf.py > /tmp/bigmodel.log 2>&1 &
    .venv/bin/python benchmarks/bigmodel_gguf.py --shape 3b      # where disk is short
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # dim, layers, heads, kv heads, ffn, vocab (from the models' config.json)
    "8b": (4096, 32, 32, 8, 14336, 128256),  # meta-llama/Meta-Llama-3-8B
    "3b": (3072, 28, 24, 8, 8192, 128256),  # meta-llama/Llama-3.2-3B (without its RoPE scaling)
    "tiny": (256, 2, 4, 2, 512, 50000),  # a smoke test of this script
}
RESULTS = Path(__file__).parent / "results"


def phase(args: list[str]) -> dict:
    """Run one phase in a child process; its last stdout line is a JSON dict; add its peak RSS."""
    t0 = time.time()
    r = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    if r.returncode:
        raise SystemExit(f"phase {args[0]} failed with exit code {r.returncode}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.time() - t0, 1)
    out["peak_rss_bytes"] = out.get("peak_rss_bytes") or 0
    return out


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def do_write(ckpt: Path, shape: str) -> dict:
    from edge.stream import llama_config, write_random_checkpoint

    dim, nl, nh, nkv, ffn, vocab = SHAPES[shape]
    n = write_random_checkpoint(ckpt, llama_config(dim, nl, nh, nkv, ffn, vocab), seed=0)
    return {"bytes": n, "peak_rss_bytes": peak()}


def do_quantize(ckpt: Path, gguf: Path) -> dict:
    import torch

    from edge.model.load import builtin_path
    from edge.stream import StreamConfig, stream_to_gguf

    torch.set_num_threads(2)
    rep = stream_to_gguf(ckpt, gguf, StreamConfig(), tokenizer_gguf=builtin_path("smollm2-135m"),
                         progress=lambda s: print(s, file=sys.stderr, flush=True))
    return rep | {"peak_rss_bytes": peak()}


def do_generate(gguf: Path) -> dict:
    from edge.model.llama_log import load_llama

    t0 = time.time()
    llm = load_llama(gguf, n_ctx=128, n_threads=2)
    load_s = time.time() - t0
    t0 = time.time()
    out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0)
    return {"load_s": round(load_s, 1), "generate_s": round(time.time() - t0, 1),
            "completion_tokens": out["usage"]["completion_tokens"], "text": out["choices"][0]["text"],
            "peak_rss_bytes": peak()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=list(SHAPES), default="8b")
    ap.add_argument("--work", default="/work/bigtmp")
    ap.add_argument("--keep", action="store_true", help="Keep the checkpoint and the GGUF.")
    ap.add_argument("--phase", choices=["write", "quantize", "generate"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    ckpt, gguf = work / f"llama3-{a.shape}-random", work / f"llama3-{a.shape}-random.Q4_0.gguf"
    if a.phase:
        fn = {"write": lambda: do_write(ckpt, a.shape), "quantize": lambda: do_quantize(ckpt, gguf),
              "generate": lambda: do_generate(gguf)}[a.phase]
        print(json.dumps(fn()), flush=True)
        return

    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    dim, nl, nh, nkv, ffn, vocab = SHAPES[a.shape]
    params = 2 * vocab * dim + nl * (dim * (dim + 2 * dim * nkv // nh + dim) + 3 * dim * ffn + 2 * dim) + dim
    need = params * 2 * 1.3 + 2e9
    print(f"{a.shape}: {params / 1e9:.2f}B params, bf16 {params * 2 / 1e9:.1f} GB; {free / 1e9:.0f} GB free on {work}")
    if free < need:
        raise SystemExit(f"need ~{need / 1e9:.0f} GB free on {work} for the checkpoint and the GGUF; "
                         f"have {free / 1e9:.0f} GB: use --shape 3b or --work elsewhere")
    res = {"shape": a.shape, "params": params, "machine": {"cores": len(__import__("os").sched_getaffinity(0)),
                                                           "mem_bytes": _mem_total()}}
    try:
        if not (ckpt / "model.safetensors.index.json").exists():
            res["write"] = phase(["--shape", a.shape, "--work", str(work), "--phase", "write"])
            print(f"checkpoint written: {res['write']['bytes'] / 1e9:.2f} GB in {res['write']['wall_s']} s, "
                  f"peak RSS {res['write']['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        res["bf16_bytes"] = size
        q = phase(["--shape", a.shape, "--work", str(work), "--phase", "quantize"])
        awq = [g for layer in q.pop("layers") for g in layer.get("awq", {}).values()]
        q["awq_mean_loss_reduction"] = round(sum(g["loss_reduction"] for g in awq) / max(len(awq), 1), 4)
        q["awq_mean_alpha"] = round(sum(g["alpha"] for g in awq) / max(len(awq), 1), 3)
        res["quantize"] = q
        ratio = q["peak_rss_bytes"] / size
        print(f"quantize + GGUF: {q['wall_s']} s, peak RSS {q['peak_rss_bytes'] / 2**30:.2f} GiB = {ratio:.1%} of the "
              f"{size / 2**30:.2f} GiB bf16 checkpoint (goal < 25%); GGUF {q['bytes'] / 2**30:.2f} GiB; "
              f"AWQ mean loss reduction {q['awq_mean_loss_reduction']:.2%}", flush=True)
        res["peak_rss_fraction_of_bf16"] = round(ratio, 4)
        res["generate"] = phase(["--shape", a.shape, "--work", str(work), "--phase", "generate"])
        g = res["generate"]
        print(f"llama.cpp: loaded in {g['load_s']} s, {g['completion_tokens']} tokens in {g['generate_s']} s: "
              f"{g['text']!r}, peak RSS {g['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    finally:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"bigmodel_{a.shape}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        if not a.keep:
            shutil.rmtree(ckpt, ignore_errors=True)
            gguf.unlink(missing_ok=True)


def _mem_total() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main()
