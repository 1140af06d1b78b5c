"""single_prefill_with_kv_cache against the fp32 reference, over the matrix users hit."""
import pytest
import torch

import pyflashinfer as flashinfer
from helpers import assert_close_policy, lowp_of
from cases import as_nhd, rand_kv, refs, sm90, spy_hopper_prefill

F16, BF16, E4M3, E5M2 = torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2

# (id, qo_len, kv_len, H_qo, H_kv, head_dim, q dtype, kv dtype, layout, kwargs)
CASES = [
    ("causal-square-g1-d128", 100, 100, 4, 4, 128, F16, F16, "NHD", dict(causal=True)),
    ("causal-chunked-g4-d128", 37, 300, 8, 2, 128, BF16, BF16, "NHD", dict(causal=True)),
    ("causal-append1-g4", 1, 129, 8, 2, 64, F16, F16, "NHD", dict(causal=True)),
    ("noncausal-g3-d64", 50, 77, 6, 2, 64, F16, F16, "HND", {}),
    ("noncausal-q-gt-kv", 70, 20, 4, 2, 64, BF16, BF16, "NHD", {}),
    ("causal-g5-d64", 33, 65, 10, 2, 64, BF16, BF16, "NHD", dict(causal=True)),
    ("causal-g6-d128", 20, 48, 12, 2, 128, F16, F16, "HND", dict(causal=True)),
    ("causal-g7-d64", 25, 31, 7, 1, 64, F16, F16, "NHD", dict(causal=True)),
    ("causal-g8-d256", 17, 33, 8, 1, 256, BF16, BF16, "NHD", dict(causal=True)),
    ("causal-g1-d256", 40, 40, 2, 2, 256, F16, F16, "NHD", dict(causal=True)),
    ("causal-long-kv-split", 16, 1500, 4, 1, 64, BF16, BF16, "NHD", dict(causal=True)),
    ("d96", 30, 50, 4, 2, 96, F16, F16, "NHD", dict(causal=True)),
    ("dqk192-dvo128", 30, 60, 4, 4, 192, BF16, BF16, "NHD", dict(causal=True, head_dim_vo=128)),
    ("window", 64, 200, 8, 2, 64, F16, F16, "NHD", dict(causal=True, window_left=31)),
    ("window-noncausal", 40, 100, 4, 4, 64, BF16, BF16, "NHD", dict(window_left=10)),
    ("softcap", 48, 96, 8, 2, 128, BF16, BF16, "NHD", dict(causal=True, logits_soft_cap=30.0)),
    ("softcap-small", 20, 40, 4, 2, 64, F16, F16, "NHD", dict(logits_soft_cap=1.0)),
    ("sm-scale", 30, 30, 4, 2, 64, F16, F16, "NHD", dict(causal=True, sm_scale=0.05)),
    ("rope", 40, 120, 8, 2, 128, F16, F16, "NHD", dict(causal=True, pos_encoding_mode="ROPE_LLAMA")),
    ("rope-scaled", 24, 24, 4, 2, 64, BF16, BF16, "HND",
     dict(causal=True, pos_encoding_mode="ROPE_LLAMA", rope_scale=4.0, rope_theta=1e6)),
    ("alibi", 40, 90, 8, 8, 64, F16, F16, "NHD", dict(causal=True, pos_encoding_mode="ALIBI")),
    ("alibi-gqa-noncausal", 16, 50, 6, 2, 64, BF16, BF16, "NHD", dict(pos_encoding_mode="ALIBI")),
    ("fp8-e4m3", 40, 300, 8, 2, 128, F16, E4M3, "NHD", dict(causal=True)),
    ("fp8-e5m2-bf16", 32, 64, 4, 2, 64, BF16, E5M2, "HND", dict(causal=True)),
    ("o-dtype-bf16", 20, 30, 4, 2, 64, F16, F16, "NHD", dict(causal=True, o_dtype=BF16)),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_single_prefill(case, device):
    _, qo_len, kv_len, h_qo, h_kv, d, q_dtype, kv_dtype, layout, kw = case
    kw = dict(kw)
    d_vo = kw.pop("head_dim_vo", d)
    o_dtype = kw.pop("o_dtype", q_dtype)
    q = torch.randn(qo_len, h_qo, d, device=device).to(q_dtype)
    k, v, k_scale, v_scale = rand_kv(kv_len, h_kv, d, kv_dtype, device, layout, head_dim_vo=d_vo)
    scales = dict(k_scale=k_scale, v_scale=v_scale) if kv_dtype in (E4M3, E5M2) else {}
    o, lse = flashinfer.single_prefill_with_kv_cache(
        q, k, v, kv_layout=layout, return_lse=True, o_dtype=o_dtype, **scales, **kw)
    assert o.shape == (qo_len, h_qo, d_vo) and o.dtype == o_dtype
    assert lse.shape == (qo_len, h_qo) and lse.dtype == torch.float32
    lowp = lowp_of(BF16 if BF16 in (q_dtype, o_dtype) else q_dtype)  # the coarser of compute and output
    (o32, l32), (olp, llp) = refs(q, as_nhd(k, layout), as_nhd(v, layout), lowp, **scales, **kw)
    assert_close_policy(o, o32, olp, name="o")
    assert_close_policy(lse, l32, llp, name="lse")


@pytest.mark.parametrize("packed,d", [(False, 64), (True, 64), (True, 128)],
                         ids=["bool-mask", "packed-mask", "packed-mask-d128"])
def test_custom_mask(packed, d, device):
    """A random mask with one fully masked row: that row gives o = 0 and lse = -inf. d128: the
    GPU tile whose shared memory a mask's loads push past sm_90's limit at 3 stages."""
    qo_len, kv_len, h_qo, h_kv = 23, 41, 8, 2
    q = torch.randn(qo_len, h_qo, d, device=device).to(torch.float16)
    k, v, _, _ = rand_kv(kv_len, h_kv, d, torch.float16, device)
    mask = torch.rand(qo_len, kv_len, device=device) < 0.5
    mask[5] = False
    kwargs = dict(causal=True)  # ignored: a custom mask takes precedence
    if packed:
        bits = mask.reshape(-1).cpu().numpy()
        import numpy as np
        kwargs["packed_custom_mask"] = torch.from_numpy(np.packbits(bits, bitorder="little")).to(device)
    else:
        kwargs["custom_mask"] = mask
    o, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, return_lse=True, **kwargs)
    (o32, l32), (olp, llp) = refs(q, k, v, torch.float16, custom_mask=mask)
    assert_close_policy(o, o32, olp, name="o")
    assert_close_policy(lse, l32, llp, name="lse")
    assert torch.all(o[5] == 0) and torch.all(lse[5] == float("-inf"))


def test_empty_kv_gives_zero_and_neg_inf(device):
    q = torch.randn(5, 4, 64, device=device).to(torch.float16)
    k = torch.randn(0, 2, 64, device=device).to(torch.float16)
    o, lse = flashinfer.single_prefill_with_kv_cache(q, k, k.clone(), return_lse=True)
    assert torch.all(o == 0) and torch.all(lse == float("-inf"))


def test_empty_query(device):
    q = torch.randn(0, 4, 64, device=device).to(torch.float16)
    k = torch.randn(10, 2, 64, device=device).to(torch.float16)
    o = flashinfer.single_prefill_with_kv_cache(q, k, k.clone(), causal=True)
    assert o.shape == (0, 4, 64)


def test_noncontiguous_fused_qkv(device):
    """q, k, v as column slices of one fused [tokens, (H_qo + 2 H_kv) * D] projection."""
    n, h_qo, h_kv, d = 60, 8, 2, 64
    qkv = torch.randn(n, (h_qo + 2 * h_kv) * d, device=device).to(torch.bfloat16)
    q = qkv[:, : h_qo * d].view(n, h_qo, d)
    k = qkv[:, h_qo * d: (h_qo + h_kv) * d].view(n, h_kv, d)
    v = qkv[:, (h_qo + h_kv) * d:].view(n, h_kv, d)
    assert not q.is_contiguous() and not k.is_contiguous()
    o = flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True)
    (o32, _), (olp, _) = refs(q, k, v, torch.bfloat16, causal=True)
    assert_close_policy(o, o32, olp)


def test_return_lse_partial_alias(device):
    q = torch.randn(9, 4, 64, device=device).to(torch.float16)
    k, v, _, _ = rand_kv(20, 4, 64, torch.float16, device)
    o, lse = flashinfer.single_prefill_with_kv_cache_return_lse(q, k, v, causal=True)
    assert torch.equal(o, flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True))
    assert lse.shape == (9, 4)


def test_decode_equals_prefill_of_one(device):
    """Decode at position kv_len - 1 is causal prefill with qo_len = 1 (FlashInfer's own check)."""
    q = torch.randn(8, 128, device=device).to(torch.float16)
    k, v, _, _ = rand_kv(333, 2, 128, torch.float16, device)
    od, ld = flashinfer.single_decode_with_kv_cache(q, k, v, return_lse=True, pos_encoding_mode="ROPE_LLAMA")
    op, lp = flashinfer.single_prefill_with_kv_cache(q[None], k, v, causal=True, return_lse=True,
                                                     pos_encoding_mode="ROPE_LLAMA")
    assert (od.float() - op[0].float()).abs().max().item() < 5e-3
    assert (ld - lp[0]).abs().max().item() < 1e-3


@pytest.mark.parametrize("per_head,d", [(True, 128), (False, 64)], ids=["per-head-d128", "per-tensor-d64"])
def test_fp8_qkv_prefill(per_head, d, device):
    """fp8 q/k/v with dequantisation scales (FlashInfer's fp8 prefill): logits scale by
    scale_q[h] * scale_k[h_kv], the output by scale_v[h_kv]; fp16 output by default."""
    qo_len, kv_len, h_qo, h_kv = 40, 130, 8, 2
    q8 = (torch.randn(qo_len, h_qo, d, device=device) * 3).to(E4M3)
    k8 = (torch.randn(kv_len, h_kv, d, device=device) * 3).to(E4M3)
    v8 = (torch.randn(kv_len, h_kv, d, device=device) * 3).to(E4M3)
    n = (h_qo, h_kv, h_kv) if per_head else (1, 1, 1)
    sq, sk, sv = (torch.rand(m, device=device) + 0.5 for m in n)
    o, lse = flashinfer.single_prefill_with_kv_cache(q8, k8, v8, scale_q=sq, scale_k=sk, scale_v=sv, causal=True,
                                                     return_lse=True)
    assert o.dtype == F16
    q = q8.float() * sq.expand(h_qo)[None, :, None]
    k = k8.float() * sk.expand(h_kv)[None, :, None]
    v = v8.float() * sv.expand(h_kv)[None, :, None]
    (o32, l32), (olp, llp) = refs(q, k, v, F16, causal=True)
    assert_close_policy(o, o32, olp, name="o")
    assert_close_policy(lse, l32, llp, name="lse")


# (id, qo_len, kv_len, H_qo, H_kv, head_dim, dtype, layout, kwargs): row tiles x KV heads for at
# least half of an H100's 132 SMs, so that the batch prefill's Gluon kernel takes them.
ON_BATCH_KERNEL = [
    ("g4-d128-causal", 2048, 2048, 32, 8, 128, BF16, "NHD", dict(causal=True)),
    ("g1-d64-hnd-window", 1100, 3000, 16, 16, 64, F16, "HND", dict(causal=True, window_left=700)),
    ("g7-d128-softcap-noncausal", 700, 650, 28, 4, 128, BF16, "NHD", dict(logits_soft_cap=30.0)),
    ("g2-d256-chunked", 1200, 1900, 32, 16, 256, BF16, "NHD", dict(causal=True, sm_scale=0.07)),
    ("g4-d128-long-at-once", 6144, 6144, 32, 8, 128, BF16, "NHD", dict(causal=True)),
]


@pytest.mark.skipif(not sm90(), reason="the batch prefill's Gluon kernel runs on sm_90 only")
@pytest.mark.parametrize("case", ON_BATCH_KERNEL, ids=[c[0] for c in ON_BATCH_KERNEL])
def test_single_prefill_on_batch_kernel(case, device, monkeypatch):
    """On sm_90 a plain single prefill with programs for half the SMs runs on the batch Gluon kernel: at once
    when its work dwarfs a plan's host time, else from its shape's second call on; both calls
    within the tolerance policy of the fp32 reference."""
    name, qo_len, kv_len, h_qo, h_kv, d, dtype, layout, kw = case
    used = spy_hopper_prefill(monkeypatch)
    q = torch.randn(qo_len, h_qo, d, device=device).to(dtype)
    k, v, _, _ = rand_kv(kv_len, h_kv, d, dtype, device, layout)
    (o32, l32), (olp, llp) = refs(q, as_nhd(k, layout), as_nhd(v, layout), lowp_of(dtype), **kw)
    for call in range(2):
        o, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, kv_layout=layout, return_lse=True, **kw)
        # the wrapper's later runs replay its launch without deciding again
        assert used == ([True] if call or "at-once" in name else [])
        assert_close_policy(o, o32, olp, name=f"o (call {call})")
        assert_close_policy(lse, l32, llp, name=f"lse (call {call})")
