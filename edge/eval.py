"""Accuracy evaluation over anything that yields logits: perplexity, KL divergence, top-1 agreement.

Scores take a ``logits_fn(tokens) -> (T, vocab) array`` (a runner's ``.logits``), so the torch
model, a GGUF in llama.cpp, a .pte or an .onnx are scored by the same code.

    toks = tokenizer.encode(text)
    perplexity(TorchRunner(model).logits, toks, window=256)       # -> EvalResult
    compare(ref.logits, cand.logits, toks, window=256)            # -> Comparison (KLD, top-1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from edge.errors import ConfigError

LogitsFn = Callable[[list[int]], np.ndarray]


def windows(tokens: list[int], window: int, max_windows: int | None = None) -> Iterator[list[int]]:
    """Non-overlapping windows of ``window`` tokens (the tail shorter than 2 tokens is dropped)."""
    if window < 2:
        raise ConfigError(f"eval window must be at least 2 tokens, got {window}")
    n = 0
    for start in range(0, len(tokens) - 1, window):
        chunk = tokens[start : start + window]
        if len(chunk) < 2 or (max_windows is not None and n >= max_windows):
            return
        n += 1
        yield chunk


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl_divergence(ref_logits, logits):
    """KL(P_ref || P) of next-token distributions, nats, per position: (..., vocab) logits -> (...).

    The one definition every score uses (compare, the search's proxy, pruning's and quantization's
    sensitivity). numpy arrays are scored in float64; torch tensors in their own dtype and device,
    without a copy to numpy, for callers that score large batches many times (a torch tensor has
    ``log_softmax``, an array does not).
    """
    if hasattr(ref_logits, "log_softmax"):
        lp, lq = ref_logits.log_softmax(-1), logits.log_softmax(-1)
        return (lp.exp() * (lp - lq)).sum(-1)
    la, lb = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(la) * (la - lb)).sum(-1)


@dataclass
class EvalResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    windows: int

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(
    logits_fn: LogitsFn, tokens: list[int], window: int = 256, max_windows: int | None = None, progress=None
) -> EvalResult:
    """Perplexity over non-overlapping windows; every token after a window's first is scored."""
    if len(tokens) < 2:
        raise ConfigError(f"perplexity needs at least 2 tokens of text, got {len(tokens)}")
    nll_sum, count, n_win = 0.0, 0, 0
    for chunk in windows(tokens, window, max_windows):
        lp = log_softmax(logits_fn(chunk)[:-1])  # (T-1, V): predictions for chunk[1:]
        tgt = np.asarray(chunk[1:])
        nll_sum -= float(lp[np.arange(len(tgt)), tgt].sum())
        count += len(tgt)
        n_win += 1
        if progress is not None:
            progress(len(chunk))
    nll = nll_sum / count
    return EvalResult(ppl=math.exp(nll), nll=nll, tokens=count, windows=n_win)


@dataclass
class Comparison:
    ref_ppl: float
    ppl: float
    kld_mean: float  # mean KL(P_ref || P) per position, nats
    kld_p99: float
    top1_agreement: float  # fraction of positions whose argmax matches the reference's
    max_abs_logit_diff: float
    tokens: int

    @property
    def ppl_change(self) -> float:
        return self.ppl / self.ref_ppl - 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl_change": self.ppl_change}


def compare(
    ref_fn: LogitsFn, fn: LogitsFn, tokens: list[int], window: int = 256, max_windows: int | None = None
) -> Comparison:
    """KL divergence and top-1 agreement of ``fn``'s next-token distribution against ``ref_fn``'s."""
    klds: list[np.ndarray] = []
    agree = total = 0
    nll_ref = nll = 0.0
    max_diff = 0.0
    for chunk in windows(tokens, window, max_windows):
        a, b = ref_fn(chunk), fn(chunk)
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        klds.append(kl_divergence(a, b))
        la, lb = log_softmax(a), log_softmax(b)
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(chunk)
        tgt = np.asarray(chunk[1:])
        idx = np.arange(len(tgt))
        nll_ref -= float(la[:-1][idx, tgt].sum())
        nll -= float(lb[:-1][idx, tgt].sum())
    if not total:
        raise ConfigError("compare needs at least 2 tokens of text")
    kl = np.concatenate(klds)
    scored = total - len(klds)
    return Comparison(
        ref_ppl=math.exp(nll_ref / scored),
        ppl=math.exp(nll / scored),
        kld_mean=float(kl.mean()),
        kld_p99=float(np.percentile(kl, 99)),
        top1_agreement=agree / total,
        max_abs_logit_diff=max_diff,
        tokens=total,
    )
