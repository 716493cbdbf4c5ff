"""edge build's GGUF branch on a tiny random GGUF (2 layers, dim 64, the built-in tokenizer): the
package's model.gguf loads in llama.cpp (the reference reader), carries the recipe as metadata, and its
logits follow torch: exactly at fp32, within Q4_0's noise on random weights (measured corr 0.89)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

CFG = dict(max_seq=64, calib_samples=4, calib_seq=32, eval_window=32, eval_windows=2)


# measured on this tiny random model (llama.cpp, f16 KV cache, 8 tokens; the manifest's figures on 64
# held-out tokens): fp32 corr 0.9999998, top-1 1.0, KLD 0; q4_0 corr 0.891, top-1 0.359, KLD 0.220.
# Bounds: 20% on the error (1 - corr, KLD) and on top-1.
@pytest.mark.parametrize("recipe,min_corr,min_top1,max_kld", [("fp32", 0.99999, 1.0, 1e-6),
                                                              ("q4_0", 0.87, 0.29, 0.27)])
def test_gguf_package_loads_in_llamacpp(tmp_path, recipe, min_corr, min_top1, max_kld):
    from edge.build import BuildConfig, build_package
    from edge.model.load import load_model
    from edge.runtime.eager import TorchRunner
    from edge.runtime.llamacpp import LlamaCppRunner
    from tests.model.test_gguf import write_tiny_gguf

    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    lm = load_model(str(src))
    pkg = build_package(lm, "snapdragon-8gen2", recipe, tmp_path / "pkg", cfg=BuildConfig(**CFG),
                        progress=lambda s: None)
    m = json.loads((pkg / "manifest.json").read_text())
    (art,) = m["artifacts"]
    assert art["files"] == ["model.gguf"] and art["runtime"] == "llama.cpp" and m["runtime"] == "llama.cpp"
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(m["files"])
    f = gguf.GGUFReader(str(pkg / "model.gguf")).fields["edge.provenance"]
    assert json.loads(bytes(f.parts[f.data[0]]).decode())["recipe"] == recipe
    tokens = [1, 5, 9, 200, 3, 77, 12, 40]
    got = LlamaCppRunner(pkg / "model.gguf").logits(tokens)
    ref = TorchRunner(lm.model).logits(tokens)
    assert got.shape == ref.shape and np.corrcoef(got.ravel(), ref.ravel())[0, 1] > min_corr
    assert art["accuracy"]["top1_agreement"] >= min_top1 and art["accuracy"]["kld_mean"] <= max_kld
