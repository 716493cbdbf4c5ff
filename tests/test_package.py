"""Device packages on a tiny model: byte-identical rebuilds, manifest contents, and bad input
(tampered file, no manifest, manifest from the future, interrupted build)."""

from __future__ import annotations

import json

import pytest

from tests.tinymodels import tiny_loaded

CFG = dict(max_seq=64, calib_samples=8, calib_seq=32, eval_window=32, eval_windows=4)


def build(out, target="horizon-j5", recipe=None, **kw):
    from edge.build import BuildConfig, build_package

    return build_package(tiny_loaded(), target, recipe, out, cfg=BuildConfig(**CFG), progress=lambda s: None, **kw)


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    return build(tmp_path_factory.mktemp("pkg") / "tiny-j5")


def test_manifest_records_the_build(pkg):
    m = json.loads((pkg / "manifest.json").read_text())
    assert m["manifest_version"] == 1 and m["target"] == "horizon-j5" and m["recipe"] == "w8a8"
    assert len(m["model"]["sha256"]) == 64 and len(m["calibration"]["sha256"]) == 64
    assert {"torch", "executorch", "onnxruntime", "llama-cpp-python", "edge"} <= set(m["tools"])
    assert set(m["files"]) == {"model.onnx", "rope.npy", "tokenizer.json", "tokenizer_config.json", "report.md"}
    (art,) = m["artifacts"]
    assert art["format"] == "onnx-opset11" and art["option"] == "qdq-w8a8" and art["runtime"] == "onnxruntime"
    # measured on 128 held-out tokens: top-1 0.984, KLD 3.4e-5
    assert art["accuracy"]["top1_agreement"] >= 0.95 and art["accuracy"]["kld_mean"] < 4e-5
    assert isinstance(art["export"]["warnings"], list)  # the exporter's warnings are recorded, not dropped
    assert m["simulated"]["available"] and m["simulated"]["budgets"]
    assert "top-1" in (pkg / "report.md").read_text()


def test_two_builds_are_byte_identical(pkg, tmp_path):
    again = build(tmp_path / "again")
    a = json.loads((pkg / "manifest.json").read_text())["files"]
    b = json.loads((again / "manifest.json").read_text())["files"]
    assert a == b
    assert (pkg / "manifest.json").read_bytes() == (again / "manifest.json").read_bytes()


def test_tampered_file_is_refused(pkg, tmp_path):
    import shutil

    import edge.runtime
    from edge.package import PackageError

    bad = tmp_path / "bad"
    shutil.copytree(pkg, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(PackageError, match="model.onnx does not match its sha256"):
        edge.runtime.load(bad)


def test_no_manifest_and_future_manifest(pkg, tmp_path):
    import shutil

    from edge.package import PackageError, read_manifest

    with pytest.raises(PackageError, match="no manifest.json"):
        read_manifest(tmp_path)
    fut = tmp_path / "future"
    shutil.copytree(pkg, fut)
    m = json.loads((fut / "manifest.json").read_text())
    m["manifest_version"] = 99
    (fut / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PackageError, match="manifest version 99 is newer than this SDK reads"):
        read_manifest(fut)


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    import edge.export.onnx as onnx_export

    real = onnx_export.export_onnx

    def killed(model, out_dir, *a, **kw):
        real(model, out_dir, *a, **kw)  # files are written, then the build dies
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "export_onnx", killed)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path / "pkg")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_format_and_moe_are_named(tmp_path):
    import dataclasses

    from edge.errors import ConfigError
    from edge.export.check import check
    from edge.targets import load_target

    # a runtime that lists a recipe none of the writers for its formats can write (every shipped
    # profile's recipes are writable now): q4_0 through the HTP's QDQ ONNX
    t = load_target("snapdragon-8gen2")
    htp = dataclasses.replace(t.runtimes["qnn-htp"], recipes=("w4a16", "w8a8", "q4_0"))
    t = dataclasses.replace(t, runtimes={**t.runtimes, "qnn-htp": htp})
    with pytest.raises(ConfigError, match="recipe 'q4_0' cannot be written as onnx-qdq .*onnx-qdq takes: fp32, fp16"):
        check(tiny_loaded().spec, t, "q4_0", "qnn-htp")
    from edge.build import BuildConfig, build_package

    with pytest.raises(ConfigError, match="op 'MoE MLP'"):
        build_package(tiny_loaded(n_experts=4, n_experts_per_tok=2, moe_ffn_dim=32), "horizon-j5", None,
                      tmp_path / "moe", cfg=BuildConfig(**CFG), progress=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_mid_build_leaves_nothing_and_stale_dirs_are_swept(tmp_path):
    """A build stopped with SIGTERM unwinds (no temporary directory left); one killed with SIGKILL
    leaves its directory, which the next build into the same place removes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("import sys, time\nfrom edge.package import PackageWriter\n"
            "with PackageWriter(sys.argv[1]) as w:\n"
            "    (w.dir / 'model.onnx').write_bytes(b'x' * 1000)\n    print('ready', flush=True)\n    time.sleep(60)\n")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "pkg")], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        os.kill(p.pid, sig)
        p.wait(timeout=30)
        left = list(tmp_path.iterdir())
        if sig == signal.SIGTERM:
            assert p.returncode == 128 + signal.SIGTERM and left == []
        else:
            assert [d.name for d in left] == [f".pkg.tmp-{p.pid}"]
    time.sleep(0.1)
    from edge.package import PackageWriter

    with PackageWriter(tmp_path / "pkg"):
        assert [d.name for d in tmp_path.iterdir()] == [f".pkg.tmp-{os.getpid()}"]  # the stale one is gone
