"""Write a model as a llama-architecture GGUF that llama.cpp runs.

Quantized tensors are written from their stored codes and scales (``QuantizedModel.tensors``),
block for block, never re-rounded; the rest in f32 (or f16). Tokenizer metadata (tokens, merges,
token types, pre-tokenizer, special ids, chat template) and the ``general.*`` keys are copied from
a source GGUF; the architecture keys are written from the ModelSpec; the recipe and provenance go
in as ``edge.*`` key/values. Same inputs, same bytes: nothing time- or host-dependent is written.
The file appears only when complete (written to ``<path>.tmp``, then renamed).

    from edge.export.gguf import export_gguf
    export_gguf(model, quantized, "out/model.gguf", tokenizer_gguf=builtin_path("smollm2-135m"),
                provenance={"calib": dataset_hash(cfg)})

llama.cpp keeps attn_q/attn_k rows in its interleaved-RoPE order; we permute our rotate-half rows
into it (the inverse of what edge.model.gguf does on load). Blocks run along rows, so permuting
the rows of packed blocks is exact.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from edge.errors import ConfigError, ModelLoadError
from edge.model.gguf import EXPERT_TENSORS, GLOBAL_TENSORS, LAYER_TENSORS

# our parameter name -> GGUF name (inverses of the loader's tables)
_LAYER_OUT = {v: k for k, v in LAYER_TENSORS.items()}
_GLOBAL_OUT = {v: k for k, v in GLOBAL_TENSORS.items()}
_EXPERT_OUT = {v: k for k, v in EXPERT_TENSORS.items()}

# majority GGML type of the linear weights -> general.file_type (llama.h LLAMA_FTYPE_*)
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8}

# keys written from the spec, or by the writer, rather than copied from the source
_NOT_COPIED = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version", "llama.")


def _row_perm(rows: int, n_head: int) -> np.ndarray:
    """Row order llama.cpp's converter gives q/k: rotate-half -> interleaved, per head."""
    idx = np.arange(rows)
    return idx.reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


def gguf_name(ours: str) -> tuple[str, int | None]:
    """(GGUF tensor name, expert index or None) for one of our parameter names."""
    if ours in _GLOBAL_OUT:
        return _GLOBAL_OUT[ours], None
    parts = ours.split(".")
    if parts[0] == "layers":
        i, rest = parts[1], ".".join(parts[2:])
        if rest in _LAYER_OUT:
            return f"blk.{i}.{_LAYER_OUT[rest]}", None
        if rest.startswith("mlp.experts."):
            e, leaf = rest.split(".")[2], ".".join(rest.split(".")[3:])
            if leaf in _EXPERT_OUT:
                return f"blk.{i}.{_EXPERT_OUT[leaf]}", int(e)
    raise ConfigError(f"parameter '{ours}' has no GGUF name in the llama layout (shared experts are not supported)")


# GGUF value type id -> struct format (gguf-py GGUFValueType); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _source_fields(path: Path):
    """The key/values of a GGUF header to copy, with their types; strings kept as raw bytes so the
    copy is exact. A direct parse: gguf-py's reader takes ~10 s on a 49k-token vocabulary."""
    import struct

    import gguf

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such GGUF file to copy tokenizer metadata from")
    out = []
    with open(path, "rb") as f:

        def read(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def read_str():
            return f.read(read("<Q"))

        def value(t):
            if t == 8:
                return read_str()
            if t == 9:
                sub, n = read("<I"), read("<Q")
                if sub in _SCALARS:
                    dt = np.dtype(_SCALARS[sub].replace("<?", "<u1"))
                    arr = np.frombuffer(f.read(n * dt.itemsize), dtype=dt)
                    return (arr.astype(bool) if sub == 7 else arr).tolist(), sub
                return [value(sub) for _ in range(n)], sub
            return read(_SCALARS[t])

        if f.read(4) != b"GGUF":
            raise ModelLoadError(f"{path}: not a GGUF file (bad magic)")
        version = read("<I")
        if version < 2:
            raise ModelLoadError(f"{path}: GGUF version {version} is too old to copy metadata from")
        read("<Q")  # tensor count
        for _ in range(read("<Q")):
            key = read_str().decode("utf-8")
            t = read("<I")
            v = value(t)
            sub = None
            if t == 9:
                v, sub = v
            if key.startswith(_NOT_COPIED):
                continue
            out.append((key, v, gguf.GGUFValueType(t), gguf.GGUFValueType(sub) if sub is not None else None))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise ModelLoadError(f"{path}: has no tokenizer metadata (tokenizer.ggml.tokens) to copy")
    return out


def export_gguf(model, quantized, path: str | Path, *, tokenizer_gguf: str | Path,
                provenance: dict | None = None, float_type: str = "f32") -> Path:
    """Write ``model`` (with ``quantized``'s codes where it has them) to ``path`` as GGUF."""
    import gguf

    if float_type not in ("f32", "f16"):
        raise ConfigError(f"float_type '{float_type}' is not one of f32, f16")
    spec = model.spec
    if spec.arch not in ("llama", "mistral", "mixtral") or spec.qkv_bias:
        raise ConfigError(f"GGUF export writes the llama architecture; {spec.arch} "
                          f"{'with q/k/v bias ' if spec.qkv_bias else ''}is not supported")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tensors = dict(quantized.tensors) if quantized is not None else {}
    float_fmt = dict(quantized.info.get("float_tensors", {})) if quantized is not None else {}

    w = gguf.GGUFWriter(str(tmp), arch="llama")
    for key, val, vtype, sub in _source_fields(Path(tokenizer_gguf)):
        w.add_key_value(key, val, vtype, sub_type=sub)
    meta = llama_arch_keys(spec)
    for key, (val, vtype) in meta.items():
        w.add_key_value(key, val, vtype)

    written: dict[str, str] = {}
    stacked: dict[str, list] = {}
    params = [(n, p) for n, p in model.named_parameters() if not (spec.tie_embeddings and n == "lm_head.weight")]
    for name, p in params:
        gname, expert = gguf_name(name)
        qt = tensors.get(name)
        if qt is not None:
            qt = _permute_qk(name, qt, spec)
            data, raw = qt.gguf_bytes() if qt.fmt.ggml_type else None, qt.fmt.ggml_type
            if data is None or raw in ("F32", "F16"):
                raise ConfigError(f"tensor '{name}' is {qt.fmt.name}, which has no GGUF block layout; "
                                  "GGUF formats: q8_0, q5_0, q4_0 (use the .pte/.onnx exporters for int4/int8)")
            item = (data, gguf.GGMLQuantizationType[raw])
        else:
            arr = p.detach().float().cpu().numpy()
            if name.endswith("q_proj.weight"):
                arr = arr[_row_perm(arr.shape[0], spec.n_heads)]
            elif name.endswith("k_proj.weight"):
                arr = arr[_row_perm(arr.shape[0], spec.n_kv_heads)]
            ftype = float_fmt.get(name, float_type if arr.ndim > 1 else "f32")  # norms stay f32
            arr = np.ascontiguousarray(arr, dtype=np.float16 if ftype == "f16" else np.float32)
            item = (arr, None)
        if expert is not None:
            stacked.setdefault(gname, []).append((expert, item))
        else:
            _add(w, gname, item)
            written[gname] = item[1].name if item[1] is not None else ("F16" if item[0].dtype == np.float16 else "F32")
    for gname, items in stacked.items():
        items.sort(key=lambda t: t[0])
        types = {it[1][1] for it in items}
        if len(types) != 1:
            raise ConfigError(f"experts of '{gname}' have mixed formats {sorted(str(t) for t in types)}; "
                              "GGUF stacks them in one tensor: give them one format")
        _add(w, gname, (np.stack([it[1][0] for it in items]), items[0][1][1]))
        written[gname] = items[0][1][1].name if items[0][1][1] is not None else "F32"

    linear_types = Counter(t for n, t in written.items() if n.startswith("blk.") and not n.endswith("norm.weight"))
    main = linear_types.most_common(1)[0][0] if linear_types else "F32"
    w.add_key_value("general.file_type", FILE_TYPES.get(main, 0), gguf.GGUFValueType.UINT32)
    w.add_key_value("general.quantization_version", 2, gguf.GGUFValueType.UINT32)
    if quantized is not None:
        w.add_key_value("edge.recipe", quantized.recipe.to_json(), gguf.GGUFValueType.STRING)
    if provenance:
        w.add_key_value("edge.provenance", json.dumps(provenance, sort_keys=True, default=str),
                        gguf.GGUFValueType.STRING)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def _add(w, gname: str, item) -> None:
    data, raw = item
    if raw is None:
        w.add_tensor(gname, data)
    else:
        w.add_tensor(gname, data, raw_dtype=raw)


def _permute_qk(name: str, qt, spec):
    if name.endswith("q_proj.weight"):
        return qt.permute_rows(_row_perm(qt.shape[0], spec.n_heads))
    if name.endswith("k_proj.weight"):
        return qt.permute_rows(_row_perm(qt.shape[0], spec.n_kv_heads))
    return qt


def llama_arch_keys(spec) -> dict:
    """GGUF `llama.*` hyperparameter keys for ``spec`` (shared with edge.stream's streaming writer)."""
    from gguf import GGUFValueType as V

    keys = {
        "llama.context_length": (spec.max_seq_len, V.UINT32),
        "llama.embedding_length": (spec.dim, V.UINT32),
        "llama.block_count": (spec.n_layers, V.UINT32),
        "llama.feed_forward_length": (spec.ffn_dim, V.UINT32),
        "llama.attention.head_count": (spec.n_heads, V.UINT32),
        "llama.attention.head_count_kv": (spec.n_kv_heads, V.UINT32),
        "llama.rope.freq_base": (float(spec.rope_theta), V.FLOAT32),
        "llama.attention.layer_norm_rms_epsilon": (float(spec.norm_eps), V.FLOAT32),
        "llama.vocab_size": (spec.vocab_size, V.UINT32),
        "llama.rope.dimension_count": (spec.head_dim, V.UINT32),
    }
    if spec.head_dim != spec.dim // spec.n_heads:
        keys["llama.attention.key_length"] = (spec.head_dim, V.UINT32)
        keys["llama.attention.value_length"] = (spec.head_dim, V.UINT32)
    if spec.n_experts:
        keys["llama.expert_count"] = (spec.n_experts, V.UINT32)
        keys["llama.expert_used_count"] = (spec.n_experts_per_tok, V.UINT32)
    if spec.rope_scaling is not None:
        raise ConfigError("GGUF export of Llama-3 RoPE scaling (rope_freqs) is not implemented yet")
    return keys
