"""Sampling ops against plain PyTorch on one GPU: top-p sampling, top-k + top-p from logits,
softmax, top-k renormalisation (and a few more for information).

    python benchmarks/bench_sampling.py            # on the GPU: check, then time, then a markdown table
    python benchmarks/bench_sampling.py --sweep    # also time top-p sampling under other tile configs
    python benchmarks/bench_sampling.py --dry-run  # CPU, Triton interpreter, tiny shapes, fake timer:
                                                   # exercises every code path of this script, no figures

Each op is checked before it is timed, with a fixed seed: every sampled token must lie inside
the filter computed by the float64 reference (pyflashinfer.sampling.reference, as the tests),
and softmax / renormalised outputs must match it (kept sets exactly, values to 1e-5 relative).
A wrong op is reported and not timed. Times follow benchmarks/common.py (median of 30 host-timed
calls from an idle GPU; `graph` = per call inside a CUDA graph). The torch peers do the same job
the way a serving stack does without fused kernels (sort + cumsum + multinomial for top-p).
FlashInfer's figures are from ../shared/PERFORMANCE.md (H100, host-timed).
"""
from __future__ import annotations

import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dry_run  # noqa: E402  (before torch: may switch the interpreter on)
from dry_run import timers  # noqa: E402

ARGS = dry_run.parser(__doc__.splitlines()[0])
ARGS.add_argument("--sweep", action="store_true", help="time top-p sampling under each GPU tile config")
ARGS.add_argument("--only", default="", help="comma-separated op names to run (default: all)")
OPTS = ARGS.parse_args()

import torch  # noqa: E402

import common  # noqa: E402

import pyflashinfer.sampling as S  # noqa: E402
import pyflashinfer.sampling._common as sampling_common  # noqa: E402
import pyflashinfer.sampling._ops as sampling_ops  # noqa: E402
from pyflashinfer.sampling import reference as ref  # noqa: E402

SLACK = 1e-5  # float rounding at the top-p boundary (as tests/sampling)

# Workloads are data: (op, workload in words, sizes, FlashInfer's H100 figure in us or None).
WORKLOADS = [
    ("top_p_sampling_from_probs", "batch 128, vocab 128256, p 0.9, N(0,1) logits",
     dict(batch=128, vocab=128256, scale=1.0), 134.0),
    ("top_p_sampling_from_probs", "batch 128, vocab 128256, p 0.9, N(0,5^2) logits",
     dict(batch=128, vocab=128256, scale=5.0), 134.0),
    ("top_k_top_p_sampling_from_logits", "batch 128, vocab 128256, k 50, p 0.9, N(0,1)",
     dict(batch=128, vocab=128256, scale=1.0), 356.0),
    ("softmax", "batch 128, vocab 128256, fp32, temperature 0.7", dict(batch=128, vocab=128256, scale=1.0), None),
    ("top_k_renorm_probs", "batch 128, vocab 128256, k 50", dict(batch=128, vocab=128256, scale=1.0), None),
    ("sampling_from_probs", "batch 128, vocab 128256", dict(batch=128, vocab=128256, scale=1.0), None),
    ("top_p_renorm_probs", "batch 128, vocab 128256, p 0.9", dict(batch=128, vocab=128256, scale=1.0), None),
    ("min_p_sampling_from_probs", "batch 128, vocab 128256, min_p 0.1", dict(batch=128, vocab=128256, scale=1.0),
     None),
]
DRY_SIZES = dict(batch=3, vocab=1000)


def _in_filter(samples: torch.Tensor, keep: torch.Tensor) -> str:
    s = samples.detach().cpu().long()
    ok = keep[torch.arange(s.shape[0]), s]
    return "" if bool(ok.all()) else f"{int((~ok).sum())} of {s.shape[0]} draws outside the filter"


def _close(out: torch.Tensor, expect: torch.Tensor) -> str:
    out = out.detach().cpu().double()
    if not torch.equal(out > 0, expect > 0):
        return "kept set differs from the reference"
    err = ((out - expect).abs() / expect.abs().clamp_min(1e-30)).max().item()
    return "" if err <= 1e-5 else f"max relative error {err:.2e}"


def build(op: str, dev: str, batch: int, vocab: int, scale: float):
    """(ours, torch peer, check) for one workload; check() returns '' when right."""
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    logits = torch.randn(batch, vocab, device=dev, generator=gen) * scale
    probs = torch.softmax(logits, dim=-1)
    p64 = ref.softmax(logits)
    if op == "top_p_sampling_from_probs":
        return (lambda: S.top_p_sampling_from_probs(probs, 0.9),
                lambda: ref.torch_top_p_sampling(probs, 0.9),
                lambda: _in_filter(S.top_p_sampling_from_probs(probs, 0.9, seed=1, offset=0),
                                   ref.top_p_mask(p64, 0.9, SLACK)))
    if op == "top_k_top_p_sampling_from_logits":
        keep = ref.filtered_distribution(p64, top_k=50, top_p=0.9, slack=SLACK)[1]
        return (lambda: S.top_k_top_p_sampling_from_logits(logits, 50, 0.9),
                lambda: ref.torch_top_k_top_p_sampling_from_logits(logits, 50, 0.9),
                lambda: _in_filter(S.top_k_top_p_sampling_from_logits(logits, 50, 0.9, seed=1, offset=0), keep))
    if op == "softmax":
        return (lambda: S.softmax(logits, temperature=0.7),
                lambda: torch.softmax(logits / 0.7, dim=-1),
                lambda: _close(S.softmax(logits, temperature=0.7), ref.softmax(logits, 0.7)))
    if op == "top_k_renorm_probs":
        def torch_renorm():
            vals, idx = torch.topk(probs, 50, dim=-1)
            return torch.zeros_like(probs).scatter_(-1, idx, vals / vals.sum(-1, keepdim=True))
        return (lambda: S.top_k_renorm_probs(probs, 50), torch_renorm,
                lambda: _close(S.top_k_renorm_probs(probs, 50), ref.top_k_renorm_probs(probs.double(), 50)))
    if op == "sampling_from_probs":
        return (lambda: S.sampling_from_probs(probs), lambda: torch.multinomial(probs, 1).squeeze(-1),
                lambda: _in_filter(S.sampling_from_probs(probs, seed=1, offset=0), p64 > 0))
    if op == "top_p_renorm_probs":
        def torch_renorm():
            srt, idx = torch.sort(probs, dim=-1, descending=True)
            srt = srt.masked_fill(torch.cumsum(srt, -1) - srt >= 0.9, 0.0)
            return torch.zeros_like(probs).scatter_(-1, idx, srt / srt.sum(-1, keepdim=True))

        def check():
            kept = S.top_p_renorm_probs(probs, 0.9).cpu() > 0
            p32 = probs.cpu().double()
            lo, hi = ref.top_p_mask(p32, 0.9, -SLACK) & (p32 > 0), ref.top_p_mask(p32, 0.9, SLACK)
            return "" if bool((kept | ~lo).all() and (~kept | hi).all()) else "kept set outside the nucleus"
        return lambda: S.top_p_renorm_probs(probs, 0.9), torch_renorm, check
    if op == "min_p_sampling_from_probs":
        def torch_min_p():
            keep = probs >= 0.1 * probs.max(-1, keepdim=True).values
            return torch.multinomial(probs * keep, 1).squeeze(-1)
        return (lambda: S.min_p_sampling_from_probs(probs, 0.1), torch_min_p,
                lambda: _in_filter(S.min_p_sampling_from_probs(probs, 0.1, seed=1, offset=0),
                                   ref.min_p_mask(p64, 0.1)))
    raise KeyError(op)


def run_case(op, shape, sizes, target_us, dev, dry_run) -> tuple[list[dict], bool]:
    time_host, time_graph = timers(dry_run)
    ours, peer, check = build(op, dev, **sizes)
    problem = check()
    if problem:
        print(f"{op:34s} WRONG, not timed: {problem}", flush=True)
        return [dict(op=op, workload=shape, impl="pyflashinfer", check="FAIL: " + problem)], False
    rows = []
    for impl, fn in (("pyflashinfer", ours), ("torch", peer)):
        t_host = time_host(fn)
        t_graph = time_graph(fn) if impl == "pyflashinfer" else None
        rows.append({"op": op, "workload": shape, "impl": impl, "host us": t_host * 1e6,
                     "graph us": None if t_graph is None else t_graph * 1e6, "check": "ok",
                     "FlashInfer us": target_us if impl == "pyflashinfer" else None})
    rows[0]["x torch"] = rows[1]["host us"] / rows[0]["host us"]
    rows[1]["x torch"] = 1.0
    target = "" if target_us is None else f", FlashInfer {target_us:.0f} us"
    print(f"{op:34s} {rows[0]['host us']:9.1f} us host, {rows[0]['x torch']:6.2f}x torch "
          f"({rows[1]['host us']:.1f} us){target} [{shape}]", flush=True)
    return rows, True


SWEEP = ((2048, 8, 1), (4096, 8, 1), (4096, 16, 1), (8192, 16, 1), (8192, 32, 1), (8192, 32, 2), (16384, 32, 1))
SWEEP_OPS = ("top_p_sampling_from_probs", "top_k_top_p_sampling_from_logits")


def sweep(dev: str, dry_run: bool) -> list[dict]:
    """The two target ops at batch 128 x vocab 128256 under each (BLOCK, warps, stages): which
    config _common._GPU_TILES should hold."""
    time_host, time_graph = timers(dry_run)
    sizes = DRY_SIZES if dry_run else dict(batch=128, vocab=128256)
    calls = {op: build(op, dev, scale=1.0, **sizes)[0] for op in SWEEP_OPS}
    rows, original = [], sampling_ops.row_tile
    try:
        for block, warps, stages in SWEEP:
            tile = sampling_common.RowTile(1, block, warps, stages)
            sampling_ops.row_tile = lambda *a, _t=tile, **k: _t
            row = {"BLOCK": block, "num_warps": warps, "num_stages": stages}
            for op, fn in calls.items():
                try:
                    row[op + " us"] = time_host(fn) * 1e6
                    tg = time_graph(fn)
                    row[op + " graph us"] = None if tg is None else tg * 1e6
                except Exception as e:  # a config that does not compile: report, go on
                    row[op + " us"] = f"{type(e).__name__}"
            print(f"  sweep {row}", flush=True)
            rows.append(row)
    finally:
        sampling_ops.row_tile = original
    return rows


def main() -> int:
    dev = "cpu" if OPTS.dry_run else "cuda"
    if not OPTS.dry_run and not torch.cuda.is_available():
        print("bench_sampling: no CUDA device; use --dry-run to exercise the script on CPU")
        return 2
    torch.manual_seed(0)
    print(common.header_line("bench_sampling", OPTS.dry_run))
    only = {s for s in OPTS.only.split(",") if s}
    all_rows, failed = [], []
    for op, shape, sizes, target_us in WORKLOADS:
        if only and op not in only:
            continue
        if OPTS.dry_run:
            sizes = dict(sizes, **DRY_SIZES)
            shape = f"{shape} [dry run: {DRY_SIZES}]"
        try:
            rows, ok = run_case(op, shape, sizes, target_us, dev, OPTS.dry_run)
        except Exception as e:  # report and go on to the next op
            traceback.print_exc()
            rows, ok = [dict(op=op, workload=shape, impl="pyflashinfer", check=f"ERROR {type(e).__name__}: {e}")], False
        all_rows += rows
        if not ok:
            failed.append(op)
    print()
    print(common.table(all_rows, ["op", "workload", "impl", "host us", "graph us", "x torch", "FlashInfer us",
                                  "check"]))
    print("\nx torch = torch's host time / this row's host time (above 1: faster than torch).")
    if OPTS.sweep:
        print("\n## batch 128 x vocab 128256 by GPU tile config (current: "
              f"{sampling_common._GPU_TILES[4096]})")
        print(common.table(sweep(dev, OPTS.dry_run), ["BLOCK", "num_warps", "num_stages"] +
                           [op + s for op in SWEEP_OPS for s in (" us", " graph us")]))
    if failed:
        print(f"\nFAILED (wrong or crashed, not timed): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
