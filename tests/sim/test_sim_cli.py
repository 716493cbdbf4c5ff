"""`edge targets ...` and `edge simulate` through click's CliRunner: exit codes and the JSON contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import main

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "tie_word_embeddings": True,
    "rope_theta": 100000.0, "max_position_embeddings": 8192,
}


@pytest.fixture()
def config(tmp_path: Path) -> str:
    p = tmp_path / "smol" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(CONFIG))
    return str(p)


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_targets_list_and_show():
    r = run("targets", "list", "--json")
    assert r.exit_code == 0
    assert "rv1126" in [t["name"] for t in json.loads(r.output)]
    r = run("targets", "show", "snapdragon-8gen2")
    assert r.exit_code == 0 and "memory.peak_bandwidth" in r.output and "lpddr-derived" in r.output


def test_unknown_target_is_one_line():
    r = run("targets", "show", "rv1162")
    assert r.exit_code == 2
    assert "did you mean 'rv1126'" in r.output and "Traceback" not in r.output


def test_simulate_json_contract(config):
    r = run("simulate", "--model", config, "--target", "snapdragon-8gen2", "--recipe", "w4a16",
            "--budget", "decode_tok_s>=15", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    for k in ("prefill_tok_s", "decode_tok_s", "ttft_s", "latency_s", "peak_memory_bytes", "fits", "cpu_load",
              "budgets"):
        assert k in d
    b = d["budgets"][0]
    assert set(b) >= {"name", "limit", "value", "ok", "binding"} and b["ok"] is True


def test_failing_budget_exits_1(config):
    r = run("simulate", "--model", config, "--target", "rv1126", "--budget", "decode_tok_s>=1000")
    assert r.exit_code == 1
    assert "FAIL" in r.output and "binds: decode: bandwidth" in r.output


def test_defaults_from_the_target(config):
    r = run("simulate", "--model", config, "--target", "horizon-j5", "--json")
    d = json.loads(r.output)
    assert d["runtime"] == "horizon-bpu" and d["budgets"][0]["name"] == "cpu_load<=0.45"


def test_model_that_does_not_fit_is_a_verdict(tmp_path):
    cfg = dict(CONFIG, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False)
    p = tmp_path / "big" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(cfg))
    r = run("simulate", "--model", str(p), "--target", "rv1126", "--json")
    assert r.exit_code == 1
    assert json.loads(r.output.split("\nerror:")[0])["fits"] is False


def test_malformed_budget_is_one_line(config):
    r = run("simulate", "--model", config, "--target", "rv1126", "--budget", "latency<0.3")
    assert r.exit_code == 2 and "did you mean 'latency_s'" in r.output


def test_unknown_runtime(config):
    r = run("simulate", "--model", config, "--target", "rv1126", "--runtime", "rkllm")
    assert r.exit_code == 2 and "no runtime 'rkllm'" in r.output
