"""Quantizing a mixture-of-experts model: each expert is calibrated with a Hessian weighting tokens by its router gate, the
GGUF stacks the experts' quantized blocks, and llama.cpp runs the file with logits that follow ours."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from edge.quant.configs import recipe_from_dict
from edge.quant.quantize import quantize
from tests.tinymodels import tiny_model

GGUF_VOCAB = 49152


@pytest.mark.parametrize("base", ["q8_0", "q4_0"])
def test_moe_gguf_quantized_runs_in_llamacpp(tmp_path, base):
    from edge.export.gguf import export_gguf
    from edge.model.load import builtin_path
    from edge.runtime.llamacpp import LlamaCppRunner

    m = tiny_model(1, vocab_size=GGUF_VOCAB, n_experts=4, n_experts_per_tok=2, moe_ffn_dim=128, max_seq_len=128)
    calib = np.random.default_rng(0).integers(0, 2000, size=(4, 64))
    q = quantize(m, recipe_from_dict({"base": base, "weights": {"output": "f16"}}, "t"), calib)
    expert_keys = [k for k in q.tensors if "experts" in k]
    assert expert_keys, "expert weights were not quantized"
    path = export_gguf(m, q, tmp_path / "moe.gguf", tokenizer_gguf=builtin_path("smollm2-135m"))
    r = gguf.GGUFReader(str(path))
    t = {x.name: x for x in r.tensors}
    want_type = getattr(gguf.GGMLQuantizationType, base.upper())
    assert t["blk.0.ffn_up_exps.weight"].tensor_type == want_type
    assert int(r.fields["llama.expert_count"].contents()) == 4
    toks = [1, 504, 2000, 33, 1207, 9, 77, 401]
    got = LlamaCppRunner(path, n_ctx=64, n_threads=1, kv_type="f32").logits(toks)
    with torch.no_grad():
        ref = m(torch.tensor([toks]))[0].numpy()  # the unquantized model
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    # measured: min cosine 0.99989 (q8_0) / 0.99987 (q4_0: the random experts' rows quantize well), top-1
    # 8 / 7 of 8 tokens; bounds 20% on 1 - cos
    assert cos.min() > (0.99987 if base == "q8_0" else 0.99984)
    assert (got.argmax(-1) == ref.argmax(-1)).sum() >= (8 if base == "q8_0" else 7)
