from __future__ import annotations

import json

import pytest

from edge.errors import ConfigError
from edge.model.spec import ModelSpec
from edge.quant.configs import PRESETS, load_recipe, save_recipe

SPEC = ModelSpec(arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
                 tie_embeddings=True)


def test_presets_cover_the_simulator_names():
    for name in ("q8_0", "q4_0", "q4_k_m", "w4a16", "w8a8", "8da4w"):
        assert PRESETS[name].sim_preset == name
    assert PRESETS["q4_0"].method == "gptq"  # best calibrated by default
    assert load_recipe("q4_0", method="rtn").method == "rtn"


def test_bits_per_weight_and_bytes():
    r = PRESETS["q4_0"]
    bpw = r.bits_per_weight(SPEC)
    assert bpw["attn_q"] == 4.5 and bpw["embedding"] == 8.5  # tied: the output's format
    assert abs(r.weight_bytes(SPEC) / 1e6 - 89.94) < 0.05


def test_recipe_file_roundtrip(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: q4_0\nmethod: awq\nweights: {output: q5_0}\nlayers: {0: q8_0}\ntensors: {'3.attn_v': q8_0}\n"
                 "gptq: {damp: 0.02}\n")
    r = load_recipe(p)
    assert (r.name, r.method, r.weights["output"], r.gptq.damp) == ("mine", "awq", "q5_0", 0.02)
    assert r.format_for("attn_q", 0) == "q8_0" and r.format_for("attn_v", 3) == "q8_0"
    assert r.format_for("attn_v", 4) == "q4_0"
    again = load_recipe(save_recipe(r, tmp_path / "again.json"))
    assert json.loads(again.to_json()) | {"name": ""} == json.loads(r.to_json()) | {"name": ""}


@pytest.mark.parametrize("text,match", [
    ("base: q4_0\nweights: {linear: q3_0}\n", r"unknown weight format 'q3_0'.*allowed: f32"),
    ("base: q4_0\nmethod: gtpq\n", r"method 'gtpq' \(did you mean 'gptq'\?\)"),
    ("base: q9\n", r"no preset 'q9'"),
    ("base: q4_0\nbits: 4\n", r"bits: unknown key"),
    ("base: q4_0\ntensors: {attn_v: q8_0}\n", r"LAYER.CLASS"),
    ("base: q4_0\ngptq: {damp: 2}\n", r"gptq.damp must be in"),
])
def test_bad_recipe_files_one_line(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_recipe(p)
    assert "\n" not in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="did you mean 'q4_0'"):
        load_recipe("q4_O")
