"""The budget-driven search: cost pass on the simulator, measured quality proxy, infeasible budgets."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.errors import BudgetFailed, ConfigError
from edge.search import SearchSpace, auto_build, require_feasible, search

DENSE_8B = "examples/deepseek-8b/dense-8b/config.json"
MOE_8B = "examples/deepseek-8b/moe-8x-top2/config.json"
SMALL = SearchSpace(prune_ratios=(0.0, 0.3), quant=("q8_0", "q4_0"), kv_cache=("fp16",))


def test_cost_only_search_on_a_config_meets_budgets_and_prefers_more_bits():
    res = search(MOE_8B, "snapdragon-8gen2", budgets=["decode_tok_s>=15"], space=SMALL)
    assert not res.quality_measured  # a config.json alone: cost only, and it says so
    c = require_feasible(res)
    assert c.meets_budgets and c.figure("decode_tok_s") >= 15 and c.sim.fits
    # every feasible candidate with less pruning or more bits would have been preferred
    for o in res.feasible():
        assert (o.prune_ratio, o.quant != "q8_0") >= (c.prune_ratio, c.quant != "q8_0")


def test_infeasible_budget_names_the_budget_the_shortfall_and_the_closest_candidate():
    res = search(DENSE_8B, "snapdragon-8gen2", budgets=["decode_tok_s>=15"], space=SMALL)
    assert res.chosen is None
    with pytest.raises(BudgetFailed) as e:
        require_feasible(res)
    msg = str(e.value)
    assert "decode_tok_s>=15 is infeasible" in msg and "closest candidate" in msg
    assert "\n" not in msg


def test_search_rejects_bad_space_and_budget():
    with pytest.raises(ConfigError, match="unknown"):
        SearchSpace(quant=("q3_xx",))
    with pytest.raises(ConfigError, match="must be in"):
        SearchSpace(prune_ratios=(1.5,))
    with pytest.raises(ConfigError, match="NAME OP VALUE"):
        search(MOE_8B, "snapdragon-8gen2", budgets=["fast please"], space=SMALL)


def test_quality_proxy_ranks_q8_above_q4_and_is_cached(tmp_path, monkeypatch, builtin):
    from tests.model.test_hf_cli import make_checkpoint

    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "tiny"
    make_checkpoint(ckpt, builtin)
    space = SearchSpace(prune_ratios=(0.0,), quant=("q8_0", "q4_0"), kv_cache=("fp16",), runtimes=("llama.cpp",))
    res = search(str(ckpt), "snapdragon-8gen2", budgets=["decode_tok_s>=15"], space=space)
    assert res.quality_measured and res.stats["quality_evaluations"] == 2
    by_quant = {c.quant: c for c in res.candidates}
    assert 0 <= by_quant["q8_0"].kld < by_quant["q4_0"].kld
    assert res.chosen.quant == "q8_0"
    assert [c.key for c in res.frontier("decode_tok_s")]  # both ends of the trade-off are on it
    again = search(str(ckpt), "snapdragon-8gen2", budgets=["decode_tok_s>=15"], space=space)
    assert again.stats["quality_evaluations"] == 0 and again.chosen.kld == res.chosen.kld


def test_auto_build_cost_only_writes_recipe_report_and_plot(tmp_path):
    out = tmp_path / "auto"
    summary = auto_build(MOE_8B, "snapdragon-8gen2", out, ["decode_tok_s>=15"], SMALL, progress=None)
    assert summary["chosen"]["measured"] is None and "cost-only" in summary["chosen"]["note"]
    assert (out / "frontier.png").stat().st_size > 10_000
    assert "Cost only" in (out / "report.md").read_text()
    import yaml

    doc = yaml.safe_load((out / "recipe.yaml").read_text())
    assert doc["base"] in ("q8_0", "q4_0") and doc["runtime"]
    from edge.prune import read_build_recipe  # edge build --recipe takes it back

    br = read_build_recipe(str(out / "recipe.yaml"))
    assert (br.quant, br.runtime) == (doc["base"], doc["runtime"])
    assert br.kv_cache == doc["kv_cache"]  # one KV vocabulary from search to build
    assert json.loads((out / "search.json").read_text())["chosen"]["meets_budgets"]


def test_cli_auto_build_infeasible_exits_nonzero_with_one_line(tmp_path):
    res = CliRunner().invoke(main, ["build", "--auto", "--model", DENSE_8B, "--target", "snapdragon-8gen2",
                                    "--budget", "decode_tok_s>=15", "--budget", "peak_memory_bytes<=3GB",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 1
    last = [l for l in res.output.splitlines() if l.startswith("error: ")]
    assert len(last) == 1 and "infeasible" in last[0] and "closest candidate" in last[0]
    assert (tmp_path / "o" / "report.md").exists()  # the report says why, even on failure


def test_quality_cache_key_follows_the_weights_not_the_path_or_size(tmp_path, monkeypatch, builtin):
    """A checkpoint directory edited in place (same path, same file sizes) gets a new quality cache."""
    from safetensors.torch import load_file, save_file

    from edge.search import QualityOracle
    from tests.model.test_hf_cli import make_checkpoint

    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "tiny"
    make_checkpoint(ckpt, builtin)
    before = QualityOracle(str(ckpt), n_tokens=64, window=32, calib_samples=2)
    assert QualityOracle(str(ckpt), n_tokens=64, window=32, calib_samples=2).cache_file == before.cache_file
    st = ckpt / "model.safetensors"
    size = st.stat().st_size
    weights = load_file(st)
    name = next(k for k in sorted(weights) if k.endswith("down_proj.weight"))
    weights[name] = weights[name] + 0.01
    save_file(weights, st, metadata={"format": "pt"})
    assert st.stat().st_size == size
    after = QualityOracle(str(ckpt), n_tokens=64, window=32, calib_samples=2)
    assert after.cache_parts()["model"] != before.cache_parts()["model"]
    assert after.cache_file != before.cache_file
    # the held-out tokens scored are part of it too
    assert QualityOracle(str(ckpt), n_tokens=32, window=32, calib_samples=2).cache_file != after.cache_file


def test_a_ratio_the_model_cannot_take_is_recorded_not_dropped_silently(tmp_path):
    """Removing experts can take at most 66.5% of the 8x top-2 model: ratio 0.8 leaves the search
    space, and search.json and the report say so with the reason."""
    space = SearchSpace(prune_ratios=(0.0, 0.3, 0.8), quant=("q4_0",), kv_cache=("fp16",))
    res = search(MOE_8B, "snapdragon-8gen2", budgets=["decode_tok_s>=15"], space=space)
    assert {c.prune_ratio for c in res.candidates} == {0.0, 0.3}
    (d,) = res.stats["prune_ratios_dropped"]
    assert (d["prune_ratio"], d["kind"]) == (0.8, "experts") and "can take at most" in d["reason"]
    auto_build(MOE_8B, "snapdragon-8gen2", tmp_path, ["decode_tok_s>=15"], space, progress=None)
    assert json.loads((tmp_path / "search.json").read_text())["stats"]["prune_ratios_dropped"][0]["prune_ratio"] == 0.8
    assert "prune ratio 0.8 (experts) left out of the search: ratio=0.8 asks" in (tmp_path / "report.md").read_text()
