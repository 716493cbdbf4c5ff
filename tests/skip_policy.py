"""A pytest plugin that fails the run on any skip it does not expect (loaded by tests/conftest.py).

A skipped test proves nothing, so an import or ABI break that turns a test file into skips must fail
CI instead of leaving it green. The only skips accepted are the ones in ``ALLOWED``: an optional
extra that has no wheel for this platform. Every skip is listed in the summary either way (as ``-rs``
would), and unexpected ones turn the exit status into a failure.
"""

from __future__ import annotations

import platform
import sys

import pytest

# onnxruntime-qnn (the emulated Hexagon NPU, the optional edge[qnn] extra) ships wheels for Linux
# x86-64 and Windows only; anywhere else its tests skip. Where a wheel exists, CI installs it
# (scripts/setup.sh --test), so a skip there means a broken install and fails.
QNN_HAS_WHEELS = sys.platform in ("linux", "win32") and platform.machine().lower() in ("x86_64", "amd64")
ALLOWED: dict[str, str] = {} if QNN_HAS_WHEELS else {
    "could not import 'onnxruntime_qnn'": "onnxruntime-qnn has no wheel for this platform",
}

def _reason(report) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:  # (file, line, "Skipped: why")
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


def allowed(reason: str) -> str:
    """Why a skip with this reason is accepted ('' when it is not)."""
    return next((why for key, why in ALLOWED.items() if key in reason), "")


class SkipPolicy:
    def __init__(self) -> None:
        self.skips: list[tuple[str, str]] = []  # (node id, reason)

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skips.append((report.nodeid, _reason(report)))

    def pytest_collectreport(self, report) -> None:
        if report.skipped:  # a module-level skip
            self.skips.append((report.nodeid, _reason(report)))

    @property
    def unexpected(self) -> list[tuple[str, str]]:
        return [s for s in self.skips if not allowed(s[1])]

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.unexpected and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.skips:
            return
        terminalreporter.section("skips")
        for nodeid, reason in self.skips:
            why = allowed(reason)
            terminalreporter.line(f"SKIPPED {nodeid}: {reason} [{'allowed: ' + why if why else 'NOT ALLOWED'}]")
        if self.unexpected:
            terminalreporter.line(f"{len(self.unexpected)} unexpected skip(s) fail the run: fix the cause, or add "
                                  "the reason to ALLOWED in tests/skip_policy.py with why it cannot run", red=True)


def pytest_configure(config) -> None:
    config.pluginmanager.register(SkipPolicy(), "edge-skip-policy")
