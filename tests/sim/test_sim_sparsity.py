"""N:M (2:4) sparsity in the simulator: a speed-up only on a unit whose profile lists the pattern."""

from __future__ import annotations

import pytest

from edge.errors import ConfigError
from edge.model.spec import ModelSpec
from edge.sim import Workload, load_recipe, simulate
from edge.sim.sparsity import parse_nm
from edge.targets import load_target, parse_profile

SMOL = ModelSpec(arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
                 tie_embeddings=True, rope_theta=1e5, name="smollm2-135m")
LLAMA8B = ModelSpec(arch="llama", vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                    ffn_dim=14336, name="llama-8b")
# what edge.prune writes into a 2:4-pruned model's spec (tests/test_prune.py checks prune() writes it)
TWO_FOUR = (("method", "none"), ("sparsity", "2:4"), ("sparse_tensors", "attn,mlp"))
SPARSE = SMOL.with_(pruning=TWO_FOUR)
WL = Workload(prompt_len=128, gen_len=64)


def sim(spec, recipe, target, runtime=None):
    return simulate(spec, recipe, target, runtime=runtime, workload=WL, budgets=[])


@pytest.mark.parametrize("spec,target,recipe,runtime", [(LLAMA8B, "nvidia-h200", "bf16", "torch-cuda"),
                                                        (SMOL, "jetson-orin-nano", "fp16", "torch-cuda")])
def test_two_four_pruned_spec_is_faster_where_unit_and_runtime_run_it(spec, target, recipe, runtime):
    # (smollm2 on the H200 is bound by per-layer overhead, not by weights: 8B there)
    t = load_target(target)
    assert "2:4" in t.units["gpu"].sparsity and "2:4" in t.runtimes[runtime].sparsity
    dense, sparse = sim(spec, recipe, target, runtime), sim(spec.with_(pruning=TWO_FOUR), recipe, target, runtime)
    assert sparse.decode_tok_s > dense.decode_tok_s * 1.05
    assert sparse.prefill.flops < dense.prefill.flops
    assert sparse.memory["weights"] < dense.memory["weights"]
    # linears: half the values + 2 index bits per kept value; embedding and head stay dense
    lin = ("attn_q", "attn_k", "attn_v", "attn_o", "ffn_gate", "ffn_up", "ffn_down")
    d, s = dense.memory["weights_by_class"], sparse.memory["weights_by_class"]
    for c in lin:
        assert s[c] == pytest.approx(d[c] * 0.5 * (1 + 2 / 16))
    assert s["output"] == d["output"]
    assert any(f"2:4 sparsity: unit gpu and runtime {runtime} run it" in n for n in sparse.notes)


@pytest.mark.parametrize("target,recipe", [("jetson-orin-nano", "q4_0"), ("nvidia-h200", "q4_0"),
                                           ("jetson-orin-nano", "q8_0")])
def test_two_four_is_dense_in_llamacpp_on_a_gpu_with_sparse_tensor_cores(target, recipe):
    # the unit has 2:4 tensor cores, but llama.cpp has no sparse kernels and a GGUF stores the zeros:
    # the same bytes and operations as the dense model
    t = load_target(target)
    assert "2:4" in t.units["gpu"].sparsity and not t.runtimes["llama.cpp"].sparsity
    dense, sparse = sim(SMOL, recipe, target, "llama.cpp"), sim(SPARSE, recipe, target, "llama.cpp")
    assert sparse.decode_tok_s == dense.decode_tok_s and sparse.prefill_tok_s == dense.prefill_tok_s
    assert sparse.memory["weights"] == dense.memory["weights"]
    assert any("counted dense: runtime llama.cpp has no 2:4 kernels" in n for n in sparse.notes)


@pytest.mark.parametrize("target,recipe", [("snapdragon-8gen2", "q4_0"), ("snapdragon-8gen2", "w4a16"),
                                           ("host-x86-2core", "fp32")])
def test_two_four_is_counted_dense_where_the_unit_does_not_list_it(target, recipe):
    dense, sparse = sim(SMOL, recipe, target), sim(SPARSE, recipe, target)
    assert sparse.decode_tok_s == dense.decode_tok_s and sparse.prefill_tok_s == dense.prefill_tok_s
    assert sparse.peak_memory_bytes == dense.peak_memory_bytes
    assert any("counted dense" in n and "does not list 2:4" in n for n in sparse.notes)
    assert not any("sparsity" in n for n in dense.notes)


def test_recipe_sparsity_field(tmp_path):
    f = tmp_path / "q4s.yaml"
    f.write_text('base: q4_0\nsparsity: "2:4"\n')
    r = load_recipe(f)
    assert r.nm_sparsity == "2:4" and r.sparsity == 0
    assert sim(SMOL, r, "jetson-orin-nano").decode_tok_s == sim(SMOL, "q4_0", "jetson-orin-nano").decode_tok_s
    f.write_text('base: fp16\nsparsity: "2:4"\n')
    r = load_recipe(f)
    on = sim(SMOL, r, "jetson-orin-nano", "torch-cuda")
    assert on.decode_tok_s > sim(SMOL, "fp16", "jetson-orin-nano", "torch-cuda").decode_tok_s * 1.05
    f.write_text("base: q4_0\nsparsity: 2:4\n")  # unquoted: YAML 1.1 reads 124
    with pytest.raises(ConfigError, match="quoted"):
        load_recipe(f)
    f.write_text('base: q4_0\nsparsity: "4:2"\n')
    with pytest.raises(ConfigError, match="N:M"):
        load_recipe(f)


def test_profile_sparsity_needs_a_pattern_and_a_source():
    import yaml

    doc = yaml.safe_load(open(load_target("jetson-orin-nano").path))
    doc["units"]["gpu"]["sparsity"] = {"patterns": ["2of4"], "source": "ampere-sparsity"}
    with pytest.raises(ConfigError, match="units.gpu.sparsity.*N:M"):
        parse_profile(doc, "p.yaml")
    doc["units"]["gpu"]["sparsity"] = {"patterns": ["2:4"], "source": "nowhere"}
    with pytest.raises(ConfigError, match="not in the sources table"):
        parse_profile(doc, "p.yaml")
    assert parse_nm(" 2:4 ") == (2, 4)
