"""Pruning, saving and quantizing the newer architectures keep their structure.

Tiny transformers checkpoints (tests/model/test_archs.py) are loaded, pruned, saved with
``save_model`` and read back by transformers itself: its logits must equal our pruned model's, which
shows that head pruning kept the q/k norms consistent, that Gemma 3's post-norms, embedding scale
and sliding layers survived (depth pruning renumbers them), and that Phi-3's split projections were
fused back. Qwen3-MoE expert pruning is checked against transformers with the same experts removed.
Quantization's own layer walk is checked against the layer's forward on Gemma 3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from edge.model.hf import load_hf_checkpoint
from edge.model.save import save_model
from edge.prune import PruneConfig, prune
from tests.model.test_archs import CONFIGS, make_hf_model

TOL = 1e-5  # transformers vs ours on the same weights (measured <= 3e-6 in tests/model/test_archs.py)


def calib(n: int = 8, seq: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 128, (n, seq))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for case in ("qwen3", "qwen3_moe", "gemma3", "phi3-longrope-short", "smollm3", "mistral-sliding", "qwen2-sliding"):
        path = tmp_path_factory.mktemp(case)
        make_hf_model(CONFIGS[case]()).save_pretrained(path)
        out[case] = path
    return out


def transformers_logits(path, x):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(x).logits


@pytest.mark.parametrize("case", ["qwen3", "qwen3_moe", "gemma3", "phi3-longrope-short", "smollm3",
                                  "mistral-sliding", "qwen2-sliding"])
def test_saved_checkpoint_reads_back_in_transformers(checkpoints, tmp_path, case):
    """save_model writes each arch's config and tensors (Phi-3 fused again) as transformers reads them."""
    model, spec = load_hf_checkpoint(checkpoints[case])
    save_model(model, spec, None, tmp_path / "saved")
    x = torch.tensor(calib(2, 16))
    with torch.no_grad():
        ours = model(x)
    assert (transformers_logits(tmp_path / "saved", x) - ours).abs().max().item() <= TOL
    again, spec2 = load_hf_checkpoint(tmp_path / "saved")
    assert spec2 == spec.with_(name=spec2.name)
    with torch.no_grad():
        assert (again(x) - ours).abs().max().item() == 0


@pytest.mark.parametrize("case, cfg", [
    ("qwen3", PruneConfig(n_heads=2, ffn_dim=64, multiple_of=8)),  # one query head per KV group
    ("gemma3", PruneConfig(n_heads=2, ffn_dim=64, multiple_of=8)),
    ("gemma3", PruneConfig(n_layers=2)),  # a sliding layer or the global one goes
    ("phi3-longrope-short", PruneConfig(n_layers=1, ffn_dim=48, multiple_of=8)),
    ("smollm3", PruneConfig(n_layers=3)),  # NoPE layers renumbered
])
def test_pruned_model_reads_back_in_transformers(checkpoints, tmp_path, case, cfg):
    model, spec = load_hf_checkpoint(checkpoints[case])
    res = prune(model, cfg, calib())
    assert res.model.num_params() == res.spec.param_count() < spec.param_count()
    if cfg.n_layers:
        kept = res.report["selection"]["layers"]
        assert res.spec.sliding_layers == tuple(i for i, j in enumerate(kept) if spec.is_sliding_layer(j))
        assert res.spec.nope_layers == tuple(i for i, j in enumerate(kept) if j in spec.nope_layers)
    save_model(res.model, res.spec, None, tmp_path / "pruned")
    x = torch.tensor(calib(2, 16))
    with torch.no_grad():
        ours = res.model(x)
    diff = (transformers_logits(tmp_path / "pruned", x) - ours).abs().max().item()
    assert diff <= TOL


def test_phi3_head_pruning_cannot_be_saved(checkpoints, tmp_path):
    """transformers' Phi-3 has no head_dim key: fewer heads would change it, so saving says so."""
    from edge.errors import ConfigError

    model, _ = load_hf_checkpoint(checkpoints["phi3-longrope-short"])
    res = prune(model, PruneConfig(n_kv_heads=1, recovery="none"), calib())
    with pytest.raises(ConfigError) as e:
        save_model(res.model, res.spec, None, tmp_path / "pruned")
    assert "head_dim 16 and 2 heads" in str(e.value) and "'mlp' or 'depth'" in str(e.value)
    assert not (tmp_path / "pruned").exists()


@pytest.mark.parametrize("case", ["qwen3", "gemma3"])
def test_recovery_lowers_error(checkpoints, case):
    model, _ = load_hf_checkpoint(checkpoints[case])
    x = calib(8, 32)
    errs = {}
    for rec in ("none", "lstsq"):
        res = prune(model, PruneConfig(n_heads=2, ffn_dim=48, multiple_of=8, recovery=rec), x)
        with torch.no_grad():
            errs[rec] = (res.model(torch.tensor(x)) - model(torch.tensor(x))).pow(2).mean().item()
    print(case, errs)
    assert errs["lstsq"] < 0.8 * errs["none"]


def test_qwen3_moe_expert_pruning_matches_transformers(checkpoints):
    from tests.test_prune import without_experts

    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"], attn_implementation="eager")
    model, _ = load_hf_checkpoint(checkpoints["qwen3_moe"])
    res = prune(model, PruneConfig(n_experts=4, recovery="none"), calib())
    keep = res.report["selection"]["experts"]
    assert res.spec.n_experts == 4 and list(keep) == [0]  # layer 1 is dense (mlp_only_layers)
    ref = without_experts(hf.eval(), keep)
    x = torch.tensor(calib(2, 16))
    with torch.no_grad():
        assert (res.model(x) - ref(x).logits).abs().max().item() <= TOL
    assert res.spec.param_count() == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("case", ["gemma3", "qwen3", "smollm3"])
def test_quantizer_layer_walk_matches_the_layers(checkpoints, case):
    """GPTQ/AWQ rebuild each layer from its parts (norms, attention core, MLP); on the float model the
    rebuilt output must equal the layer's own forward."""
    from edge.quant.quantize import _float_pass

    model, _ = load_hf_checkpoint(checkpoints[case])
    t = torch.tensor(calib(4, 16))
    with torch.no_grad():
        x = model.embed(t)
        for layer, (cos, sin, mask) in zip(model.layers, model.no_cache_inputs(16, x.dtype)):
            walked = _float_pass(layer, x, cos, sin, mask, chunk=2)["out"]
            x = layer(x, cos, sin, mask, None)
            assert (walked - x).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", ["gemma3", "qwen3"])
def test_gptq_q8_0_stays_close(checkpoints, case):
    """Q8_0 by GPTQ and by round-to-nearest: both near the float logits, GPTQ no worse."""
    import copy

    from edge.quant.configs import load_recipe
    from edge.quant.quantize import quantize

    model, _ = load_hf_checkpoint(checkpoints[case])
    x = torch.tensor(calib(2, 16))
    with torch.no_grad():
        ref = model(x)
    err = {}
    for method in ("gptq", "rtn"):
        m = copy.deepcopy(model)
        quantize(m, load_recipe("q8_0", method=method), torch.tensor(calib(16, 32)))
        with torch.no_grad():
            err[method] = (m(x) - ref).pow(2).mean().item()
    print(case, err)
    assert err["gptq"] <= 1.1 * err["rtn"] and err["rtn"] < 1e-3 * ref.pow(2).mean().item()
