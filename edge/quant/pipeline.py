"""What `edge quantize` does: load, calibrate, quantize, write the artifact and a report, atomically.

    quantize_to_dir("smollm2-135m", "q4_0", "out/", calib="assistant:3,general:7")
    # out/model.gguf (GGUF formats) or out/tensors.npz (int4/int8 codes for the .pte/.onnx
    # exporters), out/recipe.json, out/quant_report.json
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from edge.errors import ConfigError
from edge.quant.configs import load_recipe

GGUF_FORMATS = ("q4_0", "q5_0", "q8_0", "f32", "f16")


def quantize_to_dir(model: str, recipe: str, out: str | Path, *, calib: str = "assistant:3,general:7",
                    n_samples: int = 32, seq_len: int = 512, seed: int = 0, method: str | None = None,
                    progress=None) -> dict:
    import torch

    from edge.calib import CalibConfig, describe, token_batches
    from edge.model.load import load_model
    from edge.quant.quantize import quantize

    r = load_recipe(recipe, method=method)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output directory {out} is not empty; give a new or empty directory")
    ccfg = CalibConfig.from_spec(calib, n_samples=n_samples, seq_len=seq_len, seed=seed) if r.calibrated else None
    lm = load_model(model)
    tokens = token_batches(lm.tokenizer, ccfg) if ccfg is not None else None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    q = quantize(lm.model, r, tokens, progress=progress)
    seconds = time.perf_counter() - t0
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        provenance = {"model": model, "source": str(lm.source.path), "recipe": r.name,
                      "calibration": describe(ccfg) if ccfg is not None else None}
        formats = set(q.info["plan"].values())
        if formats <= set(GGUF_FORMATS) and r.activations == "none" and lm.source.kind in ("builtin", "gguf"):
            from edge.export.gguf import export_gguf

            artifact = export_gguf(lm.model, q, tmp / "model.gguf", tokenizer_gguf=lm.source.path,
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
        (tmp / "recipe.json").write_text(json.dumps(r.to_dict(), indent=2, sort_keys=True))
        report = {"model": model, "recipe": r.name, "method": r.method, "seconds": seconds,
                  "weight_bytes": q.weight_bytes(), "artifact": artifact.name,
                  "bits_per_weight": r.bits_per_weight(lm.spec), "provenance": provenance,
                  "rescale": q.info.get("rescale", [])}
        (tmp / "quant_report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["artifact"] = str(out / report["artifact"])
    return report
