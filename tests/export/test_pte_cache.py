"""The lowered .pte program through the stage cache: a second build reuses it, byte for byte."""

from __future__ import annotations

import json

from tests.tinymodels import tiny_loaded, tiny_model


def test_cache_key_follows_weights_config_and_exporter():
    from edge.export.executorch import PteConfig, pte_cache_parts

    m = tiny_model()
    base = pte_cache_parts(m, PteConfig(max_seq=32))
    assert base == pte_cache_parts(tiny_model(), PteConfig(max_seq=32))  # same weights, same key
    assert base != pte_cache_parts(tiny_model(seed=1), PteConfig(max_seq=32))
    assert base != pte_cache_parts(m, PteConfig(max_seq=16))
    assert base != pte_cache_parts(m, PteConfig(max_seq=32, decode_method=True))
    assert base != pte_cache_parts(m, PteConfig(max_seq=32), bos_id=1)
    assert len(base["exporter"]["code"]) == 64 and base["tools"]["executorch"] != "not installed"


def test_cache_key_follows_the_model_code_the_graph_runs(tmp_path, monkeypatch):
    """The exported graph runs the model's own layers (edge/model/llama.py: MLP, embedding, RoPE
    tables): editing that source, or the exporter's, must change the key; an unrelated module must not."""
    import shutil
    from pathlib import Path

    import edge.cache
    from edge.cache import model_code
    from edge.export.executorch import PteConfig, pte_cache_parts

    m = tiny_model()
    assert "edge.model.llama" in model_code(m)
    copy = tmp_path / "edge"
    shutil.copytree(Path(edge.cache.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(edge.cache, "EDGE_DIR", copy)
    keys = []
    for rel in (None, "model/llama.py", "export/executorch.py", "sim/report.py"):
        if rel:
            with open(copy / rel, "a") as f:
                f.write("\n# edited\n")
        keys.append(pte_cache_parts(m, PteConfig(max_seq=32), model_sha256="w"))
    assert keys[0] != keys[1] != keys[2]
    assert keys[2] == keys[3]  # the simulator's report module is not in the lowered program


def test_second_build_hits_the_cache_and_is_byte_identical(tmp_path, monkeypatch):
    from edge.build import BuildConfig, build_package
    from edge.cache import StageCache

    monkeypatch.setenv("EDGE_CACHE", str(tmp_path / "cache"))
    cfg = BuildConfig(max_seq=32, calib_samples=4, calib_seq=16, eval_window=16, eval_windows=2)
    logs: list[list[str]] = []
    pkgs = []
    for name in ("one", "two"):
        lines: list[str] = []
        pkgs.append(build_package(tiny_loaded(), "snapdragon-8gen2", "8da4w", tmp_path / name, cfg=cfg,
                                  progress=lines.append))
        logs.append(lines)
    assert not any("stage cache" in s for s in logs[0])
    assert any("stage cache" in s for s in logs[1])  # the second build did not lower again
    assert StageCache(tmp_path / "cache").info()["stages"]["export-pte"]["entries"] == 1
    a, b = (p / "model.pte" for p in pkgs)
    assert a.read_bytes() == b.read_bytes()
    assert (pkgs[0] / "manifest.json").read_bytes() == (pkgs[1] / "manifest.json").read_bytes()
    manifest = json.loads((pkgs[1] / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    assert art["runtime"] == "executorch" and art["export"]["delegated"] > 0
    entry = next((tmp_path / "cache" / "v1" / "export-pte").glob("*/.edge-entry.json"))
    assert manifest["tools"] == json.loads(entry.read_text())["parts"]["tools"]  # one list of what made it


def test_damaged_entry_is_rebuilt_and_lowering_is_deterministic(tmp_path):
    """A cache entry whose file was damaged is rebuilt, not served (the cache checks sha256)."""
    from edge.cache import StageCache
    from edge.export.executorch import PteConfig, export_pte_cached

    m = tiny_model(n_layers=1)
    cache = StageCache(tmp_path / "cache")
    res, hit = export_pte_cached(m, tmp_path / "a.pte", PteConfig(max_seq=16), cache=cache)
    assert not hit and res.delegated > 0
    entry = next((tmp_path / "cache" / "v1" / "export-pte").glob("*/model.pte"))
    with open(entry, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff")
    res2, hit2 = export_pte_cached(m, tmp_path / "b.pte", PteConfig(max_seq=16), cache=cache)
    assert not hit2 and res2.to_dict() | {"seconds": 0, "path": ""} == res.to_dict() | {"seconds": 0, "path": ""}
    assert (tmp_path / "a.pte").read_bytes() == (tmp_path / "b.pte").read_bytes()  # lowering is deterministic
