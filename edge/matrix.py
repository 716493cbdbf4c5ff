"""Build matrices on Ray: every (model, target, recipe) is one Ray task; one summary table + JSON.

    from edge.matrix import Matrix, run_matrix
    m = Matrix(models=("smollm2-135m",), targets=("host-x86-2core", "raspberry-pi-5"),
               recipes=("q4_0", "q8_0"), out=Path("builds"))
    summary = run_matrix(m)               # local Ray (2 CPUs) unless m.address names a cluster

Each task calls ``build_cached``: ``edge.build.build`` behind the stage cache (edge.cache), keyed
by contents (``cache_parts``): the source model's file or tree hash, the target profile's bytes,
the recipe (a recipe file by its bytes), the build config, the calibration and held-out texts
(calib/), edge's own source and the tool versions. A re-run, or a second matrix sharing builds,
copies the package from the cache in seconds; an edit to any of these rebuilds. Before building,
a whole-graph export (.pte, ONNX) is checked against this machine's memory (edge.stream) and
refused with the figure rather than OOM-killed.

One failing build never stops the others: its row says why in one line. Progress is printed as
builds finish (``ray.wait``). Ray is optional: ``pip install 'edge[ray]'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge import calib
from edge.build import BuildConfig, build
from edge.cache import StageCache, code_hash, file_hash, tool_versions, tree_hash
from edge.errors import ConfigError, EdgeError, require_one_of
from edge.export.check import check
from edge.model.load import load_spec, resolve
from edge.sim import simulate
from edge.stream import check_export_memory
from edge.targets import load_target

CONNECT_TIMEOUT_S = 10.0


class MatrixError(EdgeError):
    """A matrix that cannot run at all (no Ray, unreachable cluster, bad matrix file)."""


@dataclass(frozen=True)
class Matrix:
    models: tuple[str, ...]
    targets: tuple[str, ...]
    recipes: tuple[str, ...] = ("default",)  # "default": the target's own recipe
    out: Path = Path("builds")
    address: str | None = None  # Ray cluster ("host:port", "ray://host:port", "auto"); None: local
    num_cpus: int = 2  # local Ray only
    cpus_per_build: float = 1.0
    builder: str = "package"  # key of BUILDERS
    cache_root: str | None = None  # default: $EDGE_CACHE or ~/.cache/edge
    build_options: dict = field(default_factory=dict)  # edge.build.BuildConfig fields (max_seq, calib_samples...)

    def __post_init__(self) -> None:
        for k in ("models", "targets", "recipes"):
            v = getattr(self, k)
            if isinstance(v, str) or not v or not all(isinstance(x, str) and x for x in v):
                raise ConfigError(f"matrix {k} must be a non-empty list of names, got {v!r}")
        require_one_of("matrix builder", self.builder, BUILDERS)
        if self.num_cpus < 1 or self.cpus_per_build <= 0:
            raise ConfigError(f"matrix num_cpus ({self.num_cpus}) and cpus_per_build ({self.cpus_per_build}) "
                              "must be positive")

    def jobs(self) -> list[dict]:
        return [{"model": m, "target": t, "recipe": None if r == "default" else r}
                for m in self.models for t in self.targets for r in self.recipes]


def load_matrix_file(path: str | Path, **overrides) -> Matrix:
    """A YAML matrix file: models:, targets:, recipes: (lists), and optionally out:, address:."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as e:
        raise MatrixError(f"{p}: cannot read the matrix file ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise MatrixError(f"{p}: not valid YAML ({e})") from e
    allowed = {"models", "targets", "recipes", "out", "address", "num_cpus", "builder", "build_options"}
    if not isinstance(data, dict) or not {"models", "targets"} <= set(data) or set(data) - allowed:
        raise MatrixError(f"{p}: a matrix file is a mapping with models: and targets: (lists) and optionally "
                          f"{', '.join(sorted(allowed - {'models', 'targets'}))}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if "out" in kw:
        kw["out"] = Path(kw["out"])
    return Matrix(**kw)


# ---- one build (runs inside a Ray worker) ------------------------------------------------------------------

def job_name(job: dict) -> str:
    return f"{_safe(job['model'])}__{job['target']}__{job['recipe'] or 'default'}"


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(s).name or s)


def source_hash(model: str, cache_root: str | None) -> str:
    src = resolve(model)
    return tree_hash(src.path, cache_root)


def recipe_key(recipe: str | None, cache_root: str | None = None) -> dict | None:
    """A recipe by what it says: a preset by name, a recipe file by its bytes (not its path)."""
    if recipe is not None and Path(recipe).is_file():
        return {"file_sha256": file_hash(recipe, cache_root)}
    return {"preset": recipe} if recipe is not None else None


def cache_parts(job: dict, builder: str, options: dict, cache_root: str | None = None) -> dict:
    """The stage-cache key of one matrix entry: the contents of everything the build reads."""
    tp = load_target(job["target"])
    return {"model": source_hash(job["model"], cache_root), "target": tp.name,
            "target_profile": hashlib.sha256(Path(tp.path).read_bytes()).hexdigest() if tp.path else None,
            "recipe": recipe_key(job["recipe"], cache_root) or {"preset": tp.defaults.recipe}, "builder": builder,
            "options": options,
            # calibration sets and the held-out text the package is scored on, with their SOURCE.yaml
            "texts": tree_hash(calib.CALIB_DIR, cache_root),
            "code": code_hash(),  # a build runs most of edge: every module's source
            "tools": tool_versions()}


def build_package(job: dict, out: Path, options: dict) -> dict:
    """edge.build for one combination; returns the manifest's figures."""
    opts = dict(options)
    if "max_seq" in opts and "eval_window" not in opts:
        opts["eval_window"] = min(BuildConfig.eval_window, opts["max_seq"])
    pkg = build(job["model"], job["target"], job["recipe"], out, cfg=BuildConfig(**opts))
    return figures(json.loads((Path(pkg) / "manifest.json").read_text()), Path(pkg))


def plan_only(job: dict, out: Path, options: dict) -> dict:
    """Dry run: the will-it-work check and the simulator's figures, no export (seconds per entry)."""
    spec, tp = load_spec(job["model"]), load_target(job["target"])
    recipe = job["recipe"] or tp.defaults.recipe
    plan = check(spec, tp, recipe, None, options.get("max_seq", 512))
    sim = simulate(spec, recipe, tp, runtime=plan.runtime)
    out.mkdir(parents=True, exist_ok=True)
    fig = {"recipe": recipe, "runtime": plan.runtime, "format": plan.target_format, "writer": plan.writer,
           "simulated": {"decode_tok_s": round(sim.decode_tok_s, 2),
                         "peak_memory_mib": round(sim.peak_memory_bytes / 2**20), "fits": sim.fits}}
    (out / "plan.json").write_text(json.dumps(fig | {"plan": asdict(plan)}, indent=2, sort_keys=True) + "\n")
    return fig


# builder name -> function(job, package dir to write, build options) -> figures
BUILDERS: dict[str, Callable[[dict, Path, dict], dict]] = {"package": build_package, "plan": plan_only}


def figures(manifest: dict, pkg: Path) -> dict:
    """The few numbers a matrix row shows, from a package manifest: measured on the host (bytes, and
    accuracy against the reference model) apart from the simulator's prediction for the device."""
    art = manifest.get("artifacts", [{}])[0]
    acc, sim = art.get("accuracy", {}), manifest.get("simulated", {})
    return {"recipe": manifest.get("recipe"), "runtime": manifest.get("runtime"), "format": art.get("format"),
            "bytes": sum(f["size"] for f in manifest.get("files", {}).values()),
            "top1": acc.get("top1_agreement"), "kld": acc.get("kld_mean"),
            "simulated": {"decode_tok_s": sim.get("decode_tok_s"), "fits": sim.get("fits")}}


def _memory_check(job: dict, max_seq: int) -> None:
    spec, tp = load_spec(job["model"]), load_target(job["target"])
    plan = check(spec, tp, job["recipe"] or tp.defaults.recipe, None, max_seq)
    check_export_memory(spec, plan.writer, plan.option)


def build_cached(job: dict, out_dir: str, builder: str = "package", cache_root: str | None = None,
                 options: dict | None = None) -> dict:
    """One matrix entry: build (or fetch from the stage cache) and copy to ``out_dir/<name>``.

    Never raises: the row carries status "ok" or "failed" with a one-line error.
    """
    t0 = time.time()
    name = job_name(job)
    row = {"name": name, **job, "status": "failed", "error": None, "cached": False, "path": None,
           "host": socket.gethostname(), "pid": os.getpid()}
    try:
        options = dict(options or {})
        parts = cache_parts(job, builder, options, cache_root)
        if builder == "package":
            _memory_check(job, options.get("max_seq", 512))
        fn = BUILDERS[builder]
        cache = StageCache(cache_root)
        entry = cache.entry(f"matrix-{builder}", parts, lambda d: fn(job, d / "pkg", options))
        dest = Path(out_dir) / name
        _copy_tree(entry.path / "pkg", dest)
        row.update(status="ok", cached=entry.hit, path=str(dest), figures=entry.meta)
    except Exception as e:  # a failed entry is a row, not a crash of the matrix
        row["error"] = one_line(e)
    row["seconds"] = round(time.time() - t0, 2)
    return row


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if not isinstance(e, EdgeError) else msg


def _copy_tree(src: Path, dest: Path) -> None:
    """Replace ``dest`` with a copy of ``src`` (hard links where the filesystem allows)."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, tmp, copy_function=link)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


# ---- the matrix -------------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise MatrixError("edge matrix runs builds on Ray, which is not installed: pip install 'edge[ray]'") from e
    return ray


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in ``timeout_s`` with one line when a Ray address does not answer (ray.init would retry)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MatrixError(f"Ray address '{address}' is not host:port (or ray://host:port, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = f"no answer in {timeout_s:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e)).lower()
        raise MatrixError(f"Ray cluster at {address} is unreachable ({why}); "
                          "start one with `ray start --head` or omit --address to run on a local Ray") from e


@dataclass
class Summary:
    rows: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    address: str = "local"

    @property
    def ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    def to_dict(self) -> dict:
        return {"address": self.address, "wall_s": round(self.wall_s, 1), "builds": len(self.rows), "ok": self.ok,
                "failed": len(self.rows) - self.ok, "cached": sum(bool(r.get("cached")) for r in self.rows),
                "rows": self.rows}

    def table(self) -> str:
        head = ("| model | target | recipe | status | cached | seconds | size MB | top-1 | simulated decode tok/s "
                "(device) | error |")
        lines = [head, "|" + "---|" * 10]
        for r in sorted(self.rows, key=lambda r: r["name"]):
            f = r.get("figures") or {}
            size = f"{f['bytes'] / 1e6:.1f}" if f.get("bytes") else ""
            top1 = f"{f['top1']:.4f}" if isinstance(f.get("top1"), float) else ""
            sim = (f.get("simulated") or {}).get("decode_tok_s")
            dec = f"{sim:.1f}" if isinstance(sim, int | float) else ""
            lines.append(f"| {_safe(r['model'])} | {r['target']} | {f.get('recipe') or r['recipe'] or 'default'} | "
                         f"{r['status']} | {'yes' if r.get('cached') else 'no'} | {r['seconds']:.1f} | {size} | "
                         f"{top1} | {dec} | {(r.get('error') or '').replace('|', '/')} |")
        return "\n".join(lines) + "\n"


def run_matrix(m: Matrix, progress: Callable[[str], None] = print) -> Summary:
    """Run every (model, target, recipe) of ``m`` as a Ray task; write summary.json + summary.md."""
    ray = _import_ray()
    if m.address:
        check_reachable(m.address)
    out = m.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = not ray.is_initialized()
    t0 = time.time()
    try:
        if started:
            if m.address:
                ray.init(address=m.address, log_to_driver=False)
            else:
                # Ray nices its workers (15) by default; on a build machine shared with other work that
                # starves the builds this command exists to run. A user's own setting wins.
                os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(num_cpus=m.num_cpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
    except Exception as e:
        raise MatrixError(f"cannot start Ray {'at ' + m.address if m.address else 'locally'}: {one_line(e)}") from e
    summary = Summary(address=m.address or "local")
    try:
        # build_cached returns failures as rows; retries only re-run a worker that died (OOM-killed by Ray's
        # memory monitor on a crowded host, segfault)
        task = ray.remote(num_cpus=m.cpus_per_build, max_retries=2)(build_cached)
        jobs = m.jobs()
        pending = {task.remote(j, str(out), m.builder, m.cache_root, m.build_options): j for j in jobs}
        progress(f"matrix: {len(jobs)} builds ({len(m.models)} models x {len(m.targets)} targets x "
                 f"{len(m.recipes)} recipes) on {summary.address} Ray")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                row = ray.get(done[0])
            except Exception as e:  # the worker died (OOM-killed, segfault): that row fails, the rest go on
                row = {"name": job_name(job), **job, "status": "failed", "error": one_line(e), "cached": False,
                       "path": None, "seconds": round(time.time() - t0, 2)}
            summary.rows.append(row)
            n = len(summary.rows)
            what = (f"ok in {row['seconds']:.1f} s{' (cache hit)' if row.get('cached') else ''} -> {row['path']}"
                    if row["status"] == "ok" else f"FAILED: {row['error']}")
            progress(f"[{n}/{len(jobs)}] {row['name']}: {what}")
    finally:
        if started:
            ray.shutdown()
    summary.wall_s = time.time() - t0
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
    (out / "summary.md").write_text(summary.table())
    return summary
