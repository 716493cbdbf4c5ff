"""Runners: one protocol to get logits and tokens out of any engine.

A runner has ``logits(tokens) -> np.ndarray (T, vocab)`` (a fresh context each call) and
``generate(tokens, max_new_tokens) -> list[int]`` (greedy). ``edge.eval`` scores any runner.

    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner
"""

from edge.runtime.base import Runner

__all__ = ["Runner"]
