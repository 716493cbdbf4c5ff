"""Stage cache: every stage's output stored under a key derived from its inputs.

A key is the sha256 of the stage name and its input parts in canonical JSON. The parts are the
contents of what the stage reads, never names or paths: the source model's file or tree hash, the
recipe (a recipe file by its bytes), the calibration and held-out text hashes, the source of the
edge modules the stage runs (``code_hash``) and the tool versions (``tool_versions``, the same list
a package manifest records). Same inputs, same key: a re-run, or another matrix entry sharing a
prefix of stages, finds the output instead of rebuilding it; change any input and the key changes.

    cache = StageCache()                                  # $EDGE_CACHE or ~/.cache/edge
    parts = {"model": file_hash(gguf_path), "recipe": recipe.to_dict(),
             "code": code_hash("edge.export.gguf"), "tools": tool_versions()}
    path = cache.get_or_build("export-gguf", parts, lambda d: export_gguf(..., d / "model.gguf"))

Layout: ``<root>/v1/<stage>/<key>/`` holds the files ``build_fn`` wrote plus ``.edge-entry.json``
(the completion marker: stage, key, inputs, every file's size and sha256, written last).

Concurrency and failure: ``build_fn`` writes into a private temporary directory, which is renamed
into place only once complete, so a reader sees a whole entry or none. Builders of one key take
an exclusive ``fcntl.flock`` on ``<key>.lock``: one builds, the others wait and then reuse its
entry. The kernel drops the lock when its holder dies, so a killed build never blocks the next
one, and its temporary directory is swept. An entry whose marker is missing or whose files no
longer match it (truncated, edited) is rebuilt. A full disk fails the entry with one line and
leaves nothing behind.
"""

from __future__ import annotations

import ast
import errno
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import EdgeError

LAYOUT = "v1"
MARKER = ".edge-entry.json"
HASH_MEMO = "filehash"  # <root>/filehash/<sha of path, size, mtime, inode> -> sha256 of the file

EDGE_DIR = Path(__file__).resolve().parent  # the edge package whose source code_hash reads

# the tools whose versions change what a stage produces (package names, as pip knows them): the one
# list behind every stage-cache key and every package manifest's "tools"
TOOLS = ("edge", "torch", "executorch", "torchao", "onnx", "onnxruntime", "llama-cpp-python", "gguf")
NOT_INSTALLED = "not installed"


class CacheError(EdgeError):
    """A cache entry that cannot be built or stored (full disk, unwritable root, lock timeout)."""


def default_root() -> Path:
    return Path(os.environ.get("EDGE_CACHE") or Path.home() / ".cache" / "edge")


def tool_versions() -> dict[str, str]:
    """Versions of the tools in TOOLS (NOT_INSTALLED when absent); reads metadata, imports nothing heavy.

    edge's own is the running code's ``edge.__version__``, not whatever distribution pip recorded.
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in TOOLS:
        try:
            out[name] = __version__ if name == "edge" else version(name)
        except PackageNotFoundError:
            out[name] = NOT_INSTALLED
    return out


def code_hash(*modules: str, root: str | Path | None = None) -> str:
    """sha256 of the edge source a stage runs: the named modules (``"edge.model.llama"``) and every
    edge module they import at module level, transitively; no names: every module of edge.

    Imports inside functions are not followed: in edge they load heavy engines or helpers for
    reports and keys, not the code that computes a stage's output (a stage that runs such a helper
    names its module). ``root`` is the edge package directory (default: this one).
    """
    base = Path(root) if root is not None else EDGE_DIR
    if modules:
        files: set[Path] = set()
        todo = [_module_file(m, base) for m in modules]
        while todo:
            f = todo.pop()
            if f not in files:
                files.add(f)
                todo += _top_level_edge_imports(f, base)
    else:
        files = set(base.rglob("*.py"))
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(base).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def model_code(model) -> tuple[str, ...]:
    """The edge modules defining the classes of a torch model's submodules (what its forward runs)."""
    return tuple(sorted({type(m).__module__ for m in model.modules() if type(m).__module__.split(".")[0] == "edge"}))


def _module_file(name: str, base: Path) -> Path:
    parts = name.split(".")
    if parts[0] != "edge":
        raise CacheError(f"code_hash: '{name}' is not an edge module (edge.<package>.<module>)")
    p = base.joinpath(*parts[1:])
    for f in (p / "__init__.py", p.with_suffix(".py")):
        if f.is_file():
            return f
    raise CacheError(f"code_hash: no source for module '{name}' under {base}")


def _top_level_edge_imports(f: Path, base: Path) -> list[Path]:
    """Source files of the edge modules ``f`` imports outside any function (``from edge.x import y``
    names module edge.x, and edge.x.y too when that is a module)."""
    names: list[str] = []
    stack = list(ast.parse(f.read_bytes(), filename=str(f)).body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    out = []
    for n in names:
        if n.split(".")[0] == "edge":
            try:
                out.append(_module_file(n, base))
            except CacheError:
                pass  # ``from edge.x import name``: name is a function or class, not a module
    return out


def model_hash(model) -> str:
    """sha256 over a torch model's state names and fp32 bytes: the same weights give the same hash,
    wherever they were loaded from."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace; Paths and other objects as their str()."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)


def stage_key(stage: str, parts: dict) -> str:
    return hashlib.sha256(canonical_json({"stage": stage, "parts": parts}).encode()).hexdigest()


_memo: dict[tuple, str] = {}


def file_hash(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 of a file, memoized by (path, size, mtime, inode): a 16 GB checkpoint is read once.

    The memo lives in this process and, with ``memo_dir`` (default: the cache root), on disk, so
    the next process skips the read too. A file changed in place with the same size and mtime
    (which nothing ordinary does) would not be re-read.
    """
    p = Path(path).resolve()
    ident = _ident(p)
    if ident in _memo:
        return _memo[ident]
    memo_file = _memo_file(ident, memo_dir)
    try:
        digest = memo_file.read_text().strip()
        if len(digest) == 64:
            _memo[ident] = digest
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    remember_hash(p, digest, memo_dir)
    return digest


def _ident(p: Path) -> tuple:
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns, st.st_ino)


def _memo_file(ident: tuple, memo_dir: str | Path | None) -> Path:
    root = Path(memo_dir) if memo_dir is not None else default_root()
    return root / HASH_MEMO / hashlib.sha256(canonical_json(ident).encode()).hexdigest()


def remember_hash(path: str | Path, digest: str, memo_dir: str | Path | None = None) -> None:
    """Record a known sha256 for a file (e.g. one just renamed into place: same bytes, new path)."""
    ident = _ident(Path(path).resolve())
    _memo[ident] = digest
    memo_file = _memo_file(ident, memo_dir)
    try:  # the memo is an optimisation: a read-only or full cache root must not fail the caller
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_name(f".{memo_file.name}.{os.getpid()}")
        tmp.write_text(digest)
        tmp.replace(memo_file)
    except OSError:
        pass


def tree_hash(path: str | Path, memo_dir: str | Path | None = None) -> str:
    """sha256 over the relative names and file hashes of a file or directory (a checkpoint dir)."""
    p = Path(path)
    if p.is_file():
        return file_hash(p, memo_dir)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + file_hash(f, memo_dir).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    stage: str
    key: str
    path: Path
    hit: bool  # found complete (True) or built by this call (False)
    meta: dict


class StageCache:
    """Content-addressed store of stage outputs under ``root``; see the module docstring."""

    def __init__(self, root: str | Path | None = None, lock_timeout_s: float | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.lock_timeout_s = lock_timeout_s
        self.hits = 0
        self.misses = 0

    # ---- public API --------------------------------------------------------------------------
    def get_or_build(self, stage: str, key_parts: dict, build_fn: Callable[[Path], dict | None]) -> Path:
        """Path of the entry for (stage, key_parts), building it with ``build_fn(tmp_dir)`` if absent."""
        return self.entry(stage, key_parts, build_fn).path

    def entry(self, stage: str, key_parts: dict, build_fn: Callable[[Path], dict | None]) -> Entry:
        """As get_or_build, with whether it was a hit and the ``meta`` dict build_fn returned."""
        _check_stage(stage)
        key = stage_key(stage, key_parts)
        final = self._dir(stage, key)
        meta = self._valid(final)
        if meta is not None:
            self.hits += 1
            return Entry(stage, key, final, True, meta.get("meta", {}))
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cache root {self.root}: cannot create {final.parent} ({e.strerror})") from e
        with self._lock(final):
            meta = self._valid(final)  # another process may have built it while we waited
            if meta is not None:
                self.hits += 1
                return Entry(stage, key, final, True, meta.get("meta", {}))
            self._sweep(final)
            built = self._build(stage, key, key_parts, final, build_fn)
            self.misses += 1
            return Entry(stage, key, final, False, built)

    def lookup(self, stage: str, key_parts: dict) -> Path | None:
        """The complete entry's path, or None; never builds."""
        final = self._dir(stage, stage_key(stage, key_parts))
        return final if self._valid(final) is not None else None

    def info(self) -> dict:
        """Entries and bytes per stage."""
        stages: dict[str, dict] = {}
        base = self.root / LAYOUT
        if base.is_dir():
            for sdir in sorted(p for p in base.iterdir() if p.is_dir()):
                entries = [e for e in sdir.iterdir() if e.is_dir() and (e / MARKER).exists()]
                size = sum(f.stat().st_size for e in entries for f in e.rglob("*") if f.is_file())
                stages[sdir.name] = {"entries": len(entries), "bytes": size}
        return {
            "root": str(self.root),
            "layout": LAYOUT,
            "stages": stages,
            "entries": sum(s["entries"] for s in stages.values()),
            "bytes": sum(s["bytes"] for s in stages.values()),
        }

    def clear(self, stage: str | None = None) -> int:
        """Remove every entry (or one stage's); returns the number of entries removed."""
        base = self.root / LAYOUT
        targets = (
            [base / stage] if stage else ([p for p in base.iterdir() if p.is_dir()] if base.is_dir() else [])
        )
        n = 0
        for sdir in targets:
            if sdir.is_dir():
                n += sum(1 for e in sdir.iterdir() if e.is_dir() and (e / MARKER).exists())
                shutil.rmtree(sdir, ignore_errors=True)
        if stage is None:
            shutil.rmtree(self.root / HASH_MEMO, ignore_errors=True)
        return n

    # ---- internals ---------------------------------------------------------------------------
    def _dir(self, stage: str, key: str) -> Path:
        return self.root / LAYOUT / stage / key

    def _valid(self, final: Path) -> dict | None:
        """The marker if ``final`` is a complete entry whose files match it, else None."""
        try:
            marker = json.loads((final / MARKER).read_text())
        except (OSError, ValueError):
            return None
        files = marker.get("files") if isinstance(marker, dict) else None
        if not isinstance(files, dict):
            return None
        for rel, want in files.items():
            f = final / rel
            try:
                if f.stat().st_size != want["size"] or file_hash(f, self.root) != want["sha256"]:
                    return None
            except (OSError, KeyError, TypeError):
                return None
        return marker

    def _lock(self, final: Path):
        return _FileLock(final.parent / f".{final.name}.lock", self.lock_timeout_s)

    def _sweep(self, final: Path) -> None:
        """Under the lock: remove an invalid entry and temporary dirs left by dead builders."""
        if final.exists():
            aside = final.parent / f".{final.name}.bad-{os.getpid()}"
            final.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        for tmp in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)

    def _build(self, stage: str, key: str, parts: dict, final: Path, build_fn) -> dict:
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir()
            meta = build_fn(tmp) or {}
            files = {}
            for f in sorted(q for q in tmp.rglob("*") if q.is_file()):
                files[f.relative_to(tmp).as_posix()] = {
                    "size": f.stat().st_size,
                    "sha256": file_hash(f, self.root),
                }
            if not files:
                raise CacheError(f"stage '{stage}': its build wrote no files into the cache entry")
            marker = {
                "layout": LAYOUT,
                "stage": stage,
                "key": key,
                "parts": parts,
                "files": files,
                "meta": meta,
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True, default=str) + "\n")
            tmp.rename(final)
            for rel, f in files.items():  # rename keeps bytes and inode: no re-read on the next hit
                remember_hash(final / rel, f["sha256"], self.root)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(
                    f"stage '{stage}': disk full while writing its cache entry under "
                    f"{self.root} ({e.strerror}); free space or set EDGE_CACHE elsewhere"
                ) from e
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return meta


class _FileLock:
    """Exclusive flock on a lock file; ``timeout_s`` None waits as long as the holder builds."""

    def __init__(self, path: Path, timeout_s: float | None):
        self.path, self.timeout_s, self.fd = path, timeout_s, -1

    def __enter__(self) -> _FileLock:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
                    os.close(self.fd)
                    raise CacheError(
                        f"{self.path}: another build held this cache entry for more than {self.timeout_s:g} s"
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _check_stage(stage: str) -> None:
    if not stage or "/" in stage or stage.startswith("."):
        raise CacheError(f"stage name {stage!r} must be a non-empty name without '/' or a leading '.'")
