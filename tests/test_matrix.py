"""edge matrix: builds as Ray tasks on a local Ray, one failing entry, the cache on a re-run, bad input."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from edge.matrix import Matrix, MatrixError, build_cached, cache_parts, check_reachable, run_matrix

# a build small enough for a test: 4 x 32 calibration tokens, 2 x 32 held-out tokens
SMALL = {"max_seq": 64, "calib_samples": 4, "calib_seq": 32, "eval_window": 32, "eval_windows": 2}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny random llama GGUF (2 layers, dim 64, byte tokenizer), written by edge.stream."""
    from edge.stream import StreamConfig, llama_config, stream_to_gguf, write_random_checkpoint
    from tests.test_stream import byte_tokenizer_gguf

    d = tmp_path_factory.mktemp("tinygguf")
    write_random_checkpoint(d / "ckpt", llama_config(64, 2, 4, 2, 128, 320, max_seq=256), seed=1, std=0.05)
    tok = byte_tokenizer_gguf(d / "bytes.gguf")
    return stream_to_gguf(d / "ckpt", d / "tiny.gguf", StreamConfig(weights="q8_0", method="rtn"),
                          tokenizer_gguf=tok, progress=lambda s: None)["path"]


def test_matrix_on_local_ray_one_entry_failing(tiny_gguf, tmp_path):
    m = Matrix(models=(tiny_gguf,), targets=("host-x86-2core", "no-such-target"), recipes=("q8_0",),
               out=tmp_path / "out", cache_root=str(tmp_path / "cache"), build_options=SMALL)
    lines: list[str] = []
    s = run_matrix(m, progress=lines.append)
    rows = {r["target"]: r for r in s.rows}
    assert rows["host-x86-2core"]["status"] == "ok", rows["host-x86-2core"]["error"]
    assert rows["no-such-target"]["status"] == "failed"
    assert rows["no-such-target"]["error"].startswith("no target 'no-such-target'; known:")
    pkg = tmp_path / "out" / "tiny.gguf__host-x86-2core__q8_0"
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["target"] == "host-x86-2core" and (pkg / "model.gguf").exists()
    assert rows["host-x86-2core"]["figures"]["format"] == "gguf"
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["builds"], summary["ok"], summary["failed"]) == (2, 1, 1)
    table = (tmp_path / "out" / "summary.md").read_text()
    assert "| failed |" in table and "| simulated decode tok/s (device) |" in table
    assert rows["host-x86-2core"]["figures"]["simulated"]["decode_tok_s"] > 0
    assert lines[0].startswith("matrix: 2 builds") and any("[2/2]" in x for x in lines)

    # the same entry again (no Ray needed for one): served from the stage cache
    t0 = time.time()
    row = build_cached({"model": tiny_gguf, "target": "host-x86-2core", "recipe": "q8_0"}, str(tmp_path / "again"),
                       cache_root=str(tmp_path / "cache"), options=SMALL)
    assert row["status"] == "ok" and row["cached"] and time.time() - t0 < 10
    assert (tmp_path / "again" / pkg.name / "manifest.json").read_bytes() == (pkg / "manifest.json").read_bytes()


def test_unreachable_address_fails_fast():
    t0 = time.time()
    with pytest.raises(MatrixError, match="unreachable"):
        check_reachable("127.0.0.1:9", timeout_s=2)  # discard port: nothing listens
    m = Matrix(models=("smollm2-135m",), targets=("host-x86-2core",), address="ray://127.0.0.1:9")
    with pytest.raises(MatrixError, match=r"Ray cluster at ray://127.0.0.1:9 is unreachable"):
        run_matrix(m)
    with pytest.raises(MatrixError, match="not host:port"):
        check_reachable("nonsense")
    assert time.time() - t0 < 6


def test_without_ray_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    m = Matrix(models=("smollm2-135m",), targets=("host-x86-2core",), out=tmp_path)
    with pytest.raises(MatrixError, match=r"pip install 'edge\[ray\]'"):
        run_matrix(m)


def test_failed_build_is_a_row_not_a_crash(tmp_path):
    row = build_cached({"model": "no-such-model", "target": "host-x86-2core", "recipe": None}, str(tmp_path),
                       builder="plan", cache_root=str(tmp_path / "cache"))
    assert row["status"] == "failed" and "no such file or directory and not a built-in model" in row["error"]
    row = build_cached({"model": "smollm2-135m", "target": "host-x86-2core", "recipe": "q4_0"}, str(tmp_path),
                       builder="plan", cache_root=str(tmp_path / "cache"))
    assert row["status"] == "ok", row["error"]
    assert row["figures"]["writer"] == "gguf" and row["figures"]["simulated"]["decode_tok_s"] > 0


def test_matrix_config_errors(tmp_path):
    from edge.errors import ConfigError
    from edge.matrix import load_matrix_file

    with pytest.raises(ConfigError, match="non-empty list"):
        Matrix(models=(), targets=("x",))
    f = tmp_path / "m.yaml"
    f.write_text("models: [smollm2-135m]\ntargets: [host-x86-2core]\nrecipes: [q4_0, q8_0]\nout: builds\n")
    m = load_matrix_file(f)
    assert len(m.jobs()) == 2 and m.jobs()[0]["recipe"] == "q4_0"
    f.write_text("models: [a]\ntarget: [b]\n")
    with pytest.raises(MatrixError, match="models: and targets:"):
        load_matrix_file(f)


def test_cache_key_follows_the_contents_of_every_input(tmp_path, monkeypatch):
    """Each input a build reads, edited in place (same path, same size where it can be), moves the key."""
    import edge.cache
    from edge import calib

    ckpt = tmp_path / "ckpt"  # a checkpoint directory: hashed by its files, not its path or size
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "model.safetensors").write_bytes(bytes(64))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: q4_0\n")
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(recipe, tmp_path / "elsewhere" / "r.yaml")
    texts = tmp_path / "calib"
    shutil.copytree(calib.CALIB_DIR, texts)
    code = tmp_path / "edge"
    shutil.copytree(Path(edge.cache.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(calib, "CALIB_DIR", texts)
    monkeypatch.setattr(edge.cache, "EDGE_DIR", code)
    job = {"model": str(ckpt), "target": "host-x86-2core", "recipe": str(recipe)}

    def key(**over):
        return cache_parts(job | over, "package", {"max_seq": 64}, str(tmp_path / "cache"))

    base = key()
    assert key() == base
    assert key(recipe=str(tmp_path / "elsewhere" / "r.yaml")) == base  # same recipe at another path
    assert key(recipe="q4_0") != base  # a preset is keyed by name

    def changed(path, data: bytes) -> bool:
        before = key()
        path.write_bytes(data)
        return key() != before

    assert changed(recipe, b"base: q8_0\n")
    assert changed(ckpt / "model.safetensors", bytes(63) + b"\1")
    assert changed(texts / "heldout" / "text.txt", (texts / "heldout" / "text.txt").read_bytes() + b" more")
    assert changed(code / "model" / "llama.py", (code / "model" / "llama.py").read_bytes() + b"\n# edited\n")
    assert key() != key(target="raspberry-pi-5")
    assert cache_parts(job, "package", {"max_seq": 32}, str(tmp_path / "cache")) != key()
