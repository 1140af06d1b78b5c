"""Rotary position embedding of q and k (FlashInfer's `apply_rope*` and `apply_llama31_rope*`).

Each token's position comes from `pos_ids`, or from a ragged batch (`indptr`, `offsets`):
token i of request b (indptr[b] <= i < indptr[b+1]) sits at offsets[b] + i - indptr[b].
Only the first `rotary_dim` dims of each head rotate, in pairs (see kernels.py)::

    interleave=False (rotate half):  (x[i], x[i + rotary_dim/2])     NeoX / Llama
    interleave=True:                 (x[2i], x[2i + 1])              GPT-J
    (a, b) -> (a cos - b sin, b cos + a sin),   angle = pos * theta^(-2i/rotary_dim) / rope_scale

q and k are `[nnz, H, D]` views whose last dim is contiguous; token and head strides are free, so
slices of a fused qkv tensor are rotated in place without a copy. The math runs in fp32.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import triton

from .. import _validate as V
from .._launch import ReplayCache, empty_output, launch, replay_key
from .kernels import rope_kernel

__all__ = [
    "apply_rope", "apply_rope_inplace", "apply_rope_pos_ids", "apply_rope_pos_ids_inplace",
    "apply_llama31_rope", "apply_llama31_rope_inplace", "apply_llama31_rope_pos_ids",
    "apply_llama31_rope_pos_ids_inplace", "apply_rope_with_cos_sin_cache",
    "apply_rope_with_cos_sin_cache_inplace",
]

_INDEX_TYPES = (torch.int32, torch.int64)
# Elements of one [heads, rotary_dim/2] half-tile a program holds per step (fp32 registers):
# 2048 = 32 heads x d128, the Llama q of one token, in one step at 16 values per thread and 4 warps.
_TILE_ELEMS = 2048


def _check_qk(q: torch.Tensor, k: torch.Tensor) -> torch.device:
    V.check_tensor("q", q, 3)
    V.check_tensor("k", k, 3)
    V.check_dtype("q", q, V.FLOAT16_TYPES)
    if k.dtype != q.dtype:
        raise TypeError(f"k: expected the dtype of q ({q.dtype}), got {k.dtype}")
    device = V.check_device(q=q, k=k)
    V.check_last_dim_contiguous("q", q)
    V.check_last_dim_contiguous("k", k)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k: expected {q.shape[0]} tokens (q.shape[0]), got shape {tuple(k.shape)}")
    if k.shape[2] != q.shape[2]:
        raise ValueError(f"k: expected head_dim {q.shape[2]} (q's), got shape {tuple(k.shape)}")
    return device


def _rotary_dim(rotary_dim: Optional[int], head_dim: int) -> int:
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    if not isinstance(rotary_dim, int) or rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim: expected an even int in [2, head_dim={head_dim}], got {rotary_dim!r}")
    return rotary_dim


def _check_index(name: str, t: torch.Tensor, length: Optional[int], device: torch.device) -> None:
    V.check_tensor(name, t, 1)
    V.check_dtype(name, t, _INDEX_TYPES)
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name}: expected shape ({length},), got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name}: expected device {device} (q's), got {t.device}")


def _pos_ids_from_indptr(indptr: torch.Tensor, offsets: torch.Tensor, nnz: int, device) -> torch.Tensor:
    """pos_ids [nnz] from a ragged batch with device ops only (no host sync, graph-capturable)."""
    _check_index("offsets", offsets, None, device)
    _check_index("indptr", indptr, offsets.shape[0] + 1, device)
    if nnz > 0 and offsets.shape[0] == 0:
        raise ValueError(f"indptr/offsets describe an empty batch but q has {nnz} tokens")
    token = torch.arange(nnz, dtype=indptr.dtype, device=device)
    # request of each token; tokens past indptr[-1] (a malformed batch) are clamped into the last one
    req = torch.searchsorted(indptr[1:].contiguous(), token, right=True).clamp_(max=max(offsets.shape[0] - 1, 0))
    return offsets.long()[req] + (token.long() - indptr.long()[req])


_REPLAYS = ReplayCache()


def _rope(q, k, q_out, k_out, pos_ids, *, rotary_dim, interleave, rope_scale=1.0, rope_theta=1e4,
          llama31=None, cache=None):
    """Launch the kernel: q/k [nnz, H, D] -> q_out/k_out (which may be q/k themselves).
    Returns its Replay (None on CPU or for no tokens)."""
    nnz, num_q_heads, head_dim = q.shape
    num_k_heads = k.shape[1]
    if nnz == 0:
        return None
    rcp_scale, smooth_a, smooth_b = 1.0 / float(rope_scale), 0.0, 0.0
    if llama31 is not None:
        low, high, old = (float(llama31[n]) for n in ("low_freq_factor", "high_freq_factor", "old_context_len"))
        if not 0 < low < high:
            raise ValueError(f"llama31 rope: expected 0 < low_freq_factor < high_freq_factor, got {low} and {high}")
        smooth_a = old / (2 * math.pi * (high - low))
        smooth_b = -low / (high - low)
    block_r = triton.next_power_of_2(rotary_dim // 2)
    heads_per_step = max(1, _TILE_ELEMS // block_r)
    return launch(
        rope_kernel, (nnz,), num_warps=4, num_stages=1,
        q_ptr=q, k_ptr=k, q_out_ptr=q_out, k_out_ptr=k_out, pos_ptr=pos_ids, cos_sin_ptr=cache,
        stride_qn=q.stride(0), stride_qh=q.stride(1), stride_kn=k.stride(0), stride_kh=k.stride(1),
        stride_qon=q_out.stride(0), stride_qoh=q_out.stride(1),
        stride_kon=k_out.stride(0), stride_koh=k_out.stride(1),
        stride_cs=0 if cache is None else cache.stride(0),
        num_q_heads=num_q_heads, num_k_heads=num_k_heads,
        rcp_scale=rcp_scale, log2_theta=math.log2(float(rope_theta)), smooth_a=smooth_a, smooth_b=smooth_b,
        HEAD_DIM=head_dim, ROTARY_DIM=rotary_dim, BLOCK_R=block_r,
        BLOCK_P=triton.next_power_of_2(max(head_dim - rotary_dim, 1)),
        BLOCK_HQ=min(triton.next_power_of_2(num_q_heads), heads_per_step),
        BLOCK_HK=min(triton.next_power_of_2(num_k_heads), heads_per_step),
        IS_INTERLEAVE=bool(interleave), IS_LLAMA31=llama31 is not None, HAS_COS_SIN_CACHE=cache is not None,
        COPY_PASS=q_out is not q and rotary_dim < head_dim,
    )


def _run(q, k, pos_ids, indptr, offsets, inplace, rotary_dim, interleave, **freq):
    key = replay_key(q, k, pos_ids, indptr, offsets, inplace, rotary_dim, interleave, freq)
    replay = _REPLAYS.get(key)
    if replay is not None:  # checked when first seen
        if pos_ids is None:
            pos_ids = _pos_ids_from_indptr(indptr, offsets, q.shape[0], q.device)
        q_out = q if inplace else empty_output(*q.shape, dtype=q.dtype, device=q.device)
        k_out = k if inplace else empty_output(*k.shape, dtype=k.dtype, device=k.device)
        replay(q_ptr=q, k_ptr=k, q_out_ptr=q_out, k_out_ptr=k_out, pos_ptr=pos_ids)
        return None if inplace else (q_out, k_out)
    device = _check_qk(q, k)
    rotary_dim = _rotary_dim(rotary_dim, q.shape[2])
    if pos_ids is None:
        pos_ids = _pos_ids_from_indptr(indptr, offsets, q.shape[0], device)
    else:
        _check_index("pos_ids", pos_ids, q.shape[0], device)
    if inplace:
        q_out, k_out = q, k
    else:
        q_out = empty_output(*q.shape, dtype=q.dtype, device=device)
        k_out = empty_output(*k.shape, dtype=k.dtype, device=device)
    _REPLAYS.put(key, _rope(q, k, q_out, k_out, pos_ids, rotary_dim=rotary_dim, interleave=interleave, **freq))
    return None if inplace else (q_out, k_out)


def apply_rope_pos_ids(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor, rotary_dim: Optional[int] = None,
                       interleave: bool = False, rope_scale: float = 1, rope_theta: float = 1e4,
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""RoPE of q and k at explicit positions: ``x -> rotate(x, pos_ids[i] * f)``, out of place.

    Args:
        q: ``[nnz, H_q, D]`` fp16/bf16, last dim contiguous (other strides free).
        k: ``[nnz, H_k, D]``, q's dtype (H_k may differ from H_q).
        pos_ids: ``[nnz]`` int32/int64 position of each token.
        rotary_dim: dims ``[0, rotary_dim)`` rotate (even; default D); the rest are copied.
        interleave: rotate pairs ``(2i, 2i+1)`` instead of ``(i, i + rotary_dim/2)``.
        rope_scale: frequencies are divided by it. rope_theta: the base (default 1e4).

    Returns:
        ``(q_rope, k_rope)``, new contiguous tensors shaped like q and k.

    Example::

        q_rope, k_rope = apply_rope_pos_ids(q, k, positions, rope_theta=5e5)
    """
    return _run(q, k, pos_ids, None, None, False, rotary_dim, interleave,
                rope_scale=rope_scale, rope_theta=rope_theta)


def apply_rope_pos_ids_inplace(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor,
                               rotary_dim: Optional[int] = None, interleave: bool = False,
                               rope_scale: float = 1, rope_theta: float = 1e4) -> None:
    """:func:`apply_rope_pos_ids` writing into q and k (strided views are updated in place)."""
    _run(q, k, pos_ids, None, None, True, rotary_dim, interleave, rope_scale=rope_scale, rope_theta=rope_theta)


def apply_rope(q: torch.Tensor, k: torch.Tensor, indptr: torch.Tensor, offsets: torch.Tensor,
               rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 1,
               rope_theta: float = 1e4) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""RoPE of a ragged batch: token i of request b sits at ``offsets[b] + i - indptr[b]``.

    Args:
        q, k: ``[nnz, H, D]`` as in :func:`apply_rope_pos_ids`, nnz = ``indptr[-1]``.
        indptr: ``[batch + 1]`` int32/int64, request b owns tokens ``[indptr[b], indptr[b+1])``.
        offsets: ``[batch]`` int32/int64, position of each request's first token.
        rotary_dim, interleave, rope_scale, rope_theta: as in :func:`apply_rope_pos_ids`.

    Returns:
        ``(q_rope, k_rope)``. Positions are expanded on the device: no host sync.

    Example::

        q_rope, k_rope = apply_rope(q, k, qo_indptr, kv_len - qo_len)
    """
    return _run(q, k, None, indptr, offsets, False, rotary_dim, interleave,
                rope_scale=rope_scale, rope_theta=rope_theta)


def apply_rope_inplace(q: torch.Tensor, k: torch.Tensor, indptr: torch.Tensor, offsets: torch.Tensor,
                       rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 1,
                       rope_theta: float = 1e4) -> None:
    """:func:`apply_rope` writing into q and k."""
    _run(q, k, None, indptr, offsets, True, rotary_dim, interleave, rope_scale=rope_scale, rope_theta=rope_theta)


def _llama31(low_freq_factor, high_freq_factor, old_context_len) -> dict:
    return dict(low_freq_factor=low_freq_factor, high_freq_factor=high_freq_factor, old_context_len=old_context_len)


def apply_llama31_rope_pos_ids(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor,
                               rotary_dim: Optional[int] = None, interleave: bool = False,
                               rope_scale: float = 8, rope_theta: float = 5e5, low_freq_factor: float = 1,
                               high_freq_factor: float = 4, old_context_len: int = 8192,
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Llama 3.1 RoPE: each frequency f is smoothed towards ``f / rope_scale``.

    ``s = clamp((old_context_len * f / (2 pi) - low) / (high - low), 0, 1)``,
    ``f' = (1 - s) f / rope_scale + s f``: wavelengths longer than ``old_context_len / low``
    are stretched by rope_scale, those shorter than ``old_context_len / high`` are kept.

    Args:
        q, k, pos_ids, rotary_dim, interleave: as in :func:`apply_rope_pos_ids`.
        rope_scale (8), rope_theta (5e5), low_freq_factor (1), high_freq_factor (4),
        old_context_len (8192): Llama 3.1's defaults.

    Returns:
        ``(q_rope, k_rope)``.

    Example::

        q_rope, k_rope = apply_llama31_rope_pos_ids(q, k, positions)
    """
    return _run(q, k, pos_ids, None, None, False, rotary_dim, interleave, rope_scale=rope_scale,
                rope_theta=rope_theta, llama31=_llama31(low_freq_factor, high_freq_factor, old_context_len))


def apply_llama31_rope_pos_ids_inplace(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor,
                                       rotary_dim: Optional[int] = None, interleave: bool = False,
                                       rope_scale: float = 8, rope_theta: float = 5e5,
                                       low_freq_factor: float = 1, high_freq_factor: float = 4,
                                       old_context_len: int = 8192) -> None:
    """:func:`apply_llama31_rope_pos_ids` writing into q and k."""
    _run(q, k, pos_ids, None, None, True, rotary_dim, interleave, rope_scale=rope_scale,
         rope_theta=rope_theta, llama31=_llama31(low_freq_factor, high_freq_factor, old_context_len))


def apply_llama31_rope(q: torch.Tensor, k: torch.Tensor, indptr: torch.Tensor, offsets: torch.Tensor,
                       rotary_dim: Optional[int] = None, interleave: bool = False, rope_scale: float = 8,
                       rope_theta: float = 5e5, low_freq_factor: float = 1, high_freq_factor: float = 4,
                       old_context_len: int = 8192) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`apply_llama31_rope_pos_ids` with positions from (indptr, offsets) as in :func:`apply_rope`."""
    return _run(q, k, None, indptr, offsets, False, rotary_dim, interleave, rope_scale=rope_scale,
                rope_theta=rope_theta, llama31=_llama31(low_freq_factor, high_freq_factor, old_context_len))


def apply_llama31_rope_inplace(q: torch.Tensor, k: torch.Tensor, indptr: torch.Tensor, offsets: torch.Tensor,
                               rotary_dim: Optional[int] = None, interleave: bool = False,
                               rope_scale: float = 8, rope_theta: float = 5e5, low_freq_factor: float = 1,
                               high_freq_factor: float = 4, old_context_len: int = 8192) -> None:
    """:func:`apply_llama31_rope` writing into q and k."""
    _run(q, k, None, indptr, offsets, True, rotary_dim, interleave, rope_scale=rope_scale,
         rope_theta=rope_theta, llama31=_llama31(low_freq_factor, high_freq_factor, old_context_len))


def _cache_views(positions, query, key, head_size, cos_sin_cache):
    """[nnz, H * head_size] (or [nnz, H, head_size]) -> [nnz, H, head_size] views, checked."""
    if not isinstance(head_size, int) or head_size <= 0:
        raise ValueError(f"head_size: expected a positive int, got {head_size!r}")
    views = []
    for name, t in (("query", query), ("key", key)):
        V.check_tensor(name, t, (2, 3))
        if t.dim() == 3 and t.shape[2] != head_size:
            raise ValueError(f"{name}: expected head_size {head_size} in the last dim, got shape {tuple(t.shape)}")
        if t.dim() == 2 and t.shape[1] % head_size:
            raise ValueError(f"{name}: expected the last dim to be a multiple of head_size={head_size}, "
                             f"got shape {tuple(t.shape)}")
        V.check_last_dim_contiguous(name, t)
        views.append(t if t.dim() == 3 else t.view(t.shape[0], t.shape[1] // head_size, head_size))
    V.check_tensor("cos_sin_cache", cos_sin_cache, 2)
    if cos_sin_cache.dtype != torch.float32:
        raise ValueError(f"cos_sin_cache: expected dtype float32, got {cos_sin_cache.dtype}")
    V.check_last_dim_contiguous("cos_sin_cache", cos_sin_cache)
    q, k = views
    device = _check_qk(q, k)
    rotary_dim = cos_sin_cache.shape[1]
    if rotary_dim % 2 or not 0 < rotary_dim <= head_size:
        raise ValueError(f"cos_sin_cache: expected an even rotary_dim in [2, head_size={head_size}] as its "
                         f"second dim, got shape {tuple(cos_sin_cache.shape)}")
    if cos_sin_cache.device != device:
        raise ValueError(f"cos_sin_cache: expected device {device} (query's), got {cos_sin_cache.device}")
    _check_index("positions", positions, q.shape[0], device)
    return q, k, rotary_dim


def apply_rope_with_cos_sin_cache(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                                  head_size: int, cos_sin_cache: torch.Tensor, is_neox: bool = True,
                                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""RoPE with a precomputed table (vLLM / SGLang layout): cos, sin = cache[pos].chunk(2).

    Args:
        positions: ``[nnz]`` int32/int64.
        query: ``[nnz, H_q * head_size]`` fp16/bf16 (``[nnz, H_q, head_size]`` also accepted);
            the last dim contiguous, the token stride free.
        key: ``[nnz, H_k * head_size]``, query's dtype.
        head_size: D. cos_sin_cache: **float32** ``[max_pos, rotary_dim]``, cos in the first
            half of each row, sin in the second; dims from rotary_dim on are copied.
        is_neox: True rotates halves, False rotates interleaved pairs.

    Returns:
        ``(query_out, key_out)`` shaped like query and key.

    Example::

        q, k = apply_rope_with_cos_sin_cache(positions, q, k, 128, cos_sin_cache)
    """
    return _run_cached(positions, query, key, head_size, cos_sin_cache, is_neox, inplace=False)


def apply_rope_with_cos_sin_cache_inplace(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                                          head_size: int, cos_sin_cache: torch.Tensor,
                                          is_neox: bool = True) -> None:
    """:func:`apply_rope_with_cos_sin_cache` writing into query and key."""
    _run_cached(positions, query, key, head_size, cos_sin_cache, is_neox, inplace=True)


def _run_cached(positions, query, key, head_size, cos_sin_cache, is_neox, inplace):
    replay_id = replay_key(positions, query, key, head_size, cos_sin_cache, is_neox, inplace)
    replay = _REPLAYS.get(replay_id)
    if replay is None:  # first seen: check, launch and remember
        q, k, rotary_dim = _cache_views(positions, query, key, head_size, cos_sin_cache)
    if inplace:
        query_out, key_out = query, key
    else:
        query_out = empty_output(*query.shape, dtype=query.dtype, device=query.device)
        key_out = empty_output(*key.shape, dtype=key.dtype, device=key.device)
    if replay is not None:
        replay(q_ptr=query, k_ptr=key, q_out_ptr=query_out, k_out_ptr=key_out, pos_ptr=positions,
               cos_sin_ptr=cos_sin_cache)
    else:
        _REPLAYS.put(replay_id, _rope(q, k, query_out.view(q.shape), key_out.view(k.shape), positions,
                                      rotary_dim=rotary_dim, interleave=not is_neox, cache=cos_sin_cache))
    return None if inplace else (query_out, key_out)
