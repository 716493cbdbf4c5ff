"""Errors the SDK raises on bad input.

Every message says what is wrong, where, and how to fix it, in one line; the CLI prints it and
exits non-zero without a traceback. Internal invariants use `assert`, not these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgeError(Exception):
    """Base class: a user-facing failure with a one-line explanation."""

    exit_code = 2


class ModelLoadError(EdgeError):
    """A model path, checkpoint or GGUF that cannot be loaded."""


class UnsupportedArchitecture(ModelLoadError):
    """A checkpoint of an architecture this SDK does not implement."""


class ConfigError(EdgeError):
    """A recipe, target profile or option with an invalid value."""


class UnknownTarget(ConfigError):
    """A target name that has no profile in targets/."""


class BudgetFailed(EdgeError):
    """A build or simulation that does not meet its budgets."""

    exit_code = 1


def did_you_mean(name: object, known: Iterable) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, or '' when none is close: the
    hint a message puts after the unknown value and before the allowed set."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def require_one_of(what: str, value: object, allowed: Iterable) -> None:
    """Raise ConfigError ``{what} 'value' unknown (did you mean 'x'?); allowed: a, b`` unless ``value`` is
    one of ``allowed``: the value, the rule and the allowed set, in one line."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{what} '{value}' unknown{did_you_mean(value, allowed)}; "
                          f"allowed: {', '.join(map(str, allowed))}")
