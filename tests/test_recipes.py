"""One preset table: every preset named anywhere resolves through edge.recipes, every stage's object
is built from its row, an unknown name gets one error listing the known ones, and the KV cache has
one spelling from a recipe file to the simulator."""

from __future__ import annotations

import re

import pytest

from edge.errors import ConfigError
from edge.recipes import FOUR_BIT, KV_CACHE, PRESETS, SEARCHED, kv_cache, preset, writer_options

TABLE = set(PRESETS)
QUANTIZED = [p.name for p in PRESETS.values() if p.quant is not None]


def _profile_presets() -> set[str]:
    """Every preset a target profile names: runtimes' recipes, efficiency rows, defaults."""
    from edge.targets import list_targets, load_target

    out = set()
    for name in list_targets():
        t = load_target(name)
        for rt in t.runtimes.values():
            out |= set(rt.recipes)
        for e in t.efficiency:
            out |= set(e.recipes)
        out |= {k for k in t.defaults.runtime if k != "*"}
        if t.defaults.recipe:
            out.add(t.defaults.recipe)
    return out


def test_every_preset_named_anywhere_is_a_row():
    from click.testing import CliRunner

    from edge import validate
    from edge.cli import main
    from edge.export.check import RECIPE_OPTIONS
    from edge.quant.configs import PRESETS as QUANT
    from edge.search import QUANT_CHOICES, SearchSpace
    from edge.sim.recipes import PRESETS as COST

    assert set(COST) == TABLE and set(QUANT) == set(QUANTIZED)
    for writer, options in RECIPE_OPTIONS.items():
        assert options == writer_options(writer) and set(options) <= TABLE
    assert set(QUANT_CHOICES) == set(SEARCHED) <= TABLE and SearchSpace().quant == SEARCHED
    assert validate.FOUR_BIT is FOUR_BIT and set(FOUR_BIT) <= TABLE
    assert _profile_presets() <= TABLE, _profile_presets() - TABLE
    help_text = CliRunner().invoke(main, ["quantize", "--help"]).output
    named = re.search(r"Preset \(([^)]*)\)", " ".join(help_text.split())).group(1).split(", ")
    assert named == QUANTIZED


@pytest.mark.parametrize("name", sorted(TABLE))
def test_each_stage_builds_its_object_from_the_row(name):
    from edge.quant.configs import PRESETS as QUANT
    from edge.sim.recipes import PRESETS as COST

    row = preset(name)
    cost = COST[name]
    assert {c: cost.weights[c] for c in row.cost} == dict(row.cost)
    assert (cost.activations, cost.kv_cache, dict(cost.more_bits)) == (row.activations, row.kv_cache,
                                                                          dict(row.more_bits))
    if row.quant is not None:
        q = QUANT[name]
        assert dict(q.weights) == dict(row.quant) and q.kv_cache == row.kv_cache and q.method == row.method


def test_w4a16_means_the_same_in_quantize_and_build():
    # the QDQ writer takes the preset as it is: k, v, up, down at int8, the rest int4 g64
    from edge.quant.configs import load_recipe
    from edge.recipes import W4A16_INT8_CLASSES

    w = load_recipe("w4a16").weights
    assert {c for c, f in w.items() if f == "int8"} >= set(W4A16_INT8_CLASSES) | {"output"}
    assert w["attn_q"] == w["attn_o"] == w["ffn_gate"] == "int4_g64"


def _unknown_errors(tmp_path):
    """(what, the error) of every entry point given the unknown preset 'q4_1'."""
    from edge.export.check import check
    from edge.model.spec import ModelSpec
    from edge.prune import read_build_recipe
    from edge.quant.configs import load_recipe as load_quant
    from edge.search import SearchSpace
    from edge.sim.recipes import load_recipe as load_cost
    from edge.targets import load_target

    f = tmp_path / "r.yaml"
    f.write_text("base: q4_1\n")
    spec = ModelSpec(arch="llama", vocab_size=256, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128)
    calls = {
        "preset": lambda: preset("q4_1"),
        "build recipe name": lambda: read_build_recipe("q4_1"),
        "build recipe file": lambda: read_build_recipe(str(f)),
        "search": lambda: SearchSpace(quant=("q4_1",)),
        "simulator": lambda: load_cost("q4_1"),
        "quantize": lambda: load_quant("q4_1"),
        "export check": lambda: check(spec, load_target("snapdragon-8gen2"), "q4_1", "llama.cpp"),
    }
    for what, call in calls.items():
        with pytest.raises(ConfigError) as e:
            call()
        yield what, str(e.value)


def test_an_unknown_preset_is_one_error_listing_the_known_ones(tmp_path):
    for what, msg in _unknown_errors(tmp_path):
        assert "\n" not in msg and "q4_1" in msg, (what, msg)
        assert "did you mean 'q4_0'" in msg or "did you mean 'q4_k_m'" in msg, (what, msg)
        known = QUANTIZED if what == "quantize" else sorted(TABLE - {"bf16"})
        assert all(re.search(rf"\b{re.escape(k)}\b", msg) for k in known), (what, msg)


def test_one_kv_cache_vocabulary(tmp_path):
    from edge.prune import read_build_recipe
    from edge.quant.configs import recipe_from_dict
    from edge.sim.recipes import load_recipe as load_cost

    assert KV_CACHE == ("fp32", "fp16", "bf16", "int8")
    assert (kv_cache("f16"), kv_cache("f32"), kv_cache("int8")) == ("fp16", "fp32", "int8")
    with pytest.raises(ConfigError, match="'q4' is not a KV cache type; one of fp32, fp16, bf16, int8"):
        kv_cache("q4")
    f = tmp_path / "r.yaml"
    for spelled in ("f16", "fp16"):  # llama.cpp's spelling and ours reach every stage as one value
        f.write_text(f"base: q4_0\nkv_cache: {spelled}\n")
        assert read_build_recipe(str(f)).kv_cache == "fp16"
        assert recipe_from_dict({"base": "q4_0", "kv_cache": spelled}).kv_cache == "fp16"
        assert load_cost(f).kv_cache == "fp16"
    for p in PRESETS.values():
        assert p.kv_cache in KV_CACHE
