"""High-level entry points the CLI and users call: evaluate a model on a text, generate text."""

from __future__ import annotations

import time
from pathlib import Path

from edge.errors import ConfigError
from edge.eval import compare, perplexity
from edge.model.load import load_model


def read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{p}: no such text file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from e


def evaluate(model: str, text: str | Path, window: int = 256, max_windows: int | None = None,
             reference: str | None = None, progress: bool = False) -> dict:
    """Perplexity of ``model`` on the text file (and KLD/top-1 against ``reference``), as a dict:
    ``model, params, ppl, nll, tokens, windows, seconds, tokens_per_s`` (+ ``comparison``)."""
    from edge.runtime.eager import TorchRunner

    body = read_text(text)
    lm = load_model(model, progress=progress)
    toks = lm.tokenizer.encode(body)
    if len(toks) < 2:
        raise ConfigError(f"{text}: the text has fewer than 2 tokens; give a longer text")
    runner = TorchRunner(lm.model)
    bar = None
    if progress:
        from tqdm import tqdm

        n = len(toks) if max_windows is None else min(len(toks), window * max_windows)
        bar = tqdm(total=n, unit="tok", desc="eval", leave=False, disable=None)
    t0 = time.perf_counter()
    res = perplexity(runner.logits, toks, window=window, max_windows=max_windows,
                     progress=bar.update if bar else None)
    dt = time.perf_counter() - t0
    if bar:
        bar.close()
    out = {"model": model, "params": lm.model.num_params(), **res.to_dict(), "seconds": dt,
           "tokens_per_s": res.tokens / dt if dt else 0.0, "window": window}
    if reference:
        ref = load_model(reference)
        if ref.spec.vocab_size != lm.spec.vocab_size:
            raise ConfigError(f"--reference {reference} has vocab {ref.spec.vocab_size}, model has "
                              f"{lm.spec.vocab_size}: KL divergence needs the same tokenizer")
        out["comparison"] = compare(TorchRunner(ref.model).logits, runner.logits, toks, window=window,
                                    max_windows=max_windows).to_dict()
    return out


def generate(model: str, prompt: str, max_tokens: int = 64, chat: bool = True, progress: bool = False) -> dict:
    """Greedy generation with the reference torch model: ``{model, prompt, text, tokens, tok_s}``."""
    from edge.runtime.eager import TorchRunner

    lm = load_model(model, progress=progress)
    tok = lm.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
    ids = tok.encode(text)
    t0 = time.perf_counter()
    stop = {tok.eos_id} if tok.eos_id is not None else set()
    stop |= {i for t, i in tok.special.items() if t in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")}
    new = TorchRunner(lm.model).generate(ids, max_tokens, stop=stop)
    dt = time.perf_counter() - t0
    if new and new[-1] in stop:
        new = new[:-1]
    return {"model": model, "prompt": prompt, "text": tok.decode(new), "tokens": new,
            "tok_s": len(new) / dt if dt else 0.0}
