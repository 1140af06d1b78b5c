"""Plain PyTorch RoPE: the oracle for the tests and the benchmarks.

The rotation runs in `dtype`: float32 for the reference, or q's dtype to measure what PyTorch
itself loses in low precision. The float32 reference takes its angles in float64 (no angle error
of its own); the low-precision one does what Hugging Face models do: float32 frequencies and
angles (pos * f rounded to fp32, which grows with the position), cos/sin rounded to `dtype`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


def rope_freqs(rotary_dim: int, rope_scale: float = 1.0, rope_theta: float = 1e4,
               llama31: Optional[dict] = None) -> torch.Tensor:
    """float64 [rotary_dim // 2] frequencies f_i = theta^(-2i/rotary_dim) / rope_scale.

    With `llama31` = dict(low_freq_factor=, high_freq_factor=, old_context_len=), Llama 3.1's
    wavelength rule: long wavelengths are divided by rope_scale, short ones kept, and those in
    between blended linearly in old_context_len / wavelength.
    """
    freq = rope_theta ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    if llama31 is None:
        return freq / rope_scale
    low, high = llama31["low_freq_factor"], llama31["high_freq_factor"]
    old = llama31["old_context_len"]
    wavelen = 2 * math.pi / freq
    smooth = ((old / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    return (1 - smooth) * freq / rope_scale + smooth * freq


def cos_sin_cache(max_pos: int, rotary_dim: int, rope_theta: float = 1e4) -> torch.Tensor:
    """float32 [max_pos, rotary_dim] table, cos in the first half and sin in the second (vLLM's)."""
    angle = torch.arange(max_pos, dtype=torch.float64)[:, None] * rope_freqs(rotary_dim, 1.0, rope_theta)
    return torch.cat([angle.cos(), angle.sin()], dim=-1).float()


def apply_rope_ref(x: torch.Tensor, pos_ids: torch.Tensor, rotary_dim: Optional[int] = None,
                   interleave: bool = False, freqs: Optional[torch.Tensor] = None,
                   cache: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RoPE of x [nnz, H, D] at positions pos_ids [nnz], computed in `dtype`.

    cos/sin come from `freqs` (float64 [rotary_dim/2], see rope_freqs) or from a cos/sin `cache`.
    Dims from rotary_dim on pass through unchanged.
    """
    head_dim = x.shape[-1]
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    pos = pos_ids.to(x.device).long()
    if cache is not None:
        cos, sin = cache.to(x.device)[pos].double().chunk(2, dim=-1)
    else:
        angle_dtype = torch.float64 if dtype == torch.float32 else torch.float32
        angle = pos.to(angle_dtype)[:, None] * freqs.to(x.device, angle_dtype)[None, :]
        cos, sin = angle.cos(), angle.sin()
    cos = cos.float().to(dtype)[:, None, :]
    sin = sin.float().to(dtype)[:, None, :]
    xc = x.to(dtype)
    rot, rest = xc[..., :rotary_dim], xc[..., rotary_dim:]
    if interleave:
        a, b = rot[..., 0::2], rot[..., 1::2]
    else:
        a, b = rot[..., : rotary_dim // 2], rot[..., rotary_dim // 2:]
    out_a = a * cos - b * sin
    out_b = b * cos + a * sin
    if interleave:
        rot = torch.stack([out_a, out_b], dim=-1).flatten(-2)
    else:
        rot = torch.cat([out_a, out_b], dim=-1)
    return torch.cat([rot, rest], dim=-1)


def pos_ids_from_indptr(indptr: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """int64 [nnz]: token i of request b sits at offsets[b] + i - indptr[b] (host loop, plain)."""
    indptr, offsets = indptr.cpu().tolist(), offsets.cpu().tolist()
    pos = []
    for b in range(len(offsets)):
        pos += [offsets[b] + i for i in range(indptr[b + 1] - indptr[b])]
    return torch.tensor(pos, dtype=torch.int64)


def apply_rope_qk_ref(q: torch.Tensor, k: torch.Tensor, pos_ids: torch.Tensor, dtype=torch.float32,
                      **kw) -> Tuple[torch.Tensor, torch.Tensor]:
    """(apply_rope_ref(q), apply_rope_ref(k)) with the same arguments."""
    return apply_rope_ref(q, pos_ids, dtype=dtype, **kw), apply_rope_ref(k, pos_ids, dtype=dtype, **kw)
