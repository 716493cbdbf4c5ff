"""Pruning: shapes really shrink, saved directories load back, MoE expert pruning against transformers,
and bad input (one clear line each, non-zero exit from the CLI).

Everything runs on tiny random models; the measured quality on the built-in model is in
benchmarks/prune.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge.errors import ConfigError
from edge.model.llama import Transformer
from edge.model.spec import ModelSpec
from edge.prune import PruneConfig, plan_shapes, prune

TOL = 1e-4
TINY = ModelSpec(arch="llama", vocab_size=96, dim=96, n_layers=4, n_heads=6, n_kv_heads=2, ffn_dim=128,
                 tie_embeddings=True, name="tiny")  # fmt: skip


def random_model(spec: ModelSpec) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    return model.eval().requires_grad_(False)


def calib(vocab: int, n: int = 8, seq: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, (n, seq))


@pytest.fixture(scope="module")
def tiny():
    return random_model(TINY)


# ---- structured pruning really removes parameters ------------------------------------------------
@pytest.mark.parametrize(
    "cfg, shapes",
    [
        (PruneConfig(ffn_dim=64, multiple_of=1), dict(ffn_dim=64)),
        (PruneConfig(n_heads=4), dict(n_heads=4, n_kv_heads=2)),  # 2 query heads per group
        (PruneConfig(n_kv_heads=1), dict(n_heads=3, n_kv_heads=1)),  # a KV group with its 3 query heads
        (PruneConfig(n_layers=3), dict(n_layers=3)),
        (PruneConfig(ratio=0.3, kind="mlp+attn", multiple_of=8), dict(n_heads=4, n_kv_heads=2)),
    ],
)
def test_structured_shapes(tiny, cfg, shapes):
    res = prune(tiny, cfg, calib(96))
    for k, v in shapes.items():
        assert getattr(res.spec, k) == v
    assert res.model.num_params() == res.spec.param_count() < TINY.param_count()
    assert dict(res.spec.pruning)["params_after"] == str(res.spec.param_count())
    out = res.model(torch.tensor(calib(96, 1, 16)))
    assert out.shape == (1, 16, 96) and torch.isfinite(out).all()


def test_ratio_hits_budget_and_auto_picks_lowest_kl(tiny):
    res = prune(tiny, PruneConfig(ratio=0.2, multiple_of=8), calib(96))
    tried = res.report["kinds_tried"]
    assert set(tried) == {"mlp", "mlp+attn", "depth"}
    assert res.report["kind"] == min(tried, key=lambda k: tried[k]["calib_kl"])
    # shapes come in multiples of 8: measured 21.6% removed for the 20% asked
    assert abs(1 - res.spec.param_count() / TINY.param_count() - 0.2) < 0.02


def test_selection_keeps_the_important_channels(tiny):
    """Zero half of layer 0's MLP channels: activation importance must drop exactly those."""
    model = random_model(TINY)
    model.layers[0].mlp.down_proj.weight[:, ::2] = 0
    res = prune(model, PruneConfig(ffn_dim=64, multiple_of=1, recovery="none"), calib(96))
    assert res.report["selection"]["channels"][0] == list(range(1, 128, 2))


def test_unpruned_structures_keep_exact_outputs(tiny):
    """Keeping every channel (ffn_dim unchanged), recovery off: the copy computes the same logits."""
    res = prune(tiny, PruneConfig(n_heads=6, recovery="none"), calib(96))
    x = torch.tensor(calib(96, 2, 16))
    assert (res.model(x) - tiny(x)).abs().max() == 0


# measured error after / before recovery: lstsq 0.430, lstsq-stream 0.212; bounds 20% above
@pytest.mark.parametrize("recovery,max_ratio", [("lstsq", 0.52), ("lstsq-stream", 0.26)])
def test_lstsq_recovery_lowers_error(tiny, recovery, max_ratio):
    x = calib(96, 8, 32)
    errs = {}
    for rec in ("none", recovery):
        res = prune(tiny, PruneConfig(ffn_dim=48, n_heads=4, n_layers=3, multiple_of=8, recovery=rec), x)
        errs[rec] = (res.model(torch.tensor(x)) - tiny(torch.tensor(x))).pow(2).mean().item()
    assert errs[recovery] < max_ratio * errs["none"]


def test_two_four_sparsity_mask_and_metadata(tiny):
    res = prune(tiny, PruneConfig(sparsity="2:4", recovery="none"), calib(96))
    w = res.model.layers[1].mlp.down_proj.weight
    assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    assert res.spec.param_count() == TINY.param_count()
    meta = dict(res.spec.pruning)
    assert meta["sparsity"] == "2:4" and meta["sparse_tensors"] == "attn,mlp"


# ---- save / load ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builtin_tokenizer():
    import gguf

    from edge.model.gguf import read_metadata
    from edge.model.load import builtin_path
    from edge.model.tokenizer import Tokenizer

    path = builtin_path("smollm2-135m")
    return Tokenizer.from_gguf_fields(read_metadata(gguf.GGUFReader(path)), path)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, builtin_tokenizer):
    """A tiny model with the built-in tokenizer's vocabulary, pruned and saved."""
    from edge.model.save import save_model

    spec = TINY.with_(vocab_size=builtin_tokenizer.vocab_size)
    res = prune(random_model(spec), PruneConfig(n_layers=3, n_heads=4, ffn_dim=96), calib(spec.vocab_size))
    out = save_model(res.model, res.spec, builtin_tokenizer, tmp_path_factory.mktemp("p") / "pruned")
    return res, out


def test_saved_dir_loads_back(pruned_dir, builtin_tokenizer):
    from edge.model.load import load_model, load_spec

    res, path = pruned_dir
    lm = load_model(path)
    assert lm.spec == res.spec == load_spec(path)  # pruning metadata included
    x = torch.tensor(calib(res.spec.vocab_size, 2, 16))
    assert (lm.model(x) - res.model(x)).abs().max() == 0
    text = "Hello world! 1234 <|im_start|>user\nhi<|im_end|>"
    assert lm.tokenizer.encode(text) == builtin_tokenizer.encode(text)
    for a in ("bos_id", "eos_id", "add_bos", "chat_template", "special"):
        assert getattr(lm.tokenizer, a) == getattr(builtin_tokenizer, a)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_save_refuses_to_overwrite(pruned_dir, builtin_tokenizer):
    from edge.model.save import save_model

    res, path = pruned_dir
    with pytest.raises(ConfigError, match="already exists"):
        save_model(res.model, res.spec, builtin_tokenizer, path)


# ---- MoE: expert pruning against transformers ----------------------------------------------------
def tiny_moe(arch: str = "mixtral", n_layers: int = 2):
    """A random transformers Mixtral, or a Qwen2-MoE with a gated shared expert and a dense layer 0."""
    import transformers

    common = dict(
        vocab_size=128, hidden_size=64, num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, rms_norm_eps=1e-6, tie_word_embeddings=False, num_experts_per_tok=2,
    )  # fmt: skip
    if arch == "mixtral":
        cfg = transformers.MixtralConfig(**common, intermediate_size=48, num_local_experts=8)
    else:
        cfg = transformers.Qwen2MoeConfig(
            **common, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=80,
            num_experts=8, norm_topk_prob=False, mlp_only_layers=[0],
        )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.1)
    return hf.eval()


def without_experts(hf, keep: dict[int, list[int]]):
    """A transformers model with the config's expert count lowered and only the ``keep`` experts' weights."""
    import copy

    import transformers

    cfg = copy.deepcopy(hf.config)
    cfg.num_local_experts = len(next(iter(keep.values())))
    small = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    state = hf.state_dict()
    for layer, experts in keep.items():
        idx = torch.tensor(experts)
        for name in ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            key = f"model.layers.{layer}.{name}"
            state[key] = state[key].index_select(0, idx)
    small.load_state_dict(state, strict=True)
    return small


@pytest.mark.parametrize("score", ["contribution", "frequency"])
def test_moe_expert_pruning_matches_transformers(tmp_path, score):
    from edge.model.hf import load_hf_checkpoint

    hf = tiny_moe()
    hf.save_pretrained(tmp_path / "full")
    model, spec = load_hf_checkpoint(tmp_path / "full")
    res = prune(model, PruneConfig(n_experts=6, expert_score=score, recovery="none"), calib(128))
    keep = res.report["selection"]["experts"]
    assert res.spec.n_experts == 6 and all(len(v) == 6 for v in keep.values())
    assert res.model.layers[0].mlp.gate.weight.shape == (6, 64)
    ref = without_experts(hf, keep)
    x = torch.tensor(calib(128, 2, 24))
    with torch.no_grad():
        diff = (res.model(x) - ref(x).logits).abs().max().item()
    assert diff <= TOL
    assert res.spec.param_count() == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_moe_saved_dir_loads_in_transformers_and_lower_top_k(tmp_path, arch):
    import transformers

    from edge.model.hf import load_hf_checkpoint
    from edge.model.save import save_model

    hf = tiny_moe(arch)
    hf.save_pretrained(tmp_path / "full")
    model, _ = load_hf_checkpoint(tmp_path / "full")
    res = prune(model, PruneConfig(n_experts=6, n_experts_per_tok=1, recovery="none"), calib(128))
    assert res.spec.n_experts_per_tok == 1
    save_model(res.model, res.spec, None, tmp_path / "pruned")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", attn_implementation="eager")
    ours, _ = load_hf_checkpoint(tmp_path / "pruned")
    x = torch.tensor(calib(128, 2, 24))
    with torch.no_grad():
        assert (back(x).logits - res.model(x)).abs().max().item() <= TOL
        assert (ours(x) - res.model(x)).abs().max().item() == 0


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_moe_depth_pruning_renumbers_moe_layers(tmp_path, arch):
    """Removing layers from an MoE model renumbers the kept layers' moe_layers (a Qwen2-MoE with a
    dense layer 0 and 3 MoE layers, 2 kept), records the removed layers, and the saved directory
    computes the same in transformers; the plan's spec (before importance picks layers) is valid too."""
    import transformers

    from edge.model.hf import load_hf_checkpoint
    from edge.model.save import save_model
    from edge.prune import shaped_spec

    hf = tiny_moe(arch, n_layers=4)
    hf.save_pretrained(tmp_path / "full")
    model, spec = load_hf_checkpoint(tmp_path / "full")
    assert spec.moe_layers == ((0, 1, 2, 3) if arch == "mixtral" else (1, 2, 3))
    cfg = PruneConfig(n_layers=2, recovery="none")
    assert shaped_spec(spec, plan_shapes(spec, cfg)).n_layers == 2
    res = prune(model, cfg, calib(128))
    kept = res.report["selection"]["layers"]
    want = tuple(i for i, j in enumerate(kept) if j in spec.moe_layers)
    assert len(kept) == 2 and (res.spec.moe_layers == want if want else not res.spec.is_moe)
    assert json.loads(dict(res.spec.pruning)["layers_removed"]) == [j for j in range(4) if j not in kept]
    save_model(res.model, res.spec, None, tmp_path / "pruned")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", attn_implementation="eager")
    x = torch.tensor(calib(128, 2, 24))
    with torch.no_grad():
        assert (back(x).logits - res.model(x)).abs().max().item() <= TOL


def test_depth_pruning_leaving_only_dense_layers():
    """An MoE spec whose kept layers are all dense becomes a dense spec (an empty moe_layers would
    read as "every layer MoE"); moe_layers and sliding_layers follow the kept layers' new positions."""
    import dataclasses

    from edge.prune import Shapes, shaped_spec

    spec = ModelSpec(arch="qwen2_moe", vocab_size=96, dim=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=96,
                     n_experts=4, n_experts_per_tok=2, moe_ffn_dim=32, shared_expert_ffn_dim=48,
                     moe_layers=(1, 3), sliding_window=16, sliding_layers=(0, 3))  # fmt: skip
    s = Shapes.of(spec)
    two = shaped_spec(spec, dataclasses.replace(s, n_layers=2), [0, 3])
    assert two.moe_layers == (1,) and two.sliding_layers == (0, 1) and two.n_experts == 4
    dense = shaped_spec(spec, dataclasses.replace(s, n_layers=2), [0, 2])
    assert not dense.is_moe and dense.moe_layers == () and dense.shared_expert_ffn_dim == 0
    assert dense.sliding_layers == (0,) and dense.sliding_window == 16
    no_window = shaped_spec(spec, dataclasses.replace(s, n_layers=1), [1])
    assert no_window.sliding_window == 0 and no_window.moe_layers == (0,)


# ---- bad input: one line each ----------------------------------------------------------------------
def one_line(fn) -> str:
    with pytest.raises(ConfigError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval(ratio):
    assert "(0, 1)" in one_line(lambda: PruneConfig(ratio=ratio))


def test_pruning_leaving_zero_channels():
    assert "most" in one_line(lambda: plan_shapes(TINY, PruneConfig(ratio=0.95, kind="mlp")))


def test_pruning_leaving_zero_heads():
    assert "attention heads" in one_line(lambda: plan_shapes(TINY, PruneConfig(ratio=0.6, kind="attn")))


def test_head_count_breaking_kv_grouping():
    assert "allowed n_heads: 2, 4, 6" in one_line(lambda: plan_shapes(TINY, PruneConfig(n_heads=5)))


def test_expert_options_on_dense_model(tiny):
    assert "dense" in one_line(lambda: prune(tiny, PruneConfig(n_experts=2), calib(96)))


def test_unknown_kind_lists_allowed():
    assert "'mlp+attn'" in one_line(lambda: PruneConfig(ratio=0.2, kind="width"))


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ratio", "1.5"], "(0, 1)"),
        (["--ratio", "0.95", "--kind", "mlp"], "at most"),
        (["--n-heads", "3"], "breaks grouped-query attention"),
        (["--experts", "2"], "dense"),
    ],
)
def test_cli_bad_input(pruned_dir, tmp_path, args, says):
    from edge.cli import main

    _, model_dir = pruned_dir
    r = CliRunner().invoke(main, ["prune", "--model", str(model_dir), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code != 0
    assert says in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "o").exists()


def test_cli_prunes_to_a_loadable_dir(pruned_dir, tmp_path):
    from edge.cli import main
    from edge.model.load import load_spec

    _, model_dir = pruned_dir
    out = tmp_path / "cli"
    r = CliRunner().invoke(main, ["prune", "--model", str(model_dir), "--out", str(out), "--ffn-dim", "64",
                                  "--calib-samples", "4", "--seq-len", "32", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert load_spec(out).ffn_dim == 64
    assert json.loads((out / "pruning.json").read_text())["params_after"] == load_spec(out).param_count()


def test_cli_recipe_file(pruned_dir, tmp_path):
    from edge.cli import main
    from edge.model.load import load_spec

    _, model_dir = pruned_dir
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune:\n  n_layers: 2\n  recovery: none\n  importance: magnitude\n")
    r = CliRunner().invoke(
        main, ["prune", "--model", str(model_dir), "--out", str(tmp_path / "o"), "--recipe", str(recipe)]
    )
    assert r.exit_code == 0, r.output
    assert load_spec(tmp_path / "o").n_layers == 2
    recipe.write_text("prune:\n  n_layer: 2\n")
    r = CliRunner().invoke(
        main, ["prune", "--model", str(model_dir), "--out", str(tmp_path / "p"), "--recipe", str(recipe)]
    )
    assert r.exit_code != 0 and "unknown keys ['n_layer']" in r.output


def test_pruned_model_runs_in_llama_cpp(pruned_dir, tmp_path):
    """The pruned shapes (fewer layers, heads and channels) export to GGUF and llama.cpp computes our logits."""
    from edge.export.gguf import export_gguf
    from edge.model.load import builtin_path
    from edge.runtime.llamacpp import LlamaCppRunner

    res, _ = pruned_dir
    path = export_gguf(res.model, None, tmp_path / "p.gguf", tokenizer_gguf=builtin_path("smollm2-135m"))
    x = calib(res.spec.vocab_size, 1, 16)[0].tolist()
    got = LlamaCppRunner(path, n_ctx=64, n_threads=1, kv_type="f32").logits(x)
    with torch.no_grad():
        want = res.model(torch.tensor([x]))[0].numpy()
    assert np.abs(got - want).max() <= 1e-3
