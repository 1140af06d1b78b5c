"""BatchDecodeWithPagedKVCacheWrapper against the fp32 reference on random page tables."""
import functools

import pytest
import torch

import pyflashinfer as flashinfer
import pyflashinfer.attention.decode as decode_mod
from helpers import assert_close_policy, lowp_of
from cases import FP8, random_paged_cache, refs
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
    ("window-split", [700, 300, 5, 101], 8, 2, 64, 16, BF16, BF16, "NHD", dict(window_left=100, fixed_split_size=4)),
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
    assert not w.plan_value.counters.any(), "the fused merge must leave its arrival counters at zero"



@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's matmul meets NaN
@pytest.mark.parametrize("kv_dtype,q_dtype,d", [(E4M3, F16, 128), (E5M2, BF16, 64)], ids=["e4m3-d128", "e5m2-d64"])
def test_fp8_v_codes_exact(kv_dtype, q_dtype, d, device):
    """Every fp8 code (subnormals, extremes, inf and NaN) reaches the output exactly through the
    tensor-core p.v: each (request, KV head) attends to one key alone (p = 1 there, exactly 0
    elsewhere), whose V row holds a share of the 256 codes, in tiles read unmasked and masked."""
    kv_lens, h_qo, h_kv, page = [300, 200], 4, 2, 16
    pick = [[5, 290], [199, 130]]  # the key each (request, KV head) attends to
    pages_per = [(n + page - 1) // page for n in kv_lens]
    k = torch.zeros(sum(pages_per) * page, h_kv, d)
    v = torch.zeros_like(k)
    codes = torch.arange(256, dtype=torch.uint8).view(kv_dtype).float().view(-1, d)
    first = [0, pages_per[0] * page]  # the requests' first token in the cache (pages in order)
    for b in range(len(kv_lens)):
        for h in range(h_kv):
            t = first[b] + pick[b][h]
            k[t, h, 0] = 16.0
            v[t, h] = codes[(b * h_kv + h) % codes.shape[0]]
    cache = torch.stack([k, v], 1).view(-1, page, 2, h_kv, d).transpose(1, 2).to(kv_dtype).to(device)
    indptr = torch.tensor([0, pages_per[0], sum(pages_per)], dtype=torch.int32, device=device)
    indices = torch.arange(sum(pages_per), dtype=torch.int32, device=device)
    last = torch.tensor([(n - 1) % page + 1 for n in kv_lens], dtype=torch.int32, device=device)
    q = torch.zeros(len(kv_lens), h_qo, d, device=device, dtype=q_dtype)
    q[:, :, 0] = 16.0  # logit 256 at the picked key, 0 elsewhere
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device), use_tensor_cores=True)
    w.plan(indptr, indices, last, h_qo, h_kv, d, page, q_data_type=q_dtype, kv_data_type=kv_dtype, sm_scale=1.0)
    out = w.run(q, cache, v_scale=0.5)
    group = h_qo // h_kv
    want = torch.stack([torch.stack([codes[(b * h_kv + hq // group) % codes.shape[0]] for hq in range(h_qo)])
                        for b in range(len(kv_lens))]) * 0.5
    torch.testing.assert_close(out.float().cpu(), want, rtol=0, atol=0, equal_nan=True)


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


def test_workspace_shared_with_a_prefill_wrapper(device):
    """One float workspace for a decode and a prefill wrapper (as serving engines share it): the
    prefill's partial states overwrite the decode's between runs, and the decode's fused merge
    keeps its arrival counters outside the workspace, so interleaved runs stay right."""
    ws = _workspace(device)
    kv_lens = [900, 40, 1300]
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache(kv_lens, 2, 64, 16, BF16, device)
    q = torch.randn(3, 8, 64, device=device).to(BF16)
    dec = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, use_tensor_cores=True)
    dec.plan(indptr, indices, last, 8, 2, 64, 16, q_data_type=BF16, fixed_split_size=4)
    pre = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws)
    qo_indptr = torch.tensor([0, 5, 6, 16], dtype=torch.int32, device=device)
    pre.plan(qo_indptr, indptr, indices, last, 8, 2, 64, 16, causal=True, q_data_type=BF16, fixed_split_size=4)
    qp = torch.randn(16, 8, 64, device=device).to(BF16)
    assert dec.plan_value.num_partials > 0 and pre.plan_value.num_partials > 0
    first = dec.run(q, paged)
    for _ in range(2):
        pre.run(qp, paged)
        out, lse = dec.run(q, paged, return_lse=True)
        assert torch.equal(out, first)
    _check(out, lse, q, ks, vs, BF16)


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


def test_plan_repr_is_readable(device):
    paged, (indptr, indices, last), _, _, _ = random_paged_cache([1500, 3], 2, 64, 16, F16, device)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    w.plan(indptr, indices, last, 8, 2, 64, 16)
    text = repr(w.plan_value)
    assert "batch=2" in text and "work items" in text and "kv_chunk" in text


# (id, kv_lens, use_tensor_cores, q_len_per_req, plan kwargs): splits put the sink in the merge
SINK_CASES = [
    ("cuda-cores", [40, 0, 200], False, 1, dict(disable_split_kv=True)),
    ("tensor-cores-split", [700, 0, 5], True, 1, dict(fixed_split_size=4)),
    ("cuda-cores-split", [700, 0, 3], False, 1, dict(fixed_split_size=4)),
    ("n3-split", [300, 1, 0], True, 3, dict(fixed_split_size=4)),
]


@pytest.mark.parametrize("case", SINK_CASES, ids=[c[0] for c in SINK_CASES])
def test_decode_sinks(case, device):
    """Attention sinks: one logit per qo head in the softmax denominator (empty requests give
    out 0 and the sink's lse)."""
    _, kv_lens, use_tc, n, plan_kw = case
    h_qo, h_kv, d = 8, 2, 64
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache(kv_lens, h_kv, d, 16, BF16, device)
    sinks = torch.randn(h_qo, device=device) * 3
    q = torch.randn(len(kv_lens) * n, h_qo, d, device=device).to(BF16)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device), use_tensor_cores=use_tc)
    w.plan(indptr, indices, last, h_qo, h_kv, d, 16, q_data_type=BF16, q_len_per_req=n, **plan_kw)
    assert (w.plan_value.num_partials > 0) == ("split" in case[0])
    for _ in range(2):  # the second run replays the first's launches on the GPU
        out, lse = w.run(q, paged, return_lse=True, sinks=sinks)
        _check_multi(out, lse, q, ks, vs, n, BF16, sinks=sinks)
    empty = kv_lens.index(0)
    assert torch.all(out[empty * n:(empty + 1) * n] == 0)
    torch.testing.assert_close(lse[empty * n], sinks / torch.log(torch.tensor(2.0)))
    with pytest.raises(ValueError, match="sinks"):
        w.run(q, paged, sinks=sinks[:-1])
    with pytest.raises(ValueError, match="contiguous"):
        w.run(q, paged, sinks=torch.randn(2 * h_qo, device=device)[::2])


# ---- q_len_per_req > 1: n query tokens per request, causal among them (aligned bottom-right)

def _check_multi(out, lse, q, ks, vs, n, q_dtype, **ref_kw):
    """Request b's rows b*n .. b*n + n - 1 against the causal reference over its keys."""
    for b in range(len(ks)):
        r = slice(b * n, (b + 1) * n)
        (o32, l32), (olp, llp) = refs(q[r], ks[b], vs[b], lowp_of(q_dtype), causal=True, **ref_kw)
        assert_close_policy(out[r], o32, olp, name=f"out[{b}]")
        if lse is not None:
            assert_close_policy(lse[r], l32, llp, name=f"lse[{b}]")


# (id, kv_lens, H_qo, H_kv, head_dim, page_size, q_len_per_req, q dtype, kv dtype, layout, plan kwargs);
# every case has an empty request or one with kv_len < q_len_per_req (rows that see no key)
MULTI_CASES = [
    ("n2-g1-p1", [5, 0, 1, 40], 2, 2, 64, 1, 2, F16, F16, "NHD", {}),
    ("n3-g4-p16-hnd", [17, 2, 100, 16], 8, 2, 64, 16, 3, BF16, BF16, "HND", {}),
    ("n4-g5-p16-split", [300, 3, 0, 70], 10, 2, 64, 16, 4, F16, F16, "NHD", dict(fixed_split_size=2)),
    ("n2-g1-p1-split", [90, 1], 4, 4, 64, 1, 2, BF16, BF16, "NHD", dict(fixed_split_size=32)),
    ("n2-g4-long-split", [700, 1], 8, 2, 64, 16, 2, BF16, BF16, "NHD", {}),
    ("n4-g20-row-tiles-split", [150, 3], 20, 1, 64, 16, 4, F16, F16, "NHD", dict(fixed_split_size=4)),
    ("n3-g4-rope-window-softcap", [60, 2, 33], 8, 2, 64, 16, 3, BF16, BF16, "NHD",
     dict(pos_encoding_mode="ROPE_LLAMA", window_left=20, logits_soft_cap=20.0)),
    ("n2-g4-alibi-smscale", [50, 0], 8, 2, 64, 16, 2, F16, F16, "NHD", dict(pos_encoding_mode="ALIBI", sm_scale=0.2)),
    ("n3-g5-fp8", [40, 2], 10, 2, 64, 16, 3, F16, E4M3, "NHD", {}),
]


@pytest.mark.parametrize("case", MULTI_CASES, ids=[c[0] for c in MULTI_CASES])
def test_multi_token_decode(case, device):
    name, kv_lens, h_qo, h_kv, d, page_size, n, q_dtype, kv_dtype, layout, plan_kw = case
    paged, (indptr, indices, last), ks, vs, kv_scale = random_paged_cache(kv_lens, h_kv, d, page_size, kv_dtype,
                                                                          device, layout)
    q = torch.randn(len(kv_lens) * n, h_qo, d, device=device).to(q_dtype)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device), layout)  # use_tensor_cores=None
    w.plan(indptr, indices, last, h_qo, h_kv, d, page_size, q_data_type=q_dtype, kv_data_type=kv_dtype,
           q_len_per_req=n, **plan_kw)
    plan = w.plan_value
    assert plan.use_tensor_cores and plan.q_len_per_req == n
    assert (plan.num_partials > 0) == ("split" in name)
    if "row-tiles" in name:
        assert plan.block_m == 64 and plan.num_work == 2 * (3 + 1)  # 80 rows: 2 tiles x (3 + 1) KV chunks
    scales = dict(k_scale=kv_scale, v_scale=kv_scale) if kv_dtype in FP8 else {}
    out, lse = w.run(q, paged, return_lse=True, q_len_per_req=n, **scales)
    ref_kw = {k: v for k, v in plan_kw.items()
              if k in ("pos_encoding_mode", "window_left", "logits_soft_cap", "sm_scale")}
    _check_multi(out, lse, q, ks, vs, n, q_dtype, **scales, **ref_kw)


def test_multi_token_out_buffers(device):
    """out=/lse= buffers give the allocated result: packed ones, and strided ones whose token
    rows cannot be viewed as one merge row per request (the merge then runs per token)."""
    n, h_qo = 3, 8
    paged, (indptr, indices, last), _, _, _ = random_paged_cache([200, 5, 0], 2, 64, 16, F16, device)
    q = torch.randn(3 * n, h_qo, 64, device=device).to(F16)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    w.plan(indptr, indices, last, h_qo, 2, 64, 16, q_len_per_req=n, fixed_split_size=4)
    assert w.plan_value.num_partials > 0
    out_ref, lse_ref = w.run(q, paged, return_lse=True)
    assert torch.equal(w.run(q, paged), out_ref)
    for width in (h_qo, 2 * h_qo):
        out = torch.full((3 * n, width, 64), float("nan"), dtype=F16, device=device)[:, :h_qo]
        lse = torch.full((3 * n, width), float("nan"), device=device)[:, :h_qo]
        w.run(q, paged, out=out, lse=lse, return_lse=True)
        assert torch.equal(out, out_ref) and torch.equal(lse, lse_ref), f"width {width}"


def test_multi_token_cuda_graph_mode_replans(device):
    """The CUDA-graph code path on its fixed buffers (nothing is captured on the CPU): grid,
    plan buffer and partial states stay put while re-plans go from one token per request to
    long split requests, through plan() and through fast_decode_plan on the caller-filled buffers."""
    batch, h_qo, h_kv, d, page, n = 3, 8, 2, 64, 16, 2
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache([600, 1, 70], h_kv, d, page, BF16, device)
    i32 = dict(dtype=torch.int32, device=device)
    indptr_buf, indices_buf, last_buf = torch.empty(batch + 1, **i32), torch.empty(indices.numel() + 8, **i32), \
        torch.empty(batch, **i32)
    w = flashinfer.CUDAGraphBatchDecodeWithPagedKVCacheWrapper(_workspace(device), indptr_buf, indices_buf, last_buf)
    kw = dict(q_data_type=BF16, q_len_per_req=n)
    w.plan(torch.arange(batch + 1, **i32), indices[:batch], torch.ones(batch, **i32), h_qo, h_kv, d, page, **kw)
    first = w.plan_value
    q = torch.randn(batch * n, h_qo, d, device=device).to(BF16)
    out = torch.empty(batch * n, h_qo, d, dtype=BF16, device=device)
    lse = torch.empty(batch * n, h_qo, device=device)
    one_token = [paged[0][indices[b]][:1] for b in range(batch)], [paged[1][indices[b]][:1] for b in range(batch)]

    def run_and_check(ks, vs):
        plan = w.plan_value
        assert plan.max_work == first.max_work and plan.buffer is first.buffer
        assert plan.part_o.data_ptr() == first.part_o.data_ptr()
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        w.run(q, paged, out=out, lse=lse, return_lse=True)
        _check_multi(out, lse, q, ks, vs, n, BF16)

    run_and_check(*one_token)
    w.plan(indptr, indices, last, h_qo, h_kv, d, page, **kw)
    assert w.plan_value.num_partials > 0, "the long request should split"
    assert torch.equal(indptr_buf, indptr) and torch.equal(last_buf, last)
    run_and_check(ks, vs)
    # fast_decode_plan on buffers the caller filled itself, then on the long table again
    indptr_buf.copy_(torch.arange(batch + 1, **i32))
    last_buf.fill_(1)
    indices_buf[:batch] = indices[:batch]
    flashinfer.fast_decode_plan(w, indptr_buf, indices_buf, last_buf, h_qo, h_kv, d, page, **kw)
    run_and_check(*one_token)
    flashinfer.fast_decode_plan(w, indptr, indices, last, h_qo, h_kv, d, page, **kw)
    run_and_check(ks, vs)
    with pytest.raises(ValueError, match="q_len_per_req"):  # the captured q has n tokens per request
        w.plan(indptr, indices, last, h_qo, h_kv, d, page, q_data_type=BF16, q_len_per_req=1)


def test_multi_token_bad_inputs(device):
    paged, (indptr, indices, last), _, _, _ = random_paged_cache([20, 30], 2, 64, 16, F16, device)
    q = torch.randn(4, 8, 64, device=device).half()
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    w.plan(indptr, indices, last, 8, 2, 64, 16, q_len_per_req=2)
    with pytest.raises(ValueError, match=r"shape \(4, 8, 64\)"):
        w.run(q[:2], paged)
    for n in (1, 3):
        with pytest.raises(ValueError, match="q_len_per_req"):
            w.run(q, paged, q_len_per_req=n)
    w.run(q, paged, q_len_per_req=2)
    with pytest.raises(ValueError, match="q_len_per_req"):
        w.plan(indptr, indices, last, 8, 2, 64, 16, q_len_per_req=0)
    cuda_cores = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device), use_tensor_cores=False)
    with pytest.raises(ValueError, match="use_tensor_cores=True"):
        cuda_cores.plan(indptr, indices, last, 8, 2, 64, 16, q_len_per_req=2)


# ---- fast_decode_plan

@pytest.fixture
def count_full_plans(monkeypatch):
    """How many times the static arguments were checked and derived (planned_dtypes runs once per)."""
    calls = []
    real = decode_mod.planned_dtypes
    monkeypatch.setattr(decode_mod, "planned_dtypes", lambda *a: calls.append(a) or real(*a))
    return calls


@pytest.mark.parametrize("override", [False, True], ids=["indptr", "global-override-indptr-cpu"])
def test_fast_decode_plan_matches_plan(override, device, count_full_plans):
    """After one plan(), the patched-in fast_decode_plan gives plan()'s plan and results for new
    lengths without deriving the static arguments again."""
    h_qo, h_kv, d, page = 8, 2, 64, 16
    kw = dict(q_data_type=BF16, q_len_per_req=2, fixed_split_size=4)
    _, old_table, _, _, _ = random_paged_cache([30, 5, 17], h_kv, d, page, BF16, device)
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache([200, 0, 3], h_kv, d, page, BF16, device)
    fast = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    fast.plan(*old_table, h_qo, h_kv, d, page, **kw)
    fast.plan = functools.partial(flashinfer.fast_decode_plan, fast)
    del count_full_plans[:]
    if override:  # indptr itself is never read: a tensor with no data stands in for it
        fast.plan(torch.empty(4, dtype=torch.int32, device="meta"), indices, last, h_qo, h_kv, d, page,
                  global_override_indptr_cpu=indptr.cpu(), **kw)
    else:
        fast.plan(indptr, indices, last, h_qo, h_kv, d, page, **kw)
    assert not count_full_plans
    full = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    full.plan(indptr, indices, last, h_qo, h_kv, d, page, **kw)
    assert torch.equal(fast.plan_value.buffer, full.plan_value.buffer)
    assert repr(fast.plan_value) == repr(full.plan_value)
    q = torch.randn(6, h_qo, d, device=device).to(BF16)
    o_fast, l_fast = fast.run(q, paged, return_lse=True)
    o_full, l_full = full.run(q, paged, return_lse=True)
    assert torch.equal(o_fast, o_full) and torch.equal(l_fast, l_full)
    _check_multi(o_fast, l_fast, q, ks, vs, 2, BF16)


def test_fast_decode_plan_falls_back_to_plan(device, count_full_plans):
    """Before any plan, and whenever a static argument changes, fast_decode_plan is plan()."""
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache([40, 9], 2, 64, 1, F16, device)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device))
    flashinfer.fast_decode_plan(w, indptr, indices, last, 8, 2, 64, 1)
    assert len(count_full_plans) == 1
    q = torch.randn(2, 8, 64, device=device).half()
    _check(w.run(q, paged), None, q, ks, vs, F16)
    # page_size 1, host indptr: neither indptr nor last_page_len is read
    meta = dict(dtype=torch.int32, device="meta")
    flashinfer.fast_decode_plan(w, torch.empty(3, **meta), indices, torch.empty(2, **meta), 8, 2, 64, 1,
                                global_override_indptr_cpu=indptr.cpu())
    assert len(count_full_plans) == 1
    _check(w.run(q, paged), None, q, ks, vs, F16)
    flashinfer.fast_decode_plan(w, indptr, indices, last, 8, 2, 64, 1, q_len_per_req=3)
    assert len(count_full_plans) == 2 and w.plan_value.q_len_per_req == 3
    q3 = torch.randn(6, 8, 64, device=device).half()
    out, lse = w.run(q3, paged, return_lse=True)
    _check_multi(out, lse, q3, ks, vs, 3, F16)
    flashinfer.fast_decode_plan(w, indptr, indices, last, 4, 2, 64, 1, q_data_type=BF16)
    assert len(count_full_plans) == 3 and w.plan_value.num_qo_heads == 4 and w.plan_value.q_dtype == BF16
    with pytest.raises(ValueError, match="multiple"):
        flashinfer.fast_decode_plan(w, indptr, indices, last, 7, 2, 64, 1)


@pytest.mark.parametrize("use_tensor_cores", [False, True], ids=["cuda-cores", "tensor-cores"])
def test_window_plan_skips_keys_outside(use_tensor_cores, device):
    """A sliding window's plan splits only the keys the window leaves: with 64-token chunks, a
    2000-token request under a window of 100 gets a few work items, not one per 64 tokens."""
    _, (indptr, indices, last), _, _, _ = random_paged_cache([2000, 30], 2, 64, 16, BF16, device, "NHD")
    counts = []
    for window in (-1, 100):
        w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(device), "NHD", use_tensor_cores=use_tensor_cores)
        w.plan(indptr, indices, last, 8, 2, 64, 16, q_data_type=BF16, window_left=window, fixed_split_size=4)
        counts.append(w.plan_value.num_work)
    assert counts[0] >= 2000 // 64 and counts[1] <= 6, counts  # the window's start is aligned down to a KV tile
