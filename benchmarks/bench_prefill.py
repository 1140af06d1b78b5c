"""Prefill on the GPU: the four prefill workloads of PERFORMANCE.md.

    python benchmarks/bench_prefill.py [--out results.json]
    python benchmarks/bench_prefill.py --sweep     # tile configs x (TMA, pointer, paged) loads
    python benchmarks/bench_prefill.py --profile   # host overhead of run() on the smallest workload
    python benchmarks/bench_prefill.py --variants  # window, soft cap, sinks (llama3-8b L16384, gemma2 d256)
    python benchmarks/bench_prefill.py --pages     # the paged wrapper by page size (1, 16, 128)
    python benchmarks/bench_prefill.py --masks     # custom masks: causal as a mask, tree verification
    python benchmarks/bench_prefill.py --short     # batched prefill on the Gluon kernel's short and long tiles

Each workload (causal, bf16, d128) runs through single_prefill_with_kv_cache (bs4 = four calls),
the ragged batch wrapper (on sm_90 the Gluon kernel; again with backend="fa2", the portable
tl.dot kernel) and the paged batch wrapper (page 16, pages scattered; on sm_90 the Gluon
kernel; again with backend="fa2"), then the same in fp8 e4m3 q/k/v (scales 1, bf16 output):
single, ragged (Gluon, fa2) and paged (Gluon), and bf16 q over the paged cache in fp8 (Gluon
through its dequantized copy, fa2), against torch
SDPA (cuDNN, flash; batched [B, H, L, D], GQA heads expanded outside the timed region) and
compiled FlexAttention in the same run, timed from the host (events around a call started from an
idle GPU) and per call inside a CUDA graph, the graph timings with the mean SM clock and power
while they ran (where they ran long enough to read). The first call of each path is timed from the host
(compile included). Every path is checked against the fp32 reference before it is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyflashinfer as flashinfer  # noqa: E402
from benchmarks.common import (  # noqa: E402
    H100_BF16_TFLOPS, ClockMonitor, host_profile, matmul_ceiling_tflops, rel_err, run_info, table, time_graph,
    time_host,
)
from benchmarks.workloads import PREFILL, Prefill  # noqa: E402
from pyflashinfer.attention.reference import attention_ref  # noqa: E402

TOL = 2e-2
# "% of mm": against the bf16 matrix-product ceiling, measured at the start of a full run.
MM_TFLOPS = {"ceiling": H100_BF16_TFLOPS}
# The full run's clock monitor: a graph-timed row gets the mean SM clock and power of its timing.
MONITOR: dict = {}
# Seconds the GPU idles before each graph timing (--settle): a short timing's clock depends on how
# long the GPU has just been busy, so without a pause each row pays for the rows before it.
SETTLE = {"s": 0.0}


def _graph_clock(fn, flops) -> dict:
    """A row's graph columns from time_graph(fn): us, TFLOP/s, mean SM clock (MHz), power (W) and
    clock-limit reasons while it ran, and TFLOP/s per GHz of that clock (the H100 runs prefill at
    its power cap); the clock columns stay out for timings too short for nvidia-smi to read
    (ClockMonitor.over)."""
    time.sleep(SETTLE["s"])
    t0 = time.time()
    tg = time_graph(fn)
    clock = MONITOR["m"].over(t0, time.time()) if "m" in MONITOR else {}
    cols = {"graph us": tg and tg * 1e6, "graph TFLOP/s": tg and flops / tg / 1e12}
    if tg and clock:
        cols.update({"graph MHz": clock["MHz"], "graph W": clock["W"], "graph limits": clock["limits"],
                     "TFLOP/s per GHz": flops / tg / 1e12 / (clock["MHz"] / 1e3)})
    return cols


def _check(name, out, q, k, v, p_dtype=None, **variant):
    """out [L, H, D] of one request against the fp32 reference on its last 256 query rows
    (bottom-right alignment makes a tail of q exact), within TOL, or for a kernel that rounds P
    to p_dtype before P V (fp8 tensor cores), within twice the error of the reference that does
    the same (reference.attention_ref). variant: attention_ref's window, soft cap, sinks."""
    ref, _ = attention_ref(q[-256:], k, v, causal=True, **variant)
    err = rel_err(out[-256:], ref)
    tol = TOL if p_dtype is None else max(TOL, 2 * rel_err(attention_ref(q[-256:], k, v, causal=True,
                                                                         p_dtype=p_dtype, **variant)[0], ref))
    if not err < tol:
        raise SystemExit(f"{name}: relative error {err:.3g} >= {tol:.3g}; refusing to time a wrong kernel")
    return err


def _first_call(fn):
    t0 = time.time()
    out = fn()
    torch.cuda.synchronize()
    return out, time.time() - t0


def _paged(ks, vs, page):
    """Scatter the requests' K/V into a page pool at random; return (cache, indptr, indices, last)."""
    n_pages = [k.shape[0] // page for k in ks]
    total = sum(n_pages)
    perm = torch.randperm(total, device="cuda")
    cache = torch.empty(total, 2, page, ks[0].shape[1], ks[0].shape[2], device="cuda", dtype=ks[0].dtype)
    start = 0
    for k, v, n in zip(ks, vs, n_pages):
        ids = perm[start: start + n]
        cache[ids, 0] = k.view(n, page, *k.shape[1:])
        cache[ids, 1] = v.view(n, page, *v.shape[1:])
        start += n
    indptr = torch.tensor([0] + torch.tensor(n_pages).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    last = torch.full((len(ks),), page, dtype=torch.int32, device="cuda")
    return cache, indptr, perm.to(torch.int32), last


def bench(w, ws, rows):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    dt = torch.bfloat16
    qs = [torch.randn(w.seq, w.q_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
    ks = [torch.randn(w.seq, w.kv_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
    vs = [torch.randn(w.seq, w.kv_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
    q_cat, k_cat, v_cat = torch.cat(qs), torch.cat(ks), torch.cat(vs)
    indptr = torch.arange(0, (w.batch + 1) * w.seq, w.seq, dtype=torch.int32, device="cuda")

    def single():
        return [flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True) for q, k, v in zip(qs, ks, vs)][-1]

    ragged = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws)
    ragged.plan(indptr, indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, q_data_type=dt)
    portable = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, backend="fa2")
    portable.plan(indptr, indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, q_data_type=dt)
    cache, p_indptr, p_indices, p_last = _paged(ks, vs, 16)
    paged = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws)
    paged.plan(indptr, p_indptr, p_indices, p_last, w.q_heads, w.kv_heads, w.head_dim, 16, causal=True,
               q_data_type=dt)
    paged_portable = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, backend="fa2")
    paged_portable.plan(indptr, p_indptr, p_indices, p_last, w.q_heads, w.kv_heads, w.head_dim, 16, causal=True,
                        q_data_type=dt)
    q8s, k8s, v8s = ([t.to(torch.float8_e4m3fn) for t in ts] for ts in (qs, ks, vs))
    ones_q = torch.ones(w.q_heads, device="cuda")
    ones_kv = torch.ones(w.kv_heads, device="cuda")

    def single_fp8():
        return [flashinfer.single_prefill_with_kv_cache(q, k, v, scale_q=ones_q, scale_k=ones_kv, scale_v=ones_kv,
                                                        causal=True) for q, k, v in zip(q8s, k8s, v8s)][-1]

    e4m3 = torch.float8_e4m3fn
    q8_cat, k8_cat, v8_cat, cache8 = q_cat.to(e4m3), k_cat.to(e4m3), v_cat.to(e4m3), cache.to(e4m3)
    ragged8 = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws)
    ragged8.plan(indptr, indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, q_data_type=e4m3,
                 kv_data_type=e4m3, o_data_type=dt)
    portable8 = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, backend="fa2")
    portable8.plan(indptr, indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, q_data_type=e4m3,
                   kv_data_type=e4m3, o_data_type=dt)
    paged8 = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws)
    paged8.plan(indptr, p_indptr, p_indices, p_last, w.q_heads, w.kv_heads, w.head_dim, 16, causal=True,
                q_data_type=e4m3, kv_data_type=e4m3, o_data_type=dt)
    paged_kv8, paged_kv8_portable = (flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, backend=b)
                                     for b in ("auto", "fa2"))
    for wr in (paged_kv8, paged_kv8_portable):
        wr.plan(indptr, p_indptr, p_indices, p_last, w.q_heads, w.kv_heads, w.head_dim, 16, causal=True,
                q_data_type=dt, kv_data_type=e4m3)

    paths = [("single (per request)", single, lambda o: o),
             ("ragged wrapper", lambda: ragged.run(q_cat, k_cat, v_cat), lambda o: o[-w.seq:]),
             ("ragged wrapper, portable kernel (fa2)", lambda: portable.run(q_cat, k_cat, v_cat), lambda o: o[-w.seq:]),
             ("paged wrapper p16", lambda: paged.run(q_cat, cache), lambda o: o[-w.seq:]),
             ("paged wrapper p16, portable kernel (fa2)", lambda: paged_portable.run(q_cat, cache),
              lambda o: o[-w.seq:])]
    paths += [("single fp8 q/k/v", single_fp8, lambda o: o),
              ("ragged wrapper fp8 q/k/v", lambda: ragged8.run(q8_cat, k8_cat, v8_cat), lambda o: o[-w.seq:]),
              ("ragged wrapper fp8 q/k/v, portable kernel (fa2)", lambda: portable8.run(q8_cat, k8_cat, v8_cat),
               lambda o: o[-w.seq:]),
              ("paged wrapper p16 fp8 q/k/v", lambda: paged8.run(q8_cat, cache8), lambda o: o[-w.seq:]),
              ("paged wrapper p16 fp8 KV (bf16 q)", lambda: paged_kv8.run(q_cat, cache8), lambda o: o[-w.seq:]),
              ("paged wrapper p16 fp8 KV (bf16 q), portable kernel (fa2)",
               lambda: paged_kv8_portable.run(q_cat, cache8), lambda o: o[-w.seq:])]
    # fp8 plans on the Gluon kernel multiply fp8 P (they hold V^T): their reference rounds P too
    fp8_p = {label for label, wr in (("ragged wrapper fp8 q/k/v", ragged8), ("paged wrapper p16 fp8 q/k/v", paged8))
             if wr.plan_value.v_t is not None}
    for label, fn, last_req in paths:
        out, first = _first_call(fn)
        # the fp8 values, dequantised
        ref_in = (qs, k8s, v8s) if "fp8 KV" in label else (q8s, k8s, v8s) if "fp8" in label else (qs, ks, vs)
        err = _check(f"{w.name} {label}", last_req(out), *(t[-1].to(torch.bfloat16) for t in ref_in),
                     p_dtype=e4m3 if label in fp8_p else None)
        t = time_host(fn)
        graph = _graph_clock(fn, w.flops) if "single" not in label else {}
        row = {"workload": w.name, "impl": label, "us": t * 1e6, "TFLOP/s": w.flops / t / 1e12,
               "% of mm": 100 * w.flops / t / 1e12 / MM_TFLOPS["ceiling"], **graph, "rel err": err,
               "first call s": first}
        print(row, flush=True)
        rows.append(row)
    qb = torch.stack(qs).transpose(1, 2).contiguous()
    kb = torch.stack(ks).transpose(1, 2).repeat_interleave(w.q_heads // w.kv_heads, 1).contiguous()
    vb = torch.stack(vs).transpose(1, 2).repeat_interleave(w.q_heads // w.kv_heads, 1).contiguous()
    for label, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
        try:
            def fn():
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(qb, kb, vb, is_causal=True)
            fn()
            t = time_host(fn)
            graph = _graph_clock(fn, w.flops)
            rows.append({"workload": w.name, "impl": label, "us": t * 1e6, "TFLOP/s": w.flops / t / 1e12,
                         "% of mm": 100 * w.flops / t / 1e12 / MM_TFLOPS["ceiling"], **graph})
        except Exception as e:
            print(f"  {label} unavailable: {type(e).__name__}: {str(e)[:120]}")
    try:
        flex = torch.compile(flex_attention)
        bm = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, w.seq, w.seq, device="cuda")
        flex(qb, kb, vb, block_mask=bm)
        t = time_host(lambda: flex(qb, kb, vb, block_mask=bm))
        rows.append({"workload": w.name, "impl": "flex (compiled)", "us": t * 1e6, "TFLOP/s": w.flops / t / 1e12,
                     "% of mm": 100 * w.flops / t / 1e12 / MM_TFLOPS["ceiling"]})
    except Exception as e:
        print(f"  flex unavailable: {type(e).__name__}: {str(e)[:120]}")


def _causal_flops(qo_len: int, kv_len: int, heads: int, head_dim: int) -> float:
    """Causal (bottom-right) attention FLOPs of one request: 4 * H * D * keys summed over queries."""
    keys = qo_len * (kv_len - qo_len) + qo_len * (qo_len + 1) // 2
    return 4.0 * heads * head_dim * keys


# Batches whose balance the plan decides (llama3-8b heads): a long prompt among short ones, and
# chunked prefill of a short chunk over a long prefix (too few row tiles: the KV is split).
MIXED = [("1 x 32768 + 30 x 100", [32768] + [100] * 30, [32768] + [100] * 30),
         ("chunk 256 over kv 32768, bs2", [256, 256], [32768, 32768])]


def bench_mixed(ws, rows):
    dt, hq, hk, d = torch.bfloat16, 32, 8, 128
    for name, qo_lens, kv_lens in MIXED:
        qs = [torch.randn(n, hq, d, device="cuda", dtype=dt) for n in qo_lens]
        ks = [torch.randn(n, hk, d, device="cuda", dtype=dt) for n in kv_lens]
        vs = [torch.randn(n, hk, d, device="cuda", dtype=dt) for n in kv_lens]
        q_cat, k_cat, v_cat = torch.cat(qs), torch.cat(ks), torch.cat(vs)
        wr = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws)
        to_i32 = lambda lens: torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32,  # noqa: E731
                                           device="cuda")
        wr.plan(to_i32(qo_lens), to_i32(kv_lens), hq, hk, d, causal=True, q_data_type=dt)
        fn = lambda: wr.run(q_cat, k_cat, v_cat)  # noqa: E731
        out, first = _first_call(fn)
        err = _check(f"{name} ragged", out[:qo_lens[0]], qs[0], ks[0], vs[0])
        t = time_host(fn)
        flops = sum(_causal_flops(a, b, hq, d) for a, b in zip(qo_lens, kv_lens))
        row = {"workload": name, "impl": "ragged wrapper", "us": t * 1e6, "TFLOP/s": flops / t / 1e12,
               "% of mm": 100 * flops / t / 1e12 / MM_TFLOPS["ceiling"], "rel err": err, "first call s": first,
               "plan": f"{wr.plan_value.num_work} items, kv_chunk {wr.plan_value.kv_chunk}, "
                       f"{wr.plan_value.num_partials} partial rows"}
        print(row, flush=True)
        rows.append(row)


# Page sizes of the paged wrapper (--pages): 1 (SGLang's default), 16 and 128; pages the Gluon
# kernel does not copy itself (1, 128) reach it through a gathered copy (launch.kv_copied).
PAGES = (1, 16, 128)


def bench_pages(ws):
    """The paged wrapper by page size on llama3-8b bs1 L4096 / L16384 and on chunked prefill (4
    chunks of 512 over 8192 keys each), causal, bf16: the Gluon kernel (through the copy where the
    page size needs one), the portable kernel (fa2) at page 1, and the ragged wrapper over the same
    K/V (no copy: what the copy costs)."""
    dt, rows = torch.bfloat16, []
    chunked = Prefill("chunk 512 over kv 8192, bs4", 4, 8192, 32, 8, 128)
    for w in (PREFILL[2], PREFILL[3], chunked):
        qo = 512 if w is chunked else w.seq
        qs = [torch.randn(qo, w.q_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
        ks = [torch.randn(w.seq, w.kv_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
        vs = [torch.randn(w.seq, w.kv_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
        q_cat, k_cat, v_cat = torch.cat(qs), torch.cat(ks), torch.cat(vs)
        qo_indptr = torch.arange(0, (w.batch + 1) * qo, qo, dtype=torch.int32, device="cuda")
        kv_indptr = torch.arange(0, (w.batch + 1) * w.seq, w.seq, dtype=torch.int32, device="cuda")
        flops = w.batch * _causal_flops(qo, w.seq, w.q_heads, w.head_dim)
        ragged = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws)
        ragged.plan(qo_indptr, kv_indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, q_data_type=dt)
        paths = [("ragged wrapper", lambda: ragged.run(q_cat, k_cat, v_cat), "ragged")]
        for page in PAGES:
            cache, p_indptr, p_indices, p_last = _paged(ks, vs, page)
            for backend in ("auto", "fa2") if page == 1 else ("auto",):
                wr = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, backend=backend)
                wr.plan(qo_indptr, p_indptr, p_indices, p_last, w.q_heads, w.kv_heads, w.head_dim, page,
                        causal=True, q_data_type=dt)
                how = "portable kernel (fa2)" if backend == "fa2" else \
                    "Gluon through a copy" if wr.plan_value.kv_copy is not None else "Gluon"
                paths.append((f"paged wrapper p{page}", lambda wr=wr, c=cache: wr.run(q_cat, c), how))
        for label, fn, how in paths:
            out, first = _first_call(fn)
            err = _check(f"{w.name} {label}", out[-qo:], qs[-1], ks[-1], vs[-1])
            t, tg = time_host(fn), time_graph(fn)
            row = {"workload": w.name, "impl": label, "kernel": how, "us": t * 1e6, "TFLOP/s": flops / t / 1e12,
                   "graph us": tg and tg * 1e6, "graph TFLOP/s": tg and flops / tg / 1e12, "rel err": err,
                   "first call s": first}
            print(row, flush=True)
            rows.append(row)
    print(table(rows, ["workload", "impl", "kernel", "us", "TFLOP/s", "graph us", "graph TFLOP/s", "rel err",
                       "first call s"]))


def bench_variants(ws):
    """llama3-8b bs1 L16384 (causal, bf16, ragged) with a sliding window of 4096 keys
    (window_left 4095, as Mistral), a soft cap of 50 (as Gemma 2), sinks (as gpt-oss), and all
    three: the Gluon kernel, the portable one (fa2), FlexAttention (compiled; window and soft cap
    only) and the plain causal Gluon run as the baseline; TFLOP/s count the keys each row sees.
    Then Gemma 2 9B's attention (16/8 heads, d256) at L8192: causal, and window + soft cap."""
    rows = []
    for w, names in ((PREFILL[-1], ("causal", "window 4096", "soft cap 50", "sinks", "window + soft cap + sinks")),
                     (Prefill("gemma2-9b bs1 L8192", 1, 8192, 16, 8, 256), ("causal", "window 4096 + soft cap 50"))):
        _bench_variants(w, names, ws, rows)
    print(table(rows, ["workload", "variant", "impl", "us", "TFLOP/s", "graph us", "graph TFLOP/s", "rel err",
                       "first call s"]))


def _bench_variants(w, names, ws, rows):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    dt = torch.bfloat16
    L, win = w.seq, 4095
    q = torch.randn(L, w.q_heads, w.head_dim, device="cuda", dtype=dt)
    k = torch.randn(L, w.kv_heads, w.head_dim, device="cuda", dtype=dt)
    v = torch.randn_like(k)
    sinks = torch.randn(w.q_heads, device="cuda")
    indptr = torch.tensor([0, L], dtype=torch.int32, device="cuda")
    window_keys = sum(min(i + 1, win + 1) for i in range(L))
    cases = [("causal", {}, {}, L * (L + 1) // 2), ("window 4096", dict(window_left=win), {}, window_keys),
             ("soft cap 50", dict(logits_soft_cap=50.0), {}, L * (L + 1) // 2),
             ("sinks", {}, dict(sinks=sinks), L * (L + 1) // 2),
             ("window + soft cap + sinks", dict(window_left=win, logits_soft_cap=50.0), dict(sinks=sinks),
              window_keys), ("window 4096 + soft cap 50", dict(window_left=win, logits_soft_cap=50.0), {}, window_keys)]
    cases = [c for c in cases if c[0] in names]
    qb, kb, vb = (t.transpose(0, 1)[None].repeat_interleave(w.q_heads // t.shape[1], 1).contiguous()
                  for t in (q, k, v))
    flex = torch.compile(flex_attention)
    for name, plan_kw, run_kw, keys in cases:
        flops = 4.0 * w.q_heads * w.head_dim * keys
        impls = []
        for backend in ("auto", "fa2"):
            wr = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, backend=backend)
            wr.plan(indptr, indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, q_data_type=dt, **plan_kw)
            impls.append(("Gluon" if backend == "auto" else "portable (fa2)",
                          lambda wr=wr: wr.run(q, k, v, **run_kw)))
        if not run_kw:
            cap, wl = plan_kw.get("logits_soft_cap"), plan_kw.get("window_left", -1)
            keep = (lambda b, h, i, j: (i >= j) & (i - j <= wl)) if wl >= 0 else (lambda b, h, i, j: i >= j)
            bm = create_block_mask(keep, None, None, L, L, device="cuda")
            mod = (lambda s, b, h, i, j: cap * torch.tanh(s / cap)) if cap else None
            impls.append(("flex (compiled)",
                          lambda bm=bm, mod=mod: flex(qb, kb, vb, block_mask=bm, score_mod=mod)[0].transpose(0, 1)))
        for label, fn in impls:
            out, first = _first_call(fn)
            err = _check(f"{name} {label}", out, q, k, v, **plan_kw, **run_kw)
            t = time_host(fn)
            tg = time_graph(fn) if "flex" not in label else None
            row = {"workload": w.name, "variant": name, "impl": label, "us": t * 1e6, "TFLOP/s": flops / t / 1e12,
                   "graph us": tg and tg * 1e6, "graph TFLOP/s": tg and flops / tg / 1e12, "rel err": err,
                   "first call s": first}
            print(row, flush=True)
            rows.append(row)


def _tree_mask(n_draft: int, prefix: int) -> torch.Tensor:
    """[n_draft, prefix + n_draft] bool: speculative tree verification, every draft token sees the
    prefix, itself and its ancestors in a random tree (token i's parent drawn from 0..i-1)."""
    parent = [-1] + [int(torch.randint(0, i, ())) for i in range(1, n_draft)]
    tree = torch.zeros(n_draft, n_draft, dtype=torch.bool)
    for i in range(n_draft):
        j = i
        while j >= 0:
            tree[i, j] = True
            j = parent[j]
    return torch.cat([torch.ones(n_draft, prefix, dtype=torch.bool), tree], 1).cuda()


def bench_masks(ws):
    """Custom masks (llama3-8b heads, bf16): bs1 L4096 with the causal mask passed as a custom
    mask, against causal=True; and tree verification, bs32 x 64 draft tokens over 4032 cached
    keys in pages of 16, each request its own random tree. The Gluon kernel, the portable one
    (fa2) and FlexAttention (compiled, the same mask as a mask_mod); TFLOP/s count the kept keys."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    dt, hq, hk, d, rows = torch.bfloat16, 32, 8, 128, []
    flex = torch.compile(flex_attention)
    L = 4096
    cases = [("bs1 L4096, causal as a mask", [L], [L], [torch.ones(L, L, dtype=torch.bool, device="cuda").tril()]),
             ("tree verify bs32 x 64 over 4032", [64] * 32, [4096] * 32, [_tree_mask(64, 4032) for _ in range(32)])]
    for name, qo_lens, kv_lens, masks in cases:
        qs = [torch.randn(n, hq, d, device="cuda", dtype=dt) for n in qo_lens]
        ks = [torch.randn(n, hk, d, device="cuda", dtype=dt) for n in kv_lens]
        vs = [torch.randn(n, hk, d, device="cuda", dtype=dt) for n in kv_lens]
        q_cat = torch.cat(qs)
        cache, p_indptr, p_indices, p_last = _paged(ks, vs, 16)
        qo_indptr = torch.tensor([0] + torch.tensor(qo_lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
        flat = torch.cat([m.reshape(-1) for m in masks])
        flops = 4.0 * hq * d * float(flat.sum())
        impls = []
        for backend in ("auto", "fa2"):
            wr = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, backend=backend)
            wr.plan(qo_indptr, p_indptr, p_indices, p_last, hq, hk, d, 16, custom_mask=flat, q_data_type=dt)
            impls.append(("Gluon, custom mask" if backend == "auto" else "portable (fa2), custom mask",
                          lambda wr=wr: wr.run(q_cat, cache)))
        if len(qo_lens) == 1:
            wr = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws)
            wr.plan(qo_indptr, p_indptr, p_indices, p_last, hq, hk, d, 16, causal=True, q_data_type=dt)
            impls.append(("Gluon, causal=True", lambda wr=wr: wr.run(q_cat, cache)))
        dense = torch.stack(masks)  # [B, qo, kv]: every request has the same lengths
        bm = create_block_mask(lambda b, h, i, j: dense[b, i, j], len(qo_lens), None, qo_lens[0], kv_lens[0],
                               device="cuda")
        qb = torch.stack(qs).transpose(1, 2).contiguous()
        kb, vb = (torch.stack(t).transpose(1, 2).repeat_interleave(hq // hk, 1).contiguous() for t in (ks, vs))
        impls.append(("flex (compiled)", lambda: flex(qb, kb, vb, block_mask=bm).transpose(1, 2).reshape(-1, hq, d)))
        ref = torch.cat([attention_ref(q, k, v, custom_mask=m)[0] for q, k, v, m in list(zip(qs, ks, vs, masks))[:4]])
        for label, fn in impls:
            out, first = _first_call(fn)
            err = rel_err(out[:ref.shape[0]], ref)
            if not err < TOL:
                raise SystemExit(f"{name} {label}: relative error {err:.3g}; refusing to time a wrong kernel")
            t = time_host(fn)
            tg = time_graph(fn) if "flex" not in label else None
            row = {"workload": name, "impl": label, "us": t * 1e6, "TFLOP/s": flops / t / 1e12,
                   "graph us": tg and tg * 1e6, "graph TFLOP/s": tg and flops / tg / 1e12, "rel err": err,
                   "first call s": first}
            print(row, flush=True)
            rows.append(row)
    print(table(rows, ["workload", "impl", "us", "TFLOP/s", "graph us", "graph TFLOP/s", "rel err", "first call s"]))

# Batched prefill around launch.SHORT_KEYS and launch.PERSISTENT_KEYS (--short): (name, requests,
# length, causal, KV heads), 32 query heads, d128, bf16.
SHORT = [("bs4 L512 (32/32)", 4, 512, True, 32), ("bs16 L256", 16, 256, True, 8), ("bs8 L1024", 8, 1024, True, 8),
         ("bs4 L1536", 4, 1536, True, 8), ("bs4 L2048", 4, 2048, True, 8), ("bs2 L3072", 2, 3072, True, 8),
         ("bs8 L512 non-causal", 8, 512, False, 8), ("bs16 L256 non-causal", 16, 256, False, 8),
         ("bs2 L1024 non-causal", 2, 1024, False, 8), ("bs1 L4096", 1, 4096, True, 8)]


def bench_short(ws):
    """The Gluon kernel's two tiles on batched prefill (ragged wrapper, and paged with page 16):
    the plan's own choice (auto), the short tile forced where rows end on a causal diagonal
    (launch.SHORT_TILE: 64 x 64, two programs an SM, persistent past them), and the 128 x 128
    tile forced on persistent programs and on a program per unit, beside cuDNN; per graph call,
    each checked against the fp32 reference first (its last request's last 256 rows). "plan":
    the plan's tile ("persistent": on persistent programs where its units outnumber the programs
    that fit at once)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pyflashinfer.attention import launch
    dt, hq, d = torch.bfloat16, 32, 128
    keys_default, persistent_default = launch.SHORT_KEYS, launch.PERSISTENT_KEYS
    tiles = (("auto", keys_default, persistent_default), ("short", float("inf"), persistent_default),
             ("128 x 128 persistent", -1.0, float("inf")), ("128 x 128", -1.0, -1.0))
    rows = []
    for name, batch, seq, causal, hk in SHORT:
        q = torch.randn(batch * seq, hq, d, device="cuda", dtype=dt)
        k = torch.randn(batch * seq, hk, d, device="cuda", dtype=dt)
        v = torch.randn_like(k)
        indptr = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device="cuda")
        cache, p_indptr, p_indices, p_last = _paged(list(k.split(seq)), list(v.split(seq)), 16)
        flops = batch * (_causal_flops(seq, seq, hq, d) if causal else 4.0 * seq * seq * hq * d)
        ref, _ = attention_ref(q[-256:], k[-seq:], v[-seq:], causal=causal)
        lens = torch.full((batch,), seq)
        keys = launch.mean_keys(lens, lens, causal)
        for impl in ("ragged", "paged p16"):
            for tile, short_keys, persistent_keys in tiles:
                launch.SHORT_KEYS, launch.PERSISTENT_KEYS = short_keys, persistent_keys
                if impl == "ragged":
                    wr = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws)
                    wr.plan(indptr, indptr, hq, hk, d, causal=causal, q_data_type=dt)
                    fn = lambda: wr.run(q, k, v)  # noqa: E731
                else:
                    wr = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws)
                    wr.plan(indptr, p_indptr, p_indices, p_last, hq, hk, d, 16, causal=causal, q_data_type=dt)
                    fn = lambda: wr.run(q, cache)  # noqa: E731
                launch.SHORT_KEYS, launch.PERSISTENT_KEYS = keys_default, persistent_default
                err = rel_err(fn()[-256:], ref)
                if not err < TOL:
                    raise SystemExit(f"{name} {impl} {tile}: relative error {err:.3g}; refusing to time a wrong kernel")
                plan = wr.plan_value
                row = {"workload": name, "mean keys": keys, "impl": impl, "tile": tile,
                       "plan": f"{plan.block_m} x {plan.block_n}" + (" short" if plan.maxnreg else "")
                       + (" persistent" if plan.persistent else ""),
                       "rel err": err, **_graph_clock(fn, flops)}
                print(row, flush=True)
                rows.append(row)
        qt, kt, vt = (x.view(batch, seq, -1, d).transpose(1, 2) for x in (q, k, v))
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            fn = lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=True)  # noqa: E731
            err = rel_err(fn()[-1].transpose(0, 1)[-256:], ref)
            row = {"workload": name, "mean keys": keys, "impl": "sdpa cudnn", "rel err": err, **_graph_clock(fn, flops)}
        print(row, flush=True)
        rows.append(row)
        cache = None
    print(table(rows, ["workload", "mean keys", "impl", "tile", "plan", "graph us", "graph TFLOP/s", "rel err"]))
    return rows


def sweep():
    """TFLOP/s of the batch wrappers (ragged with and without tensor descriptors, paged 16) under
    each d128 tile config of the portable tensor-core kernel (backend="fa2") (ws: warp-specialised KV loop, which needs
    tensor descriptors); every config is checked before it is timed."""
    from pyflashinfer.attention import batch_launch
    from pyflashinfer.attention.launch import _PREFILL_TILES, TileConfig
    kv_tma = batch_launch.kv_tma
    dt = torch.bfloat16
    ws = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for w in PREFILL[1:]:
        qs = [torch.randn(w.seq, w.q_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
        ks = [torch.randn(w.seq, w.kv_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
        vs = [torch.randn(w.seq, w.kv_heads, w.head_dim, device="cuda", dtype=dt) for _ in range(w.batch)]
        q_cat, k_cat, v_cat = torch.cat(qs), torch.cat(ks), torch.cat(vs)
        indptr = torch.arange(0, (w.batch + 1) * w.seq, w.seq, dtype=torch.int32, device="cuda")
        cache, p_indptr, p_indices, p_last = _paged(ks, vs, 16)
        for cfg in ((128, 128, 8, 3, False), (128, 128, 8, 3, True), (128, 128, 8, 2, True), (128, 64, 8, 3, True),
                    (128, 64, 8, 4, True), (128, 128, 4, 2, True), (64, 64, 4, 3, True)):
            _PREFILL_TILES[128] = TileConfig(*cfg)
            name = "M%d N%d w%d s%d" % cfg[:4] + " ws" * cfg[4]
            for label in ("ragged tma",) if cfg[4] else ("ragged tma", "ragged ptr", "paged p16"):
                batch_launch.kv_tma = kv_tma if label != "ragged ptr" else (lambda *a, **kw: False)
                try:
                    if label.startswith("ragged"):
                        wr = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(ws, backend="fa2")
                        wr.plan(indptr, indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, q_data_type=dt)
                        fn = lambda: wr.run(q_cat, k_cat, v_cat)  # noqa: E731
                    else:
                        wr = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws)
                        wr.plan(indptr, p_indptr, p_indices, p_last, w.q_heads, w.kv_heads, w.head_dim, 16,
                                causal=True, q_data_type=dt)
                        fn = lambda: wr.run(q_cat, cache)  # noqa: E731
                    out, first = _first_call(fn)
                    _check(f"{w.name} {label} {name}", out[-w.seq:], qs[-1], ks[-1], vs[-1])
                    t = time_host(fn)
                    row = {"workload": w.name, "impl": label, "config": name, "us": t * 1e6,
                           "TFLOP/s": w.flops / t / 1e12, "first call s": first}
                except Exception as e:  # a config that does not fit (shared memory, registers): report it
                    row = {"workload": w.name, "impl": label, "config": name,
                           "error": f"{type(e).__name__}: {str(e)[:80]}"}
                print(row, flush=True)
                rows.append(row)
        cache = None  # free the pool before the next workload's
    batch_launch.kv_tma = kv_tma
    print(table(rows, ["workload", "impl", "config", "us", "TFLOP/s", "first call s", "error"]))


def profile():
    """llama2-7b bs1 L512 through the ragged wrapper: host time per run() (cProfiled) and the
    time per call inside a CUDA graph (the kernel alone)."""
    w, dt = PREFILL[0], torch.bfloat16
    q = torch.randn(w.seq, w.q_heads, w.head_dim, device="cuda", dtype=dt)
    k = torch.randn(w.seq, w.kv_heads, w.head_dim, device="cuda", dtype=dt)
    v = torch.randn_like(k)
    indptr = torch.tensor([0, w.seq], dtype=torch.int32, device="cuda")
    wr = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.empty(64 << 20, dtype=torch.uint8, device="cuda"))
    wr.plan(indptr, indptr, w.q_heads, w.kv_heads, w.head_dim, causal=True, q_data_type=dt)
    host = host_profile(lambda: wr.run(q, k, v), top=15)
    graph = time_graph(lambda: wr.run(q, k, v))
    print(f"{w.name} ragged run(): {host * 1e6:.1f} us host per call, "
          f"{'n/a' if graph is None else f'{graph * 1e6:.1f} us'} per call in a CUDA graph, "
          f"{time_host(lambda: wr.run(q, k, v)) * 1e6:.1f} us host-timed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", action="store_true", help="only: host overhead of run() at llama2-7b bs1 L512")
    ap.add_argument("--sweep", action="store_true", help="only: d128 tile configs on the batch wrappers")
    ap.add_argument("--variants", action="store_true", help="only: window, soft cap and sinks at L16384")
    ap.add_argument("--pages", action="store_true", help="only: the paged wrapper by page size (1, 16, 128)")
    ap.add_argument("--masks", action="store_true", help="only: custom masks (causal as a mask, tree verification)")
    ap.add_argument("--short", action="store_true", help="only: the Gluon kernel's short and long tiles, batched")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds the GPU idles before each graph timing of the full run (default 0)")
    args = ap.parse_args()
    SETTLE["s"] = args.settle
    if args.masks:
        print(run_info(), flush=True)
        return bench_masks(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
    if args.sweep:
        return sweep()
    if args.short:
        print(run_info(), flush=True)
        rows = bench_short(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
        if args.out:
            with open(args.out, "w") as f:
                json.dump({**run_info(), "rows": rows}, f, indent=1)
        return None
    if args.variants:
        print(run_info(), flush=True)
        return bench_variants(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
    if args.profile:
        return profile()
    if args.pages:
        print(run_info(), flush=True)
        return bench_pages(torch.empty(512 << 20, dtype=torch.uint8, device="cuda"))
    torch.manual_seed(0)
    MONITOR["m"] = ClockMonitor()
    MM_TFLOPS["ceiling"] = matmul_ceiling_tflops()
    results = {**run_info(), "bf16 matmul TFLOP/s": MM_TFLOPS["ceiling"]}
    print(results, flush=True)
    ws = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for w in PREFILL:
        bench(w, ws, rows)
    bench_mixed(ws, rows)
    results["rows"] = rows
    MONITOR.pop("m").close()
    print(table(rows, ["workload", "impl", "us", "TFLOP/s", "graph us", "graph TFLOP/s", "graph MHz", "graph W",
                       "TFLOP/s per GHz", "% of mm", "rel err", "first call s", "plan"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
