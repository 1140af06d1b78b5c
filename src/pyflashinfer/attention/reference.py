"""Plain-PyTorch attention, the oracle for tests and benchmarks. No tricks.

Every input is upcast to `compute_dtype` (fp32 by default) and the whole computation runs in
it. Tests also call it with compute_dtype=bf16/fp16 to measure how far PyTorch itself lands
from the fp32 answer in low precision: the kernels' error budget is a multiple of that.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..utils import get_alibi_slopes


def rope_llama_ref(x: torch.Tensor, pos: torch.Tensor, rope_scale: float = 1.0, rope_theta: float = 1e4) -> torch.Tensor:
    """Rotate-half (non-interleaved) RoPE. x [n, H, D] fp32, pos [n] -> [n, H, D]."""
    d = x.shape[-1]
    half = d // 2
    inv_freq = (1.0 / rope_scale) * rope_theta ** (-2.0 * torch.arange(half, dtype=torch.float32, device=x.device) / d)
    angle = pos.to(torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = torch.cos(angle)[:, None, :], torch.sin(angle)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
    custom_mask: Optional[torch.Tensor] = None, window_left: int = -1, logits_soft_cap: float = 0.0,
    sm_scale: Optional[float] = None, pos_encoding_mode: str = "NONE", rope_scale: float = 1.0,
    rope_theta: float = 1e4, q_scale: float = 1.0, k_scale: float = 1.0, v_scale: float = 1.0,
    sinks: Optional[torch.Tensor] = None, compute_dtype: torch.dtype = torch.float32,
    p_dtype: Optional[torch.dtype] = None,
):
    """Attention of one request, NHD: q [qo_len, H_qo, D_qk], k [kv_len, H_kv, D_qk],
    v [kv_len, H_kv, D_vo]. Returns (o [qo_len, H_qo, D_vo], lse [qo_len, H_qo]) in
    compute_dtype; lse is base 2; fully masked rows give o = 0 and lse = -inf.

    Query i sits at position kv_len - qo_len + i (causal aligned bottom-right); key j at j.
    custom_mask (bool [qo_len, kv_len], True = keep) replaces the causal mask.
    sinks [H_qo] (natural-log logits) add one key per head with that logit and a zero value:
    it joins the softmax denominator (and the lse) only.
    p_dtype (fp8 attention's P V multiplies fp8 P): each row's exp(logit - max), in [0, 1], is
    rounded to p_dtype before P V; the denominator sums it unrounded.
    """
    cd = compute_dtype
    qo_len, num_qo_heads, head_dim = q.shape
    kv_len, num_kv_heads, _ = k.shape
    group = num_qo_heads // num_kv_heads
    q, k, v = q.to(torch.float32), k.to(torch.float32), v.to(torch.float32)
    q_pos = torch.arange(qo_len, device=q.device) + (kv_len - qo_len)
    k_pos = torch.arange(kv_len, device=q.device)
    if pos_encoding_mode == "ROPE_LLAMA":
        q = rope_llama_ref(q, q_pos, rope_scale, rope_theta)
        k = rope_llama_ref(k, k_pos, rope_scale, rope_theta)
    q, k, v = q.to(cd), k.to(cd), v.to(cd)
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    scale = sm_scale * q_scale * k_scale
    logits = torch.einsum("qhd,khd->hqk", q, k) * scale                      # [H, qo, kv]
    rel = (k_pos[None, :] - q_pos[:, None])                                  # [qo, kv]
    if pos_encoding_mode == "ALIBI":
        slopes = get_alibi_slopes(num_qo_heads).to(q.device, cd)
        logits = logits + slopes[:, None, None] * rel[None].to(cd)
    if logits_soft_cap and logits_soft_cap > 0:
        logits = logits_soft_cap * torch.tanh(logits / logits_soft_cap)
    keep = torch.ones(qo_len, kv_len, dtype=torch.bool, device=q.device)
    if custom_mask is not None:
        keep &= custom_mask.reshape(qo_len, kv_len).to(q.device)
    elif causal:
        keep &= rel <= 0
    if window_left >= 0:
        keep &= rel >= -window_left
    logits = logits.masked_fill(~keep[None], float("-inf"))
    if sinks is not None:
        sink_col = sinks.to(q.device, cd)[:, None, None].expand(num_qo_heads, qo_len, 1)
        logits = torch.cat([logits, sink_col], dim=-1)
    lse = torch.logsumexp(logits.float(), dim=-1).to(cd)                    # [H, qo]
    if p_dtype is None:
        p = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    else:
        m = logits.float().amax(-1, keepdim=True).nan_to_num(0.0, neginf=0.0)
        e = torch.exp(logits.float() - m)
        p = (e.to(p_dtype).float() / e.sum(-1, keepdim=True)).nan_to_num(0.0).to(cd)
    if sinks is not None:
        p = p[..., :kv_len]
    o = torch.einsum("hqk,khd->qhd", p, v) * v_scale
    return o, (lse / math.log(2.0)).transpose(0, 1)


def decode_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs):
    """One query token (q [H_qo, D]) at position kv_len - 1: attention_ref with qo_len = 1."""
    o, lse = attention_ref(q[None], k, v, **kwargs)
    return o[0], lse[0]


def merge_states_ref(vs, ss, compute_dtype: torch.dtype = torch.float32):
    """Merge attention states: vs [S] tensors [L, H, D], ss [S] base-2 LSEs [L, H] ->
    (v, s) as log2(sum 2^s_i) and the 2^s_i-weighted mean of v_i; no state (all -inf) -> 0, -inf."""
    cd = compute_dtype
    s = torch.stack([x.float() for x in ss])                               # [S, L, H]
    lse = torch.logsumexp(s * math.log(2.0), dim=0) / math.log(2.0)        # [L, H]
    w = torch.exp2(s - lse.nan_to_num(0.0, neginf=0.0)[None]).nan_to_num(0.0).to(cd)
    v = (torch.stack([x.to(cd) for x in vs]) * w[..., None]).sum(0)
    return v.nan_to_num(0.0), lse
