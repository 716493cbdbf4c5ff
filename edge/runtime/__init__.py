"""Runners: one protocol to get logits and tokens out of any engine.

A runner has ``logits(tokens) -> np.ndarray (T, vocab)`` (a fresh context each call) and
``generate(tokens, max_new_tokens) -> list[int]`` (greedy). ``edge.eval`` scores any runner.

    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner
"""

from edge.runtime.base import Runner


def load(package_dir, backend=None, threads=None):
    """Open a device package (checksums verified): see edge.runtime.session.load."""
    from edge.runtime.session import load as _load

    return _load(package_dir, backend=backend, threads=threads)


__all__ = ["Runner", "load"]
