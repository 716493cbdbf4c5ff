"""ExecuTorch runner for .pte programs written by ``edge.export.executorch``.

The program's ``forward(tokens (1, T), start_pos (1,))`` keeps its KV cache inside: prefill once,
then one token per call, through the program's static T=1 ``decode`` method where it has one
(same cache, faster steps). ``logits`` restarts at position 0 (entries past the new prompt are never
read: the attention kernel is causal from ``start_pos``).

    r = PteRunner("model.pte"); r.logits([1, 2, 3]).shape   # (3, vocab)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.errors import ConfigError, ModelLoadError
from edge.runtime.base import decode_stream, greedy_generate


def load_custom_ops() -> None:
    """Register ExecuTorch's llama custom ops (ATen side for export, kernels for the runtime)."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def load_quantized_kernels() -> None:
    """The 4-bit packed embedding kernel lives in a library ExecuTorch does not load by itself."""
    import ctypes

    import executorch

    lib = Path(list(executorch.__path__)[0]) / "lib" / "libexecutorch_kernels_quantized.so"
    if lib.exists():
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


class PteRunner:
    name = "executorch"

    def __init__(self, path: str | Path, chunk: int | None = None):
        import torch  # noqa: F401  (the runtime's tensors are torch tensors)
        from executorch.runtime import Runtime

        self.path = Path(path)
        if not self.path.exists():
            raise ModelLoadError(f"{self.path}: no such .pte file")
        load_custom_ops()
        load_quantized_kernels()
        try:
            program = Runtime.get().load_program(self.path)
            self.method = program.load_method("forward")
            self.decode = program.load_method("decode") if "decode" in program.method_names else self.method
        except Exception as e:
            raise ModelLoadError(f"{self.path}: ExecuTorch could not load it ({e})") from e

        def const(name, default):
            if name not in program.method_names:
                return default
            return program.load_method(name).execute([])[0]

        self.max_context = int(const("get_max_seq_len", 128))
        self.vocab_size = int(const("get_vocab_size", 0))
        self.chunk = chunk or self.max_context  # prefill tokens per call

    def _forward(self, tokens: list[int], start: int) -> np.ndarray:
        import torch

        method = self.decode if len(tokens) == 1 else self.method
        # leave torch's thread count alone here: changing it around the call halved the full model's
        # decode on the 2-core host (docs/export.md, "Host decode speed")
        out = method.execute([torch.tensor([tokens], dtype=torch.long), torch.tensor([start], dtype=torch.long)])
        return out[0][0].numpy()  # (T, vocab)

    def _check_len(self, n: int) -> None:
        if n > self.max_context:
            raise ConfigError(f"{self.path.name}: {n} tokens exceed the program's context of {self.max_context}; "
                              "export with a larger max_seq or shorten the input")

    def prefill(self, tokens: list[int]) -> np.ndarray:
        """Logits (T, vocab) of ``tokens`` from position 0, in chunks of ``self.chunk``."""
        self._check_len(len(tokens))
        parts = [self._forward(tokens[i : i + self.chunk], i) for i in range(0, len(tokens), self.chunk)]
        return np.concatenate(parts, 0).astype(np.float32, copy=False)

    def logits(self, tokens: list[int]) -> np.ndarray:
        return self.prefill(list(tokens))

    def step(self, token: int, pos: int) -> np.ndarray:
        """Decode one token at ``pos``: next-token logits (vocab,)."""
        self._check_len(pos + 1)
        return self._forward([token], pos)[0]

    def stream(self, tokens: list[int], max_new_tokens: int, pick) -> Iterator[int]:
        return decode_stream(self, tokens, max_new_tokens, pick, self.max_context)

    def generate(self, tokens: list[int], max_new_tokens: int, stop: set[int] | None = None) -> list[int]:
        return greedy_generate(self.stream, tokens, max_new_tokens, stop)
