"""pyflashinfer demo: decode and prefill attention, checked against the fp32 reference.

Runs on the GPU when there is one, else through Triton's CPU interpreter (small shapes).
    bash scripts/demo.sh
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pyflashinfer as flashinfer  # noqa: E402
from pyflashinfer.attention.reference import attention_ref  # noqa: E402


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> int:
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    qo_len, kv_len = (512, 4096) if gpu else (64, 300)
    num_qo_heads, num_kv_heads, head_dim = 32, 8, 128
    print(f"device: {torch.cuda.get_device_name() if gpu else 'CPU (Triton interpreter)'}")
    torch.manual_seed(0)
    q = torch.randn(qo_len, num_qo_heads, head_dim, device=device, dtype=torch.bfloat16)
    k = torch.randn(kv_len, num_kv_heads, head_dim, device=device, dtype=torch.bfloat16)
    v = torch.randn(kv_len, num_kv_heads, head_dim, device=device, dtype=torch.bfloat16)

    ok = True
    o, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, causal=True, return_lse=True)
    ref_o, ref_lse = attention_ref(q, k, v, causal=True)
    err = rel_err(o, ref_o)
    print(f"prefill  qo={qo_len} kv={kv_len} heads={num_qo_heads}/{num_kv_heads} d={head_dim} causal: "
          f"rel err {err:.2e}, max |lse err| {(lse - ref_lse).abs().max().item():.2e}")
    ok &= err < 1e-2
    for tc in (False, True):
        o = flashinfer.single_decode_with_kv_cache(q[-1], k, v, use_tensor_cores=tc)
        ref_o, _ = attention_ref(q[-1:], k, v)
        err = rel_err(o, ref_o[0])
        print(f"decode   kv={kv_len} ({'tensor cores' if tc else 'CUDA cores'}): rel err {err:.2e}")
        ok &= err < 1e-2
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
