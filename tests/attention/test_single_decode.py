"""single_decode_with_kv_cache against the fp32 reference, over the matrix users hit."""
import pytest
import torch

import pyflashinfer as flashinfer
from helpers import assert_close_policy, lowp_of
from cases import as_nhd, rand_kv, refs

F16, BF16, E4M3, E5M2 = torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2

# (num_qo_heads, num_kv_heads, head_dim, kv_len, q dtype, kv dtype, layout, extra kwargs)
CASES = [
    # group sizes 1..8 and odd ones, kv lengths around 16-token blocks and long ones
    ("g1-d128-kv1", 4, 4, 128, 1, F16, F16, "NHD", {}),
    ("g1-d128-kv1031", 4, 4, 128, 1031, BF16, BF16, "NHD", {}),
    ("g2-d64-kv17", 4, 2, 64, 17, F16, F16, "HND", {}),
    ("g3-d128-kv15", 6, 2, 128, 15, BF16, BF16, "NHD", {}),
    ("g4-d128-kv16", 8, 2, 128, 16, F16, F16, "NHD", {}),
    ("g4-d128-kv2049", 8, 2, 128, 2049, BF16, BF16, "HND", {}),
    ("g5-d64-kv1000", 10, 2, 64, 1000, F16, F16, "NHD", {}),
    ("g6-d128-kv300", 6, 1, 128, 300, BF16, BF16, "NHD", {}),
    ("g7-d64-kv129", 7, 1, 64, 129, F16, F16, "HND", {}),
    ("g8-d256-kv65", 8, 1, 256, 65, BF16, BF16, "NHD", {}),
    ("g3-d256-kv1100", 24, 8, 256, 1100, F16, F16, "NHD", {}),
    ("g4-d96-kv77", 8, 2, 96, 77, F16, F16, "NHD", {}),
    ("g2-d80-kv40", 4, 2, 80, 40, BF16, BF16, "HND", {}),
    # every flag
    ("window", 8, 2, 128, 500, F16, F16, "NHD", dict(window_left=63)),
    ("window0", 8, 2, 64, 100, BF16, BF16, "NHD", dict(window_left=0)),
    ("softcap", 8, 2, 128, 300, BF16, BF16, "NHD", dict(logits_soft_cap=5.0)),
    ("sm-scale", 8, 2, 128, 200, F16, F16, "NHD", dict(sm_scale=0.3)),
    ("rope", 8, 2, 128, 700, F16, F16, "NHD", dict(pos_encoding_mode="ROPE_LLAMA")),
    ("rope-scaled", 6, 2, 64, 333, BF16, BF16, "HND",
     dict(pos_encoding_mode="ROPE_LLAMA", rope_scale=2.0, rope_theta=5e5)),
    ("alibi", 8, 8, 64, 400, F16, F16, "NHD", dict(pos_encoding_mode="ALIBI")),
    ("alibi-gqa", 12, 4, 128, 90, BF16, BF16, "NHD", dict(pos_encoding_mode="ALIBI")),
    ("window-softcap-rope", 8, 2, 128, 1000, BF16, BF16, "NHD",
     dict(window_left=200, logits_soft_cap=30.0, pos_encoding_mode="ROPE_LLAMA")),
    # fp8 KV with calibration scales (q_scale too)
    ("fp8-e4m3", 8, 2, 128, 1000, F16, E4M3, "NHD", {}),
    ("fp8-e4m3-bf16q", 8, 2, 128, 257, BF16, E4M3, "HND", {}),
    ("fp8-e5m2", 6, 2, 64, 300, BF16, E5M2, "NHD", {}),
    ("fp8-qscale", 8, 2, 128, 100, F16, E4M3, "NHD", dict(q_scale=0.5)),
]


@pytest.mark.parametrize("use_tensor_cores", [False, True], ids=["cuda-cores", "tensor-cores"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_single_decode(case, use_tensor_cores, device):
    _, h_qo, h_kv, d, kv_len, q_dtype, kv_dtype, layout, kw = case
    q = torch.randn(h_qo, d, device=device).to(q_dtype)
    k, v, k_scale, v_scale = rand_kv(kv_len, h_kv, d, kv_dtype, device, layout)
    scales = dict(k_scale=k_scale, v_scale=v_scale) if kv_dtype in (E4M3, E5M2) else {}
    o, lse = flashinfer.single_decode_with_kv_cache(
        q, k, v, layout, use_tensor_cores=use_tensor_cores, return_lse=True, **scales, **kw)
    assert o.shape == (h_qo, d) and o.dtype == q_dtype and lse.shape == (h_qo,) and lse.dtype == torch.float32
    ref_kw = {k_: v_ for k_, v_ in kw.items()}
    (o32, l32), (olp, llp) = refs(q[None], as_nhd(k, layout), as_nhd(v, layout), lowp_of(q_dtype), **scales, **ref_kw)
    assert_close_policy(o, o32[0], olp[0], name="o")
    assert_close_policy(lse, l32[0], llp[0], name="lse")


def test_decode_paths_agree(device):
    """The CUDA-core and tensor-core paths compute the same function."""
    q = torch.randn(32, 128, device=device).to(torch.bfloat16)
    k, v, _, _ = rand_kv(777, 8, 128, torch.bfloat16, device)
    a = flashinfer.single_decode_with_kv_cache(q, k, v, use_tensor_cores=False)
    b = flashinfer.single_decode_with_kv_cache(q, k, v, use_tensor_cores=True)
    assert (a.float() - b.float()).abs().max().item() < 2e-2


def test_decode_without_lse_matches(device):
    q = torch.randn(8, 64, device=device).to(torch.float16)
    k, v, _, _ = rand_kv(50, 2, 64, torch.float16, device)
    o1 = flashinfer.single_decode_with_kv_cache(q, k, v)
    o2, _ = flashinfer.single_decode_with_kv_cache(q, k, v, return_lse=True)
    assert torch.equal(o1, o2)


def test_decode_noncontiguous(device):
    """q a slice of a fused qkv row, k/v every other page of a bigger buffer: no copies."""
    h_qo, h_kv, d = 8, 2, 64
    qkv = torch.randn(h_qo + 2 * h_kv, d, device=device).to(torch.float16)
    q = qkv[:h_qo]
    kv = torch.randn(2, 300, h_kv, 2 * d, device=device).to(torch.float16)
    k, v = kv[0, :, :, :d], kv[1, :, :, d:]
    assert not k.is_contiguous()
    for tc in (False, True):
        o = flashinfer.single_decode_with_kv_cache(q, k, v, use_tensor_cores=tc)
        (o32, _), (olp, _) = refs(q[None], k, v, torch.float16)
        assert_close_policy(o, o32[0], olp[0])
