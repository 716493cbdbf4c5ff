"""Load a Hugging Face checkpoint directory (config.json + *.safetensors) into our Transformer.

Reads tensors one at a time with ``safetensors.safe_open`` (no pickles, no ``transformers``),
renames them to our parameter names and checks every name and shape before reading any data::

    model, spec = load_hf_checkpoint("path/to/SmolLM2-135M-Instruct")
    logits = model(torch.tensor([[1, 2, 3]]))  # (1, 3, vocab)

Checkpoints come in two expert layouts, both handled:

* one tensor per expert, ``mlp.experts.E.gate_proj.weight`` (F, D) (Qwen2-MoE) or
  ``block_sparse_moe.experts.E.w1.weight`` (Mixtral), as the published checkpoints have them;
* fused per layer, ``mlp.experts.gate_up_proj`` (E, 2F, D) and ``mlp.experts.down_proj``
  (E, D, F), as ``save_pretrained`` of transformers 5 writes them.

Phi-3 fuses the attention and MLP input projections, ``self_attn.qkv_proj`` (q_dim + 2 kv_dim, D)
and ``mlp.gate_up_proj`` (2F, D): they are split on load into our q/k/v and gate/up (row ranges,
read without copying the whole tensor), so every stage sees one layout.
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from edge.errors import ModelLoadError
from edge.model.llama import Transformer, rope_frequencies
from edge.model.spec import ModelSpec

INDEX_FILE = "model.safetensors.index.json"

# Checkpoint name (after dropping the "model." prefix) -> our name, per arch: re.sub rules
# applied in order. Names no rule touches are already ours (we follow HF's Llama layout).
HF_TENSOR_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "llama": (),
    "mistral": (),
    "qwen2": (),
    "mixtral": (
        (r"\.block_sparse_moe\.gate\.", ".mlp.gate."),
        (r"\.block_sparse_moe\.experts\.(\d+)\.w1\.", r".mlp.experts.\1.gate_proj."),
        (r"\.block_sparse_moe\.experts\.(\d+)\.w3\.", r".mlp.experts.\1.up_proj."),
        (r"\.block_sparse_moe\.experts\.(\d+)\.w2\.", r".mlp.experts.\1.down_proj."),
        (r"\.block_sparse_moe\.experts\.(gate_up_proj|down_proj)$", r".mlp.experts.\1"),
    ),
    "qwen2_moe": (),
    "qwen3": (),
    "qwen3_moe": (),
    "gemma3": (),
    "phi3": (),  # qkv_proj and gate_up_proj are split by FUSED_LINEARS
    "smollm3": (),
}

# Fused linear weights (Phi-3) -> our projections, each a block of rows, in checkpoint order.
# Value: the parts' names and a function of the spec giving each part's row count.
FUSED_LINEARS: dict[str, tuple[tuple[str, ...], object]] = {
    "self_attn.qkv_proj.weight": (
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        lambda spec: (spec.q_dim, spec.kv_dim, spec.kv_dim),
    ),
    "mlp.gate_up_proj.weight": (
        ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
        lambda spec: (spec.ffn_dim, spec.ffn_dim),
    ),
}
FUSED_LINEAR_NAME = re.compile(r"^(layers\.\d+)\.(self_attn\.qkv_proj\.weight|mlp\.gate_up_proj\.weight)$")

# Fused expert tensors (transformers 5) -> per-expert parts: (our projection, half of dim 1).
# gate_up_proj (E, 2F, D) holds gate rows [0, F) then up rows [F, 2F); down_proj is (E, D, F).
FUSED_EXPERTS: dict[str, tuple[tuple[str, int | None], ...]] = {
    "gate_up_proj": (("gate_proj", 0), ("up_proj", 1)),
    "down_proj": (("down_proj", None),),
}
FUSED_NAME = re.compile(r"^(layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")

# Checkpoint tensors that carry no weights of ours: RoPE tables we recompute.
IGNORED = re.compile(r"\.rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class Source:
    """Where one of our parameters lives: a checkpoint tensor, or one expert's slice of one."""

    file: Path
    key: str  # name in the safetensors file
    expert: int | None = None  # index into dim 0 of a fused expert tensor
    half: int | None = None  # 0 or 1: which half of dim 1 (gate or up of gate_up_proj)
    rows: tuple[int, int] | None = None  # [start, stop) rows of a fused linear weight (Phi-3)


def load_hf_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Transformer, ModelSpec]:
    """Build our Transformer from a Hugging Face checkpoint directory, weights cast to ``dtype``."""
    path = Path(path)
    spec = read_spec(path)
    where = safetensors_files(path)
    with torch.device("meta"):
        model = Transformer(spec)  # shapes only; the checkpoint's tensors become the parameters
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if spec.tie_embeddings:
        del expected["lm_head.weight"]
    with ExitStack() as stack:
        handles = {f: stack.enter_context(open_safetensors(f)) for f in sorted(set(where.values()))}
        plan = plan_tensors(path, spec, handles, where, expected)
        state = {name: read_tensor(handles[src.file], src).to(dtype) for name, src in plan.items()}
    if spec.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if spec.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # assign=True made two Parameters; re-tie
    model.inv_freq = rope_frequencies(spec)  # non-persistent buffer: was built on meta
    return model.eval(), spec


def read_spec(path: Path) -> ModelSpec:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a directory; pass the checkpoint directory holding config.json")
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{path}: no config.json; a Hugging Face checkpoint directory needs config.json and *.safetensors"
        )
    return ModelSpec.from_config_file(path / "config.json")


def safetensors_files(path: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> file holding it, from the shard index or the files themselves."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelLoadError(f"{index}: not a valid shard index (needs a 'weight_map' object)") from e
        out = {name: path / fname for name, fname in weight_map.items()}
        for f in sorted(set(out.values())):
            if not f.is_file():
                raise ModelLoadError(f"{index}: lists shard {f.name}, which is missing from {path}")
        return out
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"{path}: no *.safetensors files; for a spec without weights use ModelSpec.from_config_file"
        )
    out = {}
    for f in files:
        with open_safetensors(f) as h:
            out.update(dict.fromkeys(h.keys(), f))
    return out


@contextmanager
def open_safetensors(file: Path):
    """``safe_open`` that turns a corrupt or truncated file into ModelLoadError."""
    try:
        handle = safe_open(file, framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"{file}: corrupt or truncated safetensors file ({e})") from e
    with handle as h:
        yield h


def our_name(arch: str, key: str) -> str:
    name = key.removeprefix("model.")
    for pattern, repl in HF_TENSOR_RENAMES[arch]:
        name = re.sub(pattern, repl, name)
    return name


def plan_tensors(
    path: Path,
    spec: ModelSpec,
    handles: dict[Path, object],
    where: dict[str, Path],
    expected: dict[str, tuple[int, ...]],
) -> dict[str, Source]:
    """Map every expected parameter to its Source; check names and shapes, read no data."""
    plan: dict[str, Source] = {}
    extra: list[str] = []
    for key, f in sorted(where.items()):
        if IGNORED.search(key) or (spec.tie_embeddings and key == "lm_head.weight"):
            continue  # tied: the head is the embedding, whatever copy the checkpoint keeps
        name = our_name(spec.arch, key)
        try:
            shape = tuple(handles[f].get_slice(key).get_shape())
        except SafetensorError as e:
            raise ModelLoadError(f"{f}: cannot read tensor {key!r} ({e})") from e
        linear = FUSED_LINEAR_NAME.match(name)
        if linear is not None:
            plan.update(split_fused_linear(f, key, linear.group(1), linear.group(2), shape, spec, expected))
            continue
        fused = FUSED_NAME.match(name)
        if fused is None:
            if name not in expected:
                extra.append(key)
                continue
            check_shape(f, key, expected[name], shape)
            plan[name] = Source(f, key)
            continue
        prefix, kind = fused.groups()
        parts = FUSED_EXPERTS[kind]
        first = f"{prefix}.0.{parts[0][0]}.weight"
        if first not in expected:
            extra.append(key)
            continue
        rows, cols = expected[first]  # (F, D) for gate and up, (D, F) for down
        check_shape(f, key, (spec.n_experts, rows * len(parts), cols), shape)
        for e in range(spec.n_experts):
            for proj, half in parts:
                plan[f"{prefix}.{e}.{proj}.weight"] = Source(f, key, expert=e, half=half)
    if extra:
        more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
        raise ModelLoadError(
            f"{path}: unexpected tensors {', '.join(extra[:3])}{more} for a {spec.arch} model; "
            "the checkpoint does not match its config.json"
        )
    missing = sorted(set(expected) - set(plan))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelLoadError(
            f"{path}: no checkpoint tensor for parameter {', '.join(missing[:3])}{more} of a {spec.arch} model; "
            "the checkpoint is incomplete or does not match its config.json"
        )
    return plan


def split_fused_linear(file: Path, key: str, layer: str, kind: str, shape: tuple[int, ...], spec: ModelSpec,
                       expected: dict[str, tuple[int, ...]]) -> dict[str, Source]:
    """Sources of the projections a fused linear weight holds, after checking its shape."""
    parts, sizes = FUSED_LINEARS[kind]
    sizes = sizes(spec)
    want = (sum(sizes), spec.dim)
    if tuple(shape) != want:
        split = " + ".join(f"{n} {p.split('.')[-2]}" for n, p in zip(sizes, parts))
        raise ModelLoadError(
            f"{file}: fused tensor {key!r} has shape {list(shape)}, expected {list(want)} ({split} rows) "
            "from config.json")
    out, start = {}, 0
    for part, n in zip(parts, sizes):
        name = f"{layer}.{part}"
        assert expected[name] == (n, spec.dim), (name, expected[name])
        out[name] = Source(file, key, rows=(start, start + n))
        start += n
    return out


def check_shape(file: Path, key: str, want: tuple[int, ...], got: tuple[int, ...]) -> None:
    if tuple(want) != tuple(got):
        raise ModelLoadError(
            f"{file}: tensor {key!r} has shape {list(got)}, expected {list(want)} from config.json"
        )


def read_tensor(handle, src: Source) -> torch.Tensor:
    try:
        if src.rows is not None:
            return handle.get_slice(src.key)[src.rows[0] : src.rows[1]]  # reads those rows only
        if src.expert is None:
            return handle.get_tensor(src.key)
        t = handle.get_slice(src.key)[src.expert]  # (2F, D) or (D, F): reads one expert only
    except SafetensorError as e:
        raise ModelLoadError(f"{src.file}: cannot read tensor {src.key!r} ({e})") from e
    if src.half is None:
        return t
    return t.chunk(2, dim=0)[src.half].contiguous()
