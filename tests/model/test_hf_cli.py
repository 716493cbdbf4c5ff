"""A Hugging Face checkpoint directory end to end through the CLI: config.json + safetensors +
tokenizer.json, loaded by `load_model`, evaluated and generated from, logits equal to transformers'."""

from __future__ import annotations

import json

import numpy as np
import torch
import transformers
from click.testing import CliRunner

from edge.cli import main
from edge.model.load import load_model, load_spec
from edge.runtime.eager import TorchRunner


def make_checkpoint(path, builtin):
    cfg = transformers.LlamaConfig(vocab_size=builtin.spec.vocab_size, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, tie_word_embeddings=True,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(path)
    builtin.tokenizer.backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
        "chat_template": builtin.tokenizer.chat_template}))
    return hf


def test_hf_directory_through_load_model_and_cli(tmp_path, builtin, heldout_text):
    ckpt = tmp_path / "tiny-llama"
    hf = make_checkpoint(ckpt, builtin)
    lm = load_model(ckpt)
    assert lm.source.kind == "hf" and load_spec(ckpt) == lm.spec
    text = heldout_text[:600]
    ids = lm.tokenizer.encode(text)
    assert ids == builtin.tokenizer.encode(text)  # tokenizer.json round trip
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(TorchRunner(lm.model).logits(ids) - ref).max() < 1e-4

    (tmp_path / "t.txt").write_text(text)
    res = CliRunner().invoke(main, ["eval", "--model", str(ckpt), "--text", str(tmp_path / "t.txt"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["params"] == lm.spec.param_count() and out["tokens"] == len(ids) - 1
    res = CliRunner().invoke(main, ["generate", "--model", str(ckpt), "--prompt", "hi", "--max-tokens", "5",
                                    "--json"])
    assert res.exit_code == 0, res.output
    assert 1 <= len(json.loads(res.output)["tokens"]) <= 5
