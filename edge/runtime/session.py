"""Run a device package: ``edge.runtime.load(pkg)`` verifies it and picks the runner from the manifest.

    s = edge.runtime.load("pkg/")                     # refuses a modified package
    s.generate("Hello", max_new_tokens=32)            # -> str
    for piece in s.generate("Hello", stream=True):    # -> text pieces as they come
        print(piece, end="")
    s.logits(s.tokenizer.encode("Hello"))             # (T, vocab) float32
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edge.errors import ConfigError
from edge.model.tokenizer import Tokenizer
from edge.package import read_manifest, verify
from edge.runtime.executorch import PteRunner
from edge.runtime.llamacpp import LlamaCppRunner
from edge.runtime.onnxruntime import OnnxRunner


def artifact_runner(pkg: Path, art: dict, threads: int | None = None, fused_qdq: bool = False):
    """The runner for one manifest artifact (files already verified); ``fused_qdq``: ONNX Runtime's
    host-dependent fused int8 kernels for QDQ graphs (speed benchmarks only, see OnnxRunner)."""
    rt = art["runtime"]
    if rt == "executorch":
        return PteRunner(pkg / art["files"][0])
    if rt == "onnxruntime":
        cos, sin = np.load(pkg / "rope.npy")
        return OnnxRunner(pkg, art["layout"], cos, sin, threads=threads, fused_qdq=fused_qdq)
    if rt == "llama.cpp":
        # the KV cache type the recipe chose (an int8 cache is part of the accuracy the package reports)
        return LlamaCppRunner(pkg / art["files"][0], n_ctx=512, n_threads=threads, kv_type=art.get("kv_cache", "fp16"))
    raise ConfigError(f"artifact runtime '{rt}' unknown; known: executorch, onnxruntime, llama.cpp")


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else nucleus sampling over the softmax at ``temperature``."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
    return int(rng.choice(keep, p=p[keep] / p[keep].sum()))


class Session:
    def __init__(self, pkg: Path, manifest: dict, artifact: dict, runner, tokenizer):
        self.pkg, self.manifest, self.artifact, self.runner, self.tokenizer = pkg, manifest, artifact, runner, tokenizer
        tok = tokenizer
        self.stop = {tok.eos_id} if tok.eos_id is not None else set()
        self.stop |= {i for t, i in tok.special.items() if t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")}

    def logits(self, tokens: list[int]) -> np.ndarray:
        return self.runner.logits(list(tokens))

    def _tokens(self, prompt: str, max_new_tokens: int, temperature: float, top_p: float, chat: bool,
                seed: int) -> Iterator[int]:
        if not 0 < top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
        tok = self.tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
        ids = tok.encode(text)
        rng = np.random.default_rng(seed)

        def pick(lg):
            return sample(lg, temperature, top_p, rng)

        if hasattr(self.runner, "stream"):
            gen = self.runner.stream(ids, max_new_tokens, pick)
        else:  # llama.cpp: greedy only through the Runner protocol
            gen = iter(self.runner.generate(ids, max_new_tokens, self.stop))
        for t in gen:
            if t in self.stop:
                return
            yield t

    def generate(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                 stream: bool = False, chat: bool = True, seed: int = 0):
        """The continuation of ``prompt`` as text, or with ``stream`` an iterator of text pieces."""
        toks = self._tokens(prompt, max_new_tokens, temperature, top_p, chat, seed)
        if not stream:
            return self.tokenizer.decode(list(toks))
        return self._pieces(toks)

    def _pieces(self, toks: Iterator[int]) -> Iterator[str]:
        done: list[int] = []
        shown = ""
        for t in toks:
            done.append(t)
            text = self.tokenizer.decode(done)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield text[len(shown):]
                shown = text
        text = self.tokenizer.decode(done)
        if text != shown:  # it ended inside a multi-byte character: what generate() returns for it
            yield text[len(shown):]


def load(package_dir: str | Path, backend: str | None = None, threads: int | None = None) -> Session:
    """Verify the package's checksums, then open its artifact for ``backend`` (default: the first)."""
    pkg = Path(package_dir)
    m = read_manifest(pkg)
    verify(m, pkg)
    arts = m["artifacts"]
    if backend is not None:
        arts = [a for a in arts if a["runtime"] == backend]
        if not arts:
            raise ConfigError(f"{pkg}: no artifact for backend '{backend}'; it has: "
                              f"{', '.join(a['runtime'] for a in m['artifacts'])}")
    art = arts[0]
    return Session(pkg, m, art, artifact_runner(pkg, art, threads), Tokenizer.from_hf_dir(pkg))
