"""Qualcomm's Hexagon NPU, emulated: the ONNX runner over onnxruntime-qnn's x86-64 HTP backend.

onnxruntime-qnn (PyPI, ``pip install edge[qnn]``) is an ONNX Runtime plugin execution provider: its
own module (``onnxruntime_qnn``) beside ``onnxruntime``, registered at run time. Every session here
disables the CPU fallback: without it a node QNN cannot take runs on the CPU while the session still
lists QNN, so a graph that "runs on the emulated NPU" would prove nothing. A graph with such a node
is refused at load, and the error names the node QNN rejected.

    r = QnnHtpRunner("pkg/", layout, cos, sin, htp_arch="73")
    r.logits(tokens)                          # (T, vocab), computed by the emulated HTP v73

The HTP architecture comes from the target profile (``htp_arch N`` in the qnn-htp runtime's
toolchain line): QNN silently treats an invalid value as v68.
"""

from __future__ import annotations

import re
from pathlib import Path

from edge.errors import ConfigError, ModelLoadError
from edge.runtime.onnxruntime import OnnxRunner

EP = "QNNExecutionProvider"
_registered = False


def available() -> bool:
    """True when onnxruntime-qnn is installed (the optional ``edge[qnn]`` extra), False when it is not;
    an install that is present but fails to import raises (its cause chained) instead of passing as absent."""
    import importlib.util

    try:
        import onnxruntime_qnn  # noqa: F401
    except ImportError as e:
        if importlib.util.find_spec("onnxruntime_qnn") is None:
            return False
        raise ModelLoadError(f"onnxruntime-qnn is installed but does not import ({e}); reinstall it: "
                             "pip install --force-reinstall 'edge[qnn]'") from e
    return True


def qnn_options(target) -> dict[str, str]:
    """``htp_arch`` / ``soc_model`` from the profile's qnn-htp toolchain line ("htp_arch 73; soc_model 43")."""
    rt = target.runtimes.get("qnn-htp") if target is not None else None
    line = rt.toolchain if rt is not None else ""
    out = {k: m.group(1) for k in ("htp_arch", "soc_model") if (m := re.search(rf"{k}\s+(\d+)", line))}
    if "htp_arch" not in out:
        raise ConfigError(f"target {getattr(target, 'name', target)}: its qnn-htp runtime names no 'htp_arch N' "
                          "in toolchain; the emulator needs it (QNN silently treats unknown values as v68)")
    return out


def _register(ort) -> None:
    global _registered
    if _registered:
        return
    import onnxruntime_qnn

    try:
        ort.register_execution_provider_library(EP, onnxruntime_qnn.get_library_path())
    except Exception as e:  # registered already by someone else in this process
        if "already" not in str(e).lower():
            raise
    _registered = True


class QnnHtpRunner(OnnxRunner):
    name = "qnn-htp-emulated"

    def __init__(self, root: str | Path, layout: dict, cos, sin, htp_arch: str, soc_model: str | None = None,
                 threads: int | None = None):
        if not available():
            raise ModelLoadError("the emulated HTP needs onnxruntime-qnn: pip install 'edge[qnn]'")
        self.qnn = {"htp_arch": str(htp_arch)} | ({"soc_model": str(soc_model)} if soc_model else {})
        super().__init__(root, layout, cos, sin, threads=threads)

    def _session(self, ort, path: Path, opts, providers):
        import onnxruntime_qnn

        _register(ort)
        devs = [d for d in ort.get_ep_devices() if d.ep_name == EP]
        if not devs:
            raise ModelLoadError("onnxruntime-qnn is installed but ONNX Runtime lists no QNN device")
        so = ort.SessionOptions()  # one per session: the provider is attached to the options
        so.log_severity_level = 3
        if opts.intra_op_num_threads:
            so.intra_op_num_threads = opts.intra_op_num_threads
        for k, v in self.layout.get("session_config", {}).items():
            so.add_session_config_entry(k, str(v))
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        so.add_provider_for_devices(devs, {"backend_path": onnxruntime_qnn.get_qnn_htp_path(), **self.qnn})
        sess = ort.InferenceSession(str(path), so)
        if EP not in sess.get_providers():
            raise ModelLoadError(f"{path.name}: the session does not run on {EP} ({sess.get_providers()})")
        return sess
