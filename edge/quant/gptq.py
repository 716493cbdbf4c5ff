"""GPTQ (Frantar et al., 2022): quantize a weight matrix column by column, pushing each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian H = X^T X of the
layer's calibration inputs.

The grid is the target format's own: scales per group of ``fmt.group`` columns (a GGUF block),
chosen before the sweep ("static groups", so act-order can visit columns in any order) by an
importance-weighted search (diag H as the importance, as llama.cpp's imatrix), then kept fixed;
or, without act-order, each group's scale is searched when the sweep reaches it, on the weights as
GPTQ has updated them ("dynamic groups").

    H = hessian_accumulate(None, x)                   # x (tokens, in_features)
    qt, w_hat = gptq_quantize(W, H, FORMATS["q4_0"], GPTQConfig())
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from edge.errors import EdgeError
from edge.quant.configs import GPTQConfig
from edge.quant.primitives import Format, QTensor, default_params, search_params


class NumericalError(EdgeError):
    """NaN/Inf in weights or activations, or a Hessian that cannot be factorised."""


def hessian_accumulate(h: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """H += X^T X for x (..., in_features): float32 products per chunk, summed in float64."""
    x = x.reshape(-1, x.shape[-1]).float()
    xtx = (x.T @ x).double()
    return xtx if h is None else h + xtx


@contextlib.contextmanager
def torch_threads(n: int):
    """The sweep is thousands of small ops: one thread is ~6x faster than two on a busy 2-core host."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, fmt: Format, cfg: GPTQConfig,
                  name: str = "weight", cross: torch.Tensor | None = None) -> tuple[QTensor, torch.Tensor]:
    """w (rows, cols), h (cols, cols) -> (QTensor, dequantized w (rows, cols) float32).

    ``cross`` (cols, cols) = X_f^T X_q: quantize towards the float model's output (asym_target).
    """
    with torch_threads(1):
        if cross is not None:
            w = asym_target(w, h, cross, cfg.asym_damp)
        return _gptq(w, h, fmt, cfg, name)


def asym_target(w: torch.Tensor, h: torch.Tensor, c: torch.Tensor, damp: float) -> torch.Tensor:
    """The float weights that best reproduce the float model's output from the quantized model's input.

    With X_q the inputs this layer sees in the partly quantized model and X_f the float model's,
    ||X_f W^T - X_q Q^T||^2 = tr((Q - W_t) H (Q - W_t)^T) + const, with H = X_q^T X_q,
    C = X_f^T X_q and W_t = W C H^-1 = W + W (C - H) H^-1 (H damped by ``damp``: the correction is
    shrunk towards W where the calibration says little). GPTQ on (W_t, H) then minimises
    the error against the float model's output, so each layer also absorbs the error the quantized
    layers before it left in its input (asymmetric calibration, as GPTAQ, Li et al. 2025).
    """
    h = h.double()
    hd = h + damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    # W_t = W + W (C - H) H^-1: the ridge shrinks the correction, not W itself (H symmetric)
    corr = torch.linalg.solve(hd, (c.double() - h).T @ w.double().T).T
    return (w.double() + corr).float()


def _gptq(w, h, fmt, cfg, name):
    w = w.detach().float().clone()
    w0 = w.clone()
    rows, cols = w.shape
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    importance = torch.diag(h).float()
    static = cfg.scale_search and (cfg.static_groups or cfg.act_order)
    d, z = search_params(w, fmt, importance) if static else default_params(w, fmt)
    g = fmt.group_size(cols)
    group_of = torch.arange(cols) // g  # column -> group index

    perm = torch.argsort(torch.diag(h), descending=True) if cfg.act_order else torch.arange(cols)
    w = w[:, perm]
    h = h[perm][:, perm]
    group_of = group_of[perm]
    h += cfg.damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    try:
        hinv = torch.linalg.cholesky(h)
        hinv = torch.cholesky_inverse(hinv)
        hinv = torch.linalg.cholesky(hinv, upper=True).float()
    except RuntimeError as e:  # torch.linalg.LinAlgError is a RuntimeError
        raise NumericalError(f"GPTQ on '{name}': the Hessian of its inputs is not positive definite "
                             f"({e}); raise gptq.damp or add calibration data") from e

    inv_d = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)  # (rows, groups)
    q_out = torch.zeros(rows, cols, dtype=torch.int16)
    w_hat = torch.zeros_like(w)
    bs = cfg.block_size
    dynamic = not cfg.static_groups and not cfg.act_order and g < cols
    if dynamic:
        bs = max(g, bs // g * g)  # a block holds whole groups
    for i1 in range(0, cols, bs):
        i2 = min(i1 + bs, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            gi = group_of[i1 + i]
            if dynamic and (i1 + i) % g == 0:  # this group's scale from its weights as updated so far
                search = search_params if cfg.scale_search else (lambda x, f, _imp: default_params(x, f))
                dn, zn = search(w1[:, i : i + g], fmt, importance[i1 + i : i1 + i + g])
                d[:, gi], z[:, gi] = dn[:, 0], zn[:, 0]
                inv_d[:, gi] = torch.where(dn[:, 0] == 0, torch.zeros_like(dn[:, 0]), 1.0 / dn[:, 0])
            dg, zg = d[:, gi], z[:, gi]
            q = torch.round(col * inv_d[:, gi]).add_(zg).clamp_(fmt.qmin, fmt.qmax)
            deq = dg * (q - zg)
            q_out[:, i1 + i] = q.to(torch.int16)
            w_hat[:, i1 + i] = deq
            e = (col - deq) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    inv = torch.argsort(perm)
    q_out, w_hat = q_out[:, inv], w_hat[:, inv]
    qt = QTensor(fmt, q_out.numpy(), d.float().numpy(), z.to(torch.int16).numpy(), {"method": "gptq"})
    if cfg.refit_scales:
        h0 = h[inv][:, inv]  # damped H in the original column order
        qt = refit_scales(w0, qt, h0)
        w_hat = torch.from_numpy(qt.dequantize())
    return qt, w_hat


def refit_scales(w: torch.Tensor, qt: QTensor, h: torch.Tensor, rows_per_chunk: int = 32) -> QTensor:
    """With the codes fixed, the per-group scales that minimise ||(W - W_hat) X||^2 exactly.

    Per row r, W_hat_r = A_r d_r with A_r (cols, groups) holding (q - z) on each group's columns,
    so d_r solves (A_r^T H A_r) d_r = A_r^T H w_r: a groups x groups system per row. Scales are
    then rounded to the stored precision; a group whose solution is not finite keeps its scale.
    """
    fmt = qt.fmt
    rows, cols = qt.codes.shape
    g = fmt.group_size(cols)
    G = cols // g
    a_all = torch.from_numpy(qt.codes.astype(np.float32) - np.repeat(qt.zeros, g, axis=1).astype(np.float32))
    hf = h.float()
    w = w.float()
    new_d = torch.from_numpy(qt.scales.copy())
    for r0 in range(0, rows, rows_per_chunk):
        a = a_all[r0 : r0 + rows_per_chunk]  # (R, cols)
        R = a.shape[0]
        m = (a[:, :, None] * hf[None] * a[:, None, :]).reshape(R, G, g, G, g).sum((2, 4))  # (R, G, G)
        rhs = ((w[r0 : r0 + R] @ hf) * a).reshape(R, G, g).sum(-1)  # (R, G)
        m = m + 1e-6 * m.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(G)
        sol = torch.linalg.solve(m.double(), rhs.double()[..., None])[..., 0].float()
        ok = torch.isfinite(sol) & (a.reshape(R, G, g).abs().sum(-1) > 0)
        new_d[r0 : r0 + R] = torch.where(ok, sol, new_d[r0 : r0 + R])
    d = new_d.half().float() if fmt.scale_dtype == "f16" else new_d
    out = QTensor(fmt, qt.codes, d.numpy(), qt.zeros, dict(qt.meta))
    # keep the refit only where it lowers the layer-output error (fp16 rounding can undo tiny gains)
    def row_err(t: QTensor) -> torch.Tensor:
        dw = w - torch.from_numpy(t.dequantize())
        return ((dw @ hf) * dw).sum(-1)

    better = (row_err(out) < row_err(qt)).numpy()
    out.scales = np.where(better[:, None], out.scales, qt.scales)
    return out
