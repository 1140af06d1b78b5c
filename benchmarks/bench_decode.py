"""Batch decode over a paged KV cache on the GPU: the decode workloads of PERFORMANCE.md.

    python benchmarks/bench_decode.py [--out results.json]
    python benchmarks/bench_decode.py --window   # a sliding window of 4096 keys at kv 32768

Pages of 16 tokens scattered at random in the pool. For each workload: bf16 KV on both paths
(CUDA cores, tensor cores), fp8 e4m3 KV on the gqa4 workloads (bytes counted in fp8), torch SDPA
(cuDNN, flash) on the same shapes with contiguous KV in the same run, and for gqa4 bs1 the
latency from the host and per replay inside a CUDA graph. Each configuration is checked against
the fp32 reference on sampled requests before it is timed.
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
    copy_ceiling_gbs, host_profile, rel_err, run_info, table, time_graph, time_host,
)
from benchmarks.workloads import DECODE, Decode  # noqa: E402
from pyflashinfer.attention.reference import decode_ref  # noqa: E402

TOL = 3e-2


def build(w, kv_dtype, layout="NHD", shared=False):
    """A paged cache and page table for workload w, pages scattered. shared: every request
    reads the same pages (a cache of one request's size, which stays in L2)."""
    pages_per = w.kv_len // w.page_size
    num_pages = pages_per if shared else w.batch * pages_per
    perm = torch.randperm(num_pages, device="cuda", dtype=torch.int32)
    if shared:
        perm = perm.repeat(w.batch)
    cache = torch.randn(num_pages, 2, w.page_size, w.kv_heads, w.head_dim, device="cuda", dtype=torch.bfloat16)
    scale = 1.0
    if kv_dtype != torch.bfloat16:
        scale = 4.0 / 448  # |x| <= 4 maps onto the fp8 range; saturate the rare tail (torch's cast would give NaN)
        cache = (cache / scale).clamp(-448, 448).to(kv_dtype)
    indptr = torch.arange(0, w.batch * pages_per + 1, pages_per, device="cuda", dtype=torch.int32)
    last = torch.full((w.batch,), w.page_size, device="cuda", dtype=torch.int32)
    return cache, (indptr, perm, last), scale


def request_kv(cache, table, b, scale):
    indptr, indices, _ = table
    pages = cache[indices[indptr[b]: indptr[b + 1]].long()]          # [p, 2, page, H, D]
    kv = pages.transpose(0, 1).reshape(2, -1, cache.shape[3], cache.shape[4]).float() * scale
    return kv[0], kv[1]


def add_graph_time(row, fn, nbytes):
    """Per-call time of fn inside a CUDA graph, and the GB/s it reads, into row (None if capture fails)."""
    tg = time_graph(fn)
    row["us (graph)"] = None if tg is None else tg * 1e6
    row["GB/s (graph)"] = None if tg is None else nbytes / tg / 1e9


def bench_one(w, kv_dtype, use_tc, cache, table, scale, ws, rows, graph, window_left=-1):
    """window_left >= 0: a sliding window; GB/s then count the keys it leaves (window_left + 1)."""
    q = torch.randn(w.batch, w.q_heads, w.head_dim, device="cuda", dtype=torch.bfloat16)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=use_tc)
    t0 = time.time()
    wrapper.plan(*table, w.q_heads, w.kv_heads, w.head_dim, w.page_size, q_data_type=torch.bfloat16,
                 kv_data_type=kv_dtype, window_left=window_left)
    plan_s = time.time() - t0
    kw = dict(k_scale=scale, v_scale=scale) if kv_dtype != torch.bfloat16 else {}
    out = wrapper.run(q, cache, **kw)
    torch.cuda.synchronize()
    for b in sorted({0, w.batch // 2, w.batch - 1}):
        k, v = request_kv(cache, table, b, 1.0)
        ref, _ = decode_ref(q[b], k, v, k_scale=scale, v_scale=scale, window_left=window_left)
        err = rel_err(out[b], ref)
        if not err < TOL:
            raise SystemExit(f"{w.name} {kv_dtype} tc={use_tc}: request {b} relative error {err:.3g}; not timing")
    fn = lambda: wrapper.run(q, cache, **kw)  # noqa: E731
    t = time_host(fn)
    nbytes = w.kv_bytes(cache.element_size())
    if window_left >= 0:
        nbytes = nbytes * min(window_left + 1, w.kv_len) // w.kv_len
    name = w.name + (f", window {window_left + 1}" if window_left >= 0 else "")
    row = {"workload": name, "kv": str(kv_dtype).removeprefix("torch."),
           "path": "tensor cores" if use_tc else "cuda cores",
           "us (host)": t * 1e6, "GB/s": nbytes / t / 1e9, "plan": repr(wrapper.plan_value).split(", ", 5)[-1][:60],
           "plan ms": plan_s * 1e3}
    compiled = wrapper._replays[0][0].compiled if wrapper._replays else None
    if compiled is not None:  # what bounds the programs per SM: registers per thread, shared memory
        row["regs, smem KB"] = f"{compiled.n_regs}, {compiled.metadata.shared / 1024:.0f}"
    if graph:
        add_graph_time(row, fn, nbytes)
    print(row, flush=True)
    rows.append(row)


def bench_sdpa(w, cache, table, rows, graph):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    indptr, indices, _ = table
    # contiguous [B, H_kv, L, D] copies of the same K/V
    pages = cache[indices.long()].view(w.batch, -1, 2, w.page_size, w.kv_heads, w.head_dim)
    k = pages[:, :, 0].reshape(w.batch, -1, w.kv_heads, w.head_dim).transpose(1, 2).contiguous()
    v = pages[:, :, 1].reshape(w.batch, -1, w.kv_heads, w.head_dim).transpose(1, 2).contiguous()
    q = torch.randn(w.batch, w.q_heads, 1, w.head_dim, device="cuda", dtype=torch.bfloat16)
    for label, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
        for gqa in (True, False):
            try:
                kk, vv = (k, v) if gqa else (k.repeat_interleave(w.q_heads // w.kv_heads, 1),
                                             v.repeat_interleave(w.q_heads // w.kv_heads, 1))

                def fn():
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, kk, vv, enable_gqa=gqa)
                fn()
                t = time_host(fn)
                row = {"workload": w.name, "kv": "bfloat16 contiguous", "path": label + ("" if gqa else " (heads expanded)"),
                       "us (host)": t * 1e6, "GB/s": w.kv_bytes(2) / t / 1e9}
                if graph:
                    add_graph_time(row, fn, w.kv_bytes(2))
                print(row, flush=True)
                rows.append(row)
                break
            except Exception as e:
                print(f"  {label} gqa={gqa}: {type(e).__name__}: {str(e)[:100]}")


# Sliding-window decode (--window): Mistral's window of 4096 keys over long contexts.
WINDOWED = [Decode("gqa4 bs1 kv32768", 1, 32768, 32, 8), DECODE[3]]


def bench_window():
    """Tensor-core bf16 decode with a window of 4096 keys (window_left 4095) against the same
    workload without one; GB/s count the keys each request sees."""
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for w in WINDOWED:
        cache, pages, _ = build(w, torch.bfloat16)
        for window in (-1, 4095):
            bench_one(w, torch.bfloat16, True, cache, pages, 1.0, ws, rows, True, window)
        del cache
    print(table(rows, ["workload", "kv", "path", "us (host)", "GB/s", "us (graph)", "GB/s (graph)", "plan ms", "plan"]))


def profile_run():
    """Where the host time of one decode run() goes (cProfile over 300 calls)."""
    w = DECODE[0]
    cache, pages, _ = build(w, torch.bfloat16)
    ws = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    q = torch.randn(w.batch, w.q_heads, w.head_dim, device="cuda", dtype=torch.bfloat16)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
    wrapper.plan(*pages, w.q_heads, w.kv_heads, w.head_dim, w.page_size, q_data_type=torch.bfloat16)
    host = host_profile(lambda: wrapper.run(q, cache), top=18)
    print(f"host time per run() (no sync, launches queue): {host * 1e6:.1f} us")


# (BLOCK_N, warps, stages, two-phase KV loop, register cap or 0, programs per SM) tried by --sweep.
# Triton's pipeliner gives the K/V tiles stages - 1 shared-memory buffers (the page ids are read one
# tile ahead: kernels/common.py). Programs per SM is what the plan sizes KV splits by (SMs x it);
# the sweep prints the compiled variant's registers and shared memory to check it. A register cap
# lets more programs share an SM.
SWEEP_CONFIGS = ((64, 8, 4, False, 0, 2), (64, 4, 4, False, 0, 4), (64, 4, 4, True, 0, 4), (128, 8, 2, False, 0, 1),
                 (128, 4, 3, True, 0, 3), (128, 4, 4, True, 0, 2), (128, 8, 3, True, 0, 2), (64, 4, 3, True, 128, 4))


def sweep():
    """GB/s of the tensor-core decode path under each tile config (bf16 and fp8 KV), timed from
    the host and per CUDA-graph replay."""
    from pyflashinfer.attention.decode import TC_DECODE_TILES
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for name in ("gqa4 bs1 kv4096", "gqa4 bs64 kv4096", "gqa4 bs256 kv2048", "gqa4 bs16 kv32768", "mha bs64 kv4096"):
        w = next(x for x in DECODE if x.name == name)
        for kv_dtype in ((torch.bfloat16, torch.float8_e4m3fn) if w.q_heads != w.kv_heads else (torch.bfloat16,)):
            cache, pages, scale = build(w, kv_dtype)
            for block_n, warps, stages, two, maxnreg, per_sm in SWEEP_CONFIGS:
                TC_DECODE_TILES[cache.element_size()] = dict(block_n=block_n, num_warps=warps, num_stages=stages,
                                                             two_phase=two, maxnreg=maxnreg, programs_per_sm=per_sm)
                name = (f"N{block_n} w{warps} s{stages}" + " 2-phase" * two + f" maxnreg {maxnreg}" * (maxnreg > 0)
                        + f" {per_sm}/SM")
                sub = []
                try:
                    bench_one(w, kv_dtype, True, cache, pages, scale, ws, sub, True)
                    sub[0]["config"] = name
                    rows += sub
                except Exception as e:
                    print(f"  {name}: {type(e).__name__}: {str(e)[:100]}")
            del cache
    print(table(rows, ["workload", "kv", "config", "regs, smem KB", "us (host)", "GB/s", "us (graph)",
                       "GB/s (graph)"]))


def l2_resident():
    """What limits the tensor-core path apart from HBM: gqa4 bs64 kv4096 with every request on the
    same 256 pages (8 MiB of fp8 K/V, 16 MiB of bf16: L2-resident), against the usual distinct
    pages, bf16 and fp8, in one run. GB/s counts the K/V bytes the kernel reads either way."""
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    w = next(x for x in DECODE if x.name == "gqa4 bs64 kv4096")
    rows = []
    for kv_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        for shared in (False, True):
            cache, pages, scale = build(w, kv_dtype, shared=shared)
            sub = []
            bench_one(w, kv_dtype, True, cache, pages, scale, ws, sub, True)
            sub[0]["K/V"] = "shared pages (L2)" if shared else "distinct pages (HBM)"
            rows += sub
            del cache
    print(table(rows, ["workload", "kv", "K/V", "us (host)", "GB/s", "us (graph)", "GB/s (graph)"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--profile", action="store_true", help="only: host-side profile of run() at gqa4 bs1")
    ap.add_argument("--sweep", action="store_true", help="only: tensor-core tile configs on three workloads")
    ap.add_argument("--l2", action="store_true", help="only: gqa4 bs64 with K/V resident in L2 against HBM")
    ap.add_argument("--window", action="store_true", help="only: a sliding window of 4096 keys at kv 32768")
    args = ap.parse_args()
    if args.l2:
        return l2_resident()
    if args.window:
        print(run_info(), flush=True)
        return bench_window()
    if args.profile:
        return profile_run()
    if args.sweep:
        return sweep()
    torch.manual_seed(0)
    results = {**run_info(), "copy GB/s": copy_ceiling_gbs()}
    print(results, flush=True)
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for w in DECODE:
        graph = True  # per replay too: host-timed rows carry the host's launch cost
        cache, pages, _ = build(w, torch.bfloat16)
        for use_tc in (False, True):
            bench_one(w, torch.bfloat16, use_tc, cache, pages, 1.0, ws, rows, graph)
        if not args.skip_peers:
            bench_sdpa(w, cache, pages, rows, graph)
        del cache
        if w.kv_heads != w.q_heads:
            cache, pages, scale = build(w, torch.float8_e4m3fn)
            for use_tc in (False, True):
                bench_one(w, torch.float8_e4m3fn, use_tc, cache, pages, scale, ws, rows, graph)
            del cache
        torch.cuda.empty_cache()
    results["rows"] = rows
    print(table(rows, ["workload", "kv", "path", "us (host)", "GB/s", "us (graph)", "GB/s (graph)", "plan ms", "plan"]))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
