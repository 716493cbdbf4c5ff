"""The whole pipeline for one target: check -> (quantize) -> export -> evaluate -> package.

    from edge.build import build
    build("smollm2-135m", "horizon-j5", out="pkg/")          # the target's default recipe
    build("smollm2-135m", "snapdragon-8gen2", recipe="8da4w", out="pkg-8g2/")
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.cache import model_hash, tool_versions
from edge.calib import CalibConfig, dataset_hash, load_text, token_batches
from edge.errors import BudgetFailed, ConfigError
from edge.eval import compare
from edge.export.check import check
from edge.export.gguf import export_gguf, gguf_preflight, tokenizer_source
from edge.export.weights import gguf_weights
from edge.model.load import load_model
from edge.package import PackageWriter
from edge.prune import prune_loaded, read_build_recipe
from edge.quant.configs import load_recipe as load_quant_recipe
from edge.runtime.session import artifact_runner
from edge.sim import as_written, simulate
from edge.sim import load_recipe as load_cost_recipe
from edge.targets import load_target


@dataclass(frozen=True)
class BuildConfig:
    max_seq: int = 512  # KV cache slots of the exported programs
    calib_samples: int = 32
    calib_seq: int = 128
    eval_window: int = 128
    eval_windows: int = 8  # held-out windows scored against the reference (the model as given, fp32)

    def __post_init__(self) -> None:
        for k in ("max_seq", "calib_samples", "calib_seq", "eval_window", "eval_windows"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"build: {k} must be positive, got {getattr(self, k)}")
        if self.eval_window > self.max_seq:
            raise ConfigError(f"build: eval_window {self.eval_window} exceeds max_seq {self.max_seq}")


def reference_model(source) -> str:
    """What a package's accuracy is measured against: the model as given, upcast to fp32. A GGUF source
    keeps its stored types' grid (the built-in model is a Q4_1 file), so say which file it is."""
    if source.kind in ("builtin", "gguf"):
        return f"{source.path.name}, its stored weights dequantized to fp32"
    return f"{source.path.name if source.kind == 'hf' else source.name}, in fp32"


def write_tokenizer(tok, out: Path) -> list[str]:
    """tokenizer.json + tokenizer_config.json (specials, chat template) that Tokenizer.from_hf_dir reads."""
    import json

    if tok.kind != "tokenizers":
        raise ConfigError("the package needs a tokenizers (tokenizer.json) tokenizer; this model's is served "
                          "by llama.cpp only")
    tok.backend.save(str(out / "tokenizer.json"))
    names = {i: t for t, i in tok.special.items()}
    cfg = {"add_bos_token": tok.add_bos, "bos_token": names.get(tok.bos_id), "eos_token": names.get(tok.eos_id),
           "chat_template": tok.chat_template}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return ["tokenizer.json", "tokenizer_config.json"]


def build(model: str, target: str, recipe: str | None = None, out: str | Path = "package",
          runtime: str | None = None, cfg: BuildConfig = BuildConfig()) -> Path:
    """Load ``model`` by name/path and build its package for ``target``."""
    return build_package(load_model(model), target, recipe, out, runtime, cfg)


def build_package(lm, target: str, recipe: str | None, out: str | Path, runtime: str | None = None,
                  cfg: BuildConfig = BuildConfig(), progress=print) -> Path:
    """Build from a LoadedModel (model, spec, tokenizer, source). Returns the package directory."""
    import torch

    from edge.runtime.eager import TorchRunner

    torch.manual_seed(0)
    tp = load_target(target)
    br = read_build_recipe(recipe) if recipe else None  # a preset, or a file: base preset + prune: section
    recipe = (br.quant if br else "") or tp.defaults.recipe
    runtime = runtime or (br.runtime if br else "") or None
    kv_cache = (br.kv_cache if br else "") or load_quant_recipe(recipe).kv_cache  # f32 | f16 | int8
    unpruned = lm.model  # accuracy is measured against the model as given (edge validate loads it by name)
    if br is not None and br.prune is not None:  # prune -> quantize -> export
        try:
            check(lm.spec, tp, recipe, runtime, cfg.max_seq)  # runtime/format errors before pruning
        except BudgetFailed:
            pass  # the pruned model may fit
        lm = prune_loaded(lm, br, progress)
    plan = check(lm.spec, tp, recipe, runtime, cfg.max_seq)
    if plan.writer == "gguf" and kv_cache == "int8" and lm.spec.head_dim % 32:
        raise ConfigError(f"kv_cache int8: llama.cpp stores it as q8_0 blocks of 32 values per head, and this "
                          f"model's head_dim is {lm.spec.head_dim}; use kv_cache fp16")
    if plan.writer == "gguf":  # what llama.cpp cannot compute or tokenize, refused before quantizing
        gguf_preflight(lm.spec, lm.source)
    progress(f"build: {lm.spec.name or lm.source.name} -> {tp.name}, recipe {recipe}, runtime {plan.runtime} "
             f"({plan.target_format}: {plan.writer} {plan.option})")
    calib_cfg = CalibConfig(n_samples=cfg.calib_samples, seq_len=cfg.calib_seq, seed=0)
    calib = token_batches(lm.tokenizer, calib_cfg)
    vocab = lm.spec.vocab_size
    calib = np.clip(calib, 0, vocab - 1)
    heldout = [t for t in lm.tokenizer.encode(load_text("heldout").text) if t < vocab]
    heldout = heldout[: cfg.eval_window * cfg.eval_windows]
    ref = TorchRunner(unpruned)

    with PackageWriter(out) as w:
        art = {"format": plan.written_format, "writer": plan.writer, "runtime": plan.host_runtime,
               "device_runtime": plan.runtime, "recipe": recipe, "option": plan.option}
        if plan.compile_for:
            art["compile_for"] = plan.compile_for  # the vendor toolchain's input is the ONNX written here
        calibrated = uses_calibration(plan, recipe)
        if plan.writer == "pte":
            from edge.export.executorch import PteConfig, export_pte_cached

            eos = [lm.tokenizer.eos_id] if lm.tokenizer.eos_id is not None else []
            res, hit = export_pte_cached(lm.model, w.dir / "model.pte",
                                         PteConfig(quant=plan.option, max_seq=cfg.max_seq),
                                         bos_id=lm.tokenizer.bos_id, eos_ids=eos)
            if hit:
                progress("build: lowered .pte taken from the stage cache (same weights, config, exporter, tools)")
            exp = res.to_dict()
            art |= {"files": ["model.pte"], "weights": exp.pop("weights"), "export": exp | {"seconds": None}}
        elif plan.writer == "onnx":
            from edge.export.onnx import OnnxConfig, export_onnx, rope_tables

            rt = tp.runtimes[plan.runtime]
            w8 = None
            if plan.option == "qdq-w8a8":  # activations kept above int8 get int16 where the unit has it, else float
                from edge.quant.w8a8 import for_unit

                w8 = for_unit(tp.units[rt.unit].dtypes)
            ocfg = OnnxConfig(dtype=plan.option, max_seq=cfg.max_seq, format=plan.variant,
                              max_graph_bytes=rt.max_graph_bytes, w8a8=w8)
            res = export_onnx(lm.model, w.dir, ocfg, calib_tokens=calib)
            cos, sin = rope_tables(lm.model, cfg.max_seq)
            np.save(w.dir / "rope.npy", np.stack([cos, sin]))  # (2, S, head_dim): cos, sin
            art |= {"files": res.files + ["rope.npy"], "layout": res.layout, "weights": res.weights,
                    "export": res.to_dict() | {"seconds": None}}
        else:
            from edge.quant.quantize import quantize

            m = copy.deepcopy(lm.model)
            q = None if plan.option in ("fp32", "fp16") else quantize(m, plan.option, torch.from_numpy(calib))
            prov = {"recipe": recipe, "target": tp.name} | ({"calib": dataset_hash(calib_cfg)} if calibrated else {})
            export_gguf(m, q, w.dir / "model.gguf", **tokenizer_source(lm.source), provenance=prov,
                        float_type="f16" if plan.option == "fp16" else "f32")
            art |= {"files": ["model.gguf"], "kv_cache": kv_cache,  # the runner's cache type
                    "weights": gguf_weights(w.dir / "model.gguf")}
        if lm.spec.is_moe and plan.writer in DENSE_EXPERT_WRITERS:
            art["weights"]["experts_per_token"] = lm.spec.n_experts  # the simulator costs the work it does
        w.add_artifact(art)
        tok_files = write_tokenizer(lm.tokenizer, w.dir)

        progress(f"build: scoring the {plan.writer} artifact against the reference model "
                 f"({reference_model(lm.source)}; {len(heldout)} held-out tokens)")
        runner = artifact_runner(w.dir, art, threads=None)
        acc = compare(ref.logits, runner.logits, heldout, window=cfg.eval_window).to_dict()
        del runner
        art["accuracy"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in acc.items()}
        sim = simulated(lm.spec, tp, recipe, plan.runtime, kv_cache, cpu_linear_fraction(art), art.get("weights"))
        fields = {
            "target": tp.name, "recipe": recipe, "runtime": plan.runtime,
            "model": {"name": lm.spec.name or lm.source.name, "source": lm.source.kind, "sha256": model_hash(lm.model),
                      # where edge validate reloads the reference from: a checkpoint's name alone is not loadable
                      **({"path": str(lm.source.path.resolve())} if lm.source.kind in ("hf", "gguf") else {}),
                      "spec": lm.spec.to_dict()},
            # only an artifact whose numbers depend on calibration text records which text
            **({"calibration": {"sha256": dataset_hash(calib_cfg), "samples": cfg.calib_samples,
                                "seq_len": cfg.calib_seq}} if calibrated else {}),
            "evaluation": {"text": "heldout", "tokens": len(heldout), "window": cfg.eval_window,
                           "reference": reference_model(lm.source)},
            "tokenizer": tok_files,
            "tools": tool_versions(),
            "min_runtime": MIN_RUNTIME[plan.host_runtime],
            "simulated": sim,
        }
        return w.finish(fields, report(fields, w.artifacts))


# writers whose graphs compute every expert of an MoE layer on every token (edge.model.llama.MoE, no
# sparse expert kernel); llama.cpp's GGUF graph computes the top-k only
DENSE_EXPERT_WRITERS = ("onnx", "pte")

# host runtime -> the oldest version the artifact was checked against (the version edge pins)
MIN_RUNTIME = {"executorch": "executorch>=1.5.1", "onnxruntime": "onnxruntime>=1.32.0",
               "llama.cpp": "llama-cpp-python>=0.3.36"}


def cpu_linear_fraction(art: dict) -> float:
    """The decoder's linear MACs a hybrid W8A8 artifact keeps in float (run on the CPU by an int8 NPU)."""
    macs = ((art.get("export") or {}).get("precision") or {}).get("macs_per_token") or {}
    total = sum(macs.get(k, 0) for k in ("int8", "int16", "float_layers"))
    return macs.get("float_layers", 0) / total if total else 0.0


def uses_calibration(plan, recipe: str) -> bool:
    """Whether the artifact's numbers depend on calibration text: GPTQ codes (GGUF quantized presets),
    static activation scales and GPTQ (ONNX QDQ). Float artifacts and the .pte's round-to-nearest
    torchao weights with dynamic activations use none."""
    if plan.writer == "onnx":
        return plan.option.startswith("qdq-")
    if plan.writer == "gguf":
        return plan.option not in ("fp32", "fp16") and load_quant_recipe(recipe).calibrated
    return False


def simulated(spec, tp, recipe: str, runtime: str, kv_cache: str = "", cpu_fraction: float = 0.0,
              weights: dict | None = None) -> dict:
    """The simulator's prediction and budget verdicts, or why there is none. ``weights``: the artifact's
    weight record (edge.export.weights): the prediction then costs the bytes the artifact stores, per
    tensor class, not the preset's nominal types."""
    import dataclasses

    try:
        cost = as_written(recipe, weights) if weights else load_cost_recipe(recipe)
        if kv_cache:
            cost = dataclasses.replace(cost, kv_cache=kv_cache)
        if cpu_fraction:
            cost = dataclasses.replace(cost, cpu_linear_fraction=cpu_fraction)
        r = simulate(spec, cost, tp, runtime=runtime)
    except ConfigError as e:
        return {"available": False, "reason": str(e)}
    return {"available": True, "decode_tok_s": round(r.decode_tok_s, 3), "prefill_tok_s": round(r.prefill_tok_s, 3),
            "ttft_s": round(r.ttft_s, 4), "peak_memory_bytes": int(r.peak_memory_bytes), "fits": r.fits,
            "weight_bytes": int(r.memory["weights"]), "costed_as": "written" if weights else "preset",
            "budgets": [{"name": b.name, "limit": b.limit, "value": round(b.value, 4), "ok": b.ok} for b in r.budgets],
            "ok": r.ok}


def report(fields: dict, artifacts: list[dict]) -> str:
    lines = [f"# {fields['model']['name']} for {fields['target']} ({fields['recipe']})", "",
             f"Runtime on the device: {fields['runtime']}. Model sha256 {fields['model']['sha256'][:16]}..., "
             + (f"calibration sha256 {fields['calibration']['sha256'][:16]}..." if "calibration" in fields
                else "no calibration (no artifact number depends on calibration text)"), "",
             f"Accuracy is measured against the reference model: {fields['evaluation']['reference']}.", "",
             "## Artifacts", "",
             "| files | format | host runtime | top-1 | KLD mean | ppl change |", "|---|---|---|---|---|---|"]
    for a in artifacts:
        acc = a.get("accuracy", {})
        lines.append(f"| {', '.join(a['files'])} | {a['format']} ({a['option']}) | {a['runtime']} | "
                     f"{acc.get('top1_agreement', 0):.4f} | {acc.get('kld_mean', 0):.5f} | "
                     f"{acc.get('ppl_change', 0):+.2%} |")
    sim = fields["simulated"]
    lines += ["", "## Simulated on the device", ""]
    if sim.get("available"):
        lines.append(f"decode {sim['decode_tok_s']:.1f} tok/s, prefill {sim['prefill_tok_s']:.1f} tok/s, "
                     f"peak memory {sim['peak_memory_bytes'] / 2**20:.0f} MiB, fits: {sim['fits']} (weights costed "
                     f"{'as the artifact stores them' if sim.get('costed_as') == 'written' else 'by the preset'}: "
                     f"{sim.get('weight_bytes', 0) / 1e6:.1f} MB)")
        for b in sim["budgets"]:
            lines.append(f"- budget {b['name']}: {'ok' if b['ok'] else 'FAILED'} ({b['value']})")
    else:
        lines.append(f"not simulated: {sim['reason']}")
    return "\n".join(lines) + "\n"
