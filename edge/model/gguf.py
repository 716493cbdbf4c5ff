"""Load a GGUF file (dense, or MoE with expert tensors) of an architecture llama.cpp and we both run
into the reference model, and the GGUF vocabulary of names the writers share.

``GGUF_ARCHS`` maps our architectures to llama.cpp's names (llama, qwen2, qwen2moe, qwen3, qwen3moe,
gemma3, phi3, smollm3) with what llama.cpp fixes for each in its code: the RoPE type, tensor names,
Gemma's (1 + w) norms stored as such, Phi-3's fused gate/up, SmolLM3's NoPE interval.

Quantized tensors are dequantized with ``gguf.quants.dequantize`` (bit-identical to llama.cpp's
dequantization). For the architectures llama.cpp ropes in adjacent pairs (llama, smollm3) its
converter permutes the rows of ``attn_q``/``attn_k``; we undo that so one RoPE convention (Hugging
Face's rotate-half) serves every loader.

    spec = read_gguf_spec("model.gguf")            # no torch, metadata only
    model, spec, tok = load_gguf("model.gguf")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelLoadError, UnsupportedArchitecture
from edge.model.spec import ModelSpec, RopeScaling
from edge.model.tokenizer import Tokenizer

# GGUF tensor name (after "blk.N.") -> our parameter name (after "layers.N."): the names every
# architecture shares; GGUFArch.layer_tensors adds or overrides per architecture.
LAYER_TENSORS: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate_inp.weight": "mlp.gate.weight",
    # per-head RMSNorm on q and k before RoPE (Qwen3, Qwen3-MoE, Gemma 3)
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    # shared expert of Qwen2-MoE; its gate is one row (1, dim) for us, a vector (dim,) in GGUF
    "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
    "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight",
}
# stacked expert tensors (E, out, in) -> per-expert parameters
EXPERT_TENSORS: dict[str, str] = {
    "ffn_gate_exps.weight": "gate_proj.weight",
    "ffn_up_exps.weight": "up_proj.weight",
    "ffn_down_exps.weight": "down_proj.weight",
}
GLOBAL_TENSORS: dict[str, str] = {
    "token_embd.weight": "embed_tokens.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
# GGUF stores these as vectors where we keep a (1, n) matrix
VECTOR_TENSORS = ("ffn_gate_inp_shexp.weight",)


@dataclass(frozen=True)
class GGUFArch:
    """How llama.cpp names and computes one of our architectures (src/llama-arch.cpp, src/models/*.cpp)."""

    name: str  # llama.cpp's architecture name: general.architecture and the prefix of its keys
    interleaved_rope: bool  # llama.cpp ropes adjacent pairs (LLAMA_ROPE_TYPE_NORM): q/k rows are permuted
    layer_tensors: tuple[tuple[str, str], ...] = ()  # GGUF leaf -> our leaf, over LAYER_TENSORS
    needs_output: bool = False  # llama.cpp requires output.weight even when the embedding is tied
    moe_weights_normalized: bool | None = None  # MoE: whether llama.cpp renormalises the top-k weights
    fused_gate_up: bool = False  # ffn_up holds [gate; up] rows and there is no ffn_gate (phi3)
    nope_interval: int = 0  # llama.cpp skips RoPE on every n-th layer, n fixed in its code (smollm3: 4)

    def tensors(self) -> dict[str, str]:
        return LAYER_TENSORS | dict(self.layer_tensors)


# our ModelSpec.arch -> llama.cpp's architecture. Mistral and Mixtral are llama in llama.cpp;
# the rope type of each is llama.cpp's llama_model_rope_type.
GGUF_ARCHS: dict[str, GGUFArch] = {
    "llama": GGUFArch("llama", interleaved_rope=True),
    "mistral": GGUFArch("llama", interleaved_rope=True),
    "mixtral": GGUFArch("llama", interleaved_rope=True, moe_weights_normalized=True),
    "qwen2": GGUFArch("qwen2", interleaved_rope=False),
    "qwen2_moe": GGUFArch("qwen2moe", interleaved_rope=False, needs_output=True, moe_weights_normalized=False),
    "qwen3": GGUFArch("qwen3", interleaved_rope=False),
    "qwen3_moe": GGUFArch("qwen3moe", interleaved_rope=False, moe_weights_normalized=True),
    # Gemma 3's four norms: llama.cpp calls the one after attention post_attention_norm and the one
    # before the MLP ffn_norm; its norms multiply by the stored weight, so (1 + w) is stored
    "gemma3": GGUFArch("gemma3", interleaved_rope=False, layer_tensors=(
        ("post_attention_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
        ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"))),
    "phi3": GGUFArch("phi3", interleaved_rope=False, fused_gate_up=True),
    "smollm3": GGUFArch("smollm3", interleaved_rope=True, nope_interval=4),
}
SUPPORTED_GGUF_ARCHS = tuple(dict.fromkeys(a.name for a in GGUF_ARCHS.values()))


def our_arch(gguf_arch: str, n_experts: int) -> str:
    """Our ModelSpec.arch for a GGUF's general.architecture (llama with experts is Mixtral)."""
    if gguf_arch == "llama":
        return "mixtral" if n_experts else "llama"
    return next(k for k, v in GGUF_ARCHS.items() if v.name == gguf_arch)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file; ``shape`` lists dims innermost first, as GGUF does."""

    name: str
    shape: tuple[int, ...]
    tensor_type: Any  # gguf.GGMLQuantizationType
    data: np.ndarray  # memory-mapped: float types in row-major shape, quantized types (rows, row_bytes) uint8


@dataclass(frozen=True)
class GGUFFile:
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


# GGUF value type id -> struct format (scalars); 8 = string, 9 = array
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor table; tensor data stays memory-mapped.

    Our own parser: gguf-py's GGUFReader builds a numpy view per array element and takes ~4-9 s
    on the built-in model's 49k-token vocabulary; this takes ~0.2 s.
    """
    import struct

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(mm)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string() -> str:
        nonlocal pos
        n = take("Q")
        if pos + n > len(buf):
            raise ValueError("string runs past the end of the file")
        v = bytes(buf[pos : pos + n]).decode("utf-8", errors="replace")
        pos += n
        return v

    def value(vtype: int):
        if vtype in _SCALAR:
            return take(_SCALAR[vtype])
        if vtype == 8:
            return string()
        if vtype == 9:
            itype, count = take("I"), take("Q")
            if itype in _SCALAR and itype != 7:
                nonlocal pos
                dt = np.dtype("<" + _SCALAR[itype])
                arr = np.frombuffer(buf, dtype=dt, count=count, offset=pos)
                pos += dt.itemsize * count
                return arr.tolist()
            return [value(itype) for _ in range(count)]
        raise ValueError(f"unknown metadata value type {vtype}")

    try:
        if bytes(buf[:4]) != b"GGUF":
            raise ValueError("no GGUF magic at the start")
        pos = 4
        version = take("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
        n_tensors, n_kv = take("Q"), take("Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = string()
            meta[key] = value(take("I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            dims = tuple(take("Q") for _ in range(take("I")))
            infos.append((name, dims, GGMLQuantizationType(take("I")), take("Q")))
        align = int(meta.get("general.alignment", 32))
        data_start = (pos + align - 1) // align * align
        tensors = []
        for name, dims, qtype, offset in infos:
            block, type_size = GGML_QUANT_SIZES[qtype]
            n_elem = int(np.prod(dims))
            n_bytes = n_elem * type_size // block
            start = data_start + offset
            if start + n_bytes > len(mm):
                raise ValueError(f"tensor '{name}' runs past the end of the file")
            raw = mm[start : start + n_bytes]
            if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                data = raw.view(np.float32 if qtype == GGMLQuantizationType.F32 else np.float16)
                data = data.reshape(tuple(reversed(dims)))
            else:
                data = raw.reshape(-1, dims[0] * type_size // block)
            tensors.append(GGUFTensor(name, dims, qtype, data))
    except ModelLoadError:
        raise
    except Exception as e:  # struct.error, ValueError: a truncated or corrupt file
        raise ModelLoadError(f"{path}: truncated or corrupt GGUF file ({e}); download or convert it again") from e
    return GGUFFile(meta, tensors)


def read_metadata(reader) -> dict[str, Any]:
    """Key/value metadata as plain python values, from our ``GGUFFile`` or gguf-py's ``GGUFReader``."""
    if isinstance(reader, GGUFFile):
        return reader.metadata
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            out[key] = f.contents()
        except Exception as e:  # a field dropped here could be one the spec needs: say which, and why
            raise ModelLoadError(f"GGUF metadata field '{key}' (types {[t.name for t in f.types]}) cannot be read "
                                 f"({type(e).__name__}: {e}); the file is corrupt or newer than gguf-py") from e
    return out


def _spec_from_meta(meta: dict, path: Path, n_vocab_tensor: int | None, names: set[str],
                    rope_factors: dict[str, Any] | None = None) -> ModelSpec:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise UnsupportedArchitecture(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_GGUF_ARCHS)} (convert other models from their Hugging Face checkpoint)"
        )

    def need(key):
        v = meta.get(f"{arch}.{key}")
        if v is None:
            raise ModelLoadError(f"{path}: GGUF metadata lacks '{arch}.{key}'; the file is incomplete")
        return v

    def get(key, default=None):
        v = meta.get(f"{arch}.{key}")
        return default if v is None else v

    dim = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_exp = int(get("expert_count", 0))
    ours = our_arch(arch, n_exp)
    vocab = get("vocab_size") or n_vocab_tensor or len(meta.get("tokenizer.ggml.tokens", []))
    ffn = int(need("feed_forward_length"))
    n_layers = int(need("block_count"))
    kw: dict[str, Any] = {}
    if n_exp:
        kw = dict(n_experts=n_exp, n_experts_per_tok=int(get("expert_used_count", 0)),
                  moe_ffn_dim=int(get("expert_feed_forward_length", ffn)),
                  norm_topk_prob=GGUF_ARCHS[ours].moe_weights_normalized is not False)
        shexp = int(get("expert_shared_feed_forward_length", 0))
        if shexp or "blk.0.ffn_gate_shexp.weight" in names:
            kw.update(shared_expert_ffn_dim=shexp or ffn, shared_expert_gate="blk.0.ffn_gate_inp_shexp.weight" in names)
        kw["moe_layers"] = tuple(i for i in range(n_layers) if f"blk.{i}.ffn_gate_inp.weight" in names)
    # a tied embedding: llama.cpp-required output.weight written as a copy still counts as tied
    tied = "output.weight" not in names or bool(meta.get("edge.tied_output"))
    ga = GGUF_ARCHS[ours]
    head_dim = int(get("attention.key_length", dim // n_heads))
    rope_dim = int(get("rope.dimension_count", head_dim))
    kw["rope_dim"] = 0 if rope_dim == head_dim else rope_dim
    kw["qk_norm"] = "blk.0.attn_q_norm.weight" in names
    kw["nope_layers"] = tuple(i for i in range(n_layers) if ga.nope_interval and (i + 1) % ga.nope_interval == 0)
    if get("rope.scaling.type") == "linear":
        kw["rope_scaling"] = RopeScaling(factor=float(get("rope.scaling.factor", 1.0)), rope_type="linear")
    elif rope_factors and "rope_factors_long.weight" in rope_factors:  # Phi-3 LongRoPE
        kw["rope_scaling"] = RopeScaling(
            factor=1.0, rope_type="longrope", original_max_position_embeddings=int(
                get("rope.scaling.original_context_length", 0)), attention_factor=float(
                get("rope.scaling.attn_factor", 1.0)),
            long_factor=tuple(rope_factors["rope_factors_long.weight"]),
            short_factor=tuple(rope_factors["rope_factors_short.weight"]))
    if arch == "gemma3":  # what llama.cpp's gemma3 graph fixes in code (see edge.export.gguf.gguf_arch)
        kw.update(norm_offset=1.0, post_norms=True, mlp_act="gelu_tanh", embed_scale=dim**0.5,
                  final_logit_softcap=float(get("final_logit_softcapping", 0.0)))
        window = int(get("attention.sliding_window", 0))
        if window:
            pattern = get("attention.sliding_window_pattern", 6)
            if isinstance(pattern, list):
                sliding = tuple(i for i, s in enumerate(pattern) if s)
            else:  # every n-th layer global, the others sliding
                sliding = tuple(i for i in range(n_layers) if pattern == 0 or i % pattern < pattern - 1)
            kw.update(sliding_window=window, sliding_layers=sliding,
                      rope_local_theta=float(get("rope.freq_base_swa", 10000.0)))
    return ModelSpec(
        arch=ours,
        vocab_size=int(vocab),
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        ffn_dim=ffn,
        head_dim=head_dim,
        norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_seq_len=int(get("context_length", 2048)),
        tie_embeddings=tied,
        qkv_bias="blk.0.attn_q.bias" in names,
        name=str(meta.get("general.name") or path.stem),
        **kw,
    )


def _rope_factors(tensors: dict) -> dict[str, list[float]]:
    """LongRoPE's factor tables (float32 vectors) by tensor name, as plain floats."""
    return {n: [float(x) for x in np.asarray(t.data, dtype=np.float32).reshape(-1)]
            for n, t in tensors.items() if n.startswith("rope_factors_")}


def read_gguf_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec of a GGUF file from its metadata (no tensor data is read, no torch)."""
    reader = read_gguf(path)
    names = {t.name: t for t in reader.tensors}
    emb = names.get("token_embd.weight")
    return _spec_from_meta(read_metadata(reader), Path(path), int(emb.shape[1]) if emb is not None else None,
                           set(names), _rope_factors(names))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp convert's q/k row permutation (interleaved -> rotate-half RoPE)."""
    # convert permuted (n_head, 2, hd/2) -> (n_head, hd/2, 2); view it that way and swap back
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_f32(t) -> np.ndarray:
    """A GGUF tensor as float32 in torch (row-major) shape: GGUF lists dims innermost first."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(t.shape))
    if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
        arr = dequantize(t.data, t.tensor_type) if t.tensor_type == GGMLQuantizationType.BF16 else t.data
        return np.asarray(arr, dtype=np.float32).reshape(shape)
    return dequantize(t.data, t.tensor_type).astype(np.float32, copy=False).reshape(shape)


def load_gguf(path: str | Path, dtype=None, progress: bool = False):
    """Load a GGUF of one of ``GGUF_ARCHS`` into ``Transformer``. Returns (model, spec, tokenizer)."""
    import torch

    from edge.model.llama import Transformer, rope_frequencies
    path = Path(path)
    reader = read_gguf(path)
    meta = reader.metadata
    tensors = {t.name: t for t in reader.tensors}
    emb = tensors.get("token_embd.weight")
    spec = _spec_from_meta(meta, path, int(emb.shape[1]) if emb is not None else None, set(tensors),
                           _rope_factors(tensors))
    ga = GGUF_ARCHS[spec.arch]
    layer_tensors = ga.tensors()
    with torch.device("meta"):
        model = Transformer(spec)
    expected = {k: v for k, v in model.state_dict().items()}
    if spec.tie_embeddings:
        expected.pop("lm_head.weight", None)

    from tqdm import tqdm

    state: dict[str, torch.Tensor] = {}
    bar = tqdm(tensors.items(), desc=f"load {path.name}", unit="tensor", leave=False,
               disable=None if progress else True)  # None: only on a terminal
    for name, t in bar:
        if name == "rope_freqs.weight" or name.startswith("rope_factors_"):  # RoPE tables: applied below / spec
            continue
        if name == "output.weight" and spec.tie_embeddings:  # the copy llama.cpp requires of a tied head
            continue
        if name in GLOBAL_TENSORS:
            ours = [(GLOBAL_TENSORS[name], None)]
        elif name.startswith("blk."):
            _, idx, rest = name.split(".", 2)
            if rest in layer_tensors:
                ours = [(f"layers.{idx}.{layer_tensors[rest]}", None)]
            elif rest in EXPERT_TENSORS:
                ours = [(f"layers.{idx}.mlp.experts.{e}.{EXPERT_TENSORS[rest]}", e) for e in range(spec.n_experts)]
            elif rest in ("attn_qkv.weight", "attn_qkv.bias") and not ga.interleaved_rope:
                # llama.cpp's converter fuses q, k, v for some architectures (Phi-3): rows [q; k; v]
                leaf = rest.split(".")[-1]
                q, kv = spec.q_dim, spec.kv_dim
                ours = [(f"layers.{idx}.self_attn.{p}_proj.{leaf}", rows) for p, rows in
                        (("q", slice(0, q)), ("k", slice(q, q + kv)), ("v", slice(q + kv, q + 2 * kv)))]
            else:
                raise ModelLoadError(f"{path}: unexpected tensor '{name}' for a {ga.name} GGUF (not mapped)")
        else:
            raise ModelLoadError(f"{path}: unexpected tensor '{name}' for a {ga.name} GGUF (not mapped)")
        try:
            w = _tensor_f32(t)
        except Exception as e:
            raise ModelLoadError(f"{path}: tensor '{name}' could not be read ({e}); the file may be corrupt") from e
        if ga.interleaved_rope and name.endswith(("attn_q.weight", "attn_q.bias")):
            w = _unpermute(w, spec.n_heads)
        elif ga.interleaved_rope and name.endswith(("attn_k.weight", "attn_k.bias")):
            w = _unpermute(w, spec.n_kv_heads)
        if name.endswith(VECTOR_TENSORS):
            w = w.reshape(1, -1)
        if spec.norm_offset and name.endswith("norm.weight"):  # stored as (offset + w)
            w = w - np.float32(spec.norm_offset)
        if ga.fused_gate_up and name.endswith("ffn_up.weight"):  # [gate; up] rows
            half = w.shape[0] // 2
            ours = [(f"layers.{idx}.mlp.gate_proj.weight", slice(0, half)),
                    (f"layers.{idx}.mlp.up_proj.weight", slice(half, None))]
        for ours_name, e in ours:
            arr = w[e] if e is not None else w
            exp = expected.get(ours_name)
            if exp is None:
                raise ModelLoadError(f"{path}: tensor '{name}' has no place in a {spec.arch} model of this shape")
            if tuple(arr.shape) != tuple(exp.shape):
                raise ModelLoadError(
                    f"{path}: tensor '{name}' has shape {tuple(arr.shape)}, expected {tuple(exp.shape)}"
                )
            state[ours_name] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))  # own, writable copy
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelLoadError(f"{path}: GGUF lacks tensor(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if spec.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    # assign the loaded tensors into the meta-device model: no random init, no second copy
    model.load_state_dict(state, strict=True, assign=True)
    if spec.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.inv_freq = rope_frequencies(spec)  # non-persistent buffer, still on meta
    if "rope_freqs.weight" in tensors:
        factors = torch.from_numpy(np.array(_tensor_f32(tensors["rope_freqs.weight"]), dtype=np.float32).reshape(-1))
        model.inv_freq = model.inv_freq / factors
    if dtype is not None:
        model = model.to(dtype)
    model.eval().requires_grad_(False)
    return model, spec, Tokenizer.from_gguf_fields(meta, path)
