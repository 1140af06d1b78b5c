"""numpy.packbits, per segment: the oracle of the packbits tests."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def packbits(x: torch.Tensor, bitorder: str = "big") -> torch.Tensor:
    return torch.from_numpy(np.packbits(x.detach().cpu().numpy().reshape(-1) != 0, bitorder=bitorder))


def segment_packbits(x: torch.Tensor, indptr: torch.Tensor, bitorder: str = "big") -> Tuple[torch.Tensor, torch.Tensor]:
    bits = x.detach().cpu().numpy() != 0
    ptr = indptr.detach().cpu().tolist()
    parts = [np.packbits(bits[a:b], bitorder=bitorder) for a, b in zip(ptr[:-1], ptr[1:])]
    new_ptr = np.cumsum([0] + [len(p) for p in parts])
    packed = np.concatenate(parts) if parts else np.zeros(0, np.uint8)
    return torch.from_numpy(packed.astype(np.uint8)), torch.from_numpy(new_ptr).to(indptr.dtype)
