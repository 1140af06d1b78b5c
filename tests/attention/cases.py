"""Input builders shared by the attention tests."""
import torch

from pyflashinfer.attention.reference import attention_ref

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def rand_kv(kv_len, num_kv_heads, head_dim, dtype, device, layout="NHD", head_dim_vo=None):
    """Fresh random K/V in `layout`, plus fp8 dequantisation scales (1.0 for 16-bit KV).

    fp8 caches hold x / scale with scale = amax / (0.5 * fp8 max), as a calibrated cache would."""
    head_dim_vo = head_dim_vo or head_dim
    k = torch.randn(kv_len, num_kv_heads, head_dim, device=device)
    v = torch.randn(kv_len, num_kv_heads, head_dim_vo, device=device)
    k_scale = v_scale = 1.0
    if dtype in FP8:
        fmax = torch.finfo(dtype).max
        k_scale = max(k.abs().max().item(), 1e-3) / (0.5 * fmax)
        v_scale = max(v.abs().max().item(), 1e-3) / (0.5 * fmax)
        k, v = (k / k_scale).to(dtype), (v / v_scale).to(dtype)
    else:
        k, v = k.to(dtype), v.to(dtype)
    if layout == "HND":
        k, v = k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()
    return k, v, k_scale, v_scale


def as_nhd(t, layout):
    return t.transpose(0, 1) if layout == "HND" else t


def refs(q, k, v, lowp, **kwargs):
    """(fp32 reference, PyTorch's own low-precision result) for one request (NHD inputs)."""
    return attention_ref(q, k, v, **kwargs), attention_ref(q, k, v, compute_dtype=lowp, **kwargs)
