"""llama.cpp's log, kept: the only place llama.cpp says why a load or a conversion failed.

llama-cpp-python with ``verbose=False`` sends llama.cpp's log to /dev/null and raises a bare
``ValueError("Failed to load model from file")``; ``load_llama`` keeps the log during the load and
puts its warning/error lines into the ``ModelLoadError`` it raises:

    llm = load_llama("model.gguf", n_ctx=512)       # ModelLoadError: ... unknown model architecture: 'x'
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from edge.errors import ModelLoadError

# ggml_log_level: 3 WARN, 4 ERROR, 5 CONT (continues the previous message)
_WARN, _ERROR, _CONT = 3, 4, 5


@contextlib.contextmanager
def llama_log(into: list[tuple[int, str]]):
    """Keep llama.cpp's log messages (level, text) in ``into`` instead of printing them: its log is the
    only place it says why a load or a conversion failed (the Python binding raises a bare ValueError).
    llama-cpp-python's own log handler is put back afterwards."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    @llama_cpp.llama_log_callback
    def keep(level, text, user_data):
        into.append((int(level), text.decode("utf-8", errors="replace")))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def log_reason(log: list[tuple[int, str]], n: int = 3) -> str:
    """The last ``n`` warning/error lines of a llama.cpp log, joined into one line ('' if none)."""
    lines, level = [], 0
    for lvl, text in log:
        level = level if lvl == _CONT else lvl
        if level in (_WARN, _ERROR):
            if lvl == _CONT and lines:
                lines[-1] += text
            else:
                lines.append(text)
    lines = [" ".join(x.split()) for x in lines if x.strip()]
    return "; ".join(lines[-n:])


def load_llama(path: str | Path, what: str = "load it", **kwargs):
    """``llama_cpp.Llama(model_path=path, verbose=False, **kwargs)``; a failure raises ModelLoadError
    with llama.cpp's own reason from its log, the binding's exception chained."""
    import llama_cpp

    log: list[tuple[int, str]] = []
    try:
        with llama_log(log):
            return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)
    except Exception as e:
        why = log_reason(log) or "llama.cpp logged no reason"
        raise ModelLoadError(f"{path}: llama.cpp could not {what}: {why} ({type(e).__name__}: {e})") from e
