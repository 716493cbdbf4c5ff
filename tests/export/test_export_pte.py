"""The .pte exporter against torch: logits of prefill and of single-token decode steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tinymodels import TOKENS, tiny_model


def reference_decode(model, tokens, n_prompt):
    """Eager torch with the static cache: prefill n_prompt tokens, then one token per step."""
    with torch.no_grad():
        model.setup_cache(1, 32)
        try:
            out = [model(torch.tensor([tokens[:n_prompt]]), torch.arange(n_prompt))[0]]
            for i in range(n_prompt, len(tokens)):
                out.append(model(torch.tensor([[tokens[i]]]), torch.tensor([i]))[0])
        finally:
            model.drop_cache()
    return torch.cat(out).numpy()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def fp32_pte(tiny, tmp_path_factory):
    from edge.export.executorch import PteConfig, export_pte

    path = tmp_path_factory.mktemp("pte") / "tiny.pte"
    return export_pte(tiny, path, PteConfig(quant="fp32", max_seq=32), bos_id=1, eos_ids=[2])


def test_fp32_prefill_and_decode_match_torch(tiny, fp32_pte):
    from edge.runtime.executorch import PteRunner

    r = PteRunner(fp32_pte.path)
    assert r.max_context == 32 and r.vocab_size == 256
    ref = reference_decode(tiny, TOKENS, 5)
    got = np.concatenate([r.prefill(TOKENS[:5])] + [r.step(t, 5 + i)[None] for i, t in enumerate(TOKENS[5:])])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # a fresh prefill after decoding ignores the stale cache entries
    np.testing.assert_allclose(r.logits(TOKENS[:3]), ref[:3], atol=1e-4)
    from edge.runtime.eager import TorchRunner

    assert r.generate(TOKENS[:4], 6) == TorchRunner(tiny).generate(TOKENS[:4], 6)
    assert len(r.generate(TOKENS[:4], 100)) == 32 - 4 + 1  # until the 32-slot cache is full, then the last pick


def test_fp32_ops_outside_delegate_are_the_cache_and_attention(fp32_pte):
    outside = fp32_pte.outside_delegate
    assert fp32_pte.delegated > 0
    # the linears, norms and RoPE all went to XNNPACK; what stays on CPU kernels is named
    assert outside["llama.update_cache.default"] == 4 and outside["llama.custom_sdpa.default"] == 2
    assert not any("linear" in k or "mm" in k or "rsqrt" in k for k in outside), outside


def test_static_decode_method_shares_the_cache(tiny, tmp_path):
    """decode_method=True: a second method with T fixed at 1 reads the cache forward's prefill wrote."""
    from edge.export.executorch import PteConfig, export_pte
    from edge.runtime.executorch import PteRunner

    res = export_pte(tiny, tmp_path / "d.pte", PteConfig(quant="fp32", max_seq=32, decode_method=True))
    assert 0 < res.decode_delegated < res.delegated  # static shapes: XNNPACK takes the reshapes too
    r = PteRunner(res.path)
    assert r.decode is not r.method
    ref = reference_decode(tiny, TOKENS, 5)
    got = np.concatenate([r.prefill(TOKENS[:5])] + [r.step(t, 5 + i)[None] for i, t in enumerate(TOKENS[5:])])
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_8da4w_matches_torchao_eager(tmp_path):
    from edge.export.executorch import PteConfig, export_copy, export_pte, quantize_8da
    from edge.runtime.executorch import PteRunner

    tiny = tiny_model(n_layers=1)  # one layer: lowering 8da4w is the slowest step of this suite
    res = export_pte(tiny, tmp_path / "q.pte", PteConfig(quant="8da4w", max_seq=32))
    assert res.quantized_linears == 8 and not res.skipped_linears
    dec = export_copy(tiny, 32)
    quantize_8da(dec, 4, 32)
    with torch.no_grad():
        ref = dec(torch.tensor([TOKENS]), torch.tensor([0]))[0].numpy()
    got = PteRunner(res.path).logits(TOKENS)
    # int8 dynamic activations round slightly differently: measured max |diff| 0.047, top-1 12 of 12
    assert np.abs(got - ref).max() < 0.057
    assert (got.argmax(-1) == ref.argmax(-1)).all()
