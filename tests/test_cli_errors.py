"""The CLI's error paths: a broken install fails loudly instead of falling back to a lesser path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "examples/deepseek-8b/dense-8b/config.json"


def cli(prelude: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", f"{prelude}; from edge.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_simulate_with_an_unimportable_model_loader_fails():
    """edge simulate read a config.json directly when edge.model.load failed to import, hiding the
    broken install; now the ImportError surfaces and the command fails."""
    ok = cli("import sys", "simulate", "--model", CONFIG, "--target", "rk3588", "--json")
    assert ok.returncode in (0, 1), ok.stderr  # runs (1: a budget failed, still a verdict)
    r = cli("import sys; sys.modules['edge.model.load'] = None", "simulate", "--model", CONFIG, "--target", "rk3588")
    assert r.returncode != 0 and "import of edge.model.load halted" in r.stderr, r.stdout + r.stderr


def test_probe_into_a_missing_directory_fails_before_measuring(tmp_path):
    """A --results or --out path in a directory that does not exist is refused in one line at once, not
    after minutes of measuring, and nothing is written."""
    for opt in ("--results", "--out"):
        bad = tmp_path / "no-such-dir" / "probe.json"
        r = cli("import sys", "targets", "probe", opt, str(bad))
        assert r.returncode != 0 and not bad.parent.exists(), r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in r.stderr, r.stderr
