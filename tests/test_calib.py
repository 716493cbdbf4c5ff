from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import yaml

from edge import calib
from edge.calib import (
    CALIB_DIR,
    PROVENANCE_KEYS,
    CalibConfig,
    dataset_hash,
    list_sets,
    load_text,
    token_batches,
)
from edge.errors import ConfigError


class ByteTokenizer:
    """Test fixture: one token per UTF-8 byte, so every window can be found back in its source text."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


TOK = ByteTokenizer()
NEEDED = {"general", "heldout", "assistant", "voice", "automotive"}


def source_of(row: np.ndarray) -> list[str]:
    window = bytes(row.astype(np.uint8).tolist())
    return [n for n in list_sets() if window in load_text(n).text.encode("utf-8")]


# Provenance


def test_required_sets_exist():
    assert NEEDED <= set(list_sets())


@pytest.mark.parametrize("name", list_sets())
def test_every_set_has_complete_provenance(name):
    record = yaml.safe_load((CALIB_DIR / name / "SOURCE.yaml").read_text(encoding="utf-8"))
    missing = [k for k in PROVENANCE_KEYS if not record.get(k)]
    assert not missing, f"{name}/SOURCE.yaml lacks {missing}"
    raw = (CALIB_DIR / name / "text.txt").read_bytes()
    assert record["name"] == name
    assert record["bytes"] == len(raw)
    assert record["words"] == len(raw.decode("utf-8").split())
    assert record["sha256"] == hashlib.sha256(raw).hexdigest()
    assert re.fullmatch(r"[A-Za-z0-9.+-]+", record["spdx"]), record["spdx"]
    assert record["use"] in calib.USES


def test_readme_indexes_every_set():
    readme = (CALIB_DIR / "README.md").read_text(encoding="utf-8")
    for name in list_sets():
        assert f"`{name}`" in readme, f"calib/README.md does not list {name}"


def test_sizes_in_the_ranges_the_sets_are_meant_for():
    size = {n: load_text(n).source["bytes"] for n in list_sets()}
    assert 100_000 <= size["general"] <= 300_000
    assert 30_000 <= size["heldout"] <= 100_000
    for name in ("assistant", "voice", "automotive"):
        assert 10_000 <= size[name] <= 50_000, name


def shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_heldout_shares_no_passage_with_any_calibration_set():
    held = shingles(load_text("heldout").text)
    for name in calib.calibration_sets():
        common = held & shingles(load_text(name).text)
        assert not common, f"heldout and {name} share {sorted(common)[:3]}"


def test_heldout_is_evaluation_only():
    assert load_text("heldout").use == "evaluation"
    assert "heldout" not in calib.calibration_sets()
    assert {"general", "assistant", "voice", "automotive"} <= set(calib.calibration_sets())


# Batches


def test_same_seed_same_batches_other_seed_other_batches():
    cfg = CalibConfig.from_spec("assistant:3,general:7", n_samples=20, seq_len=64, seed=1)
    a = token_batches(TOK, cfg)
    b = token_batches(TOK, CalibConfig.from_spec("general:7,assistant:3", n_samples=20, seq_len=64, seed=1))
    c = token_batches(TOK, CalibConfig.from_spec("assistant:3,general:7", n_samples=20, seq_len=64, seed=2))
    assert a.shape == (20, 64) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_mix_follows_weights_and_every_window_is_real_text():
    cfg = CalibConfig.from_spec("assistant:3,general:7", n_samples=40, seq_len=48, seed=0)
    assert cfg.samples_per_set() == {"assistant": 12, "general": 28}
    batch = token_batches(TOK, cfg)
    origins = [source_of(row) for row in batch]
    assert all(len(o) == 1 for o in origins), "every window comes from exactly one set"
    counts = {n: sum(o == [n] for o in origins) for n in ("assistant", "general")}
    assert counts == {"assistant": 12, "general": 28}
    assert len({row.tobytes() for row in batch}) == len(batch), "windows do not repeat"


def test_largest_remainder_split_sums_to_n_samples():
    cfg = CalibConfig(sets={"assistant": 1, "voice": 1, "automotive": 1}, n_samples=10, seq_len=16)
    split = cfg.samples_per_set()
    assert sum(split.values()) == 10 and sorted(split.values()) == [3, 3, 4]


def test_heldout_is_never_sampled():
    held = load_text("heldout").text.encode("utf-8")
    every = ",".join(calib.calibration_sets())
    batch = token_batches(TOK, CalibConfig.from_spec(every, n_samples=60, seq_len=32, seed=3))
    for row in batch:
        assert bytes(row.astype(np.uint8).tolist()) not in held
    with pytest.raises(ConfigError, match="evaluation"):
        CalibConfig.from_spec("general:7,heldout:3")


def test_adding_a_set_keeps_the_other_sets_windows():
    alone = token_batches(TOK, CalibConfig(sets={"general": 1}, n_samples=10, seq_len=32, seed=5))
    mixed = token_batches(TOK, CalibConfig(sets={"general": 1, "voice": 1}, n_samples=20, seq_len=32, seed=5))
    assert {r.tobytes() for r in alone} <= {r.tobytes() for r in mixed}


def test_user_text_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("turn left at the lights, then second right. " * 40, encoding="utf-8")
    cfg = CalibConfig.from_spec(f"{path}:1,general:1", n_samples=4, seq_len=32)
    assert token_batches(TOK, cfg).shape == (4, 32)


# Self-generated calibration text


def fake_generate(prompt: list[int], n_tokens: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, size=min(n_tokens, 10)).tolist()  # stops early, like a model at EOS


def test_self_generated_is_deterministic_and_continues_after_early_stop():
    a = calib.self_generated(fake_generate, n_samples=3, seq_len=25, seed=7, prompts=[[1], [2, 3]])
    b = calib.self_generated(fake_generate, n_samples=3, seq_len=25, seed=7, prompts=[[1], [2, 3]])
    c = calib.self_generated(fake_generate, n_samples=3, seq_len=25, seed=8, prompts=[[1], [2, 3]])
    assert a.shape == (3, 25)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[0, 0] == 1 and list(a[1, :2]) == [2, 3] and a[2, 0] == 1


def test_self_generated_fails_when_the_model_writes_nothing():
    with pytest.raises(ConfigError, match="generate_fn gave 0 of 16 tokens"):
        calib.self_generated(lambda p, n, s: [], n_samples=1, seq_len=16, seed=0)


# Hash


def test_dataset_hash_is_stable_and_sensitive():
    cfg = CalibConfig.from_spec("assistant:3,general:7", n_samples=8, seq_len=32, seed=0)
    h = dataset_hash(cfg)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert h == dataset_hash(CalibConfig.from_spec("general:7,assistant:3", n_samples=8, seq_len=32))
    assert h != dataset_hash(CalibConfig.from_spec("assistant:3,general:7", n_samples=8, seq_len=32, seed=1))
    assert h != dataset_hash(CalibConfig.from_spec("assistant:4,general:7", n_samples=8, seq_len=32))
    assert calib.describe(cfg)["dataset_hash"] == h


# Bad input: one line, what and how to fix


@pytest.mark.parametrize(
    "spec, match",
    [
        ("generl:7", r"no calibration set 'generl'.*did you mean 'general'.*known: assistant"),
        ("general:0", r"weight 0.0; weights must be > 0"),
        ("general:-1", r"weight -1.0; weights must be > 0"),
        ("general:lots", r"weight 'lots' of 'general' is not a number"),
        ("general:nan", r"weight nan"),
        ("general:1,,voice:1", r"empty entry"),
        ("general:1,general:2", r"names 'general' twice"),
        ("/no/such/file.txt", r"does not exist"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ConfigError, match=match) as err:
        CalibConfig.from_spec(spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key, value", [("n_samples", 0), ("seq_len", 1), ("seed", -1), ("n_samples", 2.5)])
def test_bad_counts(key, value):
    with pytest.raises(ConfigError, match=key):
        CalibConfig(**{key: value})


def test_empty_sets():
    with pytest.raises(ConfigError, match="non-empty"):
        CalibConfig(sets={})


def test_text_shorter_than_seq_len():
    cfg = CalibConfig(sets={"voice": 1}, n_samples=1, seq_len=50_000)
    with pytest.raises(
        ConfigError, match=r"'voice' has 10\d{3} tokens, fewer than seq_len=50000; lower seq_len"
    ):
        token_batches(TOK, cfg)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café crème".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8.*re-encode"):
        CalibConfig.from_spec(str(path))


def test_set_without_provenance_or_with_stale_record(tmp_path):
    (tmp_path / "orphan").mkdir()
    (tmp_path / "orphan" / "text.txt").write_text("some text", encoding="utf-8")
    with pytest.raises(ConfigError, match="no provenance record"):
        load_text("orphan", root=tmp_path)
    record = yaml.safe_load((CALIB_DIR / "voice" / "SOURCE.yaml").read_text(encoding="utf-8"))
    record["name"] = "stale"
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "text.txt").write_text("edited text", encoding="utf-8")
    (tmp_path / "stale" / "SOURCE.yaml").write_text(yaml.safe_dump(record), encoding="utf-8")
    with pytest.raises(ConfigError, match="changed without its record"):
        load_text("stale", root=tmp_path)
