"""Shared fixtures: the built-in model (loaded once per session) and its F32 GGUF for llama.cpp.
Skips other than tests/skip_policy.py's short allow-list fail the run."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.skip_policy", "pytester"]


@pytest.fixture(scope="session")
def builtin():
    """The built-in smollm2-135m as a LoadedModel (torch reference, tokenizer)."""
    import torch

    from edge.model.load import load_model

    torch.set_num_threads(2)
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def builtin_f32_gguf(tmp_path_factory):
    """llama.cpp's own F32 conversion of the built-in model's weights."""
    from edge.model.load import builtin_path
    from edge.runtime.llamacpp import convert_gguf

    return convert_gguf(builtin_path("smollm2-135m"), tmp_path_factory.mktemp("gguf") / "smollm2-f32.gguf", "F32")


@pytest.fixture(scope="session")
def heldout_text():
    from edge.calib import load_text

    return load_text("heldout").text
