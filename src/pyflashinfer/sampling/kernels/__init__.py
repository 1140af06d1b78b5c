"""@triton.jit code of the sampling family (no torch calls).

Every kernel owns ROWS rows per program (1 on a GPU; up to 64 under the CPU interpreter,
whose cost is per operation rather than per element) and streams the vocabulary in
BLOCK-wide tiles, so all per-row state is a [ROWS] vector and every tile is [ROWS, BLOCK].
"""
