"""Custom attention masks: boolean masks packed to little-endian bits, as the kernels read them.

A request's mask is row-major [qo_len, kv_len]; bit `i * kv_len + j` of its segment keeps key j
for query i. Segments are byte-aligned per request (segment_packbits).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .. import _validate as V
from ..packbits import packbits

def pack_custom_mask(custom_mask: Optional[torch.Tensor], packed_custom_mask: Optional[torch.Tensor],
                     shapes: Sequence[Tuple[int, int]], device) -> Optional[torch.Tensor]:
    """Check a custom mask for one request of shape (qo_len, kv_len) and return it packed."""
    (qo_len, kv_len), = shapes
    if custom_mask is not None:
        V.check_tensor("custom_mask", custom_mask)
        if custom_mask.dtype != torch.bool:
            raise TypeError(f"custom_mask: expected dtype torch.bool, got {custom_mask.dtype}")
        if custom_mask.numel() != qo_len * kv_len or (custom_mask.dim() == 2 and tuple(custom_mask.shape) != (qo_len, kv_len)):
            raise ValueError(f"custom_mask: expected shape ({qo_len}, {kv_len}) (qo_len, kv_len), "
                             f"got {tuple(custom_mask.shape)}")
        V.check_device(q=torch.empty(0, device=device), custom_mask=custom_mask)
        return packbits(custom_mask, bitorder="little")
    if packed_custom_mask is not None:
        V.check_tensor("packed_custom_mask", packed_custom_mask, 1)
        if packed_custom_mask.dtype != torch.uint8:
            raise TypeError(f"packed_custom_mask: expected dtype torch.uint8, got {packed_custom_mask.dtype}")
        need = (qo_len * kv_len + 7) // 8
        if packed_custom_mask.numel() < need:
            raise ValueError(f"packed_custom_mask: expected at least {need} bytes for a "
                             f"({qo_len}, {kv_len}) mask, got {packed_custom_mask.numel()}")
        V.check_device(q=torch.empty(0, device=device), packed_custom_mask=packed_custom_mask)
        return packed_custom_mask.contiguous()
    return None
