"""The model commands of the CLI, including bad input: one line, non-zero exit, no traceback."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.model.load import builtin_path


def run(*args):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(res, *needles):
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    lines = [l for l in res.output.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_models_list_and_show():
    res = run("models", "list", "--json")
    assert res.exit_code == 0 and json.loads(res.output)[0]["name"] == "smollm2-135m"
    res = run("models", "show", "smollm2-135m", "--json")
    info = json.loads(res.output)
    assert res.exit_code == 0 and info["params"] == 134_515_008 and info["spec"]["n_layers"] == 30


def test_eval_json_contract(tmp_path, heldout_text):
    text = tmp_path / "t.txt"
    text.write_text(heldout_text[:3000])
    res = run("eval", "--model", "smollm2-135m", "--text", str(text), "--window", "128", "--max-windows", "2",
              "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert {"ppl", "tokens", "model", "params"} <= set(out)
    assert out["tokens"] == 2 * 127 and out["params"] == 134_515_008
    assert 42.0 < out["ppl"] < 63.0  # measured 52.50 on these 254 held-out tokens; 20% either side


def test_generate_answers(tmp_path):
    res = run("generate", "--model", "smollm2-135m", "--prompt", "What is the capital of France?",
              "--max-tokens", "12", "--json")
    assert res.exit_code == 0, res.output
    assert "Paris" in json.loads(res.output)["text"]


@pytest.fixture()
def bad_inputs(tmp_path):
    src = builtin_path("smollm2-135m")
    trunc = tmp_path / "trunc.gguf"
    with open(src, "rb") as f:
        trunc.write_bytes(f.read(5_000_000))
    nodir = tmp_path / "empty_dir"
    nodir.mkdir()
    notgguf = tmp_path / "random.bin"
    notgguf.write_bytes(b"\x00" * 64)
    return {"trunc": trunc, "nodir": nodir, "notgguf": notgguf}


def test_bad_model_arguments_give_one_line(bad_inputs, tmp_path):
    assert_one_line_error(run("models", "show", str(tmp_path / "nope")), "no such file", "built-in")
    assert_one_line_error(run("models", "show", "smollm2-13m"), "did you mean 'smollm2-135m'")
    assert_one_line_error(run("models", "show", str(bad_inputs["nodir"])), "no config.json")
    assert_one_line_error(run("models", "show", str(bad_inputs["trunc"])), "truncated or corrupt")
    assert_one_line_error(run("models", "show", str(bad_inputs["notgguf"])), "not a .gguf")
    text = tmp_path / "t.txt"
    text.write_text("hello world")
    assert_one_line_error(run("eval", "--model", str(bad_inputs["trunc"]), "--text", str(text)), "truncated")
    assert_one_line_error(run("eval", "--model", "smollm2-135m", "--text", str(tmp_path / "missing.txt")),
                          "no such text file")


def test_gguf_of_another_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("x", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert_one_line_error(run("models", "show", str(path)), "'gpt2' is not supported", "llama")


def test_config_only_model_can_be_shown_not_run(tmp_path):
    cfg = {"architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "rope_theta": 500000.0, "max_position_embeddings": 131072}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    res = run("models", "show", str(tmp_path), "--json")
    assert res.exit_code == 0 and json.loads(res.output)["params"] == 8_030_261_248
    text = tmp_path / "t.txt"
    text.write_text("hello world")
    assert_one_line_error(run("eval", "--model", str(tmp_path), "--text", str(text)), "without weights")
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run("models", "show", str(tmp_path)), "not supported", "LlamaForCausalLM")
