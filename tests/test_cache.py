"""Stage cache: keys, hits, concurrent builders of one key, corrupt entries, full disk."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path

import pytest

from edge.cache import (
    MARKER,
    TOOLS,
    CacheError,
    StageCache,
    code_hash,
    file_hash,
    stage_key,
    tool_versions,
)


def _write(text: str):
    def build(d):
        (d / "out.txt").write_text(text)
        return {"n": len(text)}

    return build


def test_hit_after_build_and_key_depends_on_every_part(tmp_path):
    c = StageCache(tmp_path)
    parts = {"model": "abc", "recipe": {"w": "q4_0", "group": 32}, "tools": tool_versions()}
    p1 = c.get_or_build("export", parts, _write("one"))
    p2 = c.get_or_build("export", dict(parts), _write("two"))  # same inputs: not rebuilt
    assert p1 == p2 and (p1 / "out.txt").read_text() == "one"
    assert (c.hits, c.misses) == (1, 1)
    assert c.entry("export", parts, _write("x")).meta == {"n": 3}
    # key order does not matter; any changed value does
    assert stage_key("s", {"a": 1, "b": 2}) == stage_key("s", {"b": 2, "a": 1})
    assert stage_key("s", {"a": 1}) != stage_key("s", {"a": 2}) != stage_key("t", {"a": 2})
    p3 = c.get_or_build("export", parts | {"recipe": {"w": "q8_0", "group": 32}}, _write("three"))
    assert p3 != p1
    info = c.info()
    assert info["entries"] == 2 and info["stages"]["export"]["entries"] == 2
    assert c.clear() == 2 and c.info()["entries"] == 0


def _racer(root, q):
    c = StageCache(root)
    counter = os.path.join(root, "builds.log")

    def build(d):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # long enough that every racer arrives while the first builds
        (d / "blob.bin").write_bytes(os.urandom(1 << 16))
        (d / "sub").mkdir()
        (d / "sub" / "pid").write_text(str(os.getpid()))

    p = c.get_or_build("lowered", {"model": "m", "recipe": "r"}, build)
    q.put((str(p), (p / "blob.bin").read_bytes()))


def test_concurrent_builders_of_one_key_build_once(tmp_path):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(tmp_path), q)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # one builder, three waiters
    assert len({r[0] for r in results}) == 1 and len({r[1] for r in results}) == 1
    entry = results[0][0]
    assert json.loads(open(os.path.join(entry, MARKER)).read())["files"]["blob.bin"]["size"] == 1 << 16
    assert not [n for n in os.listdir(os.path.dirname(entry)) if ".tmp-" in n]


def test_corrupt_or_partial_entries_are_rebuilt(tmp_path):
    c = StageCache(tmp_path)
    parts = {"k": 1}
    p = c.get_or_build("s", parts, _write("good"))
    (p / "out.txt").write_text("goo")  # truncated
    assert c.lookup("s", parts) is None
    p = c.get_or_build("s", parts, _write("good"))
    assert (p / "out.txt").read_text() == "good" and c.misses == 2
    time.sleep(0.01)
    (p / "out.txt").write_text("evil")  # same size, new bytes (new mtime): caught by the checksum
    assert c.lookup("s", parts) is None
    p = c.get_or_build("s", parts, _write("good"))
    (p / MARKER).unlink()  # a directory without its completion marker is not an entry
    assert c.lookup("s", parts) is None
    assert (c.get_or_build("s", parts, _write("good")) / "out.txt").read_text() == "good"


def test_failed_build_leaves_nothing(tmp_path):
    c = StageCache(tmp_path)

    def boom(d):
        (d / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("export crashed")

    with pytest.raises(RuntimeError, match="export crashed"):
        c.get_or_build("s", {"k": 1}, boom)

    def full(d):
        (d / "half.bin").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheError, match="disk full"):
        c.get_or_build("s", {"k": 2}, full)
    stage_dir = tmp_path / "v1" / "s"
    assert [n.name for n in stage_dir.iterdir() if not n.name.endswith(".lock")] == []
    assert c.info()["entries"] == 0
    with pytest.raises(CacheError, match="wrote no files"):
        c.get_or_build("s", {"k": 3}, lambda d: None)


def test_file_hash_is_memoized_and_sees_changes(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    h1 = file_hash(f, tmp_path / "memo")
    assert file_hash(f, tmp_path / "memo") == h1
    time.sleep(0.01)
    f.write_bytes(b"b" * 1000)
    assert file_hash(f, tmp_path / "memo") != h1


def test_tool_versions_is_the_one_list_manifests_and_keys_share():
    import edge
    import edge.package

    v = tool_versions()
    assert tuple(v) == TOOLS and v["edge"] == edge.__version__
    assert all(isinstance(x, str) and x for x in v.values())
    assert not hasattr(edge.package, "tool_versions")  # the manifest takes the cache's list


@pytest.fixture
def edge_copy(tmp_path):
    """A copy of edge's source to edit (code_hash reads the tree it is pointed at)."""
    src = Path(__file__).resolve().parent.parent / "edge"
    dst = tmp_path / "edge"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_code_hash_follows_the_modules_a_stage_imports_and_only_those(edge_copy):
    def touch(rel):
        with open(edge_copy / rel, "a") as f:
            f.write("\n# edited\n")

    llama = code_hash("edge.model.llama", root=edge_copy)
    every = code_hash(root=edge_copy)
    assert llama == code_hash("edge.model.llama", root=edge_copy) and len(llama) == 64
    touch("model/spec.py")  # imported at the top of llama.py: the model's code changed
    assert code_hash("edge.model.llama", root=edge_copy) != llama
    llama = code_hash("edge.model.llama", root=edge_copy)
    assert code_hash(root=edge_copy) != every
    every = code_hash(root=edge_copy)
    touch("sim/report.py")  # not imported by the model: its key stays, the whole-tree key moves
    assert code_hash("edge.model.llama", root=edge_copy) == llama
    assert code_hash(root=edge_copy) != every
    with pytest.raises(CacheError, match="no source for module 'edge.no_such'"):
        code_hash("edge.no_such", root=edge_copy)
    with pytest.raises(CacheError, match="not an edge module"):
        code_hash("torch.nn", root=edge_copy)
