"""Export step: one module per artifact format (executorch.py -> .pte, onnx.py -> .onnx, gguf.py -> .gguf).

Heavy toolchains are imported inside each module, so importing ``edge.export`` stays light.
"""

from __future__ import annotations

import contextlib
import re
import warnings


class ToolWarnings:
    """The warnings a toolchain raises during an export, kept for the artifact's manifest entry instead
    of printed or dropped: one line each (category and first line of the message), in order of first
    appearance, with a count; memory addresses blanked so that rebuilds stay byte-identical.

        tw = ToolWarnings()
        with tw.catch():
            torch.onnx.export(...)
        tw.lines()    # ["UserWarning: ... (x3)", ...]
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def catch(self):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield self
            finally:
                for w in caught:
                    text = str(w.message).strip()
                    text = re.sub(r"0x[0-9a-fA-F]+", "0x?", text.splitlines()[0] if text else "")
                    key = f"{w.category.__name__}: {text}"
                    self.counts[key] = self.counts.get(key, 0) + 1

    def lines(self) -> list[str]:
        return [f"{k} (x{n})" if n > 1 else k for k, n in self.counts.items()]
