"""edge.runtime.load on a built package, edge validate (API and CLI), edge inspect / run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.tinymodels import TOKENS, tiny_loaded


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    from edge.build import BuildConfig, build_package

    cfg = BuildConfig(max_seq=64, calib_samples=8, calib_seq=32, eval_window=32, eval_windows=4)
    return build_package(tiny_loaded(), "horizon-j5", None, tmp_path_factory.mktemp("s") / "pkg", cfg=cfg,
                         progress=lambda s: None)


def test_session_logits_and_generate(pkg):
    import edge.runtime
    from edge.runtime.eager import TorchRunner

    s = edge.runtime.load(pkg)
    ref = TorchRunner(tiny_loaded().model).logits(TOKENS)
    got = s.logits(TOKENS)
    # measured: the w8a8 QDQ graph picks the reference's top-1 on all 12 tokens, max |logit diff| 0.080
    assert got.shape == ref.shape and (got.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(got - ref).max() < 0.1
    text = s.generate("Hello", max_new_tokens=6, chat=False)
    pieces = list(s.generate("Hello", max_new_tokens=6, chat=False, stream=True))
    # the tiny model's byte tokens end inside a multi-byte character ('X' + 5 x U+FFFD): the stream
    # still ends with what generate() returns for them
    assert text and "".join(pieces) == text and len(pieces) >= 2
    a = s.generate("Hi", 6, temperature=0.9, top_p=0.8, chat=False, seed=3)
    assert a == s.generate("Hi", 6, temperature=0.9, top_p=0.8, chat=False, seed=3)


def test_validate_passes_and_fails_on_budgets(pkg, tmp_path):
    from edge.runtime.eager import TorchRunner
    from edge.validate import validate

    ref = TorchRunner(tiny_loaded().model).logits
    # measured on its 128 held-out tokens: KLD 3.4e-5, top-1 0.984
    rep = validate(pkg, budgets=["kld<=4e-5", "top1>=0.95"], reference=ref)
    assert rep.ok, rep.to_dict()
    names = [c.name for c in rep.checks]
    assert "checksums" in names and any("top1" in n for n in names) and any(n.startswith("simulated") for n in names)
    bad = validate(pkg, budgets=["kld<=1e-9", "cpu_load<=0.0001"], reference=ref)
    assert not bad.ok
    junit = bad.to_junit()
    assert "<failure" in junit and 'name="edge validate"' in junit


def test_cli_inspect_run_validate(pkg, tmp_path):
    from click.testing import CliRunner

    from edge.cli import main

    r = CliRunner().invoke(main, ["inspect", str(pkg), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["target"] == "horizon-j5"
    r = CliRunner().invoke(main, ["run", str(pkg), "--prompt", "Hi", "--max-tokens", "3", "--raw"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert r.exit_code != 0 and "no manifest.json" in r.output
    # the tiny model is not loadable by name: validate says so in one line, non-zero exit
    r = CliRunner().invoke(main, ["validate", str(pkg)])
    assert r.exit_code != 0 and "cannot load the reference model 'tiny'" in r.output


def test_sampling_respects_top_p():
    from edge.runtime.session import sample

    rng = np.random.default_rng(0)
    lg = np.array([10.0, 9.0, -5.0, -5.0])
    assert {sample(lg, 1.0, 0.5, rng) for _ in range(20)} == {0}
    assert sample(lg, 0.0, 1.0, rng) == 0
