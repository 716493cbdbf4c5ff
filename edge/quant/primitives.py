"""Pure tensor math of weight quantization: storage formats, round-to-nearest, scale search, packing.

A format maps a group of ``group`` weights along a row (the input dimension) to integer codes
``q`` in [qmin, qmax] and one scale ``d`` (and a zero code ``z``): ``w ~ d * (q - z)``. The GGUF
block formats follow ggml's conventions exactly, so what we compute is what llama.cpp reads:

    q8_0  d = absmax/127,  q = round(w/d) in [-127, 127]          (34 bytes per 32 weights)
    q4_0  d = max/-8 (max: the signed value of largest |w|), q = trunc(w/d + 8.5) in [0, 15], z = 8
    q5_0  d = max/-16, q in [0, 31], z = 16

    from edge.quant.primitives import FORMATS, rtn, pack_gguf
    qt = rtn(w, FORMATS["q4_0"])            # QTensor: codes (rows, cols) + scales (rows, groups)
    blocks = qt.gguf_bytes()               # (rows, cols/32*18) uint8, == gguf.quants.quantize(w, Q4_0)
    w_hat = qt.dequantize()                # float32, what llama.cpp dequantizes

Torch is used for the search (it is faster on large tensors); packing is numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from edge.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Format:
    """One storage format. ``group == 0`` means one scale per output row (per-channel)."""

    name: str
    bits: int
    group: int
    qmin: int
    qmax: int
    zero: int  # code of 0.0 for symmetric formats (q4_0 stores 0..15 with 8 as zero)
    symmetric: bool
    scale_dtype: str  # "f16" | "f32"
    convention: str  # "ggml_max" (d = max/-(z)) | "absmax" (d = absmax/qmax) | "minmax"
    ggml_type: str = ""  # GGMLQuantizationType name when it is a GGUF block type
    block_bytes: int = 0  # bytes per group when packed as GGUF
    source: str = ""

    @property
    def bits_per_weight(self) -> float:
        if self.ggml_type:
            return 8 * self.block_bytes / self.group
        scale_bits = 16 if self.scale_dtype == "f16" else 32
        zero_bits = 0 if self.symmetric else self.bits
        return self.bits + (scale_bits + zero_bits) / self.group if self.group else float(self.bits)

    def groups(self, cols: int) -> int:
        return cols // self.group if self.group else 1

    def group_size(self, cols: int) -> int:
        return self.group or cols

    @property
    def is_float(self) -> bool:
        return self.convention == "float"


_GGML = "ggml-common.h block layouts; gguf-py quants.py reference quantizers"
_TORCHAO = "torchao choose_qparams_affine SYMMETRIC: scale = absmax / ((qmax - qmin) / 2), codes [-8, 7]"

# format name -> Format. One visible table; recipes name these.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("f32", 32, 0, 0, 0, 0, True, "f32", "float", "F32", source="IEEE fp32, not quantized"),
    Format("f16", 16, 0, 0, 0, 0, True, "f32", "float", "F16", source="IEEE fp16"),
    Format("q8_0", 8, 32, -127, 127, 0, True, "f16", "absmax", "Q8_0", 34, _GGML),
    Format("q5_0", 5, 32, 0, 31, 16, True, "f16", "ggml_max", "Q5_0", 22, _GGML),
    Format("q4_0", 4, 32, 0, 15, 8, True, "f16", "ggml_max", "Q4_0", 18, _GGML),
    Format("int8", 8, 0, -127, 127, 0, True, "f32", "absmax", source="int8 per output channel (QDQ / NPU)"),
    Format("int4_g32", 4, 32, -8, 7, 0, True, "f32", "torchao_sym", source=_TORCHAO + " (ExecuTorch 8da4w)"),
    Format("int4_g64", 4, 64, -8, 7, 0, True, "f32", "torchao_sym", source=_TORCHAO),
    Format("int4_g128", 4, 128, -8, 7, 0, True, "f32", "torchao_sym", source=_TORCHAO),
    Format("int4_g32_asym", 4, 32, 0, 15, 0, False, "f32", "minmax", source="int4 affine: (max-min)/15, int zero"),
    Format("int4_g64_asym", 4, 64, 0, 15, 0, False, "f32", "minmax", source="int4 affine: (max-min)/15, int zero"),
    Format("int4_g128_asym", 4, 128, 0, 15, 0, False, "f32", "minmax", source="int4 affine: (max-min)/15, int zero"),
)}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise ConfigError(f"unknown weight format '{name}'{did_you_mean(name, FORMATS)}; allowed: {', '.join(FORMATS)}")
    return FORMATS[name]


def check_shape(name: str, shape: tuple[int, ...], fmt: Format) -> None:
    """A group must divide the row length: name the tensor, its shape and the rule."""
    if fmt.is_float or not fmt.group:
        return
    cols = shape[-1]
    if cols % fmt.group:
        raise ConfigError(
            f"tensor '{name}' has shape {tuple(shape)}: its rows ({cols}) are not a multiple of the "
            f"{fmt.name} group size ({fmt.group}); use a group size that divides {cols} or keep it in f16/q8_0"
        )


def _round_scale(d: torch.Tensor, fmt: Format) -> torch.Tensor:
    return d.half().float() if fmt.scale_dtype == "f16" else d.float()


@dataclass
class QTensor:
    """Quantized weights exactly as stored: ``w = scales * (codes - zeros)`` per group.

    codes (rows, cols) int16; scales (rows, groups) float32 (already rounded to the stored
    precision); zeros (rows, groups) int16 (the format's fixed zero for symmetric formats).
    """

    fmt: Format
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        rows, cols = self.codes.shape
        g = self.fmt.group_size(cols)
        q = self.codes.reshape(rows, cols // g, g).astype(np.float32)
        z = self.zeros.astype(np.float32)[..., None]
        return (self.scales[..., None] * (q - z)).reshape(rows, cols).astype(np.float32)

    def nbytes(self) -> int:
        rows, cols = self.codes.shape
        if self.fmt.ggml_type and not self.fmt.is_float:
            return rows * self.fmt.groups(cols) * self.fmt.block_bytes
        return int(round(rows * cols * self.fmt.bits_per_weight / 8))

    def gguf_bytes(self) -> np.ndarray:
        """(rows, groups * block_bytes) uint8 in the ggml block layout."""
        return pack_gguf(self)

    def permute_rows(self, perm: np.ndarray) -> QTensor:
        """Rows reordered (blocks run along rows, so this is exact): used for llama.cpp's q/k layout."""
        return QTensor(self.fmt, self.codes[perm], self.scales[perm], self.zeros[perm], dict(self.meta))

    def to_8da4w(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """torchao Int8DynActInt4WeightLinear buffers: weight int8 (rows, cols) in [-8, 7],
        scales float32 (rows, groups), zeros float32 (rows, groups) (all 0: symmetric)."""
        if self.fmt.convention != "torchao_sym":
            raise ConfigError(f"8da4w layout needs an int4_gNN symmetric format, this tensor is {self.fmt.name}")
        return self.codes.astype(np.int8), self.scales.astype(np.float32), np.zeros_like(self.scales)


# ---- choosing scales ---------------------------------------------------------------------------------

def _groups(w: torch.Tensor, fmt: Format) -> torch.Tensor:
    rows, cols = w.shape
    g = fmt.group_size(cols)
    return w.reshape(rows, cols // g, g)


def default_params(w: torch.Tensor, fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """The format's own convention for scale and zero, per group: (rows, groups) each."""
    wg = _groups(w.float(), fmt)
    if fmt.convention == "ggml_max":
        imax = wg.abs().argmax(-1, keepdim=True)
        d = torch.gather(wg, -1, imax)[..., 0] / -fmt.zero
        z = torch.full_like(d, fmt.zero)
    elif fmt.convention == "absmax":
        d = wg.abs().amax(-1) / fmt.qmax
        z = torch.zeros_like(d)
    elif fmt.convention == "torchao_sym":
        d = wg.abs().amax(-1) / ((fmt.qmax - fmt.qmin) / 2)
        z = torch.zeros_like(d)
    elif fmt.convention == "minmax":
        lo = wg.amin(-1).clamp(max=0)
        hi = wg.amax(-1).clamp(min=0)
        d = (hi - lo) / (fmt.qmax - fmt.qmin)
        d = torch.where(d == 0, torch.ones_like(d), d)
        z = (fmt.qmin - torch.round(lo / d)).clamp(fmt.qmin, fmt.qmax)
    else:
        raise AssertionError(fmt.convention)
    return _round_scale(d, fmt), z


def quantize_codes(w: torch.Tensor, d: torch.Tensor, z: torch.Tensor, fmt: Format) -> torch.Tensor:
    """Codes of w (..., g) for per-group d, z (...,): nearest level, clamped to [qmin, qmax]."""
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    return (torch.round(w * inv[..., None]) + z[..., None]).clamp(fmt.qmin, fmt.qmax)


def search_params(w: torch.Tensor, fmt: Format, importance: torch.Tensor | None = None,
                  steps: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group scale that minimises the importance-weighted squared error.

    As llama.cpp's ``make_qx_quants`` with an importance matrix: try ``2*steps+1`` candidate
    scales around the convention's; for each, round, refit the scale by weighted least squares
    on those codes and score it in closed form (sum w x^2 - (sum w x q)^2 / sum w q^2); keep the
    best, round it to the stored precision. ``importance`` (cols,) is typically diag(X^T X).
    w (rows, cols) -> d, z (rows, groups).
    """
    if fmt.convention == "minmax" or fmt.is_float:
        return default_params(w, fmt)
    w = w.float()
    wg = _groups(w, fmt)  # (rows, G, g)
    if importance is None:
        imp = torch.ones(wg.shape[-1]).expand_as(wg)
    else:
        imp = _groups(importance.float().clamp(min=0).expand_as(w), fmt)
    d0, z0 = default_params(w, fmt)
    if fmt.convention == "ggml_max":
        imax = wg.abs().argmax(-1, keepdim=True)
        ref = torch.gather(wg, -1, imax)[..., 0] / -1.0  # signed max, negated: d = ref / nmax
        nmax = float(fmt.zero)
    else:
        ref = wg.abs().amax(-1)
        nmax = float(fmt.qmax) if fmt.convention == "absmax" else (fmt.qmax - fmt.qmin) / 2
    zc = z0[..., None]
    wx = imp * wg
    best_d, best_score = d0, torch.full_like(d0, -1.0)
    for k in range(-steps, steps + 1):
        inv = torch.where(ref == 0, torch.zeros_like(ref), (nmax + 0.1 * k) / ref)
        q = (torch.round(wg * inv[..., None]) + zc).clamp_(fmt.qmin, fmt.qmax) - zc
        sxq = (wx * q).sum(-1)
        sqq = (imp * q * q).sum(-1)
        score = torch.where(sqq > 0, sxq * sxq / sqq.clamp(min=1e-30), torch.zeros_like(sqq))
        better = score > best_score
        best_d = torch.where(better, sxq / sqq.clamp(min=1e-30), best_d)
        best_score = torch.where(better, score, best_score)
    best_d = torch.where(best_score > 0, best_d, d0)
    return _round_scale(best_d, fmt), z0


def quantize_with_params(w: torch.Tensor, d: torch.Tensor, z: torch.Tensor, fmt: Format) -> QTensor:
    q = quantize_codes(_groups(w.float(), fmt), d, z, fmt).reshape(w.shape)
    return QTensor(fmt, q.to(torch.int16).numpy(), d.float().numpy(), z.to(torch.int16).numpy())


def rtn(w: torch.Tensor | np.ndarray, fmt: Format) -> QTensor:
    """Round-to-nearest with the format's own scale convention.

    GGUF formats reproduce gguf-py's reference quantizers bit for bit (codes computed with the
    fp32 inverse of the unrounded scale, as ggml does), so ``rtn(w, q4_0).gguf_bytes()`` equals
    ``gguf.quants.quantize(w, Q4_0)``.
    """
    if fmt.is_float:
        raise ConfigError(f"{fmt.name} is not a quantized format")
    if fmt.ggml_type:
        return _ggml_rtn(np.asarray(w, dtype=np.float32), fmt)
    wt = torch.as_tensor(np.asarray(w, dtype=np.float32)) if isinstance(w, np.ndarray) else w.float()
    d, z = default_params(wt, fmt)
    return quantize_with_params(wt, d, z, fmt)


def _ggml_rtn(w: np.ndarray, fmt: Format) -> QTensor:
    rows, cols = w.shape
    blocks = w.reshape(rows, cols // fmt.group, fmt.group)
    if fmt.convention == "ggml_max":
        imax = np.abs(blocks).argmax(axis=-1)[..., None]
        mx = np.take_along_axis(blocks, imax, axis=-1)[..., 0]
        d = mx / np.float32(-fmt.zero)
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, 0, 1 / d).astype(np.float32)
        q = np.trunc(blocks * inv[..., None] + np.float32(fmt.zero + 0.5), dtype=np.float32)
        q = q.astype(np.uint8).clip(0, fmt.qmax)  # as gguf-py: negatives wrap, then clip
        z = np.full(d.shape, fmt.zero, dtype=np.int16)
    else:  # q8_0: absmax/127 and roundf (half away from zero)
        d = np.abs(blocks).max(axis=-1) / np.float32(127)
        with np.errstate(divide="ignore"):
            inv = np.where(d == 0, 0, 1 / d).astype(np.float32)
        x = blocks * inv[..., None]
        a = np.abs(x)
        fl = np.floor(a)
        q = np.sign(x) * (fl + np.floor(2 * (a - fl)))
        z = np.zeros(d.shape, dtype=np.int16)
    d16 = d.astype(np.float16).astype(np.float32)
    return QTensor(fmt, q.reshape(rows, cols).astype(np.int16), d16, z)


# ---- GGUF packing --------------------------------------------------------------------------------------

def pack_gguf(qt: QTensor) -> np.ndarray:
    """Pack codes and scales into ggml blocks: (rows, groups*block_bytes) uint8."""
    fmt = qt.fmt
    rows, cols = qt.codes.shape
    nb = cols // fmt.group
    d = qt.scales.astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    q = qt.codes.reshape(rows, nb, fmt.group)
    if fmt.name == "q8_0":
        body = [q.astype(np.int8).view(np.uint8)]
    elif fmt.name == "q4_0":
        u = q.astype(np.uint8)
        body = [u[..., :16] | (u[..., 16:] << np.uint8(4))]
    elif fmt.name == "q5_0":
        u = q.astype(np.uint8)
        qs = (u[..., :16] & np.uint8(0x0F)) | ((u[..., 16:] & np.uint8(0x0F)) << np.uint8(4))
        qh = np.packbits((u >> np.uint8(4)).reshape(rows, nb, 32), axis=-1, bitorder="little")
        body = [qh, qs]
    else:
        raise ConfigError(f"format {fmt.name} has no GGUF block layout; GGUF formats: q8_0, q5_0, q4_0")
    out = np.concatenate([d, *body], axis=-1)
    assert out.shape[-1] == fmt.block_bytes
    return out.reshape(rows, nb * fmt.block_bytes)


def unpack_gguf(blocks: np.ndarray, fmt: Format, shape: tuple[int, int]) -> QTensor:
    """Inverse of pack_gguf (for tests and for re-reading our own files)."""
    rows, cols = shape
    nb = cols // fmt.group
    b = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(rows, nb, fmt.block_bytes)
    d = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
    if fmt.name == "q8_0":
        q = b[..., 2:].copy().view(np.int8).astype(np.int16)
    elif fmt.name == "q4_0":
        qs = b[..., 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16)
    elif fmt.name == "q5_0":
        qh = np.unpackbits(b[..., 2:6], axis=-1, bitorder="little").astype(np.int16)
        qs = b[..., 6:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int16) | (qh << 4)
    else:
        raise ConfigError(f"format {fmt.name} has no GGUF block layout")
    z = np.full(d.shape, fmt.zero, dtype=np.int16)
    return QTensor(fmt, q.reshape(rows, cols), d, z)


# ---- activations ---------------------------------------------------------------------------------------

def int8_static_scale(absmax: float) -> float:
    """Per-tensor symmetric int8 scale (QDQ, zero point 0) from a calibrated |x| maximum."""
    return max(float(absmax), 1e-8) / 127.0


def fake_quant_act(x: torch.Tensor, mode: str, scale: float | None = None) -> torch.Tensor:
    """Quantize-dequantize activations: "int8_static" (per-tensor, calibrated scale) or
    "int8_dynamic" (per token, asymmetric, as torchao's 8da4w)."""
    if mode == "int8_static":
        return (torch.round(x / scale).clamp(-128, 127)) * scale
    if mode == "int8_dynamic":
        lo = x.amin(-1, keepdim=True).clamp(max=0)
        hi = x.amax(-1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / 255).clamp(min=1e-8)
        zp = (-128 - torch.round(lo / s)).clamp(-128, 127)
        return (torch.round(x / s) + zp).clamp(-128, 127).sub(zp).mul(s)
    raise AssertionError(mode)
