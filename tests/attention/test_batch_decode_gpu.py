"""What only a GPU can show: CUDA-graph replay after re-plan, and torch.compile of run()."""
import pytest
import torch

import pyflashinfer as flashinfer
from helpers import assert_close_policy
from cases import random_paged_cache, refs
from pyflashinfer.attention.reference import decode_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BF16 = torch.bfloat16


@pytest.mark.parametrize("use_tensor_cores,n,with_sinks", [(False, 1, False), (True, 1, False), (True, 3, True)],
                         ids=["cuda-cores", "tensor-cores", "tensor-cores-3-tokens-sinks"])
def test_cuda_graph_replay_after_replan(use_tensor_cores, n, with_sinks):
    """Capture run() under a 1-page-per-request plan; re-plan with long, uneven lengths (so
    the new plan splits KV); replay; compare with the reference (n query tokens per request,
    causal among them; optional attention sinks)."""
    batch, h_qo, h_kv, d, page = 7, 32, 8, 128, 16
    lens = [4000, 1, 0, 333, 2049, 16, 17]
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache(lens, h_kv, d, page, BF16, "cuda")
    ws = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    indptr_buf = torch.empty(batch + 1, dtype=torch.int32, device="cuda")
    indices_buf = torch.empty(indices.numel() + 100, dtype=torch.int32, device="cuda")
    last_buf = torch.empty(batch, dtype=torch.int32, device="cuda")
    w = flashinfer.CUDAGraphBatchDecodeWithPagedKVCacheWrapper(ws, indptr_buf, indices_buf, last_buf,
                                                               use_tensor_cores=use_tensor_cores)
    warm_indptr = torch.arange(batch + 1, dtype=torch.int32, device="cuda")
    w.plan(warm_indptr, indices[:batch], torch.ones(batch, dtype=torch.int32, device="cuda"), h_qo, h_kv, d, page,
           q_data_type=BF16, q_len_per_req=n)
    q = torch.randn(batch * n, h_qo, d, device="cuda", dtype=BF16)
    sinks = torch.randn(h_qo, device="cuda") if with_sinks else None
    out = torch.full((batch * n, h_qo, d), float("nan"), device="cuda", dtype=BF16)
    lse = torch.full((batch * n, h_qo), float("nan"), device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            w.run(q, paged, out=out, lse=lse, return_lse=True, sinks=sinks)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w.run(q, paged, out=out, lse=lse, return_lse=True, sinks=sinks)
    w.plan(indptr, indices, last, h_qo, h_kv, d, page, q_data_type=BF16, q_len_per_req=n)
    assert w.plan_value.num_partials > 0, "the re-plan should split long requests"
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    for b in range(batch):
        r = slice(b * n, (b + 1) * n)
        (o32, l32), (olp, llp) = refs(q[r], ks[b], vs[b], BF16, causal=True, sinks=sinks)
        assert_close_policy(out[r], o32, olp, name=f"out[{b}]")
        assert_close_policy(lse[r], l32, llp, name=f"lse[{b}]")


def test_torch_compile_run():
    lens = [100, 2000, 7]
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache(lens, 8, 128, 16, BF16, "cuda")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(32 << 20, dtype=torch.uint8, device="cuda"))
    w.plan(indptr, indices, last, 32, 8, 128, 16, q_data_type=BF16)
    q = torch.randn(3, 32, 128, device="cuda", dtype=BF16)

    @torch.compile(fullgraph=True)
    def step(q, paged):
        return w.run(q, paged) * 2

    out = step(q, paged)
    eager = w.run(q, paged) * 2
    assert torch.equal(out, eager)


@pytest.mark.parametrize("use_tensor_cores", [False, True], ids=["cuda-cores", "tensor-cores"])
def test_repeated_runs_replay_launches(use_tensor_cores):
    """Later run() calls replay the first call's launches with new q/out/lse: each result must
    still match a fresh computation, with and without out=/lse= and with a fresh (k, v) tuple."""
    lens = [700, 3, 2000]
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache(lens, 8, 128, 16, BF16, "cuda")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(32 << 20, dtype=torch.uint8, device="cuda"),
                                                      use_tensor_cores=use_tensor_cores)
    w.plan(indptr, indices, last, 32, 8, 128, 16, q_data_type=BF16)
    for step in range(4):
        q = torch.randn(3, 32, 128, device="cuda", dtype=BF16)
        if step >= 2:  # steps 1 and 3 replay the launches armed by steps 0 and 2
            out = torch.full((3, 32, 128), float("nan"), device="cuda", dtype=BF16)
            lse = torch.full((3, 32), float("nan"), device="cuda")
            w.run(q, (paged[0], paged[1]), out=out, lse=lse, return_lse=True)
        else:
            out, lse = w.run(q, (paged[0], paged[1]), return_lse=True)
        for b in range(3):
            o32, l32 = decode_ref(q[b], ks[b], vs[b])
            olp, llp = decode_ref(q[b], ks[b], vs[b], compute_dtype=BF16)
            assert_close_policy(out[b], o32, olp, name=f"step {step} out[{b}]")
            assert_close_policy(lse[b], l32, llp, name=f"step {step} lse[{b}]")
    assert w._replays is not None, "the fast path should be armed after the first run"


@pytest.mark.parametrize("use_tensor_cores", [False, True], ids=["cuda-cores", "tensor-cores"])
def test_fused_merge_is_race_free(use_tensor_cores):
    """The last program of a split request merges its chunks' partial states in the same launch
    (an arrival counter per request and KV head). A missing barrier or acquire shows as results
    that differ between identical launches, or as counters left non-zero: 64 requests of 16-40
    chunks each, 30 launches (replayed), every one bit-identical, right, counters at zero."""
    lens = [int(x) for x in torch.randint(2000, 5000, (64,))]
    paged, (indptr, indices, last), ks, vs, _ = random_paged_cache(lens, 8, 128, 16, BF16, "cuda")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"),
                                                      use_tensor_cores=use_tensor_cores)
    w.plan(indptr, indices, last, 32, 8, 128, 16, q_data_type=BF16, fixed_split_size=8)
    assert w.plan_value.num_partials >= 64 * 16
    q = torch.randn(64, 32, 128, device="cuda", dtype=BF16)
    first, first_lse = w.run(q, paged, return_lse=True)
    for _ in range(30):
        out, lse = w.run(q, paged, return_lse=True)
        assert torch.equal(out, first) and torch.equal(lse, first_lse)
    torch.cuda.synchronize()
    assert not w.plan_value.counters.any()
    for b in (0, 31, 63):
        o32, l32 = decode_ref(q[b], ks[b], vs[b])
        olp, llp = decode_ref(q[b], ks[b], vs[b], compute_dtype=BF16)
        assert_close_policy(out[b], o32, olp, name=f"out[{b}]")
        assert_close_policy(lse[b], l32, llp, name=f"lse[{b}]")
