"""edge build with a recipe file's prune: section: prune -> quantize -> export, on a tiny random GGUF
(2 layers, dim 64, ffn 96, the built-in tokenizer). The package's model.gguf is smaller than the
unpruned build's and llama.cpp (the reference reader) computes the pruned model's logits; bad input in
the section is one line and a non-zero exit, with nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

CFG = dict(max_seq=64, calib_samples=4, calib_seq=32, eval_window=32, eval_windows=2)
PRUNE = "prune:\n  ffn_dim: 64\n  n_heads: 2\n  calib_samples: 4\n  seq_len: 32\n"  # activation importance
TOKENS = [1, 5, 9, 200, 3, 77, 12, 40]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.model.test_gguf import write_tiny_gguf

    src = tmp_path_factory.mktemp("m") / "tiny.gguf"
    write_tiny_gguf(src)
    return src


def build(lm, recipe, out):
    from edge.build import BuildConfig, build_package

    return build_package(lm, "snapdragon-8gen2", str(recipe), out, cfg=BuildConfig(**CFG), progress=lambda s: None)


# measured (llama.cpp, f32 KV cache, against the same pruned model in torch): fp32 max |diff| 1.1e-5,
# corr 1 - 4e-13; q4_0 corr 0.917. Bounds: 20% on the error (fp32 2e-5 for other CPUs' f32 kernels)
@pytest.mark.parametrize("base,max_diff,min_corr", [("fp32", 2e-5, 0.99999), ("q4_0", None, 0.90)])
def test_build_recipe_prunes_then_quantizes_then_exports(tiny, tmp_path, base, max_diff, min_corr):
    from edge.model.load import load_model
    from edge.prune import prune_loaded, read_build_recipe
    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: {base}\n{PRUNE}")
    lm = load_model(str(tiny))
    dense_pkg = build(lm, base, tmp_path / "dense")
    pkg = build(lm, recipe, tmp_path / "pruned")
    m = json.loads((pkg / "manifest.json").read_text())
    spec = m["model"]["spec"]
    assert (spec["ffn_dim"], spec["n_heads"], spec["n_kv_heads"]) == (64, 2, 2) and m["recipe"] == base
    meta = dict(map(tuple, spec["pruning"]))  # the pruning metadata travels into the manifest
    assert meta["ffn_dim_before"] == "96" and meta["importance"] == "activation"
    # the file shrinks by the removed parameters at the format's bytes per weight (the file is mostly
    # the 49152-token embedding, output and vocabulary: those stay)
    removed = int(meta["params_before"]) - int(meta["params_after"])
    assert removed == 2 * (3 * 32 * 64 + 2 * 32 * 64)  # per layer: 32 channels x 3 linears, 2 heads x q, o
    shrunk = (dense_pkg / "model.gguf").stat().st_size - (pkg / "model.gguf").stat().st_size
    assert shrunk == pytest.approx(removed * {"fp32": 4, "q4_0": 18 / 32}[base], rel=0.02)
    # the same recipe, pruned here: llama.cpp on the package's file computes that model
    want = TorchRunner(prune_loaded(lm, read_build_recipe(str(recipe)), progress=lambda s: None).model).logits(TOKENS)
    got = LlamaCppRunner(pkg / "model.gguf", n_ctx=64, n_threads=1, kv_type="f32").logits(TOKENS)
    assert got.shape == want.shape and np.corrcoef(got.ravel(), want.ravel())[0, 1] > min_corr
    if max_diff is not None:
        assert np.abs(got - want).max() < max_diff
    # the manifest scores the package against the model as given (unpruned): half the MLP channels and
    # heads of a random model gone costs KLD 1.354 (fp32) / 1.406 (q4_0), top-1 0.031 / 0.047 measured
    acc = m["artifacts"][0]["accuracy"]
    assert 1.1 < acc["kld_mean"] < 1.7 and acc["top1_agreement"] < 0.1


def test_cli_build_with_prune_recipe(tiny, tmp_path):
    from edge.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"base: fp32\n{PRUNE}")
    r = CliRunner().invoke(main, ["build", "--model", str(tiny), "--target", "snapdragon-8gen2", "--recipe",
                                  str(recipe), "--out", str(tmp_path / "pkg"), "--max-seq", "128"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "pkg" / "manifest.json").read_text())["model"]["spec"]["ffn_dim"] == 64


@pytest.mark.parametrize("text, says", [
    ("base: q4_0\nprune:\n  ratio: 1.5\n", "(0, 1)"),
    ("base: q4_0\nprune:\n  n_layer: 1\n", "unknown keys ['n_layer']"),
    ("base: q4_0\nprune:\n  ffn_dim: 80\n  importance: magnitude\n", "'layers.0.mlp.down_proj.weight' has rows of 80"),
    ("base: q4_0\nprune:\n  n_heads: 3\n", "breaks grouped-query attention"),
    ("base: q4_0\nprune:\n  sparsity: 2:4\n", 'write it quoted: "2:4"'),
    ("base: q4_0\nprune:\n  ratio: lots\n", "ratio: expected a number"),
    ("base: q4_0\nprune: 0.2\n", "prune: expected a mapping"),
    ("base: q4_0\nprune:\n  experts: 2\n", "unknown keys ['experts']"),
    ("base: q4_0\nprune:\n  n_experts: 2\n", "needs a mixture-of-experts model"),
    ("base: q4_0\nweights: {output: q8_0}\nprune:\n  ffn_dim: 64\n", "edge build does not apply"),
    ("base: q9_0\nprune:\n  ffn_dim: 64\n", "base: preset 'q9_0' unknown (did you mean 'q8_0'?); allowed: fp32, fp16"),
])  # fmt: skip
def test_bad_prune_section_is_one_line(tiny, tmp_path, text, says):
    from edge.cli import main

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    r = CliRunner().invoke(main, ["build", "--model", str(tiny), "--target", "snapdragon-8gen2", "--recipe",
                                  str(recipe), "--out", str(tmp_path / "pkg")])
    assert r.exit_code != 0
    assert says in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "pkg").exists()


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch-xnnpack"])
def test_pruned_build_runs_in_onnxruntime_and_executorch(tmp_path, runtime):
    """The pruned shapes (1 of 2 layers, 1 query head per KV group, half the channels) through the ONNX
    and .pte exporters, via edge build; the package's artifact computes the pruned model's logits."""
    from edge.build import BuildConfig, build_package
    from edge.prune import prune_loaded, read_build_recipe
    from edge.runtime.eager import TorchRunner
    from edge.runtime.session import artifact_runner
    from tests.tinymodels import TOKENS, tiny_loaded

    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: fp32\nprune:\n  ffn_dim: 64\n  n_heads: 2\n  n_layers: 1\n  importance: magnitude\n")
    lm = tiny_loaded()
    pkg = build_package(lm, "host-x86-2core", str(recipe), tmp_path / "pkg", runtime=runtime,
                        cfg=BuildConfig(**CFG), progress=lambda s: None)
    m = json.loads((pkg / "manifest.json").read_text())
    (art,) = m["artifacts"]
    assert art["runtime"] == {"onnxruntime": "onnxruntime", "executorch-xnnpack": "executorch"}[runtime]
    spec = m["model"]["spec"]
    assert (spec["n_layers"], spec["n_heads"], spec["n_kv_heads"], spec["ffn_dim"]) == (1, 2, 2, 64)
    want = TorchRunner(prune_loaded(lm, read_build_recipe(str(recipe)), progress=lambda s: None).model).logits(TOKENS)
    got = artifact_runner(pkg, art, threads=1).logits(TOKENS)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_build_recipe_kv_cache_and_runtime_reach_the_package(tiny, tmp_path):
    """A recipe file's kv_cache and runtime (what `edge build --auto` writes) are what the package runs."""
    from edge.model.load import load_model
    from edge.runtime.session import load
    from tests.model.test_gguf import write_tiny_gguf

    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: q8_0\nkv_cache: int8\nruntime: llama.cpp\n")
    with pytest.raises(Exception, match="head_dim is 16; use kv_cache fp16"):  # q8_0 blocks of 32 per head
        build(load_model(str(tiny)), recipe, tmp_path / "hd16")
    assert not (tmp_path / "hd16").exists()
    lm = load_model(str(write_tiny_gguf(tmp_path / "hd32.gguf", heads=2, kv=1)))
    pkg = build(lm, recipe, tmp_path / "kv8")
    m = json.loads((pkg / "manifest.json").read_text())
    art = m["artifacts"][0]
    assert (m["runtime"], art["kv_cache"]) == ("llama.cpp", "int8")
    s = load(pkg)
    assert s.runner.kv_type == "int8"
    f16 = build(lm, "q8_0", tmp_path / "kv16")
    m16 = json.loads((f16 / "manifest.json").read_text())
    assert m16["artifacts"][0]["kv_cache"] == "fp16"
    # the simulator costs the cache the package runs
    assert m["simulated"]["peak_memory_bytes"] < m16["simulated"]["peak_memory_bytes"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: q8_0\nkv_cache: int4\n")
    with pytest.raises(Exception, match="kv_cache: 'int4' is not a KV cache type .*; one of fp32, fp16, bf16, int8"):
        build(lm, bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
