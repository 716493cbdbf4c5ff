"""What a GPU target profile states about the machine, measured on it: GPU name, memory (total and
free to a process), multiprocessors, the copy-bandwidth and bf16-matmul ceilings, and the host's
CPU cores and model. Output: one JSON file the profile's figures cite (targets/nvidia-h200.yaml).

    PYTHONPATH=. python benchmarks/gpu_probe.py --out benchmarks/results/h200_probe.json   # on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpuinfo(key: str) -> str:
    """The first ``key`` line of /proc/cpuinfo ('' when absent)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return ""


def nvidia_smi() -> dict:
    """nvidia-smi's own reading of name, memory and clocks (the driver's figures)."""
    fields = "name,memory.total,clocks.max.sm,clocks.max.memory,driver_version"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    name, mem, sm, memclk, driver = (x.strip() for x in out.split(","))
    return {"name": name, "memory_total_mib": int(mem), "max_sm_clock_mhz": int(sm),
            "max_memory_clock_mhz": int(memclk), "driver": driver}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/h200_probe.json"))
    args = ap.parse_args()
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from h200_decode import device_ceilings

    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "gpu": {"name": props.name, "multiprocessors": props.multi_processor_count,
                "memory_total_bytes": total, "memory_free_bytes": free, "compute_capability": f"{props.major}.{props.minor}"},
        "nvidia_smi": nvidia_smi(),
        "ceilings": device_ceilings("cuda"),
        "host": {"cores": len(os.sched_getaffinity(0)), "cpu_model": cpuinfo("model name"), "cpu_mhz": cpuinfo("cpu MHz"),
                 "simd": [f for f in ("avx512_vnni", "avx512f", "avx2", "amx_int8") if f in cpuinfo("flags").split()],
                 "machine": platform.machine()},
        "method": "torch.cuda.mem_get_info at start; ceilings: benchmarks/h200_decode.py device_ceilings (2 GiB "
                  "device-to-device copy, read + write counted; 8192^3 bf16 matmul; mean of 10 after 3 warm-ups); "
                  "host from /proc/cpuinfo and sched_getaffinity",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
