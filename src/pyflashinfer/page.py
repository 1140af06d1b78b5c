"""Paged KV cache: layouts, appends and page-table helpers (FlashInfer's `flashinfer.page`).

A cache is a tuple ``(k_cache, v_cache)`` or one tensor holding both on axis 1:

    NHD: k_cache [num_pages, page_size, H_kv, D]     one tensor: [num_pages, 2, page_size, H_kv, D]
    HND: k_cache [num_pages, H_kv, page_size, D]     one tensor: [num_pages, 2, H_kv, page_size, D]

3-D caches (4-D for one tensor) mean page_size 1. Request b owns pages
``kv_indices[kv_indptr[b]:kv_indptr[b + 1]]``, the last one filled to ``kv_last_page_len[b]``:
``seq_len = max(num_pages - 1, 0) * page_size + last_page_len``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from . import _validate as V
from ._launch import launch

PagedKVCache = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class CacheView:
    """k/v of a paged cache with the strides the kernels take (elements)."""

    k: torch.Tensor
    v: torch.Tensor
    page_size: int
    num_kv_heads: int
    head_dim: int
    stride_page: int
    stride_tok: int
    stride_head: int
    v_stride_page: int
    v_stride_tok: int
    v_stride_head: int


def unpack_paged_kv_cache(paged_kv_cache: PagedKVCache, kv_layout: str = "NHD") -> CacheView:
    V.check_kv_layout(kv_layout)
    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise ValueError(f"paged_kv_cache: expected a (k_cache, v_cache) pair, got {len(paged_kv_cache)} tensors")
        k, v = paged_kv_cache
        V.check_tensor("k_cache", k, (3, 4))
        V.check_tensor("v_cache", v, (3, 4))
    else:
        V.check_tensor("paged_kv_cache", paged_kv_cache, (4, 5))
        if paged_kv_cache.shape[1] != 2:
            raise ValueError(f"paged_kv_cache: expected [num_pages, 2, ...] with k and v on axis 1, "
                             f"got shape {tuple(paged_kv_cache.shape)}")
        k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
    if k.dim() == 3:  # page_size 1
        k, v = (k.unsqueeze(1), v.unsqueeze(1)) if kv_layout == "NHD" else (k.unsqueeze(2), v.unsqueeze(2))
    if k.shape[:3] != v.shape[:3] or k.dtype != v.dtype or k.device != v.device:
        raise ValueError(f"k_cache {tuple(k.shape)} {k.dtype} and v_cache {tuple(v.shape)} {v.dtype} must agree "
                         "on pages, page size, heads, dtype and device")
    V.check_last_dim_contiguous("k_cache", k)
    V.check_last_dim_contiguous("v_cache", v)
    tok, head = (1, 2) if kv_layout == "NHD" else (2, 1)
    return CacheView(k, v, k.shape[tok], k.shape[head], k.shape[-1], k.stride(0), k.stride(tok), k.stride(head),
                     v.stride(0), v.stride(tok), v.stride(head))


def get_seq_lens(kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, page_size: int) -> torch.Tensor:
    """KV length of each request: ``max(pages - 1, 0) * page_size + last_page_len`` (0 with no pages)."""
    pages = kv_indptr[1:] - kv_indptr[:-1]
    return torch.where(pages > 0, (pages - 1).clamp(min=0) * page_size + kv_last_page_len, 0)


def get_batch_indices_positions(append_indptr: torch.Tensor, seq_lens: torch.Tensor, nnz: int,
                                batch_indices: Optional[torch.Tensor] = None,
                                positions: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each of the nnz appended tokens: its request and its position in that request.

    Token j of request b (appending ``append_indptr[b+1] - append_indptr[b]`` tokens to a
    request that then holds ``seq_lens[b]``) sits at ``seq_lens[b] - append_len[b] + j``.
    Device-side torch ops only: no host sync. Returns int32 tensors."""
    device = append_indptr.device
    tokens = torch.arange(nnz, device=device, dtype=append_indptr.dtype)
    b = torch.searchsorted(append_indptr[1:].contiguous(), tokens, right=True)
    append_len = append_indptr[1:] - append_indptr[:-1]
    pos = tokens - append_indptr[b] + (seq_lens.to(append_indptr.dtype) - append_len)[b]
    b, pos = b.to(torch.int32), pos.to(torch.int32)
    if batch_indices is not None:
        batch_indices.copy_(b)
        b = batch_indices
    if positions is not None:
        positions.copy_(pos)
        pos = positions
    return b, pos


@triton.jit
def _append_kernel(
    k_src_ptr, v_src_ptr, batch_ptr, pos_ptr, k_ptr, v_ptr, indices_ptr, indptr_ptr,
    stride_src_kn, stride_src_kh, stride_src_vn, stride_src_vh,
    stride_page, stride_tok, stride_head, v_stride_page, v_stride_tok, v_stride_head,
    num_kv_heads,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_n = tl.program_id(0).to(tl.int64)
    b = tl.load(batch_ptr + pid_n)
    pos = tl.load(pos_ptr + pid_n)
    page = tl.load(indices_ptr + tl.load(indptr_ptr + b) + pos // PAGE_SIZE).to(tl.int64)
    slot = (pos % PAGE_SIZE).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h < num_kv_heads)[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(k_src_ptr + pid_n * stride_src_kn + offs_h[:, None] * stride_src_kh + offs_d[None, :], mask=mask)
    v = tl.load(v_src_ptr + pid_n * stride_src_vn + offs_h[:, None] * stride_src_vh + offs_d[None, :], mask=mask)
    tl.store(k_ptr + page * stride_page + slot * stride_tok + offs_h[:, None] * stride_head + offs_d[None, :],
             k.to(k_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + page * v_stride_page + slot * v_stride_tok + offs_h[:, None] * v_stride_head + offs_d[None, :],
             v.to(v_ptr.dtype.element_ty), mask=mask)


def append_paged_kv_cache(append_key: torch.Tensor, append_value: torch.Tensor, batch_indices: torch.Tensor,
                          positions: torch.Tensor, paged_kv_cache: PagedKVCache, kv_indices: torch.Tensor,
                          kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, kv_layout: str = "NHD") -> None:
    """Write new tokens into a paged cache whose page table already counts them.

    append_key/append_value [nnz, H_kv, D] (fp16/bf16; cast to the cache dtype, fp8 included);
    batch_indices/positions [nnz] from :func:`get_batch_indices_positions`."""
    cache = unpack_paged_kv_cache(paged_kv_cache, kv_layout)
    V.check_tensor("append_key", append_key, 3)
    V.check_tensor("append_value", append_value, 3)
    nnz = append_key.shape[0]
    expected = (nnz, cache.num_kv_heads, cache.head_dim)
    V.check_shape("append_key", append_key, expected)
    V.check_shape("append_value", append_value, expected)
    for name, t in (("batch_indices", batch_indices), ("positions", positions)):
        V.check_tensor(name, t, 1)
        if t.shape[0] != nnz:
            raise ValueError(f"{name}: expected {nnz} entries (one per appended token), got {t.shape[0]}")
    V.check_last_dim_contiguous("append_key", append_key)
    V.check_last_dim_contiguous("append_value", append_value)
    V.check_device(append_key=append_key, append_value=append_value, k_cache=cache.k, kv_indices=kv_indices,
                   kv_indptr=kv_indptr, batch_indices=batch_indices, positions=positions)
    if nnz == 0:
        return
    launch(
        _append_kernel, (nnz,), num_warps=4, num_stages=1,
        k_src_ptr=append_key, v_src_ptr=append_value, batch_ptr=batch_indices, pos_ptr=positions,
        k_ptr=cache.k, v_ptr=cache.v, indices_ptr=kv_indices, indptr_ptr=kv_indptr,
        stride_src_kn=append_key.stride(0), stride_src_kh=append_key.stride(1),
        stride_src_vn=append_value.stride(0), stride_src_vh=append_value.stride(1),
        stride_page=cache.stride_page, stride_tok=cache.stride_tok, stride_head=cache.stride_head,
        v_stride_page=cache.v_stride_page, v_stride_tok=cache.v_stride_tok, v_stride_head=cache.v_stride_head,
        num_kv_heads=cache.num_kv_heads, PAGE_SIZE=cache.page_size, HEAD_DIM=cache.head_dim,
        BLOCK_D=triton.next_power_of_2(cache.head_dim), BLOCK_H=triton.next_power_of_2(cache.num_kv_heads),
    )
