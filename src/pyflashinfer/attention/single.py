"""Single-request attention: `single_decode_with_kv_cache`, `single_prefill_with_kv_cache`.

Semantics follow FlashInfer: LSE in base 2, causal aligned bottom-right, inclusive
`window_left`, `q_scale`/`k_scale` folded into `sm_scale`, `v_scale` applied to the output.
"""
from __future__ import annotations

import collections
import functools
import math
from typing import Optional, Tuple, Union

import torch

from .. import _validate as V
from ..utils import PosEncodingMode, get_alibi_slopes, is_interpreting, num_sms
from .._launch import empty_output
from .launch import Variant, attention_fwd, batch_prefill_tile, decode_fwd, hopper_covers_fields
from .masks import pack_custom_mask

_BACKENDS = ("auto", "fa2", "fa3")


def _kv_views(k: torch.Tensor, v: torch.Tensor, kv_layout: str):
    """NHD-strided views of k/v ([kv_len, H_kv, D]); HND input is transposed, not copied."""
    V.check_kv_layout(kv_layout)
    V.check_tensor("k", k, 3)
    V.check_tensor("v", v, 3)
    if kv_layout == "HND":
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    if k.shape[:2] != v.shape[:2]:
        raise ValueError(f"k and v must agree on (kv_len, num_kv_heads) in layout {kv_layout}, "
                         f"got k {tuple(k.shape)} and v {tuple(v.shape)} (as NHD)")
    return k, v


def _check_qkv(q, k, v, q_dtypes=V.FLOAT16_TYPES):
    V.check_dtype("q", q, q_dtypes)
    V.check_dtype("k", k, V.KV_TYPES)
    if v.dtype != k.dtype:
        raise TypeError(f"v: expected the dtype of k ({k.dtype}), got {v.dtype}")
    if k.dtype in V.FLOAT16_TYPES and k.dtype != q.dtype:
        raise TypeError(f"k/v: a 16-bit KV cache must match q's dtype ({q.dtype}), got {k.dtype}; "
                        "fp8 KV (float8_e4m3fn/float8_e5m2) may pair with either")
    device = V.check_device(q=q, k=k, v=v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        V.check_last_dim_contiguous(name, t)
    num_qo_heads, num_kv_heads = q.shape[-2], k.shape[1]
    V.check_heads(num_qo_heads, num_kv_heads)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head_dim of q ({q.shape[-1]}) and k ({k.shape[-1]}) must match")
    V.check_head_dim("q/k head_dim", q.shape[-1])
    V.check_head_dim("v head_dim", v.shape[-1])
    return device


def _variant(head_dim, *, pos_encoding_mode, sm_scale, q_scale, k_scale, v_scale, causal,
             window_left, logits_soft_cap, rope_scale, rope_theta) -> Variant:
    mode = V.check_pos_encoding_mode(pos_encoding_mode)
    V.check_window_left(window_left)
    cap = V.check_soft_cap(logits_soft_cap)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    if mode == PosEncodingMode.ROPE_LLAMA and head_dim % 2:
        raise ValueError(f"ROPE_LLAMA needs an even head_dim, got {head_dim}")
    return Variant(
        sm_scale=float(sm_scale) * (1.0 if q_scale is None else float(q_scale)) * (1.0 if k_scale is None else float(k_scale)),
        v_scale=1.0 if v_scale is None else float(v_scale), causal=bool(causal), window_left=window_left,
        soft_cap=cap, use_rope=mode == PosEncodingMode.ROPE_LLAMA,
        rope_scale=1.0 if rope_scale is None else float(rope_scale),
        rope_theta=1e4 if rope_theta is None else float(rope_theta), use_alibi=mode == PosEncodingMode.ALIBI,
    )


def _alibi(variant: Variant, num_qo_heads: int, device) -> Optional[torch.Tensor]:
    return get_alibi_slopes(num_qo_heads).to(device) if variant.use_alibi else None


def single_decode_with_kv_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_layout: str = "NHD",
    pos_encoding_mode: str = "NONE", use_tensor_cores: bool = False, q_scale: Optional[float] = None,
    k_scale: Optional[float] = None, v_scale: Optional[float] = None, window_left: int = -1,
    logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None,
    rope_scale: Optional[float] = None, rope_theta: Optional[float] = None, return_lse: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    r"""Attention of one query token over one request's KV cache.

    ``o[h] = softmax(sm_scale * q[h] . K[h // g]^T) V[h // g]`` with ``g = H_qo / H_kv`` (GQA).

    Args:
        q: ``[H_qo, D]`` fp16/bf16 (the query at position ``kv_len - 1``).
        k: ``[kv_len, H_kv, D]`` (NHD) or ``[H_kv, kv_len, D]`` (HND); fp16/bf16 (same as q) or fp8.
        v: like ``k``, with head dim ``D_vo``.
        kv_layout: ``"NHD"`` or ``"HND"``.
        pos_encoding_mode: ``"NONE"``, ``"ROPE_LLAMA"`` (RoPE applied in-kernel to q and k) or ``"ALIBI"``.
        use_tensor_cores: run the query group through the tensor-core (tl.dot) kernel.
        q_scale, k_scale: folded into ``sm_scale``; v_scale: multiplies the output.
        window_left: keys at positions ``>= kv_len - 1 - window_left`` are kept; -1 keeps all.
        logits_soft_cap: ``cap * tanh(logits / cap)`` on the scaled logits; None/0 is off.
        sm_scale: default ``1 / sqrt(D)``. rope_scale/rope_theta: default 1 and 1e4.
        return_lse: also return the base-2 log-sum-exp, fp32 ``[H_qo]``.

    Returns:
        ``o [H_qo, D_vo]`` in q's dtype, and ``lse`` when asked.

    Example::

        o = single_decode_with_kv_cache(q, k_cache, v_cache, use_tensor_cores=True)
    """
    V.check_tensor("q", q, 2)
    k, v = _kv_views(k, v, kv_layout)
    _check_qkv(q, k, v)
    variant = _variant(q.shape[-1], pos_encoding_mode=pos_encoding_mode, sm_scale=sm_scale,
                       q_scale=q_scale, k_scale=k_scale, v_scale=v_scale, causal=False,
                       window_left=window_left, logits_soft_cap=logits_soft_cap,
                       rope_scale=rope_scale, rope_theta=rope_theta)
    num_qo_heads = q.shape[0]
    out = empty_output(num_qo_heads, v.shape[-1], dtype=q.dtype, device=q.device)
    lse = empty_output(num_qo_heads, dtype=torch.float32, device=q.device) if return_lse else None
    alibi = _alibi(variant, num_qo_heads, q.device)
    if use_tensor_cores:
        attention_fwd(q[None], k, v, out[None], None if lse is None else lse[None], variant, alibi_slopes=alibi)
    else:
        decode_fwd(q, k, v, out, lse, variant, alibi_slopes=alibi)
    return (out, lse) if return_lse else out


def single_prefill_with_kv_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale_q: Optional[torch.Tensor] = None,
    scale_k: Optional[torch.Tensor] = None, scale_v: Optional[torch.Tensor] = None,
    o_dtype: Optional[torch.dtype] = None, custom_mask: Optional[torch.Tensor] = None,
    packed_custom_mask: Optional[torch.Tensor] = None, causal: bool = False, kv_layout: str = "NHD",
    pos_encoding_mode: str = "NONE", use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
    window_left: int = -1, logits_soft_cap: Optional[float] = None, rope_scale: Optional[float] = None,
    rope_theta: Optional[float] = None, backend: str = "auto", return_lse: bool = False,
    kv_cache_sf: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, k_scale: Optional[float] = None,
    v_scale: Optional[float] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    r"""Attention of one request's queries over its KV: prefill, chunked prefill, append.

    ``o = softmax(mask(sm_scale * Q K^T)) V`` per qo head, GQA by ``h // (H_qo / H_kv)``.

    Causal is aligned bottom-right: query ``i`` sits at position ``kv_len - qo_len + i`` and sees
    keys ``j <= kv_len - qo_len + i``. With qo_len=3, kv_len=5 (``x`` kept)::

        q0  x x x . .
        q1  x x x x .
        q2  x x x x x

    Args:
        q: ``[qo_len, H_qo, D_qk]`` fp16/bf16, or fp8 with an fp8 k/v (strided views accepted;
            last dim contiguous).
        k: ``[kv_len, H_kv, D_qk]`` (NHD) or ``[H_kv, kv_len, D_qk]`` (HND); fp16/bf16 or fp8.
        v: ``[kv_len, H_kv, D_vo]`` (NHD) or ``[H_kv, kv_len, D_vo]`` (HND), k's dtype.
        custom_mask: bool ``[qo_len, kv_len]`` (True = keep); takes precedence over ``causal``.
        packed_custom_mask: uint8, ``custom_mask.flatten()`` packed little-endian (``packbits``).
        causal, window_left (inclusive, -1 off), logits_soft_cap, sm_scale, pos_encoding_mode,
        rope_scale, rope_theta: as in :func:`single_decode_with_kv_cache`.
        o_dtype: output dtype (default q's dtype; float16 for fp8 q).
        k_scale, v_scale: fp8 dequantisation scales (k folded into sm_scale, v on the output).
        scale_q, scale_k, scale_v: fp8 q/k/v dequantisation scales per head (``[H_qo]``,
            ``[H_kv]``, ``[H_kv]``) or per tensor (``[1]``): logits scale by scale_q * scale_k,
            the output by scale_v. Products run in fp16 (exact for fp8 values).
        kv_cache_sf: NVFP4 KV cache, not supported.
        use_fp16_qk_reduction, backend: accepted for compatibility; QK is always reduced in fp32.
        return_lse: also return the base-2 LSE, fp32 ``[qo_len, H_qo]``.

    Returns:
        ``o [qo_len, H_qo, D_vo]`` (and ``lse``).

    Example::

        o = single_prefill_with_kv_cache(q, k, v, causal=True)
    """
    V.check_tensor("q", q, 3)
    k, v = _kv_views(k, v, kv_layout)
    if kv_cache_sf is not None:
        raise NotImplementedError("kv_cache_sf (NVFP4 KV cache) is not supported")
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
    fp8_q = q.dtype in V.FP8_TYPES
    if fp8_q and k.dtype not in V.FP8_TYPES:
        raise TypeError(f"k/v: fp8 q needs an fp8 k/v, got {k.dtype}")
    device = _check_qkv(q, k, v, V.FLOAT16_TYPES + V.FP8_TYPES)
    qo_len, num_qo_heads, head_dim = q.shape
    kv_len = k.shape[0]
    head_scales = _head_scales(scale_q, scale_k, scale_v, num_qo_heads, k.shape[1], device)
    if head_scales is not None and not fp8_q:
        raise ValueError("scale_q/scale_k/scale_v go with fp8 q/k/v (FlashInfer's fp8 prefill); with 16-bit q "
                         "pass k_scale/v_scale for an fp8 KV cache")
    if fp8_q and pos_encoding_mode == "ROPE_LLAMA":
        raise NotImplementedError("RoPE applied in the kernel needs 16-bit q; apply RoPE before quantising q")
    o_dtype = (torch.float16 if fp8_q else q.dtype) if o_dtype is None else o_dtype
    if o_dtype not in V.FLOAT16_TYPES:
        raise TypeError(f"o_dtype: expected float16 or bfloat16, got {o_dtype}")
    packed = pack_custom_mask(custom_mask, packed_custom_mask, [(qo_len, kv_len)], device)
    variant = _variant(head_dim, pos_encoding_mode=pos_encoding_mode, sm_scale=sm_scale, q_scale=None,
                       k_scale=k_scale, v_scale=v_scale, causal=causal, window_left=window_left,
                       logits_soft_cap=logits_soft_cap, rope_scale=rope_scale, rope_theta=rope_theta)
    out = empty_output(qo_len, num_qo_heads, v.shape[-1], dtype=o_dtype, device=device)
    lse = empty_output(qo_len, num_qo_heads, dtype=torch.float32, device=device) if return_lse else None
    plain = packed is None and head_scales is None and k_scale is None and v_scale is None
    if not (plain and _on_batch_kernel(q, k, v, out, lse, variant, backend)):
        attention_fwd(q, k, v, out, lse, variant, packed_mask=packed,
                      alibi_slopes=_alibi(variant, num_qo_heads, device), head_scales=head_scales)
    return (out, lse) if return_lse else out


# On sm_90 a single prefill that the batch prefill's Gluon kernel covers runs on it, as a batch of
# one request through a ragged wrapper (H100, 2026-12-07: llama3-8b L4096 reads 294 TFLOP/s on
# the portable kernel here, 592 through the wrapper; benchmarks/RESULTS.md). A plan costs host
# time (0.1-0.35 ms), so planned wrappers are kept by shape and variant: a shape gets one at once
# when its work dwarfs that cost, else the second time it comes.
_PLANNED: collections.OrderedDict = collections.OrderedDict()
_SEEN: collections.OrderedDict = collections.OrderedDict()
_MAX_PLANNED = 32
_PLAN_AT_ONCE_FLOP = 2e11


def _on_batch_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                     lse: Optional[torch.Tensor], variant: Variant, backend: str) -> bool:
    """Runs the single prefill on the Gluon kernel and returns True where that applies: sm_90,
    16-bit q/k/v and output of one dtype, no mask, scales, RoPE or ALiBi, a head dim it covers,
    and row tiles x KV heads for at least half the SMs (the plans split no KV, so they share no
    workspace; fewer programs over a long KV want the portable kernel's split). Otherwise False:
    the portable kernel runs it."""
    qo_len, num_qo_heads, d_qk = q.shape
    kv_len, num_kv_heads, d_vo = v.shape
    if (is_interpreting() or torch.compiler.is_compiling() or q.dtype not in V.FLOAT16_TYPES
            or not q.dtype == k.dtype == v.dtype == out.dtype or variant.use_rope or variant.use_alibi
            or kv_len == 0):
        return False
    key = (q.device, qo_len, kv_len, num_qo_heads, num_kv_heads, d_qk, d_vo, q.dtype, variant, backend)
    wrapper = _PLANNED.get(key)
    if wrapper is None:  # what follows depends on the key alone: a planned shape passed it
        group = num_qo_heads // num_kv_heads
        tile = batch_prefill_tile(q.device, backend, q.dtype, k.dtype, d_qk, d_vo, 0, qo_len * group, False, False,
                                  False)
        if (not hopper_covers_fields(q.device, backend, q.dtype, k.dtype, d_qk, d_vo, 0, tile.block_m,
                                     tile.block_n, False)
                or 2 * -(-qo_len * group // tile.block_m) * num_kv_heads < num_sms(q.device)):
            return False
        flop = 4.0 * qo_len * kv_len * num_qo_heads * d_qk / (2 if variant.causal else 1)
        if torch.cuda.is_current_stream_capturing() or (key not in _SEEN and flop < _PLAN_AT_ONCE_FLOP):
            _remember(_SEEN, key, None)
            return False
        from .prefill import BatchPrefillWithRaggedKVCacheWrapper
        wrapper = BatchPrefillWithRaggedKVCacheWrapper(torch.empty(1 << 10, dtype=torch.uint8, device=q.device),
                                                       backend=backend)
        wrapper.plan(torch.tensor([0, qo_len], dtype=torch.int32), torch.tensor([0, kv_len], dtype=torch.int32),
                     num_qo_heads, num_kv_heads, d_qk, head_dim_vo=d_vo, causal=variant.causal,
                     window_left=variant.window_left, logits_soft_cap=variant.soft_cap or None,
                     sm_scale=variant.sm_scale, q_data_type=q.dtype, disable_split_kv=True)
        _remember(_PLANNED, key, wrapper)
    else:
        _PLANNED.move_to_end(key)
    wrapper.run(q, k, v, out=out, lse=lse, return_lse=lse is not None)
    return True


def _remember(cache: collections.OrderedDict, key, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _MAX_PLANNED:
        cache.popitem(last=False)


def _head_scales(scale_q, scale_k, scale_v, num_qo_heads: int, num_kv_heads: int, device):
    """fp32 (scale_q [H_qo], scale_k [H_kv], scale_v [H_kv]) from per-head tensors or
    one-element ones (per tensor); None when none is given. A missing one is 1."""
    if scale_q is None and scale_k is None and scale_v is None:
        return None
    out = []
    for name, t, heads in (("scale_q", scale_q, num_qo_heads), ("scale_k", scale_k, num_kv_heads),
                           ("scale_v", scale_v, num_kv_heads)):
        if t is None:
            out.append(torch.ones(heads, dtype=torch.float32, device=device))
            continue
        V.check_tensor(name, t, 1)
        if t.shape[0] not in (1, heads):
            raise ValueError(f"{name}: expected shape ({heads},) (one scale per head) or (1,), got {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"{name}: expected device {device}, got {t.device}")
        out.append(t.to(torch.float32).expand(heads).contiguous())
    return tuple(out)


single_prefill_with_kv_cache_return_lse = functools.partial(single_prefill_with_kv_cache, return_lse=True)
