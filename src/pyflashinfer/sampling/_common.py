"""Host-side pieces shared by the sampling entry points: input checks, per-row parameters,
Philox seed/offset, and the tile table."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Union

import torch
import triton

from .. import _validate as V
from ..utils import is_interpreting

PROB_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
SEED_DTYPES = (torch.int64, torch.uint64)
ORDERS = ("top_k_first", "joint")
MAX_SAMPLING_ROUNDS = 32  # bracket width < 2**31 float bits, halved every round (kernels/sample.py)
MAX_RENORM_ROUNDS = 34


@dataclass(frozen=True)
class RowTile:
    """Rows per program, vocabulary tile width, and launch options of the row kernels."""

    rows: int
    block: int
    num_warps: int
    num_stages: int

    @property
    def radix_bits(self) -> int:
        """Bits per radix-select pass: 256 bins per row; 16 when many rows share a program
        (ROWS x bins histogram bins per program would make the sm_90 compile very slow)."""
        return 8 if self.rows == 1 else 4


# One program per row on the GPU, streaming the row in BLOCK-wide tiles: batch 128 fills the
# 132 SMs of an H100 with one row each. The filtered samplers keep per-lane sums (one value per
# column of the tile, kernels/sample.py) instead of reducing every tile, so a pass streams like a
# copy; they hold up to 7 such sums (top-p renorm; 8 with the joint top-k counts), which at 8
# values a thread take 102-128 registers on sm_90 (ptxas -v) and spill at 32 warps (64 registers
# a thread): 4096-wide tiles on 16 warps. `python benchmarks/bench_sampling.py --sweep` times the
# alternatives.
_GPU_TILES = {b: RowTile(1, b, b // 256, 1) for b in (1024, 2048, 4096)}
# Under the interpreter the cost is per operation, not per element: many rows per program.
_INTERP_ELEMS = 8192


def row_tile(batch: int, vocab: int) -> RowTile:
    if is_interpreting():
        block = min(triton.next_power_of_2(max(vocab, 16)), _INTERP_ELEMS)
        rows = min(64, max(1, _INTERP_ELEMS // block))  # fixed per vocab: one variant per shape class
        # the warps only matter to tools/aot_check.py, which compiles these variants for sm_90 too:
        # 8 elements per thread, as on the GPU, keeps that compile (ptxas) quick
        return RowTile(rows, block, min(32, max(4, rows * block // 256)), 1)
    block = min(4096, max(1024, triton.next_power_of_2(vocab)))
    return _GPU_TILES[block]


# The small-k top-k path (kernels/topk.py topk_candidates, rank_candidates): candidate slots per
# row, and how many candidates each ranking step compares at once. With tokens in no particular
# order a row has about k candidates; slots for 2k (at least 64, at most 1024: the ranking is
# quadratic in them), 512 for a per-row k, whose values the host does not read. Rows with more
# candidates fall back to the radix select.
TOPK_SLOTS_MIN, TOPK_SLOTS_MAX, TOPK_SLOTS_PER_ROW_K = 64, 1024, 512
TOPK_CHUNK = 16


def topk_slots(batch: int, vocab: int, top_k: Optional[int]) -> int:
    """Candidate slots per row for topk_sampling_kernel given a scalar top_k (None: a per-row
    tensor), or 0 where that path cannot take the call (top_k >= vocab filters nothing; top_k
    above a tile's lanes or the slots)."""
    cap = max(16, triton.next_power_of_2(vocab))  # a row never has more candidates than tokens
    if top_k is None:
        return min(TOPK_SLOTS_PER_ROW_K, cap)
    slots = min(max(TOPK_SLOTS_MIN, triton.next_power_of_2(2 * top_k)), TOPK_SLOTS_MAX, cap)
    return slots if 0 < top_k < vocab and top_k <= min(row_tile(batch, vocab).block, slots) else 0


def check_rows(name: str, x, dtypes=PROB_DTYPES) -> torch.device:
    """A [batch, vocab] tensor on the kernel device whose rows are contiguous."""
    V.check_tensor(name, x, 2)
    V.check_dtype(name, x, dtypes)
    device = V.check_device(**{name: x})
    if x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty vocabulary dimension, got shape {tuple(x.shape)}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"{name}: expected stride 1 along the vocabulary (last) dimension, got strides "
                         f"{tuple(x.stride())}; rows may be strided")
    return device


def check_indices(indices: Optional[torch.Tensor], device: torch.device) -> None:
    if indices is None:
        return
    V.check_tensor("indices", indices, 1)
    V.check_dtype("indices", indices, INDEX_DTYPES)
    if indices.device != device:
        raise ValueError(f"indices: expected device {device}, got {indices.device}")


def check_nan(name: str, x: torch.Tensor, enabled: bool) -> None:
    """Opt-in NaN scan (a host sync), as FlashInfer's check_nan."""
    if enabled and bool(torch.isnan(x).any()):
        raise ValueError(f"{name}: contains NaN (check_nan=True)")


@dataclass(frozen=True)
class RowParam:
    """A filter parameter as the kernels take it: a per-row tensor or a scalar."""

    tensor: Optional[torch.Tensor]
    scalar: Union[int, float]

    @property
    def per_row(self) -> bool:
        return self.tensor is not None


def row_param(name: str, value, *, batch: int, num_rows: int, indices: Optional[torch.Tensor],
              device: torch.device, integer: bool, lo: float, hi: float, lo_open: bool = False) -> RowParam:
    """Validate top_k / top_p / min_p. Scalars are range-checked here; tensor values are not
    read on the host (that would sync): the kernels clamp them (see each op's docstring).
    A tensor has one entry per output (batch) or, with `indices`, one per input row."""
    if isinstance(value, torch.Tensor):
        V.check_tensor(name, value, 1)
        allowed = INDEX_DTYPES if integer else (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        V.check_dtype(name, value, allowed)
        if value.device != device:
            raise ValueError(f"{name}: expected device {device}, got {value.device}")
        if value.shape[0] == batch:
            return RowParam(value, 0)
        if indices is not None and value.shape[0] == num_rows:
            return RowParam(value.index_select(0, indices), 0)  # per input row -> per output
        raise ValueError(f"{name}: expected a tensor of shape ({batch},) (one value per output), got "
                         f"{tuple(value.shape)}")
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an int" if integer else "a float"
        raise TypeError(f"{name}: expected {what} or a 1-D tensor, got {type(value).__name__}")
    bad = (value <= lo if lo_open else value < lo) or value > hi
    if bad:
        lo_br = "(" if lo_open else "["
        raise ValueError(f"{name}: expected a value in {lo_br}{lo:g}, {hi:g}], got {value}")
    return RowParam(None, int(value) if integer else float(value))


def check_order(filter_apply_order: str) -> None:
    if filter_apply_order not in ORDERS:
        raise ValueError(f"filter_apply_order: expected one of {ORDERS}, got {filter_apply_order!r}")


def philox_args(seed, offset, generator: Optional[torch.Generator], device: torch.device,
                batch: int) -> dict:
    """Launcher arguments for the Philox key (seed) and counter base (offset).

    Without an explicit (seed, offset) pair the randomness comes from `generator` (or torch's
    default generator of the device): on a CUDA device outside graph capture, its seed and its
    Philox offset, which the call advances on the host (no launch, no sync); otherwise a fresh
    int64 seed drawn on the device, so that each replay of a captured CUDA graph draws anew.
    Explicit values may be ints or int64/uint64 tensors of length 1 or batch (tensors keep CUDA
    graphs replayable with new values)."""
    if seed is None or offset is None:
        if device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
            gen = generator if generator is not None else torch.cuda.default_generators[
                device.index if device.index is not None else torch.cuda.current_device()]
            base = gen.get_offset()
            gen.set_offset(base + 4)  # CUDA generators move in steps of 4
            return dict(seed_t=None, offset_t=None, seed=gen.initial_seed() & (2**63 - 1), offset=base,
                        seed_stride=0, offset_stride=0)
        seed_t = torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device, generator=generator)
        return dict(seed_t=seed_t, offset_t=None, seed=0, offset=0, seed_stride=0, offset_stride=0)
    if isinstance(seed, torch.Tensor) != isinstance(offset, torch.Tensor):
        raise ValueError(f"seed and offset: expected both tensors or both ints, got {type(seed).__name__} "
                         f"and {type(offset).__name__}")
    if isinstance(seed, torch.Tensor):
        for name, t in (("seed", seed), ("offset", offset)):
            V.check_tensor(name, t, 1)
            V.check_dtype(name, t, SEED_DTYPES)
            if t.device != device:
                raise ValueError(f"{name}: expected device {device}, got {t.device}")
            if t.shape[0] not in (1, batch):
                raise ValueError(f"{name}: expected length 1 or {batch}, got {t.shape[0]}")
        return dict(seed_t=seed, offset_t=offset, seed=0, offset=0,
                    seed_stride=int(seed.shape[0] == batch and batch > 1),
                    offset_stride=int(offset.shape[0] == batch and batch > 1))
    for name, v in (("seed", seed), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}: expected an int or an int64 tensor, got {type(v).__name__}")
    return dict(seed_t=None, offset_t=None, seed=int(seed) & (2**63 - 1), offset=int(offset) & (2**63 - 1),
                seed_stride=0, offset_stride=0)
