"""Calibration data: named text sets from calib/, mixed by weight into deterministic token batches.

Step: quantize(calib) and prune(calib) need activations from representative text. This module
turns the text sets shipped in calib/ (each with its SOURCE.yaml provenance record) into a
(n_samples, seq_len) array of token ids, the same array for the same seed, the same texts and
the same tokenizer. The "heldout" set is evaluation text and is never sampled here.

    from edge.calib import CalibConfig, token_batches, dataset_hash
    cfg = CalibConfig.from_spec("assistant:3,general:7", n_samples=64, seq_len=256, seed=0)
    batches = token_batches(tokenizer, cfg)   # np.ndarray (64, 256) int64
    key = dataset_hash(cfg)                   # sha256 hex, for caches and manifests

`tokenizer` is anything with `encode(text: str) -> list[int]`. A user with no text of their
own can have the model write some: `self_generated(generate_fn, n_samples, seq_len, seed)`.
A set name may also be the path of a UTF-8 text file (the user's own data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import yaml

from edge.errors import ConfigError, did_you_mean

CALIB_DIR = Path(__file__).resolve().parent.parent / "calib"

# Keys every calib/<name>/SOURCE.yaml must have; tests check each set against this list.
PROVENANCE_KEYS = (
    "name",
    "use",
    "used_for",
    "title",
    "author",
    "origin_url",
    "retrieved",
    "licence",
    "spdx",
    "processing",
    "bytes",
    "words",
    "sha256",
)
USES = ("calibration", "evaluation")
HASH_FORMAT = 1  # bump when dataset_hash's input layout changes


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class CalibText:
    """One text set and where it came from (the parsed SOURCE.yaml, or a stub for a user file)."""

    name: str
    text: str
    source: Mapping[str, Any]
    path: Path

    @property
    def use(self) -> str:
        return self.source["use"]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def list_sets(root: Path = CALIB_DIR) -> list[str]:
    """Names of the text sets in `root`: the subdirectories holding text.txt (all uses)."""
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob("*/text.txt"))


def calibration_sets(root: Path = CALIB_DIR) -> list[str]:
    """The sets that may be sampled for calibration (use: calibration), i.e. all but heldout."""
    return [n for n in list_sets(root) if load_text(n, root).use == "calibration"]


def load_text(name: str, root: Path = CALIB_DIR) -> CalibText:
    """The text of set `name` with its provenance; `name` may also be a path to a UTF-8 .txt file."""
    root = Path(root).resolve()
    if (root / name / "text.txt").is_file():
        return _load_set(name, root / name)
    if _looks_like_path(name):
        return _load_user_file(Path(name))
    raise ConfigError(_unknown_set_message(name, root))


@lru_cache(maxsize=32)
def _load_set(name: str, set_dir: Path) -> CalibText:
    text_path = set_dir / "text.txt"
    source_path = set_dir / "SOURCE.yaml"
    if not source_path.is_file():
        raise ConfigError(
            f"calibration set '{name}' has no provenance record {source_path}; "
            f"add one with keys {', '.join(PROVENANCE_KEYS)}"
        )
    try:
        source = yaml.safe_load(source_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{source_path} is not valid YAML ({e.__class__.__name__}); fix the file") from e
    if not isinstance(source, dict):
        raise ConfigError(f"{source_path} must be a YAML mapping of {', '.join(PROVENANCE_KEYS)}")
    missing = [k for k in PROVENANCE_KEYS if source.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"{source_path} lacks {', '.join(missing)}; every set records where it came from")
    if source["use"] not in USES:
        raise ConfigError(f"{source_path}: use '{source['use']}' is not one of {', '.join(USES)}")
    text = _read_utf8(text_path)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != source["sha256"]:
        raise ConfigError(
            f"{text_path} has sha256 {digest[:12]}..., its SOURCE.yaml records {str(source['sha256'])[:12]}...; "
            "the text changed without its record: update bytes, words and sha256 there"
        )
    return CalibText(name=name, text=text, source=MappingProxyType(source), path=text_path)


def _load_user_file(path: Path) -> CalibText:
    if not path.is_file():
        raise ConfigError(f"calibration file {path} does not exist; give a UTF-8 text file or a set name")
    text = _read_utf8(path)
    if not text.strip():
        raise ConfigError(f"calibration file {path} is empty; give a file with text in it")
    source = {
        "name": str(path),
        "use": "calibration",
        "title": path.name,
        "licence": "supplied by the user",
        "bytes": path.stat().st_size,
    }
    return CalibText(name=str(path), text=text, source=MappingProxyType(source), path=path)


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"calibration text {path} is not UTF-8 (byte {e.start}: {e.reason}); re-encode it as UTF-8"
        ) from e


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.endswith(".txt")


def _unknown_set_message(name: str, root: Path) -> str:
    known = list_sets(root)
    return f"no calibration set '{name}' in {root}{did_you_mean(name, known)}; known: {', '.join(known) or '(none)'}"


@dataclass(frozen=True)
class CalibConfig:
    """Which sets to mix and how much of each, how many windows of how many tokens, which seed.

    `sets` maps a set name (or a text-file path) to a positive weight; weights are relative, so
    {"assistant": 3, "general": 7} draws 30% of the windows from assistant. Stored sorted by
    name, so the order the user typed does not change the batches.
    """

    sets: Mapping[str, float] = field(default_factory=lambda: {"general": 1.0})
    n_samples: int = 128
    seq_len: int = 512
    seed: int = 0
    root: Path = CALIB_DIR

    def __post_init__(self) -> None:
        if not isinstance(self.sets, Mapping) or not self.sets:
            raise ConfigError(
                f"calibration sets must be a non-empty mapping name -> weight, got {self.sets!r}; "
                f"e.g. {{'general': 1}}; known: {', '.join(list_sets(self.root))}"
            )
        _check_counts(self.n_samples, self.seq_len, self.seed)
        weights: dict[str, float] = {}
        for name, weight in sorted(self.sets.items()):
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise ConfigError(f"calibration set '{name}' has weight {weight!r}; give a positive number")
            if weight <= 0:
                raise ConfigError(
                    f"calibration set '{name}' has weight {weight}; weights must be > 0 (leave the set out instead)"
                )
            text = load_text(name, self.root)
            if text.use != "calibration":
                raise ConfigError(
                    f"set '{name}' is {text.use} text (use: {text.use} in its SOURCE.yaml) and must not be "
                    f"calibrated on; pick from: {', '.join(calibration_sets(self.root))}"
                )
            weights[name] = float(weight)
        object.__setattr__(self, "sets", MappingProxyType(weights))

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        n_samples: int = 128,
        seq_len: int = 512,
        seed: int = 0,
        root: Path = CALIB_DIR,
    ) -> CalibConfig:
        """Parse the CLI form 'assistant:3,general:7' (a bare name has weight 1)."""
        example = "e.g. 'assistant:3,general:7'"
        weights: dict[str, float] = {}
        for item in spec.split(","):
            item = item.strip()
            name, _, weight_text = item.rpartition(":") if ":" in item else (item, "", "1")
            name = name.strip()
            if not name:
                raise ConfigError(
                    f"calibration spec '{spec}' has an empty entry '{item}'; write NAME[:WEIGHT],... {example}"
                )
            try:
                weight = float(weight_text)
            except ValueError as e:
                raise ConfigError(
                    f"calibration spec '{spec}': weight '{weight_text}' of '{name}' is not a number; {example}"
                ) from e
            if name in weights:
                raise ConfigError(f"calibration spec '{spec}' names '{name}' twice; give each set once")
            weights[name] = weight
        return cls(sets=weights, n_samples=n_samples, seq_len=seq_len, seed=seed, root=root)

    def to_spec(self) -> str:
        return ",".join(f"{name}:{weight:g}" for name, weight in self.sets.items())

    def samples_per_set(self) -> dict[str, int]:
        """How many of the n_samples windows each set contributes (largest-remainder rounding)."""
        total = sum(self.sets.values())
        exact = {name: self.n_samples * w / total for name, w in self.sets.items()}
        counts = {name: math.floor(x) for name, x in exact.items()}
        short = self.n_samples - sum(counts.values())
        # Ties broken by name so the split is a pure function of the config.
        for name in sorted(exact, key=lambda n: (counts[n] - exact[n], n))[:short]:
            counts[name] += 1
        return counts


def _check_counts(n_samples: int, seq_len: int, seed: int) -> None:
    for key, value, minimum in (("n_samples", n_samples, 1), ("seq_len", seq_len, 2), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"calibration {key} must be an integer >= {minimum}, got {value!r}")


def token_batches(tokenizer: Tokenizer, cfg: CalibConfig) -> np.ndarray:
    """Windows of cfg.seq_len tokens, cfg.n_samples of them, drawn from each set by weight.

    Returns int64 (n_samples, seq_len). Each set is tokenized whole; a set's windows are taken
    without overlap where the text is long enough, at starts chosen by a generator seeded with
    (seed, set name), so adding a set to the mix does not move another set's windows. Rows are
    then shuffled with the seed so any prefix of the batch keeps roughly the mix.
    """
    rows: list[np.ndarray] = []
    for name, count in cfg.samples_per_set().items():
        if count == 0:
            continue
        tokens = _encode(tokenizer, load_text(name, cfg.root))
        if len(tokens) < cfg.seq_len:
            raise ConfigError(
                f"calibration set '{name}' has {len(tokens)} tokens, fewer than seq_len={cfg.seq_len}; "
                "lower seq_len or use a longer set"
            )
        rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode("utf-8"))])
        for start in _window_starts(len(tokens), cfg.seq_len, count, rng):
            rows.append(tokens[start : start + cfg.seq_len])
    batch = np.stack(rows)  # (n_samples, seq_len)
    order = np.random.default_rng(cfg.seed).permutation(len(batch))
    return batch[order]


def _encode(tokenizer: Tokenizer, text: CalibText) -> np.ndarray:
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer {type(tokenizer).__name__} has no encode(text) -> list[int]")
    return np.asarray(tokenizer.encode(text.text), dtype=np.int64)


def _window_starts(n_tokens: int, seq_len: int, count: int, rng: np.random.Generator) -> np.ndarray:
    slots = n_tokens // seq_len
    if count > slots:
        # More windows asked than fit side by side: overlap is unavoidable, draw starts freely.
        return rng.integers(0, n_tokens - seq_len + 1, size=count)
    offset = int(rng.integers(0, n_tokens - slots * seq_len + 1))
    chosen = rng.choice(slots, size=count, replace=False)
    return offset + np.sort(chosen) * seq_len


GenerateFn = Callable[[list[int], int, int], Sequence[int]]


def self_generated(
    generate_fn: GenerateFn,
    n_samples: int,
    seq_len: int,
    seed: int,
    *,
    prompts: Sequence[Sequence[int]] = ((),),
    max_calls: int = 8,
) -> np.ndarray:
    """Calibration windows written by the model itself, for users with no text of their own.

    `generate_fn(prompt_tokens, n_tokens, seed) -> new tokens` samples up to n_tokens tokens
    after the prompt (an empty prompt means "start of text": the model adds BOS). Sample i starts
    from prompts[i % len(prompts)] with its own seed drawn from `seed`; if the model stops early
    (EOS), generation continues from what it wrote, up to max_calls calls per sample.
    Returns int64 (n_samples, seq_len) including the prompt tokens.
    """
    _check_counts(n_samples, seq_len, seed)
    if not prompts or any(len(p) >= seq_len for p in prompts):
        raise ConfigError(f"self_generated needs at least one prompt shorter than seq_len={seq_len}")
    sample_seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=n_samples)
    rows = np.empty((n_samples, seq_len), dtype=np.int64)
    for i in range(n_samples):
        row = [int(t) for t in prompts[i % len(prompts)]]
        for call in range(max_calls):
            new = list(generate_fn(list(row), seq_len - len(row), int(sample_seeds[i]) + call))
            if not all(isinstance(t, int | np.integer) for t in new):
                raise TypeError(f"generate_fn must return token ids (ints), got {new[:4]!r}...")
            row.extend(int(t) for t in new)
            if len(row) >= seq_len:
                break
        else:
            raise ConfigError(
                f"generate_fn gave {len(row)} of {seq_len} tokens for sample {i} in {max_calls} calls; "
                "let it sample past EOS or lower seq_len"
            )
        rows[i] = row[:seq_len]
    return rows


def dataset_hash(cfg: CalibConfig) -> str:
    """sha256 over the config and every mixed set's text: the cache/manifest key for a calibration.

    The tokenizer is not part of it; key token batches on (dataset_hash, tokenizer identity).
    """
    payload = {
        "format": HASH_FORMAT,
        "sets": {name: [weight, load_text(name, cfg.root).sha256] for name, weight in cfg.sets.items()},
        "n_samples": cfg.n_samples,
        "seq_len": cfg.seq_len,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def describe(cfg: CalibConfig) -> dict[str, Any]:
    """A JSON-ready record of a calibration mix for manifests: sets, counts, licences, hash."""
    counts = cfg.samples_per_set()
    sets = []
    for name, weight in cfg.sets.items():
        src = load_text(name, cfg.root).source
        sets.append(
            {
                "name": name,
                "weight": weight,
                "samples": counts[name],
                "title": src.get("title"),
                "licence": src.get("spdx", src.get("licence")),
            }
        )
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("sets", "root")}
    return {"spec": cfg.to_spec(), **fields, "sets": sets, "dataset_hash": dataset_hash(cfg)}
