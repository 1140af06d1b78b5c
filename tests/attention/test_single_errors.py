"""Bad input raises a clear exception naming what was expected and what came."""
import pytest
import torch

import pyflashinfer as flashinfer


def _qkv(device, qo=4, kv=10, h_qo=8, h_kv=2, d=64, dtype=torch.float16):
    return (torch.randn(qo, h_qo, d, device=device).to(dtype), torch.randn(kv, h_kv, d, device=device).to(dtype),
            torch.randn(kv, h_kv, d, device=device).to(dtype))


def _prefill(device, **over):
    q, k, v = _qkv(device)
    args = dict(q=q, k=k, v=v)
    args.update(over)
    return flashinfer.single_prefill_with_kv_cache(**args)


BAD_PREFILL = [
    ("q-rank", lambda d: dict(q=torch.randn(8, 64, device=d).half()), ValueError, "3-D"),
    ("k-rank", lambda d: dict(k=torch.randn(10, 128, device=d).half()), ValueError, "3-D"),
    ("heads-not-multiple", lambda d: dict(q=torch.randn(4, 7, 64, device=d).half()), ValueError, "multiple"),
    ("head-dim-mismatch", lambda d: dict(q=torch.randn(4, 8, 128, device=d).half()), ValueError, "head_dim"),
    ("kv-mismatch", lambda d: dict(v=torch.randn(11, 2, 64, device=d).half()), ValueError, "kv_len"),
    ("q-fp32", lambda d: dict(q=torch.randn(4, 8, 64, device=d)), TypeError, "float16"),
    ("kv-dtype-mix", lambda d: dict(k=torch.randn(10, 2, 64, device=d).bfloat16(),
                                     v=torch.randn(10, 2, 64, device=d).bfloat16()), TypeError, "match"),
    ("v-dtype", lambda d: dict(v=torch.randn(10, 2, 64, device=d).bfloat16()), TypeError, "dtype of k"),
    ("layout", lambda d: dict(kv_layout="NDH"), ValueError, "kv_layout"),
    ("pos-enc", lambda d: dict(pos_encoding_mode="ROPE"), ValueError, "pos_encoding_mode"),
    ("window", lambda d: dict(window_left=-2), ValueError, "window_left"),
    ("softcap", lambda d: dict(logits_soft_cap=-1.0), ValueError, "logits_soft_cap"),
    ("mask-shape", lambda d: dict(custom_mask=torch.ones(4, 11, dtype=torch.bool, device=d)), ValueError, "(4, 10)"),
    ("mask-dtype", lambda d: dict(custom_mask=torch.ones(4, 10, device=d)), TypeError, "bool"),
    ("packed-short", lambda d: dict(packed_custom_mask=torch.ones(2, dtype=torch.uint8, device=d)), ValueError, "bytes"),
    ("head-dim-300", lambda d: dict(q=torch.randn(4, 8, 264, device=d).half(), k=torch.randn(10, 2, 264, device=d).half(),
                                    v=torch.randn(10, 2, 264, device=d).half()), NotImplementedError, "head_dim"),
    ("head-dim-12", lambda d: dict(q=torch.randn(4, 8, 12, device=d).half(), k=torch.randn(10, 2, 12, device=d).half(),
                                   v=torch.randn(10, 2, 12, device=d).half()), NotImplementedError, "multiple of 8"),
    ("strided-last-dim", lambda d: dict(q=torch.randn(4, 8, 128, device=d).half()[..., ::2]), ValueError, "stride"),
    ("backend", lambda d: dict(backend="cudnn"), ValueError, "backend"),
    ("scale-q-16bit-q", lambda d: dict(scale_q=torch.ones(8, device=d)), ValueError, "scale_q"),
    ("fp8-q-16bit-kv", lambda d: dict(q=torch.randn(4, 8, 64, device=d).to(torch.float8_e4m3fn)), TypeError, "fp8"),
    ("o-dtype", lambda d: dict(o_dtype=torch.float32), TypeError, "o_dtype"),
]


@pytest.mark.parametrize("case", BAD_PREFILL, ids=[c[0] for c in BAD_PREFILL])
def test_prefill_rejects(case, device):
    _, make, exc, fragment = case
    with pytest.raises(exc, match=None) as info:
        _prefill(device, **make(device))
    assert fragment in str(info.value), str(info.value)


def test_device_mismatch(device):
    if device == "cpu":
        pytest.skip("needs a GPU to hold tensors on two devices")
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match="device"):
        flashinfer.single_prefill_with_kv_cache(q, k.cpu(), v.cpu())


def test_decode_rejects(device):
    q, k, v = _qkv(device)
    with pytest.raises(ValueError, match="2-D"):
        flashinfer.single_decode_with_kv_cache(q, k, v)
    with pytest.raises(ValueError, match="multiple"):
        flashinfer.single_decode_with_kv_cache(q[0, :7], k, v)
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        flashinfer.single_decode_with_kv_cache(q[0], k, v, pos_encoding_mode="alibi")
