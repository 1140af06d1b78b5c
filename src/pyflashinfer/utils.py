"""Small public helpers shared by every op family (FlashInfer's `flashinfer.utils` names)."""
from __future__ import annotations

import functools
import math
import os
from typing import Optional, Union

import torch

__all__ = [
    "PosEncodingMode",
    "get_alibi_slopes",
    "canonicalize_dtype",
    "is_interpreting",
    "num_sms",
]

LOG2E = 1.4426950408889634


class PosEncodingMode:
    """The three position-encoding modes the attention kernels understand."""

    NONE = "NONE"
    ROPE_LLAMA = "ROPE_LLAMA"
    ALIBI = "ALIBI"
    ALL = (NONE, ROPE_LLAMA, ALIBI)


def is_interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device`; a fixed 8 under the interpreter, so that the
    CPU tests still take the KV-split paths that fill a real GPU."""
    if device.type != "cuda":
        return 8
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


_DTYPE_NAMES = {
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn, "e4m3": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2, "fp8_e5m2": torch.float8_e5m2, "e5m2": torch.float8_e5m2,
}


def canonicalize_dtype(dtype: Optional[Union[str, torch.dtype]]) -> Optional[torch.dtype]:
    """Accept FlashInfer's dtype spellings ("float16", torch.bfloat16, ...) and return a torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if name in _DTYPE_NAMES:
            return _DTYPE_NAMES[name]
        raise ValueError(f"unknown dtype name {dtype!r}; expected one of {sorted(_DTYPE_NAMES)}")
    raise TypeError(f"expected a torch.dtype or a dtype name, got {type(dtype).__name__}")


def get_alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi slopes of Press et al., as FlashInfer computes them: fp32 [n_heads]."""
    n = 2 ** math.floor(math.log2(n_heads))
    m0 = 2.0 ** (-8.0 / n)
    slopes = torch.pow(m0, torch.arange(1, 1 + n, dtype=torch.float32))
    if n < n_heads:
        m1 = 2.0 ** (-4.0 / n)
        extra = torch.pow(m1, torch.arange(1, 1 + 2 * (n_heads - n), 2, dtype=torch.float32))
        slopes = torch.cat([slopes, extra])
    return slopes
