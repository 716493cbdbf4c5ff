"""Write a model as a GGUF that llama.cpp runs, under llama.cpp's own name for its architecture.

Quantized tensors are written from their stored codes and scales (``QuantizedModel.tensors``),
block for block, never re-rounded; the rest in f32 (or f16). The tokenizer metadata (tokens,
merges or scores, token types, pre-tokenizer, special ids, chat template) is either copied from a
source GGUF or converted from a checkpoint directory's ``tokenizer.json``
(``edge.model.tokenizer.gguf_vocab_from_hf``); the architecture keys are written from the ModelSpec;
the recipe and provenance go in as ``edge.*`` key/values. Same inputs, same bytes: nothing time- or
host-dependent is written. The file appears only when complete (written to ``<path>.tmp``, then
renamed).

    from edge.export.gguf import export_gguf
    export_gguf(model, quantized, "out/model.gguf", tokenizer_gguf=builtin_path("smollm2-135m"))
    export_gguf(model, None, "out/model.gguf", tokenizer_dir="ckpt/Qwen3-0.6B")

This module is the one GGUF vocabulary of the writers (``export_gguf`` and ``edge.stream``): tensor
names, the q/k row permutation, file types, architecture keys, tokenizer fields, atomic writing.
llama.cpp ropes some architectures in adjacent pairs (``GGUFArch.interleaved_rope``: llama, smollm3)
and keeps attn_q/attn_k rows in that order; we permute our rotate-half rows into it (the inverse of
what edge.model.gguf does on load). Blocks run along rows, so permuting the rows of packed blocks
is exact.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge.errors import ConfigError, ModelLoadError
from edge.model.gguf import EXPERT_TENSORS, GGUF_ARCHS, GLOBAL_TENSORS, VECTOR_TENSORS, GGUFArch
from edge.model.tokenizer import gguf_vocab_from_hf

_GLOBAL_OUT = {v: k for k, v in GLOBAL_TENSORS.items()}
_EXPERT_OUT = {v: k for k, v in EXPERT_TENSORS.items()}

# majority GGML type of the linear weights -> general.file_type (llama.h LLAMA_FTYPE_*)
FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8}


def gguf_arch(spec) -> GGUFArch:
    """llama.cpp's description of ``spec``'s architecture; a one-line error naming the feature when
    llama.cpp's graph for it would compute something else."""
    ga = GGUF_ARCHS.get(spec.arch)
    if ga is None:
        raise ConfigError(f"GGUF export: architecture {spec.arch} has no llama.cpp equivalent here; "
                          f"supported: {', '.join(GGUF_ARCHS)} (the ONNX and .pte exports take it)")

    def refuse(what: str):
        raise ConfigError(f"GGUF export: llama.cpp's {ga.name} graph {what}; the ONNX and .pte exports take "
                          "this model")

    if spec.is_moe:
        if ga.moe_weights_normalized is not None and ga.moe_weights_normalized != spec.norm_topk_prob:
            refuse(f"{'always' if ga.moe_weights_normalized else 'never'} renormalises the top-k expert weights, "
                   f"and this model has norm_topk_prob={spec.norm_topk_prob}")
        if ga.name != "llama" and len(spec.moe_layers) != spec.n_layers:
            refuse(f"needs experts in every layer; this model has them in {len(spec.moe_layers)} of {spec.n_layers}")
    if spec.shared_expert_ffn_dim and ga.name != "qwen2moe":
        refuse("has no shared expert")
    if spec.qkv_bias and ga.name not in ("qwen2", "qwen2moe"):
        refuse("has no q/k/v bias")
    if spec.qk_norm != (ga.name in ("qwen3", "qwen3moe", "gemma3")):
        refuse(f"{'has no' if spec.qk_norm else 'needs the'} per-head q/k RMSNorm")
    gemma = ga.name == "gemma3"
    if gemma:
        if not spec.post_norms or spec.norm_offset != 1.0 or spec.mlp_act != "gelu_tanh":
            refuse("is Gemma 3's: four (1 + w) norms per layer and GeGLU")
        if abs(spec.embed_scale - spec.dim**0.5) > 1e-2 * spec.dim**0.5:
            refuse(f"scales embeddings by sqrt(dim) = {spec.dim**0.5:.4f}, not {spec.embed_scale}")
        # its softmax scale is fixed in its code: 1/sqrt(head_dim), 1/sqrt(dim/heads) for the 62-layer 27B
        fixed = (spec.dim // spec.n_heads if spec.n_layers == 62 else spec.head_dim) ** -0.5
        if spec.attn_scale and abs(spec.attn_scale - fixed) > 1e-6 * fixed:
            refuse(f"scales q.k by {fixed:.6g} (query_pre_attn_scalar = {1 / fixed**2:g}), not {spec.attn_scale:.6g}")
    else:
        if spec.post_norms or spec.norm_offset or spec.embed_scale != 1.0 or spec.final_logit_softcap:
            refuse("has no post-norms, (1 + w) norms, embedding scale or logit soft-capping")
        if spec.mlp_act != "silu":
            refuse(f"gates its MLP with SiLU, not {spec.mlp_act}")
        if spec.attn_scale and abs(spec.attn_scale - spec.head_dim**-0.5) > 1e-6:
            refuse(f"scales q.k by 1/sqrt(head_dim), not {spec.attn_scale:.6g}")
        if spec.rope_local_theta:
            refuse("has one RoPE base for every layer")
        if spec.sliding_window and spec.sliding_window < spec.max_seq_len:
            refuse(f"attends to the whole context; this model's sliding window is {spec.sliding_window} positions "
                   f"of {spec.max_seq_len}")
    if spec.rope_dim and spec.rope_dim != spec.head_dim and ga.name != "phi3":
        refuse(f"ropes the whole head ({spec.head_dim}), not {spec.rope_dim} dimensions")
    want_nope = tuple(i for i in range(spec.n_layers) if ga.nope_interval and (i + 1) % ga.nope_interval == 0)
    if tuple(spec.nope_layers) != want_nope:
        refuse(f"skips RoPE on layers {list(want_nope) or 'none'}; this model on {list(spec.nope_layers) or 'none'}")
    rs = spec.rope_scaling
    # llama.cpp takes Llama-3's band-wise scaling as per-frequency divisors (rope_freqs, llama arch) and
    # LongRoPE as two such tables picked by context size (rope_factors_short/long, phi3)
    if rs is not None and rs.rope_type not in {"llama": ("linear", "llama3"), "phi3": ("linear", "longrope")}.get(
            ga.name, ("linear",)):
        refuse(f"has no {rs.rope_type} RoPE scaling")
    return ga


def rope_tensors(spec) -> dict[str, np.ndarray]:
    """The frequency-factor tensors llama.cpp divides RoPE's frequencies by, (rope_dim/2,) float32 each."""
    rs = spec.rope_scaling
    if rs is None or rs.rope_type == "linear":
        return {}
    if rs.rope_type == "longrope":
        return {"rope_factors_long.weight": np.asarray(rs.long_factor, dtype=np.float32),
                "rope_factors_short.weight": np.asarray(rs.short_factor, dtype=np.float32)}
    from edge.model.llama import rope_frequencies

    plain = rope_frequencies(spec.with_(rope_scaling=None)).double().cpu().numpy()
    scaled = rope_frequencies(spec).double().cpu().numpy()
    return {"rope_freqs.weight": (plain / scaled).astype(np.float32)}


def _row_perm(rows: int, n_head: int) -> np.ndarray:
    """Row order llama.cpp's converter gives q/k: rotate-half -> interleaved, per head."""
    idx = np.arange(rows)
    return idx.reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


def qk_heads(name: str, spec) -> int | None:
    """Heads of a q/k projection (weight or bias) whose rows llama.cpp wants interleaved, else None."""
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return spec.n_heads
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return spec.n_kv_heads
    return None


def gguf_name(ours: str, spec=None) -> tuple[str, int | None]:
    """(GGUF tensor name, expert index or None) for one of our parameter names."""
    ga = gguf_arch(spec) if spec is not None else GGUF_ARCHS["llama"]
    if ours in _GLOBAL_OUT:
        return _GLOBAL_OUT[ours], None
    layer_out = {v: k for k, v in ga.tensors().items()}
    parts = ours.split(".")
    if parts[0] == "layers":
        i, rest = parts[1], ".".join(parts[2:])
        if rest in layer_out:
            return f"blk.{i}.{layer_out[rest]}", None
        if rest.startswith("mlp.experts."):
            e, leaf = rest.split(".")[2], ".".join(rest.split(".")[3:])
            if leaf in _EXPERT_OUT:
                return f"blk.{i}.{_EXPERT_OUT[leaf]}", int(e)
    raise ConfigError(f"parameter '{ours}' has no GGUF name in llama.cpp's {ga.name} layout")


@contextmanager
def atomic_gguf(path: str | Path, arch: str) -> Iterator:
    """A gguf.GGUFWriter on ``<path>.tmp``, renamed to ``path`` when the block ends without error and
    deleted when it raises: a reader never sees a half-written GGUF."""
    import gguf

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch=arch)
    try:
        yield w
        w.close()
        tmp.replace(path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise


# GGUF value type id -> struct format (gguf-py GGUFValueType); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _source_fields(path: Path):
    """The tokenizer and general key/values of a GGUF header to copy, with their types; strings kept
    as raw bytes so the copy is exact. Architecture keys (under the source's architecture name) and
    what the writer sets itself are left out. A direct parse: gguf-py's reader takes ~10 s on a
    49k-token vocabulary."""
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
        arch = None
        for _ in range(read("<Q")):
            key = read_str().decode("utf-8")
            t = read("<I")
            v = value(t)
            sub = None
            if t == 9:
                v, sub = v
            if key == "general.architecture":
                arch = v.decode("utf-8")
            if key.startswith(("GGUF.", "edge.", "general.architecture", "general.file_type",
                               "general.quantization_version")) or (arch and key.startswith(arch + ".")):
                continue
            out.append((key, v, gguf.GGUFValueType(t), gguf.GGUFValueType(sub) if sub is not None else None))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
        raise ModelLoadError(f"{path}: has no tokenizer metadata (tokenizer.ggml.tokens) to copy")
    return out


def _kv_type(key: str, val):
    """GGUF value type (and array item type) of a tokenizer/general key: llama.cpp checks them strictly."""
    from gguf import GGUFValueType as V

    known = {"tokenizer.ggml.tokens": (V.ARRAY, V.STRING), "tokenizer.ggml.merges": (V.ARRAY, V.STRING),
             "tokenizer.ggml.token_type": (V.ARRAY, V.INT32), "tokenizer.ggml.scores": (V.ARRAY, V.FLOAT32)}
    if key in known:
        return known[key]
    if isinstance(val, list):
        item = val[0] if val else ""
        return V.ARRAY, _kv_type("", item)[0]
    if isinstance(val, bool):
        return V.BOOL, None
    if isinstance(val, int):
        return (V.UINT32 if val >= 0 else V.INT32), None
    if isinstance(val, float):
        return V.FLOAT32, None
    return V.STRING, None


def gguf_preflight(spec, source) -> None:
    """Raise, in one line, what would stop ``export_gguf`` for this model: an architecture feature llama.cpp
    computes differently, or a tokenizer.json it cannot take. Cheap: no weights are touched."""
    arch_keys(spec)
    src = tokenizer_source(source)
    if "tokenizer_dir" in src:
        gguf_vocab_from_hf(src["tokenizer_dir"])


def tokenizer_source(source) -> dict:
    """Where a loaded model's GGUF tokenizer comes from, as export_gguf's keyword: its source GGUF
    (built-in or a file: copied) or its checkpoint directory (tokenizer.json: converted)."""
    if source.kind in ("builtin", "gguf"):
        return {"tokenizer_gguf": source.path}
    return {"tokenizer_dir": source.path}


def tokenizer_fields(n_vocab: int, *, tokenizer_gguf: str | Path | None = None,
                     tokenizer_dir: str | Path | None = None) -> tuple[list, dict, int]:
    """The tokenizer (and general.*) key/values to write for a model of ``n_vocab`` embedding rows.

    From a source GGUF (copied exactly) or a checkpoint directory's tokenizer.json (converted).
    A tokenizer smaller than the embedding is padded with unused filler tokens, as llama.cpp needs one
    token per row. Returns ([(key, value, type, item type)], {key: python value}, tokens padded).
    """
    if (tokenizer_gguf is None) == (tokenizer_dir is None):
        raise ConfigError("GGUF export needs one tokenizer source: tokenizer_gguf (a GGUF to copy it from) "
                          "or tokenizer_dir (a checkpoint directory with tokenizer.json)")
    if tokenizer_gguf is not None:
        fields = _source_fields(Path(tokenizer_gguf))
        src = str(tokenizer_gguf)
    else:
        vocab = gguf_vocab_from_hf(tokenizer_dir)
        fields = [(k, v, *_kv_type(k, v)) for k, v in vocab.fields().items()]
        src = str(Path(tokenizer_dir) / "tokenizer.json")
    n_tok = len(next(v for k, v, *_ in fields if k == "tokenizer.ggml.tokens"))
    if n_tok > n_vocab:
        raise ConfigError(f"{src}: the tokenizer has {n_tok} tokens, more than the model's {n_vocab} embedding "
                          "rows; give the tokenizer the model was trained with")
    pad = n_vocab - n_tok
    filler = {"tokenizer.ggml.tokens": [f"<|edge_unused_{i}|>" for i in range(pad)],
              "tokenizer.ggml.token_type": [5] * pad,  # UNUSED
              "tokenizer.ggml.scores": [-1e9] * pad}
    out, meta = [], {}
    for key, val, vtype, sub in fields:
        if pad and key in filler:
            add = filler[key]
            if val and isinstance(val[0], bytes):
                add = [t.encode("utf-8") for t in add]
            val = list(val) + add
        out.append((key, val, vtype, sub))
        meta[key] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in val] \
            if isinstance(val, list) else (val.decode("utf-8", "replace") if isinstance(val, bytes) else val)
    return out, meta, pad


def export_gguf(model, quantized, path: str | Path, *, tokenizer_gguf: str | Path | None = None,
                tokenizer_dir: str | Path | None = None, provenance: dict | None = None,
                float_type: str = "f32") -> Path:
    """Write ``model`` (with ``quantized``'s codes where it has them) to ``path`` as GGUF.

    The tokenizer comes from ``tokenizer_gguf`` (a GGUF, copied) or ``tokenizer_dir`` (a Hugging Face
    checkpoint directory: tokenizer.json, tokenizer_config.json, chat template; converted).
    """
    import gguf

    if float_type not in ("f32", "f16"):
        raise ConfigError(f"float_type '{float_type}' is not one of f32, f16")
    spec = model.spec
    ga = gguf_arch(spec)
    meta = arch_keys(spec)  # refuses what llama.cpp cannot compute before anything is written
    fields, _, padded = tokenizer_fields(spec.vocab_size, tokenizer_gguf=tokenizer_gguf, tokenizer_dir=tokenizer_dir)
    path = Path(path)
    tensors = dict(quantized.tensors) if quantized is not None else {}
    float_fmt = dict(quantized.info.get("float_tensors", {})) if quantized is not None else {}

    with atomic_gguf(path, ga.name) as w:
        if tokenizer_gguf is None and spec.name:
            w.add_key_value("general.name", spec.name, gguf.GGUFValueType.STRING)
        for key, val, vtype, sub in fields:
            w.add_key_value(key, val, vtype, sub_type=sub)
        put_keys(w, meta)

        written: dict[str, str] = {}
        stacked: dict[str, list] = {}
        fused: dict[str, dict] = {}
        params = list(model.named_parameters())
        if spec.tie_embeddings:
            params = [(n, p) for n, p in params if n != "lm_head.weight"]
            if ga.needs_output:  # llama.cpp wants the head as its own tensor: the embedding, again
                params.append(("lm_head.weight", model.embed_tokens.weight))
                tensors.setdefault("lm_head.weight", tensors.get("embed_tokens.weight"))
                if tensors["lm_head.weight"] is None:
                    del tensors["lm_head.weight"]
        for name, p in params:
            gname, expert = gguf_name(name, spec)
            heads = qk_heads(name, spec) if ga.interleaved_rope else None
            qt = tensors.get(name)
            if qt is not None:
                if heads:
                    qt = qt.permute_rows(_row_perm(qt.shape[0], heads))
                data, raw = qt.gguf_bytes() if qt.fmt.ggml_type else None, qt.fmt.ggml_type
                if data is None or raw in ("F32", "F16"):
                    raise ConfigError(f"tensor '{name}' is {qt.fmt.name}, which has no GGUF block layout; "
                                      "GGUF formats: q8_0, q5_0, q4_0 (use the .pte/.onnx exporters for int4/int8)")
                item = (data, gguf.GGMLQuantizationType[raw])
            else:
                arr = p.detach().float().cpu().numpy()
                if heads:
                    arr = arr[_row_perm(arr.shape[0], heads)]
                if gname.endswith(VECTOR_TENSORS):
                    arr = arr.reshape(-1)
                if spec.norm_offset and name.endswith("norm.weight"):  # llama.cpp multiplies by the stored weight
                    arr = arr + np.float32(spec.norm_offset)
                ftype = float_fmt.get(name, float_type if arr.ndim > 1 else "f32")  # norms stay f32
                arr = np.ascontiguousarray(arr, dtype=np.float16 if ftype == "f16" else np.float32)
                item = (arr, None)
            if expert is not None:
                stacked.setdefault(gname, []).append((expert, item))
            elif ga.fused_gate_up and gname.endswith(("ffn_gate.weight", "ffn_up.weight")):
                fused.setdefault(gname.rsplit(".", 2)[0], {})[gname.split(".")[-2]] = item
            else:
                _add(w, gname, item)
                written[gname] = item[1].name if item[1] is not None else ("F16" if item[0].dtype == np.float16
                                                                            else "F32")
        for gname, arr in rope_tensors(spec).items():
            _add(w, gname, (arr, None))
        for blk, parts in fused.items():  # ffn_up = [gate; up] rows: blocks run along rows, so this is exact
            (g, gt), (u, ut) = parts["ffn_gate"], parts["ffn_up"]
            if gt != ut or g.dtype != u.dtype:
                raise ConfigError(f"{blk}: gate_proj and up_proj have different formats ({gt}, {ut}); "
                                  f"llama.cpp's {ga.name} fuses them into one tensor: give them one format")
            _add(w, f"{blk}.ffn_up.weight", (np.concatenate([g, u]), gt))
            written[f"{blk}.ffn_up.weight"] = gt.name if gt is not None else ("F16" if g.dtype == np.float16 else "F32")
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
        if spec.tie_embeddings and ga.needs_output:
            w.add_key_value("edge.tied_output", True, gguf.GGUFValueType.BOOL)
        if quantized is not None:
            w.add_key_value("edge.recipe", quantized.recipe.to_json(), gguf.GGUFValueType.STRING)
        if provenance or padded:
            prov = dict(provenance or {}) | ({"padded_tokens": padded} if padded else {})
            w.add_key_value("edge.provenance", json.dumps(prov, sort_keys=True, default=str),
                            gguf.GGUFValueType.STRING)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    return path


def _add(w, gname: str, item) -> None:
    data, raw = item
    if raw is None:
        w.add_tensor(gname, data)
    else:
        w.add_tensor(gname, data, raw_dtype=raw)


def arch_keys(spec) -> dict:
    """The ``{arch}.*`` hyperparameter keys llama.cpp reads for ``spec``'s architecture, with their
    GGUF types (shared with edge.stream's streaming writer)."""
    from gguf import GGUFValueType as V

    ga = gguf_arch(spec)
    a = ga.name
    keys = {
        f"{a}.context_length": (spec.max_seq_len, V.UINT32),
        f"{a}.embedding_length": (spec.dim, V.UINT32),
        f"{a}.block_count": (spec.n_layers, V.UINT32),
        f"{a}.feed_forward_length": (spec.ffn_dim, V.UINT32),
        f"{a}.attention.head_count": (spec.n_heads, V.UINT32),
        f"{a}.attention.head_count_kv": (spec.n_kv_heads, V.UINT32),
        f"{a}.rope.freq_base": (float(spec.rope_theta), V.FLOAT32),
        f"{a}.attention.layer_norm_rms_epsilon": (float(spec.norm_eps), V.FLOAT32),
        f"{a}.vocab_size": (spec.vocab_size, V.UINT32),
        f"{a}.rope.dimension_count": (spec.rope_dim or spec.head_dim, V.UINT32),
    }
    if spec.head_dim != spec.dim // spec.n_heads:
        keys[f"{a}.attention.key_length"] = (spec.head_dim, V.UINT32)
        keys[f"{a}.attention.value_length"] = (spec.head_dim, V.UINT32)
    if spec.n_experts:
        keys[f"{a}.expert_count"] = (spec.n_experts, V.UINT32)
        keys[f"{a}.expert_used_count"] = (spec.n_experts_per_tok, V.UINT32)
        if a != "llama":
            keys[f"{a}.expert_feed_forward_length"] = (spec.moe_ffn_dim, V.UINT32)
        if spec.shared_expert_ffn_dim:
            keys[f"{a}.expert_shared_feed_forward_length"] = (spec.shared_expert_ffn_dim, V.UINT32)
    rs = spec.rope_scaling
    if rs is not None and rs.rope_type == "linear":  # every frequency divided by the factor
        keys[f"{a}.rope.scaling.type"] = ("linear", V.STRING)
        keys[f"{a}.rope.scaling.factor"] = (float(rs.factor), V.FLOAT32)
    elif rs is not None and rs.rope_type == "longrope":  # long factors past this many positions
        keys[f"{a}.rope.scaling.original_context_length"] = (rs.original_max_position_embeddings, V.UINT32)
        keys[f"{a}.rope.scaling.attn_factor"] = (float(rs.attention_factor), V.FLOAT32)
    if a == "gemma3":
        if spec.final_logit_softcap:
            keys[f"{a}.final_logit_softcapping"] = (float(spec.final_logit_softcap), V.FLOAT32)
        if spec.sliding_window:
            sliding = set(spec.sliding_layers or range(spec.n_layers))
            keys[f"{a}.attention.sliding_window"] = (spec.sliding_window, V.UINT32)
            # which layers slide, one bool per layer (llama.cpp's default is five of every six)
            keys[f"{a}.attention.sliding_window_pattern"] = ([i in sliding for i in range(spec.n_layers)], V.ARRAY)
            # the sliding layers' RoPE base; they take no frequency scaling in llama.cpp
            keys[f"{a}.rope.freq_base_swa"] = (float(spec.rope_local_theta or spec.rope_theta), V.FLOAT32)
            if spec.rope_scaling is not None and not spec.rope_local_theta:
                raise ConfigError("GGUF export: llama.cpp's gemma3 graph does not scale the sliding layers' RoPE; "
                                  "this model scales every layer's")
    return keys


def put_keys(w, keys: dict) -> None:
    """Add ``arch_keys``' key/values to a GGUFWriter (arrays' item types from their values)."""
    from gguf import GGUFValueType as V

    for key, (val, vtype) in keys.items():
        sub = (V.BOOL if isinstance(val[0], bool) else _kv_type("", val[0])[0]) if vtype == V.ARRAY else None
        w.add_key_value(key, val, vtype, sub_type=sub)
