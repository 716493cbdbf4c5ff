"""What `edge quantize` does: load, calibrate, quantize, write the artifact and a report, atomically.

    quantize_to_dir("smollm2-135m", "q4_0", "out/", calib="assistant:3,general:7")
    # out/model.gguf (GGUF formats) or out/tensors.npz (int4/int8 codes for the .pte/.onnx
    # exporters), out/recipe.json, out/quant_report.json

The ``w8a8`` preset runs edge.quant.w8a8's static W8A8 scheme (the one `edge build` writes as
ONNX QDQ for NPUs: rotation, GPTQ int8 weights, MSE-clipped static activation scales, down_proj
inputs and the groups with the largest int8 error kept above int8), not the quantize stage; see
``uses_w8a8_scheme`` and ``_write_w8a8`` for what it writes. A recipe that asks for the stage's
static int8 path explicitly (``--method rtn``/``awq``, or a recipe file with ``smoothquant:``)
still gets it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from edge.calib import CalibConfig, describe, token_batches
from edge.errors import ConfigError, EdgeError
from edge.export.gguf import export_gguf, tokenizer_source
from edge.model.load import load_model
from edge.quant.configs import CLASS_MODULES, LINEAR_CLASSES, QuantRecipe, load_recipe

GGUF_FORMATS = ("q4_0", "q5_0", "q8_0", "f32", "f16")


def uses_w8a8_scheme(r: QuantRecipe) -> bool:
    """True for the ``w8a8`` preset and recipe files based on it that keep its method (gptq), set no
    ``smoothquant`` and keep every decoder linear int8: those get edge.quant.w8a8's scheme. Any other
    static-int8 recipe (method rtn/awq, smoothquant > 0, other linear formats) gets the quantize stage's
    path: int8 weights and per-tensor absmax activation scales, after SmoothQuant when asked."""
    linear = {r.weights[c] for c in LINEAR_CLASSES} | set(r.layers.values()) | set(r.tensors.values())
    return r.activations == "int8_static" and r.method == "gptq" and r.smoothquant == 0 and linear == {"int8"}


def quantize_to_dir(model: str, recipe: str, out: str | Path, *, calib: str = "assistant:3,general:7",
                    n_samples: int = 64, seq_len: int = 512, seed: int = 0, method: str | None = None,
                    progress=None, w8a8=None) -> dict:
    """``w8a8``: the edge.quant.w8a8.W8A8Config for a recipe that takes that scheme (default
    ``edge.quant.w8a8.DEFAULT``: groups kept above int8 at int16; ``for_unit(dtypes)`` picks float
    for a unit without int16)."""
    import torch

    from edge.quant.quantize import quantize

    r = load_recipe(recipe, method=method)
    scheme = uses_w8a8_scheme(r)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output directory {out} is not empty; give a new or empty directory")
    ccfg = CalibConfig.from_spec(calib, n_samples=n_samples, seq_len=seq_len, seed=seed) if r.calibrated else None
    lm = load_model(model)
    tokens = token_batches(lm.tokenizer, ccfg) if ccfg is not None else None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    if scheme:
        from edge.quant.w8a8 import DEFAULT, prepare_w8a8

        w8 = w8a8 or DEFAULT
        qm, plan = prepare_w8a8(lm.model, tokens, w8)
    else:
        q = quantize(lm.model, r, tokens, progress=progress)
    seconds = time.perf_counter() - t0
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        provenance = {"model": model, "source": str(lm.source.path), "recipe": r.name,
                      "calibration": describe(ccfg) if ccfg is not None else None}
        if scheme:
            artifact, weight_bytes, bpw = _write_w8a8(tmp, qm, plan)
            extra = {"scheme": "edge.quant.w8a8", "w8a8": dataclasses.asdict(w8), "precision": plan.summary(),
                     "int8_output_nsr": plan.info.get("int8_output_nsr", {}),
                     "float_tensors": "embedding and lm_head (untied when rotated) and the norms stay float32, "
                                      "as the ONNX QDQ exporter keeps them; with rotate the tensors are the "
                                      "rewritten model's (norms folded into the linears: ones)"}
        else:
            formats = set(q.info["plan"].values())
            if formats <= set(GGUF_FORMATS) and r.activations == "none" and lm.source.kind in ("builtin", "gguf", "hf"):
                artifact = export_gguf(lm.model, q, tmp / "model.gguf", **tokenizer_source(lm.source),
                                       provenance=provenance)
            else:
                artifact = tmp / "tensors.npz"
                arrays = {}
                for name, t in q.tensors.items():
                    arrays[f"{name}.codes"] = t.codes
                    arrays[f"{name}.scales"] = t.scales
                    arrays[f"{name}.zeros"] = t.zeros
                np.savez(artifact, **arrays)
                (tmp / "act_scales.json").write_text(json.dumps(q.act_scales, indent=1, sort_keys=True))
            weight_bytes, bpw = q.weight_bytes(), r.bits_per_weight(lm.spec)
            extra = {"scheme": "quantize", "rescale": q.info.get("rescale", [])}
        (tmp / "recipe.json").write_text(json.dumps(r.to_dict(), indent=2, sort_keys=True))
        report = {"model": model, "recipe": r.name, "method": r.method, "seconds": seconds,
                  "weight_bytes": weight_bytes, "artifact": artifact.name,
                  "bits_per_weight": bpw, "provenance": provenance, **extra}
        (tmp / "quant_report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["artifact"] = str(out / report["artifact"])
    return report


def int8_codes(lin) -> tuple[np.ndarray, np.ndarray]:
    """A linear edge.quant.w8a8 quantized: its int8 codes (rows, cols) and row scales (rows,) float32,
    with ``codes * scales[:, None] == weight`` exactly (checked, so nothing is re-rounded)."""
    w = lin.weight.detach().float().numpy()
    s = lin.int8_scale.detach().float().numpy().astype(np.float32)
    codes = np.round(w / s[:, None])
    if np.abs(codes).max() > 127 or not np.array_equal(codes.astype(np.float32) * s[:, None], w):
        raise EdgeError("w8a8: a linear's weight is not its int8 codes times its row scales")
    return codes.astype(np.int8), s


def _write_w8a8(tmp: Path, qm, plan) -> tuple[Path, int, dict[str, float]]:
    """The scheme's artifact in ``tmp``:

    tensors.npz      every decoder linear: ``NAME.weight.codes`` int8 (out, in), ``.scales`` float32
                     (out, 1), ``.zeros`` int8 (out, 1) (symmetric: 0), weight = codes * scales; every
                     other tensor of the rewritten model (embedding, lm_head, norms, biases) float32 by
                     its name; ``layers.i.mlp.down_proj.rotation`` (b, b) with down_rotate (input blocks
                     times it before the linear)
    act_scales.json  group (layers.i.qkv|o|gate_up|down) -> precision (int8 | int16 | float), bits,
                     scale, zero_point, signed, float_channels, linears: x ~ (q - zero_point) * scale
    """
    from edge.quant.w8a8 import BlockRotated, groups_of

    names = {id(m): n for n, m in qm.named_modules()}
    canon = {}  # the rewritten model's names -> the original model's (a BlockRotated down_proj's .lin)
    arrays: dict[str, np.ndarray] = {}
    acts = {}
    linear_params = set()
    bits: dict[str, list[float]] = {}
    cls_of = {mod.split(".")[-1]: c for c, mod in CLASS_MODULES.items()}
    for g, lins in groups_of(qm).items():
        lnames = []
        for lin in lins:
            name = names[id(lin)].removesuffix(".lin")
            codes, s = int8_codes(lin)
            arrays[f"{name}.weight.codes"] = codes
            arrays[f"{name}.weight.scales"] = s[:, None]
            arrays[f"{name}.weight.zeros"] = np.zeros((codes.shape[0], 1), np.int8)
            linear_params.add(id(lin.weight))
            canon[names[id(lin)]] = name
            lnames.append(name)
            bits.setdefault(cls_of[name.split(".")[-1]], []).append(8 + 32 / codes.shape[1])
        aq = plan.acts[g]
        acts[g] = {"precision": plan.precision(g), "bits": aq.bits, "scale": aq.scale, "zero_point": aq.zero_point,
                   "signed": aq.signed, "float_channels": list(aq.float_channels), "linears": lnames}
    for n, p in qm.named_parameters():
        if id(p) in linear_params:
            continue
        owner, _, leaf = n.rpartition(".")
        arrays[f"{canon.get(owner, owner)}.{leaf}"] = p.detach().float().numpy()
    for n, m in qm.named_modules():
        if isinstance(m, BlockRotated):
            arrays[f"{n}.rotation"] = m.h.detach().float().numpy()
    artifact = tmp / "tensors.npz"
    np.savez(artifact, **arrays)
    (tmp / "act_scales.json").write_text(json.dumps(acts, indent=1, sort_keys=True))
    weight_bytes = sum(int(a.nbytes) for k, a in arrays.items() if not k.endswith(".zeros"))
    bpw = {c: float(np.mean(v)) for c, v in bits.items()}
    bpw |= {"embedding": 32.0, "output": 32.0}
    return artifact, weight_bytes, bpw
