"""FlashInfer's `packbits` and `segment_packbits` (flashinfer.quantization): boolean masks to
bytes, as numpy.packbits, for the custom attention masks."""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _validate as V
from .._launch import cdiv, empty_output, launch
from ..utils import is_interpreting
from .kernels import packbits_kernel

__all__ = ["packbits", "segment_packbits"]
_ORDERS = ("big", "little")


def _block() -> int:
    return 128 if is_interpreting() else 1024  # bytes per program; 8 KiB of input bits on the GPU


def _check(x: torch.Tensor, bitorder: str) -> torch.device:
    V.check_tensor("x", x)
    if bitorder not in _ORDERS:
        raise ValueError(f"bitorder: expected one of {_ORDERS}, got {bitorder!r}")
    if x.dtype.is_complex:
        raise TypeError(f"x: expected a bool, integer or float tensor, got {x.dtype}")
    return V.check_device(x=x)


def packbits(x: torch.Tensor, bitorder: str = "big") -> torch.Tensor:
    """packed[j] = the bits (x != 0) of x.flatten()[8j : 8j + 8] in one byte, as numpy.packbits.

    x: any shape, bool / integer / float (flattened: a non-contiguous x is copied).
    bitorder: "big" (first bit is the most significant) or "little".
    Returns uint8 [ceil(x.numel() / 8)].

    >>> pyflashinfer.packbits(torch.tensor([1, 0, 1], dtype=torch.bool, device="cuda"))
    tensor([160], device='cuda:0', dtype=torch.uint8)
    """
    device = _check(x, bitorder)
    flat = x.reshape(-1)
    n_bytes = cdiv(flat.numel(), 8)
    out = empty_output(n_bytes, dtype=torch.uint8, device=device)
    if n_bytes:
        launch(packbits_kernel, (cdiv(n_bytes, _block()),), num_warps=4, num_stages=1,
               x_ptr=flat, out_ptr=out, seg_ptr=None, indptr_ptr=None, new_indptr_ptr=None,
               n_bytes=n_bytes, n_bits=flat.numel(), HAS_SEGMENTS=False, LITTLE=bitorder == "little",
               BLOCK=_block())
    return out


def segment_packbits(x: torch.Tensor, indptr: torch.Tensor, bitorder: str = "big") -> Tuple[torch.Tensor, torch.Tensor]:
    """Pack each segment x[indptr[i]:indptr[i+1]] separately, padded to whole bytes.

    x: 1-D bool / integer / float. indptr: [num_segments + 1] int32/int64, non-decreasing from 0.
    Returns (packed uint8 [new_indptr[-1]], new_indptr [num_segments + 1] in the dtype of indptr,
    the byte offsets of the segments). Reads new_indptr[-1] on the host (a sync), as FlashInfer.
    """
    device = _check(x, bitorder)
    V.check_tensor("x", x, 1)
    V.check_tensor("indptr", indptr, 1)
    V.check_dtype("indptr", indptr, (torch.int32, torch.int64))
    if indptr.shape[0] < 1:
        raise ValueError(f"indptr: expected at least 1 entry, got shape {tuple(indptr.shape)}")
    if indptr.device != device:
        raise ValueError(f"indptr: expected device {device}, got {indptr.device}")
    seg_bytes = (indptr[1:] - indptr[:-1] + 7) // 8
    new_indptr = torch.zeros_like(indptr)
    torch.cumsum(seg_bytes, 0, out=new_indptr[1:])
    n_bytes = int(new_indptr[-1])
    out = empty_output(n_bytes, dtype=torch.uint8, device=device)
    if n_bytes:
        byte_ids = torch.arange(n_bytes, device=device, dtype=indptr.dtype)
        seg = (torch.searchsorted(new_indptr, byte_ids, right=True) - 1).to(torch.int32)
        launch(packbits_kernel, (cdiv(n_bytes, _block()),), num_warps=4, num_stages=1,
               x_ptr=x, out_ptr=out, seg_ptr=seg, indptr_ptr=indptr, new_indptr_ptr=new_indptr,
               n_bytes=n_bytes, n_bits=x.numel(), HAS_SEGMENTS=True, LITTLE=bitorder == "little",
               BLOCK=_block())
    return out, new_indptr
