"""Timing and reporting shared by every benchmark.

Timing follows ../shared/PERFORMANCE.md: median of 30 CUDA-event-timed calls after warm-up,
each call timed from the host (the GPU idles before each call, so Python launch overhead counts,
as for a serving engine without CUDA graphs). `time_graph` times replays of a captured graph.
Correctness is checked by the caller before anything is timed.
"""
from __future__ import annotations

import statistics
import subprocess
import threading
import time
from typing import Callable, Optional

import torch

# Measured on the project's H100 (../shared/PERFORMANCE.md, 2026-11-23); each run also measures
# its own copy ceiling (copy_ceiling_gbs) and reports against both.
H100_COPY_GBS = 2982.0
H100_BF16_TFLOPS = 779.0


def run_info() -> dict:
    """Where and when a benchmark ran (the header of its results): device, torch, triton, date."""
    import triton
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d")}


def header_line(script: str, dry_run: bool) -> str:
    """One comment line naming the device (or the CPU dry run), versions and time of a run."""
    import datetime

    import triton

    import pyflashinfer
    name = "CPU (Triton interpreter, dry run)" if dry_run else torch.cuda.get_device_name()
    return (f"# {script}: {name}, torch {torch.__version__}, triton {triton.__version__}, "
            f"pyflashinfer {pyflashinfer.__version__}, {datetime.datetime.now().isoformat(timespec='minutes')}")


class ClockMonitor:
    """The GPU's SM clock, power draw and clock-limit reasons, sampled by nvidia-smi every
    `period_ms` in a background thread (no samples where nvidia-smi is missing).

    The H100 runs bf16 prefill at its 700 W software power cap (limit reason 0x4): the kernel's
    work per clock stays put while the clock moves with the data, the temperature and how long
    the GPU has been busy (benchmarks/RESULTS.md, 2026-12-07). `over(t0, t1)` gives the mean
    clock and power of a timed stretch, so that TFLOP/s per GHz compares runs at other clocks."""

    def __init__(self, period_ms: int = 50):
        self.samples: list = []
        cmd = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,clocks_event_reasons.active",
               "--format=csv,noheader,nounits", "-lms", str(period_ms)]
        if torch.cuda.is_available():  # this process's GPU only
            cmd += ["-i", f"GPU-{torch.cuda.get_device_properties(torch.cuda.current_device()).uuid}"]
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self._proc = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.samples.append((time.time(), float(parts[0]), float(parts[1]), parts[2]))
            except (ValueError, IndexError):
                continue

    # nvidia-smi's readings trail the GPU by up to about half a second (a 75-ms timing read the
    # idle clock and power of before it; H100, 2026-12-07): a stretch's first SETTLE_S seconds are
    # left out, and a stretch with fewer than MIN_SAMPLES samples after that gets nothing.
    SETTLE_S = 0.5
    MIN_SAMPLES = 5

    def over(self, t0: float, t1: float) -> dict:
        """Mean SM clock (MHz) and power (W) of the samples taken between t0 + SETTLE_S and t1
        (time.time()), and the limit reasons seen; empty for a stretch too short to read."""
        sel = [s for s in self.samples if t0 + self.SETTLE_S <= s[0] <= t1]
        if len(sel) < self.MIN_SAMPLES:
            return {}
        return {"MHz": sum(s[1] for s in sel) / len(sel), "W": sum(s[2] for s in sel) / len(sel),
                "limits": " ".join(sorted({s[3] for s in sel}))}

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()


def time_host(fn: Callable[[], object], reps: int = 30, warmup: int = 5) -> float:
    """Median seconds of `reps` calls, each started from an idle GPU."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3)
    return statistics.median(times)


def time_graph(fn: Callable[[], object], reps: int = 30, calls_per_graph: int = 10) -> Optional[float]:
    """Median seconds per call inside a CUDA graph of `calls_per_graph` calls; None if capture fails."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls_per_graph):
                fn()
    except Exception as e:  # a kernel that syncs or allocates cannot be captured: report, not crash
        print(f"  (graph capture failed: {type(e).__name__}: {e})")
        return None
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / calls_per_graph)
    return statistics.median(times)


def host_profile(fn: Callable[[], object], calls: int = 300, top: int = 15) -> float:
    """Host seconds per call with launches queued (no sync between calls); prints where that
    time goes (cProfile, `top` functions by own time)."""
    import cProfile
    import pstats
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)
    return host


def copy_ceiling_gbs(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth, bytes read + written, measured now."""
    a = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = time_host(lambda: b.copy_(a), reps=10, warmup=3)
    return 2 * a.numel() / t / 1e9


def matmul_ceiling_tflops(n: int = 8192) -> float:
    """bf16 n x n x n matrix product through torch on random data (zeros run faster), median of
    10 after 3 warm-ups, measured now."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    t = time_host(lambda: a @ b, reps=10, warmup=3)
    return 2 * n ** 3 / t / 1e12


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| (NaN anywhere -> inf)."""
    out, ref = out.float(), ref.float()
    if torch.isnan(out).any():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of `rows` (dicts), in `columns` order."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
