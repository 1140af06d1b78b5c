"""Normalisations (FlashInfer's `rmsnorm`, `fused_add_rmsnorm`, Gemma variants, `layernorm`).

All reduce over the last dim in fp32 and round once on the way out. Rows may be strided (the
last dim must be contiguous), so slices and QK-norm views are normalised without a copy.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from .. import _validate as V
from .._launch import ReplayCache, empty_output, launch, replay_key
from .kernels import layernorm_kernel, rmsnorm_kernel

__all__ = ["rmsnorm", "fused_add_rmsnorm", "gemma_rmsnorm", "gemma_fused_add_rmsnorm", "layernorm"]

# Tile policy (a starting point for sm_90; see benchmarks/bench_ops.py for what it reaches).
# Rows up to _MAX_BLOCK_N wide stay in registers (16384 fp32 over 16 warps = 32 per thread);
# wider rows are read in _CHUNK_N tiles, twice (LayerNorm: three times). Narrow rows (QK norm) are packed
# _TILE_ELEMS to a program; one 4096-wide row takes 8 warps at 16 values per thread.
_MAX_BLOCK_N = 16384
_CHUNK_N = 4096
_TILE_ELEMS = 4096


def _tile(hidden: int) -> dict:
    block_n = triton.next_power_of_2(hidden)
    num_chunks = 1
    if block_n > _MAX_BLOCK_N:
        block_n = _CHUNK_N
        num_chunks = triton.cdiv(hidden, _CHUNK_N)
    block_m = max(1, _TILE_ELEMS // block_n)  # not capped by num_rows: a new batch size never recompiles
    # one row: 16 values a thread (8 warps for 4096); stacked rows carry a 64-bit pointer per
    # value, so 8 values a thread (16 warps) keeps registers near 64 (ptxas -v, sm_90)
    num_warps = min(16, max(4, block_m * block_n // (512 if block_m == 1 else 256)))
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, NUM_CHUNKS=num_chunks, num_warps=num_warps)


def _check_input(name: str, x: torch.Tensor, ndim=(2, 3)) -> None:
    V.check_tensor(name, x, ndim)
    V.check_dtype(name, x, V.FLOAT16_TYPES)
    V.check_last_dim_contiguous(name, x)


def _check_weight(name: str, w: torch.Tensor, hidden: int, allowed, device) -> None:
    V.check_tensor(name, w, 1)
    V.check_dtype(name, w, allowed)
    if w.shape[0] != hidden:
        raise ValueError(f"{name}: expected shape ({hidden},) (the input's last dim), got {tuple(w.shape)}")
    V.check_last_dim_contiguous(name, w)
    if w.device != device:
        raise ValueError(f"{name}: expected device {device} (the input's), got {w.device}")


def _rows(t: torch.Tensor):
    """(num_rows, num_heads, stride_b, stride_h) of a 2-D [B, D] or 3-D [B, H, D] tensor."""
    if t.dim() == 2:
        return t.shape[0], 1, t.stride(0), 0
    return t.shape[0] * t.shape[1], t.shape[1], t.stride(0), t.stride(1)


_REPLAYS = ReplayCache()


def _rmsnorm(x, residual, weight, out, eps: float, gemma: bool):
    """Launch; returns its Replay (None on CPU or for an empty input)."""
    num_rows, num_heads, stride_xb, stride_xh = _rows(x)
    if num_rows == 0:
        return None
    _, _, stride_ob, stride_oh = _rows(out)
    _, _, stride_rb, stride_rh = _rows(residual) if residual is not None else (0, 0, 0, 0)
    tile = _tile(x.shape[-1])
    return launch(
        rmsnorm_kernel, (triton.cdiv(num_rows, tile["BLOCK_M"]),), num_warps=tile["num_warps"], num_stages=1,
        x_ptr=x, r_ptr=residual, w_ptr=weight, o_ptr=out,
        stride_xb=stride_xb, stride_xh=stride_xh, stride_rb=stride_rb, stride_rh=stride_rh,
        stride_ob=stride_ob, stride_oh=stride_oh, num_rows=num_rows, num_heads=num_heads, eps=float(eps),
        HIDDEN=x.shape[-1], BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"], NUM_CHUNKS=tile["NUM_CHUNKS"],
        HAS_RESIDUAL=residual is not None, IS_GEMMA=gemma,
    )


def _rmsnorm_out(input, weight, eps, out, gemma) -> torch.Tensor:
    key = replay_key(_rmsnorm_out, input, weight, out, eps, gemma)
    replay = _REPLAYS.get(key)
    if replay is not None:  # checked when first seen
        if out is None:
            out = empty_output(*input.shape, dtype=input.dtype, device=input.device)
        replay(x_ptr=input, w_ptr=weight, o_ptr=out)
        return out
    _check_input("input", input)
    device = V.check_device(input=input, weight=weight, out=out)
    _check_weight("weight", weight, input.shape[-1], (input.dtype, torch.float32), device)
    if out is None:
        out = empty_output(*input.shape, dtype=input.dtype, device=device)
    else:
        V.check_out("out", out, input.shape, input.dtype, device)
        V.check_last_dim_contiguous("out", out)
    _REPLAYS.put(key, _rmsnorm(input, None, weight, out, eps, gemma))
    return out


def _fused_add(input, residual, weight, eps, gemma) -> None:
    key = replay_key(_fused_add, input, residual, weight, eps, gemma)
    replay = _REPLAYS.get(key)
    if replay is not None:  # checked when first seen
        replay(x_ptr=input, r_ptr=residual, w_ptr=weight, o_ptr=input)
        return
    _check_input("input", input)
    _check_input("residual", residual)
    device = V.check_device(input=input, residual=residual, weight=weight)
    if residual.shape != input.shape:
        raise ValueError(f"residual: expected the shape of input {tuple(input.shape)}, got {tuple(residual.shape)}")
    if residual.dtype != input.dtype:
        raise TypeError(f"residual: expected the dtype of input ({input.dtype}), got {residual.dtype}")
    _check_weight("weight", weight, input.shape[-1], (input.dtype, torch.float32), device)
    _REPLAYS.put(key, _rmsnorm(input, residual, weight, input, eps, gemma))


def rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: Optional[torch.Tensor] = None,
            enable_pdl: Optional[bool] = None) -> torch.Tensor:
    r"""Root-mean-square norm over the last dim: ``out = input / sqrt(mean(input^2) + eps) * weight``.

    Args:
        input: ``[B, hidden]`` or ``[B, H, D]`` (QK norm) fp16/bf16; rows may be strided.
        weight: ``[hidden]`` (or ``[D]``) in input's dtype or fp32.
        eps: added to the mean square.
        out: optional output shaped and typed like input (last dim contiguous).
        enable_pdl: accepted for compatibility, ignored.

    Returns:
        ``out`` (new unless given), input's dtype.

    Example::

        y = rmsnorm(hidden_states, layer.weight, eps=1e-5)
    """
    return _rmsnorm_out(input, weight, eps, out, gemma=False)


def gemma_rmsnorm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out: Optional[torch.Tensor] = None,
                  enable_pdl: Optional[bool] = None) -> torch.Tensor:
    r"""Gemma's RMSNorm: ``out = input / sqrt(mean(input^2) + eps) * (1 + weight)``.

    Arguments and return as in :func:`rmsnorm`.
    """
    return _rmsnorm_out(input, weight, eps, out, gemma=True)


def fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                      enable_pdl: Optional[bool] = None) -> None:
    r"""Residual add and RMSNorm, in place::

        s = input + residual          (fp32)
        residual <- s                 (rounded to residual's dtype)
        input    <- s / sqrt(mean(s^2) + eps) * weight

    The norm uses the fp32 sum ``s`` (as FlashInfer does). For rows wider than 16384 the sum is
    read back from ``residual``, i.e. after rounding.

    Args:
        input: ``[B, hidden]`` (or ``[B, H, D]``) fp16/bf16; overwritten with the normalised sum.
        residual: like input, same dtype; overwritten with the sum.
        weight: ``[hidden]`` in input's dtype or fp32. eps: as in :func:`rmsnorm`.
        enable_pdl: ignored.

    Example::

        fused_add_rmsnorm(hidden_states, residual, layer.weight)
    """
    _fused_add(input, residual, weight, eps, gemma=False)


def gemma_fused_add_rmsnorm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                            enable_pdl: Optional[bool] = None) -> None:
    """:func:`fused_add_rmsnorm` with Gemma's ``(1 + weight)``."""
    _fused_add(input, residual, weight, eps, gemma=True)


def layernorm(input: torch.Tensor, gemma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""LayerNorm over the last dim: ``(input - mean) / sqrt(var + eps) * gemma + beta``.

    Args:
        input: ``[B, hidden]`` **bf16**; rows may be strided.
        gemma: ``[hidden]`` **fp32** scale (FlashInfer's name for the weight).
        beta: ``[hidden]`` **fp32** bias.
        eps: added to the (biased) variance.

    Returns:
        ``[B, hidden]`` bf16.

    Example::

        y = layernorm(x, ln.weight.float(), ln.bias.float())
    """
    V.check_tensor("input", input, 2)
    V.check_dtype("input", input, (torch.bfloat16,))
    V.check_last_dim_contiguous("input", input)
    device = V.check_device(input=input, gemma=gemma, beta=beta)
    _check_weight("gemma", gemma, input.shape[1], (torch.float32,), device)
    _check_weight("beta", beta, input.shape[1], (torch.float32,), device)
    num_rows, hidden = input.shape
    out = empty_output(num_rows, hidden, dtype=input.dtype, device=device)
    if num_rows == 0:
        return out
    tile = _tile(hidden)
    launch(
        layernorm_kernel, (triton.cdiv(num_rows, tile["BLOCK_M"]),), num_warps=tile["num_warps"], num_stages=1,
        x_ptr=input, w_ptr=gemma, b_ptr=beta, o_ptr=out, stride_xm=input.stride(0), stride_om=out.stride(0),
        num_rows=num_rows, eps=float(eps),
        HIDDEN=hidden, BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"], NUM_CHUNKS=tile["NUM_CHUNKS"],
    )
    return out
