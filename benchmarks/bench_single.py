"""Single-request attention on the H100: the four prefill workloads and decode latency.

    python benchmarks/bench_single.py [--out results.json]

Prefill runs through single_prefill_with_kv_cache (bs4 = four calls, one per request, as a
serving engine without a batch wrapper would issue them) against torch SDPA (cuDNN and flash
backends, batched [B, H, L, D]) and compiled FlexAttention in the same run. Decode latency
(gqa4 bs1 kv4096, contiguous KV) runs through single_decode_with_kv_cache on both paths,
timed from the host and inside a CUDA graph. Every kernel is checked against the fp32
reference before it is timed.
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
from benchmarks.common import H100_BF16_TFLOPS, copy_ceiling_gbs, rel_err, table, time_graph, time_host  # noqa: E402
from benchmarks.workloads import DECODE, PREFILL  # noqa: E402
from pyflashinfer.attention.reference import attention_ref  # noqa: E402

TOL = 2e-2  # relative Frobenius error allowed against the fp32 reference (bf16 inputs)


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


def _check_ref(name, out, q, k, v, causal):
    """out [L, H, D] against the fp32 reference on the last 256 query rows (the reference
    holds [H, rows, kv_len] logits; with bottom-right alignment a tail of q is exact)."""
    ref, _ = attention_ref(q[-256:], k, v, causal=causal)
    err = rel_err(out[-256:], ref)
    if not err < TOL:
        raise SystemExit(f"{name}: relative error {err:.3g} >= {TOL}; refusing to time a wrong kernel")
    return err


def bench_prefill(results):
    from torch.nn.attention import SDPBackend
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    flex = torch.compile(flex_attention)
    rows = []
    for w in PREFILL:
        dev, dt = "cuda", torch.bfloat16
        qs = [torch.randn(w.seq, w.q_heads, w.head_dim, device=dev, dtype=dt) for _ in range(w.batch)]
        ks = [torch.randn(w.seq, w.kv_heads, w.head_dim, device=dev, dtype=dt) for _ in range(w.batch)]
        vs = [torch.randn(w.seq, w.kv_heads, w.head_dim, device=dev, dtype=dt) for _ in range(w.batch)]

        t0 = time.time()
        out = flashinfer.single_prefill_with_kv_cache(qs[0], ks[0], vs[0], causal=True)
        torch.cuda.synchronize()
        first_call = time.time() - t0
        err = _check_ref(w.name, out, qs[0], ks[0], vs[0], True)

        def ours():
            for q, k, v in zip(qs, ks, vs):
                flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True)
        t_ours = time_host(ours)
        row = {"workload": w.name, "ours us": t_ours * 1e6, "ours TFLOP/s": w.flops / t_ours / 1e12,
               "% of mm ceiling": 100 * w.flops / t_ours / 1e12 / H100_BF16_TFLOPS, "rel err": err,
               "first call s": first_call}
        # peers: batched [B, H, L, D]; GQA expanded to full heads outside the timed region
        qb = torch.stack(qs).transpose(1, 2)
        kb = torch.stack(ks).transpose(1, 2).repeat_interleave(w.q_heads // w.kv_heads, 1).contiguous()
        vb = torch.stack(vs).transpose(1, 2).repeat_interleave(w.q_heads // w.kv_heads, 1).contiguous()
        qb = qb.contiguous()
        for label, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            try:
                fn = _sdpa(backend)
                fn(qb, kb, vb, True)
                t = time_host(lambda: fn(qb, kb, vb, True))
                row[f"{label} TFLOP/s"] = w.flops / t / 1e12
                row[f"x vs {label}"] = t / t_ours
            except Exception as e:
                print(f"  {label} unavailable: {type(e).__name__}: {str(e)[:120]}")
        try:
            bm = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, w.seq, w.seq, device=dev)
            flex(qb, kb, vb, block_mask=bm)
            t = time_host(lambda: flex(qb, kb, vb, block_mask=bm))
            row["flex TFLOP/s"] = w.flops / t / 1e12
            row["x vs flex"] = t / t_ours
        except Exception as e:
            print(f"  flex unavailable: {type(e).__name__}: {str(e)[:120]}")
        print(row, flush=True)
        rows.append(row)
    results["prefill"] = rows
    print(table(rows, ["workload", "ours us", "ours TFLOP/s", "% of mm ceiling", "cudnn TFLOP/s", "flash TFLOP/s",
                       "flex TFLOP/s", "x vs cudnn", "x vs flash", "x vs flex", "rel err", "first call s"]))


def bench_decode_latency(results):
    from torch.nn.attention import SDPBackend
    w = DECODE[0]
    dev, dt = "cuda", torch.bfloat16
    q = torch.randn(w.q_heads, w.head_dim, device=dev, dtype=dt)
    k = torch.randn(w.kv_len, w.kv_heads, w.head_dim, device=dev, dtype=dt)
    v = torch.randn(w.kv_len, w.kv_heads, w.head_dim, device=dev, dtype=dt)
    ref, _ = attention_ref(q[None], k, v)
    rows = []
    nbytes = w.kv_bytes(2)
    for tc in (False, True):
        t0 = time.time()
        out = flashinfer.single_decode_with_kv_cache(q, k, v, use_tensor_cores=tc)
        torch.cuda.synchronize()
        first = time.time() - t0
        err = rel_err(out, ref[0])
        if not err < TOL:
            raise SystemExit(f"decode tc={tc}: relative error {err:.3g}; refusing to time")
        fn = lambda: flashinfer.single_decode_with_kv_cache(q, k, v, use_tensor_cores=tc)  # noqa: E731
        t_host, t_graph = time_host(fn), time_graph(fn)
        rows.append({"workload": w.name + " (contiguous KV)", "path": "tensor cores" if tc else "cuda cores",
                     "host us": t_host * 1e6, "graph us": None if t_graph is None else t_graph * 1e6,
                     "GB/s (host)": nbytes / t_host / 1e9, "rel err": err, "first call s": first})
    qb = q.view(1, w.q_heads, 1, w.head_dim)
    kb = k.transpose(0, 1)[None].repeat_interleave(w.q_heads // w.kv_heads, 1).contiguous()
    vb = v.transpose(0, 1)[None].repeat_interleave(w.q_heads // w.kv_heads, 1).contiguous()
    for label, backend in (("sdpa cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa flash", SDPBackend.FLASH_ATTENTION)):
        try:
            fn = lambda: _sdpa(backend)(qb, kb, vb, False)  # noqa: E731
            fn()
            t_host, t_graph = time_host(fn), time_graph(fn)
            rows.append({"workload": w.name + " (contiguous KV, heads expanded)", "path": label,
                         "host us": t_host * 1e6, "graph us": None if t_graph is None else t_graph * 1e6,
                         "GB/s (host)": nbytes / t_host / 1e9})
        except Exception as e:
            print(f"  {label} unavailable: {type(e).__name__}: {str(e)[:120]}")
    results["decode_latency"] = rows
    print(table(rows, ["workload", "path", "host us", "graph us", "GB/s (host)", "rel err", "first call s"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", choices=["prefill", "decode"], default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "copy GB/s": copy_ceiling_gbs()}
    import triton
    results["triton"] = triton.__version__
    print(results, flush=True)
    if args.only in (None, "decode"):
        bench_decode_latency(results)
    if args.only in (None, "prefill"):
        bench_prefill(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
