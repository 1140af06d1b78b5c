"""Plain PyTorch gated activations: the oracle for the tests and the benchmarks.

Computed in `dtype`: float32 for the reference, or the input's dtype to measure what PyTorch
itself loses in low precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_ACTS = {
    "silu": F.silu,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def act_and_mul_ref(x: torch.Tensor, act: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """act(x[..., :d]) * x[..., d:] for act in ("silu", "gelu", "gelu_tanh")."""
    x = x.to(dtype)
    d = x.shape[-1] // 2
    return _ACTS[act](x[..., :d]) * x[..., d:]
