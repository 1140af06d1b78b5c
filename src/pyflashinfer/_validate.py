"""Input checks for the public entry points: small named functions, one message style.

Every message says what was expected, what came, and (where it helps) what to do.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from .utils import PosEncodingMode, is_interpreting

FLOAT16_TYPES = (torch.float16, torch.bfloat16)
FP8_TYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
KV_TYPES = FLOAT16_TYPES + FP8_TYPES
MAX_HEAD_DIM = 256


def _names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(name: str, t, ndim: Optional[int | Sequence[int]] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            raise ValueError(f"{name}: expected a {' or '.join(map(str, allowed))}-D tensor, "
                             f"got shape {tuple(t.shape)}")


def check_dtype(name: str, t: torch.Tensor, allowed: Sequence[torch.dtype]) -> None:
    if t.dtype not in allowed:
        raise TypeError(f"{name}: expected dtype in ({_names(allowed)}), got {t.dtype}")


def check_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    """All given tensors on one device, which is CUDA (or CPU when Triton interprets)."""
    device = None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {device}; "
                             "move all inputs to one device")
    if device is not None and device.type != "cuda" and not is_interpreting():
        raise ValueError(f"{first}: expected a CUDA tensor, got one on {device} "
                         "(CPU tensors run only under TRITON_INTERPRET=1)")
    return device


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last (head_dim) dimension must have stride 1, got strides "
                         f"{tuple(t.stride())}; other dimensions may be strided")


def check_head_dim(name: str, head_dim: int) -> None:
    if head_dim % 8 != 0 or not (8 <= head_dim <= MAX_HEAD_DIM):
        raise NotImplementedError(f"{name}: head_dim must be a multiple of 8 between 8 and "
                                  f"{MAX_HEAD_DIM}, got {head_dim}")


def check_kv_layout(kv_layout: str) -> None:
    if kv_layout not in ("NHD", "HND"):
        raise ValueError(f"kv_layout: expected 'NHD' or 'HND', got {kv_layout!r}")


def check_pos_encoding_mode(mode: str) -> str:
    if mode not in PosEncodingMode.ALL:
        raise ValueError(f"pos_encoding_mode: expected one of {PosEncodingMode.ALL}, got {mode!r}")
    return mode


def check_heads(num_qo_heads: int, num_kv_heads: int) -> None:
    if num_kv_heads <= 0 or num_qo_heads <= 0 or num_qo_heads % num_kv_heads != 0:
        raise ValueError(f"num_qo_heads ({num_qo_heads}) must be a positive multiple of "
                         f"num_kv_heads ({num_kv_heads})")


def check_window_left(window_left: int) -> None:
    if not isinstance(window_left, int) or window_left < -1:
        raise ValueError(f"window_left: expected an int >= -1 (-1 = no window), got {window_left!r}")


def check_soft_cap(logits_soft_cap: Optional[float]) -> float:
    cap = 0.0 if logits_soft_cap is None else float(logits_soft_cap)
    if cap < 0.0:
        raise ValueError(f"logits_soft_cap: expected None, 0 or a positive float, got {logits_soft_cap}")
    return cap


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(t.shape)}")


def check_out(name: str, out: Optional[torch.Tensor], shape: Sequence[int], dtype: torch.dtype,
              device: torch.device) -> None:
    if out is None:
        return
    check_tensor(name, out)
    check_shape(name, out, shape)
    if out.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {out.dtype}")
    if out.device != device:
        raise ValueError(f"{name}: expected device {device}, got {out.device}")


def check_sinks(sinks: Optional[torch.Tensor], num_qo_heads: int, device: torch.device) -> Optional[torch.Tensor]:
    """Attention-sink logits: [num_qo_heads] contiguous floats on the kernel's device."""
    if sinks is None:
        return None
    check_tensor("sinks", sinks, 1)
    check_dtype("sinks", sinks, (torch.float32, torch.float16, torch.bfloat16))
    if sinks.shape[0] != num_qo_heads:
        raise ValueError(f"sinks: expected shape ({num_qo_heads},) (one logit per qo head), got {tuple(sinks.shape)}")
    if sinks.device != device:
        raise ValueError(f"sinks: expected device {device}, got {sinks.device}")
    if sinks.shape[0] > 1 and sinks.stride(0) != 1:
        raise ValueError(f"sinks: expected a contiguous tensor, got stride {sinks.stride(0)}")
    return sinks
