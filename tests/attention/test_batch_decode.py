"""BatchDecodeWithPagedKVCacheWrapper against the fp32 reference on random page tables."""
import pytest
import torch

import pyflashinfer as flashinfer
from helpers import assert_close_policy, lowp_of
from cases import FP8, random_paged_cache
from pyflashinfer.attention.reference import decode_ref

F16, BF16, E4M3, E5M2 = torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2


def _workspace(device):
    return torch.empty(32 << 20, dtype=torch.uint8, device=device)


def _check(out, lse, q, ks, vs, q_dtype, **ref_kw):
    for b in range(q.shape[0]):
        o32, l32 = decode_ref(q[b], ks[b], vs[b], **ref_kw)
        olp, llp = decode_ref(q[b], ks[b], vs[b], compute_dtype=lowp_of(q_dtype), **ref_kw)
        assert_close_policy(out[b], o32, olp, name=f"out[{b}]")
        if lse is not None:
            assert_close_policy(lse[b], l32, llp, name=f"lse[{b}]")


# (id, kv_lens, H_qo, H_kv, head_dim, page_size, q dtype, kv dtype, layout, plan kwargs)
CASES = [
    ("g4-p16-mixed", [1, 15, 16, 17, 100, 0, 700], 8, 2, 128, 16, F16, F16, "NHD", {}),
    ("g1-p1", [5, 33, 1, 64], 4, 4, 64, 1, BF16, BF16, "HND", {}),
    ("g3-p5-odd-page", [9, 10, 11, 0, 51], 6, 2, 64, 5, F16, F16, "NHD", {}),
    ("g5-p16", [300, 2], 10, 2, 64, 16, BF16, BF16, "NHD", {}),
    ("g6-p16-hnd", [48, 49, 47], 12, 2, 128, 16, F16, F16, "HND", {}),
    ("g7-p8", [130, 7], 7, 1, 64, 8, BF16, BF16, "NHD", {}),
    ("g8-d256", [40, 90], 8, 1, 256, 16, F16, F16, "NHD", {}),
    ("long-split", [1500, 20, 900], 8, 2, 64, 16, BF16, BF16, "NHD", {}),
    ("all-empty", [0, 0], 4, 2, 64, 16, F16, F16, "NHD", {}),
    ("fp8-e4m3", [200, 31, 0], 8, 2, 128, 16, F16, E4M3, "NHD", {}),
    ("fp8-e5m2-hnd", [64, 65], 8, 2, 64, 16, BF16, E5M2, "HND", {}),
    ("rope-window-softcap", [260, 40], 8, 2, 64, 16, BF16, BF16, "NHD",
     dict(pos_encoding_mode="ROPE_LLAMA", window_left=50, logits_soft_cap=20.0)),
    ("alibi-smscale", [90, 3], 8, 4, 64, 16, F16, F16, "NHD", dict(pos_encoding_mode="ALIBI", sm_scale=0.2)),
    ("fixed-split", [700, 300, 5], 8, 2, 64, 16, F16, F16, "NHD", dict(fixed_split_size=4)),
    ("no-split", [900, 30], 8, 2, 64, 16, F16, F16, "NHD", dict(disable_split_kv=True)),
]


@pytest.mark.parametrize("use_tensor_cores", [False, True], ids=["cuda-cores", "tensor-cores"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_batch_decode(case, use_tensor_cores, device):
    _, kv_lens, h_qo, h_kv, d, page_size, q_dtype, kv_dtype, layout, plan_kw = case
    paged, (indptr, indices, last), ks, vs, kv_scale = random_paged_cache(
        kv_lens, h_kv, d, page_size, kv_dtype, device, layout, as_tuple=len(kv_lens) % 2 == 0)
    q = torch.randn(len(kv_lens), h_qo, d, device=device).to(q_dtype)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device), layout, use_tensor_cores=use_tensor_cores)
    w.plan(indptr, indices, last, h_qo, h_kv, d, page_size, q_data_type=q_dtype, kv_data_type=kv_dtype, **plan_kw)
    scales = dict(k_scale=kv_scale, v_scale=kv_scale) if kv_dtype in FP8 else {}
    out, lse = w.run(q, paged, return_lse=True, **scales)
    ref_kw = {k: v for k, v in plan_kw.items() if k in ("pos_encoding_mode", "window_left", "logits_soft_cap", "sm_scale")}
    _check(out, lse, q, ks, vs, q_dtype, **scales, **ref_kw)


def test_out_and_lse_buffers_match(device):
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache([33, 500, 0, 17], 2, 64, 16, F16, device)
    q = torch.randn(4, 8, 64, device=device).to(F16)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    w.plan(indptr, indices, last, 8, 2, 64, 16, q_data_type=F16)
    out_ref, lse_ref = w.run(q, paged, return_lse=True)
    out = torch.full_like(out_ref, float("nan"))
    lse = torch.full_like(lse_ref, float("nan"))
    w.run(q, paged, out=out, lse=lse, return_lse=True)
    assert torch.equal(out, out_ref) and torch.equal(lse, lse_ref)
    o2, l2 = w.run_return_lse(q, paged)
    assert torch.equal(o2, out_ref)


def test_batch_invariance_with_fixed_split(device):
    """With fixed_split_size, the first k requests give bit-identical results alone."""
    lens = [300, 77, 1000, 5]
    paged, (indptr, indices, last), _, _, _ = random_paged_cache(lens, 2, 64, 16, BF16, device)
    q = torch.randn(4, 8, 64, device=device).to(BF16)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device), use_tensor_cores=True)
    w.plan(indptr, indices, last, 8, 2, 64, 16, q_data_type=BF16, fixed_split_size=8)
    full = w.run(q, paged)
    w.plan(indptr[:3], indices, last[:2], 8, 2, 64, 16, q_data_type=BF16, fixed_split_size=8)
    part = w.run(q[:2].contiguous(), paged)
    assert torch.equal(full[:2], part)


def test_noncontiguous_q_and_pages(device):
    """q sliced out of a fused qkv tensor; cache pages taken with a stride (every other page)."""
    h_qo, h_kv, d, page = 8, 2, 64, 16
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache([40, 100], h_kv, d, page, F16, device,
                                                                  as_tuple=False)
    wide = torch.empty((paged.shape[0] * 2,) + tuple(paged.shape[1:]), dtype=F16, device=device)
    wide[::2] = paged
    strided = wide[::2]
    assert not strided.is_contiguous()
    qkv = torch.randn(2, h_qo + 2 * h_kv, d, device=device).to(F16)
    q = qkv[:, :h_qo]
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    w.plan(indptr, indices, last, h_qo, h_kv, d, page, q_data_type=F16)
    out = w.run(q, strided)
    _check(out, None, q, ks, vs, F16)


def test_plan_rejects_bad_page_tables(device):
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    i32 = dict(dtype=torch.int32, device=device)
    t = lambda *v: torch.tensor(v, **i32)  # noqa: E731
    with pytest.raises(ValueError, match="non-decreasing"):
        w.plan(t(0, 3, 2), t(0, 1, 2), t(1, 1), 8, 2, 64, 16)
    with pytest.raises(ValueError, match="last_page_len"):
        w.plan(t(0, 1, 2), t(0, 1), t(1, 17), 8, 2, 64, 16)
    with pytest.raises(ValueError, match="page ids"):
        w.plan(t(0, 2, 4), t(0, 1), t(1, 1), 8, 2, 64, 16)
    with pytest.raises(ValueError, match="entries"):
        w.plan(t(0, 1), t(0), t(1, 1), 8, 2, 64, 16)
    with pytest.raises(ValueError, match="multiple"):
        w.plan(t(0, 1), t(0), t(1), 7, 2, 64, 16)
    with pytest.raises(ValueError, match=">= 0"):
        w.plan(t(0, 1), t(-1), t(1), 8, 2, 64, 16, check_indices=True)
    paged, (indptr, indices, last), _, _, _ = random_paged_cache([20], 2, 64, 16, F16, device)
    w.plan(indptr, indices + 100, last, 8, 2, 64, 16, check_indices=True)
    with pytest.raises(ValueError, match="past the cache"):
        w.run(torch.randn(1, 8, 64, device=device).half(), paged)


def test_run_checks_against_plan(device):
    paged, (indptr, indices, last), _, _, _ = random_paged_cache([20, 30], 2, 64, 16, F16, device)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    with pytest.raises(RuntimeError, match="plan"):
        w.run(torch.randn(2, 8, 64, device=device).half(), paged)
    w.plan(indptr, indices, last, 8, 2, 64, 16)  # q_data_type defaults to float16, as in FlashInfer
    with pytest.raises(ValueError, match="q_data_type"):
        w.run(torch.randn(2, 8, 64, device=device).bfloat16(), paged)
    with pytest.raises(ValueError, match="shape"):
        w.run(torch.randn(3, 8, 64, device=device).half(), paged)
    with pytest.raises(ValueError, match="window_left"):
        w.run(torch.randn(2, 8, 64, device=device).half(), paged, window_left=5)
    with pytest.raises(NotImplementedError):
        w.plan(indptr, indices, last, 8, 2, 64, 16, q_len_per_req=2)


def test_plan_repr_is_readable(device):
    paged, (indptr, indices, last), _, _, _ = random_paged_cache([1500, 3], 2, 64, 16, F16, device)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    w.plan(indptr, indices, last, 8, 2, 64, 16)
    text = repr(w.plan_value)
    assert "batch=2" in text and "work items" in text and "kv_chunk" in text
