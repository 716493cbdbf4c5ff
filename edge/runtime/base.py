"""The Runner protocol every engine binding implements."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    name: str
    max_context: int

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Next-token logits at every position of ``tokens``, shape (T, vocab), float32."""
        ...

    def generate(self, tokens: list[int], max_new_tokens: int, stop: set[int] | None = None) -> list[int]:
        """Greedy continuation of ``tokens`` (new tokens only), stopping early on a ``stop`` id."""
        ...


def greedy_generate(stream, tokens: list[int], max_new_tokens: int, stop: set[int] | None = None) -> list[int]:
    """Greedy continuation from a runner's ``stream(tokens, max_new_tokens, pick)``, stopping on ``stop``."""
    out: list[int] = []
    for t in stream(tokens, max_new_tokens, lambda lg: int(np.argmax(lg))):
        out.append(t)
        if stop and t in stop:
            break
    return out


def decode_stream(runner, tokens: list[int], max_new_tokens: int, pick: Callable[[np.ndarray], int],
                  context: int) -> Iterator[int]:
    """Tokens one at a time from a runner with a KV cache of ``context`` positions: ``runner.prefill``
    (logits (T, vocab) from position 0), then ``runner.step(token, pos)`` (logits (vocab,)); ``pick``
    chooses each token from the last logits. Stops after ``max_new_tokens`` or when the cache is full."""
    last = runner.prefill(list(tokens))[-1]
    pos = len(tokens)
    for _ in range(max_new_tokens):
        nxt = pick(last)
        yield nxt
        if pos >= context:
            return
        last = runner.step(nxt, pos)
        pos += 1
