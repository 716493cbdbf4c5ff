"""Target profiles: every shipped profile loads, and bad profiles fail with file and key named."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from edge.errors import ConfigError, UnknownTarget
from edge.targets import TARGETS_DIR, list_targets, load_target, parse_profile, parse_quantity

ISSUE_TARGETS = ["snapdragon-8gen2", "snapdragon-8gen3", "snapdragon-8elite", "rv1126", "rv1126b", "rk3588",
                 "horizon-j5", "raspberry-pi-5", "jetson-orin-nano", "apple-m2", "nvidia-h200", "host-x86-2core"]


def test_all_issue_targets_ship_and_load():
    names = list_targets()
    for n in ISSUE_TARGETS:
        assert n in names
    for n in names:
        t = load_target(n)
        assert t.name == n
        assert t.memory.peak_bandwidth > 0 and t.memory.available <= t.memory.total
        assert "cpu" in t.units and t.runtimes and t.efficiency
        # every figure carries a source or says it is an estimate
        assert t.provenance and all(p.startswith(("source", "estimate")) for p in t.provenance.values())


def test_default_budgets_from_the_scenarios():
    assert load_target("snapdragon-8gen2").defaults.budgets == ("decode_tok_s>=15",)
    assert load_target("rv1126").defaults.budgets == ("latency_s<=0.3",)
    assert load_target("horizon-j5").defaults.budgets == ("cpu_load<=0.45",)


def test_capabilities_are_read_off_the_profile():
    rv = load_target("rv1126")
    assert "fp16" not in rv.units["npu"].dtypes  # int8/int16 only
    assert load_target("horizon-j5").units["bpu"].dtypes == ("int8",)
    assert load_target("snapdragon-8gen2").runtimes["qnn-htp"].max_graph_bytes == 2e9
    with pytest.raises(ConfigError, match="does not run recipe 'fp16'"):
        rv.runtime_for("fp16", "rknn")


def test_unknown_target_suggests_the_closest():
    with pytest.raises(UnknownTarget, match="did you mean 'rv1126'"):
        load_target("rv1162")


@pytest.mark.parametrize("text,kind,value", [
    ("67.2 GB/s", "bandwidth", 67.2e9), ("8 GiB", "bytes", 8 * 2**30), ("3.2 GHz", "frequency", 3.2e9),
    ("26 TOPS", "ops", 26e12), ("20 us", "time", 20e-6),
])
def test_quantities(text, kind, value):
    assert parse_quantity(text, kind, "x") == pytest.approx(value)


def _doc() -> dict:
    return yaml.safe_load((TARGETS_DIR / "raspberry-pi-5.yaml").read_text())


def _bad(mutate, match: str) -> None:
    d = copy.deepcopy(_doc())
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        parse_profile(d, "targets/bad.yaml")


def test_unknown_key_names_file_and_suggests():
    _bad(lambda d: d["memory"].update(peak_bandwith="17 GB/s"),
         r"targets/bad.yaml: memory.peak_bandwith: unknown key \(did you mean 'peak_bandwidth'\?\)")


def test_missing_unit():
    _bad(lambda d: d["memory"].update(peak_bandwidth=17.1), r"memory.peak_bandwidth: 17.1 has no unit")


def test_wrong_unit():
    _bad(lambda d: d["memory"].update(peak_bandwidth="17.1 GB"), r"unit 'GB' is not a bandwidth unit")


def test_negative_and_zero_figures():
    _bad(lambda d: d["memory"].update(total="-8 GB"), r"memory.total: must be positive")
    _bad(lambda d: d["units"]["cpu"]["peak"].update(fp32="0 GFLOPS"), r"units.cpu.peak.fp32: must be positive")


def test_unsourced_figure_is_rejected():
    _bad(lambda d: d["memory"].update(total="8 GB"), r"memory.total: a hardware figure needs 'source")


def test_source_key_must_exist():
    _bad(lambda d: d["memory"].update(source="rpi-spek"), r"'rpi-spek' is not in the sources table \(did you mean 'rpi-spec'\?\)")


def test_efficiency_needs_measurements_or_estimate():
    def drop(d):
        d["efficiency"][0].pop("fitted_to")
        d["efficiency"][0].pop("source")
    _bad(drop, r"efficiency\[0\]: an efficiency row needs 'fitted_to")


def test_efficiency_fraction_range():
    _bad(lambda d: d["efficiency"][0].update(decode_bandwidth=1.5), r"decode_bandwidth: expected a fraction")


def test_unknown_runtime_in_defaults():
    _bad(lambda d: d["defaults"]["runtime"].update({"*": "llama-cpp"}), r"did you mean 'llama.cpp'")


def test_bad_default_budget():
    _bad(lambda d: d["defaults"].update(budgets=["decode_tok_s=>15"]), r"defaults.budgets\[0\]")


def test_malformed_yaml_file(tmp_path: Path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_target(p)


def test_probe_writes_a_valid_profile():
    """`edge targets probe` output (from fake measurements, no timing here) loads as a profile."""
    from edge.probe import profile_yaml

    m = {"date": "2026-01-01", "repeats": 5, "rounds": 1, "load_avg": 0.5, "machine": "x86_64", "cores": 2,
         "cpu": {"model": "Test CPU", "mhz": 2100.0, "caches": {"l1d": 49152, "l2": 2**21}, "simd": ["avx2"]},
         "mem_total": 8 * 2**30, "mem_available": 6 * 2**30, "bandwidth_read": 1.2e10, "bandwidth_copy": 2e10,
         "bandwidth": 2e10, "fp32_ops": 7e10, "int8_ops": 0.0}
    t = parse_profile(yaml.safe_load(profile_yaml(m, name="probed")), "probed.yaml")
    assert t.memory.measured_bandwidth == pytest.approx(2e10)
    assert t.units["cpu"].peak["fp32"] == pytest.approx(2 * 2.1e9 * 32)  # AVX2 FMA ceiling, an estimate
    assert t.provenance["units.cpu.peak.int8"].startswith("estimate")
    assert t.runtime_for("q4_0").name == "llama.cpp"


REPO = Path(__file__).resolve().parent.parent
URL = re.compile(r"https?://[^\s\"')]+")
RESULTS = re.compile(r"benchmarks/results/[\w./-]*\w")
# a path on somebody's machine (absolute or under a home directory): a reader of the repo cannot open it
MACHINE_PATH = re.compile(r"(?<![\w.:/])(?:~|/(?:work|home|tmp|root|mnt|opt|Users|var|data))/")
# wording that claims a measurement of ours: it must name the results file that holds it
OURS = re.compile(r"measured by us|by the lead|edge targets probe|benchmarks/\w+\.py|on this machine", re.I)


def citations(doc: dict) -> list[tuple[str, str]]:
    """(where, text) of every citation in a profile: the sources table and each efficiency row's fitted_to."""
    out = [(f"sources.{k}", v) for k, v in doc["sources"].items()]
    for i, row in enumerate(doc.get("efficiency") or []):
        fitted = row.get("fitted_to") or []
        out += [(f"efficiency[{i}].fitted_to", t) for t in ([fitted] if isinstance(fitted, str) else fitted)]
    return out


@pytest.mark.parametrize("path", sorted(TARGETS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_source_is_one_a_reader_can_follow(path: Path):
    """A URL, a named public document, or a results file committed under benchmarks/results/; never a file
    on a build machine, and a measurement of ours only with the results file that holds it."""
    for where, text in citations(yaml.safe_load(path.read_text())):
        what = f"{path.name} {where}: {text!r}"
        assert isinstance(text, str) and len(text.split()) >= 3, f"{what} does not name what it cites"
        assert not MACHINE_PATH.search(text), f"{what} names a file on a build machine"
        results = RESULTS.findall(text)
        for r in results:
            assert (REPO / r).is_file(), f"{what} names {r}, which is not in the repository"
        if OURS.search(text):
            assert results, f"{what} cites a measurement of ours without its results file in benchmarks/results/"


def test_host_peaks_are_not_below_what_the_probe_measured():
    """A peak is a ceiling: the simulator's efficiency fractions are rates over it, so a measured rate above
    it would be a fraction above 1. The host profile's figures come from this results file."""
    import json

    m = json.loads((REPO / "benchmarks/results/sim_probe_host.json").read_text())
    t = load_target("host-x86-2core")
    assert t.units["cpu"].peak["int8"] >= m["int8_ops"] * 0.999  # the file's figure, rounded to 4 digits
    assert t.units["cpu"].peak["fp32"] >= m["fp32_ops"]
    assert t.memory.measured_bandwidth == pytest.approx(m["bandwidth"], rel=1e-3)


def test_probe_peak_is_the_measured_rate_where_a_library_beats_the_simd_ceiling():
    from edge.probe import profile_yaml

    m = {"date": "2026-01-01", "repeats": 5, "rounds": 1, "load_avg": 0.5, "machine": "x86_64", "cores": 2,
         "cpu": {"model": "Test CPU", "mhz": 2100.0, "caches": {"l1d": 49152}, "simd": ["avx512_vnni"]},
         "mem_total": 8 * 2**30, "mem_available": 6 * 2**30, "bandwidth_read": 1.2e10, "bandwidth_copy": 2e10,
         "bandwidth": 2e10, "fp32_ops": 1.9e11, "int8_ops": 1.118e12}
    text = profile_yaml(m, name="probed", results="benchmarks/results/sim_probe_host.json")
    t = parse_profile(yaml.safe_load(text), "probed.yaml")
    assert t.units["cpu"].peak["int8"] == pytest.approx(1.118e12, rel=1e-3)  # above the 1.075e12 VNNI ceiling
    assert t.units["cpu"].peak["fp32"] == pytest.approx(2 * 2.1e9 * 64)  # the ceiling, above the 1.9e11 measured
    assert "benchmarks/results/sim_probe_host.json" in t.sources["probe"]
