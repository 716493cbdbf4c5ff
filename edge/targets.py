"""Target profiles: what a device can do, as data read from ``targets/*.yaml``.

The profile is the only place that names a device. Stages and the simulator read capabilities
(memory, bandwidth, peak throughput per data type, runtimes, toolchain limits, default budgets,
achieved efficiency) off it. Every hardware figure in a profile carries a source, or is marked
``estimate`` with the reason; loading fails on anything else::

    from edge.targets import load_target, list_targets
    t = load_target("snapdragon-8gen2")
    t.memory.peak_bandwidth          # 6.72e10 (bytes/s)
    t.units["npu"].peak["int8"]      # ops/s
    list_targets()                   # ['apple-m2', 'horizon-j5', ...]

A figure is a string with a unit (``67.2 GB/s``, ``8 GiB``, ``3.2 GHz``, ``26 TOPS``); a mapping
that holds figures says where they come from with ``source: <key of the sources table>`` or
``estimate: <why>``, inherited by everything nested inside it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.budgets import parse_budget
from edge.errors import ConfigError, UnknownTarget, did_you_mean
from edge.model.spec import parse_nm
from edge.recipes import PRESETS

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"

# ---- quantities with units -------------------------------------------------------------------
# unit kind -> {unit spelling: factor to the SI base}. One visible table; parse_quantity reads it.
UNITS: dict[str, dict[str, float]] = {
    "bytes": {
        "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
        "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
    },
    "bandwidth": {"B/s": 1, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12, "MiB/s": 2**20, "GiB/s": 2**30},
    "frequency": {"Hz": 1, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9},
    "ops": {
        "OPS": 1, "GOPS": 1e9, "TOPS": 1e12, "FLOPS": 1, "GFLOPS": 1e9, "TFLOPS": 1e12,
        "GFLOP/s": 1e9, "TFLOP/s": 1e12, "GOP/s": 1e9, "TOP/s": 1e12,
    },
    "time": {"s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9},
    "power": {"W": 1, "mW": 1e-3},
}
_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]+)\s*$")

DTYPES = ("fp32", "fp16", "bf16", "fp8", "int16", "int8", "int4")
UNIT_KINDS = ("cpu", "gpu", "npu", "dsp", "bpu")
# parts of a decoder a runtime may leave on the CPU when the rest runs on an accelerator (runtimes.*.cpu_ops)
CPU_OPS = ("embedding", "norm", "rope", "softmax", "attention", "lm_head", "sampling", "moe_router")


def parse_quantity(value: Any, kind: str, where: str) -> float:
    """``'67.2 GB/s'`` -> 6.72e10. Raises ConfigError naming ``where`` on a missing or wrong unit."""
    units = UNITS[kind]
    example = f"{value} {next(iter(u for u in units if u != 'B'), 'B')}"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where}: expected a {kind} figure with a unit, e.g. '{example}', got {value!r}")
    m = _QUANTITY.match(str(value))
    if not m:
        raise ConfigError(
            f"{where}: {value!r} has no unit; write it with one of {', '.join(units)}, e.g. '{example}'"
        )
    number, unit = float(m.group(1)), m.group(2)
    if unit not in units:
        raise ConfigError(f"{where}: unit '{unit}' is not a {kind} unit{did_you_mean(unit, units)}; "
                          f"allowed: {', '.join(units)}")
    if number <= 0:
        raise ConfigError(f"{where}: must be positive, got {value!r}")
    return number * units[unit]


# ---- the profile as frozen dataclasses -------------------------------------------------------
@dataclass(frozen=True)
class Memory:
    total: float  # bytes on the device
    available: float  # bytes one app/model may use
    dram: str
    peak_bandwidth: float  # bytes/s, theoretical
    measured_bandwidth: float = 0.0  # bytes/s, a streaming measurement (probe), 0 if none


@dataclass(frozen=True)
class CpuCluster:
    count: int
    core: str
    clock: float  # Hz


@dataclass(frozen=True)
class Cpu:
    arch: str
    clusters: tuple[CpuCluster, ...]
    caches: Mapping[str, float] = field(default_factory=dict)  # level -> bytes

    @property
    def cores(self) -> int:
        return sum(c.count for c in self.clusters)


@dataclass(frozen=True)
class ComputeUnit:
    name: str
    kind: str  # one of UNIT_KINDS
    peak: Mapping[str, float]  # dtype -> ops/s (1 multiply-add = 2 ops)
    dtypes: tuple[str, ...]  # data types the unit computes at speed
    sparsity: tuple[str, ...] = ()  # N:M semi-structured patterns it runs faster (e.g. "2:4"), see edge.sim.sparsity


@dataclass(frozen=True)
class Runtime:
    """A runtime that serves the device: where it runs, what it loads, what it costs."""

    name: str
    unit: str
    formats: tuple[str, ...]
    recipes: tuple[str, ...]
    threads: int = 1  # CPU threads it keeps busy while computing (spinning counts)
    overhead: float = 0.0  # bytes of runtime memory beside weights, KV and activations
    cpu_ops: tuple[str, ...] = ()  # parts that fall back to the CPU (CPU_OPS)
    host_core_share: float = 0.0  # cores spent driving an accelerator, while it computes
    static_kv: bool = False  # attention runs over the whole allocated context every step
    max_graph_bytes: float = 0.0  # a compiled graph's size limit (0: none); larger models are split
    toolchain: str = ""
    # N:M patterns this runtime has sparse kernels for, in the format it loads (a unit's sparse tensor
    # cores help only a runtime that stores the weights compressed and calls those kernels)
    sparsity: tuple[str, ...] = ()


@dataclass(frozen=True)
class Efficiency:
    """Achieved fractions of peak for one runtime on one unit, with what they were fitted to."""

    runtime: str
    recipes: tuple[str, ...]  # () = any recipe
    compute_dtype: str  # the unit's peak this fraction is of
    decode_bandwidth: float  # fraction of memory bandwidth reached streaming weights + KV
    decode_compute: float  # fraction of peak[compute_dtype] in matrix-vector work
    prefill_compute: float  # fraction of peak[compute_dtype] in matrix-matrix work
    overhead_per_layer: float = 0.0  # seconds of fixed cost per layer per forward pass
    prefill_overhead_per_layer: float = -1.0  # the same for prefill when it differs (eager vs graph); -1: same
    fallback_compute: float = 0.0  # fraction of the CPU's fp32 peak reached by parts left on the CPU
    # attention (QK^T, softmax, AV over the KV cache) runs in floating point whatever the weights are,
    # and at its own, lower rate: a fraction of the unit's fp32 (else fp16) peak, in decode and in
    # prefill; -1: counted with the matmuls at the row's compute fraction
    attention_compute: float = -1.0
    prefill_attention_compute: float = -1.0
    bandwidth_of: str = "peak"  # 'peak' or 'measured': which memory bandwidth the fraction is of
    fitted_to: tuple[str, ...] = ()
    source: str = ""
    estimate: str = ""

    def covers(self, runtime: str, recipe: str) -> bool:
        return self.runtime == runtime and (not self.recipes or recipe in self.recipes)


@dataclass(frozen=True)
class Defaults:
    runtime: Mapping[str, str]  # recipe -> runtime; key '*' for any other
    budgets: tuple[str, ...] = ()
    recipe: str = ""
    workload: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetProfile:
    name: str
    description: str
    device_class: str
    memory: Memory
    cpu: Cpu
    units: Mapping[str, ComputeUnit]
    runtimes: Mapping[str, Runtime]
    defaults: Defaults
    efficiency: tuple[Efficiency, ...]
    constraints: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    provenance: Mapping[str, str] = field(default_factory=dict)  # figure key -> source or estimate
    figures: Mapping[str, tuple[float, str]] = field(default_factory=dict)  # figure key -> (SI value, unit kind)
    path: str = ""

    def runtime_for(self, recipe: str, runtime: str | None = None) -> Runtime:
        """The named runtime, or the profile's default for ``recipe``; checks it serves the recipe."""
        if runtime is None:
            runtime = self.defaults.runtime.get(recipe) or self.defaults.runtime.get("*")
            if runtime is None:
                raise ConfigError(
                    f"target {self.name}: no default runtime for recipe '{recipe}'; pass --runtime "
                    f"(one of {', '.join(self.runtimes)})"
                )
        if runtime not in self.runtimes:
            raise ConfigError(
                f"target {self.name}: no runtime '{runtime}'{did_you_mean(runtime, self.runtimes)}; "
                f"known: {', '.join(self.runtimes)}"
            )
        rt = self.runtimes[runtime]
        if rt.recipes and recipe not in rt.recipes:
            raise ConfigError(
                f"target {self.name}: runtime '{runtime}' does not run recipe '{recipe}'; it runs: "
                f"{', '.join(rt.recipes)}"
            )
        return rt

    def efficiency_for(self, runtime: str, recipe: str) -> Efficiency:
        rows = [e for e in self.efficiency if e.covers(runtime, recipe)]
        if not rows:
            raise ConfigError(
                f"target {self.name}: no efficiency row for runtime '{runtime}' and recipe '{recipe}'; "
                f"add one under 'efficiency:' in {self.path or 'the profile'}"
            )
        # a row naming the recipe wins over a catch-all row
        return sorted(rows, key=lambda e: not e.recipes)[0]


# ---- loading and validation ------------------------------------------------------------------
class _Reader:
    """Walks one YAML document, checking keys, units and provenance; errors name file and key."""

    def __init__(self, path: str, sources: Mapping[str, str]):
        self.path = path
        self.sources = sources
        self.provenance: dict[str, str] = {}
        self.figures: dict[str, tuple[float, str]] = {}

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {msg}")

    def mapping(self, d: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(d, dict):
            raise self.err(key, f"expected a mapping, got {type(d).__name__}")
        for k in d:
            if k not in allowed:
                raise self.err(
                    f"{key}.{k}" if key else str(k),
                    f"unknown key{did_you_mean(str(k), allowed)}; allowed: {', '.join(allowed)}",
                )
        for k in required:
            if k not in d:
                raise self.err(f"{key}.{k}" if key else k, "missing (required)")
        return d

    def provenance_of(self, d: dict, key: str, inherited: str) -> str:
        if "source" in d:
            src = d["source"]
            names = [src] if isinstance(src, str) else src
            if not isinstance(names, list) or not names:
                raise self.err(f"{key}.source", "expected a key of 'sources' or a list of them")
            for s in names:
                if s not in self.sources:
                    raise self.err(
                        f"{key}.source",
                        f"'{s}' is not in the sources table{did_you_mean(str(s), self.sources)}; "
                        f"known: {', '.join(self.sources)}",
                    )
            return "source: " + "; ".join(f"{s} ({self.sources[s]})" for s in names)
        if "estimate" in d:
            why = d["estimate"]
            if why is True:
                return "estimate"
            if isinstance(why, str) and why.strip():
                return f"estimate: {why}"
            raise self.err(f"{key}.estimate", "write 'true' or the reason the figure is estimated")
        return inherited

    def figure(self, value: Any, kind: str, key: str, prov: str) -> float:
        v = parse_quantity(value, kind, f"{self.path}: {key}")
        if not prov:
            raise self.err(key, "a hardware figure needs 'source: <key of sources>' or 'estimate: <why>'")
        self.provenance[key] = prov
        self.figures[key] = (v, kind)
        return v

    def fraction(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise self.err(key, f"expected a fraction in (0, 1], got {value!r}")
        return float(value)

    def positive_int(self, value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.err(key, f"expected a positive integer, got {value!r}")
        return value

    def strings(self, value: Any, key: str, allowed: tuple[str, ...] = ()) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.err(key, f"expected a list of names, got {value!r}")
        for v in value:
            if allowed and v not in allowed:
                raise self.err(key, f"'{v}' is not allowed{did_you_mean(v, allowed)}; allowed: {', '.join(allowed)}")
        return tuple(value)

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.err(key, f"expected a non-empty string, got {value!r}")
        return value


_PROV = ("source", "estimate", "note")


def _sparsity(r: _Reader, v: Any, key: str, prov: str) -> tuple[str, ...]:
    """A unit's (or a runtime's) N:M sparsity support: ["2:4"], or {patterns: ["2:4"], source/estimate: ...};
    sourced."""
    if isinstance(v, dict):
        v = r.mapping(v, key, ("patterns", *_PROV), ("patterns",))
        prov = r.provenance_of(v, key, prov)
        v = v["patterns"]
    pats = r.strings(v, key)
    for pat in pats:
        try:
            parse_nm(pat)
        except ConfigError as e:
            raise r.err(key, str(e)) from e
    if pats:
        if not prov:
            raise r.err(key, "sparsity support needs 'source: <key of sources>' or 'estimate: <why>'")
        r.provenance[key] = prov
    return pats


_TOP = (
    "name", "description", "class", "sources", "memory", "cpu", "units", "runtimes", "constraints",
    "defaults", "efficiency", "probe",
)
_CLASSES = ("phone", "sbc", "camera-soc", "automotive", "laptop", "datacenter-gpu", "host")


def parse_profile(doc: Any, path: str = "<profile>") -> TargetProfile:
    """Validate one profile document (the parsed YAML) and build the frozen TargetProfile."""
    r0 = _Reader(path, {})
    doc = r0.mapping(doc, "", _TOP, ("name", "description", "sources", "memory", "cpu", "units", "runtimes",
                                     "defaults", "efficiency"))
    sources = doc["sources"]
    if not isinstance(sources, dict) or not sources or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in sources.items()
    ):
        raise r0.err("sources", "expected a mapping of short key -> citation (what, where, when)")
    r = _Reader(path, sources)
    name = r.string(doc["name"], "name")
    cls = doc.get("class", "host")
    if cls not in _CLASSES:
        raise r.err("class", f"'{cls}' is not a device class{did_you_mean(str(cls), _CLASSES)}; allowed: {', '.join(_CLASSES)}")

    m = r.mapping(doc["memory"], "memory", ("total", "available", "dram", "peak_bandwidth",
                                            "measured_bandwidth", *_PROV), ("total", "available", "peak_bandwidth"))
    mp = r.provenance_of(m, "memory", "")

    def fig(d: dict, k: str, kind: str, key: str, prov: str) -> float:
        v = d[k]
        if isinstance(v, dict):  # {value: ..., source/estimate: ...} overrides the section's provenance
            r.mapping(v, key, ("value", *_PROV), ("value",))
            return r.figure(v["value"], kind, key, r.provenance_of(v, key, prov))
        return r.figure(v, kind, key, prov)

    memory = Memory(
        total=fig(m, "total", "bytes", "memory.total", mp),
        available=fig(m, "available", "bytes", "memory.available", mp),
        dram=str(m.get("dram", "")),
        peak_bandwidth=fig(m, "peak_bandwidth", "bandwidth", "memory.peak_bandwidth", mp),
        measured_bandwidth=fig(m, "measured_bandwidth", "bandwidth", "memory.measured_bandwidth", mp)
        if "measured_bandwidth" in m else 0.0,
    )
    if memory.available > memory.total:
        raise r.err("memory.available", "is larger than memory.total")

    c = r.mapping(doc["cpu"], "cpu", ("arch", "clusters", "caches", *_PROV), ("arch", "clusters"))
    cp = r.provenance_of(c, "cpu", "")
    if not isinstance(c["clusters"], list) or not c["clusters"]:
        raise r.err("cpu.clusters", "expected a non-empty list of {count, core, clock}")
    clusters = []
    for i, cl in enumerate(c["clusters"]):
        key = f"cpu.clusters[{i}]"
        cl = r.mapping(cl, key, ("count", "core", "clock", *_PROV), ("count", "core", "clock"))
        p = r.provenance_of(cl, key, cp)
        clusters.append(CpuCluster(r.positive_int(cl["count"], f"{key}.count"), r.string(cl["core"], f"{key}.core"),
                                   fig(cl, "clock", "frequency", f"{key}.clock", p)))
    caches: dict[str, float] = {}
    if "caches" in c:
        cc = r.mapping(c["caches"], "cpu.caches", ("l1d", "l2", "l3", "slc", *_PROV))
        p = r.provenance_of(cc, "cpu.caches", cp)
        caches = {k: fig(cc, k, "bytes", f"cpu.caches.{k}", p) for k in cc if k not in _PROV}
    cpu = Cpu(r.string(c["arch"], "cpu.arch"), tuple(clusters), caches)

    units: dict[str, ComputeUnit] = {}
    if not isinstance(doc["units"], dict) or "cpu" not in doc["units"]:
        raise r.err("units", "expected a mapping of unit name -> {kind, peak, dtypes}, including 'cpu'")
    for uname, u in doc["units"].items():
        key = f"units.{uname}"
        u = r.mapping(u, key, ("kind", "peak", "dtypes", "sparsity", *_PROV), ("kind", "peak", "dtypes"))
        if u["kind"] not in UNIT_KINDS:
            raise r.err(f"{key}.kind", f"'{u['kind']}' is not a unit kind{did_you_mean(str(u['kind']), UNIT_KINDS)}; "
                                       f"allowed: {', '.join(UNIT_KINDS)}")
        p = r.provenance_of(u, key, "")
        peak_d = r.mapping(u["peak"], f"{key}.peak", DTYPES)
        if not peak_d:
            raise r.err(f"{key}.peak", "needs at least one data type -> ops/s figure")
        peak = {dt: fig(peak_d, dt, "ops", f"{key}.peak.{dt}", p) for dt in peak_d}
        units[uname] = ComputeUnit(uname, u["kind"], peak, r.strings(u["dtypes"], f"{key}.dtypes", DTYPES),
                                   _sparsity(r, u.get("sparsity", []), f"{key}.sparsity", p))

    runtimes: dict[str, Runtime] = {}
    if not isinstance(doc["runtimes"], dict) or not doc["runtimes"]:
        raise r.err("runtimes", "expected a mapping of runtime name -> {unit, formats, recipes, ...}")
    for rname, rt in doc["runtimes"].items():
        key = f"runtimes.{rname}"
        rt = r.mapping(rt, key, ("unit", "formats", "recipes", "threads", "overhead", "cpu_ops", "host_core_share",
                                 "static_kv", "max_graph_bytes", "toolchain", "sparsity", *_PROV), ("unit", "formats", "recipes"))
        if rt["unit"] not in units:
            raise r.err(f"{key}.unit", f"'{rt['unit']}' is not a unit of this profile{did_you_mean(rt['unit'], units)}; "
                                       f"known: {', '.join(units)}")
        p = r.provenance_of(rt, key, "")
        share = rt.get("host_core_share", 0.0)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0:
            raise r.err(f"{key}.host_core_share", f"expected a number of cores >= 0, got {share!r}")
        runtimes[rname] = Runtime(
            name=rname,
            unit=rt["unit"],
            formats=r.strings(rt["formats"], f"{key}.formats"),
            recipes=r.strings(rt["recipes"], f"{key}.recipes", tuple(PRESETS)),
            threads=r.positive_int(rt.get("threads", 1), f"{key}.threads"),
            overhead=fig(rt, "overhead", "bytes", f"{key}.overhead", p or "estimate") if "overhead" in rt else 0.0,
            cpu_ops=r.strings(rt.get("cpu_ops", []), f"{key}.cpu_ops", CPU_OPS),
            host_core_share=float(share),
            static_kv=bool(rt.get("static_kv", False)),
            max_graph_bytes=fig(rt, "max_graph_bytes", "bytes", f"{key}.max_graph_bytes", p)
            if "max_graph_bytes" in rt else 0.0,
            toolchain=str(rt.get("toolchain", "")),
            sparsity=_sparsity(r, rt.get("sparsity", []), f"{key}.sparsity", p),
        )

    notes = r.strings(doc.get("constraints", []), "constraints")

    d = r.mapping(doc["defaults"], "defaults", ("runtime", "budgets", "recipe", "workload"), ("runtime",))
    dr = r.mapping(d["runtime"], "defaults.runtime", (*PRESETS, "*"))
    for rec, rn in dr.items():
        if rn not in runtimes:
            raise r.err(f"defaults.runtime.{rec}", f"'{rn}' is not a runtime of this profile"
                                                   f"{did_you_mean(str(rn), runtimes)}; known: {', '.join(runtimes)}")
    budgets = r.strings(d.get("budgets", []), "defaults.budgets")
    for i, b in enumerate(budgets):
        try:
            parse_budget(b)
        except ConfigError as e:
            raise r.err(f"defaults.budgets[{i}]", str(e)) from e
    wl = r.mapping(d.get("workload", {}), "defaults.workload", ("prompt_len", "gen_len", "context", "batch"))
    workload = {k: r.positive_int(v, f"defaults.workload.{k}") for k, v in wl.items()}
    recipe = d.get("recipe", "")
    if recipe and recipe not in PRESETS:
        raise r.err("defaults.recipe", f"'{recipe}' is not a preset{did_you_mean(recipe, PRESETS)}")

    eff: list[Efficiency] = []
    if not isinstance(doc["efficiency"], list) or not doc["efficiency"]:
        raise r.err("efficiency", "expected a non-empty list of rows {runtime, compute_dtype, decode_bandwidth, ...}")
    for i, e in enumerate(doc["efficiency"]):
        key = f"efficiency[{i}]"
        e = r.mapping(e, key, ("runtime", "recipes", "compute_dtype", "decode_bandwidth", "decode_compute",
                               "prefill_compute", "overhead_per_layer", "prefill_overhead_per_layer", "fallback_compute", "attention_compute",
                               "prefill_attention_compute", "bandwidth_of", "fitted_to",
                               *_PROV),
                      ("runtime", "compute_dtype", "decode_bandwidth", "decode_compute", "prefill_compute"))
        if e["runtime"] not in runtimes:
            raise r.err(f"{key}.runtime", f"'{e['runtime']}' is not a runtime of this profile"
                                          f"{did_you_mean(str(e['runtime']), runtimes)}")
        unit = units[runtimes[e["runtime"]].unit]
        if e["compute_dtype"] not in unit.peak:
            raise r.err(f"{key}.compute_dtype", f"unit '{unit.name}' has no peak for '{e['compute_dtype']}'; "
                                                f"it has: {', '.join(unit.peak)}")
        fitted = r.strings(e.get("fitted_to", []), f"{key}.fitted_to")
        if not fitted and "estimate" not in e:
            raise r.err(key, "an efficiency row needs 'fitted_to: [measurements]' or 'estimate: <why>'")
        prov = r.provenance_of(e, key, "")
        bw_of = e.get("bandwidth_of", "peak")
        if bw_of not in ("peak", "measured") or (bw_of == "measured" and not memory.measured_bandwidth):
            raise r.err(f"{key}.bandwidth_of", "expected 'peak' or 'measured' (needs memory.measured_bandwidth)")
        eff.append(Efficiency(
            runtime=e["runtime"],
            recipes=r.strings(e.get("recipes", []), f"{key}.recipes", tuple(PRESETS)),
            compute_dtype=e["compute_dtype"],
            decode_bandwidth=r.fraction(e["decode_bandwidth"], f"{key}.decode_bandwidth"),
            decode_compute=r.fraction(e["decode_compute"], f"{key}.decode_compute"),
            prefill_compute=r.fraction(e["prefill_compute"], f"{key}.prefill_compute"),
            overhead_per_layer=parse_quantity(e["overhead_per_layer"], "time", f"{path}: {key}.overhead_per_layer")
            if "overhead_per_layer" in e else 0.0,
            prefill_overhead_per_layer=parse_quantity(e["prefill_overhead_per_layer"], "time",
                                                      f"{path}: {key}.prefill_overhead_per_layer")
            if "prefill_overhead_per_layer" in e else -1.0,
            fallback_compute=r.fraction(e["fallback_compute"], f"{key}.fallback_compute")
            if "fallback_compute" in e else 0.0,
            attention_compute=r.fraction(e["attention_compute"], f"{key}.attention_compute")
            if "attention_compute" in e else -1.0,
            prefill_attention_compute=r.fraction(e["prefill_attention_compute"], f"{key}.prefill_attention_compute")
            if "prefill_attention_compute" in e else -1.0,
            bandwidth_of=bw_of,
            fitted_to=fitted,
            source=prov if prov.startswith("source") else "",
            estimate=prov if prov.startswith("estimate") else "",
        ))
    for rname, rt in runtimes.items():
        rows = [e for e in eff if e.runtime == rname]
        if not rows:
            raise r.err("efficiency", f"runtime '{rname}' has no efficiency row")
        if rt.cpu_ops and units[rt.unit].kind != "cpu" and not all(e.fallback_compute for e in rows):
            raise r.err("efficiency", f"runtime '{rname}' leaves {', '.join(rt.cpu_ops)} on the CPU: its rows "
                                      "need 'fallback_compute' (fraction of the CPU's fp32 peak)")

    return TargetProfile(
        name=name, description=r.string(doc["description"], "description"), device_class=cls, memory=memory,
        cpu=cpu, units=units, runtimes=runtimes,
        defaults=Defaults(runtime=dict(dr), budgets=budgets, recipe=recipe, workload=workload),
        efficiency=tuple(eff), constraints=notes, sources=dict(sources),
        provenance=dict(r.provenance), figures=dict(r.figures), path=path,
    )


_DISPLAY = {"bytes": ("GB", 1e9), "bandwidth": ("GB/s", 1e9), "frequency": ("GHz", 1e9), "ops": ("TOPS", 1e12),
            "time": ("us", 1e-6), "power": ("W", 1)}


def format_figure(value: float, kind: str) -> str:
    unit, scale = _DISPLAY[kind]
    return f"{value / scale:.4g} {unit}"


def list_targets(directory: str | Path | None = None) -> list[str]:
    """Names of the profiles in ``targets/`` (file stems), sorted."""
    d = Path(directory) if directory else TARGETS_DIR
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_target(name_or_path: str | Path, directory: str | Path | None = None) -> TargetProfile:
    """A profile by name (``targets/<name>.yaml``) or by path to a YAML file."""
    import yaml

    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml") or not p.exists():
        known = list_targets(directory)
        if str(name_or_path) not in known:
            raise UnknownTarget(f"no target '{name_or_path}'{did_you_mean(str(name_or_path), known)}; known: "
                                f"{', '.join(known)}")
        p = (Path(directory) if directory else TARGETS_DIR) / f"{name_or_path}.yaml"
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from e
    prof = parse_profile(doc, str(p))
    if p.parent == (Path(directory) if directory else TARGETS_DIR) and prof.name != p.stem:
        raise ConfigError(f"{p}: name '{prof.name}' differs from the file name '{p.stem}'")
    return prof
