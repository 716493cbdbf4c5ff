"""N:M semi-structured sparsity in the simulator: counted only where the unit and the runtime run it.

A 2:4-pruned model (``edge prune --sparsity 2:4``; ``ModelSpec.pruning`` holds ``("sparsity", "2:4")``)
or a recipe with ``sparsity: "2:4"`` has half of every attention and MLP linear's weights zeroed.
Skipping them takes two things: a unit with the sparse math (``units.<name>.sparsity: ["2:4"]``,
e.g. Ampere and Hopper tensor cores) and a runtime that stores the linears compressed in the format
it loads and calls those kernels (``runtimes.<name>.sparsity: ["2:4"]``, e.g. torch's semi-structured
tensors; llama.cpp has no sparse kernels and GGUF no compressed layout, so its rows list none). Then
the linears take N of every M values plus ceil(log2 M) index bits per kept value (NVIDIA's 2:4
format: 2 bits of metadata per kept value) and N/M of their multiply-adds. Anywhere else the zeros
run densely: same bytes, same operations::

    recipe = apply_sparsity(spec, load_recipe("q4_0"), target.units["gpu"], target.runtimes["llama.cpp"])
"""

from __future__ import annotations

import math
from dataclasses import replace

from edge.model.spec import parse_nm


def sparsity_pattern(spec, recipe) -> str:
    """The N:M pattern of this model under this recipe: the recipe's, else the pruned model's ('' if none)."""
    return recipe.nm_sparsity or dict(getattr(spec, "pruning", ()) or ()).get("sparsity", "")


def apply_sparsity(spec, recipe, unit, runtime, notes: list | None = None):
    """``recipe`` with the N:M pattern resolved for ``unit`` and ``runtime`` (a targets.Runtime):
    compressed storage and N/M of the linear layers' operations where both list the pattern, dense
    otherwise (a note says which, and why)."""
    pattern = sparsity_pattern(spec, recipe)
    if not pattern:
        return recipe
    n, m = parse_nm(pattern)
    pat = pattern.strip()
    if pat in unit.sparsity and pat in runtime.sparsity:
        out = replace(recipe, sparsity=1 - n / m, sparsity_index_bits=float(math.ceil(math.log2(m))))
        note = (f"{pattern} sparsity: unit {unit.name} and runtime {runtime.name} run it (attention/MLP linears "
                f"stored as {n} of {m} values + {math.ceil(math.log2(m))} index bits each, {n}/{m} of their "
                "operations)")
    else:
        out = replace(recipe, sparsity=0.0, sparsity_index_bits=0.0)
        why = (f"unit {unit.name} does not list {pattern} support (supports: {', '.join(unit.sparsity) or 'none'})"
               if pat not in unit.sparsity else
               f"runtime {runtime.name} has no {pattern} kernels for its format (its profile row lists "
               f"{', '.join(runtime.sparsity) or 'none'})")
        note = f"{pattern} sparsity counted dense: {why}"
    if notes is not None:
        notes.append(note)
    return out
