"""Package step: a device package is a directory of artifacts + tokenizer + manifest.json + report.md.

The manifest has a schema version and records target, recipe, source model and calibration hashes,
tool versions (``edge.cache.tool_versions``, the list the stage-cache keys use), every file's sha256
and size, the artifacts (format, runtime, files, layout), the accuracy against the reference (the
model as loaded, before this build quantized it) and the simulated performance. Nothing time- or
host-dependent is written, so the same inputs give the same bytes. A package is assembled in a
temporary sibling directory and renamed into place: an interrupted build leaves nothing behind.

    with PackageWriter("out/pkg") as w:      # writes into out/.pkg.tmp-<pid>
        export_onnx(model, w.dir, ...)
        w.add_artifact({...}); w.finish(manifest_fields, report_md)   # -> out/pkg
    m = read_manifest("out/pkg"); verify(m, "out/pkg")              # EdgeError when tampered
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
from pathlib import Path

from edge.errors import EdgeError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class PackageError(EdgeError):
    """A package that is missing, incomplete, from a newer SDK, or modified."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PackageWriter:
    """Assembles a package in ``<out>/../.<name>.tmp-<pid>``; ``finish`` renames it to ``out``.

    States: open -> (artifacts added) -> finished. Leaving the ``with`` block without ``finish``
    (an exception, Ctrl-C) removes the temporary directory.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.dir = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}"
        self.artifacts: list[dict] = []
        self.finished = False

    def __enter__(self) -> PackageWriter:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.out.parent.glob(f".{self.out.name}.tmp-*"):  # left by a build killed with SIGKILL
            pid = stale.name.rsplit("-", 1)[-1]
            if stale.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir()
        # a build stopped with SIGTERM (CI timeouts, kill) unwinds like Ctrl-C: the temporary directory goes
        self._old_term = None
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, _terminate)
        return self

    def __exit__(self, *exc) -> None:
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)
        if not self.finished:
            shutil.rmtree(self.dir, ignore_errors=True)

    def add_artifact(self, artifact: dict) -> None:
        assert not self.finished, "add_artifact after finish"
        self.artifacts.append(artifact)

    def finish(self, fields: dict, report_md: str) -> Path:
        """Write manifest.json and report.md, then move the directory into place."""
        assert not self.finished, "finish called twice"
        (self.dir / "report.md").write_text(report_md)
        files = {}
        for p in sorted(self.dir.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                files[p.relative_to(self.dir).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        manifest = {"manifest_version": MANIFEST_VERSION, **fields, "artifacts": self.artifacts, "files": files}
        (self.dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if self.out.exists():  # replace an older package only once the new one is complete
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            self.out.rename(old)
            self.dir.rename(self.out)
            shutil.rmtree(old)
        else:
            self.dir.rename(self.out)
        self.finished = True
        return self.out


def read_manifest(pkg: str | Path) -> dict:
    """The manifest of a package; PackageError when missing, unreadable or from a newer SDK."""
    pkg = Path(pkg)
    path = pkg / MANIFEST
    if not pkg.is_dir():
        raise PackageError(f"{pkg}: not a package directory")
    if not path.exists():
        raise PackageError(f"{pkg}: no {MANIFEST}; not an edge package (build one with `edge build`)")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackageError(f"{path}: not valid JSON ({e})") from e
    v = m.get("manifest_version") if isinstance(m, dict) else None
    if not isinstance(v, int):
        raise PackageError(f"{path}: no integer manifest_version")
    if v > MANIFEST_VERSION:
        raise PackageError(f"{path}: manifest version {v} is newer than this SDK reads ({MANIFEST_VERSION}); "
                           "upgrade edge")
    return m


def verify(manifest: dict, pkg: str | Path) -> None:
    """Check every listed file's size and sha256, and that no listed file is missing."""
    pkg = Path(pkg)
    for rel, info in sorted(manifest.get("files", {}).items()):
        p = pkg / rel
        if not p.is_file():
            raise PackageError(f"{pkg}: {rel} is listed in the manifest but missing")
        if p.stat().st_size != info["size"] or sha256_file(p) != info["sha256"]:
            raise PackageError(f"{pkg}: {rel} does not match its sha256 in the manifest (modified or corrupt); "
                               "rebuild the package")
