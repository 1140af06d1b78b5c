"""`--dry-run` of the op benchmarks: CPU, Triton interpreter, tiny shapes, no real timing.

Import this before torch: the interpreter must be switched on before the first module that
defines kernels is imported, so the flag is read from sys.argv here, ahead of argparse.
"""
import os
import sys

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:
    os.environ["TRITON_INTERPRET"] = "1"
HELP = "CPU interpreter, tiny shapes, no real timing"
