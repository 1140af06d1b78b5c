"""Single-request decode latency on the GPU (prefill: bench_prefill.py).

    python benchmarks/bench_single.py [--out results.json]

gqa4 bs1 kv4096 with contiguous KV through single_decode_with_kv_cache on both paths, timed
from the host and inside a CUDA graph, against torch SDPA (cuDNN, flash) in the same run.
Checked against the fp32 reference before it is timed.
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
from benchmarks.common import copy_ceiling_gbs, rel_err, run_info, table, time_graph, time_host  # noqa: E402
from benchmarks.workloads import DECODE  # noqa: E402
from pyflashinfer.attention.reference import attention_ref  # noqa: E402

TOL = 2e-2  # relative Frobenius error allowed against the fp32 reference (bf16 inputs)


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return run


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
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {**run_info(), "copy GB/s": copy_ceiling_gbs()}
    print(results, flush=True)
    bench_decode_latency(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
