"""Budget expressions: parsing, units, and clear one-line errors."""

from __future__ import annotations

import pytest

from edge.errors import ConfigError
from edge.sim import parse_budget


@pytest.mark.parametrize("text,name,op,limit", [
    ("decode_tok_s>=15", "decode_tok_s", ">=", 15), ("ttft_s<=0.3", "ttft_s", "<=", 0.3),
    ("latency_s <= 300ms", "latency_s", "<=", 0.3), ("cpu_load<=0.45", "cpu_load", "<=", 0.45),
    ("cpu_load<=45%", "cpu_load", "<=", 0.45), ("peak_memory_bytes<=3e9", "peak_memory_bytes", "<=", 3e9),
    ("peak_memory_bytes<=3GB", "peak_memory_bytes", "<=", 3e9),
])
def test_parse(text, name, op, limit):
    b = parse_budget(text)
    assert (b.name, b.op) == (name, op) and b.limit == pytest.approx(limit)


def test_check_and_margin():
    b = parse_budget("decode_tok_s>=15")
    assert b.check(16) and not b.check(14)
    assert b.margin(30) == pytest.approx(1.0)


@pytest.mark.parametrize("text,match", [
    ("decode_tok_s", "expected NAME OP VALUE"),
    ("decode_toks>=15", "did you mean 'decode_tok_s'"),
    ("decode_tok_s=>15", "did you mean '>='"),
    ("decode_tok_s==15", "operator '==' is not allowed"),
    ("ttft_s<=fast", "is not a number"),
    ("ttft_s<=3GB", "unit 'GB' does not fit ttft_s"),
    ("cpu_load<=45", "fraction in"),
    ("latency_s<=-1", "must be positive"),
])
def test_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_budget(text)
