"""Budget expressions: ``decode_tok_s>=15``, ``ttft_s<=300ms``, ``cpu_load<=45%``, ``peak_memory_bytes<=3GB``.

    from edge.sim.budgets import parse_budget
    b = parse_budget("latency_s<=0.3")      # Budget(name='latency_s', op='<=', limit=0.3)
    b.check(0.25)                           # True
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from edge.errors import ConfigError

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
_OPS = ("<=", ">=", "<", ">")
_EXPR = re.compile(r"^\s*([A-Za-z_]+)\s*(<=|>=|=>|=<|<|>|==|=)\s*(\S.*?)\s*$")
_SUFFIX = {
    "time": {"s": 1, "ms": 1e-3, "us": 1e-6},
    "bytes": {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30},
    "fraction": {"%": 1e-2},
    "rate": {},
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


def parse_budget(text: str) -> Budget:
    """Parse ``NAME OP VALUE``; OP one of <=, >=, <, >; VALUE a number or a number with a unit."""
    m = _EXPR.match(text or "")
    if not m:
        raise ConfigError(f"budget {text!r}: expected NAME OP VALUE, e.g. 'decode_tok_s>=15' or 'ttft_s<=0.3'")
    name, op, raw = m.groups()
    if name not in BUDGET_FIGURES:
        close = difflib.get_close_matches(name, list(BUDGET_FIGURES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"budget {text!r}: unknown figure '{name}'{hint}; known: {', '.join(BUDGET_FIGURES)}")
    if op not in _OPS:
        hint = f" (did you mean '{op[::-1]}'?)" if op[::-1] in _OPS else ""
        raise ConfigError(f"budget {text!r}: operator '{op}' is not allowed{hint}; use one of {', '.join(_OPS)}")
    kind = BUDGET_FIGURES[name][0]
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
    if value <= 0:
        raise ConfigError(f"budget {text!r}: the limit must be positive")
    if kind == "fraction" and value > 1:
        raise ConfigError(f"budget {text!r}: {name} is a fraction in (0, 1]; write 0.45 or 45%")
    return Budget(name, op, value, text.strip())
