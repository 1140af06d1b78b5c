"""`--dry-run` of the op benchmarks: CPU, Triton interpreter, tiny shapes, no real timing.

Import this before torch: the interpreter must be switched on before the first module that
defines kernels is imported, so the flag is read from sys.argv here, ahead of argparse.
"""
import argparse
import os
import sys

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:
    os.environ["TRITON_INTERPRET"] = "1"


def parser(description: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser, with --dry-run already on it."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--dry-run", action="store_true", help="CPU interpreter, tiny shapes, no real timing")
    return ap
