"""llama.cpp (llama-cpp-python) runner for GGUF files."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np

from edge.errors import ModelLoadError
from edge.model.llama_log import llama_log, load_llama, log_reason

# llama.cpp's KV cache element types (ggml_type ids); "f32" makes logits comparable to the torch
# reference to ~1e-5, the default f16 cache differs by ~3e-2.
# A recipe's int8 KV cache is llama.cpp's q8_0 (blocks of 32 int8 with an f16 scale), which needs
# flash attention for the V cache.
# edge's KV cache types (edge.recipes.KV_CACHE) -> llama.cpp's ggml type ids; its own names read too
KV_TYPES = {"fp32": 0, "fp16": 1, "int8": 8, "f32": 0, "f16": 1, "q8_0": 8}
QUANTIZED_KV = ("q8_0", "int8")


class LlamaCppRunner:
    """A GGUF in llama.cpp: full logits per call (fresh context), greedy generation."""

    name = "llama.cpp"

    def __init__(self, path: str | Path, n_ctx: int = 2048, n_threads: int | None = None, n_batch: int = 512,
                 kv_type: str = "fp16"):
        self.path = Path(path)
        if not self.path.exists():
            raise ModelLoadError(f"{self.path}: no such GGUF file")
        if kv_type not in KV_TYPES:
            raise ModelLoadError(f"{self.path}: KV cache type '{kv_type}' unknown; llama.cpp takes {', '.join(KV_TYPES)}")
        self.llm = load_llama(
            self.path, "load it", n_ctx=n_ctx, n_batch=min(n_batch, n_ctx), n_ubatch=min(n_batch, n_ctx),
            n_threads=n_threads, logits_all=True, seed=0,
            type_k=KV_TYPES[kv_type], type_v=KV_TYPES[kv_type], flash_attn=kv_type in QUANTIZED_KV,
        )
        self.max_context = n_ctx
        self.kv_type = kv_type

    def logits(self, tokens: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(tokens))
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32)

    def generate(self, tokens: list[int], max_new_tokens: int, stop: set[int] | None = None) -> list[int]:
        self.llm.reset()
        out: list[int] = []
        self.llm.eval(list(tokens))
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(nxt)
            if stop and nxt in stop:
                break
            self.llm.eval([nxt])
        return out


@contextlib.contextmanager
def quiet_stderr():
    """Silence C-level writes to stderr (llama.cpp logs through fd 2, not through Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def convert_gguf(src: str | Path, dst: str | Path, ftype: str = "F32") -> Path:
    """Re-type a GGUF with llama.cpp's own quantizer (e.g. the built-in Q4_1 -> F32 reference)."""
    import llama_cpp

    ftypes = {
        "F32": llama_cpp.LLAMA_FTYPE_ALL_F32,
        "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
        "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    }
    if ftype not in ftypes:
        raise ModelLoadError(f"GGUF type {ftype!r} unknown; known: {', '.join(ftypes)}")
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[ftype]
    params.allow_requantize = True
    log: list[tuple[int, str]] = []
    with quiet_stderr(), llama_log(log):  # a line per tensor: kept, not printed
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
    if rc != 0:
        tmp.unlink(missing_ok=True)
        why = log_reason(log) or "llama.cpp logged no reason"
        raise ModelLoadError(f"{src}: llama.cpp could not convert it to {ftype} (code {rc}): {why}")
    tmp.replace(dst)
    return dst
