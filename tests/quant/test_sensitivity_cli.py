from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.errors import ConfigError
from edge.quant.configs import load_recipe
from edge.quant.sensitivity import assign_mixed, sensitivity
from tests.tinymodels import tiny_model


def test_sensitivity_and_mixed_assignment_meet_budget():
    m = tiny_model(0, n_layers=3)
    toks = np.random.default_rng(0).integers(0, 256, size=(2, 32))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sens = sensitivity(m, toks, formats=("q4_0", "q8_0"))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # weights restored
    assert set(sens.kl) == {"layer.0", "layer.1", "layer.2", "output"}
    for u in sens.kl:
        assert sens.kl[u]["q8_0"] < sens.kl[u]["q4_0"]
    small = sum(sens.params.values()) * 4.5 / 8
    recipe, est = assign_mixed(sens, load_recipe("q4_0"), budget_bytes=small * 1.2)
    assert est["bytes"] <= small * 1.2 and any(f == "q8_0" for f in est["choice"].values())
    assert recipe.format_for("attn_q", 0) == est["choice"]["layer.0"]
    from edge.quant.configs import recipe_from_dict

    assert recipe_from_dict(recipe.to_dict()).to_dict() == recipe.to_dict()  # what the benchmark saves
    with pytest.raises(ConfigError, match="below the smallest assignment"):
        assign_mixed(sens, load_recipe("q4_0"), budget_bytes=small * 0.5)


def test_cli_quantize_bad_recipe_one_line(tmp_path):
    from click.testing import CliRunner

    from edge.cli import main

    res = CliRunner().invoke(main, ["quantize", "--recipe", "q4_O", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and res.output.count("\n") == 1 and "did you mean 'q4_0'" in res.output
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 200)
    res = CliRunner().invoke(main, ["quantize", "--recipe", "q4_0", "--calib", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "not UTF-8" in res.output and res.output.count("\n") == 1
    assert not (tmp_path / "o").exists()
