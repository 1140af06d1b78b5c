"""Serving ops against plain PyTorch on one GPU: RMSNorm, fused add + RMSNorm, RoPE, SiLU-and-mul.

    python benchmarks/bench_ops.py            # on the GPU: check, then time, then a markdown table
    python benchmarks/bench_ops.py --dry-run  # CPU, Triton interpreter, tiny shapes, fake timer:
                                              # exercises every code path of this script, no figures

Each op is first checked against its fp32 reference (the same ones the tests use): its relative
error must be at most 2x that of PyTorch computing the same thing in bf16 (+1e-4). A wrong op is
reported and not timed. Times follow benchmarks/common.py (median of 30 host-timed calls from an
idle GPU; `graph` = per call inside a CUDA graph). GB/s counts the bytes each op must move once
(read + write). FlashInfer's figures are from ../shared/PERFORMANCE.md (H100, host-timed).
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dry_run  # noqa: E402  (before torch: may switch the interpreter on)
from dry_run import timers  # noqa: E402

ARGS = dry_run.parser(__doc__.splitlines()[0])
ARGS.add_argument("--only", default="", help="comma-separated op names to run (default: all)")
ARGS.add_argument("--profile", action="store_true", help="only: host time per call on tiny shapes, cProfiled")
ARGS.add_argument("--floor", action="store_true", help="only: the host-timed cost of a call that does nothing")
OPTS = ARGS.parse_args()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402

import pyflashinfer.activation as act  # noqa: E402
import pyflashinfer.norm as norm  # noqa: E402
import pyflashinfer.rope as rope  # noqa: E402
from pyflashinfer.activation.reference import act_and_mul_ref  # noqa: E402
from pyflashinfer.norm.reference import fused_add_rmsnorm_ref, rmsnorm_ref  # noqa: E402
from pyflashinfer.rope.reference import apply_rope_ref, cos_sin_cache, rope_freqs  # noqa: E402

BF16 = torch.bfloat16
EPS = 1e-6
K, FLOOR = 2.0, 1e-4

# Workloads are data: (op, shape in words, sizes, FlashInfer's H100 figure in us or None).
# --dry-run shrinks the leading (token/row) dim only.
WORKLOADS = [
    ("rmsnorm", "4096x4096 bf16", dict(rows=4096, hidden=4096), 37.0),
    ("fused_add_rmsnorm", "4096x4096 bf16", dict(rows=4096, hidden=4096), 56.0),
    ("apply_rope_pos_ids", "8192 tok, 32/8 heads, d128, bf16", dict(tokens=8192, hq=32, hk=8, d=128), 85.0),
    ("silu_and_mul", "4096 x 2*11008 bf16", dict(rows=4096, d=11008), None),
]
DRY_ROWS = {"rows": 4, "tokens": 6}


@dataclass
class Case:
    """One op on one workload: what pyflashinfer runs, what the torch peers run, how to check."""
    ours: dict[str, Callable[[], object]]          # impl name -> call (timed)
    peers: dict[str, Callable[[], object]]         # impl name -> call (timed)
    check: Callable[[], list[tuple[str, float, float]]]  # -> [(output, our rel err, torch bf16 rel err)]
    nbytes: int
    notes: list[str] = field(default_factory=list)


def _errs(name, out, ref32, ref_lowp):
    return (name, common.rel_err(out, ref32), common.rel_err(ref_lowp, ref32))


def _torch_rmsnorm(x, w, eps):
    """Plain torch RMSNorm: the fused F.rms_norm where this torch has it, else the formula."""
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _hf_rmsnorm(x, w, eps):
    """Hugging Face LlamaRMSNorm: fp32 upcast, formula, round, scale (several kernels)."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rmsnorm_case(dev, rows, hidden) -> Case:
    x = torch.randn(rows, hidden, device=dev, dtype=BF16)
    w = (1 + 0.1 * torch.randn(hidden, device=dev)).to(BF16)

    def check():
        return [_errs("out", norm.rmsnorm(x, w, EPS), rmsnorm_ref(x, w, EPS), rmsnorm_ref(x, w, EPS, dtype=BF16))]

    peers = {"torch F.rms_norm" if hasattr(F, "rms_norm") else "torch formula": lambda: _torch_rmsnorm(x, w, EPS),
             "torch HF-style fp32": lambda: _hf_rmsnorm(x, w, EPS)}
    return Case({"pyflashinfer": lambda: norm.rmsnorm(x, w, EPS)}, peers, check, nbytes=2 * x.nbytes + w.nbytes)


def fused_add_rmsnorm_case(dev, rows, hidden) -> Case:
    x0 = torch.randn(rows, hidden, device=dev, dtype=BF16)
    r0 = torch.randn(rows, hidden, device=dev, dtype=BF16)
    w = (1 + 0.1 * torch.randn(hidden, device=dev)).to(BF16)
    # timed calls work in place on their own copies (values stay bounded: input is re-normalised)
    x_ours, r_ours, x_torch, r_torch = x0.clone(), r0.clone(), x0.clone(), r0.clone()

    def check():
        x, r = x0.clone(), r0.clone()
        norm.fused_add_rmsnorm(x, r, w, EPS)
        y32, s32 = fused_add_rmsnorm_ref(x0, r0, w, EPS)
        y_lp, s_lp = fused_add_rmsnorm_ref(x0, r0, w, EPS, dtype=BF16)
        return [_errs("residual", r, s32, s_lp), _errs("input", x, y32, y_lp)]

    def torch_fused():
        r_torch.add_(x_torch)
        x_torch.copy_(_torch_rmsnorm(r_torch, w, EPS))

    return Case({"pyflashinfer": lambda: norm.fused_add_rmsnorm(x_ours, r_ours, w, EPS)},
                {"torch add_ + rms_norm": torch_fused}, check, nbytes=4 * x0.nbytes + w.nbytes)


def rope_case(dev, tokens, hq, hk, d) -> Case:
    q = torch.randn(tokens, hq, d, device=dev, dtype=BF16)
    k = torch.randn(tokens, hk, d, device=dev, dtype=BF16)
    pos = torch.arange(tokens, device=dev, dtype=torch.int64)
    q_in, k_in = q.clone(), k.clone()
    cache = cos_sin_cache(tokens, d, 1e4).to(dev)

    def check():
        q_out, k_out = rope.apply_rope_pos_ids(q, k, pos)
        kw = dict(freqs=rope_freqs(d, 1.0, 1e4))
        return [_errs(name, out, apply_rope_ref(x, pos, **kw), apply_rope_ref(x, pos, dtype=BF16, **kw))
                for name, out, x in (("q", q_out, q), ("k", k_out, k))]

    def torch_rope():
        """Hugging Face style: gather fp32 cos/sin by position, round to bf16, rotate halves."""
        cos, sin = cache[pos].to(BF16).chunk(2, dim=-1)
        cos, sin = cos[:, None, :], sin[:, None, :]

        def rot(x):
            x1, x2 = x.chunk(2, dim=-1)
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        return rot(q), rot(k)

    ours = {"pyflashinfer": lambda: rope.apply_rope_pos_ids(q, k, pos),
            "pyflashinfer inplace": lambda: rope.apply_rope_pos_ids_inplace(q_in, k_in, pos)}
    return Case(ours, {"torch HF-style": torch_rope}, check, nbytes=2 * (q.nbytes + k.nbytes) + pos.nbytes)


def silu_case(dev, rows, d) -> Case:
    x = torch.randn(rows, 2 * d, device=dev, dtype=BF16)

    def check():
        return [_errs("out", act.silu_and_mul(x), act_and_mul_ref(x, "silu"), act_and_mul_ref(x, "silu", dtype=BF16))]

    return Case({"pyflashinfer": lambda: act.silu_and_mul(x)},
                {"torch silu * mul": lambda: F.silu(x[..., :d]) * x[..., d:]}, check, nbytes=x.nbytes * 3 // 2)


BUILDERS = {"rmsnorm": rmsnorm_case, "fused_add_rmsnorm": fused_add_rmsnorm_case,
            "apply_rope_pos_ids": rope_case, "silu_and_mul": silu_case}


def run_case(op: str, shape: str, sizes: dict, target_us: Optional[float], dev: str, dry_run: bool,
             ceiling: Optional[float]) -> tuple[list[dict], bool]:
    """Check, then time one workload; returns its table rows and whether it passed."""
    time_host, time_graph = timers(dry_run)
    case = BUILDERS[op](dev, **sizes)
    errs = case.check()
    bad = [(n, e, t) for n, e, t in errs if not e <= K * t + FLOOR]
    err_txt = ", ".join(f"{n} rel err {e:.2e} (torch bf16 {t:.2e})" for n, e, t in errs)
    if bad:
        print(f"{op:20s} WRONG, not timed: {err_txt}", flush=True)
        return [dict(op=op, workload=shape, impl="pyflashinfer", check="FAIL: " + err_txt)], False
    rows = []
    for impl, fn in list(case.ours.items()) + list(case.peers.items()):
        t_host, t_graph = time_host(fn), time_graph(fn)
        gbs = case.nbytes / t_host / 1e9
        rows.append({"op": op, "workload": shape, "impl": impl, "host us": t_host * 1e6,
                     "graph us": None if t_graph is None else t_graph * 1e6, "GB/s": gbs,
                     "% copy": None if ceiling is None else 100 * gbs / ceiling, "check": "ok",
                     "FlashInfer us": target_us if impl == "pyflashinfer" else None})
    best_peer = min(r["host us"] for r in rows if r["impl"] in case.peers)
    for r in rows:
        r["x torch"] = best_peer / r["host us"]
    ours = rows[0]
    target = "" if target_us is None else f", FlashInfer {target_us:.0f} us"
    print(f"{op:20s} {ours['host us']:8.1f} us host ({ours['GB/s']:,.0f} GB/s), "
          f"{ours['x torch']:.2f}x the best torch peer ({best_peer:.1f} us){target}; {err_txt}", flush=True)
    return rows, True


def profile() -> int:
    """Host overhead per call: each op on a tiny shape (the GPU work is negligible), cProfiled."""
    for op, _, sizes, _ in WORKLOADS:
        case = BUILDERS[op]("cuda", **{k: DRY_ROWS.get(k, v) for k, v in sizes.items()})
        for impl, fn in list(case.ours.items()) + list(case.peers.items())[:1]:
            print(f"## {op} / {impl}")
            print(f"{op} / {impl}: {common.host_profile(fn, top=12) * 1e6:.1f} us host per call")
    return 0


def host_floor() -> int:
    """What a host-timed figure cannot go under on this machine: the timer around an empty call,
    one tiny torch op, one Triton launch of a no-op kernel (replayed as the ops replay theirs,
    and through Triton's own launcher); the same kernel inside a CUDA graph."""
    import triton
    import triton.language as tl

    from pyflashinfer._launch import launch

    @triton.jit
    def noop_kernel(p):
        tl.store(p, 1.0)

    x = torch.zeros(16, device="cuda")
    replay = launch(noop_kernel, (1,), p=x)
    rows = [dict(call=name, us=fn(call) * 1e6) for name, fn, call in (
        ("empty Python call, host-timed", common.time_host, lambda: None),
        ("torch x.add_(1) on 16 floats, host-timed", common.time_host, lambda: x.add_(1)),
        ("Triton no-op kernel, replayed launch, host-timed", common.time_host, lambda: replay(p=x)),
        ("Triton no-op kernel, kernel[grid](...), host-timed", common.time_host, lambda: noop_kernel[(1,)](x)),
        ("Triton no-op kernel, replayed launch, CUDA graph", common.time_graph, lambda: replay(p=x)))]
    print(common.header_line("bench_ops --floor", False))
    print(common.table(rows, ["call", "us"]))
    return 0


def main() -> int:
    if OPTS.floor:
        return host_floor()
    if OPTS.profile:
        return profile()
    dev = "cpu" if OPTS.dry_run else "cuda"
    if not OPTS.dry_run and not torch.cuda.is_available():
        print("bench_ops: no CUDA device; use --dry-run to exercise the script on CPU")
        return 2
    torch.manual_seed(0)
    print(common.header_line("bench_ops", OPTS.dry_run))
    ceiling = None if OPTS.dry_run else common.copy_ceiling_gbs()
    if ceiling is not None:
        print(f"device-to-device copy ceiling: {ceiling:,.0f} GB/s (PERFORMANCE.md: {common.H100_COPY_GBS:,.0f})")
    only = {s for s in OPTS.only.split(",") if s}
    all_rows, failed = [], []
    for op, shape, sizes, target_us in WORKLOADS:
        if only and op not in only:
            continue
        if OPTS.dry_run:
            sizes = {k: DRY_ROWS.get(k, v) for k, v in sizes.items()}
            shape = f"{shape} [dry run: {sizes}]"
        try:
            rows, ok = run_case(op, shape, sizes, target_us, dev, OPTS.dry_run, ceiling)
        except Exception as e:  # report and go on to the next op
            traceback.print_exc()
            rows, ok = [dict(op=op, workload=shape, impl="pyflashinfer", check=f"ERROR {type(e).__name__}: {e}")], False
        all_rows += rows
        if not ok:
            failed.append(op)
    print()
    print(common.table(all_rows, ["op", "workload", "impl", "host us", "graph us", "GB/s", "% copy", "x torch",
                                  "FlashInfer us", "check"]))
    print("\nx torch = best torch peer's host time / this row's host time (above 1: faster than torch).")
    if failed:
        print(f"\nFAILED (wrong or crashed, not timed): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
