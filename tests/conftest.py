"""Test set-up: GPU when there is one, Triton's CPU interpreter otherwise.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, so this runs before
pyflashinfer is imported (which then fixes the interpreter's bf16 and fp8: _interpreter.py).
"""
import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Every output the library allocates starts as NaN, so an unwritten element fails loudly.
os.environ.setdefault("PYFLASHINFER_POISON_OUTPUTS", "1")
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEVICE = "cpu" if INTERPRETING else "cuda"


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Every test draws fresh random inputs, reproducibly from its own id."""
    import zlib

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
