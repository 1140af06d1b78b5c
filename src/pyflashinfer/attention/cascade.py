"""Attention-state merging and cascade attention (FlashInfer's `merge_state`,
`merge_state_in_place`, `merge_states`, `MultiLevelCascadeAttentionWrapper`).

An attention state is an output row ``v`` with its base-2 LSE ``s``: attention over two disjoint
key sets A and B merges exactly as

    s = log2(2^s_a + 2^s_b),   v = (2^s_a v_a + 2^s_b v_b) / 2^s

A state with s = -inf (no keys) contributes nothing; merging two of them gives v = 0, s = -inf.
Cascade attention runs one prefill per level (a shared prefix, then each request's own pages)
and merges their states.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import triton

from .. import _validate as V
from .._launch import empty_output, launch
from ..page import PagedKVCache
from .kernels.merge import merge_pair_kernel
from .launch import merge_states_into
from .decode import BatchDecodeWithPagedKVCacheWrapper
from .prefill import BatchPrefillWithPagedKVCacheWrapper
from .single import single_prefill_with_kv_cache

__all__ = ["merge_state", "merge_state_in_place", "merge_states", "MultiLevelCascadeAttentionWrapper",
           "BatchDecodeWithSharedPrefixPagedKVCacheWrapper", "BatchPrefillWithSharedPrefixPagedKVCacheWrapper"]


def _check_state(v_name: str, v: torch.Tensor, s_name: str, s: torch.Tensor, ndim: int) -> None:
    """v [..., H, D] fp16/bf16/fp32 with a contiguous last dim; s [..., H] fp32 of v's leading shape."""
    V.check_tensor(v_name, v, ndim)
    V.check_dtype(v_name, v, V.FLOAT16_TYPES + (torch.float32,))
    V.check_last_dim_contiguous(v_name, v)
    V.check_tensor(s_name, s, ndim - 1)
    V.check_dtype(s_name, s, (torch.float32,))
    if tuple(s.shape) != tuple(v.shape[:-1]):
        raise ValueError(f"{s_name}: expected shape {tuple(v.shape[:-1])} ({v_name}'s without its last dim), "
                         f"got {tuple(s.shape)}")


def _merge_pair(v_a, s_a, v_b, s_b, v_out, s_out, mask) -> None:
    n, h, d = v_a.shape
    if n * h == 0:
        return
    launch(
        merge_pair_kernel, (n * h,), num_warps=1 if d <= 64 else 2, num_stages=1,
        va_ptr=v_a, sa_ptr=s_a, vb_ptr=v_b, sb_ptr=s_b, vo_ptr=v_out, so_ptr=s_out, mask_ptr=mask,
        stride_van=v_a.stride(0), stride_vah=v_a.stride(1), stride_san=s_a.stride(0), stride_sah=s_a.stride(1),
        stride_vbn=v_b.stride(0), stride_vbh=v_b.stride(1), stride_sbn=s_b.stride(0), stride_sbh=s_b.stride(1),
        stride_von=v_out.stride(0), stride_voh=v_out.stride(1), stride_son=s_out.stride(0),
        stride_soh=s_out.stride(1), num_heads=h, HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d),
        HAS_MASK=mask is not None,
    )


def _check_pair(v_a, s_a, v_b, s_b) -> None:
    _check_state("v_a", v_a, "s_a", s_a, 3)
    _check_state("v_b", v_b, "s_b", s_b, 3)
    if v_b.shape != v_a.shape or v_b.dtype != v_a.dtype:
        raise ValueError(f"v_b: expected v_a's shape {tuple(v_a.shape)} and dtype {v_a.dtype}, got "
                         f"{tuple(v_b.shape)} {v_b.dtype}")
    V.check_device(v_a=v_a, s_a=s_a, v_b=v_b, s_b=s_b)


def merge_state(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor,
                s_b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Merge two attention states over disjoint key sets.

    Args:
        v_a, v_b: ``[L, H, D]`` outputs (fp16/bf16/fp32, same dtype).
        s_a, s_b: ``[L, H]`` fp32 base-2 LSEs.

    Returns:
        ``(v [L, H, D] in v_a's dtype, s [L, H] fp32)``.

    Example::

        o, lse = merge_state(o_prefix, lse_prefix, o_suffix, lse_suffix)
    """
    _check_pair(v_a, s_a, v_b, s_b)
    v = empty_output(*v_a.shape, dtype=v_a.dtype, device=v_a.device)
    s = empty_output(*s_a.shape, dtype=torch.float32, device=v_a.device)
    _merge_pair(v_a, s_a, v_b, s_b, v, s, None)
    return v, s


def merge_state_in_place(v: torch.Tensor, s: torch.Tensor, v_other: torch.Tensor, s_other: torch.Tensor,
                         mask: Optional[torch.Tensor] = None) -> None:
    r"""``(v, s) <- merge((v, s), (v_other, s_other))``, in place; with ``mask`` ([L] bool),
    only the rows where it is True (the others are left as they are).

    Shapes and dtypes as in :func:`merge_state`.
    """
    _check_pair(v, s, v_other, s_other)
    if mask is not None:
        V.check_tensor("mask", mask, 1)
        V.check_dtype("mask", mask, (torch.bool,))
        if mask.shape[0] != v.shape[0] or mask.device != v.device:
            raise ValueError(f"mask: expected shape ({v.shape[0]},) on {v.device}, got {tuple(mask.shape)} on "
                             f"{mask.device}")
    _merge_pair(v, s, v_other, s_other, v, s, mask)


def merge_states(v: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Merge S states per row: ``v [L, S, H, D]``, ``s [L, S, H]`` (fp32, base 2) ->
    ``(v [L, H, D] in v's dtype, s [L, H] fp32)``. S = 0 gives zeros and -inf."""
    _check_state("v", v, "s", s, 4)
    V.check_device(v=v, s=s)
    num_rows, _, num_heads, head_dim = v.shape
    out = empty_output(num_rows, num_heads, head_dim, dtype=v.dtype, device=v.device)
    lse = empty_output(num_rows, num_heads, dtype=torch.float32, device=v.device)
    merge_states_into(v.transpose(0, 1), s.transpose(0, 1), out, lse)  # the split axis first, as views
    return out, lse


class MultiLevelCascadeAttentionWrapper:
    r"""Cascade attention over a paged KV cache: one batch-prefill wrapper per level (level 0 is
    typically a prefix shared by the whole batch, the last level each request's own pages), their
    states merged. Only the last level is causal.

    Example::

        w = MultiLevelCascadeAttentionWrapper(2, torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
        w.plan([qo_indptr_shared, qo_indptr], [kv_indptr_shared, kv_indptr], [kv_indices_shared, kv_indices],
               [last_page_len_shared, last_page_len], 32, 8, 128, 16, causal=True, q_data_type=torch.bfloat16)
        out = w.run(q, paged_kv_cache)
    """

    def __init__(self, num_levels: int, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD",
                 use_cuda_graph: bool = False, qo_indptr_buf_arr: Optional[List[torch.Tensor]] = None,
                 paged_kv_indptr_buf_arr: Optional[List[torch.Tensor]] = None,
                 paged_kv_indices_buf_arr: Optional[List[torch.Tensor]] = None,
                 paged_kv_last_page_len_buf_arr: Optional[List[torch.Tensor]] = None) -> None:
        if not isinstance(num_levels, int) or num_levels < 1:
            raise ValueError(f"num_levels: expected an int >= 1, got {num_levels!r}")
        bufs = (qo_indptr_buf_arr, paged_kv_indptr_buf_arr, paged_kv_indices_buf_arr, paged_kv_last_page_len_buf_arr)
        if use_cuda_graph and any(b is None or len(b) != num_levels for b in bufs):
            raise ValueError(f"use_cuda_graph=True needs the four *_buf_arr lists, {num_levels} buffers each")
        self._wrappers = [
            BatchPrefillWithPagedKVCacheWrapper(
                float_workspace_buffer, kv_layout, use_cuda_graph,
                *((b[i] for b in bufs) if use_cuda_graph else ()))
            for i in range(num_levels)]
        self._num_levels = num_levels

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffers=None) -> None:
        for w in self._wrappers:
            w.reset_workspace_buffer(float_workspace_buffer)

    def plan(self, qo_indptr_arr: List[torch.Tensor], paged_kv_indptr_arr: List[torch.Tensor],
             paged_kv_indices_arr: List[torch.Tensor], paged_kv_last_page_len: List[torch.Tensor],
             num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int, causal: bool = False,
             **kwargs: Any) -> None:
        """Plan every level (lists of num_levels page tables); keyword arguments as in
        BatchPrefillWithPagedKVCacheWrapper.plan, `causal` applying to the last level only."""
        tables = (qo_indptr_arr, paged_kv_indptr_arr, paged_kv_indices_arr, paged_kv_last_page_len)
        if any(len(t) != self._num_levels for t in tables):
            raise ValueError(f"plan(): expected {self._num_levels} entries per list, got "
                             f"{[len(t) for t in tables]}")
        for i, w in enumerate(self._wrappers):
            w.plan(qo_indptr_arr[i], paged_kv_indptr_arr[i], paged_kv_indices_arr[i], paged_kv_last_page_len[i],
                   num_qo_heads, num_kv_heads, head_dim, page_size, causal=causal and i == self._num_levels - 1,
                   **kwargs)

    begin_forward = plan

    def run(self, q: torch.Tensor, paged_kv_cache: PagedKVCache) -> torch.Tensor:
        """q [total tokens, H_qo, D] -> out of q's shape: the last level's attention, merged with
        every other level's (in place)."""
        out, lse = self._wrappers[-1].run(q, paged_kv_cache, return_lse=True)
        for w in self._wrappers[:-1]:
            o, s = w.run(q, paged_kv_cache, return_lse=True)
            merge_state_in_place(out, lse, o, s)
        return out

    forward = run

    def end_forward(self) -> None:
        """No-op, kept for compatibility."""


def _with_shared_prefix(q, k_shared, v_shared, kv_layout, unique_out, unique_lse, **kw) -> torch.Tensor:
    """Merge the unique-KV states with every query's attention over the shared prefix (all of
    it: the prefix precedes each request's own keys)."""
    o, s = single_prefill_with_kv_cache(q, k_shared, v_shared, causal=False, kv_layout=kv_layout, return_lse=True,
                                        o_dtype=unique_out.dtype, **kw)
    merge_state_in_place(unique_out, unique_lse, o, s)
    return unique_out


class BatchDecodeWithSharedPrefixPagedKVCacheWrapper:
    r"""Legacy FlashInfer API: decode over a prefix shared by the whole batch (contiguous
    ``k_shared``/``v_shared``) plus each request's own paged KV. Prefer
    :class:`MultiLevelCascadeAttentionWrapper`.

    Example::

        w = BatchDecodeWithSharedPrefixPagedKVCacheWrapper(workspace)
        w.begin_forward(kv_indptr, kv_indices, kv_last_page_len, 32, 8, 128, 16, data_type=torch.bfloat16)
        out = w.forward(q, k_shared, v_shared, paged_kv_cache)
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD") -> None:
        self._layout = kv_layout
        self._unique = BatchDecodeWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        self._unique.reset_workspace_buffer(float_workspace_buffer)

    def begin_forward(self, unique_kv_indptr: torch.Tensor, unique_kv_indices: torch.Tensor,
                      unique_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim: int,
                      page_size: int, data_type: Any = "float16") -> None:
        self._unique.plan(unique_kv_indptr, unique_kv_indices, unique_kv_last_page_len, num_qo_heads, num_kv_heads,
                          head_dim, page_size, data_type=data_type)

    def forward(self, q: torch.Tensor, k_shared: torch.Tensor, v_shared: torch.Tensor, unique_kv_cache: PagedKVCache,
                allow_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
                rope_scale: Optional[float] = None, rope_theta: Optional[float] = None) -> torch.Tensor:
        """q [B, H_qo, D]; k_shared/v_shared [prefix, H_kv, D] (kv_layout); -> out [B, H_qo, D]."""
        if sm_scale is not None or rope_scale is not None or rope_theta is not None:
            raise NotImplementedError("sm_scale/rope_* at forward(): use MultiLevelCascadeAttentionWrapper, whose "
                                      "plan() takes them")
        out, lse = self._unique.run(q, unique_kv_cache, return_lse=True)
        return _with_shared_prefix(q, k_shared, v_shared, self._layout, out, lse)

    def end_forward(self) -> None:
        """No-op, kept for compatibility."""


class BatchPrefillWithSharedPrefixPagedKVCacheWrapper:
    r"""Legacy FlashInfer API: prefill over a prefix shared by the whole batch (contiguous
    ``k_shared``/``v_shared``, seen in full by every query) plus each request's own paged KV
    (causal there when asked). Prefer :class:`MultiLevelCascadeAttentionWrapper`.
    """

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD") -> None:
        self._layout = kv_layout
        self._unique = BatchPrefillWithPagedKVCacheWrapper(float_workspace_buffer, kv_layout)
        self._tables = None
        self._planned = None

    def reset_workspace_buffer(self, float_workspace_buffer: torch.Tensor, int_workspace_buffer=None) -> None:
        self._unique.reset_workspace_buffer(float_workspace_buffer)

    def begin_forward(self, qo_indptr: torch.Tensor, paged_kv_indptr: torch.Tensor, paged_kv_indices: torch.Tensor,
                      paged_kv_last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim: int,
                      page_size: int) -> None:
        """Keeps the page table; the plan is made at forward(), which takes causal and the scales."""
        self._tables = (qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
                        num_kv_heads, head_dim, page_size)
        self._planned = None

    def forward(self, q: torch.Tensor, k_shared: torch.Tensor, v_shared: torch.Tensor, unique_kv_cache: PagedKVCache,
                causal: bool = False, use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None,
                rope_scale: Optional[float] = None, rope_theta: Optional[float] = None) -> torch.Tensor:
        """q [qo_indptr[-1], H_qo, D] -> out of q's shape."""
        if self._tables is None:
            raise RuntimeError("forward() before begin_forward(): pass the batch's page table first")
        if rope_scale is not None or rope_theta is not None:
            raise NotImplementedError("rope_scale/rope_theta: no RoPE is applied by this legacy wrapper")
        key = (causal, sm_scale, q.dtype, unique_kv_cache[0].dtype if isinstance(unique_kv_cache, (tuple, list))
               else unique_kv_cache.dtype)
        if self._planned != key:  # (re)plan for what forward() fixes
            self._unique.plan(*self._tables, causal=causal, sm_scale=sm_scale, q_data_type=q.dtype,
                              kv_data_type=key[3])
            self._planned = key
        out, lse = self._unique.run(q, unique_kv_cache, return_lse=True)
        return _with_shared_prefix(q, k_shared, v_shared, self._layout, out, lse, sm_scale=sm_scale)

    def end_forward(self) -> None:
        """No-op, kept for compatibility."""
