"""Plain PyTorch normalisations: the oracle for the tests and the benchmarks.

Each function computes in `dtype`: float32 for the reference, or the input's dtype to measure
what PyTorch itself loses in low precision. Results come back in `dtype`.
"""
from __future__ import annotations

from typing import Tuple

import torch


def rmsnorm_ref(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6, gemma: bool = False,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x / sqrt(mean(x^2, -1) + eps) * w  (w + 1 for Gemma), over the last dim."""
    x, w = x.to(dtype), w.to(dtype)
    if gemma:
        w = w + 1
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def fused_add_rmsnorm_ref(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float = 1e-6,
                          gemma: bool = False, dtype: torch.dtype = torch.float32
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rmsnorm(x + residual), x + residual): the new input and the new residual."""
    s = x.to(dtype) + residual.to(dtype)
    return rmsnorm_ref(s, w, eps, gemma, dtype), s


def layernorm_ref(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-6,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * w + b over the last dim (biased variance)."""
    return torch.nn.functional.layer_norm(x.to(dtype), (x.shape[-1],), w.to(dtype), b.to(dtype), eps)
