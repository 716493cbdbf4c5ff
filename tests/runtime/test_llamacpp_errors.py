"""llama.cpp's own reason for a failed load or conversion reaches the user (its log, kept instead of
discarded); llama-cpp-python's bare ``ValueError`` stays chained as the cause."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from edge.errors import ModelLoadError


def unknown_arch_gguf(path):
    w = gguf.GGUFWriter(str(path), "nosucharch")
    w.add_tensor("token_embd.weight", np.zeros((16, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_failed_load_says_why(tmp_path):
    from edge.runtime.llamacpp import LlamaCppRunner

    bad = unknown_arch_gguf(tmp_path / "bad.gguf")
    with pytest.raises(ModelLoadError, match="unknown model architecture: 'nosucharch'") as e:
        LlamaCppRunner(bad)
    assert isinstance(e.value.__cause__, ValueError) and "\n" not in str(e.value)
    (tmp_path / "cut.gguf").write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="failed to read tensor info"):
        LlamaCppRunner(tmp_path / "cut.gguf")


def test_failed_conversion_says_why(tmp_path):
    from edge.runtime.llamacpp import convert_gguf

    with pytest.raises(ModelLoadError, match=r"\(code 1\): .*unknown model architecture: 'nosucharch'"):
        convert_gguf(unknown_arch_gguf(tmp_path / "bad.gguf"), tmp_path / "out.gguf", "Q8_0")
    assert not (tmp_path / "out.gguf").exists() and not (tmp_path / "out.gguf.tmp").exists()


def test_a_load_after_a_failure_still_works(tmp_path, builtin_f32_gguf):
    """The log handler is put back after each load: a good file loads and runs after a failed one."""
    from edge.runtime.llamacpp import LlamaCppRunner

    with pytest.raises(ModelLoadError):
        LlamaCppRunner(unknown_arch_gguf(tmp_path / "bad.gguf"))
    lg = LlamaCppRunner(builtin_f32_gguf, n_ctx=64, n_threads=1).logits([1, 2, 3])
    assert lg.shape == (3, 49152) and np.isfinite(lg).all()
