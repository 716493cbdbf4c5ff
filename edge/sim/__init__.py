"""The host-side performance model: no torch, pure arithmetic on shapes + a target profile.

    from edge.sim import simulate, Workload
    from edge.model.spec import ModelSpec
    r = simulate(ModelSpec.from_config_file("config.json"), "w4a16", "snapdragon-8gen2",
                 workload=Workload(prompt_len=128, gen_len=128), budgets=["decode_tok_s>=15"])
    r.decode_tok_s, r.fits, r.budgets[0].ok
"""

from edge.budgets import BUDGET_FIGURES, Budget, parse_budget
from edge.sim.model import expected_distinct_experts, forward_cost, weight_bytes
from edge.sim.recipes import (
    LLAMACPP_MIXES,
    PRESETS,
    QUANT_TYPES,
    Recipe,
    as_written,
    load_recipe,
    preset_table,
)
from edge.sim.simulate import BudgetResult, SimResult, Stage, Workload, simulate

__all__ = [
    "BUDGET_FIGURES", "LLAMACPP_MIXES", "PRESETS", "QUANT_TYPES", "Budget", "BudgetResult", "Recipe", "SimResult", "Stage",
    "Workload", "as_written", "expected_distinct_experts", "forward_cost", "load_recipe", "parse_budget", "preset_table",
    "simulate", "weight_bytes",
]
