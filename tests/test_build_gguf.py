"""edge build's GGUF branch on a tiny random GGUF (2 layers, dim 64, the built-in tokenizer): the
package's model.gguf loads in llama.cpp (the reference reader), carries the recipe as metadata, and its
logits follow torch: exactly at fp32, within Q4_0's noise on random weights (measured corr 0.89)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

CFG = dict(max_seq=64, calib_samples=4, calib_seq=32, eval_window=32, eval_windows=2)


@pytest.mark.parametrize("recipe,min_corr", [("fp32", 0.99999), ("q4_0", 0.8)])
def test_gguf_package_loads_in_llamacpp(tmp_path, recipe, min_corr):
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
    assert 0 <= art["accuracy"]["top1_agreement"] <= 1
