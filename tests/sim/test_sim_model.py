"""Simulator arithmetic: the roofline behaves as physics says, on hand-checkable cases."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from edge.errors import ConfigError
from edge.model.spec import ModelSpec
from edge.sim import (
    LLAMACPP_MIXES,
    PRESETS,
    QUANT_TYPES,
    Workload,
    expected_distinct_experts,
    load_recipe,
    simulate,
)
from edge.sim.model import weight_bytes
from edge.targets import load_target

SMOL = ModelSpec(arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536,
                 tie_embeddings=True, rope_theta=1e5, name="smollm2-135m")
LLAMA8B = ModelSpec(arch="llama", vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                    ffn_dim=14336, name="llama-8b")
WL = Workload(prompt_len=128, gen_len=64)


def test_simulator_imports_no_torch():
    code = ("import sys; import edge.sim, edge.targets, edge.cli; from edge.sim import simulate; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_quant_table_bits():
    assert QUANT_TYPES["q4_0"].bits_per_weight == 4.5
    assert QUANT_TYPES["q8_0"].bits_per_weight == 8.5
    assert QUANT_TYPES["q6_k"].bits_per_weight == pytest.approx(6.5625)
    assert set(PRESETS) >= {"fp32", "fp16", "bf16", "q8_0", "q4_0", "q4_k_m", "w4a16", "w8a8", "8da4w"}


def test_weight_bytes_match_llamacpp_files():
    # llama.cpp's files of the built-in model: 539.8 / 144.8 / 91.7 / 105.5 MB incl. ~1.7 MB metadata
    # (llama-quantize's own mixes; edge's presets cost what edge writes, tested below)
    for recipe, mb in (("fp32", 539.8), ("q8_0", 144.8), (LLAMACPP_MIXES["q4_0"], 91.7), (LLAMACPP_MIXES["q4_k_m"], 105.5)):
        got = sum(weight_bytes(SMOL, load_recipe(recipe)).values()) / 1e6
        assert got == pytest.approx(mb - 1.7, rel=0.01), recipe


def test_llamacpp_q4_k_m_averages_about_4_85_bits_on_llama_8b():
    bits = 8 * sum(weight_bytes(LLAMA8B, LLAMACPP_MIXES["q4_k_m"]).values()) / LLAMA8B.param_count()
    assert 4.7 < bits < 5.0


@pytest.mark.parametrize("spec", [SMOL, LLAMA8B])
@pytest.mark.parametrize("preset", ["q8_0", "q4_0", "q4_k_m"])
def test_gguf_presets_cost_what_edge_writes(spec, preset):
    # edge's quantization recipe says which GGML type each tensor gets; the cost preset of the same
    # name must give the same bytes (q4_k_m is written as q5_0/q8_0: no k-quant packing).
    from edge.quant.configs import load_recipe as load_quant_recipe

    written = load_quant_recipe(preset).weight_bytes(spec)
    costed = sum(weight_bytes(spec, load_recipe(preset)).values())
    assert costed == pytest.approx(written, rel=1e-3)


def test_decode_scales_with_bandwidth():
    t = load_target("raspberry-pi-5")
    fast = dataclasses.replace(t, memory=dataclasses.replace(t.memory, peak_bandwidth=2 * t.memory.peak_bandwidth))
    a = simulate(LLAMA8B, "q4_0", t, workload=WL, budgets=[])
    b = simulate(LLAMA8B, "q4_0", fast, workload=WL, budgets=[])
    assert a.decode.binding == "bandwidth"
    # bandwidth-bound: twice the bandwidth, nearly twice the tokens/s (fixed per-layer cost aside)
    assert 1.8 < b.decode_tok_s / a.decode_tok_s <= 2.0


def test_prefill_is_compute_bound_and_decode_bandwidth_bound():
    r = simulate(LLAMA8B, "w4a16", "snapdragon-8gen2", workload=WL, budgets=[])
    assert r.prefill.binding == "compute"
    assert r.decode.binding == "bandwidth"
    assert r.ttft_s == pytest.approx(WL.prompt_len / r.prefill_tok_s)
    assert r.latency_s == pytest.approx(r.ttft_s + (WL.gen_len - 1) / r.decode_tok_s)


def _moe(total_like_dense: ModelSpec, experts=8, k=2) -> ModelSpec:
    # same total parameters as the dense model: split its FFN into `experts` experts
    return total_like_dense.with_(n_experts=experts, n_experts_per_tok=k,
                                  moe_ffn_dim=total_like_dense.ffn_dim // experts, name="moe")


def test_moe_reads_fewer_bytes_than_dense_of_same_total():
    moe = _moe(LLAMA8B)
    assert moe.param_count() == pytest.approx(LLAMA8B.param_count(), rel=0.01)
    d = simulate(LLAMA8B, "q4_0", "raspberry-pi-5", workload=WL, budgets=[])
    m = simulate(moe, "q4_0", "raspberry-pi-5", workload=WL, budgets=[])
    assert m.decode.bytes < 0.6 * d.decode.bytes
    assert m.decode_tok_s > 1.5 * d.decode_tok_s
    assert m.memory["weights"] == pytest.approx(d.memory["weights"], rel=0.01)  # all experts stay resident
    assert m.moe["distinct_experts_per_decode_step"] == pytest.approx(2.0)


def test_expected_distinct_experts_with_batch():
    assert expected_distinct_experts(8, 2, 1) == pytest.approx(2)
    assert expected_distinct_experts(8, 2, 4) == pytest.approx(8 * (1 - 0.75**4))
    assert expected_distinct_experts(8, 2, 1000) == pytest.approx(8)
    moe = _moe(LLAMA8B)
    b1 = simulate(moe, "q4_0", "raspberry-pi-5", workload=WL, budgets=[])
    b4 = simulate(moe, "q4_0", "raspberry-pi-5", workload=dataclasses.replace(WL, batch=4), budgets=[])
    assert b4.moe["distinct_experts_per_decode_step"] == pytest.approx(8 * (1 - 0.75**4))
    assert b4.decode.bytes > b1.decode.bytes


def test_int8_kv_halves_kv_memory():
    wl = Workload(prompt_len=128, gen_len=64, context=8192)
    fp16 = simulate(LLAMA8B, "q4_0", "apple-m2", workload=wl, budgets=[])
    int8 = simulate(LLAMA8B, dataclasses.replace(load_recipe("q4_0"), kv_cache="int8"), "apple-m2", workload=wl,
                    budgets=[])
    assert int8.memory["kv_cache"] == pytest.approx(fp16.memory["kv_cache"] / 2)
    assert fp16.memory["kv_cache"] == pytest.approx(LLAMA8B.kv_cache_bytes(8192, 2.0))


def test_kv_and_attention_grow_with_context():
    short = simulate(LLAMA8B, "q4_0", "apple-m2", workload=Workload(128, 64), budgets=[])
    long = simulate(LLAMA8B, "q4_0", "apple-m2", workload=Workload(8000, 64), budgets=[])
    assert long.decode.bytes > short.decode.bytes
    assert long.decode.flops > short.decode.flops
    assert long.decode_tok_s < short.decode_tok_s


def test_model_that_does_not_fit_is_a_verdict():
    r = simulate(LLAMA8B, "w8a8", "rv1126", budgets=None)
    assert r.fits is False and r.fit_binding == "memory capacity"
    assert r.largest_params < 2e9 and r.decode_tok_s > 0
    assert any("needs" in n for n in r.notes)


def test_graph_size_limit_splits():
    r = simulate(LLAMA8B, "w4a16", "snapdragon-8gen2", workload=WL, budgets=[])
    assert r.graph_splits >= 3


def test_npu_runtime_loads_the_cpu_less_than_a_cpu_runtime():
    npu = simulate(SMOL, "w8a8", "horizon-j5", workload=WL, budgets=[])
    cpu = simulate(SMOL, "q4_0", "horizon-j5", workload=WL, budgets=[])
    assert npu.placement["decoder"] == "bpu" and npu.placement["softmax"] == "cpu"
    assert cpu.cpu_load == pytest.approx(1.0)
    assert 0 < npu.cpu_load < cpu.cpu_load


def test_workload_validation():
    with pytest.raises(ConfigError, match="context 100 is shorter"):
        Workload(prompt_len=128, gen_len=64, context=100)


def test_recipe_file_and_errors(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: q4_0\nweights: {output: q8_0}\nkv_cache: int8\n")
    r = load_recipe(p)
    assert r.preset == "q4_0" and r.kv_cache == "int8" and r.weights["output"] == "q8_0"
    p.write_text("base: q4_0\nkv_cahce: int8\n")
    with pytest.raises(ConfigError, match="did you mean 'kv_cache'"):
        load_recipe(p)
    with pytest.raises(ConfigError, match="did you mean 'q4_0'"):
        load_recipe("q4_o")


def _with_row(tmp_path, name: str, **fields) -> str:
    """A copy of a shipped profile whose efficiency rows get ``fields`` (written as YAML)."""
    import yaml

    doc = yaml.safe_load(load_target_path(name).read_text())
    for row in doc["efficiency"]:
        row.update(fields)
    p = tmp_path / f"{name}-edited-{len(list(tmp_path.iterdir()))}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def load_target_path(name: str):
    from edge.targets import TARGETS_DIR

    return TARGETS_DIR / f"{name}.yaml"


def test_attention_rate_is_apart_from_the_matmuls(tmp_path):
    """A row that measures attention apart charges its float flops at their own (lower) rate after the
    weight stream: the decode step grows with context by exactly attention flops / rate."""
    slow = _with_row(tmp_path, "apple-m2", attention_compute=0.01, prefill_attention_compute=0.05)
    wl_s, wl_l = Workload(128, 2, context=4096), Workload(3000, 2, context=4096)
    base_s = simulate(LLAMA8B, "q4_0", "apple-m2", workload=wl_s, budgets=[])
    base_l = simulate(LLAMA8B, "q4_0", "apple-m2", workload=wl_l, budgets=[])
    s = simulate(LLAMA8B, "q4_0", slow, workload=wl_s, budgets=[])
    ll = simulate(LLAMA8B, "q4_0", slow, workload=wl_l, budgets=[])
    assert ll.decode.times["attention"] > s.decode.times["attention"] > 0
    assert "attention" not in base_l.decode.times
    t = load_target(slow)
    rt = t.runtime_for("q4_0")
    row, peaks = t.efficiency_for(rt.name, "q4_0"), t.units[rt.unit].peak
    peak = peaks[row.compute_dtype] if row.compute_dtype in ("fp32", "fp16", "bf16") else peaks.get("fp32", peaks.get("fp16"))
    att_flops = 4 * LLAMA8B.q_dim * LLAMA8B.n_layers * (3000 - 128)  # extra positions attended per step
    extra = ll.decode.times["attention"] - s.decode.times["attention"]
    assert extra == pytest.approx(att_flops / (peak * 0.01), rel=0.02)
    assert ll.decode.seconds - s.decode.seconds >= extra  # plus the longer KV read
    # the slow attention costs more the longer the context; without the row it hides under the stream
    assert (base_s.decode_tok_s / s.decode_tok_s) < (base_l.decode_tok_s / ll.decode_tok_s)



def test_hybrid_float_linears_load_the_cpu_of_an_npu_target():
    """W8A8 groups an int8 NPU cannot take run in float on the CPU: CPU load and time grow with them."""
    base = load_recipe("w8a8")
    r0 = simulate(SMOL, base, "horizon-j5", workload=WL, budgets=[])
    r1 = simulate(SMOL, dataclasses.replace(base, cpu_linear_fraction=0.27), "horizon-j5", workload=WL, budgets=[])
    assert r1.cpu_load > r0.cpu_load and r1.decode_tok_s < r0.decode_tok_s
    assert r1.decode.times["cpu_fallback"] > r0.decode.times["cpu_fallback"]
    # on a CPU runtime there is nothing to leave: same figures
    c0 = simulate(SMOL, "q8_0", "horizon-j5", workload=WL, budgets=[])
    c1 = simulate(SMOL, dataclasses.replace(load_recipe("q8_0"), cpu_linear_fraction=0.27), "horizon-j5",
                  workload=WL, budgets=[])
    assert c1.decode_tok_s == pytest.approx(c0.decode_tok_s)
    with pytest.raises(ConfigError, match="cpu_linear_fraction 1.5 is not in"):
        dataclasses.replace(base, cpu_linear_fraction=1.5)


def test_bad_attention_rate_names_file_and_key(tmp_path):
    for bad in (0, 1.5, "fast"):
        with pytest.raises(ConfigError, match=r"edited-\d+\.yaml.*efficiency\[0\]\.attention_compute"):
            load_target(_with_row(tmp_path, "apple-m2", attention_compute=bad))
