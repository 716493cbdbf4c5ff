"""Validate step (the CI gate): run each artifact of a package on its host runtime against the
unquantized reference on held-out text, and check accuracy and the simulator's budgets.

    rep = validate("pkg/", budgets=["top1>=0.9", "decode_tok_s>=15"])
    rep.ok, rep.to_dict(), rep.to_junit()          # `edge validate` exits 1 when not ok

Accuracy defaults (from the issue's acceptance bar): top-1 agreement >= 0.95 for 8-bit and float
recipes, >= 0.85 for 4-bit ones. Budgets on ``top1``, ``kld`` and ``ppl_change`` are accuracy
checks; any other name is a simulator budget (``edge.sim.BUDGET_FIGURES``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from edge.errors import ConfigError

ACCURACY_FIGURES = {"top1": "top1_agreement", "kld": "kld_mean", "ppl_change": "ppl_change"}
FOUR_BIT = ("8da4w", "q4_0", "q4_k_m", "w4a16")
_BUDGET = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


@dataclass
class Check:
    name: str
    ok: bool
    value: float | None = None
    limit: str = ""
    detail: str = ""


@dataclass
class ValidationReport:
    package: str
    checks: list[Check] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)  # artifact -> Comparison dict

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict:
        return {"package": self.package, "ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "accuracy": self.accuracy}

    def to_junit(self) -> str:
        fails = sum(not c.ok for c in self.checks)
        rows = [f'<testsuite name="edge validate" tests="{len(self.checks)}" failures="{fails}">']
        for c in self.checks:
            rows.append(f"  <testcase classname={quoteattr(self.package)} name={quoteattr(c.name)}>")
            if not c.ok:
                rows.append(f"    <failure message={quoteattr(f'{c.value} vs {c.limit}: {c.detail}')}/>")
            rows.append("  </testcase>")
        rows.append("</testsuite>")
        return "\n".join(rows) + "\n"


def parse_budgets(budgets) -> tuple[list[tuple[str, str, float]], list[str]]:
    """Split ``name<=x`` / ``name>=x`` strings into accuracy checks and simulator budgets."""
    acc, sim = [], []
    for b in budgets:
        m = _BUDGET.match(b)
        if not m:
            raise ConfigError(f"budget '{b}' is not NAME<=VALUE or NAME>=VALUE, e.g. 'top1>=0.9'")
        if m.group(1) in ACCURACY_FIGURES:
            acc.append((m.group(1), m.group(2), float(m.group(3))))
        else:
            sim.append(b)
    return acc, sim


def _holds(value: float, op: str, limit: float) -> bool:
    return value <= limit if op == "<=" else value >= limit


def validate(package: str | Path, budgets=(), reference=None, window: int | None = None,
             max_windows: int | None = None) -> ValidationReport:
    """``reference``: a logits function; by default the manifest's model loaded by name."""
    from edge.calib import load_text
    from edge.eval import compare
    from edge.model.tokenizer import Tokenizer
    from edge.package import read_manifest, verify
    from edge.runtime.session import artifact_runner

    pkg = Path(package)
    m = read_manifest(pkg)
    verify(m, pkg)  # a modified package fails here, before anything runs
    rep = ValidationReport(str(pkg))
    rep.checks.append(Check("checksums", True, detail=f"{len(m['files'])} files"))
    acc_budgets, sim_budgets = parse_budgets(budgets)
    if not any(b[0] == "top1" for b in acc_budgets):
        acc_budgets.append(("top1", ">=", 0.85 if m["recipe"] in FOUR_BIT else 0.95))
    if reference is None:
        reference = _reference(m)
    ev = m.get("evaluation", {})
    window = window or ev.get("window", 128)
    tok = Tokenizer.from_hf_dir(pkg)
    vocab = m["model"]["spec"]["vocab_size"]
    text = [t for t in tok.encode(load_text(ev.get("text", "heldout")).text) if t < vocab]
    text = text[: ev.get("tokens", 1024)]
    for art in m["artifacts"]:
        name = f"{art['files'][0]} ({art['runtime']})"
        try:
            runner = artifact_runner(pkg, art)
        except Exception as e:
            rep.checks.append(Check(f"{name}: loads", False, detail=str(e)))
            continue
        rep.checks.append(Check(f"{name}: loads", True))
        c = compare(reference, runner.logits, text, window=window, max_windows=max_windows).to_dict()
        rep.accuracy[name] = c
        for fig, op, limit in acc_budgets:
            v = c[ACCURACY_FIGURES[fig]]
            rep.checks.append(Check(f"{name}: {fig}", _holds(v, op, limit), round(v, 6), f"{op}{limit}",
                                    f"against the unquantized reference on {c['tokens']} held-out tokens"))
    rep.checks += _sim_checks(m, sim_budgets)
    return rep


def _reference(m: dict):
    from edge.model.load import load_model
    from edge.runtime.eager import TorchRunner

    name = m["model"]["name"]
    try:
        lm = load_model(name)
    except Exception as e:
        raise ConfigError(f"validate: cannot load the reference model '{name}' named in the manifest ({e}); "
                          "pass the reference explicitly") from e
    return TorchRunner(lm.model).logits


def _sim_checks(m: dict, budgets: list[str]) -> list[Check]:
    """The simulator's budget verdicts: the target's defaults plus ``budgets``."""
    from edge.model.spec import ModelSpec

    try:
        from edge.sim import simulate
    except ImportError:  # a device-side install without the simulator
        return []
    spec = ModelSpec.from_dict(m["model"]["spec"])
    try:
        r = simulate(spec, m["recipe"], m["target"], runtime=m["runtime"], budgets=None)
        extra = simulate(spec, m["recipe"], m["target"], runtime=m["runtime"], budgets=budgets) if budgets else None
    except ConfigError as e:
        return [Check("simulated budgets", False, detail=str(e))]
    out = [Check("simulated: fits in memory", r.fits, r.peak_memory_bytes, detail=r.fit_binding)]
    for b in list(r.budgets) + (list(extra.budgets) if extra else []):
        out.append(Check(f"simulated: {b.name}", b.ok, round(b.value, 4), f"{b.op}{b.limit}", f"bound by {b.binding}"))
    return out
