"""Simulator vs published device measurements (the ones the profiles' efficiency rows cite).

Each efficiency row fitted to published figures was fitted to one or two of them; the others
here are predictions of models the row never saw. Torch-free; writes
benchmarks/results/sim_vs_published.json::

    python benchmarks/sim_vs_published.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.model.spec import ModelSpec  # noqa: E402
from edge.sim import LLAMACPP_MIXES, Workload, simulate  # noqa: E402


def llama(name, dim, layers, heads, kv, ffn, vocab, tie, head_dim=0):
    return ModelSpec(arch="llama", vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                     ffn_dim=ffn, tie_embeddings=tie, head_dim=head_dim, name=name)


# shapes from the models' public config.json files
LLAMA31_8B = llama("llama3.1-8b", 4096, 32, 32, 8, 14336, 128256, False)
LLAMA32_3B = llama("llama3.2-3b", 3072, 28, 24, 8, 8192, 128256, True)
LLAMA1_7B = llama("llama-7b", 4096, 32, 32, 32, 11008, 32000, False)
QWEN3_06B = llama("qwen3-0.6b", 1024, 28, 16, 8, 3072, 151936, True, head_dim=128)
QWEN3_4B = llama("qwen3-4b", 2560, 36, 32, 8, 9728, 151936, True, head_dim=128)

# (model, target, recipe, runtime, workload, measured decode tok/s, source, used in the fit?)
CASES = [
    (LLAMA31_8B, "raspberry-pi-5", LLAMACPP_MIXES["q4_k_m"], "llama.cpp", Workload(32, 128), 2.17,
     "geerlingguy/ai-benchmarks#7, Ollama llama3.1:8b", True),
    (LLAMA32_3B, "raspberry-pi-5", LLAMACPP_MIXES["q4_k_m"], "llama.cpp", Workload(32, 128), 4.88,
     "geerlingguy/ai-benchmarks#7, Ollama llama3.2:3b", True),
    (QWEN3_06B, "rk3588", "w8a8", "rkllm", Workload(77, 399), 15.59,
     "VenomekPL/RockchipLlama docs/BENCHMARKS.md, RKLLM 1.2.1", True),
    (QWEN3_4B, "rk3588", "w8a8", "rkllm", Workload(77, 399), 3.13,
     "VenomekPL/RockchipLlama docs/BENCHMARKS.md, RKLLM 1.2.1", True),
    (QWEN3_4B, "rk3588", "w8a8", "rkllm", Workload(10, 1000), 4.75,
     "kuneberg/rk_llm_chat PERFORMANCE_RESULTS.md, RKLLM 1.2.1b1, another board", False),
    (LLAMA1_7B, "apple-m2", LLAMACPP_MIXES["q4_0"], "llama.cpp", Workload(1, 128), 21.9,
     "llama.cpp discussion 4167, M2 10-core GPU tg128", True),
]


def main() -> None:
    rows = []
    print(f"{'model':12} {'target':15} {'recipe':16} {'runtime':10} | {'pred':>6} {'meas':>6} {'err':>7} | fitted on it")
    for spec, target, recipe, runtime, wl, measured, source, fitted in CASES:
        r = simulate(spec, recipe, target, runtime=runtime, workload=wl, budgets=[])
        recipe = r.recipe
        err = r.decode_tok_s / measured - 1
        rows.append({"model": spec.name, "target": target, "recipe": recipe, "runtime": runtime,
                     "predicted_decode_tok_s": r.decode_tok_s, "measured_decode_tok_s": measured, "error": err,
                     "binding": r.decode.binding, "source": source, "fitted_on_it": fitted})
        print(f"{spec.name:12} {target:15} {recipe:16} {runtime:10} | {r.decode_tok_s:6.2f} {measured:6.2f} "
              f"{err:+7.1%} | {'yes' if fitted else 'no'}  ({source})")
    out = ROOT / "benchmarks/results/sim_vs_published.json"
    out.write_text(json.dumps(rows, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
