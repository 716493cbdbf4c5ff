"""Measure this machine and write a target profile for it (``edge targets probe``).

Measures what the simulator reads: cores, caches and clock (from /proc and /sys), memory
(/proc/meminfo), streaming memory bandwidth (numpy copies and reads on all cores), fp32 matmul
throughput (numpy's BLAS) and int8 matmul throughput (onnxruntime's MatMulInteger; an install
where it does not import is an error, not a rate of 0). numpy and onnxruntime are imported here only::

    from edge.probe import probe, profile_yaml
    m = probe()                    # dict of measurements
    print(profile_yaml(m, name="host-x86-2core"))
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edge.errors import EdgeError


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpu_info() -> dict:
    info = _read("/proc/cpuinfo")
    model, mhz, flags = platform.processor() or platform.machine(), 0.0, set()
    for line in info.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k == "model name" and model in ("", platform.machine(), platform.processor()):
            model = v.strip()
        elif k == "cpu MHz" and not mhz:
            mhz = float(v)
        elif k == "flags" and not flags:
            flags = set(v.split())
    caches = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind, size = _read(f"{d}/level").strip(), _read(f"{d}/type").strip(), _read(f"{d}/size").strip()
        if not size or kind == "Instruction":
            continue
        n = int(size.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
        caches["l1d" if level == "1" else f"l{level}"] = n
    simd = [f for f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "fma", "amx_int8", "asimddp", "i8mm")
            if f in flags]
    return {"model": model, "mhz": mhz, "caches": caches, "simd": simd}


def _meminfo() -> dict:
    out = {}
    for line in _read("/proc/meminfo").splitlines():
        k, _, v = line.partition(":")
        if k in ("MemTotal", "MemAvailable"):
            out[k] = int(v.split()[0]) * 1024
    return out


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(threads: int, mbytes: int = 1024, repeats: int = 5) -> dict:
    """Bytes/s reading (a BLAS dot product) and copying (read + write counted), on arrays larger than
    the last-level cache, split over ``threads`` threads."""
    import numpy as np

    n = mbytes * 2**20 // 4 // threads
    src = [np.ones(n, dtype=np.float32) for _ in range(threads)]
    dst = [np.empty_like(s) for s in src]
    pool = ThreadPoolExecutor(threads)

    def par(f):
        list(pool.map(f, range(threads)))

    copy = _best(lambda: par(lambda i: np.copyto(dst[i], src[i])), repeats)
    read = _best(lambda: par(lambda i: np.dot(src[i], src[i])), repeats)
    pool.shutdown()
    total = n * 4 * threads
    return {"copy": 2 * total / copy, "read": total / read}


def measure_matmul_fp32(n: int = 1024, repeats: int = 5) -> float:
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    return 2 * n**3 / _best(lambda: a @ b, repeats)


def measure_matmul_int8(n: int = 1024, repeats: int = 5, threads: int = 0) -> float:
    """uint8 x int8 -> int32 ops/s through onnxruntime's MatMulInteger. onnxruntime and onnx are
    dependencies of edge: when either does not import, this raises (the cause chained) rather than
    report a rate of 0, which a profile would carry as a measured figure."""
    import numpy as np

    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError as e:
        raise EdgeError(f"int8 matmul rate not measured: {e} (onnxruntime and onnx are dependencies of edge); "
                        "reinstall them: pip install --force-reinstall edge") from e
    a = helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])
    b = helper.make_tensor_value_info("B", TensorProto.INT8, [n, n])
    y = helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mm", [a, b], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"A": rng.integers(0, 255, (n, n), dtype=np.uint8), "B": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    sess.run(None, feeds)
    return 2 * n**3 / _best(lambda: sess.run(None, feeds), repeats)


def probe(repeats: int = 5, rounds: int = 1, pause_s: float = 20.0) -> dict:
    """All measurements of this machine, as plain numbers (bytes, bytes/s, ops/s, Hz).

    On a shared machine one round can land on a busy moment: ``rounds`` > 1 repeats the whole probe
    ``pause_s`` apart and keeps the best of each figure (a ceiling, which is what the profile wants).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    best: dict = {}
    loads = []
    for r in range(rounds):
        if r:
            time.sleep(pause_s)
        loads.append(os.getloadavg()[0])
        bw1 = measure_bandwidth(1, repeats=repeats)
        bwn = measure_bandwidth(cores, repeats=repeats) if cores > 1 else bw1
        got = {
            "bandwidth_read": max(bw1["read"], bwn["read"]),
            "bandwidth_copy": max(bw1["copy"], bwn["copy"]),
            "fp32_ops": measure_matmul_fp32(repeats=repeats),
            "int8_ops": measure_matmul_int8(repeats=repeats, threads=cores),
        }
        best = {k: max(v, best.get(k, 0.0)) for k, v in got.items()}
    mem = _meminfo()
    return {
        "date": _dt.date.today().isoformat(),
        "repeats": repeats,
        "rounds": rounds,
        "load_avg": min(loads),
        "machine": platform.machine(),
        "cores": cores,
        "cpu": _cpu_info(),
        "mem_total": mem.get("MemTotal", 0),
        "mem_available": mem.get("MemAvailable", 0),
        **best,
        # the streaming figure the simulator uses: the better of the two kernels (copy counts read + write)
        "bandwidth": max(best["bandwidth_read"], best["bandwidth_copy"]),
    }


# widest SIMD feature -> (fp32 FLOP per cycle per core, int8 ops per cycle per core), two FMA/dot units assumed
SIMD_RATES: dict[str, tuple[int, int]] = {
    "avx512_vnni": (64, 256), "avx512f": (64, 128), "avx_vnni": (32, 128), "avx2": (32, 64),
    "i8mm": (16, 128), "asimddp": (16, 64),
}


def theoretical_peaks(m: dict) -> tuple[float, float, str]:
    """cores x clock x per-cycle rate of the widest SIMD the CPU reports: the ceiling a kernel can reach."""
    flags = m["cpu"]["simd"]
    feat = next((f for f in SIMD_RATES if f in flags), "")
    fp32, int8 = SIMD_RATES.get(feat, (8, 16))
    hz = (m["cpu"]["mhz"] or 1000.0) * 1e6
    return m["cores"] * hz * fp32, m["cores"] * hz * int8, feat or "scalar"


def _g(x: float, unit: str, scale: float) -> str:
    return f"{x / scale:.4g} {unit}"


def profile_yaml(m: dict, name: str = "host", efficiency: str | None = None, results: str | None = None) -> str:
    """A target profile (YAML text) from ``probe()``'s measurements.

    ``results`` is where those measurements are kept (a JSON file under benchmarks/results/ for a
    profile in the repository): the profile's ``probe`` source names it so a reader can check every
    figure. A unit's peak is the SIMD ceiling, or the measured rate where a library beat the
    ceiling (a peak below a measured rate would make the simulator's fractions exceed 1).

    The efficiency table of a probed machine is unknown until something is measured on it;
    the default written here is marked as an estimate: fit it with benchmarks/sim_vs_llamacpp.py.
    """
    cpu = m["cpu"]
    caches = "\n".join(f"    {k}: {_g(v, 'KiB', 1024)}" for k, v in cpu["caches"].items())
    clock = cpu["mhz"] or 1000.0
    fp32_ceiling, int8_ceiling, feat = theoretical_peaks(m)
    fp32_peak, int8_peak = max(fp32_ceiling, m["fp32_ops"]), max(int8_ceiling, m["int8_ops"])
    kept = f"measurements in {results}" if results else "measurements printed by `edge targets probe --json`"
    eff = efficiency or "".join(f"""\
  - runtime: {rt}
    compute_dtype: fp32
    decode_bandwidth: 0.8
    decode_compute: 0.3
    prefill_compute: 0.3
    bandwidth_of: measured
    estimate: a probed machine starts from round numbers; fit them with benchmarks/sim_vs_llamacpp.py
""" for rt in ("llama.cpp", "executorch-xnnpack", "onnxruntime"))
    return f"""\
# Written by `edge targets probe` on {m['date']}: every figure below was measured on this machine
# unless marked as an estimate. Re-run the probe rather than editing figures by hand.
name: {name}
description: "{cpu['model']}, {m['cores']} cores ({m['machine']}; SIMD {' '.join(cpu['simd']) or 'unknown'})"
class: host
sources:
  probe: "edge targets probe, {m['date']} ({kept}): numpy copies and BLAS dot
    reads of 1 GiB arrays on all cores (best of {m.get('repeats', 5)} x {m.get('rounds', 1)} rounds; lowest 1-minute load average {m.get('load_avg', 0):.1f} while probing),
    numpy fp32 1024^3 matmul, onnxruntime MatMulInteger 1024^3, /proc/cpuinfo, /proc/meminfo, /sys caches"
memory:
  total: {_g(m['mem_total'], 'GiB', 2**30)}
  available: {_g(m['mem_available'], 'GiB', 2**30)}
  dram: unknown (virtual machine)
  # streaming bandwidth (best of a BLAS dot read, {_g(m['bandwidth_read'], 'GB/s', 1e9)}, and a copy counting
  # read + write, {_g(m['bandwidth_copy'], 'GB/s', 1e9)}); the host's DRAM peak is not visible from inside a VM
  peak_bandwidth: {_g(m['bandwidth'], 'GB/s', 1e9)}
  measured_bandwidth: {_g(m['bandwidth'], 'GB/s', 1e9)}
  source: probe
cpu:
  arch: {m['machine']}
  clusters:
    - {{count: {m['cores']}, core: "{cpu['model']}", clock: {clock:.0f} MHz}}
  caches:
{caches}
  source: probe
units:
  cpu:
    kind: cpu
    # measured: numpy fp32 matmul {_g(m['fp32_ops'], 'GFLOPS', 1e9)}, onnxruntime int8 matmul {_g(m['int8_ops'], 'GOPS', 1e9)}.
    # The SIMD ceiling is {_g(fp32_ceiling, 'GFLOPS', 1e9)} / {_g(int8_ceiling, 'GOPS', 1e9)}; the peak is the larger of it and the measured rate
    peak: {{fp32: {_g(fp32_peak, 'GFLOPS', 1e9)}, int8: {_g(int8_peak, 'GOPS', 1e9)}}}
    dtypes: [fp32, int8]
    estimate: "derived: the larger of {m['cores']} cores x {clock:.0f} MHz x {feat} per-cycle rate (edge.probe.SIMD_RATES) and the rate measured (probe)"
runtimes:
  llama.cpp:
    unit: cpu
    formats: [gguf]
    recipes: [fp32, fp16, bf16, q8_0, q4_0, q4_k_m]
    threads: {m['cores']}
    overhead: {{value: 30 MB, estimate: "llama.cpp context and scratch beside the compute buffer"}}
  executorch-xnnpack:
    unit: cpu
    formats: [pte]
    recipes: [fp32, 8da4w, w8a8]
    threads: {m['cores']}
    # static KV cache, but ExecuTorch's custom_sdpa attends only to the filled positions
    overhead: {{value: 30 MB, estimate: "runtime and planned memory beside the weights"}}
  onnxruntime:
    unit: cpu
    formats: [onnx]
    recipes: [fp32, w8a8]
    threads: {m['cores']}
    overhead: {{value: 50 MB, estimate: "session arena"}}
defaults:
  runtime: {{"8da4w": executorch-xnnpack, "w8a8": onnxruntime, "*": llama.cpp}}
efficiency:
{eff}"""
