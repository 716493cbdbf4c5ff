"""Budget expressions (edge.budgets): parsing, units, and clear one-line errors."""

from __future__ import annotations

import pytest

from edge.budgets import ACCURACY_FIGURES, BUDGET_FIGURES, VALIDATE_FIGURES, parse_budget
from edge.errors import ConfigError


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


@pytest.mark.parametrize("text,name,op,limit", [
    ("top1>=0.9", "top1", ">=", 0.9), ("top1>=90%", "top1", ">=", 0.9), ("kld<=0.05", "kld", "<=", 0.05),
    ("ppl_change<=2%", "ppl_change", "<=", 0.02), ("ppl_change<=-0.01", "ppl_change", "<=", -0.01),
    ("decode_tok_s>=15", "decode_tok_s", ">=", 15),
])
def test_parse_validate_figures(text, name, op, limit):
    """`edge validate` reads accuracy and simulator budgets with the same grammar."""
    b = parse_budget(text, VALIDATE_FIGURES)
    assert (b.name, b.op) == (name, op) and b.limit == pytest.approx(limit)


@pytest.mark.parametrize("text,figures,match", [
    ("top1>=0.9", BUDGET_FIGURES, r"unknown figure 'top1'; known: prefill_tok_s, decode_tok_s"),
    ("top_1>=0.9", VALIDATE_FIGURES, r"unknown figure 'top_1' \(did you mean 'top1'\?\); known: top1, kld"),
    ("top1>=1.5", ACCURACY_FIGURES, r"top1 is a fraction in \(0, 1\]"),
    ("kld<=0", ACCURACY_FIGURES, "must be positive"),
    ("kld<=5%", ACCURACY_FIGURES, "unit '%' does not fit kld; allowed: a plain number"),
])
def test_figure_set_errors(text, figures, match):
    """A budget names a figure of the command's set; the error gives the value, the rule and the set."""
    with pytest.raises(ConfigError, match=match):
        parse_budget(text, figures)
