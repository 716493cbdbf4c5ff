"""Models larger than memory: a Hugging Face checkpoint -> calibrated Q4_0 GGUF, one layer at a time.

Nothing holds the whole model. The safetensors shards are read tensor by tensor with plain
positioned reads (no mmap: touched mmap pages would count in the process's RSS until the shard is
closed), the calibration batch's hidden states (B, T, dim) are the only thing carried from one
layer to the next, and the GGUF is written tensor by tensor: every tensor's shape and type is
known from the config, so the header and tensor table go out first and each layer's blocks follow
as soon as they are quantized. Peak memory is about one layer in fp32 plus its quantization
temporaries (~1.5 GB for a Llama-3-8B layer) plus the embedding table's blocks.

Architectures: the dense ones whose checkpoint names are ours (``STREAM_ARCHS``: Llama, Mistral, Qwen2,
Qwen3, SmolLM3, Gemma 3), under llama.cpp's name for each, with the tensor names, q/k row order, norm
offsets, RoPE tables and keys of ``edge.export.gguf`` (the one GGUF vocabulary of the writers); the
tokenizer is converted from the checkpoint's tokenizer.json unless a GGUF is given to copy it from.

Calibration (``StreamConfig.method="awq"``, the llama layer only): AWQ's per-input-channel scales (Lin et al., 2023),
searched per group of linears that share an input (q/k/v, gate/up, down; o_proj too when the
attention has as many KV heads as query heads) on a small batch (default 4 x 64 tokens). The loss
of each candidate ``s = mean|x|^alpha`` is the output error ``||X (Q(W s)/s - W)^T||^2`` measured on
a fixed sample of 512 output rows: Q4_0 blocks run along rows, so a row sample quantizes exactly
as in the full tensor. For a Llama-3-8B layer the 11 candidates fake-quantize ~0.9x the layer's
weights and cost ~100 GFLOP of matmuls, plus the layer's forward on the batch (~110 GFLOP): the
calibrated run costs roughly 2-3x round-to-nearest, not the 10-100x of a full-batch search. The scales are folded
into the producer (the RMSNorm weights, up_proj's rows for down_proj), so the GGUF needs no extra
tensor and llama.cpp runs it unchanged. The search uses the fp activations (each layer's inputs
come from the unquantized layers before it). No weight clipping search.

    from edge.stream import StreamConfig, stream_to_gguf
    rep = stream_to_gguf("ckpt/Llama-3-8B", "out/model.gguf", StreamConfig())
    rep = stream_to_gguf("ckpt/Qwen3-8B", "out/model.gguf", StreamConfig(method="rtn"))

Formats whose toolchain holds the whole graph in memory (.pte, ONNX) cannot stream; for those,
``check_export_memory`` estimates the peak up front and refuses with the figure and the
alternative rather than letting the build be OOM-killed.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.calib import CalibConfig, dataset_hash, token_batches
from edge.errors import ConfigError, EdgeError, ModelLoadError
from edge.export.gguf import (
    FILE_TYPES,
    _row_perm,
    arch_keys,
    atomic_gguf,
    gguf_arch,
    gguf_name,
    put_keys,
    qk_heads,
    rope_tensors,
    tokenizer_fields,
)
from edge.model.spec import ModelSpec
from edge.model.tokenizer import Tokenizer

# ---- lazy safetensors --------------------------------------------------------------------------------

_ST_DTYPES = {"BF16": (np.uint16, 2), "F16": (np.float16, 2), "F32": (np.float32, 4)}


@dataclass(frozen=True)
class _TensorLoc:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the data in the file
    end: int


class LazyCheckpoint:
    """Tensors of a safetensors checkpoint (one file or shards), read one at a time on demand.

    ``read(name)`` returns float32; ``read(name, rows=idx)`` reads only those rows (the embedding
    rows of the calibration tokens; the table in chunks).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        files = sorted(self.path.glob("*.safetensors")) if self.path.is_dir() else [self.path]
        if not files:
            raise ModelLoadError(f"{self.path}: no *.safetensors files")
        self.tensors: dict[str, _TensorLoc] = {}
        for f in files:
            self.tensors.update(_read_header(f))

    def shape(self, name: str) -> tuple[int, ...]:
        return self._loc(name).shape

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def _loc(self, name: str) -> _TensorLoc:
        if name not in self.tensors:
            raise ModelLoadError(f"{self.path}: no tensor {name!r} in the checkpoint")
        return self.tensors[name]

    def read(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        loc = self._loc(name)
        np_dtype, size = _ST_DTYPES[loc.dtype]
        row_elems = int(np.prod(loc.shape[1:])) if len(loc.shape) > 1 else 1
        with open(loc.file, "rb", buffering=0) as f:
            if rows is None or isinstance(rows, slice):
                r0, r1, _ = (rows or slice(0, loc.shape[0])).indices(loc.shape[0])
                raw = np.empty((r1 - r0) * row_elems, dtype=np_dtype)
                _read_into(f, loc.begin + r0 * row_elems * size, raw)
                out_rows = r1 - r0
            else:
                idx = np.asarray(rows, dtype=np.int64)
                raw = np.empty(len(idx) * row_elems, dtype=np_dtype)
                for j, r in enumerate(idx):
                    _read_into(f, loc.begin + int(r) * row_elems * size, raw[j * row_elems:(j + 1) * row_elems])
                out_rows = len(idx)
            _drop_page_cache(f, loc.begin, loc.end)
        shape = (out_rows, *loc.shape[1:]) if len(loc.shape) > 1 else (out_rows,)
        if loc.dtype == "BF16":  # bf16 is the top half of an fp32
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return raw.astype(np.float32, copy=False).reshape(shape)


def _read_header(f: Path) -> dict[str, _TensorLoc]:
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise ModelLoadError(f"{f}: truncated safetensors file (no header)")
        n = int.from_bytes(head, "little")
        try:
            meta = json.loads(fh.read(n))
        except ValueError as e:
            raise ModelLoadError(f"{f}: corrupt safetensors header ({e})") from e
    size = f.stat().st_size
    out = {}
    for name, t in meta.items():
        if name == "__metadata__":
            continue
        if t["dtype"] not in _ST_DTYPES:
            raise ModelLoadError(f"{f}: tensor {name!r} is {t['dtype']}; streaming reads {', '.join(_ST_DTYPES)}")
        b, e = (8 + n + o for o in t["data_offsets"])
        if e > size:
            raise ModelLoadError(f"{f}: truncated safetensors file (tensor {name!r} ends past the file)")
        out[name] = _TensorLoc(f, t["dtype"], tuple(t["shape"]), b, e)
    return out


def _read_into(f, offset: int, arr: np.ndarray) -> None:
    view = memoryview(arr).cast("B")
    f.seek(offset)
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ModelLoadError(f"{f.name}: truncated safetensors file (short read at byte {offset + got})")
        got += n


def _drop_page_cache(f, begin: int, end: int) -> None:
    """A 16 GB checkpoint read once should not push everyone else's files out of the page cache."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), begin, end - begin, os.POSIX_FADV_DONTNEED)


def llama_config(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int, vocab: int,
                 rope_theta: float = 500000.0, tie: bool = False, max_seq: int = 8192) -> dict:
    """A Hugging Face LlamaConfig dict (Llama-3-8B: 4096, 32, 32, 8, 14336, 128256)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
            "num_hidden_layers": n_layers, "num_attention_heads": n_heads, "num_key_value_heads": n_kv_heads,
            "intermediate_size": ffn_dim, "vocab_size": vocab, "rope_theta": rope_theta, "rms_norm_eps": 1e-5,
            "max_position_embeddings": max_seq, "tie_word_embeddings": tie, "hidden_act": "silu",
            "torch_dtype": "bfloat16"}


def write_random_checkpoint(path: str | Path, config: dict, seed: int = 0, std: float = 0.02,
                            shard_bytes: float = 5e9) -> int:
    """A random-weight bf16 checkpoint (config.json, sharded *.safetensors, index), written streaming.

    Weights are slices of a 32M-value N(0, std) pool at random offsets (drawing 8B fresh normals
    would take minutes of CPU for nothing a benchmark needs); norms are 1. At most one 16M-value
    chunk is in memory. Returns the bytes of weights written.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    spec = ModelSpec.from_config_file(path / "config.json")
    shapes = {"model.embed_tokens.weight": (spec.vocab_size, spec.dim)}
    for i in range(spec.n_layers):
        shapes |= {_HF.format(i=i, leaf=leaf): shp for leaf, shp in _hf_layer_shapes(spec).items()}
    shapes["model.norm.weight"] = (spec.dim,)
    if not spec.tie_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, spec.dim)
    rng = np.random.default_rng(seed)
    biggest = max(int(np.prod(s)) for s in shapes.values())
    chunk = min(1 << 24, biggest)
    pool_n = min(1 << 25, 2 * biggest)
    pool = rng.standard_normal(pool_n + chunk, dtype=np.float32) * np.float32(std)
    pool = _to_bf16(pool)
    shards, cur, size = [], {}, 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * 2
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name], size = shape, size + n
    shards.append(cur)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, shape in shard.items():
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
            weight_map[name] = fname
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        with open(path / fname, "wb") as f:
            f.write(len(hb).to_bytes(8, "little") + hb)
            for shape in shard.values():
                n = int(np.prod(shape))
                if len(shape) == 1:
                    _to_bf16(np.ones(n, dtype=np.float32)).tofile(f)
                    continue
                for done in range(0, n, chunk):
                    m = min(chunk, n - done)
                    o = int(rng.integers(0, pool_n))
                    pool[o:o + m].tofile(f)
        total += off
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=1) + "\n")
    return total


def _to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), round to nearest even."""
    u = a.view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _hf_layer_shapes(spec) -> dict[str, tuple[int, ...]]:
    return {"self_attn.q_proj.weight": (spec.q_dim, spec.dim), "self_attn.k_proj.weight": (spec.kv_dim, spec.dim),
            "self_attn.v_proj.weight": (spec.kv_dim, spec.dim), "self_attn.o_proj.weight": (spec.dim, spec.q_dim),
            "mlp.gate_proj.weight": (spec.ffn_dim, spec.dim), "mlp.up_proj.weight": (spec.ffn_dim, spec.dim),
            "mlp.down_proj.weight": (spec.dim, spec.ffn_dim), "input_layernorm.weight": (spec.dim,),
            "post_attention_layernorm.weight": (spec.dim,)}


# ---- configuration -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamConfig:
    """How to quantize while streaming."""

    weights: str = "q4_0"  # linear weights and the embedding table
    head: str = "q8_0"  # the output projection (llama.cpp's Q4_0 files keep it at higher precision too)
    method: str = "awq"  # "awq" (calibrated) | "rtn" (round to nearest, no calibration)
    calib: str = "general:1"
    calib_samples: int = 4
    calib_seq: int = 64
    awq_grid: int = 10  # alpha in {0, 1/grid, ..., 1}
    awq_rows: int = 512  # output rows the search loss is measured on
    chunk_rows: int = 2048  # rows quantized at a time (bounds the temporaries)

    def __post_init__(self) -> None:
        for k in ("weights", "head"):
            if getattr(self, k) not in STREAM_FORMATS:
                raise ConfigError(f"stream {k} format '{getattr(self, k)}' unknown; allowed: "
                                  f"{', '.join(STREAM_FORMATS)}")
        if self.method not in ("awq", "rtn"):
            raise ConfigError(f"stream method '{self.method}' unknown; allowed: awq, rtn")
        for k in ("calib_samples", "calib_seq", "awq_grid", "awq_rows", "chunk_rows"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"stream {k} must be positive, got {getattr(self, k)}")


STREAM_FORMATS = ("q4_0", "q5_0", "q8_0")  # GGUF block formats of edge.quant.primitives


# ---- quantization helpers --------------------------------------------------------------------------------

def quantize_blocks(w: np.ndarray, fmt_name: str, chunk_rows: int = 2048) -> np.ndarray:
    """(rows, cols) float32 -> GGUF blocks (rows, cols/32*block_bytes) uint8, a chunk of rows at a time.

    Bit-exact with ``gguf.quants.quantize`` (edge.quant.primitives.rtn reproduces ggml's reference).
    """
    from edge.quant.primitives import check_shape, get_format, rtn

    fmt = get_format(fmt_name)
    rows, cols = w.shape
    check_shape("weight", w.shape, fmt)
    out = np.empty((rows, cols // fmt.group * fmt.block_bytes), dtype=np.uint8)
    for r0 in range(0, rows, chunk_rows):
        out[r0:r0 + chunk_rows] = rtn(w[r0:r0 + chunk_rows], fmt).gguf_bytes()
    return out


def _fake_quant(w: np.ndarray, fmt_name: str) -> np.ndarray:
    from edge.quant.primitives import get_format, rtn

    return rtn(w, get_format(fmt_name)).dequantize()


def awq_search(ws: list[np.ndarray], x, fmt_name: str, grid: int, n_rows: int):
    """Best input-channel scales (cols,) for linears ``ws`` sharing the input ``x`` (N, cols).

    Returns (s, alpha, relative loss reduction vs alpha=0, i.e. plain RTN).
    """
    x = np.asarray(x, dtype=np.float32)
    mean_abs = np.maximum(np.abs(x).mean(0), 1e-6).astype(np.float64)
    samples = [w[np.linspace(0, w.shape[0] - 1, min(n_rows, w.shape[0])).astype(np.int64)] for w in ws]
    best, base = (np.ones_like(mean_abs, dtype=np.float32), 0.0, float("inf")), None
    for k in range(grid + 1):
        alpha = k / grid
        s = mean_abs**alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        loss = 0.0
        for w in samples:
            dw = _fake_quant(w * s[None, :], fmt_name) / s[None, :] - w  # (rows sampled, cols)
            loss += float(np.square(x @ dw.T).sum())  # (N, rows sampled)
        if base is None:
            base = loss
        if loss < best[2]:
            best = (s, alpha, loss)
    s, alpha, loss = best
    return s, alpha, (1 - loss / base) if base else 0.0


# ---- the streaming quantizer -------------------------------------------------------------------------------

_HF = "model.layers.{i}.{leaf}"
# the llama layer's tensors in the order this writer has always put them in the file; other leaves
# of an architecture (biases, q/k norms, Gemma's extra norms) follow in the decoder's order
_LLAMA_ORDER = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                "input_layernorm.weight", "post_attention_layernorm.weight")
# architectures whose checkpoint names are our parameter names, dense: what this writer streams
STREAM_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "smollm3", "gemma3")
# ... and those its AWQ search calibrates (the llama layer: scales fold into the two pre-norms)
AWQ_ARCHS = ("llama", "mistral")


def _layer_leaves(spec, i: int) -> list[tuple[str, tuple[int, ...]]]:
    """(our leaf name, shape) of layer i's tensors, in file order (no data: a meta-device layer)."""
    import torch

    from edge.model.llama import DecoderLayer

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DecoderLayer(spec, i).state_dict().items()}
    order = [k for k in _LLAMA_ORDER if k in shapes] + [k for k in shapes if k not in _LLAMA_ORDER]
    return [(k, shapes[k]) for k in order]


def _plan(spec, cfg: StreamConfig) -> list[tuple[str, tuple[int, int] | tuple[int], str, str | None]]:
    """(GGUF name, shape (rows, cols), format, our name or None) of every tensor, in file order."""
    out = [("token_embd.weight", (spec.vocab_size, spec.dim), cfg.weights, None)]
    for i in range(spec.n_layers):
        for leaf, shape in _layer_leaves(spec, i):
            gname = gguf_name(f"layers.{i}.{leaf}", spec)[0]
            out.append((gname, shape, "f32" if len(shape) == 1 else cfg.weights, leaf))
    out.append(("output_norm.weight", (spec.dim,), "f32", None))
    if not spec.tie_embeddings:
        out.append(("output.weight", (spec.vocab_size, spec.dim), cfg.head, None))
    for name, arr in rope_tensors(spec).items():
        out.append((name, arr.shape, "f32", None))
    return out


def _nbytes(shape, fmt_name: str) -> int:
    if fmt_name == "f32":
        return int(np.prod(shape)) * 4
    from edge.quant.primitives import get_format

    f = get_format(fmt_name)
    return shape[0] * shape[1] // f.group * f.block_bytes


def _check_spec(spec, cfg: StreamConfig) -> None:
    if spec.arch not in STREAM_ARCHS or spec.is_moe:
        raise ConfigError(f"streaming GGUF export handles dense {', '.join(STREAM_ARCHS)} checkpoints; this is "
                          f"{spec.arch}{' (MoE)' if spec.is_moe else ''}; load it whole (edge build / edge quantize)")
    gguf_arch(spec)  # what llama.cpp cannot compute for the architecture, in one line
    if cfg.method == "awq" and (spec.arch not in AWQ_ARCHS or spec.qkv_bias):
        raise ConfigError(f"streaming AWQ calibrates the llama layer ({', '.join(AWQ_ARCHS)}); this is {spec.arch}: "
                          "use method rtn (edge stream --method rtn)")
    for name, cols in (("dim", spec.dim), ("ffn_dim", spec.ffn_dim), ("q_dim", spec.q_dim)):
        if cols % 32:
            raise ConfigError(f"{name} {cols} is not a multiple of the GGUF block size (32)")


def peak_rss_bytes() -> int:
    """This process's peak resident set size, from the kernel."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stream_to_gguf(checkpoint: str | Path, out: str | Path, cfg: StreamConfig = StreamConfig(), *,
                   tokenizer_gguf: str | Path | None = None, progress: Callable[[str], None] = print) -> dict:
    """Quantize a HF safetensors checkpoint layer by layer into a GGUF that llama.cpp runs.

    The tokenizer is converted from the checkpoint's tokenizer.json, or, with ``tokenizer_gguf``,
    copied from that GGUF (padded with unused tokens when the model's vocabulary is larger). The file
    appears only when complete. Returns a report.
    """
    t_start = time.time()
    ckpt_dir = Path(checkpoint)
    if not (ckpt_dir / "config.json").is_file():
        raise ModelLoadError(f"{ckpt_dir}: no config.json; pass a Hugging Face checkpoint directory")
    spec = ModelSpec.from_config_file(ckpt_dir / "config.json")
    _check_spec(spec, cfg)
    ck = LazyCheckpoint(ckpt_dir)
    plan = _plan(spec, cfg)
    out = Path(out)

    fields, meta, padded = tokenizer_fields(spec.vocab_size, tokenizer_gguf=tokenizer_gguf,
                                            tokenizer_dir=None if tokenizer_gguf is not None else ckpt_dir)
    calib_cfg = CalibConfig.from_spec(cfg.calib, n_samples=cfg.calib_samples, seq_len=cfg.calib_seq, seed=0)
    tokens = None
    if cfg.method == "awq":
        tok = (Tokenizer.from_gguf_fields(meta, tokenizer_gguf) if tokenizer_gguf is not None
               else Tokenizer.from_hf_dir(ckpt_dir))
        tokens = np.clip(token_batches(tok, calib_cfg), 0, spec.vocab_size - 1)  # (B, T)

    report: dict = {"model": ckpt_dir.name, "spec": {"params": spec.param_count(), "n_layers": spec.n_layers,
                                                     "dim": spec.dim, "vocab": spec.vocab_size},
                    "config": asdict(cfg), "layers": []}
    with atomic_gguf(out, gguf_arch(spec).name) as w:
        prov = _write_stream(w, spec, cfg, ck, plan, fields, padded, tokens, calib_cfg, ckpt_dir, report, progress,
                             t_start)
    report.update({"path": str(out), "bytes": out.stat().st_size, "seconds": round(time.time() - t_start, 1),
                   "peak_rss_bytes": peak_rss_bytes(), "padded_tokens": padded,
                   "calib": prov["calib"]})
    return report


def _write_stream(w, spec, cfg, ck, plan, fields, padded, tokens, calib_cfg, ckpt_dir, report, progress, t_start):
    """Header, key/values, tensor table, then each tensor's data as soon as it is quantized."""
    import gguf
    import torch

    from edge.model.llama import DecoderLayer, rope_frequencies

    for key, val, vtype, sub in fields:
        w.add_key_value(key, val, vtype, sub_type=sub)
    put_keys(w, arch_keys(spec))
    w.add_key_value("general.file_type", FILE_TYPES[cfg.weights.upper()], gguf.GGUFValueType.UINT32)
    w.add_key_value("general.quantization_version", 2, gguf.GGUFValueType.UINT32)
    prov = {"writer": "edge.stream", "config": asdict(cfg), "source": ckpt_dir.name,
            "calib": dataset_hash(calib_cfg) if tokens is not None else None, "padded_tokens": padded}
    w.add_key_value("edge.provenance", json.dumps(prov, sort_keys=True), gguf.GGUFValueType.STRING)
    types = {"f32": None, **{f: gguf.GGMLQuantizationType[f.upper()] for f in STREAM_FORMATS}}
    for name, shape, fmt, _ in plan:
        n = _nbytes(shape, fmt)
        if fmt == "f32":
            w.add_tensor_info(name, shape, np.dtype(np.float32), n)
        else:  # blocks: the byte shape (rows, bytes per row), as gguf-py takes packed data
            w.add_tensor_info(name, (shape[0], n // shape[0]), np.dtype(np.uint8), n, raw_dtype=types[fmt])

    order = iter(plan)

    def put(arr: np.ndarray) -> None:
        name, shape, fmt, _ = next(order)
        assert arr.nbytes == _nbytes(shape, fmt), name
        w.write_tensor_data(arr)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    # token embedding: quantized in row chunks straight from the file
    emb = "model.embed_tokens.weight"
    vocab = spec.vocab_size
    blocks = np.empty((vocab, _nbytes((1, spec.dim), cfg.weights)), dtype=np.uint8)
    step = 8 * cfg.chunk_rows
    for r0 in range(0, vocab, step):
        blocks[r0:r0 + step] = quantize_blocks(ck.read(emb, slice(r0, r0 + step)), cfg.weights, cfg.chunk_rows)
    put(blocks)
    del blocks
    progress(f"stream: token_embd {vocab}x{spec.dim} -> {cfg.weights} ({time.time() - t_start:.0f} s)")

    x = pos_cos = pos_sin = mask = None
    if tokens is not None:
        uniq, inv = np.unique(tokens, return_inverse=True)
        x = torch.from_numpy(ck.read(emb, uniq)[inv.reshape(tokens.shape)])  # (B, T, dim)
        T = tokens.shape[1]
        freqs = torch.arange(T).float()[:, None] * rope_frequencies(spec)[None, :]
        emb_f = torch.cat((freqs, freqs), dim=-1)
        pos_cos, pos_sin = emb_f.cos(), emb_f.sin()  # (T, head_dim)
        mask = torch.ones(T, T, dtype=torch.bool).tril()

    ga = gguf_arch(spec)
    for i in range(spec.n_layers):
        t0 = time.time()
        leaves = [leaf for leaf, _ in _layer_leaves(spec, i)]
        ws = {leaf: ck.read(_HF.format(i=i, leaf=leaf)) for leaf in leaves}
        info = {"layer": i}
        if x is not None:
            x, info["awq"] = _calibrate_layer(spec, i, ws, x, pos_cos, pos_sin, mask, cfg, DecoderLayer)
        for leaf in leaves:
            arr = ws.pop(leaf)
            heads = qk_heads(leaf, spec) if ga.interleaved_rope else None
            if heads:  # llama.cpp's interleaved RoPE order
                arr = arr[_row_perm(arr.shape[0], heads)]
            if spec.norm_offset and leaf.endswith("norm.weight"):  # llama.cpp multiplies by the stored weight
                arr = arr + np.float32(spec.norm_offset)
            put(arr if arr.ndim == 1 else quantize_blocks(arr, cfg.weights, cfg.chunk_rows))
            del arr
        info["seconds"] = round(time.time() - t0, 2)
        report["layers"].append(info)
        progress(f"stream: layer {i + 1}/{spec.n_layers} in {info['seconds']:.1f} s, "
                 f"peak RSS {peak_rss_bytes() / 2**30:.2f} GiB")

    put(ck.read("model.norm.weight") + np.float32(spec.norm_offset))
    if not spec.tie_embeddings:
        head = "lm_head.weight"
        blocks = np.empty((vocab, _nbytes((1, spec.dim), cfg.head)), dtype=np.uint8)
        for r0 in range(0, vocab, step):
            blocks[r0:r0 + step] = quantize_blocks(ck.read(head, slice(r0, r0 + step)), cfg.head,
                                                   cfg.chunk_rows)
        put(blocks)
        del blocks
    for arr in rope_tensors(spec).values():
        put(arr)
    return prov


def _calibrate_layer(spec, i: int, ws: dict, x, cos, sin, mask, cfg: StreamConfig, DecoderLayer):
    """Run layer i on the calibration hidden states; fold AWQ scales into ``ws`` in place.

    Returns (next hidden states (B, T, dim) from the unquantized layer, per-group search results).
    """
    import torch

    with torch.device("meta"):
        layer = DecoderLayer(spec, i)
    layer.load_state_dict({k: torch.from_numpy(v) for k, v in ws.items()}, strict=True, assign=True)
    seen: dict[str, torch.Tensor] = {}
    hooks = [layer.get_submodule(path).register_forward_pre_hook(
        lambda m, a, key=path: seen.__setitem__(key, a[0].reshape(-1, a[0].shape[-1]).detach()))
        for path in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")]  # inputs (N, cols)
    with torch.no_grad():
        y = layer(x, cos, sin, mask, None)
    for h in hooks:
        h.remove()
    del layer

    def search(key: str, leaves: list[str]) -> tuple[np.ndarray, dict]:
        s, alpha, gain = awq_search([ws[leaf] for leaf in leaves], seen[key], cfg.weights, cfg.awq_grid,
                                    cfg.awq_rows)
        for leaf in leaves:
            ws[leaf] *= s[None, :]  # (rows, cols) * (cols,)
        return s, {"alpha": alpha, "loss_reduction": round(gain, 4)}

    out = {}
    s, out["qkv"] = search("self_attn.q_proj", [f"self_attn.{p}_proj.weight" for p in "qkv"])
    ws["input_layernorm.weight"] /= s
    s, out["gate_up"] = search("mlp.gate_proj", ["mlp.gate_proj.weight", "mlp.up_proj.weight"])
    ws["post_attention_layernorm.weight"] /= s
    s, out["down"] = search("mlp.down_proj", ["mlp.down_proj.weight"])
    ws["mlp.up_proj.weight"] /= s[:, None]  # down's input is silu(gate) * up: scale up's rows
    if spec.n_heads == spec.n_kv_heads:  # o_proj's input channels are v's rows one to one
        s, out["o"] = search("self_attn.o_proj", ["self_attn.o_proj.weight"])
        ws["self_attn.v_proj.weight"] /= s[:, None]
    return y, out


# ---- whole-graph formats: estimate, refuse ------------------------------------------------------------------

# peak RSS of the exporter ~= base + k * fp32 weight bytes; k measured on the built-in model by
# benchmarks/export_peak_memory.py (results/bigmodel_export_peak.json), base = the imports.
WHOLE_GRAPH_PEAK = {
    ("onnx", "fp32"): {"k": 5.57, "base": 0.29e9, "source": "measured: smollm2-135m, peak 3136 MiB for 513 MiB"},
    ("pte", "8da4w"): {"k": 6.0, "base": 1.0e9,
                       "source": "estimate: the measurement was stopped after 57 min at 1.7 GB RSS (k >= 2.8)"},
}


class ExportMemoryError(EdgeError):
    """A whole-graph export that would not fit in this machine's memory."""


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def export_peak_bytes(spec, writer: str, option: str) -> int:
    """Estimated peak RSS of exporting ``spec`` with a whole-graph writer (pte, onnx)."""
    row = WHOLE_GRAPH_PEAK.get((writer, option)) or WHOLE_GRAPH_PEAK.get(
        (writer, "fp32" if writer == "onnx" else "8da4w"))
    if row is None:
        raise ConfigError(f"no peak-memory figure for writer '{writer}'; known: "
                          f"{', '.join(sorted({w for w, _ in WHOLE_GRAPH_PEAK}))}")
    return int(row["base"] + row["k"] * spec.param_count() * 4)


def check_export_memory(spec, writer: str, option: str, available: int | None = None) -> int:
    """Raise ExportMemoryError (one line: the figure, the machine's, the alternative) if it won't fit."""
    if writer not in ("pte", "onnx"):
        return 0  # GGUF streams
    need = export_peak_bytes(spec, writer, option)
    have = available_memory_bytes() if available is None else available
    if need > have:
        name = spec.name or "this model"
        raise ExportMemoryError(
            f"exporting {name} ({spec.param_count() / 1e9:.1f}B params) to .{writer} ({option}) needs about "
            f"{need / 2**30:.1f} GiB at peak (the whole graph in memory); this machine has "
            f"{have / 2**30:.1f} GiB available; write GGUF instead, layer by layer "
            f"(edge stream --model DIR --out model.gguf, peak ~{stream_peak_bytes(spec) / 2**30:.1f} GiB), "
            "or export on a bigger machine")
    return need


def stream_peak_bytes(spec) -> int:
    """Peak of stream_to_gguf: one layer in fp32, the output head's Q8_0 blocks, ~0.45 GB of imports
    and temporaries (fits the measured 1.74 GiB of Llama-3-8B, benchmarks/results/bigmodel_8b.json)."""
    layer = (spec.param_count() - 2 * spec.vocab_size * spec.dim) / max(spec.n_layers, 1) * 4
    return int(layer + spec.vocab_size * spec.dim * 34 / 32 + 0.45e9)
