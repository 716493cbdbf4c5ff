"""tests/skip_policy.py: a skip outside the allow-list fails the run; an allowed one is listed and passes."""

from __future__ import annotations

import tests.skip_policy as policy

SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_a_module():
    pytest.importorskip("edge_no_such_module")
"""


def test_an_unexpected_skip_fails_the_run(pytester):
    pytester.makepyfile(test_x=SKIPPING)
    r = pytester.runpytest("-p", "tests.skip_policy")
    r.assert_outcomes(passed=1, skipped=1)
    assert r.ret == 1
    r.stdout.fnmatch_lines(["*SKIPPED test_x.py::test_needs_a_module: could not import 'edge_no_such_module'*"
                            "[[]NOT ALLOWED[]]", "*1 unexpected skip(s) fail the run*"])


def test_a_module_level_skip_fails_the_run(pytester):
    pytester.makepyfile(test_y="import pytest\npytest.skip('no device', allow_module_level=True)\n")
    r = pytester.runpytest("-p", "tests.skip_policy")
    assert r.ret == 1
    r.stdout.fnmatch_lines(["*SKIPPED test_y.py: no device [[]NOT ALLOWED[]]"])


def test_an_allowed_skip_is_listed_and_passes(pytester, monkeypatch):
    monkeypatch.setitem(policy.ALLOWED, "could not import 'edge_no_such_module'", "no wheel here")
    pytester.makepyfile(test_x=SKIPPING)
    r = pytester.runpytest("-p", "tests.skip_policy")
    r.assert_outcomes(passed=1, skipped=1)
    assert r.ret == 0
    r.stdout.fnmatch_lines(["*SKIPPED test_x.py::test_needs_a_module:*[[]allowed: no wheel here[]]"])


def test_qnn_is_allowed_to_skip_only_where_it_has_no_wheel():
    reason = "could not import 'onnxruntime_qnn': No module named 'onnxruntime_qnn'"
    assert bool(policy.allowed(reason)) == (not policy.QNN_HAS_WHEELS)
    assert not policy.allowed("could not import 'onnxruntime': No module named 'onnxruntime'")


def test_no_test_skips_on_a_hard_dependency():
    """A hard dependency is imported plainly: an import or ABI break must fail, not turn a file into skips.
    Only an optional extra without wheels everywhere (onnxruntime_qnn) may be importorskip'ed."""
    import re
    from pathlib import Path

    optional = {"onnxruntime_qnn"}
    found = []
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        for m in re.finditer(r"importorskip\(\s*['\"]([\w.]+)['\"]", path.read_text()):
            if m.group(1) not in optional and not m.group(1).startswith("edge_no_such"):
                found.append(f"{path.name}: {m.group(1)}")
    assert not found, found
