"""edge: compile a language model for an edge device, and predict how it will run there.

    load_target -> load_model -> prune -> quantize(calib) -> export -> package
                                                  -> simulate / validate

Importing ``edge`` is light (no torch); heavy backends load inside the stages that use them.
"""

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

__all__ = [
    "BudgetFailed",
    "ConfigError",
    "EdgeError",
    "ModelLoadError",
    "ModelSpec",
    "UnknownTarget",
    "UnsupportedArchitecture",
    "__version__",
]
