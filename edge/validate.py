"""Validate step (the CI gate): run each artifact of a package on its host runtime against the
reference model (the manifest's model as loaded, in fp32) on held-out text, and check accuracy and
the simulator's budgets.

    rep = validate("pkg/", budgets=["top1>=0.9", "decode_tok_s>=15"])
    rep.ok, rep.to_dict(), rep.to_junit()          # `edge validate` exits 1 when not ok

A check that could not run here (the emulated HTP without onnxruntime-qnn) is reported as skipped, never
as passed, and makes the report fail unless ``allow_missing=True`` (``edge validate --allow-missing``).

Accuracy defaults (what a deployable package must keep): top-1 agreement >= 0.95 for 8-bit and float
recipes, >= 0.85 for 4-bit ones. Budgets on ``top1``, ``kld`` and ``ppl_change`` are accuracy
checks (``edge.budgets.ACCURACY_FIGURES``); the simulator's figures are simulator budgets
(``edge.budgets.BUDGET_FIGURES``); both in the one budget grammar of ``edge.budgets``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from edge.budgets import ACCURACY_FIGURES, VALIDATE_FIGURES, Budget, parse_budget
from edge.calib import load_text
from edge.errors import ConfigError
from edge.eval import compare
from edge.model.load import load_model
from edge.model.spec import ModelSpec
from edge.model.tokenizer import Tokenizer
from edge.package import read_manifest, verify
from edge.recipes import FOUR_BIT
from edge.runtime import qnn
from edge.runtime.session import artifact_runner
from edge.sim import as_written, simulate
from edge.targets import load_target

COMPARISON_KEYS = {"top1": "top1_agreement", "kld": "kld_mean", "ppl_change": "ppl_change"}  # edge.eval's names


@dataclass
class Check:
    name: str
    ok: bool
    value: float | None = None
    limit: str = ""
    detail: str = ""
    skipped: bool = False  # did not run here; ``detail`` says why (never counted as passed)


def skipped(name: str, why: str) -> Check:
    return Check(name, False, detail=why, skipped=True)


@dataclass
class ValidationReport:
    package: str
    checks: list[Check] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)  # artifact -> Comparison dict
    allow_missing: bool = False  # skipped checks do not fail the report

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.skipped]

    @property
    def ok(self) -> bool:
        return all(c.ok or (c.skipped and self.allow_missing) for c in self.checks)

    def to_dict(self) -> dict:
        return {"package": self.package, "ok": self.ok, "allow_missing": self.allow_missing,
                "skipped": len(self.skipped), "checks": [asdict(c) for c in self.checks], "accuracy": self.accuracy}

    def to_junit(self) -> str:
        fails = sum(not c.ok and not c.skipped for c in self.checks)
        rows = [f'<testsuite name="edge validate" tests="{len(self.checks)}" failures="{fails}" '
                f'skipped="{len(self.skipped)}">']
        for c in self.checks:
            rows.append(f"  <testcase classname={quoteattr(self.package)} name={quoteattr(c.name)}>")
            if c.skipped:
                rows.append(f"    <skipped message={quoteattr(c.detail)}/>")
            elif not c.ok:
                rows.append(f"    <failure message={quoteattr(f'{c.value} vs {c.limit}: {c.detail}')}/>")
            rows.append("  </testcase>")
        rows.append("</testsuite>")
        return "\n".join(rows) + "\n"


def parse_budgets(budgets) -> tuple[list[Budget], list[str]]:
    """Split budget strings into accuracy checks (parsed) and simulator budgets (the strings)."""
    acc, sim = [], []
    for text in budgets:
        b = parse_budget(text, VALIDATE_FIGURES)
        if b.name in ACCURACY_FIGURES:
            acc.append(b)
        else:
            sim.append(text)
    return acc, sim


def validate(package: str | Path, budgets=(), reference=None, window: int | None = None,
             max_windows: int | None = None, allow_missing: bool = False) -> ValidationReport:
    """``reference``: a logits function; by default the manifest's model loaded by name.
    ``allow_missing``: checks that cannot run here (a runtime not installed) are reported as skipped
    without failing the report."""
    pkg = Path(package)
    m = read_manifest(pkg)
    verify(m, pkg)  # a modified package fails here, before anything runs
    rep = ValidationReport(str(pkg), allow_missing=allow_missing)
    rep.checks.append(Check("checksums", True, detail=f"{len(m['files'])} files"))
    acc_budgets, sim_budgets = parse_budgets(budgets)
    if not any(b.name == "top1" for b in acc_budgets):
        top1 = 0.85 if m["recipe"] in FOUR_BIT else 0.95
        acc_budgets.append(Budget("top1", ">=", top1, f"top1>={top1}"))
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
        host = _Memo(runner.logits)
        c = compare(reference, host, text, window=window, max_windows=max_windows).to_dict()
        rep.accuracy[name] = c
        for b in acc_budgets:
            v = c[COMPARISON_KEYS[b.name]]
            rep.checks.append(Check(f"{name}: {b.name}", b.check(v), round(v, 6), f"{b.op}{b.limit:g}",
                                    f"against the reference model ({_reference_name(m)}) on {c['tokens']} "
                                    "held-out tokens"))
        if art.get("device_runtime") == "qnn-htp" and art.get("layout", {}).get("dtype", "").startswith("qdq"):
            rep.checks += _htp_checks(rep, pkg, m, art, reference, host, text, window, max_windows, acc_budgets)
    rep.checks += _sim_checks(m, sim_budgets)
    return rep


# the emulated HTP and ONNX Runtime's CPU run one QDQ graph: they differ only by the HTP's fixed-point
# arithmetic inside ops (softmax, division, 16x16 matmuls); measured on the built-in model (docs/export.md)
HTP_VS_CPU_TOP1 = 0.9


class _Memo:
    """A logits function that computes each window once (the emulated HTP costs seconds per call)."""

    def __init__(self, fn):
        self.fn, self.seen = fn, {}

    def __call__(self, tokens):
        key = tuple(int(t) for t in tokens)
        if key not in self.seen:
            self.seen[key] = self.fn(list(tokens))
        return self.seen[key]


def _htp_checks(rep, pkg: Path, m: dict, art: dict, reference, host, text, window, max_windows,
                acc_budgets) -> list[Check]:
    """The QDQ artifact on Qualcomm's emulated HTP (onnxruntime-qnn), CPU fallback disabled: against
    the reference (the same accuracy budgets) and against ONNX Runtime's CPU run of the same graph."""
    import time

    import numpy as np

    name = f"{art['files'][0]} (qnn-htp, emulated)"
    if not qnn.available():
        return [skipped(name,
                        "not run: onnxruntime-qnn is not installed (pip install 'edge[qnn]'; Linux x86-64 and "
                        "Windows wheels only)")]
    try:
        opts = qnn.qnn_options(load_target(m["target"]))
        t0 = time.perf_counter()
        cos, sin = np.load(pkg / "rope.npy")
        htp = qnn.QnnHtpRunner(pkg, art["layout"], cos, sin, **opts)
        load_s = time.perf_counter() - t0
    except Exception as e:
        return [Check(f"{name}: every node on the HTP (CPU fallback disabled)", False, detail=str(e))]
    out = [Check(f"{name}: every node on the HTP (CPU fallback disabled)", True, round(load_s, 2),
                 detail=f"htp_arch {opts['htp_arch']}; session creation {load_s:.1f} s")]
    t0 = time.perf_counter()
    dev = _Memo(htp.logits)
    c = compare(reference, dev, text, window=window, max_windows=max_windows).to_dict()
    c["seconds"] = round(time.perf_counter() - t0, 1)
    rep.accuracy[name] = c
    for b in acc_budgets:
        v = c[COMPARISON_KEYS[b.name]]
        out.append(Check(f"{name}: {b.name}", b.check(v), round(v, 6), f"{b.op}{b.limit:g}",
                         f"against the reference model ({_reference_name(m)}) on {c['tokens']} held-out tokens"))
    vs = compare(host, dev, text, window=window, max_windows=max_windows).to_dict()
    rep.accuracy[f"{name} vs {art['files'][0]} (onnxruntime)"] = vs
    out.append(Check(f"{name}: top1 vs onnxruntime CPU", vs["top1_agreement"] >= HTP_VS_CPU_TOP1,
                     round(vs["top1_agreement"], 6), f">={HTP_VS_CPU_TOP1}",
                     f"same graph on both; KLD {vs['kld_mean']:.5f}, max |logit diff| {vs['max_abs_logit_diff']:.3f}"))
    return out


def _reference_name(m: dict) -> str:
    return (m.get("evaluation") or {}).get("reference") or f"{m['model']['name']}, in fp32"


def _reference(m: dict):
    from edge.runtime.eager import TorchRunner

    # the path the package was built from (a checkpoint directory or GGUF file), else the built-in name
    path = m["model"].get("path")
    name = path if path and Path(path).exists() else m["model"]["name"]
    try:
        lm = load_model(name)
    except Exception as e:
        raise ConfigError(f"validate: cannot load the reference model '{name}' named in the manifest ({e}); "
                          "pass it with --reference MODEL") from e
    return TorchRunner(lm.model).logits


def _sim_checks(m: dict, budgets: list[str]) -> list[Check]:
    """The simulator's budget verdicts: the target's defaults plus ``budgets``."""
    spec = ModelSpec.from_dict(m["model"]["spec"])
    art = (m.get("artifacts") or [{}])[0]
    try:  # the weights as the artifact stores them (its writer's record), as the manifest's own figures
        cost = as_written(m["recipe"], art["weights"]) if art.get("weights") else m["recipe"]
        r = simulate(spec, cost, m["target"], runtime=m["runtime"], budgets=None)
        extra = simulate(spec, cost, m["target"], runtime=m["runtime"], budgets=budgets) if budgets else None
    except ConfigError as e:
        return [Check("simulated budgets", False, detail=str(e))]
    out = [Check("simulated: fits in memory", r.fits, r.peak_memory_bytes, detail=r.fit_binding)]
    for b in list(r.budgets) + (list(extra.budgets) if extra else []):
        out.append(Check(f"simulated: {b.name}", b.ok, round(b.value, 4), f"{b.op}{b.limit}", f"bound by {b.binding}"))
    return out
