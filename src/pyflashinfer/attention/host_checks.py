"""Host-side checks the batch wrappers' plan() share: indptrs, page tables, planned dtypes.

plan() may read small metadata on the host (FlashInfer's does too); these turn what it reads
into int32 host tensors and reject bad values with a ValueError/TypeError naming them.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .. import _validate as V
from .._launch import empty_output
from ..utils import canonicalize_dtype


def host_int32(name: str, t: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
    """A 1-D int32/int64 tensor (of `length` entries) copied to the host as int32."""
    V.check_tensor(name, t, 1)
    if t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: expected an int32 or int64 tensor, got {t.dtype}")
    if length is not None and t.shape[0] != length:
        raise ValueError(f"{name}: expected {length} entries, got {t.shape[0]}")
    return t.to("cpu", torch.int32)


def host_indptr(name: str, t: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
    """An indptr on the host: non-decreasing offsets starting at 0."""
    h = host_int32(name, t, length)
    if h.numel() < 1 or h[0] != 0 or bool((h[1:] < h[:-1]).any()):
        raise ValueError(f"{name}: expected non-decreasing offsets starting at 0, got {h.tolist()[:16]}")
    return h


def host_page_table(indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, page_size: int,
                    names=("indptr", "indices", "last_page_len"), indptr_host: Optional[torch.Tensor] = None,
                    read_last_page_len: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a page table (indptr [B+1], indices, last_page_len [B] in 1..page_size, 0 for a
    request without pages) and return (indptr, seq_lens) as int32 host tensors.

    indptr_host: indptr's values already on the host, read instead of indptr (no device-to-host
    copy). read_last_page_len=False with page_size 1 takes every non-empty request's last page
    as holding its one token, without reading last_page_len (a copy when it is on the GPU)."""
    n_indptr, n_indices, n_last = names
    if not isinstance(page_size, int) or page_size < 1:
        raise ValueError(f"page_size: expected a positive int, got {page_size!r}")
    V.check_tensor(n_last, last_page_len, 1)
    batch = last_page_len.shape[0]
    indptr_h = host_indptr(n_indptr, indptr if indptr_host is None else indptr_host, batch + 1)
    V.check_tensor(n_indices, indices, 1)
    if indices.shape[0] < int(indptr_h[-1]):
        raise ValueError(f"{n_indices}: expected at least {n_indptr}[-1] = {int(indptr_h[-1])} page ids, "
                         f"got {indices.shape[0]}")
    pages = indptr_h[1:] - indptr_h[:-1]
    if page_size == 1 and not read_last_page_len:
        return indptr_h, pages
    last_h = host_int32(n_last, last_page_len)
    bad = ((pages > 0) & ((last_h < 1) | (last_h > page_size))) | ((pages == 0) & (last_h != 0))
    if bool(bad.any()):
        b = int(bad.nonzero()[0])
        raise ValueError(f"{n_last}[{b}] = {int(last_h[b])}: expected 1..page_size ({page_size}) for a "
                         f"request with pages, 0 for an empty one ({int(pages[b])} pages)")
    seq = torch.where(pages > 0, (pages - 1).clamp(min=0) * page_size + last_h, 0).to(torch.int32)
    return indptr_h, seq


def planned_dtypes(q_data_type: Union[str, torch.dtype, None], kv_data_type=None, o_data_type=None,
                   data_type=None, allow_fp8_q: bool = False) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(q, kv, o) dtypes fixed at plan time: kv defaults to q (fp8 allowed), o to q (float16 for
    an fp8 q, which allow_fp8_q admits with an fp8 KV); `data_type` is FlashInfer's deprecated
    alias for both q and kv."""
    q_dtype = canonicalize_dtype(q_data_type if data_type is None else data_type)
    kv_dtype = canonicalize_dtype(kv_data_type) or canonicalize_dtype(data_type) or q_dtype
    fp8_q = allow_fp8_q and q_dtype in V.FP8_TYPES
    o_dtype = canonicalize_dtype(o_data_type) or (torch.float16 if fp8_q else q_dtype)
    if fp8_q and kv_dtype not in V.FP8_TYPES:
        raise TypeError(f"kv_data_type: an fp8 q needs an fp8 KV, got {kv_dtype}")
    if q_dtype not in V.FLOAT16_TYPES and not fp8_q:
        expected = "float16, bfloat16 or fp8 (with an fp8 KV)" if allow_fp8_q else "float16 or bfloat16"
        raise TypeError(f"q_data_type: expected {expected}, got {q_dtype}")
    if kv_dtype not in V.KV_TYPES or (kv_dtype in V.FLOAT16_TYPES and kv_dtype != q_dtype):
        raise TypeError(f"kv_data_type: expected {q_dtype} or an fp8 type, got {kv_dtype}")
    if o_dtype not in V.FLOAT16_TYPES:
        raise TypeError(f"o_data_type: expected float16 or bfloat16, got {o_dtype}")
    return q_dtype, kv_dtype, o_dtype


def run_outputs(out: Optional[torch.Tensor], lse: Optional[torch.Tensor], return_lse: bool, o_shape: tuple,
                o_dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """out [rows, H, D] and lse [rows, H] for a run(): the caller's buffers, checked against the
    plan, or new ones; lse is None unless return_lse."""
    if out is None:
        out = empty_output(*o_shape, dtype=o_dtype, device=device)
    else:
        V.check_out("out", out, o_shape, o_dtype, device)
    if not return_lse:
        return out, None
    if lse is None:
        lse = empty_output(*o_shape[:2], dtype=torch.float32, device=device)
    else:
        V.check_out("lse", lse, o_shape[:2], torch.float32, device)
    return out, lse


def cache_ref(paged_kv_cache):
    """What run() keeps to know a paged cache again: the tensor, or its (k, v) pair as a tuple."""
    return tuple(paged_kv_cache) if isinstance(paged_kv_cache, (tuple, list)) else paged_kv_cache


def same_cache(a, b) -> bool:
    """The same cache tensors: one object, or a (k, v) pair of the same objects (a fresh tuple
    per call is the common way to pass a split cache)."""
    if a is b:
        return True
    return isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b) == 2 \
        and a[0] is b[0] and a[1] is b[1]
