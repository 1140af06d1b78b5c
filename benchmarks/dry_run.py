"""`--dry-run` of the op benchmarks: CPU, Triton interpreter, tiny shapes, no real timing.

Import this before torch: the interpreter must be switched on before the first module that
defines kernels is imported, so the flag is read from sys.argv here, ahead of argparse.
"""
import argparse
import os
import sys
import time

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:
    os.environ["TRITON_INTERPRET"] = "1"


def parser(description: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser, with --dry-run already on it."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--dry-run", action="store_true", help="CPU interpreter, tiny shapes, no real timing")
    return ap


def _cpu_time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timers(dry_run: bool):
    """(time_host, time_graph): common.py's on the GPU; one wall-clock call (and no graph) on CPU."""
    if dry_run:
        return _cpu_time, lambda fn: None
    import common  # imports torch: not at this module's import, which must precede it
    return common.time_host, common.time_graph
