"""@triton.jit code only: no torch calls, no host logic."""
