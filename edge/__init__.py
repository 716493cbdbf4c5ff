"""edge: compile a language model for an edge device, and predict how it will run there.

    load_target -> load_model -> prune -> quantize(calib) -> export -> package
                                                  -> simulate / validate

Importing ``edge`` is light (no torch); the stages below load on first use::

    import edge
    spec = edge.load_spec("smollm2-135m")
    edge.simulate(spec, "q4_0", "snapdragon-8gen2").decode_tok_s
    from edge.build import build; build("smollm2-135m", "snapdragon-8gen2", recipe="q4_0", out="pkg")
"""

from __future__ import annotations

import importlib

from edge.errors import (
    BudgetFailed,
    ConfigError,
    EdgeError,
    ModelLoadError,
    UnknownTarget,
    UnsupportedArchitecture,
)
from edge.model.spec import ModelSpec

__version__ = "0.1.0"

# public name -> module that defines it; imported on first access (one visible table). Stage
# functions named like their module (edge.build.build, edge.prune.prune, edge.search.search) are
# imported from the module: a submodule import would shadow a package attribute of the same name.
_LAZY = {
    "load_model": "edge.model.load",
    "load_spec": "edge.model.load",
    "load_target": "edge.targets",
    "list_targets": "edge.targets",
    "simulate": "edge.sim",
    "Workload": "edge.sim",
    "CalibConfig": "edge.calib",
    "token_batches": "edge.calib",
    "PruneConfig": "edge.prune",
    "load_recipe": "edge.quant.configs",
    "quantize": "edge.quant.quantize",
    "auto_build": "edge.search",
    "perplexity": "edge.eval",
    "compare": "edge.eval",
}

__all__ = [
    "BudgetFailed",
    "ConfigError",
    "EdgeError",
    "ModelLoadError",
    "ModelSpec",
    "UnknownTarget",
    "UnsupportedArchitecture",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
