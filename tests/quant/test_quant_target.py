"""`edge quantize --target`: a recipe the target cannot run is refused before any work, in one line."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.errors import ConfigError
from edge.export.check import check_recipe
from edge.targets import load_target


@pytest.mark.parametrize("recipe,target,runtime,match", [
    ("w4a16", "horizon-j5", "horizon-bpu", "does not run recipe 'w4a16'; it runs: w8a8"),
    ("fp16", "rv1126", "rknn", "does not run recipe 'fp16'"),
])
def test_cli_refuses_a_recipe_the_target_cannot_run(tmp_path, recipe, target, runtime, match):
    out = tmp_path / "q"
    r = CliRunner().invoke(main, ["quantize", "--recipe", recipe, "--target", target, "--runtime", runtime,
                                  "--out", str(out)])
    assert r.exit_code != 0 and match in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()  # nothing half-written


def test_16_bit_activations_on_an_int8_only_npu_name_the_unit_and_dtype():
    j5 = load_target("horizon-j5")
    # a runtime that would take any recipe, on the int8-only BPU
    rt = dataclasses.replace(j5.runtimes["horizon-bpu"], recipes=())
    j5 = dataclasses.replace(j5, runtimes={**j5.runtimes, "horizon-bpu": rt})
    with pytest.raises(ConfigError, match=r"computes with int16 activations, but horizon-j5's bpu .* takes int8"):
        check_recipe(j5, "w4a16", "horizon-bpu")
    assert check_recipe(j5, "w8a8", "horizon-bpu") == "horizon-bpu"
