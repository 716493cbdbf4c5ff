"""N:M semi-structured sparsity in the simulator: counted only where the target's unit runs it.

A 2:4-pruned model (``edge prune --sparsity 2:4``; ``ModelSpec.pruning`` holds ``("sparsity", "2:4")``)
or a recipe with ``sparsity: "2:4"`` has half of every attention and MLP linear's weights zeroed.
A unit that lists the pattern (``units.<name>.sparsity: ["2:4"]`` in its profile, e.g. Ampere and
Hopper tensor cores) stores those linears compressed, N of every M values plus ceil(log2 M) index
bits per kept value (NVIDIA's 2:4 format: 2 bits of metadata per kept value), and executes N/M of
their multiply-adds. Any other unit runs the zeros densely: same bytes, same operations::

    recipe, note = apply_sparsity(spec, load_recipe("q4_0"), target.units["gpu"])
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from edge.errors import ConfigError

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(pattern: str) -> tuple[int, int]:
    """'2:4' -> (2, 4): N kept of every M consecutive weights, 0 < N < M."""
    m = _NM.match(str(pattern))
    if not m or not 0 < int(m.group(1)) < int(m.group(2)):
        raise ConfigError(f"sparsity pattern {pattern!r} is not N:M with 0 < N < M (e.g. \"2:4\")")
    return int(m.group(1)), int(m.group(2))


def sparsity_pattern(spec, recipe) -> str:
    """The N:M pattern of this model under this recipe: the recipe's, else the pruned model's ('' if none)."""
    return recipe.nm_sparsity or dict(getattr(spec, "pruning", ()) or ()).get("sparsity", "")


def apply_sparsity(spec, recipe, unit, notes: list | None = None):
    """``recipe`` with the N:M pattern resolved for ``unit``: compressed storage and N/M of the linear
    layers' operations where the unit lists the pattern, dense otherwise (a note says which)."""
    pattern = sparsity_pattern(spec, recipe)
    if not pattern:
        return recipe
    n, m = parse_nm(pattern)
    if pattern.strip() in unit.sparsity:
        out = replace(recipe, sparsity=1 - n / m, sparsity_index_bits=float(math.ceil(math.log2(m))))
        note = (f"{pattern} sparsity: unit {unit.name} runs it (attention/MLP linears stored as {n} of {m} values "
                f"+ {math.ceil(math.log2(m))} index bits each, {n}/{m} of their operations)")
    else:
        out = replace(recipe, sparsity=0.0, sparsity_index_bits=0.0)
        note = (f"{pattern} sparsity counted dense: unit {unit.name} does not list {pattern} support "
                f"(supports: {', '.join(unit.sparsity) or 'none'})")
    if notes is not None:
        notes.append(note)
    return out
