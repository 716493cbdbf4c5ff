"""`edge quantize` / quantize_to_dir: the w8a8 preset runs edge.quant.w8a8's scheme and writes its
exact int8 codes, row scales and static activation scales; recipes that ask for the quantize stage's
older SmoothQuant path (a recipe file with smoothquant:, --method rtn) still get it."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from edge.quant.configs import PRESETS, load_recipe, recipe_from_dict
from edge.quantize_dir import uses_w8a8_scheme

CALIB = dict(calib="general:1", n_samples=4, seq_len=32)


def test_which_recipes_take_the_w8a8_scheme(tmp_path):
    assert uses_w8a8_scheme(load_recipe("w8a8"))
    assert uses_w8a8_scheme(recipe_from_dict({"base": "w8a8", "kv_cache": "f16"}, "f"))
    assert not uses_w8a8_scheme(load_recipe("w8a8", method="rtn"))
    assert not uses_w8a8_scheme(load_recipe("w8a8", method="awq"))
    assert not uses_w8a8_scheme(recipe_from_dict({"base": "w8a8", "smoothquant": 0.5}, "f"))
    assert not uses_w8a8_scheme(recipe_from_dict({"base": "w8a8", "layers": {0: "q8_0"}}, "f"))
    assert not any(uses_w8a8_scheme(r) for name, r in PRESETS.items() if name != "w8a8")
    assert PRESETS["w8a8"].sim_preset == "w8a8" and "edge.quant.w8a8" in PRESETS["w8a8"].note


def test_preset_simulator_costing_unchanged():
    """The preset's cost side (simulator preset, the int8 activations a target is checked for) is
    what it was: the scheme changes how the weights are chosen, not what the simulator charges."""
    from edge.export.check import check_recipe
    from edge.sim import load_recipe as load_cost_recipe
    from edge.targets import load_target

    cost = load_cost_recipe(PRESETS["w8a8"].sim_preset)
    assert (cost.activations, cost.kv_cache, cost.weights["ffn_up"]) == ("int8", "int8", "int8_channel")
    assert check_recipe(load_target("horizon-j5"), "w8a8", "horizon-bpu") == "horizon-bpu"


@pytest.fixture
def tiny_source(monkeypatch):
    """quantize_to_dir loads the tiny random model (byte tokenizer); every prepare_w8a8 result is kept."""
    import edge.quant.w8a8 as w8a8
    import edge.quantize_dir
    from tests.tinymodels import tiny_loaded

    lm = tiny_loaded()
    monkeypatch.setattr(edge.quantize_dir, "load_model", lambda name, *a, **k: lm)
    calls = []
    real = w8a8.prepare_w8a8

    def spy(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(w8a8, "prepare_w8a8", spy)
    return lm, calls


def _linear_names(qm):
    from edge.quant.w8a8 import groups_of

    names = {id(m): n.removesuffix(".lin") for n, m in qm.named_modules()}
    return {g: [(names[id(lin)], lin) for lin in lins] for g, lins in groups_of(qm).items()}


@pytest.mark.parametrize("hybrid", ["default", "float1"])
def test_w8a8_writes_the_plans_codes_and_scales(tiny_source, tmp_path, hybrid):
    from edge.quant.w8a8 import DEFAULT
    from edge.quantize_dir import quantize_to_dir

    lm, calls = tiny_source
    w8 = None if hybrid == "default" else dataclasses.replace(DEFAULT, hybrid=1, hybrid_precision="float")
    out = tmp_path / "q"
    rep = quantize_to_dir("tiny", "w8a8", out, w8a8=w8, **CALIB)
    assert sorted(p.name for p in out.iterdir()) == ["act_scales.json", "quant_report.json", "recipe.json",
                                                     "tensors.npz"]
    assert not (tmp_path / "q.tmp").exists()
    assert len(calls) == 1
    qm, plan = calls[0]
    assert plan.config == (w8 or DEFAULT)

    # weights: int8 codes x row scales == the plan's model's weights, bit for bit
    z = np.load(out / "tensors.npz")
    lins = _linear_names(qm)
    assert sum(len(v) for v in lins.values()) == 14
    for pairs in lins.values():
        for name, lin in pairs:
            codes, scales = z[f"{name}.weight.codes"], z[f"{name}.weight.scales"]
            assert codes.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (codes.shape[0], 1)
            assert np.abs(codes).max() <= 127
            assert np.array_equal(codes.astype(np.float32) * scales, lin.weight.detach().numpy()), name
            assert np.array_equal(scales[:, 0], lin.int8_scale.numpy())
            assert not z[f"{name}.weight.zeros"].any()
    # the other tensors are the rewritten (rotated) model's: loading them all gives its logits exactly
    m2 = copy.deepcopy(qm)
    with torch.no_grad():
        for n, p in m2.named_parameters():
            key = n.replace(".lin.", ".")
            if f"{key}.codes" in z.files:
                p.copy_(torch.from_numpy(z[f"{key}.codes"].astype(np.float32) * z[f"{key}.scales"]))
            else:
                p.copy_(torch.from_numpy(z[key]))
        x = torch.tensor([[1, 5, 9, 200, 3, 77]])
        assert torch.equal(m2(x), qm(x))
    assert not np.array_equal(z["embed_tokens.weight"], lm.model.embed_tokens.weight.detach().numpy())  # rotated

    # activations: exactly the plan's static scales, zero points and precisions
    acts = json.loads((out / "act_scales.json").read_text())
    assert set(acts) == set(plan.acts) and len(acts) == 8
    for g, aq in plan.acts.items():
        a = acts[g]
        assert (a["bits"], a["scale"], a["zero_point"], a["signed"]) == (aq.bits, aq.scale, aq.zero_point, aq.signed)
        assert a["precision"] == plan.precision(g) and a["linears"] == [n for n, _ in lins[g]]

    report = json.loads((out / "quant_report.json").read_text())
    summary = json.loads(json.dumps(plan.summary()))
    assert report["scheme"] == "edge.quant.w8a8" and report["precision"] == summary
    assert report["w8a8"] == json.loads(json.dumps(dataclasses.asdict(w8 or DEFAULT)))
    assert 0 < report["precision"]["macs_not_int8"] <= 1
    if hybrid == "default":  # every down input and 6 more of the 8 groups' worst kept at int16
        assert {"layers.0.down", "layers.1.down"} <= set(summary["int16"]) and not summary["float"]
        assert summary["groups"]["int16"] >= 6
    else:  # the down inputs and the one int8 group with the largest output error in float
        assert summary["groups"] == {"int8": 5, "int16": 0, "float": 3}
        assert {"layers.0.down", "layers.1.down"} <= set(summary["float"])
        assert [a["precision"] for a in acts.values()].count("float") == 3
    assert rep["weight_bytes"] == sum(z[k].nbytes for k in z.files if not k.endswith(".zeros"))
    assert json.loads((out / "recipe.json").read_text())["name"] == "w8a8"


@pytest.mark.parametrize("ask", ["smoothquant_file", "method_rtn"])
def test_explicit_requests_take_the_old_smoothquant_path(tiny_source, tmp_path, ask):
    from edge.quantize_dir import quantize_to_dir

    _, calls = tiny_source
    if ask == "smoothquant_file":
        recipe = tmp_path / "sq.yaml"
        recipe.write_text("base: w8a8\nsmoothquant: 0.5\n")
        rep = quantize_to_dir("tiny", str(recipe), tmp_path / "q", **CALIB)
    else:
        rep = quantize_to_dir("tiny", "w8a8", tmp_path / "q", method="rtn", **CALIB)
    assert not calls  # edge.quant.w8a8 never ran
    report = json.loads((tmp_path / "q" / "quant_report.json").read_text())
    assert report["scheme"] == "quantize" and "precision" not in report
    acts = json.loads((tmp_path / "q" / "act_scales.json").read_text())
    assert len(acts) == 14 and "layers.0.self_attn.q_proj" in acts and all(v > 0 for v in acts.values())
    z = np.load(tmp_path / "q" / "tensors.npz")
    assert "layers.0.self_attn.q_proj.weight.codes" in z.files
    if ask == "smoothquant_file":
        assert rep["method"] == "gptq"
        assert report["rescale"][0]["qkv"] == {"alpha": 0.5} and len(report["rescale"]) == 2
    else:
        assert rep["method"] == "rtn" and report["rescale"] == []


def test_cli_w8a8_with_a_target_without_int16(tiny_source, tmp_path):
    """--target horizon-j5 (int8-only BPU): the groups kept above int8 run in float; the CLI says so."""
    from click.testing import CliRunner

    from edge.cli import main

    _, calls = tiny_source
    res = CliRunner().invoke(main, ["quantize", "--model", "tiny", "--recipe", "w8a8", "--out", str(tmp_path / "q"),
                                    "--calib", "general:1", "--n-samples", "4", "--seq-len", "32",
                                    "--target", "horizon-j5"])
    assert res.exit_code == 0, res.output
    assert calls[0][1].config.hybrid_precision == "float"
    assert "edge.quant.w8a8 groups:" in res.output and "0 int16" in res.output
    report = json.loads((tmp_path / "q" / "quant_report.json").read_text())
    assert report["precision"]["groups"]["float"] >= 2
