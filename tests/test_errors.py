"""The one did-you-mean hint and the one-of check every config error uses."""

from __future__ import annotations

import pytest

from edge.errors import ConfigError, did_you_mean, require_one_of


def test_did_you_mean_names_the_closest_or_nothing():
    assert did_you_mean("q4_O", ["q4_0", "q8_0"]) == " (did you mean 'q4_0'?)"
    assert did_you_mean("decode_toks", {"decode_tok_s": 1, "ttft_s": 2}) == " (did you mean 'decode_tok_s'?)"
    assert did_you_mean(7, [70, 8]) in (" (did you mean '70'?)", " (did you mean '8'?)")
    assert did_you_mean("zzzz", ["q4_0", "q8_0"]) == ""


def test_require_one_of_gives_value_rule_and_allowed_set():
    require_one_of("onnx dtype", "fp16", ("fp32", "fp16"))
    with pytest.raises(ConfigError, match=r"^onnx dtype 'fp61' unknown \(did you mean 'fp16'\?\); allowed: fp32, fp16$"):
        require_one_of("onnx dtype", "fp61", ("fp32", "fp16"))
    with pytest.raises(ConfigError, match=r"^search: prune kind 'zz' unknown; allowed: mlp, attn$"):
        require_one_of("search: prune kind", "zz", iter(["mlp", "attn"]))
