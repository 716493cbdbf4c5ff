"""Perplexity / KL divergence / top-1 agreement on hand-made logits with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.eval import compare, kl_divergence, perplexity, windows


def uniform(vocab):
    return lambda toks: np.zeros((len(toks), vocab), dtype=np.float32)


def test_uniform_model_has_perplexity_equal_to_vocab():
    res = perplexity(uniform(50), list(range(40)), window=16)
    assert res.ppl == pytest.approx(50.0, rel=1e-9)
    # windows of 16, 16, 8: every token after a window's first is scored
    assert res.windows == 3 and res.tokens == 15 + 15 + 7


def test_confident_correct_model_has_perplexity_near_one():
    seq = [i % 7 for i in range(30)]

    def oracle(toks):
        out = np.full((len(toks), 7), -30.0, dtype=np.float32)
        for i in range(len(toks) - 1):
            out[i, toks[i + 1]] = 30.0
        return out

    assert perplexity(oracle, seq, window=10).ppl == pytest.approx(1.0, abs=1e-6)


def test_compare_identical_is_zero_and_differs_otherwise():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(64, 11)).astype(np.float32)

    def fn(toks):
        return table[: len(toks)]

    toks = [i % 11 for i in range(64)]
    same = compare(fn, fn, toks, window=32)
    assert same.kld_mean == pytest.approx(0.0, abs=1e-12) and same.top1_agreement == 1.0
    assert same.ppl == pytest.approx(same.ref_ppl)

    other = compare(fn, uniform(11), toks, window=32)
    # KL(p || uniform) = log V - H(p) > 0
    rows = table[:32]  # each 32-token window sees the first 32 rows
    lp = rows - np.log(np.exp(rows).sum(-1, keepdims=True))
    expected = float((np.exp(lp) * (lp + math.log(11))).sum(-1).mean())
    assert other.kld_mean == pytest.approx(expected, rel=1e-6)
    assert other.top1_agreement < 0.5


def test_bad_windows_and_short_text_are_config_errors():
    with pytest.raises(ConfigError, match="at least 2"):
        list(windows([1, 2, 3], 1))
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        perplexity(uniform(5), [1], window=8)


def test_kl_divergence_matches_torch_kl_div_for_arrays_and_tensors():
    """The one KL (numpy float64, or a torch tensor's own dtype) against torch's F.kl_div on the same logits."""
    import torch
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 3, (2, 5, 40)), rng.normal(0, 3, (2, 5, 40))
    want = F.kl_div(torch.log_softmax(torch.from_numpy(b), -1), torch.log_softmax(torch.from_numpy(a), -1),
                    reduction="none", log_target=True).sum(-1).numpy()  # KL(P_a || P_b) per position
    got = kl_divergence(a, b)
    assert got.shape == (2, 5) and want.min() > 0.1
    np.testing.assert_allclose(got, want, rtol=1e-12)
    t = kl_divergence(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(kl_divergence(a, a), 0.0, atol=1e-12)
