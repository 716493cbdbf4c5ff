"""ONNX Runtime runner for graphs written by ``edge.export.onnx`` (KV cache as inputs/outputs).

The runner owns the cache, (1, n_kv, S, hd) per layer, builds the additive mask and the RoPE
tables for each call, and writes each call's new K/V entries at their slots. A split model runs
its parts in sequence; a fixed-shape graph gets its token chunk padded at the end (the padding's
cache slots lie past the last real position, so no real query ever attends to them).

    r = OnnxRunner("pkg/", layout); r.logits([1, 2, 3]).shape   # (3, vocab)

QDQ int8 graphs (``qdq-w8a8``) run with ONNX Runtime's QDQ fusion off (``REFERENCE_QDQ``): every
QuantizeLinear rounds and saturates exactly, the int8 weights are dequantized once, and the MatMuls
run in float, which is what an NPU accumulating in int32 computes (up to float summation order). The
fused int8 kernels instead depend on the host's instruction set: on x86-64 with AVX2 and no VNNI,
MLAS multiplies uint8 x int8 with VPMADDUBSW, whose adjacent-pair sums saturate at int16, and
codes of 255 x 127 pass it (ONNX Runtime's quantization guide, "When and why do I need to try
U8U8?": https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html). On the
tiny test model's graph that moved each int8 MatMul's output by 4-32% of its range and the logits
by up to 1.41 on an AVX2 EPYC, while the same graph computed exactly on a VNNI host. A
package's accuracy figure must not depend on the machine that measured it, so the reference is the
default; ``fused_qdq=True`` (the host speed benchmarks only, labelled there) keeps the fused kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.errors import ConfigError, ModelLoadError
from edge.runtime.base import decode_stream, greedy_generate

# dtype -> session config entries that give the exact reference semantics (see the module docstring)
REFERENCE_QDQ = {"qdq-w8a8": {"session.disable_quant_qdq": "1"}}


def session_options(ort, layout: dict, threads: int | None = None, fused_qdq: bool = False):
    """ONNX Runtime CPU session options for a graph of ``layout``: the entries the graph needs
    (``layout.session_config``) and, unless ``fused_qdq``, the exact int8 QDQ reference."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    entries = dict(layout.get("session_config", {}))  # what the graph needs of ORT (edge.export.qdq16)
    if not fused_qdq:
        entries |= REFERENCE_QDQ.get(layout.get("dtype"), {})
    for k, v in entries.items():
        opts.add_session_config_entry(k, str(v))
    return opts


class OnnxRunner:
    name = "onnxruntime"

    def __init__(self, root: str | Path, layout: dict, cos: np.ndarray, sin: np.ndarray,
                 threads: int | None = None, providers: list | None = None, fused_qdq: bool = False):
        import onnxruntime as ort

        self.root = Path(root)
        self.layout = layout
        self.S = int(layout["max_seq"])
        self.max_context = self.S
        self.fixed = int(layout.get("fixed_seq") or 0)
        self.float = np.float16 if layout["dtype"] == "fp16" else np.float32
        self.cos, self.sin = cos.astype(self.float), sin.astype(self.float)  # (S, hd)
        self.fused_qdq = fused_qdq
        opts = session_options(ort, layout, threads, fused_qdq)
        self.sessions = []
        for part in layout["parts"]:
            path = self.root / part["file"]
            if not path.exists():
                raise ModelLoadError(f"{path}: ONNX part missing")
            try:
                sess = self._session(ort, path, opts, providers)
            except Exception as e:
                raise ModelLoadError(f"{path}: ONNX Runtime could not load it ({e})") from e
            self.sessions.append((sess, part["layers"]))
        n_kv, hd = layout["n_kv_heads"], layout["head_dim"]
        self.cache = [np.zeros((2, 1, n_kv, self.S, hd), self.float) for _ in range(layout["n_layers"])]
        self.record: list[list[dict]] | None = None  # feeds per part, kept for calibration

    def _session(self, ort, path: Path, opts, providers):
        return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])

    def record_done(self) -> list[list[dict]] | None:
        """Stop recording feeds; returns what was recorded."""
        rec, self.record = self.record, None
        return rec

    def _forward(self, tokens: list[int], start: int) -> np.ndarray:
        n = len(tokens)
        T = self.fixed or n
        if n > T:
            raise ConfigError(f"{n} tokens in one call exceed the graph's fixed length {T}")
        if start + n > self.S:
            raise ConfigError(f"positions {start}..{start + n} pass the cache of {self.S} slots")
        ids = np.zeros((1, T), np.int64)
        ids[0, :n] = tokens
        # (T, S+T): past slots < start, then causal among the new tokens
        mask = np.full((T, self.S + T), self.layout["mask_min"], self.float)
        mask[:, :start] = 0
        mask[:, self.S:][np.tril(np.ones((T, T), bool))] = 0
        pos = np.minimum(np.arange(start, start + T), self.S - 1)  # padding rows: any valid position
        masks = [mask]
        window = int(self.layout.get("sliding_window") or 0)
        if window:  # sliding layers' channel: also hide keys at or before position - window
            keys = np.concatenate([np.arange(self.S), np.arange(start, start + T)])  # slot -> its position
            old = keys[None, :] <= np.arange(start, start + T)[:, None] - window
            masks.append(np.where(old, np.asarray(self.layout["mask_min"], self.float), mask))
        feeds = {"attn_mask": np.stack(masks)[None], "cos": self.cos[pos][None, None], "sin": self.sin[pos][None, None]}
        x = ids
        for pi, (sess, (lo, hi)) in enumerate(self.sessions):
            f = dict(feeds)
            f["input_ids" if lo == 0 else "hidden"] = x
            for j, li in enumerate(range(lo, hi)):
                f[f"past_key_{j}"], f[f"past_value_{j}"] = self.cache[li][0], self.cache[li][1]
            if self.record is not None:
                self.record[pi].append({k: np.array(v, copy=True) for k, v in f.items()})
            outs = sess.run(None, f)
            x = outs[0]
            for j, li in enumerate(range(lo, hi)):
                self.cache[li][0][:, :, start : start + n] = outs[1 + 2 * j][:, :, :n]
                self.cache[li][1][:, :, start : start + n] = outs[2 + 2 * j][:, :, :n]
        return x[0, :n].astype(np.float32)

    def _chunk(self) -> int:
        return self.fixed or self.S

    def prefill(self, tokens: list[int]) -> np.ndarray:
        if len(tokens) > self.S:
            raise ConfigError(f"{len(tokens)} tokens exceed the graph's cache of {self.S}; export with a larger max_seq")
        c = self._chunk()
        return np.concatenate([self._forward(tokens[i : i + c], i) for i in range(0, len(tokens), c)], 0)

    def logits(self, tokens: list[int]) -> np.ndarray:
        return self.prefill(list(tokens))

    def step(self, token: int, pos: int) -> np.ndarray:
        if pos >= self.S:
            raise ConfigError(f"position {pos} is past the cache of {self.S} slots")
        return self._forward([token], pos)[0]

    def stream(self, tokens: list[int], max_new_tokens: int, pick) -> Iterator[int]:
        return decode_stream(self, tokens, max_new_tokens, pick, self.S)

    def generate(self, tokens: list[int], max_new_tokens: int, stop: set[int] | None = None) -> list[int]:
        return greedy_generate(self.stream, tokens, max_new_tokens, stop)
