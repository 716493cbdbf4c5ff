"""Budget expressions, one grammar for every command: ``decode_tok_s>=15``, ``ttft_s<=300ms``,
``cpu_load<=45%``, ``peak_memory_bytes<=3GB`` (the simulator's figures, ``BUDGET_FIGURES``) and
``top1>=0.9``, ``kld<=0.05``, ``ppl_change<=2%`` (an artifact's accuracy against its reference,
``ACCURACY_FIGURES``, checked by ``edge validate``). Target profiles list default budgets in it.

    from edge.budgets import parse_budget
    b = parse_budget("latency_s<=0.3")      # Budget(name='latency_s', op='<=', limit=0.3)
    b.check(0.25)                           # True
    parse_budget("top1>=0.9", VALIDATE_FIGURES)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edge.errors import ConfigError, did_you_mean

# figure -> (unit kind for friendly values, what it measures). Budgets can name these.
BUDGET_FIGURES: dict[str, tuple[str, str]] = {
    "prefill_tok_s": ("rate", "prompt tokens per second"),
    "decode_tok_s": ("rate", "generated tokens per second"),
    "ttft_s": ("time", "time to first token, seconds"),
    "decode_latency_s": ("time", "seconds per generated token"),
    "latency_s": ("time", "end-to-end seconds of the workload"),
    "cpu_load": ("fraction", "share of all CPU cores busy while the model runs"),
    "peak_memory_bytes": ("bytes", "weights + KV cache + activations + runtime"),
}
# figure -> (unit kind, what it measures): an artifact against the unquantized reference on held-out text
ACCURACY_FIGURES: dict[str, tuple[str, str]] = {
    "top1": ("fraction", "share of tokens whose most likely next token agrees with the reference"),
    "kld": ("nats", "mean KL divergence from the reference's next-token distribution"),
    "ppl_change": ("change", "relative perplexity change from the reference (0.02 or 2%: 2% worse)"),
}
VALIDATE_FIGURES = {**ACCURACY_FIGURES, **BUDGET_FIGURES}  # what `edge validate` checks
_OPS = ("<=", ">=", "<", ">")
_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*)\s*(<=|>=|=>|=<|<|>|==|=)\s*(\S.*?)\s*$")
_SUFFIX = {
    "time": {"s": 1, "ms": 1e-3, "us": 1e-6},
    "bytes": {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30},
    "fraction": {"%": 1e-2},
    "change": {"%": 1e-2},
    "rate": {},
    "nats": {},
}
_NUMBER = re.compile(r"^([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z%]*)$")


@dataclass(frozen=True)
class Budget:
    name: str
    op: str
    limit: float
    text: str

    def check(self, value: float) -> bool:
        return {"<=": value <= self.limit, ">=": value >= self.limit,
                "<": value < self.limit, ">": value > self.limit}[self.op]

    def margin(self, value: float) -> float:
        """Relative headroom: > 0 passes with that much to spare, < 0 misses by that much."""
        if self.op in (">=", ">"):
            return value / self.limit - 1
        return self.limit / value - 1 if value > 0 else float("inf")


def parse_budget(text: str, figures: Mapping[str, tuple[str, str]] = BUDGET_FIGURES) -> Budget:
    """Parse ``NAME OP VALUE``; NAME one of ``figures``; OP one of <=, >=, <, >; VALUE a number or a
    number with a unit of the figure's kind."""
    m = _EXPR.match(text or "")
    if not m:
        raise ConfigError(f"budget {text!r}: expected NAME OP VALUE, e.g. 'decode_tok_s>=15' or 'ttft_s<=0.3'")
    name, op, raw = m.groups()
    if name not in figures:
        raise ConfigError(f"budget {text!r}: unknown figure '{name}'{did_you_mean(name, figures)}; "
                          f"known: {', '.join(figures)}")
    if op not in _OPS:
        hint = f" (did you mean '{op[::-1]}'?)" if op[::-1] in _OPS else ""
        raise ConfigError(f"budget {text!r}: operator '{op}' is not allowed{hint}; use one of {', '.join(_OPS)}")
    kind = figures[name][0]
    n = _NUMBER.match(raw)
    if not n:
        raise ConfigError(f"budget {text!r}: '{raw}' is not a number (units allowed for {name}: "
                          f"{', '.join(_SUFFIX[kind]) or 'none'})")
    value, unit = float(n.group(1)), n.group(2)
    if unit:
        if unit not in _SUFFIX[kind]:
            raise ConfigError(f"budget {text!r}: unit '{unit}' does not fit {name}; allowed: "
                              f"{', '.join(_SUFFIX[kind]) or 'a plain number'}")
        value *= _SUFFIX[kind][unit]
    if value <= 0 and kind != "change":
        raise ConfigError(f"budget {text!r}: the limit must be positive")
    if kind == "fraction" and value > 1:
        raise ConfigError(f"budget {text!r}: {name} is a fraction in (0, 1]; write 0.45 or 45%")
    return Budget(name, op, value, text.strip())
